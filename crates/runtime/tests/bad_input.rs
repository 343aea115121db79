//! Bad input gets a clear error that names the field and value, exit status 1, and leaves
//! nothing behind: no state dir, no cgroup, no process.

mod common;
use common::*;
use serde_json::json;

fn expect_failure(mutate: impl FnOnce(&mut serde_json::Value, &TestEnv), want: &[&str]) {
    let env = TestEnv::new();
    let id = unique("bad");
    let cg = unique("cg");
    let mut cfg = busybox_config(&["true"], &cg);
    mutate(&mut cfg, &env);
    env.write_config(&cfg);
    let o = rt_out(
        &env,
        &["create", "--bundle", env.bundle.to_str().unwrap(), &id],
    );
    let err = stderr(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "expected failure, got {:?}: {err}",
        o.status
    );
    for w in want {
        assert!(err.contains(w), "error {err:?} should mention {w:?}");
    }
    assert_gone(&env, &id, &cg);
    let o = rt_out(&env, &["list", "-q"]);
    assert_eq!(stdout(&o), "");
}

#[test]
fn unknown_namespace() {
    expect_failure(
        |c, _| c["linux"]["namespaces"][0]["type"] = json!("bogus"),
        &["linux.namespaces[0]", "bogus"],
    );
}

// An unknown capability name is not bad input for runc or crun: it is ignored with a
// warning (runc_behaviour::unknown_capabilities_are_ignored_with_a_warning_like_runc).

#[test]
fn unknown_rlimit() {
    expect_failure(
        |c, _| c["process"]["rlimits"][0]["type"] = json!("RLIMIT_BOGUS"),
        &["process.rlimits[0]", "RLIMIT_BOGUS"],
    );
}

#[test]
fn malformed_json() {
    let env = TestEnv::new();
    std::fs::write(
        env.bundle.join("config.json"),
        "{\"ociVersion\": \"1.2.0\", \"process\": ",
    )
    .unwrap();
    let o = rt_out(
        &env,
        &[
            "create",
            "--bundle",
            env.bundle.to_str().unwrap(),
            &unique("bad"),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("config.json"), "{}", stderr(&o));
}

#[test]
fn missing_rootfs() {
    expect_failure(
        |c, _| c["root"]["path"] = json!("nonexistent"),
        &["root.path", "nonexistent"],
    );
}

#[test]
fn missing_mount_source() {
    expect_failure(
        |c, _| {
            c["mounts"].as_array_mut().unwrap().push(json!({"destination": "/data", "type": "bind", "source": "/nonexistent/vessel", "options": ["rbind"]}))
        },
        &["mounts[7]", "/nonexistent/vessel"],
    );
}

#[test]
fn missing_program() {
    expect_failure(
        |c, _| c["process"]["args"] = json!(["/bin/nope"]),
        &["/bin/nope"],
    );
}

#[test]
fn bad_seccomp_profile() {
    expect_failure(
        |c, _| c["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_BOGUS"}]}),
        &["seccomp", "SCMP_ACT_BOGUS"],
    );
}

#[test]
fn failing_hook_aborts_create() {
    expect_failure(
        |c, _| c["hooks"] = json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "echo hook-said-no >&2; exit 3"]}]}),
        &["createRuntime hook #0", "hook-said-no"],
    );
}

#[test]
fn rlimit_above_hard_limit() {
    // Above fs.nr_open no process may raise RLIMIT_NOFILE, with or without CAP_SYS_RESOURCE
    // (root here has none; root in the v2 guest has it).
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    expect_failure(
        |c, _| {
            c["process"]["rlimits"] =
                json!([{"type": "RLIMIT_NOFILE", "soft": nr_open + 1, "hard": nr_open + 1}])
        },
        &["RLIMIT_NOFILE"],
    );
}

#[test]
fn joined_namespace_of_wrong_type() {
    expect_failure(
        |c, _| {
            c["linux"]["namespaces"][1] = json!({"type": "network", "path": "/proc/self/ns/uts"})
        },
        &["linux.namespaces[1].path", "not a net namespace"],
    );
}

#[test]
fn invalid_ids() {
    let env = TestEnv::new();
    env.write_config(&busybox_config(&["true"], &unique("cg")));
    for id in ["../escape", "a/b", ".."] {
        let o = rt_out(
            &env,
            &["create", "--bundle", env.bundle.to_str().unwrap(), id],
        );
        assert_eq!(o.status.code(), Some(1));
        assert!(
            stderr(&o).contains("invalid container id"),
            "{}",
            stderr(&o)
        );
    }
    assert_eq!(
        std::fs::read_dir(&env.root)
            .unwrap()
            .filter(|e| !e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.'))
            .count(),
        0
    );
}

#[test]
fn operations_on_missing_container() {
    let env = TestEnv::new();
    for args in [
        vec!["start", "nope"],
        vec!["state", "nope"],
        vec!["kill", "nope"],
        vec!["delete", "nope"],
        vec!["pause", "nope"],
    ] {
        let o = rt_out(&env, &args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&o).contains("does not exist"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    assert!(rt_out(&env, &["delete", "--force", "nope"])
        .status
        .success());
}

#[test]
fn systemd_cgroup_without_systemd() {
    let env = TestEnv::new();
    let o = vessel_testkit::run(
        std::process::Command::new(RT)
            .args(["--systemd-cgroup", "--root"])
            .arg(&env.root)
            .args(["list"]),
    );
    if std::path::Path::new("/run/systemd/system").exists() {
        return;
    }
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("systemd"), "{}", stderr(&o));
}

#[test]
fn idmap_requests_that_cannot_be_met() {
    let maps = json!([{"containerID": 0, "hostID": 1000, "size": 10}]);
    // "idmap" asks for the container's mappings; this container has no user namespace.
    expect_failure(
        |c, env| {
            c["mounts"]
                .as_array_mut()
                .unwrap()
                .push(json!({"destination": "/data", "type": "bind",
                "source": env.bundle.to_str().unwrap(), "options": ["bind", "idmap"]}))
        },
        &["mounts[7]", "idmap", "linux.uidMappings"],
    );
    // Only bind mounts can be id-mapped.
    expect_failure(
        |c, _| {
            c["mounts"]
                .as_array_mut()
                .unwrap()
                .push(json!({"destination": "/data", "type": "tmpfs",
                "source": "tmpfs", "uidMappings": maps, "gidMappings": maps}))
        },
        &["mounts[7]", "bind mounts only", "tmpfs"],
    );
    // uid and gid mappings come as a pair.
    expect_failure(
        |c, env| {
            c["mounts"]
                .as_array_mut()
                .unwrap()
                .push(json!({"destination": "/data", "type": "bind",
                "source": env.bundle.to_str().unwrap(), "options": ["bind"], "uidMappings": maps}))
        },
        &["mounts[7]", "uidMappings and gidMappings"],
    );
}
