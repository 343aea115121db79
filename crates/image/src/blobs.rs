//! The content store: blobs under `blobs/sha256/<hex>`, written through a temp file in
//! `blobs/tmp/` that is hashed and counted as it is written and renamed into place only when
//! digest and size match. Rename is atomic and two writers of the same digest write the same
//! bytes, so concurrent pulls of one blob by two processes are safe without a lock.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::perms;

#[derive(Clone, Debug)]
pub struct BlobStore {
    dir: PathBuf,
}

/// What a blob is expected to be. Both are known from a descriptor when pulling; `import`
/// only learns the digest at the end.
#[derive(Clone, Debug, Default)]
pub struct Expected {
    pub digest: Option<Digest>,
    pub size: Option<u64>,
    /// Names the blob in errors ("layer", "manifest", "config").
    pub what: String,
}

impl BlobStore {
    pub fn open(root: &Path) -> Result<Self> {
        let dir = root.join("blobs");
        perms::ensure_dir(&dir, perms::DIR_MODE)?;
        for sub in ["sha256", "tmp"] {
            perms::ensure_dir(&dir.join(sub), perms::DIR_MODE)?;
        }
        Ok(BlobStore { dir })
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("sha256").join(digest.hex())
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    pub fn size(&self, digest: &Digest) -> Option<u64> {
        fs::metadata(self.path(digest)).ok().map(|m| m.len())
    }

    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        let p = self.path(digest);
        File::open(&p).map_err(|e| Error::io(&p, e))
    }

    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>> {
        let p = self.path(digest);
        let data = fs::read(&p).map_err(|e| Error::io(&p, e))?;
        // Cheap for manifests and configs, and it means a blob damaged on disk is never
        // trusted as what its name says.
        let actual = Digest::of_bytes(&data);
        if &actual != digest {
            return Err(Error::DigestMismatch {
                what: "stored blob".into(),
                expected: digest.to_string(),
                actual: format!("got {actual}"),
            });
        }
        Ok(data)
    }

    pub fn writer(&self, expected: Expected) -> Result<BlobWriter> {
        let tmp = self
            .dir
            .join("tmp")
            .join(format!("{:016x}", rand::random::<u64>()));
        let file = File::options()
            .write(true)
            .create_new(true)
            .mode(perms::FILE_MODE)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        Ok(BlobWriter {
            store: self.clone(),
            tmp: Some(tmp),
            // Network chunks are small; batching them saves most of the write syscalls.
            file: io::BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            size: 0,
            expected,
        })
    }

    /// Stores `data` whose digest is computed here (manifests and configs we wrote).
    pub fn put(&self, data: &[u8], expected: Expected) -> Result<Digest> {
        let mut w = self.writer(expected)?;
        w.write_all(data)
            .map_err(|e| crate::error::from_io("writing blob", e))?;
        w.commit()
    }

    /// Copies a reader into the store, checking `expected` in the same pass.
    pub fn ingest(&self, mut r: impl Read, expected: Expected) -> Result<Digest> {
        let mut w = self.writer(expected)?;
        io::copy(&mut r, &mut w).map_err(|e| crate::error::from_io("writing blob", e))?;
        w.commit()
    }

    pub fn remove(&self, digest: &Digest) -> Result<()> {
        let p = self.path(digest);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&p, e)),
        }
    }

    /// Sets the store's own directories here to their mode (for stores made before they
    /// were private). The blobs in them are left as they are: nobody else can reach them.
    pub(crate) fn tighten_modes(&self) -> Result<()> {
        for p in [
            self.dir.clone(),
            self.dir.join("sha256"),
            self.dir.join("tmp"),
        ] {
            perms::tighten(&p, perms::DIR_MODE)?;
        }
        Ok(())
    }

    /// Removes temp files left by writers that were killed. Only safe while nothing is
    /// writing (the caller holds the store's exclusive GC lock).
    pub fn sweep_temporaries(&self) -> Result<()> {
        let dir = self.dir.join("tmp");
        for ent in fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let ent = ent.map_err(|e| Error::io(&dir, e))?;
            let p = ent.path();
            let r = if ent.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            match r {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&p, e)),
            }
        }
        Ok(())
    }

    /// Every digest on disk (for garbage collection).
    pub fn list(&self) -> Result<Vec<Digest>> {
        let dir = self.dir.join("sha256");
        let mut out = Vec::new();
        for ent in fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let ent = ent.map_err(|e| Error::io(&dir, e))?;
            if let Some(name) = ent.file_name().to_str() {
                if let Ok(d) = Digest::parse(&format!("sha256:{name}")) {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }
}

/// A blob being written. Dropping it without `commit` removes the temp file, so a failed
/// or interrupted transfer leaves nothing in the store.
pub struct BlobWriter {
    store: BlobStore,
    tmp: Option<PathBuf>,
    file: io::BufWriter<File>,
    hasher: Sha256,
    size: u64,
    expected: Expected,
}

impl BlobWriter {
    pub fn written(&self) -> u64 {
        self.size
    }

    /// The digest of what was written so far (the writer is the one place those bytes are
    /// hashed while pulling).
    pub fn digest(&self) -> Digest {
        Digest::from_sha256(self.hasher.clone())
    }

    /// Verifies and renames into place. Layer data is not fsynced: a pull would otherwise be
    /// bound by the disk's flush rate, and the database (written after this) is what says
    /// a blob belongs to an image; a torn blob fails its digest check on next use.
    pub fn commit(mut self) -> Result<Digest> {
        let actual = Digest::from_sha256(std::mem::take(&mut self.hasher));
        let what = self.expected.what.clone();
        if let Some(size) = self.expected.size {
            if size != self.size {
                return Err(Error::SizeMismatch {
                    what,
                    digest: self
                        .expected
                        .digest
                        .as_ref()
                        .map(|d| d.to_string())
                        .unwrap_or_default(),
                    expected: size,
                    actual: self.size,
                });
            }
        }
        if let Some(expected) = &self.expected.digest {
            if expected != &actual {
                return Err(Error::DigestMismatch {
                    what,
                    expected: expected.to_string(),
                    actual: format!("got {actual}"),
                });
            }
        }
        self.file
            .flush()
            .map_err(|e| crate::error::from_io("writing blob", e))?;
        let Some(tmp) = self.tmp.take() else {
            return Err(Error::malformed("blob writer", "committed twice"));
        };
        let dest = self.store.path(&actual);
        if let Err(e) = fs::rename(&tmp, &dest) {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io(&dest, e));
        }
        Ok(actual)
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(limit) = self.expected.size {
            if self.size + buf.len() as u64 > limit {
                return Err(crate::error::into_io(Error::SizeMismatch {
                    what: self.expected.what.clone(),
                    digest: self
                        .expected
                        .digest
                        .as_ref()
                        .map(|d| d.to_string())
                        .unwrap_or_default(),
                    expected: limit,
                    actual: self.size + buf.len() as u64,
                }));
            }
        }
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = fs::remove_file(tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_count(root: &Path) -> usize {
        fs::read_dir(root.join("blobs/tmp")).unwrap().count()
    }

    #[test]
    fn stores_verified_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = Digest::of_bytes(b"hello");
        let got = store
            .put(
                b"hello",
                Expected {
                    digest: Some(d.clone()),
                    size: Some(5),
                    what: "x".into(),
                },
            )
            .unwrap();
        assert_eq!(got, d);
        assert_eq!(store.read(&d).unwrap(), b"hello");
        assert_eq!(tmp_count(dir.path()), 0);
    }

    #[test]
    fn refuses_mismatch_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = Digest::of_bytes(b"hello");
        let e = store
            .put(
                b"hellO",
                Expected {
                    digest: Some(d.clone()),
                    size: None,
                    what: "layer".into(),
                },
            )
            .unwrap_err();
        assert!(e.to_string().contains("digest mismatch"), "{e}");
        let e = store
            .put(
                b"hello!",
                Expected {
                    digest: Some(d.clone()),
                    size: Some(5),
                    what: "layer".into(),
                },
            )
            .unwrap_err();
        assert!(e.to_string().contains("size mismatch"), "{e}");
        let e = store
            .put(
                b"hell",
                Expected {
                    digest: Some(d.clone()),
                    size: Some(5),
                    what: "layer".into(),
                },
            )
            .unwrap_err();
        assert!(e.to_string().contains("size mismatch"), "{e}");
        assert!(!store.contains(&d));
        assert_eq!(tmp_count(dir.path()), 0);
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn concurrent_writers_of_same_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let data = vec![7u8; 1 << 20];
        let d = Digest::of_bytes(&data);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let e = Expected {
                        digest: Some(d.clone()),
                        size: Some(data.len() as u64),
                        ..Default::default()
                    };
                    store.ingest(&data[..], e).unwrap();
                });
            }
        });
        assert_eq!(store.read(&d).unwrap(), data);
        assert_eq!(tmp_count(dir.path()), 0);
    }
}
