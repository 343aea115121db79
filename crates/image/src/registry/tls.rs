//! Per-registry TLS material, laid out the way docker and podman read it: a directory of
//! `*.crt` files (CAs to trust besides the built-in roots) and `*.cert` + `*.key` pairs
//! (client certificates). docker looks in `/etc/docker/certs.d/<host[:port]>/`, podman in
//! `/etc/containers/certs.d/<host[:port]>/`; podman's and skopeo's `--cert-dir DIR` names
//! one such directory directly and replaces that lookup.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Overrides the base directories searched for `<host>/` (colon-separated), so tests and
/// unprivileged users need not touch `/etc`.
pub const CERTS_D_ENV: &str = "VESSEL_CERTS_D";

/// Where `<host[:port]>/` directories are looked for, in order: vessel's own, then docker's
/// and podman's, so certificates installed for either are honoured.
pub fn default_certs_d() -> Vec<PathBuf> {
    match std::env::var_os(CERTS_D_ENV) {
        Some(v) => std::env::split_paths(&v).collect(),
        None => [
            "/etc/vessel/certs.d",
            "/etc/docker/certs.d",
            "/etc/containers/certs.d",
        ]
        .iter()
        .map(PathBuf::from)
        .collect(),
    }
}

/// What one registry connection trusts and presents.
#[derive(Default)]
pub struct TlsFiles {
    pub roots: Vec<reqwest::Certificate>,
    /// The first client pair found (reqwest presents one identity per client).
    pub identity: Option<reqwest::Identity>,
    /// The directories that were read, for error messages.
    pub dirs: Vec<PathBuf>,
}

/// Reads the TLS files for `host`: from `cert_dir` alone when given (it must exist), else
/// from `<base>/<host>/` under each of `certs_d` that has one.
pub fn load(host: &str, cert_dir: Option<&Path>, certs_d: &[PathBuf]) -> Result<TlsFiles> {
    let mut out = TlsFiles::default();
    match cert_dir {
        Some(dir) => {
            if !dir.is_dir() {
                return Err(bad(dir, "is not a directory"));
            }
            read_dir(dir, &mut out)?;
        }
        None => {
            // A host name with a path separator would escape the base directory.
            if host.contains('/') || host.starts_with('.') {
                return Ok(out);
            }
            for base in certs_d {
                let dir = base.join(host);
                if dir.is_dir() {
                    read_dir(&dir, &mut out)?;
                }
            }
        }
    }
    Ok(out)
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::Certificates {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// docker's `ReadCertsDirectory`: a `.cert` without its `.key` (or the reverse) is an
/// error rather than silently ignored, since it usually means a misnamed CA file.
fn read_dir(dir: &Path, out: &mut TlsFiles) -> Result<()> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    for name in &names {
        let path = dir.join(name);
        if name.ends_with(".crt") {
            let certs = reqwest::Certificate::from_pem_bundle(&read(&path)?)
                .map_err(|e| bad(&path, format!("not a PEM certificate bundle: {e}")))?;
            if certs.is_empty() {
                return Err(bad(&path, "holds no PEM certificate"));
            }
            out.roots.extend(certs);
        } else if let Some(stem) = name.strip_suffix(".cert") {
            let key = dir.join(format!("{stem}.key"));
            if !key.is_file() {
                return Err(bad(
                    &path,
                    format!(
                        "client certificate without its key {} (CA certificates must end in .crt)",
                        key.display()
                    ),
                ));
            }
            if out.identity.is_none() {
                let mut pem = read(&path)?;
                pem.push(b'\n');
                pem.extend(read(&key)?);
                let id = reqwest::Identity::from_pem(&pem)
                    .map_err(|e| bad(&path, format!("unusable client certificate or key: {e}")))?;
                out.identity = Some(id);
            }
        } else if let Some(stem) = name.strip_suffix(".key") {
            if !names.iter().any(|n| *n == format!("{stem}.cert")) {
                return Err(bad(
                    &path,
                    format!("key without its client certificate {stem}.cert"),
                ));
            }
        }
    }
    out.dirs.push(dir.to_path_buf());
    Ok(())
}

/// Whether a request failed because the server's certificate was not trusted (rustls says
/// "invalid peer certificate: UnknownIssuer", "…: NotValidForName", …).
pub fn certificate_problem(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if s.contains("invalid peer certificate") {
            return Some(s);
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpaired_client_files_are_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("client.cert"), "x").unwrap();
        let e = load("h:1", Some(d.path()), &[]).err().unwrap().to_string();
        assert!(e.contains("client.cert") && e.contains("client.key"), "{e}");
        std::fs::remove_file(d.path().join("client.cert")).unwrap();
        std::fs::write(d.path().join("other.key"), "x").unwrap();
        let e = load("h:1", Some(d.path()), &[]).err().unwrap().to_string();
        assert!(e.contains("other.key") && e.contains("other.cert"), "{e}");
    }

    #[test]
    fn bad_ca_files_and_missing_dirs_are_named() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("ca.crt"), "not pem").unwrap();
        let e = load("h:1", Some(d.path()), &[]).err().unwrap().to_string();
        assert!(e.contains("ca.crt"), "{e}");
        let missing = d.path().join("nope");
        let e = load("h:1", Some(&missing), &[]).err().unwrap().to_string();
        assert!(e.contains("nope") && e.contains("not a directory"), "{e}");
        // certs.d without a directory for the host is simply nothing to add.
        let t = load("h:1", None, &[d.path().to_path_buf()]).unwrap();
        assert!(t.roots.is_empty() && t.identity.is_none());
        assert!(load("../etc", None, &[d.path().to_path_buf()])
            .unwrap()
            .dirs
            .is_empty());
    }
}
