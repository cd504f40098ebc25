//! One file per hook (as Cilium's `bpf_lxc.c` & co.): the decisions of that hook, in order.
//! The entry points in `main.rs` call these.

pub mod bridge_l2;
pub mod lxc_tc;
pub mod lxc_xdp;
pub mod uplink;
