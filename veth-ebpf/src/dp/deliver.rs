//! Is a redirect target still there, and still the endpoint the entry names?
//!
//! An entry in VFP_EP4/6 or VFP_L2 can outlive its port: a container restarted by Docker gets a
//! new veth (new ifindex) with the old MAC and IP while the old entry still points at the gone
//! ifindex, and until the control plane catches up the entry is stale. `bpf_redirect_peer`
//! accepts any ifindex (the device is only looked up after the program returned, and a missing
//! one silently drops the packet), so without this check such packets would be counted `fast`
//! and lost. Every hook checks here before it rewrites or redirects; a target that fails takes
//! the kernel (or bridge) path, counted `stack`, which delivers to whatever is there now.
//!
//! Also here: does the frame fit the target, and the redirects themselves with their counts.

use aya_ebpf::{
    cty::c_long,
    helpers::generated::{bpf_check_mtu, bpf_redirect_peer},
    programs::TcContext,
};
use network_types::eth::EthHdr;
use veth_common::{Dir, Target, Verdict};

use crate::dp::{count::count, maps::VFP_ENDPOINTS, router::Route};

// The uapi values (the bindings type them differently per target).
pub const TC_ACT_SHOT: i32 = 2;
pub const TC_ACT_REDIRECT: i32 = 7;
/// tcx: continue with the next program in the chain, or the stack if this is the last one.
pub const TCX_NEXT: i32 = -1;
/// bpf_check_mtu: also check each segment of a GSO packet.
pub const BPF_MTU_CHK_SEGS: u64 = 1;

/// The destination is registered under `t.ifindex` as this very endpoint (same counter slot,
/// same container MAC): the entry is not a leftover of an endpoint that was replaced.
#[inline(always)]
pub fn same_endpoint(t: &Target) -> bool {
    match VFP_ENDPOINTS.get_ptr(t.ifindex) {
        // SAFETY: pointer from a successful lookup, fields read once.
        Some(r) => unsafe {
            (*r).target.slot == t.slot && (*r).target.container_mac == t.container_mac
        },
        None => false,
    }
}

/// TC hooks: the record matches and a device with that ifindex exists in this namespace.
/// `bpf_check_mtu` looks the device up by ifindex (dev_get_by_index_rcu) and fails with
/// -ENODEV when there is none; its MTU verdict (>= 0) is not used here.
#[inline(always)]
pub fn tc_target_ok(ctx: &TcContext, t: &Target) -> bool {
    if !same_endpoint(t) {
        return false;
    }
    let mut mtu_len: u32 = 0;
    // SAFETY: helper call on this program's skb with a valid out pointer.
    unsafe { bpf_check_mtu(ctx.skb.skb.cast(), t.ifindex, &mut mtu_len, 0, 0) >= 0 }
}

/// Hands a rewritten frame to the container behind `t` and counts it on both ends (`from` is
/// the sender's counter slot).
#[inline(always)]
pub fn redirect_peer(from: u32, from_dir: Dir, verdict: Verdict, t: &Target, len: u32) -> i32 {
    // SAFETY: plain helper call.
    let ret = unsafe { bpf_redirect_peer(t.ifindex, 0) };
    if ret == TC_ACT_REDIRECT as c_long {
        count(from, from_dir, verdict, len);
        count(t.slot, Dir::ToContainer, verdict, len);
        return TC_ACT_REDIRECT;
    }
    // Only bad flags make the helper fail; the frame is already rewritten, so it cannot go to
    // the stack any more.
    count(from, from_dir, Verdict::DropError, len);
    TC_ACT_SHOT
}

/// Does the routed frame fit the destination's MTU? Small frames are settled by the stored
/// MTU; larger ones and GSO super-packets by bpf_check_mtu, which validates GSO segment sizes
/// exactly (with BPF_MTU_CHK_SEGS; without it every GSO packet passes). Frames that do not
/// fit go to the stack, which fragments or sends "fragmentation needed" / "packet too big".
#[inline(always)]
pub fn fits_routed(ctx: &TcContext, r: &Route, len: u32, t: &Target) -> bool {
    if r.l3_len() <= t.mtu && len <= t.mtu + EthHdr::LEN as u32 {
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

/// Would the bridge forward the frame to the destination port? Frames within the port's MTU,
/// and GSO super-packets (a TCP sender's TSO batches, segmented later if ever needed), as the
/// bridge's own `is_skb_forwardable` decides; bpf_check_mtu settles the larger ones.
#[inline(always)]
pub fn fits_l2(ctx: &TcContext, len: u32, t: &Target) -> bool {
    if len <= t.mtu + EthHdr::LEN as u32 {
        return true;
    }
    let mut mtu_len: u32 = 0;
    // SAFETY: helper call on this program's skb with a valid out pointer.
    unsafe { bpf_check_mtu(ctx.skb.skb.cast(), t.ifindex, &mut mtu_len, 0, 0) == 0 }
}
