//! runc's `patchbpf`, in its simplest useful form: a syscall newer than anything the profile
//! names gets ENOSYS instead of the default action. A profile written before, say, clone3
//! existed would otherwise answer EPERM for it, and libc only falls back to the older call
//! on ENOSYS — so new programs break under old profiles.
//!
//! Only the native architecture (without x32 on x86_64) is patched: the stub compares the
//! syscall number with the highest native number the profile names. Programs for other
//! arches in the filter keep libseccomp's behaviour.

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction};

use crate::program::Instruction;

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGT_K: u16 = 0x25;
const BPF_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
/// offsetof(struct seccomp_data, nr) and (…, arch).
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_NATIVE: Option<u32> = Some(0xC000_003E);
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH_NATIVE: Option<u32> = Some(0xC000_00B7);
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const AUDIT_ARCH_NATIVE: Option<u32> = None;

/// The highest native syscall number the profile names, if patching applies: not when the
/// default lets everything through anyway (nothing to protect), nor on other arches.
pub(crate) fn max_known_syscall(spec: &LinuxSeccomp) -> Option<u32> {
    AUDIT_ARCH_NATIVE?;
    if matches!(
        spec.default_action(),
        LinuxSeccompAction::ScmpActAllow | LinuxSeccompAction::ScmpActLog
    ) {
        return None;
    }
    spec.syscalls()
        .iter()
        .flatten()
        .flat_map(|rule| rule.names())
        .filter_map(|name| libseccomp::ScmpSyscall::from_name(name).ok())
        .map(i32::from)
        // Negative numbers are libseccomp's pseudo-syscalls for names this arch lacks.
        .filter_map(|nr| u32::try_from(nr).ok())
        .max()
}

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> Instruction {
    Instruction { code, jt, jf, k }
}

/// Prepend the stub. The program after it starts by loading the arch itself, and BPF jumps
/// are relative, so it needs no change.
pub(crate) fn patch(bpf: Vec<Instruction>, max_nr: u32) -> Vec<Instruction> {
    let Some(arch) = AUDIT_ARCH_NATIVE else {
        return bpf;
    };
    let mut out = Vec::with_capacity(bpf.len() + 6);
    out.extend([
        insn(BPF_LD_W_ABS, 0, 0, OFF_ARCH),
        insn(BPF_JEQ_K, 0, 4, arch), // other arch → original program
        insn(BPF_LD_W_ABS, 0, 0, OFF_NR),
        insn(BPF_JSET_K, 2, 0, X32_SYSCALL_BIT), // x32 → original program
        insn(BPF_JGT_K, 0, 1, max_nr),
        insn(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
    ]);
    out.extend(bpf);
    out
}
