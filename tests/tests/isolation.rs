//! Networks: the fast path joins only endpoints of the same `--network`; traffic across
//! networks goes to the node's stack, where the node's routing and firewall decide. A
//! firewall rule in the node that drops cross-network traffic still holds with vethfp
//! attached.

use std::{net::SocketAddr, process::Command, time::Duration};

use vethfp_tests::{Container, Count, Node, udp_frame_len, udp_recv, udp_send, udp_transfer};

const N: u64 = 200;
const PAYLOAD: usize = 64;

fn zero() -> Count {
    Count::default()
}

/// Node with forwarding ON (so the kernel could carry anything) and three containers:
/// a1, a2 in network a (10.1.0.0/24, fd00:1::/64), b1 in network b (10.1.1.0/24, fd00:1:1::/64).
fn setup() -> (Node, Container, Container, Container) {
    let node = Node::new();
    node.ns.sysctl("net.ipv4.ip_forward", "1");
    node.ns.sysctl("net.ipv6.conf.all.forwarding", "1");
    let a1 = node.add_container_with("va1", &["10.1.0.2/24", "fd00:1::2/64"], &["--network", "a"]);
    let a2 = node.add_container_with("va2", &["10.1.0.3/24", "fd00:1::3/64"], &["--network", "a"]);
    let b1 = node.add_container_with(
        "vb1",
        &["10.1.1.2/24", "fd00:1:1::2/64"],
        &["--network", "b"],
    );
    assert_eq!(node.list_entry("va1").unwrap()["network"], "a");
    assert_eq!(node.list_entry("vb1").unwrap()["network"], "b");
    assert_ne!(
        node.list_entry("va1").unwrap()["network_id"],
        node.list_entry("vb1").unwrap()["network_id"]
    );
    for h in ["va1", "va2", "vb1"] {
        node.wait_quiet(h);
    }
    (node, a1, a2, b1)
}

/// Run a firewall tool inside the node (`ip netns exec`); panics on failure.
fn fw(node: &Node, tool: &str, args: &[&str]) {
    let out = Command::new("ip")
        .args(["netns", "exec", node.name(), tool])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?} in {}: {}",
        node.name(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg(if tool == "nft" { "--version" } else { "-V" })
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Drop forwarded traffic between the two networks' prefixes, in the node: iptables and
/// ip6tables if present, else nft.
fn block_cross_network(node: &Node) -> &'static str {
    if have("iptables") && have("ip6tables") {
        fw(
            node,
            "iptables",
            &[
                "-A",
                "FORWARD",
                "-s",
                "10.1.0.0/24",
                "-d",
                "10.1.1.0/24",
                "-j",
                "DROP",
            ],
        );
        fw(
            node,
            "ip6tables",
            &[
                "-A",
                "FORWARD",
                "-s",
                "fd00:1::/64",
                "-d",
                "fd00:1:1::/64",
                "-j",
                "DROP",
            ],
        );
        "iptables"
    } else {
        assert!(have("nft"), "neither iptables nor nft available");
        fw(node, "nft", &["add", "table", "inet", "vfpiso"]);
        fw(
            node,
            "nft",
            &["add chain inet vfpiso fwd { type filter hook forward priority 0; }"],
        );
        fw(
            node,
            "nft",
            &["add rule inet vfpiso fwd ip saddr 10.1.0.0/24 ip daddr 10.1.1.0/24 drop"],
        );
        fw(
            node,
            "nft",
            &["add rule inet vfpiso fwd ip6 saddr fd00:1::/64 ip6 daddr fd00:1:1::/64 drop"],
        );
        "nft"
    }
}

#[test]
fn same_network_fast_cross_network_via_the_kernel() {
    let (node, a1, a2, b1) = setup();
    for v6 in [false, true] {
        let (a2ip, b1ip) = if v6 {
            (a2.v6(), b1.v6())
        } else {
            (a2.v4(), b1.v4())
        };
        let want = Count::new(N, N * udp_frame_len(a2ip, PAYLOAD));

        // Same network: fast path, exactly.
        let before = node.all_stats();
        assert_eq!(
            udp_transfer(a1.name(), None, a2.name(), a2ip, N, PAYLOAD),
            N
        );
        let after = node.all_stats();
        let d1 = after["va1"].since(&before["va1"]);
        let d2 = after["va2"].since(&before["va2"]);
        assert_eq!(d1.from("fast"), want, "a1 -> a2 ({a2ip}): {d1:?}");
        assert_eq!(d1.from("stack"), zero(), "{d1:?}");
        assert_eq!(d2.to("fast"), want, "{d2:?}");

        // Across networks, no rule: the node's kernel forwards it; vethfp only counts.
        let before = node.all_stats();
        assert_eq!(
            udp_transfer(a1.name(), None, b1.name(), b1ip, N, PAYLOAD),
            N
        );
        let after = node.all_stats();
        let d1 = after["va1"].since(&before["va1"]);
        let db = after["vb1"].since(&before["vb1"]);
        assert_eq!(
            d1.from("fast"),
            zero(),
            "cross-network took the fast path: {d1:?}"
        );
        assert_eq!(d1.from("stack"), want, "a1 -> b1 ({b1ip}): {d1:?}");
        assert_eq!(db.to("fast"), zero(), "{db:?}");
        assert_eq!(db.to("stack"), want, "b1 received via the kernel: {db:?}");
    }
}

#[test]
fn node_firewall_blocks_cross_network_with_vethfp_attached() {
    let (node, a1, a2, b1) = setup();
    let tool = block_cross_network(&node);
    for v6 in [false, true] {
        let (a2ip, b1ip) = if v6 {
            (a2.v6(), b1.v6())
        } else {
            (a2.v4(), b1.v4())
        };
        let want = Count::new(N, N * udp_frame_len(b1ip, PAYLOAD));

        let before = node.all_stats();
        let rx = udp_recv(
            b1.name(),
            SocketAddr::new(b1ip, 0),
            N,
            PAYLOAD,
            Duration::from_secs(3),
        );
        udp_send(a1.name(), None, rx.addr(), N, PAYLOAD);
        // Every datagram has been through vethfp (counted on the sender's stack verdict)...
        let b = before["va1"].clone();
        let d1 = node
            .wait_stats("va1", |s| s.since(&b).from("stack").packets >= N)
            .since(&b);
        let got = rx.wait();
        assert_eq!(
            got, 0,
            "{tool} rule in the node did not hold for {b1ip}: {got} of {N} delivered"
        );
        assert_eq!(d1.from("stack"), want, "{d1:?}");
        assert_eq!(d1.from("fast"), zero(), "{d1:?}");
        let db = node.stats("vb1").since(&before["vb1"]);
        assert_eq!(db.to("fast"), zero(), "{db:?}");
        assert_eq!(db.to("stack"), zero(), "{db:?}");

        // The rule does not touch the same network: still fast.
        assert_eq!(
            udp_transfer(a1.name(), None, a2.name(), a2ip, N, PAYLOAD),
            N
        );
    }
    println!("isolation: {tool} FORWARD rule in the node held for v4 and v6 with vethfp attached");
}
