//! `import URL` (docker's `docker import http://host/rootfs.tar`): the tarball is streamed
//! from the server straight into [`Store::import`], never buffered whole or staged in a
//! temp file; a failed download fails the import and leaves nothing behind.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::store::{ImportOptions, Store};
use crate::stream::ChannelReader;

/// Whether an `import` source names a URL rather than a file (docker's `IsURL`).
pub fn is_url(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://")
}

pub async fn import_url(store: Arc<Store>, url: &str, opts: ImportOptions) -> Result<Digest> {
    if !is_url(url) {
        return Err(Error::Unsupported {
            what: "import source",
            value: format!("{url:?} (expected an http:// or https:// URL)"),
        });
    }
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(60))
        .user_agent(concat!("vessel/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::Http {
            url: url.into(),
            error: e,
        })?;
    let resp = http.get(url).send().await.map_err(|e| Error::Http {
        url: url.into(),
        error: e,
    })?;
    if !resp.status().is_success() {
        return Err(Error::HttpStatus {
            url: url.into(),
            status: resp.status().to_string(),
        });
    }
    let (tx, rx) = mpsc::channel::<io::Result<bytes::Bytes>>(64);
    let importer = tokio::task::spawn_blocking(move || store.import(ChannelReader::new(rx), &opts));
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let item = chunk.map_err(|e| io::Error::other(format!("downloading {url}: {e}")));
        let failed = item.is_err();
        // A closed channel means the import stopped; its own error says why.
        if tx.send(item).await.is_err() || failed {
            break;
        }
    }
    drop(tx);
    importer
        .await
        .map_err(|e| Error::malformed(format!("import from {url}"), e))?
}
