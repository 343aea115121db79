//! `push`: upload an image's blobs (skipping those the registry has, mounting across
//! repositories on the same registry when we know a source), then its manifest — the same
//! bytes we stored, so the digest a puller sees is the one we have.

use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE};
use reqwest::{Method, StatusCode};

use super::client::{Client, RegistryOptions};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{self, Document};
use crate::reference::Reference;
use crate::store::Store;

/// Blobs up to this size go up in one PUT; larger ones in PATCH chunks of this size.
const CHUNK: u64 = 16 << 20;

#[derive(Clone, Debug)]
pub enum PushEvent {
    Preparing {
        repository: String,
    },
    BlobExists {
        digest: Digest,
    },
    BlobMounted {
        digest: Digest,
        from: String,
    },
    BlobPushed {
        digest: Digest,
    },
    Done {
        tag: String,
        digest: Digest,
        size: u64,
    },
}

pub trait PushProgress: Send + Sync {
    fn event(&self, e: PushEvent);
}

pub struct NoPushProgress;
impl PushProgress for NoPushProgress {
    fn event(&self, _: PushEvent) {}
}

pub async fn push(
    store: Arc<Store>,
    local: &str,
    target: &Reference,
    opts: &RegistryOptions,
    progress: Arc<dyn PushProgress>,
) -> Result<Digest> {
    let id = store.lookup(local)?;
    let img = store
        .db()
        .image(&id)?
        .ok_or_else(|| Error::ImageNotFound(local.to_string()))?;
    let m_digest = img
        .manifest_digest
        .clone()
        .ok_or_else(|| Error::malformed(format!("image {}", id.short()), "no manifest recorded"))?;
    let m_data = store.blobs.read(&m_digest)?;
    let Document::Manifest(m) = manifest::parse_document(
        &m_data,
        img.manifest_type.as_deref(),
        &format!("manifest {m_digest}"),
    )?
    else {
        return Err(Error::malformed(
            format!("manifest {m_digest}"),
            "stored manifest is an index",
        ));
    };
    let client = Client::connect(target.registry_host(), target.path(), true, opts).await?;
    progress.event(PushEvent::Preparing {
        repository: target.familiar_repository(),
    });
    // Other repositories on the same registry known to hold this image: mount sources.
    let sources: Vec<String> = store
        .db()
        .repo_digests_of(&id)?
        .into_iter()
        .filter_map(|(repo, _)| {
            let r = Reference::parse(&repo).ok()?;
            (r.domain() == target.domain() && r.path() != target.path())
                .then(|| r.path().to_string())
        })
        .collect();

    let mut blobs: Vec<(Digest, u64)> = m
        .layers
        .iter()
        .map(|l| (l.digest.clone(), l.size))
        .collect();
    blobs.push((m.config.digest.clone(), m.config.size));
    let layer_count = m.layers.len();
    for (i, (d, size)) in blobs.iter().enumerate() {
        // docker reports layers only; the config goes up silently.
        let report = |e: PushEvent| {
            if i < layer_count {
                progress.event(e)
            }
        };
        if client.blob_exists(d).await?.is_some() {
            report(PushEvent::BlobExists { digest: d.clone() });
            continue;
        }
        if let Some(from) = try_mount(&client, d, &sources).await? {
            report(PushEvent::BlobMounted {
                digest: d.clone(),
                from,
            });
            continue;
        }
        upload(&client, &store, d, *size).await?;
        report(PushEvent::BlobPushed { digest: d.clone() });
    }

    let tag = target.tag().unwrap_or("latest").to_string();
    let reference = match target.digest() {
        Some(d) => d.to_string(),
        None => tag.clone(),
    };
    let mt = if m.media_type.is_empty() {
        img.manifest_type
            .clone()
            .unwrap_or_else(|| manifest::OCI_MANIFEST.into())
    } else {
        m.media_type.clone()
    };
    let mut h = HeaderMap::new();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_str(&mt).map_err(|_| Error::malformed("manifest media type", &mt))?,
    );
    let path = format!("/v2/{}/manifests/{reference}", target.path());
    let resp = client
        .send(Method::PUT, &path, h, Some(Bytes::from(m_data.clone())))
        .await?;
    if !resp.status().is_success() {
        return Err(client
            .status_error(resp, &format!("PUT manifest {m_digest}"))
            .await);
    }
    if let Some(sent) = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
    {
        if sent != m_digest.as_str() {
            return Err(Error::DigestMismatch {
                what: "pushed manifest".into(),
                expected: m_digest.to_string(),
                actual: format!("registry answered {sent}"),
            });
        }
    }
    store.db().add_image(&crate::db::NewImage {
        image: img.clone(),
        layers: Vec::new(),
        blobs: Vec::new(),
        tag: None,
        repo_digest: Some((target.repository(), m_digest.clone())),
    })?;
    progress.event(PushEvent::Done {
        tag,
        digest: m_digest.clone(),
        size: m_data.len() as u64,
    });
    Ok(m_digest)
}

async fn try_mount(client: &Client, d: &Digest, sources: &[String]) -> Result<Option<String>> {
    for from in sources {
        let path = format!("/v2/{}/blobs/uploads/?mount={d}&from={from}", client.repo());
        let resp = client
            .send(Method::POST, &path, HeaderMap::new(), None)
            .await?;
        if resp.status() == StatusCode::CREATED {
            return Ok(Some(from.clone()));
        }
        // 202 means the registry started a normal upload instead; abandon it.
        if resp.status() == StatusCode::ACCEPTED {
            if let Ok(loc) = client.location(&resp) {
                let _ = client
                    .send(Method::DELETE, &loc, HeaderMap::new(), None)
                    .await;
            }
        }
    }
    Ok(None)
}

/// Monolithic PUT for small blobs; PATCH chunks with Content-Range then a closing PUT for
/// large ones. Bytes are read from the store, where they were verified on the way in.
async fn upload(client: &Client, store: &Store, d: &Digest, size: u64) -> Result<()> {
    let start = client
        .send(
            Method::POST,
            &format!("/v2/{}/blobs/uploads/", client.repo()),
            HeaderMap::new(),
            None,
        )
        .await?;
    if start.status() != StatusCode::ACCEPTED {
        return Err(client
            .status_error(start, &format!("starting upload of {d}"))
            .await);
    }
    let mut location = client.location(&start)?;
    let mut file = store.blobs.open_blob(d)?;
    let actual = file.metadata().map(|m| m.len()).unwrap_or(0);
    if actual != size {
        return Err(Error::SizeMismatch {
            what: "local blob".into(),
            digest: d.to_string(),
            expected: size,
            actual,
        });
    }
    let with_digest = |loc: &str| {
        format!(
            "{loc}{}digest={d}",
            if loc.contains('?') { '&' } else { '?' }
        )
    };
    if size <= CHUNK {
        let mut data = Vec::with_capacity(size as usize);
        file.read_to_end(&mut data)
            .map_err(|e| Error::io(store.blobs.path(d), e))?;
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        let resp = client
            .send(
                Method::PUT,
                &with_digest(&location),
                h,
                Some(Bytes::from(data)),
            )
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(client.status_error(resp, &format!("uploading {d}")).await);
        }
        return Ok(());
    }
    let mut offset = 0u64;
    while offset < size {
        let n = CHUNK.min(size - offset) as usize;
        let mut buf = vec![0u8; n];
        file.read_exact(&mut buf)
            .map_err(|e| Error::io(store.blobs.path(d), e))?;
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        if let Ok(v) = HeaderValue::from_str(&format!("{}-{}", offset, offset + n as u64 - 1)) {
            h.insert(CONTENT_RANGE, v);
        }
        h.insert(CONTENT_LENGTH, HeaderValue::from(n as u64));
        let resp = client
            .send(Method::PATCH, &location, h, Some(Bytes::from(buf)))
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(client
                .status_error(resp, &format!("uploading {d} at {offset}"))
                .await);
        }
        location = client.location(&resp)?;
        offset += n as u64;
    }
    let resp = client
        .send(Method::PUT, &with_digest(&location), HeaderMap::new(), None)
        .await?;
    if resp.status() != StatusCode::CREATED {
        return Err(client
            .status_error(resp, &format!("finishing upload of {d}"))
            .await);
    }
    Ok(())
}
