//! The store is private to its owner (CVE-2021-41091): an image's setuid-root binaries and
//! device nodes sit under `--root`, and a local user must not be able to reach them, nor
//! read the database. Run as root; the checks run as `nobody` through `setpriv`.

#[path = "../../image/tests/common/mod.rs"]
mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::RawTar;
use tar::{EntryType, Header};

const NOBODY: u32 = 65534;

fn vessel(root: &Path, run: &Path, home: &Path, args: &[&str]) -> Output {
    let o = Command::new(env!("CARGO_BIN_EXE_vessel"))
        .arg("--root")
        .arg(root)
        .arg("--runroot")
        .arg(run)
        .args(args)
        .env("HOME", home)
        .env_remove("DOCKER_CONFIG")
        .env_remove("REGISTRY_AUTH_FILE")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "vessel {args:?}: {}{}",
        vessel_testkit::stdout(&o),
        vessel_testkit::stderr(&o)
    );
    o
}

/// `args` run as uid/gid 65534 with no supplementary groups. setpriv keeps root's
/// capabilities up to its own execve (so it would find a path root can reach); the command
/// is exec'd by a shell that has none.
fn as_nobody(args: &[&str]) -> Output {
    vessel_testkit::run(
        Command::new("setpriv")
            .args([
                &format!("--reuid={NOBODY}"),
                &format!("--regid={NOBODY}"),
                "--clear-groups",
                "--",
                "/bin/sh",
                "-c",
                r#"exec "$@""#,
                "sh",
            ])
            .args(args),
    )
}

fn assert_denied(args: &[&str]) {
    let o = as_nobody(args);
    let err = vessel_testkit::stderr(&o);
    assert!(
        !o.status.success() && err.contains("Permission denied"),
        "nobody ran {args:?}: status {}, stdout {:?}, stderr {err:?}",
        o.status,
        vessel_testkit::stdout(&o)
    );
}

/// A layer with a setuid-root busybox, a world-usable character device (the host's
/// /dev/null numbers) and a world-readable file.
fn hostile_layer() -> Vec<u8> {
    let busybox = std::fs::read(vessel_testkit::busybox()).unwrap();
    let mut t = RawTar::new();
    t.dir("bin")
        .entry("bin/busybox", EntryType::Regular, "", &busybox, 0o4755)
        .dir("dev")
        .dir("etc")
        .entry("etc/secret", EntryType::Regular, "", b"s3cret\n", 0o644);
    let mut h = Header::new_gnu();
    h.set_path("dev/null2").unwrap();
    h.set_entry_type(EntryType::Char);
    h.set_mode(0o666);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(0);
    h.set_mtime(1_000_000_000);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    h.set_cksum();
    t.header(&h, b"");
    t.finish()
}

/// Every path below `dir` (not `dir` itself).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        out.push(p.clone());
        if e.file_type().unwrap().is_dir() {
            walk(&p, out);
        }
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

#[test]
fn nothing_under_root_or_runroot_is_reachable_by_other_users() {
    if !vessel_testkit::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix(vessel_testkit::PREFIX)
        .tempdir()
        .unwrap();
    // Like /var/lib and /run: the directory the roots live in is open to everyone, so only
    // the store's own modes stand between a local user and its content.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (root, run, home) = (
        tmp.path().join("root"),
        tmp.path().join("run"),
        tmp.path().join("home"),
    );
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let layer = work.join("layer.tar");
    std::fs::write(&layer, hostile_layer()).unwrap();
    vessel(
        &root,
        &run,
        &home,
        &["import", layer.to_str().unwrap(), "vesseltest/setuid:1"],
    );

    let inspect = vessel_testkit::stdout(&vessel(
        &root,
        &run,
        &home,
        &["image", "inspect", "vesseltest/setuid:1"],
    ));
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    let lower = PathBuf::from(v[0]["GraphDriver"]["Data"]["LowerDir"].as_str().unwrap());
    assert!(lower.starts_with(&root), "{lower:?}");
    let setuid = lower.join("bin/busybox");
    let device = lower.join("dev/null2");

    // The image's content keeps the image's modes: only the store's own directories above it
    // are private.
    assert_eq!(mode(&setuid), 0o4755);
    assert_eq!(std::fs::metadata(&setuid).unwrap().uid(), 0);
    assert_eq!(mode(&lower.join("etc/secret")), 0o644);
    assert_eq!(mode(&lower.join("bin")), 0o755);
    // Unpacking as root makes real device nodes (docker does too); so they must be out of
    // reach as well.
    let dev = std::fs::symlink_metadata(&device).unwrap();
    assert!(dev.file_type().is_char_device(), "{dev:?}");
    assert_eq!(dev.rdev(), rustix::fs::makedev(1, 3));

    // The store's own directories and secrets, as root sees them.
    assert_eq!(mode(&root), 0o700);
    for f in ["vessel.db", "vessel.db-wal", "vessel.db-shm"] {
        let p = root.join(f);
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{p:?}");
        }
    }

    // What a local user can try.
    assert_denied(&["ls", root.to_str().unwrap()]);
    assert_denied(&["stat", setuid.to_str().unwrap()]);
    assert_denied(&[setuid.to_str().unwrap(), "id", "-u"]);
    assert_denied(&["cat", root.join("vessel.db").to_str().unwrap()]);
    assert_denied(&["cat", device.to_str().unwrap()]);
    assert_denied(&["cat", lower.join("etc/secret").to_str().unwrap()]);

    // And nothing at all below either root: not visible (lstat), readable, writable or
    // executable/traversable. The roots themselves are visible (their parent is open) but
    // must not be listable or traversable.
    let mut below = Vec::new();
    let mut tops = vec![root.clone()];
    walk(&root, &mut below);
    // vessel has nothing to keep under --runroot yet (the image commands use only --root);
    // whatever comes to live there falls under the same rule.
    if run.exists() {
        tops.push(run.clone());
        walk(&run, &mut below);
    }
    assert!(below.contains(&setuid) && below.contains(&device));
    let script = r#"
        top=1
        for p; do
            if [ "$p" = -- ]; then top=0; continue; fi
            if [ $top = 0 ] && { [ -e "$p" ] || [ -L "$p" ]; }; then echo "visible: $p"; fi
            if [ -r "$p" ]; then echo "readable: $p"; fi
            if [ -w "$p" ]; then echo "writable: $p"; fi
            if [ -x "$p" ]; then echo "executable: $p"; fi
        done
    "#;
    let mut args: Vec<String> = vec!["sh".into(), "-c".into(), script.into(), "sh".into()];
    args.extend(tops.iter().map(|p| p.display().to_string()));
    args.push("--".into());
    args.extend(below.iter().map(|p| p.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = as_nobody(&args);
    assert!(o.status.success(), "{}", vessel_testkit::stderr(&o));
    assert_eq!(
        vessel_testkit::stdout(&o),
        "",
        "reachable by uid {NOBODY} ({} paths checked)",
        below.len() + tops.len()
    );
}
