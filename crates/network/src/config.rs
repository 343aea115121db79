//! Network configuration: the request as docker's API and CLI carry it (strings), and the
//! validated [`Network`] that everything else works with. Validation happens here, before
//! anything on the host is touched, and rejects bad input with docker's own wording.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::names;

/// `-o com.docker.network.bridge.name=NAME`: the bridge device's name.
pub const OPT_BRIDGE_NAME: &str = "com.docker.network.bridge.name";
/// `-o com.docker.network.driver.mtu=N`: MTU of the bridge and of every veth on it.
pub const OPT_MTU: &str = "com.docker.network.driver.mtu";
/// `-o com.docker.network.bridge.enable_ip_masquerade=false` turns outbound NAT off.
pub const OPT_MASQUERADE: &str = "com.docker.network.bridge.enable_ip_masquerade";

/// Docker's default MTU; docker does not follow the uplink's MTU unless told (`-o ...mtu`).
pub const DEFAULT_MTU: u32 = 1500;

/// One `IPAM.Config` entry of a create request, as strings (empty = not given).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamConfig {
    pub subnet: String,
    pub ip_range: String,
    pub gateway: String,
}

/// A `network create` request, shaped like docker's `NetworkCreateRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkCreate {
    pub name: String,
    /// `bridge` (or empty, meaning bridge); nothing else is implemented.
    pub driver: String,
    pub ipam: Vec<IpamConfig>,
    pub internal: bool,
    pub enable_ipv6: bool,
    pub labels: BTreeMap<String, String>,
    /// Driver options (`-o`): [`OPT_BRIDGE_NAME`], [`OPT_MTU`], [`OPT_MASQUERADE`].
    pub options: BTreeMap<String, String>,
}

/// One validated subnet of a network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    pub subnet: IpNet,
    pub gateway: IpAddr,
    /// Dynamic allocation stays inside this block when it is set (`--ip-range`);
    /// a requested `--ip` may be anywhere in the subnet, as in docker.
    pub ip_range: Option<IpNet>,
}

impl Subnet {
    /// The gateway with the subnet's prefix length, as it is put on the bridge.
    pub fn gateway_net(&self) -> IpNet {
        // Cannot fail: the prefix length comes from a valid net of the same family.
        IpNet::new(self.gateway, self.subnet.prefix_len()).unwrap_or(self.subnet)
    }

    pub fn is_v6(&self) -> bool {
        matches!(self.subnet, IpNet::V6(_))
    }
}

/// A validated bridge network: what the engine stores and hands to [`crate::Host`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// 64 hex digits, like docker's network ids.
    pub id: String,
    pub name: String,
    pub driver: String,
    /// The Linux bridge device.
    pub bridge: String,
    pub subnets: Vec<Subnet>,
    pub internal: bool,
    pub ipv6: bool,
    pub mtu: u32,
    /// Outbound NAT (docker's `enable_ip_masquerade`, on by default, off when internal).
    pub masquerade: bool,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
}

impl Network {
    /// The first subnet of the given family.
    pub fn subnet_v4(&self) -> Option<&Subnet> {
        self.subnets.iter().find(|s| !s.is_v6())
    }

    pub fn subnet_v6(&self) -> Option<&Subnet> {
        self.subnets.iter().find(|s| s.is_v6())
    }

    /// The first 12 hex digits of the id, used in nft chain and device names.
    pub fn short_id(&self) -> &str {
        &self.id[..12.min(self.id.len())]
    }
}

/// The docker CLI's `consolidateIpam`: pair `--subnet`, `--ip-range` and `--gateway` flags
/// by containment, with the CLI's errors ("no matching subnet for gateway 10.1.0.1").
pub fn consolidate_ipam(
    subnets: &[String],
    ranges: &[String],
    gateways: &[String],
) -> Result<Vec<IpamConfig>> {
    let bad = |m: String| Error::InvalidConfig(m);
    if subnets.len() < ranges.len() || subnets.len() < gateways.len() {
        return Err(bad(
            "every ip-range or gateway must have a corresponding subnet".into(),
        ));
    }
    let mut out: Vec<IpamConfig> = Vec::new();
    for s in subnets {
        for k in &out {
            if subnet_matches(s, &k.subnet)? || subnet_matches(&k.subnet, s)? {
                return Err(bad(
                    "multiple overlapping subnet configuration is not supported".into(),
                ));
            }
        }
        out.push(IpamConfig {
            subnet: s.clone(),
            ..Default::default()
        });
    }
    for r in ranges {
        if !r.contains('/') {
            // docker/cli#5483: a range must be a CIDR block.
            return Err(bad(format!("invalid CIDR address: {r}")));
        }
        let mut matched = false;
        for cfg in out.iter_mut() {
            if !subnet_matches(&cfg.subnet, r)? {
                continue;
            }
            if !cfg.ip_range.is_empty() {
                return Err(bad(format!(
                    "cannot configure multiple ranges ({r}, {}) on the same subnet ({})",
                    cfg.ip_range, cfg.subnet
                )));
            }
            cfg.ip_range = r.clone();
            matched = true;
        }
        if !matched {
            return Err(bad(format!("no matching subnet for range {r}")));
        }
    }
    for g in gateways {
        let mut matched = false;
        for cfg in out.iter_mut() {
            if !subnet_matches(&cfg.subnet, g)? {
                continue;
            }
            if !cfg.gateway.is_empty() {
                return Err(bad(format!(
                    "cannot configure multiple gateways ({g}, {}) for the same subnet ({})",
                    cfg.gateway, cfg.subnet
                )));
            }
            cfg.gateway = g.clone();
            matched = true;
        }
        if !matched {
            return Err(bad(format!("no matching subnet for gateway {g}")));
        }
    }
    Ok(out)
}

/// The CLI's `subnetMatches`: does `subnet` contain the address (or the base of the CIDR)
/// in `data`?
fn subnet_matches(subnet: &str, data: &str) -> Result<bool> {
    let s = parse_go_cidr(subnet).ok_or_else(|| {
        Error::InvalidConfig(format!("invalid subnet: invalid CIDR address: {subnet}"))
    })?;
    let ip = if data.contains('/') {
        parse_go_cidr(data)
            .ok_or_else(|| Error::InvalidConfig(format!("invalid CIDR address: {data}")))?
            .addr()
    } else {
        match IpAddr::from_str(data) {
            Ok(ip) => ip,
            // Go's ParseIP yields nil and Contains(nil) is false: "no matching subnet".
            Err(_) => return Ok(false),
        }
    };
    Ok(s.trunc().contains(&ip))
}

/// Parse `addr/len` keeping the address as written (host bits and all), like Go's
/// `netip.ParsePrefix`.
fn parse_go_cidr(s: &str) -> Option<IpNet> {
    let (addr, len) = s.split_once('/')?;
    if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let addr = IpAddr::from_str(addr).ok()?;
    IpNet::new(addr, len.parse().ok()?).ok()
}

/// The inputs that validation needs from the outside world, so it stays a pure function.
pub struct ValidateEnv<'a> {
    /// Networks that already exist (their subnets and bridges must not be reused).
    pub existing: &'a [Network],
    /// The host's routes: automatically chosen subnets avoid them, as docker's do.
    pub host_routes: &'a [IpNet],
    /// Prefix for generated device names ([`crate::Context::link_prefix`]).
    pub link_prefix: &'a str,
}

/// Docker's local default address pools: 172.17-31.0.0/16, then 192.168.0.0/16 in /20s.
fn default_pools_v4() -> impl Iterator<Item = Ipv4Net> {
    let big = (17u8..=31).filter_map(|b| Ipv4Net::new(Ipv4Addr::new(172, b, 0, 0), 16).ok());
    let small = (0u8..16).filter_map(|i| Ipv4Net::new(Ipv4Addr::new(192, 168, i * 16, 0), 20).ok());
    big.chain(small)
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Validate a create request into a [`Network`]. Nothing on the host is changed.
pub fn validate_network(req: &NetworkCreate, env: &ValidateEnv<'_>) -> Result<Network> {
    let bad = |m: String| Error::InvalidConfig(m);
    if req.name.is_empty() {
        return Err(bad("network name is required".into()));
    }
    if !valid_network_name(&req.name) {
        return Err(bad(format!(
            "invalid network name \"{}\": only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed",
            req.name
        )));
    }
    if env.existing.iter().any(|n| n.name == req.name) {
        return Err(Error::NetworkExists(req.name.clone()));
    }
    let driver = if req.driver.is_empty() {
        "bridge"
    } else {
        req.driver.as_str()
    };
    if driver != "bridge" {
        return Err(bad(format!("plugin \"{driver}\" not found")));
    }

    // moby's ValidateIPAM: collect every problem, report them together.
    let mut errs: Vec<String> = Vec::new();
    let mut subnets: Vec<Subnet> = Vec::new();
    for cfg in &req.ipam {
        match validate_ipam_entry(cfg) {
            Ok(s) => subnets.push(s),
            Err(mut e) => errs.append(&mut e),
        }
    }
    if !errs.is_empty() {
        let joined = if errs.len() == 1 {
            errs.remove(0)
        } else {
            format!("* {}", errs.join("\n* "))
        };
        return Err(bad(format!("invalid network config:\n{joined}")));
    }
    for (i, a) in subnets.iter().enumerate() {
        for b in &subnets[..i] {
            if overlaps(&a.subnet, &b.subnet) {
                return Err(bad(
                    "multiple overlapping subnet configuration is not supported".into(),
                ));
            }
        }
    }
    let taken: Vec<IpNet> = env
        .existing
        .iter()
        .flat_map(|n| n.subnets.iter().map(|s| s.subnet))
        .collect();
    if subnets
        .iter()
        .any(|s| taken.iter().any(|t| overlaps(&s.subnet, t)))
    {
        return Err(Error::PoolOverlap);
    }

    // An IPv6 subnet implies IPv6, as in podman; docker would silently ignore it.
    let ipv6 = req.enable_ipv6 || subnets.iter().any(Subnet::is_v6);
    if !subnets.iter().any(|s| !s.is_v6()) {
        let pool = default_pools_v4()
            .map(IpNet::V4)
            .find(|p| !taken.iter().chain(env.host_routes).any(|t| overlaps(p, t)))
            .ok_or(Error::NoDefaultPool)?;
        subnets.insert(0, auto_subnet(pool));
    }
    if ipv6 && !subnets.iter().any(Subnet::is_v6) {
        // A random unique-local /64 (RFC 4193), like docker's and podman's default.
        let pool = loop {
            let r: [u8; 5] = rand::random();
            let addr = Ipv6Addr::new(
                0xfd00 | r[0] as u16,
                u16::from_be_bytes([r[1], r[2]]),
                u16::from_be_bytes([r[3], r[4]]),
                0,
                0,
                0,
                0,
                0,
            );
            let net = IpNet::V6(Ipv6Net::new(addr, 64).map_err(|e| bad(e.to_string()))?);
            if !taken.iter().any(|t| overlaps(&net, t)) {
                break net;
            }
        };
        subnets.push(auto_subnet(pool));
    }

    let mtu = match req.options.get(OPT_MTU) {
        None => DEFAULT_MTU,
        Some(v) => {
            let n: i64 = v.trim().parse().map_err(|_| {
                bad(format!("failed to parse {OPT_MTU} value: {v} (strconv.Atoi: parsing \"{v}\": invalid syntax)"))
            })?;
            // 68 is the kernel's IPv4 minimum; docker's ErrInvalidMtu wording.
            if !(68..=65535).contains(&n) {
                return Err(bad(format!("invalid MTU number: {n}")));
            }
            n as u32
        }
    };
    let masquerade = match req.options.get(OPT_MASQUERADE).map(String::as_str) {
        None => true,
        Some("true" | "1") => true,
        Some("false" | "0") => false,
        Some(v) => {
            return Err(bad(format!(
                "failed to parse {OPT_MASQUERADE} value: {v} (strconv.ParseBool: parsing \"{v}\": invalid syntax)"
            )))
        }
    } && !req.internal;

    let id = random_id();
    let bridge = match req.options.get(OPT_BRIDGE_NAME) {
        Some(b) => {
            names::check_ifname(b).map_err(|m| bad(format!("invalid bridge name {b}: {m}")))?;
            b.clone()
        }
        None => names::bridge_name(env.link_prefix, &id),
    };
    if let Some(other) = env.existing.iter().find(|n| n.bridge == bridge) {
        return Err(Error::BridgeNameConflict {
            name: req.name.clone(),
            bridge,
            other: other.name.clone(),
        });
    }

    Ok(Network {
        id,
        name: req.name.clone(),
        driver: driver.to_string(),
        bridge,
        subnets,
        internal: req.internal,
        ipv6,
        mtu,
        masquerade,
        labels: req.labels.clone(),
        options: req.options.clone(),
    })
}

fn auto_subnet(net: IpNet) -> Subnet {
    let gateway = crate::ipam::nth_host(&net, 1);
    Subnet {
        subnet: net,
        gateway,
        ip_range: None,
    }
}

fn valid_network_name(n: &str) -> bool {
    let mut b = n.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphanumeric())
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn random_id() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

fn family(ip: &IpAddr) -> &'static str {
    if ip.is_ipv6() {
        "IPv6"
    } else {
        "IPv4"
    }
}

/// One entry of moby's ValidateIPAM; the messages are moby's.
fn validate_ipam_entry(cfg: &IpamConfig) -> Result<Subnet, Vec<String>> {
    let Some(raw) = parse_go_cidr(&cfg.subnet) else {
        return Err(vec![format!(
            "invalid subnet {}: invalid CIDR block notation",
            cfg.subnet
        )]);
    };
    let fam = family(&raw.addr());
    let mut errs = Vec::new();
    let subnet = raw.trunc();
    if raw.addr() != subnet.addr() {
        errs.push(format!("invalid subnet {raw}: it should be {subnet}"));
    }
    let mut ip_range = None;
    if !cfg.ip_range.is_empty() {
        match parse_go_cidr(&cfg.ip_range) {
            None => errs.push(format!(
                "invalid ip-range {}: invalid CIDR block notation",
                cfg.ip_range
            )),
            Some(r) if family(&r.addr()) != fam => errs.push(format!(
                "invalid ip-range {}: parent subnet is an {fam} block",
                cfg.ip_range
            )),
            Some(r) => {
                if r.prefix_len() < subnet.prefix_len() {
                    errs.push(format!(
                        "invalid ip-range {}: CIDR block is bigger than its parent subnet {subnet}",
                        cfg.ip_range
                    ));
                }
                if r.addr() != r.trunc().addr() {
                    errs.push(format!("invalid ip-range {r}: it should be {}", r.trunc()));
                }
                if !overlaps(&subnet, &r.trunc()) {
                    errs.push(format!(
                        "invalid ip-range {}: parent subnet {subnet} doesn't contain ip-range",
                        cfg.ip_range
                    ));
                }
                ip_range = Some(r.trunc());
            }
        }
    }
    let mut gateway = None;
    if !cfg.gateway.is_empty() {
        match IpAddr::from_str(&cfg.gateway) {
            Err(_) => errs.push(format!("invalid gateway {}: invalid address", cfg.gateway)),
            Ok(g) if family(&g) != fam => errs.push(format!(
                "invalid gateway {}: parent subnet is an {fam} block",
                cfg.gateway
            )),
            Ok(g) if !subnet.contains(&g) => errs.push(format!(
                "invalid gateway {}: parent subnet {subnet} doesn't contain this address",
                cfg.gateway
            )),
            Ok(g) => gateway = Some(g),
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let gateway = gateway.unwrap_or_else(|| crate::ipam::nth_host(&subnet, 1));
    if crate::ipam::host_count(&subnet) < 2 {
        // Room for at least the gateway and one container (libnetwork: ErrNoAvailableIPs).
        return Err(vec![format!(
            "invalid subnet {subnet}: no addresses left for containers"
        )]);
    }
    Ok(Subnet {
        subnet,
        gateway,
        ip_range,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> ValidateEnv<'static> {
        ValidateEnv {
            existing: &[],
            host_routes: &[],
            link_prefix: "vt-",
        }
    }

    fn req(subnet: &str, gw: &str, range: &str) -> NetworkCreate {
        NetworkCreate {
            name: "n1".into(),
            ipam: vec![IpamConfig {
                subnet: subnet.into(),
                gateway: gw.into(),
                ip_range: range.into(),
            }],
            ..Default::default()
        }
    }

    fn err(r: Result<Network>) -> String {
        r.expect_err("should fail").to_string()
    }

    #[test]
    fn subnet_errors_use_moby_wording() {
        assert_eq!(
            err(validate_network(&req("10.0.0.0/33", "", ""), &env())),
            "invalid network config:\ninvalid subnet 10.0.0.0/33: invalid CIDR block notation"
        );
        assert_eq!(
            err(validate_network(&req("10.0.0.1/24", "", ""), &env())),
            "invalid network config:\ninvalid subnet 10.0.0.1/24: it should be 10.0.0.0/24"
        );
        assert_eq!(
            err(validate_network(&req("10.0.0.0/24", "10.0.1.1", ""), &env())),
            "invalid network config:\ninvalid gateway 10.0.1.1: parent subnet 10.0.0.0/24 doesn't contain this address"
        );
        let e = err(validate_network(
            &req("10.0.0.0/24", "zz", "10.0.0.0/16"),
            &env(),
        ));
        assert_eq!(
            e,
            "invalid network config:\n* invalid ip-range 10.0.0.0/16: CIDR block is bigger than its parent subnet 10.0.0.0/24\n* invalid gateway zz: invalid address"
        );
    }

    #[test]
    fn cli_consolidation_errors() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            consolidate_ipam(&s(&["10.1.0.0/16"]), &[], &s(&["10.2.0.1"]))
                .unwrap_err()
                .to_string(),
            "no matching subnet for gateway 10.2.0.1"
        );
        assert_eq!(
            consolidate_ipam(&s(&["10.1.0.0/16"]), &s(&["10.3.0.0/24"]), &[])
                .unwrap_err()
                .to_string(),
            "no matching subnet for range 10.3.0.0/24"
        );
        assert_eq!(
            consolidate_ipam(&s(&["10.1.0.0/16", "10.1.2.0/24"]), &[], &[])
                .unwrap_err()
                .to_string(),
            "multiple overlapping subnet configuration is not supported"
        );
        assert_eq!(
            consolidate_ipam(&s(&["10.0.0.0/33"]), &[], &s(&["10.0.0.1"]))
                .unwrap_err()
                .to_string(),
            "invalid subnet: invalid CIDR address: 10.0.0.0/33"
        );
        assert_eq!(
            consolidate_ipam(&[], &[], &s(&["10.0.0.1"]))
                .unwrap_err()
                .to_string(),
            "every ip-range or gateway must have a corresponding subnet"
        );
        let ok = consolidate_ipam(
            &s(&["10.1.0.0/16", "fd00:1::/64"]),
            &s(&["10.1.4.0/24"]),
            &s(&["fd00:1::9"]),
        )
        .unwrap();
        assert_eq!(ok[0].ip_range, "10.1.4.0/24");
        assert_eq!(ok[1].gateway, "fd00:1::9");
    }

    #[test]
    fn overlap_and_name_conflicts() {
        let first = validate_network(&req("10.5.0.0/16", "", ""), &env()).unwrap();
        assert_eq!(first.subnets[0].gateway.to_string(), "10.5.0.1");
        assert!(first.bridge.starts_with("vt-b") && first.bridge.len() <= 15);
        let existing = [first];
        let env2 = ValidateEnv {
            existing: &existing,
            host_routes: &[],
            link_prefix: "vt-",
        };
        let mut r = req("10.5.3.0/24", "", "");
        r.name = "n2".into();
        assert_eq!(
            err(validate_network(&r, &env2)),
            "Pool overlaps with other one on this address space"
        );
        assert_eq!(
            err(validate_network(&req("10.6.0.0/24", "", ""), &env2)),
            "network with name n1 already exists"
        );
        r = req("10.7.0.0/24", "", "");
        r.name = "n3".into();
        r.options
            .insert(OPT_BRIDGE_NAME.into(), existing[0].bridge.clone());
        assert!(err(validate_network(&r, &env2)).ends_with("networks have same bridge name"));
    }

    #[test]
    fn defaults_and_options() {
        let routes = ["172.17.0.0/16".parse().unwrap()];
        let env = ValidateEnv {
            existing: &[],
            host_routes: &routes,
            link_prefix: "vt-",
        };
        let mut r = NetworkCreate {
            name: "d".into(),
            enable_ipv6: true,
            ..Default::default()
        };
        let n = validate_network(&r, &env).unwrap();
        assert_eq!(n.subnets[0].subnet.to_string(), "172.18.0.0/16");
        assert!(n.subnet_v6().unwrap().subnet.to_string().starts_with("fd"));
        assert_eq!(n.mtu, DEFAULT_MTU);
        r.options.insert(OPT_MTU.into(), "99999".into());
        assert_eq!(err(validate_network(&r, &env)), "invalid MTU number: 99999");
        r.options.insert(OPT_MTU.into(), "abc".into());
        assert!(err(validate_network(&r, &env))
            .starts_with("failed to parse com.docker.network.driver.mtu value: abc"));
        r.options.insert(OPT_MTU.into(), "1400".into());
        r.options
            .insert(OPT_BRIDGE_NAME.into(), "this-name-is-too-long".into());
        assert!(err(validate_network(&r, &env))
            .starts_with("invalid bridge name this-name-is-too-long"));
        r.options.remove(OPT_BRIDGE_NAME);
        r.internal = true;
        let n = validate_network(&r, &env).unwrap();
        assert_eq!(n.mtu, 1400);
        assert!(!n.masquerade);
        r.driver = "overlay".into();
        assert_eq!(
            err(validate_network(&r, &env)),
            "plugin \"overlay\" not found"
        );
    }
}
