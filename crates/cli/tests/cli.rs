//! The `vessel` binary end to end: docker's output shapes for the image commands, and
//! pull/push/login/save/load against a real registry on 127.0.0.1.

#[path = "../../image/tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use common::fake::{Fake, Req, Resp};
use common::oci::hex_of;
use common::RawTar;

use common::registry::{Registry, RegistryConfig};

struct Vessel {
    root: tempfile::TempDir,
    run: tempfile::TempDir,
    home: tempfile::TempDir,
}

impl Vessel {
    fn new() -> Self {
        Vessel {
            root: tempfile::tempdir().unwrap(),
            run: tempfile::tempdir().unwrap(),
            home: tempfile::tempdir().unwrap(),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vessel"));
        c.arg("--root")
            .arg(self.root.path())
            .arg("--runroot")
            .arg(self.run.path());
        // Nothing from the host's /etc: registries config and certs.d live in HOME.
        c.env("HOME", self.home.path())
            .env("VESSEL_CERTS_D", self.home.path().join("certs.d"))
            .env(
                "VESSEL_REGISTRIES_CONF",
                self.home.path().join("registries.json"),
            )
            .env_remove("DOCKER_CONFIG")
            .env_remove("REGISTRY_AUTH_FILE");
        c.args(args);
        c
    }

    fn out(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.out(args);
        assert!(
            o.status.success(),
            "vessel {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    fn with_stdin(&self, args: &[&str], input: &[u8]) -> String {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "vessel {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }
}

/// A rootfs tarball with busybox-static, made offline.
fn busybox_tar(dir: &Path) -> std::path::PathBuf {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
    let out = dir.join("rootfs.tar.gz");
    let f = std::fs::File::create(&out).unwrap();
    let gz = flate2_writer(f);
    let mut b = tar::Builder::new(gz);
    b.follow_symlinks(false);
    b.append_dir_all(".", &rootfs).unwrap();
    b.into_inner().unwrap().finish().unwrap();
    out
}

fn flate2_writer(f: std::fs::File) -> flate2::write::GzEncoder<std::fs::File> {
    flate2::write::GzEncoder::new(f, flate2::Compression::fast())
}

#[test]
fn image_commands_print_what_docker_prints() {
    let v = Vessel::new();
    let work = tempfile::tempdir().unwrap();
    let tarball = busybox_tar(work.path());
    let id = v.ok(&[
        "import",
        "-c",
        "CMD [\"sh\"]",
        "-m",
        "made by a test",
        tarball.to_str().unwrap(),
        "vesseltest/bb:1",
    ]);
    let id = id.trim().to_string();
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    let short = &id[7..19];

    let table = v.ok(&["images"]);
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("REPOSITORY")
            && header.contains("TAG")
            && header.contains("IMAGE ID")
            && header.contains("CREATED")
            && header.ends_with("SIZE"),
        "{table}"
    );
    let row = lines.next().unwrap();
    assert!(
        row.starts_with("vesseltest/bb")
            && row.contains(" 1 ")
            && row.contains(short)
            && row.contains("ago")
            && row.ends_with("MB"),
        "{table}"
    );

    assert_eq!(v.ok(&["images", "-q"]).trim(), short);
    v.ok(&["tag", "vesseltest/bb:1", "localhost:5000/other"]);
    assert_eq!(
        v.ok(&["image", "ls", "-q"]).trim(),
        short,
        "-q lists each image once"
    );
    let fmt = v.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    let mut names: Vec<&str> = fmt.lines().collect();
    names.sort();
    assert_eq!(names, ["localhost:5000/other:latest", "vesseltest/bb:1"]);
    assert_eq!(
        v.ok(&[
            "images",
            "--filter",
            "reference=vesseltest/*",
            "--format",
            "{{.Repository}}"
        ])
        .trim(),
        "vesseltest/bb"
    );
    assert_eq!(
        v.ok(&["images", "--filter", "dangling=true", "-q"]).trim(),
        ""
    );
    let json: serde_json::Value = serde_json::from_str(
        v.ok(&["images", "--format", "json"])
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert!(json.get("Repository").is_some() && json.get("ID").is_some());
    let t = v.ok(&["images", "--format", "table {{.ID}}\t{{.Size}}"]);
    assert!(t.starts_with("IMAGE ID"), "{t}");

    let inspect: serde_json::Value =
        serde_json::from_str(&v.ok(&["image", "inspect", "vesseltest/bb:1"])).unwrap();
    let i = &inspect[0];
    assert_eq!(i["Id"], id.as_str());
    let keys: Vec<&str> = i.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(&keys[..3], ["Id", "RepoTags", "RepoDigests"]);
    assert_eq!(i["Config"]["Cmd"][0], "sh");
    assert_eq!(i["RootFS"]["Type"], "layers");
    assert_eq!(i["Comment"], "made by a test");
    assert_eq!(
        v.ok(&["inspect", "--format", "{{.Config.Cmd}} {{.Os}}", short])
            .trim(),
        "[sh] linux"
    );
    let hist = v.ok(&["history", "vesseltest/bb:1"]);
    assert!(
        hist.starts_with("IMAGE") && hist.contains(short) && hist.contains("made by a test"),
        "{hist}"
    );

    let e = v.out(&["rmi", short]);
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("referenced in multiple repositories"));
    assert_eq!(
        v.ok(&["rmi", "localhost:5000/other"]),
        "Untagged: localhost:5000/other:latest\n"
    );
    let out = v.ok(&["rmi", "vesseltest/bb:1"]);
    assert_eq!(out, format!("Untagged: vesseltest/bb:1\nDeleted: {id}\n"));
    assert_eq!(v.ok(&["images", "-q"]), "");
    let missing = v.out(&["rmi", "nothere"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("No such image: nothere"));

    // -f removes an image named in several repositories.
    let id = v.ok(&["import", tarball.to_str().unwrap(), "vesseltest/a:1"]);
    v.ok(&["tag", "vesseltest/a:1", "vesseltest/b:2"]);
    let out = v.ok(&["rmi", "-f", &id.trim()[7..19]]);
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            format!("Deleted: {}", id.trim()).as_str(),
            "Untagged: vesseltest/a:1",
            "Untagged: vesseltest/b:2"
        ]
    );
}

#[test]
fn prune_removes_dangling_and_with_all_everything_unused() {
    let v = Vessel::new();
    let work = tempfile::tempdir().unwrap();
    let tarball = busybox_tar(work.path());
    let dangling = v.ok(&["import", tarball.to_str().unwrap()]);
    v.ok(&[
        "import",
        "-m",
        "x",
        tarball.to_str().unwrap(),
        "vesseltest/keep",
    ]);
    assert_eq!(
        v.ok(&["images", "--filter", "dangling=true", "-q"]).trim(),
        &dangling.trim()[7..19]
    );
    let out = v.ok(&["image", "prune", "-f"]);
    assert!(
        out.contains(&format!("deleted: {}", dangling.trim()))
            && out.contains("Total reclaimed space:"),
        "{out}"
    );
    assert_eq!(
        v.ok(&["images", "--format", "{{.Repository}}"]).trim(),
        "vesseltest/keep"
    );
    v.ok(&["image", "prune", "-a", "-f"]);
    assert_eq!(v.ok(&["images", "-q"]), "");
    let root = v.root.path();
    assert_eq!(
        std::fs::read_dir(root.join("snapshots")).unwrap().count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(root.join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn save_to_stdout_and_load_from_stdin() {
    let v = Vessel::new();
    let work = tempfile::tempdir().unwrap();
    let tarball = busybox_tar(work.path());
    let id = v.ok(&["import", tarball.to_str().unwrap(), "vesseltest/saved:v1"]);
    for fmt in ["docker-archive", "oci-archive"] {
        let o = v.out(&["save", "--format", fmt, "vesseltest/saved:v1"]);
        assert!(o.status.success());
        let w = Vessel::new();
        assert_eq!(
            w.with_stdin(&["load"], &o.stdout),
            "Loaded image: vesseltest/saved:v1\n"
        );
        assert_eq!(w.ok(&["images", "-q", "--no-trunc"]).trim(), id.trim());
    }
    let file = work.path().join("out.tar");
    v.ok(&["save", "-o", file.to_str().unwrap(), "vesseltest/saved:v1"]);
    let w = Vessel::new();
    assert_eq!(w.ok(&["load", "-q", "-i", file.to_str().unwrap()]), "");
    assert_eq!(w.ok(&["images", "-q", "--no-trunc"]).trim(), id.trim());
}

#[test]
fn push_pull_login_logout_against_a_registry() {
    if !Registry::available() {
        return;
    }
    let reg = Registry::start(RegistryConfig {
        htpasswd: Some(("vessel".into(), "pw".into())),
        ..Default::default()
    });
    let v = Vessel::new();
    let work = tempfile::tempdir().unwrap();
    let tarball = busybox_tar(work.path());
    let name = format!("{}/vesseltest/cli:v1", reg.host());
    v.ok(&[
        "import",
        "-c",
        "CMD [\"sh\"]",
        tarball.to_str().unwrap(),
        &name,
    ]);

    let denied = v.out(&["push", &name]);
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("unauthorized"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );

    let bad = v.out(&["login", "-u", "vessel", "-p", "nope", &reg.host()]);
    assert!(!bad.status.success());
    assert_eq!(
        v.with_stdin(
            &["login", "-u", "vessel", "--password-stdin", &reg.host()],
            b"pw\n"
        ),
        "Login Succeeded\n"
    );
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(v.home.path().join(".docker/config.json")).unwrap())
            .unwrap();
    assert!(
        cfg["auths"][reg.host()]["auth"].is_string(),
        "credentials stored like docker's config.json"
    );
    let auth_meta = std::fs::metadata(v.home.path().join(".docker/config.json")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&auth_meta.permissions()) & 0o7777,
        0o600,
        "credentials readable by their owner only"
    );

    let out = v.ok(&["push", &name]);
    assert!(
        out.starts_with(&format!(
            "The push refers to repository [{}/vesseltest/cli]",
            reg.host()
        )),
        "{out}"
    );
    assert!(
        out.contains(": Pushed") && out.contains("v1: digest: sha256:"),
        "{out}"
    );

    // A fresh store (same HOME, so same credentials) pulls it.
    let w = Vessel {
        root: tempfile::tempdir().unwrap(),
        run: tempfile::tempdir().unwrap(),
        home: v.home,
    };
    let missing = w.out(&["pull", &format!("{}/vesseltest/cli", reg.host())]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stdout).starts_with("Using default tag: latest\n"));
    assert!(String::from_utf8_lossy(&missing.stderr)
        .contains("vesseltest/cli:latest not found: manifest unknown"));
    let out = w.ok(&["pull", &name]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "v1: Pulling from vesseltest/cli", "{out}");
    assert!(
        lines.iter().any(|l| l.ends_with(": Pull complete")),
        "{out}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("Digest: sha256:")),
        "{out}"
    );
    assert!(
        lines.contains(&format!("Status: Downloaded newer image for {name}").as_str()),
        "{out}"
    );
    assert_eq!(lines.last().unwrap(), &name.as_str());
    let again = w.ok(&["pull", "-q", &name]);
    assert_eq!(again, format!("{name}\n"));
    let up = w.ok(&["pull", &name]);
    assert!(
        up.contains(&format!("Status: Image is up to date for {name}")),
        "{up}"
    );
    assert!(w.ok(&["images", "--digests"]).contains("sha256:"));

    // -a pulls every tag of the repository.
    let v2 = format!("{}/vesseltest/cli:v2", reg.host());
    w.ok(&["tag", &name, &v2]);
    w.ok(&["push", "-q", &v2]);
    let all = Vessel {
        root: tempfile::tempdir().unwrap(),
        run: tempfile::tempdir().unwrap(),
        home: tempfile::tempdir().unwrap(),
    };
    std::fs::create_dir_all(all.home.path().join(".docker")).unwrap();
    std::fs::copy(
        w.home.path().join(".docker/config.json"),
        all.home.path().join(".docker/config.json"),
    )
    .unwrap();
    let repo = format!("{}/vesseltest/cli", reg.host());
    all.ok(&["pull", "-a", "-q", &repo]);
    let mut tags: Vec<String> = all
        .ok(&["images", "--format", "{{.Tag}}"])
        .lines()
        .map(str::to_string)
        .collect();
    tags.sort();
    assert_eq!(tags, ["v1", "v2"]);
    assert!(
        !all.out(&["pull", "-a", &name]).status.success(),
        "-a with a tag is refused"
    );
    assert_eq!(
        w.ok(&["logout", &reg.host()]),
        format!("Removing login credentials for {}\n", reg.host())
    );
    let w2 = Vessel::new();
    let denied = w2.out(&["pull", &name]);
    assert!(!denied.status.success());
}

/// The 12-character id docker prints for a config.
fn short_id(config: &[u8]) -> String {
    hex_of(config)[..12].to_string()
}

#[test]
fn images_all_adds_intermediate_images_and_dangling_ones_show_as_none() {
    let v = Vessel::new();
    let layer = RawTar::new().file("hello", b"hi\n").finish();
    let diff = format!("sha256:{}", hex_of(&layer));
    let config = |created: &str, parent: Option<&str>| {
        let mut c = serde_json::json!({
            "architecture": common::oci::host_arch(), "os": "linux", "created": created,
            "config": {}, "rootfs": {"type": "layers", "diff_ids": [diff]},
        });
        if let Some(p) = parent {
            c["parent"] = serde_json::json!(p);
        }
        serde_json::to_vec(&c).unwrap()
    };
    // base ← child (tagged), and lone: untagged with no child.
    let base = config("2024-01-01T00:00:00Z", None);
    let child = config(
        "2024-01-02T00:00:00Z",
        Some(&format!("sha256:{}", hex_of(&base))),
    );
    let lone = config("2024-01-03T00:00:00Z", None);
    let manifest = serde_json::json!([
        {"Config": "base.json", "RepoTags": null, "Layers": ["l.tar"]},
        {"Config": "child.json", "RepoTags": ["vesseltest/child:1"], "Layers": ["l.tar"]},
        {"Config": "lone.json", "RepoTags": null, "Layers": ["l.tar"]},
    ]);
    let archive = RawTar::new()
        .file("manifest.json", &serde_json::to_vec(&manifest).unwrap())
        .file("base.json", &base)
        .file("child.json", &child)
        .file("lone.json", &lone)
        .file("l.tar", &layer)
        .finish();
    v.with_stdin(&["load", "-q"], &archive);
    let (base, child, lone) = (short_id(&base), short_id(&child), short_id(&lone));
    let lines = |args: &[&str]| -> Vec<String> { v.ok(args).lines().map(String::from).collect() };

    // Without -a: the untagged parent is hidden, the untagged top-level image is not.
    let fmt = "{{.Repository}}:{{.Tag}} {{.ID}}";
    assert_eq!(
        lines(&["images", "--format", fmt]),
        [
            format!("<none>:<none> {lone}"),
            format!("vesseltest/child:1 {child}")
        ]
    );
    let table = lines(&["images"]);
    let cells: Vec<&str> = table[1].split_whitespace().collect();
    assert_eq!(cells[..3], ["<none>", "<none>", lone.as_str()], "{table:?}");
    assert_eq!(
        lines(&["images", "-a", "--format", fmt]),
        [
            format!("<none>:<none> {lone}"),
            format!("vesseltest/child:1 {child}"),
            format!("<none>:<none> {base}")
        ]
    );
    assert_eq!(lines(&["images", "-q"]), [lone.clone(), child.clone()]);
    assert_eq!(
        lines(&["image", "ls", "--all", "-q"]),
        [lone.clone(), child.clone(), base.clone()]
    );
    assert_eq!(
        lines(&["images", "-q", "--filter", "dangling=true"]),
        std::slice::from_ref(&lone)
    );
    assert_eq!(
        lines(&["images", "-a", "-q", "--filter", "dangling=true"]),
        [lone.clone(), base.clone()]
    );
    assert_eq!(
        lines(&["images", "-a", "-q", "--filter", "dangling=false"]),
        std::slice::from_ref(&child)
    );

    // As in docker: a parent cannot be removed under its child, and prune keeps it.
    let e = v.out(&["rmi", "-f", &base]);
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(
        !e.status.success() && err.contains("image has dependent child images"),
        "{err}"
    );
    let pruned = v.ok(&["image", "prune", "-f"]);
    assert!(
        pruned.contains(&format!("deleted: sha256:{lone}")) && !pruned.contains(&base),
        "{pruned}"
    );
    assert_eq!(
        lines(&["images", "-a", "-q"]),
        [child.clone(), base.clone()]
    );

    // With --no-prune the parent outlives its child, as an ordinary dangling image.
    let out = v.ok(&["rmi", "--no-prune", "vesseltest/child:1"]);
    assert!(
        out.starts_with("Untagged: vesseltest/child:1\nDeleted: sha256:")
            && out.lines().count() == 2
            && !out.contains(&base),
        "{out}"
    );
    assert_eq!(lines(&["images", "-q"]), std::slice::from_ref(&base));
    v.ok(&["image", "prune", "-f"]);
    assert_eq!(v.ok(&["images", "-a", "-q"]), "");

    // Without it (docker's default) the untagged parent goes with its child.
    v.with_stdin(&["load", "-q"], &archive);
    let out = v.ok(&["rmi", "vesseltest/child:1"]);
    let deleted: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("Deleted: sha256:"))
        .collect();
    assert!(
        deleted.len() == 2 && deleted[0].starts_with(&child) && deleted[1].starts_with(&base),
        "{out}"
    );
    assert_eq!(lines(&["images", "-a", "-q"]), [lone]);
}

#[test]
fn pull_from_a_tls_registry_trusts_cert_dir_and_certs_d() {
    if !Registry::available() {
        return;
    }
    let reg = Registry::start(RegistryConfig {
        tls: true,
        ..Default::default()
    });
    let v = Vessel::new();
    let work = tempfile::tempdir().unwrap();
    let tarball = busybox_tar(work.path());
    let name = format!("{}/vesseltest/tls:v1", reg.host());
    v.ok(&["import", tarball.to_str().unwrap(), &name]);
    // Loopback registries are insecure unless asked otherwise, as in docker.
    v.ok(&["push", "-q", &name]);

    // Each pull into a fresh store. Verification asked for, and no CA for the cert:
    let w = Vessel::new();
    let e = w.out(&["pull", "-q", "--tls-verify", &name]);
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(!e.status.success());
    assert!(
        err.contains("certificate not trusted")
            && err.contains(&reg.host())
            && err.contains("--cert-dir"),
        "{err}"
    );
    assert_eq!(w.ok(&["images", "-q"]), "");

    let certs = work.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    std::fs::write(certs.join("ca.crt"), reg.cert_pem()).unwrap();
    let w = Vessel::new();
    w.ok(&[
        "pull",
        "-q",
        "--tls-verify=true",
        "--cert-dir",
        certs.to_str().unwrap(),
        &name,
    ]);
    assert_eq!(w.ok(&["images", "--format", "{{.Tag}}"]), "v1\n");

    let w = Vessel::new();
    w.ok(&["pull", "-q", "--tls-verify=false", &name]);

    // docker's layout: certs.d/<host:port>/ca.crt (VESSEL_CERTS_D points into HOME here).
    let w = Vessel::new();
    let host_dir = w.home.path().join("certs.d").join(reg.host());
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("ca.crt"), reg.cert_pem()).unwrap();
    w.ok(&["pull", "-q", "--tls-verify", &name]);
    let missing = w.out(&["pull", "--cert-dir", "/nonexistent-vessel-certs", &name]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent-vessel-certs"));
}

#[test]
fn import_from_a_url_and_from_stdin() {
    let work = tempfile::tempdir().unwrap();
    let data = std::fs::read(busybox_tar(work.path())).unwrap();
    let served = data.clone();
    let server = Fake::start(Arc::new(move |req: &Req| {
        if req.path == "/rootfs.tar.gz" {
            Resp::new(200, served.clone())
        } else {
            Resp::new(404, "not here")
        }
    }));
    let v = Vessel::new();
    let url = format!("http://{}/rootfs.tar.gz", server.host());
    let id = v.ok(&["import", "-c", "CMD [\"sh\"]", &url, "vesseltest/url:1"]);
    assert!(id.trim().starts_with("sha256:"), "{id}");
    v.with_stdin(&["import", "-", "vesseltest/stdin:1"], &data);

    let inspect = |name: &str| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(&v.ok(&["image", "inspect", name])).unwrap()[0]
            .clone()
    };
    let (from_url, from_stdin) = (inspect("vesseltest/url:1"), inspect("vesseltest/stdin:1"));
    assert_eq!(from_url["Id"], id.trim());
    assert_eq!(from_url["Comment"], format!("Imported from {url}"));
    assert_eq!(from_stdin["Comment"], "Imported from -");
    assert_eq!(from_url["Config"]["Cmd"][0], "sh");
    assert_eq!(
        from_url["RootFS"], from_stdin["RootFS"],
        "same layer both ways"
    );
    let lower = from_url["GraphDriver"]["Data"]["LowerDir"]
        .as_str()
        .unwrap();
    assert!(Path::new(lower).join("bin/busybox").is_file());

    let missing = format!("http://{}/missing.tar", server.host());
    let e = v.out(&["import", &missing]);
    assert!(!e.status.success());
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(err.contains(&missing) && err.contains("404"), "{err}");
    assert_eq!(v.ok(&["images", "-q"]).lines().count(), 2);
    assert!(common::tree(&v.root.path().join("blobs/tmp")).is_empty());
}

/// Runs vessel on a new pseudo-terminal, answering each prompt when it appears; returns
/// whether it succeeded and everything the terminal showed.
fn on_a_terminal(v: &Vessel, args: &[&str], answers: &[(&str, &str)]) -> (bool, String) {
    use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
    use std::io::Read;
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let name = ptsname(&master, Vec::new()).unwrap();
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.to_str().unwrap())
        .unwrap();
    let mut cmd = v.cmd(args);
    cmd.stdin(tty.try_clone().unwrap())
        .stdout(tty.try_clone().unwrap())
        .stderr(tty);
    let mut child = cmd.spawn().unwrap();
    drop(cmd); // our copies of the terminal: reads end (EIO) when vessel exits
    let mut master = std::fs::File::from(master);
    let mut shown = Vec::new();
    let mut buf = [0u8; 512];
    for (prompt, answer) in answers {
        while !String::from_utf8_lossy(&shown).contains(prompt) {
            match master.read(&mut buf) {
                Ok(n) if n > 0 => shown.extend_from_slice(&buf[..n]),
                _ => panic!(
                    "no prompt {prompt:?}; the terminal showed {:?}",
                    String::from_utf8_lossy(&shown)
                ),
            }
        }
        shown.clear();
        master.write_all(format!("{answer}\n").as_bytes()).unwrap();
    }
    while let Ok(n) = master.read(&mut buf) {
        if n == 0 {
            break;
        }
        shown.extend_from_slice(&buf[..n]);
    }
    let ok = child.wait().unwrap().success();
    (ok, String::from_utf8_lossy(&shown).into_owned())
}

#[test]
fn interactive_login_prompts_on_a_terminal() {
    if !Registry::available() {
        return;
    }
    let reg = Registry::start(RegistryConfig {
        htpasswd: Some(("vessel".into(), "hunter2-secret".into())),
        ..Default::default()
    });
    let v = Vessel::new();
    let no_tty = v.out(&["login", &reg.host()]);
    assert!(String::from_utf8_lossy(&no_tty.stderr)
        .contains("Cannot perform an interactive login from a non TTY device"));

    let (ok, shown) = on_a_terminal(
        &v,
        &["login", &reg.host()],
        &[("Username: ", "vessel"), ("Password: ", "hunter2-secret")],
    );
    assert!(ok && shown.contains("Login Succeeded"), "{shown}");
    assert!(
        !shown.contains("hunter2"),
        "the password was echoed: {shown:?}"
    );

    // The stored username is offered; an empty answer takes it.
    let (ok, shown) = on_a_terminal(
        &v,
        &["login", &reg.host()],
        &[
            ("Username (vessel): ", ""),
            ("Password: ", "hunter2-secret"),
        ],
    );
    assert!(ok && shown.contains("Login Succeeded"), "{shown}");
    let (ok, shown) = on_a_terminal(
        &v,
        &["login", "-u", "vessel", &reg.host()],
        &[("Password: ", "wrong")],
    );
    assert!(
        !ok && shown.contains("incorrect username or password"),
        "{shown}"
    );
}
