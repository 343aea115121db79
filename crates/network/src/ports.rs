//! `-p [ip:][hostPort:]containerPort[/tcp|udp|sctp]` — go-connections' `nat.ParsePortSpec`,
//! with its error messages, into typed port mappings.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "sctp" => Ok(Protocol::Sctp),
            _ => Err(Error::InvalidPort(format!("invalid proto: {s}"))),
        }
    }
}

/// One container port and how it is published.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// `None`: every host address (0.0.0.0 and, when the container has IPv6, [::]).
    pub host_ip: Option<IpAddr>,
    /// Host port range to pick from; `None` means any free port (dynamic). A single port
    /// is `(p, p)`; a range with one container port means "any free port in this range".
    pub host_port: Option<(u16, u16)>,
    pub container_port: u16,
    pub protocol: Protocol,
}

/// A mapping after a host port was chosen: what is actually installed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

impl PublishedPort {
    /// `0.0.0.0:8080` / `[::1]:8080` as docker prints it in "Bind for ... failed".
    pub fn host_display(&self) -> String {
        match self.host_ip {
            None => format!("0.0.0.0:{}", self.host_port),
            Some(IpAddr::V6(ip)) => format!("[{ip}]:{}", self.host_port),
            Some(ip) => format!("{ip}:{}", self.host_port),
        }
    }
}

/// go-connections' ParsePortRange: `80` or `8000-8010`; strict digits, 16-bit.
fn parse_range(s: &str) -> Option<(u16, u16)> {
    if s.is_empty() {
        return None;
    }
    let num = |x: &str| -> Option<u16> {
        if x.is_empty() || !x.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        x.parse().ok()
    };
    match s.split_once('-') {
        None => num(s).map(|p| (p, p)),
        Some((a, b)) => {
            let (a, b) = (num(a)?, num(b)?);
            (a <= b).then_some((a, b))
        }
    }
}

/// Parse one `-p` value into one mapping per container port (ranges expand, as in docker).
pub fn parse_port_spec(raw: &str) -> Result<Vec<PortMapping>> {
    let bad = |m: String| Error::InvalidPort(m);
    let parts: Vec<&str> = raw.split(':').collect();
    // IPv6 host addresses contain ':' themselves: the last two fields are the ports.
    let (ip, host_port, container) = match parts.len() {
        1 => (String::new(), "", parts[0]),
        2 => (String::new(), parts[0], parts[1]),
        n => (parts[..n - 2].join(":"), parts[n - 2], parts[n - 1]),
    };
    let (container, proto) = match container.split_once('/') {
        Some((p, proto)) => (
            p,
            if proto.is_empty() {
                "tcp".to_string()
            } else {
                proto.to_lowercase()
            },
        ),
        None => (container, "tcp".to_string()),
    };
    let protocol: Protocol = proto.parse()?;
    let mut ip = ip;
    if ip.starts_with('[') {
        match ip.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            Some(inner) => ip = inner.to_string(),
            None => {
                return Err(bad(format!(
                    "invalid IP address {ip}: missing ']' in address"
                )))
            }
        }
    }
    let host_ip = if ip.is_empty() {
        None
    } else {
        Some(IpAddr::from_str(&ip).map_err(|_| bad(format!("invalid IP address: {ip}")))?)
    };
    if container.is_empty() {
        return Err(bad(format!("no port specified: {raw}<empty>")));
    }
    let (start, end) = parse_range(container)
        .filter(|(s, _)| *s != 0)
        .ok_or_else(|| bad(format!("invalid containerPort: {container}")))?;
    let host = if host_port.is_empty() {
        None
    } else {
        let (hs, he) =
            parse_range(host_port).ok_or_else(|| bad(format!("invalid hostPort: {host_port}")))?;
        // A host range with a single container port means "pick one in the range".
        if end - start != he - hs && end != start {
            return Err(bad(format!(
                "invalid ranges specified for container and host Ports: {container} and {host_port}"
            )));
        }
        Some((hs, he))
    };
    let count = end - start + 1;
    let host_ip = host_ip.filter(|ip| !ip.is_unspecified()).or(None);
    Ok((0..count)
        .map(|i| PortMapping {
            host_ip,
            host_port: match host {
                None => None,
                Some((hs, he)) if count == 1 => Some((hs, he)),
                Some((hs, _)) => Some((hs + i, hs + i)),
            },
            container_port: start + i,
            protocol,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(s: &str) -> String {
        parse_port_spec(s).expect_err(s).to_string()
    }

    #[test]
    fn docker_errors() {
        assert_eq!(e("99999"), "invalid containerPort: 99999");
        assert_eq!(e("80:99999"), "invalid containerPort: 99999");
        assert_eq!(e("99999:80"), "invalid hostPort: 99999");
        assert_eq!(e("1.2.3:80:80"), "invalid IP address: 1.2.3");
        assert_eq!(e("80/icmp"), "invalid proto: icmp");
        assert_eq!(
            e("8000-8002:80-81"),
            "invalid ranges specified for container and host Ports: 80-81 and 8000-8002"
        );
        assert_eq!(
            e("127.0.0.1:80:"),
            "no port specified: 127.0.0.1:80:<empty>"
        );
        assert_eq!(e("90-80"), "invalid containerPort: 90-80");
        assert_eq!(e("abc"), "invalid containerPort: abc");
    }

    #[test]
    fn forms() {
        let m = parse_port_spec("80").unwrap();
        assert_eq!(
            m,
            vec![PortMapping {
                host_ip: None,
                host_port: None,
                container_port: 80,
                protocol: Protocol::Tcp
            }]
        );
        let m = parse_port_spec("127.0.0.1:8080:80/UDP").unwrap();
        assert_eq!(m[0].host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(m[0].host_port, Some((8080, 8080)));
        assert_eq!(m[0].protocol, Protocol::Udp);
        let m = parse_port_spec("[::1]:8080:80").unwrap();
        assert_eq!(m[0].host_ip, Some("::1".parse().unwrap()));
        let m = parse_port_spec("::1:8080:80").unwrap();
        assert_eq!(m[0].host_ip, Some("::1".parse().unwrap()));
        let m = parse_port_spec("8000-8002:80-82/sctp").unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(
            (m[2].host_port, m[2].container_port),
            (Some((8002, 8002)), 82)
        );
        let m = parse_port_spec("8000-8010:80").unwrap();
        assert_eq!(m[0].host_port, Some((8000, 8010)));
        let m = parse_port_spec("0.0.0.0:8080:80").unwrap();
        assert_eq!(m[0].host_ip, None);
    }
}
