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
