//! Manifests, indexes and image configs as a registry (or an archive being loaded) sends them.
//! Every document parses or is refused; what parses only names digests that are safe as file
//! names in the blob store, and survives a serialize/parse round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vessel_image::manifest::{
    is_schema1, parse_config, parse_document, Descriptor, Document, DOCKER_LIST, DOCKER_MANIFEST,
    OCI_INDEX, OCI_MANIFEST,
};
use vessel_image::Digest;

fn safe(d: &Digest) {
    let hex = d.hex();
    assert_eq!(hex.len(), 64, "digest {d}");
    assert!(
        hex.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "digest {d}"
    );
}

fn descriptors(ds: &[Descriptor]) {
    for d in ds {
        safe(&d.digest);
    }
}

/// What a round trip must keep. Annotation values are compared by key only: the OCI spec
/// makes them strings, and a number in one comes back from serde_json (built without
/// `float_roundtrip`) within an ulp, not always bit-exact — not vessel's to fix.
fn kept(ds: &[Descriptor]) -> Vec<impl PartialEq + std::fmt::Debug + '_> {
    ds.iter()
        .map(|d| {
            (
                (&d.media_type, &d.digest, d.size, &d.platform, &d.urls),
                d.annotations.as_ref().map(|a| a.keys().collect::<Vec<_>>()),
            )
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let _ = is_schema1(data, None);
    for ct in [
        None,
        Some(OCI_MANIFEST),
        Some(OCI_INDEX),
        Some(DOCKER_MANIFEST),
        Some(DOCKER_LIST),
    ] {
        match parse_document(data, ct, "fuzzed manifest") {
            Ok(Document::Manifest(m)) => {
                safe(&m.config.digest);
                descriptors(&m.layers);
                let again = serde_json::to_vec(&m).expect("a parsed manifest serializes");
                match parse_document(&again, ct, "round trip") {
                    Ok(Document::Manifest(m2)) => {
                        assert_eq!(
                            kept(std::slice::from_ref(&m2.config)),
                            kept(std::slice::from_ref(&m.config))
                        );
                        assert_eq!(kept(&m2.layers), kept(&m.layers));
                    }
                    Ok(Document::Index(_)) => panic!("manifest came back as an index"),
                    Err(e) => panic!("manifest does not parse after a round trip: {e}"),
                }
            }
            Ok(Document::Index(i)) => {
                descriptors(&i.manifests);
                let again = serde_json::to_vec(&i).expect("a parsed index serializes");
                match parse_document(&again, ct, "round trip") {
                    Ok(Document::Index(i2)) => assert_eq!(kept(&i2.manifests), kept(&i.manifests)),
                    Ok(Document::Manifest(_)) => panic!("index came back as a manifest"),
                    Err(e) => panic!("index does not parse after a round trip: {e}"),
                }
            }
            Err(_) => {}
        }
    }
    if let Ok(c) = parse_config(data, "fuzzed config") {
        for d in &c.rootfs.diff_ids {
            safe(d);
        }
    }
});
