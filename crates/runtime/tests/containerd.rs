//! containerd drives vessel-runtime through its runc shim (`ctr run --runc-binary`), with an
//! image imported by `ctr image import` from an OCI archive made offline. The test starts its
//! own containerd (temp root, state and socket, CRI disabled) and a `vesseltest-` namespace.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Containerd {
    env: TestEnv,
    daemon: Child,
    sock: PathBuf,
    ns: String,
}

fn sha256(path: &Path) -> String {
    let o = vessel_testkit::run(Command::new("sha256sum").arg(path));
    stdout(&o).split_whitespace().next().unwrap().to_string()
}

/// Write blob `data` into an OCI layout and return its descriptor.
fn blob(layout: &Path, media: &str, data: &[u8]) -> serde_json::Value {
    let tmp = layout.join("tmpblob");
    std::fs::write(&tmp, data).unwrap();
    let hex = sha256(&tmp);
    std::fs::rename(&tmp, layout.join("blobs/sha256").join(&hex)).unwrap();
    serde_json::json!({"mediaType": media, "digest": format!("sha256:{hex}"), "size": data.len()})
}

impl Containerd {
    fn new() -> Option<Containerd> {
        if !Path::new("/usr/bin/containerd").exists() || !Path::new("/usr/bin/ctr").exists() {
            eprintln!("containerd is not installed; skipping");
            return None;
        }
        let env = TestEnv::new();
        let dir = env.tmp.path().to_path_buf();
        let sock = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.snapshotter.v1.btrfs\", \"io.containerd.snapshotter.v1.zfs\", \"io.containerd.snapshotter.v1.devmapper\", \"io.containerd.snapshotter.v1.aufs\", \"io.containerd.tracing.processor.v1.otlp\", \"io.containerd.internal.v1.tracing\"]\n\
                 [grpc]\naddress = \"{sock}\"\n[ttrpc]\naddress = \"{sock}.ttrpc\"\n[debug]\naddress = \"{dbg}\"\n[metrics]\naddress = \"\"\n",
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                sock = sock.display(),
                dbg = dir.join("debug.sock").display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let c = Containerd {
            env,
            daemon,
            sock,
            ns: unique("ns"),
        };
        for _ in 0..200 {
            if c.sock.exists() && c.ctr(&["version"]).status.success() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        c.import_image();
        Some(c)
    }

    fn ctr(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.sock)
            .arg("--namespace")
            .arg(&self.ns)
            .args(args);
        vessel_testkit::run_via_files(&mut cmd, self.env.tmp.path())
    }

    /// An OCI archive of the busybox rootfs, built offline, imported as localhost/vesseltest:latest.
    fn import_image(&self) {
        let dir = self.env.tmp.path();
        let layout = dir.join("layout");
        std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
        let layer_tar = dir.join("layer.tar");
        let o = vessel_testkit::run(
            Command::new("tar")
                .arg("-C")
                .arg(self.env.bundle.join("rootfs"))
                .arg("-cf")
                .arg(&layer_tar)
                .arg("."),
        );
        assert!(o.status.success());
        let layer = blob(
            &layout,
            "application/vnd.oci.image.layer.v1.tar",
            &std::fs::read(&layer_tar).unwrap(),
        );
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]}
        });
        let config = blob(
            &layout,
            "application/vnd.oci.image.config.v1+json",
            config.to_string().as_bytes(),
        );
        let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": config, "layers": [layer]});
        let mut mdesc = blob(
            &layout,
            "application/vnd.oci.image.manifest.v1+json",
            manifest.to_string().as_bytes(),
        );
        mdesc["annotations"] = serde_json::json!({"io.containerd.image.name": "localhost/vesseltest:latest", "org.opencontainers.image.ref.name": "latest"});
        std::fs::write(
            layout.join("index.json"),
            serde_json::json!({"schemaVersion": 2, "manifests": [mdesc]}).to_string(),
        )
        .unwrap();
        std::fs::write(
            layout.join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        let archive = dir.join("image.tar");
        let o = vessel_testkit::run(
            Command::new("tar")
                .arg("-C")
                .arg(&layout)
                .arg("-cf")
                .arg(&archive)
                .args(["oci-layout", "index.json", "blobs"]),
        );
        assert!(o.status.success());
        let o = self.ctr(&[
            "images",
            "import",
            "--snapshotter",
            "native",
            archive.to_str().unwrap(),
        ]);
        assert!(
            o.status.success(),
            "ctr images import: {} {}",
            stdout(&o),
            stderr(&o)
        );
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Ok(o) = std::process::Command::new("ctr")
            .arg("--address")
            .arg(&self.sock)
            .arg("--namespace")
            .arg(&self.ns)
            .args(["task", "ls", "-q"])
            .output()
        {
            for id in String::from_utf8_lossy(&o.stdout).lines() {
                let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
                std::thread::sleep(Duration::from_millis(200));
                let _ = self.ctr(&["task", "delete", "--force", id]);
                let _ = self.ctr(&["container", "delete", id]);
            }
        }
        let _ = self.ctr(&["images", "rm", "localhost/vesseltest:latest"]);
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        vessel_testkit::reap_everything_under(self.env.tmp.path());
        remove_cgroup_tree(&self.ns);
        // containerd's mounts (native snapshotter has none; shm etc. live in the bundle).
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.env.tmp.path().join("state"))
            .status();
    }
}

#[test]
fn containerd_run_exec_kill_delete() {
    let Some(c) = Containerd::new() else { return };
    let id = unique("ctr");
    // Foreground run: output and exit status come back through the shim.
    let o = c.ctr(&[
        "run",
        "--rm",
        "--snapshotter",
        "native",
        "--runc-binary",
        RT,
        "localhost/vesseltest:latest",
        &id,
        "sh",
        "-c",
        "echo hello-from-ctr; hostname; exit 0",
    ]);
    assert!(o.status.success(), "ctr run: {} {}", stdout(&o), stderr(&o));
    assert!(stdout(&o).starts_with("hello-from-ctr\n"), "{}", stdout(&o));

    let id = unique("ctr");
    let o = c.ctr(&[
        "run",
        "-d",
        "--snapshotter",
        "native",
        "--runc-binary",
        RT,
        "localhost/vesseltest:latest",
        &id,
        "sleep",
        "1000",
    ]);
    assert!(
        o.status.success(),
        "ctr run -d: {} {}",
        stdout(&o),
        stderr(&o)
    );
    let o = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        &id,
        "sh",
        "-c",
        "echo in-exec; cat /proc/1/cmdline",
    ]);
    assert!(
        o.status.success(),
        "ctr task exec: {} {}",
        stdout(&o),
        stderr(&o)
    );
    assert!(stdout(&o).starts_with("in-exec\nsleep"), "{}", stdout(&o));
    let o = c.ctr(&["task", "ls"]);
    assert!(stdout(&o).contains("RUNNING"), "{}", stdout(&o));
    let o = c.ctr(&["task", "kill", "-s", "SIGKILL", &id]);
    assert!(o.status.success(), "ctr task kill: {}", stderr(&o));
    for _ in 0..100 {
        if c.ctr(&["task", "ls"])
            .stdout
            .windows(7)
            .any(|w| w == b"STOPPED")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = c.ctr(&["task", "delete", &id]);
    assert!(o.status.success(), "ctr task delete: {}", stderr(&o));
    let o = c.ctr(&["container", "delete", &id]);
    assert!(o.status.success(), "ctr container delete: {}", stderr(&o));
}
