//! A Docker v2 schema 1 manifest signed the way libtrust signs them (a "pretty" JWS with
//! an ES256 signature and the signing certificate in `x5c`), so docker-registry accepts it.

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// `fs_layer` must be a blob the registry has (it checks).
pub fn signed_manifest(name: &str, tag: &str, fs_layer: &str) -> Vec<u8> {
    let body = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 1,
        "name": name,
        "tag": tag,
        "architecture": "amd64",
        "fsLayers": [{"blobSum": fs_layer}],
        "history": [{"v1Compatibility": "{\"id\":\"vesseltest\"}"}],
    }))
    .unwrap();
    // The signed payload is the JSON without its closing brace ("formatTail").
    let format_len = body.len() - 1;
    let protected = b64url(
        &serde_json::to_vec(&serde_json::json!({
            "formatLength": format_len,
            "formatTail": b64url(b"}"),
            "time": "2024-01-02T03:04:05Z",
        }))
        .unwrap(),
    );
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["vesseltest-signer".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let rng = SystemRandom::new();
    let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.serialize_der(), &rng)
        .unwrap();
    let sig = kp
        .sign(&rng, format!("{protected}.{}", b64url(&body)).as_bytes())
        .unwrap();
    let signatures = serde_json::json!([{
        "header": {"alg": "ES256", "x5c": [base64::engine::general_purpose::STANDARD.encode(cert.der())]},
        "signature": b64url(sig.as_ref()),
        "protected": protected,
    }]);
    let mut out = body[..format_len].to_vec();
    out.extend_from_slice(b",\"signatures\":");
    out.extend(serde_json::to_vec(&signatures).unwrap());
    out.push(b'}');
    out
}
