//! `create`: the parent side. Validate everything, reserve the state dir, prepare the cgroup,
//! clone the init into its namespaces, do the host-side work (id maps, cgroup membership,
//! runtime hooks) while it waits, and record the state once it reports ready.
//! On any failure everything done so far is undone: no state dir, cgroup or process remains.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use oci_spec::runtime::Spec;
use vessel_cgroups::CgroupManager;

use crate::channel::{self, Msg};
use crate::console::console_for;
use crate::error::{Context, Error, Result};
use crate::hooks::{self, HookState};
use crate::init::{self, InitContext};
use crate::namespaces::{write_id_maps, NsPlan};
use crate::process::Prepared;
use crate::spec::{self, Bundle};
use crate::state::{now_rfc3339, State, StateDir};
use crate::sys::{self, Forked};

#[derive(Debug, Default)]
pub struct CreateOptions {
    pub root: PathBuf,
    pub id: String,
    pub bundle: PathBuf,
    pub console_socket: Option<PathBuf>,
    /// Foreground `run`: relay a terminal to our stdio when there is no --console-socket.
    pub relay_terminal: bool,
    pub pid_file: Option<PathBuf>,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
    pub preserve_fds: u32,
}

pub struct Created {
    pub pid: i32,
    pub state: State,
    pub dir: StateDir,
    /// The terminal to relay, when `relay_terminal` was asked for and the process has one.
    pub relay: Option<crate::tty_relay::TtyRelay>,
}

/// Undo list for a create that fails part way. (A create that is killed cannot run it: the
/// state dir's `creating` record tells `delete` what to undo instead.)
struct Undo {
    pid: Option<i32>,
    cgroup: Option<CgroupManager>,
    rdt: Option<PathBuf>,
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
        if let Some(d) = self.rdt.take() {
            let _ = crate::rdt::remove(&d);
        }
        if let Some(p) = self.pid_file.take() {
            let _ = std::fs::remove_file(p);
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.remove();
        }
    }
}

pub fn cgroups_path(spec: &Spec, id: &str) -> PathBuf {
    spec.linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().clone())
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from(format!("/{id}")))
}

/// Create the container's cgroup. Rootless (not root on the host), a cgroup the user may not
/// create is skipped as runc does — unless linux.resources asks for a limit, which would then
/// silently not be enforced. Returns whether the container has a cgroup.
fn create_cgroup(
    cgroup: &CgroupManager,
    resources: Option<&oci_spec::runtime::LinuxResources>,
) -> Result<bool> {
    let err = match cgroup.create() {
        // A cgroup that exists already frozen would stop the init in the middle of its
        // setup, and `create` with it (runc refuses the same way).
        Ok(()) if cgroup.is_frozen().unwrap_or(false) => {
            return Err(Error::config(format!(
                "linux.cgroupsPath: container's cgroup unexpectedly frozen ({}): thaw it first",
                cgroup.path().display()
            )))
        }
        Ok(()) => return Ok(true),
        Err(e) => e,
    };
    let denied = matches!(&err, vessel_cgroups::Error::Io { err, .. }
        if matches!(err.raw_os_error(), Some(libc::EACCES | libc::EPERM | libc::EROFS)));
    if !denied || nix::unistd::geteuid().is_root() {
        return Err(err.into());
    }
    // Hierarchies where the mkdir did succeed (a delegated subtree) must not stay behind.
    let _ = cgroup.remove();
    if resources.is_some_and(limits_anything) {
        return Err(Error::config(format!(
            "linux.resources: a rootless container can only be limited in a cgroup its user \
             may create, and {err} (delegate a cgroup to this user, or drop linux.resources)"
        )));
    }
    Ok(false)
}

/// Whether `resources` asks for any limit a cgroup would enforce. Device rules are left
/// out: without privilege no device node can be created, only bind-mounted.
fn limits_anything(r: &oci_spec::runtime::LinuxResources) -> bool {
    r.memory().is_some()
        || r.cpu().is_some()
        || r.pids().is_some()
        || r.block_io().is_some()
        || r.hugepage_limits().as_ref().is_some_and(|h| !h.is_empty())
        || r.network().is_some()
        || r.rdma().as_ref().is_some_and(|m| !m.is_empty())
        || r.unified().as_ref().is_some_and(|m| !m.is_empty())
}

pub fn seccomp_cache(root: &Path) -> vessel_seccomp::Cache {
    vessel_seccomp::Cache::new(root.join(".seccomp-cache"))
}

pub fn create(opts: &CreateOptions) -> Result<Created> {
    crate::self_exe::require_protected()?;
    spec::validate_id(&opts.id)?;
    let Bundle {
        dir: bundle_dir,
        spec,
        raw,
        rootfs,
    } = spec::load_bundle(&opts.bundle)?;
    // linux.mountLabel as the mounts' context= option (with SELinux; refused below without).
    let spec = crate::lsm::label_mounts(spec);
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::config("config.json: process: missing"))?;
    let terminal = process.terminal().unwrap_or(false);

    // Everything below that can fail without touching the host comes first.
    let cg_path = cgroups_path(&spec, &opts.id);
    let cgroup = CgroupManager::new(&cg_path)?;
    let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    if let Some(r) = resources {
        CgroupManager::validate(r, cgroup.layout())?;
    }
    let seccomp = match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(s) => Some(seccomp_cache(&opts.root).get_or_compile(s)?),
        None => None,
    };
    let listener_path = spec
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().as_ref())
        .and_then(|s| s.listener_path().clone());
    let prepared = Prepared::new(process, seccomp)?;
    crate::lsm::validate(
        process,
        spec.linux()
            .as_ref()
            .and_then(|l| l.mount_label().as_deref()),
    )?;
    let rdt = crate::rdt::Group::plan(
        spec.linux().as_ref().and_then(|l| l.intel_rdt().as_ref()),
        &opts.id,
        Path::new(crate::rdt::RESCTRL),
    )?;
    let own_rdt = rdt.as_ref().filter(|g| g.owned).map(|g| g.dir.clone());
    // Only on a pure v2 host does CLONE_INTO_CGROUP place the child in all of its cgroup;
    // elsewhere it still has v1 hierarchies to join after the clone.
    let into_cgroup = matches!(cgroup.layout(), vessel_cgroups::Layout::V2);
    let plan = NsPlan::new(&spec, into_cgroup)?;
    // Detached mounts and a reaped helper: nothing to undo on the host if a later step fails.
    // (Rootless, the runtime opens sources as the same user the container maps, and may
    // not clone mounts: by path, inside, is what it can do.)
    let idmapped = crate::idmap::DetachedBinds::prepare(
        &spec,
        plan.enters_user_ns() && nix::unistd::geteuid().is_root(),
    )?;
    let (console, relay) = console_for(
        terminal,
        opts.console_socket.as_deref(),
        opts.relay_terminal,
    )?;

    // Root always owns the cgroup (or fails); a rootless create finds out below.
    let as_root = nix::unistd::geteuid().is_root();
    let mut steps = crate::fault::steps("create");
    let dir = StateDir::create(&opts.root, &opts.id, &cg_path, as_root, own_rdt.as_deref())?;
    let mut undo = Undo {
        pid: None,
        cgroup: as_root.then(|| cgroup.clone()),
        rdt: None,
        pid_file: None,
        dir: Some(dir),
    };
    let dir = undo.dir.as_ref().expect("set above");
    steps.done("state dir reserved");
    let have_cgroup = create_cgroup(&cgroup, resources)?;
    if have_cgroup {
        if !as_root {
            dir.record_cgroup()?;
            undo.cgroup = Some(cgroup.clone());
        }
        if let Some(r) = resources {
            cgroup.apply(r)?;
        }
    }
    steps.done("cgroup created");
    // The unified hierarchy (v2, or a hybrid host's cgroup2) is joined at the clone. v1
    // hierarchies are joined by the child itself — a thread moving itself needs no RCU
    // grace period, a PID written by another process does (~10 ms) — unless it is in a
    // user namespace, whose root may not write the host's cgroup files: then by us.
    let unified_fd: Option<OwnedFd> = if have_cgroup {
        cgroup.unified_dir_fd()?
    } else {
        None
    };
    let v1_by_child = have_cgroup && !into_cgroup && !plan.enters_user_ns();
    let v1_by_parent = have_cgroup && !into_cgroup && !v1_by_child;
    let fifo_path = dir.fifo_path();
    nix::unistd::mkfifo(&fifo_path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .ctx(|| format!("create {}", fifo_path.display()))?;
    // Opened read-write so the init can block reading it without a writer present; `start`
    // releases it by writing one byte.
    let fifo: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo_path)
        .ctx(|| format!("open {}", fifo_path.display()))?
        .into();
    steps.done("exec fifo made");

    let (parent_end, child_end) = channel::pair()?;
    let ctx = InitContext {
        id: &opts.id,
        spec: &spec,
        process,
        rootfs: &rootfs,
        plan: &plan,
        channel: &child_end,
        console: console.as_ref().map(|c| c.as_raw_fd()),
        fifo: &fifo,
        prepared: &prepared,
        idmapped: &idmapped,
        join_v1: v1_by_child.then_some(&cgroup),
        no_pivot: opts.no_pivot,
        no_new_keyring: opts.no_new_keyring,
        preserve_fds: opts.preserve_fds,
        bundle: &bundle_dir,
        close_first: [dir.lock_fd(), unified_fd.as_ref().map(|f| f.as_raw_fd())],
    };

    // SAFETY: vessel-runtime is single-threaded; the child only runs `init`.
    let first = unsafe {
        sys::clone3(
            if plan.slow {
                nix::sched::CloneFlags::empty()
            } else {
                plan.clone_flags
            },
            0,
            unified_fd.as_ref().map(|f| f.as_raw_fd()),
        )
    }
    .ctx(|| "clone the container process")?;
    let first_pid = match first {
        Forked::Child => {
            drop(parent_end);
            if plan.slow {
                init::intermediate(&ctx)
            } else {
                init::run(&ctx)
            }
        }
        Forked::Parent(pid) => pid,
    };
    undo.pid = Some(first_pid);
    steps.done("cloned");
    drop(child_end);
    drop(fifo);
    drop(unified_fd);
    drop(console);
    drop(idmapped);

    let mut pid = if plan.slow {
        loop {
            match parent_end.recv()? {
                Some((Msg::WriteMaps(p), _)) => {
                    write_id_maps(p, &spec)?;
                    steps.done("id maps written");
                    parent_end.send(&Msg::Continue)?;
                }
                Some((Msg::Pid(p), _)) => {
                    let _ = waitpid(Pid::from_raw(first_pid), None);
                    undo.pid = Some(p);
                    break p;
                }
                Some((Msg::Failed(text), _)) => return Err(Error::Child(text)),
                Some((m, _)) => {
                    return Err(Error::Child(format!(
                        "unexpected message {m:?} from the container process"
                    )))
                }
                None => {
                    return Err(Error::Child(
                        "the container process exited before it was set up".into(),
                    ))
                }
            }
        }
    } else {
        if plan.new_user {
            write_id_maps(first_pid, &spec)?;
            steps.done("id maps written");
        }
        first_pid
    };
    // Until it is told its PID the init exits if we die; from here on it might not.
    let pid_start = sys::process_start_time(pid).unwrap_or(0);
    dir.record_pid(pid, pid_start)?;
    steps.done("init recorded");
    // The child builds its rootfs meanwhile; it waits for the Continue that follows
    // before anything that needs its cgroup.
    parent_end.send(&Msg::Pid(pid))?;
    if v1_by_parent {
        cgroup.add_task_v1(pid)?;
    }
    if let Some(g) = &rdt {
        undo.rdt = own_rdt.clone();
        g.apply(pid)?;
    }
    if let Some(adj) = process.oom_score_adj() {
        crate::procfs::Proc::open(Path::new("/proc"))
            .and_then(|p| p.write(&format!("{pid}/oom_score_adj"), adj.to_string().as_bytes()))
            .map_err(|e| {
                Error::config(format!(
                    "process.oomScoreAdj: set {adj}: {e} (lowering it needs CAP_SYS_RESOURCE)"
                ))
            })?;
    }
    parent_end.send(&Msg::Continue)?;
    steps.done("init in its cgroup");

    // Written while the child sets itself up.
    // (Until the `creating` record is removed the container does not exist for others.)
    let spec_hooks = spec.hooks().as_ref();
    let mut state = State {
        oci_version: spec.version().to_string(),
        id: opts.id.clone(),
        pid,
        bundle: bundle_dir.clone(),
        rootfs: rootfs.clone(),
        created: now_rfc3339(),
        owner: String::new(),
        annotations: spec.annotations().clone().unwrap_or_default(),
        pid_start,
        cgroups_path: cg_path,
        has_cgroup: have_cgroup,
        stopped_hooks_done: false,
        has_late_hooks: spec_hooks.is_some_and(|h| {
            h.poststart().as_ref().is_some_and(|v| !v.is_empty())
                || h.poststop().as_ref().is_some_and(|v| !v.is_empty())
        }),
        intel_rdt: own_rdt,
    };
    undo.pid_file = opts.pid_file.clone();
    dir.save_with_config(&state, &raw)?;
    if let Some(path) = &opts.pid_file {
        write_pid_file(path, pid)?;
    }
    steps.done("state saved");

    let annotations = state.annotations.clone();
    let hook_state = |status, pid| HookState {
        oci_version: spec.version(),
        id: &opts.id,
        status,
        pid: Some(pid),
        bundle: &bundle_dir,
        annotations: Some(&annotations),
    };
    loop {
        match parent_end.recv()? {
            Some((Msg::RunHooks, _)) => {
                hooks::run_all(
                    "prestart",
                    spec_hooks.and_then(|h| h.prestart().as_ref()),
                    &hook_state("creating", pid),
                )?;
                hooks::run_all(
                    "createRuntime",
                    spec_hooks.and_then(|h| h.create_runtime().as_ref()),
                    &hook_state("creating", pid),
                )?;
                steps.done("runtime hooks ran");
                parent_end.send(&Msg::Continue)?;
            }
            Some((Msg::SeccompListener, Some(fd))) => {
                let path = listener_path.as_ref().ok_or_else(|| {
                    Error::config("linux.seccomp.listenerPath: required with SCMP_ACT_NOTIFY")
                })?;
                let state = serde_json::json!({
                    "ociVersion": spec.version(),
                    "fds": ["seccompFd"],
                    "pid": pid,
                    "metadata": spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()).and_then(|s| s.listener_metadata().clone()).unwrap_or_default(),
                    "state": hook_state("creating", pid),
                });
                let body = serde_json::to_vec(&state).map_err(|e| Error::config(e.to_string()))?;
                vessel_seccomp::send_listener(path, fd.as_fd(), &body)?;
                parent_end.send(&Msg::Continue)?;
            }
            Some((Msg::Reparent(p), _)) => {
                // A joined pid namespace, entered once the rootfs was built: the process
                // forked into it is the container from now on; the one that set up exits.
                let _ = waitpid(Pid::from_raw(pid), None);
                undo.pid = Some(p);
                pid = p;
                state.pid = p;
                state.pid_start = sys::process_start_time(p).unwrap_or(0);
                dir.record_pid(p, state.pid_start)?;
                dir.save_with_config(&state, &raw)?;
                if let Some(path) = &opts.pid_file {
                    write_pid_file(path, p)?;
                }
                parent_end.send(&Msg::Pid(p))?;
            }
            Some((Msg::Ready, _)) => break,
            Some((Msg::Failed(text), _)) => return Err(Error::Child(text)),
            Some((m, _)) => {
                return Err(Error::Child(format!(
                    "unexpected message {m:?} from the container init"
                )))
            }
            None => {
                return Err(Error::Child(
                    "the container init exited before it was set up".into(),
                ))
            }
        }
    }

    steps.done("init ready");
    dir.finish_create()?;
    undo.pid = None;
    undo.cgroup = None;
    undo.rdt = None;
    undo.pid_file = None;
    steps.done("created");
    let dir = undo.dir.take().expect("set above");
    Ok(Created {
        pid,
        state,
        dir,
        relay,
    })
}

/// Written atomically (callers such as conmon and containerd poll for it).
pub fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::Usage(format!("--pid-file {}: not a file", path.display())))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    crate::state::write_atomic(dir, &[(name, pid.to_string().as_bytes())], 0o644).map_err(|e| {
        match e {
            Error::Io { context, err } => Error::Io {
                context: format!("--pid-file {}: {context}", path.display()),
                err,
            },
            e => e,
        }
    })
}
