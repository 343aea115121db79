//! The syscall layer: signal masks, spawning the child, waiting for signals, reaping.
//!
//! Raw `libc` is used where nix's typed `Signal` cannot carry the value: real-time signals
//! (SIGRTMIN..SIGRTMAX) must be forwarded and reported like any other.

use std::ffi::CString;
use std::os::fd::BorrowedFd;

use nix::errno::Errno;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::{self, ForkResult, Pid};

use crate::{ChildEnd, Error, NAME, NOT_FORWARDED};

fn sys(op: &'static str) -> impl FnOnce(Errno) -> Error {
    move |errno| Error::Sys { op, errno }
}

/// vessel-init's signal state: every catchable signal but [`NOT_FORWARDED`] is blocked so
/// that it stays pending until [`wait_signal`] takes it. Blocking (rather than handlers)
/// also matters as PID 1 of a pid namespace: the kernel drops signals an init has left at
/// SIG_DFL, but never drops blocked ones.
pub struct SignalSetup {
    waited: SigSet,
}

impl SignalSetup {
    pub fn install() -> Result<SignalSetup, Error> {
        let mut waited = SigSet::all();
        for sig in NOT_FORWARDED {
            waited.remove(sig);
        }
        waited.thread_set_mask().map_err(sys("sigprocmask"))?;
        // Once the child owns the terminal's foreground, we are a background process
        // group; ignoring these means touching the tty can never stop us (tini does this).
        let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
        for sig in [Signal::SIGTTIN, Signal::SIGTTOU] {
            // SAFETY: installing SIG_IGN runs no code of ours in signal context.
            unsafe { sigaction(sig, &ignore) }.map_err(sys("sigaction"))?;
        }
        Ok(SignalSetup { waited })
    }
}

pub fn set_pdeathsig(sig: Signal) -> Result<(), Error> {
    nix::sys::prctl::set_pdeathsig(sig).map_err(sys("prctl(PR_SET_PDEATHSIG)"))
}

pub fn set_subreaper() -> Result<(), Error> {
    nix::sys::prctl::set_child_subreaper(true).map_err(sys("prctl(PR_SET_CHILD_SUBREAPER)"))
}

/// Whether orphans of our descendants come to us: PID 1 of a namespace, or a subreaper.
pub fn is_reaper() -> Result<bool, Error> {
    if unistd::getpid().as_raw() == 1 {
        return Ok(true);
    }
    nix::sys::prctl::get_child_subreaper().map_err(sys("prctl(PR_GET_CHILD_SUBREAPER)"))
}

/// Fork and exec `argv` in its own process group. Never returns in the child.
///
/// Takes the [`SignalSetup`] to prove signals are blocked before the fork: a signal that
/// arrives between fork and our first wait stays pending instead of being lost, and the
/// child's SIGCHLD cannot be missed.
pub fn spawn(argv: &[CString], _signals: &SignalSetup) -> Result<Pid, Error> {
    // SAFETY: vessel-init is single-threaded, so the child may run any code until exec.
    match unsafe { unistd::fork() }.map_err(sys("fork"))? {
        ForkResult::Child => exec_child(argv),
        ForkResult::Parent { child } => {
            // Also set it from the parent (the classic job-control race fix): `-g` may
            // signal the group before the child has run its own setpgid. Fails harmlessly
            // (EACCES) once the child has exec'd, by which time the group exists.
            let _ = unistd::setpgid(child, child);
            Ok(child)
        }
    }
}

fn exec_child(argv: &[CString]) -> ! {
    if let Err(e) = unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0)) {
        child_fatal(
            &format!("setpgid failed: {}", e.desc()),
            crate::EXIT_INIT_ERROR,
        );
    }
    // Hand the terminal's foreground to the child's group so job control (Ctrl-C, Ctrl-Z
    // from `docker run -it`) reaches it. SIGTTOU is still ignored here, so this cannot stop
    // us. No terminal (ENOTTY), lx zones (ENXIO) and a closed stdin (EBADF) are all fine.
    // SAFETY: fd 0 is only borrowed for the call; EBADF is handled if it is closed.
    let stdin = unsafe { BorrowedFd::borrow_raw(libc::STDIN_FILENO) };
    match unistd::tcsetpgrp(stdin, unistd::getpgrp()) {
        Ok(()) | Err(Errno::ENOTTY | Errno::ENXIO | Errno::EBADF) => {}
        Err(e) => child_fatal(
            &format!("tcsetpgrp failed: {}", e.desc()),
            crate::EXIT_INIT_ERROR,
        ),
    }
    reset_signals();
    // execvp returns only on failure (its Ok type is uninhabited).
    let Err(e) = unistd::execvp(&argv[0], argv);
    // The codes docker and tini use: 127 not found, 126 found but not executable.
    let code = match e {
        Errno::ENOENT => 127,
        Errno::EACCES => 126,
        _ => crate::EXIT_INIT_ERROR,
    };
    child_fatal(
        &format!("exec {} failed: {}", argv[0].to_string_lossy(), e.desc()),
        code,
    )
}

/// The program starts as if vessel-init were not there: empty mask, default dispositions
/// (SIG_IGN survives exec, and we ignored SIGTTIN/SIGTTOU ourselves).
fn reset_signals() {
    for signo in 1..=libc::SIGRTMAX() {
        if signo == libc::SIGKILL || signo == libc::SIGSTOP {
            continue;
        }
        // SAFETY: installing SIG_DFL runs no code of ours. Errors (glibc reserves two
        // real-time signals: EINVAL) leave nothing to undo.
        unsafe {
            libc::signal(signo, libc::SIG_DFL);
        }
    }
    let _ = SigSet::empty().thread_set_mask();
}

fn child_fatal(msg: &str, code: i32) -> ! {
    eprintln!("{NAME}: {msg}");
    exit_now(code)
}

/// Wait up to one second for a signal; `None` on timeout.
pub fn wait_signal(signals: &SignalSetup) -> Result<Option<i32>, Error> {
    let timeout = libc::timespec {
        tv_sec: 1,
        tv_nsec: 0,
    };
    // SAFETY: the set and timespec outlive the call; a null siginfo is allowed.
    let r = unsafe { libc::sigtimedwait(signals.waited.as_ref(), std::ptr::null_mut(), &timeout) };
    if r >= 0 {
        return Ok(Some(r));
    }
    match Errno::last() {
        Errno::EAGAIN | Errno::EINTR => Ok(None),
        e => Err(Error::Sys {
            op: "sigtimedwait",
            errno: e,
        }),
    }
}

/// Forward `signo` to the child, or to its process group. Returns false if it was gone
/// (exited, perhaps not yet reaped), which is not an error.
pub fn forward_signal(child: Pid, signo: i32, group: bool) -> Result<bool, Error> {
    let target = if group {
        -child.as_raw()
    } else {
        child.as_raw()
    };
    // SAFETY: plain syscall with integer arguments.
    if unsafe { libc::kill(target, signo) } == 0 {
        return Ok(true);
    }
    match Errno::last() {
        Errno::ESRCH => Ok(false),
        e => Err(Error::Sys {
            op: "kill",
            errno: e,
        }),
    }
}

/// Reap every zombie that is ready, without blocking, calling `on_reaped` for each.
pub fn reap_all(mut on_reaped: impl FnMut(Pid, ChildEnd)) -> Result<(), Error> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a valid out-pointer for the call.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        match pid {
            0 => return Ok(()),
            -1 => match Errno::last() {
                Errno::ECHILD => return Ok(()),
                Errno::EINTR => continue,
                e => {
                    return Err(Error::Sys {
                        op: "waitpid",
                        errno: e,
                    })
                }
            },
            pid => {
                // Without WUNTRACED/WCONTINUED only exits and signal deaths are reported.
                let end = if libc::WIFSIGNALED(status) {
                    ChildEnd::Signaled(libc::WTERMSIG(status))
                } else {
                    ChildEnd::Exited(libc::WEXITSTATUS(status))
                };
                on_reaped(Pid::from_raw(pid), end);
            }
        }
    }
}

/// Leave the forked child without running exit handlers or flushing stdio buffers that
/// are copies of the parent's.
fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is always safe to call; it does not return.
    unsafe { libc::_exit(code) }
}
