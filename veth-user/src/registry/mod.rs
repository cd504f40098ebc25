//! The endpoint registry: adding or removing an endpoint is netlink + maps + links, done under
//! the state lock, with rollback of everything created when a step fails.
//!
//! The registry itself is the `VFP_ENDPOINTS` map (host ifindex → [`EndpointRecord`]), pinned
//! next to the datapath, so every process sees the same state and nothing lives in files.
//!
//! One concern per file: [`error`], [`desired`] (what an endpoint is made of, as data), [`view`] (requests and views), [`record`] (the record and
//! its conversions), [`state`] (open, lock, namespace binding), [`journal`], [`endpoint`] (add,
//! adopt, del, set_mode), [`repair`], [`uplinks`], [`bridges`], [`flows`], [`reconcile`],
//! [`node`].
//!
//! [`EndpointRecord`]: veth_common::EndpointRecord

pub mod bridges;
pub mod desired;
mod endpoint;
mod error;
pub mod flows;
mod journal;
mod netfilter;
pub(crate) mod node;
pub mod reconcile;
mod record;
mod repair;
mod state;
mod uplinks;
mod view;

/// The container's gateways (link-local, on-link via the host end).
pub(crate) use crate::sys::netlink::{GATEWAY_V4, GATEWAY_V6};

pub(crate) use desired::wants_gro;
pub use error::{BridgeError, EndpointError, OwnershipError, RequestError, UplinkError};
pub(crate) use record::{get_str, network_id, record_addrs};
pub(crate) use repair::container_gro;
pub use state::OpenOptions;
pub use view::{
    AddRequest, AdoptRequest, EndpointStats, EndpointView, Status, UplinkStatus, UplinkView,
};

use veth_common::EndpointRecord;

use crate::datapath::{Datapath, OpsLock, StateLock};

/// The registry over the pinned state in one bpffs directory.
pub struct Registry {
    dp: Datapath,
    /// The state lock (exclusive), held except while an operation does kernel work (see
    /// [`Registry::unlocked`]); None when opened for reading, or for the agent, which locks
    /// per operation itself.
    lock: Option<StateLock>,
    /// Shared for a writer's lifetime: journal recovery waits until no operation is in flight.
    _ops: Option<OpsLock>,
    /// One scan of `VFP_ENDPOINTS` per locked step: an `add` asks for the records several
    /// times (name, addresses, free slot), each a syscall per entry. Dropped on every change
    /// of the map through [`Registry::endpoint_map`] and whenever the lock was let go.
    snapshot: Option<Vec<EndpointRecord>>,
}
