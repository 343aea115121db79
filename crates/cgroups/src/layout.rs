//! Which cgroup hierarchies the host mounts, read from /proc/self/mountinfo.

use std::collections::HashMap;
use std::path::PathBuf;

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

pub(crate) struct V1Hierarchy {
    pub controllers: Vec<String>,
    /// The controller list as /proc/self/cgroup prints it ("cpu,cpuacct", "name=systemd").
    pub key: String,
    pub mount: PathBuf,
}

pub(crate) struct Mounts {
    pub v1: Vec<V1Hierarchy>,
    pub unified: Option<PathBuf>,
}

impl Mounts {
    pub fn read() -> Result<Mounts> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(io("read /proc/self/mountinfo"))?;
        Ok(Self::parse(&text))
    }

    pub fn parse(text: &str) -> Mounts {
        let mut v1: Vec<V1Hierarchy> = Vec::new();
        let mut unified = None;
        for line in text.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mount) = pre.split(' ').nth(4) else {
                continue;
            };
            let mut post = post.split(' ');
            let fstype = post.next().unwrap_or("");
            let super_opts = post.nth(1).unwrap_or("");
            match fstype {
                "cgroup2" if unified.is_none() => unified = Some(PathBuf::from(mount)),
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
                    });
                }
                _ => {}
            }
        }
        Mounts { v1, unified }
    }

    pub fn layout(&self) -> Layout {
        match (self.v1.is_empty(), self.unified.is_some()) {
            (true, _) => Layout::V2,
            (false, true) => Layout::Hybrid,
            (false, false) => Layout::V1,
        }
    }
}

/// /proc/self/cgroup: hierarchy key ("" for v2) → our path in it.
pub(crate) fn own_cgroups() -> Result<HashMap<String, String>> {
    let text =
        std::fs::read_to_string("/proc/self/cgroup").map_err(io("read /proc/self/cgroup"))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let _ = f.next()?;
            Some((f.next()?.to_string(), f.next()?.to_string()))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
33 30 0:29 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
34 30 0:30 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
35 30 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct,release_agent=/x
";

    #[test]
    fn parses_hybrid() {
        let m = Mounts::parse(HYBRID);
        assert_eq!(m.layout(), Layout::Hybrid);
        assert_eq!(
            m.unified.as_deref(),
            Some(std::path::Path::new("/sys/fs/cgroup/unified"))
        );
        let keys: Vec<&str> = m.v1.iter().map(|h| h.key.as_str()).collect();
        assert_eq!(keys, ["cpu", "memory", "name=systemd", "cpu,cpuacct"]);
    }

    #[test]
    fn parses_pure_v2_and_v1() {
        let m = Mounts::parse("30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n");
        assert_eq!(m.layout(), Layout::V2);
        let m = Mounts::parse("31 30 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n");
        assert_eq!(m.layout(), Layout::V1);
    }
}
