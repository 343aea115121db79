//! Registry authentication: `WWW-Authenticate` challenges (Bearer with scopes, Basic) and
//! credentials kept the way docker keeps them (`config.json` `auths`, base64 `user:pass`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{json, Value};

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses one `WWW-Authenticate` value: `Bearer realm="…",service="…",scope="…"`.
pub fn parse_challenge(h: &str) -> Option<Challenge> {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let params = parse_params(rest);
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: params.get("realm")?.clone(),
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        }),
        _ => None,
    }
}

fn parse_params(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq]
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        rest = &rest[eq + 1..];
        let value;
        if let Some(r) = rest.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = r.char_indices();
            let mut end = r.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            v.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => v.push(c),
                }
            }
            value = v;
            rest = &r[end.min(r.len())..];
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_string();
            rest = &rest[end..];
        }
        rest = rest.trim_start().trim_start_matches(',').trim_start();
        out.insert(key, value);
    }
    out
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl Credentials {
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// Where credentials live: `$REGISTRY_AUTH_FILE`, else `$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json` — so `docker login` and `vessel login` share them.
pub fn auth_file() -> PathBuf {
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE") {
        return PathBuf::from(p);
    }
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        return Path::new(&d).join("config.json");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".docker").join("config.json")
}

/// The key docker uses for a registry in `auths` (Docker Hub keeps its historic URL).
pub fn auth_key(registry: &str) -> String {
    match registry {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => {
            "https://index.docker.io/v1/".into()
        }
        r => r.to_string(),
    }
}

fn read_config(path: &Path) -> Result<Value> {
    match std::fs::read(path) {
        Ok(data) => serde_json::from_slice(&data).map_err(|e| Error::Credentials {
            path: path.into(),
            reason: format!("not valid JSON: {e}"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(json!({})),
        Err(e) => Err(Error::io(path, e)),
    }
}

pub fn lookup(path: &Path, registry: &str) -> Result<Option<Credentials>> {
    let cfg = read_config(path)?;
    let key = auth_key(registry);
    let Some(entry) = cfg.get("auths").and_then(|a| {
        a.get(&key).or_else(|| {
            a.get(format!("https://{key}"))
                .or_else(|| a.get(format!("http://{key}")))
        })
    }) else {
        return Ok(None);
    };
    let bad = |reason: &str| Error::Credentials {
        path: path.into(),
        reason: format!("auths[{key:?}]: {reason}"),
    };
    if let Some(auth) = entry.get("auth").and_then(Value::as_str) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| bad("auth is not base64"))?;
        let raw = String::from_utf8(raw).map_err(|_| bad("auth is not UTF-8"))?;
        let (u, p) = raw
            .split_once(':')
            .ok_or_else(|| bad("auth is not user:password"))?;
        return Ok(Some(Credentials {
            username: u.into(),
            password: p.into(),
        }));
    }
    Ok(None)
}

/// Writes (or with `None` removes) a registry's entry, keeping everything else in the
/// file; temp file + rename, mode 0600.
pub fn store(path: &Path, registry: &str, creds: Option<&Credentials>) -> Result<bool> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut cfg = read_config(path)?;
    if !cfg.is_object() {
        return Err(Error::Credentials {
            path: path.into(),
            reason: "top level is not an object".into(),
        });
    }
    let key = auth_key(registry);
    let auths = cfg
        .as_object_mut()
        .map(|o| o.entry("auths").or_insert_with(|| json!({})));
    let Some(Value::Object(auths)) = auths else {
        return Err(Error::Credentials {
            path: path.into(),
            reason: "auths is not an object".into(),
        });
    };
    let changed = match creds {
        Some(c) => {
            let raw = format!("{}:{}", c.username, c.password);
            auths.insert(
                key,
                json!({"auth": base64::engine::general_purpose::STANDARD.encode(raw)}),
            );
            true
        }
        None => auths.remove(&key).is_some(),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let tmp = path.with_extension(format!("tmp{:08x}", rand::random::<u32>()));
    let data = serde_json::to_vec_pretty(&cfg).map_err(|e| Error::malformed("credentials", e))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, e))?;
    f.write_all(&data)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        let c = parse_challenge(r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#).unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into())
            }
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn credentials_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(
            &p,
            r#"{"credsStore":"x","auths":{"other":{"auth":"YTpi"}}}"#,
        )
        .unwrap();
        let c = Credentials {
            username: "u".into(),
            password: "p:w".into(),
        };
        store(&p, "127.0.0.1:5000", Some(&c)).unwrap();
        assert_eq!(lookup(&p, "127.0.0.1:5000").unwrap(), Some(c));
        assert_eq!(lookup(&p, "other").unwrap().unwrap().username, "a");
        assert!(store(&p, "127.0.0.1:5000", None).unwrap());
        assert_eq!(lookup(&p, "127.0.0.1:5000").unwrap(), None);
        let v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(v["credsStore"], "x");
    }
}
