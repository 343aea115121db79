//! What `vessel-runtime features` reports about seccomp.

use serde::Serialize;

use crate::compile::{
    SECCOMP_FILTER_FLAG_LOG, SECCOMP_FILTER_FLAG_SPEC_ALLOW, SECCOMP_FILTER_FLAG_TSYNC,
    SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
};

#[derive(Debug, Clone, Serialize)]
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

/// Actions and the kernel's SECCOMP_RET_* value for each (KILL is KILL_THREAD, as in runc).
const ACTIONS: [(&str, u32); 9] = [
    ("SCMP_ACT_ALLOW", 0x7fff_0000),
    ("SCMP_ACT_ERRNO", 0x0005_0000),
    ("SCMP_ACT_KILL", 0),
    ("SCMP_ACT_KILL_PROCESS", 0x8000_0000),
    ("SCMP_ACT_KILL_THREAD", 0),
    ("SCMP_ACT_LOG", 0x7ffc_0000),
    ("SCMP_ACT_NOTIFY", 0x7fc0_0000),
    ("SCMP_ACT_TRACE", 0x7ff0_0000),
    ("SCMP_ACT_TRAP", 0x0003_0000),
];

fn kernel_has_action(action: u32) -> bool {
    const SECCOMP_GET_ACTION_AVAIL: libc::c_ulong = 2;
    // SAFETY: the kernel reads one u32 from a pointer to a live local.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_GET_ACTION_AVAIL,
            0,
            &action as *const u32,
        )
    };
    r == 0
}

/// Probed once per process: `features` is cheap to call again.
pub fn features() -> SeccompFeatures {
    static PROBED: std::sync::OnceLock<SeccompFeatures> = std::sync::OnceLock::new();
    PROBED.get_or_init(probe).clone()
}

fn probe() -> SeccompFeatures {
    SeccompFeatures {
        enabled: true,
        actions: ACTIONS
            .iter()
            .filter(|(_, a)| kernel_has_action(*a))
            .map(|(n, _)| *n)
            .collect(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernel_reports_the_common_actions_and_flags() {
        let f = features();
        for a in [
            "SCMP_ACT_ALLOW",
            "SCMP_ACT_ERRNO",
            "SCMP_ACT_KILL_PROCESS",
            "SCMP_ACT_LOG",
        ] {
            assert!(f.actions.contains(&a), "{a}: {:?}", f.actions);
        }
        assert!(f.supported_flags.contains(&"SECCOMP_FILTER_FLAG_TSYNC"));
        assert_eq!(f.known_flags.len(), 4);
        let json = serde_json::to_value(&f).unwrap_or_default();
        assert!(json.get("supportedFlags").is_some(), "{json}");
    }
}
