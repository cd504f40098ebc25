//! Everything that talks to the kernel outside the BPF maps: netlink, namespaces, ethtool.

pub mod ethtool;
pub mod events;
pub mod netlink;
pub mod tc_filter;
