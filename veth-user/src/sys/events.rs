//! Link events of the node (rtnetlink multicast group RTNLGRP_LINK), for the agent.
//!
//! A dedicated OS thread blocks on a netlink socket subscribed to link notifications and
//! forwards what matters into a channel. It runs in the network namespace of the thread that
//! calls [`watch`] (the node), like every other netlink call of this crate. If the kernel had
//! to drop notifications (ENOBUFS: the socket buffer overflowed), an [`LinkEvent::Overrun`]
//! tells the receiver to resynchronise with a full reconciliation.

use std::time::Instant;

use netlink_packet_core::{NetlinkBuffer, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{RouteNetlinkMessage, link::LinkAttribute};
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};
use tokio::sync::mpsc;

use crate::sys::netlink::NetlinkError;

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
    /// Interface `ifindex` is administratively up (RTM_NEWLINK with IFF_UP): sent for every
    /// change of an up link, so handlers must be idempotent.
    Up { ifindex: u32 },
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

/// Subscribes to the link notifications of the calling thread's network namespace and
/// forwards them to the returned channel from a background thread. The subscription is in
/// place when this returns, so nothing that happens afterwards is missed.
pub fn watch() -> Result<mpsc::UnboundedReceiver<LinkEvent>, NetlinkError> {
    let io = |op: &str| {
        let op = op.to_string();
        move |source| NetlinkError::Io { op, source }
    };
    let mut sock = Socket::new(NETLINK_ROUTE).map_err(io("opening a netlink socket"))?;
    sock.bind_auto().map_err(io("binding the netlink socket"))?;
    sock.add_membership(libc::RTNLGRP_LINK)
        .map_err(io("subscribing to link notifications"))?;
    if let Err(e) = sock.set_rx_buf_sz(RCVBUF) {
        log::debug!("netlink event socket: SO_RCVBUF: {e}");
    }
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("vethfp-events".into())
        .spawn(move || pump(sock, tx))
        .map_err(io("starting the netlink event thread"))?;
    Ok(rx)
}

fn pump(sock: Socket, tx: mpsc::UnboundedSender<LinkEvent>) {
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
    loop {
        buf.clear();
        match sock.recv(&mut buf, 0) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
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
        for ev in parse(&buf, at) {
            if tx.send(ev).is_err() {
                return; // the agent is gone
            }
        }
    }
}

/// The events in one datagram (which may hold several netlink messages).
fn parse(mut data: &[u8], at: Instant) -> Vec<LinkEvent> {
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
            if link
                .header
                .flags
                .contains(netlink_packet_route::link::LinkFlags::Up)
            {
                out.push(LinkEvent::Up {
                    ifindex: link.header.index,
                });
            }
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
