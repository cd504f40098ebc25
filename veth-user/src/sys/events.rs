//! Link and tc events of the node (rtnetlink multicast groups RTNLGRP_LINK and RTNLGRP_TC),
//! for the agent.
//!
//! A dedicated OS thread blocks on a netlink socket subscribed to link notifications and
//! forwards what matters into a channel. It runs in the network namespace of the thread that
//! calls [`watch`] (the node), like every other netlink call of this crate. If the kernel had
//! to drop notifications (ENOBUFS: the socket buffer overflowed), an [`LinkEvent::Overrun`]
//! tells the receiver to resynchronise with a full reconciliation.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use netlink_packet_core::{NetlinkBuffer, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage, link::LinkAttribute};
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};
use tokio::sync::mpsc;

use crate::sys::netlink::{Link, NetlinkError, links};

/// Something happened to the node's links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// Interface `ifindex` left the node (deleted, or moved to another namespace, or gone
    /// with the namespace of its veth peer).
    Deleted {
        ifindex: u32,
        name: String,
        at: Instant,
    },
    /// Interface `ifindex` came up (RTM_NEWLINK with IFF_UP for a link this watch last saw
    /// down, or had not seen yet): sent once per transition, not for every change of an up
    /// link. Handlers must still be idempotent (a link seen first after it came up).
    Up { ifindex: u32 },
    /// A qdisc or filter of interface `ifindex` was added, changed or deleted
    /// (RTM_NEWQDISC/DELQDISC/NEWTFILTER/DELTFILTER): its hooks need a look. `deleted`: a
    /// qdisc or filter went away (a hook may be missing now).
    Tc { ifindex: u32, deleted: bool },
    /// Interface `ifindex` was made or changed (RTM_NEWLINK): `master` is the bridge it is a
    /// port of, if any (the agent follows the ports of accelerated bridges).
    Changed {
        ifindex: u32,
        master: Option<u32>,
        at: Instant,
    },
    /// Notifications were lost: the state must be compared in full.
    Overrun,
}

/// Socket receive buffer: room for bursts (a namespace with many links going away at once).
const RCVBUF: usize = 4 << 20;

/// The node's links as its notifications left them: seeded by a dump once the subscription is
/// in place, then changed by the event thread in the order the kernel sent the
/// notifications (so a notification queued during the dump cannot leave an older state
/// behind), and seeded again after notifications were lost. A reconciliation pass reads
/// this instead of dumping every link: at 1000 endpoints a dump of the node's links took
/// 20–35 ms (the kernel looks up each veth peer's namespace id in a list of all of them).
#[derive(Clone, Default)]
pub struct LinkTable(Arc<Mutex<HashMap<u32, Link>>>);

impl LinkTable {
    /// A copy of the table as it is now.
    pub fn snapshot(&self) -> HashMap<u32, Link> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Link>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn seed(&self) -> Result<(), NetlinkError> {
        let now: HashMap<u32, Link> = links()?.into_iter().map(|l| (l.ifindex, l)).collect();
        *self.lock() = now;
        Ok(())
    }

    /// Records `link`; true if it is up and was not up (or not known) before.
    fn set(&self, link: Link) -> bool {
        let up = link.up;
        let before = self.lock().insert(link.ifindex, link);
        up && !before.is_some_and(|l| l.up)
    }

    fn remove(&self, ifindex: u32) {
        self.lock().remove(&ifindex);
    }
}

/// Subscribes to the link notifications of the calling thread's network namespace and
/// forwards them to the returned channel from a background thread, keeping the returned
/// [`LinkTable`]. The subscription is in place when this returns, so nothing that happens
/// afterwards is missed.
pub fn watch() -> Result<(mpsc::UnboundedReceiver<LinkEvent>, LinkTable), NetlinkError> {
    let io = |op: &str| {
        let op = op.to_string();
        move |source| NetlinkError::Io { op, source }
    };
    let mut sock = Socket::new(NETLINK_ROUTE).map_err(io("opening a netlink socket"))?;
    sock.bind_auto().map_err(io("binding the netlink socket"))?;
    sock.add_membership(libc::RTNLGRP_LINK)
        .map_err(io("subscribing to link notifications"))?;
    sock.add_membership(libc::RTNLGRP_TC)
        .map_err(io("subscribing to tc notifications"))?;
    if let Err(e) = sock.set_rx_buf_sz(RCVBUF) {
        log::debug!("netlink event socket: SO_RCVBUF: {e}");
    }
    let table = LinkTable::default();
    table.seed()?;
    let (tx, rx) = mpsc::unbounded_channel();
    let t = table.clone();
    std::thread::Builder::new()
        .name("vethfp-events".into())
        .spawn(move || pump(sock, tx, t))
        .map_err(io("starting the netlink event thread"))?;
    Ok((rx, table))
}

fn pump(sock: Socket, tx: mpsc::UnboundedSender<LinkEvent>, table: LinkTable) {
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
    loop {
        buf.clear();
        match sock.recv(&mut buf, 0) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                // What was lost is in a new dump; what comes after it is queued meanwhile.
                if let Err(e) = table.seed() {
                    log::warn!("listing the node's links after lost notifications: {e}");
                }
                if tx.send(LinkEvent::Overrun).is_err() {
                    return;
                }
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("netlink event socket: {e}; link events stop here");
                let _ = tx.send(LinkEvent::Overrun);
                return;
            }
        }
        let at = Instant::now();
        for ev in parse(&buf, at, &table) {
            if tx.send(ev).is_err() {
                return; // the agent is gone
            }
        }
    }
}

/// The events in one datagram (which may hold several netlink messages).
fn parse(mut data: &[u8], at: Instant, table: &LinkTable) -> Vec<LinkEvent> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let len = match NetlinkBuffer::new_checked(data) {
            Ok(b) => b.length() as usize,
            Err(_) => break,
        };
        if len == 0 || len > data.len() {
            break;
        }
        let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[..len]).ok();
        if let Some(NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link))) =
            msg.as_ref().map(|m| &m.payload)
        {
            let master = link.attributes.iter().find_map(|a| match a {
                LinkAttribute::Controller(m) => Some(*m),
                _ => None,
            });
            out.push(LinkEvent::Changed {
                ifindex: link.header.index,
                master,
                at,
            });
            // The bridge also sends its ports' state as AF_BRIDGE messages, with other
            // attributes: only the link's own (AF_UNSPEC) ones describe it. Up is a
            // transition: an up link's every change (carrier, MTU, an XDP attach) would
            // otherwise wake the agent to look at its endpoint again.
            if link.header.interface_family == AddressFamily::Unspec
                && table.set(Link::from(link.clone()))
            {
                out.push(LinkEvent::Up {
                    ifindex: link.header.index,
                });
            }
        }
        if let Some(ev) = msg.as_ref().and_then(|m| tc_event(&m.payload)) {
            out.push(ev);
        }
        if let Some(msg) = msg
            && let NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) = msg.payload
        {
            let name = link
                .attributes
                .iter()
                .find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            if link.header.interface_family == AddressFamily::Unspec {
                table.remove(link.header.index);
            }
            out.push(LinkEvent::Deleted {
                ifindex: link.header.index,
                name,
                at,
            });
        }
        // Messages are 4-byte aligned.
        data = &data[((len + 3) & !3).min(data.len())..];
    }
    out
}

/// A qdisc or filter notification as a [`LinkEvent::Tc`].
fn tc_event(payload: &NetlinkPayload<RouteNetlinkMessage>) -> Option<LinkEvent> {
    let (m, deleted) = match payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewQueueDiscipline(m))
        | NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewTrafficFilter(m)) => (m, false),
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelQueueDiscipline(m))
        | NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelTrafficFilter(m)) => (m, true),
        _ => return None,
    };
    let ifindex = u32::try_from(m.header.index).ok().filter(|&i| i != 0)?;
    Some(LinkEvent::Tc { ifindex, deleted })
}
