//! The registry's `WWW-Authenticate` header: any value parses to a challenge or to none,
//! without panicking and in time linear in its length; and a Bearer challenge built from
//! any realm, service and scope (quoted and escaped as RFC 9110 says) parses back to them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vessel_image::registry::auth::{parse_challenge, Challenge};

fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fuzz_target!(|data: &[u8]| {
    // reqwest hands the client `HeaderValue::to_str`, which is visible ASCII; take any UTF-8
    // so the parser's char handling is covered as well.
    let Ok(h) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(Challenge::Bearer { realm, .. }) = parse_challenge(h) {
        // A realm is a value taken from the header, never invented.
        assert!(realm.len() <= h.len(), "realm longer than the header");
    }

    let mut parts = h.split('\0');
    let (Some(realm), Some(service), Some(scope)) = (parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let header = format!(
        "Bearer realm={},service={},scope={}",
        quoted(realm),
        quoted(service),
        quoted(scope)
    );
    assert_eq!(
        parse_challenge(&header),
        Some(Challenge::Bearer {
            realm: realm.to_string(),
            service: Some(service.to_string()),
            scope: Some(scope.to_string()),
        }),
        "header {header:?}"
    );
});
