//! Netfilter admission end to end (issue 12): a node with forwarding ON, real iptables /
//! ip6tables rules (kube-proxy-like NAT, a kube-router-like FORWARD policy), real sockets.
//! The kernel admits every flow first; NAT'd and filtered flows keep their semantics, and
//! flows the kernel forwarded unchanged take the fast path afterwards.

use std::{
    io::{Read, Write},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::Command,
    time::Duration,
};

use vethfp_tests::{Container, Node, in_netns, ipt, join, run_in_netns, tcp_flow};

const SHORT: Duration = Duration::from_secs(2);
const LONG: Duration = Duration::from_secs(10);

/// Packets counted by the rule of `chain` (filter table) whose text contains `comment`.
fn rule_packets(ns: &str, v6: bool, chain: &str, comment: &str) -> u64 {
    let out = ipt(ns, v6, &format!("-t filter -L {chain} -v -x -n"));
    let line = out
        .lines()
        .find(|l| l.contains(comment))
        .unwrap_or_else(|| panic!("no rule {comment:?} in {chain}:\n{out}"));
    line.split_whitespace().next().unwrap().parse().unwrap()
}

/// A TCP server on `ip:port` in `ns` for `conns` connections: reads one line, answers
/// "NAME\n", closes. Returns how many it served.
fn tcp_server(ns: &str, ip: IpAddr, port: u16, name: &'static str) -> std::thread::JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = in_netns(ns, move || {
        let l = TcpListener::bind(SocketAddr::new(ip, port)).expect("bind");
        tx.send(()).unwrap();
        l.set_nonblocking(false).unwrap();
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            s.set_read_timeout(Some(LONG)).unwrap();
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).unwrap_or(0);
            if &buf[..n] == b"quit\n" {
                return;
            }
            let _ = s.write_all(format!("{name}\n").as_bytes());
            let _ = s.shutdown(Shutdown::Write);
            // Wait for the client's close: the whole close sequence crosses the node.
            let _ = s.read(&mut buf);
        }
    });
    rx.recv_timeout(LONG).expect("server started");
    h
}

/// One request to `addr` from `ns`: connect, send a line, read the answer to EOF, close.
fn tcp_request(ns: &str, addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    run_in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{e}"))?;
        s.set_read_timeout(Some(LONG)).unwrap();
        s.write_all(b"hello\n").map_err(|e| format!("{e}"))?;
        let mut out = String::new();
        s.read_to_string(&mut out)
            .map_err(|e| format!("read: {e}"))?;
        Ok(out.trim().to_string())
    })
}

fn stop_server(ns: &str, addr: SocketAddr, h: std::thread::JoinHandle<()>) {
    run_in_netns(ns, move || {
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, SHORT) {
            let _ = s.write_all(b"quit\n");
        }
    });
    join(h);
}

/// A UDP echo server on `ip:port` in `ns` that answers "NAME" to every datagram until "quit".
fn udp_server(ns: &str, ip: IpAddr, port: u16, name: &'static str) -> std::thread::JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = in_netns(ns, move || {
        let s = UdpSocket::bind(SocketAddr::new(ip, port)).expect("bind udp");
        tx.send(()).unwrap();
        let mut buf = [0u8; 2048];
        loop {
            let (n, from) = s.recv_from(&mut buf).expect("udp recv");
            if &buf[..n] == b"quit" {
                return;
            }
            let _ = s.send_to(name.as_bytes(), from);
        }
    });
    rx.recv_timeout(LONG).expect("udp server started");
    h
}

/// `n` lock-step requests from one socket in `ns` to `dst`: (answers, the addresses they came
/// from). Each waits for its answer, so the flow's packets alternate A→B, B→A.
fn udp_requests(ns: &str, dst: SocketAddr, n: usize) -> Vec<(String, SocketAddr)> {
    run_in_netns(ns, move || {
        let bind: SocketAddr = if dst.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let s = UdpSocket::bind(bind).unwrap();
        s.set_read_timeout(Some(SHORT)).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        for i in 0..n {
            s.send_to(format!("req {i}").as_bytes(), dst).unwrap();
            match s.recv_from(&mut buf) {
                Ok((k, from)) => out.push((String::from_utf8_lossy(&buf[..k]).into(), from)),
                Err(_) => break,
            }
        }
        out
    })
}

fn udp_quit(ns: &str, dst: SocketAddr, h: std::thread::JoinHandle<()>) {
    run_in_netns(ns, move || {
        let bind: SocketAddr = if dst.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        UdpSocket::bind(bind)
            .unwrap()
            .send_to(b"quit", dst)
            .unwrap();
    });
    join(h);
}

fn liberal(node: &Node, on: bool) {
    node.ns.sysctl(
        "net.netfilter.nf_conntrack_tcp_be_liberal",
        if on { "1" } else { "0" },
    );
    // Any write operation re-reads the sysctl.
    node.ok(&["admission", "netfilter"]);
    assert_eq!(node.status_json()["tcp_admitted"], on);
}

fn node3(x: u8) -> (Node, Vec<Container>) {
    let node = Node::netfilter(x);
    let p = |i: u8| (format!("10.{x}.0.{i}/24"), format!("fd00:{x}::{i}/64"));
    let cs = (2..5)
        .map(|i| {
            let (a, b) = p(i);
            node.add_container(&vethfp_tests::unique_name("va"), &[&a, &b])
        })
        .collect();
    // Conntrack and the nat table exist in the node before the first rule is needed.
    ipt(node.name(), false, "-t nat -L -n");
    ipt(node.name(), true, "-t nat -L -n");
    (node, cs)
}

/// kube-proxy (iptables mode) for one service: KUBE-SERVICES → KUBE-SVC-x → KUBE-SEP-x with
/// `statistic`, DNAT to the two backends.
fn kube_service(
    ns: &str,
    v6: bool,
    svc: &str,
    proto: &str,
    port: u16,
    backends: [&str; 2],
    bport: u16,
) {
    let n = |s: &str| format!("{s}-{proto}");
    let _ = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            if v6 { "ip6tables" } else { "iptables" },
        ])
        .args(["-w", "-t", "nat", "-N", "KUBE-SERVICES"])
        .output();
    let has_jump = ipt(ns, v6, "-t nat -S PREROUTING").contains("KUBE-SERVICES");
    if !has_jump {
        ipt(ns, v6, "-t nat -A PREROUTING -j KUBE-SERVICES");
        ipt(ns, v6, "-t nat -A OUTPUT -j KUBE-SERVICES");
    }
    let (svc_chain, sep0, sep1) = (n("KUBE-SVC"), n("KUBE-SEP0"), n("KUBE-SEP1"));
    for c in [&svc_chain, &sep0, &sep1] {
        ipt(ns, v6, &format!("-t nat -N {c}"));
    }
    let dst = |b: &str| {
        if v6 {
            format!("[{b}]:{bport}")
        } else {
            format!("{b}:{bport}")
        }
    };
    ipt(
        ns,
        v6,
        &format!(
            "-t nat -A {sep0} -p {proto} -j DNAT --to-destination {}",
            dst(backends[0])
        ),
    );
    ipt(
        ns,
        v6,
        &format!(
            "-t nat -A {sep1} -p {proto} -j DNAT --to-destination {}",
            dst(backends[1])
        ),
    );
    ipt(
        ns,
        v6,
        &format!("-t nat -A {svc_chain} -m statistic --mode random --probability 0.5 -j {sep0}"),
    );
    ipt(ns, v6, &format!("-t nat -A {svc_chain} -j {sep1}"));
    ipt(
        ns,
        v6,
        &format!("-t nat -A KUBE-SERVICES -d {svc} -p {proto} --dport {port} -j {svc_chain}"),
    );
}

fn clusterip(x: u8, v6: bool, tcp_liberal: bool) {
    let (node, c) = node3(x);
    liberal(&node, tcp_liberal);
    let (vip, b, cc) = if v6 {
        ("fd00:96::10".to_string(), c[1].v6(), c[2].v6())
    } else {
        ("10.96.0.10".to_string(), c[1].v4(), c[2].v4())
    };
    let (bs, cs) = (b.to_string(), cc.to_string());
    kube_service(node.name(), v6, &vip, "tcp", 80, [&bs, &cs], 8080);
    kube_service(node.name(), v6, &vip, "udp", 53, [&bs, &cs], 5353);
    let vip: IpAddr = vip.parse().unwrap();
    let ts = [
        tcp_server(c[1].name(), b, 8080, "b"),
        tcp_server(c[2].name(), cc, 8080, "c"),
    ];
    let us = [
        udp_server(c[1].name(), b, 5353, "b"),
        udp_server(c[2].name(), cc, 5353, "c"),
    ];
    let svc = SocketAddr::new(vip, 80);
    let mut seen = std::collections::BTreeMap::new();
    for i in 0..30 {
        let r = tcp_request(c[0].name(), svc, SHORT)
            .unwrap_or_else(|e| panic!("TCP connection {i} to the ClusterIP {svc}: {e}"));
        *seen.entry(r).or_insert(0) += 1;
    }
    assert_eq!(seen.values().sum::<i32>(), 30);
    assert_eq!(seen.len(), 2, "both backends answered: {seen:?}");
    let dns = SocketAddr::new(vip, 53);
    let replies = udp_requests(c[0].name(), dns, 20);
    assert_eq!(replies.len(), 20, "every UDP request to {dns} answered");
    for (_, from) in &replies {
        assert_eq!(*from, dns, "UDP replies come from the service address");
    }
    // NAT'd flows are never admitted: nothing took the fast path.
    let st = node.status_json();
    assert_eq!(st["admission"], "netfilter");
    assert_eq!(st["flow_table"]["admitted"], 0, "{st}");
    assert_eq!(st["flow_table"]["counters"]["admitted"], 0, "{st}");
    for ep in [&c[0], &c[1], &c[2]] {
        let s = node.stats(&ep.host_if);
        assert_eq!(s.from("fast").packets, 0, "{}: {s:?}", ep.host_if);
        assert_eq!(s.to("fast").packets, 0, "{}: {s:?}", ep.host_if);
    }
    stop_server(
        c[1].name(),
        SocketAddr::new(b, 8080),
        ts.into_iter().next().unwrap(),
    );
    // (the second TCP server ends with its namespace)
    udp_quit(
        c[1].name(),
        SocketAddr::new(b, 5353),
        us.into_iter().next().unwrap(),
    );
}

#[test]
fn clusterip_v4_tcp_udp_through_kube_proxy_nat() {
    clusterip(11, false, true);
}

#[test]
fn clusterip_v4_with_strict_conntrack() {
    clusterip(12, false, false);
}

#[test]
fn clusterip_v6_tcp_udp_through_kube_proxy_nat() {
    clusterip(13, true, true);
}

/// kube-router-like FORWARD policy: DROP policy, INVALID dropped, ESTABLISHED accepted,
/// per-port accepts. Allowed ports work (and are accelerated), others stay unreachable.
fn firewall(x: u8, v6: bool) {
    let (node, c) = node3(x);
    liberal(&node, true);
    let ns = node.name();
    ipt(ns, v6, "-P FORWARD DROP");
    ipt(ns, v6, "-A FORWARD -m conntrack --ctstate INVALID -j DROP");
    ipt(
        ns,
        v6,
        "-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
    );
    ipt(ns, v6, "-A FORWARD -p tcp --dport 8080 -j ACCEPT");
    ipt(ns, v6, "-A FORWARD -p udp --dport 8080 -j ACCEPT");
    let b = if v6 { c[1].v6() } else { c[1].v4() };
    let allowed = SocketAddr::new(b, 8080);
    let denied = SocketAddr::new(b, 9090);
    let t1 = tcp_server(c[1].name(), b, 8080, "b");
    let t2 = tcp_server(c[1].name(), b, 9090, "b");
    for i in 0..5 {
        assert_eq!(
            tcp_request(c[0].name(), allowed, SHORT).unwrap_or_else(|e| panic!("#{i}: {e}")),
            "b"
        );
    }
    assert!(
        tcp_request(c[0].name(), denied, SHORT).is_err(),
        "port 9090 must stay unreachable through the FORWARD policy"
    );
    let u1 = udp_server(c[1].name(), b, 8080, "b");
    let u2 = udp_server(c[1].name(), b, 9090, "b");
    assert_eq!(
        udp_requests(c[0].name(), SocketAddr::new(b, 8080), 10).len(),
        10
    );
    assert!(udp_requests(c[0].name(), SocketAddr::new(b, 9090), 1).is_empty());
    // The allowed flows were admitted (UDP, and TCP with a liberal conntrack); the denied
    // ones never were.
    let flows = node.ok(&["flows", "--json"]);
    let flows: serde_json::Value = serde_json::from_str(&flows).unwrap();
    let admitted: Vec<&serde_json::Value> = flows
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["state"] == "admitted")
        .collect();
    assert!(
        admitted.iter().any(|f| f["proto"] == "udp"),
        "the allowed UDP flow is admitted: {flows}"
    );
    for f in &admitted {
        let ends = format!("{} {}", f["a"], f["b"]);
        assert!(!ends.contains(":9090"), "a denied flow was admitted: {f}");
    }
    // Servers are stopped from their own namespace (local delivery, no FORWARD).
    stop_server(c[1].name(), allowed, t1);
    stop_server(c[1].name(), denied, t2);
    udp_quit(c[1].name(), SocketAddr::new(b, 8080), u1);
    udp_quit(c[1].name(), denied, u2);
}

#[test]
fn forward_drop_policy_v4() {
    firewall(21, false);
}

#[test]
fn forward_drop_policy_v6() {
    firewall(22, true);
}

/// What `always` skips: the same ClusterIP under admission `always` fails (B's SYN-ACK is
/// delivered with B's address, skipping conntrack's reverse NAT), which is why `netfilter` is
/// the default. Also proves the ClusterIP tests above can fail.
#[test]
fn clusterip_breaks_under_admission_always() {
    let (node, c) = node3(14);
    node.ok(&["admission", "always"]);
    let (b, cc) = (c[1].v4().to_string(), c[2].v4().to_string());
    kube_service(node.name(), false, "10.96.0.10", "tcp", 80, [&b, &cc], 8080);
    let _t1 = tcp_server(c[1].name(), c[1].v4(), 8080, "b");
    let _t2 = tcp_server(c[2].name(), c[2].v4(), 8080, "c");
    let r = tcp_request(c[0].name(), "10.96.0.10:80".parse().unwrap(), SHORT);
    assert!(r.is_err(), "ClusterIP must not work under always: {r:?}");
    node.ok(&["admission", "netfilter"]);
    assert_eq!(
        tcp_request(c[0].name(), "10.96.0.10:80".parse().unwrap(), SHORT).map(|_| ()),
        Ok(())
    );
}

/// Counting ACCEPT rules in FORWARD for both directions of A↔B, per protocol.
fn counting_rules(ns: &str, a: IpAddr, b: IpAddr) {
    for proto in ["udp", "tcp"] {
        ipt(
            ns,
            false,
            &format!(
                "-A FORWARD -s {a} -d {b} -p {proto} -m comment --comment a2b-{proto} -j ACCEPT"
            ),
        );
        ipt(
            ns,
            false,
            &format!(
                "-A FORWARD -s {b} -d {a} -p {proto} -m comment --comment b2a-{proto} -j ACCEPT"
            ),
        );
    }
}

/// Acceleration: a long UDP flow and a long TCP flow cross FORWARD only for their first
/// packets (the kernel admits them), the rest goes fast, exactly.
#[test]
fn admitted_flows_skip_forward_after_their_first_packets() {
    let (node, c) = node3(31);
    liberal(&node, true);
    let ns = node.name();
    let (a, b) = (c[0].v4(), c[1].v4());
    counting_rules(ns, a, b);

    // UDP: N lock-step requests; request 0 and reply 0 take the kernel path, the rest fast.
    const N: u64 = 200;
    let u = udp_server(c[1].name(), b, 7000, "b");
    let before_a = node.stats(&c[0].host_if);
    let before_b = node.stats(&c[1].host_if);
    let replies = udp_requests(c[0].name(), SocketAddr::new(b, 7000), N as usize);
    assert_eq!(replies.len() as u64, N);
    assert_eq!(rule_packets(ns, false, "FORWARD", "a2b-udp"), 1);
    assert_eq!(rule_packets(ns, false, "FORWARD", "b2a-udp"), 1);
    let (da, db) = (
        node.stats(&c[0].host_if).since(&before_a),
        node.stats(&c[1].host_if).since(&before_b),
    );
    assert_eq!(
        db.to("fast").packets,
        N - 1,
        "B received the rest fast: {db:?}"
    );
    assert_eq!(da.from("fast").packets, N - 1, "{da:?}");
    assert_eq!(
        da.to("fast").packets,
        N - 1,
        "A received the replies fast: {da:?}"
    );
    let flows: serde_json::Value = serde_json::from_str(&node.ok(&["flows", "--json"])).unwrap();
    let f = flows
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["proto"] == "udp")
        .unwrap_or_else(|| panic!("the UDP flow is listed: {flows}"));
    assert_eq!(f["state"], "admitted");
    assert_eq!(f["packets"], 2 * (N - 1), "{f}");
    let eps = [f["a_endpoint"].as_str(), f["b_endpoint"].as_str()];
    assert!(
        eps.contains(&Some(c[0].host_if.as_str())) && eps.contains(&Some(c[1].host_if.as_str())),
        "{f}"
    );
    let st = node.status_json();
    assert!(st["flow_table"]["admitted"].as_u64().unwrap() >= 1, "{st}");
    assert_eq!(st["flow_table"]["capacity"], 65536);

    let text = node.ok(&["flows"]);
    let line = text
        .lines()
        .find(|l| l.starts_with("udp "))
        .unwrap_or_else(|| panic!("flows table lists the UDP flow:\n{text}"));
    assert!(text.starts_with("PROTO"), "{text}");
    assert!(
        line.contains("admitted") && line.contains(&c[1].host_if),
        "{line}"
    );
    assert!(line.contains(&format!("{}", 2 * (N - 1))), "{line}");
    let status = node.ok(&["status"]);
    assert!(status.contains("admission: netfilter"), "{status}");
    assert!(
        status.contains("tcp:       accelerated node-wide"),
        "{status}"
    );
    assert!(status.contains("of 65536"), "{status}");
    let err = node.fails(&["admission", "sometimes"]);
    assert!(err.contains("sometimes"), "{err}");
    // flows flush: the next packets are admitted by the kernel again, and keep working.
    let out = node.ok(&["flows", "flush"]);
    assert!(out.starts_with("flushed "), "{out}");
    assert_eq!(node.ok(&["flows", "--json"]).trim(), "[]");
    assert_eq!(
        udp_requests(c[0].name(), SocketAddr::new(b, 7000), 5).len(),
        5
    );
    assert_eq!(
        rule_packets(ns, false, "FORWARD", "a2b-udp"),
        2,
        "the new flow: first packet"
    );
    udp_quit(c[1].name(), SocketAddr::new(b, 7000), u);

    // TCP (liberal conntrack): only SYN and SYN-ACK cross FORWARD while the data flows.
    let before_a = node.stats(&c[0].host_if);
    let before_b = node.stats(&c[1].host_if);
    let flow = tcp_flow(c[0].name(), c[1].name(), b);
    assert!(flow.wait_echoed(8 << 20, LONG), "8 MiB echoed");
    // The handshake and the first packets after it (SYN/FIN/RST never confirm: a direction
    // is confirmed by its first packet after the handshake), then nothing.
    let (a2b, b2a) = (
        rule_packets(ns, false, "FORWARD", "a2b-tcp"),
        rule_packets(ns, false, "FORWARD", "b2a-tcp"),
    );
    assert!((2..=8).contains(&a2b), "a2b: {a2b}");
    assert!((2..=8).contains(&b2a), "b2a: {b2a}");
    let db = node.stats(&c[1].host_if).since(&before_b);
    assert!(db.to("fast").bytes >= 8 << 20, "{db:?}");
    // The close goes through the kernel (and conntrack), and completes.
    flow.finish().expect("clean close");
    assert!(
        rule_packets(ns, false, "FORWARD", "a2b-tcp") > a2b,
        "FIN went through FORWARD"
    );
    let (da, db) = (
        node.stats(&c[0].host_if).since(&before_a),
        node.stats(&c[1].host_if).since(&before_b),
    );
    assert_eq!(da.from("fast"), db.to("fast"), "sent fast = received fast");
}

/// `vethfp admission always|netfilter` on a live connection: no reattach, no break.
#[test]
fn admission_switch_on_a_live_connection() {
    let (node, c) = node3(32);
    liberal(&node, true);
    let flow = tcp_flow(c[0].name(), c[1].name(), c[1].v4());
    let mut want = 1 << 20;
    assert!(flow.wait_echoed(want, LONG));
    for mode in ["always", "netfilter", "always", "netfilter"] {
        node.ok(&["admission", mode]);
        assert_eq!(node.ok(&["admission"]).trim(), mode);
        want = flow.echoed() + (2 << 20);
        assert!(flow.wait_echoed(want, LONG), "{mode}: flow keeps going");
    }
    flow.finish().expect("connection intact after the switches");
}

/// A flow table far smaller than the number of flows: evicted flows fall back to the kernel
/// and are admitted again; every request is answered.
#[test]
fn small_flow_table_keeps_every_flow_working() {
    let node = Node::netfilter_with(33, Some(16));
    let a = node.add_container("vsa33", &["10.33.0.2/24"]);
    let b = node.add_container("vsb33", &["10.33.0.3/24"]);
    assert_eq!(node.status_json()["flow_table"]["capacity"], 16);
    let u = udp_server(b.name(), b.v4(), 7000, "b");
    let dst = SocketAddr::new(b.v4(), 7000);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let ns = a.name().to_string();
            std::thread::spawn(move || {
                (0..20)
                    .map(|_| udp_requests(&ns, dst, 5).len())
                    .sum::<usize>()
            })
        })
        .collect();
    let answered: usize = clients.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(answered, 4 * 20 * 5, "every request of 80 flows answered");
    let st = node.status_json();
    assert!(st["flow_table"]["entries"].as_u64().unwrap() <= 16, "{st}");
    assert!(
        st["flow_table"]["counters"]["created"].as_u64().unwrap() > 16,
        "{st}"
    );
    udp_quit(b.name(), dst, u);
}

/// `agent --admission netfilter` applies the mode at start; /metrics shows the flow table and
/// the node flow counters, equal to `status --json`.
#[test]
fn agent_applies_admission_and_exports_flow_metrics() {
    let (node, c) = node3(34);
    node.ok(&["admission", "always"]);
    let agent = vethfp_tests::Agent::start(&node, &["--admission", "netfilter"]);
    assert_eq!(node.ok(&["admission"]).trim(), "netfilter");
    let u = udp_server(c[1].name(), c[1].v4(), 7000, "b");
    let dst = SocketAddr::new(c[1].v4(), 7000);
    assert_eq!(udp_requests(c[0].name(), dst, 10).len(), 10);
    let m = agent.scrape();
    let st = node.status_json();
    let ft = &st["flow_table"];
    assert_eq!(m.get("vethfp_admission_netfilter", &[]), Some(1.0));
    assert_eq!(m.get("vethfp_flow_table_capacity", &[]), Some(65536.0));
    assert_eq!(
        m.get("vethfp_flow_table_entries", &[]),
        ft["entries"].as_f64()
    );
    assert_eq!(m.get("vethfp_flow_table_admitted", &[]), Some(1.0));
    assert_eq!(m.types["vethfp_flow_table_entries"], "gauge");
    for ev in [
        "created",
        "admitted",
        "torn_down",
        "expired",
        "insert_failed",
    ] {
        assert_eq!(
            m.get("vethfp_flows_total", &[("event", ev)]),
            ft["counters"][ev].as_f64(),
            "{ev}"
        );
    }
    assert_eq!(
        m.get("vethfp_flows_total", &[("event", "admitted")]),
        Some(1.0)
    );
    udp_quit(c[1].name(), dst, u);
    let (stt, log) = agent.terminate();
    assert!(stt.success(), "{log}");
}

/// Node X (netfilter admission) with container 10.X.0.2 and a remote host 192.168.X.2 behind
/// the attached uplink `ul0` (node side 192.168.X.1), `--egress fast` (the default).
fn uplink_node(x: u8) -> (Node, Container, vethfp_tests::Netns) {
    let node = Node::netfilter(x);
    let c = node.add_container("vuc", &[&format!("10.{x}.0.2/24")]);
    let remote = vethfp_tests::Netns::new("vfr");
    node.ns.add_veth("ul0", "ul0", &remote);
    node.ns
        .ip(&["addr", "add", &format!("192.168.{x}.1/24"), "dev", "ul0"]);
    node.ns.ip(&["link", "set", "ul0", "up"]);
    remote.ip(&["addr", "add", &format!("192.168.{x}.2/24"), "dev", "ul0"]);
    remote.ip(&["link", "set", "ul0", "up"]);
    remote.ip(&["link", "set", "lo", "up"]);
    node.ok(&["uplink", "attach", "ul0"]);
    ipt(node.name(), false, "-t nat -L -n");
    (node, c, remote)
}

/// A UDP server in `ns` that answers each datagram with the sender's address, until "quit".
fn udp_who(ns: &str, at: SocketAddr) -> std::thread::JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = in_netns(ns, move || {
        let s = UdpSocket::bind(at).expect("bind");
        tx.send(()).unwrap();
        let mut buf = [0u8; 512];
        loop {
            let (n, from) = s.recv_from(&mut buf).unwrap();
            if &buf[..n] == b"quit" {
                return;
            }
            let _ = s.send_to(from.ip().to_string().as_bytes(), from);
        }
    });
    rx.recv_timeout(LONG).unwrap();
    h
}

/// `uplink attach` with `--egress fast` under netfilter admission: MASQUERADE applies (the
/// remote sees the node's address), the masqueraded flow is never admitted.
#[test]
fn uplink_masquerade_is_applied_and_never_admitted() {
    let x = 41;
    let (node, c, remote) = uplink_node(x);
    ipt(
        node.name(),
        false,
        &format!("-t nat -A POSTROUTING -s 10.{x}.0.0/24 -o ul0 -j MASQUERADE"),
    );
    let at: SocketAddr = format!("192.168.{x}.2:7000").parse().unwrap();
    let h = udp_who(remote.name(), at);
    let replies = udp_requests(c.name(), at, 20);
    assert_eq!(replies.len(), 20, "every masqueraded request answered");
    for (who, from) in &replies {
        assert_eq!(
            who,
            &format!("192.168.{x}.1"),
            "the remote saw the node's address"
        );
        assert_eq!(*from, at);
    }
    let st = node.status_json();
    assert_eq!(st["flow_table"]["counters"]["admitted"], 0, "{st}");
    let s = node.stats(&c.host_if);
    assert_eq!(s.from("fast_uplink").packets, 0, "{s:?}");
    assert_eq!(s.to("fast_uplink").packets, 0, "{s:?}");
    udp_quit(remote.name(), at, h);
}

/// NodePort (DNAT on the node's address) over the attached uplink answers every request and
/// is never admitted; a direct (routed, untranslated) flow over the same uplink is admitted
/// and then takes the uplink fast path both ways.
#[test]
fn uplink_nodeport_works_and_direct_flows_are_accelerated() {
    let x = 42;
    let (node, c, remote) = uplink_node(x);
    let ca = c.v4();
    ipt(
        node.name(),
        false,
        &format!(
            "-t nat -A PREROUTING -d 192.168.{x}.1 -p udp --dport 30053 -j DNAT --to-destination {ca}:7000"
        ),
    );
    ipt(
        node.name(),
        false,
        &format!(
            "-t nat -A PREROUTING -d 192.168.{x}.1 -p tcp --dport 30080 -j DNAT --to-destination {ca}:8080"
        ),
    );
    let u = udp_who(c.name(), SocketAddr::new(ca, 7000));
    let t = tcp_server(c.name(), ca, 8080, "c");
    let np: SocketAddr = format!("192.168.{x}.1:30053").parse().unwrap();
    let replies = udp_requests(remote.name(), np, 20);
    assert_eq!(replies.len(), 20, "NodePort UDP answered 20 of 20");
    assert!(
        replies.iter().all(|(_, from)| *from == np),
        "replies from the NodePort"
    );
    let tp: SocketAddr = format!("192.168.{x}.1:30080").parse().unwrap();
    for i in 0..20 {
        assert_eq!(
            tcp_request(remote.name(), tp, SHORT).unwrap_or_else(|e| panic!("#{i}: {e}")),
            "c"
        );
    }
    assert_eq!(node.status_json()["flow_table"]["counters"]["admitted"], 0);
    // Direct: the remote routes the container subnet via the node; no translation.
    remote.ip(&[
        "route",
        "add",
        &format!("10.{x}.0.0/24"),
        "via",
        &format!("192.168.{x}.1"),
    ]);
    let direct = SocketAddr::new(ca, 7000);
    let before = node.stats(&c.host_if);
    const N: u64 = 50;
    let replies = udp_requests(remote.name(), direct, N as usize);
    assert_eq!(replies.len() as u64, N);
    let d = node.stats(&c.host_if).since(&before);
    assert_eq!(node.status_json()["flow_table"]["counters"]["admitted"], 1);
    assert_eq!(
        d.to("fast_uplink").packets,
        N - 1,
        "requests after the first: uplink fast path {d:?}"
    );
    assert_eq!(
        d.from("fast_uplink").packets,
        N - 1,
        "replies after the first: uplink fast path {d:?}"
    );
    udp_quit(c.name(), SocketAddr::new(ca, 7000), u);
    stop_server(c.name(), SocketAddr::new(ca, 8080), t);
}

/// kube-proxy's nftables mode (numgen + vmap to the endpoints, dnat) and a FORWARD-hook
/// policy in one `inet` table, v4 and v6: ClusterIPs work with replies from the service
/// address, the allowed port works, the other stays unreachable.
#[test]
fn nftables_clusterip_and_firewall_v4_v6() {
    let (node, c) = node3(51);
    liberal(&node, true);
    let (b4, c4, b6, c6) = (c[1].v4(), c[2].v4(), c[1].v6(), c[2].v6());
    let rules = format!(
        r#"table inet kube-proxy {{
  chain nat-prerouting {{ type nat hook prerouting priority dstnat; policy accept; jump services; }}
  chain nat-output {{ type nat hook output priority -100; policy accept; jump services; }}
  chain services {{
    ip daddr 10.96.0.10 meta l4proto {{ tcp, udp }} th dport 80 jump svc4
    ip6 daddr fd00:96::10 meta l4proto {{ tcp, udp }} th dport 80 jump svc6
  }}
  chain svc4 {{ numgen random mod 2 vmap {{ 0 : jump sep4b, 1 : jump sep4c }}; }}
  chain svc6 {{ numgen random mod 2 vmap {{ 0 : jump sep6b, 1 : jump sep6c }}; }}
  chain sep4b {{ meta l4proto {{ tcp, udp }} dnat ip to {b4}:8080; }}
  chain sep4c {{ meta l4proto {{ tcp, udp }} dnat ip to {c4}:8080; }}
  chain sep6b {{ meta l4proto {{ tcp, udp }} dnat ip6 to [{b6}]:8080; }}
  chain sep6c {{ meta l4proto {{ tcp, udp }} dnat ip6 to [{c6}]:8080; }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
    ct state invalid drop
    ct state established,related accept
    meta l4proto {{ tcp, udp }} th dport 8080 accept
    meta l4proto {{ icmp, ipv6-icmp }} accept
  }}
}}
"#
    );
    let file = std::env::temp_dir().join(vethfp_tests::unique_name("nft"));
    std::fs::write(&file, rules).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", node.name(), "nft", "-f"])
        .arg(&file)
        .output()
        .expect("run nft");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "nft -f: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut servers = Vec::new();
    for (ep, ip, name) in [
        (&c[1], b4, "b"),
        (&c[2], c4, "c"),
        (&c[1], b6, "b"),
        (&c[2], c6, "c"),
    ] {
        servers.push((
            ep.name().to_string(),
            SocketAddr::new(ip, 8080),
            tcp_server(ep.name(), ip, 8080, name),
        ));
        udp_server(ep.name(), ip, 8080, name); // ends with its namespace
        servers.push((
            ep.name().to_string(),
            SocketAddr::new(ip, 9090),
            tcp_server(ep.name(), ip, 9090, name),
        ));
    }
    for vip in ["10.96.0.10", "fd00:96::10"] {
        let vip: IpAddr = vip.parse().unwrap();
        let svc = SocketAddr::new(vip, 80);
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..30 {
            seen.insert(
                tcp_request(c[0].name(), svc, SHORT).unwrap_or_else(|e| panic!("{svc} #{i}: {e}")),
            );
        }
        assert_eq!(seen.len(), 2, "{svc}: both backends: {seen:?}");
        let replies = udp_requests(c[0].name(), svc, 20);
        assert_eq!(replies.len(), 20, "{svc} UDP");
        assert!(
            replies.iter().all(|(_, f)| *f == svc),
            "UDP replies from {svc}"
        );
    }
    assert_eq!(
        node.status_json()["flow_table"]["counters"]["admitted"],
        0,
        "NAT'd: never admitted"
    );
    for b in [b4, b6] {
        assert_eq!(
            tcp_request(c[0].name(), SocketAddr::new(b, 8080), SHORT).as_deref(),
            Ok("b")
        );
        assert!(
            tcp_request(c[0].name(), SocketAddr::new(b, 9090), SHORT).is_err(),
            "{b}:9090 must stay unreachable"
        );
        assert_eq!(
            udp_requests(c[0].name(), SocketAddr::new(b, 8080), 10).len(),
            10
        );
    }
    // The direct flows to the allowed port were admitted (TCP and UDP, both families).
    let st = node.status_json();
    assert!(
        st["flow_table"]["counters"]["admitted"].as_u64().unwrap() >= 2,
        "{st}"
    );
    for (ns, at, h) in servers {
        stop_server(&ns, at, h);
    }
}

/// Strict conntrack (nf_conntrack_tcp_be_liberal = 0, the kernel default): TCP is never
/// admitted, so it stays correct under an INVALID-drop rule (the close included) and is
/// counted `stack`; `status` says why.
#[test]
fn tcp_stays_on_the_kernel_path_with_strict_conntrack() {
    let (node, c) = node3(61);
    liberal(&node, false);
    let ns = node.name();
    ipt(
        ns,
        false,
        "-A FORWARD -m conntrack --ctstate INVALID -m comment --comment invalid -j DROP",
    );
    let text = node.ok(&["status"]);
    assert!(
        text.contains("nf_conntrack_tcp_be_liberal"),
        "status explains: {text}"
    );
    assert_eq!(node.status_json()["tcp_conntrack"], "strict");
    let before = node.stats(&c[1].host_if);
    let flow = tcp_flow(c[0].name(), c[1].name(), c[1].v4());
    assert!(flow.wait_echoed(4 << 20, LONG));
    flow.finish().expect("clean close through the kernel");
    let d = node.stats(&c[1].host_if).since(&before);
    assert_eq!(d.to("fast").packets, 0, "{d:?}");
    assert!(d.to("stack").bytes >= 4 << 20, "{d:?}");
    assert_eq!(rule_packets(ns, false, "FORWARD", "invalid"), 0);
    let flows: serde_json::Value = serde_json::from_str(&node.ok(&["flows", "--json"])).unwrap();
    assert!(
        flows
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["proto"] != "tcp"),
        "{flows}"
    );
}

/// Why TCP needs a liberal conntrack (the measurement behind the rule): a TCP flow admitted
/// while conntrack was liberal, whose conntrack then checks windows again, has a stale window
/// state; its mid-stream packets after a re-verification and its close are INVALID.
#[test]
fn stale_conntrack_window_makes_tcp_invalid_when_not_liberal() {
    let (node, c) = node3(62);
    liberal(&node, true);
    let ns = node.name();
    ipt(
        ns,
        false,
        "-A FORWARD -m conntrack --ctstate INVALID -m comment --comment invalid -j DROP",
    );
    let flow = tcp_flow(c[0].name(), c[1].name(), c[1].v4());
    assert!(
        flow.wait_echoed(16 << 20, LONG),
        "admitted flow carries data"
    );
    // The sysctl changes behind vethfp's back (no write operation re-reads it yet).
    node.ns
        .sysctl("net.netfilter.nf_conntrack_tcp_be_liberal", "0");
    let r = flow.finish();
    let invalid = rule_packets(ns, false, "FORWARD", "invalid");
    assert!(
        r.is_err() && invalid > 0,
        "close must fail as INVALID: {r:?}, invalid drops {invalid}"
    );
}

/// Bridge bypass under netfilter admission: br_netfilter rules that drop some traffic between
/// the bridge's ports no longer make `bridge accelerate` refuse (they do under `always`); the
/// rules stay in force, and allowed flows are accelerated after their first packets.
#[test]
fn bridge_accelerate_with_br_netfilter_rules_under_netfilter_admission() {
    if !std::path::Path::new("/proc/sys/net/bridge").exists() {
        let out = Command::new("modprobe")
            .arg("br_netfilter")
            .output()
            .unwrap();
        assert!(out.status.success(), "modprobe br_netfilter: {out:?}");
    }
    let node = Node::netfilter(71);
    let ns = node.name();
    node.ns.ip(&["link", "add", "br0", "type", "bridge"]);
    node.ns.ip(&["addr", "add", "10.71.0.1/24", "dev", "br0"]);
    node.ns.ip(&["link", "set", "br0", "up"]);
    let mut ctrs = Vec::new();
    for k in 0..2 {
        let c = vethfp_tests::Netns::new("vbc");
        c.quiet_ipv6();
        let port = format!("brp{k}");
        node.ns.add_veth(&port, "eth0", &c);
        node.ns.ip(&["link", "set", &port, "master", "br0", "up"]);
        c.ip(&[
            "addr",
            "add",
            &format!("10.71.0.{}/24", k + 2),
            "dev",
            "eth0",
        ]);
        c.ip(&["link", "set", "eth0", "up"]);
        c.ip(&["link", "set", "lo", "up"]);
        ctrs.push((c, port));
    }
    node.ns.sysctl("net.bridge.bridge-nf-call-iptables", "1");
    ipt(
        ns,
        false,
        "-A FORWARD -i br0 -o br0 -p udp --dport 9090 -j DROP",
    );
    ipt(
        ns,
        false,
        "-A FORWARD -i br0 -o br0 -p udp --dport 7000 -m comment --comment br-a2b -j ACCEPT",
    );
    ipt(
        ns,
        false,
        "-A FORWARD -i br0 -o br0 -p udp --sport 7000 -m comment --comment br-b2a -j ACCEPT",
    );
    // Under `always` the DROP rule would be skipped: refused.
    node.ok(&["admission", "always"]);
    let err = node.fails(&["bridge", "accelerate", "br0"]);
    assert!(err.contains("DROP"), "{err}");
    node.ok(&["admission", "netfilter"]);
    let out = node.ok(&["bridge", "accelerate", "br0"]);
    assert!(out.contains("2 port(s) accelerated"), "{out}");
    let (a, b) = (&ctrs[0].0, &ctrs[1].0);
    let bip: IpAddr = "10.71.0.3".parse().unwrap();
    let u = udp_server(b.name(), bip, 7000, "b");
    let u2 = udp_server(b.name(), bip, 9090, "b");
    assert!(
        udp_requests(a.name(), SocketAddr::new(bip, 9090), 1).is_empty(),
        "the br_netfilter DROP rule stays in force"
    );
    const N: u64 = 100;
    let before = node.stats(&ctrs[1].1);
    let replies = udp_requests(a.name(), SocketAddr::new(bip, 7000), N as usize);
    assert_eq!(replies.len() as u64, N);
    let d = node.stats(&ctrs[1].1).since(&before);
    assert_eq!(
        rule_packets(ns, false, "FORWARD", "br-a2b"),
        1,
        "only the first request crossed the bridge"
    );
    assert_eq!(
        rule_packets(ns, false, "FORWARD", "br-b2a"),
        1,
        "only the first reply"
    );
    assert_eq!(d.to("fast").packets, N - 1, "{d:?}");
    assert_eq!(d.from("fast").packets, N - 1, "{d:?}");
    udp_quit(b.name(), SocketAddr::new(bip, 7000), u);
    udp_quit(b.name(), SocketAddr::new(bip, 9090), u2);
}

/// XDP endpoints and IPv6 under netfilter admission: XDP only looks flows up; the first
/// request and reply take the kernel (counted stack once, by tcx), the rest goes fast.
#[test]
fn xdp_and_v6_flows_are_admitted_then_fast() {
    let node = Node::netfilter(72);
    let a = node.add_container_with(
        "vxa72",
        &["10.72.0.2/24", "fd00:72::2/64"],
        &["--mode", "xdp"],
    );
    let b = node.add_container_with(
        "vxb72",
        &["10.72.0.3/24", "fd00:72::3/64"],
        &["--mode", "xdp"],
    );
    const N: u64 = 100;
    for (port, ip) in [(7000u16, b.v4()), (7001, b.v6())] {
        let u = udp_server(b.name(), ip, port, "b");
        let (ba, bb) = (node.stats(&a.host_if), node.stats(&b.host_if));
        let replies = udp_requests(a.name(), SocketAddr::new(ip, port), N as usize);
        assert_eq!(replies.len() as u64, N, "{ip}");
        let (da, db) = (
            node.stats(&a.host_if).since(&ba),
            node.stats(&b.host_if).since(&bb),
        );
        assert_eq!(db.to("fast").packets, N - 1, "{ip}: {db:?}");
        assert_eq!(da.to("fast").packets, N - 1, "{ip}: {da:?}");
        assert_eq!(da.from("fast").packets, N - 1, "{ip}: {da:?}");
        udp_quit(b.name(), SocketAddr::new(ip, port), u);
    }
    // ICMP echo is admitted too (identifier as port): a flow entry appears.
    assert!(vethfp_tests::ping(a.name(), b.v4()));
    let flows = node.ok(&["flows", "--json"]);
    assert!(flows.contains("\"icmp\""), "{flows}");
}

/// Removing an endpoint removes its flows: a later endpoint with the same address is admitted
/// by the kernel afresh, never inherits an admitted flow.
#[test]
fn pair_del_forgets_the_endpoints_flows() {
    let (node, c) = node3(73);
    let dst = SocketAddr::new(c[1].v4(), 7000);
    let u = udp_server(c[1].name(), c[1].v4(), 7000, "b");
    assert_eq!(udp_requests(c[0].name(), dst, 5).len(), 5);
    let u2 = udp_server(c[2].name(), c[2].v4(), 7000, "c");
    assert_eq!(
        udp_requests(c[0].name(), SocketAddr::new(c[2].v4(), 7000), 5).len(),
        5
    );
    let flows = |node: &Node| -> Vec<serde_json::Value> {
        serde_json::from_str::<serde_json::Value>(&node.ok(&["flows", "--json"]))
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    };
    let has = |fs: &[serde_json::Value], ip: IpAddr| {
        fs.iter().any(|f| {
            f["a"].as_str().unwrap().starts_with(&format!("{ip}:"))
                || f["b"].as_str().unwrap().starts_with(&format!("{ip}:"))
        })
    };
    let before = flows(&node);
    assert!(
        has(&before, c[1].v4()) && has(&before, c[2].v4()),
        "{before:?}"
    );
    udp_quit(c[1].name(), dst, u);
    node.ok(&["pair", "del", &c[1].host_if]);
    let after = flows(&node);
    assert!(
        !has(&after, c[1].v4()),
        "flows of the removed endpoint are gone: {after:?}"
    );
    assert!(has(&after, c[2].v4()), "other flows stay: {after:?}");
    udp_quit(c[2].name(), SocketAddr::new(c[2].v4(), 7000), u2);
}

/// hostPort via the CNI chain: vethfp, then the reference `portmap` plugin (its DNAT rules
/// in the node). Under netfilter admission the DNAT'd flow keeps working (never admitted),
/// and a direct flow between the same pods is accelerated.
#[test]
fn cni_portmap_hostport_works_under_netfilter_admission() {
    use vethfp_tests::cni::{
        CniEnv, CniNet, TempDir, cni_plugin, container_id, container_ns, with_prev,
    };
    cni_plugin("portmap");
    let net = CniNet {
        node: Node::netfilter(1),
        ipam_dir: TempDir::new("i"),
        name: vethfp_tests::unique_name("net"),
    };
    let conf = net.conf("1.0.0");
    let mut pods = Vec::new();
    for _ in 0..2 {
        let ns = container_ns();
        let cid = container_id();
        let res = net
            .vethfp(&CniEnv::full("ADD", &cid, ns.name(), "eth0"), &conf)
            .ok("ADD");
        ns.wait_addrs_ready(LONG);
        pods.push((ns, cid, res));
    }
    let ip_of = |res: &serde_json::Value| -> IpAddr {
        res["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                i["address"]
                    .as_str()
                    .unwrap()
                    .split('/')
                    .next()
                    .unwrap()
                    .parse::<IpAddr>()
                    .unwrap()
            })
            .find(|a| a.is_ipv4())
            .unwrap()
    };
    let (a, b) = (&pods[0], &pods[1]);
    let bip = ip_of(&b.2);
    let pm = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": net.name,
        "type": "portmap",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [
            {"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"},
            {"hostPort": 18053, "containerPort": 7000, "protocol": "udp"}
        ]},
    });
    net.plugin(
        "portmap",
        &CniEnv::full("ADD", &b.1, b.0.name(), "eth0"),
        &with_prev(&pm, &b.2),
    )
    .ok("portmap ADD");
    let t = tcp_server(b.0.name(), bip, 8080, "b");
    let u = udp_server(b.0.name(), bip, 7000, "b");
    let node_ip = net.node.v4();
    for i in 0..10 {
        let r = tcp_request(a.0.name(), SocketAddr::new(node_ip, 18080), SHORT);
        assert_eq!(r.as_deref(), Ok("b"), "hostPort TCP #{i}");
    }
    let hp = SocketAddr::new(node_ip, 18053);
    let replies = udp_requests(a.0.name(), hp, 10);
    assert_eq!(replies.len(), 10, "hostPort UDP");
    assert!(
        replies.iter().all(|(_, f)| *f == hp),
        "replies from the hostPort address"
    );
    assert_eq!(
        net.node.status_json()["flow_table"]["counters"]["admitted"],
        0
    );
    // The same pods directly: admitted, then fast.
    let before = net
        .node
        .stats(b.2["interfaces"][0]["name"].as_str().unwrap());
    assert_eq!(
        udp_requests(a.0.name(), SocketAddr::new(bip, 7000), 20).len(),
        20
    );
    let d = net
        .node
        .stats(b.2["interfaces"][0]["name"].as_str().unwrap())
        .since(&before);
    assert_eq!(d.to("fast").packets, 19, "{d:?}");
    stop_server(b.0.name(), SocketAddr::new(bip, 8080), t);
    udp_quit(b.0.name(), SocketAddr::new(bip, 7000), u);
    net.plugin(
        "portmap",
        &CniEnv::full("DEL", &b.1, b.0.name(), "eth0"),
        &with_prev(&pm, &b.2),
    )
    .ok("portmap DEL");
    for (ns, cid, _) in &pods {
        net.vethfp(&CniEnv::full("DEL", cid, ns.name(), "eth0"), &conf)
            .ok("DEL");
    }
}
