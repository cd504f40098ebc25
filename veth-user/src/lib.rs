//! vethfp: an eBPF veth fast path. The library behind the `vethfp` CLI, agent and CNI plugin,
//! and the API a node agent embeds.
//!
//! Data flows one way: front end ([`cni`], [`agent`], the CLI) → [`Registry`] → datapath
//! (BPF objects, pins, links, typed maps) and sys (netlink, namespaces, ethtool) → kernel.
//! Only the registry is API: open a state directory, add and remove endpoints, read their
//! counters and the admission flow table.
//!
//! ```no_run
//! use vethfp::{AddRequest, Registry};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = std::path::Path::new("/sys/fs/bpf/my-agent");
//! let mut reg = Registry::open(dir)?; // holds the state lock while it lives
//! let req = AddRequest::new("vfa0".parse()?, "/run/netns/pod-a", vec!["10.0.0.2/24".parse()?]);
//! let ep = reg.add(&req)?;
//! println!("{} has ifindex {}", ep.host_if, ep.host_ifindex);
//! for s in reg.stats(Some("vfa0"))? {
//!     let fast = s.counters.get(vethfp::Dir::FromContainer, vethfp::Verdict::Fast);
//!     println!("{}: {} packets, {} bytes fast from the container", s.host_if, fast.packets, fast.bytes);
//! }
//! reg.del("vfa0")?;
//! # Ok(()) }
//! ```

pub mod agent;
pub mod cni;
#[cfg(feature = "internals")]
pub mod datapath;
#[cfg(not(feature = "internals"))]
mod datapath;
mod registry;
/// What an endpoint is made of (for the netlink integration tests).
#[cfg(feature = "internals")]
pub use registry::desired;
#[cfg(feature = "internals")]
pub mod sys;
#[cfg(not(feature = "internals"))]
mod sys;
mod types;
mod version;

pub use version::{GIT_COMMIT, LONG_VERSION, VERSION};

pub use datapath::{DEFAULT_BPFFS, DatapathError};
pub use registry::{
    AddRequest, AdoptRequest, BridgeError, EndpointError, EndpointStats, EndpointView, OpenOptions,
    OwnershipError, Registry, RequestError, Status, UplinkError, UplinkStatus, UplinkView,
    bridges::{BridgeStatus, BridgeSync, PortStatus},
    flows::{Admission, FlowStateName, FlowTable, FlowView, TcpAdmission, TcpMode},
    reconcile::Report,
};
pub use sys::netlink::NetlinkError;
pub use types::{Cidr, IfName, Mac, Mode, ParseError, Spoof};
/// Per-endpoint counters (`counters.get(Dir::FromContainer, Verdict::Fast)`), from the map ABI.
pub use veth_common::{Counters, Dir, PacketBytes, Verdict};
