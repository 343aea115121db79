//! What may be mounted on and over the container's /proc and /sys.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use crate::error::{Context, Error, Result};
use crate::sys::{fd_path, open_in_root};

/// A symlink at the rootfs's /proc or /sys would send the proc and sysfs mounts — and every
/// masked path and sysctl after them — wherever the image points it. runc 1.1.5 follows
/// it; newer runc refuses, and so do we.
pub(super) fn refuse_symlinked_pseudo_fs(root: BorrowedFd) -> Result<()> {
    for name in ["proc", "sys"] {
        match nix::sys::stat::fstatat(
            Some(root.as_raw_fd()),
            name,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
                return Err(Error::config(format!(
                    "the rootfs's /{name} is a symlink: refusing to mount {name} through it"
                )))
            }
            _ => {}
        }
    }
    Ok(())
}
/// The files of procfs a bind may cover (lxcfs's, and CRIU's ns_last_pid), as runc allows.
pub(super) const PROC_FILE_BINDS: &[&str] = &[
    "/proc/cpuinfo",
    "/proc/diskstats",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/swaps",
    "/proc/uptime",
    "/proc/loadavg",
    "/proc/slabinfo",
    "/proc/net/dev",
    "/proc/sys/kernel/ns_last_pid",
];

/// runc's rule (CVE-2019-16884 class): nothing but a proc filesystem is mounted on the
/// container's /proc, and nothing is mounted over a file or directory of procfs except the
/// files lxcfs-style tools provide (and CRIU's ns_last_pid) — otherwise a later write to
/// /proc/sys, /proc/self/attr or a masked path could land in whatever the mount brought.
/// Decided on the resolved target, so a symlink in the image cannot route around it.
pub(super) fn refuse_shadowing_proc(
    root: BorrowedFd,
    dest: &Path,
    typ: &str,
    bind: bool,
    target: &OwnedFd,
    rootfs: &Path,
) -> Result<()> {
    const ALLOWED: &[&str] = PROC_FILE_BINDS;
    let same = |a: &nix::sys::stat::FileStat, b: &nix::sys::stat::FileStat| {
        a.st_dev == b.st_dev && a.st_ino == b.st_ino
    };
    let st =
        nix::sys::stat::fstat(target.as_raw_fd()).ctx(|| format!("stat {}", dest.display()))?;
    let proc_dir = open_in_root(root, Path::new("/proc"), libc::O_PATH)
        .ok()
        .and_then(|fd| nix::sys::stat::fstat(fd.as_raw_fd()).ok());
    let is_proc_dir = proc_dir.is_some_and(|p| same(&p, &st))
        || crate::procfs::is_procfs(target.as_fd())? && st.st_ino == 1;
    if is_proc_dir {
        if typ == "proc" {
            return Ok(());
        }
        return Err(Error::config(format!(
            "{} is the container's /proc: only a proc filesystem can be mounted there (not {})",
            dest.display(),
            if bind { "a bind mount" } else { typ }
        )));
    }
    if !crate::procfs::is_procfs(target.as_fd())? {
        return Ok(());
    }
    // On procfs: only a file bind at one of the allowed paths, really resolved there.
    let resolved = std::fs::read_link(fd_path(target.as_fd())).unwrap_or_default();
    let allowed = bind
        && ALLOWED
            .iter()
            .any(|a| Path::new(a) == dest && resolved == rootfs.join(a.trim_start_matches('/')));
    if allowed {
        return Ok(());
    }
    Err(Error::config(format!(
        "{} is inside /proc: mounting over procfs is refused (only binds of {} are allowed)",
        dest.display(),
        ALLOWED.join(", ")
    )))
}
