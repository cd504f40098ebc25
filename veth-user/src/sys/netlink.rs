//! Synchronous netlink operations (over `rtnetlink`) for creating and wiring veth pairs.
//!
//! Every public call opens its own netlink socket on a small current-thread tokio runtime.
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
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    pin::pin,
};

use futures::TryStreamExt;
use netlink_packet_route::{
    AddressFamily,
    address::AddressAttribute,
    link::{
        InfoBridge, InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoVeth, LinkAttribute,
        LinkFlags, LinkInfo, LinkMessage,
    },
    neighbour::NeighbourState,
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType},
};
use nix::{fcntl::OFlag, sched::CloneFlags, sys::stat::Mode};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};

use crate::types::{Cidr, IfName, Mac};

pub(crate) mod apply;
#[cfg(test)]
pub(crate) mod fake;
pub use apply::{Apply, At, LinkConfig, Neighbour, Route, apply};

/// Routing protocol number vethfp stamps on the routes it creates (`ip route ... proto 247`).
pub const RTPROT_VETHFP: u8 = 0xf7;
/// IPv4 gateway the container sees (answered by the host end's MAC via a permanent neighbour).
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// IPv6 gateway the container sees.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

const NETNS_DIR: &str = "/run/netns";
/// `_IO(NSIO, 0x3)`: returns the CLONE_NEW* type of a namespace file.
const NS_GET_NSTYPE: u32 = 0xb703;

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
        Place::Netns(_) => "choose another --ifname or remove that interface first".into(),
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

/// An open network namespace file (`/run/netns/NAME` or e.g. `/proc/PID/ns/net`).
pub struct Netns {
    fd: OwnedFd,
    spec: String,
    ino: u64,
}

impl fmt::Debug for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netns")
            .field("spec", &self.spec)
            .field("ino", &self.ino)
            .field("fd", &self.fd.as_raw_fd())
            .finish()
    }
}

impl Netns {
    /// spec: a bare name means /run/netns/NAME; anything containing '/' is a path
    /// (e.g. /proc/PID/ns/net). Fails unless the file really is a network namespace.
    pub fn open(spec: &str) -> Result<Netns, NetlinkError> {
        let path = if spec.contains('/') {
            spec.to_string()
        } else {
            format!("{NETNS_DIR}/{spec}")
        };
        let not_netns = || NetlinkError::NotANetns {
            spec: spec.into(),
            path: path.clone(),
        };
        if spec.is_empty() || spec == "." || spec == ".." {
            return Err(not_netns());
        }
        let fd = nix::fcntl::open(
            path.as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            nix::Error::ENOENT | nix::Error::ENOTDIR => NetlinkError::NoSuchNetns {
                spec: spec.into(),
                path: path.clone(),
            },
            nix::Error::EISDIR => not_netns(),
            e => NetlinkError::OpenNetns {
                spec: spec.into(),
                path: path.clone(),
                source: e.into(),
            },
        })?;
        // SAFETY: plain ioctl without argument on a valid fd.
        let ty = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE as _) };
        if ty != libc::CLONE_NEWNET {
            return Err(not_netns());
        }
        let st = nix::sys::stat::fstat(&fd).map_err(|e| NetlinkError::OpenNetns {
            spec: spec.into(),
            path: path.clone(),
            source: e.into(),
        })?;
        Ok(Netns {
            fd,
            spec: spec.into(),
            ino: st.st_ino,
        })
    }

    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub fn spec(&self) -> &str {
        &self.spec
    }

    /// Inode number of the namespace (identifies it; same as `stat -L` of the file).
    pub fn ino(&self) -> u64 {
        self.ino
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn place(&self) -> Place {
        Place::Netns(self.spec.clone())
    }
}

/// Inode of the calling thread's network namespace.
pub fn current_netns_ino() -> Result<u64, NetlinkError> {
    nix::sys::stat::stat("/proc/thread-self/ns/net")
        .map(|st| st.st_ino)
        .map_err(|e| NetlinkError::Io {
            op: "reading /proc/thread-self/ns/net".into(),
            source: e.into(),
        })
}

/// Runs `f` on a dedicated new OS thread that first enters `ns`; the caller's thread never
/// changes namespace. A panic in `f` is propagated to the caller.
pub fn in_netns<T: Send>(
    ns: &Netns,
    f: impl FnOnce() -> Result<T, NetlinkError> + Send,
) -> Result<T, NetlinkError> {
    std::thread::scope(|s| {
        let worker = std::thread::Builder::new()
            .name("vethfp-netns".into())
            .spawn_scoped(s, || {
                nix::sched::setns(ns.fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
                    NetlinkError::EnterNetns {
                        spec: ns.spec.clone(),
                        source: e.into(),
                    }
                })?;
                f()
            })
            .map_err(|e| NetlinkError::Io {
                op: format!("starting a thread to enter network namespace '{}'", ns.spec),
                source: e,
            })?;
        worker
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// A network interface as the kernel reports it.
#[derive(Debug, Clone)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    pub mac: Option<Mac>,
    pub mtu: u32,
    /// IFLA_INFO_KIND: "veth", "bridge", ... (None for e.g. loopback or physical NICs).
    pub kind: Option<String>,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// IFLA_LINK: for a veth, the peer's ifindex (in the peer's namespace).
    pub peer_ifindex: Option<u32>,
    /// IFLA_LINK_NETNSID: the peer's namespace id as seen from this namespace, if elsewhere.
    pub link_netnsid: Option<i32>,
    /// IFLA_IFALIAS; host ends vethfp creates carry [`OWNER_ALIAS`].
    pub alias: Option<String>,
    /// IFLA_MASTER: the bridge (or other controller) this link is a port of.
    pub master: Option<u32>,
    /// For a bridge: IFLA_BR_VLAN_FILTERING.
    pub vlan_filtering: Option<bool>,
    /// For a bridge port: IFLA_BRPORT_ISOLATED.
    pub port_isolated: Option<bool>,
}

/// Alias set on every host end vethfp creates, so leftovers of an interrupted `pair add`
/// (a link with no registry entry) can be recognised and removed safely.
pub const OWNER_ALIAS: &str = "vethfp";

impl From<LinkMessage> for Link {
    fn from(m: LinkMessage) -> Link {
        let mut l = Link {
            ifindex: m.header.index,
            name: String::new(),
            mac: None,
            mtu: 0,
            kind: None,
            up: m.header.flags.contains(LinkFlags::Up),
            peer_ifindex: None,
            link_netnsid: None,
            alias: None,
            master: None,
            vlan_filtering: None,
            port_isolated: None,
        };
        for a in m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n,
                LinkAttribute::Address(a) => {
                    l.mac = <[u8; 6]>::try_from(a.as_slice()).ok().map(Mac)
                }
                LinkAttribute::Mtu(mtu) => l.mtu = mtu,
                LinkAttribute::Link(i) => l.peer_ifindex = Some(i),
                LinkAttribute::LinkNetNsId(id) => l.link_netnsid = Some(id),
                LinkAttribute::IfAlias(a) => l.alias = Some(a),
                LinkAttribute::Controller(m) => l.master = Some(m),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        match i {
                            LinkInfo::Kind(k) => l.kind = Some(k.to_string()),
                            LinkInfo::Data(InfoData::Bridge(v)) => {
                                for b in v {
                                    if let InfoBridge::VlanFiltering(on) = b {
                                        l.vlan_filtering = Some(on);
                                    }
                                }
                            }
                            LinkInfo::PortData(InfoPortData::BridgePort(v)) => {
                                for p in v {
                                    if let InfoBridgePort::Isolated(on) = p {
                                        l.port_isolated = Some(on);
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        l
    }
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

/// Runs `f` with a fresh netlink handle bound to the calling thread's network namespace.
pub(crate) fn run<T, F, Fut>(f: F) -> Result<T, NetlinkError>
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = Result<T, NetlinkError>>,
{
    if tokio::runtime::Handle::try_current().is_ok() {
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

async fn get_link(
    h: &Handle,
    name: Option<&str>,
    index: u32,
) -> Result<Option<Link>, NetlinkError> {
    let req = h.link().get();
    let (req, what) = match name {
        Some(n) => (req.match_name(n), format!("interface '{n}'")),
        None => (req.match_index(index), format!("interface index {index}")),
    };
    let mut stream = pin!(req.execute());
    match stream.try_next().await {
        Ok(m) => Ok(m.map(Link::from)),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(nl_err(format!("looking up {what}"), e)),
    }
}

// ---------------------------------------------------------------------------------------------
// Links.

/// The link called `name` in the calling thread's netns (the node); None if absent.
pub fn link_by_name(name: &str) -> Result<Option<Link>, NetlinkError> {
    check_ifname(name)?;
    run(|h| async move { get_link(&h, Some(name), 0).await })
}

/// The link with `ifindex` in the calling thread's netns; None if absent.
pub fn link_by_index(ifindex: u32) -> Result<Option<Link>, NetlinkError> {
    if ifindex == 0 {
        return Ok(None);
    }
    run(|h| async move { get_link(&h, None, ifindex).await })
}

/// All links in the calling thread's netns.
pub fn links() -> Result<Vec<Link>, NetlinkError> {
    run(|h| async move {
        h.link()
            .get()
            .execute()
            .map_ok(Link::from)
            .try_collect()
            .await
            .map_err(|e| nl_err("listing interfaces", e))
    })
}

pub struct VethRequest<'a> {
    pub host_name: &'a str,
    pub host_mac: Mac,
    pub peer_name: &'a str,
    pub peer_mac: Mac,
    pub peer_netns: &'a Netns,
    pub mtu: Option<u32>,
}

/// One RTM_NEWLINK: host end in the current netns, peer created directly inside
/// `peer_netns` under its final name, MACs and MTU set on both. Returns the host ifindex.
///
/// If a name is taken (EEXIST), the error says which one: the host name in the node, else
/// the peer name in the container namespace. Either way nothing is created.
pub fn create_veth(req: &VethRequest) -> Result<u32, NetlinkError> {
    check_ifname(req.host_name)?;
    check_ifname(req.peer_name)?;
    for mac in [req.host_mac, req.peer_mac] {
        if !mac.is_unicast() {
            return Err(NetlinkError::InvalidMac(mac));
        }
    }
    if let Some(mtu) = req.mtu
        && !(68..=65535).contains(&mtu)
    {
        return Err(NetlinkError::InvalidMtu(mtu));
    }

    let mut peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(req.peer_name)
        .address(req.peer_mac.0.to_vec());
    let mut host = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
        .name(req.host_name)
        .address(req.host_mac.0.to_vec());
    if let Some(mtu) = req.mtu {
        peer = peer.mtu(mtu);
        host = host.mtu(mtu);
    }
    let peer = peer.setns_by_fd(req.peer_netns.fd().as_raw_fd()).build();
    let msg = host
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();

    enum Outcome {
        Created(u32),
        HostExists,
        PeerExists,
    }
    let host_name = req.host_name;
    let outcome = run(|h| async move {
        match h.link().add(msg).execute().await {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(libc::EEXIST) => {
                return Ok(if get_link(&h, Some(host_name), 0).await?.is_some() {
                    Outcome::HostExists
                } else {
                    Outcome::PeerExists
                });
            }
            Err(e) => {
                return Err(nl_err(
                    format!(
                        "creating veth '{host_name}' (container side: '{}')",
                        req.peer_name
                    ),
                    e,
                ));
            }
        }
        match get_link(&h, Some(host_name), 0).await? {
            Some(l) => {
                // The kernel ignores IFLA_IFALIAS in RTM_NEWLINK: mark the host end right away
                // in a second request (a kill between the two leaves an unmarked link).
                let mark = LinkUnspec::new_with_index(l.ifindex)
                    .alias(OWNER_ALIAS)
                    .build();
                h.link()
                    .set(mark)
                    .execute()
                    .await
                    .map_err(|e| nl_err(format!("marking '{host_name}' as vethfp's"), e))?;
                Ok(Outcome::Created(l.ifindex))
            }
            None => Err(NetlinkError::Netlink {
                op: format!("creating veth '{host_name}'"),
                msg: "the new interface vanished right after creation (deleted concurrently?)"
                    .into(),
                errno: None,
            }),
        }
    })?;
    match outcome {
        Outcome::Created(ifindex) => Ok(ifindex),
        Outcome::HostExists => Err(NetlinkError::Exists {
            name: req.host_name.into(),
            place: Place::Node,
        }),
        // EEXIST while the host name is free: the container name is the one taken. Inferring
        // this on failure spares the common path a thread to look into the container first.
        Outcome::PeerExists => Err(NetlinkError::Exists {
            name: req.peer_name.into(),
            place: req.peer_netns.place(),
        }),
    }
}

/// Deletes a link in the current netns (for a veth, both ends go). Ok(false) if already gone.
pub fn delete_link(ifindex: u32) -> Result<bool, NetlinkError> {
    if ifindex == 0 {
        return Ok(false);
    }
    run(|h| async move {
        match h.link().del(ifindex).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(nl_err(format!("deleting interface index {ifindex}"), e)),
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Addresses, routes, neighbours.

fn vethfp_route<T>(b: RouteMessageBuilder<T>) -> RouteMessageBuilder<T> {
    b.protocol(RouteProtocol::Other(RTPROT_VETHFP))
}

/// The id (`IFLA_LINK_NETNSID` numbering) the current netns gives the namespace behind
/// `ns`, if it has assigned one.
pub fn netns_id(ns: &Netns) -> Result<Option<i32>, NetlinkError> {
    use netlink_packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
    use netlink_packet_route::{
        RouteNetlinkMessage,
        nsid::{NsidAttribute, NsidMessage},
    };
    let fd = ns.fd().as_raw_fd() as u32;
    run(|mut h| async move {
        let mut msg = NsidMessage::default();
        msg.attributes = vec![NsidAttribute::Fd(fd)];
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(msg));
        req.header.flags = NLM_F_REQUEST;
        let mut resp = h
            .request(req)
            .map_err(|e| nl_err("asking for a namespace id", e))?;
        while let Some(m) = futures::StreamExt::next(&mut resp).await {
            match m.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(n)) => {
                    for a in n.attributes {
                        if let NsidAttribute::Id(id) = a {
                            return Ok((id >= 0).then_some(id));
                        }
                    }
                }
                NetlinkPayload::Error(e) => {
                    return Err(NetlinkError::Netlink {
                        op: "asking for a namespace id".into(),
                        msg: e.to_string(),
                        errno: e.code.map(|c| c.get().abs()),
                    });
                }
                _ => {}
            }
        }
        Ok(None)
    })
}

/// Every address (with prefix) on `ifindex` in the handle's netns.
async fn link_addrs(h: &Handle, ifindex: u32, what: &str) -> Result<Vec<Cidr>, NetlinkError> {
    let mut out = Vec::new();
    let mut s = pin!(h.address().get().set_link_index_filter(ifindex).execute());
    while let Some(m) = s
        .try_next()
        .await
        .map_err(|e| nl_err(format!("listing addresses of {what}"), e))?
    {
        if m.header.index != ifindex {
            continue;
        }
        for a in m.attributes {
            if let AddressAttribute::Address(addr) = a {
                out.push(Cidr {
                    addr,
                    prefix: m.header.prefix_len,
                });
            }
        }
    }
    Ok(out)
}

/// Addresses (with prefix) on `ifindex` in the current netns, link-local excluded.
pub fn addresses(ifindex: u32) -> Result<Vec<Cidr>, NetlinkError> {
    run(|h| async move {
        let mut out = link_addrs(&h, ifindex, &format!("ifindex {ifindex}")).await?;
        out.retain(|c| match c.addr {
            IpAddr::V4(v4) => !v4.is_link_local(),
            IpAddr::V6(v6) => !v6.is_unicast_link_local(),
        });
        Ok(out)
    })
}

/// Unicast routes of the main table in the current netns whose output device is `ifindex`,
/// as (destination, prefix length); a default route shows as (0.0.0.0 or ::, 0). Includes
/// routes the kernel adds itself (e.g. fe80::/64 on an up interface).
pub fn routes_via(ifindex: u32) -> Result<Vec<(IpAddr, u8)>, NetlinkError> {
    Ok(main_routes()?
        .into_iter()
        .filter(|(oif, _, _)| *oif == ifindex)
        .map(|(_, dst, len)| (dst, len))
        .collect())
}

/// Unicast routes of the main table in the node: (output ifindex, destination, prefix length).
fn main_routes() -> Result<Vec<(u32, IpAddr, u8)>, NetlinkError> {
    run(|h| async move {
        let all: Vec<RouteMessage> = h
            .route()
            .get(RouteMessageBuilder::<IpAddr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_err("listing routes", e))?;
        let mut out = Vec::new();
        for r in all {
            let family = r.header.address_family;
            if !matches!(family, AddressFamily::Inet | AddressFamily::Inet6)
                || r.header.kind != RouteType::Unicast
            {
                continue;
            }
            let mut table = u32::from(r.header.table);
            let mut oif = None;
            let mut dst = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Table(t) => table = *t,
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Destination(RouteAddress::Inet(v4)) => dst = Some((*v4).into()),
                    RouteAttribute::Destination(RouteAddress::Inet6(v6)) => {
                        dst = Some((*v6).into())
                    }
                    _ => {}
                }
            }
            let Some(oif) = oif else { continue };
            if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
                continue;
            }
            let dst = dst.unwrap_or(if family == AddressFamily::Inet {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            } else {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            });
            out.push((oif, dst, r.header.destination_prefix_length));
        }
        Ok(out)
    })
}

/// The node's main-table routes and permanent neighbours, dumped once for a whole
/// reconciliation pass (one dump per endpoint would be quadratic in the endpoint count).
#[derive(Debug, Default, Clone)]
pub struct NodeView {
    /// Indexed: (oif, destination, prefix length) and (ifindex, address) → lladdr.
    route_set: std::collections::HashSet<(u32, IpAddr, u8)>,
    neigh_map: std::collections::HashMap<(u32, IpAddr), Vec<u8>>,
}

impl NodeView {
    pub fn dump() -> Result<NodeView, NetlinkError> {
        Ok(NodeView {
            route_set: main_routes()?.into_iter().collect(),
            neigh_map: permanent_neighbours()?
                .into_iter()
                .map(|(i, ip, ll)| ((i, ip), ll))
                .collect(),
        })
    }
}

/// Permanent neighbour entries in the node: (ifindex, address, link-layer address).
fn permanent_neighbours() -> Result<Vec<(u32, IpAddr, Vec<u8>)>, NetlinkError> {
    use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute};
    run(|h| async move {
        let neigh: Vec<_> = h
            .neighbours()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_err("listing neighbours", e))?;
        Ok(neigh
            .into_iter()
            .filter(|n| n.header.state == NeighbourState::Permanent)
            .filter_map(|n| {
                let ifindex = n.header.ifindex;
                let mut ip = None;
                let mut ll = None;
                for a in n.attributes {
                    match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                            ip = Some(IpAddr::V4(v4))
                        }
                        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                            ip = Some(IpAddr::V6(v6))
                        }
                        NeighbourAttribute::LinkLayerAddress(m) => ll = Some(m),
                        _ => {}
                    }
                }
                Some((ifindex, ip?, ll?))
            })
            .collect())
    })
}
