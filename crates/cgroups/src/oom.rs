//! OOM notifications (for `events`). v1: an eventfd registered on memory.oom_control through
//! cgroup.event_control counts OOM events. v2: inotify on memory.events, whose oom_kill
//! counter tells how many OOM kills happened since the last look.
//!
//! Both give a descriptor that polls readable when something happened, so a caller can wait
//! on it together with the container's exit and a stats timer.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::{io, CgroupManager, Error, Layout, Result};

pub struct OomWatch {
    kind: Kind,
}

enum Kind {
    V1 {
        eventfd: OwnedFd,
        // Registered with the eventfd; the registration lives as long as this stays open.
        _oom_control: File,
    },
    V2 {
        inotify: OwnedFd,
        events: PathBuf,
        seen: u64,
    },
}

impl CgroupManager {
    /// Start watching for OOM events in this cgroup.
    pub fn oom_watch(&self) -> Result<OomWatch> {
        let dir = self.dir_for("memory").ok_or_else(|| {
            Error::Unsupported("OOM events need the memory controller, which is not mounted".into())
        })?;
        let kind = if self.layout == Layout::V2 {
            watch_v2(dir)?
        } else {
            watch_v1(dir)?
        };
        Ok(OomWatch { kind })
    }
}

fn watch_v1(dir: &Path) -> Result<Kind> {
    // SAFETY: plain syscall; the descriptor is owned right away.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if efd < 0 {
        return Err(io("create an eventfd for OOM events")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: fresh descriptor from the kernel.
    let eventfd = unsafe { OwnedFd::from_raw_fd(efd) };
    let control_path = dir.join("memory.oom_control");
    let oom_control =
        File::open(&control_path).map_err(io(format!("open {}", control_path.display())))?;
    crate::fs::write(
        &dir.join("cgroup.event_control"),
        &format!("{} {}", eventfd.as_raw_fd(), oom_control.as_raw_fd()),
    )?;
    Ok(Kind::V1 {
        eventfd,
        _oom_control: oom_control,
    })
}

fn watch_v2(dir: &Path) -> Result<Kind> {
    let events = dir.join("memory.events");
    // SAFETY: plain syscall; the descriptor is owned right away.
    let ifd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    if ifd < 0 {
        return Err(io("create an inotify instance for OOM events")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: fresh descriptor from the kernel.
    let inotify = unsafe { OwnedFd::from_raw_fd(ifd) };
    let cpath = std::ffi::CString::new(events.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Invalid(format!("{}: path contains a NUL byte", events.display())))?;
    // SAFETY: valid descriptor and C string.
    let wd = unsafe { libc::inotify_add_watch(ifd, cpath.as_ptr(), libc::IN_MODIFY) };
    if wd < 0 {
        return Err(io(format!("watch {}", events.display()))(
            std::io::Error::last_os_error(),
        ));
    }
    let seen = oom_kills(&events)?;
    Ok(Kind::V2 {
        inotify,
        events,
        seen,
    })
}

fn oom_kills(events: &Path) -> Result<u64> {
    let text = crate::fs::read(events)?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

impl OomWatch {
    /// Polls readable when there may be new OOM events; then call [`OomWatch::take`].
    pub fn fd(&self) -> BorrowedFd<'_> {
        match &self.kind {
            Kind::V1 { eventfd, .. } => eventfd.as_fd(),
            Kind::V2 { inotify, .. } => inotify.as_fd(),
        }
    }

    /// How many OOM events happened since the last call (0 if the wake-up was for nothing).
    pub fn take(&mut self) -> Result<u64> {
        match &mut self.kind {
            Kind::V1 { eventfd, .. } => {
                let mut buf = [0u8; 8];
                match read_nonblocking(eventfd.as_fd(), &mut buf) {
                    Ok(8) => Ok(u64::from_ne_bytes(buf)),
                    Ok(_) => Ok(0),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
                    Err(e) => Err(io("read the OOM eventfd")(e)),
                }
            }
            Kind::V2 {
                inotify,
                events,
                seen,
            } => {
                // Drain the queued inotify events; the counter says what happened.
                let mut buf = [0u8; 4096];
                while matches!(read_nonblocking(inotify.as_fd(), &mut buf), Ok(n) if n > 0) {}
                let now = match oom_kills(events) {
                    Ok(n) => n,
                    // The cgroup is gone with the container.
                    Err(_) => return Ok(0),
                };
                let new = now.saturating_sub(*seen);
                *seen = now;
                Ok(new)
            }
        }
    }
}

fn read_nonblocking(fd: BorrowedFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: the buffer is valid for its length.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}
