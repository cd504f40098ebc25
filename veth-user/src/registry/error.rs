//! The registry's errors.

use std::net::IpAddr;

use veth_common::{MAX_ADDRS, NETNS_LEN};

use crate::{datapath::DatapathError, sys::netlink::NetlinkError};

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
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
    #[error(
        "interface {0} already exists in the node: choose another name, or `vethfp pair del {0}` if it is an old endpoint"
    )]
    HostExists(String),
    #[error("no endpoint named {0}: `vethfp pair list` shows the endpoints")]
    NotFound(String),
    #[error(
        "the endpoint's container end could not get GRO on ({0}); XDP redirects into it would be dropped"
    )]
    Gro(String),
    #[error("{0} is not a veth interface: only veth host ends can be adopted")]
    NotVeth(String),
    #[error(
        "no interface named {0} in the node (for `uplink attach`), or it is not an attached uplink (for `uplink detach`): see `ip link` and `vethfp status`"
    )]
    NoSuchUplink(String),
    #[error("{0} is an endpoint's host end, not an uplink")]
    UplinkIsEndpoint(String),
    #[error("no bridge named {0} in the node: see `ip -br link show type bridge`")]
    NoSuchBridge(String),
    #[error("not accelerating: {0}")]
    BridgeRefused(String),
    #[error(
        "not accelerating the new ports of {bridge}: {reason}. The fast path set up earlier stays in place on {kept} and skips this; `vethfp bridge release {bridge}` puts them back on the bridge path"
    )]
    BridgeRefusedKept {
        bridge: String,
        reason: String,
        kept: String,
    },
    #[error("state directory entry {path}: {source}")]
    State {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("all {0} counter slots are in use: remove endpoints or uplinks first")]
    Full(usize),
    #[error("XDP devmap update failed: {0}")]
    Devmap(String),
    #[error("netns '{0}' is longer than {max} bytes", max = NETNS_LEN - 1)]
    NetnsTooLong(String),
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
    #[error("mode bridge is set by `vethfp bridge accelerate`, not per endpoint: use tc or xdp")]
    BridgeMode,
    #[error("BPF map {what}: {source}")]
    Map {
        what: &'static str,
        source: aya::maps::MapError,
    },
}

pub(super) type Result<T, E = EndpointError> = std::result::Result<T, E>;

pub(super) fn map_err(what: &'static str) -> impl FnOnce(aya::maps::MapError) -> EndpointError {
    move |source| EndpointError::Map { what, source }
}
