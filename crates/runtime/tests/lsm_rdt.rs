//! linux.mountLabel and linux.intelRdt are applied where the host has SELinux / resctrl and
//! refused with a clear error where it does not — never silently dropped — with nothing
//! left behind by the refusal.

mod common;
use common::*;

use std::path::Path;
use std::process::Command;

use serde_json::json;

fn runc() -> Option<&'static str> {
    ["/usr/sbin/runc", "/usr/bin/runc"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

/// `create` with `cfg`: (succeeded, stderr); whatever it made is deleted afterwards.
fn create_with(
    runtime: &str,
    env: &TestEnv,
    root: &Path,
    cfg: &serde_json::Value,
) -> (bool, String) {
    env.write_config(cfg);
    let id = unique("lsm");
    let run = |args: &[&str]| {
        let mut c = Command::new(runtime);
        c.arg("--root")
            .arg(root)
            .args(args)
            .current_dir(&env.bundle);
        vessel_testkit::run_via_files(&mut c, env.tmp.path())
    };
    let o = run(&["create", "--bundle", env.bundle.to_str().unwrap(), &id]);
    let out = (o.status.success(), stderr(&o));
    let _ = run(&["delete", "--force", &id]);
    assert!(!root.join(&id).exists(), "{runtime}: state dir left");
    out
}

#[test]
fn mount_label_without_selinux_is_refused() {
    if Path::new("/sys/fs/selinux/enforce").exists() {
        eprintln!("SELinux is enabled here: the label is applied (see lsm's unit test)");
        return;
    }
    let env = TestEnv::new();
    let cg = unique("cg");
    let mut cfg = busybox_config(&["true"], &cg);
    cfg["ociVersion"] = json!("1.0.2");
    cfg["linux"]["mountLabel"] = json!("system_u:object_r:container_file_t:s0:c1,c2");
    let (ok, err) = create_with(RT, &env, &env.root, &cfg);
    assert!(!ok, "create accepted a mount label it cannot apply");
    assert!(
        err.contains("linux.mountLabel") && err.contains("SELinux is not enabled"),
        "{err}"
    );
    assert_gone(&env, "none", &cg);
    if let Some(runc) = runc() {
        // The control: runc 1.1.5 refuses it too, less clearly — it passes context= to the
        // kernel anyway and the first tmpfs mount fails with EINVAL.
        let runc_root = env.tmp.path().join("runc-state");
        let (ok, err) = create_with(runc, &env, &runc_root, &cfg);
        remove_cgroup_tree(&cg);
        assert!(!ok, "runc accepted the mount label");
        assert!(err.contains("context="), "runc: {err}");
    }
}

#[test]
fn intel_rdt_is_applied_or_refused() {
    let env = TestEnv::new();
    let cg = unique("cg");
    let mut cfg = busybox_config(&["sleep", "1000"], &cg);
    cfg["ociVersion"] = json!("1.0.2");
    cfg["linux"]["intelRdt"] = json!({"l3CacheSchema": "L3:0=1"});
    if Path::new("/sys/fs/resctrl/info").is_dir() {
        // resctrl: the init is in the container's own group, which goes with it.
        env.write_config(&cfg);
        let id = unique("rdt");
        let _guard = Cleanup {
            env: &env,
            id: id.clone(),
        };
        let o = rt_out(
            &env,
            &["create", "--bundle", env.bundle.to_str().unwrap(), &id],
        );
        if !Path::new("/sys/fs/resctrl/info/L3").is_dir() {
            assert!(stderr(&o).contains("l3CacheSchema"), "{}", stderr(&o));
            return;
        }
        assert!(o.status.success(), "{}", stderr(&o));
        let pid = state_json(&env, &id)["pid"].as_i64().unwrap();
        let group = Path::new("/sys/fs/resctrl").join(&id);
        let tasks = std::fs::read_to_string(group.join("tasks")).unwrap();
        assert!(tasks.lines().any(|l| l == pid.to_string()), "{tasks}");
        let o = rt_out(&env, &["delete", "--force", &id]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(!group.exists(), "resctrl group left behind");
        assert_gone(&env, &id, &cg);
        return;
    }
    let (ok, err) = create_with(RT, &env, &env.root, &cfg);
    assert!(!ok, "create ignored linux.intelRdt");
    assert!(
        err.contains("linux.intelRdt") && err.contains("resctrl is not mounted"),
        "{err}"
    );
    assert!(cgroup_dirs(&cg).is_empty(), "cgroup left behind");
    let o = rt_out(&env, &["list", "-q"]);
    assert_eq!(stdout(&o), "");
    if let Some(runc) = runc() {
        // The control: runc 1.1.5 refuses it too.
        let runc_root = env.tmp.path().join("runc-state");
        let (ok, err) = create_with(runc, &env, &runc_root, &cfg);
        remove_cgroup_tree(&cg);
        assert!(!ok, "runc accepted linux.intelRdt without resctrl");
        assert!(err.contains("Intel RDT"), "runc: {err}");
    }
}
