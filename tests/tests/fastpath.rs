//! The fast path, end to end: a node with forwarding disabled, containers made by the real
//! `vethfp pair add`, real traffic between them, and counters checked to the packet.
//! Each test builds its own node, so they run in parallel.

use vethfp_tests::{
    Container, Count, EndpointStats, Node, ping, ping_from, tcp_echo, udp_frame_len, udp_transfer,
};

const N: u64 = 1000;
const PAYLOAD: usize = 100;

/// A node (forwarding off) with three containers, each with a v4 and a v6 address.
fn node3() -> (Node, Vec<Container>) {
    let node = Node::new();
    assert_eq!(node.ns.read_sysctl("net.ipv4.ip_forward"), "0");
    assert_eq!(node.ns.read_sysctl("net.ipv6.conf.all.forwarding"), "0");
    let cs = vec![
        node.add_container("vc1", &["10.1.0.2/24", "fd00:1::2/64"]),
        node.add_container("vc2", &["10.1.0.3/24", "fd00:1::3/64"]),
        node.add_container("vc3", &["10.1.0.4/24", "fd00:1::4/64"]),
    ];
    (node, cs)
}

fn zero() -> Count {
    Count::default()
}

/// No drop verdict moved on any endpoint.
fn assert_no_drops(d: &EndpointStats) {
    for v in [
        "drop_spoof_ip",
        "drop_spoof_mac",
        "drop_policy",
        "drop_error",
    ] {
        assert_eq!(d.from(v), zero(), "{}: from_container.{v}", d.host_if);
        assert_eq!(d.to(v), zero(), "{}: to_container.{v}", d.host_if);
    }
}

#[test]
fn ping_between_containers_v4_v6() {
    let (node, c) = node3();
    let before = node.all_stats();
    for (a, b) in [(&c[0], &c[1]), (&c[1], &c[2])] {
        assert!(ping(a.name(), b.v4()), "ping {} -> {}", a.v4(), b.v4());
        assert!(ping(a.name(), b.v6()), "ping {} -> {}", a.v6(), b.v6());
    }
    // With forwarding off in the node, only the fast path can have carried these.
    let after = node.all_stats();
    for host_if in ["vc1", "vc2", "vc3"] {
        let d = after[host_if].since(&before[host_if]);
        assert_no_drops(&d);
        // vc1 and vc2 sent echo requests, vc2 and vc3 sent replies; everyone received some.
        assert!(d.from("fast").packets >= 2, "{host_if} from.fast: {d:?}");
        assert!(d.to("fast").packets >= 2, "{host_if} to.fast: {d:?}");
    }
}

#[test]
fn tcp_both_ways_between_containers_v4_v6() {
    let (node, c) = node3();
    let before = node.all_stats();
    let bytes = 2 << 20;
    tcp_echo(c[0].name(), c[1].name(), c[1].v4(), bytes).expect("tcp c1 -> c2 v4");
    tcp_echo(c[1].name(), c[0].name(), c[0].v4(), bytes).expect("tcp c2 -> c1 v4");
    tcp_echo(c[0].name(), c[1].name(), c[1].v6(), bytes).expect("tcp c1 -> c2 v6");
    tcp_echo(c[1].name(), c[0].name(), c[0].v6(), bytes).expect("tcp c2 -> c1 v6");
    let after = node.all_stats();
    for host_if in ["vc1", "vc2"] {
        let d = after[host_if].since(&before[host_if]);
        assert_no_drops(&d);
        // 8 MiB went each way (4 transfers x 2 MiB, echoed): at least that many bytes fast.
        let min = 4 * bytes as u64;
        assert!(d.from("fast").bytes >= min, "{host_if}: {d:?}");
        assert!(d.to("fast").bytes >= min, "{host_if}: {d:?}");
    }
    // What vc1 sent fast is exactly what vc2 received fast, and the other way round.
    let d1 = after["vc1"].since(&before["vc1"]);
    let d2 = after["vc2"].since(&before["vc2"]);
    assert_eq!(d1.from("fast"), d2.to("fast"));
    assert_eq!(d2.from("fast"), d1.to("fast"));
    let d3 = after["vc3"].since(&before["vc3"]);
    assert_eq!(d3.to("fast"), zero(), "vc3 was not part of the transfer");
}

/// N datagrams from `from` to `to`: received == N, and the counters moved by exactly N
/// frames of the right length on the sender's from_container.fast and the receiver's
/// to_container.fast, and nowhere else on the fast path.
fn udp_exact(node: &Node, cs: &[Container], from: usize, to: usize, v6: bool) {
    let (src, dst) = (&cs[from], &cs[to]);
    let dst_ip = if v6 { dst.v6() } else { dst.v4() };
    let before = node.all_stats();
    let got = udp_transfer(src.name(), None, dst.name(), dst_ip, N, PAYLOAD);
    assert_eq!(got, N, "datagrams received by {dst_ip}");
    let after = node.all_stats();
    let frame = udp_frame_len(dst_ip, PAYLOAD);
    let want = Count::new(N, N * frame);
    for c in cs {
        let d = after[&c.host_if].since(&before[&c.host_if]);
        assert_no_drops(&d);
        let from_fast = if c.host_if == src.host_if {
            want
        } else {
            zero()
        };
        let to_fast = if c.host_if == dst.host_if {
            want
        } else {
            zero()
        };
        assert_eq!(
            d.from("fast"),
            from_fast,
            "{}: from_container.fast",
            c.host_if
        );
        assert_eq!(d.to("fast"), to_fast, "{}: to_container.fast", c.host_if);
    }
}

#[test]
fn udp_v4_counters_exact() {
    let (node, c) = node3();
    udp_exact(&node, &c, 0, 1, false);
}

#[test]
fn udp_v6_counters_exact() {
    let (node, c) = node3();
    udp_exact(&node, &c, 1, 2, true);
}

#[test]
fn node_to_container_and_back_counted_on_stack() {
    let node = Node::new();
    let c = node.add_container("vc1", &["10.1.0.2/24", "fd00:1::2/64"]);
    for (n_ip, c_ip) in [(node.v4(), c.v4()), (node.v6(), c.v6())] {
        assert!(
            ping_from(node.name(), Some(n_ip), c_ip),
            "ping node {n_ip} -> {c_ip}"
        );
        assert!(
            ping_from(c.name(), Some(c_ip), n_ip),
            "ping {c_ip} -> node {n_ip}"
        );
    }
    // Let what the kernel sends by itself on a new link die down before counting exactly.
    node.wait_quiet("vc1");
    for (n_ip, c_ip) in [(node.v4(), c.v4()), (node.v6(), c.v6())] {
        let want = Count::new(N, N * udp_frame_len(c_ip, PAYLOAD));

        let before = node.stats("vc1");
        let got = udp_transfer(node.name(), Some(n_ip), c.name(), c_ip, N, PAYLOAD);
        assert_eq!(got, N, "node {n_ip} -> {c_ip}: received");
        let d = node.stats("vc1").since(&before);
        assert_no_drops(&d);
        assert_eq!(
            d.to("stack"),
            want,
            "node {n_ip} -> {c_ip}: to_container.stack"
        );
        assert_eq!(
            d.to("fast"),
            zero(),
            "node {n_ip} -> {c_ip}: to_container.fast"
        );
        assert_eq!(d.from("stack"), zero(), "nothing sent by the container");

        let before = node.stats("vc1");
        let got = udp_transfer(c.name(), Some(c_ip), node.name(), n_ip, N, PAYLOAD);
        assert_eq!(got, N, "{c_ip} -> node {n_ip}: received");
        let d = node.stats("vc1").since(&before);
        assert_no_drops(&d);
        assert_eq!(
            d.from("stack"),
            want,
            "{c_ip} -> node {n_ip}: from_container.stack"
        );
        assert_eq!(
            d.from("fast"),
            zero(),
            "{c_ip} -> node {n_ip}: from_container.fast"
        );
        assert_eq!(d.to("stack"), zero(), "nothing sent to the container");
    }
}
