//! The per-container state directory under `--root`: `state.json` (written atomically), a
//! copy of config.json, the exec fifo that holds the init until `start`, and a lock.

use std::collections::HashMap;
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

impl StateDir {
    /// Reserve the directory for a new container; fails if the ID is taken.
    pub fn create(root: &Path, id: &str) -> Result<StateDir> {
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
        Ok(StateDir {
            id: id.to_string(),
            dir,
            _lock: Some(lock),
        })
    }

    /// Open an existing container's directory, locked exclusively (mutations) or shared.
    pub fn open(root: &Path, id: &str, exclusive: bool) -> Result<StateDir> {
        validate_id(id)?;
        let dir = root.join(id);
        let lock = match lock_dir(&dir, exclusive) {
            Ok(l) => l,
            Err(Error::Io { err, .. }) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(id.to_string()))
            }
            Err(e) => return Err(e),
        };
        // A half-created directory (no state.json) counts as not existing.
        if !dir.join(STATE_FILE).exists() {
            return Err(Error::NotFound(id.to_string()));
        }
        Ok(StateDir {
            id: id.to_string(),
            dir,
            _lock: Some(lock),
        })
    }

    pub fn load(&self) -> Result<State> {
        let path = self.dir.join(STATE_FILE);
        let raw = fs::read(&path).ctx(|| format!("read {}", path.display()))?;
        serde_json::from_slice(&raw)
            .map_err(|e| Error::config(format!("{}: corrupt state: {e}", path.display())))
    }

    /// temp + rename, so a reader never sees a half-written file.
    pub fn save(&self, state: &State) -> Result<()> {
        let tmp = self.dir.join(".state.json.tmp");
        let data = serde_json::to_vec(state).map_err(|e| Error::config(e.to_string()))?;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .ctx(|| format!("write {}", tmp.display()))?;
        f.write_all(&data)
            .ctx(|| format!("write {}", tmp.display()))?;
        fs::rename(&tmp, self.dir.join(STATE_FILE)).ctx(|| "commit state.json")?;
        Ok(())
    }

    pub fn write_config(&self, raw: &[u8]) -> Result<()> {
        fs::write(self.dir.join(CONFIG_FILE), raw).ctx(|| "copy config.json into the state dir")
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
        let tmp = self.dir.join(".config.json.tmp");
        fs::write(&tmp, data).ctx(|| format!("write {}", tmp.display()))?;
        fs::rename(&tmp, &path).ctx(|| format!("replace {}", path.display()))
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
        fs::remove_dir_all(&self.dir).ctx(|| format!("remove {}", self.dir.display()))
    }
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
        if path.join(STATE_FILE).exists() {
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
