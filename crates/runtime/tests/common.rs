#![allow(dead_code, unused_imports)]
//! Helpers for vessel-runtime's root integration tests.

use std::path::Path;
use std::process::{Command, Output};

pub use vessel_testkit::{busybox_config, stderr, stdout, unique, TestEnv};

pub const RT: &str = env!("CARGO_BIN_EXE_vessel-runtime");

pub fn rt(env: &TestEnv) -> Command {
    let mut c = Command::new(RT);
    c.arg("--root").arg(&env.root);
    c
}

/// Run vessel-runtime and collect its output through files, not pipes: a container's init
/// inherits the runtime's stdio and would keep a pipe open long after `create` returned.
pub fn rt_out(env: &TestEnv, args: &[&str]) -> Output {
    let mut c = rt(env);
    c.args(args).current_dir(&env.bundle);
    vessel_testkit::run_via_files(&mut c, env.tmp.path())
}

/// Run to completion in the foreground; returns (exit code, stdout, stderr).
pub fn run_container(env: &TestEnv, id: &str) -> (i32, String, String) {
    let o = rt_out(env, &["run", "--bundle", env.bundle.to_str().unwrap(), id]);
    (o.status.code().unwrap_or(-1), stdout(&o), stderr(&o))
}

pub fn state_json(env: &TestEnv, id: &str) -> serde_json::Value {
    let o = rt_out(env, &["state", id]);
    assert!(o.status.success(), "state {id}: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("state prints JSON")
}

/// Every hierarchy this host mounts, so tests can assert a cgroup is gone everywhere.
pub fn cgroup_dirs(name: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in entries.flatten() {
            let p = e.path().join(name);
            if p.exists() {
                out.push(p);
            }
        }
    }
    if Path::new("/sys/fs/cgroup").join(name).exists() {
        out.push(Path::new("/sys/fs/cgroup").join(name));
    }
    out
}

/// Remove a cgroup tree created by a client (podman puts conmon in a child cgroup).
pub fn remove_cgroup_tree(name: &str) {
    fn rm(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    rm(&e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    for d in cgroup_dirs(name) {
        rm(&d);
    }
}

/// Assert nothing of container `id` / cgroup `cg` remains on the host.
pub fn assert_gone(env: &TestEnv, id: &str, cg: &str) {
    assert!(!env.root.join(id).exists(), "state dir of {id} left behind");
    let left = cgroup_dirs(cg);
    assert!(left.is_empty(), "cgroup {cg} left behind: {left:?}");
}

/// Delete a container whatever happened in the test (used by guards).
pub struct Cleanup<'a> {
    pub env: &'a TestEnv,
    pub id: String,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = rt_out(self.env, &["delete", "--force", &self.id]);
    }
}

pub fn wait_for_status(env: &TestEnv, id: &str, want: &str) {
    for _ in 0..500 {
        let o = rt_out(env, &["state", id]);
        if o.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            if v["status"] == want {
                return;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("{id} never reached status {want}");
}

/// Processes other than this one whose command line mentions `dir` (a runtime started for
/// the test, or a container init before its execve) or whose cgroup is `cg`, as
/// "PID STATE CMDLINE" lines. Zombies are left out: they hold nothing and their parent
/// reaps them.
pub fn processes_tied_to(dir: &Path, cg: &str) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            continue;
        }
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let state = stat
            .rfind(')')
            .and_then(|i| stat.get(i + 2..i + 3))
            .unwrap_or("");
        if state.is_empty() || state == "Z" || state == "X" {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let cgroups = std::fs::read_to_string(e.path().join("cgroup")).unwrap_or_default();
        let in_cg = cgroups.lines().any(|l| {
            l.rsplit(':')
                .next()
                .is_some_and(|p| p.split('/').any(|c| c == cg))
        });
        if cmdline.contains(&needle) || in_cg {
            out.push(format!("{name} {state} {cmdline}"));
        }
    }
    out
}

/// Like [`processes_tied_to`], but gives processes that are on their way out (a container
/// init that saw its runtime die) up to `secs` seconds to go.
pub fn processes_left(dir: &Path, cg: &str, secs: u64) -> Vec<String> {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let left = processes_tied_to(dir, cg);
        if left.is_empty() || std::time::Instant::now() >= until {
            return left;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Mounts in this mount namespace whose mount point or source is below `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_string)
        .collect()
}

/// A child process killed if it is still running when this is dropped (a runtime a test
/// starts in the background and may have to give up on).
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wait for `child` for at most `secs` seconds; None (and the child killed) if it hangs.
pub fn wait_timeout(
    child: &mut std::process::Child,
    secs: u64,
) -> Option<std::process::ExitStatus> {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if std::time::Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// (exit code, stdout, stderr) of a run.
pub type Outcome = (i32, String, String);

/// runc, when installed: the control of the side-by-side tests.
pub fn runc_path() -> Option<&'static str> {
    ["/usr/sbin/runc", "/usr/bin/runc"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

/// `RUNTIME run` of the env's bundle in the foreground with a state root of its own inside
/// the env (vessel-runtime or runc alike), then `delete --force`.
pub fn run_bundle_with(env: &TestEnv, runtime: &str, id: &str) -> Outcome {
    let root = env.tmp.path().join(format!(
        "{}-state",
        Path::new(runtime)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let mut c = Command::new(runtime);
    c.arg("--root")
        .arg(&root)
        .args(["run", "--bundle", env.bundle.to_str().unwrap(), id])
        .current_dir(&env.bundle);
    let o = vessel_testkit::run_via_files(&mut c, env.tmp.path());
    let _ = Command::new(runtime)
        .arg("--root")
        .arg(&root)
        .args(["delete", "--force", id])
        .output();
    (o.status.code().unwrap_or(-1), stdout(&o), stderr(&o))
}

/// A busybox bundle running `sh -c script` (ociVersion 1.0.2, which runc 1.1 and crun 1.8
/// take), changed by `mutate`, run with vessel-runtime and — with `with_runc`, when runc is
/// installed — with runc on the same bundle; the container's cgroup checked gone after ours.
pub fn side_by_side(
    mutate: impl Fn(&mut serde_json::Value, &TestEnv),
    script: &str,
    with_runc: bool,
) -> (Outcome, Option<Outcome>) {
    let env = TestEnv::new();
    let cg = unique("cg");
    let mut cfg = busybox_config(&["sh", "-c", script], &cg);
    cfg["ociVersion"] = serde_json::json!("1.0.2");
    mutate(&mut cfg, &env);
    env.write_config(&cfg);
    let ours = run_bundle_with(&env, RT, &unique("side"));
    assert_gone(&env, "none", &cg);
    let theirs = runc_path()
        .filter(|_| with_runc)
        .map(|r| run_bundle_with(&env, r, &unique("runc")));
    remove_cgroup_tree(&cg);
    (ours, theirs)
}
