//! Is a redirect target still there, and still the endpoint the entry names?
//!
//! An entry in VFP_EP4/6 or VFP_L2 can outlive its port: a container restarted by Docker gets a
//! new veth (new ifindex) with the old MAC and IP while the old entry still points at the gone
//! ifindex, and until the control plane catches up the entry is stale. `bpf_redirect_peer`
//! accepts any ifindex (the device is only looked up after the program returned, and a missing
//! one silently drops the packet), so without this check such packets would be counted `fast`
//! and lost. Every hook checks here before it rewrites or redirects; a target that fails takes
//! the kernel (or bridge) path, counted `stack`, which delivers to whatever is there now.

use aya_ebpf::{helpers::generated::bpf_check_mtu, programs::TcContext};
use veth_common::Target;

use crate::maps::VFP_ENDPOINTS;

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
