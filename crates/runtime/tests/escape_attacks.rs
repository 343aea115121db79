//! Container escapes, performed for real from inside a container, with runc and crun as the
//! control: whatever attack fails against them must fail against vessel-runtime too.
//!
//! CVE-2019-5736 class: a process in a container grabs a handle on the executable of a
//! process that the runtime is placing into its pid namespace (or that a `#!/proc/self/exe`
//! script makes the runtime exec inside it), waits until nothing executes that file any more
//! and reopens it for writing through /proc/self/fd/N. Each runtime under test is a private
//! copy of its binary, which must come out byte-identical. The attacker (attacks/
//! exe_overwrite.c, built static) also tries the root and cwd of every process it sees,
//! which point at the host while a runtime is still setting a container up.

mod common;
use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A runtime under test: a private copy of its binary, and its own state root.
struct Runtime {
    /// The installed binary, used for cleanup even if the attack destroyed the copy.
    source: PathBuf,
    binary: PathBuf,
    original: Vec<u8>,
    root: PathBuf,
}

impl Runtime {
    /// `None` (with a note) when the runtime is missing or cannot run on this host.
    fn copy(name: &'static str, tmp: &Path) -> Option<Runtime> {
        let src = match name {
            "vessel-runtime" => PathBuf::from(RT),
            other => {
                let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
                    .iter()
                    .map(|d| Path::new(d).join(other))
                    .find(|p| p.exists());
                match found {
                    Some(p) => p,
                    None => {
                        eprintln!("{other} is not installed: no control run");
                        return None;
                    }
                }
            }
        };
        // runc's control runs on the host; the slow v2 guest is for crun's (and ours).
        if name == "runc" && pure_v2() {
            eprintln!("runc's control runs on the hybrid host, not in the v2 guest");
            return None;
        }
        // crun refuses a hybrid host whose cgroup2 hierarchy holds a controller (hugetlb
        // here); it runs as the control in the pure cgroup v2 guest.
        if name == "crun" {
            let unified = std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers");
            if unified.is_ok_and(|c| !c.trim().is_empty()) {
                eprintln!(
                    "crun cannot run on this hybrid cgroup host: control runs in the v2 guest"
                );
                return None;
            }
        }
        let binary = tmp.join(format!("{name}-copy"));
        std::fs::copy(&src, &binary).expect("copy the runtime binary");
        let original = std::fs::read(&binary).unwrap();
        let root = tmp.join(format!("{name}-state"));
        std::fs::create_dir_all(&root).unwrap();
        Some(Runtime {
            source: src,
            binary,
            original,
            root,
        })
    }

    fn cmd(&self, cwd: &Path, args: &[&str]) -> std::process::Output {
        let mut c = Command::new(&self.binary);
        c.arg("--root").arg(&self.root).args(args).current_dir(cwd);
        vessel_testkit::run_via_files(&mut c, cwd.parent().unwrap())
    }

    fn intact(&self) -> bool {
        std::fs::read(&self.binary).is_ok_and(|now| now == self.original)
    }
}

/// Deletes the attacker's container whatever the test's outcome.
struct Delete<'a>(&'a Runtime, &'a Path, String);

impl Drop for Delete<'_> {
    fn drop(&mut self) {
        let _ = Command::new(&self.0.source)
            .arg("--root")
            .arg(&self.0.root)
            .args(["delete", "--force", &self.2])
            .current_dir(self.1)
            .output();
    }
}

fn attacker_binary(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/attacks/exe_overwrite.c");
    let out = dir.join("exe_overwrite");
    let o = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
        .expect("run cc (build-essential)");
    assert!(o.status.success(), "build the attacker: {}", stderr(&o));
    out
}

fn config(args: &[&str], cg: &str, extra_caps: &[&str]) -> serde_json::Value {
    let mut cfg = busybox_config(args, cg);
    // crun 1.8 refuses newer version strings.
    cfg["ociVersion"] = json!("1.0.2");
    for set in ["bounding", "effective", "permitted"] {
        let list = cfg["process"]["capabilities"][set].as_array_mut().unwrap();
        for c in extra_caps {
            list.push(json!(c));
        }
    }
    cfg
}

enum Attack {
    /// Containers are created into the attacker's pid namespace.
    SharedPidNamespace,
    /// `exec` places new processes into the attacker's container.
    ExecIntoContainer,
    /// The runtime execs a `#!/proc/self/exe` script in the attacker's container.
    ExecSelfExeScript,
}

/// The attacker's upper bound; it stops 2 s after the test says the runtime is done.
const WATCH_SECONDS: u64 = 120;
fn pure_v2() -> bool {
    nix::sys::statfs::statfs("/sys/fs/cgroup")
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// Containers placed into the attacker's reach per attack. The pure cgroup v2 guest is an
/// emulated VM, about ten times slower: fewer rounds there still give the attacker many
/// chances (each round is a whole create-to-exec window it scans for).
fn rounds() -> usize {
    if pure_v2() {
        8
    } else {
        25
    }
}

/// Run the attack against `name`; returns the attacker's report, or None when the runtime
/// is not available here. Panics if the runtime's binary was changed.
fn attack(name: &'static str, how: Attack, extra_caps: &[&str]) -> Option<String> {
    let attacker_env = TestEnv::new();
    let rt = Runtime::copy(name, attacker_env.tmp.path())?;
    let secret = attacker_env.tmp.path().join("host-secret");
    std::fs::write(&secret, "HOST-SECRET of the host, outside every rootfs\n").unwrap();
    let rootfs = attacker_env.bundle.join("rootfs");
    std::fs::copy(
        attacker_binary(attacker_env.tmp.path()),
        rootfs.join("attacker"),
    )
    .unwrap();
    std::fs::write(rootfs.join("evil"), "#!/proc/self/exe\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(rootfs.join("evil"), std::fs::Permissions::from_mode(0o755)).unwrap();

    let id = unique("attacker");
    let cg = unique("cg");
    let seconds = WATCH_SECONDS.to_string();
    let args = ["/attacker", "/report", &seconds, secret.to_str().unwrap()];
    attacker_env.write_config(&config(&args, &cg, extra_caps));
    let bundle = attacker_env.bundle.to_str().unwrap();
    let _delete = Delete(&rt, &attacker_env.bundle, id.clone());
    let o = rt.cmd(&attacker_env.bundle, &["create", "--bundle", bundle, &id]);
    assert!(o.status.success(), "{name} create: {}", stderr(&o));
    let o = rt.cmd(&attacker_env.bundle, &["start", &id]);
    assert!(o.status.success(), "{name} start: {}", stderr(&o));
    let o = rt.cmd(&attacker_env.bundle, &["state", &id]);
    let pid = serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["pid"]
        .as_i64()
        .unwrap();
    let report = rootfs.join("report");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&report).is_ok_and(|r| r.starts_with("STARTED")) {
        assert!(Instant::now() < deadline, "the attacker did not start");
        std::thread::sleep(Duration::from_millis(10));
    }

    match how {
        Attack::SharedPidNamespace => {
            let victim_env = TestEnv::new();
            std::fs::write(
                victim_env.tmp.path().join("host-secret"),
                "HOST-SECRET beside the victim's bundle\n",
            )
            .unwrap();
            let vcg = unique("cg");
            let mut cfg = config(&["true"], &vcg, &[]);
            cfg["linux"]["namespaces"] = json!([
                {"type": "pid", "path": format!("/proc/{pid}/ns/pid")},
                {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}
            ]);
            victim_env.write_config(&cfg);
            let vbundle = victim_env.bundle.to_str().unwrap();
            for round in 0..rounds() {
                let vid = format!("{}-{round}", unique("victim"));
                let o = rt.cmd(&victim_env.bundle, &["run", "--bundle", vbundle, &vid]);
                if !rt.intact() {
                    break;
                }
                assert!(o.status.success(), "{name} run: {}", stderr(&o));
            }
            assert_gone(&victim_env, "none", &vcg);
        }
        Attack::ExecIntoContainer => {
            for _ in 0..rounds() {
                let o = rt.cmd(&attacker_env.bundle, &["exec", &id, "true"]);
                if !rt.intact() {
                    break;
                }
                assert!(o.status.success(), "{name} exec: {}", stderr(&o));
            }
        }
        Attack::ExecSelfExeScript => {
            for _ in 0..rounds() {
                // The script "runs" the runtime inside the container; it fails on its
                // arguments, which is all the attacker needs.
                let _ = rt.cmd(&attacker_env.bundle, &["exec", &id, "/evil"]);
                if !rt.intact() {
                    break;
                }
            }
        }
    }

    // The runtime has exited; the attacker keeps trying a little longer, then reports.
    std::fs::write(rootfs.join("stop"), "").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = std::fs::read_to_string(&report).unwrap_or_default();
        if text.contains("END\n") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the attacker never finished: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("{name}: attacker's report:\n{text}");
    assert!(
        rt.intact(),
        "{name}: the container overwrote the runtime binary:\n{text}"
    );
    assert!(
        !text.contains("OVERWROTE"),
        "{name}: a write reached a runtime binary:\n{text}"
    );
    drop(_delete);
    assert_gone(&attacker_env, &id, &cg);
    Some(text)
}

const PTRACE: &[&str] = &["CAP_SYS_PTRACE"];

/// vessel-runtime also keeps the host's filesystem out of reach while it sets a container
/// up in a shared pid namespace (runc 1.1.5 does not: with CAP_SYS_PTRACE the attacker
/// reads host files through /proc/PID/root of its init, see the runc control's report).
fn assert_no_host_file(report: &str) {
    assert!(
        !report.contains("HOSTFILE"),
        "the container read a host file through a runtime process:\n{report}"
    );
}

#[test]
fn shared_pid_ns_with_ptrace_cannot_overwrite_vessel_runtime() {
    let report = attack("vessel-runtime", Attack::SharedPidNamespace, PTRACE).unwrap();
    // The attack must have had something to try: a handle on the runtime's executable.
    assert!(report.contains("HELD"), "the attacker grabbed nothing");
    assert_no_host_file(&report);
}

#[test]
fn shared_pid_ns_with_ptrace_control_runc() {
    attack("runc", Attack::SharedPidNamespace, PTRACE);
}

#[test]
fn shared_pid_ns_with_ptrace_control_crun() {
    attack("crun", Attack::SharedPidNamespace, PTRACE);
}

#[test]
fn shared_pid_ns_create_window_cannot_overwrite_vessel_runtime() {
    let report = attack("vessel-runtime", Attack::SharedPidNamespace, &[]).unwrap();
    assert_no_host_file(&report);
}

#[test]
fn shared_pid_ns_create_window_control_runc() {
    attack("runc", Attack::SharedPidNamespace, &[]);
}

#[test]
fn shared_pid_ns_create_window_control_crun() {
    attack("crun", Attack::SharedPidNamespace, &[]);
}

#[test]
fn exec_into_shared_container_with_ptrace_cannot_overwrite_vessel_runtime() {
    let report = attack("vessel-runtime", Attack::ExecIntoContainer, PTRACE).unwrap();
    assert!(report.contains("HELD"), "the attacker grabbed nothing");
    assert_no_host_file(&report);
}

#[test]
fn exec_into_shared_container_with_ptrace_control_runc() {
    attack("runc", Attack::ExecIntoContainer, PTRACE);
}

#[test]
fn exec_into_shared_container_with_ptrace_control_crun() {
    attack("crun", Attack::ExecIntoContainer, PTRACE);
}

/// On this kernel (6.18) the interpreter lookup of `#!/proc/self/exe` already fails for a
/// runtime whose executable lies outside the container's mount namespace (ENOENT, for runc
/// too); the test keeps the attack, so it fails again should a kernel or a change of ours
/// let the script run the runtime's binary inside the container.
#[test]
fn exec_of_self_exe_script_cannot_overwrite_vessel_runtime() {
    let report = attack("vessel-runtime", Attack::ExecSelfExeScript, &[]).unwrap();
    assert_no_host_file(&report);
}

#[test]
fn exec_of_self_exe_script_control_runc() {
    attack("runc", Attack::ExecSelfExeScript, &[]);
}

#[test]
fn exec_of_self_exe_script_control_crun() {
    attack("crun", Attack::ExecSelfExeScript, &[]);
}
