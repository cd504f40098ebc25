//! vethfp: an eBPF veth fast path. Library behind the `vethfp` CLI, agent and CNI plugin.
//!
//! Data flows one way: front end → [`endpoint`] registry → ([`netlink`], [`datapath`]) → kernel.

pub mod admission;
pub mod agent;
pub mod bridge;
pub mod cni;
pub mod datapath;
pub mod endpoint;
pub mod ethtool;
pub mod events;
pub mod inspect;
pub mod metrics;
pub mod netlink;
pub mod reconcile;
pub mod tc_filter;
pub mod types;
pub mod watch;
