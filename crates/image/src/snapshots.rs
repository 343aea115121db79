//! Snapshots: one directory per chain id holding that layer's diff in overlay form, used as
//! an overlay lowerdir. A snapshot is unpacked into `snapshots/.tmp-*` and renamed into
//! place only when complete, so a failed or interrupted unpack never looks like a snapshot.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rustix::fs::{RenameFlags, CWD};
use rustix::io::Errno;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::perms;

const TMP_PREFIX: &str = ".tmp-";
const TRASH_PREFIX: &str = ".trash-";

#[derive(Clone, Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
}

impl SnapshotStore {
    pub fn open(root: &Path) -> Result<Self> {
        let dir = root.join("snapshots");
        perms::ensure_dir(&dir, perms::DIR_MODE)?;
        Ok(SnapshotStore { dir })
    }

    /// The directory to use as an overlay lowerdir.
    pub fn fs_path(&self, chain_id: &Digest) -> PathBuf {
        self.dir.join(chain_id.hex()).join("fs")
    }

    pub fn exists(&self, chain_id: &Digest) -> bool {
        self.fs_path(chain_id).is_dir()
    }

    pub fn prepare(&self) -> Result<TempSnapshot> {
        let dir = self
            .dir
            .join(format!("{TMP_PREFIX}{:016x}", rand::random::<u64>()));
        let fs_dir = dir.join("fs");
        // `<id>/` is the store's (private, and renamed into place as it is); `fs/` is the
        // image's `/`, the layer's "./" entry sets its mode when there is one.
        perms::create_dir(&dir, perms::DIR_MODE)?;
        if let Err(e) = perms::create_dir(&fs_dir, perms::IMAGE_ROOT_MODE) {
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        Ok(TempSnapshot {
            dir: Some(dir),
            fs: fs_dir,
            store: self.clone(),
        })
    }

    /// Moves the snapshot out of its name first, so a crash half way through deleting
    /// leaves trash (swept by GC), never a half-empty snapshot under a valid name.
    pub fn remove(&self, chain_id: &Digest) -> Result<()> {
        let from = self.dir.join(chain_id.hex());
        let trash = self
            .dir
            .join(format!("{TRASH_PREFIX}{:016x}", rand::random::<u64>()));
        match fs::rename(&from, &trash) {
            Ok(()) => fs::remove_dir_all(&trash).map_err(|e| Error::io(&trash, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&from, e)),
        }
    }

    /// Chain ids present on disk.
    pub fn list(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for ent in fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))? {
            let ent = ent.map_err(|e| Error::io(&self.dir, e))?;
            if let Some(name) = ent.file_name().to_str() {
                if let Ok(d) = Digest::parse(&format!("sha256:{name}")) {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    /// Sets the store's own directories here (`snapshots/` and each `snapshots/<entry>/`,
    /// never the image content in `fs/`) to their mode: one directory listing, for stores
    /// made before they were private.
    pub(crate) fn tighten_modes(&self) -> Result<()> {
        perms::tighten(&self.dir, perms::DIR_MODE)?;
        for ent in fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))? {
            let ent = ent.map_err(|e| Error::io(&self.dir, e))?;
            if ent.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                perms::tighten(&ent.path(), perms::DIR_MODE)?;
            }
        }
        Ok(())
    }

    /// Removes leftovers of interrupted unpacks and deletions. Only safe while no other
    /// process is unpacking (the caller holds the store's exclusive GC lock).
    pub fn sweep_temporaries(&self) -> Result<()> {
        for ent in fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))? {
            let ent = ent.map_err(|e| Error::io(&self.dir, e))?;
            let name = ent.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(TMP_PREFIX) || name.starts_with(TRASH_PREFIX) {
                fs::remove_dir_all(ent.path()).map_err(|e| Error::io(ent.path(), e))?;
            }
        }
        Ok(())
    }
}

/// A snapshot being unpacked; removed on drop unless committed.
pub struct TempSnapshot {
    dir: Option<PathBuf>,
    fs: PathBuf,
    store: SnapshotStore,
}

impl TempSnapshot {
    pub fn fs_path(&self) -> &Path {
        &self.fs
    }

    /// Renames into place. If another process committed the same chain id first, its copy
    /// (of identical content, by construction) is kept and ours is dropped.
    pub fn commit(mut self, chain_id: &Digest) -> Result<()> {
        let Some(dir) = self.dir.take() else {
            return Err(Error::malformed("snapshot", "committed twice"));
        };
        let dest = self.store.dir.join(chain_id.hex());
        match rustix::fs::renameat_with(CWD, &dir, CWD, &dest, RenameFlags::NOREPLACE) {
            Ok(()) => Ok(()),
            Err(Errno::EXIST) | Err(Errno::NOTEMPTY) => {
                let _ = fs::remove_dir_all(&dir);
                Ok(())
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                Err(Error::io(&dest, e.into()))
            }
        }
    }
}

impl Drop for TempSnapshot {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}
