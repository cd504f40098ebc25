//! Everything that talks to the kernel outside the BPF maps: netlink (rtnetlink, ctnetlink),
//! namespaces, ethtool, bpf(2) where aya has no call, flock,
//! clock, random.

pub mod bpf;
pub mod clock;
pub mod ctnetlink;
pub mod ethtool;
pub mod events;
pub mod lock;
pub mod netlink;
pub mod netns;
pub mod random;
pub mod tc_filter;
