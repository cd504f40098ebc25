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

/// Every entry under `root` of a bpffs: relative name → (inode, kernel id of the map or program
/// pinned there, if it is one). Two listings equal = the state dir was left as it was.
pub fn pin_listing(
    root: &std::path::Path,
) -> std::collections::BTreeMap<String, (u64, Option<u32>)> {
    fn walk(
        root: &std::path::Path,
        dir: &std::path::Path,
        out: &mut std::collections::BTreeMap<String, (u64, Option<u32>)>,
    ) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd {
            let p = e.expect("readdir").path();
            let md = std::fs::symlink_metadata(&p).expect("stat");
            let id = if md.is_dir() {
                None
            } else {
                aya::maps::MapInfo::from_pin(&p)
                    .map(|i| i.id())
                    .ok()
                    .or_else(|| {
                        aya::programs::ProgramInfo::from_pin(&p)
                            .map(|i| i.id())
                            .ok()
                    })
            };
            let name = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            out.insert(name, (std::os::unix::fs::MetadataExt::ino(&md), id));
            if md.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(root, root, &mut out);
    out
}
