//! podman drives vessel-runtime: a local image made offline (`podman import` of a busybox
//! rootfs), then the podman features that reach the runtime, each checked from inside.
//! podman runs with its own containers.conf, storage and run roots in a temp dir, and a
//! `vesseltest-` cgroup parent so nothing outside the test is touched or left behind.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;

struct Podman {
    env: TestEnv,
    conf: PathBuf,
    cgroup_parent: String,
    image: String,
}

impl Podman {
    fn new() -> Option<Podman> {
        Podman::with_conf(|dir| {
            let conf = dir.join("containers.conf");
            std::fs::write(
                &conf,
                format!(
                    "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\nlog_driver = \"k8s-file\"\n\
                     [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"vessel\"\n\
                     [engine.runtimes]\nvessel = [\"{RT}\"]\n"
                ),
            )
            .unwrap();
            conf
        })
    }

    /// Debian's stock containers.conf (its default capabilities, `default_sysctls` with
    /// net.ipv4.ping_group_range, ...) with only what this host needs added: ulimits within
    /// root's hard limit, cgroupfs (no systemd), and vessel-runtime as the runtime.
    fn with_stock_conf() -> Option<Podman> {
        let stock = std::fs::read_to_string("/usr/share/containers/containers.conf").ok()?;
        Podman::with_conf(|dir| {
            let mut text = String::new();
            for line in stock.lines() {
                text.push_str(line);
                text.push('\n');
                match line.trim() {
                    "[containers]" => text.push_str(
                        "default_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n",
                    ),
                    "[engine]" => text.push_str(
                        "cgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"vessel\"\n",
                    ),
                    "[engine.runtimes]" => text.push_str(&format!("vessel = [\"{RT}\"]\n")),
                    _ => {}
                }
            }
            let conf = dir.join("containers.conf");
            std::fs::write(&conf, text).unwrap();
            conf
        })
    }

    /// The interop suite runs under both configurations: the minimal one and Debian's stock
    /// one (podman's default capabilities, sysctls, mounts) with only this host's needs.
    fn each_conf() -> Vec<Podman> {
        [Podman::new(), Podman::with_stock_conf()]
            .into_iter()
            .flatten()
            .collect()
    }

    fn with_conf(write_conf: impl FnOnce(&std::path::Path) -> PathBuf) -> Option<Podman> {
        if which("podman").is_none() {
            eprintln!("podman is not installed; skipping");
            return None;
        }
        let env = TestEnv::new();
        let dir = env.tmp.path().to_path_buf();
        let conf = write_conf(&dir);
        let p = Podman {
            cgroup_parent: format!("/{}", unique("podman")),
            image: "localhost/vesseltest-busybox:latest".into(),
            conf,
            env,
        };
        // Offline image: a tarball of the busybox rootfs, imported.
        let tar = dir.join("rootfs.tar");
        let o = vessel_testkit::run(
            Command::new("tar")
                .arg("-C")
                .arg(p.env.bundle.join("rootfs"))
                .arg("-cf")
                .arg(&tar)
                .arg("."),
        );
        assert!(o.status.success(), "tar: {}", stderr(&o));
        let o = p.podman(&["import", tar.to_str().unwrap(), &p.image]);
        assert!(o.status.success(), "podman import: {}", stderr(&o));
        Some(p)
    }

    fn cmd(&self) -> Command {
        let dir = self.env.tmp.path();
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", &self.conf)
            .arg("--root")
            .arg(dir.join("storage"))
            .arg("--runroot")
            .arg(dir.join("run"))
            .arg("--tmpdir")
            .arg(dir.join("tmp"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ]);
        c
    }

    fn podman(&self, args: &[&str]) -> std::process::Output {
        let mut c = self.cmd();
        c.args(args);
        vessel_testkit::run_via_files(&mut c, self.env.tmp.path())
    }

    /// `podman run --rm` with the test's defaults; returns (code, stdout, stderr).
    fn run(&self, flags: &[&str], cmd: &[&str]) -> (i32, String, String) {
        let mut args = vec![
            "run",
            "--rm",
            "--network",
            "none",
            "--cgroup-parent",
            &self.cgroup_parent,
        ];
        args.extend_from_slice(flags);
        args.push(&self.image);
        args.extend_from_slice(cmd);
        let o = self.podman(&args);
        (o.status.code().unwrap_or(-1), stdout(&o), stderr(&o))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "--all", "--force", "--time", "0"]);
        let _ = self.podman(&["rmi", "--all", "--force"]);
        // Storage may hold mounts (vfs has none, but the run root has a tmpfs-like shm).
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.env.tmp.path().join("storage"))
            .status();
        vessel_testkit::reap_everything_under(self.env.tmp.path());
        remove_cgroup_tree(self.cgroup_parent.trim_start_matches('/'));
    }
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(bin))
            .find(|p| p.exists())
    })
}

fn field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

#[test]
fn podman_run_exit_codes_and_output() {
    for p in Podman::each_conf() {
        eprintln!("containers.conf: {}", p.conf.display());
        let (code, out, err) = p.run(&[], &["sh", "-c", "echo hello; exit 0"]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, "hello\n");
        let (code, _, _) = p.run(&[], &["sh", "-c", "exit 3"]);
        assert_eq!(code, 3);
    }
}

#[test]
fn podman_resource_and_security_flags() {
    for p in Podman::each_conf() {
        eprintln!("containers.conf: {}", p.conf.display());
        let (code, out, err) = p.run(
        &["--memory", "64m", "--pids-limit", "50", "--cpus", "0.5"],
        &["sh", "-c", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max; \
                       cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max; \
                       cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cut -d' ' -f1 /sys/fs/cgroup/cpu.max"],
    );
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, "67108864\n50\n50000\n");

        let (code, out, err) = p.run(&["--cap-drop", "ALL"], &["cat", "/proc/self/status"]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(field(&out, "CapEff"), "0000000000000000");
        assert_eq!(field(&out, "CapBnd"), "0000000000000000");

        let (code, out, err) = p.run(
            &["--read-only"],
            &["sh", "-c", "touch /x 2>/dev/null && echo RW || echo RO"],
        );
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, "RO\n");

        let (code, out, err) = p.run(&["--user", "1000:1001"], &["sh", "-c", "id -u; id -g"]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, "1000\n1001\n");
    }
}

#[test]
fn podman_init_is_pid_one() {
    for p in Podman::each_conf() {
        eprintln!("containers.conf: {}", p.conf.display());
        if !Path::new("/usr/libexec/podman/catatonit").exists() && which("catatonit").is_none() {
            eprintln!("catatonit is not installed; skipping --init");
            return;
        }
        let (code, out, err) = p.run(
            &["--init"],
            &[
                "sh",
                "-c",
                "cat /proc/1/cmdline | tr '\\0' ' '; echo; echo $$",
            ],
        );
        assert_eq!(code, 0, "{err}");
        let mut l = out.lines();
        // podman bind-mounts catatonit at /run/podman-init and makes it PID 1.
        let init = l.next().unwrap();
        assert!(
            init.contains("podman-init") || init.contains("catatonit"),
            "{out}"
        );
        assert_ne!(l.next(), Some("1"));
    }
}

#[test]
fn podman_tty() {
    for p in Podman::each_conf() {
        eprintln!("containers.conf: {}", p.conf.display());
        if which("script").is_none() {
            return;
        }
        // `script` gives podman a real terminal on stdin, as a user at a shell would.
        let mut args: Vec<String> = p
            .cmd()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        args.extend(
            [
                "run",
                "--rm",
                "-it",
                "--network",
                "none",
                "--cgroup-parent",
                &p.cgroup_parent,
                &p.image,
                "sh",
                "-c",
                "tty; echo done; sleep 0.5",
            ]
            .map(String::from),
        );
        let line = format!(
            "podman {}",
            args.iter()
                .map(|a| format!("'{a}'"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut c = Command::new("script");
        c.env("CONTAINERS_CONF", &p.conf)
            .args(["-qec", &line, "/dev/null"]);
        let o = vessel_testkit::run_via_files(&mut c, p.env.tmp.path());
        let out = stdout(&o);
        assert!(o.status.success(), "{out} {}", stderr(&o));
        assert!(out.contains("/dev/pts/0"), "{out}");
    }
}

#[test]
fn podman_exec_stop_kill_pause() {
    for p in Podman::each_conf() {
        eprintln!("containers.conf: {}", p.conf.display());
        let name = unique("pm");
        let o = p.podman(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "none",
            "--cgroup-parent",
            &p.cgroup_parent,
            &p.image,
            "sleep",
            "1000",
        ]);
        assert!(o.status.success(), "run -d: {}", stderr(&o));
        let o = p.podman(&["exec", &name, "sh", "-c", "echo in-exec; hostname"]);
        assert!(o.status.success(), "exec: {}", stderr(&o));
        assert!(stdout(&o).starts_with("in-exec\n"), "{}", stdout(&o));

        let o = p.podman(&["pause", &name]);
        assert!(o.status.success(), "pause: {}", stderr(&o));
        let o = p.podman(&["inspect", "--format", "{{.State.Status}}", &name]);
        assert_eq!(stdout(&o).trim(), "paused");
        let o = p.podman(&["unpause", &name]);
        assert!(o.status.success(), "unpause: {}", stderr(&o));
        let o = p.podman(&["inspect", "--format", "{{.State.Status}}", &name]);
        assert_eq!(stdout(&o).trim(), "running");

        let o = p.podman(&["stop", "--time", "1", &name]);
        assert!(o.status.success(), "stop: {}", stderr(&o));
        let o = p.podman(&["inspect", "--format", "{{.State.Status}}", &name]);
        assert_eq!(stdout(&o).trim(), "exited");

        let o = p.podman(&["start", &name]);
        assert!(o.status.success(), "start again: {}", stderr(&o));
        let o = p.podman(&["kill", &name]);
        assert!(o.status.success(), "kill: {}", stderr(&o));
        let o = p.podman(&["wait", &name]);
        assert!(o.status.success(), "wait: {}", stderr(&o));
        let o = p.podman(&["rm", &name]);
        assert!(o.status.success(), "rm: {}", stderr(&o));
    }
}

#[test]
fn podman_with_the_stock_containers_conf() {
    // Debian's default_sysctls (net.ipv4.ping_group_range) reach the runtime with a network
    // namespace joined by path; runc accepts that, and so must we.
    let Some(p) = Podman::with_stock_conf() else {
        return;
    };
    let (code, out, err) = p.run(&[], &["cat", "/proc/sys/net/ipv4/ping_group_range"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["0", "0"],
        "{out}"
    );
}
