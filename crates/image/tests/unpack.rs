//! Layer unpacking against real filesystems: what a good layer turns into, and hostile
//! layers refused with nothing written outside the snapshot and nothing left in the store.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::{gzip, tree, RawTar};
use tar::EntryType;
use vessel_image::blobs::Expected;
use vessel_image::layer::{unpack_layer, LayerInput};
use vessel_image::store::{ImportOptions, Store};
use vessel_image::unpack::{unpack, UnpackOptions};
use vessel_image::{Digest, Error};

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A sandbox: `outside/` holds a sentinel a hostile layer would like to overwrite,
/// `snap/` is the snapshot root.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/secret"), b"untouched").unwrap();
        std::fs::create_dir(dir.path().join("snap")).unwrap();
        Sandbox { dir }
    }
    fn snap(&self) -> std::path::PathBuf {
        self.dir.path().join("snap")
    }
    fn outside(&self) -> std::path::PathBuf {
        self.dir.path().join("outside")
    }
    fn unpack(&self, data: &[u8]) -> Result<(), Error> {
        self.unpack_with(data, &UnpackOptions::default())
    }
    fn unpack_with(&self, data: &[u8], o: &UnpackOptions) -> Result<(), Error> {
        unpack(data, &self.snap(), o).map(|_| ())
    }
    fn assert_outside_untouched(&self) {
        assert_eq!(tree(&self.outside()), vec!["secret".to_string()]);
        assert_eq!(
            std::fs::read(self.outside().join("secret")).unwrap(),
            b"untouched"
        );
        let top: Vec<String> = tree(self.dir.path())
            .into_iter()
            .filter(|p| !p.contains('/'))
            .collect();
        assert_eq!(top, vec!["outside".to_string(), "snap".to_string()]);
    }
}

fn refused(r: Result<(), Error>, needle: &str) {
    let e = r.expect_err("hostile layer was accepted");
    let s = e.to_string();
    assert!(
        s.contains(needle),
        "error {s:?} does not mention {needle:?}"
    );
}

#[test]
fn good_layer_keeps_metadata() {
    let sb = Sandbox::new();
    let mut t = RawTar::new();
    t.dir("./")
        .dir("etc/")
        .file("etc/hosts", b"127.0.0.1 localhost\n");
    t.entry("bin/tool", EntryType::Regular, "", b"#!/bin/sh\n", 0o4755);
    t.symlink("etc/link", "hosts")
        .hardlink("etc/hard", "etc/hosts");
    t.pax(&[("SCHILY.xattr.user.vessel", b"yes")])
        .file("etc/x", b"x");
    // implicit parent dirs are created
    t.file("deep/a/b/c", b"c");
    let mut h = tar::Header::new_gnu();
    h.set_path("owned").unwrap();
    h.set_size(1);
    h.set_mode(0o600);
    h.set_uid(1234);
    h.set_gid(5678);
    h.set_mtime(1_500_000_000);
    h.set_entry_type(EntryType::Regular);
    h.set_cksum();
    t.header(&h, b"o");
    let data = t.finish();
    unpack(&data[..], &sb.snap(), &UnpackOptions::default()).unwrap();
    let s = sb.snap();
    assert_eq!(
        std::fs::read(s.join("etc/hosts")).unwrap(),
        b"127.0.0.1 localhost\n"
    );
    assert_eq!(
        std::fs::read_link(s.join("etc/link")).unwrap(),
        Path::new("hosts")
    );
    let a = std::fs::metadata(s.join("etc/hosts")).unwrap();
    let b = std::fs::metadata(s.join("etc/hard")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.mtime(), 1_000_000_000);
    assert_eq!(
        std::fs::metadata(s.join("etc")).unwrap().mtime(),
        1_000_000_000,
        "dir mtime applied last"
    );
    assert_eq!(std::fs::read(s.join("deep/a/b/c")).unwrap(), b"c");
    if is_root() {
        assert_eq!(
            std::fs::metadata(s.join("bin/tool"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o4755
        );
        let o = std::fs::metadata(s.join("owned")).unwrap();
        assert_eq!((o.uid(), o.gid(), o.mtime()), (1234, 5678, 1_500_000_000));
        // user xattrs need a filesystem that supports them (tmpfs does since 6.6)
        if let Ok(v) = xattr_get(&s.join("etc/x"), "user.vessel") {
            assert_eq!(v, b"yes");
        }
    }
}

/// An entry with its own owner (RawTar's are 0:0).
fn owned_entry(
    t: &mut RawTar,
    name: &str,
    kind: EntryType,
    link: &str,
    mode: u32,
    ids: (u64, u64),
) {
    let mut h = tar::Header::new_gnu();
    h.set_path(name).unwrap();
    if !link.is_empty() {
        h.set_link_name(link).unwrap();
    }
    h.set_size(0);
    h.set_mode(mode);
    h.set_uid(ids.0);
    h.set_gid(ids.1);
    h.set_mtime(1_000_000_000);
    h.set_entry_type(kind);
    h.set_cksum();
    t.header(&h, b"");
}

/// Files are created with their final mode and skip chown/chmod when nothing needs fixing
/// up; whatever the umask, set-id bits, setgid directories and replaced entries, the result
/// must be exactly what the tar says.
#[test]
fn modes_and_owners_come_out_exact() {
    let sb = Sandbox::new();
    let mut t = RawTar::new();
    for (name, mode) in [
        ("rw", 0o666),
        ("x", 0o777),
        ("none", 0o000),
        ("sgid", 0o2755),
    ] {
        t.entry(name, EntryType::Regular, "", b"a", mode);
    }
    t.entry("plain", EntryType::Regular, "", b"first", 0o644);
    t.entry("plain", EntryType::Regular, "", b"second", 0o600);
    t.symlink("l", "first").symlink("l", "second");
    owned_entry(
        &mut t,
        "shared/",
        EntryType::Directory,
        "",
        0o2775,
        (0, 4242),
    );
    owned_entry(&mut t, "shared/root", EntryType::Regular, "", 0o644, (0, 0));
    owned_entry(
        &mut t,
        "shared/group",
        EntryType::Regular,
        "",
        0o644,
        (0, 4242),
    );
    owned_entry(
        &mut t,
        "shared/user",
        EntryType::Regular,
        "",
        0o644,
        (1000, 1000),
    );
    owned_entry(
        &mut t,
        "shared/link",
        EntryType::Symlink,
        "root",
        0o777,
        (0, 0),
    );
    owned_entry(
        &mut t,
        "ulink",
        EntryType::Symlink,
        "x",
        0o777,
        (1000, 1001),
    );
    sb.unpack(&t.finish()).unwrap();
    let s = sb.snap();
    let meta = |p: &str| std::fs::symlink_metadata(s.join(p)).unwrap();
    let mode = |p: &str| meta(p).permissions().mode() & 0o7777;
    assert_eq!(mode("rw"), 0o666);
    assert_eq!(mode("x"), 0o777);
    assert_eq!(mode("none"), 0o000);
    assert_eq!(mode("plain"), 0o600);
    assert_eq!(std::fs::read(s.join("plain")).unwrap(), b"second");
    assert_eq!(
        std::fs::read_link(s.join("l")).unwrap(),
        Path::new("second")
    );
    assert_eq!(meta("ulink").mtime(), 1_000_000_000);
    if is_root() {
        assert_eq!(mode("sgid"), 0o2755);
        assert_eq!(mode("shared"), 0o2775);
        let ids = |p: &str| (meta(p).uid(), meta(p).gid());
        assert_eq!(ids("shared"), (0, 4242));
        assert_eq!(
            ids("shared/root"),
            (0, 0),
            "not the setgid directory's group"
        );
        assert_eq!(ids("shared/group"), (0, 4242));
        assert_eq!(ids("shared/user"), (1000, 1000));
        assert_eq!(ids("shared/link"), (0, 0));
        assert_eq!(ids("ulink"), (1000, 1001));
        assert_eq!(ids("plain"), (0, 0));
    }
}

fn xattr_get(p: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    let n = rustix::fs::lgetxattr(p, name, &mut buf).map_err(std::io::Error::from)?;
    buf.truncate(n);
    Ok(buf)
}

#[test]
fn whiteouts_become_overlay_form() {
    if !is_root() {
        return;
    }
    let sb = Sandbox::new();
    let mut t = RawTar::new();
    t.dir("a/")
        .file("a/.wh.gone", b"")
        .file("b/.wh..wh..opq", b"")
        .file(".wh..wh.plnk", b"");
    sb.unpack(&t.finish()).unwrap();
    let m = std::fs::symlink_metadata(sb.snap().join("a/gone")).unwrap();
    assert!(m.file_type().is_char_device());
    assert_eq!(m.rdev(), 0);
    assert!(!sb.snap().join("a/.wh.gone").exists());
    assert_eq!(
        xattr_get(&sb.snap().join("b"), "trusted.overlay.opaque").unwrap(),
        b"y"
    );
    assert!(!sb.snap().join(".wh..wh.plnk").exists());
}

#[test]
fn dotdot_paths_are_refused() {
    let sb = Sandbox::new();
    refused(
        sb.unpack(&RawTar::new().file("../outside/secret", b"pwned").finish()),
        "'..'",
    );
    refused(
        sb.unpack(
            &RawTar::new()
                .file("a/../../outside/secret", b"pwned")
                .finish(),
        ),
        "'..'",
    );
    sb.assert_outside_untouched();
}

#[test]
fn absolute_paths_are_refused() {
    let sb = Sandbox::new();
    let target = sb.outside().join("secret");
    refused(
        sb.unpack(
            &RawTar::new()
                .file(target.to_str().unwrap(), b"pwned")
                .finish(),
        ),
        "absolute path",
    );
    sb.assert_outside_untouched();
}

#[test]
fn writes_through_escaping_symlinks_are_refused() {
    let sb = Sandbox::new();
    let abs = sb.outside();
    let mut t = RawTar::new();
    t.symlink("esc", abs.to_str().unwrap())
        .file("esc/secret", b"pwned");
    refused(sb.unpack(&t.finish()), "outside the layer root");
    sb.assert_outside_untouched();

    let sb = Sandbox::new();
    let mut t = RawTar::new();
    t.dir("d/")
        .symlink("d/up", "../../outside")
        .file("d/up/secret", b"pwned");
    refused(sb.unpack(&t.finish()), "outside the layer root");
    sb.assert_outside_untouched();

    // A chain: a symlink to a symlink that escapes.
    let sb = Sandbox::new();
    let mut t = RawTar::new();
    t.symlink("one", "two")
        .symlink("two", "..")
        .file("one/outside/secret", b"pwned");
    refused(sb.unpack(&t.finish()), "outside the layer root");
    sb.assert_outside_untouched();
}

#[test]
fn symlinks_inside_the_root_are_followed() {
    let sb = Sandbox::new();
    let mut t = RawTar::new();
    t.dir("usr/lib/")
        .symlink("lib", "usr/lib")
        .file("lib/libc.so", b"elf");
    t.dir("x/").symlink("x/l", "../usr").file("x/l/f", b"f");
    sb.unpack(&t.finish()).unwrap();
    assert_eq!(
        std::fs::read(sb.snap().join("usr/lib/libc.so")).unwrap(),
        b"elf"
    );
    assert_eq!(std::fs::read(sb.snap().join("usr/f")).unwrap(), b"f");
}

#[test]
fn final_symlink_component_is_replaced_not_followed() {
    let sb = Sandbox::new();
    let abs = sb.outside().join("secret");
    let mut t = RawTar::new();
    t.symlink("f", abs.to_str().unwrap()).file("f", b"pwned");
    sb.unpack(&t.finish()).unwrap();
    assert_eq!(std::fs::read(sb.snap().join("f")).unwrap(), b"pwned");
    assert!(!std::fs::symlink_metadata(sb.snap().join("f"))
        .unwrap()
        .file_type()
        .is_symlink());
    sb.assert_outside_untouched();
}

#[test]
fn hardlinks_to_outside_files_are_refused() {
    let sb = Sandbox::new();
    refused(
        sb.unpack(&RawTar::new().hardlink("h", "../outside/secret").finish()),
        "'..'",
    );
    let abs = sb.outside().join("secret");
    refused(
        sb.unpack(&RawTar::new().hardlink("h", abs.to_str().unwrap()).finish()),
        "absolute path",
    );
    let mut t = RawTar::new();
    t.symlink("esc", sb.outside().to_str().unwrap())
        .hardlink("h", "esc/secret");
    refused(sb.unpack(&t.finish()), "outside the layer root");
    refused(
        sb.unpack(&RawTar::new().hardlink("h", "missing").finish()),
        "not in this layer",
    );
    sb.assert_outside_untouched();
    assert_eq!(
        std::fs::metadata(sb.outside().join("secret"))
            .unwrap()
            .nlink(),
        1
    );
}

#[test]
fn device_nodes_refused_without_root_rights() {
    let sb = Sandbox::new();
    let o = UnpackOptions {
        allow_devices: false,
        ..UnpackOptions::default()
    };
    refused(
        sb.unpack_with(
            &RawTar::new()
                .device("dev/sda", EntryType::Block, 8, 0)
                .finish(),
            &o,
        ),
        "device nodes",
    );
    refused(
        sb.unpack_with(
            &RawTar::new().device("null", EntryType::Char, 1, 3).finish(),
            &o,
        ),
        "device nodes",
    );
    // fifos are harmless and allowed
    sb.unpack_with(
        &RawTar::new().device("fifo", EntryType::Fifo, 0, 0).finish(),
        &o,
    )
    .unwrap();
    if is_root() {
        let sb = Sandbox::new();
        sb.unpack(&RawTar::new().device("null", EntryType::Char, 1, 3).finish())
            .unwrap();
        assert!(std::fs::symlink_metadata(sb.snap().join("null"))
            .unwrap()
            .file_type()
            .is_char_device());
    }
}

#[test]
fn whiteouts_naming_outside_paths_are_refused() {
    let sb = Sandbox::new();
    refused(
        sb.unpack(&RawTar::new().file(".wh...", b"").finish()),
        "whiteout",
    );
    refused(
        sb.unpack(&RawTar::new().file("../outside/.wh.secret", b"").finish()),
        "'..'",
    );
    let mut t = RawTar::new();
    t.symlink("esc", sb.outside().to_str().unwrap())
        .file("esc/.wh.secret", b"");
    refused(sb.unpack(&t.finish()), "outside the layer root");
    let mut t = RawTar::new();
    t.symlink("esc", sb.outside().to_str().unwrap())
        .file("esc/.wh..wh..opq", b"");
    refused(sb.unpack(&t.finish()), "outside the layer root");
    sb.assert_outside_untouched();
}

#[test]
fn overlay_private_xattrs_are_refused() {
    let sb = Sandbox::new();
    let mut t = RawTar::new();
    t.pax(&[("SCHILY.xattr.trusted.overlay.redirect", b"/etc")])
        .dir("d/");
    refused(sb.unpack(&t.finish()), "overlay");
}

#[test]
fn huge_and_truncated_layers_are_refused() {
    let sb = Sandbox::new();
    let o = UnpackOptions {
        max_bytes: 1000,
        ..UnpackOptions::default()
    };
    refused(
        sb.unpack_with(&RawTar::new().file("big", &[0u8; 2000]).finish(), &o),
        "larger than the limit",
    );
    let data = RawTar::new().file("f", &[1u8; 5000]).finish();
    let e = sb
        .unpack(&data[..3000])
        .expect_err("truncated tar accepted");
    assert!(!e.to_string().is_empty());
}

fn store_is_clean(root: &Path) {
    assert_eq!(
        tree(&root.join("blobs/tmp")),
        Vec::<String>::new(),
        "temp blobs left"
    );
    assert_eq!(
        tree(&root.join("blobs/sha256")),
        Vec::<String>::new(),
        "blobs left"
    );
    assert_eq!(
        tree(&root.join("snapshots")),
        Vec::<String>::new(),
        "snapshots left"
    );
}

#[test]
fn failed_imports_leave_nothing_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let outside = tempfile::tempdir().unwrap();
    let hostile: Vec<Vec<u8>> = vec![
        RawTar::new()
            .file("ok", b"fine")
            .file("../x", b"x")
            .finish(),
        gzip(
            &RawTar::new()
                .file("ok", b"fine")
                .symlink("e", outside.path().to_str().unwrap())
                .file("e/x", b"x")
                .finish(),
        ),
        gzip(&RawTar::new().file("f", &[7u8; 100_000]).finish())[..500].to_vec(),
    ];
    for h in hostile {
        assert!(store.import(&h[..], &ImportOptions::default()).is_err());
        store_is_clean(dir.path());
        assert!(store.images().unwrap().is_empty());
    }
    assert!(tree(outside.path()).is_empty());
}

#[test]
fn layer_digest_and_size_are_checked_in_the_same_pass() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let layer = gzip(&RawTar::new().file("f", b"data").finish());
    let real = Digest::of_bytes(&layer);
    let lie = Digest::of_bytes(b"something else");
    for (digest, size) in [
        (lie.clone(), layer.len() as u64),
        (real.clone(), layer.len() as u64 - 1),
        (real.clone(), layer.len() as u64 + 1),
    ] {
        let snap = store.snapshots.prepare().unwrap();
        let w = store
            .blobs
            .writer(Expected {
                digest: Some(digest.clone()),
                size: Some(size),
                what: "layer".into(),
            })
            .unwrap();
        let r = unpack_layer(
            &layer[..],
            LayerInput {
                blob: Some((digest, size)),
                diff_id: None,
                store_blob: Some(w),
                store_diff: None,
            },
            &snap,
            &store.unpack,
        );
        let e = r.expect_err("lying descriptor accepted").to_string();
        assert!(e.contains("mismatch"), "{e}");
        drop(snap);
        store_is_clean(dir.path());
    }
    // a wrong diff id is refused too
    let snap = store.snapshots.prepare().unwrap();
    let w = store
        .blobs
        .writer(Expected {
            digest: Some(real.clone()),
            size: Some(layer.len() as u64),
            what: "layer".into(),
        })
        .unwrap();
    let e = unpack_layer(
        &layer[..],
        LayerInput {
            blob: Some((real.clone(), layer.len() as u64)),
            diff_id: Some(lie),
            store_blob: Some(w),
            store_diff: None,
        },
        &snap,
        &store.unpack,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("diff id") && e.contains("digest mismatch"),
        "{e}"
    );
    drop(snap);
    store_is_clean(dir.path());
}

#[test]
fn zstd_and_plain_layers_import() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let tar = RawTar::new().file("hello", b"world").finish();
    let z = zstd::encode_all(&tar[..], 3).unwrap();
    let a = store.import(&z[..], &ImportOptions::default()).unwrap();
    let b = store.import(&tar[..], &ImportOptions::default()).unwrap();
    let ga = store.layer_paths(a.as_str()).unwrap();
    let gb = store.layer_paths(b.as_str()).unwrap();
    assert_eq!(ga, gb, "same diff id, same shared snapshot");
    assert_eq!(std::fs::read(ga[0].join("hello")).unwrap(), b"world");
}

#[test]
fn replacing_a_directory_by_an_escaping_symlink_is_seen_by_later_entries() {
    let sb = Sandbox::new();
    let mut t = RawTar::new();
    t.dir("a/")
        .file("a/x", b"x")
        .symlink("a", sb.outside().to_str().unwrap())
        .file("a/secret", b"pwned");
    refused(sb.unpack(&t.finish()), "outside the layer root");
    sb.assert_outside_untouched();
}
