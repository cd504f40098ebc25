//! tcx programs on the host end of each endpoint.
//!
//! - `vfp_tc_ingress`: everything the container sends. Unicast to another local endpoint is
//!   rewritten and `bpf_redirect_peer`ed into the destination container; the rest continues to
//!   the kernel stack. Counted on the sender (from_container) and, for the fast path, on the
//!   receiver (to_container) — redirect_peer skips the receiver's host end, so this is the only
//!   place to count it.
//! - `vfp_tc_egress`: what the kernel stack transmits into the container (slow path), counted as
//!   to_container/stack. Fast-path packets never pass here.

use aya_ebpf::{
    cty::c_long,
    helpers::generated::{bpf_check_mtu, bpf_redirect_peer},
    macros::classifier,
    programs::TcContext,
};
use network_types::{eth::EthHdr, ip::Ipv6Hdr};
use veth_common::{
    CFG_FASTPATH_OFF, DIR_FROM_CONTAINER, DIR_TO_CONTAINER, V_DROP_ERROR, V_FAST, V_STACK,
};

use crate::{
    maps::{config_flags, count},
    route::{self, Hop},
};

// The uapi values (the bindings type them differently per target).
const TC_ACT_SHOT: i32 = 2;
const TC_ACT_REDIRECT: i32 = 7;
/// tcx: continue with the next program in the chain, or the stack if this is the last one.
const TCX_NEXT: i32 = -1;
const PACKET_HOST: u32 = 0;
/// Enough linear bytes for Ethernet + the fixed IPv6 header.
const HEADERS: u32 = (EthHdr::LEN + Ipv6Hdr::LEN) as u32;

#[classifier]
pub fn vfp_tc_ingress(ctx: TcContext) -> i32 {
    // SAFETY: ctx.skb.skb is the valid __sk_buff of this invocation.
    let (ifindex, len, pkt_type) = unsafe {
        let skb = &*ctx.skb.skb;
        (skb.ifindex, skb.len, skb.pkt_type)
    };
    if pkt_type == PACKET_HOST
        && config_flags() & CFG_FASTPATH_OFF == 0
        && let Some(hop) = decide(&ctx, ifindex, len)
    {
        route::rewrite(&hop);
        let dst = hop.target.ifindex;
        // SAFETY: plain helper call.
        let ret = unsafe { bpf_redirect_peer(dst, 0) };
        if ret == TC_ACT_REDIRECT as c_long {
            count(ifindex, DIR_FROM_CONTAINER, V_FAST, len);
            count(dst, DIR_TO_CONTAINER, V_FAST, len);
            return TC_ACT_REDIRECT;
        }
        // Only bad flags make the helper fail; the frame is already rewritten, so it
        // cannot go to the stack any more.
        count(ifindex, DIR_FROM_CONTAINER, V_DROP_ERROR, len);
        return TC_ACT_SHOT;
    }
    count(ifindex, DIR_FROM_CONTAINER, V_STACK, len);
    TCX_NEXT
}

#[classifier]
pub fn vfp_tc_egress(ctx: TcContext) -> i32 {
    // SAFETY: ctx.skb.skb is the valid __sk_buff of this invocation.
    let (ifindex, len) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).len) };
    count(ifindex, DIR_TO_CONTAINER, V_STACK, len);
    TCX_NEXT
}

/// The fast-path decision with the skb-specific parts: linear headers and the MTU.
#[inline(always)]
fn decide(ctx: &TcContext, ifindex: u32, len: u32) -> Option<Hop> {
    if ctx.data() + HEADERS as usize > ctx.data_end() {
        // Headers not linear (rare on veth): pull them, then read the pointers anew.
        let want = if len < HEADERS { len } else { HEADERS };
        ctx.pull_data(want).ok()?;
    }
    let hop = route::lookup(ctx.data(), ctx.data_end(), ifindex)?;
    if hop.l3_len() > hop.target.mtu || len > hop.target.mtu + EthHdr::LEN as u32 {
        // Over the stored MTU, or a GSO super-packet: let the kernel decide exactly whether
        // its segments fit (bpf_check_mtu validates GSO segment sizes); if not, the stack
        // fragments or answers "fragmentation needed" / "packet too big".
        let mut mtu_len: u32 = 0;
        // SAFETY: helper call on this program's skb with a valid out pointer.
        let r =
            unsafe { bpf_check_mtu(ctx.skb.skb.cast(), hop.target.ifindex, &mut mtu_len, 0, 0) };
        if r != 0 {
            return None;
        }
    }
    Some(hop)
}
