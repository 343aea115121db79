//! `linux.seccomp` → a classic BPF program.
//!
//! Compiling a profile with libseccomp costs milliseconds (Docker's default profile has ~350
//! syscalls); loading a program costs one syscall. So the program is compiled once per
//! distinct profile, cached on disk under a key that covers everything that shapes it, and
//! loaded in the container's init with a bare `seccomp(2)` — no libseccomp call, no
//! allocation, which is what a forked child about to execve should be doing.

mod compile;
mod enosys;
mod features;
mod program;

pub use compile::compile;
pub use features::{features, SeccompFeatures};
pub use program::{send_listener, Cache, Program};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The profile asks for something invalid; the text names the field and value.
    #[error("{0}")]
    Profile(String),
    #[error("linux.seccomp: libseccomp refused {what}: {err}")]
    Libseccomp {
        what: String,
        err: libseccomp::error::SeccompError,
    },
    #[error("{context}: {err}")]
    Io {
        context: String,
        err: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |err| Error::Io { context, err }
}
