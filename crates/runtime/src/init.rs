//! The container's init, from clone to execve. Runs in the child of a single-threaded
//! runtime, so it may allocate and use std freely; it reports every failure to the parent
//! over the typed channel and exits without running any of the parent's destructors.

use std::convert::Infallible;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::unistd::{setresgid, setresuid, Gid, Uid};
use oci_spec::runtime::{Process, Spec};

use crate::channel::{Channel, Msg};
use crate::console;
use crate::error::{Context, Error, Result};
use crate::hooks::{self, HookState};
use crate::mounts::{self, RootfsContext};
use crate::namespaces::NsPlan;
use crate::process::{self, Prepared};
use crate::sys::{self, Forked};

pub struct InitContext<'a> {
    pub id: &'a str,
    pub spec: &'a Spec,
    pub process: &'a Process,
    pub rootfs: &'a Path,
    pub bundle: &'a Path,
    pub plan: &'a NsPlan,
    pub channel: &'a Channel,
    pub console: Option<RawFd>,
    pub fifo: &'a OwnedFd,
    pub prepared: &'a Prepared,
    /// Set when the init moves itself into its v1 cgroups (see `create`).
    pub join_v1: Option<&'a vessel_cgroups::CgroupManager>,
    /// Id-mapped bind mounts prepared by the parent, attached while building the rootfs.
    pub idmapped: &'a crate::idmap::DetachedBinds,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
    pub preserve_fds: u32,
    /// Descriptors of the parent the child must close first: the state dir lock, and the
    /// cgroup directory the clone placed it in (a directory outside the rootfs).
    pub close_first: [Option<RawFd>; 2],
}

fn exit(code: i32) -> ! {
    // SAFETY: _exit skips the parent's atexit handlers and destructors, as a forked child must.
    unsafe { libc::_exit(code) }
}

/// Slow path: join namespaces (user first), create the user namespace if asked, then clone
/// the init with CLONE_PARENT so it becomes the runtime's child, report its PID and leave.
pub fn intermediate(ctx: &InitContext) -> ! {
    close_inherited(ctx);
    let result = (|| -> Result<i32> {
        ctx.plan.join_all()?;
        let mut flags = ctx.plan.clone_flags;
        if ctx.plan.new_user {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)
                .ctx(|| "unshare the user namespace")?;
            ctx.channel
                .send(&Msg::WriteMaps(nix::unistd::getpid().as_raw()))?;
            ctx.channel.expect(&Msg::Continue, "wait for the id maps")?;
            flags.remove(nix::sched::CloneFlags::CLONE_NEWUSER);
        }
        // SAFETY: single-threaded; the child runs the init.
        match unsafe { sys::clone3(flags, libc::CLONE_PARENT as u64, None) }
            .ctx(|| "clone the container init")?
        {
            Forked::Child => run_joined(ctx),
            Forked::Parent(pid) => Ok(pid),
        }
    })();
    match result {
        Ok(pid) => {
            let _ = ctx.channel.send(&Msg::Pid(pid));
            exit(0)
        }
        Err(e) => {
            let _ = ctx.channel.report_failure(e.to_string());
            exit(1)
        }
    }
}

/// Fast path entry: the clone already created the namespaces; join the others and go.
pub fn run(ctx: &InitContext) -> ! {
    close_inherited(ctx);
    let result = ctx.plan.join_all().and_then(|_| setup(ctx));
    fail(ctx, result)
}

fn close_inherited(ctx: &InitContext) {
    for fd in ctx.close_first.into_iter().flatten() {
        let _ = nix::unistd::close(fd);
    }
}

fn run_joined(ctx: &InitContext) -> ! {
    fail(ctx, setup(ctx))
}

fn fail(ctx: &InitContext, result: Result<Infallible>) -> ! {
    let Err(e) = result;
    if ctx.channel.report_failure(e.to_string()).is_err() {
        // After `create` returned nobody listens on the channel; stderr is all we have.
        eprintln!("vessel-runtime: container {}: {e}", ctx.id);
    }
    exit(127)
}

fn setup(ctx: &InitContext) -> Result<Infallible> {
    let spec = ctx.spec;
    let process = ctx.process;
    // The parent writes our id maps and puts us in our cgroup, then tells us our PID.
    let host_pid = match ctx.channel.recv()? {
        Some((Msg::Pid(p), _)) => p,
        Some((Msg::Failed(t), _)) => return Err(Error::Child(t)),
        _ => return Err(Error::Child("the runtime went away during create".into())),
    };
    if ctx.plan.new_user && maps_root(spec) {
        // Become root of the new user namespace (we were "nobody" until the maps existed).
        setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
            .ctx(|| "setresgid(0) in the user namespace")?;
        setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
            .ctx(|| "setresuid(0) in the user namespace")?;
    }
    ctx.plan.late_unshare(spec)?;
    // Into our cgroup — by ourselves or by the parent meanwhile — once, before the cgroup
    // namespace, cgroup mounts, hooks or user code.
    let joined = std::cell::Cell::new(false);
    let join_cgroup = || -> Result<()> {
        if !joined.get() {
            if let Some(cg) = ctx.join_v1 {
                cg.join_v1_self()?;
            }
            ctx.channel.expect(&Msg::Continue, "wait for the cgroup")?;
            ctx.plan.unshare_cgroupns()?;
            joined.set(true);
        }
        Ok(())
    };
    if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        nix::unistd::sethostname(h).ctx(|| format!("hostname: set {h:?}"))?;
    }
    if let Some(d) = spec.domainname().as_deref().filter(|d| !d.is_empty()) {
        // SAFETY: valid buffer and length.
        if unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) } != 0 {
            return Err(std::io::Error::last_os_error()).ctx(|| format!("domainname: set {d:?}"));
        }
    }
    if !ctx.no_new_keyring {
        join_session_keyring(ctx.id);
    }

    let in_userns = ctx.plan.enters_user_ns();
    let root = if ctx.plan.new_mount {
        Some(mounts::prepare(&RootfsContext {
            spec,
            rootfs: ctx.rootfs,
            idmapped: ctx.idmapped,
            in_userns,
            new_cgroupns: spec
                .linux()
                .as_ref()
                .and_then(|l| l.namespaces().as_ref())
                .is_some_and(|ns| {
                    ns.iter().any(|n| {
                        n.typ() == oci_spec::runtime::LinuxNamespaceType::Cgroup
                            && n.path().is_none()
                    })
                }),
            before_cgroup_mount: &join_cgroup,
            defer_proc: ctx.plan.late_pid.is_some(),
        })?)
    } else {
        None
    };
    join_cgroup()?;

    let hooks = spec.hooks().as_ref();
    let has_runtime_hooks = hooks.is_some_and(|h| {
        h.prestart().as_ref().is_some_and(|v| !v.is_empty())
            || h.create_runtime().as_ref().is_some_and(|v| !v.is_empty())
    });
    if has_runtime_hooks {
        ctx.channel.send(&Msg::RunHooks)?;
        ctx.channel
            .expect(&Msg::Continue, "wait for the runtime hooks")?;
    }
    let annotations = spec.annotations().clone().unwrap_or_default();
    let hook_state = |status, pid| HookState {
        oci_version: spec.version(),
        id: ctx.id,
        status,
        pid: Some(pid),
        bundle: ctx.bundle,
        annotations: Some(&annotations),
    };
    hooks::run_all(
        "createContainer",
        hooks.and_then(|h| h.create_container().as_ref()),
        &hook_state("creating", host_pid),
    )?;

    let deferred = match root {
        Some(prepared) => {
            mounts::switch_root(prepared.root, ctx.rootfs, ctx.no_pivot)?;
            Some(prepared.deferred)
        }
        None => {
            nix::unistd::chroot(ctx.rootfs).ctx(|| format!("chroot {}", ctx.rootfs.display()))?;
            nix::unistd::chdir("/").ctx(|| "chdir /")?;
            None
        }
    };
    let host_pid = match &ctx.plan.late_pid {
        Some(pid_ns) => enter_joined_pid_ns(ctx.channel, pid_ns)?,
        None => host_pid,
    };
    if let Some(deferred) = deferred {
        mounts::attach_deferred(deferred)?;
        mounts::finish(spec)?;
    }
    process::create_cwd(process)?;

    nix::unistd::setsid().ctx(|| "setsid")?;
    if process.terminal().unwrap_or(false) {
        let socket = ctx
            .console
            .ok_or_else(|| Error::Usage("process.terminal needs --console-socket".into()))?;
        let (master, slave) = console::open_pty(process.console_size().as_ref())?;
        console::send_master(socket, &master)?;
        drop(master);
        console::become_tty(&slave)?;
    }
    if let Some(fd) = ctx.console {
        let _ = nix::unistd::close(fd);
    }

    let envp = setup_process(
        ctx.channel,
        process,
        ctx.prepared,
        spec,
        ctx.preserve_fds,
        true,
    )?;
    ctx.channel.send(&Msg::Ready)?;

    // Wait for `start`.
    let mut byte = [0u8; 1];
    loop {
        match nix::unistd::read(ctx.fifo.as_raw_fd(), &mut byte) {
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).ctx(|| "wait for start on the exec fifo"),
        }
    }
    hooks::run_all_in_container(
        "startContainer",
        hooks.and_then(|h| h.start_container().as_ref()),
        &hook_state("created", host_pid),
        process.env().as_deref().unwrap_or(&[]),
    )?;
    finish_and_exec(process, ctx.prepared, &envp)
}

/// Join the pid namespace given by path, now that we are in the container's root: fork the
/// process that becomes the container (a child of the runtime, through CLONE_PARENT), tell
/// the runtime its PID and leave. Until now the processes in that namespace — other
/// containers — could not see us; had they seen us while we set up the rootfs, one with
/// CAP_SYS_PTRACE could have reached the host's filesystem through /proc/PID/root or cwd.
/// Returns (in the new process) its PID in the runtime's pid namespace.
fn enter_joined_pid_ns(channel: &Channel, pid_ns: &OwnedFd) -> Result<i32> {
    use std::os::fd::AsFd;
    nix::sched::setns(pid_ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWPID)
        .ctx(|| "join the container's pid namespace")?;
    // SAFETY: single-threaded; the child carries on with the setup.
    match unsafe {
        sys::clone3(
            nix::sched::CloneFlags::empty(),
            libc::CLONE_PARENT as u64,
            None,
        )
    }
    .ctx(|| "clone into the container's pid namespace")?
    {
        Forked::Child => match channel.recv()? {
            Some((Msg::Pid(p), _)) => Ok(p),
            _ => Err(Error::Child(
                "the runtime went away while entering the pid namespace".into(),
            )),
        },
        Forked::Parent(pid) => {
            let code = if channel.send(&Msg::Reparent(pid)).is_ok() {
                0
            } else {
                1
            };
            exit(code)
        }
    }
}

/// Whether the uid map gives the user namespace a root (container id 0).
fn maps_root(spec: &Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.uid_mappings().as_ref())
        .is_some_and(|m| m.iter().any(|m| m.container_id() == 0))
}

/// The part shared with `exec`, in runc's order, so that a seccomp profile or a user without
/// privileges never stands in the way of the runtime's own steps:
/// 1. limits, scheduling, personality, the program looked up;
/// 2. every descriptor past stdio (+ preserved ones) close-on-exec, and the cwd created if
///    missing and entered — both as root and before any filter (a profile without
///    close_range or getcwd must not break them; the cwd check must not be fooled by one);
/// 3. the stdio the runtime was handed given to the process's user (as runc), HOME from the
///    container's passwd if the environment lacks it;
/// 4. the filter that needs CAP_SYS_ADMIN (no no_new_privs), then user and capabilities
///    (a cwd root may not enter is retried as the user), no_new_privs, the umask;
/// 5. the LSM label, then the no_new_privs filter — before `start`, so the startContainer
///    hooks run under it, as with runc.
///
/// Returns the environment to exec with.
pub fn setup_process(
    channel: &Channel,
    process: &Process,
    prepared: &Prepared,
    spec: &Spec,
    preserve_fds: u32,
    resolve_now: bool,
) -> Result<Vec<std::ffi::CString>> {
    process::apply_rlimits(process)?;
    process::apply_scheduling(process)?;
    if let Some(p) = spec.linux().as_ref().and_then(|l| l.personality().as_ref()) {
        let persona = match p.domain() {
            oci_spec::runtime::LinuxPersonalityDomain::PerLinux32 => 0x0008,
            _ => 0x0000,
        };
        // SAFETY: plain syscall.
        if unsafe { libc::personality(persona) } < 0 {
            return Err(std::io::Error::last_os_error()).ctx(|| "linux.personality");
        }
    }
    if resolve_now {
        process::resolve_program(process)?;
    }
    sys::cloexec_from(3 + preserve_fds).ctx(|| "mark inherited descriptors close-on-exec")?;
    let cwd_entered = process::enter_cwd(process, true)?;
    process::give_stdio_to_user(process.user().uid());
    let envp = process::env_with_home(&prepared.envp, process.user().uid());

    let nnp = process.no_new_privileges().unwrap_or(false);
    let load = |program: &vessel_seccomp::Program| -> Result<()> {
        if let Some(listener) = process::load_seccomp(program)? {
            channel.send_with_fd(&Msg::SeccompListener, Some(listener.as_raw_fd()))?;
            drop(listener);
            channel.expect(&Msg::Continue, "hand over the seccomp listener")?;
        }
        Ok(())
    };
    // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: load it while we still
    // have it.
    if let Some(program) = prepared.seccomp.as_ref().filter(|_| !nnp) {
        load(program)?;
    }
    // Read through a verified procfs handle: a fake "deny" would make us skip setgroups and
    // keep the runtime's supplementary groups. Unreadable means allowed (setgroups then
    // fails loudly if it is not).
    let allow_setgroups = crate::procfs::Proc::open(Path::new("/proc"))
        .and_then(|p| p.read_self("setgroups"))
        .map(|s| s.trim() != "deny")
        .unwrap_or(true);
    process::apply_user_and_caps(process, allow_setgroups)?;
    if !cwd_entered {
        process::enter_cwd(process, false)?;
    }
    if nnp {
        process::set_no_new_privs()?;
    }
    process::set_umask(process);
    // Until execve replaces us, nothing in the container may open /proc/<us>/exe or our
    // memory: non-dumpable (inherited from the runtime as root; rootless, from here on).
    nix::sys::prctl::set_dumpable(false).ctx(|| "prctl(PR_SET_DUMPABLE)")?;
    crate::lsm::apply_on_exec(process)?;
    if let Some(program) = prepared.seccomp.as_ref().filter(|_| nnp) {
        load(program)?;
    }
    Ok(envp)
}

/// Last steps after `start`: final CPU affinity, execve.
pub fn finish_and_exec(
    process: &Process,
    prepared: &Prepared,
    envp: &[std::ffi::CString],
) -> Result<Infallible> {
    let resolved = process::resolve_program(process)?;
    process::apply_final_affinity(process)?;
    Err(process::exec(prepared, &resolved, envp))
}

/// runc gives each container its own session keyring, so containers don't share the
/// host's keys. Kernels or user namespaces that refuse it are not an error.
fn join_session_keyring(id: &str) {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    if let Ok(name) = std::ffi::CString::new(format!("_ses.{id}")) {
        // SAFETY: plain syscall with a valid C string.
        unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, name.as_ptr()) };
    }
}
