//! One cgroup manager for v1, hybrid and v2 hosts.
//!
//! The layout is read once from /proc/self/mountinfo; each operation then touches only the
//! files it needs. Resources are validated before anything is written (validate, then apply),
//! and every error names the resource field, the value and the file.
//!
//! Call order for a container start: `new` → `validate` (before any host change) → `create`
//! → `apply` → either `v2_dir_fd` for clone3(CLONE_INTO_CGROUP) on v2, or `add_task` with
//! the child's pid (v1/hybrid, and exec'd processes everywhere). `update` is `apply` again.
//! Teardown: `kill_all(SIGKILL)` then `remove` (which retries while processes exit).

mod devices;
mod fs;
mod layout;
mod oom;
mod resources;
mod stats;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

pub use layout::{host_hierarchies, HostHierarchy, Layout};
pub use oom::OomWatch;
pub use stats::Stats;

use layout::Mounts;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A resource value or cgroupsPath that is invalid; names the field.
    #[error("{0}")]
    Invalid(String),
    /// A resource this host cannot apply (controller missing, v1-only on v2, ...).
    #[error("{0}")]
    Unsupported(String),
    #[error("{context}: {err}")]
    Io {
        context: String,
        err: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |err| Error::Io { context, err }
}

/// A container's cgroup in every hierarchy the host mounts.
#[derive(Debug, Clone)]
pub struct CgroupManager {
    path: PathBuf,
    layout: Layout,
    /// v1: (controllers of the hierarchy, the container's directory in it).
    v1: Vec<(Vec<String>, PathBuf)>,
    /// The container's directory in the unified hierarchy (v2, or hybrid's cgroup2 mount).
    unified: Option<PathBuf>,
    /// Hybrid: controllers bound to the cgroup2 mount (cached for the process).
    unified_controllers: &'static [String],
}

/// Whether a v2 cgroup (or, before it exists, its parent) lists `controller` in
/// cgroup.controllers.
fn offers(dir: &Path, controller: &str) -> bool {
    let parent = dir.parent().unwrap_or(dir);
    [dir, parent]
        .iter()
        .find_map(|d| std::fs::read_to_string(d.join("cgroup.controllers")).ok())
        .is_some_and(|s| s.split_whitespace().any(|c| c == controller))
}

/// linux.cgroupsPath → the path below a hierarchy root (or below our own cgroup), checked
/// component by component: no "..", ".", or empty components, no systemd "slice:prefix:name".
fn check_path(cgroups_path: &Path) -> Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = cgroups_path.as_os_str().as_bytes();
    let text = String::from_utf8_lossy(bytes);
    let bad = |why: &str| Error::Invalid(format!("linux.cgroupsPath {text:?}: {why}"));
    if !cgroups_path.is_absolute() && text.split(':').count() == 3 {
        return Err(bad(
            "the systemd form slice:prefix:name needs the systemd cgroup driver, which this manager does not provide",
        ));
    }
    let body = bytes.strip_prefix(b"/").unwrap_or(bytes);
    if body.is_empty() {
        return Err(bad(
            "names the root cgroup; give the container a cgroup of its own",
        ));
    }
    let mut rel = PathBuf::new();
    for c in body.split(|b| *b == b'/') {
        match c {
            b"" => {
                return Err(bad(
                    "must not contain empty components (\"//\" or a trailing \"/\")",
                ))
            }
            b".." => return Err(bad("must not contain \"..\"")),
            b"." => return Err(bad("must not contain \".\"")),
            _ => rel.push(std::ffi::OsStr::from_bytes(c)),
        }
    }
    Ok(rel)
}

/// A sub-cgroup path for `sub_cgroup`: relative to the container's cgroup (a leading "/"
/// is allowed and means the same), no ".." or "." components. Empty means the container's
/// cgroup itself.
fn check_sub_path(sub: &str) -> std::result::Result<PathBuf, &'static str> {
    let mut rel = PathBuf::new();
    for c in sub.split('/').filter(|c| !c.is_empty()) {
        match c {
            ".." => return Err("is not a sub-cgroup of the container's cgroup (\"..\")"),
            "." => return Err("must not contain \".\""),
            _ => rel.push(c),
        }
    }
    Ok(rel)
}

impl CgroupManager {
    /// `cgroups_path` is linux.cgroupsPath: absolute paths are relative to each hierarchy's
    /// root, relative ones to the calling process's own cgroup (as runc).
    pub fn new(cgroups_path: &Path) -> Result<CgroupManager> {
        let rel = check_path(cgroups_path)?;
        let mounts = Mounts::get()?;
        let own = if cgroups_path.is_absolute() {
            None
        } else {
            Some(layout::own_cgroups()?)
        };
        // Absolute: below the hierarchy's mount point. Relative: below our own cgroup in it.
        let place = |key: &str, mount: &Path, root: &str| -> PathBuf {
            let base = own
                .as_ref()
                .and_then(|o| o.get(key))
                .map(|p| layout::below_root(p, root))
                .unwrap_or_default();
            mount.join(base).join(&rel)
        };
        let v1 = mounts
            .v1
            .iter()
            .map(|h| (h.controllers.clone(), place(&h.key, &h.mount, &h.root)))
            .collect();
        let unified = mounts
            .unified
            .as_ref()
            .map(|m| place("", m, &mounts.unified_root));
        Ok(CgroupManager {
            path: cgroups_path.to_path_buf(),
            layout: mounts.layout(),
            v1,
            unified,
            unified_controllers: &mounts.unified_controllers,
        })
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The container's directory in the hierarchy holding `controller` (v1/hybrid), or in
    /// the unified hierarchy (v2, or hybrid controllers bound to cgroup2 such as hugetlb).
    pub(crate) fn dir_for(&self, controller: &str) -> Option<&Path> {
        if let Some((_, d)) = self
            .v1
            .iter()
            .find(|(c, _)| c.iter().any(|x| x == controller))
        {
            return Some(d);
        }
        let u = self.unified.as_deref()?;
        if self.layout == Layout::V2 {
            // Only controllers the unified hierarchy really offers here: v1-only ones
            // (net_cls, net_prio, ...) must be refused by name, not written into thin air.
            return offers(u, controller).then_some(u);
        }
        if self.unified_controllers.iter().any(|c| c == controller) {
            return Some(u);
        }
        None
    }

    pub(crate) fn unified_dir(&self) -> Option<&Path> {
        self.unified.as_deref()
    }

    fn all_dirs(&self) -> impl Iterator<Item = &Path> {
        self.v1
            .iter()
            .map(|(_, d)| d.as_path())
            .chain(self.unified.as_deref())
    }

    pub fn validate(res: &oci_spec::runtime::LinuxResources, layout: Layout) -> Result<()> {
        resources::validate(res, layout)
    }

    /// mkdir -p in every hierarchy; joining an existing cgroup is fine.
    pub fn create(&self) -> Result<()> {
        for (controllers, dir) in &self.v1 {
            fs::mkdir_p(dir)?;
            if controllers.iter().any(|c| c == "cpuset") {
                fs::init_cpuset(dir)?;
            }
        }
        if let Some(u) = &self.unified {
            fs::mkdir_p(u)?;
            fs::enable_controllers(u)?;
        }
        Ok(())
    }

    pub fn apply(&self, res: &oci_spec::runtime::LinuxResources) -> Result<()> {
        resources::apply(self, res)
    }

    /// Move process `pid` into the cgroup in every hierarchy.
    pub fn add_task(&self, pid: i32) -> Result<()> {
        for dir in self.all_dirs() {
            fs::write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Move process `pid` into the cgroup in the v1 hierarchies only: its unified cgroup
    /// was chosen by clone3(CLONE_INTO_CGROUP).
    pub fn add_task_v1(&self, pid: i32) -> Result<()> {
        for (_, dir) in &self.v1 {
            fs::write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The calling thread moves itself into the cgroup in the v1 hierarchies (writes "0" to
    /// `tasks`). The kernel needs no threadgroup lock when a thread moves itself, so unlike
    /// a PID written into cgroup.procs — whose lock waits for an RCU grace period when
    /// nothing else holds it, ~10 ms — this is a plain write. The caller must be
    /// single-threaded, for `tasks` moves one thread, not the process.
    pub fn join_v1_self(&self) -> Result<()> {
        for (_, dir) in &self.v1 {
            fs::write(&dir.join("tasks"), "0")?;
        }
        Ok(())
    }

    /// The container's directory in the unified hierarchy (pure v2, or the cgroup2 mount of
    /// a hybrid host) as a directory fd, for clone3(CLONE_INTO_CGROUP). None on pure v1.
    pub fn unified_dir_fd(&self) -> Result<Option<OwnedFd>> {
        let Some(dir) = self.unified.as_ref() else {
            return Ok(None);
        };
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags_dir()
            .open(dir)
            .map_err(io(format!("open {}", dir.display())))?;
        Ok(Some(f.into()))
    }

    pub fn freeze(&self) -> Result<()> {
        self.set_frozen(true)
    }

    pub fn thaw(&self) -> Result<()> {
        self.set_frozen(false)
    }

    fn set_frozen(&self, frozen: bool) -> Result<()> {
        if self.layout == Layout::V2 {
            let dir = self
                .unified
                .as_ref()
                .ok_or_else(|| Error::Unsupported("no unified hierarchy".into()))?;
            fs::write(&dir.join("cgroup.freeze"), if frozen { "1" } else { "0" })?;
            return fs::wait_until(|| Ok(self.is_frozen()? == frozen), "cgroup.freeze");
        }
        let dir = self.dir_for("freezer").ok_or_else(|| {
            Error::Unsupported("the freezer cgroup controller is not mounted".into())
        })?;
        let want = if frozen { "FROZEN" } else { "THAWED" };
        fs::write(&dir.join("freezer.state"), want)?;
        fs::wait_until(
            || {
                let now = fs::read(&dir.join("freezer.state"))?;
                if now.trim() == want {
                    return Ok(true);
                }
                // Writing again nudges a FREEZING cgroup along (runc does the same).
                let _ = fs::write(&dir.join("freezer.state"), want);
                Ok(false)
            },
            "freezer.state",
        )
    }

    pub fn is_frozen(&self) -> Result<bool> {
        if self.layout == Layout::V2 {
            let dir = match &self.unified {
                Some(d) => d,
                None => return Ok(false),
            };
            let events = match fs::read(&dir.join("cgroup.events")) {
                Ok(e) => e,
                Err(_) => return Ok(false),
            };
            return Ok(events.lines().any(|l| l.trim() == "frozen 1"));
        }
        match self.dir_for("freezer") {
            Some(d) => Ok(fs::read(&d.join("freezer.state"))
                .map(|s| s.trim() == "FROZEN")
                .unwrap_or(false)),
            None => Ok(false),
        }
    }

    /// Every process in the cgroup and its descendants.
    pub fn pids(&self) -> Result<Vec<i32>> {
        let dir = self
            .dir_for("pids")
            .or_else(|| self.dir_for("freezer"))
            .or(self.unified.as_deref())
            .or_else(|| self.v1.first().map(|(_, d)| d.as_path()))
            .ok_or_else(|| Error::Unsupported("no cgroup hierarchy is mounted".into()))?;
        let mut out = Vec::new();
        fs::collect_pids(dir, &mut out)?;
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    pub fn kill_all(&self, signal: i32) -> Result<()> {
        // Signal 0 only asks whether the processes exist: nothing to freeze for.
        if signal == 0 {
            for pid in self.pids()? {
                // SAFETY: plain kill(2) with signal 0, which delivers nothing.
                unsafe { libc::kill(pid, 0) };
            }
            return Ok(());
        }
        if signal == libc::SIGKILL {
            if let Some(u) = &self.unified {
                let kill = u.join("cgroup.kill");
                if self.layout == Layout::V2 && kill.exists() {
                    return fs::write(&kill, "1");
                }
            }
        }
        // Freeze first so no process can fork a child we would miss.
        let frozen = self.freeze().is_ok();
        let pids = self.pids()?;
        for pid in pids {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid, signal) };
        }
        if frozen {
            self.thaw()?;
        }
        Ok(())
    }

    /// This cgroup with some of its hierarchies replaced by existing sub-cgroups of them,
    /// for a process that is to run in a sub-cgroup of the container's (runc's
    /// `exec --cgroup`). Each entry is (controllers, path below the container's cgroup);
    /// no controllers means every hierarchy. Paths must stay below the container's cgroup
    /// and must exist: nothing is created.
    pub fn sub_cgroup(&self, subs: &[(Vec<String>, String)]) -> Result<CgroupManager> {
        let mut out = self.clone();
        for (controllers, sub) in subs {
            let shown = if controllers.is_empty() {
                sub.clone()
            } else {
                format!("{}:{sub}", controllers.join(","))
            };
            let bad = |why: String| Error::Invalid(format!("--cgroup {shown:?}: {why}"));
            let rel = check_sub_path(sub).map_err(|why| bad(why.into()))?;
            if controllers.is_empty() {
                for (_, dir) in &mut out.v1 {
                    dir.push(&rel);
                }
                if let Some(u) = &mut out.unified {
                    u.push(&rel);
                }
                continue;
            }
            if self.layout == Layout::V2 {
                return Err(bad(
                    "cgroup v2 has a single hierarchy: give the sub-cgroup without a \
                     controller prefix"
                        .into(),
                ));
            }
            for c in controllers {
                let base = self.dir_for(c).ok_or_else(|| {
                    bad(format!(
                        "unknown controller {c:?} (this host's hierarchies: {})",
                        self.v1
                            .iter()
                            .map(|(cs, _)| cs.join(","))
                            .collect::<Vec<_>>()
                            .join(" ")
                    ))
                })?;
                let target = base.join(&rel);
                if let Some((_, d)) = out.v1.iter_mut().find(|(cs, _)| cs.iter().any(|x| x == c)) {
                    *d = target;
                } else if let Some(u) = &mut out.unified {
                    *u = target;
                }
            }
        }
        for dir in out.all_dirs() {
            if !dir.is_dir() {
                return Err(Error::Invalid(format!(
                    "--cgroup: the sub-cgroup {} does not exist (it is joined, not created)",
                    dir.display()
                )));
            }
        }
        Ok(out)
    }

    pub fn stats(&self) -> Result<Stats> {
        stats::collect(self)
    }

    /// rmdir in every hierarchy. Processes that are still exiting keep a cgroup busy for a
    /// moment: retry briefly. A cgroup that is already gone is fine.
    pub fn remove(&self) -> Result<()> {
        for dir in self.all_dirs() {
            fs::rmdir_retrying(dir)?;
        }
        Ok(())
    }
}

trait DirFlags {
    fn custom_flags_dir(&mut self) -> &mut Self;
}

impl DirFlags for std::fs::OpenOptions {
    fn custom_flags_dir(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
    }
}

#[cfg(test)]
mod tests {
    use super::check_path;
    use std::path::{Path, PathBuf};

    #[test]
    fn sub_cgroup_paths() {
        use super::check_sub_path;
        assert_eq!(check_sub_path("a/b").ok(), Some(PathBuf::from("a/b")));
        assert_eq!(check_sub_path("/a//b/").ok(), Some(PathBuf::from("a/b")));
        assert_eq!(check_sub_path("").ok(), Some(PathBuf::new()));
        assert!(check_sub_path("../x").unwrap_err().contains(".."));
        assert!(check_sub_path("a/../../x").is_err());
        assert!(check_sub_path("a/./b").is_err());
    }

    #[test]
    fn cgroups_path_checks() {
        assert_eq!(
            check_path(Path::new("/a/b")).ok(),
            Some(PathBuf::from("a/b"))
        );
        assert_eq!(
            check_path(Path::new("a/b")).ok(),
            Some(PathBuf::from("a/b"))
        );
        for (bad, why) in [
            ("/a/../b", "\"..\""),
            ("/a//b", "empty"),
            ("/a/b/", "empty"),
            ("/", "root"),
            ("", "root"),
            ("/a/./b", "\".\""),
            ("system.slice:vessel:abc", "systemd"),
        ] {
            let e = check_path(Path::new(bad)).map(|_| ()).err();
            let msg = e.map(|e| e.to_string()).unwrap_or_default();
            assert!(
                msg.contains(why) && msg.contains("cgroupsPath"),
                "{bad}: {msg}"
            );
        }
    }
}
