//! Rootless: vessel-runtime run by an unprivileged user with the `spec --rootless` config.
//! The kernel only lets such a user map its own ids, and only after setgroups is denied in
//! the new user namespace (otherwise the container could drop supplementary groups the host
//! uses to deny access); no cgroup is needed when no resources are asked for.

mod common;
use common::*;
use std::os::unix::process::CommandExt;

const UID: u32 = 64123;
const GID: u32 = 64123;

fn as_user(cmd: &mut std::process::Command) -> &mut std::process::Command {
    // std drops the supplementary groups when root switches to another uid.
    cmd.uid(UID).gid(GID).env("HOME", "/nonexistent")
}

#[test]
fn unprivileged_user_runs_a_rootless_container() {
    let env = TestEnv::new();
    // The unprivileged user must reach the bundle and own its state root.
    let dir = env.tmp.path();
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&env.bundle, Some(UID), Some(GID)).unwrap();
    // Container root is the user on the host: give it a writable /tmp.
    std::fs::set_permissions(
        env.bundle.join("rootfs/tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    let root = dir.join("user-state");
    std::fs::create_dir(&root).unwrap();
    std::os::unix::fs::chown(&root, Some(UID), Some(GID)).unwrap();
    let out_dir = dir.join("user-out");
    std::fs::create_dir(&out_dir).unwrap();
    std::os::unix::fs::chown(&out_dir, Some(UID), Some(GID)).unwrap();

    let o = vessel_testkit::run_via_files(
        as_user(std::process::Command::new(RT).args(["spec", "--rootless", "--bundle"]))
            .arg(&env.bundle),
        &out_dir,
    );
    assert!(o.status.success(), "spec --rootless: {}", stderr(&o));
    let path = env.bundle.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(cfg["linux"]["uidMappings"][0]["hostID"], UID);
    cfg["process"]["terminal"] = serde_json::json!(false);
    cfg["root"]["readonly"] = serde_json::json!(false);
    cfg["process"]["args"] = serde_json::json!([
        "sh",
        "-c",
        "cat /proc/self/uid_map /proc/self/gid_map /proc/self/setgroups; id -u; \
         grep CapEff /proc/self/status; echo x > /tmp/written && echo WROTE"
    ]);
    env.write_config(&cfg);

    let id = unique("rootless");
    let user_rt = |args: &[&str]| {
        vessel_testkit::run_via_files(
            as_user(
                std::process::Command::new(RT)
                    .arg("--root")
                    .arg(&root)
                    .args(args),
            ),
            &out_dir,
        )
    };
    let o = user_rt(&["run", "--bundle", env.bundle.to_str().unwrap(), &id]);
    let out = stdout(&o);
    assert_eq!(
        o.status.code(),
        Some(0),
        "stdout: {out}\nstderr: {}",
        stderr(&o)
    );
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        &words[..8],
        &[
            "0",
            &UID.to_string(),
            "1",
            "0",
            &GID.to_string(),
            "1",
            "deny",
            "0"
        ],
        "{out}"
    );
    assert!(out.contains("WROTE"), "{out}");
    assert!(!root.join(&id).exists(), "state dir left behind");
    assert!(cgroup_dirs(&id).is_empty(), "a cgroup was created");

    // Detached, then state, kill and delete: the same lifecycle without a cgroup.
    cfg["process"]["args"] = serde_json::json!(["sleep", "1000"]);
    env.write_config(&cfg);
    let o = user_rt(&["run", "-d", "--bundle", env.bundle.to_str().unwrap(), &id]);
    assert!(o.status.success(), "run -d: {}", stderr(&o));
    let o = user_rt(&["state", &id]);
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st["status"], "running", "{st}");
    let o = user_rt(&["exec", &id, "sh", "-c", "echo exec-as-$(id -u)"]);
    assert!(o.status.success(), "exec: {}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "exec-as-0");
    let o = user_rt(&["pause", &id]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("without a cgroup"), "{}", stderr(&o));
    let o = user_rt(&["kill", &id, "KILL"]);
    assert!(o.status.success(), "kill: {}", stderr(&o));
    let o = user_rt(&["delete", "--force", &id]);
    assert!(o.status.success(), "delete: {}", stderr(&o));
    assert!(!root.join(&id).exists(), "state dir left behind");
    let pid = st["pid"].as_i64().unwrap();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default()
                != "sleep\x001000\x00",
        "the container's init survived delete"
    );

    // Asking for resources without being able to create a cgroup is an error, not a
    // silently unenforced limit.
    cfg["linux"]["resources"] = serde_json::json!({"pids": {"limit": 10}});
    env.write_config(&cfg);
    let o = user_rt(&["run", "--bundle", env.bundle.to_str().unwrap(), &id]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("linux.resources"), "{}", stderr(&o));
    assert!(!root.join(&id).exists(), "state dir left behind");
}
