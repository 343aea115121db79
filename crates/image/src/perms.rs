//! The modes of the store's own directories and files (CVE-2021-41091: with 0755 store
//! directories, any local user could run an image's setuid-root binaries, open its device
//! nodes and read the database).
//!
//! - Every directory the store makes for itself (`--root`, `blobs/`, `blobs/sha256`,
//!   `blobs/tmp`, `snapshots/`, `snapshots/<id>`, `snapshots/.tmp-*`) is 0700. Docker uses
//!   0710 (0701 for some) with the remapped root's group, so that a user-namespaced root
//!   can traverse to its layers; vessel has no remapped root, and no other non-root reader
//!   needs to traverse: the kernel reads overlay lowerdirs as the mounter. Each lowerdir's
//!   path is looked up once, at mount time, by the (root) mounter; afterwards only the
//!   layer's own inodes are checked (with the mounter's credentials and the caller's),
//!   never their parents on the host. Checked on this kernel: with the lowerdir under a
//!   0700 directory, uid 65534 reads and executes files through the merged mount and is
//!   refused on the lowerdir's own path. A group bit would open the store to a group for
//!   nothing. (Should the engine ever mount inside a user namespace, it will need 0710 with
//!   that namespace's root group, as docker does.)
//! - A snapshot's `fs/` is the image's `/` and everything in it is the image's: those keep
//!   the image's modes (`fs/` is 0755 unless the layer says otherwise, as docker's `diff/`).
//! - The database and its `-wal`/`-shm` files, and the GC lock, are 0600.
//!
//! Directories and files are created with their mode, then set to it exactly (the umask
//! can only take bits away, and it is applied before anything is in them), so there is no
//! moment when they are more open than that. Stores made by older versions are tightened
//! once by [`crate::store::Store::open`].

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Error, Result};

/// The store's own directories.
pub const DIR_MODE: u32 = 0o700;
/// The database, its WAL and shared-memory files, locks, blobs.
pub const FILE_MODE: u32 = 0o600;
/// A snapshot's `fs/` before a layer sets it: the image's `/`, readable by its users.
pub const IMAGE_ROOT_MODE: u32 = 0o755;

/// Creates `path` with exactly `mode`; an existing directory is an error.
pub fn create_dir(path: &Path, mode: u32) -> Result<()> {
    fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .map_err(|e| Error::io(path, e))?;
    set_exact(path, mode)
}

/// Creates `path` with exactly `mode` unless it exists (left as it is: opening an
/// existing store tightens it once, [`tighten`]).
pub fn ensure_dir(path: &Path, mode: u32) -> Result<()> {
    match fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => set_exact(path, mode),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Creates an empty file with exactly `mode` unless it exists (left as it is).
pub fn ensure_file(path: &Path, mode: u32) -> Result<()> {
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
    {
        Ok(f) => f
            .set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(path, e)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

fn set_exact(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| Error::io(path, e))
}

/// Sets an existing directory or regular file of the store to `mode`, without following a
/// symlink (it is left alone, as is anything missing).
pub fn tighten(path: &Path, mode: u32) -> Result<()> {
    let fd = match rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) | Err(Errno::LOOP) => return Ok(()),
        Err(e) => return Err(Error::io(path, e.into())),
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| Error::io(path, e.into()))?;
    let ftype = rustix::fs::FileType::from_raw_mode(st.st_mode);
    if !matches!(
        ftype,
        rustix::fs::FileType::Directory | rustix::fs::FileType::RegularFile
    ) || st.st_mode & 0o7777 == mode
    {
        return Ok(());
    }
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(|e| Error::io(path, e.into()))
}
