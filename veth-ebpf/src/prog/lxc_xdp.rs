//! XDP program on the host end of an endpoint in `xdp` mode.
//!
//! It sees every frame the container sends (veth runs the host end's XDP program on the
//! container's transmissions). Unicast to another local endpoint of the same network is
//! rewritten and sent with a devmap redirect into the destination's host end, whose veth hands
//! it to the destination container end. Only an `xdp` destination is redirected to: its
//! container end has NAPI on (vethfp turns GRO on there), which a veth needs to accept
//! redirected frames. A `tc` destination's container end keeps GRO off — GRO would switch
//! every kernel-path packet into that container to NAPI, which costs ~2.5 µs per round trip
//! on a stock node — so frames to it are `XDP_PASS`ed and tcx ingress hands them over with
//! `bpf_redirect_peer`.
//!
//! Everything else is `XDP_PASS` and *not* counted here: the tcx ingress program on the same
//! host end sees it next and counts it (or fast-paths it). Spoofed frames under enforcement are
//! dropped and counted here, since TC never sees them. So each frame is counted exactly once,
//! by whichever hook decided it.
//!
//! The devmap is not looked up first: `bpf_redirect_map` is asked with `XDP_PASS` as its
//! failure action, *before* the frame is rewritten. The helper only looks the entry up and
//! records the target (the frame is sent after the program returns), so with an entry the
//! program then rewrites the frame, counts it and returns `XDP_REDIRECT`; without one (an
//! endpoint whose devmap entry is missing or not yet there) it returns `XDP_PASS` with the
//! frame untouched and uncounted, and tcx ingress decides and counts it.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use veth_common::{CFG_ADMIT_ALWAYS, CFG_FASTPATH_OFF, Dir, EP_SPOOF_ENFORCE, MODE_XDP, Verdict};

use crate::dp::{
    count::count,
    deliver, flow,
    maps::{VFP_DEVMAP, VFP_ENDPOINTS, config_flags},
    parse::parse,
    router, spoof,
};

#[inline(always)]
pub fn xdp(ctx: &XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let len = (data_end - data) as u32;
    let Some(src) = VFP_ENDPOINTS.get_ptr(ifindex) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: pointer from a successful lookup.
    let (flags, network, own_mac, slot) = unsafe {
        let t = &(*src).target;
        ((*src).flags, t.network, t.host_mac, t.slot)
    };
    let Some(pkt) = parse(data, data_end, len) else {
        return xdp_action::XDP_PASS;
    };
    if flags & EP_SPOOF_ENFORCE != 0
        && let Some(reason) = spoof::check(&pkt, src)
    {
        count(slot, Dir::FromContainer, reason, len);
        return xdp_action::XDP_DROP;
    }
    let cfg = config_flags();
    if cfg & CFG_FASTPATH_OFF != 0 {
        return xdp_action::XDP_PASS;
    }
    let Some(r) = router::check(&pkt) else {
        return xdp_action::XDP_PASS;
    };
    let Some(t) = r.local_target() else {
        return xdp_action::XDP_PASS;
    };
    // Only frames addressed to this host end (the container's gateway) are routed; the kernel
    // would drop anything else as PACKET_OTHERHOST (TC checks skb->pkt_type; XDP the MAC).
    // Over the MTU: the TC hook and then the stack decide (fragment / ICMP).
    if t.ifindex == ifindex
        || t.mode != MODE_XDP
        || r.dst_mac() != own_mac
        || t.network != network
        || r.l3_len() > t.mtu
        || !deliver::same_endpoint(&t)
    {
        return xdp_action::XDP_PASS;
    }
    // Netfilter admission: look up only; tcx ingress notes and counts everything else.
    if cfg & CFG_ADMIT_ALWAYS == 0
        && !flow::parse(&pkt, network, cfg).is_some_and(|f| flow::admitted(&f))
    {
        return xdp_action::XDP_PASS;
    }
    match VFP_DEVMAP.redirect(t.ifindex, xdp_action::XDP_PASS as u64) {
        Ok(action) => {
            r.rewrite(t.container_mac, t.host_mac);
            count(slot, Dir::FromContainer, Verdict::Fast, len);
            count(t.slot, Dir::ToContainer, Verdict::Fast, len);
            action
        }
        // No devmap entry for the target: the frame is as the container sent it.
        Err(action) => action,
    }
}
