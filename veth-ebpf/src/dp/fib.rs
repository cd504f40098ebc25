//! The node's FIB, for `--egress fast`: where would the kernel route this packet, and send it
//! there as the kernel would (bpf_redirect with the resolved neighbour, or bpf_redirect_neigh
//! when the next hop's MAC is not resolved yet).

use core::mem::{MaybeUninit, size_of};

use aya_ebpf::{
    bindings::{bpf_fib_lookup, bpf_redir_neigh},
    cty::{c_long, c_void},
    helpers::generated::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};

use crate::dp::{parse::Packet, router::Route};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
pub const FIB_SUCCESS: c_long = 0;
pub const FIB_NO_NEIGH: c_long = 7;

/// A fresh parameter block in the caller's `slot` (64 bytes, kept in one place on the stack:
/// zeroed where it stays, not moved), zeroed with 16 word stores. Not `mem::zeroed()`: the BPF
/// target lowers that to a call of a byte-at-a-time memset loop, 64 rounds per packet
/// (volatile stores are not merged into one).
#[inline(always)]
pub fn params(slot: &mut MaybeUninit<bpf_fib_lookup>) -> &mut bpf_fib_lookup {
    zero_words(slot.as_mut_ptr().cast(), size_of::<bpf_fib_lookup>() / 4);
    // SAFETY: every byte was written; bpf_fib_lookup is plain data, all zeroes is valid.
    unsafe { slot.assume_init_mut() }
}

/// Zeroes `n` 4-byte words at `w` (4-aligned) with word stores.
#[inline(always)]
fn zero_words(w: *mut u32, n: usize) {
    for i in 0..n {
        // SAFETY: the caller passes a 4-aligned block of at least n words.
        unsafe { core::ptr::write_volatile(w.add(i), 0) };
    }
}

/// An IPv6 address in the packet as four words, loaded as they are (network order). Not a
/// transmute of the array: that is a call of a byte-at-a-time memmove on the BPF target.
#[inline(always)]
unsafe fn v6_words(a: *const [u8; 16]) -> [u32; 4] {
    let p = a as *const u32;
    // SAFETY: the caller bounds-checked 16 bytes at `a`; unaligned reads are allowed.
    unsafe {
        [
            core::ptr::read_unaligned(p),
            core::ptr::read_unaligned(p.add(1)),
            core::ptr::read_unaligned(p.add(2)),
            core::ptr::read_unaligned(p.add(3)),
        ]
    }
}

/// Looks `r` (the route of `pkt`) up as received on `ifindex`; returns the helper's code (FIB_SUCCESS,
/// FIB_NO_NEIGH or a failure) with `p.ifindex` the egress device.
///
/// The MTU. With tot_len 0 the helper would only check the device MTU, with 4 bytes of VLAN
/// slack (is_skb_forwardable), not at all when the neighbour is unresolved, and never for GSO
/// packets: DF packets up to 4 bytes over the MTU, and every TCP segment a TSO sender makes,
/// would go out oversized, and the sender would never get its ICMP. So: a plain packet's L3
/// length goes in tot_len (the FIB checks it against the route's MTU, learnt PMTU included,
/// before anything else); a GSO packet's segments the caller checks with bpf_check_mtu.
#[inline(always)]
pub fn lookup(
    ctx: &TcContext,
    pkt: &Packet,
    r: &Route,
    ifindex: u32,
    gso: bool,
    p: &mut bpf_fib_lookup,
) -> c_long {
    // The IP header by the packet's own nullable pointers, not by `r.ip`: LLVM may test the
    // IPv4 pointer for null in place of the enum's tag, and the verifier, which does not know
    // that a packet pointer is never null, would then read an IPv4 packet as IPv6 (see
    // `parse::Packet`). A null check of the pointer it uses needs no such knowledge.
    // SAFETY: the header pointers were bounds-checked by `parse`; unions written as the uapi
    // says.
    unsafe {
        if let Some(ip) = pkt.ip4 {
            let ip = ip.as_ptr();
            p.family = AF_INET;
            p.l4_protocol = (*ip).proto;
            p.__bindgen_anon_2.tos = (*ip).tos;
            p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes((*ip).src_addr);
            p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes((*ip).dst_addr);
        } else if let Some(ip) = pkt.ip6 {
            let ip = ip.as_ptr();
            p.family = AF_INET6;
            p.l4_protocol = (*ip).next_hdr;
            p.__bindgen_anon_2.flowinfo = u32::from_ne_bytes((*ip).vcf) & 0xffff_ff0fu32.to_be();
            p.__bindgen_anon_3.ipv6_src = v6_words(&raw const (*ip).src_addr);
            p.__bindgen_anon_4.ipv6_dst = v6_words(&raw const (*ip).dst_addr);
        } else {
            return -1; // not IP: `router::check` gave no Route for it
        }
    }
    if !gso {
        p.__bindgen_anon_1.tot_len = r.l3_len() as u16;
    }
    p.ifindex = ifindex;
    // SAFETY: helper call with a valid params struct of the size passed.
    unsafe {
        fib_lookup(
            ctx.skb.skb as *mut c_void,
            p,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    }
}

/// Sends `r` where the lookup (code `rc`, FIB_SUCCESS or FIB_NO_NEIGH) said: rewritten to the
/// resolved neighbour, or TTL-decremented for bpf_redirect_neigh to resolve. Returns the
/// redirect helper's result (TC_ACT_REDIRECT on success).
#[inline(always)]
pub fn redirect(r: &Route, rc: c_long, p: &bpf_fib_lookup) -> c_long {
    let out = p.ifindex;
    if rc == FIB_SUCCESS {
        r.rewrite(p.dmac, p.smac);
        // SAFETY: plain helper call.
        unsafe { bpf_redirect(out, 0) }
    } else {
        r.decrement_ttl();
        let mut slot = MaybeUninit::<bpf_redir_neigh>::uninit();
        zero_words(slot.as_mut_ptr().cast(), size_of::<bpf_redir_neigh>() / 4);
        // SAFETY: every byte was written (word stores, as in `params`); plain data.
        let nh = unsafe { slot.assume_init_mut() };
        nh.nh_family = p.family as u32;
        // SAFETY: unions read/written as the uapi says; helper call with a valid struct.
        unsafe {
            if p.family == AF_INET {
                nh.__bindgen_anon_1.ipv4_nh = p.__bindgen_anon_4.ipv4_dst;
            } else {
                nh.__bindgen_anon_1.ipv6_nh = p.__bindgen_anon_4.ipv6_dst;
            }
            bpf_redirect_neigh(out, nh, size_of::<bpf_redir_neigh>() as i32, 0)
        }
    }
}
