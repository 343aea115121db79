//! Network namespaces: named ones pinned by a bind mount under the caller's runroot (what
//! `ip netns add` does under /run/netns), and running code inside a namespace on a
//! dedicated thread. Network namespaces are per thread, so entering one never disturbs
//! the caller's other threads (tokio workers included).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::mount::{mount_bind, unmount, UnmountFlags};
use rustix::thread::{move_into_link_name_space, LinkNameSpaceType, UnshareFlags};

use crate::error::{Error, Result};
use crate::names::check_ifname;

/// Where named namespaces live under a runroot: `<runroot>/netns/<name>`.
pub fn netns_dir(runroot: &Path) -> PathBuf {
    runroot.join("netns")
}

/// Create a new, empty network namespace and pin it at `<runroot>/netns/<name>`.
/// Fails if the name exists. On failure nothing is left behind.
pub fn create_netns(runroot: &Path, name: &str) -> Result<PathBuf> {
    // Same character rules as device names: no '/', nothing needing quoting.
    if name.is_empty() || check_ifname(&name[..name.len().min(15)]).is_err() || name.contains('/') {
        return Err(Error::InvalidArgument(format!(
            "invalid netns name {name:?}"
        )));
    }
    let dir = netns_dir(runroot);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    let path = dir.join(name);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| Error::io(format!("create netns file {}", path.display()), e))?;
    let target = path.clone();
    let res = std::thread::spawn(move || -> io::Result<()> {
        // SAFETY: unsharing only the network namespace of this short-lived thread; no
        // other thread's state and no shared file table are affected.
        unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNET) }?;
        mount_bind("/proc/thread-self/ns/net", &target)?;
        Ok(())
    })
    .join()
    .unwrap_or_else(|_| Err(io::Error::other("netns thread panicked")));
    if let Err(e) = res {
        let _ = std::fs::remove_file(&path);
        return Err(Error::io(format!("pin netns {}", path.display()), e));
    }
    Ok(path)
}

/// Unpin and delete a named namespace. Idempotent: a missing one is fine.
pub fn remove_netns(path: &Path) -> Result<()> {
    match unmount(path, UnmountFlags::DETACH) {
        Ok(()) => {}
        // EINVAL: not a mount point (already unmounted); ENOENT: already gone.
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOENT => {}
        Err(e) => return Err(Error::io(format!("unmount {}", path.display()), e.into())),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("remove {}", path.display()), e)),
    }
}

/// Open a namespace by path (`/proc/PID/ns/net`, a pinned file, ...).
pub fn open_netns(path: &Path) -> Result<OwnedFd> {
    let f = File::open(path).map_err(|e| Error::io(format!("open netns {}", path.display()), e))?;
    Ok(f.into())
}

/// Run `f` on a fresh thread that has entered the namespace `ns`; returns its result.
pub fn run_in_netns<T, F>(ns: BorrowedFd<'_>, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let fd = ns
        .try_clone_to_owned()
        .map_err(|e| Error::io("dup netns fd", e))?;
    std::thread::spawn(move || -> io::Result<T> {
        move_into_link_name_space(fd.as_fd(), Some(LinkNameSpaceType::Network))?;
        Ok(f())
    })
    .join()
    .unwrap_or_else(|_| Err(io::Error::other("netns thread panicked")))
    .map_err(|e| Error::io("enter netns", e))
}
