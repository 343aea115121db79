//! Registry settings from a config file, in the shape of docker's `daemon.json`:
//! `{"registry-mirrors": ["https://mirror:5000"], "insecure-registries": ["host:5000"]}`.
//! Mirrors apply to Docker Hub only (as in docker); each is tried in order before the Hub.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub const DEFAULT_PATH: &str = "/etc/vessel/registries.json";

#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct RegistriesConfig {
    #[serde(default, rename = "registry-mirrors")]
    pub mirrors: Vec<String>,
    #[serde(default, rename = "insecure-registries")]
    pub insecure: Vec<String>,
}

impl RegistriesConfig {
    /// `$VESSEL_REGISTRIES_CONF`, else /etc/vessel/registries.json; a missing file is an
    /// empty config, a malformed one an error (silently ignoring it would pull from the Hub).
    pub fn load_default() -> Result<Self> {
        let p = std::env::var_os("VESSEL_REGISTRIES_CONF")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH));
        Self::load(&p)
    }

    pub fn load(path: &Path) -> Result<Self> {
        match std::fs::read(path) {
            Ok(data) => {
                let c: RegistriesConfig = serde_json::from_slice(&data).map_err(|e| {
                    Error::malformed(format!("registries config {}", path.display()), e)
                })?;
                for m in &c.mirrors {
                    mirror_host(m)?;
                }
                Ok(c)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RegistriesConfig::default()),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// Mirror hosts (`host[:port]`) to try for a domain, in order.
    pub fn mirrors_for(&self, domain: &str) -> Vec<String> {
        if domain != crate::reference::DEFAULT_DOMAIN {
            return Vec::new();
        }
        self.mirrors
            .iter()
            .filter_map(|m| mirror_host(m).ok())
            .collect()
    }
}

/// `https://mirror.example:5000/` → `mirror.example:5000`; paths are not supported.
pub fn mirror_host(url: &str) -> Result<String> {
    let rest = url
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') {
        return Err(Error::malformed(
            "registry mirror",
            format!("{url:?} must be scheme://host[:port]"),
        ));
    }
    Ok(rest.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_only_for_the_hub() {
        let c: RegistriesConfig =
            serde_json::from_str(r#"{"registry-mirrors":["http://127.0.0.1:5000/"]}"#).unwrap();
        assert_eq!(
            c.mirrors_for("docker.io"),
            vec!["127.0.0.1:5000".to_string()]
        );
        assert!(c.mirrors_for("quay.io").is_empty());
        assert!(mirror_host("http://a/b").is_err());
    }
}
