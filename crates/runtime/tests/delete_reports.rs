//! `delete` says so when it cannot do its job: an init that survives SIGKILL is an error,
//! the container stays (and a later `delete --force` finishes it), never a claimed success.
//! runc 1.1.5 is the control: "container init still running" after its 10 s wait.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;

/// A v1 freezer cgroup of the test's own, thawed and removed on drop.
struct Freezer(PathBuf);

impl Freezer {
    /// None without a v1 freezer hierarchy: cgroup v2's freezer lets SIGKILL through.
    fn new() -> Option<Freezer> {
        let base = Path::new("/sys/fs/cgroup/freezer");
        if !base.join("cgroup.procs").exists() {
            return None;
        }
        let dir = base.join(unique("frz"));
        std::fs::create_dir(&dir).ok()?;
        Some(Freezer(dir))
    }

    fn take(&self, pid: i64) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).expect("move into freezer");
    }

    fn set(&self, state: &str) {
        std::fs::write(self.0.join("freezer.state"), state).expect("write freezer.state");
        for _ in 0..500 {
            if std::fs::read_to_string(self.0.join("freezer.state"))
                .is_ok_and(|s| s.trim() == state)
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("{} never became {state}", self.0.display());
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("freezer.state"), "THAWED");
        for _ in 0..200 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

fn runc() -> Option<&'static str> {
    ["/usr/sbin/runc", "/usr/bin/runc"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

/// Start a container with `runtime`, freeze its init in a freezer cgroup of our own (where
/// SIGKILL stays pending), and return what `delete --force` printed and whether it succeeded;
/// then thaw and check that a second `delete --force` removes everything.
fn delete_with_a_frozen_init(runtime: &str, env: &TestEnv, root: &Path) -> (bool, String) {
    let id = unique("frozen");
    let cg = unique("cg");
    let mut cfg = busybox_config(&["sleep", "1000"], &cg);
    cfg["ociVersion"] = serde_json::json!("1.0.2");
    // One rootfs, a bundle each: both runtimes run at once.
    cfg["root"]["path"] = serde_json::json!(env.bundle.join("rootfs"));
    let bundle = env.tmp.path().join(format!("bundle-{id}"));
    std::fs::create_dir(&bundle).unwrap();
    std::fs::write(bundle.join("config.json"), cfg.to_string()).unwrap();
    let cmd = |args: &[&str]| {
        let mut c = Command::new(runtime);
        c.arg("--root").arg(root).args(args).current_dir(&bundle);
        vessel_testkit::run_via_files(&mut c, env.tmp.path())
    };
    let o = cmd(&["run", "-d", "--bundle", bundle.to_str().unwrap(), &id]);
    assert!(o.status.success(), "{runtime} run: {}", stderr(&o));
    let o = cmd(&["state", &id]);
    let pid = serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["pid"]
        .as_i64()
        .unwrap();
    let freezer = Freezer::new().expect("a v1 freezer hierarchy");
    freezer.take(pid);
    freezer.set("FROZEN");

    let o = cmd(&["delete", "--force", &id]);
    let (ok, err) = (o.status.success(), stderr(&o));
    // The container is still there to be deleted, with its init.
    assert!(root.join(&id).exists(), "{runtime}: state dir gone: {err}");
    assert!(Path::new(&format!("/proc/{pid}")).exists());

    freezer.set("THAWED");
    drop(freezer);
    let o = cmd(&["delete", "--force", &id]);
    assert!(
        o.status.success(),
        "{runtime}: delete after thaw: {}",
        stderr(&o)
    );
    assert!(!root.join(&id).exists(), "{runtime}: state dir left");
    let left = cgroup_dirs(&cg);
    assert!(left.is_empty(), "{runtime}: cgroups left: {left:?}");
    (ok, err)
}

#[test]
fn delete_reports_an_init_that_survives_sigkill() {
    if !Path::new("/sys/fs/cgroup/freezer/cgroup.procs").exists() {
        eprintln!("no v1 freezer hierarchy (a v2 freezer lets SIGKILL through); skipping");
        return;
    }
    let env = TestEnv::new();
    let runc_root = env.tmp.path().join("runc-state");
    // Both wait 10 s for the init: side by side.
    let (ours, theirs) = std::thread::scope(|s| {
        let theirs = s.spawn(|| runc().map(|r| delete_with_a_frozen_init(r, &env, &runc_root)));
        let ours = delete_with_a_frozen_init(RT, &env, &env.root);
        (ours, theirs.join().unwrap())
    });
    let (ok, err) = ours;
    assert!(!ok, "delete --force claimed success: {err}");
    assert!(
        err.contains("still alive") && err.contains("SIGKILL") && err.contains("not deleted"),
        "{err}"
    );
    match theirs {
        Some((ok, err)) => {
            assert!(!ok, "runc: delete --force claimed success: {err}");
            assert!(err.contains("container init still running"), "runc: {err}");
        }
        None => eprintln!("runc is not installed; no control"),
    }
}
