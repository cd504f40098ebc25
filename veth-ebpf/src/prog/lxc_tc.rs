//! tcx programs on the host end of each endpoint.
//!
//! - `vfp_tc_ingress`: everything the container sends. After the anti-spoofing check, unicast
//!   to another local endpoint of the same network is rewritten and `bpf_redirect_peer`ed into
//!   the destination container; with `--egress fast`, traffic the node's FIB routes out of an
//!   uplink goes straight there. The rest continues to the stack. Fast-path packets are counted
//!   on the sender and on the receiver: redirect_peer skips the receiver's host end, so this is
//!   the only place to count them.
//! - `vfp_tc_egress`: what the kernel stack transmits into the container (slow path), counted
//!   as to_container/stack; under netfilter admission it confirms the flows the kernel
//!   forwarded. Fast-path packets never pass here.

use aya_ebpf::{cty::c_long, helpers::generated::bpf_check_mtu, programs::TcContext};
use veth_common::{
    CFG_ADMIT_ALWAYS, CFG_BPF_LOG, CFG_EGRESS_FAST, CFG_FASTPATH_OFF, Dir, FLOW_NET_UPLINK, Verdict,
};

use crate::dp::{
    count::count,
    deliver::{
        self, BPF_MTU_CHK_SEGS, TC_ACT_REDIRECT, TC_ACT_SHOT, TCX_NEXT, fits_routed, redirect_peer,
    },
    fib, flow,
    maps::{VFP_ENDPOINTS, VFP_UPLINKS, config_flags},
    parse::{Packet, parse_skb, skb_fields},
    router::{self, Route},
    spoof,
};

#[inline(always)]
pub fn tc_ingress(ctx: &TcContext) -> i32 {
    let (ifindex, len, routable) = skb_fields(ctx);
    let cfg = config_flags(); // read once per packet
    let ret = ingress(ctx, ifindex, len, routable, cfg);
    // Debug events only when `vethfp agent --bpf-log` asked for them: one bit test otherwise.
    if cfg & CFG_BPF_LOG != 0 {
        let verdict = match ret {
            TC_ACT_REDIRECT => "redirect",
            TC_ACT_SHOT => "drop",
            _ => "pass",
        };
        aya_log_ebpf::info!(
            ctx,
            "tc ingress ifindex={} len={} verdict={}",
            ifindex,
            len,
            verdict
        );
    }
    ret
}

#[inline(always)]
fn ingress(ctx: &TcContext, ifindex: u32, len: u32, routable: bool, cfg: u32) -> i32 {
    let Some(src) = VFP_ENDPOINTS.get_ptr(ifindex) else {
        return TCX_NEXT; // not (or no longer) an endpoint: nothing to count against
    };
    // SAFETY: pointer from a successful lookup.
    let (flags, network, slot) =
        unsafe { ((*src).flags, (*src).target.network, (*src).target.slot) };
    let Some(pkt) = parse_skb(ctx, len) else {
        // Not even an Ethernet header: the kernel drops it.
        count(slot, Dir::FromContainer, Verdict::Stack, len);
        return TCX_NEXT;
    };
    if let Some(ret) = spoof::screen(&pkt, src, flags, slot, len) {
        return ret;
    }
    if routable
        && cfg & CFG_FASTPATH_OFF == 0
        && let Some(ret) = forward(ctx, &pkt, ifindex, slot, network, cfg)
    {
        return ret;
    }
    count(slot, Dir::FromContainer, Verdict::Stack, len);
    TCX_NEXT
}

/// The fast path for a frame from the container behind `ifindex`; None = the stack decides.
#[inline(always)]
fn forward(
    ctx: &TcContext,
    pkt: &Packet,
    ifindex: u32,
    slot: u32,
    network: u32,
    cfg: u32,
) -> Option<i32> {
    let len = pkt.len;
    let r = router::check(pkt)?;
    if let Some(t) = r.local_target() {
        // Across networks, the node's routing and firewall decide.
        if t.ifindex == ifindex
            || t.network != network
            || !fits_routed(ctx, &r, len, &t)
            || !deliver::tc_target_ok(ctx, &t)
            || !flow::admit_packet(pkt, network, t.ifindex, cfg)
        {
            return None;
        }
        r.rewrite(t.container_mac, t.host_mac);
        return Some(redirect_peer(
            slot,
            Dir::FromContainer,
            Verdict::Fast,
            &t,
            len,
        ));
    }
    if cfg & CFG_EGRESS_FAST == 0 {
        return None;
    }
    egress(ctx, pkt, &r, ifindex, slot, cfg)
}

/// Container → outside: when the node's FIB routes the packet out of an attached uplink,
/// rewrite and send it there directly; if the next hop's MAC is not resolved yet, let
/// bpf_redirect_neigh resolve it. Anything the FIB cannot answer cleanly (no route, local
/// delivery, blackhole/prohibit, fragmentation needed, forwarding disabled) goes to the stack.
#[inline(always)]
fn egress(
    ctx: &TcContext,
    pkt: &Packet,
    r: &Route,
    ifindex: u32,
    slot: u32,
    cfg: u32,
) -> Option<i32> {
    let len = pkt.len;
    // SAFETY: ctx.skb.skb is the valid __sk_buff of this invocation.
    let gso = unsafe { (*ctx.skb.skb).gso_size } != 0;
    let mut params = core::mem::MaybeUninit::uninit();
    let p = fib::params(&mut params);
    let rc = fib::lookup(ctx, pkt, r, ifindex, gso, p);
    if rc != fib::FIB_SUCCESS && rc != fib::FIB_NO_NEIGH {
        return None;
    }
    let out = p.ifindex;
    // SAFETY: pointer from a successful lookup, read once.
    let up_slot = unsafe { (*VFP_UPLINKS.get_ptr(out)?).slot };
    let mut mtu_len: u32 = 0;
    // SAFETY: helper call on this program's skb with a valid out pointer.
    if gso
        && unsafe { bpf_check_mtu(ctx.skb.skb.cast(), out, &mut mtu_len, 0, BPF_MTU_CHK_SEGS) } != 0
    {
        return None; // the stack sends "fragmentation needed" / "packet too big"
    }
    // Under netfilter admission a masqueraded flow leaves the uplink with another tuple: it is
    // never confirmed, so it keeps taking the kernel path (and its NAT).
    if !flow::admit_packet(pkt, FLOW_NET_UPLINK, out, cfg) {
        return None;
    }
    if fib::redirect(r, rc, p) == TC_ACT_REDIRECT as c_long {
        count(slot, Dir::FromContainer, Verdict::FastUplink, len);
        count(up_slot, Dir::FromContainer, Verdict::FastUplink, len);
        Some(TC_ACT_REDIRECT)
    } else {
        // The frame is already rewritten: it cannot go to the stack any more.
        count(slot, Dir::FromContainer, Verdict::DropError, len);
        Some(TC_ACT_SHOT)
    }
}

#[inline(always)]
pub fn tc_egress(ctx: &TcContext) -> i32 {
    let (ifindex, len, _) = skb_fields(ctx);
    if let Some(rec) = VFP_ENDPOINTS.get_ptr(ifindex) {
        // SAFETY: pointer from a successful lookup.
        let (slot, network) = unsafe { ((*rec).target.slot, (*rec).target.network) };
        count(slot, Dir::ToContainer, Verdict::Stack, len);
        let cfg = config_flags();
        // SAFETY: ctx.skb.skb is the valid __sk_buff of this invocation.
        let from_node = unsafe { (*ctx.skb.skb).ingress_ifindex } == 0;
        // A packet the node itself sent (no ingress device) belongs to a flow with the node,
        // which is never admitted: nothing to confirm (~110 ns per packet saved on the
        // node → container path).
        if cfg & (CFG_ADMIT_ALWAYS | CFG_FASTPATH_OFF) == 0 && !from_node {
            // What the kernel forwarded into this container: confirm its flow's direction. A
            // flow from another endpoint is keyed by their network, one from outside by the
            // uplink pseudo-network.
            if let Some(pkt) = parse_skb(ctx, len)
                && let Some(mut f) = flow::parse(&pkt, network, cfg)
                && !flow::confirm(&f, ifindex)
            {
                f.key.network = FLOW_NET_UPLINK;
                flow::confirm(&f, ifindex);
            }
        }
    }
    TCX_NEXT
}
