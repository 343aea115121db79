//! The one error type of the image crate. Each variant names what was wrong and the value
//! that was wrong, so the CLI can print it as is.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid reference format: {reason}: {input:?}")]
    InvalidReference { input: String, reason: &'static str },

    #[error("invalid digest {input:?}: {reason}")]
    InvalidDigest { input: String, reason: &'static str },

    #[error("{what} {expected}: digest mismatch, {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },

    #[error("{what} {digest}: size mismatch, expected {expected} bytes, got {actual}")]
    SizeMismatch {
        what: String,
        digest: String,
        expected: u64,
        actual: u64,
    },

    #[error("layer entry {path:?}: {reason}")]
    HostileEntry { path: String, reason: String },

    #[error("layer is larger than the limit of {limit} bytes unpacked")]
    LayerTooLarge { limit: u64 },

    #[error("unsupported {what}: {value}")]
    Unsupported { what: &'static str, value: String },

    #[error("malformed {what}: {reason}")]
    Malformed { what: String, reason: String },

    #[error("No such image: {0}")]
    ImageNotFound(String),

    #[error("conflict: {0}")]
    Conflict(String),

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{context}: {source}")]
    IoContext {
        context: String,
        source: std::io::Error,
    },

    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),

    #[error("registry {registry}: {message}")]
    Registry { registry: String, message: String },

    #[error("registry {registry}: unauthorized: {message}")]
    Unauthorized { registry: String, message: String },

    /// The whole cause chain is in the message (reqwest's top level alone says only
    /// "error sending request"), so the error is not chained again as a `source`.
    #[error("{}", chain(error))]
    Http { url: String, error: reqwest::Error },

    #[error("{url}: HTTP {status}")]
    HttpStatus { url: String, status: String },

    #[error("no image for platform {wanted} in {reference} (available: {available})")]
    NoMatchingPlatform {
        reference: String,
        wanted: String,
        available: String,
    },

    #[error("credentials file {path}: {reason}")]
    Credentials { path: PathBuf, reason: String },

    #[error("certificates {path}: {reason}")]
    Certificates { path: PathBuf, reason: String },

    #[error("registry {registry}: TLS certificate not trusted: {reason} (CAs trusted: the built-in roots{extra})")]
    UntrustedCertificate {
        registry: String,
        reason: String,
        /// ", and those in DIR…" or an empty string.
        extra: String,
    },

    /// docker 28's wording, so users find the same advice.
    #[error("Docker Image Format v1 and Docker Image manifest version 2, schema 1 support has been removed. Suggest the author of {reference} to upgrade the image to the OCI Format or Docker Image manifest v2, schema 2. More information at https://docs.docker.com/go/deprecated-image-specs/")]
    Schema1 { reference: String },
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn ctx(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::IoContext {
            context: context.into(),
            source,
        }
    }

    pub fn hostile(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::HostileEntry {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub fn malformed(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Error::Malformed {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

/// "error sending request for url (…): client error (Connect): tcp connect error: …".
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let s = inner.to_string();
        if !out.ends_with(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = inner.source();
    }
    out
}

/// Lets errors raised inside `Read` adapters (digest checks, hostile content) travel through
/// std::io plumbing (tar, flate2) and come back out with their meaning intact.
pub(crate) fn into_io(e: Error) -> std::io::Error {
    std::io::Error::other(e)
}

pub(crate) fn from_io(context: impl Into<String>, e: std::io::Error) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        if let Some(inner) = e.into_inner() {
            if let Ok(err) = inner.downcast::<Error>() {
                return *err;
            }
        }
        return Error::malformed("io", "lost error");
    }
    Error::ctx(context, e)
}
