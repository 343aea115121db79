//! The order of the init's steps, checked from the outside and side by side with runc on the
//! same bundle: descriptors are closed and the cwd entered before any seccomp filter or
//! privilege drop, the no_new_privs filter covers startContainer hooks, HOME comes from the
//! container's passwd, the terminal belongs to the process's user, and a symlinked /proc is
//! refused.

mod common;
use common::*;
use serde_json::json;

/// Run with vessel-runtime and (when installed) runc; returns both outcomes.
fn both(
    mutate: impl Fn(&mut serde_json::Value, &TestEnv),
    script: &str,
) -> (Outcome, Option<Outcome>) {
    side_by_side(mutate, script, true)
}

#[test]
fn a_profile_without_close_range_or_getcwd_still_runs_like_runc() {
    // Older docker/containerd profiles and OCI tooling's defaults allow neither.
    let (ours, theirs) = both(
        |c, _| {
            c["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["close_range", "getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
            ]});
        },
        "echo ran",
    );
    assert_eq!(ours, (0, "ran\n".into(), String::new()));
    if let Some(t) = theirs {
        assert_eq!(t.0, 0, "runc: {t:?}");
        assert_eq!(t.1, ours.1);
    }
    // Without no_new_privs the filter is loaded while still privileged: same result.
    let (ours, _) = both(
        |c, _| {
            c["process"]["noNewPrivileges"] = json!(false);
            c["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["close_range", "getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
            ]});
        },
        "echo ran",
    );
    assert_eq!(ours, (0, "ran\n".into(), String::new()));
}

#[test]
fn cwd_is_entered_before_the_user_change_and_created_if_missing_like_runc() {
    let (ours, theirs) = both(
        |c, env| {
            use std::os::unix::fs::PermissionsExt;
            let root_home = env.bundle.join("rootfs/root");
            std::fs::set_permissions(&root_home, std::fs::Permissions::from_mode(0o700)).unwrap();
            c["process"]["user"] = json!({"uid": 1000, "gid": 1000});
            c["process"]["cwd"] = json!("/root");
        },
        "pwd; id -u",
    );
    assert_eq!(ours, (0, "/root\n1000\n".into(), String::new()));
    if let Some(t) = theirs {
        assert_eq!(t.0, 0, "runc: {t:?}");
        assert_eq!(t.1, ours.1);
    }
    let (ours, theirs) = both(
        |c, _| {
            c["process"]["cwd"] = json!("/does/not/exist");
        },
        "pwd",
    );
    assert_eq!(ours, (0, "/does/not/exist\n".into(), String::new()));
    if let Some(t) = theirs {
        assert_eq!(t.1, ours.1, "runc: {t:?}");
    }
}

#[test]
fn home_comes_from_the_containers_passwd_like_runc() {
    let (ours, theirs) = both(
        |c, env| {
            std::fs::write(
                env.bundle.join("rootfs/etc/passwd"),
                "root:x:0:0:root:/root:/bin/sh\nbob:x:1000:1000::/home/bob:/bin/sh\n",
            )
            .unwrap();
            c["process"]["user"] = json!({"uid": 1000, "gid": 1000});
            c["process"]["cwd"] = json!("/");
        },
        "echo $HOME",
    );
    assert_eq!(ours, (0, "/home/bob\n".into(), String::new()));
    if let Some(t) = theirs {
        assert_eq!(t.1, ours.1, "runc: {t:?}");
    }
    let (ours, _) = both(
        |c, _| {
            c["process"]["env"] = json!(["PATH=/bin", "HOME=/custom"]);
        },
        "echo $HOME",
    );
    assert_eq!(ours.1, "/custom\n");
}

#[test]
fn start_container_hooks_run_under_the_no_new_privs_filter_like_runc() {
    // The filter denies mkdir; the hook (run inside the container after `start`) tries one.
    let (ours, theirs) = both(
        |c, _| {
            c["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
            ]});
            c["hooks"] = json!({"startContainer": [{"path": "/bin/mkdir", "args": ["mkdir", "/tmp/hook-ran"]}]});
        },
        "ls /tmp",
    );
    assert_ne!(ours.0, 0, "the hook ran without the filter: {ours:?}");
    assert!(ours.2.contains("startContainer hook"), "{}", ours.2);
    if let Some(t) = theirs {
        assert_ne!(t.0, 0, "runc runs it under the filter too: {t:?}");
    }
}

#[test]
fn the_terminal_belongs_to_the_process_user() {
    // A foreground run with a terminal relays it; inside, the pty is the user's (tty group).
    let (ours, _) = both(
        |c, _| {
            c["process"]["terminal"] = json!(true);
            c["process"]["user"] = json!({"uid": 1000, "gid": 1000});
        },
        "stat -c %u:%g $(tty)",
    );
    assert_eq!(ours.0, 0, "{}", ours.2);
    assert_eq!(ours.1.trim(), "1000:5");
}

#[test]
fn a_symlinked_proc_in_the_rootfs_is_refused() {
    let (ours, theirs) = both(
        |_, env| {
            let rootfs = env.bundle.join("rootfs");
            std::fs::remove_dir(rootfs.join("proc")).unwrap();
            std::fs::create_dir(rootfs.join("elsewhere")).unwrap();
            std::os::unix::fs::symlink("/elsewhere", rootfs.join("proc")).unwrap();
        },
        "true",
    );
    assert_ne!(ours.0, 0);
    assert!(ours.2.contains("/proc is a symlink"), "{}", ours.2);
    if let Some(t) = theirs {
        // runc 1.1.5 follows it (newer runc refuses): noted, not asserted.
        eprintln!("runc (control) with a symlinked /proc: exit {}", t.0);
    }
}
