//! A tiny token server for docker-registry's `auth: token` mode: checks Basic credentials
//! and answers with an ES256 JWT (x5c header, so the registry trusts it through its
//! `rootcertbundle`) granting exactly the scope asked for.

use std::sync::Arc;

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

use super::fake::{Fake, Req, Resp};

pub const SERVICE: &str = "vesseltest-registry";
pub const ISSUER: &str = "vesseltest-issuer";

pub struct TokenServer {
    pub fake: Fake,
    pub cert_pem: String,
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl TokenServer {
    pub fn start(user: &str, password: &str) -> TokenServer {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["vesseltest-token".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_der = cert.der().to_vec();
        let pkcs8 = key.serialize_der();
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let fake = Fake::start(Arc::new(move |req: &Req| {
            if req.path != "/token" {
                return Resp::new(404, "{}");
            }
            if req.headers.get("authorization") != Some(&basic) {
                return Resp::new(401, r#"{"details":"bad credentials"}"#);
            }
            let mut access = Vec::new();
            for kv in req.query.split('&') {
                if let Some(v) = kv.strip_prefix("scope=") {
                    let scope = percent_decode(v);
                    let parts: Vec<&str> = scope.split(':').collect();
                    if parts.len() == 3 {
                        access.push(serde_json::json!({"type": parts[0], "name": parts[1], "actions": parts[2].split(',').collect::<Vec<_>>()}));
                    }
                }
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [base64::engine::general_purpose::STANDARD.encode(&cert_der)]});
            let claims = serde_json::json!({
                "iss": ISSUER, "sub": "vessel", "aud": SERVICE,
                "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", access.len()),
                "access": access,
            });
            let signing_input = format!(
                "{}.{}",
                b64(&serde_json::to_vec(&header).unwrap()),
                b64(&serde_json::to_vec(&claims).unwrap())
            );
            let rng = SystemRandom::new();
            let kp =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng).unwrap();
            let sig = kp.sign(&rng, signing_input.as_bytes()).unwrap();
            let jwt = format!("{signing_input}.{}", b64(sig.as_ref()));
            Resp::new(
                200,
                serde_json::to_vec(&serde_json::json!({"token": jwt, "expires_in": 300})).unwrap(),
            )
        }));
        TokenServer {
            fake,
            cert_pem: cert.pem(),
        }
    }

    pub fn realm(&self) -> String {
        format!("http://{}/token", self.fake.host())
    }
}
