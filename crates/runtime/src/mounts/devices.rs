//! Device nodes and the standard /dev links.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{fchmodat, mknodat, FchmodatFlags, Mode, SFlag};
use nix::unistd::{fchownat, Gid, Uid};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType};

use super::paths::{mkdir_all, mkfile, split};
use super::RootfsContext;
use crate::error::{Context, Error, Result};
use crate::sys::{fd_path, open_in_root};

fn default_devices() -> [(&'static str, u64, u64); 6] {
    [
        ("/dev/null", 1, 3),
        ("/dev/zero", 1, 5),
        ("/dev/full", 1, 7),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/tty", 5, 0),
    ]
}

pub(super) fn create_devices(root: BorrowedFd, ctx: &RootfsContext) -> Result<()> {
    let listed: Vec<&LinuxDevice> = ctx
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().as_ref())
        .map(|d| d.iter().collect())
        .unwrap_or_default();
    for (path, major, minor) in default_devices() {
        if listed.iter().any(|d| d.path() == Path::new(path)) {
            continue;
        }
        make_device(
            root,
            Path::new(path),
            SFlag::S_IFCHR,
            major,
            minor,
            0o666,
            0,
            0,
            ctx.in_userns,
        )?;
    }
    for (i, d) in listed.iter().enumerate() {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(Error::config(format!(
                    "linux.devices[{i}].type: \"a\" is only valid in device cgroup rules"
                )))
            }
        };
        // Outside /dev too, as runc: the path is resolved inside the rootfs like any other.
        if !d.path().is_absolute() {
            return Err(Error::config(format!(
                "linux.devices[{i}].path: {} must be absolute",
                d.path().display()
            )));
        }
        make_device(
            root,
            d.path(),
            kind,
            d.major() as u64,
            d.minor() as u64,
            d.file_mode().unwrap_or(0o666),
            d.uid().unwrap_or(0),
            d.gid().unwrap_or(0),
            ctx.in_userns,
        )
        .map_err(|e| Error::Child(format!("linux.devices[{i}] ({}): {e}", d.path().display())))?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn make_device(
    root: BorrowedFd,
    path: &Path,
    kind: SFlag,
    major: u64,
    minor: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    in_userns: bool,
) -> Result<()> {
    let (parent, name) = split(path)?;
    let dir = mkdir_all(root, parent)?;
    if in_userns {
        // mknod is not allowed in a user namespace: bind the host's node instead.
        let target = mkfile(root, path)?;
        return mount(
            Some(path),
            fd_path(target.as_fd()).as_str(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .ctx(|| format!("bind the host's {}", path.display()));
    }
    let perm = Mode::from_bits_truncate(mode & 0o7777);
    match mknodat(
        Some(dir.as_raw_fd()),
        name,
        kind,
        perm,
        nix::sys::stat::makedev(major, minor),
    ) {
        Ok(()) => {}
        Err(Errno::EEXIST) => {
            // Replace whatever the image put there (it could be a symlink to a host path).
            nix::unistd::unlinkat(
                Some(dir.as_raw_fd()),
                name,
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            )
            .ctx(|| format!("replace {}", path.display()))?;
            mknodat(
                Some(dir.as_raw_fd()),
                name,
                kind,
                perm,
                nix::sys::stat::makedev(major, minor),
            )
            .ctx(|| format!("mknod {}", path.display()))?;
        }
        Err(e) => return Err(e).ctx(|| format!("mknod {}", path.display())),
    }
    // mknod obeys the umask; set the exact mode and owner asked for.
    fchmodat(
        Some(dir.as_raw_fd()),
        name,
        perm,
        FchmodatFlags::NoFollowSymlink,
    )
    .or_else(|e| {
        if e == Errno::EOPNOTSUPP {
            Ok(())
        } else {
            Err(e)
        }
    })
    .ctx(|| format!("chmod {}", path.display()))?;
    fchownat(
        Some(dir.as_raw_fd()),
        name,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .ctx(|| format!("chown {}", path.display()))?;
    Ok(())
}

pub(super) fn create_dev_symlinks(root: BorrowedFd) -> Result<()> {
    let dev = mkdir_all(root, Path::new("/dev"))?;
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("/proc/kcore", "core"));
    }
    for (target, name) in links {
        match nix::unistd::symlinkat(target, Some(dev.as_raw_fd()), name) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(e).ctx(|| format!("symlink /dev/{name}")),
        }
    }
    // /dev/ptmx must be the container's own devpts instance, not a host node.
    if open_in_root(root, Path::new("/dev/pts/ptmx"), libc::O_PATH).is_ok() {
        let _ = nix::unistd::unlinkat(
            Some(dev.as_raw_fd()),
            "ptmx",
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
        nix::unistd::symlinkat("pts/ptmx", Some(dev.as_raw_fd()), "ptmx")
            .ctx(|| "symlink /dev/ptmx")?;
    }
    Ok(())
}
