//! Switching to the new root: pivot_root, or a move and chroot for --no-pivot.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{chdir, fchdir, pivot_root};

use crate::error::{Context, Result};

pub fn switch_root(root: OwnedFd, rootfs: &Path, no_pivot: bool) -> Result<()> {
    if no_pivot {
        hide_full_pseudo_fs(rootfs)?;
        fchdir(root.as_raw_fd()).ctx(|| "chdir into the rootfs")?;
        mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
            .ctx(|| "move the rootfs to / (--no-pivot)")?;
        nix::unistd::chroot(".").ctx(|| "chroot into the rootfs")?;
    } else {
        let old: OwnedFd = std::fs::File::open("/").ctx(|| "open the old root")?.into();
        fchdir(root.as_raw_fd()).ctx(|| "chdir into the rootfs")?;
        // pivot_root(".", ".") stacks the old root on top of the new one; detaching it leaves
        // only the new root, with no directory needed for the old one.
        pivot_root(".", ".").ctx(|| "pivot_root into the rootfs")?;
        fchdir(old.as_raw_fd()).ctx(|| "chdir into the old root")?;
        mount(
            None::<&str>,
            ".",
            None::<&str>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&str>,
        )
        .ctx(|| "make the old root a slave")?;
        umount2(".", MntFlags::MNT_DETACH).ctx(|| "detach the old root")?;
    }
    chdir("/").ctx(|| "chdir to the new root")?;
    Ok(())
}

/// --no-pivot leaves the old root's mounts in the mount namespace, under the chroot: a
/// fully visible procfs or sysfs among them lets the container mount a fresh one from a
/// nested user namespace (the kernel's mount_too_revealing check looks at the namespace, not
/// the chroot), bypassing every masked and read-only path. As runc does, detach each full
/// proc and sysfs mount outside the rootfs, or cover it with a tmpfs where that is refused.
fn hide_full_pseudo_fs(rootfs: &Path) -> Result<()> {
    let mut targets: Vec<String> = crate::mountinfo::read_self()?
        .into_iter()
        .filter(|m| {
            m.root == "/"
                && matches!(m.fstype.as_str(), "proc" | "sysfs")
                && !Path::new(&m.mount_point).starts_with(rootfs)
        })
        .map(|m| m.mount_point)
        .collect();
    // Deepest first, so a parent's detach does not hide a child still to be handled.
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for t in targets {
        match mount(
            None::<&str>,
            t.as_str(),
            None::<&str>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&str>,
        ) {
            Ok(()) => {}
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(e).ctx(|| format!("--no-pivot: make {t} a slave")),
        }
        match umount2(t.as_str(), MntFlags::MNT_DETACH) {
            Ok(()) => {}
            Err(Errno::EINVAL | Errno::EPERM) => mount(
                Some("tmpfs"),
                t.as_str(),
                Some("tmpfs"),
                MsFlags::empty(),
                None::<&str>,
            )
            .ctx(|| format!("--no-pivot: cover {t}"))?,
            Err(e) => return Err(e).ctx(|| format!("--no-pivot: detach {t}")),
        }
    }
    Ok(())
}
