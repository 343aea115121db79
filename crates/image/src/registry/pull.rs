//! `pull`: resolve the manifest (and platform in an index), fetch the config, then download
//! the missing layers in parallel (bounded), each one hashed, stored and unpacked while it
//! streams — one pass over the bytes. The image is recorded only when every layer is in.

use std::io::{self, Read};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::client::{Client, RegistryOptions};
use crate::blobs::Expected;
use crate::db::{self, ImageRow, LayerRow, NewImage};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layer::{self, LayerInput};
use crate::manifest::{self, Descriptor, Document, Platform};
use crate::reference::Reference;
use crate::store::Store;
use crate::stream::ChannelReader;

/// How many layers download at once: podman's and skopeo's 6 rather than docker's 3, so the
/// layers of most images start together and no one big layer is left alone at the end.
pub const DEFAULT_CONCURRENCY: usize = 6;

#[derive(Clone, Debug)]
pub enum PullEvent {
    /// "latest: Pulling from library/busybox"
    Resolved {
        reference: Reference,
    },
    LayerExists {
        digest: Digest,
    },
    /// Missing and queued behind the download limit ("Waiting" in docker).
    LayerQueued {
        digest: Digest,
        size: u64,
    },
    LayerStart {
        digest: Digest,
        size: u64,
    },
    LayerProgress {
        digest: Digest,
        done: u64,
        size: u64,
    },
    LayerDone {
        digest: Digest,
    },
    Done {
        digest: Digest,
        id: Digest,
        fresh: bool,
    },
}

pub trait Progress: Send + Sync {
    fn event(&self, e: PullEvent);
}

pub struct NoProgress;
impl Progress for NoProgress {
    fn event(&self, _: PullEvent) {}
}

#[derive(Clone, Debug)]
pub struct PullOptions {
    pub registry: RegistryOptions,
    pub platform: Option<Platform>,
    pub concurrency: usize,
    pub mirrors: super::mirrors::RegistriesConfig,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            registry: RegistryOptions::default(),
            platform: None,
            concurrency: DEFAULT_CONCURRENCY,
            mirrors: Default::default(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct PullResult {
    pub id: Digest,
    /// The digest of what the reference named (an index or a manifest).
    pub digest: Digest,
    pub fresh: bool,
}

pub async fn pull(
    store: Arc<Store>,
    reference: &Reference,
    opts: &PullOptions,
    progress: Arc<dyn Progress>,
) -> Result<PullResult> {
    // Held for the whole pull: GC must not collect blobs written before they are recorded.
    let _lock = store.shared_lock()?;
    progress.event(PullEvent::Resolved {
        reference: reference.clone(),
    });
    let (client, top) = resolve(reference, opts).await?;
    let client = Arc::new(client);
    let want = opts
        .platform
        .clone()
        .unwrap_or_else(manifest::host_platform);
    let refuse_schema1 = |m: &super::client::Manifest| {
        if manifest::is_schema1(&m.data, m.content_type.as_deref()) {
            return Err(Error::Schema1 {
                reference: reference.to_string(),
            });
        }
        Ok(())
    };
    refuse_schema1(&top)?;
    let mut extra_blobs = vec![];
    let (m, m_digest, m_type, m_data) = match manifest::parse_document(
        &top.data,
        top.content_type.as_deref(),
        &format!("manifest {}", top.digest),
    )? {
        Document::Manifest(m) => {
            let mt = if m.media_type.is_empty() {
                top.content_type.clone().unwrap_or_default()
            } else {
                m.media_type.clone()
            };
            (*m, top.digest.clone(), mt, top.data.clone())
        }
        Document::Index(idx) => {
            let chosen = select_platform(&idx.manifests, &want).ok_or_else(|| {
                Error::NoMatchingPlatform {
                    reference: reference.to_string(),
                    wanted: want.to_string(),
                    available: idx
                        .manifests
                        .iter()
                        .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                        .collect::<Vec<_>>()
                        .join(", "),
                }
            })?;
            let inner = client.manifest(chosen.digest.as_str()).await?;
            refuse_schema1(&inner)?;
            if inner.data.len() as u64 != chosen.size {
                return Err(Error::SizeMismatch {
                    what: "manifest".into(),
                    digest: chosen.digest.to_string(),
                    expected: chosen.size,
                    actual: inner.data.len() as u64,
                });
            }
            let Document::Manifest(m) = manifest::parse_document(
                &inner.data,
                inner.content_type.as_deref(),
                &format!("manifest {}", inner.digest),
            )?
            else {
                return Err(Error::malformed(
                    format!("manifest {}", inner.digest),
                    "an index inside an index",
                ));
            };
            store.blobs.put(
                &top.data,
                Expected {
                    digest: Some(top.digest.clone()),
                    size: None,
                    what: "index".into(),
                },
            )?;
            extra_blobs.push(top.digest.clone());
            let mt = if m.media_type.is_empty() {
                chosen.media_type.clone()
            } else {
                m.media_type.clone()
            };
            (*m, inner.digest, mt, inner.data)
        }
    };

    // The config: from the store when present, else the registry.
    let cfg_desc = &m.config;
    let cfg_data = if store.blobs.contains(&cfg_desc.digest) {
        store.blobs.read(&cfg_desc.digest)?
    } else {
        let data = client
            .blob_bytes(&cfg_desc.digest, cfg_desc.size, "config")
            .await?;
        store.blobs.put(
            &data,
            Expected {
                digest: Some(cfg_desc.digest.clone()),
                size: Some(cfg_desc.size),
                what: "config".into(),
            },
        )?;
        data
    };
    let cfg = manifest::parse_config(&cfg_data, &format!("image config {}", cfg_desc.digest))?;
    if cfg.rootfs.diff_ids.len() != m.layers.len() {
        return Err(Error::malformed(
            format!("manifest {m_digest}"),
            format!(
                "{} layers but the config lists {} diff ids",
                m.layers.len(),
                cfg.rootfs.diff_ids.len()
            ),
        ));
    }
    store.blobs.put(
        &m_data,
        Expected {
            digest: Some(m_digest.clone()),
            size: None,
            what: "manifest".into(),
        },
    )?;
    let id = cfg_desc.digest.clone();
    let chain_ids = Digest::chain_ids(&cfg.rootfs.diff_ids);

    // Which layers are missing; the rest are reported as already there.
    let mut todo = Vec::new();
    for (i, l) in m.layers.iter().enumerate() {
        if store.has_snapshot(&chain_ids[i])? && store.blobs.contains(&l.digest) {
            progress.event(PullEvent::LayerExists {
                digest: l.digest.clone(),
            });
        } else {
            todo.push(i);
        }
    }
    let fresh = !todo.is_empty() || store.db().image(&id)?.is_none();
    // Largest first: with a bounded number in flight, that shortens the critical path.
    todo.sort_by_key(|&i| std::cmp::Reverse(m.layers[i].size));
    for &i in &todo {
        progress.event(PullEvent::LayerQueued {
            digest: m.layers[i].digest.clone(),
            size: m.layers[i].size,
        });
    }
    let results = futures_util::stream::iter(todo.iter().map(|&i| {
        let job = LayerJob {
            client: client.clone(),
            store: store.clone(),
            desc: m.layers[i].clone(),
            diff_id: cfg.rootfs.diff_ids[i].clone(),
            chain_id: chain_ids[i].clone(),
            parent: i.checked_sub(1).map(|p| chain_ids[p].clone()),
            progress: progress.clone(),
        };
        job.run()
    }))
    .buffer_unordered(opts.concurrency.max(1))
    .collect::<Vec<_>>()
    .await;
    for r in results {
        r?;
    }

    let mut layers = Vec::new();
    let mut size = 0;
    for (i, l) in m.layers.iter().enumerate() {
        let s = store.db().snapshot_size(&chain_ids[i])?.unwrap_or(0);
        size += s;
        layers.push(LayerRow {
            chain_id: chain_ids[i].clone(),
            diff_id: cfg.rootfs.diff_ids[i].clone(),
            blob: l.digest.clone(),
            blob_size: l.size,
            media_type: if l.media_type.is_empty() {
                manifest::OCI_LAYER_GZIP.into()
            } else {
                l.media_type.clone()
            },
            size: s,
        });
    }
    extra_blobs.push(id.clone());
    extra_blobs.push(m_digest.clone());
    let img = NewImage {
        image: ImageRow {
            id: id.clone(),
            manifest_digest: Some(m_digest),
            manifest_type: Some(if m_type.is_empty() {
                manifest::OCI_MANIFEST.into()
            } else {
                m_type
            }),
            created: cfg.created.clone(),
            size,
            os: cfg.os.clone(),
            architecture: cfg.architecture.clone(),
            variant: cfg.variant.clone(),
            added_at: db::now(),
        },
        layers,
        blobs: extra_blobs,
        tag: reference
            .tag()
            .filter(|_| reference.digest().is_none())
            .map(|t| (reference.repository(), t.to_string())),
        repo_digest: Some((reference.repository(), top.digest.clone())),
    };
    store.db().add_image(&img)?;
    progress.event(PullEvent::Done {
        digest: top.digest.clone(),
        id: id.clone(),
        fresh,
    });
    Ok(PullResult {
        id,
        digest: top.digest,
        fresh,
    })
}

/// Connects and fetches the top manifest: from each mirror in turn (Docker Hub images
/// only), then from the registry itself.
async fn resolve(
    reference: &Reference,
    opts: &PullOptions,
) -> Result<(Client, super::client::Manifest)> {
    let want = reference.manifest_reference();
    for mirror in opts.mirrors.mirrors_for(reference.domain()) {
        let attempt = async {
            let c = Client::connect(&mirror, reference.path(), false, &opts.registry).await?;
            let m = c.manifest(&want).await?;
            Ok::<_, Error>((c, m))
        };
        match attempt.await {
            Ok(r) => return Ok(r),
            Err(e) => tracing::warn!("mirror {mirror}: {e}; trying the next source"),
        }
    }
    let c = Client::connect(
        reference.registry_host(),
        reference.path(),
        false,
        &opts.registry,
    )
    .await?;
    let m = c.manifest(&want).await?;
    Ok((c, m))
}

fn select_platform<'a>(list: &'a [Descriptor], want: &Platform) -> Option<&'a Descriptor> {
    // Exact variant first, then any entry whose variant does not contradict.
    list.iter()
        .find(|d| {
            d.platform.as_ref().is_some_and(|p| {
                p.os == want.os && p.architecture == want.architecture && p.variant == want.variant
            })
        })
        .or_else(|| {
            list.iter()
                .find(|d| d.platform.as_ref().is_some_and(|p| want.matches(p)))
        })
}

struct LayerJob {
    client: Arc<Client>,
    store: Arc<Store>,
    desc: Descriptor,
    diff_id: Digest,
    chain_id: Digest,
    parent: Option<Digest>,
    progress: Arc<dyn Progress>,
}

impl LayerJob {
    async fn run(self) -> Result<()> {
        let d = self.desc.digest.clone();
        let size = self.desc.size;
        self.progress.event(PullEvent::LayerStart {
            digest: d.clone(),
            size,
        });
        let snap = self.store.snapshots.prepare()?;
        let writer = self.store.blobs.writer(Expected {
            digest: Some(d.clone()),
            size: Some(size),
            what: format!("layer {d}"),
        })?;
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(64);
        let reader = ProgressReader {
            inner: ChannelReader::new(rx),
            done: 0,
            progress: self.progress.clone(),
            digest: d.clone(),
            size,
            last: 0,
        };
        let input = LayerInput {
            blob: Some((d.clone(), size)),
            diff_id: Some(self.diff_id.clone()),
            store_blob: Some(writer),
            store_diff: None,
        };
        let opts = self.store.unpack.clone();
        let unpacker = tokio::task::spawn_blocking(move || {
            layer::unpack_layer(reader, input, &snap, &opts).map(|out| (out, snap))
        });

        let fetched = self.download(tx).await;
        let unpacked = unpacker.await.map_err(|e| {
            Error::malformed(format!("layer {d}"), format!("unpack task failed: {e}"))
        })?;
        // The unpacker's error explains a download cut short by it, so it goes first.
        let (out, snap) = unpacked?;
        fetched?;
        self.store.commit_snapshot(
            snap,
            &self.chain_id,
            self.parent.as_ref(),
            &self.diff_id,
            out.stats.bytes,
        )?;
        self.progress.event(PullEvent::LayerDone { digest: d });
        Ok(())
    }

    /// Streams the blob into the channel. A dropped connection resumes from the byte
    /// reached: with a Range request where the registry honours it, else by skipping what
    /// was already sent.
    async fn download(&self, tx: mpsc::Sender<io::Result<Bytes>>) -> Result<()> {
        let d = &self.desc.digest;
        let size = self.desc.size;
        let mut sent: u64 = 0;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let resp = match self.client.blob(d, sent).await {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx
                        .send(Err(io::Error::other(format!("download failed: {e}"))))
                        .await;
                    return Err(e);
                }
            };
            let mut skip = if resp.status() == reqwest::StatusCode::PARTIAL_CONTENT {
                0
            } else {
                sent
            };
            if let Some(len) = resp.content_length() {
                let expect = if skip == 0 {
                    size.saturating_sub(sent)
                } else {
                    size
                };
                if len != expect {
                    let e = Error::SizeMismatch {
                        what: "layer".into(),
                        digest: d.to_string(),
                        expected: size,
                        actual: len + size.saturating_sub(expect),
                    };
                    let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
                    return Err(e);
                }
            }
            let mut stream = resp.bytes_stream();
            let mut failed = None;
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(mut c) => {
                        if skip > 0 {
                            let n = skip.min(c.len() as u64) as usize;
                            let _ = c.split_to(n);
                            skip -= n as u64;
                        }
                        if c.is_empty() {
                            continue;
                        }
                        sent += c.len() as u64;
                        if tx.send(Ok(c)).await.is_err() {
                            // The unpacker stopped (its error says why); stop downloading.
                            return Ok(());
                        }
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            match failed {
                None => return Ok(()),
                Some(e) if attempt < 4 && sent < size => {
                    tracing::warn!(
                        "layer {d}: connection dropped after {sent} bytes ({e}); resuming"
                    );
                    tokio::time::sleep(super::client::backoff(attempt)).await;
                }
                Some(e) => {
                    let _ = tx
                        .send(Err(io::Error::other(format!("download failed: {e}"))))
                        .await;
                    return Err(Error::Registry {
                        registry: self.client.host().into(),
                        message: format!("layer {d}: {e}"),
                    });
                }
            }
        }
    }
}

/// The blocking side of the download channel, reporting progress as bytes are consumed.
struct ProgressReader {
    inner: ChannelReader,
    done: u64,
    progress: Arc<dyn Progress>,
    digest: Digest,
    size: u64,
    last: u64,
}

impl Read for ProgressReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        // Report every 256 KiB, not every read: the progress bar does not need more.
        if n > 0 && (self.done - self.last >= 256 * 1024 || self.done == self.size) {
            self.last = self.done;
            self.progress.event(PullEvent::LayerProgress {
                digest: self.digest.clone(),
                done: self.done,
                size: self.size,
            });
        }
        Ok(n)
    }
}
