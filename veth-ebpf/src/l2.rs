//! Bridge bypass: tcx ingress on the veth ports of an accelerated Linux bridge.
//!
//! Bridge (L2) semantics: a unicast frame whose destination MAC is a container on another port
//! of the *same* bridge is handed straight to that container with `bpf_redirect_peer`, exactly
//! as the sender wrote it (no MAC rewrite, no TTL change). ARP, broadcast, multicast, unknown
//! MACs and the bridge's own MAC go to the bridge as before, which stays the slow path.

use aya_ebpf::{helpers::generated::bpf_check_mtu, macros::classifier, programs::TcContext};
use network_types::eth::EthHdr;
use veth_common::{CFG_FASTPATH_OFF, DIR_FROM_CONTAINER, Target, V_FAST, V_STACK};

use crate::{
    deliver,
    maps::{VFP_ENDPOINTS, VFP_L2, config_flags, count},
    route::ptr_at,
    tc::{TCX_NEXT, admit, redirect_peer},
};

#[classifier]
pub fn vfp_l2_ingress(ctx: TcContext) -> i32 {
    // SAFETY: ctx.skb.skb is the valid __sk_buff of this invocation.
    let (ifindex, len) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).len) };
    let Some(src) = VFP_ENDPOINTS.get_ptr(ifindex) else {
        return TCX_NEXT;
    };
    // SAFETY: pointer from a successful lookup. For bridge ports, network = bridge ifindex.
    let (bridge, slot) = unsafe { ((*src).target.network, (*src).target.slot) };
    let cfg = config_flags();
    if cfg & CFG_FASTPATH_OFF == 0
        && let Some(eth) = ptr_at::<EthHdr>(ctx.data(), ctx.data_end(), 0)
    {
        // SAFETY: `eth` is bounds-checked (the Ethernet header is always linear at tc ingress).
        let dst = unsafe { (*eth).dst_addr };
        if dst[0] & 1 == 0
            && let Some(t) = VFP_L2.get_ptr(dst)
        {
            // SAFETY: pointer from a successful lookup, copied once.
            let t = unsafe { *t };
            // Under netfilter admission the bridge (and br_netfilter) forward a flow first.
            if t.network == bridge
                && t.ifindex != ifindex
                && fits(&ctx, len, &t)
                && deliver::tc_target_ok(&ctx, &t)
                && admit(&ctx, bridge, t.ifindex, cfg)
            {
                return redirect_peer(slot, DIR_FROM_CONTAINER, V_FAST, &t, len);
            }
        }
    }
    count(slot, DIR_FROM_CONTAINER, V_STACK, len);
    TCX_NEXT
}

/// Would the bridge forward the frame to the destination port? Frames within the port's MTU,
/// and GSO super-packets (a TCP sender's TSO batches, segmented later if ever needed), as the
/// bridge's own `is_skb_forwardable` decides; bpf_check_mtu settles the larger ones.
#[inline(always)]
fn fits(ctx: &TcContext, len: u32, t: &Target) -> bool {
    if len <= t.mtu + EthHdr::LEN as u32 {
        return true;
    }
    let mut mtu_len: u32 = 0;
    // SAFETY: helper call on this program's skb with a valid out pointer.
    unsafe { bpf_check_mtu(ctx.skb.skb.cast(), t.ifindex, &mut mtu_len, 0, 0) == 0 }
}
