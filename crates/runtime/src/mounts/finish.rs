//! After the switch: rootfs propagation, sysctls, masked and read-only paths, read-only
//! /dev and root.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::mount::mount;
use nix::sys::stat::SFlag;
use oci_spec::runtime::{Mount, Spec};

use crate::error::{Context, Error, Result};
use crate::mount_options::propagation_flag;
use crate::sys::{
    mount_setattr, open_in_root, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID,
    MOUNT_ATTR_RDONLY,
};

/// After pivot_root: propagation of the new root, sysctls, masked and read-only paths, and a
/// read-only root if asked. Every write to /proc goes through a verified procfs handle and
/// every mount is made with descriptors (the new mount API), never by a path the container's
/// mounts or symlinks could redirect.
pub fn finish(spec: &Spec) -> Result<()> {
    let linux = spec.linux().as_ref();
    if let Some(p) = linux
        .and_then(|l| l.rootfs_propagation().as_deref())
        .and_then(propagation_flag)
    {
        mount(None::<&str>, "/", None::<&str>, p, None::<&str>).ctx(|| "set rootfsPropagation")?;
    }
    let sysctl = linux
        .and_then(|l| l.sysctl().as_ref())
        .filter(|s| !s.is_empty());
    let masked = linux
        .and_then(|l| l.masked_paths().as_ref())
        .map_or(&[][..], |v| v);
    let readonly = linux
        .and_then(|l| l.readonly_paths().as_ref())
        .map_or(&[][..], |v| v);
    let root: OwnedFd = std::fs::File::open("/").ctx(|| "open the new root")?.into();
    if let Some(sysctl) = sysctl {
        let proc = crate::procfs::Proc::open(Path::new("/proc"))
            .map_err(|e| Error::config(format!("linux.sysctl: {e}")))?;
        for (key, value) in sysctl {
            proc.write_sysctl(key, value)
                .map_err(|e| Error::config(format!("linux.sysctl: set {key}={value}: {e}")))?;
        }
    }
    if !masked.is_empty() {
        let null = verified_dev_null(root.as_fd())?;
        for p in masked {
            mask_path(root.as_fd(), p, &null)
                .map_err(|e| Error::config(format!("linux.maskedPaths: {p}: {e}")))?;
        }
    }
    for p in readonly {
        readonly_path(root.as_fd(), p)
            .map_err(|e| Error::config(format!("linux.readonlyPaths: {p}: {e}")))?;
    }
    if spec.mounts().iter().flatten().any(is_read_only_dev) {
        let dev =
            open_in_root(root.as_fd(), Path::new("/dev"), libc::O_PATH).ctx(|| "resolve /dev")?;
        mount_setattr(dev.as_fd(), false, MOUNT_ATTR_RDONLY, 0, None)
            .ctx(|| "make /dev read-only")?;
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        mount_setattr(root.as_fd(), false, MOUNT_ATTR_RDONLY, 0, None)
            .ctx(|| "root.readonly: make / read-only")?;
    }
    Ok(())
}

/// A mount on /dev asked to be read-only.
pub(super) fn is_read_only_dev(m: &Mount) -> bool {
    m.destination() == Path::new("/dev")
        && m.options().iter().flatten().any(|o| o == "ro")
        && !m.options().iter().flatten().any(|o| o == "rw")
}

/// The container's /dev/null, checked to be the null character device (1:3): what masks a
/// file must not be something the container swapped in (CVE-2025-31133).
fn verified_dev_null(root: BorrowedFd) -> Result<OwnedFd> {
    let fd = open_in_root(
        root,
        Path::new("/dev/null"),
        libc::O_PATH | libc::O_NOFOLLOW,
    )
    .ctx(|| "linux.maskedPaths: open /dev/null in the container")?;
    let st = nix::sys::stat::fstat(fd.as_raw_fd()).ctx(|| "stat /dev/null")?;
    let is_char = SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT) == SFlag::S_IFCHR;
    if !is_char || st.st_rdev != nix::sys::stat::makedev(1, 3) {
        return Err(Error::config(
            "linux.maskedPaths: /dev/null in the container is not the null device (char 1:3); \
             refusing to mask paths with it",
        ));
    }
    Ok(fd)
}

/// The target of a masked or read-only path, resolved inside the root; None if it does not
/// exist (nothing to hide). Below /proc it must still be procfs: a mount shadowing it would
/// otherwise be "masked" instead of the real file.
fn resolve_protected_path(root: BorrowedFd, path: &str) -> Result<Option<OwnedFd>> {
    let fd = match open_in_root(root, Path::new(path), libc::O_PATH) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e).ctx(|| format!("resolve {path}")),
    };
    if Path::new(path).starts_with("/proc") && !crate::procfs::is_procfs(fd.as_fd())? {
        return Err(Error::config(format!(
            "{path} is not on procfs (a mount shadows /proc)"
        )));
    }
    Ok(Some(fd))
}

fn mask_path(root: BorrowedFd, path: &str, null: &OwnedFd) -> Result<()> {
    let Some(target) = resolve_protected_path(root, path)? else {
        return Ok(());
    };
    let st = nix::sys::stat::fstat(target.as_raw_fd()).ctx(|| format!("stat {path}"))?;
    let cover = if SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT) == SFlag::S_IFDIR {
        crate::sys::detached_tmpfs(&[("size", "0k")], MOUNT_ATTR_RDONLY)
            .ctx(|| "make an empty read-only tmpfs")?
    } else {
        crate::sys::open_tree_clone_fd(null.as_fd(), false).ctx(|| "clone /dev/null")?
    };
    crate::sys::move_mount(cover.as_fd(), target.as_fd()).ctx(|| format!("mask {path}"))
}

fn readonly_path(root: BorrowedFd, path: &str) -> Result<()> {
    let Some(target) = resolve_protected_path(root, path)? else {
        return Ok(());
    };
    let tree =
        crate::sys::open_tree_clone_fd(target.as_fd(), true).ctx(|| format!("bind {path}"))?;
    mount_setattr(
        tree.as_fd(),
        true,
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
        0,
        None,
    )
    .ctx(|| format!("make {path} read-only"))?;
    crate::sys::move_mount(tree.as_fd(), target.as_fd()).ctx(|| format!("attach {path} read-only"))
}
