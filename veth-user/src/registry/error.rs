//! The registry's errors, by concern: what was wrong with a request ([`RequestError`]),
//! whose an interface or state is ([`OwnershipError`]), uplinks ([`UplinkError`]) and bridges
//! ([`BridgeError`]); [`EndpointError`] is what the registry returns, each concern one
//! transparent variant of it next to the kernel's, the datapath's and the state's errors.
//!
//! The messages say what was wrong and name no command or flag of the CLI (the CNI plugin and
//! an embedding agent have neither); the CLI appends those hints by variant (`cli/hint.rs`).

use std::net::IpAddr;

use veth_common::{MAX_ADDRS, NETNS_LEN};

use crate::{datapath::DatapathError, sys::netlink::NetlinkError};

/// The registry's error: one variant per concern, each displayed as its own error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Ownership(#[from] OwnershipError),
    #[error(transparent)]
    Uplink(#[from] UplinkError),
    #[error(transparent)]
    Bridge(#[from] BridgeError),
    #[error("no endpoint named {0}")]
    NotFound(String),
    #[error(
        "the endpoint's container end could not get GRO on ({0}); XDP redirects into it would be dropped"
    )]
    Gro(String),
    #[error("state directory entry {path}: {source}")]
    State {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("all {0} counter slots are in use: remove endpoints or uplinks first")]
    Full(usize),
    #[error("XDP devmap update failed: {0}")]
    Devmap(String),
    #[error("BPF map {what}: {source}")]
    Map {
        what: &'static str,
        source: aya::maps::MapError,
    },
}

/// Invalid input of an add or adopt: nothing was changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    #[error("at least one address is required")]
    NoAddr,
    #[error("{0} addresses given: an endpoint has at most {MAX_ADDRS}")]
    TooManyAddrs(usize),
    #[error("address {0} is given twice")]
    DuplicateAddr(IpAddr),
    #[error("address {addr} already belongs to endpoint {owner}: each address can be used once")]
    AddrInUse { addr: IpAddr, owner: String },
    #[error("MTU {0} is out of range: use 68 to 65535")]
    Mtu(u32),
    #[error("netns '{0}' is longer than {max} bytes", max = NETNS_LEN - 1)]
    NetnsTooLong(String),
    #[error("interface {0} already exists in the node")]
    HostExists(String),
    #[error("{0} is not a veth interface: only veth host ends can be adopted")]
    NotVeth(String),
    #[error("mode bridge is set per bridge, not per endpoint: use tc or xdp")]
    BridgeMode,
}

/// Whose an interface or a state directory is: vethfp changes only what it made, from the
/// node namespace its state belongs to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OwnershipError {
    #[error(
        "{name} was not made by this state ({dir}): {why}; vethfp only deletes or changes \
         interfaces it created and recorded in the same state directory"
    )]
    NotOurs {
        name: String,
        dir: String,
        why: String,
    },
    #[error(
        "{0} is the node's own network namespace (the one vethfp runs in): give the \
         container's namespace"
    )]
    NodeNetns(String),
    #[error(
        "state {dir} belongs to another live network namespace (netns cookie {owner}, {live} \
         interface(s) still attached there); this process runs in netns cookie {here}: each \
         node namespace needs a state directory of its own"
    )]
    OtherNamespace {
        dir: String,
        owner: u64,
        here: u64,
        live: usize,
    },
    #[error("reading this network namespace's cookie (SO_NETNS_COOKIE): {0}")]
    Cookie(std::io::Error),
}

/// Attaching or detaching an uplink.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UplinkError {
    #[error(
        "no interface named {0} in the node (to attach), or it is not an attached uplink (to detach)"
    )]
    NoSuchUplink(String),
    #[error("{0} is an endpoint's host end, not an uplink")]
    UplinkIsEndpoint(String),
}

/// Accelerating or releasing a bridge.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    #[error("no bridge named {0} in the node: see `ip -br link show type bridge`")]
    NoSuchBridge(String),
    #[error("not accelerating: {0}")]
    BridgeRefused(String),
    #[error(
        "not accelerating the new ports of {bridge}: {reason}. The fast path set up earlier \
         stays in place on {kept} and skips this"
    )]
    BridgeRefusedKept {
        bridge: String,
        reason: String,
        kept: String,
    },
}

pub(super) type Result<T, E = EndpointError> = std::result::Result<T, E>;

pub(super) fn map_err(what: &'static str) -> impl FnOnce(aya::maps::MapError) -> EndpointError {
    move |source| EndpointError::Map { what, source }
}
