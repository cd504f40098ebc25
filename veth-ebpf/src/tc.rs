//! tcx programs on the host end of each endpoint, and on uplinks.
//!
//! - `vfp_tc_ingress` (host end): everything the container sends. After the anti-spoofing
//!   check, unicast to another local endpoint of the same network is rewritten and
//!   `bpf_redirect_peer`ed into the destination container; with `--egress fast`, traffic the
//!   node's FIB routes out of an uplink goes straight there. The rest continues to the stack.
//!   Fast-path packets are counted on the sender and on the receiver: redirect_peer skips the
//!   receiver's host end, so this is the only place to count them.
//! - `vfp_tc_egress` (host end): what the kernel stack transmits into the container (slow
//!   path), counted as to_container/stack. Fast-path packets never pass here.
//! - `vfp_uplink_ingress` (uplink): packets from outside for a local endpoint are rewritten
//!   and redirect_peer'ed into the container, skipping the node's stack and backlog.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{bpf_fib_lookup, bpf_redir_neigh},
    cty::{c_long, c_void},
    helpers::generated::{
        bpf_check_mtu, bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh,
        bpf_redirect_peer,
    },
    macros::classifier,
    programs::TcContext,
};
use network_types::{eth::EthHdr, ip::Ipv6Hdr};
use veth_common::{
    CFG_ADMIT_ALWAYS, CFG_BPF_LOG, CFG_EGRESS_FAST, CFG_FASTPATH_OFF, DIR_FROM_CONTAINER,
    DIR_TO_CONTAINER, EP_SPOOF_AUDIT, EP_SPOOF_ENFORCE, FLOW_NET_UPLINK, Target, V_DROP_ERROR,
    V_FAST, V_FAST_UPLINK, V_STACK,
};

use crate::{
    deliver, flow,
    maps::{VFP_ENDPOINTS, VFP_UPLINKS, config_flags, count},
    route::{self, L3, Pkt},
    spoof,
};

// The uapi values (the bindings type them differently per target).
const TC_ACT_SHOT: i32 = 2;
const TC_ACT_REDIRECT: i32 = 7;
/// tcx: continue with the next program in the chain, or the stack if this is the last one.
pub const TCX_NEXT: i32 = -1;
const PACKET_HOST: u32 = 0;
/// Enough linear bytes for Ethernet + the fixed IPv6 header + a TCP header (admission).
const HEADERS: u32 = (EthHdr::LEN + Ipv6Hdr::LEN + 20) as u32;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const FIB_SUCCESS: c_long = 0;
const FIB_NO_NEIGH: c_long = 7;
/// bpf_check_mtu: also check each segment of a GSO packet.
const BPF_MTU_CHK_SEGS: u64 = 1;

#[inline(always)]
/// (ifindex, length, routable): routable = addressed to this interface (PACKET_HOST) and not
/// carrying a VLAN tag the kernel already took off (that frame belongs to a VLAN device, or
/// nowhere, never to the fast path).
fn skb_fields(ctx: &TcContext) -> (u32, u32, bool) {
    // SAFETY: ctx.skb.skb is the valid __sk_buff of this invocation.
    unsafe {
        let skb = &*ctx.skb.skb;
        (
            skb.ifindex,
            skb.len,
            skb.pkt_type == PACKET_HOST && skb.vlan_present == 0,
        )
    }
}

/// Makes sure the headers are in the linear part (rare on veth), so data/data_end cover them.
#[inline(always)]
fn linearize(ctx: &TcContext, len: u32) {
    if ctx.data() + HEADERS as usize > ctx.data_end() {
        let _ = ctx.pull_data(if len < HEADERS { len } else { HEADERS });
    }
}

#[classifier]
pub fn vfp_tc_ingress(ctx: TcContext) -> i32 {
    let (ifindex, len, routable) = skb_fields(&ctx);
    let cfg = config_flags(); // read once per packet
    let ret = ingress(&ctx, ifindex, len, routable, cfg);
    // Debug events only when `vethfp agent --bpf-log` asked for them: one bit test otherwise.
    if cfg & CFG_BPF_LOG != 0 {
        let verdict = match ret {
            TC_ACT_REDIRECT => "redirect",
            TC_ACT_SHOT => "drop",
            _ => "pass",
        };
        aya_log_ebpf::info!(
            &ctx,
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
    linearize(ctx, len);
    if flags & (EP_SPOOF_ENFORCE | EP_SPOOF_AUDIT) != 0
        && let Some(reason) = spoof::check(ctx.data(), ctx.data_end(), src)
    {
        count(slot, DIR_FROM_CONTAINER, reason, len);
        // Audit: counted once, under the reason; it may only take the kernel path.
        return if flags & EP_SPOOF_ENFORCE != 0 {
            TC_ACT_SHOT
        } else {
            TCX_NEXT
        };
    }
    if routable
        && cfg & CFG_FASTPATH_OFF == 0
        && let Some(ret) = forward(ctx, ifindex, slot, len, network, cfg)
    {
        return ret;
    }
    count(slot, DIR_FROM_CONTAINER, V_STACK, len);
    TCX_NEXT
}

/// The fast path for a frame from the container behind `ifindex`; None = the stack decides.
#[inline(always)]
fn forward(
    ctx: &TcContext,
    ifindex: u32,
    slot: u32,
    len: u32,
    network: u32,
    cfg: u32,
) -> Option<i32> {
    let pkt = route::parse(ctx.data(), ctx.data_end(), len)?;
    if let Some(t) = pkt.local_target() {
        // Across networks, the node's routing and firewall decide.
        if t.ifindex == ifindex
            || t.network != network
            || !fits(ctx, &pkt, len, &t)
            || !deliver::tc_target_ok(ctx, &t)
        {
            return None;
        }
        if !admit(ctx, network, t.ifindex, cfg) {
            return None;
        }
        pkt.rewrite(t.container_mac, t.host_mac);
        return Some(redirect_peer(slot, DIR_FROM_CONTAINER, V_FAST, &t, len));
    }
    if cfg & CFG_EGRESS_FAST == 0 {
        return None;
    }
    egress(ctx, &pkt, ifindex, slot, len, cfg)
}

/// Admission (see `flow`): may this candidate, whose kernel path would leave on
/// `egress_ifindex`, take the fast path? Always under `CFG_ADMIT_ALWAYS`; under `netfilter`
/// only a tracked, admitted flow (untracked protocols always take the kernel path).
#[inline(always)]
pub fn admit(ctx: &TcContext, network: u32, egress_ifindex: u32, cfg: u32) -> bool {
    if cfg & CFG_ADMIT_ALWAYS != 0 {
        return true;
    }
    match flow::parse(ctx.data(), ctx.data_end(), network, cfg) {
        Some(f) => flow::admit(&f, egress_ifindex),
        None => false,
    }
}

/// Hands a rewritten frame to the container behind `t` and counts it on both ends (`from` is
/// the sender's counter slot).
#[inline(always)]
pub fn redirect_peer(from: u32, from_dir: usize, verdict: usize, t: &Target, len: u32) -> i32 {
    // SAFETY: plain helper call.
    let ret = unsafe { bpf_redirect_peer(t.ifindex, 0) };
    if ret == TC_ACT_REDIRECT as c_long {
        count(from, from_dir, verdict, len);
        count(t.slot, DIR_TO_CONTAINER, verdict, len);
        return TC_ACT_REDIRECT;
    }
    // Only bad flags make the helper fail; the frame is already rewritten, so it cannot go to
    // the stack any more.
    count(from, from_dir, V_DROP_ERROR, len);
    TC_ACT_SHOT
}

/// Does the frame fit the destination's MTU? Small frames are settled by the stored MTU; larger
/// ones and GSO super-packets by bpf_check_mtu, which validates GSO segment sizes exactly
/// (with BPF_MTU_CHK_SEGS; without it every GSO packet passes).
/// Frames that do not fit go to the stack, which fragments or sends "fragmentation needed" /
/// "packet too big".
#[inline(always)]
fn fits(ctx: &TcContext, pkt: &Pkt, len: u32, t: &Target) -> bool {
    if pkt.l3_len() <= t.mtu && len <= t.mtu + EthHdr::LEN as u32 {
        return true;
    }
    let mut mtu_len: u32 = 0;
    // SAFETY: helper call on this program's skb with a valid out pointer.
    unsafe {
        bpf_check_mtu(
            ctx.skb.skb.cast(),
            t.ifindex,
            &mut mtu_len,
            0,
            BPF_MTU_CHK_SEGS,
        ) == 0
    }
}

/// Container → outside: when the node's FIB routes the packet out of an attached uplink,
/// rewrite and send it there directly; if the next hop's MAC is not resolved yet, let
/// bpf_redirect_neigh resolve it. Anything the FIB cannot answer cleanly (no route, local
/// delivery, blackhole/prohibit, fragmentation needed, forwarding disabled) goes to the stack.
#[inline(always)]
fn egress(ctx: &TcContext, pkt: &Pkt, ifindex: u32, slot: u32, len: u32, cfg: u32) -> Option<i32> {
    // SAFETY: bpf_fib_lookup is plain data; zeroed is a valid value.
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    // SAFETY: pkt's pointers were bounds-checked by `parse`; unions written as the uapi says.
    unsafe {
        match pkt.l3 {
            L3::V4(ip) => {
                p.family = AF_INET;
                p.l4_protocol = (*ip).proto;
                p.__bindgen_anon_2.tos = (*ip).tos;
                p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes((*ip).src_addr);
                p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes((*ip).dst_addr);
            }
            L3::V6(ip) => {
                p.family = AF_INET6;
                p.l4_protocol = (*ip).next_hdr;
                p.__bindgen_anon_2.flowinfo =
                    u32::from_ne_bytes((*ip).vcf) & 0xffff_ff0fu32.to_be();
                p.__bindgen_anon_3.ipv6_src =
                    core::mem::transmute::<[u8; 16], [u32; 4]>((*ip).src_addr);
                p.__bindgen_anon_4.ipv6_dst =
                    core::mem::transmute::<[u8; 16], [u32; 4]>((*ip).dst_addr);
            }
        }
    }
    // The MTU. With tot_len 0 the helper would only check the device MTU, with 4 bytes of VLAN
    // slack (is_skb_forwardable), not at all when the neighbour is unresolved, and never for
    // GSO packets: DF packets up to 4 bytes over the MTU, and every TCP segment a TSO sender
    // makes, would go out oversized, and the sender would never get its ICMP. So: a plain
    // packet's L3 length goes in tot_len (the FIB checks it against the route's MTU, learnt
    // PMTU included, before anything else); a GSO packet's segments are checked below.
    // SAFETY: ctx.skb.skb is the valid __sk_buff of this invocation.
    let gso = unsafe { (*ctx.skb.skb).gso_size } != 0;
    if !gso {
        p.__bindgen_anon_1.tot_len = pkt.l3_len() as u16;
    }
    p.ifindex = ifindex;
    // SAFETY: helper call with a valid params struct of the size passed.
    let rc = unsafe {
        fib_lookup(
            ctx.skb.skb as *mut c_void,
            &mut p,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    let out = p.ifindex;
    if rc != FIB_SUCCESS && rc != FIB_NO_NEIGH {
        return None;
    }
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
    if !admit(ctx, FLOW_NET_UPLINK, out, cfg) {
        return None;
    }
    let ret = if rc == FIB_SUCCESS {
        pkt.rewrite(p.dmac, p.smac);
        // SAFETY: plain helper call.
        unsafe { bpf_redirect(out, 0) }
    } else {
        pkt.decrement_ttl();
        // SAFETY: bpf_redir_neigh is plain data; the next hop is what the FIB returned.
        let mut nh: bpf_redir_neigh = unsafe { core::mem::zeroed() };
        nh.nh_family = p.family as u32;
        unsafe {
            if p.family == AF_INET {
                nh.__bindgen_anon_1.ipv4_nh = p.__bindgen_anon_4.ipv4_dst;
            } else {
                nh.__bindgen_anon_1.ipv6_nh = p.__bindgen_anon_4.ipv6_dst;
            }
            bpf_redirect_neigh(out, &mut nh, size_of::<bpf_redir_neigh>() as i32, 0)
        }
    };
    if ret == TC_ACT_REDIRECT as c_long {
        count(slot, DIR_FROM_CONTAINER, V_FAST_UPLINK, len);
        count(up_slot, DIR_FROM_CONTAINER, V_FAST_UPLINK, len);
        Some(TC_ACT_REDIRECT)
    } else {
        count(slot, DIR_FROM_CONTAINER, V_DROP_ERROR, len);
        Some(TC_ACT_SHOT)
    }
}

#[classifier]
pub fn vfp_tc_egress(ctx: TcContext) -> i32 {
    let (ifindex, len, _) = skb_fields(&ctx);
    if let Some(rec) = VFP_ENDPOINTS.get_ptr(ifindex) {
        // SAFETY: pointer from a successful lookup.
        let (slot, network) = unsafe { ((*rec).target.slot, (*rec).target.network) };
        count(slot, DIR_TO_CONTAINER, V_STACK, len);
        let cfg = config_flags();
        if cfg & (CFG_ADMIT_ALWAYS | CFG_FASTPATH_OFF) == 0 {
            // What the kernel forwarded into this container: confirm its flow's direction. A
            // flow from another endpoint is keyed by their network, one from outside by the
            // uplink pseudo-network.
            linearize(&ctx, len);
            if let Some(mut f) = flow::parse(ctx.data(), ctx.data_end(), network, cfg)
                && !flow::confirm(&f, ifindex)
            {
                f.key.network = FLOW_NET_UPLINK;
                flow::confirm(&f, ifindex);
            }
        }
    }
    TCX_NEXT
}

/// Uplink egress: what the kernel sends out of an attached uplink. Confirms the direction of a
/// container → outside flow that left unchanged (a masqueraded one does not match). Counts
/// nothing: the sender's host end already counted the packet as `stack`.
#[classifier]
pub fn vfp_uplink_egress(ctx: TcContext) -> i32 {
    let (ifindex, len, _) = skb_fields(&ctx);
    if VFP_UPLINKS.get_ptr(ifindex).is_none() {
        return TCX_NEXT;
    }
    let cfg = config_flags();
    if cfg & (CFG_ADMIT_ALWAYS | CFG_FASTPATH_OFF | CFG_EGRESS_FAST) == CFG_EGRESS_FAST {
        linearize(&ctx, len);
        if let Some(f) = flow::parse(ctx.data(), ctx.data_end(), FLOW_NET_UPLINK, cfg) {
            flow::confirm(&f, ifindex);
        }
    }
    TCX_NEXT
}

/// Uplink ingress. The uplink's own counters use DIR_TO_CONTAINER for "received from outside".
#[classifier]
pub fn vfp_uplink_ingress(ctx: TcContext) -> i32 {
    let (ifindex, len, routable) = skb_fields(&ctx);
    let Some(up) = VFP_UPLINKS.get_ptr(ifindex) else {
        return TCX_NEXT;
    };
    // SAFETY: pointer from a successful lookup.
    let slot = unsafe { (*up).slot };
    let cfg = config_flags();
    if routable && cfg & CFG_FASTPATH_OFF == 0 {
        linearize(&ctx, len);
        if let Some(pkt) = route::parse(ctx.data(), ctx.data_end(), len)
            && let Some(t) = pkt.local_target()
            && fits(&ctx, &pkt, len, &t)
            && deliver::tc_target_ok(&ctx, &t)
            && admit(&ctx, FLOW_NET_UPLINK, t.ifindex, cfg)
        {
            pkt.rewrite(t.container_mac, t.host_mac);
            return redirect_peer(slot, DIR_TO_CONTAINER, V_FAST_UPLINK, &t, len);
        }
    }
    count(slot, DIR_TO_CONTAINER, V_STACK, len);
    TCX_NEXT
}
