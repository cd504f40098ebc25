//! Anti-spoofing: is this frame's source the endpoint's own?
//!
//! Allowed sources: the container's MAC; its own IPv4/IPv6 addresses (compared with the
//! endpoint's record, already looked up: no extra map lookup); 0.0.0.0 (DHCP, ARP probes), ::
//! (IPv6 DAD) and link-local IPv6 (ND, router solicitations): none of those can be routed
//! anywhere, and DAD/ND/ARP of the container's own addresses must keep working.

use veth_common::{
    AF_V4, AF_V6, Dir, EP_SPOOF_AUDIT, EP_SPOOF_ENFORCE, EndpointRecord, MAX_ADDRS, Verdict,
};

use crate::dp::{
    count::count,
    deliver::{TC_ACT_SHOT, TCX_NEXT},
    parse::{L3, Packet},
};

/// The anti-spoofing step of a tc program on a host end, for a frame from the container
/// behind it (endpoint flags `flags`, counter slot `slot`): Some(tc action) if the frame
/// stops here — counted once, under its reason; enforce drops it, audit lets it take only the
/// kernel path — None if it goes on.
#[inline(always)]
pub fn screen(
    pkt: &Packet,
    rec: *const EndpointRecord,
    flags: u32,
    slot: u32,
    len: u32,
) -> Option<i32> {
    if flags & (EP_SPOOF_ENFORCE | EP_SPOOF_AUDIT) == 0 {
        return None;
    }
    let reason = check(pkt, rec)?;
    count(slot, Dir::FromContainer, reason, len);
    Some(if flags & EP_SPOOF_ENFORCE != 0 {
        TC_ACT_SHOT
    } else {
        TCX_NEXT
    })
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
pub fn check(p: &Packet, rec: *const EndpointRecord) -> Option<Verdict> {
    // SAFETY: every packet pointer was bounds-checked by `parse`; `rec` comes from a
    // successful map lookup.
    unsafe {
        if (*p.eth).src_addr != (*rec).target.container_mac {
            return Some(Verdict::DropSpoofMac);
        }
        match p.l3() {
            L3::V4(ip) => {
                if !own_v4(rec, (*ip).src_addr) {
                    return Some(Verdict::DropSpoofIp);
                }
            }
            L3::V6(ip) => {
                let src = (*ip).src_addr;
                let unspecified = src == [0; 16];
                let link_local = src[0] == 0xfe && src[1] & 0xc0 == 0x80;
                if !unspecified && !link_local && !owns(rec, AF_V6, &src) {
                    return Some(Verdict::DropSpoofIp);
                }
            }
            L3::Arp(arp) => {
                if (*arp).hlen == 6 && (*arp).plen == 4 {
                    if (*arp).sha != (*rec).target.container_mac {
                        return Some(Verdict::DropSpoofMac);
                    }
                    if !own_v4(rec, (*arp).spa) {
                        return Some(Verdict::DropSpoofIp);
                    }
                }
            }
            L3::Other => {}
        }
    }
    None
}
