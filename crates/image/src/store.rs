//! The store façade: one `--root` with its database, blobs and snapshots, and the image
//! operations the CLI calls (import, list, tag, remove, inspect, history, prune).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::blobs::{BlobStore, Expected};
use crate::db::{self, Db, ImageRow, LayerRow, NewImage};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layer::{self, LayerInput};
use crate::manifest::{self, Descriptor, ImageConfig, Manifest, Platform};
use crate::perms;
use crate::reference::{familiar, Reference};
use crate::snapshots::SnapshotStore;
use crate::unpack::UnpackOptions;

pub struct Store {
    root: PathBuf,
    pub blobs: BlobStore,
    pub snapshots: SnapshotStore,
    db: Mutex<Db>,
    pub unpack: UnpackOptions,
}

/// Held shared by anything that adds content (pull, import, load) and exclusively by
/// garbage collection, so GC never deletes a blob or snapshot that is written but not yet
/// recorded in the database.
pub struct GcLock {
    _file: File,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoveEvent {
    Untagged(String),
    Deleted(Digest),
}

#[derive(Clone, Debug)]
pub struct ImageSummary {
    pub id: Digest,
    pub repository: Option<String>,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
    pub created: Option<DateTime<Utc>>,
    pub size: u64,
    pub labels: serde_json::Map<String, Value>,
    /// No tag (docker's `dangling=true`).
    pub dangling: bool,
    /// Untagged, without repo digests, and the parent (config `parent`) of another image
    /// here: a build step, which docker lists only with `images -a`.
    pub intermediate: bool,
}

/// docker's `rmi` flags.
#[derive(Clone, Copy, Debug, Default)]
pub struct RemoveOptions {
    /// Remove an image named by id even when it is tagged in several repositories.
    pub force: bool,
    /// Keep the parent images the removal leaves untagged (by default they are deleted too).
    pub no_prune: bool,
}

#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    pub reference: Option<Reference>,
    pub message: Option<String>,
    /// Dockerfile instructions applied to the config (`-c 'CMD ["sh"]'`).
    pub changes: Vec<String>,
    pub platform: Option<Platform>,
}

#[derive(Clone, Debug, Default)]
pub struct PruneReport {
    pub events: Vec<RemoveEvent>,
    pub reclaimed: u64,
}

#[derive(Clone, Debug)]
pub struct HistoryRow {
    pub id: Option<Digest>,
    pub created: Option<DateTime<Utc>>,
    pub created_by: String,
    pub size: u64,
    pub comment: String,
}

/// The database file under `--root`; SQLite puts `-wal` and `-shm` beside it.
pub const DB_FILE: &str = "vessel.db";
const LOCK_FILE: &str = "gc.lock";

/// `schema_versions` row recording that the store's own directories and files have their
/// private modes ([`perms`]): stores made before that are tightened once, on open.
pub const MODES_COMPONENT: &str = "image-store-modes";
pub const MODES_VERSION: i64 = 1;

impl Store {
    /// Opens the store at `root`, creating it (0700) if needed. Directories above it
    /// (`/var/lib`) are not the store's and get the usual modes.
    pub fn open(root: &Path) -> Result<Self> {
        if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        perms::ensure_dir(root, perms::DIR_MODE)?;
        let blobs = BlobStore::open(root)?;
        let snapshots = SnapshotStore::open(root)?;
        // SQLite would create the file 0644; made here first, its -wal and -shm files get
        // its mode from SQLite (which copies the database's mode to them, umask or not).
        let db_path = root.join(DB_FILE);
        perms::ensure_file(&db_path, perms::FILE_MODE)?;
        let db = Db::open(&db_path)?;
        let store = Store {
            root: root.to_path_buf(),
            blobs,
            snapshots,
            db: Mutex::new(db),
            unpack: UnpackOptions::default(),
        };
        store.migrate_modes()?;
        Ok(store)
    }

    /// Tightens a store made with world-readable directories (before [`MODES_VERSION`]):
    /// the store's own directories and files only (the image content keeps its modes), a
    /// fixed handful plus one listing of `snapshots/`, once — afterwards it is one query.
    fn migrate_modes(&self) -> Result<()> {
        if self.db().component_version(MODES_COMPONENT)? >= Some(MODES_VERSION) {
            return Ok(());
        }
        // `--root` may be a symlink an admin made to the real place.
        let real_root = std::fs::canonicalize(&self.root).map_err(|e| Error::io(&self.root, e))?;
        perms::tighten(&real_root, perms::DIR_MODE)?;
        self.blobs.tighten_modes()?;
        self.snapshots.tighten_modes()?;
        for f in [
            DB_FILE.to_string(),
            format!("{DB_FILE}-wal"),
            format!("{DB_FILE}-shm"),
            LOCK_FILE.to_string(),
        ] {
            perms::tighten(&self.root.join(f), perms::FILE_MODE)?;
        }
        self.db()
            .set_component_version(MODES_COMPONENT, MODES_VERSION)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn db(&self) -> MutexGuard<'_, Db> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions
        // roll back), so a poisoned lock is still usable.
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_file(&self) -> Result<File> {
        let p = self.root.join(LOCK_FILE);
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(perms::FILE_MODE)
            .open(&p)
            .map_err(|e| Error::io(&p, e))
    }

    pub fn shared_lock(&self) -> Result<GcLock> {
        let f = self.lock_file()?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockShared)
            .map_err(|e| Error::ctx("locking the store", e.into()))?;
        Ok(GcLock { _file: f })
    }

    fn try_exclusive_lock(&self) -> Result<Option<GcLock>> {
        let f = self.lock_file()?;
        match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(GcLock { _file: f })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(Error::ctx("locking the store", e.into())),
        }
    }

    fn exclusive_lock(&self) -> Result<GcLock> {
        let f = self.lock_file()?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| Error::ctx("locking the store", e.into()))?;
        Ok(GcLock { _file: f })
    }

    /// Makes a one-layer image from a rootfs tarball (plain, gzip or zstd).
    pub fn import(&self, reader: impl Read, opts: &ImportOptions) -> Result<Digest> {
        let changes = apply_changes(&opts.changes)?;
        let platform = opts
            .platform
            .clone()
            .unwrap_or_else(manifest::host_platform);
        let _lock = self.shared_lock()?;
        let snap = self.snapshots.prepare()?;
        let diff_writer = self.blobs.writer(Expected {
            what: "layer".into(),
            ..Default::default()
        })?;
        let out = layer::unpack_layer(
            reader,
            LayerInput {
                blob: None,
                diff_id: None,
                store_blob: None,
                store_diff: Some(diff_writer),
            },
            &snap,
            &self.unpack,
        )?;
        let diff_id = out.diff_id.clone();
        let chain_id = diff_id.clone();
        self.commit_snapshot(snap, &chain_id, None, &diff_id, out.stats.bytes)?;

        let now = Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true);
        let mut history = json!({"created": now, "created_by": "vessel import"});
        if let Some(m) = &opts.message {
            history["comment"] = json!(m);
        }
        let mut config = json!({
            "architecture": platform.architecture,
            "os": platform.os,
            "created": now,
            "config": changes,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [history],
        });
        if let Some(v) = &platform.variant {
            config["variant"] = json!(v);
        }
        let config_bytes =
            serde_json::to_vec(&config).map_err(|e| Error::malformed("image config", e))?;
        let config_digest = self.blobs.put(
            &config_bytes,
            Expected {
                what: "config".into(),
                ..Default::default()
            },
        )?;
        let layer_desc = Descriptor {
            media_type: manifest::OCI_LAYER.into(),
            digest: diff_id.clone(),
            size: out.diff_size,
            platform: None,
            annotations: None,
            urls: None,
        };
        let m = Manifest {
            schema_version: 2,
            media_type: manifest::OCI_MANIFEST.into(),
            config: Descriptor {
                media_type: manifest::OCI_CONFIG.into(),
                digest: config_digest.clone(),
                size: config_bytes.len() as u64,
                platform: None,
                annotations: None,
                urls: None,
            },
            layers: vec![layer_desc.clone()],
        };
        let m_bytes = serde_json::to_vec(&m).map_err(|e| Error::malformed("manifest", e))?;
        let m_digest = self.blobs.put(
            &m_bytes,
            Expected {
                what: "manifest".into(),
                ..Default::default()
            },
        )?;
        let img = NewImage {
            image: ImageRow {
                id: config_digest.clone(),
                manifest_digest: Some(m_digest.clone()),
                manifest_type: Some(manifest::OCI_MANIFEST.into()),
                created: Some(now),
                size: out.stats.bytes,
                os: platform.os.clone(),
                architecture: platform.architecture.clone(),
                variant: platform.variant.clone(),
                added_at: db::now(),
            },
            layers: vec![LayerRow {
                chain_id,
                diff_id: diff_id.clone(),
                blob: diff_id,
                blob_size: layer_desc.size,
                media_type: manifest::OCI_LAYER.into(),
                size: out.stats.bytes,
            }],
            blobs: vec![config_digest.clone(), m_digest],
            tag: opts
                .reference
                .as_ref()
                .map(|r| (r.repository(), r.tag().unwrap_or("latest").to_string())),
            repo_digest: None,
        };
        self.db().add_image(&img)?;
        Ok(config_digest)
    }

    /// Renames a finished snapshot into place (or drops it when another process got there
    /// first) and records it.
    pub fn commit_snapshot(
        &self,
        snap: crate::snapshots::TempSnapshot,
        chain_id: &Digest,
        parent: Option<&Digest>,
        diff_id: &Digest,
        size: u64,
    ) -> Result<()> {
        snap.commit(chain_id)?;
        self.db().add_snapshot(chain_id, parent, diff_id, size)
    }

    /// A snapshot usable as is: recorded and on disk.
    pub fn has_snapshot(&self, chain_id: &Digest) -> Result<bool> {
        Ok(self.db().snapshot_exists(chain_id)? && self.snapshots.exists(chain_id))
    }

    /// Finds an image by reference (tag or digest), full id or unique id prefix.
    pub fn lookup(&self, name: &str) -> Result<Digest> {
        let db = self.db();
        if let Ok(r) = Reference::parse(name) {
            if let Some(d) = r.digest() {
                if let Some(id) = db.repo_digest_target(&r.repository(), d)? {
                    return Ok(id);
                }
            } else if let Some(t) = r.tag() {
                if let Some(id) = db.tag_target(&r.repository(), t)? {
                    return Ok(id);
                }
            }
        }
        if let Ok(d) = Digest::parse(name) {
            if db.image(&d)?.is_some() {
                return Ok(d);
            }
        }
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        if !hex.is_empty()
            && hex.len() <= 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            let found = db.images_by_prefix(hex)?;
            match found.len() {
                1 => return Ok(found[0].clone()),
                0 => {}
                _ => {
                    return Err(Error::Conflict(format!(
                        "image id prefix {hex:?} is ambiguous"
                    )))
                }
            }
        }
        Err(Error::ImageNotFound(name.to_string()))
    }

    pub fn tag(&self, source: &str, target: &str) -> Result<()> {
        let id = self.lookup(source)?;
        let r = Reference::parse(target)?;
        if r.digest().is_some() {
            return Err(Error::InvalidReference {
                input: target.into(),
                reason: "refusing to create a tag with a digest reference",
            });
        }
        self.db()
            .tag(&r.repository(), r.tag().unwrap_or("latest"), &id)
    }

    pub fn config(&self, id: &Digest) -> Result<(Value, ImageConfig)> {
        let data = self.blobs.read(id)?;
        let raw: Value = serde_json::from_slice(&data)
            .map_err(|e| Error::malformed(format!("image config {id}"), e))?;
        let parsed = manifest::parse_config(&data, &format!("image config {id}"))?;
        Ok((raw, parsed))
    }

    pub fn images(&self) -> Result<Vec<ImageSummary>> {
        let db = self.db();
        let rows = db.images()?;
        let configs: Vec<Option<Value>> = rows
            .iter()
            .map(|img| self.config(&img.id).ok().map(|(raw, _)| raw))
            .collect();
        let parents: HashSet<Digest> = parent_links(&rows, &configs).into_values().collect();
        let mut out = Vec::new();
        for (img, config) in rows.iter().zip(&configs) {
            let tags = db.tags_of(&img.id)?;
            let digests = db.repo_digests_of(&img.id)?;
            let created = img.created.as_deref().and_then(parse_time);
            let labels = config
                .as_ref()
                .and_then(|raw| {
                    raw.pointer("/config/Labels")
                        .and_then(|l| l.as_object().cloned())
                })
                .unwrap_or_default();
            let base = ImageSummary {
                id: img.id.clone(),
                repository: None,
                tag: None,
                digest: None,
                created,
                size: img.size,
                labels,
                dangling: tags.is_empty(),
                intermediate: tags.is_empty() && digests.is_empty() && parents.contains(&img.id),
            };
            if tags.is_empty() && digests.is_empty() {
                out.push(base.clone());
            }
            for (repo, tag) in &tags {
                let digest = digests
                    .iter()
                    .find(|(r, _)| r == repo)
                    .map(|(_, d)| d.clone());
                out.push(ImageSummary {
                    repository: Some(familiar(repo)),
                    tag: Some(tag.clone()),
                    digest,
                    ..base.clone()
                });
            }
            for (repo, d) in &digests {
                if !tags.iter().any(|(r, _)| r == repo) {
                    out.push(ImageSummary {
                        repository: Some(familiar(repo)),
                        digest: Some(d.clone()),
                        ..base.clone()
                    });
                }
            }
        }
        Ok(out)
    }

    /// child → parent links between the images here.
    fn parent_links(&self, db: &Db) -> Result<HashMap<Digest, Digest>> {
        let rows = db.images()?;
        let configs: Vec<Option<Value>> = rows
            .iter()
            .map(|img| self.config(&img.id).ok().map(|(raw, _)| raw))
            .collect();
        Ok(parent_links(&rows, &configs))
    }

    /// `rmi`: by tag removes the tag (and the image when it was the last name); by id
    /// removes the image, refusing when it has names in several repositories unless forced.
    /// An image a container holds is never deleted. Once the image is deleted, so are the
    /// parents (config `parent`) it leaves dangling, nearest first, unless `no_prune`.
    pub fn remove(&self, name: &str, opts: RemoveOptions) -> Result<Vec<RemoveEvent>> {
        let mut events = Vec::new();
        let id = self.lookup(name)?;
        let by_name = Reference::parse(name).ok().and_then(|r| {
            let db = self.db();
            match (r.digest(), r.tag()) {
                (Some(d), _) => db
                    .repo_digest_target(&r.repository(), d)
                    .ok()
                    .flatten()
                    .map(|_| r.clone()),
                (None, Some(t)) => db
                    .tag_target(&r.repository(), t)
                    .ok()
                    .flatten()
                    .map(|_| r.clone()),
                _ => None,
            }
        });
        {
            let db = self.db();
            let leases = db.leases_of(&id)?;
            let links = self.parent_links(&db)?;
            // An image another one names as its parent stays, as in docker.
            let has_children = links.values().any(|p| *p == id);
            match &by_name {
                Some(r) => {
                    if let Some(t) = r.tag().filter(|_| r.digest().is_none()) {
                        db.untag(&r.repository(), t)?;
                        events.push(RemoveEvent::Untagged(format!(
                            "{}:{t}",
                            r.familiar_repository()
                        )));
                    } else if let Some(d) = r.digest() {
                        db.remove_repo_digest(&r.repository(), d)?;
                        events.push(RemoveEvent::Untagged(format!(
                            "{}@{d}",
                            r.familiar_repository()
                        )));
                    }
                    if !db.tags_of(&id)?.is_empty() || !leases.is_empty() || has_children {
                        return Ok(events);
                    }
                }
                None => {
                    if let Some(holder) = leases.first() {
                        return Err(Error::Conflict(format!(
                            "unable to delete {} (cannot be forced) - image is being used by container {holder}",
                            id.short()
                        )));
                    }
                    if has_children {
                        return Err(Error::Conflict(format!(
                            "unable to delete {} (cannot be forced) - image has dependent child images",
                            id.short()
                        )));
                    }
                    let tags = db.tags_of(&id)?;
                    let mut repos: Vec<&String> = tags.iter().map(|(r, _)| r).collect();
                    repos.sort();
                    repos.dedup();
                    if repos.len() > 1 && !opts.force {
                        return Err(Error::Conflict(format!(
                            "unable to delete {} (must be forced) - image is referenced in multiple repositories",
                            id.short()
                        )));
                    }
                    for (repo, tag) in tags {
                        db.untag(&repo, &tag)?;
                        events.push(RemoveEvent::Untagged(format!("{}:{tag}", familiar(&repo))));
                    }
                }
            }
            for (repo, d) in db.repo_digests_of(&id)? {
                events.push(RemoveEvent::Untagged(format!("{}@{d}", familiar(&repo))));
            }
            db.delete_image(&id)?;
            events.push(RemoveEvent::Deleted(id.clone()));
            if !opts.no_prune {
                // docker's parent pruning: quiet, never forced, and it stops at the first
                // parent that still has a name, a holder or another child.
                let mut gone = HashSet::from([id.clone()]);
                let mut cur = links.get(&id).cloned();
                while let Some(p) = cur.filter(|p| !gone.contains(p)) {
                    let other_child = links.iter().any(|(c, q)| *q == p && !gone.contains(c));
                    if other_child
                        || !db.tags_of(&p)?.is_empty()
                        || !db.repo_digests_of(&p)?.is_empty()
                        || !db.leases_of(&p)?.is_empty()
                    {
                        break;
                    }
                    db.delete_image(&p)?;
                    events.push(RemoveEvent::Deleted(p.clone()));
                    cur = links.get(&p).cloned();
                    gone.insert(p);
                }
            }
        }
        self.gc(false)?;
        Ok(events)
    }

    /// `image prune`: dangling images, or with `all` every image no container holds —
    /// never the parents of an image that stays (docker prunes from the top down).
    pub fn prune(&self, all: bool) -> Result<PruneReport> {
        let mut report = PruneReport::default();
        {
            let db = self.db();
            let links = self.parent_links(&db)?;
            let mut keep = HashSet::new();
            for img in db.images()? {
                if (!all && !db.tags_of(&img.id)?.is_empty()) || !db.leases_of(&img.id)?.is_empty()
                {
                    let mut cur = Some(img.id);
                    // Ends at the first id already kept, so even a looping chain ends.
                    while let Some(id) = cur.filter(|id| keep.insert(id.clone())) {
                        cur = links.get(&id).cloned();
                    }
                }
            }
            for img in db.images()? {
                if keep.contains(&img.id) {
                    continue;
                }
                let tags = db.tags_of(&img.id)?;
                for (repo, tag) in &tags {
                    db.untag(repo, tag)?;
                    report
                        .events
                        .push(RemoveEvent::Untagged(format!("{}:{tag}", familiar(repo))));
                }
                for (repo, d) in db.repo_digests_of(&img.id)? {
                    report
                        .events
                        .push(RemoveEvent::Untagged(format!("{}@{d}", familiar(&repo))));
                }
                db.delete_image(&img.id)?;
                report.events.push(RemoveEvent::Deleted(img.id));
            }
        }
        report.reclaimed = self.gc(true)?;
        Ok(report)
    }

    /// Deletes snapshots and blobs nothing refers to; returns the bytes freed. With `wait`
    /// false it gives up quietly while a pull holds the store (the next GC catches up).
    pub fn gc(&self, wait: bool) -> Result<u64> {
        let _lock = if wait {
            self.exclusive_lock()?
        } else {
            match self.try_exclusive_lock()? {
                Some(l) => l,
                None => return Ok(0),
            }
        };
        let mut freed = 0u64;
        let gone = self.db().take_unreferenced_snapshots()?;
        for chain in &gone {
            freed += self.snapshot_disk_size(chain);
            self.snapshots.remove(chain)?;
        }
        let known = self.db().snapshot_ids()?;
        for chain in self.snapshots.list()? {
            if !known.contains(&chain) {
                self.snapshots.remove(&chain)?;
            }
        }
        self.snapshots.sweep_temporaries()?;
        self.blobs.sweep_temporaries()?;
        for d in self.blobs.list()? {
            if !self.db().blob_referenced(&d)? {
                freed += self.blobs.size(&d).unwrap_or(0);
                self.blobs.remove(&d)?;
            }
        }
        Ok(freed)
    }

    fn snapshot_disk_size(&self, chain: &Digest) -> u64 {
        self.db().snapshot_size(chain).ok().flatten().unwrap_or(0)
    }

    /// docker's `image inspect` JSON for one image.
    pub fn inspect(&self, name: &str) -> Result<Value> {
        let id = self.lookup(name)?;
        let db = self.db();
        let img = db
            .image(&id)?
            .ok_or_else(|| Error::ImageNotFound(name.to_string()))?;
        let tags = db.tags_of(&id)?;
        let digests = db.repo_digests_of(&id)?;
        let layers = db.layers_of(&id)?;
        let last_tag = db.last_tag_time(&id)?;
        drop(db);
        let (raw, cfg) = self.config(&id)?;
        let lower: Vec<String> = layers
            .iter()
            .rev()
            .map(|l| self.snapshots.fs_path(&l.chain_id).display().to_string())
            .collect();
        let get = |k: &str| raw.get(k).cloned().unwrap_or(json!(""));
        Ok(json!({
            "Id": id,
            "RepoTags": tags.iter().map(|(r, t)| format!("{}:{t}", familiar(r))).collect::<Vec<_>>(),
            "RepoDigests": digests.iter().map(|(r, d)| format!("{}@{d}", familiar(r))).collect::<Vec<_>>(),
            "Parent": get("parent"),
            "Comment": cfg.history.last().and_then(|h| h.comment.clone()).unwrap_or_default(),
            "Created": cfg.created.clone().unwrap_or_default(),
            "Container": get("container"),
            "ContainerConfig": raw.get("container_config").cloned().unwrap_or(Value::Null),
            "DockerVersion": get("docker_version"),
            "Author": get("author"),
            "Config": docker_config(raw.get("config")),
            "Architecture": cfg.architecture,
            "Variant": cfg.variant,
            "Os": cfg.os,
            "Size": img.size,
            "VirtualSize": img.size,
            "GraphDriver": {
                "Name": "overlay",
                "Data": { "LowerDir": lower.join(":") },
            },
            "RootFS": {
                "Type": "layers",
                "Layers": cfg.rootfs.diff_ids,
            },
            "Metadata": {
                "LastTagTime": last_tag
                    .and_then(|t| DateTime::from_timestamp(t, 0))
                    .map(|t| t.to_rfc3339_opts(SecondsFormat::Nanos, true))
                    .unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
            },
        }))
    }

    /// `image history`, newest first, with each non-empty layer's size.
    pub fn history(&self, name: &str) -> Result<Vec<HistoryRow>> {
        let id = self.lookup(name)?;
        let layers = self.db().layers_of(&id)?;
        let (_, cfg) = self.config(&id)?;
        let mut sizes = layers.iter().map(|l| l.size);
        let mut rows: Vec<HistoryRow> = cfg
            .history
            .iter()
            .map(|h| HistoryRow {
                id: None,
                created: h.created.as_deref().and_then(parse_time),
                created_by: h.created_by.clone().unwrap_or_default(),
                size: if h.empty_layer {
                    0
                } else {
                    sizes.next().unwrap_or(0)
                },
                comment: h.comment.clone().unwrap_or_default(),
            })
            .collect();
        if rows.is_empty() {
            rows = layers
                .iter()
                .map(|l| HistoryRow {
                    id: None,
                    created: None,
                    created_by: String::new(),
                    size: l.size,
                    comment: String::new(),
                })
                .collect();
        }
        rows.reverse();
        if let Some(first) = rows.first_mut() {
            first.id = Some(id);
        }
        Ok(rows)
    }

    /// Snapshot directories of an image, lowest layer first (overlay wants them reversed).
    pub fn layer_paths(&self, name: &str) -> Result<Vec<PathBuf>> {
        let id = self.lookup(name)?;
        Ok(self
            .db()
            .layers_of(&id)?
            .iter()
            .map(|l| self.snapshots.fs_path(&l.chain_id))
            .collect())
    }
}

/// child → parent, from each config's `parent` (docker's classic-builder link), for
/// parents that are in the store.
fn parent_links(rows: &[ImageRow], configs: &[Option<Value>]) -> HashMap<Digest, Digest> {
    let ids: HashSet<&Digest> = rows.iter().map(|r| &r.id).collect();
    rows.iter()
        .zip(configs)
        .filter_map(|(img, c)| {
            let p = c.as_ref()?.get("parent")?.as_str()?;
            let p = Digest::parse(p).ok()?;
            ids.contains(&p).then(|| (img.id.clone(), p))
        })
        .collect()
}

pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// docker prints every Config key, null where unset.
fn docker_config(c: Option<&Value>) -> Value {
    let mut out = json!({
        "Hostname": "", "Domainname": "", "User": "", "AttachStdin": false, "AttachStdout": false,
        "AttachStderr": false, "Tty": false, "OpenStdin": false, "StdinOnce": false,
        "Env": null, "Cmd": null, "Image": "", "Volumes": null, "WorkingDir": "",
        "Entrypoint": null, "OnBuild": null, "Labels": null,
    });
    if let (Some(Value::Object(src)), Value::Object(dst)) = (c, &mut out) {
        for (k, v) in src {
            dst.insert(k.clone(), v.clone());
        }
    }
    out
}

/// The subset of Dockerfile instructions `import -c` accepts, turned into config fields.
fn apply_changes(changes: &[String]) -> Result<Value> {
    let mut cfg = serde_json::Map::new();
    for ch in changes {
        let (instr, arg) = ch
            .trim()
            .split_once(char::is_whitespace)
            .unwrap_or((ch.trim(), ""));
        let arg = arg.trim();
        let bad = |why: &str| Error::Unsupported {
            what: "import change",
            value: format!("{ch:?}: {why}"),
        };
        let list = |arg: &str| -> Value {
            match serde_json::from_str::<Vec<String>>(arg) {
                Ok(v) => json!(v),
                Err(_) => json!(["/bin/sh", "-c", arg]),
            }
        };
        match instr.to_ascii_uppercase().as_str() {
            "CMD" => {
                cfg.insert("Cmd".into(), list(arg));
            }
            "ENTRYPOINT" => {
                cfg.insert("Entrypoint".into(), list(arg));
            }
            "WORKDIR" => {
                cfg.insert("WorkingDir".into(), json!(arg));
            }
            "USER" => {
                cfg.insert("User".into(), json!(arg));
            }
            "ENV" => {
                let (k, v) = arg
                    .split_once('=')
                    .or_else(|| arg.split_once(' '))
                    .ok_or_else(|| bad("expected ENV key=value"))?;
                let env = cfg.entry("Env").or_insert_with(|| json!([]));
                if let Value::Array(a) = env {
                    a.push(json!(format!("{}={}", k.trim(), v.trim())));
                }
            }
            "LABEL" => {
                let (k, v) = arg
                    .split_once('=')
                    .ok_or_else(|| bad("expected LABEL key=value"))?;
                let labels = cfg.entry("Labels").or_insert_with(|| json!({}));
                if let Value::Object(m) = labels {
                    m.insert(k.trim().into(), json!(v.trim().trim_matches('"')));
                }
            }
            "STOPSIGNAL" => {
                cfg.insert("StopSignal".into(), json!(arg));
            }
            _ => {
                return Err(bad(
                    "only CMD, ENTRYPOINT, ENV, LABEL, STOPSIGNAL, USER and WORKDIR are supported",
                ))
            }
        }
    }
    Ok(Value::Object(cfg))
}
