//! Synchronous netlink operations (over `rtnetlink`) for creating and wiring veth pairs, split
//! by object as rtnetlink is: [`link`] (lookup, create a veth, delete), [`addr`], [`route`]
//! (and the node view of a reconciliation pass), [`neigh`], [`namespace`] (open, enter, ids);
//! [`apply`] makes one interface look like a described configuration. This file holds what
//! they share: the errors and the per-thread runtime and socket every call runs on.
//!
//! A netlink socket acts in the network namespace of the thread that created it, which is
//! how [`in_netns`] works: it runs a closure on a fresh OS thread that first `setns`es into
//! the target namespace, so the caller's thread never changes namespace.
//!
//! Nothing here rolls back on partial failure: everything that `configure_*` adds hangs off
//! the veth, so deleting the host end (see [`delete_link`]) removes all of it.

use std::{
    fmt,
    future::Future,
    io,
    net::{Ipv4Addr, Ipv6Addr},
};

use rtnetlink::Handle;

use crate::types::{IfName, Mac};

mod addr;
pub(crate) mod apply;
#[cfg(test)]
pub(crate) mod fake;
mod link;
mod namespace;
mod neigh;
mod route;
pub use addr::addresses;
pub use apply::{Applied, Apply, At, LinkConfig, Neighbour, Route, apply};
pub use link::{
    Link, OWNER_ALIAS, VethRequest, create_veth, delete_link, link_by_index, link_by_name, links,
};
pub use namespace::{Netns, current_netns_ino, in_netns, netns_id};
pub use route::{NodeView, routes_via};
use {addr::link_addrs, link::get_link, route::vethfp_route};

/// Routing protocol number vethfp stamps on the routes it creates (`ip route ... proto 247`).
pub const RTPROT_VETHFP: u8 = 0xf7;
/// IPv4 gateway the container sees (answered by the host end's MAC via a permanent neighbour).
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// IPv6 gateway the container sees.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// Where an interface lives, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// The network namespace vethfp runs in.
    Node,
    /// A container namespace, by its spec (name or path).
    Netns(String),
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Node => f.write_str("the node"),
            Place::Netns(s) => write!(f, "network namespace '{s}'"),
        }
    }
}

fn exists_hint(name: &str, place: &Place) -> String {
    match place {
        Place::Node => format!("choose another name or `vethfp pair del {name}`"),
        Place::Netns(_) => {
            "choose another container interface name or remove that interface first".into()
        }
    }
}

fn no_netns_hint(spec: &str) -> String {
    if spec.contains('/') {
        "check the path (for /proc/PID/ns/net: is the process still running?)".into()
    } else {
        format!("create it first, e.g. `ip netns add {spec}`")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("network namespace '{spec}' does not exist (no {path}): {}", no_netns_hint(.spec))]
    NoSuchNetns { spec: String, path: String },
    #[error(
        "'{path}' is not a network namespace: pass a name under /run/netns or a path such as \
         /proc/PID/ns/net (a stale /run/netns entry can be removed with `ip netns del NAME`)"
    )]
    NotANetns { spec: String, path: String },
    #[error("cannot open network namespace '{spec}' ({path}): {source}; run vethfp as root")]
    OpenNetns {
        spec: String,
        path: String,
        source: io::Error,
    },
    #[error("cannot enter network namespace '{spec}': {source}; run vethfp as root")]
    EnterNetns { spec: String, source: io::Error },
    #[error(
        "invalid interface name '{0}': 1 to 15 bytes, no '/', ':', whitespace, and not '.' or '..'"
    )]
    InvalidIfName(String),
    #[error(
        "invalid MAC address {0} for an interface: it must be unicast and not all zeros \
         (e.g. 02:00:0a:00:00:02)"
    )]
    InvalidMac(Mac),
    #[error("invalid MTU {0}: a veth accepts 68 to 65535")]
    InvalidMtu(u32),
    #[error("interface '{name}' already exists in {place}: {}", exists_hint(.name, .place))]
    Exists { name: String, place: Place },
    #[error("interface '{name}' not found in {place}: check the name (`ip link` there)")]
    NoSuchLink { name: String, place: Place },
    #[error(
        "a route to {dst} already exists in the node (another endpoint using this address?): \
         choose another address or remove the other endpoint"
    )]
    RouteExists { dst: String },
    #[error("{op}: {source}")]
    Io { op: String, source: io::Error },
    #[error("{op} failed: {msg}")]
    Netlink {
        op: String,
        msg: String,
        /// The kernel's errno, when it gave one (EEXIST, EPERM, …), for callers to match on.
        errno: Option<i32>,
    },
}

// ---------------------------------------------------------------------------------------------
// Plumbing: one runtime + one netlink socket per public call.

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) if m.raw_code() != 0 => Some(m.raw_code().abs()),
        _ => None,
    }
}

pub(crate) fn nl_err(op: impl Into<String>, e: rtnetlink::Error) -> NetlinkError {
    NetlinkError::Netlink {
        op: op.into(),
        msg: nl_msg(&e),
        errno: errno(&e),
    }
}

/// What a netlink error means, for a message.
fn nl_msg(e: &rtnetlink::Error) -> String {
    match errno(e) {
        Some(code) => {
            let mut msg = io::Error::from_raw_os_error(code).to_string();
            if code == libc::EPERM || code == libc::EACCES {
                msg.push_str("; run vethfp as root (needs CAP_NET_ADMIN)");
            }
            msg
        }
        None => e.to_string(),
    }
}

thread_local! {
    /// Set on threads of a tokio blocking pool (see [`may_block_here`]).
    static MAY_BLOCK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the calling thread, one of a tokio runtime's blocking pool, as allowed to block on
/// netlink itself: calls made on it then keep one session (runtime and socket) per thread
/// instead of starting a helper thread with a new session for every call. (Tokio gives its
/// blocking threads the runtime's handle, which is all [`run`] can see otherwise, and a
/// worker thread must never block.) At a full node the agent's pass made hundreds of such
/// threads and sessions.
pub(crate) fn may_block_here() {
    MAY_BLOCK.set(true);
}

/// Runs `f` with a netlink handle bound to the calling thread's network namespace.
pub(crate) fn run<T, F, Fut>(f: F) -> Result<T, NetlinkError>
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = Result<T, NetlinkError>>,
{
    if tokio::runtime::Handle::try_current().is_ok() && !MAY_BLOCK.get() {
        // A runtime cannot be blocked on from inside another one: use a helper thread, which
        // inherits this thread's network namespace.
        return std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("vethfp-netlink".into())
                .spawn_scoped(s, || run_here(f))
                .map_err(|e| NetlinkError::Io {
                    op: "starting a netlink helper thread".into(),
                    source: e,
                })?
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        });
    }
    run_here(f)
}

/// Makes this thread's netlink session now (runtime and socket), so that the first real call
/// does not pay for it: writers call this before taking the state lock.
pub fn warm() -> Result<(), NetlinkError> {
    run(|_| async { Ok(()) })
}

/// One netlink session per thread and network namespace: the runtime and the rtnetlink
/// socket are made on the first call and reused by every later call of the same operation
/// (a `pair add` makes about ten), instead of a new runtime and socket per call. Keyed by the
/// thread's netns inode, so a thread that changed namespace never talks to the old one.
struct Session {
    netns: u64,
    rt: tokio::runtime::Runtime,
    handle: Handle,
    conn: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

thread_local! {
    static SESSION: std::cell::RefCell<Option<Session>> = const { std::cell::RefCell::new(None) };
}

fn new_session(netns: u64) -> Result<Session, NetlinkError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| NetlinkError::Io {
            op: "creating the netlink runtime".into(),
            source: e,
        })?;
    let (conn, handle) = rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| NetlinkError::Io {
            op: "opening a netlink socket".into(),
            source: e,
        })?;
        Ok::<_, NetlinkError>((tokio::spawn(conn), handle))
    })?;
    Ok(Session {
        netns,
        rt,
        handle,
        conn,
    })
}

fn run_here<T, F, Fut>(f: F) -> Result<T, NetlinkError>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T, NetlinkError>>,
{
    let netns = current_netns_ino()?;
    // Taken out of the slot while in use: a nested call (none today) would make its own.
    let session = match SESSION.with(|c| c.borrow_mut().take()) {
        Some(s) if s.netns == netns && !s.conn.is_finished() => s,
        _ => new_session(netns)?,
    };
    let handle = session.handle.clone();
    let r = session.rt.block_on(f(handle));
    SESSION.with(|c| *c.borrow_mut() = Some(session));
    r
}

fn check_ifname(name: &str) -> Result<(), NetlinkError> {
    name.parse::<IfName>()
        .map(|_| ())
        .map_err(|_| NetlinkError::InvalidIfName(name.into()))
}
