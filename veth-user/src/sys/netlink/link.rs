//! Links: lookup, listing, creating a veth pair (the peer straight into its namespace),
//! deleting.

use std::{os::fd::AsRawFd, pin::pin};

use futures::TryStreamExt;
use netlink_packet_route::link::{
    InfoBridge, InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec};

use super::{NetlinkError, Netns, Place, check_ifname, errno, nl_err, run};
use crate::types::Mac;

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

pub(super) async fn get_link(
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
    check_veth_request(req)?;
    let msg = veth_message(req);
    let (host_name, peer_name) = (req.host_name, req.peer_name);
    let outcome = run(|h| async move { add_and_mark(&h, msg, host_name, peer_name).await })?;
    match outcome {
        VethOutcome::Created(ifindex) => Ok(ifindex),
        VethOutcome::HostExists => Err(NetlinkError::Exists {
            name: req.host_name.into(),
            place: Place::Node,
        }),
        // EEXIST while the host name is free: the container name is the one taken. Inferring
        // this on failure spares the common path a thread to look into the container first.
        VethOutcome::PeerExists => Err(NetlinkError::Exists {
            name: req.peer_name.into(),
            place: req.peer_netns.place(),
        }),
    }
}

/// Names, MACs and MTU a veth can have, checked before asking the kernel.
fn check_veth_request(req: &VethRequest) -> Result<(), NetlinkError> {
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
    Ok(())
}

/// The one RTM_NEWLINK: the host end, with the peer inside `peer_netns` as its info data.
fn veth_message(req: &VethRequest) -> LinkMessage {
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
    host.set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build()
}

/// What the RTM_NEWLINK of [`create_veth`] did.
enum VethOutcome {
    Created(u32),
    HostExists,
    PeerExists,
}

/// Creates the veth and marks its host end as vethfp's; on EEXIST, says which name is taken.
async fn add_and_mark(
    h: &Handle,
    msg: LinkMessage,
    host_name: &str,
    peer_name: &str,
) -> Result<VethOutcome, NetlinkError> {
    match h.link().add(msg).execute().await {
        Ok(()) => {}
        Err(e) if errno(&e) == Some(libc::EEXIST) => {
            return Ok(if get_link(h, Some(host_name), 0).await?.is_some() {
                VethOutcome::HostExists
            } else {
                VethOutcome::PeerExists
            });
        }
        Err(e) => {
            return Err(nl_err(
                format!("creating veth '{host_name}' (container side: '{peer_name}')"),
                e,
            ));
        }
    }
    match get_link(h, Some(host_name), 0).await? {
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
            Ok(VethOutcome::Created(l.ifindex))
        }
        None => Err(NetlinkError::Netlink {
            op: format!("creating veth '{host_name}'"),
            msg: "the new interface vanished right after creation (deleted concurrently?)".into(),
            errno: None,
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
