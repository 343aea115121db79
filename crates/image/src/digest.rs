//! Content digests (`sha256:<64 hex>`) and the hashing reader/writer used while streaming.

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// A validated `sha256:<hex>` digest. Only sha256 is accepted: it is what every registry and
/// image tool writes, and accepting others would only widen what hostile input can name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |reason| Error::InvalidDigest {
            input: s.to_string(),
            reason,
        };
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| bad("only sha256 digests are supported"))?;
        if hex.len() != 64 {
            return Err(bad("sha256 hex part must be 64 characters"));
        }
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad("hex part must be lowercase hexadecimal"));
        }
        Ok(Digest(s.to_string()))
    }

    pub fn from_sha256(hasher: Sha256) -> Self {
        Digest(format!("sha256:{}", hex::encode(hasher.finalize())))
    }

    pub fn of_bytes(data: &[u8]) -> Self {
        Self::from_sha256(Sha256::new_with_prefix(data))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// The 12-character short id docker prints.
    pub fn short(&self) -> &str {
        &self.hex()[..12]
    }

    /// Chain id of a layer stack (OCI image spec): the first is the diff id itself, then
    /// `sha256(parent_chain + " " + diff_id)`.
    pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
        let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
        for d in diff_ids {
            let next = match out.last() {
                None => d.clone(),
                Some(parent) => Digest::of_bytes(format!("{} {}", parent, d).as_bytes()),
            };
            out.push(next);
        }
        out
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Digest::parse(s)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A reader that hashes and counts what passes through it, and refuses to yield more than
/// `limit` bytes — so a registry or file that sends more than it declared is cut off while
/// streaming, not after it has filled the disk.
pub struct HashingReader<R> {
    inner: R,
    /// `None` when the same bytes are hashed elsewhere (a blob writer); hashing them twice
    /// would cost a pull several percent of its CPU.
    hasher: Option<Sha256>,
    count: u64,
    limit: Option<u64>,
    what: String,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R, limit: Option<u64>, what: impl Into<String>) -> Self {
        HashingReader {
            inner,
            hasher: Some(Sha256::new()),
            count: 0,
            limit,
            what: what.into(),
        }
    }

    /// Counts and limits only; `finish` then yields no digest.
    pub fn counting(inner: R, limit: Option<u64>, what: impl Into<String>) -> Self {
        HashingReader {
            hasher: None,
            ..Self::new(inner, limit, what)
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Reads whatever is left (trailing tar padding, bytes after the gzip stream) so that the
    /// digest covers the whole blob, then returns the digest and size.
    pub fn finish(self) -> io::Result<(Option<Digest>, u64)> {
        self.finish_into_inner().map(|(d, n, _)| (d, n))
    }

    /// Like `finish`, and gives the inner reader back.
    pub fn finish_into_inner(mut self) -> io::Result<(Option<Digest>, u64, R)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((self.hasher.map(Digest::from_sha256), self.count, self.inner))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = self.hasher.as_mut() {
            h.update(&buf[..n]);
        }
        self.count += n as u64;
        if let Some(limit) = self.limit {
            if self.count > limit {
                return Err(crate::error::into_io(Error::SizeMismatch {
                    what: self.what.clone(),
                    digest: String::new(),
                    expected: limit,
                    actual: self.count,
                }));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let ok = format!("sha256:{}", "a".repeat(64));
        assert_eq!(Digest::parse(&ok).unwrap().hex(), "a".repeat(64));
        assert!(Digest::parse("sha256:abc").is_err());
        assert!(Digest::parse(&format!("sha512:{}", "a".repeat(64))).is_err());
        assert!(Digest::parse(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(Digest::parse(&format!("sha256:{}/../x", "a".repeat(58))).is_err());
    }

    #[test]
    fn empty_digest() {
        assert_eq!(
            Digest::of_bytes(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn chain_ids_follow_the_spec() {
        let a = Digest::of_bytes(b"a");
        let b = Digest::of_bytes(b"b");
        let ids = Digest::chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        assert_eq!(ids[1], Digest::of_bytes(format!("{a} {b}").as_bytes()));
    }

    #[test]
    fn hashing_reader_limits() {
        let mut r = HashingReader::new(&b"hello world"[..], Some(5), "blob");
        let mut out = Vec::new();
        assert!(r.read_to_end(&mut out).is_err());
        let r = HashingReader::new(&b"hello"[..], Some(5), "blob");
        let (d, n) = r.finish().unwrap();
        assert_eq!(n, 5);
        assert_eq!(d, Some(Digest::of_bytes(b"hello")));
        let r = HashingReader::counting(&b"hello"[..], Some(5), "blob");
        assert_eq!(r.finish().unwrap(), (None, 5));
    }
}
