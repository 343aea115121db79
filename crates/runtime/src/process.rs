//! Turning the `process` section into the kernel's view of a process: rlimits, scheduling,
//! user and groups, capabilities, no_new_privs, seccomp, working directory and the program.
//! Shared by the container's init and by `exec`. Runs in the child, after namespaces and
//! mounts, before execve.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use caps::{CapSet, Capability, CapsHashSet};
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{
    Capabilities, IOPriorityClass, LinuxSchedulerFlag, LinuxSchedulerPolicy, PosixRlimitType,
    Process,
};

use crate::error::{Context, Error, Result};

/// Everything prepared in the parent before fork, so the child only makes syscalls.
pub struct Prepared {
    pub program: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    pub seccomp: Option<vessel_seccomp::Program>,
}

impl Prepared {
    pub fn new(process: &Process, seccomp: Option<vessel_seccomp::Program>) -> Result<Prepared> {
        let args = process.args().as_deref().unwrap_or(&[]);
        let argv = args
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| Error::config("process.args: an argument contains a NUL byte"))?;
        let envp = process
            .env()
            .iter()
            .flatten()
            .map(|e| CString::new(e.as_bytes()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| Error::config("process.env: a variable contains a NUL byte"))?;
        let program = argv
            .first()
            .cloned()
            .ok_or_else(|| Error::config("process.args: must name the program to run"))?;
        Ok(Prepared {
            program,
            argv,
            envp,
            seccomp,
        })
    }
}

/// Find the program the way execvp would, with the container's PATH, inside the container's
/// root (we are already pivoted). Done before the container reports "created", so a typo in
/// args[0] fails `create`, not silently at `start`.
pub fn resolve_program(process: &Process) -> Result<PathBuf> {
    let arg0 = process
        .args()
        .as_deref()
        .and_then(|a| a.first())
        .ok_or_else(|| Error::config("process.args: must name the program to run"))?;
    if arg0.contains('/') {
        let p = if Path::new(arg0).is_absolute() {
            PathBuf::from(arg0)
        } else {
            process.cwd().join(arg0)
        };
        return check_executable(&p).map(|_| p);
    }
    let path = process
        .env()
        .iter()
        .flatten()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(arg0);
        if check_executable(&candidate).is_ok() {
            return Ok(candidate);
        }
    }
    Err(Error::Child(format!(
        "exec: {arg0:?}: executable file not found in $PATH"
    )))
}

fn check_executable(p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(p).map_err(|e| Error::Child(format!("exec: {}: {e}", p.display())))?;
    if meta.is_dir() {
        return Err(Error::Child(format!(
            "exec: {}: is a directory",
            p.display()
        )));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(Error::Child(format!(
            "exec: {}: permission denied",
            p.display()
        )));
    }
    Ok(())
}

pub fn apply_rlimits(process: &Process) -> Result<()> {
    for r in process.rlimits().iter().flatten() {
        let resource = rlimit_resource(r.typ());
        let lim = libc::rlimit {
            rlim_cur: r.soft(),
            rlim_max: r.hard(),
        };
        // SAFETY: valid pointer to a stack struct.
        if unsafe { libc::setrlimit(resource, &lim) } != 0 {
            let err = std::io::Error::last_os_error();
            return Err(Error::Child(format!(
                "process.rlimits: set {} to soft={} hard={}: {err}{}",
                rlimit_name(r.typ()),
                r.soft(),
                r.hard(),
                if err.raw_os_error() == Some(libc::EPERM) {
                    " (raising a hard limit needs CAP_SYS_RESOURCE)"
                } else {
                    ""
                }
            )));
        }
    }
    Ok(())
}

pub fn rlimit_name(t: PosixRlimitType) -> String {
    serde_json::to_value(t)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{t:?}"))
}

fn rlimit_resource(t: PosixRlimitType) -> libc::__rlimit_resource_t {
    use PosixRlimitType as T;
    match t {
        T::RlimitCpu => libc::RLIMIT_CPU,
        T::RlimitFsize => libc::RLIMIT_FSIZE,
        T::RlimitData => libc::RLIMIT_DATA,
        T::RlimitStack => libc::RLIMIT_STACK,
        T::RlimitCore => libc::RLIMIT_CORE,
        T::RlimitRss => libc::RLIMIT_RSS,
        T::RlimitNproc => libc::RLIMIT_NPROC,
        T::RlimitNofile => libc::RLIMIT_NOFILE,
        T::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        T::RlimitAs => libc::RLIMIT_AS,
        T::RlimitLocks => libc::RLIMIT_LOCKS,
        T::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        T::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        T::RlimitNice => libc::RLIMIT_NICE,
        T::RlimitRtprio => libc::RLIMIT_RTPRIO,
        T::RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

/// ioPriority, scheduler and the initial CPU affinity.
pub fn apply_scheduling(process: &Process) -> Result<()> {
    if let Some(io) = process.io_priority() {
        let class = match io.class() {
            IOPriorityClass::IoprioClassRt => 1,
            IOPriorityClass::IoprioClassBe => 2,
            IOPriorityClass::IoprioClassIdle => 3,
        };
        if !(0..=7).contains(&io.priority()) {
            return Err(Error::config(format!(
                "process.ioPriority.priority: {} is outside 0..7",
                io.priority()
            )));
        }
        let value = (class << 13) | io.priority() as i32;
        // SAFETY: plain syscall; IOPRIO_WHO_PROCESS = 1, pid 0 = self.
        if unsafe { libc::syscall(libc::SYS_ioprio_set, 1, 0, value) } < 0 {
            return Err(std::io::Error::last_os_error()).ctx(|| "process.ioPriority: ioprio_set");
        }
    }
    if let Some(s) = process.scheduler() {
        set_scheduler(s)?;
    }
    if let Some(initial) = process
        .exec_cpu_affinity()
        .as_ref()
        .and_then(|a| a.initial().as_deref())
    {
        set_affinity(initial, "process.execCPUAffinity.initial")?;
    }
    Ok(())
}

pub fn apply_final_affinity(process: &Process) -> Result<()> {
    if let Some(fin) = process
        .exec_cpu_affinity()
        .as_ref()
        .and_then(|a| a.cpu_affinity_final().as_deref())
    {
        set_affinity(fin, "process.execCPUAffinity.final")?;
    }
    Ok(())
}

fn set_scheduler(s: &oci_spec::runtime::Scheduler) -> Result<()> {
    #[repr(C)]
    #[derive(Default)]
    struct SchedAttr {
        size: u32,
        policy: u32,
        flags: u64,
        nice: i32,
        priority: u32,
        runtime: u64,
        deadline: u64,
        period: u64,
    }
    let policy = match s.policy() {
        LinuxSchedulerPolicy::SchedOther => 0,
        LinuxSchedulerPolicy::SchedFifo => 1,
        LinuxSchedulerPolicy::SchedRr => 2,
        LinuxSchedulerPolicy::SchedBatch => 3,
        LinuxSchedulerPolicy::SchedIso => 4,
        LinuxSchedulerPolicy::SchedIdle => 5,
        LinuxSchedulerPolicy::SchedDeadline => 6,
    };
    let mut flags = 0u64;
    for f in s.flags().iter().flatten() {
        flags |= match f {
            LinuxSchedulerFlag::SchedResetOnFork => 0x01,
            LinuxSchedulerFlag::SchedFlagReclaim => 0x02,
            LinuxSchedulerFlag::SchedFlagDLOverrun => 0x04,
            LinuxSchedulerFlag::SchedFlagKeepPolicy => 0x08,
            LinuxSchedulerFlag::SchedFlagKeepParams => 0x10,
            LinuxSchedulerFlag::SchedFlagUtilClampMin => 0x20,
            LinuxSchedulerFlag::SchedFlagUtilClampMax => 0x40,
        };
    }
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy,
        flags,
        nice: s.nice().unwrap_or(0),
        priority: s.priority().unwrap_or(0) as u32,
        runtime: s.runtime().unwrap_or(0),
        deadline: s.deadline().unwrap_or(0),
        period: s.period().unwrap_or(0),
    };
    // SAFETY: valid pointer; pid 0 = self.
    if unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) } < 0 {
        return Err(std::io::Error::last_os_error())
            .ctx(|| format!("process.scheduler: sched_setattr {:?}", s.policy()));
    }
    Ok(())
}

/// Parse a CPU list such as "0-3,7" into a set.
pub fn parse_cpu_list(list: &str) -> std::result::Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let a: usize = a.trim().parse().map_err(|_| format!("bad CPU {part:?}"))?;
        let b: usize = b.trim().parse().map_err(|_| format!("bad CPU {part:?}"))?;
        if a > b || b >= libc::CPU_SETSIZE as usize {
            return Err(format!("bad CPU range {part:?}"));
        }
        cpus.extend(a..=b);
    }
    Ok(cpus)
}

fn set_affinity(list: &str, field: &str) -> Result<()> {
    let cpus = parse_cpu_list(list).map_err(|e| Error::config(format!("{field}: {e}")))?;
    let mut set = nix::sched::CpuSet::new();
    for c in cpus {
        set.set(c)
            .map_err(|e| Error::config(format!("{field}: {e}")))?;
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .ctx(|| format!("{field}: sched_setaffinity {list}"))
}

fn to_caps(set: Option<&Capabilities>, known: &CapsHashSet) -> CapsHashSet {
    let mut out = CapsHashSet::new();
    for c in set.into_iter().flatten() {
        // oci-spec prints "CHOWN"; the caps crate wants "CAP_CHOWN". Capabilities this kernel
        // does not know are skipped, as runc does.
        if let Ok(cap) = Capability::from_str(&format!("CAP_{c}")) {
            if known.contains(&cap) {
                out.insert(cap);
            }
        }
    }
    out
}

/// Drop the bounding set, switch user and group, then set the remaining capability sets —
/// in that order, because dropping the bounding set needs CAP_SETPCAP and changing ids
/// clears the effective set unless KEEPCAPS is on.
pub fn apply_user_and_caps(process: &Process, allow_setgroups: bool) -> Result<()> {
    let known = caps::runtime::procfs_all_supported(None).unwrap_or_else(|_| caps::all());
    let spec_caps = process.capabilities().as_ref();
    if let Some(c) = spec_caps {
        let bounding = to_caps(c.bounding().as_ref(), &known);
        for cap in &known {
            if !bounding.contains(cap) {
                caps::drop(None, CapSet::Bounding, *cap).map_err(|e| {
                    Error::Child(format!("process.capabilities.bounding: drop {cap}: {e}"))
                })?;
            }
        }
    }
    let user = process.user();
    nix::sys::prctl::set_keepcaps(true).ctx(|| "prctl(PR_SET_KEEPCAPS)")?;
    if allow_setgroups {
        let gids: Vec<Gid> = user
            .additional_gids()
            .iter()
            .flatten()
            .map(|g| Gid::from_raw(*g))
            .collect();
        nix::unistd::setgroups(&gids)
            .ctx(|| format!("process.user.additionalGids: setgroups {gids:?}"))?;
    }
    let gid = Gid::from_raw(user.gid());
    nix::unistd::setresgid(gid, gid, gid).ctx(|| format!("process.user.gid: setresgid {gid}"))?;
    let uid = Uid::from_raw(user.uid());
    nix::unistd::setresuid(uid, uid, uid).ctx(|| format!("process.user.uid: setresuid {uid}"))?;
    nix::sys::prctl::set_keepcaps(false).ctx(|| "prctl(PR_SET_KEEPCAPS)")?;

    let (effective, permitted, inheritable, ambient) = match spec_caps {
        Some(c) => (
            to_caps(c.effective().as_ref(), &known),
            to_caps(c.permitted().as_ref(), &known),
            to_caps(c.inheritable().as_ref(), &known),
            to_caps(c.ambient().as_ref(), &known),
        ),
        // No capabilities section: keep what the kernel gives the user (root keeps all).
        None => return Ok(()),
    };
    capset(&effective, &permitted, &inheritable).map_err(|e| {
        Error::Child(format!(
            "process.capabilities: set effective/permitted/inheritable: {e} (effective must be a subset of permitted)"
        ))
    })?;
    caps::clear(None, CapSet::Ambient)
        .map_err(|e| Error::Child(format!("process.capabilities.ambient: {e}")))?;
    // The kernel only allows ambient capabilities that are permitted and inheritable; runc
    // skips the others (its own default spec asks for ambient without inheritable).
    for cap in ambient
        .intersection(&permitted)
        .filter(|c| inheritable.contains(c))
        .copied()
    {
        caps::raise(None, CapSet::Ambient, cap)
            .map_err(|e| Error::Child(format!("process.capabilities.ambient: raise {cap}: {e} (it must also be permitted and inheritable)")))?;
    }
    Ok(())
}

/// One capset(2) for the three sets: setting them one by one would fail whenever an
/// intermediate state breaks effective ⊆ permitted.
fn capset(e: &CapsHashSet, p: &CapsHashSet, i: &CapsHashSet) -> std::io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut data = [Data::default(); 2];
    let mut put = |set: &CapsHashSet, f: fn(&mut Data) -> &mut u32| {
        for c in set {
            let bit = c.index() as usize;
            *f(&mut data[bit / 32]) |= 1 << (bit % 32);
        }
    };
    put(e, |d| &mut d.effective);
    put(p, |d| &mut d.permitted);
    put(i, |d| &mut d.inheritable);
    let header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: valid header and two data structs, as capset(2) requires for version 3.
    if unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

pub fn set_no_new_privs() -> Result<()> {
    nix::sys::prctl::set_no_new_privs()
        .ctx(|| "process.noNewPrivileges: prctl(PR_SET_NO_NEW_PRIVS)")
}

pub fn load_seccomp(program: &vessel_seccomp::Program) -> Result<Option<OwnedFd>> {
    program
        .load()
        .map_err(|e| Error::Child(format!("linux.seccomp: load the filter: {e}")))
}

/// chdir into process.cwd as the final user, and make sure we really are inside the
/// container's root (a leaked descriptor could otherwise be used as a way out).
pub fn enter_cwd(process: &Process) -> Result<()> {
    let cwd = process.cwd();
    nix::unistd::chdir(cwd.as_path()).ctx(|| format!("process.cwd: chdir {}", cwd.display()))?;
    let outside = || {
        Error::Child(format!(
            "process.cwd: {} resolves outside the container",
            cwd.display()
        ))
    };
    // getcwd fails with ENOENT when the directory is not reachable from our root.
    let now = nix::unistd::getcwd().map_err(|_| outside())?;
    if !now.is_absolute() || now.starts_with("(unreachable)") {
        return Err(outside());
    }
    Ok(())
}

pub fn set_umask(process: &Process) {
    let mask = process.user().umask().unwrap_or(0o022);
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
}

/// The last step: become the user's program. Only returns on failure.
pub fn exec(prepared: &Prepared, resolved: &Path) -> Error {
    let path = match crate::sys::cstr(resolved) {
        Ok(p) => p,
        Err(e) => return Error::Child(e.to_string()),
    };
    let err = nix::unistd::execve(&path, &prepared.argv, &prepared.envp).unwrap_err();
    Error::Child(format!("exec {}: {err}", resolved.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-2,5").unwrap(), vec![0, 1, 2, 5]);
        assert_eq!(parse_cpu_list("3").unwrap(), vec![3]);
        assert!(parse_cpu_list("2-1").is_err());
        assert!(parse_cpu_list("x").is_err());
    }
}
