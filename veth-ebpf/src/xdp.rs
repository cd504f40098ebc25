//! XDP program on the host end of an endpoint in `xdp` mode.
//!
//! It sees every frame the container sends (veth runs the host end's XDP program on the
//! container's transmissions). Unicast to another local endpoint of the same network is
//! rewritten and sent with a devmap redirect into the destination's host end, whose veth hands
//! it to the destination container end (that end has NAPI on: vethfp enables GRO on every
//! container end).
//!
//! Everything else is `XDP_PASS` and *not* counted here: the tcx ingress program on the same
//! host end sees it next and counts it (or fast-paths it). Spoofed frames under enforcement are
//! dropped and counted here, since TC never sees them. So each frame is counted exactly once,
//! by whichever hook decided it.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use veth_common::{
    CFG_ADMIT_ALWAYS, CFG_FASTPATH_OFF, DIR_FROM_CONTAINER, DIR_TO_CONTAINER, EP_SPOOF_ENFORCE,
    V_DROP_ERROR, V_FAST,
};

use crate::{
    deliver, flow,
    maps::{VFP_DEVMAP, VFP_ENDPOINTS, config_flags, count},
    route, spoof,
};

#[xdp]
pub fn vfp_xdp(ctx: XdpContext) -> u32 {
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
    if flags & EP_SPOOF_ENFORCE != 0
        && let Some(reason) = spoof::check(data, data_end, src)
    {
        count(slot, DIR_FROM_CONTAINER, reason, len);
        return xdp_action::XDP_DROP;
    }
    let cfg = config_flags();
    if cfg & CFG_FASTPATH_OFF != 0 {
        return xdp_action::XDP_PASS;
    }
    let Some(hop) = route::lookup(data, data_end, ifindex) else {
        return xdp_action::XDP_PASS;
    };
    let t = hop.target;
    // Only frames addressed to this host end (the container's gateway) are routed; the kernel
    // would drop anything else as PACKET_OTHERHOST (TC checks skb->pkt_type; XDP the MAC).
    // Over the MTU: the TC hook and then the stack decide (fragment / ICMP).
    // SAFETY: the Ethernet header was bounds-checked by `lookup`.
    let dst_mac = unsafe { (*hop.pkt.eth).dst_addr };
    if dst_mac != own_mac
        || t.network != network
        || hop.pkt.l3_len() > t.mtu
        || VFP_DEVMAP.get_ifindex(t.ifindex).is_none()
        || !deliver::same_endpoint(&t)
    {
        return xdp_action::XDP_PASS;
    }
    // Netfilter admission: look up only; tcx ingress notes and counts everything else.
    if cfg & CFG_ADMIT_ALWAYS == 0
        && !flow::parse(data, data_end, network, cfg).is_some_and(|f| flow::admitted(&f))
    {
        return xdp_action::XDP_PASS;
    }
    hop.pkt.rewrite(t.container_mac, t.host_mac);
    match VFP_DEVMAP.redirect(t.ifindex, 0) {
        Ok(action) => {
            count(slot, DIR_FROM_CONTAINER, V_FAST, len);
            count(t.slot, DIR_TO_CONTAINER, V_FAST, len);
            action
        }
        // Only if the entry vanished since the lookup above; the frame is already rewritten.
        Err(_) => {
            count(slot, DIR_FROM_CONTAINER, V_DROP_ERROR, len);
            xdp_action::XDP_DROP
        }
    }
}
