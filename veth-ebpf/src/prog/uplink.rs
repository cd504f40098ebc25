//! tcx programs on an attached uplink (`uplink attach IFACE`).
//!
//! - `vfp_uplink_ingress`: packets from outside for a local endpoint are rewritten and
//!   redirect_peer'ed into the container, skipping the node's stack and backlog. The uplink's
//!   own counters use `Dir::ToContainer` for "received from outside".
//! - `vfp_uplink_egress`: what the kernel sends out of the uplink. Confirms the direction of a
//!   container → outside flow that left unchanged (a masqueraded one does not match). Counts
//!   nothing: the sender's host end already counted the packet as `stack`.

use aya_ebpf::programs::TcContext;
use veth_common::{
    CFG_ADMIT_ALWAYS, CFG_EGRESS_FAST, CFG_FASTPATH_OFF, Dir, FLOW_NET_UPLINK, Verdict,
};

use crate::dp::{
    count::count,
    deliver::{self, TCX_NEXT, fits_routed, redirect_peer},
    flow,
    maps::{VFP_UPLINKS, config_flags},
    parse::{parse_skb, skb_fields},
    router,
};

#[inline(always)]
pub fn uplink_ingress(ctx: &TcContext) -> i32 {
    let (ifindex, len, routable) = skb_fields(ctx);
    let Some(up) = VFP_UPLINKS.get_ptr(ifindex) else {
        return TCX_NEXT;
    };
    // SAFETY: pointer from a successful lookup.
    let slot = unsafe { (*up).slot };
    let cfg = config_flags();
    if routable
        && cfg & CFG_FASTPATH_OFF == 0
        && let Some(pkt) = parse_skb(ctx, len)
        && let Some(r) = router::check(&pkt)
        && let Some(t) = r.local_target()
        && fits_routed(ctx, &r, len, &t)
        && deliver::tc_target_ok(ctx, &t)
        && flow::admit_packet(&pkt, FLOW_NET_UPLINK, t.ifindex, cfg)
    {
        r.rewrite(t.container_mac, t.host_mac);
        return redirect_peer(slot, Dir::ToContainer, Verdict::FastUplink, &t, len);
    }
    count(slot, Dir::ToContainer, Verdict::Stack, len);
    TCX_NEXT
}

#[inline(always)]
pub fn uplink_egress(ctx: &TcContext) -> i32 {
    let (ifindex, len, _) = skb_fields(ctx);
    if VFP_UPLINKS.get_ptr(ifindex).is_none() {
        return TCX_NEXT;
    }
    let cfg = config_flags();
    if cfg & (CFG_ADMIT_ALWAYS | CFG_FASTPATH_OFF | CFG_EGRESS_FAST) == CFG_EGRESS_FAST
        && let Some(pkt) = parse_skb(ctx, len)
        && let Some(f) = flow::parse(&pkt, FLOW_NET_UPLINK, cfg)
    {
        flow::confirm(&f, ifindex);
    }
    TCX_NEXT
}
