//! The container's init, from clone to execve: the entry points here, the order of its
//! steps in [`sequence`], the steps themselves in `kernel`. Runs in the child of a single-threaded
//! runtime, so it may allocate and use std freely; it reports every failure to the parent
//! over the typed channel and exits without running any of the parent's destructors.

use std::convert::Infallible;
use std::os::fd::{OwnedFd, RawFd};
use std::path::Path;

use oci_spec::runtime::{Process, Spec};

use crate::channel::{Channel, Msg};
use crate::error::{Context, Result};
use crate::namespaces::NsPlan;
use crate::process::Prepared;
use crate::sys::{self, Forked};

mod kernel;
pub mod sequence;

use kernel::{ExecKernel, InitKernel, ProcessKernel};
use sequence::{ExecPlan, InitPlan, ProcessPlan};

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

pub(crate) fn exit(code: i32) -> ! {
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

/// The container's init, in the order of [`sequence::run_init`].
fn setup(ctx: &InitContext) -> Result<Infallible> {
    let spec = ctx.spec;
    let nonempty = |s: &Option<String>| s.as_deref().is_some_and(|s| !s.is_empty());
    let plan = InitPlan {
        become_userns_root: ctx.plan.new_user && maps_root(spec),
        hostname: nonempty(spec.hostname()),
        domainname: nonempty(spec.domainname()),
        new_session_keyring: !ctx.no_new_keyring,
        new_mount_ns: ctx.plan.new_mount,
        runtime_hooks: spec.hooks().as_ref().is_some_and(|h| {
            h.prestart().as_ref().is_some_and(|v| !v.is_empty())
                || h.create_runtime().as_ref().is_some_and(|v| !v.is_empty())
        }),
        joins_pid_ns_late: ctx.plan.late_pid.is_some(),
        terminal: ctx.process.terminal().unwrap_or(false),
        process: process_plan(ctx.process, ctx.prepared),
    };
    sequence::run_init(&mut InitKernel::new(ctx), &plan)
}

fn process_plan(process: &Process, prepared: &Prepared) -> ProcessPlan {
    ProcessPlan {
        no_new_privileges: process.no_new_privileges().unwrap_or(false),
        seccomp: prepared.seccomp.is_some(),
    }
}

/// `exec`'s child, once in the container's namespaces and cgroup: the order of
/// [`sequence::run_exec`].
pub fn exec_child(
    channel: &Channel,
    process: &Process,
    prepared: &Prepared,
    spec: &Spec,
    console: Option<RawFd>,
    preserve_fds: u32,
) -> Result<Infallible> {
    let plan = ExecPlan {
        terminal: process.terminal().unwrap_or(false),
        process: process_plan(process, prepared),
    };
    let steps = ProcessKernel::new(channel, process, prepared, spec, preserve_fds);
    sequence::run_exec(&mut ExecKernel::new(steps, console), &plan)
}

/// Whether the uid map gives the user namespace a root (container id 0).
fn maps_root(spec: &Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.uid_mappings().as_ref())
        .is_some_and(|m| m.iter().any(|m| m.container_id() == 0))
}
