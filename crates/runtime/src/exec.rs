//! `exec`: run another process in a created or running container. An intermediate process
//! joins the container's namespaces (user first), then clones the new process with
//! CLONE_PARENT — so it is the runtime's child (we can wait for it) and is born inside the
//! container's pid and time namespaces.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxNamespaceType, Process};

use crate::channel::{self, Msg};
use crate::create::{seccomp_cache, write_pid_file};
use crate::error::{Context, Error, Result};
use crate::init;
use crate::process::Prepared;
use crate::spec::{ns_name, validate_process};
use crate::state::{StateDir, Status};
use crate::sys::{self, Forked};

pub struct ExecOptions {
    pub root: PathBuf,
    pub id: String,
    pub process: Process,
    pub console_socket: Option<PathBuf>,
    /// Foreground `exec`: relay a terminal to our stdio when there is no --console-socket.
    pub relay_terminal: bool,
    pub pid_file: Option<PathBuf>,
    pub detach: bool,
    pub preserve_fds: u32,
    /// runc's --ignore-paused: exec into a paused container (the process starts frozen).
    pub ignore_paused: bool,
    /// runc's --cgroup: existing sub-cgroups of the container's to run in, as
    /// (controllers, path); no controllers means every hierarchy.
    pub sub_cgroups: Vec<(Vec<String>, String)>,
}

/// Returns the PID of the new process (in the runtime's pid namespace), and the terminal to
/// relay when `relay_terminal` was asked for and the process has one.
pub fn exec(opts: &ExecOptions) -> Result<(i32, Option<crate::tty_relay::TtyRelay>)> {
    crate::self_exe::require_protected()?;
    let dir = StateDir::open(&opts.root, &opts.id, false)?;
    let st = dir.load()?;
    let status = dir.status(&st);
    let refused = match status {
        Status::Running | Status::Created => None,
        Status::Paused if opts.ignore_paused => None,
        // runc's wordings.
        Status::Paused => {
            Some("cannot exec in a paused container (use --ignore-paused to override)")
        }
        Status::Stopped => Some("cannot exec in a stopped container"),
        _ => Some("exec needs a created or running container"),
    };
    if let Some(action) = refused {
        return Err(Error::WrongState {
            id: opts.id.clone(),
            status: status.to_string(),
            action: action.into(),
        });
    }
    let spec = dir.config()?;
    // Into a paused container (--ignore-paused) the process is born frozen and waits for
    // `resume`, which locks the state dir exclusively: holding our shared lock until the
    // process runs — and letting the helper inherit it — would deadlock the two. runc
    // holds no lock across an exec at all.
    let _lock = (status != Status::Paused).then_some(dir);
    let process = &opts.process;
    validate_process(process, "process")?;
    let terminal = process.terminal().unwrap_or(false);
    let seccomp = match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(s) => Some(seccomp_cache(&opts.root).get_or_compile(s)?),
        None => None,
    };
    let prepared = Prepared::new(process, seccomp)?;
    crate::lsm::validate(process, None)?;

    // The container's namespaces, from its init; skip those we already share (setns into our
    // own user namespace is an error).
    let mut joined: Vec<(LinuxNamespaceType, OwnedFd)> = Vec::new();
    for ns in spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
    {
        let name = ns_name(ns.typ());
        let theirs = format!("/proc/{}/ns/{name}", st.pid);
        let same = match (
            std::fs::metadata(&theirs),
            std::fs::metadata(format!("/proc/self/ns/{name}")),
        ) {
            (Ok(a), Ok(b)) => {
                use std::os::unix::fs::MetadataExt;
                a.ino() == b.ino() && a.dev() == b.dev()
            }
            _ => false,
        };
        if same {
            continue;
        }
        let f = std::fs::File::open(&theirs).ctx(|| format!("open {theirs}"))?;
        joined.push((ns.typ(), f.into()));
    }
    joined.sort_by_key(|(t, _)| match t {
        LinuxNamespaceType::User => 0,
        LinuxNamespaceType::Mount => 2,
        _ => 1,
    });
    // The pid could have been recycled between reading the state and opening the namespaces.
    if sys::process_start_time(st.pid) != Some(st.pid_start) {
        return Err(Error::WrongState {
            id: opts.id.clone(),
            status: "stopped".into(),
            action: "its init exited".into(),
        });
    }

    // The new process joins the container's cgroup like its init did: the unified
    // hierarchy at the clone, v1 hierarchies by the helper moving itself (no RCU grace
    // period), while it is still in the host's user namespace and may write their files.
    let cgroup = match (st.cgroup_if_any()?, opts.sub_cgroups.is_empty()) {
        (cg, true) => cg,
        (Some(cg), false) => Some(cg.sub_cgroup(&opts.sub_cgroups)?),
        (None, false) => {
            return Err(Error::Usage(format!(
                "--cgroup: container {:?} has no cgroup of its own (created rootless)",
                opts.id
            )))
        }
    };
    let cg_fd = match &cgroup {
        Some(cg) => cg.unified_dir_fd()?,
        None => None,
    };
    let join_v1 = cgroup
        .as_ref()
        .filter(|cg| cg.layout() != vessel_cgroups::Layout::V2);
    let (console_sock, relay) = crate::console::console_for(
        terminal,
        opts.console_socket.as_deref(),
        opts.relay_terminal,
    )?;
    let (parent_end, child_end) = channel::pair()?;

    // SAFETY: single-threaded runtime; the child only joins namespaces and clones.
    let first = unsafe {
        sys::clone3(
            CloneFlags::empty(),
            0,
            cg_fd.as_ref().map(|f| f.as_raw_fd()),
        )
    }
    .ctx(|| "clone the exec process")?;
    if let Forked::Child = first {
        drop(parent_end);
        let result = (|| -> Result<i32> {
            nix::sys::prctl::set_dumpable(false).ctx(|| "prctl(PR_SET_DUMPABLE)")?;
            if let Some(cg) = join_v1 {
                cg.join_v1_self()?;
            }
            // The cgroup directory is outside the container: not a descriptor to carry in.
            // (The helper leaves by _exit, so the OwnedFd is never closed twice.)
            if let Some(fd) = &cg_fd {
                let _ = nix::unistd::close(fd.as_raw_fd());
            }
            for (t, fd) in &joined {
                setns(fd.as_fd(), CloneFlags::empty())
                    .ctx(|| format!("join the container's {} namespace", ns_name(*t)))?;
            }
            // SAFETY: single-threaded.
            match unsafe { sys::clone3(CloneFlags::empty(), libc::CLONE_PARENT as u64, None) }
                .ctx(|| "clone into the container")?
            {
                Forked::Child => {
                    let Err(e) = exec_child(
                        &child_end,
                        process,
                        &prepared,
                        &spec,
                        console_sock.as_ref().map(|s| s.as_raw_fd()),
                        opts.preserve_fds,
                    );
                    let _ = child_end.report_failure(e.to_string());
                    // SAFETY: forked child.
                    unsafe { libc::_exit(127) }
                }
                Forked::Parent(pid) => Ok(pid),
            }
        })();
        let code = match result {
            Ok(pid) => child_end.send(&Msg::Pid(pid)).map(|_| 0).unwrap_or(1),
            Err(e) => {
                let _ = child_end.report_failure(e.to_string());
                1
            }
        };
        // SAFETY: forked child.
        unsafe { libc::_exit(code) }
    }
    let Forked::Parent(first_pid) = first else {
        unreachable!()
    };
    drop(child_end);
    drop(console_sock);
    let pid = match parent_end.recv() {
        Ok(Some((Msg::Pid(p), _))) => p,
        Ok(Some((Msg::Failed(t), _))) => {
            // The helper waits for us to hang up before it exits (report_failure).
            drop(parent_end);
            let _ = waitpid(Pid::from_raw(first_pid), None);
            return Err(Error::Child(t));
        }
        other => {
            drop(parent_end);
            let _ = waitpid(Pid::from_raw(first_pid), None);
            return Err(Error::Child(format!(
                "exec: the helper process failed ({other:?})",
                other = other.map(|o| o.map(|m| m.0))
            )));
        }
    };
    let _ = waitpid(Pid::from_raw(first_pid), None);
    let undo = |e: Error| {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        let _ = waitpid(Pid::from_raw(pid), None);
        e
    };
    parent_end.send(&Msg::Continue).map_err(undo)?;
    // The child's end is close-on-exec: EOF means execve succeeded.
    loop {
        match parent_end.recv().map_err(undo)? {
            None => break,
            Some((Msg::Failed(t), _)) => return Err(undo(Error::Child(t))),
            Some((Msg::SeccompListener, Some(fd))) => {
                if let Some(path) = spec
                    .linux()
                    .as_ref()
                    .and_then(|l| l.seccomp().as_ref())
                    .and_then(|s| s.listener_path().clone())
                {
                    let body = serde_json::json!({"ociVersion": spec.version(), "fds": ["seccompFd"], "pid": pid, "metadata": spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()).and_then(|s| s.listener_metadata().clone()).unwrap_or_default(), "state": {"ociVersion": spec.version(), "id": opts.id, "status": "running", "pid": st.pid, "bundle": st.bundle}});
                    vessel_seccomp::send_listener(&path, fd.as_fd(), body.to_string().as_bytes())
                        .map_err(|e| undo(e.into()))?;
                }
                parent_end.send(&Msg::Continue).map_err(undo)?;
            }
            Some((m, _)) => {
                return Err(undo(Error::Child(format!(
                    "exec: unexpected message {m:?}"
                ))))
            }
        }
    }
    if let Some(p) = &opts.pid_file {
        write_pid_file(p, pid)?;
    }
    Ok((pid, relay))
}

fn exec_child(
    channel: &channel::Channel,
    process: &Process,
    prepared: &Prepared,
    spec: &oci_spec::runtime::Spec,
    console_fd: Option<i32>,
    preserve_fds: u32,
) -> Result<std::convert::Infallible> {
    init::exec_child(channel, process, prepared, spec, console_fd, preserve_fds)
}

/// Build the process for `exec ID ARGS...` from the container's own process (env, user,
/// capabilities) plus the flags, the way runc does when no --process file is given.
pub struct ExecArgs<'a> {
    pub args: &'a [String],
    pub env: &'a [String],
    pub cwd: Option<&'a Path>,
    pub user: Option<&'a str>,
    pub additional_gids: &'a [u32],
    pub caps: &'a [String],
    pub tty: bool,
    pub no_new_privs: bool,
}

pub fn process_from_args(root: &Path, id: &str, a: &ExecArgs) -> Result<Process> {
    let dir = StateDir::open(root, id, false)?;
    let spec = dir.config()?;
    let mut p = spec.process().clone().unwrap_or_default();
    p.set_args(Some(a.args.to_vec()));
    p.set_terminal(Some(a.tty));
    p.set_console_size(None);
    let mut env = p.env().clone().unwrap_or_default();
    for e in a.env {
        let key = e.split('=').next().unwrap_or("");
        env.retain(|x| x.split('=').next() != Some(key));
        env.push(e.clone());
    }
    p.set_env(Some(env));
    if let Some(cwd) = a.cwd {
        p.set_cwd(cwd.to_path_buf());
    }
    if let Some(u) = a.user {
        let (uid, gid) = u.split_once(':').unwrap_or((u, ""));
        let uid: u32 = uid
            .parse()
            .map_err(|_| Error::Usage(format!("--user {u:?}: expected UID[:GID]")))?;
        let mut user = p.user().clone();
        user.set_uid(uid);
        if !gid.is_empty() {
            user.set_gid(
                gid.parse()
                    .map_err(|_| Error::Usage(format!("--user {u:?}: expected UID[:GID]")))?,
            );
        }
        p.set_user(user);
    }
    if !a.additional_gids.is_empty() {
        let mut user = p.user().clone();
        user.set_additional_gids(Some(a.additional_gids.to_vec()));
        p.set_user(user);
    }
    if !a.caps.is_empty() {
        let mut caps = p.capabilities().clone().unwrap_or_default();
        let mut unknown = Vec::new();
        for c in a.caps {
            let name = c.trim_start_matches("CAP_").to_ascii_uppercase();
            let Ok(cap) = serde_json::from_value::<oci_spec::runtime::Capability>(
                serde_json::Value::String(format!("CAP_{name}")),
            ) else {
                // As runc: ignored with a warning, like unknown names in config.json.
                unknown.push(c.clone());
                continue;
            };
            let add = |s: &Option<oci_spec::runtime::Capabilities>| {
                let mut s = s.clone().unwrap_or_default();
                s.insert(cap);
                Some(s)
            };
            let (b, e, pm) = (
                add(caps.bounding()),
                add(caps.effective()),
                add(caps.permitted()),
            );
            caps.set_bounding(b);
            caps.set_effective(e);
            caps.set_permitted(pm);
        }
        crate::spec::warn_unknown_caps(unknown);
        p.set_capabilities(Some(caps));
    }
    if a.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    Ok(p)
}
