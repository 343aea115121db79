//! The image tables of `vessel.db` (SQLite, WAL). The engine adds its own tables to the same
//! file; each component records its schema version in `schema_versions` under its own name,
//! so the two migrate independently. Containers hold images through `image_leases`, which
//! image removal and GC respect.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::digest::Digest;
use crate::error::{Error, Result};

pub const COMPONENT: &str = "image";
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA_V1: &str = r#"
CREATE TABLE images (
    id              TEXT PRIMARY KEY,          -- config digest
    manifest_digest TEXT,                      -- the platform manifest this image came from
    manifest_type   TEXT,
    created         TEXT,                      -- config.created (RFC 3339), as written
    size            INTEGER NOT NULL,          -- unpacked bytes of all layers
    os              TEXT NOT NULL,
    architecture    TEXT NOT NULL,
    variant         TEXT,
    added_at        INTEGER NOT NULL           -- unix time it was stored here
);
CREATE TABLE snapshots (
    chain_id   TEXT PRIMARY KEY,
    parent     TEXT,
    diff_id    TEXT NOT NULL,
    size       INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE image_layers (
    image_id   TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    idx        INTEGER NOT NULL,
    chain_id   TEXT NOT NULL REFERENCES snapshots(chain_id),
    diff_id    TEXT NOT NULL,
    blob       TEXT NOT NULL,                  -- layer blob as stored (compressed or not)
    blob_size  INTEGER NOT NULL,
    media_type TEXT NOT NULL,
    PRIMARY KEY (image_id, idx)
);
CREATE INDEX image_layers_chain ON image_layers(chain_id);
-- every blob an image keeps alive: config, manifests, indexes, layers
CREATE TABLE image_blobs (
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    digest   TEXT NOT NULL,
    PRIMARY KEY (image_id, digest)
);
CREATE INDEX image_blobs_digest ON image_blobs(digest);
CREATE TABLE tags (
    repository TEXT NOT NULL,                  -- docker.io/library/busybox
    tag        TEXT NOT NULL,
    image_id   TEXT NOT NULL REFERENCES images(id),
    tagged_at  INTEGER NOT NULL,
    PRIMARY KEY (repository, tag)
);
CREATE INDEX tags_image ON tags(image_id);
CREATE TABLE repo_digests (
    repository TEXT NOT NULL,
    digest     TEXT NOT NULL,                  -- manifest (or index) digest as pulled
    image_id   TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    PRIMARY KEY (repository, digest)
);
CREATE INDEX repo_digests_image ON repo_digests(image_id);
-- the engine records here which container holds which image
CREATE TABLE image_leases (
    holder   TEXT NOT NULL,
    image_id TEXT NOT NULL REFERENCES images(id),
    PRIMARY KEY (holder, image_id)
);
"#;

pub struct Db {
    conn: Connection,
}

#[derive(Clone, Debug)]
pub struct ImageRow {
    pub id: Digest,
    pub manifest_digest: Option<Digest>,
    pub manifest_type: Option<String>,
    pub created: Option<String>,
    pub size: u64,
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    pub added_at: i64,
}

#[derive(Clone, Debug)]
pub struct LayerRow {
    pub chain_id: Digest,
    pub diff_id: Digest,
    pub blob: Digest,
    pub blob_size: u64,
    pub media_type: String,
    pub size: u64,
}

#[derive(Clone, Debug)]
pub struct NewImage {
    pub image: ImageRow,
    pub layers: Vec<LayerRow>,
    /// Blobs besides the layers (config, manifest, index).
    pub blobs: Vec<Digest>,
    pub tag: Option<(String, String)>,
    pub repo_digest: Option<(String, Digest)>,
}

fn digest_col(s: String) -> rusqlite::Result<Digest> {
    Digest::parse(&s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

impl Db {
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        // Several CLI processes share the file: wait for a writer instead of failing.
        conn.busy_timeout(Duration::from_secs(30))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let mut db = Db { conn };
        db.migrate()?;
        Ok(db)
    }

    fn migrate(&mut self) -> Result<()> {
        // The common case, an up-to-date database, needs no write lock.
        let current: Option<i64> = self
            .conn
            .query_row(
                "SELECT version FROM schema_versions WHERE component = ?1",
                [COMPONENT],
                |r| r.get(0),
            )
            .optional()
            .unwrap_or(None);
        if current == Some(SCHEMA_VERSION) {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL)",
        )?;
        let v: Option<i64> = tx
            .query_row(
                "SELECT version FROM schema_versions WHERE component = ?1",
                [COMPONENT],
                |r| r.get(0),
            )
            .optional()?;
        match v {
            None => {
                tx.execute_batch(SCHEMA_V1)?;
                tx.execute(
                    "INSERT INTO schema_versions (component, version) VALUES (?1, ?2)",
                    params![COMPONENT, SCHEMA_VERSION],
                )?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(v) => {
                return Err(Error::Unsupported {
                    what: "image database schema version",
                    value: format!("{v} (this vessel knows {SCHEMA_VERSION}); upgrade vessel"),
                })
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The version `component` recorded in `schema_versions`, if any. Besides the table
    /// schemas, one-off migrations of what is on disk record themselves here (the store's
    /// file modes are `image-store-modes`).
    pub fn component_version(&self, component: &str) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row(
                "SELECT version FROM schema_versions WHERE component = ?1",
                [component],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub fn set_component_version(&self, component: &str, version: i64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO schema_versions (component, version) VALUES (?1, ?2)
             ON CONFLICT(component) DO UPDATE SET version = excluded.version",
            params![component, version],
        )?;
        Ok(())
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    pub fn snapshot_exists(&self, chain_id: &Digest) -> Result<bool> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM snapshots WHERE chain_id = ?1",
                [chain_id.as_str()],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    pub fn snapshot_size(&self, chain_id: &Digest) -> Result<Option<u64>> {
        Ok(self
            .conn
            .query_row(
                "SELECT size FROM snapshots WHERE chain_id = ?1",
                [chain_id.as_str()],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .map(|s| s as u64))
    }

    pub fn add_snapshot(
        &self,
        chain_id: &Digest,
        parent: Option<&Digest>,
        diff_id: &Digest,
        size: u64,
    ) -> Result<()> {
        self.conn.execute(
            "INSERT OR IGNORE INTO snapshots (chain_id, parent, diff_id, size, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![chain_id.as_str(), parent.map(|p| p.as_str()), diff_id.as_str(), size as i64, now()],
        )?;
        Ok(())
    }

    /// Records an image with its layers, blobs, and optionally a tag and a repo digest, in one
    /// transaction. Re-recording an existing image only adds the new names.
    pub fn add_image(&mut self, img: &NewImage) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let i = &img.image;
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO images (id, manifest_digest, manifest_type, created, size, os, architecture, variant, added_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                i.id.as_str(),
                i.manifest_digest.as_ref().map(|d| d.as_str()),
                i.manifest_type,
                i.created,
                i.size as i64,
                i.os,
                i.architecture,
                i.variant,
                i.added_at
            ],
        )?;
        if inserted == 1 {
            for (idx, l) in img.layers.iter().enumerate() {
                tx.execute(
                    "INSERT INTO image_layers (image_id, idx, chain_id, diff_id, blob, blob_size, media_type) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![i.id.as_str(), idx as i64, l.chain_id.as_str(), l.diff_id.as_str(), l.blob.as_str(), l.blob_size as i64, l.media_type],
                )?;
                tx.execute(
                    "INSERT OR IGNORE INTO image_blobs (image_id, digest) VALUES (?1, ?2)",
                    params![i.id.as_str(), l.blob.as_str()],
                )?;
            }
        }
        for b in &img.blobs {
            tx.execute(
                "INSERT OR IGNORE INTO image_blobs (image_id, digest) VALUES (?1, ?2)",
                params![i.id.as_str(), b.as_str()],
            )?;
        }
        if let Some((repo, tag)) = &img.tag {
            set_tag(&tx, repo, tag, &i.id)?;
        }
        if let Some((repo, d)) = &img.repo_digest {
            tx.execute(
                "INSERT OR REPLACE INTO repo_digests (repository, digest, image_id) VALUES (?1, ?2, ?3)",
                params![repo, d.as_str(), i.id.as_str()],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn tag(&mut self, repo: &str, tag: &str, id: &Digest) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        set_tag(&tx, repo, tag, id)?;
        tx.commit()?;
        Ok(())
    }

    pub fn untag(&self, repo: &str, tag: &str) -> Result<bool> {
        Ok(self.conn.execute(
            "DELETE FROM tags WHERE repository = ?1 AND tag = ?2",
            params![repo, tag],
        )? > 0)
    }

    pub fn remove_repo_digest(&self, repo: &str, digest: &Digest) -> Result<bool> {
        Ok(self.conn.execute(
            "DELETE FROM repo_digests WHERE repository = ?1 AND digest = ?2",
            params![repo, digest.as_str()],
        )? > 0)
    }

    pub fn image(&self, id: &Digest) -> Result<Option<ImageRow>> {
        Ok(self
            .conn
            .query_row(
                &format!("{IMAGE_SELECT} WHERE id = ?1"),
                [id.as_str()],
                image_row,
            )
            .optional()?)
    }

    pub fn images(&self) -> Result<Vec<ImageRow>> {
        let mut st = self
            .conn
            .prepare(&format!("{IMAGE_SELECT} ORDER BY added_at DESC, id"))?;
        let rows = st
            .query_map([], image_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Image ids whose hex starts with `prefix`.
    pub fn images_by_prefix(&self, prefix: &str) -> Result<Vec<Digest>> {
        let mut st = self
            .conn
            .prepare("SELECT id FROM images WHERE id LIKE ?1 ESCAPE '\\'")?;
        let pat = format!("sha256:{}%", prefix.replace(['%', '_', '\\'], ""));
        let rows = st
            .query_map([pat], |r| digest_col(r.get(0)?))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    pub fn tag_target(&self, repo: &str, tag: &str) -> Result<Option<Digest>> {
        Ok(self
            .conn
            .query_row(
                "SELECT image_id FROM tags WHERE repository = ?1 AND tag = ?2",
                params![repo, tag],
                |r| digest_col(r.get(0)?),
            )
            .optional()?)
    }

    pub fn repo_digest_target(&self, repo: &str, digest: &Digest) -> Result<Option<Digest>> {
        Ok(self
            .conn
            .query_row(
                "SELECT image_id FROM repo_digests WHERE repository = ?1 AND digest = ?2",
                params![repo, digest.as_str()],
                |r| digest_col(r.get(0)?),
            )
            .optional()?)
    }

    /// (repository, tag) pairs of an image, oldest tag first.
    pub fn tags_of(&self, id: &Digest) -> Result<Vec<(String, String)>> {
        let mut st = self.conn.prepare("SELECT repository, tag FROM tags WHERE image_id = ?1 ORDER BY tagged_at, repository, tag")?;
        let rows = st
            .query_map([id.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    pub fn last_tag_time(&self, id: &Digest) -> Result<Option<i64>> {
        Ok(self.conn.query_row(
            "SELECT MAX(tagged_at) FROM tags WHERE image_id = ?1",
            [id.as_str()],
            |r| r.get(0),
        )?)
    }

    pub fn repo_digests_of(&self, id: &Digest) -> Result<Vec<(String, Digest)>> {
        let mut st = self.conn.prepare("SELECT repository, digest FROM repo_digests WHERE image_id = ?1 ORDER BY repository, digest")?;
        let rows = st
            .query_map([id.as_str()], |r| Ok((r.get(0)?, digest_col(r.get(1)?)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    pub fn layers_of(&self, id: &Digest) -> Result<Vec<LayerRow>> {
        let mut st = self.conn.prepare(
            "SELECT l.chain_id, l.diff_id, l.blob, l.blob_size, l.media_type, s.size
             FROM image_layers l JOIN snapshots s ON s.chain_id = l.chain_id WHERE l.image_id = ?1 ORDER BY l.idx",
        )?;
        let rows = st
            .query_map([id.as_str()], |r| {
                Ok(LayerRow {
                    chain_id: digest_col(r.get(0)?)?,
                    diff_id: digest_col(r.get(1)?)?,
                    blob: digest_col(r.get(2)?)?,
                    blob_size: r.get::<_, i64>(3)? as u64,
                    media_type: r.get(4)?,
                    size: r.get::<_, i64>(5)? as u64,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    pub fn leases_of(&self, id: &Digest) -> Result<Vec<String>> {
        let mut st = self
            .conn
            .prepare("SELECT holder FROM image_leases WHERE image_id = ?1 ORDER BY holder")?;
        let rows = st
            .query_map([id.as_str()], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    pub fn add_lease(&self, holder: &str, id: &Digest) -> Result<()> {
        self.conn.execute(
            "INSERT OR IGNORE INTO image_leases (holder, image_id) VALUES (?1, ?2)",
            params![holder, id.as_str()],
        )?;
        Ok(())
    }

    pub fn remove_lease(&self, holder: &str, id: &Digest) -> Result<()> {
        self.conn.execute(
            "DELETE FROM image_leases WHERE holder = ?1 AND image_id = ?2",
            params![holder, id.as_str()],
        )?;
        Ok(())
    }

    /// Deletes an image row (its layers, blobs and repo digests cascade). Tags and leases
    /// must already be gone; the caller checked.
    pub fn delete_image(&self, id: &Digest) -> Result<()> {
        self.conn
            .execute("DELETE FROM images WHERE id = ?1", [id.as_str()])?;
        Ok(())
    }

    /// Snapshots no image refers to any more; they are deleted from the table here and
    /// returned so the caller removes their directories.
    pub fn take_unreferenced_snapshots(&mut self) -> Result<Vec<Digest>> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let ids = {
            let mut st = tx.prepare(
                "SELECT chain_id FROM snapshots WHERE chain_id NOT IN (SELECT chain_id FROM image_layers)",
            )?;
            let rows = st
                .query_map([], |r| digest_col(r.get(0)?))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows
        };
        for id in &ids {
            tx.execute("DELETE FROM snapshots WHERE chain_id = ?1", [id.as_str()])?;
        }
        tx.commit()?;
        Ok(ids)
    }

    pub fn blob_referenced(&self, digest: &Digest) -> Result<bool> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM image_blobs WHERE digest = ?1 LIMIT 1",
                [digest.as_str()],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    pub fn snapshot_ids(&self) -> Result<Vec<Digest>> {
        let mut st = self.conn.prepare("SELECT chain_id FROM snapshots")?;
        let rows = st
            .query_map([], |r| digest_col(r.get(0)?))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }
}

const IMAGE_SELECT: &str =
    "SELECT id, manifest_digest, manifest_type, created, size, os, architecture, variant, added_at FROM images";

fn image_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ImageRow> {
    Ok(ImageRow {
        id: digest_col(r.get(0)?)?,
        manifest_digest: r.get::<_, Option<String>>(1)?.map(digest_col).transpose()?,
        manifest_type: r.get(2)?,
        created: r.get(3)?,
        size: r.get::<_, i64>(4)? as u64,
        os: r.get(5)?,
        architecture: r.get(6)?,
        variant: r.get(7)?,
        added_at: r.get(8)?,
    })
}

fn set_tag(tx: &Transaction<'_>, repo: &str, tag: &str, id: &Digest) -> Result<()> {
    tx.execute(
        "INSERT INTO tags (repository, tag, image_id, tagged_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(repository, tag) DO UPDATE SET image_id = excluded.image_id, tagged_at = excluded.tagged_at",
        params![repo, tag, id.as_str(), now()],
    )?;
    Ok(())
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_once_and_keeps_other_components() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vessel.db");
        {
            let db = Db::open(&p).unwrap();
            db.conn()
                .execute_batch("INSERT INTO schema_versions VALUES ('engine', 3)")
                .unwrap();
        }
        let db = Db::open(&p).unwrap();
        let n: i64 = db
            .conn()
            .query_row("SELECT COUNT(*) FROM schema_versions", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
    }

    #[test]
    fn refuses_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vessel.db");
        {
            let db = Db::open(&p).unwrap();
            db.conn()
                .execute_batch("UPDATE schema_versions SET version = 99 WHERE component = 'image'")
                .unwrap();
        }
        let e = Db::open(&p).err().unwrap().to_string();
        assert!(e.contains("schema version"), "{e}");
    }
}
