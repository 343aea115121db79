//! Reference counting and garbage collection: shared snapshots survive the removal of one
//! image, images held by a container (lease) are never deleted.

mod common;

use common::{tree, RawTar};
use vessel_image::store::{ImportOptions, RemoveEvent, RemoveOptions, Store};
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

    store
        .remove("vesseltest/a", RemoveOptions::default())
        .unwrap();
    assert!(pa[0].join("f").is_file(), "snapshot still used by b");
    store
        .remove("vesseltest/b", RemoveOptions::default())
        .unwrap();
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

    let e = store
        .remove(
            id.as_str(),
            RemoveOptions {
                force: true,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(
        matches!(e, Error::Conflict(_)) && e.to_string().contains("container-1"),
        "{e}"
    );
    // By name: the tag goes, the image stays (docker keeps images containers use).
    let ev = store
        .remove("vesseltest/held", RemoveOptions::default())
        .unwrap();
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

/// A docker-archive of images linked by config `parent` (docker's classic builder), all on
/// one layer: `(name, parent name, tag)`. Returns the store and each image's id by name.
fn load_family(
    images: &[(&str, Option<&str>, Option<&str>)],
) -> (
    tempfile::TempDir,
    Store,
    std::collections::HashMap<String, vessel_image::Digest>,
) {
    let layer = RawTar::new().file("hello", b"hi\n").finish();
    let diff = format!("sha256:{}", common::oci::hex_of(&layer));
    let mut ids = std::collections::HashMap::new();
    let mut archive = RawTar::new();
    let mut manifest = Vec::new();
    for (i, (name, parent, tag)) in images.iter().enumerate() {
        let mut c = serde_json::json!({
            "architecture": common::oci::host_arch(), "os": "linux",
            "created": format!("2024-01-{:02}T00:00:00Z", i + 1),
            "config": {}, "rootfs": {"type": "layers", "diff_ids": [diff]},
        });
        if let Some(p) = parent {
            c["parent"] = serde_json::json!(ids[*p]);
        }
        let c = serde_json::to_vec(&c).unwrap();
        let id = vessel_image::Digest::of_bytes(&c);
        archive.file(&format!("{name}.json"), &c);
        manifest.push(serde_json::json!({
            "Config": format!("{name}.json"), "RepoTags": tag.map(|t| vec![t]), "Layers": ["l.tar"],
        }));
        ids.insert(name.to_string(), id);
    }
    archive
        .file("manifest.json", &serde_json::to_vec(&manifest).unwrap())
        .file("l.tar", &layer);
    let dir = tempfile::Builder::new()
        .prefix(vessel_testkit::PREFIX)
        .tempdir()
        .unwrap();
    let store = Store::open(dir.path()).unwrap();
    vessel_image::archive::load(&store, &archive.finish()[..]).unwrap();
    (dir, store, ids)
}

fn image_ids(store: &Store) -> Vec<vessel_image::Digest> {
    let mut ids: Vec<_> = store.images().unwrap().into_iter().map(|i| i.id).collect();
    ids.sort();
    ids.dedup();
    ids
}

#[test]
fn rmi_deletes_the_parents_it_leaves_dangling_unless_no_prune() {
    let family = [
        ("grand", None, None),
        ("parent", Some("grand"), None),
        ("child", Some("parent"), Some("vesseltest/child:1")),
    ];
    let (_dir, store, ids) = load_family(&family);
    let ev = store
        .remove(
            "vesseltest/child:1",
            RemoveOptions {
                no_prune: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        ev,
        [
            RemoveEvent::Untagged("vesseltest/child:1".into()),
            RemoveEvent::Deleted(ids["child"].clone()),
        ]
    );
    let mut left = vec![ids["grand"].clone(), ids["parent"].clone()];
    left.sort();
    assert_eq!(image_ids(&store), left, "--no-prune keeps the parents");

    // Without it, docker's default: the parents go too, nearest first.
    let (dir, store, ids) = load_family(&family);
    let ev = store
        .remove("vesseltest/child:1", RemoveOptions::default())
        .unwrap();
    assert_eq!(
        ev,
        [
            RemoveEvent::Untagged("vesseltest/child:1".into()),
            RemoveEvent::Deleted(ids["child"].clone()),
            RemoveEvent::Deleted(ids["parent"].clone()),
            RemoveEvent::Deleted(ids["grand"].clone()),
        ]
    );
    assert!(image_ids(&store).is_empty());
    assert!(tree(&dir.path().join("snapshots")).is_empty());
}

#[test]
fn rmi_prunes_no_parent_that_is_named_held_or_has_another_child() {
    let (_dir, store, ids) = load_family(&[
        ("base", None, Some("vesseltest/base:1")),
        ("mid", Some("base"), None),
        ("a", Some("mid"), Some("vesseltest/a:1")),
        ("b", Some("mid"), Some("vesseltest/b:1")),
        ("held", None, None),
        ("c", Some("held"), Some("vesseltest/c:1")),
    ]);
    store.db().add_lease("container-1", &ids["held"]).unwrap();

    // mid still has b under it.
    let ev = store.remove("vesseltest/a:1", Default::default()).unwrap();
    assert_eq!(ev.last(), Some(&RemoveEvent::Deleted(ids["a"].clone())));
    assert!(store.lookup(ids["mid"].as_str()).is_ok());
    // Now mid goes with b; base has a tag and stays.
    let ev = store.remove(ids["b"].as_str(), Default::default()).unwrap();
    assert_eq!(
        ev,
        [
            RemoveEvent::Untagged("vesseltest/b:1".into()),
            RemoveEvent::Deleted(ids["b"].clone()),
            RemoveEvent::Deleted(ids["mid"].clone()),
        ]
    );
    assert!(store.lookup("vesseltest/base:1").is_ok());
    // A parent a container holds stays.
    let ev = store.remove("vesseltest/c:1", Default::default()).unwrap();
    assert_eq!(ev.last(), Some(&RemoveEvent::Deleted(ids["c"].clone())));
    let mut left = vec![ids["base"].clone(), ids["held"].clone()];
    left.sort();
    assert_eq!(image_ids(&store), left);
}
