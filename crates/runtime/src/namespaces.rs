//! Which namespaces a container creates and which it joins, and how: the plan is made in the
//! parent (validate, open and type-check every joined namespace) so the child only acts.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sched::{setns, unshare, CloneFlags};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::{Context, Error, Result};
use crate::spec::{ns_flag, ns_name};
use crate::sys;

pub const CLONE_NEWTIME: CloneFlags = CloneFlags::from_bits_retain(libc::CLONE_NEWTIME);

pub struct NsPlan {
    /// Namespaces created by the clone that makes the init (fast path) or by the second clone
    /// (slow path). Never includes time (see `new_time`).
    pub clone_flags: CloneFlags,
    /// Namespaces to join, user first, each with its verified descriptor.
    pub joined: Vec<(LinuxNamespaceType, OwnedFd)>,
    pub new_user: bool,
    /// cgroup v1 has no CLONE_INTO_CGROUP: the init unshares its cgroup namespace only after
    /// the parent has moved it into its cgroup, so the namespace is rooted there.
    pub deferred_cgroupns: bool,
    /// A new time namespace is made with unshare, its offsets written, then entered with
    /// setns(time_for_children): clone(CLONE_NEWTIME) would enter it before offsets can be set.
    pub new_time: bool,
    pub new_mount: bool,
    pub joined_mount: bool,
    /// Joining a user namespace, or creating one while joining others, needs an
    /// intermediate process (setns first, then clone).
    pub slow: bool,
    /// A pid namespace joined by path, by an init that stays in the host's user namespace:
    /// joined only once the rootfs is built and pivoted into (see `init::enter_joined_pid_ns`),
    /// so no process the others in that namespace can see ever has the host's root, cwd or
    /// directories. (Inside a user namespace the init cannot join a pid namespace owned by
    /// the host's, and non-dumpable is enough there: nothing in the container has
    /// CAP_SYS_PTRACE over the runtime's user namespace.)
    pub late_pid: Option<OwnedFd>,
}

impl NsPlan {
    pub fn new(spec: &Spec, cgroup_v2_clone: bool) -> Result<NsPlan> {
        let namespaces = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .unwrap_or_default();
        let mut plan = NsPlan {
            clone_flags: CloneFlags::empty(),
            joined: Vec::new(),
            new_user: false,
            deferred_cgroupns: false,
            new_time: false,
            new_mount: false,
            joined_mount: false,
            slow: false,
            late_pid: None,
        };
        for (i, ns) in namespaces.iter().enumerate() {
            let t = ns.typ();
            match ns.path() {
                None => match t {
                    LinuxNamespaceType::Time => plan.new_time = true,
                    LinuxNamespaceType::Cgroup if !cgroup_v2_clone => plan.deferred_cgroupns = true,
                    _ => {
                        plan.clone_flags |= ns_flag(t);
                        if t == LinuxNamespaceType::User {
                            plan.new_user = true;
                        }
                        if t == LinuxNamespaceType::Mount {
                            plan.new_mount = true;
                        }
                    }
                },
                Some(path) => {
                    let f = std::fs::File::open(path).map_err(|e| {
                        Error::config(format!(
                            "config.json: linux.namespaces[{i}].path: {}: {e}",
                            path.display()
                        ))
                    })?;
                    let fd: OwnedFd = f.into();
                    let kind = sys::ns_type(fd.as_fd()).map_err(|_| {
                        Error::config(format!(
                            "config.json: linux.namespaces[{i}].path: {} is not a namespace",
                            path.display()
                        ))
                    })?;
                    if kind != ns_flag(t) {
                        return Err(Error::config(format!(
                            "config.json: linux.namespaces[{i}].path: {} is not a {} namespace",
                            path.display(),
                            ns_name(t)
                        )));
                    }
                    if t == LinuxNamespaceType::Mount {
                        plan.joined_mount = true;
                    }
                    plan.joined.push((t, fd));
                }
            }
        }
        refuse_host_namespaces(spec, &plan.joined)?;
        if !plan.new_mount {
            // As runc and crun: without a mount namespace of its own the container is only
            // chrooted into its rootfs — nothing may be mounted or masked, which would
            // happen on the host's (or the joined) mount table.
            let linux = spec.linux().as_ref();
            let restricts = linux.is_some_and(|l| {
                l.masked_paths().as_ref().is_some_and(|p| !p.is_empty())
                    || l.readonly_paths().as_ref().is_some_and(|p| !p.is_empty())
            });
            let read_only = spec
                .root()
                .as_ref()
                .and_then(|r| r.readonly())
                .unwrap_or(false);
            if read_only {
                return Err(Error::config(
                    "config.json: root.readonly: a read-only root needs a mount namespace of the container's own",
                ));
            }
            if restricts {
                return Err(Error::config(
                    "config.json: linux.maskedPaths/readonlyPaths: unable to restrict sys entries without a private mount namespace",
                ));
            }
            if spec.mounts().as_ref().is_some_and(|m| !m.is_empty()) {
                return Err(Error::config(
                    "config.json: mounts: mounting needs a mount namespace of the container's own (add {\"type\": \"mount\"} to linux.namespaces)",
                ));
            }
        }
        // setns order: user first (it decides what we may do in the others), mount last.
        plan.joined.sort_by_key(|(t, _)| match t {
            LinuxNamespaceType::User => 0,
            LinuxNamespaceType::Mount => 2,
            _ => 1,
        });
        let joins_user = plan
            .joined
            .iter()
            .any(|(t, _)| *t == LinuxNamespaceType::User);
        if !joins_user && !plan.new_user {
            if let Some(i) = plan
                .joined
                .iter()
                .position(|(t, _)| *t == LinuxNamespaceType::Pid)
            {
                plan.late_pid = Some(plan.joined.remove(i).1);
            }
        }
        let joins_pid = plan
            .joined
            .iter()
            .any(|(t, _)| *t == LinuxNamespaceType::Pid);
        plan.slow = joins_user || joins_pid || (plan.new_user && !plan.joined.is_empty());
        Ok(plan)
    }

    /// Whether the init ends up in a user namespace other than the host's (new or joined).
    pub fn enters_user_ns(&self) -> bool {
        self.new_user
            || self
                .joined
                .iter()
                .any(|(t, _)| *t == LinuxNamespaceType::User)
    }

    /// Enter every namespace that is joined by path (called in the child or intermediate).
    pub fn join_all(&self) -> Result<()> {
        for (t, fd) in &self.joined {
            setns(fd.as_fd(), CloneFlags::empty())
                .ctx(|| format!("join the {} namespace", ns_name(*t)))?;
        }
        Ok(())
    }

    /// v1: the cgroup namespace, once the parent has moved us into our cgroup.
    pub fn unshare_cgroupns(&self) -> Result<()> {
        if self.deferred_cgroupns {
            unshare(CloneFlags::CLONE_NEWCGROUP).ctx(|| "unshare the cgroup namespace")?;
        }
        Ok(())
    }

    /// The time namespace: unshare, write the offsets, enter it.
    pub fn late_unshare(&self, spec: &Spec) -> Result<()> {
        if self.new_time {
            unshare(CLONE_NEWTIME).ctx(|| "unshare the time namespace")?;
            let offsets = spec
                .linux()
                .as_ref()
                .and_then(|l| l.time_offsets().as_ref());
            let mut text = String::new();
            for (clock, off) in offsets.into_iter().flatten() {
                text.push_str(&format!(
                    "{clock} {} {}\n",
                    off.secs().unwrap_or(0),
                    off.nanosecs().unwrap_or(0)
                ));
            }
            if !text.is_empty() {
                crate::procfs::Proc::open(std::path::Path::new("/proc"))
                    .and_then(|p| p.write_self("timens_offsets", text.as_bytes()))
                    .map_err(|e| Error::config(format!("linux.timeOffsets: {e}")))?;
            }
            let child_ns = std::fs::File::open("/proc/self/ns/time_for_children")
                .ctx(|| "open the new time namespace")?;
            setns(child_ns.as_fd(), CLONE_NEWTIME).ctx(|| "enter the new time namespace")?;
        }
        Ok(())
    }
}

/// A namespace joined by path may be the runtime's own (`/proc/self/ns/net`, or a path bound
/// to it): then a sysctl, hostname or domainname would change the host. runc checks this for
/// the network namespace only; we check every one they belong to.
fn refuse_host_namespaces(spec: &Spec, joined: &[(LinuxNamespaceType, OwnedFd)]) -> Result<()> {
    let is_host = |t: LinuxNamespaceType| -> bool {
        let Some((_, fd)) = joined.iter().find(|(j, _)| *j == t) else {
            return false;
        };
        let ours = std::fs::metadata(format!("/proc/self/ns/{}", ns_name(t)));
        let theirs = nix::sys::stat::fstat(fd.as_raw_fd());
        match (ours, theirs) {
            (Ok(a), Ok(b)) => {
                use std::os::unix::fs::MetadataExt;
                a.dev() == b.st_dev && a.ino() == b.st_ino
            }
            _ => false,
        }
    };
    let linux = spec.linux().as_ref();
    for key in linux
        .and_then(|l| l.sysctl().as_ref())
        .into_iter()
        .flat_map(|s| s.keys())
    {
        if let Some(t) = crate::spec::sysctl_namespace(key).filter(|t| is_host(*t)) {
            return Err(Error::config(format!(
                "config.json: linux.sysctl: {key:?} is not allowed in the host's {} namespace",
                ns_name(t)
            )));
        }
    }
    let uts_host = is_host(LinuxNamespaceType::Uts);
    if uts_host && spec.hostname().as_deref().is_some_and(|h| !h.is_empty()) {
        return Err(Error::config(
            "config.json: hostname: the uts namespace joined is the host's own; setting it would rename the host",
        ));
    }
    if uts_host && spec.domainname().as_deref().is_some_and(|h| !h.is_empty()) {
        return Err(Error::config(
            "config.json: domainname: the uts namespace joined is the host's own",
        ));
    }
    Ok(())
}

/// Mappings as /proc/PID/uid_map and gid_map take them: "inside outside count" lines.
pub fn id_map_text(maps: &[oci_spec::runtime::LinuxIdMapping]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect()
}

/// Write uid_map/gid_map of `pid` from the parent (host root may map any range).
pub fn write_id_maps(pid: i32, spec: &Spec) -> Result<()> {
    let linux = match spec.linux() {
        Some(l) => l,
        None => return Ok(()),
    };
    let fmt = |maps: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
        id_map_text(maps.as_deref().unwrap_or(&[]))
    };
    let gid = fmt(linux.gid_mappings());
    // Without privilege on the host the kernel takes a gid_map only once setgroups is denied
    // in the new namespace — and it must be: otherwise the container could drop
    // supplementary groups that the host relies on to deny access (CVE-2014-8989).
    if !gid.is_empty() && !nix::unistd::geteuid().is_root() {
        std::fs::write(format!("/proc/{pid}/setgroups"), b"deny")
            .ctx(|| "deny setgroups in the container's user namespace")?;
    }
    if !gid.is_empty() {
        std::fs::write(format!("/proc/{pid}/gid_map"), gid.as_bytes()).ctx(|| {
            format!(
                "linux.gidMappings: write {}",
                gid.trim().replace('\n', "; ")
            )
        })?;
    }
    let uid = fmt(linux.uid_mappings());
    if !uid.is_empty() {
        std::fs::write(format!("/proc/{pid}/uid_map"), uid.as_bytes()).ctx(|| {
            format!(
                "linux.uidMappings: write {}",
                uid.trim().replace('\n', "; ")
            )
        })?;
    }
    Ok(())
}

pub fn raw(fd: &OwnedFd) -> i32 {
    fd.as_raw_fd()
}
