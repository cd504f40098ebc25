//! Harness for vethfp's integration tests: nodes and containers in their own network
//! namespaces, the real `vethfp` binary run inside a node, real traffic, exact counters.
//!
//! Rules every test follows (and this harness enforces where it can):
//! - never touch the machine's own network namespace: every namespace is made here, under a
//!   unique name (prefix + pid + counter), and checked against PID 1's before it is entered;
//! - clean up on success and on failure: [`Netns`] and [`Bpffs`] are Drop guards;
//! - run in parallel: each test builds its own [`Node`] with its own bpffs.
//!
//! Kernel chatter on new links (router solicitations, repeated MLD reports) is turned off in
//! every namespace made here, so per-endpoint counters can be compared exactly.

pub mod agent;
pub mod cni;
pub mod cri;
pub mod cri_v1;
pub mod deploy;
pub mod node;
pub mod ns;
pub mod raw;
pub mod traffic;

pub use agent::{Agent, Metrics};
pub use node::{
    Container, Count, EndpointStats, Node, Snapshot, UplinkStats, VERDICTS, bpf_stats, check_fails,
    check_ok, vethfp_bin,
};
pub use ns::{Bpffs, Netns, in_netns, ip, is_bpffs, join, run_in_netns, unique_name};
pub use traffic::{
    TIMEOUT, TcpFlow, UdpReceiver, ping, ping_from, tcp_echo, tcp_flow, udp_frame_len, udp_recv,
    udp_send, udp_send_paced, udp_send_to, udp_transfer,
};

/// `iptables ARGS` (or ip6tables) inside namespace `ns`; panics with stderr on failure.
pub fn ipt(ns: &str, v6: bool, args: &str) -> String {
    let bin = if v6 { "ip6tables" } else { "iptables" };
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, bin, "-w"])
        .args(args.split_whitespace())
        .output()
        .expect("run iptables");
    assert!(
        out.status.success(),
        "{bin} {args} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
