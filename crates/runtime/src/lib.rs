//! vessel's OCI runtime: a bundle and its config.json in, an isolated process out.
//!
//! `create` forks once (clone3 into every new namespace, straight into the cgroup on v2);
//! the parent does the host-side work while the child builds the rootfs and drops
//! privileges, then waits on a fifo that `start` releases. See DESIGN.md, "The runtime's
//! process model".

pub mod channel;
pub mod checkpoint;
pub mod console;
pub mod container;
pub mod create;
pub mod error;
pub mod exec;
pub mod fault;
pub mod features;
pub mod hooks;
pub mod idmap;
pub mod init;
pub mod lsm;
pub mod mount_options;
pub mod mountinfo;
pub mod mounts;
pub mod namespaces;
pub mod process;
pub mod procfs;
pub mod rdt;
pub mod self_exe;
pub mod spec;
pub mod state;
pub mod sys;
pub mod template;
pub mod tty_relay;

pub use error::{Error, Result};
