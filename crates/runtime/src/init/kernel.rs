//! The init's steps done on the kernel: the implementations of the traits in
//! [`super::sequence`]. Each method is one step; what a step produces for a later one (our
//! PID, the prepared root, the environment) is kept in the struct.

use std::cell::Cell;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::unistd::{setresgid, setresuid, Gid, Uid};
use oci_spec::runtime::{Process, Spec};

use super::sequence::{ExecSteps, InitSteps, ProcessSteps};
use super::InitContext;
use crate::channel::{Channel, Msg};
use crate::console;
use crate::error::{Context, Error, Result};
use crate::hooks::{self, HookState};
use crate::mounts::{self, Deferred, RootfsContext};
use crate::process::{self, Prepared};
use crate::sys::{self, Forked};

/// The process steps, shared by the container's init and `exec`.
pub struct ProcessKernel<'a> {
    channel: &'a Channel,
    process: &'a Process,
    prepared: &'a Prepared,
    spec: &'a Spec,
    preserve_fds: u32,
    program: PathBuf,
    envp: Vec<CString>,
}

impl<'a> ProcessKernel<'a> {
    pub fn new(
        channel: &'a Channel,
        process: &'a Process,
        prepared: &'a Prepared,
        spec: &'a Spec,
        preserve_fds: u32,
    ) -> Self {
        ProcessKernel {
            channel,
            process,
            prepared,
            spec,
            preserve_fds,
            program: PathBuf::new(),
            envp: Vec::new(),
        }
    }
}

impl ProcessSteps for ProcessKernel<'_> {
    fn apply_rlimits(&mut self) -> Result<()> {
        process::apply_rlimits(self.process)
    }

    fn apply_scheduling(&mut self) -> Result<()> {
        process::apply_scheduling(self.process)
    }

    fn apply_personality(&mut self) -> Result<()> {
        let Some(p) = self
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.personality().as_ref())
        else {
            return Ok(());
        };
        let persona = match p.domain() {
            oci_spec::runtime::LinuxPersonalityDomain::PerLinux32 => 0x0008,
            _ => 0x0000,
        };
        // SAFETY: plain syscall.
        if unsafe { libc::personality(persona) } < 0 {
            return Err(std::io::Error::last_os_error()).ctx(|| "linux.personality");
        }
        Ok(())
    }

    fn resolve_program(&mut self) -> Result<()> {
        self.program = process::resolve_program(self.process)?;
        Ok(())
    }

    fn close_inherited_fds(&mut self) -> Result<()> {
        sys::cloexec_from(3 + self.preserve_fds).ctx(|| "mark inherited descriptors close-on-exec")
    }

    fn enter_cwd_as_root(&mut self) -> Result<bool> {
        process::enter_cwd(self.process, true)
    }

    fn enter_cwd_as_user(&mut self) -> Result<()> {
        process::enter_cwd(self.process, false).map(drop)
    }

    fn give_stdio_to_user(&mut self) {
        process::give_stdio_to_user(self.process.user().uid());
    }

    fn prepare_env(&mut self) {
        self.envp = process::env_with_home(&self.prepared.envp, self.process.user().uid());
    }

    fn load_seccomp(&mut self) -> Result<()> {
        let Some(program) = self.prepared.seccomp.as_ref() else {
            return Ok(());
        };
        if let Some(listener) = process::load_seccomp(program)? {
            self.channel
                .send_with_fd(&Msg::SeccompListener, Some(listener.as_raw_fd()))?;
            drop(listener);
            self.channel
                .expect(&Msg::Continue, "hand over the seccomp listener")?;
        }
        Ok(())
    }

    fn apply_user_and_caps(&mut self) -> Result<()> {
        // Read through a verified procfs handle: a fake "deny" would make us skip setgroups
        // and keep the runtime's supplementary groups. Unreadable means allowed (setgroups
        // then fails loudly if it is not).
        let allow_setgroups = crate::procfs::Proc::open(Path::new("/proc"))
            .and_then(|p| p.read_self("setgroups"))
            .map(|s| s.trim() != "deny")
            .unwrap_or(true);
        process::apply_user_and_caps(self.process, allow_setgroups)
    }

    fn set_no_new_privs(&mut self) -> Result<()> {
        process::set_no_new_privs()
    }

    fn set_umask(&mut self) {
        process::set_umask(self.process);
    }

    fn set_non_dumpable(&mut self) -> Result<()> {
        // Inherited from the runtime as root; rootless, from here on.
        nix::sys::prctl::set_dumpable(false).ctx(|| "prctl(PR_SET_DUMPABLE)")
    }

    fn apply_lsm_label(&mut self) -> Result<()> {
        crate::lsm::apply_on_exec(self.process)
    }

    fn apply_final_affinity(&mut self) -> Result<()> {
        process::apply_final_affinity(self.process)
    }

    fn exec(&mut self) -> Error {
        process::exec(self.prepared, &self.program, &self.envp)
    }
}

/// Set up a pty for `process.terminal`, send its master over the console socket and make
/// the slave our controlling terminal and stdio.
fn setup_console(process: &Process, socket: Option<RawFd>) -> Result<()> {
    let socket =
        socket.ok_or_else(|| Error::Usage("process.terminal needs --console-socket".into()))?;
    let (master, slave) = console::open_pty(process.console_size().as_ref())?;
    console::send_master(socket, &master)?;
    drop(master);
    console::become_tty(&slave)
}

fn close_console_socket(socket: &mut Option<RawFd>) {
    if let Some(fd) = socket.take() {
        let _ = nix::unistd::close(fd);
    }
}

/// The container's init.
pub struct InitKernel<'a> {
    ctx: &'a InitContext<'a>,
    process: ProcessKernel<'a>,
    console: Option<RawFd>,
    /// Our PID in the runtime's pid namespace (for the hooks' state).
    host_pid: i32,
    root: Option<OwnedFd>,
    deferred: Vec<Deferred>,
    cgroup_joined: Cell<bool>,
    annotations: std::collections::HashMap<String, String>,
}

impl<'a> InitKernel<'a> {
    pub fn new(ctx: &'a InitContext<'a>) -> Self {
        InitKernel {
            ctx,
            process: ProcessKernel::new(
                ctx.channel,
                ctx.process,
                ctx.prepared,
                ctx.spec,
                ctx.preserve_fds,
            ),
            console: ctx.console,
            host_pid: 0,
            root: None,
            deferred: Vec::new(),
            cgroup_joined: Cell::new(false),
            annotations: ctx.spec.annotations().clone().unwrap_or_default(),
        }
    }

    fn hook_state(&self, status: &'a str) -> HookState<'_> {
        HookState {
            oci_version: self.ctx.spec.version(),
            id: self.ctx.id,
            status,
            pid: Some(self.host_pid),
            bundle: self.ctx.bundle,
            annotations: Some(&self.annotations),
        }
    }
}

/// A new cgroup namespace is made (listed without a path): the cgroup filesystems are then
/// mounted afresh instead of bound.
fn makes_cgroupns(spec: &Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| {
            ns.iter().any(|n| {
                n.typ() == oci_spec::runtime::LinuxNamespaceType::Cgroup && n.path().is_none()
            })
        })
}

/// Into our cgroup — by ourselves (v1, see `create`) or by the parent meanwhile — then the
/// cgroup namespace; once.
fn join_cgroup(ctx: &InitContext, joined: &Cell<bool>) -> Result<()> {
    if joined.get() {
        return Ok(());
    }
    if let Some(cg) = ctx.join_v1 {
        cg.join_v1_self()?;
    }
    ctx.channel.expect(&Msg::Continue, "wait for the cgroup")?;
    ctx.plan.unshare_cgroupns()?;
    joined.set(true);
    Ok(())
}

impl<'a> InitSteps for InitKernel<'a> {
    type Process = ProcessKernel<'a>;

    fn process(&mut self) -> &mut ProcessKernel<'a> {
        &mut self.process
    }

    fn wait_for_pid(&mut self) -> Result<()> {
        self.host_pid = match self.ctx.channel.recv()? {
            Some((Msg::Pid(p), _)) => p,
            Some((Msg::Failed(t), _)) => return Err(Error::Child(t)),
            _ => return Err(Error::Child("the runtime went away during create".into())),
        };
        Ok(())
    }

    fn become_userns_root(&mut self) -> Result<()> {
        // We were "nobody" until the maps existed.
        setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
            .ctx(|| "setresgid(0) in the user namespace")?;
        setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
            .ctx(|| "setresuid(0) in the user namespace")
    }

    fn late_unshare(&mut self) -> Result<()> {
        self.ctx.plan.late_unshare(self.ctx.spec)
    }

    fn set_hostname(&mut self) -> Result<()> {
        let h = self.ctx.spec.hostname().as_deref().unwrap_or_default();
        nix::unistd::sethostname(h).ctx(|| format!("hostname: set {h:?}"))
    }

    fn set_domainname(&mut self) -> Result<()> {
        let d = self.ctx.spec.domainname().as_deref().unwrap_or_default();
        // SAFETY: valid buffer and length.
        if unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) } != 0 {
            return Err(std::io::Error::last_os_error()).ctx(|| format!("domainname: set {d:?}"));
        }
        Ok(())
    }

    /// runc gives each container its own session keyring, so containers don't share the
    /// host's keys. Kernels or user namespaces that refuse it are not an error.
    fn join_session_keyring(&mut self) {
        const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
        if let Ok(name) = CString::new(format!("_ses.{}", self.ctx.id)) {
            // SAFETY: plain syscall with a valid C string.
            unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, name.as_ptr()) };
        }
    }

    fn prepare_rootfs(&mut self) -> Result<()> {
        let ctx = self.ctx;
        let joined = &self.cgroup_joined;
        let before_cgroup_mount = || join_cgroup(ctx, joined);
        let prepared = mounts::prepare(&RootfsContext {
            spec: ctx.spec,
            rootfs: ctx.rootfs,
            idmapped: ctx.idmapped,
            in_userns: ctx.plan.enters_user_ns(),
            new_cgroupns: makes_cgroupns(ctx.spec),
            before_cgroup_mount: &before_cgroup_mount,
            defer_proc: ctx.plan.late_pid.is_some(),
        })?;
        self.root = Some(prepared.root);
        self.deferred = prepared.deferred;
        Ok(())
    }

    fn join_cgroup(&mut self) -> Result<()> {
        join_cgroup(self.ctx, &self.cgroup_joined)
    }

    fn run_runtime_hooks(&mut self) -> Result<()> {
        self.ctx.channel.send(&Msg::RunHooks)?;
        self.ctx
            .channel
            .expect(&Msg::Continue, "wait for the runtime hooks")
            .map(drop)
    }

    fn run_create_container_hooks(&mut self) -> Result<()> {
        hooks::run_all(
            "createContainer",
            self.ctx
                .spec
                .hooks()
                .as_ref()
                .and_then(|h| h.create_container().as_ref()),
            &self.hook_state("creating"),
        )
    }

    fn switch_root(&mut self) -> Result<()> {
        let root = self
            .root
            .take()
            .ok_or_else(|| Error::Child("switch_root before the rootfs was prepared".into()))?;
        mounts::switch_root(root, self.ctx.rootfs, self.ctx.no_pivot)
    }

    fn chroot(&mut self) -> Result<()> {
        let rootfs = self.ctx.rootfs;
        nix::unistd::chroot(rootfs).ctx(|| format!("chroot {}", rootfs.display()))?;
        nix::unistd::chdir("/").ctx(|| "chdir /")
    }

    /// Join the pid namespace given by path: fork the process that becomes the container (a
    /// child of the runtime, through CLONE_PARENT), tell the runtime its PID and leave.
    fn enter_joined_pid_ns(&mut self) -> Result<()> {
        let Some(pid_ns) = self.ctx.plan.late_pid.as_ref() else {
            return Ok(());
        };
        let channel = self.ctx.channel;
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
                Some((Msg::Pid(p), _)) => {
                    self.host_pid = p;
                    Ok(())
                }
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
                super::exit(code)
            }
        }
    }

    fn finish_rootfs(&mut self) -> Result<()> {
        mounts::attach_deferred(std::mem::take(&mut self.deferred))?;
        mounts::finish(self.ctx.spec)
    }

    fn create_cwd(&mut self) -> Result<()> {
        process::create_cwd(self.ctx.process)
    }

    fn new_session(&mut self) -> Result<()> {
        nix::unistd::setsid().map(drop).ctx(|| "setsid")
    }

    fn setup_console(&mut self) -> Result<()> {
        setup_console(self.ctx.process, self.console)
    }

    fn close_console_socket(&mut self) {
        close_console_socket(&mut self.console);
    }

    fn report_ready(&mut self) -> Result<()> {
        self.ctx.channel.send(&Msg::Ready)
    }

    fn wait_for_start(&mut self) -> Result<()> {
        let mut byte = [0u8; 1];
        loop {
            match nix::unistd::read(self.ctx.fifo.as_raw_fd(), &mut byte) {
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e).ctx(|| "wait for start on the exec fifo"),
            }
        }
    }

    fn run_start_container_hooks(&mut self) -> Result<()> {
        hooks::run_all_in_container(
            "startContainer",
            self.ctx
                .spec
                .hooks()
                .as_ref()
                .and_then(|h| h.start_container().as_ref()),
            &self.hook_state("created"),
            self.ctx.process.env().as_deref().unwrap_or(&[]),
        )
    }
}

/// `exec`'s child, in the container's namespaces and cgroup.
pub struct ExecKernel<'a> {
    channel: &'a Channel,
    process: ProcessKernel<'a>,
    console: Option<RawFd>,
}

impl<'a> ExecKernel<'a> {
    pub fn new(process: ProcessKernel<'a>, console: Option<RawFd>) -> Self {
        ExecKernel {
            channel: process.channel,
            process,
            console,
        }
    }
}

impl<'a> ExecSteps for ExecKernel<'a> {
    type Process = ProcessKernel<'a>;

    fn process(&mut self) -> &mut ProcessKernel<'a> {
        &mut self.process
    }

    fn wait_for_runtime(&mut self) -> Result<()> {
        self.channel
            .expect(&Msg::Continue, "wait for the runtime")
            .map(drop)
    }

    fn new_session(&mut self) -> Result<()> {
        nix::unistd::setsid().map(drop).ctx(|| "setsid")
    }

    fn setup_console(&mut self) -> Result<()> {
        setup_console(self.process.process, self.console)
    }

    fn close_console_socket(&mut self) {
        close_console_socket(&mut self.console);
    }
}
