//! Sysctls, hostname and domainname with namespaces joined by path, side by side with runc:
//! allowed in any namespace that is not the runtime's own (podman's stock default_sysctls
//! arrive that way), refused in the host's own.

mod common;
use common::*;
use serde_json::json;
use std::process::Command;

/// A network namespace of the test's own, bound to a file (as podman pins its netns).
struct BoundNetns(std::path::PathBuf);

impl BoundNetns {
    fn new(env: &TestEnv) -> BoundNetns {
        let path = env.tmp.path().join("netns");
        std::fs::write(&path, "").unwrap();
        let o = Command::new("unshare")
            .arg(format!("--net={}", path.display()))
            .arg("true")
            .output()
            .unwrap();
        assert!(o.status.success(), "unshare --net: {}", stderr(&o));
        BoundNetns(path)
    }
}

impl Drop for BoundNetns {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn scenario(mutate: impl Fn(&mut serde_json::Value, &TestEnv)) -> (Outcome, Option<Outcome>) {
    let env = TestEnv::new();
    let cg = unique("cg");
    let mut cfg = busybox_config(
        &[
            "sh",
            "-c",
            "cat /proc/sys/net/ipv4/ping_group_range; hostname",
        ],
        &cg,
    );
    cfg["ociVersion"] = json!("1.0.2");
    mutate(&mut cfg, &env);
    env.write_config(&cfg);
    let ours = run_bundle_with(&env, RT, &unique("sysctl"));
    assert_gone(&env, "none", &cg);
    let theirs = runc_path().map(|r| run_bundle_with(&env, r, &unique("runc")));
    remove_cgroup_tree(&cg);
    (ours, theirs)
}

fn with_namespaces(cfg: &mut serde_json::Value, net: serde_json::Value, uts: serde_json::Value) {
    cfg["linux"]["namespaces"] = json!([
        {"type": "pid"}, {"type": "ipc"}, {"type": "mount"}, net, uts
    ]);
}

#[test]
fn net_sysctl_in_a_netns_joined_by_path_is_applied_like_runc() {
    let netns = std::cell::RefCell::new(None);
    let (ours, theirs) = scenario(|c, env| {
        let ns = BoundNetns::new(env);
        with_namespaces(
            c,
            json!({"type": "network", "path": ns.0}),
            json!({"type": "uts"}),
        );
        c["linux"]["sysctl"] = json!({"net.ipv4.ping_group_range": "0 0"});
        *netns.borrow_mut() = Some(ns);
    });
    assert_eq!(ours.0, 0, "{}", ours.2);
    assert_eq!(ours.1, "0\t0\nvessel-test\n");
    if let Some(t) = theirs {
        assert_eq!(t.0, 0, "runc: {t:?}");
        assert_eq!(t.1, ours.1);
    }
}

#[test]
fn net_sysctl_in_the_hosts_netns_is_refused_like_runc() {
    let (ours, theirs) = scenario(|c, _| {
        with_namespaces(
            c,
            json!({"type": "network", "path": "/proc/self/ns/net"}),
            json!({"type": "uts"}),
        );
        c["linux"]["sysctl"] = json!({"net.ipv4.ping_group_range": "0 0"});
    });
    assert_ne!(ours.0, 0);
    assert!(
        ours.2.contains("not allowed in the host's net namespace"),
        "{}",
        ours.2
    );
    if let Some(t) = theirs {
        assert_ne!(t.0, 0, "runc refuses too: {t:?}");
        assert!(t.2.contains("host network namespace"), "{}", t.2);
    }
}

#[test]
fn hostname_with_a_joined_uts_namespace() {
    // A uts namespace of the test's own, joined by path: the hostname is set in it.
    let env_ns = TestEnv::new();
    let path = env_ns.tmp.path().join("uts");
    std::fs::write(&path, "").unwrap();
    let o = Command::new("unshare")
        .arg(format!("--uts={}", path.display()))
        .arg("true")
        .output()
        .unwrap();
    assert!(o.status.success(), "unshare --uts: {}", stderr(&o));
    let (ours, theirs) = scenario(|c, _| {
        with_namespaces(
            c,
            json!({"type": "network"}),
            json!({"type": "uts", "path": path}),
        );
    });
    let _ = Command::new("umount").arg(&path).status();
    assert_eq!(ours.0, 0, "{}", ours.2);
    assert!(ours.1.ends_with("vessel-test\n"), "{}", ours.1);
    if let Some(t) = theirs {
        assert_eq!(t.0, 0, "runc: {t:?}");
    }
    // The host's own uts namespace: runc would rename the host; we refuse.
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let env = TestEnv::new();
    let cg = unique("cg");
    let mut cfg = busybox_config(&["true"], &cg);
    with_namespaces(
        &mut cfg,
        json!({"type": "network"}),
        json!({"type": "uts", "path": "/proc/self/ns/uts"}),
    );
    env.write_config(&cfg);
    let (code, _, err) = run_bundle_with(&env, RT, &unique("uts"));
    assert_ne!(code, 0);
    assert!(err.contains("rename the host"), "{err}");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        host_name
    );
    assert_gone(&env, "none", &cg);
}

#[test]
fn kernel_hostname_sysctl_is_refused_like_runc() {
    let (ours, theirs) = scenario(|c, _| {
        c["linux"]["sysctl"] = json!({"kernel.hostname": "sneaky"});
    });
    assert_ne!(ours.0, 0);
    assert!(
        ours.2.contains("conflicts with the \"hostname\" field"),
        "{}",
        ours.2
    );
    if let Some(t) = theirs {
        assert_ne!(t.0, 0, "runc refuses too: {t:?}");
    }
}
