//! Building the container's root filesystem inside its new mount namespace: mount options,
//! destinations resolved safely inside the rootfs, devices, pivot_root, masked and read-only
//! paths. Runs in the container's init, before any user code.
//!
//! Every destination is resolved with `openat2(RESOLVE_IN_ROOT)` from a descriptor of the
//! rootfs and mounted through `/proc/self/fd/N`, so a symlink planted in the image can never
//! redirect a mount to the host (CVE-2021-30465 class).

mod cgroup;
mod devices;
mod finish;
mod mount;
mod paths;
mod proc_guard;
mod switch_root;

pub use finish::finish;
pub use paths::{mkdir_all, mkfile};
pub use switch_root::switch_root;

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use oci_spec::runtime::{Mount, Spec};

use crate::error::{Context, Error, Result};
use crate::mount_options::{is_bind, propagation_flag, MountOptions};
use crate::sys::{
    mount_setattr, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY,
};
use devices::{create_dev_symlinks, create_devices};
use mount::mount_one;
use proc_guard::{refuse_symlinked_pseudo_fs, PROC_FILE_BINDS};

pub struct RootfsContext<'a> {
    pub spec: &'a Spec,
    pub rootfs: &'a Path,
    pub idmapped: &'a crate::idmap::DetachedBinds,
    /// Inside a new user namespace: mknod is not allowed, devices are bind-mounted instead.
    pub in_userns: bool,
    pub new_cgroupns: bool,
    /// Called before the first cgroup mount: the process must be in its cgroup (and its
    /// cgroup namespace) by then.
    pub before_cgroup_mount: &'a dyn Fn() -> Result<()>,
    /// The pid namespace is joined only after pivot_root (see `NsPlan::late_pid`): a procfs
    /// shows the pid namespace of whoever mounts it, so the mounts on /proc wait for that.
    pub defer_proc: bool,
}

/// What `prepare` made: the new root, and the mounts on /proc held back for the process in
/// the container's pid namespace ([`attach_deferred`]).
pub struct PreparedRoot {
    pub root: OwnedFd,
    pub deferred: Vec<Deferred>,
}

/// A mount on /proc prepared before pivot_root and attached after it.
pub enum Deferred {
    /// The proc filesystem itself: made with fsmount in the right pid namespace.
    Proc {
        dest: PathBuf,
        attrs: u64,
        options: Vec<(String, String)>,
    },
    /// A bind under /proc (lxcfs-style): the source cloned while the host is still in reach.
    Bind { dest: PathBuf, tree: OwnedFd },
}

/// Make the mount tree private to us, bind the rootfs onto itself (pivot_root needs a mount
/// point) and do every mount in config.json. Returns a descriptor of the new root.
pub fn prepare(ctx: &RootfsContext) -> Result<PreparedRoot> {
    let linux = ctx.spec.linux().as_ref();
    // An unbindable / could not be bound onto itself for pivot_root (EINVAL): that mode is
    // applied after the pivot (`finish`), as runc does; until then the tree is a slave.
    let propagation = linux
        .and_then(|l| l.rootfs_propagation().as_deref())
        .and_then(propagation_flag)
        .filter(|p| !p.contains(MsFlags::MS_UNBINDABLE))
        .unwrap_or(MsFlags::MS_SLAVE | MsFlags::MS_REC);
    mount(None::<&str>, "/", None::<&str>, propagation, None::<&str>)
        .ctx(|| "set the propagation of / in the container's mount namespace")?;
    // The parent of the rootfs must not be shared, or pivot_root fails (EINVAL). A
    // recursive slave or private / left no mount shared: nothing to look up then.
    let none_shared = propagation.contains(MsFlags::MS_REC)
        && propagation.intersects(MsFlags::MS_SLAVE | MsFlags::MS_PRIVATE);
    if !none_shared {
        make_parent_private(ctx.rootfs)?;
    }
    mount(
        Some(ctx.rootfs),
        ctx.rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .ctx(|| format!("bind mount the rootfs {}", ctx.rootfs.display()))?;
    let root: OwnedFd = std::fs::File::open(ctx.rootfs)
        .ctx(|| format!("open the rootfs {}", ctx.rootfs.display()))?
        .into();
    refuse_symlinked_pseudo_fs(root.as_fd())?;

    let mut dev_is_bind = false;
    let mut deferred = Vec::new();
    for (i, m) in ctx.spec.mounts().iter().flatten().enumerate() {
        if matches!(m.typ().as_deref(), Some("cgroup") | Some("cgroup2")) {
            (ctx.before_cgroup_mount)()?;
        }
        if ctx.defer_proc && m.destination().starts_with("/proc") {
            deferred.push(defer_proc_mount(m).map_err(|e| {
                Error::Child(format!("mounts[{i}] ({}): {e}", m.destination().display()))
            })?);
            continue;
        }
        mount_one(root.as_fd(), i, m, ctx).map_err(|e| {
            Error::Child(format!("mounts[{i}] ({}): {e}", m.destination().display()))
        })?;
        if m.destination() == Path::new("/dev") && is_bind(m) {
            dev_is_bind = true;
        }
    }
    if !dev_is_bind {
        create_devices(root.as_fd(), ctx)?;
        create_dev_symlinks(root.as_fd())?;
    }
    Ok(PreparedRoot { root, deferred })
}

/// Prepare a mount on /proc for [`attach_deferred`]: the proc filesystem itself, or a bind
/// of an allowed file (the same rule as `refuse_shadowing_proc`, decided on the path since
/// nothing is resolved yet).
fn defer_proc_mount(m: &Mount) -> Result<Deferred> {
    let opts = MountOptions::parse(m.options().as_deref().unwrap_or(&[])).map_err(Error::Config)?;
    let dest = m.destination().to_path_buf();
    let mut attrs = 0;
    for (flag, attr) in [
        (MsFlags::MS_RDONLY, MOUNT_ATTR_RDONLY),
        (MsFlags::MS_NOSUID, MOUNT_ATTR_NOSUID),
        (MsFlags::MS_NODEV, MOUNT_ATTR_NODEV),
        (MsFlags::MS_NOEXEC, MOUNT_ATTR_NOEXEC),
    ] {
        if opts.flags.contains(flag) {
            attrs |= attr;
        }
    }
    if m.typ().as_deref() == Some("proc") {
        if dest != Path::new("/proc") {
            return Err(Error::config(
                "with a pid namespace joined by path, proc can only be mounted on /proc",
            ));
        }
        let options = opts
            .data
            .iter()
            .map(|d| match d.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (d.clone(), String::new()),
            })
            .collect();
        return Ok(Deferred::Proc {
            dest,
            attrs,
            options,
        });
    }
    let allowed = is_bind(m) && PROC_FILE_BINDS.iter().any(|a| Path::new(a) == dest);
    if !allowed {
        return Err(Error::config(format!(
            "{} is inside /proc: mounting over procfs is refused (only binds of {} are allowed)",
            dest.display(),
            PROC_FILE_BINDS.join(", ")
        )));
    }
    let source = m.source().clone().unwrap_or_default();
    let tree = crate::sys::open_tree_clone(&source, opts.flags.contains(MsFlags::MS_REC))
        .ctx(|| format!("clone the bind source {}", source.display()))?;
    if attrs != 0 {
        mount_setattr(tree.as_fd(), true, attrs, 0, None)
            .ctx(|| format!("set the options of {}", dest.display()))?;
    }
    Ok(Deferred::Bind { dest, tree })
}

/// Attach the mounts [`prepare`] held back, now that this process is in the container's pid
/// namespace and root.
pub fn attach_deferred(deferred: Vec<Deferred>) -> Result<()> {
    if deferred.is_empty() {
        return Ok(());
    }
    let root: OwnedFd = std::fs::File::open("/").ctx(|| "open the new root")?.into();
    for d in deferred {
        match d {
            Deferred::Proc {
                dest,
                attrs,
                options,
            } => {
                let target = mkdir_all(root.as_fd(), &dest)?;
                let opts: Vec<(&str, &str)> = options
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let proc = crate::sys::detached_fs("proc", &opts, attrs)
                    .ctx(|| "make the container's proc filesystem")?;
                crate::sys::move_mount(proc.as_fd(), target.as_fd())
                    .ctx(|| format!("mount proc on {}", dest.display()))?;
            }
            Deferred::Bind { dest, tree } => {
                let target = mkfile(root.as_fd(), &dest)?;
                if !crate::procfs::is_procfs(target.as_fd())? {
                    return Err(Error::config(format!(
                        "{} is not on procfs: the bind over it has nothing to cover",
                        dest.display()
                    )));
                }
                crate::sys::move_mount(tree.as_fd(), target.as_fd())
                    .ctx(|| format!("bind over {}", dest.display()))?;
            }
        }
    }
    Ok(())
}

/// The parent of the rootfs must not be shared, or pivot_root fails (EINVAL): find the
/// mount that holds the rootfs and make it private if it is shared.
fn make_parent_private(rootfs: &Path) -> Result<()> {
    let mounts = crate::mountinfo::read_self()?;
    let holder = mounts
        .iter()
        .filter(|m| rootfs.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.len());
    if let Some(m) = holder.filter(|m| m.is_shared()) {
        mount(
            None::<&str>,
            m.mount_point.as_str(),
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .ctx(|| format!("make {} private", m.mount_point))?;
    }
    Ok(())
}
