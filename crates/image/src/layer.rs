//! The one-pass layer pipeline: bytes in → (hash + store compressed blob) → decompress →
//! (hash diff id [+ store uncompressed blob]) → unpack into a temp snapshot. Digests and
//! sizes are checked at the end of the same pass; on any failure the temp blob and the temp
//! snapshot are dropped, so nothing partial stays in the store.

use std::io::{self, BufRead, BufReader, Read, Write};

use crate::blobs::BlobWriter;
use crate::digest::{Digest, HashingReader};
use crate::error::{from_io, Error, Result};
use crate::snapshots::TempSnapshot;
use crate::unpack::{self, UnpackOptions, UnpackStats};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// By magic number rather than media type: registries and old tools mislabel layers,
    /// and the bytes cannot lie about their own format.
    pub fn detect(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Wraps a buffered reader in the decoder its first bytes call for.
pub fn decompress<'a, R: BufRead + 'a>(r: R) -> Result<(Compression, Box<dyn Read + 'a>)> {
    decompress_with(r, true)
}

/// `check_crc` false skips gzip's CRC-32; only for callers that verify a diff id.
pub fn decompress_with<'a, R: BufRead + 'a>(
    mut r: R,
    check_crc: bool,
) -> Result<(Compression, Box<dyn Read + 'a>)> {
    let head = r.fill_buf().map_err(|e| from_io("reading layer", e))?;
    let c = Compression::detect(head);
    let out: Box<dyn Read + 'a> = match c {
        Compression::None => Box::new(r),
        Compression::Gzip if check_crc => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Compression::Gzip => Box::new(crate::gzip::GzNoCrc::new(r)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(r).map_err(|e| from_io("zstd", e))?)
        }
    };
    Ok((c, out))
}

/// Copies every byte read into a blob writer (whose own checks cut off oversized input).
pub struct Tee<R> {
    inner: R,
    sink: Option<BlobWriter>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(s) = self.sink.as_mut() {
            s.write_all(&buf[..n])?;
        }
        Ok(n)
    }
}

pub struct LayerInput {
    /// Expected digest and size of the bytes as sent (the descriptor), if known.
    pub blob: Option<(Digest, u64)>,
    /// Expected uncompressed digest (the config's diff id), if known.
    pub diff_id: Option<Digest>,
    /// Store the bytes as sent under their digest (pull).
    pub store_blob: Option<BlobWriter>,
    /// Store the uncompressed tar under its digest (import).
    pub store_diff: Option<BlobWriter>,
}

#[derive(Clone, Debug)]
pub struct LayerOutput {
    pub blob: Digest,
    pub blob_size: u64,
    pub diff_id: Digest,
    /// Bytes of the uncompressed tar.
    pub diff_size: u64,
    pub compression: Compression,
    pub stats: UnpackStats,
}

pub fn unpack_layer(
    source: impl Read,
    input: LayerInput,
    snap: &TempSnapshot,
    opts: &UnpackOptions,
) -> Result<LayerOutput> {
    let what = match &input.blob {
        Some((d, _)) => format!("layer {d}"),
        None => "layer".to_string(),
    };
    let limit = input.blob.as_ref().map(|(_, s)| *s);
    // Each stream is hashed once: by the blob writer that stores it, or here.
    let outer_source = Tee {
        inner: source,
        sink: input.store_blob,
    };
    let mut outer = if outer_source.sink.is_some() {
        HashingReader::counting(outer_source, limit, what.clone())
    } else {
        HashingReader::new(outer_source, limit, what.clone())
    };
    // Two threads per layer: this one reads, hashes, stores and inflates; the second
    // hashes the tar and unpacks it. A single layer then uses two cores, which matters at
    // the tail of a pull, when one big layer is left.
    let check_crc = input.diff_id.is_none();
    let (compression, decoded) =
        decompress_with(BufReader::with_capacity(256 * 1024, &mut outer), check_crc)?;
    let store_diff = input.store_diff;
    let (compression, diff_id, diff_size, stats, diff_sink) = std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(CHUNKS_IN_FLIGHT);
        // Emptied chunks come back for reuse: no allocation or zeroing per MiB.
        let (back_tx, back_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(CHUNKS_IN_FLIGHT + 2);
        let unpacker = scope.spawn({
            let what = what.clone();
            move || -> Result<_> {
                let inner_source = Tee {
                    inner: ChunkReader {
                        rx,
                        back: back_tx,
                        cur: Vec::new(),
                        pos: 0,
                    },
                    sink: store_diff,
                };
                let mut inner = if inner_source.sink.is_some() {
                    HashingReader::counting(inner_source, None, what.clone())
                } else {
                    HashingReader::new(inner_source, None, what.clone())
                };
                // tar reads 512-byte headers; buffered here so they cost no channel trips.
                let stats = unpack::unpack(
                    BufReader::with_capacity(256 * 1024, &mut inner),
                    snap.fs_path(),
                    opts,
                )?;
                let (digest, diff_size, tee) = inner
                    .finish_into_inner()
                    .map_err(|e| from_io(format!("{what}: reading"), e))?;
                let diff_id = match (digest, &tee.sink) {
                    (Some(d), _) => d,
                    (None, Some(w)) => w.digest(),
                    (None, None) => return Err(Error::malformed(what, "tar stream not hashed")),
                };
                Ok((diff_id, diff_size, stats, tee.sink))
            }
        });
        let fed = feed(decoded, &tx, &back_rx);
        drop(tx);
        let unpacked = unpacker
            .join()
            .map_err(|_| Error::malformed(what.clone(), "unpack thread panicked"))?;
        match (fed, unpacked) {
            // Reading failed first: that is the cause, whatever the unpacker made of the
            // truncated stream.
            (Err(FeedError::Read(e)), _) => Err(from_io(format!("{what}: reading"), e)),
            (_, Err(e)) => Err(e),
            (Err(FeedError::Closed), Ok(_)) => {
                Err(Error::malformed(what.clone(), "unpacker stopped early"))
            }
            (Ok(()), Ok((d, n, st, sink))) => Ok((compression, d, n, st, sink)),
        }
    })?;
    let (digest, blob_size, tee) = outer
        .finish_into_inner()
        .map_err(|e| from_io(format!("{what}: reading"), e))?;
    let blob = match (digest, &tee.sink) {
        (Some(d), _) => d,
        (None, Some(w)) => w.digest(),
        (None, None) => return Err(Error::malformed(what, "layer stream not hashed")),
    };
    if let Some((d, size)) = &input.blob {
        if *size != blob_size {
            return Err(Error::SizeMismatch {
                what: "layer".into(),
                digest: d.to_string(),
                expected: *size,
                actual: blob_size,
            });
        }
        if *d != blob {
            return Err(Error::DigestMismatch {
                what: "layer".into(),
                expected: d.to_string(),
                actual: format!("got {blob}"),
            });
        }
    }
    if let Some(d) = &input.diff_id {
        if *d != diff_id {
            return Err(Error::DigestMismatch {
                what: format!("{what} diff id"),
                expected: d.to_string(),
                actual: format!("got {diff_id}"),
            });
        }
    }
    // Only now, with every check passed, do the blobs get their names in the store.
    if let Some(w) = tee.sink {
        w.commit()?;
    }
    if let Some(w) = diff_sink {
        w.commit()?;
    }
    Ok(LayerOutput {
        blob,
        blob_size,
        diff_id,
        diff_size,
        compression,
        stats,
    })
}

/// Decompressed chunks queued between the two threads of a layer: enough to ride out
/// a burst of small files on the unpack side without holding much memory.
const CHUNKS_IN_FLIGHT: usize = 4;

enum FeedError {
    Read(io::Error),
    Closed,
}

/// Reads the decompressed stream in large chunks and hands them to the unpack thread,
/// reusing the chunks it sends back.
fn feed(
    mut r: impl Read,
    tx: &std::sync::mpsc::SyncSender<Vec<u8>>,
    back: &std::sync::mpsc::Receiver<Vec<u8>>,
) -> Result<(), FeedError> {
    const CHUNK: usize = 1 << 20;
    loop {
        let mut buf = back.try_recv().unwrap_or_else(|_| vec![0u8; CHUNK]);
        buf.resize(CHUNK, 0);
        let mut filled = 0;
        while filled < CHUNK {
            match r.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(FeedError::Read(e)),
            }
        }
        if filled == 0 {
            return Ok(());
        }
        buf.truncate(filled);
        tx.send(buf).map_err(|_| FeedError::Closed)?;
    }
}

/// The unpack thread's end of the channel.
struct ChunkReader {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    back: std::sync::mpsc::SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(c) => {
                    let done = std::mem::replace(&mut self.cur, c);
                    if done.capacity() > 0 {
                        // Full or closed: the feeder allocates instead, which is fine.
                        let _ = self.back.try_send(done);
                    }
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
