//! CPU bandwidth (period and quota) updates inside a "pod" cgroup that has a CPU limit of
//! its own, against the real kernel. On v1 each write is checked against the parent's
//! quota/period ratio, so the order of the two writes matters; on v2 cpu.max is one write,
//! and a missing half must keep the cgroup's current value. Every cgroup is test-prefixed
//! and removed on drop.

use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;
use vessel_cgroups::{CgroupManager, Layout};

fn unique(tag: &str) -> String {
    format!("vesseltest-{}-{tag}", std::process::id())
}

fn is_root() -> bool {
    // SAFETY: trivial libc call.
    unsafe { libc::geteuid() == 0 }
}

/// A pod cgroup and a container cgroup below it; removed (child first) on drop.
struct Pod {
    pod: CgroupManager,
    ct: CgroupManager,
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = self.ct.remove();
        let _ = self.pod.remove();
    }
}

fn res(v: serde_json::Value) -> LinuxResources {
    serde_json::from_value(v).unwrap()
}

fn cpu_dir(m: &CgroupManager) -> PathBuf {
    let rel = m.path().strip_prefix("/").unwrap();
    if m.layout() == Layout::V2 {
        Path::new("/sys/fs/cgroup").join(rel)
    } else {
        Path::new("/sys/fs/cgroup/cpu").join(rel)
    }
}

/// (quota, period) as the kernel has them; "-1" for no quota.
fn bandwidth(m: &CgroupManager) -> (String, String) {
    let d = cpu_dir(m);
    let read = |f: &str| {
        std::fs::read_to_string(d.join(f))
            .unwrap()
            .trim()
            .to_string()
    };
    if m.layout() == Layout::V2 {
        let s = read("cpu.max");
        let (q, p) = s.split_once(' ').unwrap();
        (q.replace("max", "-1"), p.to_string())
    } else {
        (read("cpu.cfs_quota_us"), read("cpu.cfs_period_us"))
    }
}

fn cpu(quota: i64, period: Option<u64>) -> LinuxResources {
    match period {
        Some(p) => res(serde_json::json!({"cpu": {"quota": quota, "period": p}})),
        None => res(serde_json::json!({"cpu": {"quota": quota}})),
    }
}

#[test]
fn period_and_quota_updates_inside_a_limited_parent() {
    if !is_root() {
        eprintln!("needs root; skipping");
        return;
    }
    let name = unique("pod");
    let pod = CgroupManager::new(Path::new(&format!("/{name}"))).unwrap();
    let ct = CgroupManager::new(Path::new(&format!("/{name}/ct"))).unwrap();
    let g = Pod { pod, ct };
    g.pod.create().unwrap();
    g.ct.create().unwrap();
    // Half a CPU for the pod, and for the container in it.
    g.pod.apply(&cpu(50_000, Some(100_000))).unwrap();
    g.ct.apply(&cpu(50_000, Some(100_000))).unwrap();
    assert_eq!(bandwidth(&g.ct), ("50000".into(), "100000".into()));

    // The same half CPU over a shorter period: the period written next to the old quota
    // alone would be a whole CPU, above the pod's (EINVAL on v1).
    g.ct.apply(&cpu(25_000, Some(50_000))).unwrap();
    assert_eq!(bandwidth(&g.ct), ("25000".into(), "50000".into()));
    // And back over a longer one: here the quota alone would be too much.
    g.ct.apply(&cpu(100_000, Some(200_000))).unwrap();
    assert_eq!(bandwidth(&g.ct), ("100000".into(), "200000".into()));

    // A quota alone keeps the period; -1 removes the limit (the pod's still applies).
    g.ct.apply(&cpu(80_000, None)).unwrap();
    assert_eq!(bandwidth(&g.ct), ("80000".into(), "200000".into()));
    g.ct.apply(&cpu(-1, None)).unwrap();
    assert_eq!(bandwidth(&g.ct), ("-1".into(), "200000".into()));

    // A period alone keeps the quota (v2 rewrote it as "max" before).
    g.ct.apply(&cpu(40_000, None)).unwrap();
    g.ct.apply(&res(serde_json::json!({"cpu": {"period": 100_000}})))
        .unwrap();
    assert_eq!(bandwidth(&g.ct), ("40000".into(), "100000".into()));

    // More than the pod allows is refused, and the error names the fields and says why.
    if g.ct.layout() != Layout::V2 {
        let e =
            g.ct.apply(&cpu(90_000, Some(100_000)))
                .unwrap_err()
                .to_string();
        assert!(
            e.contains("cpu.period/quota") && e.contains("parent cgroup"),
            "{e}"
        );
    }
}
