//! vethfp datapath. Built for `bpfel-unknown-none` by veth-user's build script; on the host it
//! compiles to an empty binary so the workspace builds and lints as one.
//!
//! Every path through every program ends in a counted verdict.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod deliver;
mod flow;
mod l2;
mod maps;
mod route;
mod spoof;
mod tc;
mod xdp;

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
