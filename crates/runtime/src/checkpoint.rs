//! `checkpoint` and `restore`: a running container saved to a directory of CRIU images, and
//! brought back from one, with runc's flags and meanings.
//!
//! CRIU is driven as runc drives it, over its RPC (`criu swrk 3`: one request on a
//! SOCK_SEQPACKET socket, protobuf messages from criu's `rpc.proto`), not through its command
//! line. The RPC is what lets the runtime take part while CRIU works: CRIU stops at each
//! "notify" point and waits for the answer — on restore, `setup-namespaces` (the prestart and
//! createRuntime hooks run then, with the restored init's PID), `post-restore` (the PID is
//! recorded for `delete` before anything else happens) and `orphan-pts-master` (the restored
//! process's new terminal master arrives as a descriptor and goes to the --console-socket).
//! The image and work directories are passed as descriptors, the external namespaces and the
//! stdio the restored init inherits as `inherit_fd`s. The few messages used are encoded here
//! by hand (see [`rpc`]); no protobuf compiler is needed to build.
//!
//! What the container holds on the host is named to CRIU as external, as runc does: bind
//! mounts (restored from their sources in the bundle), host cgroup directories bound in
//! without a cgroup namespace, the host device nodes, the network and PID namespaces given
//! by path (`extRootNetNS`, `extRootPidNS`), and stdio files outside the container
//! (restored from the `restore` caller's stdio, like runc's pipes). The rest — namespaces
//! of its own, tmpfs contents, the masks over masked paths, processes, memory, sockets —
//! is CRIU's, and comes back as it was: the restored container has the same mount table.
//!
//! A checkpoint without --leave-running ends with the container deleted (as runc), so the
//! same ID can be restored. `restore` creates the container the way `create` does — state
//! dir reserved with its `creating` record, cgroup made and limited, then the processes come
//! from CRIU into that cgroup instead of from clone — and leaves a state dir that `state`,
//! `kill` and `delete` treat exactly like a started container's. A restore that fails undoes
//! all of it: restored processes, CRIU, the cgroup, the temporary root mount, the state dir.

use std::fs;
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{
    recvmsg, send, socketpair, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType,
};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};
use vessel_cgroups::CgroupManager;

use crate::error::{Context, Error, Result};
use crate::hooks::{self, HookState};
use crate::state::{now_rfc3339, State, StateDir, Status};
use crate::sys;
use crate::tty_relay::TtyRelay;

/// The criu binary looked up in PATH when --criu does not name one.
pub const DEFAULT_CRIU: &str = "criu";
/// runc's record of the init's stdio (readlink of /proc/PID/fd/0..2), in the image dir.
pub const DESCRIPTORS_FILE: &str = "descriptors.json";
/// What else restore needs to know about the dumped container, in the image dir.
pub const VESSEL_FILE: &str = "vessel-checkpoint.json";
pub const DUMP_LOG: &str = "dump.log";
pub const RESTORE_LOG: &str = "restore.log";
/// The temporary mount of the rootfs that CRIU restores into (in the state dir, as runc).
const CRIU_ROOT: &str = "criu-root";

/// --manage-cgroups-mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupsMode {
    Soft,
    Full,
    Strict,
    Ignore,
}

impl CgroupsMode {
    pub fn parse(s: &str) -> Result<CgroupsMode> {
        match s {
            "soft" => Ok(CgroupsMode::Soft),
            "full" => Ok(CgroupsMode::Full),
            "strict" => Ok(CgroupsMode::Strict),
            "ignore" => Ok(CgroupsMode::Ignore),
            _ => Err(Error::Usage(format!(
                "--manage-cgroups-mode {s:?}: invalid manage-cgroups-mode value (soft, full, \
                 strict or ignore)"
            ))),
        }
    }

    /// criu_cg_mode in rpc.proto.
    fn rpc(self) -> i64 {
        match self {
            CgroupsMode::Ignore => 0,
            CgroupsMode::Soft => 3,
            CgroupsMode::Full => 4,
            CgroupsMode::Strict => 5,
        }
    }
}

/// The CRIU switches `checkpoint` and `restore` share.
#[derive(Debug, Clone, Default)]
pub struct CriuFlags {
    pub tcp_established: bool,
    pub ext_unix_sk: bool,
    pub shell_job: bool,
    pub file_locks: bool,
    pub manage_cgroups_mode: Option<CgroupsMode>,
}

#[derive(Debug, Clone)]
pub struct CheckpointOptions {
    pub root: PathBuf,
    pub id: String,
    /// --criu: a path, or a name looked up in PATH.
    pub criu: PathBuf,
    pub image_path: PathBuf,
    pub work_path: Option<PathBuf>,
    pub leave_running: bool,
    pub flags: CriuFlags,
}

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub root: PathBuf,
    pub id: String,
    pub bundle: PathBuf,
    pub criu: PathBuf,
    pub image_path: PathBuf,
    pub work_path: Option<PathBuf>,
    pub flags: CriuFlags,
    pub console_socket: Option<PathBuf>,
    /// Foreground restore: relay a terminal to our stdio when there is no --console-socket.
    pub relay_terminal: bool,
    pub pid_file: Option<PathBuf>,
    /// Accepted as runc does; CRIU sets up the root itself either way.
    pub no_pivot: bool,
}

pub struct Restored {
    pub pid: i32,
    /// The terminal to relay, for a foreground restore of a process that has one.
    pub relay: Option<TtyRelay>,
}

/// What the image dir records beside CRIU's images, for `restore`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Sidecar {
    /// Stdio of the init that was outside the container: fd → CRIU's external key.
    #[serde(default)]
    external_stdio: Vec<(i32, String)>,
    /// Host cgroup directories bound into the container (no cgroup namespace).
    #[serde(default)]
    cgroup_mounts: Vec<CgroupMount>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CgroupMount {
    /// The mount point inside the container (also CRIU's key for it).
    mount_point: String,
    fstype: String,
    /// The superblock options, which name the hierarchy ("rw,cpu,cpuacct").
    super_options: String,
}

// -------------------------------------------------------------------------------------------
// checkpoint

pub fn checkpoint(opts: &CheckpointOptions) -> Result<()> {
    let dir = StateDir::open(&opts.root, &opts.id, true)?;
    let st = dir.load()?;
    let status = dir.status(&st);
    if matches!(status, Status::Created | Status::Stopped | Status::Creating) {
        return Err(Error::WrongState {
            id: opts.id.clone(),
            status: status.to_string(),
            action: format!("Container cannot be checkpointed in {status} state"),
        });
    }
    let criu = find_criu(&opts.criu)?;
    let spec = dir.config()?;
    let pid = st.pid;
    // Pinned: the PID cannot be reused while we look at its descriptors and mounts.
    let pidfd = sys::pidfd_open(pid).ctx(|| format!("open pid {pid}"))?;
    if sys::process_start_time(pid) != Some(st.pid_start) {
        return Err(Error::WrongState {
            id: opts.id.clone(),
            status: Status::Stopped.to_string(),
            action: "Container cannot be checkpointed in stopped state".into(),
        });
    }

    let images = prepare_dir(&opts.image_path, "--image-path")?;
    let work = opts
        .work_path
        .as_deref()
        .map(|p| prepare_dir(p, "--work-path"))
        .transpose()?;
    let log_dir = opts.work_path.as_deref().unwrap_or(&opts.image_path);

    let mountinfo = fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .ctx(|| format!("read /proc/{pid}/mountinfo"))?;
    let mounts = crate::mountinfo::parse(&mountinfo);
    let mut req = CriuOpts {
        images_dir_fd: images.as_raw_fd(),
        work_dir_fd: work.as_ref().map(|w| w.as_raw_fd()),
        log_file: DUMP_LOG,
        pid: Some(pid),
        root: Some(st.rootfs.to_string_lossy().into_owned()),
        leave_running: opts.leave_running,
        orphan_pts_master: true,
        ..CriuOpts::from_flags(&opts.flags)
    };
    let mut sidecar = Sidecar::default();

    // Mounts from the host: the image keeps each one's mount point as its key.
    for m in spec.mounts().iter().flatten() {
        if crate::mount_options::is_bind(m) {
            let key = clean(m.destination());
            req.ext_mnt.push((key.clone(), key));
        }
    }
    if !has_namespace(&spec, LinuxNamespaceType::Cgroup) {
        for m in mounts
            .iter()
            .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
        {
            req.ext_mnt
                .push((m.mount_point.clone(), m.mount_point.clone()));
            sidecar.cgroup_mounts.push(CgroupMount {
                mount_point: m.mount_point.clone(),
                fstype: m.fstype.clone(),
                super_options: m.super_options.clone(),
            });
        }
    }
    // Masked files are covered with the container's own /dev/null: a bind inside the
    // container that CRIU restores as it was. (runc names them external and restores the
    // host's /dev/null over them; restore still maps that key, for checkpoints runc made.)
    for path in device_paths(&spec) {
        req.ext_mnt.push((path.clone(), path));
    }
    // Namespaces joined by path stay where they are: restore joins them again.
    for (t, key) in EXTERNAL_NS {
        if let Some(path) = namespace_path(&spec, t) {
            let ino = fs::metadata(&path)
                .ctx(|| format!("linux.namespaces: {}", path.display()))?
                .ino();
            req.external
                .push(format!("{}[{ino}]:{key}", crate::spec::ns_name(t)));
        }
    }
    // The cgroup freezer stops every process at once (else CRIU stops them one by one).
    req.freeze_cgroup = freezer_dir(pid);

    // The init's stdio, as runc records it; files outside the container become external,
    // for restore to replace with its own stdio (as runc does with pipes).
    let own_mounts: std::collections::HashSet<u64> = mounts.iter().map(|m| m.id).collect();
    let mut descriptors = Vec::new();
    for fd in 0..3 {
        let link = fs::read_link(format!("/proc/{pid}/fd/{fd}"))
            .map(|l| l.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "/dev/null".into());
        if link.starts_with('/') {
            if let Some(key) = external_file_key(pid, fd, &own_mounts) {
                req.external.push(key.clone());
                sidecar.external_stdio.push((fd, key));
            }
        }
        descriptors.push(link);
    }
    write_json(&opts.image_path, DESCRIPTORS_FILE, &descriptors)?;
    write_json(&opts.image_path, VESSEL_FILE, &sidecar)?;
    drop(pidfd);

    let swrk = Swrk::spawn(&criu, &[])?;
    let outcome = swrk.converse(&request(rpc::DUMP, &req), &mut |_, _, _| Ok(()));
    let finished = swrk.finish();
    if let Err(e) = outcome {
        return Err(criu_failed("checkpoint", e, &log_dir.join(DUMP_LOG)));
    }
    finished.map_err(|e| criu_failed("checkpoint", e, &log_dir.join(DUMP_LOG)))?;
    if opts.leave_running {
        return Ok(());
    }
    // As runc: the checkpointed container is gone (CRIU killed its processes); what is left
    // of it on the host goes, so that it can be restored under the same ID.
    drop(dir);
    crate::container::delete(&opts.root, &opts.id, true)
}

/// The namespaces CRIU treats as external when joined by path, with runc's keys.
const EXTERNAL_NS: [(LinuxNamespaceType, &str); 2] = [
    (LinuxNamespaceType::Network, "extRootNetNS"),
    (LinuxNamespaceType::Pid, "extRootPidNS"),
];

/// `file[mnt_id:inode]` for fd `fd` of `pid` when it is a file on a mount the container does
/// not have (its caller's log file, the host's /dev/null): CRIU cannot reopen it by path.
fn external_file_key(
    pid: i32,
    fd: i32,
    own_mounts: &std::collections::HashSet<u64>,
) -> Option<String> {
    let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    let mnt_id: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse().ok())?;
    if own_mounts.contains(&mnt_id) {
        return None;
    }
    let ino = fs::metadata(format!("/proc/{pid}/fd/{fd}")).ok()?.ino();
    Some(format!("file[{mnt_id:x}:{ino:x}]"))
}

/// The device nodes of the container (the defaults and linux.devices): bound from the host
/// in a user namespace, so external to CRIU there; unused keys are ignored.
fn device_paths(spec: &Spec) -> Vec<String> {
    let mut out: Vec<String> = [
        "/dev/null",
        "/dev/zero",
        "/dev/full",
        "/dev/random",
        "/dev/urandom",
        "/dev/tty",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    for d in spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().as_ref())
        .into_iter()
        .flatten()
    {
        let p = clean(d.path());
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// The container's freezer cgroup on the host (v1 freezer, or the cgroup2 directory on a
/// pure v2 host), from the init's /proc/PID/cgroup.
fn freezer_dir(pid: i32) -> Option<String> {
    let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let host = crate::mountinfo::parse(&fs::read_to_string("/proc/self/mountinfo").ok()?);
    let lines = parse_proc_cgroup(&cgroups);
    if let Some((_, path)) = lines
        .iter()
        .find(|(c, _)| c.split(',').any(|x| x == "freezer"))
    {
        let m = host
            .iter()
            .find(|m| m.fstype == "cgroup" && has_option(&m.super_options, "freezer"))?;
        return Some(host_cgroup_dir(m, path).to_string_lossy().into_owned());
    }
    // No v1 freezer: only a pure v2 host freezes through cgroup2 (hybrid's cgroup2 mount
    // has no controllers bound).
    if host.iter().any(|m| m.fstype == "cgroup") {
        return None;
    }
    let (_, path) = lines.iter().find(|(c, _)| c.is_empty())?;
    let m = host.iter().find(|m| m.fstype == "cgroup2")?;
    Some(host_cgroup_dir(m, path).to_string_lossy().into_owned())
}

// -------------------------------------------------------------------------------------------
// restore

/// Undo list for a restore that fails part way (as `create`'s). CRIU itself is reaped
/// before it runs (see [`Swrk`]'s Drop): it rolls back what it restored when its socket closes.
struct Undo {
    pid: Option<i32>,
    cgroup: Option<CgroupManager>,
    root_mount: Option<PathBuf>,
    pid_file: Option<PathBuf>,
    dir: Option<StateDir>,
}

impl Drop for Undo {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(pid), None);
        }
        if let Some(cg) = self.cgroup.take() {
            let _ = cg.kill_all(libc::SIGKILL);
            let _ = cg.remove();
        }
        if let Some(m) = self.root_mount.take() {
            unmount_root(&m);
        }
        if let Some(p) = self.pid_file.take() {
            let _ = fs::remove_file(p);
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.remove();
        }
    }
}

fn unmount_root(path: &Path) {
    let _ = umount2(path, MntFlags::MNT_DETACH);
    let _ = fs::remove_dir(path);
}

pub fn restore(opts: &RestoreOptions) -> Result<Restored> {
    crate::spec::validate_id(&opts.id)?;
    let crate::spec::Bundle {
        dir: bundle_dir,
        spec,
        raw,
        rootfs,
    } = crate::spec::load_bundle(&opts.bundle)?;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::config("config.json: process: missing"))?;
    let terminal = process.terminal().unwrap_or(false);
    let criu = find_criu(&opts.criu)?;

    // Everything that can be checked without touching the host comes first.
    let images = open_dir(&opts.image_path, "--image-path")?;
    if !opts.image_path.join("inventory.img").exists() {
        return Err(Error::Usage(format!(
            "--image-path {}: no checkpoint there (no inventory.img)",
            opts.image_path.display()
        )));
    }
    let descriptors: Vec<String> = read_json(&opts.image_path, DESCRIPTORS_FILE)?;
    let sidecar: Sidecar = read_json(&opts.image_path, VESSEL_FILE)?;
    let cg_path = crate::create::cgroups_path(&spec, &opts.id);
    let cgroup = CgroupManager::new(&cg_path)?;
    let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    if let Some(r) = resources {
        CgroupManager::validate(r, cgroup.layout())?;
    }
    let mut req = CriuOpts {
        images_dir_fd: images.as_raw_fd(),
        log_file: RESTORE_LOG,
        evasive_devices: true,
        rst_sibling: true,
        orphan_pts_master: true,
        ..CriuOpts::from_flags(&opts.flags)
    };
    // Descriptors CRIU is to give the restored processes, as its fds 4, 5, ... (0-2 are
    // /dev/null and its stderr pipe, 3 the RPC socket).
    let mut inherit: Vec<OwnedFd> = Vec::new();
    let mut inherit_fd = |key: String, fd: OwnedFd, req: &mut CriuOpts| {
        req.inherit_fd.push((key, 4 + inherit.len() as i32));
        inherit.push(fd);
    };
    for ns in spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
    {
        let Some(path) = ns.path().as_ref().filter(|p| !p.as_os_str().is_empty()) else {
            continue;
        };
        let t = ns.typ();
        if let Some((_, key)) = EXTERNAL_NS.iter().find(|(x, _)| *x == t) {
            let f = fs::File::open(path).ctx(|| {
                format!(
                    "linux.namespaces: the {} namespace {} must exist to restore into",
                    crate::spec::ns_name(t),
                    path.display()
                )
            })?;
            inherit_fd(key.to_string(), f.into(), &mut req);
        } else if t == LinuxNamespaceType::Cgroup {
            return Err(Error::config(
                "linux.namespaces: a cgroup namespace given by path cannot be restored into \
                 (CRIU does not join one)",
            ));
        } else {
            req.join_ns.push((
                crate::spec::ns_name(t).to_string(),
                path.to_string_lossy().into_owned(),
            ));
        }
    }
    // Stdio the checkpoint left outside: our own stdio takes its place (pipes as runc).
    let mut stdio_keys: Vec<(i32, String)> = sidecar.external_stdio.clone();
    for (fd, d) in descriptors.iter().enumerate() {
        if d.starts_with("pipe:") && !stdio_keys.iter().any(|(f, _)| *f == fd as i32) {
            stdio_keys.push((fd as i32, d.clone()));
        }
    }
    for (fd, key) in stdio_keys {
        if !(0..3).contains(&fd) {
            continue;
        }
        // SAFETY: stdio descriptors of this process, borrowed for the duplicate only.
        let ours = unsafe { BorrowedFd::borrow_raw(fd) }
            .try_clone_to_owned()
            .ctx(|| format!("duplicate our fd {fd} for the restored process"))?;
        inherit_fd(key, ours, &mut req);
    }
    for m in spec.mounts().iter().flatten() {
        if crate::mount_options::is_bind(m) {
            let src = m.source().clone().unwrap_or_default();
            let src = if src.is_relative() {
                bundle_dir.join(src)
            } else {
                src
            };
            req.ext_mnt
                .push((clean(m.destination()), src.to_string_lossy().into_owned()));
        }
    }
    // Checkpoints made by runc name masked files external, with this key.
    let masked = spec
        .linux()
        .as_ref()
        .and_then(|l| l.masked_paths().as_ref())
        .is_some_and(|m| !m.is_empty());
    if masked {
        req.ext_mnt.push(("/dev/null".into(), "/dev/null".into()));
    }
    for path in device_paths(&spec) {
        req.ext_mnt.push((path.clone(), path));
    }
    let (console, relay) = crate::console::console_for(
        terminal,
        opts.console_socket.as_deref(),
        opts.relay_terminal,
    )?;
    let work = opts
        .work_path
        .as_deref()
        .map(|p| prepare_dir(p, "--work-path"))
        .transpose()?;
    req.work_dir_fd = work.as_ref().map(|w| w.as_raw_fd());
    let log = opts
        .work_path
        .as_deref()
        .unwrap_or(&opts.image_path)
        .join(RESTORE_LOG);

    // From here on everything done on the host is undone if a later step fails.
    let dir = StateDir::create(&opts.root, &opts.id, &cg_path, true, None)?;
    let mut undo = Undo {
        pid: None,
        cgroup: Some(cgroup.clone()),
        root_mount: None,
        pid_file: None,
        dir: Some(dir),
    };
    let dir = undo.dir.as_ref().expect("set above");
    cgroup.create()?;
    if let Some(r) = resources {
        cgroup.apply(r)?;
    }

    // CRIU wants the root to be a mount point whose parent is not overmounted.
    let croot = dir.dir.join(CRIU_ROOT);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&croot)
        .ctx(|| format!("create {}", croot.display()))?;
    undo.root_mount = Some(croot.clone());
    mount(
        Some(&rootfs),
        &croot,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .ctx(|| format!("bind the rootfs {} for CRIU", rootfs.display()))?;
    mount(
        None::<&str>,
        &croot,
        None::<&str>,
        MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        None::<&str>,
    )
    .ctx(|| format!("make {} private", croot.display()))?;
    create_mountpoints(&rootfs, &spec)?;
    req.root = Some(croot.to_string_lossy().into_owned());

    let extra: Vec<BorrowedFd> = inherit.iter().map(|f| f.as_fd()).collect();
    let swrk = Swrk::spawn(&criu, &extra)?;
    let criu_pid = swrk.pid();
    // CRIU works from inside the container's cgroup, so what it forks starts there; cg_root
    // maps the dumped cgroup tree onto this one.
    cgroup.add_task(criu_pid)?;
    let criu_cgroups = fs::read_to_string(format!("/proc/{criu_pid}/cgroup"))
        .ctx(|| format!("read /proc/{criu_pid}/cgroup"))?;
    let criu_cgroups = parse_proc_cgroup(&criu_cgroups);
    for (ctrl, path) in &criu_cgroups {
        req.cg_root
            .push(((!ctrl.is_empty()).then(|| ctrl.clone()), path.clone()));
    }
    if !sidecar.cgroup_mounts.is_empty() {
        let host =
            fs::read_to_string("/proc/self/mountinfo").ctx(|| "read /proc/self/mountinfo")?;
        let host = crate::mountinfo::parse(&host);
        for cm in &sidecar.cgroup_mounts {
            let src = cgroup_mount_source(cm, &host, &criu_cgroups).ok_or_else(|| {
                Error::Criu(format!(
                    "restore: the checkpoint has the cgroup mount {} ({} {}), and this host \
                     has no such hierarchy",
                    cm.mount_point, cm.fstype, cm.super_options
                ))
            })?;
            req.ext_mnt
                .push((cm.mount_point.clone(), src.to_string_lossy().into_owned()));
        }
    }

    let spec_hooks = spec.hooks().as_ref();
    let annotations = spec.annotations().clone().unwrap_or_default();
    let hook_state = |pid| HookState {
        oci_version: spec.version(),
        id: &opts.id,
        status: "creating",
        pid: Some(pid),
        bundle: &bundle_dir,
        annotations: Some(&annotations),
    };
    let mut restored_pid: Option<i32> = None;
    let outcome = swrk.converse(&request(rpc::RESTORE, &req), &mut |script, pid, fd| {
        match script {
            "setup-namespaces" => {
                hooks::run_all(
                    "prestart",
                    spec_hooks.and_then(|h| h.prestart().as_ref()),
                    &hook_state(pid),
                )?;
                hooks::run_all(
                    "createRuntime",
                    spec_hooks.and_then(|h| h.create_runtime().as_ref()),
                    &hook_state(pid),
                )?;
            }
            "post-restore" => {
                // From now on a killed restore leaves `delete` what it needs.
                restored_pid = Some(pid);
                dir.record_pid(pid, sys::process_start_time(pid).unwrap_or(0))?;
            }
            "orphan-pts-master" => {
                let master = fd.ok_or_else(|| {
                    Error::Criu("criu sent no terminal master with orphan-pts-master".into())
                })?;
                let sock = console.as_ref().ok_or_else(|| {
                    Error::Usage(
                        "the restored process has a terminal: give --console-socket to \
                             hand it to"
                            .into(),
                    )
                })?;
                crate::console::send_master(sock.as_raw_fd(), &master)?;
            }
            _ => {}
        }
        Ok(())
    });
    drop(console);
    undo.pid = restored_pid;
    let resp = outcome.map_err(|e| criu_failed("restore", e, &log))?;
    let pid = resp.restored_pid.or(restored_pid).unwrap_or(0);
    undo.pid = (pid > 0).then_some(pid);
    swrk.finish().map_err(|e| criu_failed("restore", e, &log))?;
    if pid <= 0 {
        return Err(Error::Criu(
            "criu reported a restore without the PID of the restored process".into(),
        ));
    }
    drop(inherit);
    if let Some(m) = undo.root_mount.take() {
        unmount_root(&m);
    }

    let pid_start = sys::process_start_time(pid).unwrap_or(0);
    let state = State {
        oci_version: spec.version().to_string(),
        id: opts.id.clone(),
        pid,
        bundle: bundle_dir.clone(),
        rootfs: rootfs.clone(),
        created: now_rfc3339(),
        owner: String::new(),
        annotations,
        pid_start,
        cgroups_path: cg_path,
        has_cgroup: true,
        stopped_hooks_done: false,
        has_late_hooks: spec_hooks.is_some_and(|h| {
            h.poststart().as_ref().is_some_and(|v| !v.is_empty())
                || h.poststop().as_ref().is_some_and(|v| !v.is_empty())
        }),
        intel_rdt: None,
    };
    dir.record_pid(pid, pid_start)?;
    dir.save_with_config(&state, &raw)?;
    if let Some(p) = &opts.pid_file {
        crate::create::write_pid_file(p, pid)?;
        undo.pid_file = Some(p.clone());
    }
    dir.finish_create()?;
    undo.pid = None;
    undo.cgroup = None;
    undo.pid_file = None;
    undo.dir = None;
    Ok(Restored { pid, relay })
}

/// Create the mount points of the config's mounts in the rootfs (as `create` would), except
/// below a tmpfs, whose contents CRIU restores.
fn create_mountpoints(rootfs: &Path, spec: &Spec) -> Result<()> {
    let mounts: Vec<_> = spec.mounts().iter().flatten().collect();
    let tmpfs: Vec<&Path> = mounts
        .iter()
        .filter(|m| m.typ().as_deref() == Some("tmpfs"))
        .map(|m| m.destination().as_path())
        .collect();
    let root: OwnedFd = fs::File::open(rootfs)
        .ctx(|| format!("open the rootfs {}", rootfs.display()))?
        .into();
    for m in mounts {
        let dest = m.destination();
        if matches!(m.typ().as_deref(), Some("cgroup") | Some("cgroup2"))
            || tmpfs.iter().any(|t| dest != *t && dest.starts_with(t))
        {
            continue;
        }
        let is_file = crate::mount_options::is_bind(m)
            && m.source()
                .as_ref()
                .and_then(|s| fs::metadata(s).ok())
                .is_some_and(|md| !md.is_dir());
        if is_file {
            crate::mounts::mkfile(root.as_fd(), dest)?;
        } else {
            crate::mounts::mkdir_all(root.as_fd(), dest)?;
        }
    }
    Ok(())
}

/// Where a host cgroup directory bound into the dumped container comes from now: the
/// hierarchy with the same superblock options, at the cgroup CRIU was put in.
fn cgroup_mount_source(
    cm: &CgroupMount,
    host: &[crate::mountinfo::MountEntry],
    criu_cgroups: &[(String, String)],
) -> Option<PathBuf> {
    let m = host
        .iter()
        .find(|m| m.fstype == cm.fstype && m.super_options == cm.super_options)?;
    let (_, path) = if cm.fstype == "cgroup2" {
        criu_cgroups.iter().find(|(c, _)| c.is_empty())?
    } else {
        criu_cgroups
            .iter()
            .find(|(c, _)| !c.is_empty() && c.split(',').all(|x| has_option(&m.super_options, x)))?
    };
    Some(host_cgroup_dir(m, path))
}

// -------------------------------------------------------------------------------------------
// criu swrk

/// The options of one request (criu_opts in rpc.proto) this runtime sets.
#[derive(Debug, Default)]
struct CriuOpts {
    images_dir_fd: RawFd,
    work_dir_fd: Option<RawFd>,
    log_file: &'static str,
    pid: Option<i32>,
    root: Option<String>,
    leave_running: bool,
    ext_unix_sk: bool,
    tcp_established: bool,
    evasive_devices: bool,
    shell_job: bool,
    file_locks: bool,
    rst_sibling: bool,
    orphan_pts_master: bool,
    manage_cgroups_mode: Option<CgroupsMode>,
    ext_mnt: Vec<(String, String)>,
    cg_root: Vec<(Option<String>, String)>,
    inherit_fd: Vec<(String, i32)>,
    external: Vec<String>,
    join_ns: Vec<(String, String)>,
    freeze_cgroup: Option<String>,
}

impl CriuOpts {
    fn from_flags(f: &CriuFlags) -> CriuOpts {
        CriuOpts {
            tcp_established: f.tcp_established,
            ext_unix_sk: f.ext_unix_sk,
            shell_job: f.shell_job,
            file_locks: f.file_locks,
            manage_cgroups_mode: f.manage_cgroups_mode,
            ..CriuOpts::default()
        }
    }

    fn encode(&self) -> rpc::Msg {
        let mut m = rpc::Msg::default();
        m.int(1, self.images_dir_fd.into());
        if let Some(p) = self.pid {
            m.int(2, p.into());
        }
        m.flag(3, self.leave_running)
            .flag(4, self.ext_unix_sk)
            .flag(5, self.tcp_established)
            .flag(6, self.evasive_devices)
            .flag(7, self.shell_job)
            .flag(8, self.file_locks)
            .int(9, 4)
            .str(10, self.log_file)
            .flag(12, true);
        if let Some(r) = &self.root {
            m.str(13, r);
        }
        if let Some(w) = self.work_dir_fd {
            m.int(17, w.into());
        }
        for (k, v) in &self.ext_mnt {
            let mut e = rpc::Msg::default();
            e.str(1, k).str(2, v);
            m.msg(23, &e);
        }
        // manage_cgroups: obsoleted by manage_cgroups_mode, still read by older CRIU.
        m.flag(24, true);
        for (ctrl, path) in &self.cg_root {
            let mut e = rpc::Msg::default();
            if let Some(c) = ctrl {
                e.str(1, c);
            }
            e.str(2, path);
            m.msg(25, &e);
        }
        if self.rst_sibling {
            m.flag(26, true);
        }
        for (key, fd) in &self.inherit_fd {
            let mut e = rpc::Msg::default();
            e.str(1, key).int(2, (*fd).into());
            m.msg(27, &e);
        }
        if let Some(mode) = self.manage_cgroups_mode {
            m.int(34, mode.rpc());
        }
        for e in &self.external {
            m.str(37, e);
        }
        for (ns, file) in &self.join_ns {
            let mut e = rpc::Msg::default();
            e.str(1, ns).str(2, file);
            m.msg(39, &e);
        }
        if let Some(f) = &self.freeze_cgroup {
            m.str(44, f);
        }
        m.flag(50, self.orphan_pts_master);
        m
    }
}

fn request(typ: i64, opts: &CriuOpts) -> rpc::Msg {
    let mut m = rpc::Msg::default();
    m.int(1, typ).msg(2, &opts.encode());
    m
}

/// What a conversation does at each notification: given the script name, the PID and the
/// descriptor that came with it, if any.
type Notify<'a> = dyn FnMut(&str, i32, Option<OwnedFd>) -> Result<()> + 'a;

/// A `criu swrk` process and our end of its RPC socket. Dropped before [`Swrk::finish`]
/// (a failure on our side), it closes the socket — CRIU then gives up and undoes what it
/// did, as after any failed request — and reaps CRIU, killing it if it takes too long.
struct Swrk {
    child: Child,
    sock: Option<OwnedFd>,
    /// Read end of CRIU's stderr (non-blocking): what it says before its log is open.
    stderr: OwnedFd,
    done: bool,
}

impl Drop for Swrk {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        drop(self.sock.take());
        let until = std::time::Instant::now() + std::time::Duration::from_secs(CRIU_GIVE_UP_SECS);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if std::time::Instant::now() >= until => break,
                Ok(None) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long a CRIU whose request was broken off gets to roll back before it is killed.
const CRIU_GIVE_UP_SECS: u64 = 30;

/// How a CRIU conversation failed.
enum Failure {
    /// CRIU answered the request with success=false.
    Refused {
        errno: Option<i32>,
        errmsg: Option<String>,
        stderr: String,
    },
    /// CRIU went away, or the exchange broke down.
    Broken { what: String, stderr: String },
    /// We broke it off (a hook or the console failed).
    Ours(Error),
}

impl Swrk {
    /// Start `criu swrk 3` with the RPC socket as its fd 3 and `extra` as its fds 4, 5, ...
    fn spawn(criu: &Path, extra: &[BorrowedFd]) -> Result<Swrk> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .ctx(|| "create the socket pair for criu")?;
        let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .ctx(|| "create a pipe for criu's stderr")?;
        // Neither end may ever block: criu's early messages are a few lines, and a criu that
        // says more must not hang on a pipe we read only at the end.
        for fd in [&err_r, &err_w] {
            nix::fcntl::fcntl(
                fd.as_raw_fd(),
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            )
            .ctx(|| "make criu's stderr pipe non-blocking")?;
        }
        let mut sources: Vec<RawFd> = vec![theirs.as_raw_fd()];
        sources.extend(extra.iter().map(|f| f.as_raw_fd()));
        if sources.len() > MAX_CRIU_FDS {
            return Err(Error::Criu(format!(
                "too many descriptors for criu ({}, at most {MAX_CRIU_FDS})",
                sources.len()
            )));
        }
        let mut cmd = Command::new(criu);
        cmd.arg("swrk")
            .arg("3")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(err_w));
        // SAFETY: the closure runs between fork and exec and only calls fcntl and dup2
        // (async-signal-safe) on a stack array; nothing is allocated.
        unsafe {
            cmd.pre_exec(move || {
                let mut high = [0 as RawFd; MAX_CRIU_FDS];
                // First above every target, so that no dup2 below overwrites a source.
                for (i, &fd) in sources.iter().enumerate() {
                    let d = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 64);
                    if d < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    high[i] = d;
                }
                for (i, &fd) in high.iter().take(sources.len()).enumerate() {
                    // dup2 leaves the new descriptor without FD_CLOEXEC: criu keeps it.
                    if libc::dup2(fd, 3 + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                criu_missing(criu)
            } else {
                Error::Io {
                    context: format!("start {} swrk", criu.display()),
                    err: e,
                }
            }
        })?;
        drop(theirs);
        Ok(Swrk {
            child,
            sock: Some(ours),
            stderr: err_r,
            done: false,
        })
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn sock(&self) -> RawFd {
        self.sock.as_ref().map_or(-1, |s| s.as_raw_fd())
    }

    fn send(&self, msg: &rpc::Msg) -> std::result::Result<(), Failure> {
        send(self.sock(), &msg.0, MsgFlags::MSG_NOSIGNAL)
            .map(drop)
            .map_err(|e| self.broken(format!("send a request to criu: {e}")))
    }

    fn broken(&self, what: String) -> Failure {
        Failure::Broken {
            what,
            stderr: self.stderr_text(),
        }
    }

    fn stderr_text(&self) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = nix::unistd::read(self.stderr.as_raw_fd(), &mut buf) {
            if n == 0 || out.len() > 64 * 1024 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).trim().to_string()
    }

    fn recv(&self) -> std::result::Result<(rpc::Resp, Option<OwnedFd>), Failure> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut cmsg = nix::cmsg_space!([RawFd; 4]);
        let (n, fds) = loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(
                self.sock(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => {
                    let mut fds: Vec<OwnedFd> = Vec::new();
                    if let Ok(cmsgs) = msg.cmsgs() {
                        for c in cmsgs {
                            if let ControlMessageOwned::ScmRights(list) = c {
                                // SAFETY: descriptors just received, owned by nobody else.
                                fds.extend(
                                    list.into_iter()
                                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                                );
                            }
                        }
                    }
                    break (msg.bytes, fds);
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(self.broken(format!("read criu's answer: {e}"))),
            }
        };
        if n == 0 {
            return Err(self.broken("criu exited without answering".into()));
        }
        let resp = rpc::parse_resp(&buf[..n])
            .map_err(|e| self.broken(format!("criu's answer is malformed: {e}")))?;
        Ok((resp, fds.into_iter().next()))
    }

    /// Send `req`, answer the notifications CRIU sends while it works (`notify` is told the
    /// script name, the PID and any descriptor that came with it) and return the final
    /// answer.
    fn converse(
        &self,
        req: &rpc::Msg,
        notify: &mut Notify,
    ) -> std::result::Result<rpc::Resp, Failure> {
        self.send(req)?;
        loop {
            let (resp, fd) = self.recv()?;
            if !resp.success {
                return Err(Failure::Refused {
                    errno: resp.errno,
                    errmsg: resp.errmsg,
                    stderr: self.stderr_text(),
                });
            }
            if resp.typ != rpc::NOTIFY {
                return Ok(resp);
            }
            let script = resp.notify_script.as_deref().unwrap_or("");
            notify(script, resp.notify_pid.unwrap_or(0), fd).map_err(Failure::Ours)?;
            let mut ack = rpc::Msg::default();
            ack.int(1, rpc::NOTIFY).flag(3, true);
            self.send(&ack)?;
        }
    }

    /// The request is answered: close our end and wait for CRIU to exit.
    fn finish(mut self) -> std::result::Result<(), Failure> {
        drop(self.sock.take());
        self.done = true;
        match self.child.wait() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(self.broken(format!("criu exited with {s}"))),
            Err(e) => Err(self.broken(format!("wait for criu: {e}"))),
        }
    }
}

/// The RPC socket plus the inherited descriptors: more than any container needs.
const MAX_CRIU_FDS: usize = 32;

/// The error for a failed CRIU conversation, quoting CRIU's own words: its answer, what it
/// wrote to stderr, and the errors of its log (runc quotes the log the same way).
fn criu_failed(action: &str, f: Failure, log: &Path) -> Error {
    let (mut msg, summary, stderr) = match f {
        Failure::Ours(e) => return e,
        Failure::Refused {
            errno,
            errmsg,
            stderr,
        } => {
            let mut m = format!("criu failed to {action} the container");
            if let Some(n) = errno.filter(|n| *n != 0) {
                m.push_str(&format!(" ({})", std::io::Error::from_raw_os_error(n)));
            }
            (m, errmsg, stderr)
        }
        Failure::Broken { what, stderr } => (format!("{action}: {what}"), None, stderr),
    };
    let errors = log_errors(log);
    // The log says most; without one, CRIU's own summary (the first error it logged) and
    // what it wrote to stderr before its log was open.
    if errors.is_empty() {
        if let Some(text) = summary
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty() && !benign(t))
        {
            msg.push_str(&format!(": {text}"));
        }
        if !stderr.is_empty() {
            msg.push_str(&format!("\ncriu said: {stderr}"));
        }
    }
    if !errors.is_empty() {
        msg.push_str(&format!("\n{}", errors.join("\n")));
    }
    if errors.iter().any(|l| l.contains("kerndat")) || stderr.contains("kerndat") {
        msg.push_str(
            "\n(this criu cannot work on this kernel, as `criu check` shows: a newer criu \
             release is needed)",
        );
    }
    if log.exists() {
        msg.push_str(&format!("\n(full log: {})", log.display()));
    }
    Error::Criu(msg)
}

/// The last lines of a CRIU log that report errors.
fn log_errors(log: &Path) -> Vec<String> {
    let Ok(text) = fs::read_to_string(log) else {
        return Vec::new();
    };
    let errors: Vec<String> = text
        .lines()
        .filter(|l| l.contains("Error") && !benign(l))
        .map(str::to_string)
        .collect();
    errors[errors.len().saturating_sub(8)..].to_vec()
}

/// An error line CRIU logs on every run here and that changes nothing (it cannot raise its
/// own RLIMIT_NOFILE inside the container's cgroup).
fn benign(line: &str) -> bool {
    line.contains("Can't setup RLIMIT_NOFILE for self")
}

fn criu_missing(criu: &Path) -> Error {
    Error::Criu(format!(
        "checkpoint/restore need CRIU, and {} was not found: install criu (Debian: apt-get \
         install criu) or give its path with --criu",
        criu.display()
    ))
}

/// --criu as a path to run: a name without a slash is looked up in PATH.
fn find_criu(criu: &Path) -> Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let executable = |p: &Path| {
        fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode_bits() & 0o111 != 0)
    };
    if criu.as_os_str().as_bytes().contains(&b'/') {
        return if executable(criu) {
            Ok(criu.to_path_buf())
        } else {
            Err(criu_missing(criu))
        };
    }
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(criu))
        .find(|p| executable(p))
        .ok_or_else(|| criu_missing(criu))
}

trait ModeBits {
    fn mode_bits(&self) -> u32;
}

impl ModeBits for fs::Permissions {
    fn mode_bits(&self) -> u32 {
        std::os::unix::fs::PermissionsExt::mode(self)
    }
}

// -------------------------------------------------------------------------------------------
// helpers

/// mkdir -p (the last level 0700) and open as a directory descriptor (not close-on-exec
/// matters not: CRIU opens it through /proc/OUR_PID/fd/N).
fn prepare_dir(path: &Path, flag: &str) -> Result<OwnedFd> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .ctx(|| format!("{flag} {}: create", path.display()))?;
    open_dir(path, flag)
}

fn open_dir(path: &Path, flag: &str) -> Result<OwnedFd> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)
        .ctx(|| format!("{flag} {}", path.display()))?;
    Ok(f.into())
}

fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<()> {
    let data = serde_json::to_vec(value).map_err(|e| Error::config(e.to_string()))?;
    crate::state::write_atomic(dir, &[(name.as_ref(), &data)], 0o600)
}

/// A JSON file of the image dir; a missing one reads as the default (images made by runc or
/// by plain criu lack ours).
fn read_json<T: for<'de> Deserialize<'de> + Default>(dir: &Path, name: &str) -> Result<T> {
    let path = dir.join(name);
    match fs::read(&path) {
        Ok(raw) => serde_json::from_slice(&raw)
            .map_err(|e| Error::config(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(e).ctx(|| format!("read {}", path.display())),
    }
}

fn has_namespace(spec: &Spec, t: LinuxNamespaceType) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|n| n.iter().any(|ns| ns.typ() == t))
}

fn namespace_path(spec: &Spec, t: LinuxNamespaceType) -> Option<PathBuf> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())?
        .iter()
        .find(|ns| ns.typ() == t)?
        .path()
        .clone()
        .filter(|p| !p.as_os_str().is_empty())
}

/// An absolute container path in its plain form ("/a/b"), as CRIU names mount points.
fn clean(p: &Path) -> String {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out.to_string_lossy().into_owned()
}

fn has_option(options: &str, name: &str) -> bool {
    options.split(',').any(|o| o == name)
}

/// /proc/PID/cgroup as (controllers, path): "" for the unified hierarchy.
fn parse_proc_cgroup(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _id = it.next()?;
            let ctrl = it.next()?;
            let path = it.next()?;
            Some((ctrl.to_string(), path.to_string()))
        })
        .collect()
}

/// The host directory of cgroup `path` in the hierarchy mounted by `m`.
fn host_cgroup_dir(m: &crate::mountinfo::MountEntry, path: &str) -> PathBuf {
    let below = Path::new(path)
        .strip_prefix(&m.root)
        .unwrap_or_else(|_| Path::new(path).strip_prefix("/").unwrap_or(Path::new(path)));
    Path::new(&m.mount_point).join(below)
}

/// The handful of criu's rpc.proto messages used here, encoded and decoded by hand
/// (protobuf wire format: varints and length-delimited fields).
mod rpc {
    pub const DUMP: i64 = 1;
    pub const RESTORE: i64 = 2;
    pub const NOTIFY: i64 = 6;

    #[derive(Debug, Default)]
    pub struct Msg(pub Vec<u8>);

    impl Msg {
        fn varint(&mut self, mut v: u64) {
            loop {
                let b = (v & 0x7f) as u8;
                v >>= 7;
                if v == 0 {
                    self.0.push(b);
                    return;
                }
                self.0.push(b | 0x80);
            }
        }

        fn key(&mut self, field: u32, wire: u64) {
            self.varint((u64::from(field) << 3) | wire);
        }

        /// int32/int64/enum: negative values as their 64-bit two's complement, as protobuf.
        pub fn int(&mut self, field: u32, v: i64) -> &mut Self {
            self.key(field, 0);
            self.varint(v as u64);
            self
        }

        pub fn flag(&mut self, field: u32, v: bool) -> &mut Self {
            self.int(field, i64::from(v))
        }

        pub fn bytes(&mut self, field: u32, b: &[u8]) -> &mut Self {
            self.key(field, 2);
            self.varint(b.len() as u64);
            self.0.extend_from_slice(b);
            self
        }

        pub fn str(&mut self, field: u32, s: &str) -> &mut Self {
            self.bytes(field, s.as_bytes())
        }

        pub fn msg(&mut self, field: u32, m: &Msg) -> &mut Self {
            self.bytes(field, &m.0)
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Value<'a> {
        Int(u64),
        Bytes(&'a [u8]),
    }

    fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, String> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *buf.get(*pos).ok_or("truncated varint")?;
            *pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }

    /// The fields of one message, in order.
    pub fn fields(buf: &[u8]) -> Result<Vec<(u32, Value<'_>)>, String> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < buf.len() {
            let key = varint(buf, &mut pos)?;
            let field = u32::try_from(key >> 3).map_err(|_| "field number too large")?;
            match key & 7 {
                0 => out.push((field, Value::Int(varint(buf, &mut pos)?))),
                1 => pos += 8,
                2 => {
                    let len =
                        usize::try_from(varint(buf, &mut pos)?).map_err(|_| "length too large")?;
                    let end = pos.checked_add(len).ok_or("length too large")?;
                    let b = buf.get(pos..end).ok_or("truncated field")?;
                    out.push((field, Value::Bytes(b)));
                    pos = end;
                }
                5 => pos += 4,
                w => return Err(format!("unknown wire type {w}")),
            }
        }
        if pos > buf.len() {
            return Err("truncated field".into());
        }
        Ok(out)
    }

    /// criu_resp, the parts the runtime reads.
    #[derive(Debug, Default, PartialEq, Eq)]
    pub struct Resp {
        pub typ: i64,
        pub success: bool,
        pub restored_pid: Option<i32>,
        pub notify_script: Option<String>,
        pub notify_pid: Option<i32>,
        pub errno: Option<i32>,
        pub errmsg: Option<String>,
    }

    fn text(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    pub fn parse_resp(buf: &[u8]) -> Result<Resp, String> {
        let mut r = Resp::default();
        for (field, v) in fields(buf)? {
            match (field, v) {
                (1, Value::Int(t)) => r.typ = t as i64,
                (2, Value::Int(s)) => r.success = s != 0,
                (4, Value::Bytes(b)) => {
                    for (f, v) in fields(b)? {
                        if let (1, Value::Int(p)) = (f, v) {
                            r.restored_pid = Some(p as i32);
                        }
                    }
                }
                (5, Value::Bytes(b)) => {
                    for (f, v) in fields(b)? {
                        match (f, v) {
                            (1, Value::Bytes(s)) => r.notify_script = Some(text(s)),
                            (2, Value::Int(p)) => r.notify_pid = Some(p as i32),
                            _ => {}
                        }
                    }
                }
                (7, Value::Int(e)) => r.errno = Some(e as i32),
                (9, Value::Bytes(s)) => r.errmsg = Some(text(s)),
                _ => {}
            }
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_round_trip() {
        let mut notify = rpc::Msg::default();
        notify.str(1, "post-restore").int(2, 4242);
        let mut resp = rpc::Msg::default();
        resp.int(1, rpc::NOTIFY).flag(2, true).msg(5, &notify);
        let r = rpc::parse_resp(&resp.0).unwrap();
        assert_eq!(r.typ, rpc::NOTIFY);
        assert!(r.success);
        assert_eq!(r.notify_script.as_deref(), Some("post-restore"));
        assert_eq!(r.notify_pid, Some(4242));

        let mut restore = rpc::Msg::default();
        restore.int(1, 77);
        let mut resp = rpc::Msg::default();
        resp.int(1, rpc::RESTORE)
            .flag(2, false)
            .int(7, 2)
            .str(9, "no such file")
            .msg(4, &restore);
        let r = rpc::parse_resp(&resp.0).unwrap();
        assert_eq!(r.restored_pid, Some(77));
        assert!(!r.success);
        assert_eq!(r.errno, Some(2));
        assert_eq!(r.errmsg.as_deref(), Some("no such file"));
        assert!(rpc::parse_resp(&[0x0a, 0x05, 0x01]).is_err(), "truncated");
    }

    #[test]
    fn encodes_like_protobuf() {
        let mut m = rpc::Msg::default();
        m.int(1, 300).flag(3, true).str(10, "dump.log");
        assert_eq!(
            m.0,
            [
                0x08, 0xac, 0x02, 0x18, 0x01, 0x52, 8, b'd', b'u', b'm', b'p', b'.', b'l', b'o',
                b'g'
            ]
        );
        let mut n = rpc::Msg::default();
        n.int(1, -1);
        assert_eq!(n.0.len(), 11, "negative int32 takes ten varint bytes");
        let opts = CriuOpts {
            images_dir_fd: 5,
            ext_mnt: vec![("/data".into(), "/host/data".into())],
            ..CriuOpts::default()
        };
        let req = request(rpc::DUMP, &opts);
        let fields = rpc::fields(&req.0).unwrap();
        assert_eq!(fields[0], (1, rpc::Value::Int(1)));
        let rpc::Value::Bytes(inner) = fields[1].1 else {
            panic!("opts is a message")
        };
        let inner = rpc::fields(inner).unwrap();
        assert_eq!(inner[0], (1, rpc::Value::Int(5)));
        let ext = inner.iter().find(|(f, _)| *f == 23).unwrap();
        let rpc::Value::Bytes(ext) = ext.1 else {
            panic!()
        };
        assert_eq!(
            rpc::fields(ext).unwrap(),
            [
                (1, rpc::Value::Bytes(b"/data")),
                (2, rpc::Value::Bytes(b"/host/data"))
            ]
        );
    }

    #[test]
    fn mountinfo_and_cgroups() {
        let text = "36 35 98:0 /mnt1 /mnt/my\\040dir rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                    40 30 0:33 /vt-1 /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct\n\
                    41 30 0:34 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let m = crate::mountinfo::parse(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].mount_point, "/mnt/my dir");
        assert_eq!(m[0].root, "/mnt1");
        assert_eq!(m[1].fstype, "cgroup");
        assert_eq!(m[1].super_options, "rw,cpu,cpuacct");
        let host = crate::mountinfo::parse(
            "50 1 0:33 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
             51 1 0:34 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate\n",
        );
        let procs = parse_proc_cgroup("4:cpu,cpuacct:/vt-2\n0::/vt-2\n");
        let cm = CgroupMount {
            mount_point: m[1].mount_point.clone(),
            fstype: m[1].fstype.clone(),
            super_options: m[1].super_options.clone(),
        };
        assert_eq!(
            cgroup_mount_source(&cm, &host, &procs),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/vt-2"))
        );
        let cm2 = CgroupMount {
            mount_point: "/sys/fs/cgroup/unified".into(),
            fstype: "cgroup2".into(),
            super_options: "rw,nsdelegate".into(),
        };
        assert_eq!(
            cgroup_mount_source(&cm2, &host, &procs),
            Some(PathBuf::from("/sys/fs/cgroup/unified/vt-2"))
        );
        assert_eq!(clean(Path::new("/a//b/../c/")), "/a/c");
    }

    #[test]
    fn cgroups_modes() {
        assert_eq!(CgroupsMode::parse("soft").unwrap(), CgroupsMode::Soft);
        assert!(CgroupsMode::parse("hard")
            .unwrap_err()
            .to_string()
            .contains("manage-cgroups-mode"));
    }

    #[test]
    fn missing_criu_is_named() {
        let e = find_criu(Path::new("/nonexistent/criu"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("install criu"), "{e}");
        let e = find_criu(Path::new("no-such-criu-binary"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no-such-criu-binary"), "{e}");
    }
}
