//! The store's own directories are 0700 and its files 0600 from the moment they exist,
//! whatever the umask (CVE-2021-41091); the image content keeps its own modes; a store
//! made with the old world-readable modes is tightened once when opened.
//!
//! The tests here set the process umask, so they live in their own test binary.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::RawTar;
use tar::EntryType;
use vessel_image::store::{ImportOptions, Store};
use vessel_image::Reference;

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(vessel_testkit::PREFIX)
        .tempdir()
        .unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{p:?}: {e}"))
        .mode()
        & 0o7777
}

fn chmod(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

/// A layer whose own modes must survive: its root 0755, a setuid file, a sticky
/// world-writable dir, a private dir.
fn layer() -> Vec<u8> {
    RawTar::new()
        .entry("./", EntryType::Directory, "", b"", 0o755)
        .dir("bin")
        .entry("bin/su", EntryType::Regular, "", b"#!/bin/sh\n", 0o4755)
        .entry("tmp", EntryType::Directory, "", b"", 0o1777)
        .entry("root", EntryType::Directory, "", b"", 0o700)
        .file("etc-motd", b"hi\n")
        .finish()
}

fn import(store: &Store, tar: &[u8]) -> PathBuf {
    let o = ImportOptions {
        reference: Some(Reference::parse("vesseltest/modes").unwrap()),
        ..Default::default()
    };
    store.import(tar, &o).unwrap();
    store.layer_paths("vesseltest/modes").unwrap().remove(0)
}

/// The store's own directories and files, given the snapshot's `fs/`.
fn own(root: &Path, fs: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let snap = fs.parent().unwrap().to_path_buf();
    let dirs = ["", "blobs", "blobs/sha256", "blobs/tmp", "snapshots"]
        .iter()
        .map(|d| root.join(d))
        .chain([snap])
        .collect();
    let files = ["vessel.db", "vessel.db-wal", "vessel.db-shm", "gc.lock"]
        .iter()
        .map(|f| root.join(f))
        .collect();
    (dirs, files)
}

fn assert_content_modes(fs: &Path) {
    assert_eq!(mode(fs), 0o755);
    assert_eq!(mode(&fs.join("bin")), 0o755);
    assert_eq!(mode(&fs.join("bin/su")), 0o4755);
    assert_eq!(mode(&fs.join("tmp")), 0o1777);
    assert_eq!(mode(&fs.join("root")), 0o700);
    assert_eq!(mode(&fs.join("etc-motd")), 0o644);
}

#[test]
fn a_new_store_is_private_whatever_the_umask() {
    // The most open umask: whatever ends up 0700/0600 was asked for explicitly.
    rustix::process::umask(rustix::fs::Mode::empty());
    let tmp = tempdir();
    let root = tmp.path().join("var/lib/vessel");
    let store = Store::open(&root).unwrap();
    // Directories above the store are not its own.
    assert_eq!(mode(&tmp.path().join("var/lib")), 0o777);

    // An unpack in progress is as private as a finished snapshot.
    let snap = store.snapshots.prepare().unwrap();
    assert_eq!(mode(snap.fs_path().parent().unwrap()), 0o700);
    // The image's `/` before a layer says otherwise: docker's 0755.
    assert_eq!(mode(snap.fs_path()), 0o755);
    drop(snap);

    let fs = import(&store, &layer());
    let (dirs, files) = own(&root, &fs);
    for d in &dirs {
        assert_eq!(mode(d), 0o700, "{d:?}");
    }
    for f in &files {
        assert_eq!(mode(f), 0o600, "{f:?}");
    }
    for b in std::fs::read_dir(root.join("blobs/sha256")).unwrap() {
        let b = b.unwrap().path();
        assert_eq!(mode(&b), 0o600, "{b:?}");
    }
    assert_content_modes(&fs);

    // A layer without a "./" entry leaves the image's `/` at 0755.
    let o = ImportOptions::default();
    store
        .import(&RawTar::new().file("f", b"x").finish()[..], &o)
        .unwrap();
    for ent in std::fs::read_dir(root.join("snapshots")).unwrap() {
        let p = ent.unwrap().path();
        assert_eq!(mode(&p), 0o700, "{p:?}");
        assert_eq!(mode(&p.join("fs")), 0o755, "{p:?}");
    }
}

#[test]
fn an_old_world_readable_store_is_tightened_once() {
    let tmp = tempdir();
    let root = tmp.path().join("root");
    let old = Store::open(&root).unwrap();
    let fs = import(&old, &layer());
    // What the old code left: 0755 directories, 0644 files, and no record of the tightening.
    // `old` stays open, as another vessel process would, so the -wal and -shm files exist.
    let (dirs, files) = own(&root, &fs);
    for d in &dirs {
        chmod(d, 0o755);
    }
    for f in &files {
        chmod(f, 0o644);
    }
    old.db()
        .conn()
        .execute(
            "DELETE FROM schema_versions WHERE component = 'image-store-modes'",
            [],
        )
        .unwrap();

    let store = Store::open(&root).unwrap();
    for d in &dirs {
        assert_eq!(mode(d), 0o700, "{d:?}");
    }
    for f in &files {
        assert_eq!(mode(f), 0o600, "{f:?}");
    }
    // Only the store's own: the image content is as the layer made it.
    assert_content_modes(&fs);
    let recorded: i64 = store
        .db()
        .conn()
        .query_row(
            "SELECT version FROM schema_versions WHERE component = 'image-store-modes'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(recorded, 1);

    // Once: opening again does not look at the modes (here, one an admin chose).
    chmod(&root.join("snapshots"), 0o711);
    drop(Store::open(&root).unwrap());
    assert_eq!(mode(&root.join("snapshots")), 0o711);
    drop(store);
    drop(old);
}
