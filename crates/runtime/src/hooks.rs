//! OCI hooks: each is a host program run with the container state on stdin, optionally with
//! a timeout. A failing prestart/createRuntime/createContainer/startContainer hook aborts the
//! operation; poststart and poststop failures are reported but do not undo anything (as the
//! runtime-spec says).

use std::io::Write;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;
use serde::Serialize;

use crate::error::{Error, Result};

/// The runtime-spec `state` document given to hooks and printed by `state`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HookState<'a> {
    pub oci_version: &'a str,
    pub id: &'a str,
    pub status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    pub bundle: &'a std::path::Path,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<&'a std::collections::HashMap<String, String>>,
}

/// startContainer hooks run inside the container: as runc, one without "env" gets the
/// container process's environment rather than the runtime's.
pub fn run_all_in_container(
    kind: &'static str,
    hooks: Option<&Vec<Hook>>,
    state: &HookState,
    process_env: &[String],
) -> Result<()> {
    let Some(hooks) = hooks.filter(|h| !h.is_empty()) else {
        return Ok(());
    };
    let with_env: Vec<Hook> = hooks
        .iter()
        .map(|h| {
            let mut h = h.clone();
            if h.env().is_none() {
                h.set_env(Some(process_env.to_vec()));
            }
            h
        })
        .collect();
    run_all(kind, Some(&with_env), state)
}

pub fn run_all(kind: &'static str, hooks: Option<&Vec<Hook>>, state: &HookState) -> Result<()> {
    let hooks = match hooks {
        Some(h) if !h.is_empty() => h,
        _ => return Ok(()),
    };
    let input = serde_json::to_vec(state).map_err(|e| Error::config(e.to_string()))?;
    for (index, hook) in hooks.iter().enumerate() {
        run_one(hook, &input).map_err(|reason| Error::Hook {
            kind,
            index,
            path: hook.path().display().to_string(),
            reason,
        })?;
    }
    Ok(())
}

fn run_one(hook: &Hook, input: &[u8]) -> std::result::Result<(), String> {
    let timeout = match hook.timeout() {
        Some(t) if t <= 0 => return Err(format!("timeout must be positive, got {t}")),
        Some(t) => Some(Duration::from_secs(t as u64)),
        None => None,
    };
    let args = hook.args().as_deref().unwrap_or(&[]);
    let mut cmd = Command::new(hook.path());
    if let Some((arg0, rest)) = args.split_first() {
        use std::os::unix::process::CommandExt;
        cmd.arg0(arg0).args(rest);
    }
    // As runc: a hook without "env" inherits the runtime's environment; with one (even an
    // empty list), it gets exactly that.
    if let Some(env) = hook.env() {
        cmd.env_clear();
        for e in env {
            if let Some((k, v)) = e.split_once('=') {
                cmd.env(k, v);
            }
        }
    }
    // As runc: the state on stdin, stdout and stderr collected and shown when it fails.
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("start: {e}"))?;
    let deadline = timeout.map(|t| Instant::now() + t);
    let outcome = talk(&mut child, input, deadline);
    if outcome.as_ref().map_or(true, |o| o.timed_out) {
        let _ = child.kill();
    }
    let status = child.wait().map_err(|e| format!("wait: {e}"));
    let output = outcome?;
    let status = status?;
    if output.timed_out {
        return Err(format!(
            "timed out after {}s{}",
            timeout.map_or(0, |t| t.as_secs()),
            output.describe()
        ));
    }
    if status.success() {
        return Ok(());
    }
    Err(format!("{status}{}", output.describe()))
}

/// What a hook wrote, the end of each stream kept for the error message.
struct Output {
    stdout: Tail,
    stderr: Tail,
    timed_out: bool,
}

impl Output {
    fn describe(&self) -> String {
        let mut s = String::new();
        for (name, tail) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let text = tail.text();
            if !text.is_empty() {
                s.push_str(&format!(", {name}: {text}"));
            }
        }
        s
    }
}

/// The last [`Tail::KEEP`] bytes of a stream, and how many came before them.
#[derive(Default)]
struct Tail {
    buf: Vec<u8>,
    dropped: usize,
}

impl Tail {
    const KEEP: usize = 16 << 10;

    fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        if self.buf.len() > 2 * Self::KEEP {
            let cut = self.buf.len() - Self::KEEP;
            self.buf.drain(..cut);
            self.dropped += cut;
        }
    }

    fn text(&self) -> String {
        let start = self.buf.len().saturating_sub(Self::KEEP);
        let text = String::from_utf8_lossy(&self.buf[start..]);
        let text = text.trim();
        match self.dropped + start {
            0 => text.to_string(),
            n => format!("[{n} bytes before] {text}"),
        }
    }
}

/// Feed the hook its input and read its stdout and stderr while it runs (a hook that writes
/// more than a pipe holds must not block), until it exits or `deadline` passes. One thread:
/// poll on the pipes and a pidfd (or, where a seccomp profile loaded before startContainer
/// hooks refuses pidfd_open, a 10 ms tick with try_wait). Output written by processes the
/// hook left behind after it exited is not waited for.
fn talk(
    child: &mut std::process::Child,
    input: &[u8],
    deadline: Option<Instant>,
) -> std::result::Result<Output, String> {
    use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
    let pidfd = crate::sys::pidfd_open(child.id() as i32).ok();
    let mut stdin = child.stdin.take().filter(|_| !input.is_empty());
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    for fd in [
        stdin.as_ref().map(|f| f.as_fd()),
        stdout.as_ref().map(|f| f.as_fd()),
        stderr.as_ref().map(|f| f.as_fd()),
    ]
    .into_iter()
    .flatten()
    {
        set_nonblocking(fd).map_err(|e| format!("pipe: {e}"))?;
    }
    let mut out = Output {
        stdout: Tail::default(),
        stderr: Tail::default(),
        timed_out: false,
    };
    let mut pipes = [stdout.map(OwnedFd::from), stderr.map(OwnedFd::from)];
    let mut written = 0;
    // Read what is there now; false once the pipe is at its end.
    fn drain(fd: BorrowedFd, tail: &mut Tail) -> bool {
        let mut buf = [0u8; 16 << 10];
        loop {
            match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
                Ok(0) => return false,
                Ok(n) => tail.push(&buf[..n]),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => return true,
                Err(_) => return false,
            }
        }
    }
    let pollfd = |fd: i32, events| libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    loop {
        let mut fds = Vec::with_capacity(4);
        if let Some(p) = &pidfd {
            fds.push(pollfd(p.as_raw_fd(), libc::POLLIN));
        }
        let stdin_at = fds.len();
        if let Some(s) = &stdin {
            fds.push(pollfd(s.as_raw_fd(), libc::POLLOUT));
        }
        for p in pipes.iter().flatten() {
            fds.push(pollfd(p.as_raw_fd(), libc::POLLIN));
        }
        let mut wait_ms = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    out.timed_out = true;
                    return Ok(out);
                }
                i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX)
            }
        };
        if pidfd.is_none() && !(0..=10).contains(&wait_ms) {
            wait_ms = 10;
        }
        // SAFETY: a valid array of pollfds.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
        if r < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll: {err}"));
        }
        if let Some(s) = &mut stdin {
            if fds[stdin_at].revents != 0 {
                match s.write(&input[written..]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    // A hook that does not read its stdin is fine (EPIPE).
                    Err(_) => written = input.len(),
                }
                if written == input.len() {
                    // Closing it is the end of the input.
                    stdin = None;
                }
            }
        }
        // Checked before the last reads: what it wrote before exiting is in the pipes.
        let exited = match &pidfd {
            Some(_) => fds[0].revents != 0,
            None => matches!(child.try_wait(), Ok(Some(_)) | Err(_)),
        };
        for (pipe, tail) in pipes.iter_mut().zip([&mut out.stdout, &mut out.stderr]) {
            if let Some(p) = pipe {
                if !drain(p.as_fd(), tail) {
                    *pipe = None;
                }
            }
        }
        if exited {
            return Ok(out);
        }
    }
}

fn set_nonblocking(fd: std::os::fd::BorrowedFd) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use std::os::fd::AsRawFd;
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}
