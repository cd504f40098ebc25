//! The L3 forwarding decision shared by every hook: may this frame, received from a local
//! endpoint, be handed straight to another local endpoint? And the rewrite a router would do.
//!
//! Anything a router must look at more closely (IPv4 options, IPv6 hop-by-hop options,
//! TTL/hop limit about to expire, link-local or multicast addresses, unknown destinations)
//! is left to the kernel stack: `lookup` returns `None`.

use core::mem::size_of;

use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
};
use veth_common::Target;

use crate::maps::{VFP_EP4, VFP_EP6};

pub enum L3 {
    V4(*mut Ipv4Hdr),
    V6(*mut Ipv6Hdr),
}

/// A decided hop: where to, and the headers to rewrite.
pub struct Hop {
    pub target: Target,
    pub eth: *mut EthHdr,
    pub l3: L3,
}

impl Hop {
    /// Length of the L3 packet as the router sees it (what must fit the egress MTU).
    #[inline(always)]
    pub fn l3_len(&self) -> u32 {
        // SAFETY: pointers were bounds-checked in `lookup`.
        unsafe {
            match self.l3 {
                L3::V4(ip) => u16::from_be_bytes((*ip).tot_len) as u32,
                L3::V6(ip) => u16::from_be_bytes((*ip).payload_len) as u32 + Ipv6Hdr::LEN as u32,
            }
        }
    }
}

#[inline(always)]
fn ptr_at<T>(data: usize, data_end: usize, off: usize) -> Option<*mut T> {
    if data + off + size_of::<T>() > data_end {
        return None;
    }
    Some((data + off) as *mut T)
}

/// Decides the hop for the frame in `[data, data_end)` that arrived from the endpoint whose
/// host end is `from_ifindex`. Reads only; nothing is changed.
#[inline(always)]
pub fn lookup(data: usize, data_end: usize, from_ifindex: u32) -> Option<Hop> {
    let eth: *mut EthHdr = ptr_at(data, data_end, 0)?;
    // SAFETY: `eth` is bounds-checked.
    let (multicast, ether_type) = unsafe { ((*eth).dst_addr[0] & 1 != 0, (*eth).ether_type) };
    if multicast {
        return None; // broadcast / multicast: the kernel's business
    }
    if ether_type == EtherType::Ipv4 as u16 {
        lookup_v4(eth, ptr_at(data, data_end, EthHdr::LEN)?, from_ifindex)
    } else if ether_type == EtherType::Ipv6 as u16 {
        lookup_v6(eth, ptr_at(data, data_end, EthHdr::LEN)?, from_ifindex)
    } else {
        None
    }
}

#[inline(always)]
fn lookup_v4(eth: *mut EthHdr, ip: *mut Ipv4Hdr, from_ifindex: u32) -> Option<Hop> {
    // SAFETY: `ip` is bounds-checked by the caller.
    unsafe {
        // Version 4 with a 20-byte header: options (router alert, record route...) need the
        // kernel's forwarding code.
        if (*ip).vihl != 0x45 || (*ip).ttl <= 1 {
            return None;
        }
        let target = *VFP_EP4.get_ptr((*ip).dst_addr)?;
        if target.ifindex == from_ifindex {
            return None;
        }
        Some(Hop {
            target,
            eth,
            l3: L3::V4(ip),
        })
    }
}

#[inline(always)]
fn lookup_v6(eth: *mut EthHdr, ip: *mut Ipv6Hdr, from_ifindex: u32) -> Option<Hop> {
    // SAFETY: `ip` is bounds-checked by the caller.
    unsafe {
        let dst = &(*ip).dst_addr;
        let src = &(*ip).src_addr;
        if (*ip).vcf[0] >> 4 != 6
            || (*ip).hop_limit <= 1
            || (*ip).next_hdr == 0 // hop-by-hop options: every router must process them
            || dst[0] == 0xff
            || (dst[0] == 0xfe && dst[1] & 0xc0 == 0x80)
            || (src[0] == 0xfe && src[1] & 0xc0 == 0x80)
        {
            return None;
        }
        let target = *VFP_EP6.get_ptr(*dst)?;
        if target.ifindex == from_ifindex {
            return None;
        }
        Some(Hop {
            target,
            eth,
            l3: L3::V6(ip),
        })
    }
}

/// Rewrites the frame as a router would for `hop`: destination MAC := container's, source MAC :=
/// the destination host end's (the container's gateway), TTL / hop limit decremented with the
/// IPv4 header checksum updated incrementally (RFC 1624, as the kernel's ip_decrease_ttl).
#[inline(always)]
pub fn rewrite(hop: &Hop) {
    // SAFETY: pointers were bounds-checked in `lookup`.
    unsafe {
        (*hop.eth).dst_addr = hop.target.container_mac;
        (*hop.eth).src_addr = hop.target.host_mac;
        match hop.l3 {
            L3::V4(ip) => {
                let c = u16::from_be_bytes((*ip).check) as u32 + 0x0100;
                let c = c + (c >= 0xffff) as u32;
                (*ip).check = (c as u16).to_be_bytes();
                (*ip).ttl -= 1;
            }
            L3::V6(ip) => (*ip).hop_limit -= 1,
        }
    }
}
