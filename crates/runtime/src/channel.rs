//! The typed, versioned channel between the runtime (parent) and the process it is creating.
//!
//! A SOCK_SEQPACKET socketpair keeps message boundaries, so each message is one send and one
//! receive; file descriptors travel as SCM_RIGHTS. Encoding is a fixed header (version, tag,
//! i32 argument) followed by an optional UTF-8 text — no JSON on the hot path.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};

use crate::error::{Context, Error, Result};

const VERSION: u8 = 1;
/// Messages are an 8-byte header and, for failures, a text; longer texts are cut. Small on
/// purpose: the receive buffer lives on the stack, and every page of it touched at each of
/// the few receives of a container start is a page fault in a fresh process.
const MAX_MESSAGE: usize = 8 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// parent → child: uid/gid maps, cgroup membership and runtime hooks are done; go on.
    Continue,
    /// child → parent: namespaces and mounts are ready; run prestart/createRuntime hooks now.
    RunHooks,
    /// child → parent: everything is set up; the process now waits for `start` (or runs).
    Ready,
    /// child → parent: setup failed; the text says why. The child exits right after.
    Failed(String),
    /// intermediate → parent: the PID (in the parent's namespace) of the process it cloned.
    Pid(i32),
    /// child → parent: the seccomp notify listener (attached as SCM_RIGHTS).
    SeccompListener,
    /// child → parent: please write the uid/gid maps for the process with this PID.
    WriteMaps(i32),
    /// init → parent: the container's process is now this PID (forked into a joined pid
    /// namespace once the rootfs was built); the sender exits.
    Reparent(i32),
}

impl Msg {
    fn encode(&self) -> (u8, i32, &[u8]) {
        match self {
            Msg::Continue => (1, 0, b""),
            Msg::RunHooks => (2, 0, b""),
            Msg::Ready => (3, 0, b""),
            Msg::Failed(text) => (4, 0, text.as_bytes()),
            Msg::Pid(pid) => (5, *pid, b""),
            Msg::SeccompListener => (6, 0, b""),
            Msg::WriteMaps(pid) => (7, *pid, b""),
            Msg::Reparent(pid) => (8, *pid, b""),
        }
    }

    fn decode(tag: u8, arg: i32, text: &[u8]) -> Option<Msg> {
        Some(match tag {
            1 => Msg::Continue,
            2 => Msg::RunHooks,
            3 => Msg::Ready,
            4 => Msg::Failed(String::from_utf8_lossy(text).into_owned()),
            5 => Msg::Pid(arg),
            6 => Msg::SeccompListener,
            7 => Msg::WriteMaps(arg),
            8 => Msg::Reparent(arg),
            _ => return None,
        })
    }
}

/// One received message (header and text, without its fds) to a `Msg`: what `recv` does
/// with every message, public so the fuzz target drives exactly this code.
pub fn decode(buf: &[u8]) -> Result<Msg> {
    if buf.len() < 8 || buf[0] != VERSION {
        return Err(Error::Child(format!(
            "sync socket: unexpected message (version {}, {} bytes)",
            buf.first().copied().unwrap_or(0),
            buf.len()
        )));
    }
    let arg = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
    Msg::decode(buf[1], arg, &buf[8..])
        .ok_or_else(|| Error::Child(format!("sync socket: unknown message tag {}", buf[1])))
}

pub struct Channel {
    fd: OwnedFd,
}

/// A connected pair: one end for the parent, one for the child.
pub fn pair() -> Result<(Channel, Channel)> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .ctx(|| "create the runtime's sync socketpair")?;
    Ok((Channel { fd: a }, Channel { fd: b }))
}

impl Channel {
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn send(&self, msg: &Msg) -> Result<()> {
        self.send_with_fd(msg, None)
    }

    pub fn send_with_fd(&self, msg: &Msg, fd: Option<RawFd>) -> Result<()> {
        let (tag, arg, text) = msg.encode();
        let text = &text[..text.len().min(MAX_MESSAGE - 8)];
        let mut header = [0u8; 8];
        header[0] = VERSION;
        header[1] = tag;
        header[4..8].copy_from_slice(&arg.to_ne_bytes());
        let iov = [IoSlice::new(&header), IoSlice::new(text)];
        let fds;
        let cmsgs: &[ControlMessage] = match fd {
            Some(fd) => {
                fds = [fd];
                &[ControlMessage::ScmRights(&fds)]
            }
            None => &[],
        };
        sendmsg::<()>(
            self.fd.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .ctx(|| "send on the runtime's sync socket")?;
        Ok(())
    }

    /// Receive one message. `Ok(None)` means the other side closed the channel (it exited, or
    /// — for a child that reached execve — its close-on-exec end went away).
    pub fn recv(&self) -> Result<Option<(Msg, Option<OwnedFd>)>> {
        let mut buf = [0u8; MAX_MESSAGE];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        let (len, fd) = loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => {
                    let mut fd = None;
                    for c in m.cmsgs().map_err(|e| Error::Child(e.to_string()))? {
                        if let ControlMessageOwned::ScmRights(fds) = c {
                            for raw in fds {
                                // SAFETY: SCM_RIGHTS just installed this descriptor in our table.
                                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                                fd.get_or_insert(owned);
                            }
                        }
                    }
                    break (m.bytes, fd);
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e).ctx(|| "receive on the runtime's sync socket"),
            }
        };
        if len == 0 {
            return Ok(None);
        }
        Ok(Some((decode(&buf[..len])?, fd)))
    }

    /// A child's last word: report the failure, then keep reading until the parent closes
    /// its end (or kills us). Exiting with messages of the parent still unread would make
    /// the kernel reset the connection, and the parent would get ECONNRESET instead of
    /// the reason.
    pub fn report_failure(&self, text: String) -> Result<()> {
        self.send(&Msg::Failed(text))?;
        while let Ok(Some(_)) = self.recv() {}
        Ok(())
    }

    /// Receive and insist on a particular message; a `Failed` from the other side becomes the
    /// error, and an early close is reported as such.
    pub fn expect(&self, want: &Msg, what: &str) -> Result<Option<OwnedFd>> {
        match self.recv()? {
            Some((Msg::Failed(text), _)) => Err(Error::Child(text)),
            Some((m, fd)) if &m == want => Ok(fd),
            Some((m, _)) => Err(Error::Child(format!(
                "{what}: expected {want:?}, got {m:?}"
            ))),
            None => Err(Error::Child(format!(
                "{what}: the container process exited before it was set up"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_with_and_without_fds() {
        let (a, b) = pair().unwrap();
        for m in [
            Msg::Continue,
            Msg::RunHooks,
            Msg::Ready,
            Msg::Failed("mount /proc: EPERM".into()),
            Msg::Pid(4242),
            Msg::WriteMaps(7),
            Msg::Reparent(9),
        ] {
            a.send(&m).unwrap();
            let (got, fd) = b.recv().unwrap().unwrap();
            assert_eq!(got, m);
            assert!(fd.is_none());
        }
        let file = std::fs::File::open("/dev/null").unwrap();
        a.send_with_fd(&Msg::SeccompListener, Some(file.as_raw_fd()))
            .unwrap();
        let (got, fd) = b.recv().unwrap().unwrap();
        assert_eq!(got, Msg::SeccompListener);
        assert!(fd.is_some());
        drop(a);
        assert!(b.recv().unwrap().is_none());
    }

    #[test]
    fn expect_turns_failure_into_error() {
        let (a, b) = pair().unwrap();
        a.send(&Msg::Failed("no such file: /bin/nope".into()))
            .unwrap();
        let err = b.expect(&Msg::Ready, "create").unwrap_err();
        assert!(err.to_string().contains("/bin/nope"));
    }

    #[test]
    fn decode_refuses_what_no_sender_writes() {
        assert_eq!(decode(&[1, 5, 0, 0, 7, 0, 0, 0]).unwrap(), Msg::Pid(7));
        for bad in [
            &[][..],
            &[1, 3, 0],
            &[2, 3, 0, 0, 0, 0, 0, 0],
            &[1, 0, 0, 0, 0, 0, 0, 0],
        ] {
            let e = decode(bad).unwrap_err().to_string();
            assert!(e.contains("sync socket"), "{e}");
        }
        let failed = decode(b"\x01\x04\0\0\0\0\0\0cut \xe2\x82").unwrap();
        assert_eq!(failed, Msg::Failed("cut \u{fffd}".into()));
    }
}
