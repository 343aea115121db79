//! What `vessel-runtime features` reports about seccomp.

use serde::Serialize;

use crate::compile::{
    SECCOMP_FILTER_FLAG_LOG, SECCOMP_FILTER_FLAG_SPEC_ALLOW, SECCOMP_FILTER_FLAG_TSYNC,
    SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
};

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeccompFeatures {
    pub enabled: bool,
    pub actions: Vec<&'static str>,
    pub operators: Vec<&'static str>,
    pub archs: Vec<&'static str>,
    pub known_flags: Vec<&'static str>,
    pub supported_flags: Vec<&'static str>,
}

pub(crate) const FLAGS: [(&str, u32); 4] = [
    ("SECCOMP_FILTER_FLAG_TSYNC", SECCOMP_FILTER_FLAG_TSYNC),
    ("SECCOMP_FILTER_FLAG_LOG", SECCOMP_FILTER_FLAG_LOG),
    (
        "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
        SECCOMP_FILTER_FLAG_SPEC_ALLOW,
    ),
    (
        "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
        SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
    ),
];

/// The kernel answers EFAULT (bad program pointer) for a flag it knows and EINVAL for one it
/// does not: probing with a null program installs nothing.
pub(crate) fn kernel_supports(flag: u32) -> bool {
    // SAFETY: a null program is rejected before anything is installed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flag,
            std::ptr::null::<u8>(),
        )
    };
    r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EFAULT)
}

pub fn features() -> SeccompFeatures {
    SeccompFeatures {
        enabled: true,
        actions: vec![
            "SCMP_ACT_ALLOW",
            "SCMP_ACT_ERRNO",
            "SCMP_ACT_KILL",
            "SCMP_ACT_KILL_PROCESS",
            "SCMP_ACT_KILL_THREAD",
            "SCMP_ACT_LOG",
            "SCMP_ACT_NOTIFY",
            "SCMP_ACT_TRACE",
            "SCMP_ACT_TRAP",
        ],
        operators: vec![
            "SCMP_CMP_EQ",
            "SCMP_CMP_GE",
            "SCMP_CMP_GT",
            "SCMP_CMP_LE",
            "SCMP_CMP_LT",
            "SCMP_CMP_MASKED_EQ",
            "SCMP_CMP_NE",
        ],
        archs: vec![
            "SCMP_ARCH_AARCH64",
            "SCMP_ARCH_ARM",
            "SCMP_ARCH_MIPS",
            "SCMP_ARCH_MIPS64",
            "SCMP_ARCH_MIPS64N32",
            "SCMP_ARCH_MIPSEL",
            "SCMP_ARCH_MIPSEL64",
            "SCMP_ARCH_MIPSEL64N32",
            "SCMP_ARCH_PPC",
            "SCMP_ARCH_PPC64",
            "SCMP_ARCH_PPC64LE",
            "SCMP_ARCH_RISCV64",
            "SCMP_ARCH_S390",
            "SCMP_ARCH_S390X",
            "SCMP_ARCH_X32",
            "SCMP_ARCH_X86",
            "SCMP_ARCH_X86_64",
        ],
        known_flags: FLAGS.iter().map(|(n, _)| *n).collect(),
        supported_flags: FLAGS
            .iter()
            .filter(|(_, f)| kernel_supports(*f))
            .map(|(n, _)| *n)
            .collect(),
    }
}
