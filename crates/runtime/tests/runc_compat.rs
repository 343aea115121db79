//! Side by side with runc on the same bundle: `state`, `list --format json`, `ps --format json`
//! and `features` carry the same field names and meanings.

mod common;
use common::*;

use std::collections::BTreeSet;
use std::process::Command;

fn runc() -> Option<&'static str> {
    ["/usr/sbin/runc", "/usr/bin/runc"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

fn keys(v: &serde_json::Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

fn runc_out(env: &TestEnv, root: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut c = Command::new(runc().unwrap());
    c.arg("--root")
        .arg(root)
        .args(args)
        .current_dir(&env.bundle);
    vessel_testkit::run_via_files(&mut c, env.tmp.path())
}

#[test]
fn state_list_ps_and_features_match_runc() {
    let Some(_) = runc() else {
        eprintln!("runc is not installed; skipping");
        return;
    };
    let env = TestEnv::new();
    let ours = unique("ours");
    let theirs = unique("runc");
    let cg_ours = unique("cg");
    let cg_theirs = unique("cg");
    let runc_root = env.tmp.path().join("runc-state");
    let bundle = env.bundle.to_str().unwrap().to_string();

    env.write_config(&busybox_config(&["sleep", "1000"], &cg_ours));
    let _g = Cleanup {
        env: &env,
        id: ours.clone(),
    };
    assert!(rt_out(&env, &["run", "-d", "--bundle", &bundle, &ours])
        .status
        .success());
    env.write_config(&busybox_config(&["sleep", "1000"], &cg_theirs));
    let o = runc_out(
        &env,
        &runc_root,
        &["run", "-d", "--bundle", &bundle, &theirs],
    );
    assert!(o.status.success(), "runc run: {}", stderr(&o));

    let result = std::panic::catch_unwind(|| {
        let a = state_json(&env, &ours);
        let b: serde_json::Value =
            serde_json::from_slice(&runc_out(&env, &runc_root, &["state", &theirs]).stdout)
                .unwrap();
        assert_eq!(keys(&a), keys(&b), "state fields");
        assert_eq!(a["status"], b["status"]);
        assert_eq!(a["bundle"], b["bundle"]);
        assert_eq!(a["rootfs"], b["rootfs"]);

        let a: serde_json::Value =
            serde_json::from_slice(&rt_out(&env, &["list", "--format", "json"]).stdout).unwrap();
        let b: serde_json::Value = serde_json::from_slice(
            &runc_out(&env, &runc_root, &["list", "--format", "json"]).stdout,
        )
        .unwrap();
        assert_eq!(keys(&a[0]), keys(&b[0]), "list fields");

        let a: Vec<i32> =
            serde_json::from_slice(&rt_out(&env, &["ps", "--format", "json", &ours]).stdout)
                .unwrap();
        let b: Vec<i32> = serde_json::from_slice(
            &runc_out(&env, &runc_root, &["ps", "--format", "json", &theirs]).stdout,
        )
        .unwrap();
        assert_eq!(a.len(), b.len(), "ps: same number of processes");

        let a: serde_json::Value =
            serde_json::from_slice(&rt_out(&env, &["features"]).stdout).unwrap();
        let b: serde_json::Value =
            serde_json::from_slice(&runc_out(&env, &runc_root, &["features"]).stdout).unwrap();
        for k in keys(&b) {
            assert!(a.get(&k).is_some(), "features lacks {k}");
        }
        for k in keys(&b["linux"]) {
            assert!(a["linux"].get(&k).is_some(), "features.linux lacks {k}");
        }
        for k in keys(&b["linux"]["seccomp"]) {
            assert!(
                a["linux"]["seccomp"].get(&k).is_some(),
                "features.linux.seccomp lacks {k}"
            );
        }
    });
    let _ = runc_out(&env, &runc_root, &["delete", "--force", &theirs]);
    remove_cgroup_tree(&cg_theirs);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
