//! IP address management and host-port reservations, persisted in SQLite.
//!
//! Every allocation runs in one `BEGIN IMMEDIATE` transaction: SQLite takes the write lock
//! before reading which addresses are used, so concurrent allocators — threads or separate
//! `vessel` processes — serialise on the lock and never hand out the same address. The
//! database is a file in the caller's state dir, so leases survive crashes and restarts.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::config::{Network, Subnet};
use crate::error::{Error, Result};
use crate::ports::{PortMapping, PublishedPort};

/// The file under the state dir.
pub const DB_FILE: &str = "network.db";

/// Who holds the gateway address of a network.
pub const GATEWAY_OWNER: &str = "<gateway>";

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_u128(v6: bool, n: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(n))
    } else {
        IpAddr::V4(Ipv4Addr::from(n as u32))
    }
}

/// First and last address a container may get in `net`: the network address is never
/// handed out, nor the IPv4 broadcast address.
fn usable_bounds(net: &IpNet) -> Option<(u128, u128)> {
    let lo = to_u128(net.network());
    let hi = to_u128(net.broadcast());
    let (first, last) = match net {
        // /31 and /32 have no network/broadcast to skip, but also no room for a gateway
        // and a container; keep the arithmetic uniform and let callers see "no room".
        IpNet::V4(_) => (lo + 1, hi.saturating_sub(1)),
        IpNet::V6(_) => (lo + 1, hi),
    };
    (first <= last).then_some((first, last))
}

/// The n-th address of a network (n = 1: the first host, the default gateway).
pub fn nth_host(net: &IpNet, n: u128) -> IpAddr {
    from_u128(matches!(net, IpNet::V6(_)), to_u128(net.network()) + n)
}

/// How many addresses containers and the gateway can use in `net` (saturating).
pub fn host_count(net: &IpNet) -> u128 {
    usable_bounds(net).map_or(0, |(a, b)| (b - a).saturating_add(1))
}

/// One address lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub network_id: String,
    pub address: IpAddr,
    pub owner: String,
}

/// The lease database. One per process is fine, one per thread too; it is not `Sync`.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Open (creating it if needed) the database under `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(state_dir)
            .map_err(|e| Error::io(format!("create state dir {}", state_dir.display()), e))?;
        let path = state_dir.join(DB_FILE);
        // Opening races with another process's last connection closing (which removes the
        // -wal/-shm files) can fail with SQLITE_CANTOPEN/BUSY for a moment: retry briefly.
        let mut attempt = 0;
        loop {
            match Self::open_once(&path) {
                Ok(conn) => return Ok(Store { conn, path }),
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if attempt < 100
                        && matches!(
                            e.code,
                            rusqlite::ErrorCode::CannotOpen
                                | rusqlite::ErrorCode::DatabaseBusy
                                | rusqlite::ErrorCode::DatabaseLocked
                        ) =>
                {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn open_once(path: &Path) -> rusqlite::Result<Connection> {
        let conn = Connection::open(path)?;
        // Waiting on the write lock is the point (concurrent allocators); give up only
        // after a long time, never immediately with SQLITE_BUSY.
        conn.busy_timeout(Duration::from_secs(60))?;
        // WAL is persistent in the file: switch only once (the switch takes a lock).
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            conn.pragma_update(None, "journal_mode", "WAL")?;
        }
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS leases (
                 network_id TEXT NOT NULL, address TEXT NOT NULL, owner TEXT NOT NULL,
                 PRIMARY KEY (network_id, address));
             CREATE INDEX IF NOT EXISTS leases_owner ON leases (network_id, owner);
             CREATE TABLE IF NOT EXISTS cursors (
                 network_id TEXT NOT NULL, subnet TEXT NOT NULL, last TEXT NOT NULL,
                 PRIMARY KEY (network_id, subnet));
             CREATE TABLE IF NOT EXISTS ports (
                 protocol TEXT NOT NULL, host_ip TEXT NOT NULL, host_port INTEGER NOT NULL,
                 container_port INTEGER NOT NULL, owner TEXT NOT NULL, network_id TEXT NOT NULL,
                 PRIMARY KEY (protocol, host_ip, host_port));",
        )?;
        Ok(conn)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Record the network's gateway so no container gets it. Idempotent.
    pub fn reserve_gateways(&mut self, net: &Network) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        for s in &net.subnets {
            tx.execute(
                "INSERT OR IGNORE INTO leases (network_id, address, owner) VALUES (?1, ?2, ?3)",
                params![net.id, s.gateway.to_string(), GATEWAY_OWNER],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Lease one address of `subnet` to `owner`: `requested` if given (refused with
    /// docker's "Address already in use" when taken), otherwise the next free address after
    /// the last one handed out (so a released address is not reused at once, as in
    /// libnetwork), inside the ip-range when there is one.
    pub fn allocate(
        &mut self,
        net: &Network,
        subnet: &Subnet,
        owner: &str,
        requested: Option<IpAddr>,
    ) -> Result<IpAddr> {
        let v6 = subnet.is_v6();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let taken = |addr: &IpAddr| -> Result<bool> {
            Ok(tx
                .query_row(
                    "SELECT 1 FROM leases WHERE network_id = ?1 AND address = ?2",
                    params![net.id, addr.to_string()],
                    |_| Ok(()),
                )
                .optional()?
                .is_some())
        };
        let addr = if let Some(ip) = requested {
            if !subnet.subnet.contains(&ip) {
                return Err(Error::AddressNotInSubnet(ip));
            }
            let (first, last) = usable_bounds(&subnet.subnet).ok_or(Error::AddressOutOfRange)?;
            let n = to_u128(ip);
            if n < first || n > last {
                return Err(Error::AddressOutOfRange);
            }
            if ip == subnet.gateway || taken(&ip)? {
                return Err(Error::AddressInUse);
            }
            ip
        } else {
            let pool = subnet.ip_range.unwrap_or(subnet.subnet);
            let (first, last) = usable_bounds(&pool).ok_or(Error::NoAvailableAddresses)?;
            let used: HashSet<u128> = {
                let mut st = tx.prepare("SELECT address FROM leases WHERE network_id = ?1")?;
                let rows = st.query_map(params![net.id], |r| r.get::<_, String>(0))?;
                let mut set = HashSet::new();
                for a in rows {
                    if let Ok(ip) = a?.parse::<IpAddr>() {
                        set.insert(to_u128(ip));
                    }
                }
                set.insert(to_u128(subnet.gateway));
                set
            };
            let key = pool.to_string();
            let cursor: Option<u128> = tx
                .query_row(
                    "SELECT last FROM cursors WHERE network_id = ?1 AND subnet = ?2",
                    params![net.id, key],
                    |r| r.get::<_, String>(0),
                )
                .optional()?
                .and_then(|s| s.parse::<IpAddr>().ok())
                .map(to_u128);
            let size = last - first + 1;
            let start = match cursor {
                Some(c) if c >= first && c < last => c + 1,
                _ => first,
            };
            // At most |used| + 1 candidates are taken before a free one turns up, so the
            // scan is short even in a /64.
            let tries = size.min(used.len() as u128 + 1);
            let mut found = None;
            for i in 0..tries {
                let n = first + (start - first + i) % size;
                if !used.contains(&n) {
                    found = Some(n);
                    break;
                }
            }
            let n = found.ok_or(Error::NoAvailableAddresses)?;
            tx.execute(
                "INSERT INTO cursors (network_id, subnet, last) VALUES (?1, ?2, ?3)
                 ON CONFLICT (network_id, subnet) DO UPDATE SET last = excluded.last",
                params![net.id, key, from_u128(v6, n).to_string()],
            )?;
            from_u128(v6, n)
        };
        tx.execute(
            "INSERT INTO leases (network_id, address, owner) VALUES (?1, ?2, ?3)",
            params![net.id, addr.to_string(), owner],
        )?;
        tx.commit()?;
        Ok(addr)
    }

    /// Give one address back. Returns whether it was leased.
    pub fn release(&mut self, network_id: &str, addr: IpAddr) -> Result<bool> {
        let n = self.conn.execute(
            "DELETE FROM leases WHERE network_id = ?1 AND address = ?2",
            params![network_id, addr.to_string()],
        )?;
        Ok(n > 0)
    }

    /// Give back everything `owner` holds on a network (addresses and host ports).
    pub fn release_owner(&mut self, network_id: &str, owner: &str) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "DELETE FROM leases WHERE network_id = ?1 AND owner = ?2",
            params![network_id, owner],
        )?;
        tx.execute(
            "DELETE FROM ports WHERE network_id = ?1 AND owner = ?2",
            params![network_id, owner],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Forget a network entirely (after `network rm`).
    pub fn forget_network(&mut self, network_id: &str) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        for t in ["leases", "cursors", "ports"] {
            tx.execute(
                &format!("DELETE FROM {t} WHERE network_id = ?1"),
                params![network_id],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// All leases of a network, the gateway's included.
    pub fn leases(&self, network_id: &str) -> Result<Vec<Lease>> {
        let mut st = self
            .conn
            .prepare("SELECT address, owner FROM leases WHERE network_id = ?1 ORDER BY address")?;
        let rows = st.query_map(params![network_id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (a, owner) = row?;
            if let Ok(address) = a.parse() {
                out.push(Lease {
                    network_id: network_id.to_string(),
                    address,
                    owner,
                });
            }
        }
        Ok(out)
    }

    /// Reserve host ports for `mappings` in one transaction: all or none. Fixed ports that
    /// are taken fail with docker's "Bind for 0.0.0.0:8080 failed: port is already
    /// allocated"; dynamic ones take the first free port of their range (or of `dynamic`,
    /// the host's ephemeral range, when they have none).
    pub fn reserve_ports(
        &mut self,
        network_id: &str,
        owner: &str,
        mappings: &[PortMapping],
        dynamic: (u16, u16),
    ) -> Result<Vec<PublishedPort>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut out = Vec::new();
        for m in mappings {
            let ip = m.host_ip.map(|i| i.to_string()).unwrap_or_default();
            let proto = m.protocol.as_str();
            // A wildcard binding conflicts with every address on that port and vice versa.
            let in_use = |port: u16| -> Result<bool> {
                Ok(tx
                    .query_row(
                        "SELECT 1 FROM ports WHERE protocol = ?1 AND host_port = ?2
                         AND (host_ip = ?3 OR host_ip = '' OR ?3 = '')",
                        params![proto, port, ip],
                        |_| Ok(()),
                    )
                    .optional()?
                    .is_some())
            };
            let (lo, hi) = m.host_port.unwrap_or(dynamic);
            let mut chosen = None;
            for p in lo..=hi {
                if p != 0 && !in_use(p)? {
                    chosen = Some(p);
                    break;
                }
            }
            let port = match chosen {
                Some(p) => p,
                None if lo == hi => {
                    let shown = PublishedPort {
                        host_ip: m.host_ip,
                        host_port: lo,
                        container_port: m.container_port,
                        protocol: m.protocol,
                    };
                    return Err(Error::PortAllocated(shown.host_display()));
                }
                None => return Err(Error::NoAvailablePort(lo, hi)),
            };
            tx.execute(
                "INSERT INTO ports (protocol, host_ip, host_port, container_port, owner, network_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![proto, ip, port, m.container_port, owner, network_id],
            )?;
            out.push(PublishedPort {
                host_ip: m.host_ip,
                host_port: port,
                container_port: m.container_port,
                protocol: m.protocol,
            });
        }
        tx.commit()?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{validate_network, IpamConfig, NetworkCreate, ValidateEnv};

    fn net(subnet: &str, range: &str) -> Network {
        let req = NetworkCreate {
            name: "t".into(),
            ipam: vec![IpamConfig {
                subnet: subnet.into(),
                ip_range: range.into(),
                gateway: String::new(),
            }],
            ..Default::default()
        };
        validate_network(
            &req,
            &ValidateEnv {
                existing: &[],
                host_routes: &[],
                link_prefix: "vt-",
            },
        )
        .unwrap()
    }

    #[test]
    fn sequential_allocation_skips_gateway_and_broadcast() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = Store::open(dir.path()).unwrap();
        let n = net("10.9.0.0/29", "");
        st.reserve_gateways(&n).unwrap();
        let s = &n.subnets[0];
        let got: Vec<String> = (0..5)
            .map(|i| {
                st.allocate(&n, s, &format!("c{i}"), None)
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            got,
            ["10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5", "10.9.0.6"]
        );
        assert_eq!(
            st.allocate(&n, s, "x", None).unwrap_err().to_string(),
            "No available addresses on this pool"
        );
        // A released address comes back only after the cursor wraps.
        st.release(&n.id, "10.9.0.3".parse().unwrap()).unwrap();
        assert_eq!(
            st.allocate(&n, s, "y", None).unwrap().to_string(),
            "10.9.0.3"
        );
        assert_eq!(
            st.allocate(&n, s, "z", Some("10.9.0.4".parse().unwrap()))
                .unwrap_err()
                .to_string(),
            "Address already in use"
        );
        assert_eq!(
            st.allocate(&n, s, "z", Some("10.9.0.1".parse().unwrap()))
                .unwrap_err()
                .to_string(),
            "Address already in use"
        );
        assert_eq!(
            st.allocate(&n, s, "z", Some("10.8.0.4".parse().unwrap()))
                .unwrap_err()
                .to_string(),
            "Invalid address 10.8.0.4: It does not belong to any of this network's subnets"
        );
        assert_eq!(
            st.allocate(&n, s, "z", Some("10.9.0.7".parse().unwrap()))
                .unwrap_err()
                .to_string(),
            "requested address is out of range"
        );
        st.release_owner(&n.id, "c4").unwrap();
        assert_eq!(
            st.allocate(&n, s, "z", Some("10.9.0.6".parse().unwrap()))
                .unwrap()
                .to_string(),
            "10.9.0.6"
        );
    }

    #[test]
    fn ip_range_and_v6() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = Store::open(dir.path()).unwrap();
        let n = net("10.9.0.0/16", "10.9.4.0/24");
        let s = &n.subnets[0];
        assert_eq!(
            st.allocate(&n, s, "a", None).unwrap().to_string(),
            "10.9.4.1"
        );
        // A requested address may lie outside the ip-range, inside the subnet (docker).
        assert_eq!(
            st.allocate(&n, s, "b", Some("10.9.7.7".parse().unwrap()))
                .unwrap()
                .to_string(),
            "10.9.7.7"
        );
        let n6 = net("fd00:99::/64", "");
        let s6 = n6.subnet_v6().unwrap();
        st.reserve_gateways(&n6).unwrap();
        assert_eq!(
            st.allocate(&n6, s6, "a", None).unwrap().to_string(),
            "fd00:99::2"
        );
        assert_eq!(st.leases(&n6.id).unwrap().len(), 3); // both gateways + one lease
    }

    #[test]
    fn ports_conflict_like_docker() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = Store::open(dir.path()).unwrap();
        let p = |s: &str| crate::ports::parse_port_spec(s).unwrap();
        st.reserve_ports("n", "c1", &p("8080:80"), (40000, 40010))
            .unwrap();
        assert_eq!(
            st.reserve_ports("n", "c2", &p("127.0.0.1:8080:80"), (40000, 40010))
                .unwrap_err()
                .to_string(),
            "Bind for 127.0.0.1:8080 failed: port is already allocated"
        );
        assert_eq!(
            st.reserve_ports("n", "c2", &p("8080:80"), (40000, 40010))
                .unwrap_err()
                .to_string(),
            "Bind for 0.0.0.0:8080 failed: port is already allocated"
        );
        // udp is a different port space; dynamic ports come from the range.
        st.reserve_ports("n", "c2", &p("8080:80/udp"), (40000, 40010))
            .unwrap();
        let d = st
            .reserve_ports(
                "n",
                "c2",
                &[p("80")[0].clone(), p("81")[0].clone()],
                (40000, 40010),
            )
            .unwrap();
        assert_eq!((d[0].host_port, d[1].host_port), (40000, 40001));
        // All or nothing: the second mapping fails, the first is not kept.
        assert!(st
            .reserve_ports(
                "n",
                "c3",
                &[p("9090:90")[0].clone(), p("8080:80")[0].clone()],
                (1, 2)
            )
            .is_err());
        st.reserve_ports("n", "c4", &p("9090:90"), (1, 2)).unwrap();
        st.release_owner("n", "c1").unwrap();
        st.reserve_ports("n", "c5", &p("8080:80"), (1, 2)).unwrap();
    }
}
