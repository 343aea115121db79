//! `checkpoint` / `restore` with real CRIU, each scenario run side by side with runc 1.1.5 as
//! the control on the same kind of bundle: a counting busybox shell checkpointed (gone),
//! restored (counting on from where it was, in its cgroup and namespaces), `--leave-running`,
//! `--image-path` / `--work-path`, a TCP connection held from the test through the
//! container's network namespace (`--tcp-established`), a flock held by the container
//! (`--file-locks`), stdio files outside the container, the error cases, and a failed
//! restore that must leave nothing behind.
//!
//! Needs root and a criu that works on this kernel: every test skips, saying why, when
//! `criu check` fails for each criu found in PATH.

mod common;
use common::*;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const COUNTER: &str = "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done";

/// A criu that passes `criu check` here (the first one in PATH that does), with the lock
/// that runs these tests one at a time; or None after saying what each criu said.
///
/// One at a time: on this hybrid-cgroup host, CRIU mounting the cgroup2 hierarchy (its
/// cgroup "yard", to dump and restore cgroups) makes a concurrent `create` in a new cgroup
/// namespace fail to mount cgroup2 with EBUSY, and these tests create while others dump.
fn criu() -> Option<(PathBuf, std::fs::File)> {
    let criu = usable_criu()?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(Path::new(env!("CARGO_TARGET_TMPDIR")).join("checkpoint-tests.lock"))
        .expect("open the lock file");
    // SAFETY: flock on a descriptor we own; released when the file is dropped.
    let r = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(r, 0, "lock: {}", std::io::Error::last_os_error());
    Some((criu, lock))
}

fn usable_criu() -> Option<PathBuf> {
    static CRIU: OnceLock<Option<PathBuf>> = OnceLock::new();
    CRIU.get_or_init(|| {
        if !vessel_testkit::is_root() {
            eprintln!("skipping: checkpoint/restore tests need root");
            return None;
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut seen = Vec::new();
        for dir in std::env::split_paths(&path) {
            let p = dir.join("criu");
            if !p.exists() || seen.contains(&p) {
                continue;
            }
            seen.push(p.clone());
            let o = Command::new(&p).arg("check").output();
            match o {
                Ok(o) if o.status.success() => return Some(p),
                Ok(o) => eprintln!(
                    "{} check fails on this kernel: {}",
                    p.display(),
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => eprintln!("{}: {e}", p.display()),
            }
        }
        eprintln!(
            "skipping: no criu in PATH works on this kernel (checked {seen:?}); install criu \
             (a release that knows this kernel's vDSO layout)"
        );
        None
    })
    .clone()
}

fn runc() -> Option<&'static str> {
    ["/usr/sbin/runc", "/usr/bin/runc"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

/// One runtime with its own state root and bundle.
struct Rt {
    name: &'static str,
    bin: PathBuf,
    root: PathBuf,
    bundle: PathBuf,
    criu: PathBuf,
    tmp: PathBuf,
}

impl Rt {
    fn vessel(env: &TestEnv, criu: &Path) -> Rt {
        Rt {
            name: "vessel",
            bin: PathBuf::from(RT),
            root: env.root.clone(),
            bundle: env.bundle.clone(),
            criu: criu.to_path_buf(),
            tmp: env.tmp.path().to_path_buf(),
        }
    }

    fn runc(env: &TestEnv, criu: &Path) -> Option<Rt> {
        let bin = runc()?;
        let bundle = env.tmp.path().join("runc-bundle");
        vessel_testkit::make_busybox_rootfs(&bundle.join("rootfs"));
        Some(Rt {
            name: "runc",
            bin: PathBuf::from(bin),
            root: env.tmp.path().join("runc-state"),
            bundle,
            criu: criu.to_path_buf(),
            tmp: env.tmp.path().to_path_buf(),
        })
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root")
            .arg(&self.root)
            .arg("--criu")
            .arg(&self.criu)
            .args(args)
            .current_dir(&self.bundle);
        c
    }

    fn out(&self, args: &[&str]) -> Output {
        vessel_testkit::run_via_files(&mut self.cmd(args), &self.tmp)
    }

    /// `run -d` with /dev/null as stdio, as a detached engine would start it.
    fn run_detached(&self, id: &str) {
        let o = self.out(&["run", "-d", "--bundle", self.bundle.to_str().unwrap(), id]);
        assert!(o.status.success(), "{} run -d: {}", self.name, stderr(&o));
    }

    fn write_config(&self, cfg: &Value) {
        std::fs::write(
            self.bundle.join("config.json"),
            serde_json::to_vec_pretty(cfg).unwrap(),
        )
        .unwrap();
    }

    fn state(&self, id: &str) -> Option<Value> {
        let o = self.out(&["state", id]);
        o.status
            .success()
            .then(|| serde_json::from_slice(&o.stdout).expect("state prints JSON"))
    }

    fn status(&self, id: &str) -> String {
        self.state(id)
            .map(|v| v["status"].as_str().unwrap_or("").to_string())
            .unwrap_or_else(|| "absent".into())
    }

    fn pid(&self, id: &str) -> i32 {
        self.state(id)
            .map_or(0, |v| v["pid"].as_i64().unwrap_or(0) as i32)
    }

    fn count_path(&self) -> PathBuf {
        self.bundle.join("rootfs/tmp/count")
    }

    /// The counter's last value (None while the file is being rewritten or not there).
    fn count(&self) -> Option<u64> {
        for _ in 0..50 {
            if let Ok(s) = std::fs::read_to_string(self.count_path()) {
                if let Ok(n) = s.trim().parse() {
                    return Some(n);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    fn wait_count(&self, above: u64) -> Option<u64> {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Some(n) = self.count().filter(|n| *n > above) {
                return Some(n);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn wait_status(&self, id: &str, want: &str) -> bool {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if self.status(id) == want {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

/// Deletes the container (and for runc, whose cgroups the test cannot name for it, the
/// cgroup tree) whatever happened.
struct Guard<'a> {
    rt: &'a Rt,
    id: String,
    cg: String,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let _ = self.rt.out(&["delete", "--force", &self.id]);
        remove_cgroup_tree(&self.cg);
    }
}

/// A busybox config whose shell first points its stdio at the container's own /dev/null
/// (the runtime's stdio are the test's capture files, which runc's CRIU setup cannot dump).
fn config(script: &str, cg: &str) -> Value {
    let body = format!("exec </dev/null >/dev/null 2>&1; {script}");
    busybox_config(&["sh", "-c", &body], cg)
}

fn alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rfind(')')
        .and_then(|i| stat.get(i + 2..i + 3))
        .unwrap_or("");
    !state.is_empty() && state != "Z" && state != "X"
}

fn wait_dead(pid: i32) -> bool {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Whether `pid` is PID 1 of a pid namespace of its own (NSpid: <host pid> 1).
fn is_ns_init(pid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .is_some_and(|l| {
            let v: Vec<&str> = l.split_whitespace().collect();
            v.len() == 2 && v[1] == "1"
        })
}

fn in_cgroup(pid: i32, cg: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains(":memory:") && l.ends_with(&format!("/{cg}")))
}

/// What one runtime did in the counting scenario; compared between vessel and runc.
#[derive(Debug, PartialEq, Eq, Default)]
struct Counting {
    checkpointed: bool,
    container_gone_after_checkpoint: bool,
    process_gone_after_checkpoint: bool,
    cgroup_gone_after_checkpoint: bool,
    images_in_image_path: bool,
    dump_log_in_work_path: bool,
    stood_still_while_checkpointed: bool,
    restored: bool,
    restore_log_in_work_path: bool,
    same_mounts_after_restore: bool,
    status_after_restore: String,
    state_pid_is_the_restored_init: bool,
    init_is_pid1_of_its_namespace: bool,
    init_in_the_container_cgroup: bool,
    counted_on_from_the_checkpoint: bool,
    killed_and_deleted: bool,
}

/// The container's mounts as (root, mount point, type, superblock options), sorted: what
/// must be the same after a restore (mount IDs and devices are new).
fn mount_table(pid: i32) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
    let mut out: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            Some(format!(
                "{} {} {} {}",
                f.get(3)?,
                f.get(4)?,
                r.first()?,
                r.get(2).unwrap_or(&"")
            ))
        })
        .collect();
    out.sort();
    out
}

fn counting(rt: &Rt, id: &str, cg: &str) -> Counting {
    counting_with(rt, id, cg, &config(COUNTER, cg))
}

fn counting_with(rt: &Rt, id: &str, cg: &str, cfg: &Value) -> Counting {
    let mut out = Counting::default();
    rt.write_config(cfg);
    rt.run_detached(id);
    let _ = rt.wait_count(3).expect("the counter counts");
    let old = rt.pid(id);
    let mounts_before = mount_table(old);
    let img = rt.tmp.join(format!("{}-images", rt.name));
    let work = rt.tmp.join(format!("{}-work", rt.name));
    let (img_s, work_s) = (img.to_str().unwrap(), work.to_str().unwrap());

    let o = rt.out(&[
        "checkpoint",
        "--image-path",
        img_s,
        "--work-path",
        work_s,
        id,
    ]);
    out.checkpointed = o.status.success();
    if !out.checkpointed {
        eprintln!("{} checkpoint: {}", rt.name, stderr(&o));
        return out;
    }
    // Checkpointed between its truncate and its write, the file stays empty until the
    // restored shell writes: what matters is that nothing changes meanwhile.
    let raw = || std::fs::read_to_string(rt.count_path()).unwrap_or_default();
    let frozen = raw();
    let at_checkpoint = frozen.trim().parse().unwrap_or(0);
    out.container_gone_after_checkpoint = rt.state(id).is_none();
    out.process_gone_after_checkpoint = wait_dead(old);
    out.cgroup_gone_after_checkpoint = cgroup_dirs(cg).is_empty();
    out.images_in_image_path = img.join("inventory.img").exists()
        && img.join("descriptors.json").exists()
        && std::fs::read_dir(&img)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("pages-"));
    out.dump_log_in_work_path = work.join("dump.log").exists() && !img.join("dump.log").exists();
    std::thread::sleep(Duration::from_millis(500));
    out.stood_still_while_checkpointed = raw() == frozen;

    let o = rt.out(&[
        "restore",
        "-d",
        "--image-path",
        img_s,
        "--work-path",
        work_s,
        "--bundle",
        rt.bundle.to_str().unwrap(),
        id,
    ]);
    out.restored = o.status.success();
    if !out.restored {
        eprintln!("{} restore: {}", rt.name, stderr(&o));
        return out;
    }
    let first = rt.count().unwrap_or(0);
    out.restore_log_in_work_path = work.join("restore.log").exists();
    out.status_after_restore = rt.status(id);
    let pid = rt.pid(id);
    out.state_pid_is_the_restored_init = pid > 0 && pid != old && alive(pid);
    out.init_is_pid1_of_its_namespace = is_ns_init(pid);
    out.init_in_the_container_cgroup = in_cgroup(pid, cg);
    let mounts_after = mount_table(pid);
    out.same_mounts_after_restore = mounts_after == mounts_before;
    if !out.same_mounts_after_restore {
        eprintln!(
            "{}: mounts before the checkpoint:\n{}\nafter the restore:\n{}",
            rt.name,
            mounts_before.join("\n"),
            mounts_after.join("\n")
        );
    }
    // The shell's own variable carries on: a restarted counter would start again from 1.
    let later = rt.wait_count(at_checkpoint).unwrap_or(0);
    out.counted_on_from_the_checkpoint = first >= at_checkpoint && later > at_checkpoint;

    let killed = rt.out(&["kill", id, "KILL"]).status.success();
    let stopped = rt.wait_status(id, "stopped") && wait_dead(pid);
    let deleted = rt.out(&["delete", id]).status.success();
    out.killed_and_deleted = killed
        && stopped
        && deleted
        && rt.state(id).is_none()
        && !rt.root.join(id).exists()
        && cgroup_dirs(cg).is_empty();
    out
}

/// What a runtime that gets the counting scenario right does.
fn all_well() -> Counting {
    Counting {
        checkpointed: true,
        container_gone_after_checkpoint: true,
        process_gone_after_checkpoint: true,
        cgroup_gone_after_checkpoint: true,
        images_in_image_path: true,
        dump_log_in_work_path: true,
        stood_still_while_checkpointed: true,
        restored: true,
        restore_log_in_work_path: true,
        same_mounts_after_restore: true,
        status_after_restore: "running".into(),
        state_pid_is_the_restored_init: true,
        init_is_pid1_of_its_namespace: true,
        init_in_the_container_cgroup: true,
        counted_on_from_the_checkpoint: true,
        killed_and_deleted: true,
    }
}

/// runc 1.1.5 does all of it too, but names masked files to CRIU as external mounts and
/// restores the host's /dev/null over them: its restored mount table differs there.
fn runc_does() -> Counting {
    Counting {
        same_mounts_after_restore: false,
        ..all_well()
    }
}

#[test]
fn checkpointed_counter_is_restored_and_counts_on() {
    let Some((criu, _serial)) = criu() else {
        return;
    };
    let env = TestEnv::new();
    let ours = Rt::vessel(&env, &criu);
    let (id, cg) = (unique("ck"), unique("cg"));
    let _g = Guard {
        rt: &ours,
        id: id.clone(),
        cg: cg.clone(),
    };
    let got = counting(&ours, &id, &cg);
    let want = all_well();
    assert_eq!(got, want, "vessel");
    assert_gone(&env, &id, &cg);

    let Some(theirs) = Rt::runc(&env, &criu) else {
        eprintln!("runc is not installed: no control run");
        return;
    };
    let (rid, rcg) = (unique("runc"), unique("cg"));
    let _r = Guard {
        rt: &theirs,
        id: rid.clone(),
        cg: rcg.clone(),
    };
    let control = counting(&theirs, &rid, &rcg);
    eprintln!("runc: {control:#?}");
    assert_eq!(control, runc_does(), "runc (the control) differs");
}

/// Without a cgroup namespace the container's /sys/fs/cgroup holds the host's cgroup
/// directories bound in, and a bind mount brings in a host directory: both are external
/// to CRIU, restored from the host (and the same mount table comes back).
#[test]
fn bind_mounts_and_host_cgroup_dirs_come_back() {
    let Some((criu, _serial)) = criu() else {
        return;
    };
    let env = TestEnv::new();
    let data = env.tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("greeting"), "hello\n").unwrap();
    let cfg = |cg: &str| {
        let mut cfg = config(COUNTER, cg);
        cfg["linux"]["namespaces"] = json!([
            {"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"},
            {"type": "mount"}
        ]);
        cfg["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/data", "type": "bind", "source": data,
            "options": ["rbind", "ro"]
        }));
        cfg
    };
    let ours = Rt::vessel(&env, &criu);
    let (id, cg) = (unique("bind"), unique("cg"));
    let _g = Guard {
        rt: &ours,
        id: id.clone(),
        cg: cg.clone(),
    };
    assert_eq!(
        counting_with(&ours, &id, &cg, &cfg(&cg)),
        all_well(),
        "vessel"
    );
    assert_gone(&env, &id, &cg);

    let Some(theirs) = Rt::runc(&env, &criu) else {
        return;
    };
    let (rid, rcg) = (unique("runc"), unique("cg"));
    let _r = Guard {
        rt: &theirs,
        id: rid.clone(),
        cg: rcg.clone(),
    };
    let control = counting_with(&theirs, &rid, &rcg, &cfg(&rcg));
    eprintln!("runc: {control:#?}");
    assert_eq!(control, runc_does(), "runc (the control) differs");
}

/// What `--leave-running` and a restore onto the live container did.
#[derive(Debug, PartialEq, Eq, Default)]
struct LeftRunning {
    checkpointed: bool,
    same_init_still_running: bool,
    still_counting: bool,
    images_written: bool,
    restore_onto_it_refused: bool,
    untouched_by_the_refused_restore: bool,
}

fn leave_running(rt: &Rt, id: &str, cg: &str) -> (LeftRunning, String) {
    let mut out = LeftRunning::default();
    rt.write_config(&config(COUNTER, cg));
    rt.run_detached(id);
    let _ = rt.wait_count(3).expect("the counter counts");
    let old = rt.pid(id);
    let img = rt.tmp.join(format!("{}-lr-images", rt.name));
    let o = rt.out(&[
        "checkpoint",
        "--leave-running",
        "--image-path",
        img.to_str().unwrap(),
        id,
    ]);
    out.checkpointed = o.status.success();
    if !out.checkpointed {
        eprintln!("{} checkpoint --leave-running: {}", rt.name, stderr(&o));
        return (out, String::new());
    }
    out.same_init_still_running = rt.status(id) == "running" && rt.pid(id) == old && alive(old);
    let now = rt.count().unwrap_or(0);
    out.still_counting = rt.wait_count(now).is_some();
    out.images_written = img.join("inventory.img").exists() && img.join("dump.log").exists();
    let o = rt.out(&[
        "restore",
        "-d",
        "--image-path",
        img.to_str().unwrap(),
        "--bundle",
        rt.bundle.to_str().unwrap(),
        id,
    ]);
    out.restore_onto_it_refused = !o.status.success();
    out.untouched_by_the_refused_restore =
        rt.status(id) == "running" && rt.pid(id) == old && alive(old);
    (out, stderr(&o))
}

#[test]
fn leave_running_keeps_it_running_and_restore_onto_it_is_refused() {
    let Some((criu, _serial)) = criu() else {
        return;
    };
    let env = TestEnv::new();
    let ours = Rt::vessel(&env, &criu);
    let (id, cg) = (unique("lr"), unique("cg"));
    let g = Guard {
        rt: &ours,
        id: id.clone(),
        cg: cg.clone(),
    };
    let (got, refusal) = leave_running(&ours, &id, &cg);
    let want = LeftRunning {
        checkpointed: true,
        same_init_still_running: true,
        still_counting: true,
        images_written: true,
        restore_onto_it_refused: true,
        untouched_by_the_refused_restore: true,
    };
    assert_eq!(got, want, "vessel");
    assert!(refusal.contains("already exists"), "{refusal}");
    drop(g);
    assert_gone(&env, &id, &cg);

    let Some(theirs) = Rt::runc(&env, &criu) else {
        return;
    };
    let (rid, rcg) = (unique("runc"), unique("cg"));
    let _r = Guard {
        rt: &theirs,
        id: rid.clone(),
        cg: rcg.clone(),
    };
    let (control, runc_refusal) = leave_running(&theirs, &rid, &rcg);
    eprintln!("runc: {control:#?}\nrunc's refusal: {runc_refusal}");
    assert_eq!(control, want, "runc (the control) differs");
}

/// A network namespace made by `ip netns`, removed on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = unique("ns");
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip netns add {name}");
        let ok = Command::new("ip")
            .args(["-n", &name, "link", "set", "lo", "up"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "bring lo up in {name}");
        Netns(name)
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }

    /// A TCP connection to 127.0.0.1:`port` made from inside the namespace (by a thread
    /// that enters it); the socket stays in the namespace after the thread is gone.
    fn connect(&self, port: u16) -> std::net::TcpStream {
        let path = self.path();
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("open the netns");
            // SAFETY: setns on a descriptor we own; affects this thread only.
            let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let until = Instant::now() + Duration::from_secs(10);
            loop {
                match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                    Ok(s) => return s,
                    Err(e) if Instant::now() >= until => panic!("connect {addr}: {e}"),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        })
        .join()
        .expect("the connecting thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn echo(stream: &mut std::net::TcpStream, line: &str) -> Result<String, String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("{line}\n").as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut got = String::new();
    BufReader::new(stream.try_clone().map_err(|e| e.to_string())?)
        .read_line(&mut got)
        .map_err(|e| format!("read: {e}"))?;
    Ok(got.trim_end().to_string())
}

/// An echo server (busybox nc handing the accepted socket to cat) in a network namespace
/// the test holds a connection into; checkpointed and restored with --tcp-established,
/// the same connection echoes again. Returns what happened at each step.
fn tcp(rt: &Rt, id: &str, cg: &str) -> Vec<String> {
    let ns = Netns::new();
    let mut cfg = config("exec nc -l -p 5000 -e /bin/cat", cg);
    cfg["linux"]["namespaces"] = json!([
        {"type": "pid"}, {"type": "network", "path": ns.path()}, {"type": "ipc"},
        {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}
    ]);
    rt.write_config(&cfg);
    rt.run_detached(id);
    let mut conn = ns.connect(5000);
    let mut steps = vec![format!("before: {:?}", echo(&mut conn, "one"))];
    let img = rt.tmp.join(format!("{}-tcp-images", rt.name));
    let o = rt.out(&[
        "checkpoint",
        "--tcp-established",
        "--image-path",
        img.to_str().unwrap(),
        id,
    ]);
    steps.push(format!(
        "checkpoint: {}",
        if o.status.success() {
            "ok".into()
        } else {
            stderr(&o)
        }
    ));
    if !o.status.success() {
        return steps;
    }
    let o = rt.out(&[
        "restore",
        "-d",
        "--tcp-established",
        "--image-path",
        img.to_str().unwrap(),
        "--bundle",
        rt.bundle.to_str().unwrap(),
        id,
    ]);
    steps.push(format!(
        "restore: {}",
        if o.status.success() {
            "ok".into()
        } else {
            stderr(&o)
        }
    ));
    if !o.status.success() {
        return steps;
    }
    steps.push(format!("after: {:?}", echo(&mut conn, "two")));
    steps.push(format!("status: {}", rt.status(id)));
    let _ = rt.out(&["delete", "--force", id]);
    steps
}

#[test]
fn tcp_established_connection_survives() {
    let Some((criu, _serial)) = criu() else {
        return;
    };
    let env = TestEnv::new();
    let ours = Rt::vessel(&env, &criu);
    let (id, cg) = (unique("tcp"), unique("cg"));
    let g = Guard {
        rt: &ours,
        id: id.clone(),
        cg: cg.clone(),
    };
    let got = tcp(&ours, &id, &cg);
    let want = vec![
        "before: Ok(\"one\")".to_string(),
        "checkpoint: ok".into(),
        "restore: ok".into(),
        "after: Ok(\"two\")".into(),
        "status: running".into(),
    ];
    assert_eq!(got, want, "vessel");
    drop(g);
    assert_gone(&env, &id, &cg);

    let Some(theirs) = Rt::runc(&env, &criu) else {
        return;
    };
    let (rid, rcg) = (unique("runc"), unique("cg"));
    let _r = Guard {
        rt: &theirs,
        id: rid.clone(),
        cg: rcg.clone(),
    };
    let control = tcp(&theirs, &rid, &rcg);
    eprintln!("runc: {control:#?}");
    assert_eq!(control, want, "runc (the control) differs");
}

/// A static helper that takes an exclusive flock on a file and execs its command (which so
/// holds the lock), built into the rootfs; None without a C compiler.
fn holdlock(rootfs: &Path, tmp: &Path) -> Option<()> {
    let src = tmp.join("holdlock.c");
    std::fs::write(
        &src,
        r#"#include <fcntl.h>
#include <stdio.h>
#include <sys/file.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc < 3) return 2;
    int fd = open(argv[1], O_RDWR | O_CREAT, 0644);
    if (fd < 0 || flock(fd, LOCK_EX) != 0) { perror(argv[1]); return 1; }
    execv(argv[2], argv + 2);
    perror(argv[2]);
    return 1;
}
"#,
    )
    .unwrap();
    let o = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(rootfs.join("bin/holdlock"))
        .arg(&src)
        .output()
        .ok()?;
    if !o.status.success() {
        eprintln!("cc -static: {}", stderr(&o));
        return None;
    }
    Some(())
}

/// Whether someone holds a flock on `path` (we try to take it, and let go at once).
fn locked(path: &Path) -> bool {
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    // SAFETY: flock on a descriptor we own.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        // SAFETY: as above.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
        return false;
    }
    true
}

#[derive(Debug, PartialEq, Eq, Default)]
struct Locks {
    locked_while_running: bool,
    refused_without_file_locks: bool,
    still_running_after_refusal: bool,
    checkpointed_with_file_locks: bool,
    unlocked_while_checkpointed: bool,
    restored: bool,
    locked_again_after_restore: bool,
    counted_on: bool,
}

fn file_locks(rt: &Rt, id: &str, cg: &str) -> (Locks, String) {
    let mut out = Locks::default();
    let script = format!("exec </dev/null >/dev/null 2>&1; {COUNTER}");
    rt.write_config(&busybox_config(
        &["/bin/holdlock", "/tmp/lock", "/bin/sh", "-c", &script],
        cg,
    ));
    rt.run_detached(id);
    let _ = rt.wait_count(3).expect("the counter counts");
    let lock = rt.bundle.join("rootfs/tmp/lock");
    out.locked_while_running = locked(&lock);
    let img = rt.tmp.join(format!("{}-lock-images", rt.name));
    let img_s = img.to_str().unwrap();
    let o = rt.out(&["checkpoint", "--image-path", img_s, id]);
    let refusal = stderr(&o);
    out.refused_without_file_locks = !o.status.success();
    let now = rt.count().unwrap_or(0);
    out.still_running_after_refusal = rt.status(id) == "running" && rt.wait_count(now).is_some();
    let o = rt.out(&["checkpoint", "--file-locks", "--image-path", img_s, id]);
    out.checkpointed_with_file_locks = o.status.success();
    if !o.status.success() {
        eprintln!("{} checkpoint --file-locks: {}", rt.name, stderr(&o));
        return (out, refusal);
    }
    let at = rt.count().unwrap_or(0);
    out.unlocked_while_checkpointed = !locked(&lock);
    let o = rt.out(&[
        "restore",
        "-d",
        "--file-locks",
        "--image-path",
        img_s,
        "--bundle",
        rt.bundle.to_str().unwrap(),
        id,
    ]);
    out.restored = o.status.success();
    if !o.status.success() {
        eprintln!("{} restore --file-locks: {}", rt.name, stderr(&o));
        return (out, refusal);
    }
    out.locked_again_after_restore = locked(&lock);
    out.counted_on = rt.wait_count(at).is_some();
    let _ = rt.out(&["delete", "--force", id]);
    (out, refusal)
}

#[test]
fn file_locks_held_by_the_container_are_restored() {
    let Some((criu, _serial)) = criu() else {
        return;
    };
    let env = TestEnv::new();
    let ours = Rt::vessel(&env, &criu);
    if holdlock(&ours.bundle.join("rootfs"), env.tmp.path()).is_none() {
        eprintln!("skipping: no C compiler for the flock helper (apt-get install build-essential)");
        return;
    }
    let (id, cg) = (unique("lock"), unique("cg"));
    let g = Guard {
        rt: &ours,
        id: id.clone(),
        cg: cg.clone(),
    };
    let (got, refusal) = file_locks(&ours, &id, &cg);
    let want = Locks {
        locked_while_running: true,
        refused_without_file_locks: true,
        still_running_after_refusal: true,
        checkpointed_with_file_locks: true,
        unlocked_while_checkpointed: true,
        restored: true,
        locked_again_after_restore: true,
        counted_on: true,
    };
    assert_eq!(got, want, "vessel");
    assert!(
        refusal.contains("criu") && refusal.contains("lock"),
        "the refusal quotes criu: {refusal}"
    );
    drop(g);
    assert_gone(&env, &id, &cg);

    let Some(theirs) = Rt::runc(&env, &criu) else {
        return;
    };
    holdlock(&theirs.bundle.join("rootfs"), env.tmp.path()).expect("built once already");
    let (rid, rcg) = (unique("runc"), unique("cg"));
    let _r = Guard {
        rt: &theirs,
        id: rid.clone(),
        cg: rcg.clone(),
    };
    let (control, runc_refusal) = file_locks(&theirs, &rid, &rcg);
    eprintln!("runc: {control:#?}\nrunc's refusal: {runc_refusal}");
    assert_eq!(control, want, "runc (the control) differs");
}

/// The container's stdio are files of the host (an engine's log files, opened to append:
/// CRIU checks the size of other regular files on restore): vessel names them to CRIU as
/// external and gives the restored init the restoring caller's stdio; runc 1.1.5 cannot
/// dump such a container (CRIU: "Can't lookup mount"), which is printed, not asserted.
fn append(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
}

#[test]
fn stdio_files_outside_the_container() {
    let Some((criu, _serial)) = criu() else {
        return;
    };
    let env = TestEnv::new();
    let ours = Rt::vessel(&env, &criu);
    let (id, cg) = (unique("io"), unique("cg"));
    let _g = Guard {
        rt: &ours,
        id: id.clone(),
        cg: cg.clone(),
    };
    let script = format!("echo started; {COUNTER}");
    ours.write_config(&busybox_config(&["sh", "-c", &script], &cg));
    let log = env.tmp.path().join("first.log");
    let mut c = ours.cmd(&["run", "-d", "--bundle", env.bundle.to_str().unwrap(), &id]);
    let f = append(&log);
    let st = c
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .status()
        .unwrap();
    assert!(
        st.success(),
        "run -d: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    ours.wait_count(3).expect("counts");
    let img = env.tmp.path().join("io-images");
    let o = ours.out(&["checkpoint", "--image-path", img.to_str().unwrap(), &id]);
    assert!(o.status.success(), "checkpoint: {}", stderr(&o));
    let at = ours.count().unwrap();
    let second = env.tmp.path().join("second.log");
    let f = append(&second);
    let st = ours
        .cmd(&[
            "restore",
            "-d",
            "--image-path",
            img.to_str().unwrap(),
            "--bundle",
            env.bundle.to_str().unwrap(),
            &id,
        ])
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .status()
        .unwrap();
    assert!(
        st.success(),
        "restore: {}",
        std::fs::read_to_string(&second).unwrap_or_default()
    );
    assert!(ours.wait_count(at).is_some(), "counts on");
    // The restored shell writes to the restoring caller's stdout now.
    let pid = ours.pid(&id);
    let fd1 = std::fs::read_link(format!("/proc/{pid}/fd/1")).unwrap();
    assert_eq!(fd1, second, "the restored init's stdout");
    let o = ours.out(&["delete", "--force", &id]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_gone(&env, &id, &cg);

    if let Some(theirs) = Rt::runc(&env, &criu) {
        let (rid, rcg) = (unique("runc"), unique("cg"));
        let _r = Guard {
            rt: &theirs,
            id: rid.clone(),
            cg: rcg.clone(),
        };
        theirs.write_config(&busybox_config(&["sh", "-c", &script], &rcg));
        let o = theirs.out(&[
            "run",
            "-d",
            "--bundle",
            theirs.bundle.to_str().unwrap(),
            &rid,
        ]);
        assert!(o.status.success(), "runc run: {}", stderr(&o));
        theirs.wait_count(3);
        let o = theirs.out(&[
            "checkpoint",
            "--image-path",
            env.tmp.path().join("runc-io").to_str().unwrap(),
            &rid,
        ]);
        eprintln!(
            "runc checkpoint with stdio files: success={} {}",
            o.status.success(),
            stderr(&o).trim()
        );
    }
}

#[test]
fn errors_say_what_is_wrong_as_runc() {
    let Some((criu, _serial)) = criu() else {
        return;
    };
    let env = TestEnv::new();
    let ours = Rt::vessel(&env, &criu);
    let theirs = Rt::runc(&env, &criu);
    let img = env.tmp.path().join("err-images");
    let img_s = img.to_str().unwrap().to_string();

    // A created container cannot be checkpointed: runc's words.
    let (id, cg) = (unique("created"), unique("cg"));
    let _g = Guard {
        rt: &ours,
        id: id.clone(),
        cg: cg.clone(),
    };
    ours.write_config(&config(COUNTER, &cg));
    let o = ours.out(&["create", "--bundle", env.bundle.to_str().unwrap(), &id]);
    assert!(o.status.success(), "create: {}", stderr(&o));
    let o = ours.out(&["checkpoint", "--image-path", &img_s, &id]);
    assert!(!o.status.success());
    let ours_created = stderr(&o);
    assert!(
        ours_created.contains("Container cannot be checkpointed in created state"),
        "{ours_created}"
    );
    assert_eq!(ours.status(&id), "created", "left as it was");

    // A stopped one neither.
    let (sid, scg) = (unique("stopped"), unique("cg"));
    let _s = Guard {
        rt: &ours,
        id: sid.clone(),
        cg: scg.clone(),
    };
    ours.write_config(&config("true", &scg));
    ours.run_detached(&sid);
    assert!(ours.wait_status(&sid, "stopped"));
    let o = ours.out(&["checkpoint", "--image-path", &img_s, &sid]);
    let ours_stopped = stderr(&o);
    assert!(
        ours_stopped.contains("Container cannot be checkpointed in stopped state"),
        "{ours_stopped}"
    );

    // Without criu: a clear message, and the container untouched.
    let (rid, rcg) = (unique("running"), unique("cg"));
    let _r = Guard {
        rt: &ours,
        id: rid.clone(),
        cg: rcg.clone(),
    };
    ours.write_config(&config(COUNTER, &rcg));
    ours.run_detached(&rid);
    let o = vessel_testkit::run_via_files(
        Command::new(RT).arg("--root").arg(&env.root).args([
            "--criu",
            "/nonexistent/criu",
            "checkpoint",
            "--image-path",
            &img_s,
            &rid,
        ]),
        env.tmp.path(),
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("install criu"), "{}", stderr(&o));
    assert_eq!(ours.status(&rid), "running");
    let o = vessel_testkit::run_via_files(
        Command::new(RT)
            .arg("--root")
            .arg(&env.root)
            .args([
                "--criu",
                "/nonexistent/criu",
                "restore",
                "-d",
                "--image-path",
                &img_s,
            ])
            .args(["--bundle", env.bundle.to_str().unwrap(), &unique("new")]),
        env.tmp.path(),
    );
    assert!(stderr(&o).contains("install criu"), "{}", stderr(&o));

    // features says checkpointing is there, as runc's does.
    let ours_features: Value = serde_json::from_slice(&ours.out(&["features"]).stdout).unwrap();
    let key = "org.opencontainers.runc.checkpoint.enabled";
    assert_eq!(ours_features["annotations"][key], "true");

    let Some(theirs) = theirs else { return };
    let (tid, tcg) = (unique("runc"), unique("cg"));
    let _t = Guard {
        rt: &theirs,
        id: tid.clone(),
        cg: tcg.clone(),
    };
    theirs.write_config(&config(COUNTER, &tcg));
    let o = theirs.out(&["create", "--bundle", theirs.bundle.to_str().unwrap(), &tid]);
    assert!(o.status.success(), "runc create: {}", stderr(&o));
    let o = theirs.out(&["checkpoint", "--image-path", &img_s, &tid]);
    let runc_created = stderr(&o);
    eprintln!("runc: {runc_created}");
    assert!(runc_created.contains("Container cannot be checkpointed in created state"));
    let theirs_features: Value = serde_json::from_slice(&theirs.out(&["features"]).stdout).unwrap();
    assert_eq!(
        ours_features["annotations"][key],
        theirs_features["annotations"][key]
    );
}

/// A restore that fails in CRIU (its memory images are gone) leaves no state dir, cgroup,
/// process or mount; the same ID then restores from good images.
#[test]
fn failed_restore_leaves_nothing_behind() {
    let Some((criu, _serial)) = criu() else {
        return;
    };
    let env = TestEnv::new();
    let ours = Rt::vessel(&env, &criu);
    let (id, cg) = (unique("bad"), unique("cg"));
    let _g = Guard {
        rt: &ours,
        id: id.clone(),
        cg: cg.clone(),
    };
    ours.write_config(&config(COUNTER, &cg));
    ours.run_detached(&id);
    ours.wait_count(3).expect("counts");
    let good = env.tmp.path().join("good-images");
    let o = ours.out(&["checkpoint", "--image-path", good.to_str().unwrap(), &id]);
    assert!(o.status.success(), "checkpoint: {}", stderr(&o));
    let bad = env.tmp.path().join("bad-images");
    std::fs::create_dir(&bad).unwrap();
    for e in std::fs::read_dir(&good).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("pages-") {
            std::fs::copy(e.path(), bad.join(&name)).unwrap();
        }
    }
    let o = ours.out(&[
        "restore",
        "-d",
        "--image-path",
        bad.to_str().unwrap(),
        "--bundle",
        env.bundle.to_str().unwrap(),
        &id,
    ]);
    assert!(!o.status.success(), "restore without memory images");
    let err = stderr(&o);
    assert!(
        err.contains("criu") && err.contains("restore.log"),
        "quotes criu and names its log: {err}"
    );
    assert_gone(&env, &id, &cg);
    let left = processes_left(&env.root, &cg, 5);
    assert!(left.is_empty(), "processes left: {left:?}");
    let mounts = mounts_under(&env.root);
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");

    // In the foreground (as runc): restore waits for the container, deletes it when it
    // exits, and exits with its status.
    let child = ours
        .cmd(&[
            "restore",
            "--image-path",
            good.to_str().unwrap(),
            "--bundle",
            env.bundle.to_str().unwrap(),
            &id,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    assert!(ours.wait_status(&id, "running"), "restore from good images");
    assert!(ours.wait_count(0).is_some(), "counts");
    let o = ours.out(&["kill", &id, "KILL"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let status = wait_timeout(&mut child.0, 20).expect("the foreground restore returns");
    assert_eq!(status.code(), Some(137), "the container's exit status");
    assert_gone(&env, &id, &cg);
}
