//! Anti-spoofing: frames a container sends with a source MAC or IP that is not its own never
//! reach another container, and are counted exactly under their drop reason; the container's
//! own traffic, ARP, ND and DAD keep working; `--spoof audit` counts but lets the kernel
//! decide, never the fast path.
//!
//! Frames are injected with an AF_PACKET socket from a thread inside the container, and looked
//! for with an AF_PACKET capture on the other container's interface. Every injected frame
//! carries a tag unique to the test, so the capture can tell them from anything else.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use vethfp_tests::{
    Container, Count, EndpointStats, Node,
    raw::{self, Capture, contains},
};

const N: usize = 50;
const FOREIGN_MAC: [u8; 6] = [0x02, 0xde, 0xad, 0xbe, 0xef, 0x01];
const BCAST: [u8; 6] = [0xff; 6];

fn zero() -> Count {
    Count::default()
}

fn v4(ip: IpAddr) -> Ipv4Addr {
    match ip {
        IpAddr::V4(a) => a,
        _ => panic!("{ip} is not IPv4"),
    }
}

fn tag(test: &str, i: usize) -> Vec<u8> {
    format!("vfp-spoof-{}-{test}-{i:05}", std::process::id()).into_bytes()
}

struct Macs {
    /// The container's own MAC.
    own: [u8; 6],
    /// The host end's MAC: the container's gateway.
    gw: [u8; 6],
}

fn macs(node: &Node, c: &Container) -> Macs {
    let e = node.list_entry(&c.host_if).expect("listed");
    Macs {
        own: raw::mac(e["container_mac"].as_str().unwrap()),
        gw: raw::mac(e["host_mac"].as_str().unwrap()),
    }
}

fn node3(c1_extra: &[&str]) -> (Node, Container, Container, Container) {
    let node = Node::new();
    let c1 = node.add_container_with("vc1", &["10.1.0.2/24", "fd00:1::2/64"], c1_extra);
    let c2 = node.add_container("vc2", &["10.1.0.3/24", "fd00:1::3/64"]);
    let c3 = node.add_container("vc3", &["10.1.0.4/24", "fd00:1::4/64"]);
    for c in ["vc1", "vc2", "vc3"] {
        node.wait_quiet(c);
    }
    (node, c1, c2, c3)
}

/// The spoofed frames: (class, expected drop reason, frame). `n` of each class.
fn spoofed(
    test: &str,
    m: &Macs,
    c1: &Container,
    c2: &Container,
    c3: &Container,
    n: usize,
) -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let foreign4: IpAddr = "10.1.0.99".parse().unwrap();
    let foreign6: IpAddr = "fd00:1::99".parse().unwrap();
    let mut out = Vec::new();
    let mut k = 0;
    let mut t = || {
        k += 1;
        tag(test, k)
    };
    for _ in 0..n {
        let u = |src_mac, src, dst, tag: Vec<u8>| raw::udp_frame(m.gw, src_mac, src, dst, 9, &tag);
        out.push((
            "ipv4 foreign src",
            "drop_spoof_ip",
            u(m.own, foreign4, c2.v4(), t()),
        ));
        out.push((
            "ipv4 src of another endpoint",
            "drop_spoof_ip",
            u(m.own, c3.v4(), c2.v4(), t()),
        ));
        out.push((
            "ipv6 foreign src",
            "drop_spoof_ip",
            u(m.own, foreign6, c2.v6(), t()),
        ));
        out.push((
            "ipv6 src of another endpoint",
            "drop_spoof_ip",
            u(m.own, c3.v6(), c2.v6(), t()),
        ));
        out.push((
            "foreign MAC, own ipv4",
            "drop_spoof_mac",
            u(FOREIGN_MAC, c1.v4(), c2.v4(), t()),
        ));
        out.push((
            "foreign MAC, own ipv6",
            "drop_spoof_mac",
            u(FOREIGN_MAC, c1.v6(), c2.v6(), t()),
        ));
        out.push((
            "ARP reply claiming another's IP",
            "drop_spoof_ip",
            raw::arp_frame(
                BCAST,
                m.own,
                2,
                m.own,
                v4(c2.v4()),
                BCAST,
                v4(c2.v4()),
                &t(),
            ),
        ));
        out.push((
            "ARP request, foreign sender MAC",
            "drop_spoof_mac",
            raw::arp_frame(
                BCAST,
                m.own,
                1,
                FOREIGN_MAC,
                v4(c1.v4()),
                [0; 6],
                v4(c2.v4()),
                &t(),
            ),
        ));
        out.push((
            "ARP, foreign Ethernet source",
            "drop_spoof_mac",
            raw::arp_frame(
                BCAST,
                FOREIGN_MAC,
                1,
                m.own,
                v4(c1.v4()),
                [0; 6],
                v4(c2.v4()),
                &t(),
            ),
        ));
    }
    out
}

fn expect_drops(frames: &[(&str, &str, Vec<u8>)], reason: &str) -> u64 {
    frames.iter().filter(|f| f.1 == reason).count() as u64
}

#[test]
fn enforce_drops_foreign_sources_exactly() {
    let (node, c1, c2, c3) = node3(&[]);
    let m = macs(&node, &c1);
    let frames = spoofed("enf", &m, &c1, &c2, &c3, N);
    let want_ip = expect_drops(&frames, "drop_spoof_ip");
    let want_mac = expect_drops(&frames, "drop_spoof_mac");
    let tags: Vec<Vec<u8>> = (1..=frames.len()).map(|i| tag("enf", i)).collect();

    let cap = Capture::start(c2.name(), "eth0");
    let before = node.all_stats();
    let sent = raw::inject(
        c1.name(),
        "eth0",
        frames.iter().map(|f| f.2.clone()).collect(),
    );
    for (r, f) in sent.iter().zip(&frames) {
        assert_eq!(*r, Ok(()), "inject {}", f.0);
    }
    let b1 = before["vc1"].clone();
    let d1 = node
        .wait_stats("vc1", |s| {
            let d = s.since(&b1);
            d.from("drop_spoof_ip").packets + d.from("drop_spoof_mac").packets >= want_ip + want_mac
        })
        .since(&b1);

    // Then one well-formed frame of c1's own, which must arrive: the capture works, and
    // everything injected before it has been through the datapath.
    let marker = tag("enf", 0);
    let ok = raw::udp_frame(m.gw, m.own, c1.v4(), c2.v4(), 9, &marker);
    assert_eq!(raw::inject(c1.name(), "eth0", vec![ok]), [Ok(())]);
    assert!(
        cap.wait_for(Duration::from_secs(10), |f| contains(f, &marker)),
        "c1's own frame did not arrive at c2"
    );
    let got = cap.stop();
    let leaked: Vec<&str> = frames
        .iter()
        .zip(&tags)
        .filter(|(_, t)| got.iter().any(|g| contains(g, t)))
        .map(|(f, _)| f.0)
        .collect();
    assert!(leaked.is_empty(), "spoofed frames reached c2: {leaked:?}");

    assert_eq!(d1.from("drop_spoof_ip").packets, want_ip, "{d1:?}");
    assert_eq!(d1.from("drop_spoof_mac").packets, want_mac, "{d1:?}");
    let bytes = |reason: &str| -> u64 {
        frames
            .iter()
            .filter(|f| f.1 == reason)
            .map(|f| f.2.len() as u64)
            .sum()
    };
    assert_eq!(d1.from("drop_spoof_ip").bytes, bytes("drop_spoof_ip"));
    assert_eq!(d1.from("drop_spoof_mac").bytes, bytes("drop_spoof_mac"));
    assert_eq!(d1.from("fast"), zero(), "spoofed frames took the fast path");
    assert_eq!(d1.from("stack"), zero(), "spoofed frames went to the stack");
    let after = node.all_stats();
    for h in ["vc2", "vc3"] {
        let d = after[h].since(&before[h]);
        // c2 got exactly the marker, by the fast path; c3 nothing.
        let want_fast = if h == "vc2" { 1 } else { 0 };
        assert_eq!(d.to("fast").packets, want_fast, "{h}: {d:?}");
        assert_eq!(d.to("stack"), zero(), "{h}: {d:?}");
    }
    println!(
        "spoof enforce: {} frames injected, drop_spoof_ip {}, drop_spoof_mac {}, 0 delivered",
        frames.len(),
        want_ip,
        want_mac
    );
}

fn no_drops(d: &EndpointStats) {
    for v in [
        "drop_spoof_ip",
        "drop_spoof_mac",
        "drop_policy",
        "drop_error",
    ] {
        assert_eq!(
            d.from(v),
            zero(),
            "{}: from_container.{v}: {d:?}",
            d.host_if
        );
    }
}

#[test]
fn own_traffic_arp_nd_dad_keep_working() {
    let (node, c1, c2, _c3) = node3(&[]);
    let m = macs(&node, &c1);
    let before = node.stats("vc1");

    // Own unicast traffic, both families, both directions.
    for (a, b) in [(&c1, &c2), (&c2, &c1)] {
        assert!(
            vethfp_tests::ping(a.name(), b.v4()),
            "ping {} -> {}",
            a.v4(),
            b.v4()
        );
        assert!(
            vethfp_tests::ping(a.name(), b.v6()),
            "ping {} -> {}",
            a.v6(),
            b.v6()
        );
    }

    // ARP from the container: its own request and an ARP probe (sender 0.0.0.0) pass to the
    // stack, counted there.
    let s0 = node.stats("vc1");
    let t1 = tag("arp", 1);
    let t2 = tag("arp", 2);
    let arps = vec![
        raw::arp_frame(
            BCAST,
            m.own,
            1,
            m.own,
            v4(c1.v4()),
            [0; 6],
            Ipv4Addr::new(169, 254, 1, 1),
            &t1,
        ),
        raw::arp_frame(
            BCAST,
            m.own,
            1,
            m.own,
            Ipv4Addr::UNSPECIFIED,
            [0; 6],
            v4(c1.v4()),
            &t2,
        ),
    ];
    let len: u64 = arps.iter().map(|f| f.len() as u64).sum();
    assert_eq!(raw::inject(c1.name(), "eth0", arps), [Ok(()), Ok(())]);
    let d = node
        .wait_stats("vc1", |s| s.since(&s0).from("stack").packets >= 2)
        .since(&s0);
    assert_eq!(d.from("stack"), Count::new(2, len), "own ARP frames: {d:?}");
    no_drops(&d);

    // The container answers ARP and ND itself: make the node resolve it (drop the node's
    // permanent neighbour entries) and ping it from the node. The replies come from the
    // container's own MAC and addresses.
    for a in [c1.v4(), c1.v6()] {
        node.ns.ip(&["neigh", "del", &a.to_string(), "dev", "vc1"]);
        let n_ip = if a.is_ipv4() { node.v4() } else { node.v6() };
        assert!(
            vethfp_tests::ping_from(node.name(), Some(n_ip), a),
            "node -> {a} with ARP/ND resolution"
        );
        let neigh = node
            .ns
            .ip_json(&["neigh", "show", &a.to_string(), "dev", "vc1"]);
        let st = neigh[0]["state"].as_array().cloned().unwrap_or_default();
        assert!(
            !st.iter().any(|s| s == "FAILED" || s == "INCOMPLETE"),
            "node's neighbour entry for {a} did not resolve: {neigh}"
        );
        assert_eq!(
            neigh[0]["lladdr"].as_str(),
            Some(
                node.list_entry("vc1").unwrap()["container_mac"]
                    .as_str()
                    .unwrap()
            ),
            "{neigh}"
        );
    }

    // DAD with enforcement live: re-add the container's IPv6 address; it must become
    // usable (not tentative, not dadfailed) and carry traffic again.
    c1.ns
        .ip(&["-6", "addr", "del", "fd00:1::2/64", "dev", "eth0"]);
    // noprefixroute, as vethfp configures it: routed mode, no on-link prefix.
    c1.ns.ip(&[
        "-6",
        "addr",
        "add",
        "fd00:1::2/64",
        "dev",
        "eth0",
        "noprefixroute",
    ]);
    c1.ns.wait_addrs_ready(Duration::from_secs(10));
    let a = c1.ns.ip_json(&["-6", "addr", "show", "dev", "eth0"]);
    let info = a[0]["addr_info"].as_array().unwrap();
    let global = info
        .iter()
        .find(|x| x["local"] == "fd00:1::2")
        .unwrap_or_else(|| panic!("fd00:1::2 gone: {a}"));
    assert!(
        global["tentative"] != true && global["dadfailed"] != true,
        "{global}"
    );
    assert!(vethfp_tests::ping(c1.name(), c2.v6()), "ping6 after DAD");

    let d = node.stats("vc1").since(&before);
    no_drops(&d);
    assert!(d.from("fast").packets >= 4, "{d:?}");
}

#[test]
fn audit_counts_and_delivers_via_the_stack_never_fast() {
    let node = Node::new();
    node.ns.sysctl("net.ipv4.ip_forward", "1");
    node.ns.sysctl("net.ipv6.conf.all.forwarding", "1");
    for scope in ["all", "default"] {
        node.ns
            .sysctl(&format!("net.ipv4.conf.{scope}.rp_filter"), "0");
    }
    let c1 = node.add_container_with(
        "vc1",
        &["10.1.0.2/24", "fd00:1::2/64"],
        &["--spoof", "audit"],
    );
    let c2 = node.add_container("vc2", &["10.1.0.3/24", "fd00:1::3/64"]);
    node.ns.sysctl("net.ipv4.conf.vc1.rp_filter", "0");
    assert_eq!(node.list_entry("vc1").unwrap()["spoof"], "audit");
    node.wait_quiet("vc1");
    node.wait_quiet("vc2");
    let m = macs(&node, &c1);
    let foreign4: IpAddr = "10.1.0.99".parse().unwrap();
    let foreign6: IpAddr = "fd00:1::99".parse().unwrap();
    let n = 20;
    let mut frames = Vec::new();
    let mut tags = Vec::new();
    for i in 0..n {
        for (j, (src_mac, src, dst)) in [
            (m.own, foreign4, c2.v4()),
            (m.own, foreign6, c2.v6()),
            (FOREIGN_MAC, c1.v4(), c2.v4()),
        ]
        .into_iter()
        .enumerate()
        {
            let t = tag("aud", i * 3 + j);
            frames.push(raw::udp_frame(m.gw, src_mac, src, dst, 9, &t));
            tags.push(t);
        }
    }
    let total = frames.len() as u64;
    let cap = Capture::start(c2.name(), "eth0");
    let before = node.all_stats();
    let r = raw::inject(c1.name(), "eth0", frames);
    assert!(r.iter().all(|r| r.is_ok()), "{r:?}");
    // Every one of them arrives at c2, forwarded by the node's kernel.
    let all_in = cap.wait_for(Duration::from_secs(10), |_| true) && {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = cap.so_far();
            if tags.iter().all(|t| got.iter().any(|g| contains(g, t))) {
                break true;
            }
            if std::time::Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let got = cap.stop();
    let arrived = tags
        .iter()
        .filter(|t| got.iter().any(|g| contains(g, t)))
        .count();
    assert!(
        all_in,
        "audit: {arrived} of {total} frames arrived at c2 via the kernel"
    );
    let b1 = before["vc1"].clone();
    let d1 = node
        .wait_stats("vc1", |s| {
            let d = s.since(&b1);
            d.from("drop_spoof_ip").packets + d.from("drop_spoof_mac").packets >= total
        })
        .since(&b1);
    assert_eq!(d1.from("drop_spoof_ip").packets, 2 * n as u64, "{d1:?}");
    assert_eq!(d1.from("drop_spoof_mac").packets, n as u64, "{d1:?}");
    assert_eq!(
        d1.from("fast"),
        zero(),
        "audit must never take the fast path: {d1:?}"
    );
    assert_eq!(
        d1.from("stack"),
        zero(),
        "counted once, under the reason only: {d1:?}"
    );
    let d2 = node.stats("vc2").since(&before["vc2"]);
    assert_eq!(d2.to("fast"), zero(), "{d2:?}");
    assert_eq!(d2.to("stack").packets, total, "{d2:?}");
    println!(
        "spoof audit: {total} spoofed frames, all counted under their reason and delivered by the kernel"
    );
}
