//! Conntrack over netlink (ctnetlink, `NETLINK_NETFILTER`): what the TCP hand-off needs and
//! nothing more — read one entry, change the TCP window-tracking flags of one entry, and
//! follow destroy notifications.
//!
//! The messages are small and fixed, so they are written here directly: an `nlmsghdr`, an
//! `nfgenmsg` and netlink attributes (include/uapi/linux/netfilter/nfnetlink_conntrack.h).
//! An update of an existing entry is `IPCTNL_MSG_CT_NEW` without `NLM_F_CREATE`/`NLM_F_EXCL`
//! (the kernel then changes the entry it finds by tuple: `ctnetlink_change_conntrack`);
//! `CTA_PROTOINFO_TCP_FLAGS_{ORIGINAL,REPLY}` carry `{flags, mask}`, and the kernel applies
//! `flags & mask` after clearing `mask` (`nlattr_to_tcp`). Every call runs in the network
//! namespace of the calling thread (the node).

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use netlink_sys::{Socket, SocketAddr};

const NETLINK_NETFILTER: isize = 12;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = 0x3fff;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_PROTOINFO: u16 = 4;
const CTA_HELP: u16 = 5;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
const CTA_PROTOINFO_TCP_FLAGS_ORIGINAL: u16 = 4;
const CTA_PROTOINFO_TCP_FLAGS_REPLY: u16 = 5;

/// `ct->status` bits (include/uapi/linux/netfilter/nf_conntrack_common.h).
pub const IPS_ASSURED: u32 = 1 << 2;
pub const IPS_SRC_NAT: u32 = 1 << 4;
pub const IPS_DST_NAT: u32 = 1 << 5;
pub const IPS_OFFLOAD: u32 = 1 << 14;
/// TCP conntrack states (`enum tcp_conntrack`).
pub const TCP_CONNTRACK_ESTABLISHED: u8 = 3;
/// Per-direction TCP window-tracking flags (`IP_CT_TCP_FLAG_*`).
pub const IP_CT_TCP_FLAG_BE_LIBERAL: u8 = 0x08;
pub const IP_CT_TCP_FLAG_MAXACK_SET: u8 = 0x20;

/// One direction of a connection as conntrack keys it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

impl Tuple {
    /// The other direction.
    pub fn inverse(&self) -> Tuple {
        Tuple {
            proto: self.proto,
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
        }
    }
    fn family(&self) -> u8 {
        match self.src {
            IpAddr::V4(_) => libc::AF_INET as u8,
            IpAddr::V6(_) => libc::AF_INET6 as u8,
        }
    }
}

/// What the hand-off needs to know of one conntrack entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub orig: Tuple,
    pub reply: Tuple,
    pub status: u32,
    /// TCP state (`TCP_CONNTRACK_*`), for TCP entries.
    pub tcp_state: Option<u8>,
    /// TCP window-tracking flags of the original and the reply direction.
    pub tcp_flags: [u8; 2],
    /// A conntrack helper (FTP, SIP, ...) is attached.
    pub helper: bool,
    pub zone: u16,
}

impl Entry {
    /// Both directions skip the window checks.
    pub fn liberal(&self) -> bool {
        self.tcp_flags
            .iter()
            .all(|f| f & IP_CT_TCP_FLAG_BE_LIBERAL != 0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CtError {
    #[error("ctnetlink {op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("ctnetlink {op}: the kernel sent a message that does not parse")]
    Malformed { op: &'static str },
}

/// A ctnetlink request socket of the calling thread's network namespace.
pub struct Conntrack {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Conntrack {
    pub fn open() -> Result<Conntrack, CtError> {
        let io = |op| move |source| CtError::Io { op, source };
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(io("opening a socket"))?;
        sock.bind_auto().map_err(io("binding the socket"))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(io("connecting the socket"))?;
        Ok(Conntrack {
            sock,
            seq: 0,
            buf: Vec::with_capacity(16 << 10),
        })
    }

    /// The entry that holds `t` in either direction (default zone), None if there is none.
    pub fn get(&mut self, t: &Tuple) -> Result<Option<Entry>, CtError> {
        let mut m = Msg::new(IPCTNL_MSG_CT_GET, t.family());
        m.tuple(CTA_TUPLE_ORIG, t);
        let mut found = None;
        match self.call(m, "get", |payload| {
            found = parse_entry(payload);
        }) {
            Ok(()) => {}
            Err(CtError::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
        found.map(Some).ok_or(CtError::Malformed { op: "get" })
    }

    /// Sets `flags` within `mask` on both directions' TCP window-tracking flags of the entry
    /// whose original direction is `orig`. False if there is no such entry (any more).
    pub fn set_tcp_flags(&mut self, orig: &Tuple, flags: u8, mask: u8) -> Result<bool, CtError> {
        let mut m = Msg::new(IPCTNL_MSG_CT_NEW, orig.family());
        m.tuple(CTA_TUPLE_ORIG, orig);
        let pi = m.begin(CTA_PROTOINFO);
        let tcp = m.begin(CTA_PROTOINFO_TCP);
        m.attr(CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, &[flags, mask]);
        m.attr(CTA_PROTOINFO_TCP_FLAGS_REPLY, &[flags, mask]);
        m.end(tcp);
        m.end(pi);
        match self.call(m, "update", |_| {}) {
            Ok(()) => Ok(true),
            Err(CtError::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Sends `m` and reads until the kernel's acknowledgement, handing every conntrack
    /// message of the answer to `each`.
    fn call(
        &mut self,
        mut m: Msg,
        op: &'static str,
        mut each: impl FnMut(&[u8]),
    ) -> Result<(), CtError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let data = m.finish(seq);
        self.sock
            .send(&data, 0)
            .map_err(|source| CtError::Io { op, source })?;
        loop {
            self.buf.clear();
            match self.sock.recv(&mut self.buf, 0) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(CtError::Io { op, source }),
            }
            for (ty, mseq, payload) in messages(&self.buf) {
                if mseq != seq {
                    continue; // an answer to an earlier request that timed out
                }
                match ty {
                    NLMSG_ERROR => {
                        let code = payload
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .ok_or(CtError::Malformed { op })?;
                        if code == 0 {
                            return Ok(());
                        }
                        return Err(CtError::Io {
                            op,
                            source: io::Error::from_raw_os_error(-code),
                        });
                    }
                    NLMSG_DONE => return Ok(()),
                    _ => each(payload),
                }
            }
        }
    }
}

/// A conntrack entry went away (or notifications were lost).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtEvent {
    Destroyed {
        orig: Tuple,
    },
    /// The socket overflowed: some destroy notifications are lost.
    Overrun,
}

/// Follows the conntrack destroy notifications of the calling thread's network namespace on a
/// thread of its own, which hands each event to `sink` as it is read; the thread ends when
/// `sink` returns false. Subscribed when this returns.
///
/// The sink runs on the reading thread: a sink that filters (most destroyed entries are of no
/// interest to the caller) costs one wake-up per notification instead of one per thread the
/// event would otherwise cross.
pub fn watch_destroy<F>(sink: F) -> Result<(), CtError>
where
    F: FnMut(CtEvent) -> bool + Send + 'static,
{
    let io = |op| move |source| CtError::Io { op, source };
    let mut sock = Socket::new(NETLINK_NETFILTER).map_err(io("opening an event socket"))?;
    sock.bind_auto().map_err(io("binding the event socket"))?;
    sock.add_membership(NFNLGRP_CONNTRACK_DESTROY)
        .map_err(io("subscribing to destroy notifications"))?;
    if let Err(e) = sock.set_rx_buf_sz(4 << 20) {
        log::debug!("conntrack event socket: SO_RCVBUF: {e}");
    }
    std::thread::Builder::new()
        .name("vethfp-ct-events".into())
        .spawn(move || pump(sock, sink))
        .map_err(io("starting the conntrack event thread"))?;
    Ok(())
}

/// How long the reading thread pauses after it has read what was queued. While it sleeps
/// here, and not in `recv`, the kernel queues a notification without waking anyone: under
/// a stream of destroyed entries (short connections reusing ports kill their TIME_WAIT
/// entries in the softirq of the new SYN) that wake-up, an IPI to the agent's CPU, was paid
/// by the packet path for every connection. The price is a notification read up to this much
/// later; an idle socket still wakes the thread at once.
const BATCH_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

fn pump(sock: Socket, mut sink: impl FnMut(CtEvent) -> bool) {
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
    // Whether the last read found something: then drain without blocking, and pause once the
    // queue is empty.
    let mut draining = false;
    loop {
        buf.clear();
        let flags = if draining { libc::MSG_DONTWAIT } else { 0 };
        match sock.recv(&mut buf, flags) {
            Ok(_) => draining = true,
            Err(e) if draining && e.kind() == io::ErrorKind::WouldBlock => {
                draining = false;
                std::thread::sleep(BATCH_PAUSE);
                continue;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                if !sink(CtEvent::Overrun) {
                    return;
                }
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("conntrack event socket: {e}; destroy notifications stop here");
                sink(CtEvent::Overrun);
                return;
            }
        }
        for (ty, _, payload) in messages(&buf) {
            if ty != (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE {
                continue;
            }
            if let Some(e) = parse_entry(payload)
                && !sink(CtEvent::Destroyed { orig: e.orig })
            {
                return;
            }
        }
    }
}

/// The netlink messages of one datagram: (type, seq, payload after the header).
fn messages(mut data: &[u8]) -> Vec<(u16, u32, &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 16 {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if len < 16 || len > data.len() {
            break;
        }
        let ty = u16::from_ne_bytes([data[4], data[5]]);
        let seq = u32::from_ne_bytes([data[8], data[9], data[10], data[11]]);
        out.push((ty, seq, &data[16..len]));
        data = &data[align(len).min(data.len())..];
    }
    out
}

const fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// Netlink attributes: (type without flags, payload).
fn attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let ty = u16::from_ne_bytes([data[2], data[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > data.len() {
            return None;
        }
        let payload = &data[4..len];
        data = &data[align(len).min(data.len())..];
        Some((ty, payload))
    })
}

fn find(data: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(data).find(|(t, _)| *t == ty).map(|(_, p)| p)
}

fn be16(p: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(p.get(..2)?.try_into().ok()?))
}

/// A conntrack message (after its `nfgenmsg`) as an [`Entry`].
fn parse_entry(payload: &[u8]) -> Option<Entry> {
    let a = payload.get(4..)?; // nfgenmsg
    let orig = parse_tuple(find(a, CTA_TUPLE_ORIG)?)?;
    let reply = parse_tuple(find(a, CTA_TUPLE_REPLY)?)?;
    let status = find(a, CTA_STATUS)
        .and_then(|p| Some(u32::from_be_bytes(p.get(..4)?.try_into().ok()?)))
        .unwrap_or(0);
    let tcp = find(a, CTA_PROTOINFO).and_then(|p| find(p, CTA_PROTOINFO_TCP));
    let tcp_state = tcp
        .and_then(|t| find(t, CTA_PROTOINFO_TCP_STATE))
        .and_then(|s| s.first().copied());
    let flag = |ty| {
        tcp.and_then(|t| find(t, ty))
            .and_then(|f| f.first().copied())
            .unwrap_or(0)
    };
    Some(Entry {
        orig,
        reply,
        status,
        tcp_state,
        tcp_flags: [
            flag(CTA_PROTOINFO_TCP_FLAGS_ORIGINAL),
            flag(CTA_PROTOINFO_TCP_FLAGS_REPLY),
        ],
        helper: find(a, CTA_HELP).is_some(),
        zone: find(a, CTA_ZONE).and_then(be16).unwrap_or(0),
    })
}

fn parse_tuple(t: &[u8]) -> Option<Tuple> {
    let ip = find(t, CTA_TUPLE_IP)?;
    let proto = find(t, CTA_TUPLE_PROTO)?;
    let v4 = |p: &[u8]| -> Option<IpAddr> {
        let b: [u8; 4] = p.get(..4)?.try_into().ok()?;
        Some(IpAddr::V4(Ipv4Addr::from(b)))
    };
    let v6 = |p: &[u8]| -> Option<IpAddr> {
        let b: [u8; 16] = p.get(..16)?.try_into().ok()?;
        Some(IpAddr::V6(Ipv6Addr::from(b)))
    };
    let (src, dst) = match (find(ip, CTA_IP_V4_SRC), find(ip, CTA_IP_V4_DST)) {
        (Some(s), Some(d)) => (v4(s)?, v4(d)?),
        _ => (v6(find(ip, CTA_IP_V6_SRC)?)?, v6(find(ip, CTA_IP_V6_DST)?)?),
    };
    Some(Tuple {
        proto: *find(proto, CTA_PROTO_NUM)?.first()?,
        src,
        dst,
        sport: find(proto, CTA_PROTO_SRC_PORT).and_then(be16).unwrap_or(0),
        dport: find(proto, CTA_PROTO_DST_PORT).and_then(be16).unwrap_or(0),
    })
}

/// A request being written: header placeholder, nfgenmsg, attributes.
struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(cmd: u16, family: u8) -> Msg {
        let mut buf = vec![0u8; 16];
        let ty = (NFNL_SUBSYS_CTNETLINK << 8) | cmd;
        buf[4..6].copy_from_slice(&ty.to_ne_bytes());
        buf[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        buf.extend_from_slice(&[family, 0, 0, 0]); // nfgenmsg: family, version 0, res_id 0
        Msg { buf }
    }

    fn attr(&mut self, ty: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(align(self.buf.len()), 0);
    }

    /// Opens a nested attribute; returns where its header is.
    fn begin(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        at
    }

    fn end(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn tuple(&mut self, ty: u16, t: &Tuple) {
        let outer = self.begin(ty);
        let ip = self.begin(CTA_TUPLE_IP);
        match (t.src, t.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                self.attr(CTA_IP_V4_SRC, &s.octets());
                self.attr(CTA_IP_V4_DST, &d.octets());
            }
            (s, d) => {
                let v6 = |a: IpAddr| match a {
                    IpAddr::V6(a) => a.octets(),
                    IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                };
                self.attr(CTA_IP_V6_SRC, &v6(s));
                self.attr(CTA_IP_V6_DST, &v6(d));
            }
        }
        self.end(ip);
        let proto = self.begin(CTA_TUPLE_PROTO);
        self.attr(CTA_PROTO_NUM, &[t.proto]);
        self.attr(CTA_PROTO_SRC_PORT, &t.sport.to_be_bytes());
        self.attr(CTA_PROTO_DST_PORT, &t.dport.to_be_bytes());
        self.end(proto);
        self.end(outer);
    }

    fn finish(&mut self, seq: u32) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        std::mem::take(&mut self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Tuple {
        Tuple {
            proto: 6,
            src: "10.0.0.2".parse().unwrap(),
            dst: "10.0.0.3".parse().unwrap(),
            sport: 40000,
            dport: 80,
        }
    }

    /// A request's bytes parse back into the tuple it was written from (the same attribute
    /// layout the kernel uses in its answers).
    #[test]
    fn a_written_tuple_parses_back() {
        for tuple in [
            t(),
            Tuple {
                src: "fd00::2".parse().unwrap(),
                dst: "fd00::3".parse().unwrap(),
                ..t()
            },
        ] {
            let mut m = Msg::new(IPCTNL_MSG_CT_NEW, tuple.family());
            m.tuple(CTA_TUPLE_ORIG, &tuple);
            m.tuple(CTA_TUPLE_REPLY, &tuple.inverse());
            m.attr(CTA_STATUS, &(IPS_ASSURED | IPS_DST_NAT).to_be_bytes());
            let pi = m.begin(CTA_PROTOINFO);
            let tcp = m.begin(CTA_PROTOINFO_TCP);
            m.attr(CTA_PROTOINFO_TCP_STATE, &[TCP_CONNTRACK_ESTABLISHED]);
            m.attr(CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, &[0x08, 0]);
            m.attr(CTA_PROTOINFO_TCP_FLAGS_REPLY, &[0x0a, 0]);
            m.end(tcp);
            m.end(pi);
            let data = m.finish(7);
            let msgs = messages(&data);
            assert_eq!(msgs.len(), 1);
            let (ty, seq, payload) = msgs[0];
            assert_eq!((ty, seq), (NFNL_SUBSYS_CTNETLINK << 8, 7));
            let e = parse_entry(payload).expect("parses");
            assert_eq!(e.orig, tuple);
            assert_eq!(e.reply, tuple.inverse());
            assert_eq!(e.status, IPS_ASSURED | IPS_DST_NAT);
            assert_eq!(e.tcp_state, Some(TCP_CONNTRACK_ESTABLISHED));
            assert_eq!(e.tcp_flags, [0x08, 0x0a]);
            assert!(e.liberal());
            assert!(!e.helper);
        }
    }

    #[test]
    fn truncated_messages_do_not_parse() {
        let mut m = Msg::new(IPCTNL_MSG_CT_NEW, libc::AF_INET as u8);
        m.tuple(CTA_TUPLE_ORIG, &t());
        let data = m.finish(1);
        for cut in 0..data.len() {
            // Never panics; a cut message is no message or an entry without its reply tuple.
            for (_, _, p) in messages(&data[..cut]) {
                assert!(parse_entry(p).is_none());
            }
        }
    }
}
