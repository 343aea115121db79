//! The container's cgroup filesystems.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

use super::mount::remount_bind;
use super::paths::mkdir_all;
use super::RootfsContext;
use crate::error::{Context, Result};
use crate::mount_options::MountOptions;
use crate::sys::{fd_path, open_in_root};

/// cgroup mounts. With a cgroup namespace the cgroup filesystems are mounted afresh (they show
/// the container's cgroup as their root); without one, the container's own cgroup directories
/// are bind-mounted, so the container never sees its siblings.
pub(super) fn mount_cgroup(
    root: BorrowedFd,
    dest: &Path,
    opts: &MountOptions,
    ctx: &RootfsContext,
) -> Result<()> {
    let hierarchies = host_cgroup_hierarchies()?;
    let own = own_cgroups()?;
    let flags = opts.flags
        & (MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC
            | MsFlags::MS_RDONLY
            | MsFlags::MS_RELATIME);
    let target = mkdir_all(root, dest)?;
    let unified_only = hierarchies.len() == 1
        && hierarchies[0].version == 2
        && hierarchies[0].mount_point == Path::new("/sys/fs/cgroup");
    if unified_only {
        let tp = fd_path(target.as_fd());
        return if ctx.new_cgroupns {
            mount(
                Some("cgroup2"),
                tp.as_str(),
                Some("cgroup2"),
                flags,
                None::<&str>,
            )
            .ctx(|| format!("mount cgroup2 on {}", dest.display()))
        } else {
            let src = join_cgroup(
                Path::new("/sys/fs/cgroup"),
                own.get("").map(String::as_str).unwrap_or("/"),
            );
            mount(
                Some(&src),
                tp.as_str(),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .ctx(|| format!("bind {} on {}", src.display(), dest.display()))?;
            remount_resolved(root, dest, flags)
        };
    }
    // v1 / hybrid: a tmpfs holding one directory per hierarchy.
    mount(
        Some("tmpfs"),
        fd_path(target.as_fd()).as_str(),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=755"),
    )
    .ctx(|| format!("mount tmpfs for cgroups on {}", dest.display()))?;
    for h in &hierarchies {
        let name = h.dir_name();
        let sub = dest.join(&name);
        let fd = mkdir_all(root, &sub)?;
        let tp = fd_path(fd.as_fd());
        let key = if h.version == 2 {
            String::new()
        } else {
            h.controllers.clone()
        };
        if ctx.new_cgroupns {
            let (fstype, data) = if h.version == 2 {
                ("cgroup2", None)
            } else {
                ("cgroup", Some(h.controllers.clone()))
            };
            // A fresh cgroup mount fails with EBUSY while another task (CRIU's cgroup
            // handling, seen here, for as long as a dump or restore) rebinds controllers:
            // retry briefly. On a hybrid host the unified hierarchy is extra (runc never
            // mounts it): if it stays busy, its directory is left empty rather than failing
            // the container; a v1 hierarchy must be mounted.
            let mut tries = 0;
            let mounted = loop {
                match mount(
                    Some("cgroup"),
                    tp.as_str(),
                    Some(fstype),
                    flags,
                    data.as_deref(),
                ) {
                    Err(Errno::EBUSY) if tries < 50 => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    r => break r,
                }
            };
            if h.version == 2 && mounted == Err(Errno::EBUSY) {
                continue;
            }
            mounted.ctx(|| format!("mount cgroup {name} on {}", sub.display()))?;
        } else {
            let within = own.get(&key).map(String::as_str).unwrap_or("/");
            let src = join_cgroup(&h.mount_point, within);
            mount(
                Some(&src),
                tp.as_str(),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .ctx(|| format!("bind {} on {}", src.display(), sub.display()))?;
            remount_resolved(root, &sub, flags)?;
        }
        // cpu,cpuacct mounted together also get "cpu" and "cpuacct" symlinks, as on the host.
        if name.contains(',') {
            for part in name.split(',') {
                let dir = mkdir_all(root, dest)?;
                let _ = nix::unistd::symlinkat(name.as_str(), Some(dir.as_raw_fd()), part);
            }
        }
    }
    if opts.flags.contains(MsFlags::MS_RDONLY) {
        let fd =
            open_in_root(root, dest, libc::O_PATH).ctx(|| format!("resolve {}", dest.display()))?;
        remount_bind(
            &fd_path(fd.as_fd()),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        )
        .ctx(|| format!("remount {} read-only", dest.display()))?;
    }
    Ok(())
}

/// Remount the mount now at `dest` (re-resolved: a descriptor taken before mounting points
/// at the directory underneath). Nothing to do without flags.
fn remount_resolved(root: BorrowedFd, dest: &Path, flags: MsFlags) -> Result<()> {
    if flags.is_empty() {
        return Ok(());
    }
    let fd =
        open_in_root(root, dest, libc::O_PATH).ctx(|| format!("resolve {}", dest.display()))?;
    remount_bind(&fd_path(fd.as_fd()), flags).ctx(|| format!("remount {}", dest.display()))
}

fn join_cgroup(mount_point: &Path, within: &str) -> PathBuf {
    mount_point.join(within.trim_start_matches('/'))
}

struct Hierarchy {
    version: u8,
    mount_point: PathBuf,
    /// v1: the superblock options naming the controllers ("cpu,cpuacct", "name=systemd").
    controllers: String,
}

impl Hierarchy {
    fn dir_name(&self) -> String {
        if self.version == 2 {
            return "unified".into();
        }
        self.controllers
            .strip_prefix("name=")
            .unwrap_or(&self.controllers)
            .to_string()
    }
}

/// The host's hierarchies as the cgroup manager detected them before the clone (no
/// mountinfo read here, on the init's hot path).
fn host_cgroup_hierarchies() -> Result<Vec<Hierarchy>> {
    Ok(vessel_cgroups::host_hierarchies()?
        .into_iter()
        .map(|h| Hierarchy {
            version: if h.controllers.is_some() { 1 } else { 2 },
            mount_point: h.mount,
            controllers: h.controllers.unwrap_or_default(),
        })
        .collect())
}

/// /proc/self/cgroup as a map from the controller list ("" for v2) to the path.
fn own_cgroups() -> Result<std::collections::HashMap<String, String>> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ctx(|| "read /proc/self/cgroup")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let _id = f.next()?;
            let ctl = f.next()?;
            let path = f.next()?;
            Some((ctl.to_string(), path.to_string()))
        })
        .collect())
}
