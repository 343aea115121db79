//! Image references: `[domain/]path[:tag][@digest]`, normalised the way the docker CLI does
//! (`busybox` → `docker.io/library/busybox:latest`) and printed back in docker's familiar
//! short form.

use std::fmt;

use crate::digest::Digest;
use crate::error::{Error, Result};

pub const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_PREFIX: &str = "library/";
pub const DEFAULT_TAG: &str = "latest";
const NAME_TOTAL_MAX: usize = 255;

/// A fully normalised reference: a domain, a repository path, and at least one of a tag or a
/// digest (`latest` is filled in when neither was given).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalises like `docker pull` does.
    pub fn parse(input: &str) -> Result<Self> {
        let bad = |reason| Error::InvalidReference {
            input: input.to_string(),
            reason,
        };
        if input.is_empty() {
            return Err(bad("empty reference"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((r, d)) => (r, Some(Digest::parse(d)?)),
            None => (input, None),
        };
        // A ':' after the last '/' starts the tag; one before it is a registry port.
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        if let Some(t) = tag {
            if !valid_tag(t) {
                return Err(bad("invalid tag"));
            }
        }
        if name.is_empty() {
            return Err(bad("empty repository name"));
        }
        if name.len() > NAME_TOTAL_MAX {
            return Err(bad("repository name must not be more than 255 characters"));
        }
        let (domain, path) = split_domain(name);
        if !valid_domain(&domain) {
            return Err(bad("invalid registry domain"));
        }
        if path.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(bad("repository name must be lowercase"));
        }
        if !path.split('/').all(valid_path_component) {
            return Err(bad("invalid repository name"));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_string()),
        };
        Ok(Reference {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// A reference naming a repository with the given tag (used by `tag` and `import`).
    pub fn with_tag(&self, tag: &str) -> Result<Self> {
        if !valid_tag(tag) {
            return Err(Error::InvalidReference {
                input: tag.to_string(),
                reason: "invalid tag",
            });
        }
        Ok(Reference {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        })
    }

    pub fn with_digest(&self, digest: Digest) -> Self {
        Reference {
            tag: None,
            digest: Some(digest),
            ..self.clone()
        }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `docker.io/library/busybox` — the key used in the database.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// `busybox`, `quay.io/foo/bar`, `localhost:5000/x` — what docker prints.
    pub fn familiar_repository(&self) -> String {
        familiar(&self.repository())
    }

    /// Host (and port) to talk to for this domain; Docker Hub's API lives elsewhere.
    pub fn registry_host(&self) -> &str {
        if self.domain == DEFAULT_DOMAIN {
            "registry-1.docker.io"
        } else {
            &self.domain
        }
    }

    /// The tag or digest to ask the registry for (a digest wins: it is immutable).
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }
}

/// The familiar (short) form of a full repository name.
pub fn familiar(repository: &str) -> String {
    match repository.strip_prefix("docker.io/") {
        Some(rest) => rest
            .strip_prefix(OFFICIAL_PREFIX)
            .unwrap_or(rest)
            .to_string(),
        None => repository.to_string(),
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// docker's rule: the first component is a domain only if it has a '.' or ':' or is
/// `localhost` (or has upper case, which makes it invalid as a path anyway).
fn split_domain(name: &str) -> (String, String) {
    let (domain, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
    };
    let domain = if domain == LEGACY_DEFAULT_DOMAIN {
        DEFAULT_DOMAIN.to_string()
    } else {
        domain
    };
    let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
        format!("{OFFICIAL_PREFIX}{path}")
    } else {
        path
    };
    (domain, path)
}

fn valid_tag(t: &str) -> bool {
    let mut chars = t.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_')
        && t.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
    host_ok && port_ok
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn normalises_like_docker() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(norm("user/app"), "docker.io/user/app:latest");
        assert_eq!(
            norm("index.docker.io/library/ubuntu"),
            "docker.io/library/ubuntu:latest"
        );
        assert_eq!(norm("docker.io/ubuntu"), "docker.io/library/ubuntu:latest");
        assert_eq!(norm("localhost/foo"), "localhost/foo:latest");
        assert_eq!(
            norm("localhost:5000/foo/bar:v1"),
            "localhost:5000/foo/bar:v1"
        );
        assert_eq!(norm("127.0.0.1:5000/foo"), "127.0.0.1:5000/foo:latest");
        assert_eq!(norm("quay.io/a/b-c__d.e"), "quay.io/a/b-c__d.e:latest");
        let d = format!("sha256:{}", "0".repeat(64));
        assert_eq!(
            norm(&format!("busybox@{d}")),
            format!("docker.io/library/busybox@{d}")
        );
        assert_eq!(
            norm(&format!("busybox:1@{d}")),
            format!("docker.io/library/busybox:1@{d}")
        );
    }

    #[test]
    fn familiar_forms() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.familiar_repository(), "busybox");
        assert_eq!(r.registry_host(), "registry-1.docker.io");
        let r = Reference::parse("user/app").unwrap();
        assert_eq!(r.familiar_repository(), "user/app");
        let r = Reference::parse("127.0.0.1:5000/x").unwrap();
        assert_eq!(r.familiar_repository(), "127.0.0.1:5000/x");
        assert_eq!(r.registry_host(), "127.0.0.1:5000");
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox:-x",
            "busy box",
            "a//b",
            "a/-b",
            "a/b-",
            "busybox@sha256:abc",
            "foo/../bar",
            ":tag",
            "a__b___c",
            "host:port/x",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let e = Reference::parse("Busybox").unwrap_err().to_string();
        assert!(e.contains("invalid reference format"), "{e}");
    }
}
