//! Walks inside the rootfs through descriptors: creating mount targets, copying a tree
//! for tmpcopyup. Nothing the image contains can make them leave the root.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{fchownat, Gid, Uid};

use crate::error::{Context, Error, Result};
use crate::sys::open_in_root;

/// Open `path` inside the root, creating missing directories on the way — including the
/// targets of dangling symlinks, as runc does. The walk holds a descriptor for every level and
/// never resolves a path string twice: each component is looked at with O_NOFOLLOW relative
/// to the directory above it, symlinks are expanded by hand with "/" meaning the rootfs, and
/// ".." never climbs above the rootfs. Nothing the image contains can make it leave the root.
pub fn mkdir_all(root: BorrowedFd, path: &Path) -> Result<OwnedFd> {
    use std::collections::VecDeque;
    // Fast path: the target usually exists; one openat2 confined to the root resolves it.
    match open_in_root(root, path, libc::O_PATH | libc::O_DIRECTORY) {
        Ok(fd) => return Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => return Err(e).ctx(|| format!("resolve {} in the rootfs", path.display())),
    }
    use std::os::unix::ffi::OsStrExt;
    let dir_flags = nix::fcntl::OFlag::O_PATH
        | nix::fcntl::OFlag::O_DIRECTORY
        | nix::fcntl::OFlag::O_NOFOLLOW
        | nix::fcntl::OFlag::O_CLOEXEC;
    let open_dir = |at: i32, name: &OsStr| -> nix::Result<OwnedFd> {
        nix::fcntl::openat(Some(at), name, dir_flags, Mode::empty())
            // SAFETY: fresh descriptor from openat.
            .map(|fd| unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
    };
    let err = |e: Errno| Error::Io {
        context: format!("create {} in the rootfs", path.display()),
        err: std::io::Error::from_raw_os_error(e as i32),
    };
    let top = open_dir(root.as_raw_fd(), OsStr::new(".")).map_err(err)?;
    let mut stack: Vec<OwnedFd> = vec![top];
    let mut todo: VecDeque<std::ffi::OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        let cur = stack.last().expect("never empty").as_raw_fd();
        let st = match nix::sys::stat::fstatat(
            Some(cur),
            name.as_os_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => Some(st),
            Err(Errno::ENOENT) => None,
            Err(e) => return Err(err(e)),
        };
        match st.map(|st| SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT)) {
            None => {
                match nix::sys::stat::mkdirat(
                    Some(cur),
                    name.as_os_str(),
                    Mode::from_bits_truncate(0o755),
                ) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(err(e)),
                }
                stack.push(open_dir(cur, &name).map_err(err)?);
            }
            Some(SFlag::S_IFLNK) => {
                links += 1;
                if links > 40 {
                    return Err(err(Errno::ELOOP));
                }
                let target = nix::fcntl::readlinkat(Some(cur), name.as_os_str()).map_err(err)?;
                let target = Path::new(&target);
                if target.as_os_str().as_bytes().first() == Some(&b'/') {
                    stack.truncate(1);
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => todo.push_front(n.to_os_string()),
                        Component::ParentDir => todo.push_front("..".into()),
                        _ => {}
                    }
                }
            }
            Some(SFlag::S_IFDIR) => stack.push(open_dir(cur, &name).map_err(err)?),
            Some(_) => return Err(err(Errno::ENOTDIR)),
        }
    }
    Ok(stack.pop().expect("never empty"))
}

/// Open (creating an empty regular file if needed) a non-directory mount target in the root.
pub fn mkfile(root: BorrowedFd, path: &Path) -> Result<OwnedFd> {
    match open_in_root(root, path, libc::O_PATH) {
        Ok(fd) => return Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => return Err(e).ctx(|| format!("resolve {} in the rootfs", path.display())),
    }
    let (parent, name) = split(path)?;
    let dir = mkdir_all(root, parent)?;
    match nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        name,
        nix::fcntl::OFlag::O_CREAT
            | nix::fcntl::OFlag::O_EXCL
            | nix::fcntl::OFlag::O_WRONLY
            | nix::fcntl::OFlag::O_NOFOLLOW
            | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    ) {
        Ok(fd) => drop(nix::unistd::close(fd)),
        Err(Errno::EEXIST) => {}
        Err(e) => return Err(e).ctx(|| format!("create {} in the rootfs", path.display())),
    }
    open_in_root(root, path, libc::O_PATH)
        .ctx(|| format!("resolve {} in the rootfs", path.display()))
}

pub(super) fn split(path: &Path) -> Result<(&Path, &OsStr)> {
    match (path.parent(), path.file_name()) {
        (Some(p), Some(n)) => Ok((p, n)),
        _ => Err(Error::config(format!(
            "{}: not a file path",
            path.display()
        ))),
    }
}

/// Copy a directory tree with modes, owners and symlinks (for tmpcopyup), from one
/// directory descriptor to another. Every step is relative to a descriptor opened with
/// O_NOFOLLOW, so nothing in the image can redirect the copy, and no path string is ever
/// built below /proc/self/fd; symlinks are copied as links, never followed.
pub(super) fn copy_tree(from: BorrowedFd, to: BorrowedFd) -> nix::Result<()> {
    use nix::fcntl::{openat, AtFlags, OFlag};
    use nix::sys::stat::{fchmod, fstat, fstatat, mkdirat};
    let owned = |fd: i32| {
        // SAFETY: fresh descriptor from openat.
        unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
    };
    let chown_at = |dir: BorrowedFd, name: &OsStr, uid, gid| {
        fchownat(
            Some(dir.as_raw_fd()),
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
    };
    let top = fstat(from.as_raw_fd())?;
    fchmod(
        to.as_raw_fd(),
        Mode::from_bits_truncate(top.st_mode & 0o7777),
    )?;
    nix::unistd::fchown(
        to.as_raw_fd(),
        Some(Uid::from_raw(top.st_uid)),
        Some(Gid::from_raw(top.st_gid)),
    )?;
    let listing = owned(openat(
        Some(from.as_raw_fd()),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?);
    let mut dir = nix::dir::Dir::from_fd(listing.as_raw_fd())?;
    std::mem::forget(listing); // the Dir owns it now
    for entry in dir.iter() {
        let entry = entry?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        let st = fstatat(Some(from.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
        let mode = Mode::from_bits_truncate(st.st_mode & 0o7777);
        match SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT) {
            SFlag::S_IFLNK => {
                let target = nix::fcntl::readlinkat(Some(from.as_raw_fd()), name)?;
                nix::unistd::symlinkat(target.as_os_str(), Some(to.as_raw_fd()), name)?;
            }
            SFlag::S_IFDIR => {
                mkdirat(Some(to.as_raw_fd()), name, Mode::from_bits_truncate(0o700))?;
                let flags =
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                let src = owned(openat(Some(from.as_raw_fd()), name, flags, Mode::empty())?);
                let dst = owned(openat(Some(to.as_raw_fd()), name, flags, Mode::empty())?);
                copy_tree(src.as_fd(), dst.as_fd())?;
                continue;
            }
            SFlag::S_IFREG => {
                let src = owned(openat(
                    Some(from.as_raw_fd()),
                    name,
                    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )?);
                let dst = owned(openat(
                    Some(to.as_raw_fd()),
                    name,
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )?);
                let (mut r, mut w) = (std::fs::File::from(src), std::fs::File::from(dst));
                std::io::copy(&mut r, &mut w)
                    .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
                fchmod(w.as_raw_fd(), mode)?;
            }
            // Device nodes, fifos and sockets are not copied up (as runc).
            _ => continue,
        }
        chown_at(to, name, st.st_uid, st.st_gid)?;
    }
    Ok(())
}
