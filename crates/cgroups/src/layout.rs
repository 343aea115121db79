//! Which cgroup hierarchies the host mounts. Read once per process and cached: `new` is on
//! the container-start hot path. A pure v2 host is recognised by one statfs of
//! /sys/fs/cgroup (CGROUP2_SUPER_MAGIC) without reading mountinfo at all; otherwise
//! /proc/self/mountinfo is parsed once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::{io, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Only v1 hierarchies.
    V1,
    /// v1 controllers plus a cgroup2 mount (usually /sys/fs/cgroup/unified).
    Hybrid,
    /// Only the unified hierarchy at /sys/fs/cgroup.
    V2,
}

#[derive(Debug)]
pub(crate) struct V1Hierarchy {
    pub controllers: Vec<String>,
    /// The controller list as /proc/self/cgroup prints it ("cpu,cpuacct", "name=systemd").
    pub key: String,
    pub mount: PathBuf,
    /// The cgroup this mount shows as its root ("/" unless we run in a cgroup namespace
    /// or a bind-mounted sub-hierarchy); our own cgroup path is relative to it.
    pub root: String,
}

#[derive(Debug)]
pub(crate) struct Mounts {
    pub v1: Vec<V1Hierarchy>,
    pub unified: Option<PathBuf>,
    pub unified_root: String,
    /// Hybrid only: the controllers bound to the cgroup2 mount (e.g. hugetlb), from its root
    /// cgroup.controllers, read once.
    pub unified_controllers: Vec<String>,
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

static MOUNTS: OnceLock<Mounts> = OnceLock::new();

impl Mounts {
    /// The host's hierarchies, detected on first use.
    pub fn get() -> Result<&'static Mounts> {
        if let Some(m) = MOUNTS.get() {
            return Ok(m);
        }
        let m = Self::detect()?;
        Ok(MOUNTS.get_or_init(|| m))
    }

    fn detect() -> Result<Mounts> {
        if is_cgroup2(Path::new(CGROUP_ROOT)) {
            return Ok(Mounts {
                v1: Vec::new(),
                unified: Some(PathBuf::from(CGROUP_ROOT)),
                unified_root: "/".into(),
                unified_controllers: Vec::new(),
            });
        }
        let text = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(io("read /proc/self/mountinfo"))?;
        let mut m = Self::parse(&text);
        if let Some(u) = &m.unified {
            m.unified_controllers = std::fs::read_to_string(u.join("cgroup.controllers"))
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect();
        }
        Ok(m)
    }

    pub fn parse(text: &str) -> Mounts {
        let mut v1: Vec<V1Hierarchy> = Vec::new();
        let mut unified = None;
        let mut unified_root = String::from("/");
        for line in text.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let mut pre = pre.split(' ');
            let (Some(root), Some(mount)) = (pre.nth(3), pre.next()) else {
                continue;
            };
            let mut post = post.split(' ');
            let fstype = post.next().unwrap_or("");
            let super_opts = post.nth(1).unwrap_or("");
            match fstype {
                "cgroup2" if unified.is_none() => {
                    unified = Some(PathBuf::from(mount));
                    unified_root = root.to_string();
                }
                "cgroup" => {
                    let controllers: Vec<String> = super_opts
                        .split(',')
                        .filter(|o| {
                            !matches!(*o, "rw" | "ro" | "clone_children" | "noprefix" | "xattr")
                                && !o.starts_with("release_agent")
                                && !o.starts_with("cpuset_v2_mode")
                        })
                        .map(str::to_string)
                        .collect();
                    // The same hierarchy can be mounted twice (bind mounts): keep the first.
                    if controllers.is_empty() || v1.iter().any(|h| h.controllers == controllers) {
                        continue;
                    }
                    // /proc/self/cgroup lists controllers in kernel order, which is also the
                    // superblock option order.
                    let key = controllers.join(",");
                    v1.push(V1Hierarchy {
                        controllers,
                        key,
                        mount: PathBuf::from(mount),
                        root: root.to_string(),
                    });
                }
                _ => {}
            }
        }
        Mounts {
            v1,
            unified,
            unified_root,
            unified_controllers: Vec::new(),
        }
    }

    pub fn layout(&self) -> Layout {
        match (self.v1.is_empty(), self.unified.is_some()) {
            (true, _) => Layout::V2,
            (false, true) => Layout::Hybrid,
            (false, false) => Layout::V1,
        }
    }
}

/// A cgroup hierarchy the host mounts: what a container's /sys/fs/cgroup is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostHierarchy {
    pub mount: PathBuf,
    /// v1: the controllers as the superblock options list them ("cpu,cpuacct",
    /// "name=systemd"); `None` for the unified (cgroup2) hierarchy.
    pub controllers: Option<String>,
}

/// The host's hierarchies, from the same once-per-process detection the manager uses — so a
/// process forked after `CgroupManager::new` (the container's init) reads no mountinfo.
pub fn host_hierarchies() -> Result<Vec<HostHierarchy>> {
    let m = Mounts::get()?;
    let mut out: Vec<HostHierarchy> =
        m.v1.iter()
            .map(|h| HostHierarchy {
                mount: h.mount.clone(),
                controllers: Some(h.key.clone()),
            })
            .collect();
    if let Some(u) = &m.unified {
        out.push(HostHierarchy {
            mount: u.clone(),
            controllers: None,
        });
    }
    Ok(out)
}

fn is_cgroup2(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct we own; the path is NUL-terminated.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == CGROUP2_SUPER_MAGIC
    }
}

/// /proc/self/cgroup: hierarchy key ("" for v2) → our path in it. Read only for relative
/// cgroupsPaths.
pub(crate) fn own_cgroups() -> Result<HashMap<String, String>> {
    let text =
        std::fs::read_to_string("/proc/self/cgroup").map_err(io("read /proc/self/cgroup"))?;
    Ok(parse_own(&text))
}

fn parse_own(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let _ = f.next()?;
            Some((f.next()?.to_string(), f.next()?.to_string()))
        })
        .collect()
}

/// Our own cgroup path `own` as seen below a mount whose root is `root`, without the
/// leading "/" (so it can be joined to the mount point).
pub(crate) fn below_root<'a>(own: &'a str, root: &str) -> &'a str {
    let root = root.trim_end_matches('/');
    let rel = match own.strip_prefix(root) {
        Some(r) if r.is_empty() || r.starts_with('/') => r,
        _ => own,
    };
    rel.trim_start_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
33 30 0:29 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
34 30 0:30 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
35 30 0:31 /docker/abc /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct,release_agent=/x
36 30 0:31 / /mnt/again rw,relatime - cgroup cgroup rw,cpu,cpuacct
";

    #[test]
    fn parses_hybrid() {
        let m = Mounts::parse(HYBRID);
        assert_eq!(m.layout(), Layout::Hybrid);
        assert_eq!(
            m.unified.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
        let keys: Vec<&str> = m.v1.iter().map(|h| h.key.as_str()).collect();
        assert_eq!(keys, ["cpu", "memory", "name=systemd", "cpu,cpuacct"]);
        assert_eq!(m.v1[3].root, "/docker/abc");
        assert_eq!(m.v1[3].mount, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
    }

    #[test]
    fn parses_pure_v2_and_v1() {
        let m = Mounts::parse("30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n");
        assert_eq!(m.layout(), Layout::V2);
        let m = Mounts::parse("31 30 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n");
        assert_eq!(m.layout(), Layout::V1);
    }

    #[test]
    fn own_cgroup_paths() {
        let own = parse_own("12:cpu,cpuacct:/user.slice\n1:name=systemd:/x/y\n0::/init.scope\n");
        assert_eq!(own["cpu,cpuacct"], "/user.slice");
        assert_eq!(own["name=systemd"], "/x/y");
        assert_eq!(own[""], "/init.scope");
        assert_eq!(below_root("/docker/abc/sub", "/docker/abc"), "sub");
        assert_eq!(below_root("/docker/abc", "/docker/abc"), "");
        assert_eq!(below_root("/docker/abcd", "/docker/abc"), "docker/abcd");
        assert_eq!(below_root("/user.slice", "/"), "user.slice");
    }
}
