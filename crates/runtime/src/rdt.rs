//! linux.intelRdt through the resctrl filesystem, as runc does: the container's init goes
//! into a resctrl group — its own, named after the container, or the shared one `closID`
//! names — whose schemata (L3 cache and memory bandwidth allocation) are written first.
//! A host without resctrl gets a clear refusal: the limits are never silently dropped.

use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxIntelRdt;

use crate::error::{Context, Error, Result};

pub const RESCTRL: &str = "/sys/fs/resctrl";

/// Whether resctrl is mounted at `root` (its `info` directory exists only when it is).
pub fn available_at(root: &Path) -> bool {
    root.join("info").is_dir()
}

pub fn available() -> bool {
    available_at(Path::new(RESCTRL))
}

/// The resctrl group a container goes into, checked before anything is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub dir: PathBuf,
    /// Named after the container, so removed with it. A group named by closID is shared
    /// (and likely managed by someone else): it stays, as runc leaves it.
    pub owned: bool,
    schemata: Vec<String>,
}

impl Group {
    /// linux.intelRdt → the group to apply, refused with the field's name when `root` has
    /// no resctrl or lacks what the schemata need.
    #[allow(deprecated)] // enableCMT/enableMBM: still in configs written for runc 1.1.
    pub fn plan(rdt: Option<&LinuxIntelRdt>, id: &str, root: &Path) -> Result<Option<Group>> {
        let Some(rdt) = rdt else { return Ok(None) };
        let monitoring = [
            ("enableMonitoring", rdt.enable_monitoring()),
            ("enableCMT", rdt.enable_cmt()),
            ("enableMBM", rdt.enable_mbm()),
        ];
        if let Some((name, _)) = monitoring.iter().find(|(_, v)| *v == &Some(true)) {
            return Err(Error::config(format!(
                "linux.intelRdt.{name}: resctrl monitoring groups are not supported by \
                 vessel-runtime"
            )));
        }
        if !available_at(root) {
            let known = std::fs::read_to_string("/proc/filesystems").is_ok_and(|f| {
                f.lines()
                    .any(|l| l.split_whitespace().last() == Some("resctrl"))
            });
            return Err(Error::config(format!(
                "linux.intelRdt: requested, but resctrl is not mounted at {} ({})",
                root.display(),
                if known {
                    "mount -t resctrl resctrl /sys/fs/resctrl"
                } else {
                    "this kernel or CPU has no Intel RDT / AMD QoS support"
                }
            )));
        }
        let clos_id = rdt.clos_id().as_deref();
        if let Some(c) = clos_id {
            if c.is_empty() || c.contains('/') || c == "." || c == ".." || c == "info" {
                return Err(Error::config(format!(
                    "linux.intelRdt.closID {c:?}: not a resctrl group name"
                )));
            }
        }
        let mut schemata = Vec::new();
        match rdt.schemata().as_ref().filter(|s| !s.is_empty()) {
            Some(lines) => schemata.extend(lines.iter().cloned()),
            None => {
                for (field, value, info) in [
                    ("l3CacheSchema", rdt.l3_cache_schema(), "L3"),
                    ("memBwSchema", rdt.mem_bw_schema(), "MB"),
                ] {
                    let Some(v) = value.as_deref().filter(|v| !v.is_empty()) else {
                        continue;
                    };
                    if !root.join("info").join(info).is_dir() {
                        return Err(Error::config(format!(
                            "linux.intelRdt.{field} {v:?}: this host's resctrl has no {info} \
                             allocation (no {})",
                            root.join("info").join(info).display()
                        )));
                    }
                    schemata.push(v.to_string());
                }
            }
        }
        if let Some(bad) = schemata.iter().find(|l| l.contains('\n')) {
            return Err(Error::config(format!(
                "linux.intelRdt: schema {bad:?} spans lines; give one line per entry"
            )));
        }
        Ok(Some(Group {
            dir: root.join(clos_id.unwrap_or(id)),
            owned: clos_id.is_none(),
            schemata,
        }))
    }

    /// Create the group (joining an existing one is fine), write its schemata, put `pid`
    /// into it. Before the container runs any code of its own.
    pub fn apply(&self, pid: i32) -> Result<()> {
        match std::fs::create_dir(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(e).ctx(|| format!("linux.intelRdt: create {}", self.dir.display()))
            }
        }
        let schemata = self.dir.join("schemata");
        for line in &self.schemata {
            std::fs::write(&schemata, format!("{line}\n"))
                .ctx(|| format!("linux.intelRdt: write {line:?} to {}", schemata.display()))?;
        }
        let tasks = self.dir.join("tasks");
        std::fs::write(&tasks, pid.to_string())
            .ctx(|| format!("linux.intelRdt: add pid {pid} to {}", tasks.display()))
    }
}

/// Remove a container's own resctrl group (its tasks fall back to the default group).
pub fn remove(dir: &Path) -> Result<()> {
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).ctx(|| format!("remove resctrl group {}", dir.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rdt(json: serde_json::Value) -> LinuxIntelRdt {
        serde_json::from_value(json).unwrap()
    }

    fn err(r: Result<Option<Group>>) -> String {
        r.map(|_| ()).unwrap_err().to_string()
    }

    #[test]
    fn refused_without_resctrl() {
        let root = tempfile::tempdir().unwrap();
        let e = err(Group::plan(
            Some(&rdt(serde_json::json!({"l3CacheSchema": "L3:0=f"}))),
            "c1",
            root.path(),
        ));
        assert!(
            e.contains("linux.intelRdt") && e.contains("not mounted"),
            "{e}"
        );
        assert_eq!(Group::plan(None, "c1", root.path()).unwrap(), None);
    }

    #[test]
    fn planned_and_applied_in_a_resctrl_tree() {
        // A directory laid out like resctrl: what is written where can be read back.
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("info/L3")).unwrap();
        let want = |j| Group::plan(Some(&rdt(j)), "c1", root.path());

        let e = err(want(serde_json::json!({"memBwSchema": "MB:0=50"})));
        assert!(e.contains("memBwSchema") && e.contains("no MB"), "{e}");
        let e = err(want(serde_json::json!({"closID": "../x"})));
        assert!(e.contains("closID"), "{e}");
        let e = err(want(serde_json::json!({"enableMonitoring": true})));
        assert!(e.contains("enableMonitoring"), "{e}");

        let g = want(serde_json::json!({"l3CacheSchema": "L3:0=f"}))
            .unwrap()
            .unwrap();
        assert_eq!(g.dir, root.path().join("c1"));
        assert!(g.owned);
        g.apply(4242).unwrap();
        assert_eq!(
            std::fs::read_to_string(g.dir.join("schemata")).unwrap(),
            "L3:0=f\n"
        );
        assert_eq!(
            std::fs::read_to_string(g.dir.join("tasks")).unwrap(),
            "4242"
        );

        let shared = want(serde_json::json!({"closID": "gold", "schemata": ["L3:0=3"]}))
            .unwrap()
            .unwrap();
        assert_eq!(shared.dir, root.path().join("gold"));
        assert!(!shared.owned);
        shared.apply(7).unwrap();
        assert_eq!(
            std::fs::read_to_string(shared.dir.join("schemata")).unwrap(),
            "L3:0=3\n"
        );
        remove(&root.path().join("missing")).unwrap();
    }
}
