//! vessel's host networking (issue 11): validated network configs, IPAM, bridges and veth
//! pairs, network namespaces, and nftables NAT / port publishing.
//!
//! Everything takes its names and state locations from a [`Context`], so the engine and
//! tests (with `vesseltest-` names) can use it side by side; nothing is global, nothing is
//! printed. Operations that change the host validate first, then apply step by step with
//! an undo for each step: a failure part way leaves nothing behind.

pub mod config;
pub mod error;
pub mod firewall;
pub mod host;
pub mod ipam;
pub mod link;
pub mod names;
pub mod netns;
pub mod ports;
pub mod sysctl;

pub use config::{
    consolidate_ipam, validate_network, IpamConfig, Network, NetworkCreate, Subnet, ValidateEnv,
};
pub use error::{Error, Result};
pub use firewall::Firewall;
pub use host::{AttachRequest, Attachment, Context, FailPoint, Host};
pub use ipam::Store;
pub use ports::{parse_port_spec, PortMapping, Protocol, PublishedPort};
