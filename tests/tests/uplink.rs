//! The uplink fast path across nodes (issue 4): two node namespaces joined by a veth underlay
//! (10.255.0.1/24 ↔ .2, fd00:255::1/64 ↔ ::2), each with its own bpffs, its own vethfp and a
//! container, the container subnets (10.X.0.0/16, fd00:X::/64) routed via the peer node.
//! Real traffic; counters checked exactly on both sides: the sender's from_container
//! fast_uplink, the uplinks' sent_fast / received_fast / received_stack, the receiver's
//! to_container fast_uplink. Each test builds its own pair of nodes, so they run in parallel.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use vethfp_tests::{
    Container, Count, EndpointStats, Node, UplinkStats, ping, run_in_netns, tcp_echo,
    udp_frame_len, udp_transfer,
};

const N: u64 = 500;
const PAYLOAD: usize = 100;
const UL: &str = "ul0";

fn zero() -> Count {
    Count::default()
}

struct Side {
    node: Node,
    c: Container,
}

/// Two nodes with forwarding on (a router's job: the FIB lookup refuses otherwise), the
/// underlay at `mtu` (None: 1500), a container on each, `uplink attach ul0` on both (node A
/// with `--egress egress_a`). With `warm`, neighbours are resolved by a round of pings and the
/// counters left to settle, so later measurements are exact.
fn two_nodes(mtu: Option<u32>, egress_a: &str, warm: bool) -> (Side, Side) {
    let a = Node::with_x(1);
    let b = Node::with_x(2);
    for n in [&a, &b] {
        n.ns.sysctl("net.ipv4.ip_forward", "1");
        n.ns.sysctl("net.ipv6.conf.all.forwarding", "1");
    }
    a.ns.add_veth(UL, UL, &b.ns);
    for (n, me, peer, x) in [(&a, 1, 2, 2), (&b, 2, 1, 1)] {
        if let Some(m) = mtu {
            n.ns.ip(&["link", "set", UL, "mtu", &m.to_string()]);
        }
        // Neighbours stay REACHABLE for the whole test once confirmed, so no unreachability
        // probe (ARP / NS from the peer's stack) lands in a measurement; the first probe after
        // a stack used an unconfirmed entry comes after 1 s instead of 5.
        for fam in ["ipv4", "ipv6"] {
            n.ns.sysctl(
                &format!("net.{fam}.neigh.{UL}.base_reachable_time_ms"),
                "600000",
            );
            n.ns.sysctl(&format!("net.{fam}.neigh.{UL}.delay_first_probe_time"), "1");
        }
        n.ns.ip(&["addr", "add", &format!("10.255.0.{me}/24"), "dev", UL]);
        n.ns.ip(&[
            "addr",
            "add",
            &format!("fd00:255::{me}/64"),
            "dev",
            UL,
            "nodad",
        ]);
        n.ns.ip(&["link", "set", UL, "up"]);
        n.ns.ip(&[
            "route",
            "add",
            &format!("10.{x}.0.0/16"),
            "via",
            &format!("10.255.0.{peer}"),
        ]);
        n.ns.ip(&[
            "-6",
            "route",
            "add",
            &format!("fd00:{x}::/64"),
            "via",
            &format!("fd00:255::{peer}"),
        ]);
    }
    let ca = a.add_container("vc1", &["10.1.0.2/24", "fd00:1::2/64"]);
    // B's container has spare addresses: fresh destinations for path-MTU probes.
    let cb = b.add_container(
        "vc1",
        &[
            "10.2.0.2/24",
            "fd00:2::2/64",
            "10.2.0.3/24",
            "fd00:2::3/64",
            "10.2.0.4/24",
            "fd00:2::4/64",
        ],
    );
    for (n, eg) in [(&a, egress_a), (&b, "fast")] {
        n.ns.wait_addrs_ready(Duration::from_secs(10));
        let out = n.ok(&["uplink", "attach", UL, "--egress", eg]);
        assert!(out.contains(UL), "uplink attach output: {out}");
        let st = n.status_json();
        assert_eq!(st["egress"], eg, "status: {st}");
        assert_eq!(n.uplink(UL).sent_fast, zero());
    }
    let (a, b) = (Side { node: a, c: ca }, Side { node: b, c: cb });
    if warm {
        for (x, y) in [(&a, &b), (&b, &a)] {
            for ip in [y.c.v4(), y.c.v6(), y.node.v4(), y.node.v6()] {
                assert!(ping(x.c.name(), ip), "warm-up ping {} -> {ip}", x.c.name());
            }
        }
        for (s, peer) in [(&a, 2), (&b, 1)] {
            wait_neigh_reachable(
                s,
                &[format!("10.255.0.{peer}"), format!("fd00:255::{peer}")],
            );
        }
        a.node.wait_all_quiet();
        b.node.wait_all_quiet();
    }
    (a, b)
}

/// Poll until the node's underlay neighbours `addrs` are REACHABLE and no entry on the
/// underlay is being resolved or probed.
fn wait_neigh_reachable(s: &Side, addrs: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let n = s.node.ns.ip_json(&["neigh", "show", "dev", UL]);
        let entries = n.as_array().expect("ip neigh JSON array");
        let state = |e: &serde_json::Value| e["state"].as_array().cloned().unwrap_or_default();
        let busy = entries.iter().any(|e| {
            state(e)
                .iter()
                .any(|st| ["DELAY", "PROBE", "INCOMPLETE"].contains(&st.as_str().unwrap_or("")))
        });
        let reachable = addrs.iter().all(|a| {
            entries
                .iter()
                .any(|e| e["dst"] == a.as_str() && state(e).iter().any(|st| st == "REACHABLE"))
        });
        if reachable && !busy {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: underlay neighbours not settled after 15 s: {n}",
            s.node.name()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Counters of a side: its endpoint and its uplink.
fn snap(s: &Side) -> (EndpointStats, UplinkStats) {
    (s.node.stats(&s.c.host_if), s.node.uplink(UL))
}

fn delta(s: &Side, before: &(EndpointStats, UplinkStats)) -> (EndpointStats, UplinkStats) {
    let (e, u) = snap(s);
    (e.since(&before.0), u.since(&before.1))
}

/// Every endpoint counter is zero except those listed (direction, verdict) → value.
fn assert_endpoint(d: &EndpointStats, want: &[(&str, &str, Count)]) {
    for v in vethfp_tests::VERDICTS {
        for (dir, got) in [("from", d.from(v)), ("to", d.to(v))] {
            let w = want
                .iter()
                .find(|(wd, wv, _)| *wd == dir && *wv == v)
                .map(|x| x.2)
                .unwrap_or_default();
            assert_eq!(got, w, "{}: {dir}_container.{v}", d.host_if);
        }
    }
}

fn assert_uplink(d: &UplinkStats, received_fast: Count, received_stack: Count, sent_fast: Count) {
    assert_eq!(d.received_fast, received_fast, "uplink received_fast");
    assert_eq!(d.received_stack, received_stack, "uplink received_stack");
    assert_eq!(d.sent_fast, sent_fast, "uplink sent_fast");
}

/// N datagrams from container `x` to container `y` (v4 or v6), all delivered; counted
/// exactly on the way out (x's endpoint and uplink) and in (y's uplink and endpoint).
fn udp_container_to_container(x: &Side, y: &Side, v6: bool) {
    let dst = if v6 { y.c.v6() } else { y.c.v4() };
    let want = Count::new(N, N * udp_frame_len(dst, PAYLOAD));
    let (bx, by) = (snap(x), snap(y));
    let got = udp_transfer(x.c.name(), None, y.c.name(), dst, N, PAYLOAD);
    assert_eq!(got, N, "{} -> {dst}: received", x.c.name());
    let ((ex, ux), (ey, uy)) = (delta(x, &bx), delta(y, &by));
    assert_endpoint(&ex, &[("from", "fast_uplink", want)]);
    assert_uplink(&ux, zero(), zero(), want);
    assert_uplink(&uy, want, zero(), zero());
    assert_endpoint(&ey, &[("to", "fast_uplink", want)]);
}

#[test]
fn container_to_remote_container_udp_v4_v6_exact() {
    let (a, b) = two_nodes(None, "fast", true);
    for v6 in [false, true] {
        udp_container_to_container(&a, &b, v6);
        udp_container_to_container(&b, &a, v6);
    }
}

#[test]
fn container_to_remote_container_tcp_v4_v6() {
    let (a, b) = two_nodes(None, "fast", true);
    let bytes = 2 << 20;
    for (x, y) in [(&a, &b), (&b, &a)] {
        for ip in [y.c.v4(), y.c.v6()] {
            let (bx, by) = (snap(x), snap(y));
            tcp_echo(x.c.name(), y.c.name(), ip, bytes)
                .unwrap_or_else(|e| panic!("tcp {} -> {ip}: {e}", x.c.name()));
            let ((ex, ux), (ey, uy)) = (delta(x, &bx), delta(y, &by));
            // Everything each container sent left by its uplink fast and entered the other
            // container fast: the same packets (GSO super-packets included) on all 4 counters.
            let xy = ex.from("fast_uplink");
            let yx = ey.from("fast_uplink");
            assert!(
                xy.bytes >= bytes as u64 && yx.bytes >= bytes as u64,
                "{ex:?} {ey:?}"
            );
            assert_endpoint(
                &ex,
                &[("from", "fast_uplink", xy), ("to", "fast_uplink", yx)],
            );
            assert_endpoint(
                &ey,
                &[("from", "fast_uplink", yx), ("to", "fast_uplink", xy)],
            );
            assert_uplink(&ux, yx, zero(), xy);
            assert_uplink(&uy, xy, zero(), yx);
        }
    }
}

/// Container ↔ the remote node itself: out of the container's uplink fast, into the remote
/// node's stack (received_stack); the node's replies, sent by its stack, come in fast.
#[test]
fn container_and_remote_node_v4_v6_udp_tcp() {
    let (a, b) = two_nodes(None, "fast", true);
    for (n_ip, c_ip) in [(b.node.v4(), a.c.v4()), (b.node.v6(), a.c.v6())] {
        let want = Count::new(N, N * udp_frame_len(n_ip, PAYLOAD));

        let (ba, bb) = (snap(&a), snap(&b));
        let got = udp_transfer(a.c.name(), None, b.node.name(), n_ip, N, PAYLOAD);
        assert_eq!(got, N, "{c_ip} -> node {n_ip}");
        let ((ea, ua), (eb, ub)) = (delta(&a, &ba), delta(&b, &bb));
        assert_endpoint(&ea, &[("from", "fast_uplink", want)]);
        assert_uplink(&ua, zero(), zero(), want);
        assert_uplink(&ub, zero(), want, zero());
        assert_endpoint(&eb, &[]);

        let (ba, bb) = (snap(&a), snap(&b));
        let got = udp_transfer(b.node.name(), Some(n_ip), a.c.name(), c_ip, N, PAYLOAD);
        assert_eq!(got, N, "node {n_ip} -> {c_ip}");
        let ((ea, ua), (eb, ub)) = (delta(&a, &ba), delta(&b, &bb));
        assert_endpoint(&ea, &[("to", "fast_uplink", want)]);
        assert_uplink(&ua, want, zero(), zero());
        assert_uplink(&ub, zero(), zero(), zero());
        assert_endpoint(&eb, &[]);

        // TCP both ways: the container's side is fast_uplink only, in and out.
        let (ba, bb) = (snap(&a), snap(&b));
        tcp_echo(a.c.name(), b.node.name(), n_ip, 1 << 20).expect("tcp container -> node");
        tcp_echo(b.node.name(), a.c.name(), c_ip, 1 << 20).expect("tcp node -> container");
        let ((ea, ua), (eb, ub)) = (delta(&a, &ba), delta(&b, &bb));
        let (out, inn) = (ea.from("fast_uplink"), ea.to("fast_uplink"));
        assert!(out.bytes >= 2 << 20 && inn.bytes >= 2 << 20, "{ea:?}");
        assert_endpoint(
            &ea,
            &[("from", "fast_uplink", out), ("to", "fast_uplink", inn)],
        );
        assert_uplink(&ua, inn, zero(), out);
        assert_eq!(
            ub.received_stack, out,
            "remote node received what the container sent"
        );
        assert_eq!(ub.received_fast, zero());
        assert_endpoint(&eb, &[]);
    }
}

/// `--egress kernel`: what a container sends to the outside takes the node's stack (counted
/// `stack`, the uplink sends nothing fast), while what arrives for it stays fast.
#[test]
fn egress_kernel_keeps_outbound_on_the_stack_inbound_fast() {
    let (a, b) = two_nodes(None, "kernel", true);
    for v6 in [false, true] {
        let (dst, back) = if v6 {
            (b.c.v6(), a.c.v6())
        } else {
            (b.c.v4(), a.c.v4())
        };
        let want = Count::new(N, N * udp_frame_len(dst, PAYLOAD));

        let (ba, bb) = (snap(&a), snap(&b));
        assert_eq!(
            udp_transfer(a.c.name(), None, b.c.name(), dst, N, PAYLOAD),
            N
        );
        let ((ea, ua), (eb, ub)) = (delta(&a, &ba), delta(&b, &bb));
        assert_endpoint(&ea, &[("from", "stack", want)]);
        assert_uplink(&ua, zero(), zero(), zero());
        // Forwarded by A's kernel (TTL already decremented there), fast into B's container.
        assert_uplink(&ub, want, zero(), zero());
        assert_endpoint(&eb, &[("to", "fast_uplink", want)]);

        let (ba, bb) = (snap(&a), snap(&b));
        assert_eq!(
            udp_transfer(b.c.name(), None, a.c.name(), back, N, PAYLOAD),
            N
        );
        let ((ea, ua), (eb, ub)) = (delta(&a, &ba), delta(&b, &bb));
        assert_endpoint(&eb, &[("from", "fast_uplink", want)]);
        assert_uplink(&ub, zero(), zero(), want);
        assert_uplink(&ua, want, zero(), zero());
        assert_endpoint(&ea, &[("to", "fast_uplink", want)]);
    }
    tcp_echo(a.c.name(), b.c.name(), b.c.v4(), 1 << 20).expect("tcp v4 with egress kernel");
    tcp_echo(a.c.name(), b.c.name(), b.c.v6(), 1 << 20).expect("tcp v6 with egress kernel");
}

/// First contact: the underlay neighbour is not resolved, so the first packets leave with
/// bpf_redirect_neigh (which resolves it), later ones with bpf_redirect. None is lost, all
/// are counted fast_uplink.
#[test]
fn unresolved_neighbour_first_contact_is_fast_and_lossless() {
    let (a, b) = two_nodes(None, "fast", false);
    for (v6, nh) in [(false, "10.255.0.2"), (true, "fd00:255::2")] {
        let st = a.node.ns.ip(&["neigh", "show", "dev", UL, "to", nh]);
        assert!(!st.contains("REACHABLE"), "{nh} already resolved: {st}");
        let dst = if v6 { b.c.v6() } else { b.c.v4() };
        let want = Count::new(N, N * udp_frame_len(dst, PAYLOAD));
        let (ba, bb) = (snap(&a), snap(&b));
        assert_eq!(
            udp_transfer(a.c.name(), None, b.c.name(), dst, N, PAYLOAD),
            N
        );
        let ((ea, ua), (eb, ub)) = (delta(&a, &ba), delta(&b, &bb));
        assert_endpoint(&ea, &[("from", "fast_uplink", want)]);
        assert_eq!(ua.sent_fast, want);
        assert_eq!(ub.received_fast, want);
        assert_endpoint(&eb, &[("to", "fast_uplink", want)]);
        let st = a.node.ns.ip(&["neigh", "show", "dev", UL, "to", nh]);
        assert!(
            st.contains("lladdr"),
            "{nh} not resolved by redirect_neigh: {st}"
        );
    }
}

/// A DF datagram of `l3_len` bytes (IP header included) from `ns` to `dst`; returns the path
/// MTU the sending socket knows once the network had its say (IP_MTU / IPV6_MTU), polling
/// until it drops below 1500 or 3 s passed.
fn df_send_learn_mtu(ns: &str, dst: SocketAddr, l3_len: usize) -> u32 {
    run_in_netns(ns, move || {
        let v6 = dst.is_ipv6();
        let sock = UdpSocket::bind(SocketAddr::new(
            if v6 {
                IpAddr::from([0u16; 8])
            } else {
                IpAddr::from([0u8; 4])
            },
            0,
        ))
        .unwrap();
        sock.connect(dst).unwrap();
        let fd = sock.as_raw_fd();
        let (lvl, disc, mtu_opt) = if v6 {
            (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, libc::IPV6_MTU)
        } else {
            (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_MTU)
        };
        let do_: libc::c_int = 2; // IP_PMTUDISC_DO / IPV6_PMTUDISC_DO
        // SAFETY: valid fd, int option of the stated size.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                lvl,
                disc,
                (&do_ as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "set PMTUDISC_DO");
        let mtu = || {
            let mut v: libc::c_int = 0;
            let mut l = size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: valid fd, out pointer to an int of the stated size.
            let rc =
                unsafe { libc::getsockopt(fd, lvl, mtu_opt, (&mut v as *mut i32).cast(), &mut l) };
            assert_eq!(rc, 0, "getsockopt IP(V6)_MTU");
            v as u32
        };
        assert_eq!(mtu(), 1500, "path MTU known before sending");
        let payload = l3_len - if v6 { 48 } else { 28 };
        sock.send(&vec![0u8; payload]).expect("first DF send");
        let deadline = Instant::now() + Duration::from_secs(3);
        while mtu() == 1500 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        mtu()
    })
}

/// Underlay MTU 1300: a DF packet over it — even by 1 to 4 bytes, which the kernel's skb
/// forwardability check tolerates as VLAN room — is not sent fast: it goes to the stack, which
/// answers "fragmentation needed" / "packet too big" (mtu 1300) to the container. A packet of
/// exactly 1300 bytes still goes fast.
#[test]
fn smaller_underlay_mtu_sends_icmp_to_the_container() {
    let (a, b) = two_nodes(Some(1300), "fast", true);
    for v6 in [false, true] {
        for (i, l3) in [1304usize, 1301, 1428].into_iter().enumerate() {
            // A path MTU is learnt per destination address: a fresh one for each probe.
            let dst_ip: IpAddr = if v6 {
                format!("fd00:2::{}", 2 + i).parse().unwrap()
            } else {
                format!("10.2.0.{}", 2 + i).parse().unwrap()
            };
            let before = snap(&a);
            let mtu = df_send_learn_mtu(a.c.name(), SocketAddr::new(dst_ip, 9), l3);
            let (ea, ua) = delta(&a, &before);
            assert_eq!(
                mtu, 1300,
                "v6={v6}: DF packet of {l3} bytes over a 1300 underlay: no ICMP reached the \
                 sender (counters {ea:?} {ua:?})"
            );
            // Exactly the one oversized packet went to the stack, and the ICMP error came back
            // through the kernel, quoting as much of it as fits in 576 bytes (IPv4) or the
            // 1280-byte minimum MTU (IPv6).
            let icmp = if v6 { 14 + 1280 } else { 14 + 576 };
            assert_endpoint(
                &ea,
                &[
                    ("from", "stack", Count::new(1, 14 + l3 as u64)),
                    ("to", "stack", Count::new(1, icmp as u64)),
                ],
            );
            assert_eq!(ua.sent_fast, zero(), "v6={v6} {l3}: nothing sent fast");
        }
        // Exactly the MTU: fast.
        let dst = if v6 { b.c.v6() } else { b.c.v4() };
        let payload = 1300 - if v6 { 48 } else { 28 };
        let (ba, bb) = (snap(&a), snap(&b));
        assert_eq!(
            udp_transfer(a.c.name(), None, b.c.name(), dst, 50, payload),
            50
        );
        let ((ea, ua), (_, ub)) = (delta(&a, &ba), delta(&b, &bb));
        let want = Count::new(50, 50 * 1314);
        assert_endpoint(&ea, &[("from", "fast_uplink", want)]);
        assert_eq!(ua.sent_fast, want);
        assert_eq!(ub.received_fast, want);
    }
}

/// The path MTU a namespace has cached for `dst` (`ip route get`), if any.
fn cached_mtu(s: &Side, dst: IpAddr) -> Option<u32> {
    let out = s.c.ns.ip(&["route", "get", &dst.to_string()]);
    let mut w = out.split_whitespace();
    while let Some(x) = w.next() {
        if x == "mtu" {
            return w.next().and_then(|m| m.parse().ok());
        }
    }
    None
}

/// Underlay MTU 1300, containers at 1500: TCP both ways still transfers every byte, and it
/// does so because PMTU discovery worked: each sender learnt 1300 for its peer. (TCP sends
/// GSO super-packets; a fast path that let their 1500-byte segments out onto the 1300-byte
/// link would go unnoticed on a veth underlay, but not by this check.)
#[test]
fn tcp_over_smaller_underlay_mtu_uses_pmtu_discovery() {
    let (a, b) = two_nodes(Some(1300), "fast", true);
    for v6 in [false, true] {
        let (ip_a, ip_b) = if v6 {
            (a.c.v6(), b.c.v6())
        } else {
            (a.c.v4(), b.c.v4())
        };
        assert_eq!(cached_mtu(&a, ip_b), None, "no PMTU learnt yet");
        let (ba, bb) = (snap(&a), snap(&b));
        tcp_echo(a.c.name(), b.c.name(), ip_b, 4 << 20)
            .unwrap_or_else(|e| panic!("tcp {ip_a} -> {ip_b} over MTU 1300: {e}"));
        let ((ea, ua), (eb, ub)) = (delta(&a, &ba), delta(&b, &bb));
        assert_eq!(
            cached_mtu(&a, ip_b),
            Some(1300),
            "{ip_a} learnt no PMTU for {ip_b}"
        );
        assert_eq!(
            cached_mtu(&b, ip_a),
            Some(1300),
            "{ip_b} learnt no PMTU for {ip_a}"
        );
        // The bulk still went fast; what the stack saw is what needed an ICMP answer.
        assert!(ea.from("fast_uplink").bytes >= 4 << 20, "{ea:?}");
        assert!(eb.from("fast_uplink").bytes >= 4 << 20, "{eb:?}");
        assert_eq!(ua.sent_fast, ea.from("fast_uplink"));
        assert_eq!(ub.received_fast, ea.from("fast_uplink"));
        assert!(
            ea.from("stack").packets >= 1,
            "an oversized segment met the stack: {ea:?}"
        );
        eprintln!(
            "v6={v6}: A sent {:?} fast, {:?} to the stack; B {:?} fast, {:?} stack",
            ea.from("fast_uplink"),
            ea.from("stack"),
            eb.from("fast_uplink"),
            eb.from("stack")
        );
    }
}

/// `uplink detach` gives the traffic back to the kernel: forwarded by both nodes' stacks and
/// counted `stack` on both endpoints; the uplink disappears from `status`.
#[test]
fn uplink_detach_restores_the_kernel_path() {
    let (a, b) = two_nodes(None, "fast", true);
    udp_container_to_container(&a, &b, false);
    for s in [&a, &b] {
        let out = s.node.ok(&["uplink", "detach", UL]);
        assert!(out.contains(UL), "{out}");
        let st = s.node.status_json();
        assert_eq!(st["uplinks"], serde_json::json!([]), "{st}");
        s.node.fails(&["uplink", "detach", UL]);
    }
    for v6 in [false, true] {
        for (x, y) in [(&a, &b), (&b, &a)] {
            let dst = if v6 { y.c.v6() } else { y.c.v4() };
            let want = Count::new(N, N * udp_frame_len(dst, PAYLOAD));
            let (ex0, ey0) = (x.node.stats(&x.c.host_if), y.node.stats(&y.c.host_if));
            assert_eq!(
                udp_transfer(x.c.name(), None, y.c.name(), dst, N, PAYLOAD),
                N
            );
            let ex = x.node.stats(&x.c.host_if).since(&ex0);
            let ey = y.node.stats(&y.c.host_if).since(&ey0);
            assert_endpoint(&ex, &[("from", "stack", want)]);
            // Two kernel hops: the TTL / hop limit is 2 lower, the length the same.
            assert_endpoint(&ey, &[("to", "stack", want)]);
        }
    }
    // And attach again: fast once more.
    for s in [&a, &b] {
        s.node.ok(&["uplink", "attach", UL]);
    }
    udp_container_to_container(&a, &b, true);
}
