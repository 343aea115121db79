//! The cgroup manager against the real kernel: whatever this host mounts (v1/hybrid here,
//! pure v2 in the guest of scripts/test-cgroup-v2.sh), each test creates a `vesseltest-`
//! cgroup, applies resources, reads the files back, puts a real process in it, and removes it.

use std::path::PathBuf;
use std::process::{Child, Command};

use oci_spec::runtime::LinuxResources;
use vessel_cgroups::{CgroupManager, Layout};

static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

struct Cg {
    m: CgroupManager,
    children: Vec<Child>,
}

impl Cg {
    fn new() -> Cg {
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = PathBuf::from(format!("/vesseltest-{}-{n}-cg", std::process::id()));
        let m = CgroupManager::new(&path).unwrap();
        m.create().unwrap();
        Cg {
            m,
            children: Vec::new(),
        }
    }

    fn spawn_sleeper(&mut self) -> i32 {
        let child = Command::new("sleep").arg("1000").spawn().unwrap();
        let pid = child.id() as i32;
        self.m.add_task(pid).unwrap();
        self.children.push(child);
        pid
    }

    fn file(&self, controller: &str, name: &str) -> String {
        let dir = self.dir(controller);
        std::fs::read_to_string(dir.join(name))
            .unwrap_or_else(|e| panic!("{}/{name}: {e}", dir.display()))
    }

    fn dir(&self, controller: &str) -> PathBuf {
        let rel = self.m.path().strip_prefix("/").unwrap();
        if self.m.layout() == Layout::V2 {
            PathBuf::from("/sys/fs/cgroup").join(rel)
        } else {
            PathBuf::from("/sys/fs/cgroup").join(controller).join(rel)
        }
    }
}

impl Drop for Cg {
    fn drop(&mut self) {
        let _ = self.m.thaw();
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.m.remove().unwrap();
    }
}

fn res(v: serde_json::Value) -> LinuxResources {
    serde_json::from_value(v).unwrap()
}

#[test]
fn memory_cpu_pids_are_written() {
    let cg = Cg::new();
    let r = res(serde_json::json!({
        "memory": {"limit": 134217728, "reservation": 67108864},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000},
        "pids": {"limit": 77}
    }));
    CgroupManager::validate(&r, cg.m.layout()).unwrap();
    cg.m.apply(&r).unwrap();
    if cg.m.layout() == Layout::V2 {
        assert_eq!(cg.file("memory", "memory.max").trim(), "134217728");
        assert_eq!(cg.file("memory", "memory.low").trim(), "67108864");
        assert_eq!(cg.file("cpu", "cpu.max").trim(), "50000 100000");
        assert_eq!(
            cg.file("cpu", "cpu.weight").trim(),
            (1 + (510 * 9999) / 262142).to_string()
        );
        assert_eq!(cg.file("pids", "pids.max").trim(), "77");
    } else {
        assert_eq!(
            cg.file("memory", "memory.limit_in_bytes").trim(),
            "134217728"
        );
        assert_eq!(
            cg.file("memory", "memory.soft_limit_in_bytes").trim(),
            "67108864"
        );
        assert_eq!(cg.file("cpu", "cpu.shares").trim(), "512");
        assert_eq!(cg.file("cpu", "cpu.cfs_quota_us").trim(), "50000");
        assert_eq!(cg.file("pids", "pids.max").trim(), "77");
    }
    // update: raise and lift limits.
    cg.m.apply(&res(
        serde_json::json!({"memory": {"limit": -1}, "pids": {"limit": 0}}),
    ))
    .unwrap();
    assert_eq!(cg.file("pids", "pids.max").trim(), "max");
}

#[test]
fn cpuset_is_initialised_and_settable() {
    let cg = Cg::new();
    let effective = if cg.m.layout() == Layout::V2 {
        "cpuset.cpus.effective"
    } else {
        "cpuset.cpus"
    };
    let cpus = cg.file("cpuset", effective);
    assert!(!cpus.trim().is_empty());
    cg.m.apply(&res(serde_json::json!({"cpu": {"cpus": "0", "mems": "0"}})))
        .unwrap();
    assert_eq!(cg.file("cpuset", "cpuset.cpus").trim(), "0");
}

#[test]
fn tasks_freeze_thaw_pids_kill_and_remove() {
    let mut cg = Cg::new();
    let pid = cg.spawn_sleeper();
    let pid2 = cg.spawn_sleeper();
    let mut pids = cg.m.pids().unwrap();
    pids.sort();
    let mut want = vec![pid, pid2];
    want.sort();
    assert_eq!(pids, want);
    cg.m.freeze().unwrap();
    assert!(cg.m.is_frozen().unwrap());
    cg.m.thaw().unwrap();
    assert!(!cg.m.is_frozen().unwrap());
    cg.m.kill_all(libc::SIGKILL).unwrap();
    for c in &mut cg.children {
        let st = c.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&st),
            Some(libc::SIGKILL)
        );
    }
    cg.children.clear();
    let stats = cg.m.stats().unwrap();
    let json = serde_json::to_value(&stats).unwrap();
    for k in ["cpu", "memory", "pids", "blkio", "hugetlb"] {
        assert!(json.get(k).is_some(), "stats lack {k}: {json}");
    }
}

#[test]
fn devices_rules_are_enforced() {
    let mut cg = Cg::new();
    // Deny everything but the defaults runc always allows (null among them), and /dev/full.
    cg.m.apply(&res(serde_json::json!({"devices": [
        {"allow": false, "access": "rwm"},
        {"allow": false, "type": "c", "major": 1, "minor": 7, "access": "rwm"}
    ]})))
    .unwrap();
    // A shell inside the cgroup tries to open /dev/null (allowed) and /dev/full (denied).
    let child = Command::new("sh")
        .args(["-c", "sleep 0.2; echo x > /dev/null && echo NULL-OK; echo x > /dev/full 2>/dev/null; echo rc=$?"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    cg.m.add_task(child.id() as i32).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("NULL-OK"), "{text}");
    assert!(
        text.contains("rc=1") || text.contains("rc=2"),
        "/dev/full should be denied: {text}"
    );
    let _ = &mut cg;
}

#[test]
fn bad_paths_and_values_are_refused() {
    for bad in ["/a/../b", "/", "system.slice:vessel:abc"] {
        assert!(
            CgroupManager::new(std::path::Path::new(bad)).is_err(),
            "{bad}"
        );
    }
    let layout = CgroupManager::new(std::path::Path::new("/vesseltest-probe"))
        .unwrap()
        .layout();
    let e = CgroupManager::validate(
        &res(serde_json::json!({"memory": {"limit": 100, "swap": 50}})),
        layout,
    )
    .unwrap_err();
    assert!(e.to_string().contains("memory.swap"), "{e}");
    let e = CgroupManager::validate(&res(serde_json::json!({"cpu": {"shares": 1}})), layout)
        .unwrap_err();
    assert!(e.to_string().contains("cpu.shares"), "{e}");
    if layout != Layout::V2 {
        let e = CgroupManager::validate(
            &res(serde_json::json!({"unified": {"memory.high": "1"}})),
            layout,
        )
        .unwrap_err();
        assert!(e.to_string().contains("unified"), "{e}");
    }
}

#[test]
fn remove_is_idempotent() {
    let cg = Cg::new();
    cg.m.remove().unwrap();
    cg.m.remove().unwrap();
    cg.m.create().unwrap();
}
