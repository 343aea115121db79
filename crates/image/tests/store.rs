//! Reference counting and garbage collection: shared snapshots survive the removal of one
//! image, images held by a container (lease) are never deleted.

mod common;

use common::{tree, RawTar};
use vessel_image::store::{ImportOptions, RemoveEvent, Store};
use vessel_image::{Error, Reference};

fn import(store: &Store, tar: &[u8], name: &str) -> vessel_image::Digest {
    let o = ImportOptions {
        reference: Some(Reference::parse(name).unwrap()),
        ..Default::default()
    };
    store.import(tar, &o).unwrap()
}

#[test]
fn shared_snapshots_are_kept_until_the_last_image_goes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let tar = RawTar::new().file("f", b"same").finish();
    let a = import(&store, &tar, "vesseltest/a");
    // Different message, same layer: a different image sharing the snapshot.
    let o = ImportOptions {
        reference: Some(Reference::parse("vesseltest/b").unwrap()),
        message: Some("b".into()),
        ..Default::default()
    };
    let b = store.import(&tar[..], &o).unwrap();
    assert_ne!(a, b);
    let pa = store.layer_paths("vesseltest/a").unwrap();
    assert_eq!(pa, store.layer_paths("vesseltest/b").unwrap());

    store.remove("vesseltest/a", false).unwrap();
    assert!(pa[0].join("f").is_file(), "snapshot still used by b");
    store.remove("vesseltest/b", false).unwrap();
    assert!(!pa[0].exists());
    assert!(tree(&dir.path().join("blobs/sha256")).is_empty());
}

#[test]
fn leased_images_are_never_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let id = import(
        &store,
        &RawTar::new().file("f", b"x").finish(),
        "vesseltest/held",
    );
    store.db().add_lease("container-1", &id).unwrap();

    let e = store.remove(id.as_str(), true).unwrap_err();
    assert!(
        matches!(e, Error::Conflict(_)) && e.to_string().contains("container-1"),
        "{e}"
    );
    // By name: the tag goes, the image stays (docker keeps images containers use).
    let ev = store.remove("vesseltest/held", false).unwrap();
    assert_eq!(
        ev,
        vec![RemoveEvent::Untagged("vesseltest/held:latest".into())]
    );
    assert!(store.prune(true).unwrap().events.is_empty());
    assert_eq!(store.images().unwrap().len(), 1);
    assert!(store.layer_paths(id.as_str()).unwrap()[0]
        .join("f")
        .is_file());

    store.db().remove_lease("container-1", &id).unwrap();
    let report = store.prune(false).unwrap();
    assert_eq!(report.events, vec![RemoveEvent::Deleted(id)]);
    assert!(report.reclaimed > 0);
    assert!(tree(&dir.path().join("snapshots")).is_empty());
}

#[test]
fn lookup_by_id_prefix_digest_and_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let id = import(
        &store,
        &RawTar::new().file("f", b"y").finish(),
        "localhost:5000/vesseltest/x:v1",
    );
    assert_eq!(store.lookup(&id.hex()[..6]).unwrap(), id);
    assert_eq!(store.lookup(id.as_str()).unwrap(), id);
    assert_eq!(store.lookup("localhost:5000/vesseltest/x:v1").unwrap(), id);
    assert!(matches!(
        store.lookup("localhost:5000/vesseltest/x:v2"),
        Err(Error::ImageNotFound(_))
    ));
    store.tag(id.short(), "vesseltest/y").unwrap();
    assert_eq!(store.lookup("docker.io/vesseltest/y:latest").unwrap(), id);
    assert!(store
        .tag(id.short(), &format!("vesseltest/y@{id}"))
        .is_err());
}

#[test]
fn gc_sweeps_what_killed_writers_left() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    std::fs::write(
        dir.path().join("blobs/tmp/0123456789abcdef"),
        b"half a layer",
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("snapshots/.tmp-0123456789abcdef/fs/usr")).unwrap();
    std::fs::create_dir_all(dir.path().join("blobs/tmp/load-abc/x")).unwrap();
    store.prune(false).unwrap();
    assert!(tree(&dir.path().join("blobs/tmp")).is_empty());
    assert!(tree(&dir.path().join("snapshots")).is_empty());
}
