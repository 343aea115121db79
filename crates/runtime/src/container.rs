//! Operations on an existing container: start, state, kill, delete, list, ps, pause, resume,
//! update, stats. Each derives the status from the kernel, checks that the operation makes
//! sense in it, and says which status it found when it refuses.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;
use serde::Serialize;
use vessel_cgroups::CgroupManager;

use crate::error::{Context, Error, Result};
use crate::hooks::{self, HookState};
use crate::state::{self, Found, State, StateDir, Status};
use crate::sys;

/// The runtime-spec state document, with runc's field names (`state` and `list --format json`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StateView {
    pub oci_version: String,
    pub id: String,
    pub pid: i32,
    pub status: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: String,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
}

fn view(state: &State, status: Status) -> StateView {
    StateView {
        oci_version: state.oci_version.clone(),
        id: state.id.clone(),
        pid: if status == Status::Stopped {
            0
        } else {
            state.pid
        },
        status: status.to_string(),
        bundle: state.bundle.clone(),
        rootfs: state.rootfs.clone(),
        created: state.created.clone(),
        owner: state.owner.clone(),
        annotations: state.annotations.clone(),
    }
}

fn wrong(id: &str, status: Status, action: &str) -> Error {
    Error::WrongState {
        id: id.to_string(),
        status: status.to_string(),
        action: action.to_string(),
    }
}

pub fn state(root: &Path, id: &str) -> Result<StateView> {
    let dir = StateDir::open(root, id, false)?;
    let st = dir.load()?;
    let status = dir.status(&st);
    Ok(view(&st, status))
}

pub fn list(root: &Path) -> Result<Vec<StateView>> {
    let mut out = Vec::new();
    for id in state::list_ids(root)? {
        // A container deleted while we list is simply skipped.
        if let Ok(v) = state(root, &id) {
            out.push(v);
        }
    }
    Ok(out)
}

/// Release a created container's init: one write to its fifo.
pub fn start(root: &Path, id: &str) -> Result<()> {
    let dir = StateDir::open(root, id, true)?;
    let st = dir.load()?;
    start_loaded(&dir, &st)
}

/// `start` for a container whose state is at hand (`run` right after `create`), with its
/// directory locked.
pub fn start_loaded(dir: &StateDir, st: &State) -> Result<()> {
    let id = st.id.as_str();
    let status = dir.status(st);
    if status != Status::Created {
        // runc's wordings.
        let action = match status {
            Status::Running => "cannot start an already running container",
            Status::Stopped => "cannot start a container that has stopped",
            Status::Paused => "cannot start a paused container",
            _ => "only a created container can be started",
        };
        return Err(wrong(id, status, action));
    }
    let fifo = dir.fifo_path();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags_nonblock()
        .open(&fifo)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENXIO) | Some(libc::ENOENT) => {
                wrong(id, Status::Stopped, "its init is gone")
            }
            _ => Error::Io {
                context: format!("open {}", fifo.display()),
                err: e,
            },
        })?;
    (&f).write_all(b"0").ctx(|| "release the container init")?;
    drop(f);
    std::fs::remove_file(&fifo).ctx(|| format!("remove {}", fifo.display()))?;
    if !st.has_late_hooks {
        return Ok(());
    }
    let spec = dir.config()?;
    let hs = HookState {
        oci_version: &st.oci_version,
        id,
        status: "running",
        pid: Some(st.pid),
        bundle: &st.bundle,
        annotations: Some(&st.annotations),
    };
    // poststart failures are reported, but the container keeps running (runtime-spec).
    if let Err(e) = hooks::run_all(
        "poststart",
        spec.hooks().as_ref().and_then(|h| h.poststart().as_ref()),
        &hs,
    ) {
        eprintln!("vessel-runtime: warning: {e}");
    }
    Ok(())
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
    }
}

/// A signal by name (KILL, SIGKILL, SIGRTMIN+3) or number. 0 is valid: as with kill(2),
/// it delivers nothing and checks that the process exists.
pub fn parse_signal(s: &str) -> Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        if (0..=64).contains(&n) {
            return Ok(n);
        }
        return Err(Error::Usage(format!(
            "signal {s:?}: numbers go from 0 to 64"
        )));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|sig| sig as i32)
        .or_else(|_| {
            // Real-time signals: SIGRTMIN+N / SIGRTMAX-N.
            let rtmin = libc::SIGRTMIN();
            let rtmax = libc::SIGRTMAX();
            if let Some(n) = name
                .strip_prefix("SIGRTMIN+")
                .and_then(|n| n.parse::<i32>().ok())
            {
                return Ok(rtmin + n);
            }
            if let Some(n) = name
                .strip_prefix("SIGRTMAX-")
                .and_then(|n| n.parse::<i32>().ok())
            {
                return Ok(rtmax - n);
            }
            match name.as_str() {
                "SIGRTMIN" => Ok(rtmin),
                "SIGRTMAX" => Ok(rtmax),
                _ => Err(Error::Usage(format!("unknown signal {s:?}"))),
            }
        })
}

pub fn kill(root: &Path, id: &str, signal: i32, all: bool) -> Result<()> {
    let dir = StateDir::open(root, id, false)?;
    let st = dir.load()?;
    let status = dir.status(&st);
    if status == Status::Stopped {
        // As runc, `kill --all` still reaches what is left in the cgroup of a stopped
        // container: processes that outlived its init, which only a container without a
        // pid namespace of its own can have (containerd's shim sends it for exactly that).
        // With its own pid namespace they all died with the init; anything still in the
        // cgroup is not the container's and is left alone.
        if all {
            if let Some(cg) = st.cgroup_if_any()? {
                if !own_pid_namespace(&dir) && !cg.pids()?.is_empty() {
                    cg.kill_all(signal)?;
                }
            }
            return Ok(());
        }
        // "container not running" is runc's wording: containerd and podman match it to
        // tell an exited process from a failure.
        return Err(wrong(
            id,
            status,
            "cannot send a signal to a stopped container (container not running)",
        ));
    }
    // Without a cgroup (rootless) the init is all there is to signal.
    if let (true, Some(cg)) = (all, st.cgroup_if_any()?) {
        cg.kill_all(signal)?;
        return Ok(());
    }
    signal_init(&st, signal)
}

/// Whether the container has a pid namespace of its own (not the host's, not joined by
/// path): then all of its processes die with its init.
fn own_pid_namespace(dir: &StateDir) -> bool {
    let Ok(spec) = dir.config() else {
        // Unreadable: assume the safe answer, which never kills what may not be ours.
        return true;
    };
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
        .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Pid && n.path().is_none())
}

/// How many processes other than its init a just-created container's cgroup holds — a
/// cgroup it shares with something else (runc 1.1 warns "container's cgroup is not empty").
pub fn foreign_processes(st: &State) -> Result<usize> {
    let Some(cg) = st.cgroup_if_any()? else {
        return Ok(0);
    };
    Ok(cg.pids()?.into_iter().filter(|p| *p != st.pid).count())
}

fn signal_init(st: &State, signal: i32) -> Result<()> {
    let pidfd = sys::pidfd_open(st.pid).ctx(|| format!("open pid {}", st.pid))?;
    // Re-check after pinning the process with a pidfd: the PID cannot be recycled under us now.
    if sys::process_start_time(st.pid) != Some(st.pid_start) {
        return Err(wrong(&st.id, Status::Stopped, "its init has exited"));
    }
    sys::pidfd_send_signal(pidfd.as_fd(), signal)
        .ctx(|| format!("send signal {signal} to pid {}", st.pid))
}

pub fn delete(root: &Path, id: &str, force: bool) -> Result<()> {
    let mut steps = crate::fault::steps("delete");
    let (dir, found) = match StateDir::open_any(root, id) {
        Ok(d) => d,
        Err(Error::NotFound(_)) if force => return Ok(()),
        Err(e) => return Err(e),
    };
    steps.done("state dir locked");
    let mut st = match found {
        Found::Created(st) => st,
        // What a `create` that did not finish left. Its init never ran user code: it goes
        // with or without --force; without it runc says the container does not exist after
        // removing the directory, and so do we.
        Found::Unfinished(st) => {
            if let Some(st) = &st {
                let cg = st.cgroup_if_any()?;
                kill_and_wait(st, Status::Creating, cg.as_ref(), None)?;
                steps.done("processes killed");
                remove_cgroup(&dir, st, cg.as_ref())?;
                steps.done("cgroup removed");
            }
            dir.remove()?;
            return if force {
                Ok(())
            } else {
                Err(Error::NotFound(id.to_string()))
            };
        }
        // A state dir whose state cannot be read is garbage either way when forced.
        Found::Corrupt(_) if force => return dir.remove(),
        Found::Corrupt(e) => return Err(e),
    };
    let status = dir.status(&st);
    let cg = st.cgroup_if_any()?;
    match status {
        Status::Stopped => {}
        // A created container never ran user code: deleting it is always allowed.
        Status::Created => kill_and_wait(&st, status, cg.as_ref(), Some(&dir))?,
        Status::Running | Status::Paused | Status::Creating if force => {
            kill_and_wait(&st, status, cg.as_ref(), Some(&dir))?
        }
        _ => {
            return Err(wrong(
                id,
                status,
                "cannot delete a container that is not stopped (stop it first, or use \
                 delete --force)",
            ))
        }
    }
    steps.done("processes killed");
    remove_cgroup(&dir, &st, cg.as_ref())?;
    steps.done("cgroup removed");
    if st.has_late_hooks && !st.stopped_hooks_done {
        let spec = dir.config().ok();
        let hs = HookState {
            oci_version: &st.oci_version,
            id,
            status: "stopped",
            pid: None,
            bundle: &st.bundle,
            annotations: Some(&st.annotations),
        };
        if let Some(spec) = spec {
            if let Err(e) = hooks::run_all(
                "poststop",
                spec.hooks().as_ref().and_then(|h| h.poststop().as_ref()),
                &hs,
            ) {
                eprintln!("vessel-runtime: warning: {e}");
            }
        }
        // A delete that is interrupted from here on does not run them again.
        st.stopped_hooks_done = true;
        dir.save(&st)?;
    }
    steps.done("poststop hooks ran");
    dir.remove()
}

/// SIGKILL everything in the container and wait for its init to exit. Each failure is
/// reported: a container whose processes survive is not deleted. With `dir` (a container
/// that finished its create), a container with a pid namespace of its own loses all of its
/// processes with its init, so other processes in its cgroup — one it shares — are not
/// killed (as runc, which signals the whole cgroup only without a private pid namespace).
fn kill_and_wait(
    st: &State,
    status: Status,
    cg: Option<&CgroupManager>,
    dir: Option<&StateDir>,
) -> Result<()> {
    let failed = |what: String| Error::WrongState {
        id: st.id.clone(),
        status: status.to_string(),
        action: format!("{what}; it was not deleted"),
    };
    if let Some(cg) = cg {
        // Frozen processes do not die of SIGKILL until they are thawed.
        if cg.is_frozen()? {
            cg.thaw()
                .map_err(|e| failed(format!("cannot thaw it to kill its processes: {e}")))?;
        }
        // Only the init in the cgroup (the usual case): killing it is all there is to do, and
        // the config need not be read.
        let beyond_init = match dir {
            Some(dir) => cg.pids()?.iter().any(|p| *p != st.pid) && !own_pid_namespace(dir),
            None => true,
        };
        if beyond_init {
            cg.kill_all(libc::SIGKILL)
                .map_err(|e| failed(format!("cannot kill its processes: {e}")))?;
        }
    }
    if st.pid <= 0 {
        return Ok(());
    }
    let pidfd = match sys::pidfd_open(st.pid) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(()),
        Err(e) => return Err(e).ctx(|| format!("open pid {}", st.pid)),
    };
    // Pinned by the pidfd: the PID cannot be recycled between this check and the signal.
    if sys::process_start_time(st.pid) != Some(st.pid_start) {
        return Ok(());
    }
    match sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(()),
        Err(e) => {
            return Err(failed(format!(
                "cannot kill its init (pid {}): {e}",
                st.pid
            )))
        }
    }
    let exited = sys::pidfd_wait_exit(pidfd.as_fd(), KILL_WAIT_MS)
        .ctx(|| format!("wait for pid {} to exit", st.pid))?;
    if !exited {
        return Err(failed(format!(
            "its init (pid {}) is still alive {} s after SIGKILL (frozen, or in an \
             uninterruptible sleep)",
            st.pid,
            KILL_WAIT_MS / 1000
        )));
    }
    Ok(())
}

/// How long `delete` waits for a killed init to exit (runc: 10 s too).
const KILL_WAIT_MS: i32 = 10_000;

/// Remove the container's cgroup, after killing what is left in it (processes outside a
/// pid namespace may outlive the init), and its resctrl group. A container with a pid
/// namespace of its own has nothing left once its init is gone: whatever is still in the
/// cgroup (it was shared) is not killed, and the cgroup stays with a warning, as runc.
fn remove_cgroup(dir: &StateDir, st: &State, cg: Option<&CgroupManager>) -> Result<()> {
    if let Some(cg) = cg {
        let left = cg.pids()?;
        if left.is_empty() {
            cg.remove()?;
        } else if own_pid_namespace(dir) {
            // The container's own processes may still be exiting: remove() waits for them.
            match cg.remove() {
                Ok(()) => {}
                Err(vessel_cgroups::Error::Io { err, .. })
                    if err.raw_os_error() == Some(libc::EBUSY) =>
                {
                    eprintln!(
                        "vessel-runtime: warning: container's cgroup is not empty: {} \
                         process(es) found that are not the container's (it has a pid \
                         namespace of its own); they were not killed and its cgroup {} \
                         was left in place",
                        cg.pids().map(|p| p.len()).unwrap_or(left.len()),
                        st.cgroups_path.display()
                    );
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            cg.kill_all(libc::SIGKILL).map_err(|e| Error::WrongState {
                id: st.id.clone(),
                status: "stopped".into(),
                action: format!(
                    "cannot kill the processes left in its cgroup: {e}; it was not deleted"
                ),
            })?;
            cg.remove()?;
        }
    }
    if let Some(dir) = &st.intel_rdt {
        crate::rdt::remove(dir)?;
    }
    Ok(())
}

pub fn pause(root: &Path, id: &str) -> Result<()> {
    let dir = StateDir::open(root, id, true)?;
    let st = dir.load()?;
    let status = dir.status(&st);
    if status != Status::Running && status != Status::Created {
        return Err(wrong(
            id,
            status,
            "only a running container can be paused (container not running)",
        ));
    }
    Ok(st.cgroup("be paused")?.freeze()?)
}

pub fn resume(root: &Path, id: &str) -> Result<()> {
    let dir = StateDir::open(root, id, true)?;
    let st = dir.load()?;
    let status = dir.status(&st);
    if status != Status::Paused {
        return Err(wrong(
            id,
            status,
            "only a paused container can be resumed (container not paused)",
        ));
    }
    Ok(st.cgroup("be resumed")?.thaw()?)
}

/// The processes in the container's cgroup. A stopped container has none (or what outlived
/// its init, without a pid namespace of its own): an empty list, not an error, as runc.
pub fn pids(root: &Path, id: &str) -> Result<Vec<i32>> {
    let dir = StateDir::open(root, id, false)?;
    let st = dir.load()?;
    let status = dir.status(&st);
    if status == Status::Stopped {
        return match st.cgroup_if_any()? {
            Some(cg) if !own_pid_namespace(&dir) => Ok(cg.pids()?),
            _ => Ok(Vec::new()),
        };
    }
    Ok(st.cgroup("list its processes")?.pids()?)
}

/// Apply new limits and record them in the saved config.json, so the container's config
/// says what its cgroup enforces (runc keeps them in its state the same way).
pub fn update(root: &Path, id: &str, resources: &LinuxResources) -> Result<()> {
    let dir = StateDir::open(root, id, true)?;
    let st = dir.load()?;
    let status = dir.status(&st);
    if status == Status::Stopped {
        return Err(wrong(
            id,
            status,
            "cannot update a stopped container (container not running)",
        ));
    }
    let cg = st.cgroup("be updated")?;
    CgroupManager::validate(resources, cg.layout())?;
    cg.apply(resources)?;
    dir.merge_resources(resources)
}

/// runc's `update --l3-cache-schema/--mem-bw-schema`: new schemata lines for the
/// container's own resctrl group (one that `linux.intelRdt` made for it).
pub fn update_intel_rdt(root: &Path, id: &str, lines: &[(&str, &str)]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let dir = StateDir::open(root, id, true)?;
    let st = dir.load()?;
    let status = dir.status(&st);
    if status == Status::Stopped {
        return Err(wrong(
            id,
            status,
            "cannot update a stopped container (container not running)",
        ));
    }
    let flags = lines.iter().map(|(f, _)| *f).collect::<Vec<_>>().join(", ");
    let group = st.intel_rdt.as_ref().ok_or_else(|| {
        Error::Usage(format!(
            "{flags}: container {id:?} has no Intel RDT group of its own (its config.json \
             has no linux.intelRdt, or shares a closID)"
        ))
    })?;
    let schemata = group.join("schemata");
    for (flag, line) in lines {
        std::fs::write(&schemata, format!("{line}\n"))
            .ctx(|| format!("{flag}: write {line:?} to {}", schemata.display()))?;
    }
    Ok(())
}

/// What `events` reports.
pub enum Event {
    Stats(Box<vessel_cgroups::Stats>),
    Oom,
}

/// runc's `events`: a stats event every `interval` and an OOM event whenever the kernel's
/// OOM killer acts in the container's cgroup, until the container's init exits.
pub fn events(
    root: &Path,
    id: &str,
    interval: std::time::Duration,
    emit: &mut dyn FnMut(Event) -> Result<()>,
) -> Result<()> {
    let st = {
        // Not held while streaming: `delete` must still be able to take the lock.
        let dir = StateDir::open(root, id, false)?;
        let st = dir.load()?;
        let status = dir.status(&st);
        if status == Status::Stopped {
            return Err(wrong(
                id,
                status,
                "a stopped container has no events (container is not running)",
            ));
        }
        st
    };
    let pidfd = sys::pidfd_open(st.pid).ctx(|| format!("open pid {}", st.pid))?;
    if sys::process_start_time(st.pid) != Some(st.pid_start) {
        return Ok(());
    }
    let cg = st.cgroup("report events")?;
    // Without a memory controller there are no OOM events to watch, only stats.
    let mut oom = cg.oom_watch().ok();
    let mut next_stats = std::time::Instant::now() + interval;
    loop {
        let wait = next_stats.saturating_duration_since(std::time::Instant::now());
        let mut fds = vec![libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&pidfd),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(w) = &oom {
            fds.push(libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&w.fd()),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let timeout = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: a valid array of pollfds.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if r < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err).ctx(|| "wait for container events");
        }
        // OOM first: the kill that ends the container is worth reporting.
        if let (Some(w), Some(p)) = (oom.as_mut(), fds.get(1)) {
            if p.revents != 0 {
                for _ in 0..w.take()? {
                    emit(Event::Oom)?;
                }
            }
        }
        if fds[0].revents != 0 {
            return Ok(());
        }
        if std::time::Instant::now() >= next_stats {
            match cg.stats() {
                Ok(s) => emit(Event::Stats(Box::new(s)))?,
                // The cgroup went away with the container.
                Err(_) => return Ok(()),
            }
            next_stats += interval;
        }
    }
}

pub fn stats(root: &Path, id: &str) -> Result<(Status, vessel_cgroups::Stats)> {
    let dir = StateDir::open(root, id, false)?;
    let st = dir.load()?;
    let status = dir.status(&st);
    if status == Status::Stopped {
        return Err(wrong(
            id,
            status,
            "a stopped container has no stats (container is not running)",
        ));
    }
    Ok((status, st.cgroup("report stats")?.stats()?))
}
