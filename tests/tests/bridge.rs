//! Bridge bypass (`vethfp bridge accelerate|release`, issue 9), end to end.
//!
//! Each test builds a docker-like node the way Docker does it, with plain `ip` commands: a
//! bridge `br0` in the node namespace holding the gateway addresses 10.1.0.1/24 and
//! fd00:b1::1/64, one veth per container with the container end `eth0` in the container's own
//! namespace, addresses from the bridge's subnets and default routes via the bridge's
//! addresses. vethfp did not make any of it; `bridge accelerate br0` adopts it in place.
//!
//! How the tests tell the fast path from the bridge: a frame the bridge forwards to a port
//! is transmitted by that port (the host end), so the host end's TX counter moves; a frame
//! the fast path delivers (`bpf_redirect_peer` from the sender's host end into the
//! destination container) never passes the destination's host end. The bridge device's own
//! counters only see what the node itself sends or receives on it; they must stay still
//! too. Every measurement is taken on a quiet node (see [`Docker::quiesce`]), so counters
//! are compared exactly, not "about".

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    sync::mpsc,
    time::{Duration, Instant},
};

use aya::{
    maps::{HashMap, Map, MapData},
    programs::{SchedClassifier, tc::TcAttachType},
};
use serde_json::Value;
use vethfp_tests::{
    Count, EndpointStats, Netns, Node, TIMEOUT, in_netns, join, ping, run_in_netns, tcp_echo,
    udp_frame_len, udp_transfer,
};

const N: u64 = 1000;
const PAYLOAD: usize = 100;
const BR: &str = "br0";
const GW4: &str = "10.1.0.1";
const GW6: &str = "fd00:b1::1";

fn zero() -> Count {
    Count::default()
}

/// A container made the way Docker makes one, attached to `br0` by host end `port`.
struct Ctr {
    ns: Netns,
    port: String,
    v4: IpAddr,
    v6: IpAddr,
    mac: String,
}

impl Ctr {
    fn name(&self) -> &str {
        self.ns.name()
    }
}

/// The docker-like node. Field order is drop order: containers first, then the node.
struct Docker {
    ctrs: Vec<Ctr>,
    node: Node,
}

impl Docker {
    /// A node with `br0` and `n` containers on it (nothing accelerated yet).
    fn new(n: usize) -> Docker {
        let node = Node::new();
        node.ns.ip(&["link", "add", BR, "type", "bridge"]);
        node.ns
            .ip(&["addr", "add", &format!("{GW4}/24"), "dev", BR]);
        node.ns
            .ip(&["addr", "add", &format!("{GW6}/64"), "dev", BR]);
        node.ns.ip(&["link", "set", BR, "up"]);
        let mut d = Docker {
            ctrs: Vec::new(),
            node,
        };
        for _ in 0..n {
            d.add();
        }
        d
    }

    /// One more container: `vethK` on the bridge, `eth0` with 10.1.0.K+2/24 and
    /// fd00:b1::K+2/64 in a namespace of its own, default routes via the bridge.
    fn add(&mut self) -> &Ctr {
        let k = self.ctrs.len();
        let port = format!("veth{k}");
        let ns = Netns::new("vbc");
        ns.quiet_ipv6();
        self.node.ns.add_veth(&port, "eth0", &ns);
        // Quiescing, not part of the topology: neighbour entries confirmed once stay
        // REACHABLE for the whole test, so no unicast re-probe lands in a measurement.
        for fam in ["ipv4", "ipv6"] {
            ns.sysctl(
                &format!("net.{fam}.neigh.eth0.base_reachable_time_ms"),
                "3600000",
            );
        }
        self.node.ns.ip(&["link", "set", &port, "master", BR, "up"]);
        let v4 = format!("10.1.0.{}", k + 2);
        let v6 = format!("fd00:b1::{}", k + 2);
        ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", "eth0"]);
        ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["route", "add", "default", "via", GW4]);
        ns.ip(&["-6", "route", "add", "default", "via", GW6]);
        ns.wait_addrs_ready(Duration::from_secs(10));
        self.node.ns.wait_addrs_ready(Duration::from_secs(10));
        let mac = ns.link("eth0").unwrap()["address"]
            .as_str()
            .unwrap()
            .to_string();
        self.ctrs.push(Ctr {
            ns,
            port,
            v4: v4.parse().unwrap(),
            v6: v6.parse().unwrap(),
            mac,
        });
        self.ctrs.last().unwrap()
    }

    fn ports(&self) -> Vec<&str> {
        self.ctrs.iter().map(|c| c.port.as_str()).collect()
    }

    /// `bridge accelerate br0 EXTRA...`, which must succeed; returns stdout.
    fn accelerate(&self, extra: &[&str]) -> String {
        let mut a = vec!["bridge", "accelerate", BR];
        a.extend_from_slice(extra);
        self.node.ok(&a)
    }

    /// TX packets of a node link (`ip -s -j link`).
    fn tx(&self, dev: &str) -> u64 {
        link_stats(&self.node.ns, dev).0
    }

    /// TX packets of the bridge and of every port, by name.
    fn tx_all(&self) -> Vec<(String, u64)> {
        std::iter::once(BR)
            .chain(self.ports())
            .map(|d| (d.to_string(), self.tx(d)))
            .collect()
    }

    /// Ping every other container from container `i` (v4 and v6), so that neighbour
    /// entries exist before a measurement.
    fn warm(&self, i: usize) {
        for (j, c) in self.ctrs.iter().enumerate() {
            if j != i {
                for ip in [c.v4, c.v6] {
                    assert!(
                        ping(self.ctrs[i].name(), ip),
                        "ping {ip} from container {i}"
                    );
                }
            }
        }
    }

    /// Wait until nothing moves: the RX/TX counters of the bridge and of every port stay
    /// the same for a second, and no container has a neighbour entry in flux (INCOMPLETE,
    /// DELAY, PROBE: those send ARP/ND by themselves a few seconds later). What settles here
    /// is DAD, MLD reports and neighbour confirmation after links come up or after pings.
    /// Polls, with a deadline.
    fn quiesce(&self) {
        let quiet = Duration::from_secs(1);
        let deadline = Instant::now() + Duration::from_secs(30);
        let fingerprint = || -> Vec<(u64, u64)> {
            std::iter::once(BR)
                .chain(self.ports())
                .map(|d| link_stats(&self.node.ns, d))
                .collect()
        };
        let mut last = fingerprint();
        let mut since = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let busy: Vec<String> = self
                .ctrs
                .iter()
                .flat_map(|c| {
                    c.ns.ip_json(&["neigh", "show"])
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|n| {
                            n["state"].as_array().is_some_and(|s| {
                                s.iter().any(|x| {
                                    ["INCOMPLETE", "DELAY", "PROBE"].contains(&x.as_str().unwrap())
                                })
                            })
                        })
                        .map(|n| format!("{}: {}", c.name(), n))
                        .collect::<Vec<_>>()
                })
                .collect();
            let now = fingerprint();
            if now != last || !busy.is_empty() {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node not quiet after 30 s: neighbours in flux {busy:?}"
            );
        }
    }
}

/// (TX packets, RX packets) of `dev` in `ns`.
fn link_stats(ns: &Netns, dev: &str) -> (u64, u64) {
    let v = ns.ip_json(&["-s", "link", "show", "dev", dev]);
    let s = &v[0]["stats64"];
    (
        s["tx"]["packets"].as_u64().expect("tx packets"),
        s["rx"]["packets"].as_u64().expect("rx packets"),
    )
}

/// Names of the cls_bpf filters (and tcx programs) attached to `dev` in `ns` (ingress,
/// egress), asked from the kernel.
fn tc_progs(ns: &Netns, dev: &str) -> (Vec<String>, Vec<String>) {
    use vethfp::sys::tc_filter::{Dir, TcSession};
    let dev = dev.to_string();
    run_in_netns(ns.name(), move || {
        let ifindex = nix::net::if_::if_nametoindex(dev.as_str()).expect("ifindex");
        let mut tc = TcSession::new().expect("netlink");
        let names = |t, d, tc: &mut TcSession| {
            let (_, progs) = SchedClassifier::query_tcx(&dev, t)
                .unwrap_or_else(|e| panic!("query tcx on {dev}: {e}"));
            let mut v: Vec<String> = progs
                .iter()
                .map(|p| p.name_as_str().unwrap_or("?").to_string())
                .collect();
            v.extend(
                tc.list(ifindex, d)
                    .expect("list filters")
                    .into_iter()
                    .map(|f| f.name),
            );
            v
        };
        (
            names(TcAttachType::Ingress, Dir::Ingress, &mut tc),
            names(TcAttachType::Egress, Dir::Egress, &mut tc),
        )
    })
}

/// Keys of a pinned hash map of vethfp's state (none if it was never created).
fn map_keys<K: aya::Pod, V: aya::Pod>(node: &Node, name: &str) -> Vec<K> {
    let path = node.bpffs_dir().join(name);
    if !path.exists() {
        return Vec::new();
    }
    let data = MapData::from_pin(&path).unwrap_or_else(|e| panic!("open {path:?}: {e}"));
    let m: HashMap<MapData, K, V> = HashMap::try_from(Map::HashMap(data))
        .unwrap_or_else(|e| panic!("{name} is not a hash map: {e}"));
    m.keys().map(|k| k.expect("map key")).collect()
}

fn mac_str(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// MACs in VFP_L2 (the bridge bypass's container MAC → port map).
fn l2_macs(node: &Node) -> Vec<String> {
    let mut v: Vec<String> = map_keys::<[u8; 6], veth_common::Target>(node, veth_common::MAP_L2)
        .iter()
        .map(mac_str)
        .collect();
    v.sort();
    v
}

/// No drop verdict moved.
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

/// Every port is accelerated: listed as a bridge port with what the kernel shows, the L2
/// program on tcx ingress, the container's MAC in VFP_L2.
fn assert_accelerated(d: &Docker) {
    let list = d.node.list_json();
    for c in &d.ctrs {
        let e = list
            .iter()
            .find(|e| e["host_if"] == c.port.as_str())
            .unwrap_or_else(|| panic!("{} not in pair list: {list:?}", c.port));
        assert_eq!(e["mode"], "bridge", "{e}");
        assert_eq!(e["network"], BR, "{e}");
        assert_eq!(e["netns"], c.name(), "{e}");
        assert_eq!(e["ifname"], "eth0", "{e}");
        assert_eq!(e["container_mac"], c.mac.as_str(), "{e}");
        let addrs: Vec<&str> = e["addrs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        for a in [format!("{}/24", c.v4), format!("{}/64", c.v6)] {
            assert!(addrs.contains(&a.as_str()), "{a} missing in {e}");
        }
        let (ingress, egress) = tc_progs(&d.node.ns, &c.port);
        assert_eq!(ingress, ["vfp_l2_ingress"], "{}: tc ingress", c.port);
        assert_eq!(egress, ["vfp_tc_egress"], "{}: tc egress", c.port);
        assert!(d.node.has_filters(&c.port), "{}: filters are ours", c.port);
    }
    let mut macs: Vec<String> = d.ctrs.iter().map(|c| c.mac.clone()).collect();
    macs.sort();
    assert_eq!(
        l2_macs(&d.node),
        macs,
        "VFP_L2 holds exactly the containers' MACs"
    );
}

/// Nothing of vethfp on any port: not listed, no counters, no filter or tcx program, no pin,
/// nothing in VFP_L2 or VFP_ENDPOINTS.
fn assert_not_accelerated(d: &Docker) {
    assert_eq!(d.node.list_json(), Vec::<Value>::new(), "pair list");
    assert!(d.node.all_stats().is_empty(), "stats");
    for p in d.ports() {
        assert_eq!(
            tc_progs(&d.node.ns, p),
            (vec![], vec![]),
            "{p}: tc programs"
        );
    }
    let links: Vec<String> = d
        .node
        .bpffs
        .files()
        .into_iter()
        .filter(|f| f.starts_with("vethfp/links/"))
        .collect();
    assert!(links.is_empty(), "link pins left: {links:?}");
    assert!(l2_macs(&d.node).is_empty(), "VFP_L2 not empty");
    let eps = map_keys::<u32, veth_common::EndpointRecord>(&d.node, veth_common::MAP_ENDPOINTS);
    assert!(eps.is_empty(), "VFP_ENDPOINTS not empty: {eps:?}");
}

/// N UDP datagrams from container `from` to container `to` on a quiet node. Returns the
/// counter deltas (vethfp's, per port) and the TX deltas of the bridge and every port.
fn udp_measure(
    d: &Docker,
    from: usize,
    to: usize,
    v6: bool,
    accelerated: bool,
) -> (Vec<EndpointStats>, Vec<(String, u64)>) {
    let (src, dst) = (&d.ctrs[from], &d.ctrs[to]);
    let dst_ip = if v6 { dst.v6 } else { dst.v4 };
    d.warm(from);
    d.quiesce();
    let before = accelerated.then(|| d.node.all_stats());
    let tx0 = d.tx_all();
    let got = udp_transfer(src.name(), None, dst.name(), dst_ip, N, PAYLOAD);
    assert_eq!(got, N, "datagrams {} -> {dst_ip}", src.v4);
    let tx1 = d.tx_all();
    let deltas = before
        .map(|b| {
            let after = d.node.all_stats();
            d.ctrs
                .iter()
                .map(|c| after[&c.port].since(&b[&c.port]))
                .collect()
        })
        .unwrap_or_default();
    let tx = tx0
        .iter()
        .zip(&tx1)
        .map(|((n, a), (_, b))| (n.clone(), b - a))
        .collect();
    (deltas, tx)
}

/// Accelerated: exactly N fast on the sender's from_container and the receiver's
/// to_container, nothing else anywhere, and no TX on the bridge or any port.
fn udp_exact(d: &Docker, from: usize, to: usize, v6: bool) {
    let (deltas, tx) = udp_measure(d, from, to, v6, true);
    let ip = if v6 { d.ctrs[to].v6 } else { d.ctrs[to].v4 };
    let want = Count::new(N, N * udp_frame_len(ip, PAYLOAD));
    for (i, dl) in deltas.iter().enumerate() {
        assert_no_drops(dl);
        let f = if i == from { want } else { zero() };
        let t = if i == to { want } else { zero() };
        assert_eq!(dl.from("fast"), f, "{}: from_container.fast", dl.host_if);
        assert_eq!(dl.to("fast"), t, "{}: to_container.fast", dl.host_if);
        assert_eq!(
            dl.from("stack"),
            zero(),
            "{}: from_container.stack",
            dl.host_if
        );
        assert_eq!(dl.to("stack"), zero(), "{}: to_container.stack", dl.host_if);
    }
    // The bridge forwarded none of it: no port (the destination's above all) transmitted
    // anything, nor did the bridge device.
    for (dev, n) in &tx {
        assert_eq!(
            *n, 0,
            "{dev} transmitted {n} packets during the fast-path transfer"
        );
    }
}

#[test]
fn udp_v4_v6_fast_exact_and_bridge_does_not_forward() {
    let d = Docker::new(3);
    // Control: before acceleration the bridge forwards, and the destination's host end
    // transmits every datagram; this is what the fast path must make disappear.
    let (_, tx) = udp_measure(&d, 0, 1, false, false);
    let dst_tx = tx.iter().find(|(n, _)| n == "veth1").unwrap().1;
    assert_eq!(
        dst_tx, N,
        "plain bridge: veth1 TX during {N} datagrams: {tx:?}"
    );

    let out = d.accelerate(&[]);
    assert!(
        out.contains("3 port(s) accelerated"),
        "accelerate output: {out}"
    );
    assert_accelerated(&d);
    udp_exact(&d, 0, 1, false);
    udp_exact(&d, 1, 2, true);
    udp_exact(&d, 2, 0, false);
}

#[test]
fn tcp_v4_v6_between_containers() {
    let d = Docker::new(3);
    d.accelerate(&[]);
    let (a, b) = (&d.ctrs[0], &d.ctrs[1]);
    let bytes = 2 << 20;
    let before = d.node.all_stats();
    tcp_echo(a.name(), b.name(), b.v4, bytes).expect("tcp c0 -> c1 v4");
    tcp_echo(b.name(), a.name(), a.v4, bytes).expect("tcp c1 -> c0 v4");
    tcp_echo(a.name(), b.name(), b.v6, bytes).expect("tcp c0 -> c1 v6");
    tcp_echo(b.name(), a.name(), a.v6, bytes).expect("tcp c1 -> c0 v6");
    let after = d.node.all_stats();
    let d0 = after[&a.port].since(&before[&a.port]);
    let d1 = after[&b.port].since(&before[&b.port]);
    let d2 = after[&d.ctrs[2].port].since(&before[&d.ctrs[2].port]);
    for dl in [&d0, &d1, &d2] {
        assert_no_drops(dl);
    }
    // 8 MiB of payload went each way (4 transfers x 2 MiB, echoed): at least that many
    // bytes took the fast path each way, GSO super-packets included.
    let min = 4 * bytes as u64;
    for dl in [&d0, &d1] {
        assert!(dl.from("fast").bytes >= min, "{}: {dl:?}", dl.host_if);
        assert!(dl.to("fast").bytes >= min, "{}: {dl:?}", dl.host_if);
    }
    // What one sent fast is exactly what the other received fast.
    assert_eq!(d0.from("fast"), d1.to("fast"));
    assert_eq!(d1.from("fast"), d0.to("fast"));
    assert_eq!(d2.to("fast"), zero(), "container 2 was not part of it");
    // Between other pairs too, both families.
    let c = &d.ctrs[2];
    tcp_echo(c.name(), a.name(), a.v6, 1 << 16).expect("tcp c2 -> c0 v6");
    tcp_echo(b.name(), c.name(), c.v4, 1 << 16).expect("tcp c1 -> c2 v4");
}

#[test]
fn arp_and_broadcast_still_go_through_the_bridge() {
    let d = Docker::new(3);
    d.accelerate(&[]);
    let c0 = &d.ctrs[0];

    // ARP: forget every neighbour in container 0, then reach container 1. The request is a
    // broadcast: the bridge floods it, so every other port transmits it; the sender's
    // frames to the broadcast address are counted as stack.
    d.warm(0);
    d.quiesce();
    c0.ns.ip(&["neigh", "flush", "dev", "eth0"]);
    let before = d.node.all_stats();
    let tx0 = d.tx_all();
    assert!(ping(c0.name(), d.ctrs[1].v4), "ping after neigh flush");
    let tx1 = d.tx_all();
    let after = d.node.all_stats();
    let neigh = c0
        .ns
        .ip_json(&["neigh", "show", "dev", "eth0", &d.ctrs[1].v4.to_string()]);
    assert_eq!(
        neigh[0]["lladdr"],
        d.ctrs[1].mac.as_str(),
        "ARP resolved container 1's MAC: {neigh}"
    );
    for (i, ((dev, a), (_, b))) in tx0.iter().zip(&tx1).enumerate() {
        if i >= 2 {
            // ports 1 and 2 (index 0 is the bridge device, 1 the sender's port)
            assert!(
                b > a,
                "{dev}: the ARP broadcast was not flooded to it (TX {a} -> {b})"
            );
        }
    }
    let s0 = after[&c0.port].since(&before[&c0.port]);
    assert!(
        s0.from("stack").packets >= 1,
        "the ARP request went to the bridge: {s0:?}"
    );
    assert!(
        after[&d.ctrs[2].port]
            .since(&before[&d.ctrs[2].port])
            .to("stack")
            .packets
            >= 1,
        "container 2 got the flooded ARP request from the bridge"
    );

    // A broadcast UDP datagram reaches every other container, through the bridge.
    const K: u64 = 5;
    const PORT: u16 = 40999;
    let receivers: Vec<_> = d.ctrs[1..]
        .iter()
        .map(|c| {
            let (tx, rx) = mpsc::channel();
            let h = in_netns(c.name(), move || {
                let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, PORT)).expect("bind broadcast rx");
                s.set_read_timeout(Some(TIMEOUT)).unwrap();
                tx.send(()).unwrap();
                let mut got = 0;
                let mut buf = [0u8; 2048];
                while got < K {
                    match s.recv(&mut buf) {
                        Ok(n) if n == PAYLOAD && buf[0] == 0xbc => got += 1,
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                got
            });
            rx.recv_timeout(TIMEOUT).expect("receiver bound");
            h
        })
        .collect();
    d.quiesce();
    let before = d.node.all_stats();
    let tx0 = d.tx_all();
    run_in_netns(c0.name(), || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        s.set_broadcast(true).unwrap();
        let dst = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 1, 0, 255)), PORT);
        for _ in 0..K {
            s.send_to(&[0xbc; PAYLOAD], dst).expect("send broadcast");
        }
    });
    for (c, h) in d.ctrs[1..].iter().zip(receivers) {
        assert_eq!(join(h), K, "broadcast datagrams received in {}", c.name());
    }
    let tx1 = d.tx_all();
    let after = d.node.all_stats();
    let frame = udp_frame_len(d.ctrs[1].v4, PAYLOAD);
    let want = Count::new(K, K * frame);
    let s0 = after[&c0.port].since(&before[&c0.port]);
    assert_eq!(
        s0.from("stack"),
        want,
        "broadcast went to the bridge: {s0:?}"
    );
    assert_eq!(s0.from("fast"), zero());
    for c in &d.ctrs[1..] {
        let s = after[&c.port].since(&before[&c.port]);
        assert_eq!(s.to("stack"), want, "{}: delivered by the bridge", c.port);
        assert_eq!(s.to("fast"), zero(), "{}", c.port);
        let (a, b) = (
            tx0.iter().find(|(n, _)| *n == c.port).unwrap().1,
            tx1.iter().find(|(n, _)| *n == c.port).unwrap().1,
        );
        assert_eq!(b - a, K, "{}: TX of the flooded broadcast", c.port);
    }
}

#[test]
fn container_to_bridge_address_and_back() {
    let d = Docker::new(2);
    d.accelerate(&[]);
    let c = &d.ctrs[0];
    let gw4: IpAddr = GW4.parse().unwrap();
    let gw6: IpAddr = GW6.parse().unwrap();
    for (gw, ip) in [(gw4, c.v4), (gw6, c.v6)] {
        assert!(ping(c.name(), gw), "ping {gw} from the container");
        assert!(ping(d.node.name(), ip), "ping {ip} from the node");
    }
    for (gw, ip) in [(gw4, c.v4), (gw6, c.v6)] {
        let want = Count::new(N, N * udp_frame_len(ip, PAYLOAD));
        d.quiesce();
        let before = d.node.stats(&c.port);
        assert_eq!(
            udp_transfer(c.name(), None, d.node.name(), gw, N, PAYLOAD),
            N,
            "{ip} -> {gw}"
        );
        let dl = d.node.stats(&c.port).since(&before);
        assert_no_drops(&dl);
        assert_eq!(
            dl.from("stack"),
            want,
            "{ip} -> {gw}: to the bridge, counted stack"
        );
        assert_eq!(dl.from("fast"), zero());

        d.quiesce();
        let before = d.node.stats(&c.port);
        assert_eq!(
            udp_transfer(d.node.name(), Some(gw), c.name(), ip, N, PAYLOAD),
            N,
            "{gw} -> {ip}"
        );
        let dl = d.node.stats(&c.port).since(&before);
        assert_no_drops(&dl);
        assert_eq!(
            dl.to("stack"),
            want,
            "{gw} -> {ip}: from the bridge, counted stack"
        );
        assert_eq!(dl.to("fast"), zero());
    }
    tcp_echo(c.name(), d.node.name(), gw4, 1 << 20).expect("tcp container -> bridge v4");
    tcp_echo(d.node.name(), c.name(), c.v6, 1 << 20).expect("tcp node -> container v6");
}

#[test]
fn release_restores_the_plain_bridge() {
    let d = Docker::new(2);
    let pins_before = d.node.bpffs.files();
    d.accelerate(&[]);
    assert_accelerated(&d);
    let pins_with = d.node.bpffs.files();
    let port_pins: Vec<&String> = pins_with
        .difference(&pins_before)
        .filter(|p| p.contains("/links/"))
        .collect();
    assert!(
        port_pins.is_empty(),
        "ports carry filters, not pinned links: {pins_with:?}"
    );
    udp_exact(&d, 0, 1, true);

    let out = d.node.ok(&["bridge", "release", BR]);
    assert!(out.contains("2 port(s) released"), "release output: {out}");
    assert_not_accelerated(&d);
    for p in &port_pins {
        assert!(!d.node.bpffs.files().contains(*p), "pin {p} left");
    }

    // Plain bridge again: the bridge forwards, the destination's host end transmits.
    let (_, tx) = udp_measure(&d, 0, 1, false, false);
    let dst_tx = tx.iter().find(|(n, _)| n == "veth1").unwrap().1;
    assert_eq!(dst_tx, N, "released: veth1 TX during {N} datagrams: {tx:?}");
    let (a, b) = (&d.ctrs[0], &d.ctrs[1]);
    tcp_echo(a.name(), b.name(), b.v6, 1 << 20).expect("tcp after release");
    // Releasing again is a no-op, and accelerating again works.
    let out = d.node.ok(&["bridge", "release", BR]);
    assert!(out.contains("0 port(s) released"), "{out}");
    d.accelerate(&[]);
    assert_accelerated(&d);
    udp_exact(&d, 1, 0, false);
}

#[test]
fn release_keeps_established_connections() {
    use std::io::{Read, Write};
    let d = Docker::new(2);
    d.accelerate(&[]);
    let (a, b) = (&d.ctrs[0], &d.ctrs[1]);
    let (tx, rx) = mpsc::channel();
    let bip = b.v4;
    let server = in_netns(b.name(), move || {
        let l = std::net::TcpListener::bind((bip, 0)).unwrap();
        tx.send(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut buf = [0u8; 1];
        // Echo single bytes until EOF.
        while s.read(&mut buf).unwrap() == 1 {
            s.write_all(&buf).unwrap();
        }
    });
    let addr = rx.recv_timeout(TIMEOUT).unwrap();
    let (ctl_tx, ctl_rx) = mpsc::channel::<u8>();
    let (res_tx, res_rx) = mpsc::channel::<u8>();
    let client = in_netns(a.name(), move || {
        let mut s = std::net::TcpStream::connect_timeout(&addr, TIMEOUT).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        for b in ctl_rx {
            s.write_all(&[b]).unwrap();
            let mut r = [0u8; 1];
            s.read_exact(&mut r).unwrap();
            res_tx.send(r[0]).unwrap();
        }
    });
    let echo = |b: u8| {
        ctl_tx.send(b).unwrap();
        assert_eq!(res_rx.recv_timeout(TIMEOUT).expect("echo"), b);
    };
    echo(1);
    let fast0 = d.node.stats(&a.port).from("fast").packets;
    echo(2);
    assert!(
        d.node.stats(&a.port).from("fast").packets > fast0,
        "connection on the fast path"
    );
    d.node.ok(&["bridge", "release", BR]);
    echo(3);
    d.accelerate(&[]);
    echo(4);
    drop(ctl_tx);
    join(client);
    join(server);
}

/// A refused accelerate: one error line naming the reason, nothing attached or recorded.
fn refused(d: &Docker, want: &[&str]) -> String {
    let before = d.node.snapshot();
    let msg = d.node.fails(&["bridge", "accelerate", BR]);
    for w in want {
        assert!(msg.contains(w), "refusal should name {w:?}: {msg}");
    }
    assert!(
        msg.contains("--force"),
        "refusal should mention --force: {msg}"
    );
    assert_eq!(
        d.node.snapshot(),
        before,
        "a refused accelerate changed the node"
    );
    assert_not_accelerated(d);
    msg
}

#[test]
fn refuses_vlan_filtering_unless_forced() {
    let d = Docker::new(2);
    let out = std::process::Command::new("ip")
        .args(["-n", d.node.name(), "link", "set", BR, "type", "bridge"])
        .args(["vlan_filtering", "1"])
        .output()
        .expect("run ip");
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("not supported"),
            "ip link set {BR} type bridge vlan_filtering 1: {err}"
        );
        eprintln!(
            "SKIPPED: this kernel has no bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING): {}",
            err.trim()
        );
        return;
    }
    refused(&d, &["vlan_filtering", BR]);
    // The bridge still works (every port is untagged in the default VLAN 1).
    assert!(ping(d.ctrs[0].name(), d.ctrs[1].v4));
    let out = d.accelerate(&["--force"]);
    assert!(out.contains("2 port(s) accelerated"), "{out}");
    assert_accelerated(&d);
    udp_exact(&d, 0, 1, false);
}

#[test]
fn refuses_isolated_port_unless_forced() {
    let d = Docker::new(3);
    // Both ways of setting the flag: iproute2's `bridge link` and `ip link ... bridge_slave`.
    d.node.ns.ip(&[
        "link",
        "set",
        "veth1",
        "type",
        "bridge_slave",
        "isolated",
        "on",
    ]);
    refused(&d, &["isolated", "veth1"]);
    d.node.ns.ip(&[
        "link",
        "set",
        "veth1",
        "type",
        "bridge_slave",
        "isolated",
        "off",
    ]);
    let out = std::process::Command::new("bridge")
        .args([
            "-n",
            d.node.name(),
            "link",
            "set",
            "dev",
            "veth2",
            "isolated",
            "on",
        ])
        .output()
        .expect("run bridge (iproute2)");
    assert!(out.status.success(), "bridge link set: {out:?}");
    refused(&d, &["isolated", "veth2"]);
    // One isolated port still reaches the non-isolated ones through the bridge.
    assert!(ping(d.ctrs[2].name(), d.ctrs[0].v4));
    let out = d.accelerate(&["--force"]);
    assert!(out.contains("3 port(s) accelerated"), "{out}");
    assert_accelerated(&d);
    udp_exact(&d, 0, 1, false);
}

/// Run a command inside `ns` (nsenter, which leaves /sys alone); panics on failure.
fn in_ns_cmd(ns: &Netns, cmd: &[&str]) -> std::process::Output {
    std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.name()))
        .args(cmd)
        .output()
        .unwrap_or_else(|e| panic!("nsenter {cmd:?}: {e}"))
}

fn have(tool: &str) -> bool {
    std::process::Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether iptables and br_netfilter can be used; loads br_netfilter if needed (a
/// machine-wide module load; the sysctls it brings are per namespace, and only the node
/// namespace's are set by the tests). False, with the reason printed, if iptables is missing.
fn netfilter_ready() -> bool {
    for tool in [
        "iptables",
        "ip6tables",
        "iptables-save",
        "ip6tables-save",
        "nsenter",
    ] {
        if !have(tool) {
            eprintln!("SKIPPED: `{tool}` is not installed (cargo xtask setup installs iptables)");
            return false;
        }
    }
    if !std::path::Path::new("/proc/sys/net/bridge").exists() {
        let out = std::process::Command::new("modprobe")
            .arg("br_netfilter")
            .output()
            .expect("run modprobe");
        assert!(out.status.success(), "modprobe br_netfilter: {out:?}");
    }
    true
}

#[test]
fn refuses_netfilter_drop_between_ports_unless_forced() {
    if !netfilter_ready() {
        return;
    }
    let d = Docker::new(2);
    d.node.ns.sysctl("net.bridge.bridge-nf-call-iptables", "1");
    d.node.ns.sysctl("net.bridge.bridge-nf-call-ip6tables", "1");
    // With br_netfilter on and no rules, accelerating is fine (checked, not refused)...
    d.accelerate(&[]);
    d.node.ok(&["bridge", "release", BR]);

    // ...but Docker's icc=false rule makes the bridge drop traffic between its ports.
    let rule = ["FORWARD", "-i", BR, "-o", BR, "-j", "DROP"];
    let out = in_ns_cmd(&d.node.ns, &[&["iptables", "-A"][..], &rule].concat());
    assert!(out.status.success(), "iptables -A: {out:?}");
    let (a, b) = (&d.ctrs[0], &d.ctrs[1]);
    assert_eq!(
        udp_transfer(a.name(), None, b.name(), b.v4, 10, PAYLOAD),
        0,
        "the DROP rule is in force on the plain bridge"
    );
    refused(&d, &["bridge-nf-call-iptables", "DROP"]);
    // With it off in this namespace, the rule no longer sees bridged traffic.
    d.node.ns.sysctl("net.bridge.bridge-nf-call-iptables", "0");
    d.accelerate(&[]);
    d.node.ok(&["bridge", "release", BR]);
    d.node.ns.sysctl("net.bridge.bridge-nf-call-iptables", "1");
    let out = in_ns_cmd(&d.node.ns, &[&["iptables", "-D"][..], &rule].concat());
    assert!(out.status.success(), "iptables -D: {out:?}");

    // The same for IPv6 (REJECT, UDP only, so that neighbour discovery keeps working).
    let rule6 = ["FORWARD", "-i", BR, "-o", BR, "-p", "udp", "-j", "REJECT"];
    let out = in_ns_cmd(&d.node.ns, &[&["ip6tables", "-A"][..], &rule6].concat());
    assert!(out.status.success(), "ip6tables -A: {out:?}");
    d.warm(0);
    assert_eq!(
        udp_transfer(a.name(), None, b.name(), b.v6, 10, PAYLOAD),
        0,
        "the REJECT rule is in force on the plain bridge"
    );
    refused(&d, &["bridge-nf-call-ip6tables", "REJECT"]);

    // --force: accelerated anyway; the fast path then skips the rule (that is what forcing
    // means), while the bridge path still applies it.
    let out = d.accelerate(&["--force"]);
    assert!(out.contains("2 port(s) accelerated"), "{out}");
    assert_accelerated(&d);
    assert_eq!(
        udp_transfer(a.name(), None, b.name(), b.v6, N, PAYLOAD),
        N,
        "forced: v6 between the ports takes the fast path, past the REJECT rule"
    );
}

#[test]
fn accelerate_again_picks_up_a_new_port() {
    let mut d = Docker::new(2);
    let out = d.accelerate(&[]);
    assert!(out.contains("2 port(s) accelerated: veth0, veth1"), "{out}");
    d.add();
    // Before the second accelerate the new container is on the plain bridge path.
    assert!(d.node.list_entry("veth2").is_none());
    assert!(ping(d.ctrs[0].name(), d.ctrs[2].v4));
    let out = d.accelerate(&[]);
    assert!(out.contains("1 port(s) accelerated: veth2"), "{out}");
    assert_accelerated(&d);
    udp_exact(&d, 0, 2, false);
    udp_exact(&d, 2, 1, true);
    // Nothing new: nothing done, nothing doubled.
    let out = d.accelerate(&[]);
    assert!(out.contains("0 port(s) accelerated"), "{out}");
    assert_eq!(d.node.list_json().len(), 3);
}

#[test]
fn unknown_bridge_and_non_bridge_refused() {
    let d = Docker::new(1);
    let msg = d.node.fails(&["bridge", "accelerate", "nosuchbr"]);
    assert!(msg.contains("nosuchbr"), "{msg}");
    let msg = d.node.fails(&["bridge", "accelerate", "veth0"]);
    assert!(msg.contains("veth0"), "{msg}");
    let msg = d.node.fails(&["bridge", "release", "nosuchbr"]);
    assert!(msg.contains("nosuchbr"), "{msg}");
    assert_not_accelerated(&d);
}

#[test]
fn refuses_forward_drop_policy_unless_the_bridge_is_accepted() {
    if !netfilter_ready() {
        return;
    }
    let d = Docker::new(2);
    d.node.ns.sysctl("net.bridge.bridge-nf-call-iptables", "1");
    // What Docker does to the whole node: FORWARD policy DROP. A bridge it does not manage
    // then drops everything between its ports (with br_netfilter on).
    let out = in_ns_cmd(&d.node.ns, &["iptables", "-P", "FORWARD", "DROP"]);
    assert!(out.status.success(), "iptables -P: {out:?}");
    let (a, b) = (&d.ctrs[0], &d.ctrs[1]);
    assert_eq!(
        udp_transfer(a.name(), None, b.name(), b.v4, 10, PAYLOAD),
        0,
        "the DROP policy is in force on the plain bridge"
    );
    refused(&d, &["bridge-nf-call-iptables", "-P FORWARD DROP"]);
    // Accepting the bridge's own traffic (what Docker does for docker0) lifts the refusal.
    let out = in_ns_cmd(
        &d.node.ns,
        &[
            "iptables", "-A", "FORWARD", "-i", BR, "-o", BR, "-j", "ACCEPT",
        ],
    );
    assert!(out.status.success(), "iptables -A: {out:?}");
    d.accelerate(&[]);
    assert_accelerated(&d);
    udp_exact(&d, 0, 1, false);
}

impl Docker {
    /// What `docker restart` (stop + start, or rm + run reusing the IP) does to container `i`:
    /// its veth is deleted and a new one made under another host end name (new ifindex), with
    /// the same container MAC (Docker derives it from the IP) and the same addresses. The
    /// other containers' neighbour entries for it stay valid, as under Docker.
    fn restart(&mut self, i: usize) {
        let old = self.ctrs[i].port.clone();
        self.node.ns.ip(&["link", "del", &old]);
        let port = format!(
            "vr{i}-{}",
            self.node
                .ns
                .ip_json(&["link", "show"])
                .as_array()
                .unwrap()
                .len()
        );
        let c = &self.ctrs[i];
        let ns = &c.ns;
        self.node.ns.ip(&[
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "address",
            &c.mac,
            "netns",
            ns.name(),
        ]);
        for fam in ["ipv4", "ipv6"] {
            ns.sysctl(
                &format!("net.{fam}.neigh.eth0.base_reachable_time_ms"),
                "3600000",
            );
        }
        self.node.ns.ip(&["link", "set", &port, "master", BR, "up"]);
        ns.ip(&["addr", "add", &format!("{}/24", c.v4), "dev", "eth0"]);
        ns.ip(&["addr", "add", &format!("{}/64", c.v6), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["route", "add", "default", "via", GW4]);
        ns.ip(&["-6", "route", "add", "default", "via", GW6]);
        ns.wait_addrs_ready(Duration::from_secs(10));
        self.node.ns.wait_addrs_ready(Duration::from_secs(10));
        self.ctrs[i].port = port;
    }

    fn status(&self) -> Value {
        let out = self.node.ok(&["bridge", "status", BR, "--json"]);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("bridge status: bad JSON ({e}): {out}"))
    }

    /// Ports of `bridge status` that are accelerated / not, and the stale endpoints.
    fn status_sets(&self) -> (Vec<String>, Vec<String>, Vec<String>) {
        let st = self.status();
        let names = |accel: bool| {
            let mut v: Vec<String> = st["ports"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["accelerated"] == accel)
                .map(|p| p["port"].as_str().unwrap().to_string())
                .collect();
            v.sort();
            v
        };
        let stale = st["stale"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect();
        (names(true), names(false), stale)
    }
}

/// Issue 16, 1: a restarted container (new veth, same MAC and IP) is reached through the
/// bridge at once, without running `accelerate` again, and not one packet for it is counted
/// fast: the stale entry names a gone port, and the datapath checks its targets.
#[test]
fn restarted_container_is_reached_and_never_counted_fast() {
    let mut d = Docker::new(3);
    d.accelerate(&[]);
    udp_exact(&d, 0, 1, false);
    d.restart(1);
    for (a, b) in [(0, 1), (1, 0), (2, 1)] {
        for ip in [d.ctrs[b].v4, d.ctrs[b].v6] {
            assert!(
                ping(d.ctrs[a].name(), ip),
                "ping {ip} from container {a} after the restart"
            );
        }
    }
    for v6 in [false, true] {
        d.quiesce();
        let before = d.node.all_stats();
        let dst = if v6 { d.ctrs[1].v6 } else { d.ctrs[1].v4 };
        let got = udp_transfer(d.ctrs[0].name(), None, d.ctrs[1].name(), dst, N, PAYLOAD);
        assert_eq!(got, N, "datagrams to the restarted container {dst}");
        let dl = d.node.all_stats()[&d.ctrs[0].port].since(&before[&d.ctrs[0].port]);
        assert_no_drops(&dl);
        assert_eq!(dl.from("fast"), zero(), "{dst}: nothing counted fast");
        assert_eq!(
            dl.from("stack"),
            Count::new(N, N * udp_frame_len(dst, PAYLOAD)),
            "{dst}: every datagram counted on the bridge path"
        );
    }
    // From the restarted (not yet accelerated) container: the bridge delivers.
    assert_eq!(
        udp_transfer(
            d.ctrs[1].name(),
            None,
            d.ctrs[2].name(),
            d.ctrs[2].v4,
            N,
            PAYLOAD
        ),
        N
    );
    // Issue 16, 2: accelerate again picks the new port up and prunes the gone one.
    let out = d.accelerate(&[]);
    assert!(
        out.contains(&format!("1 port(s) accelerated: {}", d.ctrs[1].port)),
        "{out}"
    );
    assert!(out.contains("1 gone port(s) removed: veth1"), "{out}");
    assert_accelerated(&d);
    assert_eq!(d.node.list_json().len(), 3, "no stale endpoint left");
    udp_exact(&d, 0, 1, false);
    udp_exact(&d, 1, 2, true);
}

/// Issue 16, 3 without the agent: `bridge status` tells accelerated ports from ports added
/// later and from endpoints of gone ports; `accelerate` settles all of them.
#[test]
fn bridge_status_shows_ports_not_yet_accelerated_and_gone_ones() {
    let mut d = Docker::new(2);
    let st = d.status();
    assert_eq!(st["accelerated"], false, "{st}");
    d.accelerate(&[]);
    d.restart(1);
    d.add();
    let st = d.status();
    assert_eq!(st["accelerated"], true, "{st}");
    let (fast, slow, stale) = d.status_sets();
    assert_eq!(fast, ["veth0"], "{st}");
    let mut want = vec![d.ctrs[1].port.clone(), d.ctrs[2].port.clone()];
    want.sort();
    assert_eq!(slow, want, "{st}");
    assert_eq!(stale, ["veth1"], "{st}");
    let reason = st["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == "veth2")
        .unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("not yet"), "{reason}");
    d.accelerate(&[]);
    let (fast, slow, stale) = d.status_sets();
    assert_eq!(
        (fast.len(), slow.len(), stale.len()),
        (3, 0, 0),
        "{}",
        d.status()
    );
    assert_accelerated(&d);
    // Released: no longer recorded, nothing accelerated.
    d.node.ok(&["bridge", "release", BR]);
    let st = d.status();
    assert_eq!(st["accelerated"], false, "{st}");
    assert_not_accelerated(&d);
}

/// Issue 16, 3 with the agent: new ports of an accelerated bridge are accelerated and gone
/// ones removed on the link events, without running `accelerate` again.
#[test]
fn agent_keeps_an_accelerated_bridge_accelerated() {
    let mut d = Docker::new(2);
    d.accelerate(&[]);
    let _agent = vethfp_tests::Agent::start(&d.node, &["--reconcile-interval", "3600"]);
    d.restart(1);
    d.add();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (fast, slow, stale) = d.status_sets();
        if fast.len() == 3 && slow.is_empty() && stale.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not follow the bridge: {}",
            d.status()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_accelerated(&d);
    assert_eq!(d.node.list_json().len(), 3);
    udp_exact(&d, 0, 1, false);
    udp_exact(&d, 2, 1, true);
}

/// Issue 16, 4: a refusal on re-running `accelerate` while ports are accelerated from before
/// says plainly that their fast path stays (and how to remove it); nothing changes.
#[test]
fn refusal_on_rerun_says_the_earlier_fast_path_stays() {
    let mut d = Docker::new(2);
    d.accelerate(&[]);
    d.add();
    d.node.ns.ip(&[
        "link",
        "set",
        "veth2",
        "type",
        "bridge_slave",
        "isolated",
        "on",
    ]);
    let msg = d.node.fails(&["bridge", "accelerate", BR]);
    for w in [
        "isolated",
        "stays in place on veth0, veth1",
        "vethfp bridge release br0",
    ] {
        assert!(msg.contains(w), "refusal should say {w:?}: {msg}");
    }
    let listed: Vec<String> = d
        .node
        .list_json()
        .iter()
        .map(|e| e["host_if"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, ["veth0", "veth1"], "nothing added or removed");
    // And the earlier fast path indeed still carries their traffic.
    let (a, b) = (&d.ctrs[0], &d.ctrs[1]);
    assert!(ping(a.name(), b.v4));
    d.quiesce();
    let before = d.node.stats("veth0");
    assert_eq!(udp_transfer(a.name(), None, b.name(), b.v4, N, PAYLOAD), N);
    assert_eq!(
        d.node.stats("veth0").since(&before).from("fast"),
        Count::new(N, N * udp_frame_len(b.v4, PAYLOAD))
    );
}

/// A recorded bridge that was deleted (`docker network rm`) can still be released: its
/// endpoints go and the record is forgotten, so the agent stops following the name.
#[test]
fn release_of_a_deleted_bridge_forgets_it() {
    let d = Docker::new(2);
    d.accelerate(&[]);
    assert!(
        d.node
            .bpffs
            .files()
            .iter()
            .any(|f| f.ends_with("bridges/br0")),
        "recorded: {:?}",
        d.node.bpffs.files()
    );
    d.node.ns.ip(&["link", "del", BR]);
    let out = d.node.ok(&["bridge", "release", BR]);
    assert!(out.contains("2 port(s) released"), "{out}");
    assert_eq!(d.node.list_json(), Vec::<Value>::new());
    let left: Vec<String> = d
        .node
        .bpffs
        .files()
        .into_iter()
        .filter(|f| f.contains("bridges"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
