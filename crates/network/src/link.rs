//! Netlink plumbing (rtnetlink): bridges, veth pairs, addresses, routes — in the host's
//! namespace or, through a socket opened inside it, in a container's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd};

use futures_util::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::{AddressAttribute, AddressHeaderFlags};
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, TokioSocket};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};

use crate::error::{Error, Result};
use crate::netns::run_in_netns;

/// ENODEV / ENOENT: the object is not there.
const ENODEV: i32 = 19;
const ENOENT: i32 = 2;
/// EEXIST: name or address already in use.
pub const EEXIST: i32 = 17;

/// One rtnetlink connection, bound to the namespace it was opened in.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// A connection in the calling thread's namespace (the host's). Needs a tokio runtime.
    pub fn host() -> Result<Netlink> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| Error::io("open netlink socket", e))?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// A connection inside the namespace `ns`: the socket is created by a thread that has
    /// entered it, and a netlink socket stays bound to the namespace it was created in.
    pub fn in_netns(ns: BorrowedFd<'_>) -> Result<Netlink> {
        let raw = run_in_netns(ns, || {
            Socket::new(NETLINK_ROUTE).map(IntoRawFd::into_raw_fd)
        })?
        .map_err(|e| Error::io("open netlink socket in netns", e))?;
        // SAFETY: `raw` is a freshly created netlink socket that nothing else owns.
        let sock = unsafe { Socket::from_raw_fd(raw) };
        sock.set_non_blocking(true)
            .map_err(|e| Error::io("netlink socket nonblocking", e))?;
        // SAFETY: ownership of the fd moves into the TokioSocket; it is non-blocking
        // already, so the constructor's own set_non_blocking cannot fail.
        let ts = unsafe { TokioSocket::from_raw_fd(sock.into_raw_fd()) };
        let (conn, handle, _) = rtnetlink::from_socket(ts);
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// The device `name`, if it exists.
    async fn get_link(&self, name: &str) -> Result<Option<LinkMessage>> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(msg) => Ok(msg),
            Err(e) => {
                let err = Error::netlink(format!("look up link {name}"), e);
                if matches!(err.errno(), Some(ENODEV | ENOENT)) {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    /// The index of the device `name`, if it exists.
    pub async fn link_index(&self, name: &str) -> Result<Option<u32>> {
        Ok(self.get_link(name).await?.map(|msg| msg.header.index))
    }

    /// The kind of a device ("bridge", "veth", ...), if it exists.
    pub async fn link_kind(&self, name: &str) -> Result<Option<String>> {
        use rtnetlink::packet_route::link::LinkInfo;
        let Some(msg) = self.get_link(name).await? else {
            return Ok(None);
        };
        for a in msg.attributes {
            if let LinkAttribute::LinkInfo(infos) = a {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        return Ok(Some(k.to_string()));
                    }
                }
            }
        }
        Ok(Some(String::new()))
    }

    /// Create a bridge, up, with the given MTU. Fails with EEXIST if the name is taken.
    pub async fn create_bridge(&self, name: &str, mtu: u32) -> Result<u32> {
        self.handle
            .link()
            .add(LinkBridge::new(name).mtu(mtu).build())
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("create bridge {name}"), e))?;
        self.link_index(name).await?.ok_or_else(|| Error::Netlink {
            op: format!("create bridge {name}"),
            message: "vanished".into(),
            errno: None,
        })
    }

    /// Add `addr` (address/prefix) to a device. IPv6 addresses skip duplicate address
    /// detection: the addresses come from our IPAM, and DAD would leave them unusable
    /// ("tentative") for the first second or so.
    pub async fn add_address(&self, index: u32, addr: IpNet) -> Result<()> {
        let mut req = self
            .handle
            .address()
            .add(index, addr.addr(), addr.prefix_len());
        if addr.addr().is_ipv6() {
            let m = req.message_mut();
            m.header.flags |= AddressHeaderFlags::Nodad;
            m.attributes.push(AddressAttribute::Flags(
                rtnetlink::packet_route::address::AddressFlags::Nodad,
            ));
        }
        req.execute()
            .await
            .map_err(|e| Error::netlink(format!("add address {addr}"), e))
    }

    /// The addresses on a device.
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNet>> {
        let mut out = Vec::new();
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(msg) = s
            .try_next()
            .await
            .map_err(|e| Error::netlink("list addresses", e))?
        {
            for a in &msg.attributes {
                if let AddressAttribute::Address(ip) = a {
                    if let Ok(n) = IpNet::new(*ip, msg.header.prefix_len) {
                        out.push(n);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Delete a device by name. Returns false when it did not exist.
    pub async fn delete_link(&self, name: &str) -> Result<bool> {
        let Some(index) = self.link_index(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) => {
                let err = Error::netlink(format!("delete link {name}"), e);
                if matches!(err.errno(), Some(ENODEV | ENOENT)) {
                    Ok(false)
                } else {
                    Err(err)
                }
            }
        }
    }

    /// Create a veth pair in one request: `host` here, enslaved to `bridge_index`, up; the
    /// peer created directly inside `peer_ns` under its final name (e.g. eth0). Creating
    /// the peer in place — rather than moving and renaming it — never leaves a stray
    /// device in the host namespace, and a clash with an existing name in either
    /// namespace fails the whole request (EEXIST) with nothing created.
    pub async fn create_veth(
        &self,
        host: &str,
        peer: &str,
        peer_ns: BorrowedFd<'_>,
        bridge_index: u32,
        mtu: u32,
    ) -> Result<u32> {
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .mtu(mtu)
            .setns_by_fd(peer_ns.as_raw_fd())
            .build();
        let msg = LinkVeth::new(host, peer)
            .mtu(mtu)
            .controller(bridge_index)
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("create veth {host} <=> {peer}"), e))?;
        self.link_index(host).await?.ok_or_else(|| Error::Netlink {
            op: format!("create veth {host}"),
            message: "vanished".into(),
            errno: None,
        })
    }

    /// Turn on hairpin mode on a bridge port. With br_netfilter loaded (docker and podman
    /// load it), a container reaching its own published port is DNATed at the bridge
    /// layer back to its own port, which the bridge refuses to send back out of the port it
    /// came in on unless the port is in hairpin mode (docker sets it too when it runs
    /// without its userland proxy).
    pub async fn set_hairpin(&self, port_index: u32) -> Result<()> {
        self.handle
            .link()
            .set_port(LinkBridgePort::new(port_index).hairpin(true).build())
            .execute()
            .await
            .map_err(|e| Error::netlink("set hairpin mode", e))
    }

    /// Bring a device up, by name.
    pub async fn set_up(&self, name: &str) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_name(name).up().build())
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("set {name} up"), e))
    }

    /// Default route via `gateway` out of device `index`.
    pub async fn add_default_route(&self, gateway: IpAddr, index: u32) -> Result<()> {
        let msg = match gateway {
            IpAddr::V4(g) => RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(g)
                .output_interface(index)
                .build(),
            IpAddr::V6(g) => RouteMessageBuilder::<Ipv6Addr>::new()
                .gateway(g)
                .output_interface(index)
                .build(),
        };
        self.handle
            .route()
            .add(msg)
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("add default route via {gateway}"), e))
    }
}
