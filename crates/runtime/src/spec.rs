//! Loading and validating config.json. Validate, then apply: everything that can be checked
//! without touching the host is checked here, with errors naming the field and the value.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::{Context, Error, Result};

/// A parsed bundle: the spec plus the raw bytes (kept so the state dir gets an exact copy
/// without a serialization round trip).
pub struct Bundle {
    pub dir: PathBuf,
    pub spec: Spec,
    pub raw: Vec<u8>,
    pub rootfs: PathBuf,
}

pub fn parse_spec(raw: &[u8], origin: &str) -> Result<Spec> {
    let de = &mut serde_json::Deserializer::from_slice(raw);
    let err = match serde_path_to_error::deserialize(de) {
        Ok(spec) => return Ok(spec),
        Err(e) => e,
    };
    let path = err.path().to_string();
    // As runc and crun: a capability this runtime does not know is ignored with a warning
    // (configs written for newer kernels name newer ones), not a reason to refuse the config.
    if path.starts_with("process.capabilities.") {
        if let Some(spec) = parse_dropping_unknown_caps(raw) {
            return Ok(spec);
        }
    }
    let inner = err.into_inner();
    Err(if path == "." || path.is_empty() {
        Error::config(format!("{origin}: {inner}"))
    } else {
        Error::config(format!("{origin}: {path}: {inner}"))
    })
}

/// The slow path of `parse_spec`: drop the capability names oci-spec does not know from every
/// set, warn about them on stderr, and parse again.
fn parse_dropping_unknown_caps(raw: &[u8]) -> Option<Spec> {
    let mut value: serde_json::Value = serde_json::from_slice(raw).ok()?;
    let caps = value.get_mut("process")?.get_mut("capabilities")?;
    if !drop_unknown_caps(caps) {
        return None;
    }
    serde_json::from_value(value).ok()
}

/// As runc and crun: capability names this runtime does not know (a newer kernel's, a typo)
/// are left out of every set of a `process.capabilities` object, with a warning on stderr,
/// rather than failing the container. Returns whether any was dropped.
pub fn drop_unknown_caps(caps: &mut serde_json::Value) -> bool {
    let Some(caps) = caps.as_object_mut() else {
        return false;
    };
    let mut unknown = Vec::new();
    for list in caps.values_mut().filter_map(|v| v.as_array_mut()) {
        list.retain(|c| {
            let known = serde_json::from_value::<oci_spec::runtime::Capability>(c.clone()).is_ok();
            if !known {
                unknown.push(c.as_str().unwrap_or("?").to_string());
            }
            known
        });
    }
    warn_unknown_caps(unknown)
}

/// The one warning for ignored capability names; returns whether there were any.
pub fn warn_unknown_caps(mut unknown: Vec<String>) -> bool {
    if unknown.is_empty() {
        return false;
    }
    unknown.sort();
    unknown.dedup();
    eprintln!("vessel-runtime: warning: ignoring unknown or unavailable capabilities: {unknown:?}");
    true
}

pub fn load_bundle(dir: &Path) -> Result<Bundle> {
    let dir = std::fs::canonicalize(dir).ctx(|| format!("bundle {}", dir.display()))?;
    let config = dir.join("config.json");
    let raw = std::fs::read(&config).ctx(|| format!("read {}", config.display()))?;
    let spec = parse_spec(&raw, "config.json")?;
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| Error::config("config.json: root: missing (the rootfs path is required)"))?;
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        dir.join(root.path())
    };
    let meta = std::fs::metadata(&rootfs).map_err(|e| {
        Error::config(format!(
            "config.json: root.path: {}: {e}",
            root.path().display()
        ))
    })?;
    if !meta.is_dir() {
        return Err(Error::config(format!(
            "config.json: root.path: {} is not a directory",
            root.path().display()
        )));
    }
    validate(&spec)?;
    Ok(Bundle {
        dir,
        spec,
        raw,
        rootfs,
    })
}

/// Container IDs become directory names and cgroup names: keep them to a safe alphabet.
pub fn validate_id(id: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidId {
            id: id.to_string(),
            reason,
        })
    };
    if id.is_empty() {
        return bad("must not be empty");
    }
    if id.len() > 1024 {
        return bad("longer than 1024 characters");
    }
    if id == "." || id == ".." {
        return bad("must not be . or ..");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'-' | b'.'))
    {
        return bad("only letters, digits, '_', '+', '-' and '.' are allowed");
    }
    Ok(())
}

pub fn ns_flag(t: LinuxNamespaceType) -> nix::sched::CloneFlags {
    use nix::sched::CloneFlags as F;
    match t {
        LinuxNamespaceType::Mount => F::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => F::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => F::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => F::CLONE_NEWIPC,
        LinuxNamespaceType::User => F::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => F::CLONE_NEWPID,
        LinuxNamespaceType::Network => F::CLONE_NEWNET,
        LinuxNamespaceType::Time => F::from_bits_retain(libc::CLONE_NEWTIME),
    }
}

pub fn ns_name(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

/// Checks that need no host access. Enumerations (namespace types, capabilities, rlimit
/// names, seccomp actions) are already checked by parsing into oci-spec's types.
pub fn validate(spec: &Spec) -> Result<()> {
    let version = spec.version();
    if !version.starts_with("1.") {
        return Err(Error::config(format!(
            "config.json: ociVersion: {version:?} is not supported (this runtime implements 1.x)"
        )));
    }
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::config("config.json: process: missing"))?;
    validate_process(process, "config.json: process")?;

    let linux = spec.linux().as_ref();
    let namespaces = linux.and_then(|l| l.namespaces().as_ref());
    let mut seen = HashSet::new();
    let mut new_ns = HashSet::new();
    for (i, ns) in namespaces.into_iter().flatten().enumerate() {
        if !seen.insert(ns.typ()) {
            return Err(Error::config(format!(
                "config.json: linux.namespaces[{i}]: {} namespace listed twice",
                ns_name(ns.typ())
            )));
        }
        if ns.path().is_none() {
            new_ns.insert(ns.typ());
        }
        if let Some(p) = ns.path() {
            if !p.is_absolute() {
                return Err(Error::config(format!(
                    "config.json: linux.namespaces[{i}].path: {} must be absolute",
                    p.display()
                )));
            }
        }
    }
    let has = |t| seen.contains(&t);
    // A namespace joined by path counts as the container's own, as with runc; one that turns
    // out to be the runtime's own is refused once it is opened (NsPlan::new).
    if spec.hostname().as_deref().is_some_and(|h| !h.is_empty()) && !has(LinuxNamespaceType::Uts) {
        return Err(Error::config(
            "config.json: hostname: setting a hostname needs a uts namespace of the container's own",
        ));
    }
    if spec.domainname().as_deref().is_some_and(|h| !h.is_empty()) && !has(LinuxNamespaceType::Uts)
    {
        return Err(Error::config(
            "config.json: domainname: setting a domainname needs a uts namespace of the container's own",
        ));
    }
    if let Some(linux) = linux {
        let maps = linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
            || linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty());
        if maps && !has(LinuxNamespaceType::User) {
            return Err(Error::config(
                "config.json: linux.uidMappings: mappings need a user namespace in linux.namespaces",
            ));
        }
        if new_ns.contains(&LinuxNamespaceType::User) && !maps {
            return Err(Error::config(
                "config.json: linux.uidMappings: a new user namespace needs uidMappings and gidMappings",
            ));
        }
        if linux.time_offsets().as_ref().is_some_and(|t| !t.is_empty()) {
            if !new_ns.contains(&LinuxNamespaceType::Time) {
                return Err(Error::config(
                    "config.json: linux.timeOffsets: offsets need a new time namespace",
                ));
            }
            for clock in linux.time_offsets().iter().flat_map(|t| t.keys()) {
                if clock != "monotonic" && clock != "boottime" {
                    return Err(Error::config(format!(
                        "config.json: linux.timeOffsets: unknown clock {clock:?} (monotonic or boottime)"
                    )));
                }
            }
        }
        for (key, _) in linux.sysctl().iter().flatten() {
            validate_sysctl(key, &seen)?;
        }
        if let Some(p) = linux.rootfs_propagation() {
            if !p.is_empty() && crate::mount_options::propagation_flag(p).is_none() {
                return Err(Error::config(format!(
                    "config.json: linux.rootfsPropagation: unknown mode {p:?}"
                )));
            }
        }
        if let Some(personality) = linux.personality() {
            use oci_spec::runtime::LinuxPersonalityDomain as D;
            if !matches!(personality.domain(), D::PerLinux | D::PerLinux32) {
                return Err(Error::config(
                    "config.json: linux.personality.domain: only LINUX and LINUX32 are supported",
                ));
            }
        }
    }
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        if !m.destination().is_absolute() {
            return Err(Error::config(format!(
                "config.json: mounts[{i}].destination: {} must be an absolute path",
                m.destination().display()
            )));
        }
        crate::mount_options::MountOptions::parse(m.options().as_deref().unwrap_or(&[]))
            .map_err(|e| Error::config(format!("config.json: mounts[{i}].options: {e}")))?;
    }
    Ok(())
}

pub fn validate_process(process: &oci_spec::runtime::Process, origin: &str) -> Result<()> {
    let args = process.args().as_deref().unwrap_or(&[]);
    if args.is_empty() {
        return Err(Error::config(format!(
            "{origin}.args: must name the program to run"
        )));
    }
    if !process.cwd().is_absolute() {
        return Err(Error::config(format!(
            "{origin}.cwd: {} must be an absolute path",
            process.cwd().display()
        )));
    }
    let mut seen = HashSet::new();
    for (i, r) in process.rlimits().iter().flatten().enumerate() {
        if !seen.insert(format!("{:?}", r.typ())) {
            return Err(Error::config(format!(
                "{origin}.rlimits[{i}]: {} listed twice",
                crate::process::rlimit_name(r.typ())
            )));
        }
        if r.soft() > r.hard() {
            return Err(Error::config(format!(
                "{origin}.rlimits[{i}]: soft limit {} is above hard limit {}",
                r.soft(),
                r.hard()
            )));
        }
    }
    for (i, e) in process.env().iter().flatten().enumerate() {
        if !e.contains('=') || e.starts_with('=') {
            return Err(Error::config(format!(
                "{origin}.env[{i}]: {e:?} is not NAME=value"
            )));
        }
    }
    Ok(())
}

/// The namespace a sysctl belongs to, if it is namespaced at all.
pub fn sysctl_namespace(key: &str) -> Option<LinuxNamespaceType> {
    const IPC: [&str; 8] = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    if IPC.contains(&key) || key.starts_with("fs.mqueue.") {
        Some(LinuxNamespaceType::Ipc)
    } else if key.starts_with("net.") {
        Some(LinuxNamespaceType::Network)
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        Some(LinuxNamespaceType::Uts)
    } else {
        None
    }
}

/// As runc: a sysctl is only allowed when the namespace it belongs to is the container's
/// (created, or joined by path: see NsPlan::new for a path that is the host's own), and
/// `kernel.hostname`, which has its own field, is refused as runc and crun do.
fn validate_sysctl(key: &str, namespaces: &HashSet<LinuxNamespaceType>) -> Result<()> {
    if key == "kernel.hostname" {
        return Err(Error::config(
            "config.json: linux.sysctl: \"kernel.hostname\" is not allowed: it conflicts with the \"hostname\" field",
        ));
    }
    match sysctl_namespace(key) {
        Some(ns) if namespaces.contains(&ns) => Ok(()),
        Some(ns) => Err(Error::config(format!(
            "config.json: linux.sysctl: {key:?} needs a {} namespace of the container's own",
            ns_name(ns)
        ))),
        None => Err(Error::config(format!(
            "config.json: linux.sysctl: {key:?} is not namespaced; setting it would change the host"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.2.0",
            "process": {"args": ["/bin/true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}
        })
    }

    fn check(v: serde_json::Value) -> Result<()> {
        let raw = serde_json::to_vec(&v).unwrap();
        validate(&parse_spec(&raw, "config.json")?)
    }

    #[test]
    fn ids() {
        assert!(validate_id("abc-1.2_x+y").is_ok());
        for bad in ["", "..", "a/b", "a b", "../x", &"x".repeat(2000)] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn minimal_spec_is_valid() {
        check(minimal()).unwrap();
    }

    #[test]
    fn unknown_namespace_names_the_field() {
        let mut v = minimal();
        v["linux"]["namespaces"][1]["type"] = "bogus".into();
        let e = check(v).unwrap_err().to_string();
        assert!(e.contains("linux.namespaces[1]"), "{e}");
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn unknown_capabilities_are_dropped_as_runc_does() {
        let mut v = minimal();
        v["process"]["capabilities"] =
            serde_json::json!({"bounding": ["CAP_CHOWN", "CAP_FLY"], "effective": ["CAP_FLY"]});
        let raw = serde_json::to_vec(&v).unwrap();
        let spec = parse_spec(&raw, "config.json").unwrap();
        let caps = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .as_ref()
            .unwrap();
        assert_eq!(caps.bounding().as_ref().unwrap().len(), 1);
        assert!(caps.effective().as_ref().unwrap().is_empty());
        // Anything else that is malformed still names its field.
        v["process"]["capabilities"] = serde_json::json!({"bounding": "CAP_CHOWN"});
        let e = check(v).unwrap_err().to_string();
        assert!(e.contains("process.capabilities.bounding"), "{e}");
    }

    #[test]
    fn unknown_rlimit_names_the_field() {
        let mut v = minimal();
        v["process"]["rlimits"] =
            serde_json::json!([{"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}]);
        let e = check(v).unwrap_err().to_string();
        assert!(e.contains("process.rlimits[0]"), "{e}");
    }

    #[test]
    fn semantic_errors() {
        let mut v = minimal();
        v["linux"]["namespaces"][1]["type"] = "pid".into();
        assert!(check(v).unwrap_err().to_string().contains("listed twice"));

        let mut v = minimal();
        v["hostname"] = "box".into();
        assert!(check(v).unwrap_err().to_string().contains("uts"));

        let mut v = minimal();
        v["linux"]["sysctl"] = serde_json::json!({"net.ipv4.ip_forward": "1"});
        assert!(check(v).unwrap_err().to_string().contains("net"));

        let mut v = minimal();
        v["linux"]["sysctl"] = serde_json::json!({"vm.swappiness": "1"});
        assert!(check(v).unwrap_err().to_string().contains("not namespaced"));

        let mut v = minimal();
        v["process"]["args"] = serde_json::json!([]);
        assert!(check(v).unwrap_err().to_string().contains("process.args"));

        let mut v = minimal();
        v["mounts"] = serde_json::json!([{"destination": "relative", "type": "tmpfs"}]);
        assert!(check(v)
            .unwrap_err()
            .to_string()
            .contains("mounts[0].destination"));

        let mut v = minimal();
        v["ociVersion"] = "2.0.0".into();
        assert!(check(v).unwrap_err().to_string().contains("ociVersion"));
    }

    #[test]
    fn malformed_json_is_reported() {
        let e = parse_spec(b"{\"ociVersion\": ", "config.json").unwrap_err();
        assert!(e.to_string().starts_with("config.json"), "{e}");
    }
}
