//! A small client for the registry HTTP API v2 (the distribution spec) on reqwest: ping and
//! auth, manifests and blobs with retries, resumable blob streams, uploads.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RANGE,
    WWW_AUTHENTICATE,
};
use reqwest::{Method, Response, StatusCode};
use tokio::sync::RwLock;

use super::auth::{self, Challenge, Credentials};
use super::tls;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{ACCEPT_MANIFESTS, MAX_DOCUMENT};

/// When certificates are verified (and plain HTTP refused).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsVerify {
    /// docker's rule: verify, except for the insecure registries and loopback ones (docker's
    /// insecure list always holds 127.0.0.0/8), which get any certificate, then plain HTTP.
    #[default]
    Default,
    /// Verify every registry, insecure lists notwithstanding (podman's explicit
    /// `--tls-verify=true` overrides its registries.conf the same way).
    Always,
    /// Accept any certificate and fall back to plain HTTP (`--tls-verify=false`).
    Never,
}

#[derive(Clone, Debug)]
pub struct RegistryOptions {
    pub tls_verify: TlsVerify,
    pub insecure_registries: Vec<String>,
    /// podman's `--cert-dir`: CA and client files used for every registry, instead of the
    /// per-host lookup in `certs_d`.
    pub cert_dir: Option<std::path::PathBuf>,
    /// Base directories holding `<host[:port]>/` (docker's certs.d layout); `None` is
    /// [`tls::default_certs_d`].
    pub certs_d: Option<Vec<std::path::PathBuf>>,
    /// Explicit credentials; otherwise the auth file is consulted.
    pub credentials: Option<Credentials>,
    pub auth_file: Option<std::path::PathBuf>,
    pub connect_timeout: Duration,
    /// Longest silence tolerated while reading a body.
    pub read_timeout: Duration,
    pub max_attempts: u32,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            tls_verify: TlsVerify::Default,
            insecure_registries: Vec::new(),
            cert_dir: None,
            certs_d: None,
            credentials: None,
            auth_file: None,
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            max_attempts: 4,
        }
    }
}

impl RegistryOptions {
    /// Whether `host` is contacted without certificate checks (and over HTTP if need be).
    pub fn insecure(&self, host: &str) -> bool {
        match self.tls_verify {
            TlsVerify::Never => true,
            TlsVerify::Always => false,
            TlsVerify::Default => {
                is_loopback(host) || self.insecure_registries.iter().any(|r| r == host)
            }
        }
    }
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    host: String,
    repo: String,
    actions: &'static str,
    creds: Option<Credentials>,
    authorization: RwLock<Option<String>>,
    opts: RegistryOptions,
}

pub struct Manifest {
    pub data: Vec<u8>,
    pub digest: Digest,
    pub content_type: Option<String>,
}

/// `host:port` → `host` (brackets of an IPv6 literal removed).
fn host_only(host: &str) -> &str {
    let h = match host.rsplit_once(':') {
        Some((h, p))
            if p.chars().all(|c| c.is_ascii_digit()) && (!h.contains(':') || h.ends_with(']')) =>
        {
            h
        }
        _ => host,
    };
    h.trim_start_matches('[').trim_end_matches(']')
}

fn is_loopback(host: &str) -> bool {
    let h = host_only(host);
    h == "localhost"
        || h.parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

impl Client {
    /// Connects to `host` for repository `repo`, choosing HTTPS (or plain HTTP for insecure
    /// registries) and authenticating as the registry's challenge asks.
    pub async fn connect(
        host: &str,
        repo: &str,
        push: bool,
        opts: &RegistryOptions,
    ) -> Result<Client> {
        let insecure = opts.insecure(host);
        let certs_d = opts.certs_d.clone().unwrap_or_else(tls::default_certs_d);
        let files = tls::load(host, opts.cert_dir.as_deref(), &certs_d)?;
        let origin = host_only(host).to_string();
        let mut builder = reqwest::Client::builder()
            .danger_accept_invalid_certs(insecure)
            .connect_timeout(opts.connect_timeout)
            .read_timeout(opts.read_timeout)
            .user_agent(concat!("vessel/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= 5 {
                    return attempt.error("too many redirects");
                }
                let same = attempt
                    .url()
                    .host_str()
                    .map(|h| h.trim_start_matches('[').trim_end_matches(']') == origin)
                    .unwrap_or(false);
                if same || attempt.url().scheme() == "https" {
                    attempt.follow()
                } else {
                    let to = attempt.url().to_string();
                    attempt.error(format!(
                        "refusing redirect to another host over plain HTTP: {to}"
                    ))
                }
            }));
        for c in &files.roots {
            builder = builder.add_root_certificate(c.clone());
        }
        // Client certificates are presented to insecure registries too, as docker does.
        if let Some(id) = &files.identity {
            builder = builder.identity(id.clone());
        }
        let http = builder.build().map_err(|e| Error::Registry {
            registry: host.into(),
            message: format!("building HTTP client: {e}"),
        })?;
        let trusted_dirs: String = files
            .dirs
            .iter()
            .map(|d| format!(", and those in {}", d.display()))
            .collect();
        let creds = match &opts.credentials {
            Some(c) => Some(c.clone()),
            None => auth::lookup(
                &opts.auth_file.clone().unwrap_or_else(auth::auth_file),
                host,
            )?,
        };
        let schemes: &[&str] = if insecure {
            &["https", "http"]
        } else {
            &["https"]
        };
        let mut last_err = None;
        for scheme in schemes {
            let base = format!("{scheme}://{host}");
            let client = Client {
                http: http.clone(),
                base: base.clone(),
                host: host.into(),
                repo: repo.into(),
                actions: if push { "pull,push" } else { "pull" },
                creds: creds.clone(),
                authorization: RwLock::new(None),
                opts: opts.clone(),
            };
            match client.ping().await {
                Ok(()) => return Ok(client),
                Err(Error::Http { url, error }) => match tls::certificate_problem(&error) {
                    // Said plainly: a bare "error sending request" hides the cause.
                    Some(reason) if !insecure => {
                        return Err(Error::UntrustedCertificate {
                            registry: host.into(),
                            reason,
                            extra: trusted_dirs,
                        })
                    }
                    _ => last_err = Some(Error::Http { url, error }),
                },
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| Error::Registry {
            registry: host.into(),
            message: "unreachable".into(),
        }))
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    async fn ping(&self) -> Result<()> {
        let url = format!("{}/v2/", self.base);
        let resp = self.http.get(&url).send().await.map_err(|e| Error::Http {
            url: url.clone(),
            error: e,
        })?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            StatusCode::UNAUTHORIZED => {
                self.authenticate(&resp).await?;
                // Check the credentials now, so `login` fails on a wrong password.
                let mut req = self.http.get(&url);
                if let Some(a) = self.authorization.read().await.clone() {
                    req = req.header(AUTHORIZATION, a);
                }
                let again = req.send().await.map_err(|e| Error::Http {
                    url: url.clone(),
                    error: e,
                })?;
                match again.status() {
                    s if s.is_success() => Ok(()),
                    StatusCode::UNAUTHORIZED => Err(Error::Unauthorized {
                        registry: self.host.clone(),
                        message: "incorrect username or password".into(),
                    }),
                    s => Err(self.err(format!("GET /v2/: unexpected status {s}"))),
                }
            }
            s => Err(self.err(format!("GET /v2/: unexpected status {s}"))),
        }
    }

    fn err(&self, message: impl Into<String>) -> Error {
        Error::Registry {
            registry: self.host.clone(),
            message: message.into(),
        }
    }

    /// Answers a 401: Basic sends the stored credentials; Bearer fetches a token for this
    /// repository's scope from the realm (with Basic credentials when we have them).
    async fn authenticate(&self, resp: &Response) -> Result<()> {
        let header = resp
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(auth::parse_challenge)
            .ok_or_else(|| Error::Unauthorized {
                registry: self.host.clone(),
                message: "no usable WWW-Authenticate challenge".into(),
            })?;
        let value = match header {
            Challenge::Basic => match &self.creds {
                Some(c) => c.basic_header(),
                None => {
                    return Err(Error::Unauthorized {
                        registry: self.host.clone(),
                        message: "credentials required (vessel login)".into(),
                    })
                }
            },
            Challenge::Bearer { realm, service, .. } => {
                let scope = format!("repository:{}:{}", self.repo, self.actions);
                let mut req = self.http.get(&realm).query(&[("scope", scope.as_str())]);
                if let Some(s) = &service {
                    req = req.query(&[("service", s.as_str())]);
                }
                if let Some(c) = &self.creds {
                    req = req.header(AUTHORIZATION, c.basic_header());
                }
                let r = req.send().await.map_err(|e| Error::Http {
                    url: realm.clone(),
                    error: e,
                })?;
                if !r.status().is_success() {
                    return Err(Error::Unauthorized {
                        registry: self.host.clone(),
                        message: format!("token server {realm} answered {}", r.status()),
                    });
                }
                let body = read_limited(r, 1 << 20, &realm).await?;
                let v: serde_json::Value = serde_json::from_slice(&body)
                    .map_err(|e| Error::malformed(format!("token from {realm}"), e))?;
                let token = v
                    .get("token")
                    .or_else(|| v.get("access_token"))
                    .and_then(|t| t.as_str())
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| {
                        Error::malformed(format!("token from {realm}"), "no token field")
                    })?;
                format!("Bearer {token}")
            }
        };
        *self.authorization.write().await = Some(value);
        Ok(())
    }

    /// Sends with auth, re-authenticating once on 401 and retrying with backoff on 5xx,
    /// 429 and transport errors.
    pub async fn send(
        &self,
        method: Method,
        path_or_url: &str,
        headers: HeaderMap,
        body: Option<Bytes>,
    ) -> Result<Response> {
        let url = if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_string()
        } else {
            format!("{}{}", self.base, path_or_url)
        };
        let mut reauthed = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self
                .http
                .request(method.clone(), &url)
                .headers(headers.clone());
            if let Some(a) = self.authorization.read().await.clone() {
                req = req.header(AUTHORIZATION, a);
            }
            if let Some(b) = &body {
                req = req.body(b.clone());
            }
            let retry = match req.send().await {
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !reauthed => {
                    reauthed = true;
                    self.authenticate(&resp).await?;
                    continue;
                }
                Ok(resp)
                    if resp.status().is_server_error()
                        || resp.status() == StatusCode::TOO_MANY_REQUESTS =>
                {
                    format!("{method} {url}: {}", resp.status())
                }
                Ok(resp) => return Ok(resp),
                Err(e) if e.is_redirect() || e.is_builder() => {
                    return Err(Error::Http { url, error: e })
                }
                Err(e) => {
                    if attempt >= self.opts.max_attempts {
                        return Err(Error::Http { url, error: e });
                    }
                    format!("{method} {url}: {e}")
                }
            };
            if attempt >= self.opts.max_attempts {
                return Err(self.err(format!("{retry} (gave up after {attempt} attempts)")));
            }
            tracing::warn!("{retry}; retrying");
            tokio::time::sleep(backoff(attempt)).await;
        }
    }

    /// Fetches a manifest by tag or digest, checking the digest when it is known: asked for
    /// by digest, or announced in `Docker-Content-Digest`.
    async fn manifest_once(&self, reference: &str) -> Result<Manifest> {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, HeaderValue::from_static(ACCEPT_MANIFESTS));
        let path = format!("/v2/{}/manifests/{reference}", self.repo);
        let resp = self.send(Method::GET, &path, h, None).await?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Err(self.err(format!(
                "manifest for {}:{reference} not found: manifest unknown",
                self.repo
            )));
        }
        if !status.is_success() {
            return Err(self
                .status_error(resp, &format!("manifest {reference}"))
                .await);
        }
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or(s).trim().to_string());
        let announced = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let data = read_limited(resp, MAX_DOCUMENT, &path).await?;
        let digest = Digest::of_bytes(&data);
        let expected = Digest::parse(reference)
            .ok()
            .or(announced.as_deref().and_then(|a| Digest::parse(a).ok()));
        // A signed schema 1 manifest's digest covers it without its signatures, so it
        // cannot match here; it is returned unchecked only for the caller to refuse.
        let schema1 = crate::manifest::is_schema1(&data, content_type.as_deref());
        if let Some(exp) = expected.filter(|_| !schema1) {
            if exp != digest {
                return Err(Error::DigestMismatch {
                    what: "manifest".into(),
                    expected: exp.to_string(),
                    actual: format!("registry sent {digest}"),
                });
            }
        }
        Ok(Manifest {
            data,
            digest,
            content_type,
        })
    }

    /// A small blob (config) read whole, size and digest checked.
    async fn blob_bytes_once(&self, digest: &Digest, size: u64, what: &str) -> Result<Vec<u8>> {
        if size > MAX_DOCUMENT {
            return Err(self.err(format!(
                "{what} {digest} is {size} bytes, more than the {MAX_DOCUMENT} allowed"
            )));
        }
        let resp = self.blob(digest, 0).await?;
        let data = read_limited(resp, size, &format!("{what} {digest}")).await?;
        if data.len() as u64 != size {
            return Err(Error::SizeMismatch {
                what: what.into(),
                digest: digest.to_string(),
                expected: size,
                actual: data.len() as u64,
            });
        }
        let actual = Digest::of_bytes(&data);
        if &actual != digest {
            return Err(Error::DigestMismatch {
                what: what.into(),
                expected: digest.to_string(),
                actual: format!("registry sent {actual}"),
            });
        }
        Ok(data)
    }

    /// Fetches a manifest by tag or digest (see `manifest_once`), retrying when the
    /// connection drops while the body is read.
    pub async fn manifest(&self, reference: &str) -> Result<Manifest> {
        let mut attempt = 1;
        loop {
            match self.manifest_once(reference).await {
                Err(Error::Http { url, error }) if attempt < self.opts.max_attempts => {
                    tracing::warn!("{url}: {error}; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    /// A small blob (config) read whole, size and digest checked; retried like `manifest`.
    pub async fn blob_bytes(&self, digest: &Digest, size: u64, what: &str) -> Result<Vec<u8>> {
        let mut attempt = 1;
        loop {
            match self.blob_bytes_once(digest, size, what).await {
                Err(Error::Http { url, error }) if attempt < self.opts.max_attempts => {
                    tracing::warn!("{url}: {error}; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    /// A blob response from `offset` on. Returns the response and whether the registry
    /// honoured the range (206); a 200 restarts from byte 0 and the caller skips ahead.
    pub async fn blob(&self, digest: &Digest, offset: u64) -> Result<Response> {
        let mut h = HeaderMap::new();
        if offset > 0 {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes={offset}-")) {
                h.insert(RANGE, v);
            }
        }
        let path = format!("/v2/{}/blobs/{digest}", self.repo);
        let resp = self.send(Method::GET, &path, h, None).await?;
        if !resp.status().is_success() {
            return Err(self.status_error(resp, &format!("blob {digest}")).await);
        }
        Ok(resp)
    }

    pub async fn blob_exists(&self, digest: &Digest) -> Result<Option<u64>> {
        let path = format!("/v2/{}/blobs/{digest}", self.repo);
        let resp = self
            .send(Method::HEAD, &path, HeaderMap::new(), None)
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(Some(
                resp.headers()
                    .get(CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            )),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self
                .status_error(resp, &format!("HEAD blob {digest}"))
                .await),
        }
    }

    pub async fn status_error(&self, resp: Response, what: &str) -> Error {
        let status = resp.status();
        let body = read_limited(resp, 64 << 10, what).await.unwrap_or_default();
        let detail = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.pointer("/errors/0/message")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Error::Unauthorized {
                registry: self.host.clone(),
                message: format!("{what}: {status} {detail}"),
            };
        }
        self.err(format!("{what}: {status} {detail}"))
    }

    /// `GET /v2/<repo>/tags/list` (one page; registries here return all tags at once).
    pub async fn tags(&self) -> Result<Vec<String>> {
        let path = format!("/v2/{}/tags/list", self.repo);
        let resp = self
            .send(Method::GET, &path, HeaderMap::new(), None)
            .await?;
        if !resp.status().is_success() {
            return Err(self.status_error(resp, "tags list").await);
        }
        let body = read_limited(resp, MAX_DOCUMENT, &path).await?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| Error::malformed("tags list", e))?;
        Ok(v.get("tags")
            .and_then(|t| t.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    pub fn repo(&self) -> &str {
        &self.repo
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Resolves an upload `Location` (absolute or relative) against the registry.
    pub fn location(&self, resp: &Response) -> Result<String> {
        let loc = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| self.err("upload response without Location"))?;
        Ok(if loc.starts_with('/') {
            format!("{}{loc}", self.base)
        } else {
            loc.to_string()
        })
    }

    /// Whether the registry already has a complete response for a tag's manifest digest.
    pub async fn manifest_digest(&self, reference: &str) -> Result<Option<Digest>> {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, HeaderValue::from_static(ACCEPT_MANIFESTS));
        let path = format!("/v2/{}/manifests/{reference}", self.repo);
        let resp = self.send(Method::HEAD, &path, h, None).await?;
        if !resp.status().is_success() {
            return Ok(None);
        }
        Ok(resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Digest::parse(v).ok()))
    }
}

pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200u64.saturating_mul(1 << attempt.min(6)))
}

/// Reads a whole body, refusing more than `limit` bytes.
pub async fn read_limited(resp: Response, limit: u64, what: &str) -> Result<Vec<u8>> {
    if let Some(len) = resp.content_length() {
        if len > limit {
            return Err(Error::malformed(
                what,
                format!("response is {len} bytes, more than the {limit} expected"),
            ));
        }
    }
    let url = resp.url().to_string();
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Error::Http {
            url: url.clone(),
            error: e,
        })?;
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Err(Error::malformed(
                what,
                format!("response is more than the {limit} bytes expected"),
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_detection() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("localhost"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry-1.docker.io"));
        assert!(!is_loopback("10.0.0.1:5000"));
    }
}
