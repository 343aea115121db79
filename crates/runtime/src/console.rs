//! process.terminal: a pseudo-terminal created inside the container (from its own devpts
//! instance) whose master is handed to the caller over the --console-socket with SCM_RIGHTS,
//! the protocol runc, containerd and conmon speak.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

use crate::error::{Context, Error, Result};
use crate::tty_relay::TtyRelay;

/// Where the pty master of a process goes: the caller's `--console-socket` (conmon,
/// containerd-shim, ...); or, for a foreground `run`/`exec` (`relay`) of a process with a
/// terminal, one end of a socket pair whose other end relays the terminal to our own stdio.
/// Returns the socket to send the master over and the relay, if any.
pub fn console_for(
    terminal: bool,
    socket: Option<&Path>,
    relay: bool,
) -> Result<(Option<UnixStream>, Option<TtyRelay>)> {
    if let Some(p) = socket {
        let s = UnixStream::connect(p)
            .ctx(|| format!("connect to --console-socket {}", p.display()))?;
        return Ok((Some(s), None));
    }
    if !terminal {
        return Ok((None, None));
    }
    if !relay {
        return Err(Error::Usage(
            "process.terminal is true: a detached process needs --console-socket to hand the \
             terminal to (in the foreground, run and exec relay it themselves)"
                .into(),
        ));
    }
    let (relay, theirs) = TtyRelay::pair()?;
    Ok((Some(theirs), Some(relay)))
}

/// Open a new pty pair in the current mount namespace's /dev/ptmx; returns (master, slave).
pub fn open_pty(size: Option<&oci_spec::runtime::Box>) -> Result<(OwnedFd, OwnedFd)> {
    let master = nix::fcntl::open(
        "/dev/ptmx",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ctx(|| "process.terminal: open /dev/ptmx (is devpts mounted on /dev/pts?)")?;
    // SAFETY: fresh descriptor.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK takes a pointer to int.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } < 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| "unlock the pty");
    }
    // TIOCGPTPEER opens the slave through the master, so no path lookup can be redirected.
    // SAFETY: ioctl returning a new descriptor.
    let slave = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if slave < 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| "open the pty slave");
    }
    // SAFETY: fresh descriptor.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    if let Some(b) = size {
        let ws = libc::winsize {
            ws_row: b.height() as u16,
            ws_col: b.width() as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: valid winsize pointer.
        unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
    Ok((master, slave))
}

pub fn send_master(socket: RawFd, master: &OwnedFd) -> Result<()> {
    let name = b"/dev/ptmx";
    let iov = [IoSlice::new(name)];
    let fds = [master.as_raw_fd()];
    sendmsg::<()>(
        socket,
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .ctx(|| "send the pty master over the console socket")?;
    Ok(())
}

/// Make the slave the controlling terminal and stdio of the calling process (after setsid).
pub fn become_tty(slave: &OwnedFd) -> Result<()> {
    // SAFETY: TIOCSCTTY with arg 0.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
        return Err(Error::Child(format!(
            "process.terminal: make the pty the controlling terminal: {}",
            std::io::Error::last_os_error()
        )));
    }
    for fd in 0..3 {
        nix::unistd::dup2(slave.as_raw_fd(), fd).ctx(|| "dup the pty onto stdio")?;
    }
    Ok(())
}
