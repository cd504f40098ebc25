//! Everything that talks to the kernel outside the BPF maps: netlink (rtnetlink, ctnetlink),
//! namespaces, ethtool.

pub mod ctnetlink;
pub mod ethtool;
pub mod events;
pub mod netlink;
pub mod tc_filter;
