//! `save` and `load`: docker-archive (`manifest.json` + config + uncompressed layer tars, as
//! `docker save` and `podman save` write) and oci-archive (an OCI image layout in a tar).
//! Loading treats the archive as hostile like any layer: names are checked, every blob is
//! verified against the digest that names it, layers go through the same unpacker.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::blobs::Expected;
use crate::db::{self, ImageRow, LayerRow, NewImage};
use crate::digest::Digest;
use crate::error::{from_io, Error, Result};
use crate::layer::{self, LayerInput};
use crate::manifest::{self, Descriptor, Document, Manifest};
use crate::reference::{familiar, Reference};
use crate::store::Store;
use crate::unpack::clean_path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveFormat {
    Docker,
    Oci,
}

impl ArchiveFormat {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "docker-archive" | "docker" => Ok(ArchiveFormat::Docker),
            "oci-archive" | "oci" => Ok(ArchiveFormat::Oci),
            other => Err(Error::Unsupported {
                what: "archive format",
                value: format!("{other:?} (docker-archive or oci-archive)"),
            }),
        }
    }
}

const MTIME: u64 = 0;

fn append(b: &mut tar::Builder<impl Write>, name: &str, data: &[u8]) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_mtime(MTIME);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, name, data)
        .map_err(|e| from_io(format!("writing {name}"), e))
}

fn append_file(b: &mut tar::Builder<impl Write>, name: &str, f: &mut File) -> Result<()> {
    let len = f
        .metadata()
        .map_err(|e| from_io(name.to_string(), e))?
        .len();
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_size(len);
    h.set_mtime(MTIME);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, name, f)
        .map_err(|e| from_io(format!("writing {name}"), e))
}

struct Saved {
    id: Digest,
    names: Vec<Reference>,
    manifest_digest: Digest,
    manifest_data: Vec<u8>,
    manifest: Manifest,
    diff_ids: Vec<Digest>,
}

fn collect(store: &Store, names: &[String]) -> Result<Vec<Saved>> {
    let mut out: Vec<Saved> = Vec::new();
    for n in names {
        let id = store.lookup(n)?;
        let named = Reference::parse(n).ok().filter(|r| {
            r.digest().is_none()
                && store
                    .db()
                    .tag_target(&r.repository(), r.tag().unwrap_or("latest"))
                    .ok()
                    .flatten()
                    .is_some()
        });
        if let Some(s) = out.iter_mut().find(|s| s.id == id) {
            s.names.extend(named);
            continue;
        }
        let img = store
            .db()
            .image(&id)?
            .ok_or_else(|| Error::ImageNotFound(n.clone()))?;
        let md = img.manifest_digest.clone().ok_or_else(|| {
            Error::malformed(format!("image {}", id.short()), "no manifest recorded")
        })?;
        let data = store.blobs.read(&md)?;
        let Document::Manifest(m) = manifest::parse_document(
            &data,
            img.manifest_type.as_deref(),
            &format!("manifest {md}"),
        )?
        else {
            return Err(Error::malformed(
                format!("manifest {md}"),
                "stored manifest is an index",
            ));
        };
        let (_, cfg) = store.config(&id)?;
        out.push(Saved {
            id,
            names: named.into_iter().collect(),
            manifest_digest: md,
            manifest_data: data,
            manifest: *m,
            diff_ids: cfg.rootfs.diff_ids,
        });
    }
    Ok(out)
}

/// Writes the named images as one archive.
pub fn save(store: &Store, names: &[String], format: ArchiveFormat, w: impl Write) -> Result<()> {
    let images = collect(store, names)?;
    let mut b = tar::Builder::new(w);
    match format {
        ArchiveFormat::Oci => save_oci(store, &images, &mut b)?,
        ArchiveFormat::Docker => save_docker(store, &images, &mut b)?,
    }
    b.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(|e| from_io("finishing archive", e))?;
    Ok(())
}

fn save_oci(store: &Store, images: &[Saved], b: &mut tar::Builder<impl Write>) -> Result<()> {
    append(b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let mut index = Vec::new();
    let mut written = std::collections::HashSet::new();
    for s in images {
        let mut blobs: Vec<&Digest> = vec![&s.manifest_digest, &s.manifest.config.digest];
        blobs.extend(s.manifest.layers.iter().map(|l| &l.digest));
        for d in blobs {
            if written.insert(d.clone()) {
                let mut f = store.blobs.open_blob(d)?;
                append_file(b, &format!("blobs/sha256/{}", d.hex()), &mut f)?;
            }
        }
        let desc = |ann: Option<&Reference>| {
            let mut d = json!({
                "mediaType": if s.manifest.media_type.is_empty() { manifest::OCI_MANIFEST } else { s.manifest.media_type.as_str() },
                "digest": s.manifest_digest, "size": s.manifest_data.len(),
            });
            if let Some(r) = ann {
                let full = format!("{}:{}", r.repository(), r.tag().unwrap_or("latest"));
                d["annotations"] = json!({"org.opencontainers.image.ref.name": full, "io.containerd.image.name": full});
            }
            d
        };
        if s.names.is_empty() {
            index.push(desc(None));
        }
        for r in &s.names {
            index.push(desc(Some(r)));
        }
    }
    let idx = json!({"schemaVersion": 2, "mediaType": manifest::OCI_INDEX, "manifests": index});
    append(
        b,
        "index.json",
        &serde_json::to_vec(&idx).map_err(|e| Error::malformed("index", e))?,
    )
}

fn save_docker(store: &Store, images: &[Saved], b: &mut tar::Builder<impl Write>) -> Result<()> {
    let mut entries = Vec::new();
    let mut written = std::collections::HashSet::new();
    for s in images {
        let cfg_name = format!("{}.json", s.id.hex());
        if written.insert(cfg_name.clone()) {
            append(b, &cfg_name, &store.blobs.read(&s.id)?)?;
        }
        let mut layers = Vec::new();
        for (l, diff) in s.manifest.layers.iter().zip(&s.diff_ids) {
            // docker-archive layers are uncompressed: their digest is the diff id.
            let name = format!("{}.tar", diff.hex());
            if written.insert(name.clone()) {
                let mut tmp = tempfile::tempfile_in(store.root().join("blobs/tmp"))
                    .map_err(|e| from_io("temp file", e))?;
                let src = io::BufReader::new(store.blobs.open_blob(&l.digest)?);
                let (_, mut dec) = layer::decompress(src)?;
                io::copy(&mut dec, &mut tmp)
                    .map_err(|e| from_io(format!("decompressing layer {}", l.digest), e))?;
                tmp.rewind().map_err(|e| from_io("temp file", e))?;
                append_file(b, &name, &mut tmp)?;
            }
            layers.push(name);
        }
        let tags: Vec<String> = s
            .names
            .iter()
            .map(|r| {
                format!(
                    "{}:{}",
                    r.familiar_repository(),
                    r.tag().unwrap_or("latest")
                )
            })
            .collect();
        entries.push(json!({"Config": cfg_name, "RepoTags": if tags.is_empty() { Value::Null } else { json!(tags) }, "Layers": layers}));
    }
    append(
        b,
        "manifest.json",
        &serde_json::to_vec(&entries).map_err(|e| Error::malformed("manifest.json", e))?,
    )
}

/// What `load` printed for each image: a name, or the id of an unnamed image.
#[derive(Clone, Debug)]
pub enum Loaded {
    Name(String),
    Id(Digest),
}

/// The archive's regular files, copied into a private temp dir (tar order is arbitrary, so
/// a manifest may come after the blobs it names).
struct Unpacked {
    dir: tempfile::TempDir,
    files: HashMap<String, PathBuf>,
    links: HashMap<String, String>,
}

impl Unpacked {
    fn read(r: impl Read, tmp_root: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("load-")
            .tempdir_in(tmp_root)
            .map_err(|e| from_io("temp dir", e))?;
        let mut files = HashMap::new();
        let mut links = HashMap::new();
        let mut a = tar::Archive::new(r);
        for (n, e) in a
            .entries()
            .map_err(|e| from_io("reading archive", e))?
            .enumerate()
        {
            let mut e = e.map_err(|e| from_io("reading archive", e))?;
            let raw = e.path_bytes().into_owned();
            let shown = String::from_utf8_lossy(&raw).into_owned();
            let comps = clean_path(&raw).map_err(|r| Error::hostile(&shown, r))?;
            let key = comps
                .iter()
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join("/");
            match e.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let p = dir.path().join(format!("{n}"));
                    let mut f = File::create(&p).map_err(|err| Error::io(&p, err))?;
                    io::copy(&mut e, &mut f)
                        .map_err(|err| from_io(format!("archive entry {shown:?}"), err))?;
                    files.insert(key, p);
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    // docker save links repeated layers; resolved within the archive only.
                    let target = e
                        .link_name_bytes()
                        .map(|t| t.into_owned())
                        .unwrap_or_default();
                    let is_sym = e.header().entry_type() == tar::EntryType::Symlink;
                    let mut base: Vec<Vec<u8>> = if is_sym {
                        comps[..comps.len().saturating_sub(1)].to_vec()
                    } else {
                        Vec::new()
                    };
                    for c in target.split(|b| *b == b'/') {
                        match c {
                            b"" | b"." => {}
                            b".." => {
                                if base.pop().is_none() {
                                    return Err(Error::hostile(
                                        &shown,
                                        "link points outside the archive",
                                    ));
                                }
                            }
                            c => base.push(c.to_vec()),
                        }
                    }
                    let t = base
                        .iter()
                        .map(|c| String::from_utf8_lossy(c).into_owned())
                        .collect::<Vec<_>>()
                        .join("/");
                    links.insert(key, t);
                }
                _ => {}
            }
        }
        Ok(Unpacked { dir, files, links })
    }

    fn path(&self, name: &str) -> Option<&PathBuf> {
        let mut n = name.trim_start_matches("./").to_string();
        for _ in 0..8 {
            if let Some(p) = self.files.get(&n) {
                return Some(p);
            }
            n = self.links.get(&n)?.clone();
        }
        None
    }

    fn open(&self, name: &str) -> Result<File> {
        let p = self
            .path(name)
            .ok_or_else(|| Error::malformed("archive", format!("{name:?} is missing")))?;
        File::open(p).map_err(|e| Error::io(p, e))
    }

    fn read_small(&self, name: &str) -> Result<Vec<u8>> {
        let f = self.open(name)?;
        let mut out = Vec::new();
        f.take(manifest::MAX_DOCUMENT + 1)
            .read_to_end(&mut out)
            .map_err(|e| from_io(name.to_string(), e))?;
        if out.len() as u64 > manifest::MAX_DOCUMENT {
            return Err(Error::malformed(name, "larger than allowed"));
        }
        Ok(out)
    }
}

/// Loads every image in a docker-archive or oci-archive (plain or compressed tar).
pub fn load(store: &Store, r: impl Read) -> Result<Vec<Loaded>> {
    let _lock = store.shared_lock()?;
    let (_, r) = layer::decompress(io::BufReader::new(r))?;
    let ar = Unpacked::read(r, &store.root().join("blobs/tmp"))?;
    let out = if ar.path("manifest.json").is_some() {
        load_docker(store, &ar)
    } else if ar.path("index.json").is_some() {
        load_oci(store, &ar)
    } else {
        Err(Error::malformed(
            "archive",
            "neither manifest.json (docker-archive) nor index.json (oci-archive) found",
        ))
    };
    drop(ar.dir);
    out
}

fn load_docker(store: &Store, ar: &Unpacked) -> Result<Vec<Loaded>> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Entry {
        config: String,
        #[serde(default)]
        repo_tags: Option<Vec<String>>,
        layers: Vec<String>,
    }
    let entries: Vec<Entry> = serde_json::from_slice(&ar.read_small("manifest.json")?)
        .map_err(|e| Error::malformed("manifest.json", e))?;
    let mut out = Vec::new();
    for e in entries {
        // Validate names before storing anything.
        let tags = e
            .repo_tags
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|t| Reference::parse(t))
            .collect::<Result<Vec<_>>>()?;
        let cfg_data = ar.read_small(&e.config)?;
        let cfg = manifest::parse_config(&cfg_data, &format!("config {}", e.config))?;
        if cfg.rootfs.diff_ids.len() != e.layers.len() {
            return Err(Error::malformed(
                "manifest.json",
                format!(
                    "{} layers but config lists {} diff ids",
                    e.layers.len(),
                    cfg.rootfs.diff_ids.len()
                ),
            ));
        }
        let id = store.blobs.put(
            &cfg_data,
            Expected {
                what: "config".into(),
                ..Default::default()
            },
        )?;
        let chain = Digest::chain_ids(&cfg.rootfs.diff_ids);
        let mut rows = Vec::new();
        let mut descs = Vec::new();
        for (i, name) in e.layers.iter().enumerate() {
            let diff = &cfg.rootfs.diff_ids[i];
            let size = if store.has_snapshot(&chain[i])? && store.blobs.contains(diff) {
                store.db().snapshot_size(&chain[i])?.unwrap_or(0)
            } else {
                let snap = store.snapshots.prepare()?;
                let w = store.blobs.writer(Expected {
                    digest: Some(diff.clone()),
                    what: format!("layer {name}"),
                    ..Default::default()
                })?;
                let outp = layer::unpack_layer(
                    ar.open(name)?,
                    LayerInput {
                        blob: None,
                        diff_id: Some(diff.clone()),
                        store_blob: None,
                        store_diff: Some(w),
                    },
                    &snap,
                    &store.unpack,
                )?;
                store.commit_snapshot(
                    snap,
                    &chain[i],
                    i.checked_sub(1).map(|p| &chain[p]),
                    diff,
                    outp.stats.bytes,
                )?;
                outp.stats.bytes
            };
            let blob_size = store.blobs.size(diff).unwrap_or(0);
            descs.push(Descriptor {
                media_type: manifest::OCI_LAYER.into(),
                digest: diff.clone(),
                size: blob_size,
                platform: None,
                annotations: None,
                urls: None,
            });
            rows.push(LayerRow {
                chain_id: chain[i].clone(),
                diff_id: diff.clone(),
                blob: diff.clone(),
                blob_size,
                media_type: manifest::OCI_LAYER.into(),
                size,
            });
        }
        let m = Manifest {
            schema_version: 2,
            media_type: manifest::OCI_MANIFEST.into(),
            config: Descriptor {
                media_type: manifest::OCI_CONFIG.into(),
                digest: id.clone(),
                size: cfg_data.len() as u64,
                platform: None,
                annotations: None,
                urls: None,
            },
            layers: descs,
        };
        let m_data = serde_json::to_vec(&m).map_err(|e| Error::malformed("manifest", e))?;
        let md = store.blobs.put(
            &m_data,
            Expected {
                what: "manifest".into(),
                ..Default::default()
            },
        )?;
        record(store, &id, &cfg, md, manifest::OCI_MANIFEST, rows, &tags)?;
        if tags.is_empty() {
            out.push(Loaded::Id(id));
        }
        out.extend(tags.iter().map(|t| {
            Loaded::Name(format!(
                "{}:{}",
                t.familiar_repository(),
                t.tag().unwrap_or("latest")
            ))
        }));
    }
    Ok(out)
}

fn record(
    store: &Store,
    id: &Digest,
    cfg: &manifest::ImageConfig,
    md: Digest,
    mt: &str,
    rows: Vec<LayerRow>,
    tags: &[Reference],
) -> Result<()> {
    let size = rows.iter().map(|r| r.size).sum();
    let mut img = NewImage {
        image: ImageRow {
            id: id.clone(),
            manifest_digest: Some(md.clone()),
            manifest_type: Some(mt.into()),
            created: cfg.created.clone(),
            size,
            os: cfg.os.clone(),
            architecture: cfg.architecture.clone(),
            variant: cfg.variant.clone(),
            added_at: db::now(),
        },
        layers: rows,
        blobs: vec![id.clone(), md],
        tag: None,
        repo_digest: None,
    };
    let mut db = store.db();
    if tags.is_empty() {
        db.add_image(&img)?;
    }
    for t in tags {
        img.tag = Some((t.repository(), t.tag().unwrap_or("latest").to_string()));
        db.add_image(&img)?;
    }
    Ok(())
}

fn load_oci(store: &Store, ar: &Unpacked) -> Result<Vec<Loaded>> {
    let blob = |d: &Digest| format!("blobs/sha256/{}", d.hex());
    let idx_data = ar.read_small("index.json")?;
    let Document::Index(idx) =
        manifest::parse_document(&idx_data, Some(manifest::OCI_INDEX), "index.json")?
    else {
        return Err(Error::malformed("index.json", "not an index"));
    };
    let mut out = Vec::new();
    for desc in &idx.manifests {
        let names = [
            "io.containerd.image.name",
            "org.opencontainers.image.ref.name",
        ]
        .iter()
        .filter_map(|k| desc.annotations.as_ref()?.get(*k)?.as_str())
        .filter(|n| n.contains('/') || n.contains(':'))
        .find_map(|n| Reference::parse(n).ok());
        let m_data = ar.read_small(&blob(&desc.digest))?;
        let actual = Digest::of_bytes(&m_data);
        if actual != desc.digest {
            return Err(Error::DigestMismatch {
                what: "manifest".into(),
                expected: desc.digest.to_string(),
                actual: format!("got {actual}"),
            });
        }
        let Document::Manifest(m) = manifest::parse_document(
            &m_data,
            Some(&desc.media_type),
            &format!("manifest {}", desc.digest),
        )?
        else {
            return Err(Error::Unsupported {
                what: "nested index in oci-archive",
                value: desc.digest.to_string(),
            });
        };
        let cfg_data = ar.read_small(&blob(&m.config.digest))?;
        let id = store.blobs.put(
            &cfg_data,
            Expected {
                digest: Some(m.config.digest.clone()),
                size: Some(m.config.size),
                what: "config".into(),
            },
        )?;
        let cfg = manifest::parse_config(&cfg_data, &format!("config {id}"))?;
        if cfg.rootfs.diff_ids.len() != m.layers.len() {
            return Err(Error::malformed(
                format!("manifest {}", desc.digest),
                "layer count differs from the config's diff ids",
            ));
        }
        let chain = Digest::chain_ids(&cfg.rootfs.diff_ids);
        let mut rows = Vec::new();
        for (i, l) in m.layers.iter().enumerate() {
            let diff = &cfg.rootfs.diff_ids[i];
            let size = if store.has_snapshot(&chain[i])? && store.blobs.contains(&l.digest) {
                store.db().snapshot_size(&chain[i])?.unwrap_or(0)
            } else {
                let snap = store.snapshots.prepare()?;
                let w = store.blobs.writer(Expected {
                    digest: Some(l.digest.clone()),
                    size: Some(l.size),
                    what: format!("layer {}", l.digest),
                })?;
                let outp = layer::unpack_layer(
                    ar.open(&blob(&l.digest))?,
                    LayerInput {
                        blob: Some((l.digest.clone(), l.size)),
                        diff_id: Some(diff.clone()),
                        store_blob: Some(w),
                        store_diff: None,
                    },
                    &snap,
                    &store.unpack,
                )?;
                store.commit_snapshot(
                    snap,
                    &chain[i],
                    i.checked_sub(1).map(|p| &chain[p]),
                    diff,
                    outp.stats.bytes,
                )?;
                outp.stats.bytes
            };
            let mt = if l.media_type.is_empty() {
                manifest::OCI_LAYER_GZIP.to_string()
            } else {
                l.media_type.clone()
            };
            rows.push(LayerRow {
                chain_id: chain[i].clone(),
                diff_id: diff.clone(),
                blob: l.digest.clone(),
                blob_size: l.size,
                media_type: mt,
                size,
            });
        }
        let md = store.blobs.put(
            &m_data,
            Expected {
                digest: Some(desc.digest.clone()),
                size: None,
                what: "manifest".into(),
            },
        )?;
        let mt = if m.media_type.is_empty() {
            desc.media_type.clone()
        } else {
            m.media_type.clone()
        };
        let tags: Vec<Reference> = names.into_iter().collect();
        record(store, &id, &cfg, md, &mt, rows, &tags)?;
        match tags.first() {
            Some(t) => out.push(Loaded::Name(format!(
                "{}:{}",
                familiar(&t.repository()),
                t.tag().unwrap_or("latest")
            ))),
            None => out.push(Loaded::Id(id)),
        }
    }
    Ok(out)
}
