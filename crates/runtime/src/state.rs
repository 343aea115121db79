//! The per-container state directory under `--root`: `state.json` (written atomically), a
//! copy of config.json, the exec fifo that holds the init until `start`, a lock, and
//! — while `create` runs — the `creating` record.
//!
//! A container exists for other commands once its directory holds state.json and no
//! `creating` record. `create` writes the record before it changes anything on the host and
//! appends to it what it would have to undo (the cgroup, then the init's PID and start
//! time); state.json follows while the init sets itself up, and the record is removed when
//! `create` succeeds. So a `create` killed at any point leaves a directory that `list` and
//! `state` leave out (as runc does) and that `delete` finds, with all it needs to kill the
//! init, remove the cgroup and remove the directory.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Context, Error, Result};
use crate::spec::validate_id;
use crate::sys;

pub const STATE_FILE: &str = "state.json";
pub const CONFIG_FILE: &str = "config.json";
pub const EXEC_FIFO: &str = "exec.fifo";
/// Present from the reservation of the directory until `create` succeeds.
pub const CREATING_FILE: &str = "creating";

/// What we persist. The first fields are the runtime-spec `state` document (runc prints the
/// same names); the rest is ours.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub oci_version: String,
    pub id: String,
    pub pid: i32,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: String,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// /proc/PID/stat start time of the init, to detect PID reuse.
    pub pid_start: u64,
    pub cgroups_path: PathBuf,
    /// False for a rootless container whose user may not create its cgroup.
    #[serde(default = "yes")]
    pub has_cgroup: bool,
    /// Set once `delete`/`run` has run the poststop hooks, so they never run twice.
    #[serde(default)]
    pub stopped_hooks_done: bool,
    /// Whether config.json has poststart/poststop hooks: `start` and `delete` only read the
    /// saved config when it does.
    #[serde(default = "yes")]
    pub has_late_hooks: bool,
    /// The container's own resctrl group (linux.intelRdt without a closID), removed with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intel_rdt: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

pub struct StateDir {
    pub id: String,
    pub dir: PathBuf,
    /// Held for the lifetime of this value (flock on the directory).
    _lock: Option<OwnedFd>,
}

impl State {
    /// The container's cgroup; None for a rootless container that has none (never one at
    /// its cgroupsPath that it does not own).
    pub fn cgroup_if_any(&self) -> Result<Option<vessel_cgroups::CgroupManager>> {
        if !self.has_cgroup {
            return Ok(None);
        }
        Ok(Some(vessel_cgroups::CgroupManager::new(
            &self.cgroups_path,
        )?))
    }

    /// The container's cgroup, for an operation that needs one (`action` says which).
    pub fn cgroup(&self, action: &str) -> Result<vessel_cgroups::CgroupManager> {
        self.cgroup_if_any()?.ok_or_else(|| Error::WrongState {
            id: self.id.clone(),
            status: "without a cgroup (created rootless, with no cgroup its user may create)"
                .into(),
            action: format!("cannot {action}"),
        })
    }
}

/// What a `create` records before each step that leaves something on the host, one JSON
/// object per line (appended, so a kill mid-write loses at most the incomplete last line).
/// Later lines add to earlier ones.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    #[serde(skip_serializing_if = "Option::is_none")]
    cgroups_path: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    has_cgroup: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid_start: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    intel_rdt: Option<PathBuf>,
}

impl Record {
    fn parse(raw: &[u8]) -> Record {
        let mut out = Record::default();
        // Only complete lines: the last one may have been cut short by a kill.
        let complete = raw
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(&raw[..0], |end| &raw[..end]);
        for line in complete.split(|&b| b == b'\n') {
            let Ok(r) = serde_json::from_slice::<Record>(line) else {
                continue;
            };
            out.cgroups_path = r.cgroups_path.or(out.cgroups_path);
            out.has_cgroup = r.has_cgroup.or(out.has_cgroup);
            out.pid = r.pid.or(out.pid);
            out.pid_start = r.pid_start.or(out.pid_start);
            out.intel_rdt = r.intel_rdt.or(out.intel_rdt);
        }
        out
    }
}

/// What `open_any` found in a container's directory.
#[derive(Debug)]
pub enum Found {
    /// A container whose `create` succeeded.
    Created(State),
    /// What a `create` that did not finish left (killed, or still running when its lock was
    /// taken from a dead process): what it recorded of its cgroup and init, None when it
    /// died before anything needed undoing.
    Unfinished(Option<State>),
    /// state.json cannot be read.
    Corrupt(Error),
}

impl StateDir {
    /// Reserve the directory for a new container; fails if the ID is taken (also by a
    /// `create` that did not finish, until `delete` removes it — as runc). The `creating`
    /// record names the cgroup before it is created; `has_cgroup` says whether a later
    /// `delete` may kill and remove what it finds there (root always owns it; a rootless
    /// `create` records it once it knows, with [`StateDir::record_cgroup`]); `intel_rdt` is
    /// the resctrl group the container will own, if any.
    pub fn create(
        root: &Path,
        id: &str,
        cgroups_path: &Path,
        has_cgroup: bool,
        intel_rdt: Option<&Path>,
    ) -> Result<StateDir> {
        validate_id(id)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(root)
            .ctx(|| format!("create state root {}", root.display()))?;
        let dir = root.join(id);
        match fs::DirBuilder::new().mode(0o711).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::Exists(id.to_string()))
            }
            Err(e) => return Err(e).ctx(|| format!("create {}", dir.display())),
        }
        let lock = lock_dir(&dir, true)?;
        let sd = StateDir {
            id: id.to_string(),
            dir,
            _lock: Some(lock),
        };
        sd.append_record(&Record {
            cgroups_path: Some(cgroups_path.to_path_buf()),
            has_cgroup: Some(has_cgroup),
            intel_rdt: intel_rdt.map(Path::to_path_buf),
            ..Record::default()
        })?;
        Ok(sd)
    }

    /// A rootless `create` made its cgroup: `delete` removes it too.
    pub fn record_cgroup(&self) -> Result<()> {
        self.append_record(&Record {
            has_cgroup: Some(true),
            ..Record::default()
        })
    }

    /// The init exists: `delete` kills it (checked against its start time).
    pub fn record_pid(&self, pid: i32, pid_start: u64) -> Result<()> {
        self.append_record(&Record {
            pid: Some(pid),
            pid_start: Some(pid_start),
            ..Record::default()
        })
    }

    /// One append, not fsync'd: the record describes processes and cgroups, which a crash of
    /// the machine ends anyway — after a reboot a missing or cut record leaves only this
    /// directory to remove. A killed runtime's writes are in the page cache.
    fn append_record(&self, rec: &Record) -> Result<()> {
        let path = self.dir.join(CREATING_FILE);
        let mut line = serde_json::to_vec(rec).map_err(|e| Error::config(e.to_string()))?;
        line.push(b'\n');
        fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .and_then(|mut f| f.write_all(&line))
            .ctx(|| format!("write {}", path.display()))
    }

    /// `create` succeeded: the container exists for every command from now on.
    pub fn finish_create(&self) -> Result<()> {
        let path = self.dir.join(CREATING_FILE);
        fs::remove_file(&path).ctx(|| format!("remove {}", path.display()))
    }

    /// Open an existing container's directory, locked exclusively (mutations) or shared.
    /// What an unfinished `create` left counts as not existing (as runc), except for
    /// [`StateDir::open_any`].
    pub fn open(root: &Path, id: &str, exclusive: bool) -> Result<StateDir> {
        let dir = Self::lock_existing(root, id, exclusive)?;
        if !dir.dir.join(STATE_FILE).exists() || dir.dir.join(CREATING_FILE).exists() {
            return Err(Error::NotFound(id.to_string()));
        }
        Ok(dir)
    }

    /// For `delete`: the directory locked exclusively — so a `create` still running is
    /// waited for — with whatever it holds, finished or not.
    pub fn open_any(root: &Path, id: &str) -> Result<(StateDir, Found)> {
        let dir = Self::lock_existing(root, id, true)?;
        let state = match fs::read(dir.dir.join(STATE_FILE)) {
            Ok(raw) => Some(dir.parse_state(&raw)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some(Err(e).ctx(|| format!("read {}", dir.dir.join(STATE_FILE).display()))),
        };
        let record = match fs::read(dir.dir.join(CREATING_FILE)) {
            Ok(raw) => Some(Record::parse(&raw)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(e).ctx(|| format!("read {}", dir.dir.join(CREATING_FILE).display()))
            }
        };
        let found = match (state, record) {
            (Some(Ok(st)), None) => Found::Created(st),
            (Some(Err(e)), None) => Found::Corrupt(e),
            // state.json is complete when it is there (written by rename), and says more.
            (Some(Ok(st)), Some(_)) => Found::Unfinished(Some(st)),
            (_, Some(rec)) => Found::Unfinished(dir.state_from_record(rec)),
            // Killed before the record was written — or a `delete` killed while removing
            // the directory: nothing but the directory is left.
            (None, None) => Found::Unfinished(None),
        };
        Ok((dir, found))
    }

    /// What the record says is to be undone, in the shape `delete` works with.
    fn state_from_record(&self, rec: Record) -> Option<State> {
        let cgroups_path = rec.cgroups_path?;
        Some(State {
            oci_version: String::new(),
            id: self.id.clone(),
            pid: rec.pid.unwrap_or(0),
            bundle: PathBuf::new(),
            rootfs: PathBuf::new(),
            created: String::new(),
            owner: String::new(),
            annotations: HashMap::new(),
            pid_start: rec.pid_start.unwrap_or(0),
            cgroups_path,
            has_cgroup: rec.has_cgroup.unwrap_or(false),
            stopped_hooks_done: true,
            has_late_hooks: false,
            intel_rdt: rec.intel_rdt,
        })
    }

    fn lock_existing(root: &Path, id: &str, exclusive: bool) -> Result<StateDir> {
        validate_id(id)?;
        let dir = root.join(id);
        let lock = match lock_dir(&dir, exclusive) {
            Ok(l) => l,
            Err(Error::Io { err, .. }) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(id.to_string()))
            }
            Err(e) => return Err(e),
        };
        Ok(StateDir {
            id: id.to_string(),
            dir,
            _lock: Some(lock),
        })
    }

    pub fn load(&self) -> Result<State> {
        let path = self.dir.join(STATE_FILE);
        let raw = fs::read(&path).ctx(|| format!("read {}", path.display()))?;
        self.parse_state(&raw)
    }

    fn parse_state(&self, raw: &[u8]) -> Result<State> {
        serde_json::from_slice(raw).map_err(|e| {
            Error::config(format!(
                "{}: corrupt state: {e}",
                self.dir.join(STATE_FILE).display()
            ))
        })
    }

    pub fn save(&self, state: &State) -> Result<()> {
        let data = serde_json::to_vec(state).map_err(|e| Error::config(e.to_string()))?;
        write_atomic(&self.dir, &[(STATE_FILE.as_ref(), &data)], 0o600)
    }

    /// state.json and the copy of config.json, in one atomic step each.
    pub fn save_with_config(&self, state: &State, config: &[u8]) -> Result<()> {
        let data = serde_json::to_vec(state).map_err(|e| Error::config(e.to_string()))?;
        write_atomic(
            &self.dir,
            &[(CONFIG_FILE.as_ref(), config), (STATE_FILE.as_ref(), &data)],
            0o600,
        )
    }

    /// Merge `resources` into linux.resources of the saved config.json: fields that are set
    /// replace the old values, the rest stay.
    pub fn merge_resources(&self, resources: &oci_spec::runtime::LinuxResources) -> Result<()> {
        let path = self.dir.join(CONFIG_FILE);
        let raw = fs::read(&path).ctx(|| format!("read {}", path.display()))?;
        let mut config: serde_json::Value = serde_json::from_slice(&raw)
            .map_err(|e| Error::config(format!("{}: corrupt config: {e}", path.display())))?;
        let new = serde_json::to_value(resources).map_err(|e| Error::config(e.to_string()))?;
        let linux = &mut config["linux"];
        if !linux.is_object() {
            *linux = serde_json::json!({});
        }
        merge_json(&mut linux["resources"], new);
        let data = serde_json::to_vec(&config).map_err(|e| Error::config(e.to_string()))?;
        write_atomic(&self.dir, &[(CONFIG_FILE.as_ref(), &data)], 0o600)
    }

    pub fn config(&self) -> Result<oci_spec::runtime::Spec> {
        let raw = fs::read(self.dir.join(CONFIG_FILE)).ctx(|| "read the saved config.json")?;
        crate::spec::parse_spec(&raw, "saved config.json")
    }

    /// The lock descriptor: a forked child must close it at once, or it would keep holding
    /// the lock (flock belongs to the open file description, which fork shares).
    pub fn lock_fd(&self) -> Option<std::os::fd::RawFd> {
        self._lock.as_ref().map(|f| f.as_raw_fd())
    }

    pub fn fifo_path(&self) -> PathBuf {
        self.dir.join(EXEC_FIFO)
    }

    /// Derive the status from what the kernel says, not from what we last wrote.
    pub fn status(&self, state: &State) -> Status {
        if state.pid <= 0 {
            return Status::Creating;
        }
        match sys::process_start_time(state.pid) {
            Some(start) if start == state.pid_start => {}
            _ => return Status::Stopped,
        }
        if self.fifo_path().exists() {
            return Status::Created;
        }
        let frozen = state.has_cgroup
            && vessel_cgroups::CgroupManager::new(&state.cgroups_path)
                .and_then(|m| m.is_frozen())
                .unwrap_or(false);
        if frozen {
            Status::Paused
        } else {
            Status::Running
        }
    }

    pub fn remove(self) -> Result<()> {
        match fs::remove_dir_all(&self.dir) {
            // Removed meanwhile by the `create` whose lock we waited for, as it failed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r.ctx(|| format!("remove {}", self.dir.display())),
        }
    }
}

/// Write files in `dir` atomically: each goes to a temporary file beside it, which is then
/// renamed over the file, in the order given. A reader — and the next command after a
/// runtime killed at any point — sees each file's old content or its new one, never a torn
/// file. The one way the runtime replaces a file.
///
/// Nothing is fsync'd (runc and crun do not either): what these files describe — processes,
/// cgroups, mounts — does not survive a crash of the machine, so neither needs to the record
/// of it; `--root` is a tmpfs (/run) on most hosts. Where it is not and the machine lost
/// power mid-write, the torn file reads as a corrupt state that `delete --force` removes.
/// The syncs cost about a millisecond per container on ext4, a tenth of a lifecycle.
pub fn write_atomic(dir: &Path, files: &[(&OsStr, &[u8])], mode: u32) -> Result<()> {
    let tmp_of = |name: &OsStr| {
        let mut tmp = OsString::from(".");
        tmp.push(name);
        tmp.push(".vessel-tmp");
        dir.join(tmp)
    };
    let staged = (|| -> Result<()> {
        for (name, data) in files {
            let tmp = tmp_of(name);
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .custom_flags(libc::O_CLOEXEC)
                .open(&tmp)
                .ctx(|| format!("write {}", tmp.display()))?;
            f.write_all(data)
                .ctx(|| format!("write {}", tmp.display()))?;
        }
        for (name, _) in files {
            let path = dir.join(name);
            fs::rename(tmp_of(name), &path).ctx(|| format!("replace {}", path.display()))?;
        }
        Ok(())
    })();
    if let Err(e) = staged {
        for (name, _) in files {
            let _ = fs::remove_file(tmp_of(name));
        }
        return Err(e);
    }
    Ok(())
}

/// Objects merge key by key; anything else (numbers, strings, arrays) replaces; nulls are
/// "not given" and change nothing.
fn merge_json(into: &mut serde_json::Value, from: serde_json::Value) {
    match from {
        serde_json::Value::Null => {}
        serde_json::Value::Object(map) => {
            if !into.is_object() {
                *into = serde_json::json!({});
            }
            for (k, v) in map {
                merge_json(&mut into[&k], v);
            }
        }
        other => *into = other,
    }
}

fn lock_dir(dir: &Path, exclusive: bool) -> Result<OwnedFd> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .ctx(|| format!("open {}", dir.display()))?;
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).ctx(|| format!("lock {}", dir.display()));
        }
    }
    Ok(f.into())
}

/// IDs of all containers under `root`, sorted.
pub fn list_ids(root: &Path) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
        Err(e) => return Err(e).ctx(|| format!("read {}", root.display())),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        // What an unfinished `create` left is not listed (as runc); `delete` removes it.
        if path.join(STATE_FILE).exists() && !path.join(CREATING_FILE).exists() {
            if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                ids.push(name.to_string());
            }
        }
    }
    ids.sort();
    Ok(ids)
}

fn yes() -> bool {
    true
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}
