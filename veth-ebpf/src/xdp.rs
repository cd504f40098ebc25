//! XDP program on the host end of an endpoint in `xdp` mode.
//!
//! It sees every frame the container sends (veth runs the host end's XDP program on the
//! container's transmissions). Unicast to another local endpoint is rewritten and sent with a
//! devmap redirect into the destination's host end, whose veth hands it to the destination
//! container end (that end has NAPI on: vethfp enables GRO on every container end).
//!
//! Everything else is `XDP_PASS` and *not* counted here: the tcx ingress program on the same
//! host end sees it next, and counts it (or fast-paths it with redirect_peer). So each frame is
//! counted exactly once, on whichever hook decided it.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use network_types::eth::EthHdr;
use veth_common::{CFG_FASTPATH_OFF, DIR_FROM_CONTAINER, DIR_TO_CONTAINER, V_DROP_ERROR, V_FAST};

use crate::{
    maps::{VFP_DEVMAP, VFP_ENDPOINTS, config_flags, count},
    route,
};

#[xdp]
pub fn vfp_xdp(ctx: XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    let (data, data_end) = (ctx.data(), ctx.data_end());
    if config_flags() & CFG_FASTPATH_OFF != 0 || data + EthHdr::LEN > data_end {
        return xdp_action::XDP_PASS;
    }
    let len = (data_end - data) as u32;
    let Some(hop) = route::lookup(data, data_end, ifindex) else {
        return xdp_action::XDP_PASS;
    };
    // Only frames addressed to this host end (the container's gateway) are routed; the kernel
    // would drop anything else as PACKET_OTHERHOST. TC checks skb->pkt_type; XDP compares MACs.
    // SAFETY: the Ethernet header is bounds-checked above.
    let dst_mac = unsafe { (*hop.eth).dst_addr };
    let own_mac = match VFP_ENDPOINTS.get_ptr(ifindex) {
        // SAFETY: pointer from a successful lookup, read once.
        Some(r) => unsafe { (*r).target.host_mac },
        None => return xdp_action::XDP_PASS,
    };
    if dst_mac != own_mac || hop.l3_len() > hop.target.mtu {
        // Over the MTU: the TC hook and then the stack decide (fragment / ICMP).
        return xdp_action::XDP_PASS;
    }
    let dst = hop.target.ifindex;
    if VFP_DEVMAP.get_ifindex(dst).is_none() {
        return xdp_action::XDP_PASS;
    }
    route::rewrite(&hop);
    match VFP_DEVMAP.redirect(dst, 0) {
        Ok(action) if action == xdp_action::XDP_REDIRECT => {
            count(ifindex, DIR_FROM_CONTAINER, V_FAST, len);
            count(dst, DIR_TO_CONTAINER, V_FAST, len);
            action
        }
        // Only if the entry vanished since the lookup above; the frame is already rewritten.
        _ => {
            count(ifindex, DIR_FROM_CONTAINER, V_DROP_ERROR, len);
            xdp_action::XDP_DROP
        }
    }
}
