//! Bridge bypass (`bridge accelerate BR`): the tcx ingress program of each port of an
//! accelerated Linux bridge. A unicast frame whose destination MAC is a container on another
//! port of the *same* bridge is handed straight to that container with `bpf_redirect_peer`,
//! exactly as the sender wrote it (no MAC rewrite, no TTL change). ARP, broadcast, multicast,
//! unknown MACs and the bridge's own MAC go to the bridge as before, which stays the slow path.
//!
//! Anti-spoofing follows the port's record like on a routed host end (`bridge accelerate`
//! records its ports with it off: a bridge forwards by destination only).

use aya_ebpf::programs::TcContext;
use veth_common::{CFG_FASTPATH_OFF, Dir, Verdict};

use crate::dp::{
    count::count,
    deliver::{self, TCX_NEXT, fits_l2, redirect_peer},
    flow,
    maps::{VFP_ENDPOINTS, VFP_L2, config_flags},
    parse::{parse_skb, skb_fields},
    spoof,
};

#[inline(always)]
pub fn l2_ingress(ctx: &TcContext) -> i32 {
    let (ifindex, len, _) = skb_fields(ctx);
    let Some(src) = VFP_ENDPOINTS.get_ptr(ifindex) else {
        return TCX_NEXT;
    };
    // SAFETY: pointer from a successful lookup. For bridge ports, network = bridge ifindex.
    let (flags, bridge, slot) =
        unsafe { ((*src).flags, (*src).target.network, (*src).target.slot) };
    let Some(pkt) = parse_skb(ctx, len) else {
        // Not even an Ethernet header: the bridge drops it.
        count(slot, Dir::FromContainer, Verdict::Stack, len);
        return TCX_NEXT;
    };
    if let Some(ret) = spoof::screen(&pkt, src, flags, slot, len) {
        return ret;
    }
    let cfg = config_flags();
    if cfg & CFG_FASTPATH_OFF == 0 {
        // SAFETY: `eth` is bounds-checked by `parse`.
        let dst = unsafe { (*pkt.eth).dst_addr };
        if dst[0] & 1 == 0
            && let Some(t) = VFP_L2.get_ptr(dst)
        {
            // SAFETY: pointer from a successful lookup, copied once.
            let t = unsafe { *t };
            // Under netfilter admission the bridge (and br_netfilter) forward a flow first.
            if t.network == bridge
                && t.ifindex != ifindex
                && fits_l2(ctx, len, &t)
                && deliver::tc_target_ok(ctx, &t)
                && flow::admit_packet(&pkt, bridge, t.ifindex, cfg)
            {
                return redirect_peer(slot, Dir::FromContainer, Verdict::Fast, &t, len);
            }
        }
    }
    count(slot, Dir::FromContainer, Verdict::Stack, len);
    TCX_NEXT
}
