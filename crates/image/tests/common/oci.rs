//! Writes OCI image layouts (for skopeo to push) from tar layers made in the tests.

use std::path::Path;

use serde_json::json;
use sha2::{Digest as _, Sha256};

pub struct Built {
    pub manifest_digest: String,
    pub config_digest: String,
    pub layer_digests: Vec<String>,
}

fn put(dir: &Path, data: &[u8]) -> (String, usize) {
    let hex = hex_of(data);
    std::fs::write(dir.join("blobs/sha256").join(&hex), data).unwrap();
    (format!("sha256:{hex}"), data.len())
}

pub fn hex_of(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `layers` are uncompressed tars; each is stored gzip-compressed.
pub fn write_layout(dir: &Path, tag: &str, layers: &[Vec<u8>], cmd: &[&str]) -> Built {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut layer_digests = Vec::new();
    for l in layers {
        diff_ids.push(format!("sha256:{}", hex_of(l)));
        let gz = super::gzip(l);
        let (d, s) = put(dir, &gz);
        layer_digests.push(d.clone());
        descs.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": s}));
    }
    let cfg = json!({
        "architecture": host_arch(), "os": "linux",
        "created": "2024-01-02T03:04:05Z",
        "config": {"Cmd": cmd, "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": layers.iter().map(|_| json!({"created_by": "vesseltest"})).collect::<Vec<_>>(),
    });
    let (cd, cs) = put(dir, &serde_json::to_vec(&cfg).unwrap());
    let man = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": descs,
    });
    let (md, ms) = put(dir, &serde_json::to_vec(&man).unwrap());
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
        "annotations": {"org.opencontainers.image.ref.name": tag}}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    Built {
        manifest_digest: md,
        config_digest: cd,
        layer_digests,
    }
}

pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    }
}

/// A busybox rootfs tar (busybox-static plus a few applet links), made offline.
pub fn busybox_rootfs() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let add_dir = |b: &mut tar::Builder<Vec<u8>>, p: &str| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, p, std::io::empty()).unwrap();
    };
    add_dir(&mut b, "bin/");
    add_dir(&mut b, "etc/");
    let data = std::fs::read("/bin/busybox").expect("busybox-static installed at /bin/busybox");
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(data.len() as u64);
    h.set_mtime(1_700_000_000);
    b.append_data(&mut h, "bin/busybox", &data[..]).unwrap();
    for app in ["sh", "ls", "cat", "echo", "true"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        b.append_link(&mut h, format!("bin/{app}"), "busybox")
            .unwrap();
    }
    b.into_inner().unwrap()
}
