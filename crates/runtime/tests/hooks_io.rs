//! Hook output: stdout and stderr are read while the hook runs (a hook writing more than a
//! pipe holds must not hang the runtime), kept out of the runtime's own output, and shown in
//! the error when the hook fails — as runc 1.1.5 does (its Command.Run buffers both).

mod common;
use common::*;

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::json;

fn runc() -> Option<&'static str> {
    ["/usr/sbin/runc", "/usr/bin/runc"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

/// Run `runtime args` with output to files; None if it is still running after `secs`.
fn run_bounded(
    runtime: &str,
    root: &Path,
    env: &TestEnv,
    args: &[&str],
    secs: u64,
) -> Option<(bool, String, String)> {
    let out_path = env.tmp.path().join(format!("{}.out", unique("o")));
    let err_path = env.tmp.path().join(format!("{}.err", unique("e")));
    let mut child = KillOnDrop(
        Command::new(runtime)
            .arg("--root")
            .arg(root)
            .args(args)
            .current_dir(&env.bundle)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .spawn()
            .expect("start the runtime"),
    );
    let status = wait_timeout(&mut child.0, secs)?;
    Some((
        status.success(),
        std::fs::read_to_string(&out_path).unwrap_or_default(),
        std::fs::read_to_string(&err_path).unwrap_or_default(),
    ))
}

#[test]
fn hooks_that_write_a_mebibyte_do_not_hang() {
    let env = TestEnv::new();
    let id = unique("hooks");
    let cg = unique("cg");
    let _guard = Cleanup {
        env: &env,
        id: id.clone(),
    };
    // 1 MiB to stdout and 1 MiB to stderr, then success; no timeout. The container's own
    // hooks run inside it, with its busybox.
    let loud = json!({"path": "/bin/sh", "args": ["sh", "-c",
        "cat >/dev/null; head -c 1048576 /dev/zero; head -c 1048576 /dev/zero >&2"]});
    let mut cfg = busybox_config(&["true"], &cg);
    cfg["hooks"] = json!({
        "prestart": [loud],
        "createRuntime": [loud],
        "createContainer": [loud],
        "startContainer": [loud],
        "poststart": [loud],
        "poststop": [loud]
    });
    env.write_config(&cfg);
    let bundle = env.bundle.to_str().unwrap();
    let (ok, out, err) = run_bounded(RT, &env.root, &env, &["run", "--bundle", bundle, &id], 60)
        .expect("vessel-runtime run hung on a hook's output");
    assert!(ok, "run: {err}");
    // Hook output is the hook's business, not part of ours.
    assert_eq!(out.len(), 0, "hook output reached the runtime's stdout");
    assert!(err.len() < 4096, "hook output reached the runtime's stderr");
    assert_gone(&env, &id, &cg);
}

#[test]
fn a_failing_hook_shows_its_output_in_the_error_like_runc() {
    let env = TestEnv::new();
    let runc_root = env.tmp.path().join("runc-state");
    let bundle = env.bundle.to_str().unwrap().to_string();
    let mut runtimes = vec![(RT, env.root.clone())];
    match runc() {
        Some(r) => runtimes.push((r, runc_root)),
        None => eprintln!("runc is not installed; no control"),
    }
    for (runtime, root) in &runtimes {
        let id = unique("hookfail");
        let cg = unique("cg");
        let mut cfg = busybox_config(&["true"], &cg);
        cfg["ociVersion"] = json!("1.0.2");
        cfg["hooks"] = json!({"prestart": [
            {"path": "/bin/sh", "args": ["sh", "-c", "echo fine-on-stdout"]},
            {"path": "/bin/sh", "args": ["sh", "-c",
                "echo said-on-stdout; echo said-on-stderr >&2; exit 3"]}
        ]});
        env.write_config(&cfg);
        let (ok, out, err) = run_bounded(
            runtime,
            root,
            &env,
            &["create", "--bundle", &bundle, &id],
            60,
        )
        .unwrap_or_else(|| panic!("{runtime} create hung"));
        assert!(!ok, "{runtime}: create succeeded despite the hook");
        for want in ["said-on-stdout", "said-on-stderr"] {
            assert!(err.contains(want), "{runtime}: {want:?} not in {err:?}");
        }
        assert!(
            !out.contains("fine-on-stdout") && !err.contains("fine-on-stdout"),
            "{runtime}: a successful hook's output was shown: {out:?} {err:?}"
        );
        if *runtime == RT {
            assert!(err.contains("prestart hook #1"), "{err}");
            assert!(err.contains("exit status: 3"), "{err}");
        }
        let mut c = Command::new(runtime);
        c.arg("--root").arg(root).args(["delete", "--force", &id]);
        let _ = vessel_testkit::run_via_files(&mut c, env.tmp.path());
        assert!(!root.join(&id).exists(), "{runtime}: state dir left");
        if *runtime == RT {
            assert!(cgroup_dirs(&cg).is_empty(), "cgroup left");
        }
        remove_cgroup_tree(&cg);
    }
}

#[test]
fn start_container_hooks_under_a_seccomp_profile_without_pidfd_open() {
    // Without noNewPrivileges the filter is loaded before the init waits for `start`, so
    // startContainer hooks run under it: the runtime's hook runner must manage without
    // pidfd_open.
    let env = TestEnv::new();
    let id = unique("hooks");
    let cg = unique("cg");
    let _guard = Cleanup {
        env: &env,
        id: id.clone(),
    };
    let mut cfg = busybox_config(&["true"], &cg);
    cfg["process"]["noNewPrivileges"] = json!(false);
    cfg["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["pidfd_open"], "action": "SCMP_ACT_ERRNO"}]
    });
    cfg["hooks"] = json!({"startContainer": [{"path": "/bin/sh", "args": ["sh", "-c",
        "cat >/dev/null; head -c 1048576 /dev/zero; echo done > /hook.log"]}]});
    env.write_config(&cfg);
    let bundle = env.bundle.to_str().unwrap();
    let (ok, _, err) = run_bounded(RT, &env.root, &env, &["run", "--bundle", bundle, &id], 60)
        .expect("vessel-runtime run hung");
    assert!(ok, "run: {err}");
    assert_eq!(
        std::fs::read_to_string(env.bundle.join("rootfs/hook.log")).unwrap_or_default(),
        "done\n"
    );
    assert_gone(&env, &id, &cg);
}
