//! Anti-spoofing: is this frame's source the endpoint's own?
//!
//! Allowed sources: the container's MAC; its own IPv4/IPv6 addresses (compared with the
//! endpoint's record, already looked up: no extra map lookup); 0.0.0.0 (DHCP, ARP probes), ::
//! (IPv6 DAD) and link-local IPv6 (ND, router solicitations): none of those can be routed
//! anywhere, and DAD/ND/ARP of the container's own addresses must keep working.

use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
};
use veth_common::{AF_V4, AF_V6, EndpointRecord, MAX_ADDRS, V_DROP_SPOOF_IP, V_DROP_SPOOF_MAC};

use crate::route::ptr_at;

/// ARP for Ethernet/IPv4: the fixed part up to and including the sender protocol address.
#[repr(C)]
struct ArpEthIp {
    htype: [u8; 2],
    ptype: [u8; 2],
    hlen: u8,
    plen: u8,
    oper: [u8; 2],
    sha: [u8; 6],
    spa: [u8; 4],
}

/// Is `addr` (`len` = 4 or 16 significant bytes) one of the record's addresses of `family`?
#[inline(always)]
fn owns(rec: *const EndpointRecord, family: u8, addr: &[u8; 16]) -> bool {
    // SAFETY: `rec` comes from a successful map lookup; the loop is bounded by MAX_ADDRS.
    unsafe {
        let n = (*rec).naddrs as usize;
        for i in 0..MAX_ADDRS {
            if i >= n {
                break;
            }
            let a = &(*rec).addrs[i];
            if a.family == family && a.addr == *addr {
                return true;
            }
        }
    }
    false
}

#[inline(always)]
fn own_v4(rec: *const EndpointRecord, addr: [u8; 4]) -> bool {
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&addr);
    addr == [0; 4] || owns(rec, AF_V4, &a)
}

/// The drop reason if the frame's source is not the endpoint's own, None if it is (or if the
/// frame is too short to say: the kernel drops truncated frames itself).
#[inline(always)]
pub fn check(data: usize, data_end: usize, rec: *const EndpointRecord) -> Option<usize> {
    let eth: *mut EthHdr = ptr_at(data, data_end, 0)?;
    // SAFETY: every pointer dereferenced below is bounds-checked by `ptr_at`; `rec` comes from
    // a successful map lookup.
    unsafe {
        if (*eth).src_addr != (*rec).target.container_mac {
            return Some(V_DROP_SPOOF_MAC);
        }
        let et = (*eth).ether_type;
        if et == EtherType::Ipv4 as u16 {
            let ip: *mut Ipv4Hdr = ptr_at(data, data_end, EthHdr::LEN)?;
            if !own_v4(rec, (*ip).src_addr) {
                return Some(V_DROP_SPOOF_IP);
            }
        } else if et == EtherType::Ipv6 as u16 {
            let ip: *mut Ipv6Hdr = ptr_at(data, data_end, EthHdr::LEN)?;
            let src = (*ip).src_addr;
            let unspecified = src == [0; 16];
            let link_local = src[0] == 0xfe && src[1] & 0xc0 == 0x80;
            if !unspecified && !link_local && !owns(rec, AF_V6, &src) {
                return Some(V_DROP_SPOOF_IP);
            }
        } else if et == EtherType::Arp as u16 {
            let arp: *mut ArpEthIp = ptr_at(data, data_end, EthHdr::LEN)?;
            if (*arp).hlen == 6 && (*arp).plen == 4 {
                if (*arp).sha != (*rec).target.container_mac {
                    return Some(V_DROP_SPOOF_MAC);
                }
                if !own_v4(rec, (*arp).spa) {
                    return Some(V_DROP_SPOOF_IP);
                }
            }
        }
    }
    None
}
