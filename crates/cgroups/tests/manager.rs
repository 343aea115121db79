//! The cgroup manager against the real kernel: whatever this host mounts (v1/hybrid here,
//! pure v2 in the guest of scripts/test-cgroup-v2.sh). Each test creates its own
//! `vesseltest-<pid>-<n>` cgroup, applies resources, reads the kernel's files back (with
//! paths computed here, not by the crate), puts real processes in it, and removes it in a
//! Drop guard so that a failing test leaves nothing behind.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use oci_spec::runtime::LinuxResources;
use serde_json::json;
use vessel_cgroups::{CgroupManager, Layout};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("vesseltest-{}-{n}-{tag}", std::process::id())
}

struct Cg {
    m: CgroupManager,
    children: Vec<Child>,
}

impl Cg {
    fn new(tag: &str) -> Cg {
        Cg::at(&PathBuf::from(format!("/{}", unique(tag))))
    }

    fn at(path: &Path) -> Cg {
        let m = CgroupManager::new(path).unwrap();
        // The guard exists before create, so a half-created cgroup is removed too.
        let cg = Cg {
            m,
            children: Vec::new(),
        };
        cg.m.create().unwrap();
        cg
    }

    fn v2(&self) -> bool {
        self.m.layout() == Layout::V2
    }

    /// Start `cmd` and put it into the cgroup before it does anything: it waits for a line on
    /// stdin first.
    fn spawn(&mut self, script: &str) -> i32 {
        let mut child = Command::new("sh")
            .args(["-c", &format!("read _go; {script}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        self.m.add_task(pid).unwrap();
        writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
        self.children.push(child);
        pid
    }

    /// The kernel file for `controller`, found independently of the crate.
    fn path(&self, controller: &str, name: &str) -> PathBuf {
        let rel = self.m.path().strip_prefix("/").unwrap();
        let root = Path::new("/sys/fs/cgroup");
        let base = if self.v2() {
            root.to_path_buf()
        } else if root.join(controller).is_dir() {
            root.join(controller)
        } else {
            root.join("unified")
        };
        base.join(rel).join(name)
    }

    fn file(&self, controller: &str, name: &str) -> String {
        let p = self.path(controller, name);
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .trim()
            .to_string()
    }
}

impl Drop for Cg {
    fn drop(&mut self) {
        let _ = self.m.thaw();
        // Grandchildren too, not only the children we hold.
        let _ = self.m.kill_all(libc::SIGKILL);
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Err(e) = self.m.remove() {
            if !std::thread::panicking() {
                panic!("remove {}: {e}", self.m.path().display());
            }
        }
    }
}

fn res(v: serde_json::Value) -> LinuxResources {
    serde_json::from_value(v).unwrap()
}

fn host_layout() -> Layout {
    CgroupManager::new(Path::new("/vesseltest-probe"))
        .unwrap()
        .layout()
}

#[test]
fn layout_matches_the_host() {
    let statfs_v2 = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.contains(" /sys/fs/cgroup ") && l.contains(" - cgroup2 "));
    let layout = host_layout();
    if statfs_v2 {
        assert_eq!(layout, Layout::V2);
    } else if Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
        assert_eq!(layout, Layout::Hybrid);
    } else {
        assert_eq!(layout, Layout::V1);
    }
    // A unified hierarchy (v2 or hybrid) can take a child straight into the cgroup.
    let cg = Cg::new("fd");
    let fd = cg.m.unified_dir_fd().unwrap();
    assert_eq!(fd.is_some(), layout != Layout::V1);
    if let Some(fd) = fd {
        let target = std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&fd)
        ))
        .unwrap();
        let want = if layout == Layout::V2 {
            cg.path("cpu", "")
        } else {
            Path::new("/sys/fs/cgroup/unified").join(cg.m.path().strip_prefix("/").unwrap())
        };
        assert_eq!(target, want);
    }
}

#[test]
fn memory_cpu_pids_are_written_and_updated() {
    let cg = Cg::new("mem");
    let r = res(json!({
        "memory": {"limit": 134217728, "reservation": 67108864, "swap": 268435456,
                   "swappiness": 10, "disableOOMKiller": true, "kernel": 268435456, "kernelTCP": 268435456},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "burst": 1000, "idle": 0},
        "pids": {"limit": 77}
    }));
    CgroupManager::validate(&r, cg.m.layout()).unwrap();
    cg.m.apply(&r).unwrap();
    if cg.v2() {
        assert_eq!(cg.file("memory", "memory.max"), "134217728");
        assert_eq!(cg.file("memory", "memory.low"), "67108864");
        if cg.path("memory", "memory.swap.max").exists() {
            assert_eq!(cg.file("memory", "memory.swap.max"), "134217728");
        }
        assert_eq!(cg.file("cpu", "cpu.max"), "50000 100000");
        assert_eq!(cg.file("cpu", "cpu.max.burst"), "1000");
        assert_eq!(
            cg.file("cpu", "cpu.weight"),
            (1 + (510 * 9999) / 262142).to_string()
        );
    } else {
        assert_eq!(cg.file("memory", "memory.limit_in_bytes"), "134217728");
        assert_eq!(cg.file("memory", "memory.soft_limit_in_bytes"), "67108864");
        if cg.path("memory", "memory.memsw.limit_in_bytes").exists() {
            assert_eq!(
                cg.file("memory", "memory.memsw.limit_in_bytes"),
                "268435456"
            );
        }
        assert_eq!(cg.file("memory", "memory.swappiness"), "10");
        assert!(cg
            .file("memory", "memory.oom_control")
            .contains("oom_kill_disable 1"));
        assert_eq!(cg.file("cpu", "cpu.shares"), "512");
        assert_eq!(cg.file("cpu", "cpu.cfs_quota_us"), "50000");
        assert_eq!(cg.file("cpu", "cpu.cfs_period_us"), "100000");
        if cg.path("cpu", "cpu.cfs_burst_us").exists() {
            assert_eq!(cg.file("cpu", "cpu.cfs_burst_us"), "1000");
        }
    }
    assert_eq!(cg.file("pids", "pids.max"), "77");
    // `update`: lift the limits again; -1 / 0 mean unlimited.
    cg.m.apply(&res(
        json!({"memory": {"limit": -1}, "pids": {"limit": 0}, "cpu": {"quota": -1}}),
    ))
    .unwrap();
    assert_eq!(cg.file("pids", "pids.max"), "max");
    if cg.v2() {
        assert_eq!(cg.file("memory", "memory.max"), "max");
        assert_eq!(cg.file("cpu", "cpu.max"), "max 100000");
    } else {
        assert_eq!(cg.file("cpu", "cpu.cfs_quota_us"), "-1");
        let unlimited: u64 = cg.file("memory", "memory.limit_in_bytes").parse().unwrap();
        assert!(unlimited > 1 << 60);
    }
}

#[test]
fn v1_realtime_and_v2_unified() {
    let cg = Cg::new("rt");
    if cg.v2() {
        cg.m.apply(&res(json!({"unified": {"memory.high": "104857600"}})))
            .unwrap();
        assert_eq!(cg.file("memory", "memory.high"), "104857600");
        let e =
            cg.m.apply(&res(json!({"unified": {"memory.nosuchfile": "1"}})))
                .unwrap_err();
        assert!(e.to_string().contains("memory.nosuchfile"), "{e}");
    } else {
        cg.m.apply(&res(
            json!({"cpu": {"realtimePeriod": 1000000, "realtimeRuntime": 0}}),
        ))
        .unwrap();
        assert_eq!(cg.file("cpu", "cpu.rt_period_us"), "1000000");
        assert_eq!(cg.file("cpu", "cpu.rt_runtime_us"), "0");
        let e =
            cg.m.apply(&res(json!({"unified": {"memory.high": "1"}})))
                .unwrap_err();
        assert!(e.to_string().contains("linux.resources.unified"), "{e}");
    }
}

#[test]
fn cpuset_is_initialised_and_settable() {
    let mut cg = Cg::new("cpuset");
    let effective = if cg.v2() {
        "cpuset.cpus.effective"
    } else {
        "cpuset.cpus"
    };
    assert!(!cg.file("cpuset", effective).is_empty());
    // A v1 cpuset with empty cpus/mems refuses tasks: create must have filled them.
    cg.spawn("sleep 100");
    cg.m.apply(&res(json!({"cpu": {"cpus": "0", "mems": "0"}})))
        .unwrap();
    assert_eq!(cg.file("cpuset", "cpuset.cpus"), "0");
    assert_eq!(cg.file("cpuset", "cpuset.mems"), "0");
}

/// The first whole-disk block device's major:minor (throttling needs a real device).
fn block_device() -> Option<(u64, u64)> {
    let mut names: Vec<_> = std::fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort_by_key(|n| (n.starts_with("loop") || n.starts_with("zram"), n.clone()));
    let dev = std::fs::read_to_string(format!("/sys/block/{}/dev", names.first()?)).ok()?;
    let (a, b) = dev.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

#[test]
fn block_io_throttles_and_weights() {
    let cg = Cg::new("blkio");
    let Some((maj, min)) = block_device() else {
        eprintln!("no block device: skipped");
        return;
    };
    let dev = |rate: u64| json!([{"major": maj, "minor": min, "rate": rate}]);
    cg.m.apply(&res(json!({"blockIO": {
        "throttleReadBpsDevice": dev(1048576), "throttleWriteBpsDevice": dev(2097152),
        "throttleReadIOPSDevice": dev(100), "throttleWriteIOPSDevice": dev(200)
    }})))
    .unwrap();
    if cg.v2() {
        let io_max = cg.file("io", "io.max");
        assert!(
            io_max.contains(&format!(
                "{maj}:{min} rbps=1048576 wbps=2097152 riops=100 wiops=200"
            )),
            "{io_max}"
        );
    } else {
        for (f, v) in [
            ("blkio.throttle.read_bps_device", 1048576),
            ("blkio.throttle.write_bps_device", 2097152),
            ("blkio.throttle.read_iops_device", 100),
            ("blkio.throttle.write_iops_device", 200),
        ] {
            assert_eq!(cg.file("blkio", f), format!("{maj}:{min} {v}"));
        }
    }
    // A weight goes to whichever file the kernel offers; without one the error says so.
    let weight = cg.m.apply(&res(json!({"blockIO": {"weight": 500}})));
    let ctl = if cg.v2() { "io" } else { "blkio" };
    let files = if cg.v2() {
        [("io.bfq.weight", "500"), ("io.weight", "4950")]
    } else {
        [("blkio.weight", "500"), ("blkio.bfq.weight", "500")]
    };
    match files.iter().find(|(f, _)| cg.path(ctl, f).exists()) {
        Some((f, v)) => {
            weight.unwrap();
            assert!(cg.file(ctl, f).contains(v), "{f}: {}", cg.file(ctl, f));
        }
        None => {
            let e = weight.unwrap_err().to_string();
            assert!(e.contains("linux.resources.blockIO.weight"), "{e}");
        }
    }
}

#[test]
fn hugetlb_where_the_host_has_it() {
    let cg = Cg::new("huge");
    let r = res(json!({"hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}]}));
    let v1 = cg.path("hugetlb", "hugetlb.2MB.limit_in_bytes");
    let v2 = cg.path("hugetlb", "hugetlb.2MB.max");
    let result = cg.m.apply(&r);
    if v1.exists() || v2.exists() {
        result.unwrap();
        let f = if v2.exists() { v2 } else { v1 };
        assert_eq!(std::fs::read_to_string(f).unwrap().trim(), "4194304");
    } else {
        // e.g. this hybrid host: hugetlb is bound to an unmounted v1 hierarchy.
        let e = result.unwrap_err().to_string();
        assert!(e.contains("hugepageLimits") && e.contains("hugetlb"), "{e}");
    }
}

#[test]
fn network_and_rdma_need_their_controllers() {
    let cg = Cg::new("net");
    let r = cg.m.apply(&res(json!({"network": {"classID": 1048577}})));
    if cg.path("net_cls", "net_cls.classid").exists() && !cg.v2() {
        r.unwrap();
        assert_eq!(cg.file("net_cls", "net_cls.classid"), "1048577");
    } else {
        let e = r.unwrap_err().to_string();
        assert!(e.contains("network.classID"), "{e}");
    }
    let r =
        cg.m.apply(&res(json!({"rdma": {"mlx5_0": {"hcaHandles": 3}}})));
    if !cg.path("rdma", "rdma.max").exists() {
        let e = r.unwrap_err().to_string();
        assert!(e.contains("linux.resources.rdma"), "{e}");
    }
}

/// CPU ticks (utime+stime) of a process, from /proc/<pid>/stat.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn freeze_stops_and_thaw_resumes_a_busy_process() {
    let mut cg = Cg::new("freeze");
    let pid = cg.spawn("while :; do :; done");
    std::thread::sleep(Duration::from_millis(200));
    cg.m.freeze().unwrap();
    assert!(cg.m.is_frozen().unwrap());
    let t0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(cpu_ticks(pid), t0, "a frozen process must not run");
    cg.m.thaw().unwrap();
    assert!(!cg.m.is_frozen().unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cpu_ticks(pid) == t0 {
        assert!(
            std::time::Instant::now() < deadline,
            "thawed process does not run"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn pids_stats_kill_all_and_remove() {
    let mut cg = Cg::new("kill");
    cg.m.apply(&res(
        json!({"pids": {"limit": 50}, "memory": {"limit": 268435456}}),
    ))
    .unwrap();
    let a = cg.spawn("sleep 1000");
    // A process in a child cgroup is counted too (pids is recursive).
    let b = cg.spawn("sleep 1000 & echo $!; wait");
    let mut out = BufReader::new(cg.children[1].stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let grandchild: i32 = line.trim().parse().unwrap();
    // `sh -c` may or may not exec its last command: check that ours are all there.
    let pids = cg.m.pids().unwrap();
    for p in [a, b, grandchild] {
        assert!(pids.contains(&p), "{p} not in {pids:?}");
    }

    // The shells may still be forking their last command: compare counts once the set of
    // processes holds still across the stats read.
    let mut stats = serde_json::Value::Null;
    let mut compared = false;
    for _ in 0..100 {
        let before = cg.m.pids().unwrap();
        stats = serde_json::to_value(cg.m.stats().unwrap()).unwrap();
        if cg.m.pids().unwrap() == before {
            assert_eq!(
                stats.pointer("/pids/current"),
                Some(&json!(before.len())),
                "{stats}"
            );
            compared = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(compared, "the cgroup's processes never held still");
    assert_eq!(stats.pointer("/pids/limit"), Some(&json!(50)), "{stats}");
    assert_eq!(
        stats.pointer("/memory/usage/limit"),
        Some(&json!(268435456)),
        "{stats}"
    );
    assert!(stats.pointer("/memory/usage/usage").is_some(), "{stats}");
    assert!(stats.pointer("/cpu/usage/total").is_some(), "{stats}");
    for k in [
        "/cpu/usage/kernel",
        "/cpu/usage/user",
        "/memory/swap",
        "/memory/raw",
    ] {
        assert!(stats.pointer(k).is_some(), "stats lack {k}: {stats}");
    }

    // SIGTERM goes the freeze-signal-thaw way; `sh` ignores nothing here, so all exit.
    cg.m.kill_all(libc::SIGTERM).unwrap();
    for c in &mut cg.children {
        let st = c.wait().unwrap();
        assert_eq!(st.signal(), Some(libc::SIGTERM));
    }
    cg.children.clear();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cg.m.pids().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "grandchild survived");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!cg.m.is_frozen().unwrap());
}

#[test]
fn sigkill_then_remove_at_once() {
    let mut cg = Cg::new("sigkill");
    cg.spawn("sleep 1000");
    cg.spawn("sleep 1000");
    cg.m.kill_all(libc::SIGKILL).unwrap();
    // Remove while the processes may still be exiting (not reaped yet): rmdir retries.
    cg.m.remove().unwrap();
    for c in &mut cg.children {
        assert_eq!(c.wait().unwrap().signal(), Some(libc::SIGKILL));
    }
    cg.children.clear();
    assert!(!cg.path("pids", "").exists());
    cg.m.remove().unwrap();
}

#[test]
fn devices_rules_are_enforced_and_updated() {
    let mut cg = Cg::new("dev");
    // /dev/kmsg (c 1:11) is not among the devices runc always allows; opening is the check.
    let probe = "head -c1 /dev/null >/dev/null && echo NULL-OK; \
                 dd if=/dev/kmsg count=0 2>/dev/null && echo KMSG-OK || echo KMSG-DENIED";
    let run = |cg: &mut Cg| -> String {
        cg.spawn(probe);
        let c = cg.children.pop().unwrap();
        String::from_utf8_lossy(&c.wait_with_output().unwrap().stdout).into_owned()
    };
    // Deny all, then the defaults (null among them) are allowed after the user's rules.
    cg.m.apply(&res(json!({"devices": [
        {"allow": false, "access": "rwm"},
        {"allow": false, "type": "c", "major": 1, "minor": 11, "access": "rwm"}
    ]})))
    .unwrap();
    let text = run(&mut cg);
    assert!(
        text.contains("NULL-OK") && text.contains("KMSG-DENIED"),
        "{text}"
    );
    if !cg.v2() {
        let list = cg.file("devices", "devices.list");
        assert!(!list.contains("a *:* rwm"), "{list}");
        assert!(list.contains("c 1:3 rwm"), "{list}");
    }
    // `update` replaces the rules (on v2: the old program is detached).
    cg.m.apply(&res(json!({"devices": [
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 11, "access": "r"}
    ]})))
    .unwrap();
    let text = run(&mut cg);
    assert!(
        text.contains("NULL-OK") && text.contains("KMSG-OK"),
        "{text}"
    );
}

#[test]
fn relative_paths_go_below_our_own_cgroup() {
    let name = unique("rel");
    let cg = Cg::at(Path::new(&name));
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let (key, base) = if cg.v2() {
        ("", "/sys/fs/cgroup".to_string())
    } else {
        ("pids", "/sys/fs/cgroup/pids".to_string())
    };
    let mine = own
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            f.next();
            (f.next()? == key).then(|| f.next().map(str::to_string))?
        })
        .unwrap();
    let want = PathBuf::from(base)
        .join(mine.trim_start_matches('/'))
        .join(&name);
    assert!(want.is_dir(), "{} missing", want.display());
}

#[test]
fn bad_paths_and_values_are_refused_before_any_change() {
    for (bad, why) in [
        ("/a/../b", "\"..\""),
        ("/a//b", "empty"),
        ("/", "root"),
        ("system.slice:vessel:abc", "systemd"),
    ] {
        let e = CgroupManager::new(Path::new(bad)).unwrap_err().to_string();
        assert!(e.contains("cgroupsPath") && e.contains(why), "{bad}: {e}");
    }
    let layout = host_layout();
    for (json, want) in [
        (
            json!({"memory": {"limit": 100}}),
            "memory.limit: 100 is below the kernel minimum",
        ),
        (
            json!({"memory": {"limit": 104857600, "swap": 52428800}}),
            "memory.swap: 52428800",
        ),
        (json!({"cpu": {"shares": 1}}), "cpu.shares: 1"),
        (
            json!({"devices": [{"allow": true, "access": "rwx"}]}),
            "devices[0].access",
        ),
    ] {
        let e = CgroupManager::validate(&res(json.clone()), layout)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{json}: {e}");
    }
}

#[test]
fn create_joins_and_remove_is_idempotent() {
    let cg = Cg::new("idem");
    cg.m.create().unwrap();
    cg.m.remove().unwrap();
    cg.m.remove().unwrap();
    cg.m.create().unwrap();
}
