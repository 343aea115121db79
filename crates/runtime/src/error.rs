//! The runtime's error type. Every message names what was wrong (field, value, path) so that a
//! user — or the engine that drives us — can act on it without reading our source.

use std::fmt::Display;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// config.json (or a --process file) is malformed or asks for something invalid.
    #[error("{0}")]
    Config(String),
    /// A command-line argument is invalid.
    #[error("{0}")]
    Usage(String),
    #[error("invalid container id {id:?}: {reason}")]
    InvalidId { id: String, reason: &'static str },
    #[error("container {0:?} already exists")]
    Exists(String),
    #[error("container {0:?} does not exist")]
    NotFound(String),
    #[error("container {id:?} is {status}: {action}")]
    WrongState {
        id: String,
        status: String,
        action: String,
    },
    #[error("{context}: {err}")]
    Io {
        context: String,
        // Not a `source` (by attribute or by name): the message already ends with it, and
        // anyhow would print it twice.
        err: std::io::Error,
    },
    #[error("{0}")]
    Cgroup(vessel_cgroups::Error),
    #[error("{0}")]
    Seccomp(vessel_seccomp::Error),
    /// The container's init (or an exec'd process) reported a failure before running user code.
    #[error("{0}")]
    Child(String),
    /// CRIU (checkpoint/restore) is missing, or failed: the message quotes what it said.
    #[error("{0}")]
    Criu(String),
    #[error("{kind} hook #{index} ({path}) failed: {reason}")]
    Hook {
        kind: &'static str,
        index: usize,
        path: String,
        reason: String,
    },
}

// Plain From impls rather than #[from]: #[from] makes the inner error a `source`, and the
// message (which already includes it) would be printed twice by anyhow.
impl From<vessel_cgroups::Error> for Error {
    fn from(e: vessel_cgroups::Error) -> Self {
        Error::Cgroup(e)
    }
}

impl From<vessel_seccomp::Error> for Error {
    fn from(e: vessel_seccomp::Error) -> Self {
        Error::Seccomp(e)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn config(msg: impl Into<String>) -> Self {
        Error::Config(msg.into())
    }
}

/// Attach context to syscall and I/O failures: `.ctx(|| format!("mount {dst}"))`.
pub trait Context<T> {
    fn ctx<C: Display>(self, context: impl FnOnce() -> C) -> Result<T>;
}

impl<T> Context<T> for std::io::Result<T> {
    fn ctx<C: Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|err| Error::Io {
            context: context().to_string(),
            err,
        })
    }
}

impl<T> Context<T> for nix::Result<T> {
    fn ctx<C: Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|errno| Error::Io {
            context: context().to_string(),
            err: std::io::Error::from_raw_os_error(errno as i32),
        })
    }
}
