//! vethfp datapath. Built for `bpfel-unknown-none` by veth-user's build script; on the host it
//! compiles to an empty binary so the workspace builds and lints as one.
//!
//! This file holds the entry points only: their names are the ELF program names veth-user
//! loads and pins (`veth_common::Program`), so they must not change. Each calls its hook's
//! program in `prog/` (one file per hook), which is built from `dp/` (one concern per file,
//! see `dp/mod.rs`; not `lib/`: that name is special to rustc). Every path through every program ends in a counted verdict.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod dp;
mod prog;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// Host end tcx ingress: what the container sends.
#[classifier]
pub fn vfp_tc_ingress(ctx: TcContext) -> i32 {
    prog::lxc_tc::tc_ingress(&ctx)
}

/// Host end tcx egress: what the kernel sends into the container.
#[classifier]
pub fn vfp_tc_egress(ctx: TcContext) -> i32 {
    prog::lxc_tc::tc_egress(&ctx)
}

/// Host end XDP (mode `xdp`): what the container sends, before tcx ingress.
#[xdp]
pub fn vfp_xdp(ctx: XdpContext) -> u32 {
    prog::lxc_xdp::xdp(&ctx)
}

/// Uplink tcx ingress: from outside the node.
#[classifier]
pub fn vfp_uplink_ingress(ctx: TcContext) -> i32 {
    prog::uplink::uplink_ingress(&ctx)
}

/// Uplink tcx egress: what the kernel sends out of the uplink (admission confirmations).
#[classifier]
pub fn vfp_uplink_egress(ctx: TcContext) -> i32 {
    prog::uplink::uplink_egress(&ctx)
}

/// Bridge port tcx ingress (`bridge accelerate`).
#[classifier]
pub fn vfp_l2_ingress(ctx: TcContext) -> i32 {
    prog::bridge_l2::l2_ingress(&ctx)
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
