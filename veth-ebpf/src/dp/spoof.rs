//! Anti-spoofing: is this frame's source the endpoint's own?
//!
//! Allowed sources: the container's MAC; its own IPv4/IPv6 addresses (compared with the
//! endpoint's record, already looked up: no extra map lookup); 0.0.0.0 (DHCP, ARP probes), ::
//! (IPv6 DAD) and link-local IPv6 (ND, router solicitations): none of those can be routed
//! anywhere, and DAD/ND/ARP of the container's own addresses must keep working.

use veth_common::{
    AF_V4, AF_V6, Dir, EP_SPOOF_AUDIT, EP_SPOOF_ENFORCE, EndpointAddr, EndpointRecord, MAX_ADDRS,
    Verdict,
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

// The record's addresses are read as words: a map value is 8-aligned and `addr` is 4-aligned
// in the record (checked here), so four word loads instead of sixteen byte loads per address.
const _: () = assert!(
    core::mem::offset_of!(EndpointRecord, addrs).is_multiple_of(4)
        && core::mem::size_of::<EndpointAddr>().is_multiple_of(4)
        && core::mem::offset_of!(EndpointAddr, addr).is_multiple_of(4)
);

/// Is `addr` (four words as loaded, network order; an IPv4 address in the first and zeroes,
/// as the record stores it) one of the record's addresses of `family`? All 16 bytes compared,
/// as before, with four word compares.
#[inline(always)]
fn owns(rec: *const EndpointRecord, family: u8, addr: &[u32; 4]) -> bool {
    // SAFETY: `rec` comes from a successful map lookup; the loop is bounded by MAX_ADDRS; the
    // word loads are aligned (see the assertion above).
    unsafe {
        let n = (*rec).naddrs as usize;
        for i in 0..MAX_ADDRS {
            if i >= n {
                break;
            }
            let a = &raw const (*rec).addrs[i];
            if (*a).family == family {
                let w = &raw const (*a).addr as *const u32;
                let diff = (w.read() ^ addr[0])
                    | (w.add(1).read() ^ addr[1])
                    | (w.add(2).read() ^ addr[2])
                    | (w.add(3).read() ^ addr[3]);
                if diff == 0 {
                    return true;
                }
            }
        }
    }
    false
}

/// A 4-byte load from the packet (may be unaligned: the BPF target makes byte loads of it).
#[inline(always)]
unsafe fn word(p: *const u8) -> u32 {
    // SAFETY: the caller bounds-checked 4 bytes at `p`.
    unsafe { core::ptr::read_unaligned(p as *const u32) }
}

#[inline(always)]
fn own_v4(rec: *const EndpointRecord, addr: *const [u8; 4]) -> bool {
    // SAFETY: the caller bounds-checked the 4 bytes at `addr`.
    let a = unsafe { word(addr.cast()) };
    a == 0 || owns(rec, AF_V4, &[a, 0, 0, 0])
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
                if !own_v4(rec, &raw const (*ip).src_addr) {
                    return Some(Verdict::DropSpoofIp);
                }
            }
            L3::V6(ip) => {
                let p = (&raw const (*ip).src_addr).cast::<u8>();
                let src = [word(p), word(p.add(4)), word(p.add(8)), word(p.add(12))];
                let unspecified = src[0] | src[1] | src[2] | src[3] == 0;
                // fe80::/10: the first two bytes as they sit in the first word.
                let b = src[0].to_ne_bytes();
                let link_local = b[0] == 0xfe && b[1] & 0xc0 == 0x80;
                if !unspecified && !link_local && !owns(rec, AF_V6, &src) {
                    return Some(Verdict::DropSpoofIp);
                }
            }
            L3::Arp(arp) => {
                if (*arp).hlen == 6 && (*arp).plen == 4 {
                    if (*arp).sha != (*rec).target.container_mac {
                        return Some(Verdict::DropSpoofMac);
                    }
                    if !own_v4(rec, &raw const (*arp).spa) {
                        return Some(Verdict::DropSpoofIp);
                    }
                }
            }
            L3::Other => {}
        }
    }
    None
}
