//! The operations the engine calls: create/remove a network on the host, attach/detach a
//! container's netns. Each validates first, then applies steps that each push their undo;
//! a failure runs the undos in reverse, so nothing is left behind.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::BorrowedFd;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::Network;
use crate::error::{Error, Result};
use crate::firewall::Firewall;
use crate::ipam::Store;
use crate::link::{Netlink, EEXIST};
use crate::names;
use crate::ports::{PortMapping, PublishedPort};
use crate::sysctl;

/// Names and places: everything host-global that this crate creates is derived from here.
#[derive(Clone, Debug)]
pub struct Context {
    /// Holds the lease database (`--root`-like, persistent).
    pub state_dir: PathBuf,
    /// Runtime state (`--runroot`-like): named netns live under `<runroot>/netns`.
    pub runroot: PathBuf,
    /// Our nftables table (family inet).
    pub table: String,
    /// Prefix of generated device names (bridges, host veth ends), up to 6 characters;
    /// names are filled up to IFNAMSIZ with hex of a hash, so shorter is safer.
    pub link_prefix: String,
}

impl Context {
    /// vessel's defaults: table `vessel`, devices `vsl...`.
    pub fn new(state_dir: impl Into<PathBuf>, runroot: impl Into<PathBuf>) -> Context {
        Context {
            state_dir: state_dir.into(),
            runroot: runroot.into(),
            table: "vessel".into(),
            link_prefix: "vsl".into(),
        }
    }

    /// Override the table (from a name prefix such as `vesseltest-123-4-`) and device prefix.
    pub fn with_names(mut self, prefix: &str, link_prefix: &str) -> Context {
        self.table = names::table_name(prefix);
        self.link_prefix = link_prefix.to_string();
        self
    }
}

/// Test hooks: make an operation fail right after the named step succeeded, to prove the
/// rollback. Not for production use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailPoint {
    /// create_network: after the bridge exists with its addresses.
    AfterBridge,
    /// attach: after the addresses were leased.
    AfterLease,
    /// attach: after host ports were reserved.
    AfterPorts,
    /// attach: after the veth pair exists.
    AfterVeth,
    /// attach: after the container side is configured.
    AfterConfigure,
    /// attach: after the nft rules are in.
    AfterFirewall,
}

/// What to attach: one container's netns to one network.
pub struct AttachRequest<'a> {
    /// Owner of the leases; also names the veth and the nft chain.
    pub container_id: &'a str,
    pub netns: BorrowedFd<'a>,
    /// The device name inside the container (`eth0`, `eth1`, ...).
    pub ifname: &'a str,
    /// `--ip` / `--ip6`.
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// `-p`, already parsed.
    pub ports: &'a [PortMapping],
    /// Add the default route through this network (the first network of a container).
    pub default_route: bool,
}

/// A container's attachment, as the engine stores it (and `inspect` shows it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub container_id: String,
    pub network_id: String,
    pub host_veth: String,
    pub ifname: String,
    pub addresses: Vec<IpNet>,
    pub gateways: Vec<IpAddr>,
    pub ports: Vec<PublishedPort>,
}

impl Attachment {
    pub fn ipv4(&self) -> Option<IpAddr> {
        self.addresses.iter().map(IpNet::addr).find(IpAddr::is_ipv4)
    }
    pub fn ipv6(&self) -> Option<IpAddr> {
        self.addresses.iter().map(IpNet::addr).find(IpAddr::is_ipv6)
    }
}

/// Undo steps, run in reverse on failure.
enum Undo {
    DeleteLink(String),
    ReleaseOwner {
        network: String,
        owner: String,
    },
    ForgetNetwork(String),
    FirewallNetwork(Box<Network>),
    FirewallContainer {
        net: Box<Network>,
        container: String,
    },
}

/// The host side of networking. Cheap to create; holds one netlink connection.
pub struct Host {
    ctx: Context,
    nl: Netlink,
    fw: Firewall,
    fail: Option<FailPoint>,
}

impl Host {
    /// Needs to run inside a tokio runtime (the netlink connection is a spawned task).
    pub fn new(ctx: Context) -> Result<Host> {
        let fw = Firewall::new(ctx.table.clone());
        Ok(Host {
            nl: Netlink::host()?,
            fw,
            ctx,
            fail: None,
        })
    }

    pub fn context(&self) -> &Context {
        &self.ctx
    }

    pub fn netlink(&self) -> &Netlink {
        &self.nl
    }

    pub fn firewall(&self) -> &Firewall {
        &self.fw
    }

    /// Open the lease database.
    pub fn store(&self) -> Result<Store> {
        Store::open(&self.ctx.state_dir)
    }

    #[doc(hidden)]
    pub fn set_fail_point(&mut self, at: Option<FailPoint>) {
        self.fail = at;
    }

    fn check(&self, at: FailPoint) -> Result<()> {
        if self.fail == Some(at) {
            Err(Error::Injected(at))
        } else {
            Ok(())
        }
    }

    async fn undo(&self, steps: Vec<Undo>, error: Error) -> Error {
        let mut failed = Vec::new();
        for step in steps.into_iter().rev() {
            let r = match step {
                Undo::DeleteLink(name) => self.nl.delete_link(&name).await.map(|_| ()),
                Undo::ReleaseOwner { network, owner } => self
                    .store()
                    .and_then(|mut s| s.release_owner(&network, &owner)),
                Undo::ForgetNetwork(id) => self.store().and_then(|mut s| s.forget_network(&id)),
                Undo::FirewallNetwork(net) => self.fw.remove_network(&net).await,
                Undo::FirewallContainer { net, container } => {
                    self.fw.remove_container(&net, &container).await
                }
            };
            if let Err(e) = r {
                failed.push(e.to_string());
            }
        }
        if failed.is_empty() {
            error
        } else {
            Error::Rollback {
                error: Box::new(error),
                undo: failed,
            }
        }
    }

    /// Bring a validated network up on the host: bridge (with its gateway addresses and
    /// MTU), the sysctls it needs, the gateway leases and the nft rules. Idempotent for a
    /// bridge that already exists (after a reboot the engine calls this to restore).
    pub async fn create_network(&self, net: &Network) -> Result<()> {
        names::check_ifname(&net.bridge).map_err(|m| {
            Error::InvalidArgument(format!("invalid bridge name {}: {m}", net.bridge))
        })?;
        let mut undo = Vec::new();
        match self.create_network_steps(net, &mut undo).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.undo(undo, e).await),
        }
    }

    async fn create_network_steps(&self, net: &Network, undo: &mut Vec<Undo>) -> Result<()> {
        let index = match self.nl.link_kind(&net.bridge).await? {
            Some(kind) if kind == "bridge" => self.nl.link_index(&net.bridge).await?.unwrap_or(0),
            Some(kind) => {
                return Err(Error::InvalidArgument(format!(
                    "cannot create network {}: device {} exists and is not a bridge ({kind})",
                    net.name, net.bridge
                )))
            }
            None => {
                let i = self.nl.create_bridge(&net.bridge, net.mtu).await?;
                undo.push(Undo::DeleteLink(net.bridge.clone()));
                i
            }
        };
        let has_v6 = net.subnet_v6().is_some();
        if has_v6 {
            // Some hosts default new devices to disable_ipv6=1.
            sysctl::set_dev("ipv6", &net.bridge, "disable_ipv6", "0")?;
        }
        for s in &net.subnets {
            match self.nl.add_address(index, s.gateway_net()).await {
                Err(e) if e.errno() == Some(EEXIST) => {}
                r => r?,
            }
        }
        self.check(FailPoint::AfterBridge)?;
        if !net.internal {
            if net.subnet_v4().is_some() {
                // Published ports on 127.0.0.1 need loopback-sourced packets routed into
                // the bridge (see firewall.rs); containers need forwarding to reach out.
                sysctl::set_dev("ipv4", &net.bridge, "route_localnet", "1")?;
                sysctl::set("net.ipv4.ip_forward", "1")?;
            }
            if has_v6 {
                sysctl::set("net.ipv6.conf.all.forwarding", "1")?;
            }
        }
        let mut store = self.store()?;
        store.reserve_gateways(net)?;
        undo.push(Undo::ForgetNetwork(net.id.clone()));
        undo.push(Undo::FirewallNetwork(Box::new(net.clone())));
        self.fw.add_network(net).await?;
        Ok(())
    }

    /// Take a network off the host: refuses while containers hold addresses (docker's
    /// "has active endpoints"); otherwise removes rules, bridge and leases. Idempotent.
    pub async fn remove_network(&self, net: &Network) -> Result<()> {
        let mut store = self.store()?;
        if store
            .leases(&net.id)?
            .iter()
            .any(|l| l.owner != crate::ipam::GATEWAY_OWNER)
        {
            return Err(Error::NetworkInUse {
                name: net.name.clone(),
                id: net.id.clone(),
            });
        }
        self.fw.remove_network(net).await?;
        self.nl.delete_link(&net.bridge).await?;
        store.forget_network(&net.id)?;
        Ok(())
    }

    /// Connect a container's netns to a network: leases, host ports, a veth pair (peer
    /// created inside the netns as `ifname`), addresses, loopback, default route, and the
    /// DNAT rules of its published ports. All or nothing.
    pub async fn attach(&self, net: &Network, req: &AttachRequest<'_>) -> Result<Attachment> {
        // Validate before touching anything.
        names::check_ifname(req.ifname).map_err(|m| {
            Error::InvalidArgument(format!("invalid interface name {}: {m}", req.ifname))
        })?;
        if req.container_id.is_empty() {
            return Err(Error::InvalidArgument("container id is required".into()));
        }
        if req.ipv4.is_some() && net.subnet_v4().is_none()
            || req.ipv6.is_some() && net.subnet_v6().is_none()
        {
            return Err(Error::InvalidArgument(
                "user specified IP address is supported only when connecting to networks with user configured subnets".into(),
            ));
        }
        for p in req.ports {
            if p.host_ip.is_some_and(|ip| ip.is_ipv6()) && net.subnet_v6().is_none() {
                return Err(Error::InvalidPort(format!(
                    "cannot publish on {}: network {} has no IPv6 subnet",
                    p.host_ip.map(|i| i.to_string()).unwrap_or_default(),
                    net.name
                )));
            }
        }
        let bridge_index = self.nl.link_index(&net.bridge).await?.ok_or_else(|| {
            Error::InvalidArgument(format!(
                "network {} is not set up: bridge {} does not exist",
                net.name, net.bridge
            ))
        })?;
        let mut store = self.store()?;
        if store
            .leases(&net.id)?
            .iter()
            .any(|l| l.owner == req.container_id)
        {
            return Err(Error::InvalidArgument(format!(
                "endpoint with name {} already exists in network {}",
                req.container_id, net.name
            )));
        }
        let mut undo = Vec::new();
        match self
            .attach_steps(net, req, bridge_index, &mut store, &mut undo)
            .await
        {
            Ok(a) => Ok(a),
            Err(e) => {
                drop(store);
                Err(self.undo(undo, e).await)
            }
        }
    }

    async fn attach_steps(
        &self,
        net: &Network,
        req: &AttachRequest<'_>,
        bridge_index: u32,
        store: &mut Store,
        undo: &mut Vec<Undo>,
    ) -> Result<Attachment> {
        // 1. Addresses. One undo releases everything this owner holds on the network.
        undo.push(Undo::ReleaseOwner {
            network: net.id.clone(),
            owner: req.container_id.to_string(),
        });
        let mut addresses = Vec::new();
        let mut gateways = Vec::new();
        if let Some(s) = net.subnet_v4() {
            let ip = store.allocate(net, s, req.container_id, req.ipv4.map(IpAddr::V4))?;
            addresses.push(
                IpNet::new(ip, s.subnet.prefix_len())
                    .map_err(|e| Error::InvalidArgument(e.to_string()))?,
            );
            gateways.push(s.gateway);
        }
        if let Some(s) = net.subnet_v6() {
            let ip = store.allocate(net, s, req.container_id, req.ipv6.map(IpAddr::V6))?;
            addresses.push(
                IpNet::new(ip, s.subnet.prefix_len())
                    .map_err(|e| Error::InvalidArgument(e.to_string()))?,
            );
            gateways.push(s.gateway);
        }
        self.check(FailPoint::AfterLease)?;

        // 2. Host ports.
        let ports = if req.ports.is_empty() {
            Vec::new()
        } else {
            store.reserve_ports(
                &net.id,
                req.container_id,
                req.ports,
                sysctl::ephemeral_ports(),
            )?
        };
        self.check(FailPoint::AfterPorts)?;

        // 3. The veth pair; deleting the host end takes the peer with it.
        let host_veth = names::veth_name(&self.ctx.link_prefix, req.container_id, &net.id);
        let veth_index = self
            .nl
            .create_veth(&host_veth, req.ifname, req.netns, bridge_index, net.mtu)
            .await?;
        undo.push(Undo::DeleteLink(host_veth.clone()));
        self.nl.set_hairpin(veth_index).await?;
        self.check(FailPoint::AfterVeth)?;

        // 4. Inside the container.
        let inner = Netlink::in_netns(req.netns)?;
        inner.set_up("lo").await?;
        let index = inner.link_index(req.ifname).await?.ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{} vanished from the container's netns",
                req.ifname
            ))
        })?;
        if addresses.iter().any(|a| a.addr().is_ipv6()) {
            // The netns's own default may be disable_ipv6=1; set it from inside.
            let ifname = req.ifname.to_string();
            crate::netns::run_in_netns(req.netns, move || {
                sysctl::set_dev("ipv6", &ifname, "disable_ipv6", "0")
            })??;
        }
        for a in &addresses {
            inner.add_address(index, *a).await?;
        }
        inner.set_up(req.ifname).await?;
        if req.default_route && !net.internal {
            for g in &gateways {
                inner.add_default_route(*g, index).await?;
            }
        }
        self.check(FailPoint::AfterConfigure)?;

        // 5. Published ports.
        let att = Attachment {
            container_id: req.container_id.to_string(),
            network_id: net.id.clone(),
            host_veth,
            ifname: req.ifname.to_string(),
            addresses,
            gateways,
            ports,
        };
        if !att.ports.is_empty() {
            undo.push(Undo::FirewallContainer {
                net: Box::new(net.clone()),
                container: req.container_id.to_string(),
            });
            self.fw
                .add_container(net, req.container_id, att.ipv4(), att.ipv6(), &att.ports)
                .await?;
        }
        self.check(FailPoint::AfterFirewall)?;
        Ok(att)
    }

    /// Disconnect a container from a network: rules, veth, leases. Works from the
    /// container id alone (names are derived), so it also cleans up after a crash; every
    /// step runs even if an earlier one failed, and the first error is returned.
    pub async fn detach(&self, net: &Network, container_id: &str) -> Result<()> {
        let mut first: Option<Error> = None;
        if let Err(e) = self.fw.remove_container(net, container_id).await {
            first.get_or_insert(e);
        }
        let veth = names::veth_name(&self.ctx.link_prefix, container_id, &net.id);
        if let Err(e) = self.nl.delete_link(&veth).await {
            first.get_or_insert(e);
        }
        if let Err(e) = self
            .store()
            .and_then(|mut s| s.release_owner(&net.id, container_id))
        {
            first.get_or_insert(e);
        }
        first.map_or(Ok(()), Err)
    }
}
