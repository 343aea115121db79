//! Foreground `run` and `exec` of a process with a terminal and no --console-socket: as runc
//! does, the runtime receives the pty master itself and relays it to its own stdio — input
//! to the master, output to stdout — with its own terminal (if stdin is one) in raw mode and
//! window-size changes passed on.
//!
//! Threads start only after the container process is cloned: the runtime forks while it is
//! single-threaded.

use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use nix::sys::termios::{self, SetArg, Termios};

use crate::error::{Context, Error, Result};

/// The master being relayed, for the SIGWINCH handler (-1: none).
static RELAYED_MASTER: AtomicI32 = AtomicI32::new(-1);

/// Our end of the console socket, before the container process exists.
pub struct TtyRelay {
    ours: UnixStream,
}

impl TtyRelay {
    /// A socket pair: the other end is the console socket the pty master is sent over.
    pub fn pair() -> Result<(TtyRelay, UnixStream)> {
        let (ours, theirs) = UnixStream::pair().ctx(|| "create the console socket pair")?;
        Ok((TtyRelay { ours }, theirs))
    }

    /// Receive the master (already sent: `create`/`exec` return after the process is set
    /// up), give it our window size, put our terminal in raw mode and start copying.
    pub fn start(self) -> Result<Relaying> {
        let master = Arc::new(recv_master(&self.ours)?);
        let stdin_tty = nix::unistd::isatty(0).unwrap_or(false);
        if stdin_tty {
            copy_window_size(0, master.as_raw_fd());
        }
        let saved = if stdin_tty {
            let borrowed = std::io::stdin();
            let old = termios::tcgetattr(&borrowed).ctx(|| "read the terminal settings")?;
            let mut raw = old.clone();
            termios::cfmakeraw(&mut raw);
            termios::tcsetattr(&borrowed, SetArg::TCSANOW, &raw)
                .ctx(|| "put the terminal in raw mode")?;
            Some(old)
        } else {
            None
        };
        RELAYED_MASTER.store(master.as_raw_fd(), Ordering::Relaxed);

        let out_master = Arc::clone(&master);
        let output = std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            let mut stdout = std::io::stdout();
            loop {
                // SAFETY: buffer valid for its length; the Arc keeps the descriptor open.
                let n = unsafe {
                    libc::read(out_master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
                };
                if n < 0
                    && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                {
                    continue;
                }
                // 0 or EIO: every slave descriptor is closed, the process is done.
                if n <= 0 {
                    break;
                }
                if stdout
                    .write_all(&buf[..n as usize])
                    .and_then(|()| stdout.flush())
                    .is_err()
                {
                    break;
                }
            }
        });
        let in_master = Arc::clone(&master);
        // Not joined: it may sit in a read of our stdin after the process has exited.
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            let mut stdin = std::io::stdin();
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => {
                        // End of our input: the terminal's end-of-file character, so a
                        // process reading its terminal sees EOF as it would at a keyboard.
                        if !stdin_tty {
                            let eof = eof_char(in_master.as_raw_fd());
                            write_all_fd(in_master.as_raw_fd(), &[eof]);
                        }
                        break;
                    }
                    Ok(n) => {
                        if !write_all_fd(in_master.as_raw_fd(), &buf[..n]) {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        });
        Ok(Relaying {
            output: Some(output),
            saved,
            _master: master,
        })
    }
}

/// A relay in progress. [`Relaying::finish`] (or drop) waits for the output to drain and
/// restores the terminal.
pub struct Relaying {
    output: Option<JoinHandle<()>>,
    saved: Option<Termios>,
    _master: Arc<OwnedFd>,
}

impl Relaying {
    pub fn finish(mut self) {
        self.end();
    }

    fn end(&mut self) {
        if let Some(h) = self.output.take() {
            let _ = h.join();
        }
        RELAYED_MASTER.store(-1, Ordering::Relaxed);
        if let Some(old) = self.saved.take() {
            let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, &old);
        }
    }
}

impl Drop for Relaying {
    fn drop(&mut self) {
        self.end();
    }
}

/// For a SIGWINCH handler: give the relayed pty our terminal's new size (the kernel then
/// signals the process group in the container). Async-signal-safe; false if no relay runs.
pub fn resize_on_sigwinch() -> bool {
    let master = RELAYED_MASTER.load(Ordering::Relaxed);
    if master < 0 {
        return false;
    }
    copy_window_size(0, master);
    true
}

fn copy_window_size(from: i32, to: i32) {
    let mut ws: libc::winsize = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: valid winsize pointer; failures (not a terminal) leave the size alone.
    unsafe {
        if libc::ioctl(from, libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(to, libc::TIOCSWINSZ, &ws);
        }
    }
}

fn eof_char(master: i32) -> u8 {
    // SAFETY: the descriptor stays open for the call (borrowed from the Arc'd OwnedFd).
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(master) };
    termios::tcgetattr(fd)
        .map(|t| t.control_chars[libc::VEOF])
        .unwrap_or(4)
}

fn write_all_fd(fd: i32, mut data: &[u8]) -> bool {
    while !data.is_empty() {
        // SAFETY: buffer valid for its length.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        data = &data[n as usize..];
    }
    true
}

fn recv_master(sock: &UnixStream) -> Result<OwnedFd> {
    let mut name = [0u8; 64];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ctx(|| "receive the pty master")?;
    for c in msg.cmsgs().ctx(|| "read the pty master message")? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just installed this descriptor for us.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(Error::Child(
        "the container process sent no pty master over the console socket".into(),
    ))
}
