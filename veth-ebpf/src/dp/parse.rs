//! Parse once: every hook reads the frame's Ethernet, L3 (IPv4, IPv6 or ARP) and L4 headers
//! here, bounds-checked, into one [`Packet`], and hands that to the anti-spoofing check
//! (`spoof`), the router checks (`router`), admission (`flow`) and delivery. Nothing after
//! this reads a header it has not been given.
//!
//! Parsing only locates and bounds-checks; it judges nothing. A header that is not there
//! (frame too short, not in the linear part) is simply absent (`None`, [`L3::Other`]), and
//! each consumer decides what absence means for it.

use core::{mem::size_of, ptr::NonNull};

use aya_ebpf::programs::TcContext;
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
};

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
/// The fixed TCP header.
pub const TCP_LEN: usize = 20;
/// What admission reads of UDP and ICMP/ICMPv6 echo: ports or type/code/checksum/identifier.
pub const L4_MIN: usize = 8;

/// ARP for Ethernet/IPv4: the fixed part up to and including the sender protocol address.
#[repr(C)]
pub struct ArpEthIp {
    pub htype: [u8; 2],
    pub ptype: [u8; 2],
    pub hlen: u8,
    pub plen: u8,
    pub oper: [u8; 2],
    pub sha: [u8; 6],
    pub spa: [u8; 4],
}

/// The network header, bounds-checked for its fixed part: what [`Packet::l3`] shows.
#[derive(Clone, Copy)]
pub enum L3 {
    V4(*mut Ipv4Hdr),
    V6(*mut Ipv6Hdr),
    Arp(*const ArpEthIp),
    /// Another EtherType, or one of the above cut short.
    Other,
}

/// One frame, parsed once.
///
/// Every header is its own nullable pointer (`Option<NonNull>` is one register, null = not
/// there), bounds-checked for its size when it was set. Not a kind tag next to one address:
/// LLVM may repeat a bounds check where it computes the tag, and the verifier, which cannot
/// tell that the repeat always agrees, then follows a path with the tag set and the address
/// not. A null check needs no such agreement. (Nor an enum with a payload-less variant: its
/// payload is left undefined, and the verifier refuses to copy an uninitialized register.)
#[derive(Clone, Copy)]
pub struct Packet {
    pub eth: *mut EthHdr,
    pub ip4: Option<NonNull<Ipv4Hdr>>,
    pub ip6: Option<NonNull<Ipv6Hdr>>,
    pub arp: Option<NonNull<ArpEthIp>>,
    /// The first [`L4_MIN`] bytes of the transport header, after a 20-byte IPv4 header or
    /// the fixed IPv6 header (an IPv6 extension header is not looked through: what `proto` /
    /// `next_hdr` says is what this is).
    pub l4: Option<NonNull<[u8; L4_MIN]>>,
    /// The whole fixed TCP header, when the protocol is TCP.
    pub tcp: Option<NonNull<[u8; TCP_LEN]>>,
    /// Length of the whole frame, linear or not (skb->len at tc, data_end - data at XDP).
    pub len: u32,
}

impl Packet {
    #[inline(always)]
    pub fn l3(&self) -> L3 {
        if let Some(ip) = self.ip4 {
            L3::V4(ip.as_ptr())
        } else if let Some(ip) = self.ip6 {
            L3::V6(ip.as_ptr())
        } else if let Some(arp) = self.arp {
            L3::Arp(arp.as_ptr())
        } else {
            L3::Other
        }
    }
}

#[inline(always)]
pub fn ptr_at<T>(data: usize, data_end: usize, off: usize) -> Option<*mut T> {
    if data + off + size_of::<T>() > data_end {
        return None;
    }
    Some((data + off) as *mut T)
}

#[inline(always)]
fn nn_at<T>(data: usize, data_end: usize, off: usize) -> Option<NonNull<T>> {
    // SAFETY: a packet address is never null (no null check for the verifier to follow).
    ptr_at(data, data_end, off).map(|p| unsafe { NonNull::new_unchecked(p) })
}

/// Parses the frame in `[data, data_end)`, `len` bytes long in all. None only if not even the
/// Ethernet header is there (the kernel drops such frames itself). Reads only.
#[inline(always)]
pub fn parse(data: usize, data_end: usize, len: u32) -> Option<Packet> {
    let eth: *mut EthHdr = ptr_at(data, data_end, 0)?;
    let mut p = Packet {
        eth,
        ip4: None,
        ip6: None,
        arp: None,
        l4: None,
        tcp: None,
        len,
    };
    // SAFETY: `eth` is bounds-checked.
    let et = unsafe { (*eth).ether_type };
    // Where the L4 header is, if at a fixed offset: after a 20-byte IPv4 header (nothing
    // vethfp accelerates has options) or the fixed IPv6 header.
    let (proto, l4off) = if et == EtherType::Ipv4 as u16 {
        p.ip4 = nn_at(data, data_end, EthHdr::LEN);
        match p.ip4 {
            // SAFETY: bounds-checked (20 bytes).
            Some(ip) => unsafe {
                let ip = ip.as_ptr();
                if (*ip).vihl == 0x45 {
                    ((*ip).proto, EthHdr::LEN + Ipv4Hdr::LEN)
                } else {
                    (0, 0)
                }
            },
            None => (0, 0),
        }
    } else if et == EtherType::Ipv6 as u16 {
        p.ip6 = nn_at(data, data_end, EthHdr::LEN);
        match p.ip6 {
            // SAFETY: bounds-checked.
            Some(ip) => unsafe { ((*ip.as_ptr()).next_hdr, EthHdr::LEN + Ipv6Hdr::LEN) },
            None => (0, 0),
        }
    } else {
        if et == EtherType::Arp as u16 {
            p.arp = nn_at(data, data_end, EthHdr::LEN);
        }
        (0, 0)
    };
    if l4off != 0 {
        p.l4 = nn_at(data, data_end, l4off);
        if proto == IPPROTO_TCP {
            p.tcp = nn_at(data, data_end, l4off);
        }
    }
    Some(p)
}

// ---- tc: the skb around the frame ----

const PACKET_HOST: u32 = 0;
/// Enough linear bytes for Ethernet + the fixed IPv6 header + a TCP header.
const HEADERS: u32 = (EthHdr::LEN + Ipv6Hdr::LEN + TCP_LEN) as u32;

/// (ifindex, length, routable): routable = addressed to this interface (PACKET_HOST) and not
/// carrying a VLAN tag the kernel already took off (that frame belongs to a VLAN device, or
/// nowhere, never to the fast path).
#[inline(always)]
pub fn skb_fields(ctx: &TcContext) -> (u32, u32, bool) {
    // SAFETY: ctx.skb.skb is the valid __sk_buff of this invocation.
    unsafe {
        let skb = &*ctx.skb.skb;
        (
            skb.ifindex,
            skb.len,
            skb.pkt_type == PACKET_HOST && skb.vlan_present == 0,
        )
    }
}

/// Makes sure the headers are in the linear part (rare on veth), then parses. The pull
/// invalidates every packet pointer taken before it, so it happens here, before the only parse.
/// A frame shorter than [`HEADERS`] that is linear already (every small frame on veth: a TCP
/// ACK, a 64-byte datagram) has nothing to pull: no helper call for it.
#[inline(always)]
pub fn parse_skb(ctx: &TcContext, len: u32) -> Option<Packet> {
    let want = if len < HEADERS { len } else { HEADERS };
    if ctx.data() + want as usize > ctx.data_end() {
        let _ = ctx.pull_data(want);
    }
    parse(ctx.data(), ctx.data_end(), len)
}
