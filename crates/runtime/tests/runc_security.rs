//! Security-relevant differences from runc, each on the same bundle with runc 1.1.5 as the
//! control: --no-pivot must not leave a fully visible procfs, bind sources of a user-
//! namespaced container are opened with the runtime's privileges, and a seccomp agent gets
//! the listener metadata on `exec` as on `create`.

mod common;
use common::*;
use serde_json::json;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;

/// `run --no-pivot` of the env's bundle with `runtime`.
fn run_no_pivot(env: &TestEnv, runtime: &str) -> Outcome {
    let root = env.tmp.path().join(format!("state-{}", runtime.len()));
    let id = unique("nopivot");
    let mut c = Command::new(runtime);
    c.arg("--root")
        .arg(&root)
        .args([
            "run",
            "--no-pivot",
            "--bundle",
            env.bundle.to_str().unwrap(),
            &id,
        ])
        .current_dir(&env.bundle);
    let o = vessel_testkit::run_via_files(&mut c, env.tmp.path());
    let _ = Command::new(runtime)
        .arg("--root")
        .arg(&root)
        .args(["delete", "--force", &id])
        .output();
    (o.status.code().unwrap_or(-1), stdout(&o), stderr(&o))
}

#[test]
fn no_pivot_leaves_no_procfs_to_remount_like_runc() {
    // From a nested user namespace, a fresh procfs may only be mounted where a fully
    // visible one exists in the mount namespace: with the host's /proc still there under
    // the chroot, masked and read-only paths could be bypassed.
    let env = TestEnv::new();
    let cg = unique("cg");
    let cfg = busybox_config(
        &[
            "sh",
            "-c",
            "unshare -mrpf sh -c 'mount -t proc none /proc && echo MOUNTED' 2>/dev/null || echo denied",
        ],
        &cg,
    );
    env.write_config(&cfg);
    let ours = run_no_pivot(&env, RT);
    assert_eq!(ours, (0, "denied\n".into(), String::new()));
    if let Some(runc) = runc_path() {
        let theirs = run_no_pivot(&env, runc);
        assert_eq!(theirs.1, "denied\n", "runc: {theirs:?}");
    }
    assert_gone(&env, "none", &cg);
    remove_cgroup_tree(&cg);
}

#[test]
fn bind_sources_are_opened_before_the_user_namespace_like_runc() {
    // A source below a directory only host root may traverse: inside the user namespace
    // (root mapped to 100000) it is not reachable by path.
    let env = TestEnv::new();
    let cg = unique("cg");
    let private = env.tmp.path().join("private");
    let shared = private.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("file"), "through the bind\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut cfg = busybox_config(&["cat", "/mnt/file"], &cg);
    cfg["ociVersion"] = json!("1.0.2");
    cfg["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "user"}));
    cfg["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    cfg["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    cfg["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/mnt", "type": "bind", "source": shared, "options": ["rbind", "ro"]}));
    // The rootfs must be reachable by the mapped root.
    let o = Command::new("chown")
        .args(["-R", "100000:100000"])
        .arg(&env.bundle)
        .output()
        .unwrap();
    assert!(o.status.success());
    std::fs::set_permissions(env.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    env.write_config(&cfg);
    let ours = run_bundle_with(&env, RT, &unique("userns-bind"));
    assert_eq!(ours, (0, "through the bind\n".into(), String::new()));
    if let Some(runc) = runc_path() {
        let theirs = run_bundle_with(&env, runc, &unique("runc"));
        assert_eq!(theirs.1, ours.1, "runc: {theirs:?}");
    }
    assert_gone(&env, "none", &cg);
    remove_cgroup_tree(&cg);
}

/// A seccomp agent: accepts connections on `path` and records the state document sent with
/// each listener descriptor.
fn agent(path: &Path, expect: usize) -> std::thread::JoinHandle<Vec<serde_json::Value>> {
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let mut states = Vec::new();
        for _ in 0..expect {
            let (conn, _) = listener.accept().unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 4]);
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let msg = nix::sys::socket::recvmsg::<()>(
                conn.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                nix::sys::socket::MsgFlags::empty(),
            )
            .unwrap();
            let got_fd = msg.cmsgs().unwrap().any(|c| {
                matches!(c, nix::sys::socket::ControlMessageOwned::ScmRights(ref f) if !f.is_empty())
            });
            let len = msg.bytes;
            assert!(got_fd, "no listener descriptor came with the state");
            states.push(serde_json::from_slice(&buf[..len]).unwrap());
        }
        states
    })
}

#[test]
fn exec_hands_the_agent_the_listener_metadata_like_create() {
    let env = TestEnv::new();
    let cg = unique("cg");
    let sock = env.tmp.path().join("agent.sock");
    let mut cfg = busybox_config(&["sleep", "100"], &cg);
    cfg["ociVersion"] = json!("1.0.2");
    cfg["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "listenerPath": sock,
        "listenerMetadata": "meta-for-the-agent",
        "syscalls": [{"names": ["mkdirat", "mkdir"], "action": "SCMP_ACT_NOTIFY"}]
    });
    env.write_config(&cfg);
    let agent = agent(&sock, 2);
    let id = unique("notify");
    let _guard = Cleanup {
        env: &env,
        id: id.clone(),
    };
    let o = rt_out(
        &env,
        &["run", "-d", "--bundle", env.bundle.to_str().unwrap(), &id],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = rt_out(&env, &["exec", &id, "true"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let states = agent.join().unwrap();
    for s in &states {
        assert_eq!(s["metadata"], "meta-for-the-agent", "{s}");
        assert_eq!(s["fds"], json!(["seccompFd"]), "{s}");
    }
    drop(_guard);
    assert_gone(&env, &id, &cg);
}
