//! The crate's one error type. Messages that users see through `vessel network ...` and
//! `vessel run -p ...` keep docker's exact wording (quoted from moby, libnetwork,
//! docker/cli and go-connections), so scripts that match on them keep working.

use std::io;
use std::net::IpAddr;

/// Everything this crate can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad network configuration (subnet, gateway, ip-range, options). The message is
    /// docker's, e.g. `invalid subnet 10.0.0.0/33: invalid CIDR block notation` or
    /// `no matching subnet for gateway 10.1.0.1`.
    #[error("{0}")]
    InvalidConfig(String),

    /// A bad `-p` specification, in go-connections' words: `invalid containerPort: 99999`.
    #[error("{0}")]
    InvalidPort(String),

    /// A requested subnet overlaps one of another network (libnetwork's ErrPoolOverlap).
    #[error("Pool overlaps with other one on this address space")]
    PoolOverlap,

    /// No predefined pool is free any more (libnetwork's wording).
    #[error("could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network")]
    NoDefaultPool,

    /// Two networks would share one bridge device.
    #[error("cannot create network {name} ({bridge}): conflicts with network {other} ({bridge}): networks have same bridge name")]
    BridgeNameConflict {
        name: String,
        bridge: String,
        other: String,
    },

    /// A network of that name is already known.
    #[error("network with name {0} already exists")]
    NetworkExists(String),

    /// `network rm` of a network that still has containers.
    #[error("error while removing network: network {name} id {id} has active endpoints")]
    NetworkInUse { name: String, id: String },

    /// A requested `--ip` is already leased (libnetwork's ErrIPAlreadyAllocated).
    #[error("Address already in use")]
    AddressInUse,

    /// The pool is exhausted (libnetwork's ErrNoAvailableIPs).
    #[error("No available addresses on this pool")]
    NoAvailableAddresses,

    /// A requested `--ip` that lies in no subnet of the network (moby's wording).
    #[error("Invalid address {0}: It does not belong to any of this network's subnets")]
    AddressNotInSubnet(IpAddr),

    /// A requested `--ip` that is the subnet's own network or broadcast address.
    #[error("requested address is out of range")]
    AddressOutOfRange,

    /// A host port already published (by this or another container), in docker's words.
    #[error("Bind for {0} failed: port is already allocated")]
    PortAllocated(String),

    /// No free host port in the dynamic range.
    #[error("no available host port in range {0}-{1}")]
    NoAvailablePort(u16, u16),

    /// A bad argument from the caller (interface name, container id, ...).
    #[error("{0}")]
    InvalidArgument(String),

    /// The lease database.
    #[error("network state database: {0}")]
    Db(#[from] rusqlite::Error),

    /// A netlink request failed; `op` says which one and for which object.
    #[error("{op}: {message}")]
    Netlink {
        op: String,
        message: String,
        /// The errno the kernel answered with, when it answered with one.
        errno: Option<i32>,
    },

    /// A syscall or file operation failed.
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: io::Error,
    },

    /// `nft` refused a transaction or could not be run.
    #[error("nftables: {0}")]
    Nft(String),

    /// A failure injected by a test hook ([`crate::FailPoint`]).
    #[error("injected failure at {0:?}")]
    Injected(crate::FailPoint),

    /// A step failed and undoing the earlier steps failed too: nothing is hidden.
    #[error("{error} (rollback also failed: {})", undo.join("; "))]
    Rollback {
        error: Box<Error>,
        undo: Vec<String>,
    },
}

impl Error {
    pub(crate) fn io(op: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            op: op.into(),
            source,
        }
    }

    pub(crate) fn netlink(op: impl Into<String>, e: rtnetlink::Error) -> Self {
        let errno = match &e {
            rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
            _ => None,
        };
        let message = match errno {
            Some(n) => io::Error::from_raw_os_error(n).to_string(),
            None => e.to_string(),
        };
        Error::Netlink {
            op: op.into(),
            message,
            errno,
        }
    }

    /// The kernel's errno for a failed netlink request (e.g. `EEXIST` for a name clash).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink { errno, .. } => *errno,
            Error::Io { source, .. } => source.raw_os_error(),
            Error::Rollback { error, .. } => error.errno(),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
