//! One mount of config.json, made at its destination resolved inside the rootfs.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use oci_spec::runtime::Mount;

use super::cgroup::mount_cgroup;
use super::finish::is_read_only_dev;
use super::paths::{copy_tree, mkdir_all, mkfile};
use super::proc_guard::refuse_shadowing_proc;
use super::RootfsContext;
use crate::error::{Context, Error, Result};
use crate::mount_options::{is_bind, MountOptions};
use crate::sys::{fd_path, mount_setattr, open_in_root};

pub(super) fn mount_one(
    root: BorrowedFd,
    index: usize,
    m: &Mount,
    ctx: &RootfsContext,
) -> Result<()> {
    let mut opts =
        MountOptions::parse(m.options().as_deref().unwrap_or(&[])).map_err(Error::Config)?;
    if is_read_only_dev(m) {
        // /dev/pts, /dev/shm, the device nodes and links still go in: read-only at the end
        // (`finish`), as runc does.
        opts.flags.remove(MsFlags::MS_RDONLY);
    }
    let typ = m.typ().as_deref().unwrap_or("");
    let dest = m.destination();
    if typ == "cgroup" || typ == "cgroup2" {
        return mount_cgroup(root, dest, &opts, ctx);
    }
    let bind = is_bind(m);
    let source = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
    let target = if bind {
        // A source prepared in the parent is looked at through its descriptor: by path it
        // may not be reachable from inside a user namespace.
        let is_dir = match ctx.idmapped.get(index) {
            Some(tree) => nix::sys::stat::fstat(tree.as_raw_fd())
                .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
                .ctx(|| format!("bind source {}", source.display()))?,
            None => std::fs::metadata(&source)
                .ctx(|| format!("bind source {}", source.display()))?
                .is_dir(),
        };
        if is_dir {
            mkdir_all(root, dest)?
        } else {
            mkfile(root, dest)?
        }
    } else {
        mkdir_all(root, dest)?
    };
    refuse_shadowing_proc(root, dest, typ, bind, &target, ctx.rootfs)?;
    let target_path = fd_path(target.as_fd());
    if bind {
        if let Some(tree) = ctx.idmapped.get(index) {
            crate::sys::move_mount(tree, target.as_fd()).ctx(|| {
                format!(
                    "attach the prepared mount of {} at {}",
                    source.display(),
                    dest.display()
                )
            })?;
        } else {
            mount(
                Some(&source),
                target_path.as_str(),
                None::<&str>,
                MsFlags::MS_BIND | (opts.flags & MsFlags::MS_REC),
                None::<&str>,
            )
            .ctx(|| format!("bind {} to {}", source.display(), dest.display()))?;
        }
        let extra = opts.flags - (MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if !extra.is_empty() {
            // Re-resolve: the old descriptor points at the directory under the new mount.
            let mounted = open_in_root(root, dest, libc::O_PATH)
                .ctx(|| format!("resolve {}", dest.display()))?;
            remount_bind(&fd_path(mounted.as_fd()), extra)
                .ctx(|| format!("remount {} with {:?}", dest.display(), m.options()))?;
        }
    } else {
        // For tmpcopyup, keep a handle on the directory the tmpfs is about to cover.
        let under = if opts.copy_up && typ == "tmpfs" {
            Some(
                open_in_root(root, dest, libc::O_RDONLY | libc::O_DIRECTORY)
                    .ctx(|| format!("open {}", dest.display()))?,
            )
        } else {
            None
        };
        let data = opts.data();
        let result = mount(
            Some(&source),
            target_path.as_str(),
            Some(typ),
            opts.flags,
            data.as_deref(),
        );
        match result {
            Ok(()) => {}
            // sysfs needs a network namespace of our own when we are in a user namespace; as
            // runc does, fall back to a recursive, read-only bind of the host's /sys.
            Err(Errno::EPERM) if typ == "sysfs" && ctx.in_userns => {
                mount(
                    Some("/sys"),
                    target_path.as_str(),
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .ctx(|| format!("bind /sys to {}", dest.display()))?;
            }
            Err(e) => {
                return Err(e).ctx(|| {
                    format!(
                        "mount {} ({typ}) on {} with {:?}",
                        source.display(),
                        dest.display(),
                        m.options().as_deref().unwrap_or(&[])
                    )
                })
            }
        }
        if let Some(under) = under {
            let mounted = open_in_root(root, dest, libc::O_RDONLY | libc::O_DIRECTORY)
                .ctx(|| format!("resolve {}", dest.display()))?;
            copy_tree(under.as_fd(), mounted.as_fd()).ctx(|| {
                format!(
                    "tmpcopyup: copy the contents of {} into the tmpfs",
                    dest.display()
                )
            })?;
        }
    }
    if opts.propagation.is_some() || opts.attr_set != 0 || opts.attr_clr != 0 {
        let mounted =
            open_in_root(root, dest, libc::O_PATH).ctx(|| format!("resolve {}", dest.display()))?;
        if let Some(p) = opts.propagation {
            mount(
                None::<&str>,
                fd_path(mounted.as_fd()).as_str(),
                None::<&str>,
                p,
                None::<&str>,
            )
            .ctx(|| format!("set propagation of {}", dest.display()))?;
        }
        if opts.attr_set != 0 || opts.attr_clr != 0 {
            mount_setattr(mounted.as_fd(), true, opts.attr_set, opts.attr_clr, None)
                .ctx(|| format!("set recursive attributes on {}", dest.display()))?;
        }
    }
    Ok(())
}

/// Remount a bind mount with new flags. In a user namespace some flags of the source are
/// locked (nodev, nosuid, ...): if the kernel refuses, keep the locked ones and retry.
pub(super) fn remount_bind(target: &str, flags: MsFlags) -> nix::Result<()> {
    let base = MsFlags::MS_BIND | MsFlags::MS_REMOUNT;
    match mount(
        None::<&str>,
        target,
        None::<&str>,
        base | flags,
        None::<&str>,
    ) {
        Err(Errno::EPERM) => {
            let locked = statvfs_flags(target).unwrap_or(MsFlags::empty());
            mount(
                None::<&str>,
                target,
                None::<&str>,
                base | flags | locked,
                None::<&str>,
            )
        }
        r => r,
    }
}

fn statvfs_flags(path: &str) -> Option<MsFlags> {
    use nix::sys::statvfs::{statvfs, FsFlags};
    let st = statvfs(path).ok()?;
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (fs, ms) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(fs) {
            out |= ms;
        }
    }
    Some(out)
}
