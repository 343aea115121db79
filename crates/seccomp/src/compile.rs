//! Validation and compilation with libseccomp.

use std::io::{Read, Seek};
use std::os::fd::{FromRawFd, OwnedFd};
use std::str::FromStr;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};

use crate::program::{Instruction, Program, MAX_INSNS};
use crate::{io, Error, Result};

pub(crate) const SECCOMP_FILTER_FLAG_TSYNC: u32 = 1;
pub(crate) const SECCOMP_FILTER_FLAG_LOG: u32 = 2;
pub(crate) const SECCOMP_FILTER_FLAG_SPEC_ALLOW: u32 = 4;
pub(crate) const SECCOMP_FILTER_FLAG_NEW_LISTENER: u32 = 8;
pub(crate) const SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: u32 = 32;

fn action(a: LinuxSeccompAction, errno: Option<u32>, field: &str) -> Result<ScmpAction> {
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => {
            let e = errno.unwrap_or(libc::EPERM as u32);
            if e > u16::MAX as u32 {
                return Err(Error::Profile(format!(
                    "{field}: errnoRet {e} is out of range"
                )));
            }
            ScmpAction::Errno(e as i32)
        }
        LinuxSeccompAction::ScmpActTrace => {
            ScmpAction::Trace(errno.unwrap_or(libc::EPERM as u32) as u16)
        }
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActNotify => ScmpAction::Notify,
    })
}

fn operator(op: LinuxSeccompOperator, value_two: Option<u64>) -> ScmpCompareOp {
    match op {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        // The spec puts the mask in `value` and the expected result in `valueTwo`.
        LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(value_two.unwrap_or(0)),
    }
}

fn lib(what: impl Into<String>) -> impl FnOnce(libseccomp::error::SeccompError) -> Error {
    let what = what.into();
    move |err| Error::Libseccomp { what, err }
}

pub fn filter_flags(spec: &LinuxSeccomp) -> u32 {
    let mut flags = 0;
    for f in spec.flags().iter().flatten() {
        flags |= match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => SECCOMP_FILTER_FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => SECCOMP_FILTER_FLAG_SPEC_ALLOW,
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
            }
        };
    }
    flags
}

/// Whether the program hands back a notify listener: some action is SCMP_ACT_NOTIFY.
pub(crate) fn needs_listener(spec: &LinuxSeccomp) -> bool {
    spec.default_action() == LinuxSeccompAction::ScmpActNotify
        || spec
            .syscalls()
            .iter()
            .flatten()
            .any(|r| r.action() == LinuxSeccompAction::ScmpActNotify)
}

/// The `seccomp(2)` flags of the program compiled from `spec`.
pub(crate) fn program_flags(spec: &LinuxSeccomp) -> u32 {
    let listener = if needs_listener(spec) {
        SECCOMP_FILTER_FLAG_NEW_LISTENER
    } else {
        0
    };
    filter_flags(spec) | listener
}

/// A flag the kernel lacks would only fail at load time, inside the container's init, as a
/// bare EINVAL; say which one at create time instead.
fn check_kernel_flags(flags: u32) -> Result<()> {
    for (name, bit) in crate::features::FLAGS {
        if flags & bit != 0 && !crate::features::kernel_supports(bit) {
            return Err(Error::Profile(format!(
                "linux.seccomp.flags: {name} is not supported by this kernel"
            )));
        }
    }
    Ok(())
}

/// Validate and compile. Syscall names libseccomp does not know are skipped, as runc does:
/// profiles such as Docker's list syscalls newer than some kernels and libseccomp versions.
pub fn compile(spec: &LinuxSeccomp) -> Result<Program> {
    let default = action(
        spec.default_action(),
        spec.default_errno_ret(),
        "linux.seccomp.defaultAction",
    )?;
    let listener = needs_listener(spec);
    let mut ctx = ScmpFilterContext::new(default).map_err(lib("the default action"))?;
    // We load the program ourselves; these attributes only matter for libseccomp's own load.
    let _ = ctx.set_ctl_nnp(false);
    for (i, arch) in spec.architectures().iter().flatten().enumerate() {
        let name = serde_json::to_value(arch)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let a = ScmpArch::from_str(&name).map_err(|_| {
            Error::Profile(format!(
                "linux.seccomp.architectures[{i}]: unknown architecture {name:?}"
            ))
        })?;
        if a != ScmpArch::native() {
            ctx.add_arch(a)
                .map_err(lib(format!("linux.seccomp.architectures[{i}] {name}")))?;
        }
    }
    for (i, rule) in spec.syscalls().iter().flatten().enumerate() {
        let field = format!("linux.seccomp.syscalls[{i}]");
        let act = action(rule.action(), rule.errno_ret(), &format!("{field}.action"))?;
        if act == default {
            // libseccomp refuses rules equal to the default action; they change nothing.
            continue;
        }
        let mut conds = Vec::new();
        for (j, arg) in rule.args().iter().flatten().enumerate() {
            if arg.index() > 5 {
                return Err(Error::Profile(format!(
                    "{field}.args[{j}].index: {} is out of range (0..5)",
                    arg.index()
                )));
            }
            let (op, datum) = match arg.op() {
                LinuxSeccompOperator::ScmpCmpMaskedEq => (
                    operator(arg.op(), Some(arg.value())),
                    arg.value_two().unwrap_or(0),
                ),
                other => (operator(other, arg.value_two()), arg.value()),
            };
            conds.push(ScmpArgCompare::new(arg.index() as u32, op, datum));
        }
        if rule.names().is_empty() {
            return Err(Error::Profile(format!("{field}.names: empty")));
        }
        for name in rule.names() {
            let sc = match ScmpSyscall::from_name(name) {
                Ok(sc) => sc,
                Err(_) => continue,
            };
            // Several conditions on the same argument cannot be one libseccomp rule: as runc
            // does, they become one rule each (matching any of them).
            let same_arg = conds.len() > 1
                && rule.args().iter().flatten().all(|a| {
                    Some(a.index())
                        == rule
                            .args()
                            .as_ref()
                            .and_then(|v| v.first())
                            .map(|f| f.index())
                });
            let what = format!("{field} ({name})");
            if conds.is_empty() {
                ctx.add_rule(act, sc).map_err(lib(what))?;
            } else if same_arg {
                for c in &conds {
                    ctx.add_rule_conditional(act, sc, std::slice::from_ref(c))
                        .map_err(lib(what.clone()))?;
                }
            } else {
                ctx.add_rule_conditional(act, sc, &conds)
                    .map_err(lib(what))?;
            }
        }
    }
    if listener && spec.listener_path().is_none() {
        return Err(Error::Profile(
            "linux.seccomp.listenerPath: required when an action is SCMP_ACT_NOTIFY".into(),
        ));
    }
    check_kernel_flags(filter_flags(spec))?;
    let flags = program_flags(spec);
    let mut bpf = export(&ctx)?;
    if let Some(max_nr) = crate::enosys::max_known_syscall(spec) {
        bpf = crate::enosys::patch(bpf, max_nr);
    }
    // The kernel refuses it at load (EINVAL, in the container's init); say so at create.
    if bpf.len() > MAX_INSNS {
        return Err(Error::Profile(format!(
            "linux.seccomp: the profile compiles to {} BPF instructions, more than the kernel's \
             limit of {MAX_INSNS} (BPF_MAXINSNS); merge rules or drop argument conditions",
            bpf.len()
        )));
    }
    Ok(Program::new(bpf, flags, listener))
}

/// libseccomp 2.5 exports to a file descriptor only: use a memfd and read it back.
fn export(ctx: &ScmpFilterContext) -> Result<Vec<Instruction>> {
    // SAFETY: plain syscall with a static C string.
    let fd = unsafe { libc::memfd_create(c"vessel-seccomp".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).map_err(io("memfd_create"));
    }
    // SAFETY: fresh descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    ctx.export_bpf(&fd)
        .map_err(lib("the compiled program (export)"))?;
    let mut f = std::fs::File::from(fd);
    f.rewind().map_err(io("read the compiled program"))?;
    let mut raw = Vec::new();
    f.read_to_end(&mut raw)
        .map_err(io("read the compiled program"))?;
    if raw.len() % 8 != 0 || raw.is_empty() {
        return Err(Error::Profile(format!(
            "libseccomp exported {} bytes, not whole BPF instructions",
            raw.len()
        )));
    }
    Ok(raw.chunks_exact(8).map(Instruction::from_bytes).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> LinuxSeccomp {
        serde_json::from_value(v).expect("valid profile")
    }

    fn err(v: serde_json::Value) -> String {
        match compile(&spec(v)) {
            Ok(_) => panic!("compiled"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn errno_out_of_range_names_the_field() {
        let e = err(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 70000}]
        }));
        assert!(e.contains("linux.seccomp.syscalls[0].action"), "{e}");
        assert!(e.contains("70000"), "{e}");
    }

    #[test]
    fn arg_index_over_five_names_the_field() {
        let e = err(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ERRNO"},
                {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                          {"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}
            ]
        }));
        assert!(
            e.contains("linux.seccomp.syscalls[1].args[1].index: 6"),
            "{e}"
        );
    }

    #[test]
    fn notify_needs_a_listener_path_and_sets_new_listener() {
        let e = err(serde_json::json!({"defaultAction": "SCMP_ACT_NOTIFY"}));
        assert!(e.contains("linux.seccomp.listenerPath"), "{e}");
        let p = compile(&spec(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "listenerPath": "/run/agent.sock",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]
        })))
        .expect("compiles");
        assert!(p.needs_listener());
        assert_ne!(p.flags() & SECCOMP_FILTER_FLAG_NEW_LISTENER, 0);
    }

    #[test]
    fn empty_names_is_an_error() {
        let e = err(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": [], "action": "SCMP_ACT_ERRNO"}]
        }));
        assert!(e.contains("linux.seccomp.syscalls[0].names"), "{e}");
    }

    #[test]
    fn unknown_operator_is_refused_when_parsing() {
        let bad: std::result::Result<LinuxSeccomp, _> = serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO",
                          "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_FOO"}]}]
        }));
        let e = bad.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("SCMP_CMP_FOO"), "{e}");
    }

    #[test]
    fn flags_map_to_kernel_bits() {
        let s = spec(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"]
        }));
        assert_eq!(
            filter_flags(&s),
            SECCOMP_FILTER_FLAG_LOG | SECCOMP_FILTER_FLAG_SPEC_ALLOW
        );
        // This kernel (6.x) has LOG; the program carries the flag.
        let p = compile(&s).expect("compiles");
        assert_ne!(p.flags() & SECCOMP_FILTER_FLAG_LOG, 0);
    }

    #[test]
    fn a_program_longer_than_the_kernel_takes_is_refused() {
        // Found while writing fuzz/fuzz_targets/seccomp_compile.rs (its property: a compiled
        // program has at most BPF_MAXINSNS instructions): 250 rules of six conditions each
        // compile to ~5500 instructions, which seccomp(2) refuses only at load.
        let rules: Vec<_> = (0..250)
            .map(|i| {
                let args: Vec<_> = (0..6)
                    .map(|a| serde_json::json!({"index": a, "value": i * 6 + a, "op": "SCMP_CMP_EQ"}))
                    .collect();
                serde_json::json!({"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": args})
            })
            .collect();
        let e = err(serde_json::json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": rules}));
        assert!(
            e.contains("linux.seccomp") && e.contains("BPF_MAXINSNS"),
            "{e}"
        );
    }

    #[test]
    fn rules_equal_to_the_default_are_dropped_not_refused() {
        compile(&spec(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]
        })))
        .expect("compiles");
    }
}
