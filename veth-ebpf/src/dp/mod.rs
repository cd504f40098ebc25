//! What the programs in `prog/` are made of, one concern per file (as Cilium's `bpf/lib`):
//!
//! - `parse`: the frame's headers, parsed once per packet into a `Packet`;
//! - `spoof`: is the source the endpoint's own;
//! - `router`: the router checks, the local destination, the rewrite;
//! - `flow`: netfilter admission (flow table);
//! - `fib`: the node's FIB for `--egress fast`;
//! - `deliver`: redirect targets (still there? fits?) and the redirects themselves;
//! - `count`: the counters;
//! - `maps`: the maps, by the ABI in `veth-common`.

pub mod count;
pub mod deliver;
pub mod fib;
pub mod flow;
pub mod maps;
pub mod parse;
pub mod router;
pub mod spoof;
