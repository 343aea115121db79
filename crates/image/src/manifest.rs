//! Manifests, indexes and image configs, OCI and Docker v2 schema 2 — just the fields vessel
//! reads, parsed strictly enough that malformed or hostile JSON is refused with the name of
//! the document and what was wrong. Unknown fields are ignored, as the specs require.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_FOREIGN: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// What `Accept` says when asking a registry for a manifest.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Largest manifest or config we read into memory (a registry cannot make us buffer more).
pub const MAX_DOCUMENT: u64 = 8 << 20;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    pub manifests: Vec<Descriptor>,
}

/// The parts of an image config vessel needs; the raw JSON is kept for `inspect`.
#[derive(Clone, Debug, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub created: Option<String>,
    pub rootfs: RootFs,
    #[serde(default)]
    pub history: Vec<History>,
    #[serde(default)]
    pub config: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

#[derive(Clone, Debug, Deserialize, Serialize, Default)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

/// A manifest or an index, told apart by media type (header or field) and then by shape.
pub enum Document {
    Manifest(Box<Manifest>),
    Index(Index),
}

pub fn is_index_type(mt: &str) -> bool {
    mt == OCI_INDEX || mt == DOCKER_LIST
}

/// Docker's v2 schema 1 (signed or not), which registries still serve when that is all
/// they hold, whatever `Accept` said: known by media type, or by `schemaVersion: 1` when the
/// registry names none. Refused by docker since 28 and by vessel.
pub fn is_schema1(data: &[u8], content_type: Option<&str>) -> bool {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(default)]
        schema_version: Option<u32>,
    }
    matches!(content_type, Some(DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED))
        || serde_json::from_slice::<Probe>(data).is_ok_and(|p| p.schema_version == Some(1))
}

pub fn parse_document(data: &[u8], content_type: Option<&str>, what: &str) -> Result<Document> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(default)]
        media_type: String,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
        #[serde(default)]
        schema_version: Option<u32>,
    }
    let probe: Probe = serde_json::from_slice(data).map_err(|e| Error::malformed(what, e))?;
    if probe.schema_version != Some(2) {
        return Err(Error::Unsupported {
            what: "manifest schema version",
            value: format!(
                "{:?} in {what} (only schema 2 is supported)",
                probe.schema_version
            ),
        });
    }
    let mt = if probe.media_type.is_empty() {
        content_type.unwrap_or("")
    } else {
        &probe.media_type
    };
    if is_index_type(mt) || (mt.is_empty() && probe.manifests.is_some()) {
        let idx: Index = serde_json::from_slice(data).map_err(|e| Error::malformed(what, e))?;
        return Ok(Document::Index(idx));
    }
    let m: Manifest = serde_json::from_slice(data).map_err(|e| Error::malformed(what, e))?;
    for l in &m.layers {
        check_layer_type(&l.media_type)?;
    }
    Ok(Document::Manifest(Box::new(m)))
}

fn check_layer_type(mt: &str) -> Result<()> {
    match mt {
        OCI_LAYER | OCI_LAYER_GZIP | OCI_LAYER_ZSTD | DOCKER_LAYER_GZIP | DOCKER_LAYER_FOREIGN
        | "" => Ok(()),
        "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" => Ok(()),
        other => Err(Error::Unsupported {
            what: "layer media type",
            value: other.to_string(),
        }),
    }
}

pub fn parse_config(data: &[u8], what: &str) -> Result<ImageConfig> {
    let c: ImageConfig = serde_json::from_slice(data).map_err(|e| Error::malformed(what, e))?;
    if c.rootfs.kind != "layers" {
        return Err(Error::malformed(
            what,
            format!("rootfs.type is {:?}, expected \"layers\"", c.rootfs.kind),
        ));
    }
    Ok(c)
}

/// The host's platform in OCI terms (GOARCH names).
pub fn host_platform() -> Platform {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    };
    Platform {
        architecture: arch.to_string(),
        os: "linux".to_string(),
        variant: (arch == "arm64").then(|| "v8".to_string()),
    }
}

impl Platform {
    /// `linux/amd64`, `linux/arm64/v8`, `amd64` (os defaults to linux).
    pub fn parse(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad = || Error::Unsupported {
            what: "platform",
            value: format!("{s:?} (expected os/arch[/variant])"),
        };
        let (os, arch, variant) = match parts.as_slice() {
            [arch] => ("linux", *arch, None),
            [os, arch] => (*os, *arch, None),
            [os, arch, v] => (*os, *arch, Some(v.to_string())),
            _ => return Err(bad()),
        };
        if os.is_empty() || arch.is_empty() {
            return Err(bad());
        }
        Ok(Platform {
            os: os.to_lowercase(),
            architecture: arch.to_lowercase(),
            variant,
        })
    }

    /// Whether an index entry can run here: os and arch equal; a variant only has to match
    /// when both sides name one (arm64 images often omit `v8`).
    pub fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && match (&self.variant, &other.variant) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_index_from_manifest_and_refuses_garbage() {
        let d = format!("sha256:{}", "a".repeat(64));
        let idx = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":[{{"mediaType":"{DOCKER_MANIFEST}","digest":"{d}","size":3,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#
        );
        assert!(matches!(
            parse_document(idx.as_bytes(), None, "x").unwrap(),
            Document::Index(_)
        ));
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{OCI_CONFIG}","digest":"{d}","size":3}},"layers":[]}}"#
        );
        assert!(matches!(
            parse_document(m.as_bytes(), Some(OCI_MANIFEST), "x").unwrap(),
            Document::Manifest(_)
        ));
        let e = parse_document(b"{\"schemaVersion\":2,", None, "manifest sha256:x")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("malformed manifest sha256:x"), "{e}");
        let bad_digest = m.replace(&d, "sha256:../../etc");
        assert!(parse_document(bad_digest.as_bytes(), None, "x").is_err());
        assert!(parse_document(b"{\"schemaVersion\":1}", None, "x").is_err());
        assert!(is_schema1(b"{\"schemaVersion\":1}", None));
        assert!(is_schema1(b"{}", Some(DOCKER_SCHEMA1_SIGNED)));
        assert!(!is_schema1(m.as_bytes(), Some(OCI_MANIFEST)));
    }

    #[test]
    fn platforms() {
        let p = Platform::parse("linux/arm64/v8").unwrap();
        assert!(p.matches(&Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: None
        }));
        assert!(!p.matches(&Platform::parse("linux/amd64").unwrap()));
        assert!(Platform::parse("a/b/c/d").is_err());
        assert_eq!(Platform::parse("amd64").unwrap().to_string(), "linux/amd64");
    }
}
