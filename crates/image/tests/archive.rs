//! save/load: round trips through vessel, interop with podman in both directions and both
//! formats, and hostile archives refused without leaving anything behind.

mod common;

use std::path::Path;
use std::process::Command;

use common::oci::busybox_rootfs;
use common::{tree, RawTar};
use vessel_image::archive::{self, ArchiveFormat, Loaded};
use vessel_image::store::{ImportOptions, Store};
use vessel_image::Reference;

const NAME: &str = "localhost/vesseltest/saved:v1";

fn store_with_image(root: &Path) -> (Store, String) {
    let store = Store::open(root).unwrap();
    let opts = ImportOptions {
        reference: Some(Reference::parse(NAME).unwrap()),
        changes: vec!["CMD [\"sh\"]".into()],
        ..Default::default()
    };
    let id = store.import(&busybox_rootfs()[..], &opts).unwrap();
    (store, id.to_string())
}

/// podman with its own storage, run root and containers.conf in a temp dir.
struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn new() -> Option<Podman> {
        if !Path::new("/usr/bin/podman").exists() {
            eprintln!("skipping: podman not installed");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("containers.conf"),
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n[engine]\ncgroup_manager = \"cgroupfs\"\n",
        )
        .unwrap();
        Some(Podman { dir })
    }

    fn run(&self, args: &[&str]) -> String {
        let d = self.dir.path();
        let out = Command::new("podman")
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[test]
fn round_trip_both_formats() {
    let (src, id) = store_with_image(tempfile::tempdir().unwrap().keep().as_path());
    for format in [ArchiveFormat::Docker, ArchiveFormat::Oci] {
        let mut buf = Vec::new();
        archive::save(&src, &[NAME.to_string()], format, &mut buf).unwrap();
        let root = tempfile::tempdir().unwrap();
        let dst = Store::open(root.path()).unwrap();
        let loaded = archive::load(&dst, &buf[..]).unwrap();
        assert!(
            matches!(&loaded[..], [Loaded::Name(n)] if n == NAME),
            "{loaded:?}"
        );
        assert_eq!(dst.lookup(NAME).unwrap().to_string(), id);
        assert!(dst.layer_paths(NAME).unwrap()[0]
            .join("bin/busybox")
            .is_file());
        assert!(tree(&root.path().join("blobs/tmp")).is_empty());
        // loading twice is harmless
        archive::load(&dst, &buf[..]).unwrap();
        assert_eq!(dst.images().unwrap().len(), 1);
    }
    std::fs::remove_dir_all(src.root()).unwrap();
}

#[test]
fn podman_loads_what_vessel_saves_and_back() {
    let Some(podman) = Podman::new() else { return };
    let root = tempfile::tempdir().unwrap();
    let (store, id) = store_with_image(root.path());
    let work = tempfile::tempdir().unwrap();
    for (format, file) in [
        (ArchiveFormat::Docker, "d.tar"),
        (ArchiveFormat::Oci, "o.tar"),
    ] {
        let p = work.path().join(file);
        archive::save(
            &store,
            &[NAME.to_string()],
            format,
            std::fs::File::create(&p).unwrap(),
        )
        .unwrap();
        podman.run(&["load", "-q", "-i", p.to_str().unwrap()]);
        let pid = podman.run(&["image", "inspect", "--format", "{{.Id}}", NAME]);
        assert_eq!(
            format!("sha256:{}", pid.trim()),
            id,
            "{format:?}: podman sees the same image id"
        );
        podman.run(&["rmi", NAME]);
    }
    // and podman's own archives load in vessel
    let p = work.path().join("d.tar");
    podman.run(&["load", "-q", "-i", p.to_str().unwrap()]);
    for fmt in ["docker-archive", "oci-archive"] {
        let out = work.path().join(format!("podman-{fmt}.tar"));
        podman.run(&[
            "save",
            "-q",
            "--format",
            fmt,
            "-o",
            out.to_str().unwrap(),
            NAME,
        ]);
        let r = tempfile::tempdir().unwrap();
        let s = Store::open(r.path()).unwrap();
        let loaded = archive::load(&s, std::fs::File::open(&out).unwrap()).unwrap();
        assert!(
            matches!(&loaded[..], [Loaded::Name(n)] if n == NAME),
            "{fmt}: {loaded:?}"
        );
        // podman rewrites the config when it converts a docker-archive image to OCI, so
        // the id may change there; the layers may not.
        if fmt == "docker-archive" {
            assert_eq!(s.lookup(NAME).unwrap().to_string(), id, "{fmt}");
        }
        assert_eq!(
            s.inspect(NAME).unwrap()["RootFS"],
            store.inspect(NAME).unwrap()["RootFS"],
            "{fmt}"
        );
        assert!(s.layer_paths(NAME).unwrap()[0]
            .join("bin/busybox")
            .is_file());
    }
}

fn tar_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut t = RawTar::new();
    for (n, d) in files {
        t.file(n, d);
    }
    t.finish()
}

#[test]
fn hostile_archives_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let layer = RawTar::new().file("f", b"x").finish();
    let diff = format!("sha256:{}", common::oci::hex_of(&layer));
    let cfg = serde_json::to_vec(&serde_json::json!({"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[diff]}})).unwrap();
    let bad_layer = RawTar::new().file("../escape", b"x").finish();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("entry with ..", tar_of(&[("../manifest.json", b"[]".to_vec())]), "'..'"),
        ("manifest names a missing file", tar_of(&[("manifest.json", br#"[{"Config":"c.json","Layers":["l.tar"]}]"#.to_vec())]), "missing"),
        (
            "layer does not match its diff id",
            tar_of(&[
                ("manifest.json", br#"[{"Config":"c.json","RepoTags":["x:y"],"Layers":["l.tar"]}]"#.to_vec()),
                ("c.json", cfg.clone()),
                ("l.tar", RawTar::new().file("f", b"y").finish()),
            ]),
            "digest mismatch",
        ),
        (
            "hostile layer",
            tar_of(&[
                ("manifest.json", br#"[{"Config":"c.json","Layers":["l.tar"]}]"#.to_vec()),
                ("c.json", serde_json::to_vec(&serde_json::json!({"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[format!("sha256:{}", common::oci::hex_of(&bad_layer))]}})).unwrap()),
                ("l.tar", bad_layer.clone()),
            ]),
            "'..'",
        ),
        ("malformed manifest.json", tar_of(&[("manifest.json", b"[{".to_vec())]), "malformed"),
        (
            "oci blob with the wrong digest",
            tar_of(&[
                ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
                ("index.json", format!(r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{}","size":2}}]}}"#, "a".repeat(64)).into_bytes()),
                (&format!("blobs/sha256/{}", "a".repeat(64)), b"{}".to_vec()),
            ]),
            "digest mismatch",
        ),
        ("neither format", tar_of(&[("hello", b"x".to_vec())]), "neither"),
    ];
    for (what, data, needle) in cases {
        let e = archive::load(&store, &data[..])
            .expect_err(what)
            .to_string();
        assert!(
            e.contains(needle),
            "{what}: {e:?} does not mention {needle:?}"
        );
        assert!(store.images().unwrap().is_empty(), "{what}");
        assert!(
            tree(&root.path().join("blobs/tmp")).is_empty(),
            "{what}: temp files left"
        );
        let snaps = tree(&root.path().join("snapshots"));
        assert!(
            snaps.iter().all(|s| !s.starts_with(".tmp")),
            "{what}: {snaps:?}"
        );
    }
}

#[test]
fn podman_push_and_pull_interop() {
    let Some(podman) = Podman::new() else { return };
    if !common::registry::Registry::available() {
        return;
    }
    let reg = common::registry::Registry::start(Default::default());
    let root = tempfile::tempdir().unwrap();
    let (store, id) = store_with_image(root.path());
    let store = std::sync::Arc::new(store);
    let rt = tokio::runtime::Runtime::new().unwrap();

    // vessel pushes, podman pulls: same manifest digest, same image id.
    let ours = format!("{}/vesseltest/from-vessel:v1", reg.host());
    store.tag(NAME, &ours).unwrap();
    let opts = vessel_image::registry::RegistryOptions::default();
    let pushed = rt
        .block_on(vessel_image::registry::push::push(
            store.clone(),
            &ours,
            &Reference::parse(&ours).unwrap(),
            &opts,
            std::sync::Arc::new(vessel_image::registry::push::NoPushProgress),
        ))
        .unwrap();
    podman.run(&["pull", "-q", "--tls-verify=false", &ours]);
    assert_eq!(
        podman
            .run(&["image", "inspect", "--format", "{{.Digest}}", &ours])
            .trim(),
        pushed.as_str()
    );
    assert_eq!(
        format!(
            "sha256:{}",
            podman
                .run(&["image", "inspect", "--format", "{{.Id}}", &ours])
                .trim()
        ),
        id
    );

    // podman pushes, vessel pulls.
    let theirs = format!("{}/vesseltest/from-podman:v1", reg.host());
    podman.run(&["tag", &ours, &theirs]);
    podman.run(&["push", "-q", "--tls-verify=false", &theirs]);
    let r2 = tempfile::tempdir().unwrap();
    let s2 = std::sync::Arc::new(Store::open(r2.path()).unwrap());
    let res = rt
        .block_on(vessel_image::registry::pull::pull(
            s2.clone(),
            &Reference::parse(&theirs).unwrap(),
            &Default::default(),
            std::sync::Arc::new(vessel_image::registry::pull::NoProgress),
        ))
        .unwrap();
    assert_eq!(
        s2.inspect(&theirs).unwrap()["RootFS"],
        store.inspect(NAME).unwrap()["RootFS"]
    );
    assert!(s2.layer_paths(&theirs).unwrap()[0]
        .join("bin/busybox")
        .is_file());
    let _ = res;
}
