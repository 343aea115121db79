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
/// The container's init creates process.cwd when it is missing, as runc and crun do (in
/// the new root: the path resolves inside it). A directory root may not create (root
/// squashed) is left to the chdir, which then says what is wrong.
pub fn create_cwd(process: &Process) -> Result<()> {
    let cwd = process.cwd();
    match std::fs::create_dir_all(cwd) {
        Err(e) if e.kind() != std::io::ErrorKind::PermissionDenied => {
            Err(e).ctx(|| format!("process.cwd: create {}", cwd.display()))
        }
        _ => Ok(()),
    }
}

/// Enter process.cwd, then check that it really is inside the container: a cwd such as
/// /proc/self/fd/N through a descriptor leaked from the host would be outside
/// (CVE-2024-21626). As root, a directory root may not enter (a volume owned by the
/// container's user, root squashed) is left for a retry as the user: returns whether the
/// cwd was entered.
pub fn enter_cwd(process: &Process, as_root: bool) -> Result<bool> {
    let cwd = process.cwd();
    match nix::unistd::chdir(cwd.as_path()) {
        Ok(()) => {}
        Err(nix::errno::Errno::EACCES) if as_root => return Ok(false),
        Err(e) => return Err(e).ctx(|| format!("process.cwd: chdir {}", cwd.display())),
    }
    let outside = || {
        Error::Child(format!(
            "process.cwd: {} resolves outside the container",
            cwd.display()
        ))
    };
    // getcwd fails with ENOENT when the directory is not reachable from our root. Any other
    // failure (a seccomp profile that denies getcwd, on the retry as the user) is reported
    // as such, not as an escape; the retry only runs with the privileges of the user.
    match nix::unistd::getcwd() {
        Ok(now) if now.is_absolute() && !now.starts_with("(unreachable)") => Ok(true),
        Ok(_) | Err(nix::errno::Errno::ENOENT) => Err(outside()),
        Err(e) => Err(e).ctx(|| format!("process.cwd: check {} (getcwd)", cwd.display())),
    }
}

/// As runc: stdio handed to the runtime (a pty, conmon's pipes) belongs to the process's
/// user, so a non-root process can reopen /dev/stdout or its terminal. Only the uid changes
/// (the tty group stays); /dev/null is left alone, and so is anything the kernel will not
/// let us chown (unmapped owner, read-only /dev).
pub fn give_stdio_to_user(uid: u32) {
    for fd in 0..3 {
        let Ok(st) = nix::sys::stat::fstat(fd) else {
            continue;
        };
        let is_null = st.st_mode & libc::S_IFMT == libc::S_IFCHR
            && st.st_rdev == nix::sys::stat::makedev(1, 3);
        if is_null || st.st_uid == uid {
            continue;
        }
        // SAFETY: fchown on a descriptor we hold; -1 keeps the group.
        unsafe { libc::fchown(fd, uid, u32::MAX) };
    }
}

/// The environment to exec with: as runc, HOME from the container's /etc/passwd entry of
/// the process's uid when the environment does not set it ("/" when there is none).
pub fn env_with_home(envp: &[CString], uid: u32) -> Vec<CString> {
    let mut out = envp.to_vec();
    if envp.iter().any(|e| e.as_bytes().starts_with(b"HOME=")) {
        return out;
    }
    let home = std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| home_of(&text, uid))
        .unwrap_or_else(|| "/".into());
    if let Ok(e) = CString::new(format!("HOME={home}")) {
        out.push(e);
    }
    out
}

fn home_of(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 6 && f[2].parse() == Ok(uid) && !f[5].is_empty()).then(|| f[5].to_string())
    })
}

pub fn set_umask(process: &Process) {
    let mask = process.user().umask().unwrap_or(0o022);
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
}

/// The last step: become the user's program. Only returns on failure.
pub fn exec(prepared: &Prepared, resolved: &Path, envp: &[CString]) -> Error {
    let path = match crate::sys::cstr(resolved) {
        Ok(p) => p,
        Err(e) => return Error::Child(e.to_string()),
    };
    let err = nix::unistd::execve(&path, &prepared.argv, envp).unwrap_err();
    Error::Child(format!("exec {}: {err}", resolved.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_comes_from_the_passwd_entry() {
        let passwd =
            "root:x:0:0:root:/root:/bin/sh\nbob:x:1000:1000::/home/bob:/bin/sh\nnohome:x:7:7:::\n";
        assert_eq!(home_of(passwd, 0).as_deref(), Some("/root"));
        assert_eq!(home_of(passwd, 1000).as_deref(), Some("/home/bob"));
        assert_eq!(home_of(passwd, 7), None);
        assert_eq!(home_of(passwd, 42), None);
        let env = [CString::new("HOME=/custom").unwrap()];
        assert_eq!(env_with_home(&env, 0), env.to_vec());
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-2,5").unwrap(), vec![0, 1, 2, 5]);
        assert_eq!(parse_cpu_list("3").unwrap(), vec![3]);
        assert!(parse_cpu_list("2-1").is_err());
        assert!(parse_cpu_list("x").is_err());
    }
}
