//! Names of host-global objects (devices, nft chains). All derive from a caller-given prefix
//! so tests' objects are recognisable (`vt-...`) and the leak check can find leftovers.

use sha2::{Digest, Sha256};

/// Linux's IFNAMSIZ - 1.
pub const IFNAME_MAX: usize = 15;

/// Is `name` usable as a network device name? Err gives the reason.
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty name".into());
    }
    if name.len() > IFNAME_MAX {
        return Err(format!("longer than {IFNAME_MAX} characters"));
    }
    if name == "." || name == ".." {
        return Err("reserved name".into());
    }
    // The kernel refuses '/', ':' and whitespace; we also keep to characters that need
    // no quoting anywhere (nft, sysctl paths, logs).
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("only letters, digits, '-', '_' and '.' are allowed".into());
    }
    Ok(())
}

fn hex_digest(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

fn fit(prefix: &str, kind: char, digest: &str) -> String {
    let room = IFNAME_MAX.saturating_sub(prefix.len() + 1);
    format!("{prefix}{kind}{}", &digest[..room.min(digest.len())])
}

/// A network's default bridge name: prefix + `b` + hex of the network id.
pub fn bridge_name(prefix: &str, network_id: &str) -> String {
    fit(prefix, 'b', network_id)
}

/// The host end of a container's veth on a network: prefix + `v` + hash(container, network).
/// Deterministic, so a teardown after a crash finds the device again without any state.
pub fn veth_name(prefix: &str, container_id: &str, network_id: &str) -> String {
    fit(prefix, 'v', &hex_digest(&[container_id, network_id]))
}

/// The nft chain holding a container's DNAT rules on one network.
pub fn container_chain(container_id: &str, network_id: &str) -> String {
    format!("c-{}", &hex_digest(&[container_id, network_id])[..16])
}

/// The nft chains of a network.
pub fn network_chain(network_id: &str, what: &str) -> String {
    format!("n-{}-{what}", &network_id[..12.min(network_id.len())])
}

/// An nft table name derived from a prefix: `vessel-` → `vessel`, `vesseltest-1-2-x` stays.
pub fn table_name(prefix: &str) -> String {
    let t: String = prefix
        .trim_end_matches(['-', '_'])
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if t.is_empty() {
        "vessel".into()
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_ifnamsiz() {
        let v = veth_name("vsl", "abc", "def");
        assert_eq!(v.len(), 15);
        assert!(v.starts_with("vslv"));
        assert_eq!(v, veth_name("vsl", "abc", "def"));
        assert_ne!(v, veth_name("vsl", "abd", "def"));
        assert_eq!(
            bridge_name("vt-", "0123456789abcdef0123"),
            "vt-b0123456789a"
        );
        assert!(check_ifname("eth0").is_ok());
        assert!(check_ifname("a/b").is_err());
        assert!(check_ifname("0123456789abcdef").is_err());
        assert_eq!(table_name("vessel-"), "vessel");
        assert_eq!(table_name("vesseltest-12-3-net"), "vesseltest-12-3-net");
    }
}
