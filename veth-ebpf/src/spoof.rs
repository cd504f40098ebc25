//! Anti-spoofing: is this frame's source the endpoint's own?
//!
//! Allowed sources: the container's MAC; its own IPv4/IPv6 addresses; 0.0.0.0 (DHCP, ARP
//! probes), :: (IPv6 DAD) and link-local IPv6 (ND, router solicitations): none of those can
//! be routed anywhere, and DAD/ND/ARP of the container's own addresses must keep working.

use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
};
use veth_common::{EndpointRecord, V_DROP_SPOOF_IP, V_DROP_SPOOF_MAC};

use crate::{
    maps::{VFP_EP4, VFP_EP6},
    route::ptr_at,
};

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

#[inline(always)]
fn own_v4(addr: [u8; 4], ifindex: u32) -> bool {
    addr == [0; 4]
        || VFP_EP4
            .get_ptr(addr)
            .is_some_and(|t| unsafe { (*t).ifindex } == ifindex)
}

/// The drop reason if the frame's source is not the endpoint's own, None if it is (or if the
/// frame is too short to say: the kernel drops truncated frames itself).
#[inline(always)]
pub fn check(
    data: usize,
    data_end: usize,
    rec: *const EndpointRecord,
    ifindex: u32,
) -> Option<usize> {
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
            if !own_v4((*ip).src_addr, ifindex) {
                return Some(V_DROP_SPOOF_IP);
            }
        } else if et == EtherType::Ipv6 as u16 {
            let ip: *mut Ipv6Hdr = ptr_at(data, data_end, EthHdr::LEN)?;
            let src = (*ip).src_addr;
            let unspecified = src == [0; 16];
            let link_local = src[0] == 0xfe && src[1] & 0xc0 == 0x80;
            if !unspecified
                && !link_local
                && VFP_EP6.get_ptr(src).is_none_or(|t| (*t).ifindex != ifindex)
            {
                return Some(V_DROP_SPOOF_IP);
            }
        } else if et == EtherType::Arp as u16 {
            let arp: *mut ArpEthIp = ptr_at(data, data_end, EthHdr::LEN)?;
            if (*arp).hlen == 6 && (*arp).plen == 4 {
                if (*arp).sha != (*rec).target.container_mac {
                    return Some(V_DROP_SPOOF_MAC);
                }
                if !own_v4((*arp).spa, ifindex) {
                    return Some(V_DROP_SPOOF_IP);
                }
            }
        }
    }
    None
}
