//! The L3 forwarding decision shared by the routed hooks: may this frame be routed by the fast
//! path, and to which local endpoint? Plus the rewrite a router does.
//!
//! Anything a router must look at more closely (IPv4 options, IPv6 hop-by-hop options,
//! TTL/hop limit about to expire, link-local or multicast addresses) is left to the kernel
//! stack: [`check`] returns `None`.

use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};
use veth_common::Target;

use crate::dp::{
    maps::{VFP_EP4, VFP_EP6},
    parse::{L3, Packet},
};

/// The IP header of a routable frame.
#[derive(Clone, Copy)]
pub enum Ip {
    V4(*mut Ipv4Hdr),
    V6(*mut Ipv6Hdr),
}

/// A frame that passed the router checks: its Ethernet and IP headers.
#[derive(Clone, Copy)]
pub struct Route {
    pub eth: *mut EthHdr,
    pub ip: Ip,
}

/// Applies the checks the kernel's receive and forwarding paths would (ip_rcv / ipv6_rcv, then
/// the router) to a parsed frame: one failing any of them goes to the kernel, which drops or
/// answers it as it always would. Reads only.
#[inline(always)]
pub fn check(p: &Packet) -> Option<Route> {
    // SAFETY: `p.eth` and the L3 pointers were bounds-checked by `parse`.
    let multicast = unsafe { (*p.eth).dst_addr[0] & 1 != 0 };
    if multicast {
        return None; // broadcast / multicast: the kernel's business
    }
    let l3_room = p.len.checked_sub(EthHdr::LEN as u32)?;
    match p.l3() {
        // SAFETY: as above (20 bytes).
        L3::V4(ip) => unsafe {
            // Version 4 with a 20-byte header: options (router alert, record route...) need
            // the kernel's forwarding code.
            if (*ip).vihl != 0x45 || (*ip).ttl <= 1 {
                return None;
            }
            let tot = u16::from_be_bytes((*ip).tot_len) as u32;
            if tot < Ipv4Hdr::LEN as u32 || tot > l3_room {
                return None; // truncated or inconsistent: ip_rcv drops it
            }
            if !v4_unicast((*ip).src_addr) || !v4_unicast((*ip).dst_addr) {
                return None; // martian: the router drops it
            }
            if !v4_checksum_ok(ip as *const [u8; 20]) {
                return None;
            }
            Some(Route {
                eth: p.eth,
                ip: Ip::V4(ip),
            })
        },
        // SAFETY: as above.
        L3::V6(ip) => unsafe {
            let payload = u16::from_be_bytes((*ip).payload_len) as u32;
            if (*ip).vcf[0] >> 4 != 6
                || (*ip).hop_limit <= 1
                || (*ip).next_hdr == 0 // hop-by-hop options: every router must process them
                || payload + Ipv6Hdr::LEN as u32 > l3_room
                || !v6_routable(&(*ip).dst_addr)
                || !v6_routable(&(*ip).src_addr)
            {
                return None;
            }
            Some(Route {
                eth: p.eth,
                ip: Ip::V6(ip),
            })
        },
        L3::Arp(_) | L3::Other => None,
    }
}

impl Route {
    /// Length of the L3 packet as the router sees it (what must fit the egress MTU).
    #[inline(always)]
    pub fn l3_len(&self) -> u32 {
        // SAFETY: pointers were bounds-checked by `parse`.
        unsafe {
            match self.ip {
                Ip::V4(ip) => u16::from_be_bytes((*ip).tot_len) as u32,
                Ip::V6(ip) => u16::from_be_bytes((*ip).payload_len) as u32 + Ipv6Hdr::LEN as u32,
            }
        }
    }

    /// The endpoint that owns the destination address, if any.
    #[inline(always)]
    pub fn local_target(&self) -> Option<Target> {
        // SAFETY: pointers were bounds-checked by `parse`.
        unsafe {
            match self.ip {
                Ip::V4(ip) => VFP_EP4.get_ptr((*ip).dst_addr).map(|t| *t),
                Ip::V6(ip) => VFP_EP6.get_ptr((*ip).dst_addr).map(|t| *t),
            }
        }
    }

    /// The destination MAC the sender wrote.
    #[inline(always)]
    pub fn dst_mac(&self) -> [u8; 6] {
        // SAFETY: bounds-checked by `parse`.
        unsafe { (*self.eth).dst_addr }
    }

    /// Rewrites the frame as a router would: new MACs, TTL / hop limit decremented with the
    /// IPv4 header checksum updated incrementally (RFC 1624, as the kernel's ip_decrease_ttl).
    #[inline(always)]
    pub fn rewrite(&self, dst_mac: [u8; 6], src_mac: [u8; 6]) {
        // SAFETY: pointers were bounds-checked by `parse`.
        unsafe {
            (*self.eth).dst_addr = dst_mac;
            (*self.eth).src_addr = src_mac;
        }
        self.decrement_ttl();
    }

    #[inline(always)]
    pub fn decrement_ttl(&self) {
        // SAFETY: pointers were bounds-checked by `parse`.
        unsafe {
            match self.ip {
                Ip::V4(ip) => {
                    let c = u16::from_be_bytes((*ip).check) as u32 + 0x0100;
                    let c = c + (c >= 0xffff) as u32;
                    (*ip).check = (c as u16).to_be_bytes();
                    (*ip).ttl -= 1;
                }
                Ip::V6(ip) => (*ip).hop_limit -= 1,
            }
        }
    }
}

/// Not 0.0.0.0/8, loopback, multicast, or the reserved/broadcast 240.0.0.0/4.
#[inline(always)]
fn v4_unicast(a: [u8; 4]) -> bool {
    a[0] != 0 && a[0] != 127 && a[0] < 224
}

/// Not ::, ::1, multicast or link-local.
#[inline(always)]
fn v6_routable(a: &[u8; 16]) -> bool {
    let mut low = 0u8;
    for b in &a[..15] {
        low |= *b;
    }
    let unspecified_or_loopback = low == 0 && a[15] <= 1;
    !unspecified_or_loopback && a[0] != 0xff && !(a[0] == 0xfe && a[1] & 0xc0 == 0x80)
}

/// The IPv4 header checksum verifies (ones' complement sum of the 10 words is 0xffff).
#[inline(always)]
fn v4_checksum_ok(h: *const [u8; 20]) -> bool {
    // SAFETY: the caller bounds-checked 20 bytes at `h`.
    let h = unsafe { &*h };
    let mut sum: u32 = 0;
    for i in 0..10 {
        sum += u16::from_be_bytes([h[2 * i], h[2 * i + 1]]) as u32;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum == 0xffff
}
