//! What the kernel really applied, read from inside the container (/proc/self/status,
//! mountinfo, uid_map, ...) and compared with what config.json asked for.

mod common;
use common::*;
use serde_json::json;

fn run_with(mutate: impl FnOnce(&mut serde_json::Value), script: &str) -> (i32, String, String) {
    let env = TestEnv::new();
    let id = unique("iso");
    let cg = unique("cg");
    let mut cfg = busybox_config(&["sh", "-c", script], &cg);
    mutate(&mut cfg);
    env.write_config(&cfg);
    let r = run_container(&env, &id);
    assert_gone(&env, &id, &cg);
    r
}

fn status_field(status: &str, field: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("{field} not in {status}"))
        .trim()
        .to_string()
}

#[test]
fn namespaces_are_new_and_pid_is_one() {
    let (code, out, err) = run_with(
        |_| {},
        "echo $$; for n in pid net mnt ipc uts cgroup; do readlink /proc/self/ns/$n; done",
    );
    assert_eq!(code, 0, "{err}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("1"));
    let host = |ns: &str| {
        std::fs::read_link(format!("/proc/self/ns/{ns}"))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    for (line, ns) in lines.zip(["pid", "net", "mnt", "ipc", "uts", "cgroup"]) {
        assert_ne!(line, host(ns), "{ns} namespace is the host's");
    }
}

#[test]
fn capabilities_nnp_and_seccomp_mode_as_configured() {
    let (code, out, err) = run_with(
        |c| {
            c["process"]["capabilities"] = json!({
                "bounding": ["CAP_KILL", "CAP_CHOWN"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"],
                "inheritable": [], "ambient": []
            });
            c["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["mkdirat", "mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
            ]});
        },
        "cat /proc/self/status; mkdir /tmp/x && echo MKDIR-OK || echo MKDIR-DENIED",
    );
    assert_eq!(code, 0, "{err}");
    // CAP_KILL is bit 5, CAP_CHOWN bit 0.
    assert_eq!(status_field(&out, "CapEff"), format!("{:016x}", 1u64 << 5));
    assert_eq!(status_field(&out, "CapPrm"), format!("{:016x}", 1u64 << 5));
    assert_eq!(
        status_field(&out, "CapBnd"),
        format!("{:016x}", (1u64 << 5) | 1)
    );
    assert_eq!(status_field(&out, "CapInh"), "0000000000000000");
    assert_eq!(status_field(&out, "NoNewPrivs"), "1");
    assert_eq!(status_field(&out, "Seccomp"), "2");
    assert!(out.contains("MKDIR-DENIED"), "{out}");
}

#[test]
fn user_groups_umask_cwd_env_and_rlimits() {
    let (code, out, err) = run_with(
        |c| {
            c["process"]["user"] =
                json!({"uid": 1000, "gid": 1001, "additionalGids": [5, 7], "umask": 63});
            c["process"]["cwd"] = json!("/tmp");
            c["process"]["env"] = json!(["PATH=/bin", "HELLO=world"]);
            c["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 512, "hard": 600}, {"type": "RLIMIT_NPROC", "soft": 100, "hard": 100}]);
        },
        "id -u; id -g; id -G; umask; pwd; echo $HELLO; ulimit -n; ulimit -Hn; ulimit -u",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "1000\n1001\n1001 5 7\n0077\n/tmp\nworld\n512\n600\n100\n"
    );
}

#[test]
fn hostname_mounts_masked_and_readonly_paths() {
    let (code, out, err) = run_with(
        |c| {
            c["hostname"] = json!("boxname");
            c["root"]["readonly"] = json!(true);
            c["mounts"].as_array_mut().unwrap().push(json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m", "noexec"]}));
            // runc's tmpcopyup: the tmpfs starts with what /etc held.
            c["mounts"].as_array_mut().unwrap().push(json!({"destination": "/etc", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m", "tmpcopyup"]}));
        },
        "hostname; cat /proc/kcore | wc -c; ls /sys/firmware | wc -l; \
         echo 1 > /proc/sys/kernel/domainname 2>/dev/null && echo SYS-WRITABLE || echo SYS-RO; \
         touch /rootfile 2>/dev/null && echo ROOT-WRITABLE || echo ROOT-RO; \
         touch /scratch/f && echo SCRATCH-OK; grep ' /scratch ' /proc/self/mountinfo; \
         ls -l /dev/null /dev/zero /dev/ptmx; ls /dev; grep ' /etc ' /proc/self/mountinfo; head -1 /etc/passwd",
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "boxname");
    assert_eq!(lines[1], "0", "masked /proc/kcore must read as empty");
    assert_eq!(lines[2], "0", "masked /sys/firmware must be empty");
    assert_eq!(lines[3], "SYS-RO");
    assert_eq!(lines[4], "ROOT-RO");
    assert_eq!(lines[5], "SCRATCH-OK");
    assert!(
        lines[6].contains("noexec") && lines[6].contains("tmpfs"),
        "{}",
        lines[6]
    );
    assert!(
        out.contains("crw-rw-rw-    1 root     root        1,   3"),
        "{out}"
    );
    assert!(out.contains("/dev/ptmx -> pts/ptmx"), "{out}");
    assert!(
        out.contains(" /etc ") && out.contains("root:x:0:0:root"),
        "tmpcopyup: {out}"
    );
}

#[test]
fn only_stdio_reaches_the_container() {
    // CVE-2024-21626 class: no descriptor of the runtime (or its caller) leaks in.
    let (code, out, err) = run_with(|_| {}, "ls /proc/self/fd");
    assert_eq!(code, 0, "{err}");
    // 0, 1, 2 and the fd ls itself opened for the directory.
    let fds: Vec<&str> = out.lines().collect();
    assert!(fds.len() <= 4, "{fds:?}");
    for f in ["0", "1", "2"] {
        assert!(fds.contains(&f));
    }
}

#[test]
fn cwd_through_proc_fd_is_refused() {
    let (code, _out, err) = run_with(|c| c["process"]["cwd"] = json!("/proc/self/fd/7"), "pwd");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("process.cwd"), "{err}");
}

#[test]
fn user_namespace_with_mappings() {
    let (code, out, err) = run_with(
        |c| {
            c["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .push(json!({"type": "user"}));
            c["linux"]["uidMappings"] =
                json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
            c["linux"]["gidMappings"] =
                json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        },
        "cat /proc/self/uid_map /proc/self/gid_map; id -u; ls -ln /dev/null",
    );
    assert_eq!(code, 0, "{err}");
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        &words[..6],
        &["0", "100000", "65536", "0", "100000", "65536"]
    );
    assert_eq!(words[6], "0");
}

#[test]
fn sysctl_and_time_namespace_offsets() {
    let (code, out, err) = run_with(
        |c| {
            c["linux"]["sysctl"] = json!({"kernel.shmmax": "123456789"});
            c["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .push(json!({"type": "time"}));
            c["linux"]["timeOffsets"] = json!({"boottime": {"secs": 86400 * 365, "nanosecs": 0}});
        },
        "cat /proc/sys/kernel/shmmax; cut -d. -f1 /proc/uptime",
    );
    assert_eq!(code, 0, "{err}");
    let mut l = out.lines();
    assert_eq!(l.next(), Some("123456789"));
    let uptime: u64 = l.next().unwrap().parse().unwrap();
    assert!(
        uptime >= 86400 * 365,
        "uptime {uptime} does not include the boottime offset"
    );
}

#[test]
fn memory_and_pids_limits_reach_the_cgroup() {
    let (code, out, err) = run_with(
        |c| {
            c["linux"]["resources"]["memory"] = json!({"limit": 64 * 1024 * 1024});
            c["linux"]["resources"]["pids"] = json!({"limit": 42});
        },
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max; \
         cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("{}\n42\n", 64 * 1024 * 1024));
}

#[test]
fn runtime_binary_is_not_reachable_from_a_created_container() {
    // CVE-2019-5736: while the init is still our code (before start), a process exec'd into
    // the container must not be able to open /proc/1/exe.
    let env = TestEnv::new();
    let id = unique("exe");
    let cg = unique("cg");
    env.write_config(&busybox_config(&["true"], &cg));
    let _guard = Cleanup {
        env: &env,
        id: id.clone(),
    };
    let o = rt_out(
        &env,
        &["create", "--bundle", env.bundle.to_str().unwrap(), &id],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = rt_out(&env, &["exec", &id, "sh", "-c", "cat /proc/1/exe > /dev/null && echo READABLE || echo DENIED; echo x >> /proc/1/exe && echo WRITABLE || echo DENIED"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "DENIED\nDENIED\n");
}

#[test]
fn mount_destination_symlink_cannot_escape_the_rootfs() {
    // CVE-2021-30465 class: the image makes /evil a symlink to a host path; a mount on /evil
    // must land inside the rootfs, never on the host.
    let env = TestEnv::new();
    let id = unique("esc");
    let cg = unique("cg");
    let host_target = env.tmp.path().join("host-target");
    std::fs::create_dir_all(&host_target).unwrap();
    std::os::unix::fs::symlink(&host_target, env.bundle.join("rootfs/evil")).unwrap();
    std::os::unix::fs::symlink(
        "../../../../../../../../var/lib/evil2",
        env.bundle.join("rootfs/evil2"),
    )
    .unwrap();
    let mut cfg = busybox_config(
        &["sh", "-c", "touch /evil/inside /evil2/inside2 && echo OK || { ls -la / /evil; readlink /evil; grep evil /proc/self/mountinfo; }"],
        &cg,
    );
    for d in ["/evil", "/evil2"] {
        cfg["mounts"].as_array_mut().unwrap().push(
            json!({"destination": d, "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]}),
        );
    }
    env.write_config(&cfg);
    let (code, out, err) = run_container(&env, &id);
    assert_eq!(code, 0, "{err} {out}");
    assert_eq!(out, "OK\n");
    // Nothing was mounted or written on the host side of the links.
    assert!(std::fs::read_dir(&host_target).unwrap().next().is_none());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(host_target.to_str().unwrap()),
        "a mount escaped to the host"
    );
    assert!(!std::path::Path::new("/var/lib/evil2").exists());
    assert!(
        env.bundle.join("rootfs/var/lib/evil2").is_dir(),
        "the link target was created inside the rootfs"
    );
    assert_gone(&env, &id, &cg);
}

#[test]
fn joins_namespaces_by_path_including_pid_and_user() {
    // A first container owns the namespaces; a second joins its net, ipc, uts and pid
    // namespaces (pid needs the runtime's slow path: setns first, then clone).
    let env = TestEnv::new();
    let owner = unique("own");
    let joiner = unique("join");
    let cg1 = unique("cg");
    let cg2 = unique("cg");
    env.write_config(&busybox_config(&["sleep", "1000"], &cg1));
    let _g = Cleanup {
        env: &env,
        id: owner.clone(),
    };
    assert!(rt_out(
        &env,
        &[
            "run",
            "-d",
            "--bundle",
            env.bundle.to_str().unwrap(),
            &owner
        ]
    )
    .status
    .success());
    let pid = state_json(&env, &owner)["pid"].as_i64().unwrap();
    let mut cfg = busybox_config(
        &[
            "sh",
            "-c",
            "hostname; ps -o pid,comm | grep -c sleep; readlink /proc/self/ns/net",
        ],
        &cg2,
    );
    cfg["hostname"] = serde_json::Value::Null;
    cfg["linux"]["namespaces"] = json!([
        {"type": "pid", "path": format!("/proc/{pid}/ns/pid")},
        {"type": "network", "path": format!("/proc/{pid}/ns/net")},
        {"type": "ipc", "path": format!("/proc/{pid}/ns/ipc")},
        {"type": "uts", "path": format!("/proc/{pid}/ns/uts")},
        {"type": "mount"}
    ]);
    env.write_config(&cfg);
    let (code, out, err) = run_container(&env, &joiner);
    assert_eq!(code, 0, "{err}");
    let mut l = out.lines();
    assert_eq!(l.next(), Some("vessel-test"), "uts joined: {out}");
    assert_eq!(
        l.next(),
        Some("1"),
        "pid joined, sees the owner's sleep: {out}"
    );
    let owner_net = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    assert_eq!(l.next(), Some(owner_net.to_str().unwrap()));
    assert_gone(&env, &joiner, &cg2);
}

/// A tmpfs the test mounts on the host, unmounted however the test ends.
struct HostTmpfs(std::path::PathBuf);

impl HostTmpfs {
    fn mount(at: &std::path::Path) -> HostTmpfs {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "vesseltest-idmap"])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount a tmpfs on {}", at.display());
        HostTmpfs(at.to_path_buf())
    }
}

impl Drop for HostTmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn chown(path: &std::path::Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
}

/// tmpfs learned id-mapped mounts in Linux 6.3; the cgroup v2 guest runs 6.1 with its temp
/// dirs on tmpfs. There the runtime must refuse with a clear error and leave nothing behind.
fn idmap_unsupported_at(src: &std::path::Path) -> bool {
    let fs = std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(src)
        .output()
        .unwrap();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut v = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let version = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    String::from_utf8_lossy(&fs.stdout).trim() == "tmpfs" && version < (6, 3)
}

fn assert_refused_as_unsupported(code: i32, err: &str) {
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("must support id-mapped mounts"), "{err}");
}

/// Run the container and return its output — or, where the kernel cannot id-map the
/// source's filesystem, check the refusal and return None.
fn run_idmapped(env: &TestEnv, cfg: &serde_json::Value, src: &std::path::Path) -> Option<String> {
    let id = unique("idmap");
    let cg = cfg["linux"]["cgroupsPath"]
        .as_str()
        .unwrap()
        .trim_start_matches('/')
        .to_string();
    env.write_config(cfg);
    let (code, out, err) = run_container(env, &id);
    assert_gone(env, &id, &cg);
    if idmap_unsupported_at(src) {
        assert_refused_as_unsupported(code, &err);
        return None;
    }
    assert_eq!(code, 0, "{err}");
    Some(out)
}

/// Files owned by host ids 0 and 1000 seen through plain and id-mapped binds from a container
/// whose user namespace maps 0-65535 to 100000-165535: only the id-mapped view shows them as
/// their owners; "ridmap" maps the submounts of an rbind too, "idmap" only the top mount.
#[test]
fn idmapped_mounts_inside_a_user_namespace() {
    let env = TestEnv::new();
    let src = env.tmp.path().join("idmap-src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("root-file"), "r").unwrap();
    std::fs::write(src.join("user-file"), "u").unwrap();
    chown(&src.join("user-file"), 1000, 1000);
    let sub = HostTmpfs::mount(&src.join("sub"));
    std::fs::write(sub.0.join("in-sub"), "s").unwrap();
    chown(&sub.0.join("in-sub"), 1000, 1000);

    let cg = unique("cg");
    let mut cfg = busybox_config(
        &[
            "sh",
            "-c",
            "for f in /plain/root-file /plain/user-file /mapped/root-file /mapped/user-file \
             /top/sub/in-sub /rec/sub/in-sub; do stat -c \"$f %u:%g\" $f; done; \
             touch /mapped/made-inside && echo CREATED",
        ],
        &cg,
    );
    cfg["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "user"}));
    let maps = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    cfg["linux"]["uidMappings"] = maps.clone();
    cfg["linux"]["gidMappings"] = maps.clone();
    // The rootfs belongs to host root, which this user namespace does not map: the mount
    // points must exist already.
    for dir in ["plain", "mapped", "top", "rec"] {
        std::fs::create_dir_all(env.bundle.join("rootfs").join(dir)).unwrap();
    }
    let src_s = src.to_str().unwrap();
    let mounts = cfg["mounts"].as_array_mut().unwrap();
    // rbind: inside a user namespace the kernel refuses a plain bind that would uncover
    // what the (locked) submount hides.
    mounts.push(
        json!({"destination": "/plain", "type": "bind", "source": src_s,
                       "options": ["rbind"]}),
    );
    mounts.push(
        json!({"destination": "/mapped", "type": "bind", "source": src_s,
                       "options": ["bind"], "uidMappings": maps, "gidMappings": maps}),
    );
    // "idmap" without mappings of its own: the container's mappings.
    mounts.push(
        json!({"destination": "/top", "type": "bind", "source": src_s,
                       "options": ["rbind", "idmap"]}),
    );
    mounts.push(
        json!({"destination": "/rec", "type": "bind", "source": src_s,
                       "options": ["rbind", "ridmap"]}),
    );
    let Some(out) = run_idmapped(&env, &cfg, &src) else {
        return;
    };
    let owner = |path: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{path} ")))
            .unwrap_or_else(|| panic!("{path} missing in {out}"))
            .to_string()
    };
    assert_eq!(owner("/plain/root-file"), "65534:65534");
    assert_eq!(owner("/plain/user-file"), "65534:65534");
    assert_eq!(owner("/mapped/root-file"), "0:0");
    assert_eq!(owner("/mapped/user-file"), "1000:1000");
    assert_eq!(owner("/top/sub/in-sub"), "65534:65534");
    assert_eq!(owner("/rec/sub/in-sub"), "1000:1000");
    // Container root writes through the mapping as host root.
    assert!(out.contains("CREATED"), "{out}");
    let made = std::fs::metadata(src.join("made-inside")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((made.uid(), made.gid()), (0, 0));
    drop(sub);
}

/// Without a user namespace the mapping alone decides what the container sees.
#[test]
fn idmapped_mount_without_a_user_namespace() {
    let env = TestEnv::new();
    let src = env.tmp.path().join("idmap-src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), "x").unwrap();
    let cg = unique("cg");
    let mut cfg = busybox_config(&["stat", "-c", "%u:%g", "/m/f"], &cg);
    let maps = json!([{"containerID": 0, "hostID": 4242, "size": 1}]);
    cfg["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/m", "type": "bind", "source": src.to_str().unwrap(),
        "options": ["bind", "ro"], "uidMappings": maps, "gidMappings": maps}));
    let Some(out) = run_idmapped(&env, &cfg, &src) else {
        return;
    };
    assert_eq!(out.trim(), "4242:4242");
}
