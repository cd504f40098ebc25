//! /metrics scraped with a real HTTP client (ureq) inside the node's namespace, parsed, and
//! compared value by value with `vethfp stats --json` and `status --json`. Also
//! `vethfp stats --watch` when stdout is not a terminal.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use serde_json::Value;
use vethfp_tests::{
    Agent, EndpointStats, Node, VERDICTS, agent::http_get, ping, udp_recv, udp_send_to,
    udp_transfer,
};

#[test]
fn metrics_equal_stats_json() {
    let node = Node::new();
    let c1 = node.add_container("vm1", &["10.1.0.2/24", "fd00:1::2/64"]);
    let c2 = node.add_container("vm2", &["10.1.0.3/24", "fd00:1::3/64"]);
    let c3 = node.add_container_with("vm3", &["10.1.0.4/24"], &["--network", "other"]);
    assert_eq!(
        udp_transfer(c1.name(), None, c2.name(), c2.v4(), 500, 100),
        500
    );
    assert_eq!(
        udp_transfer(c2.name(), None, c1.name(), c1.v6(), 300, 1000),
        300
    );
    assert!(ping(node.name(), c3.v4()));
    // Spoofed source address from c1: dropped (anti-spoofing enforced by default).
    let rx = udp_recv(
        c2.name(),
        SocketAddr::new(c2.v4(), 0),
        1,
        16,
        Duration::from_millis(200),
    );
    c1.ns.ip(&["addr", "add", "10.1.0.99/32", "dev", "eth0"]);
    udp_send_to(
        c1.name(),
        Some("10.1.0.99".parse().unwrap()),
        &rx,
        5,
        16,
        64,
    );
    assert_eq!(rx.wait(), 0);
    for c in ["vm1", "vm2", "vm3"] {
        node.wait_quiet(c);
    }

    let agent = Agent::start(&node, &[]);
    // Counters only move on traffic, which has stopped: sample until stats before and after
    // the scrape agree (a stray kernel packet would make them differ), then compare.
    let (stats, m) = (0..10)
        .find_map(|_| {
            let before = node.stats_json();
            let m = agent.scrape();
            (node.stats_json() == before).then_some((before, m))
        })
        .expect("counters never stood still");
    assert_eq!(stats.len(), 3);
    let list = node.list_json();
    for v in &stats {
        let s = EndpointStats::parse(v);
        let netns = list
            .iter()
            .find(|e| e["host_if"] == s.host_if.as_str())
            .and_then(|e| e["netns"].as_str())
            .expect("netns")
            .to_string();
        for (dir, counts) in [
            ("from_container", &s.from_container),
            ("to_container", &s.to_container),
        ] {
            for verdict in VERDICTS {
                let labels = [
                    ("host_if", s.host_if.as_str()),
                    ("netns", netns.as_str()),
                    ("direction", dir),
                    ("verdict", verdict),
                ];
                let c = counts[verdict];
                assert_eq!(
                    m.get("vethfp_endpoint_packets_total", &labels),
                    Some(c.packets as f64),
                    "packets {labels:?}"
                );
                assert_eq!(
                    m.get("vethfp_endpoint_bytes_total", &labels),
                    Some(c.bytes as f64),
                    "bytes {labels:?}"
                );
            }
        }
        for reason in ["spoof_ip", "spoof_mac", "policy", "error"] {
            let v = format!("drop_{reason}");
            let want = s.from(&v).packets + s.to(&v).packets;
            assert_eq!(
                m.get(
                    "vethfp_endpoint_drops_total",
                    &[
                        ("host_if", s.host_if.as_str()),
                        ("netns", netns.as_str()),
                        ("reason", reason)
                    ]
                ),
                Some(want as f64),
                "{} drops {reason}",
                s.host_if
            );
        }
    }
    // Exactly these endpoints, no others, and the traffic above is visible.
    let hosts: Vec<&str> = m
        .all("vethfp_endpoint_packets_total")
        .iter()
        .map(|(l, _)| l["host_if"].as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(hosts, ["vm1", "vm2", "vm3"]);
    let spoofed: f64 = m
        .all("vethfp_endpoint_drops_total")
        .iter()
        .filter(|(l, _)| l["host_if"] == "vm1" && l["reason"] == "spoof_ip")
        .map(|(_, v)| v)
        .sum();
    assert_eq!(spoofed, 5.0);

    let status: Value = serde_json::from_str(&node.ok(&["status", "--json"])).unwrap();
    assert_eq!(m.get("vethfp_endpoints", &[]), status["endpoints"].as_f64());
    assert_eq!(m.get("vethfp_fast_path_enabled", &[]), Some(1.0));
    assert_eq!(
        m.get(
            "vethfp_agent_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert_eq!(m.types["vethfp_endpoint_packets"], "counter");
    assert_eq!(m.types["vethfp_endpoints"], "gauge");
    assert_eq!(m.types["vethfp_agent"], "info");

    // Plain HTTP behaviour.
    let (code, _, _) = http_get(node.name(), "/nope").unwrap();
    assert_eq!(code, 404);
    let (code, _, body) = http_get(node.name(), "/").unwrap();
    assert_eq!(code, 200, "{body}");
    let (st, log) = agent.terminate();
    assert!(st.success(), "{log}");
}

#[test]
fn stats_watch_prints_rates_as_plain_lines_when_not_a_terminal() {
    let node = Node::new();
    let c1 = node.add_container("vw1", &["10.1.0.2/24"]);
    let c2 = node.add_container("vw2", &["10.1.0.3/24"]);
    assert_eq!(
        udp_transfer(c1.name(), None, c2.name(), c2.v4(), 100, 100),
        100
    );
    node.wait_quiet("vw1");
    node.wait_quiet("vw2");
    let totals: BTreeMap<String, EndpointStats> = node.all_stats();
    let out = node.ok(&["stats", "--watch", "--interval", "0.2", "--count", "3"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.len(),
        3 * 2 * 2,
        "3 refreshes × 2 endpoints × 2 directions:\n{out}"
    );
    for l in &lines {
        let f: Vec<&str> = l.split(' ').collect();
        assert_eq!(f.len(), 10, "{l}");
        assert!(f[0].parse::<f64>().is_ok(), "time: {l}");
        let s = &totals[f[1]];
        let (d, counts) = match f[2] {
            "from_container" => ("from", &s.from_container),
            "to_container" => ("to", &s.to_container),
            other => panic!("direction {other} in {l}"),
        };
        // Quiet: every rate is 0; totals are the counters.
        for r in &f[3..8] {
            assert_eq!(r.parse::<f64>().unwrap(), 0.0, "{d} rate in {l}");
        }
        let packets: u64 = counts.values().map(|c| c.packets).sum();
        let bytes: u64 = counts.values().map(|c| c.bytes).sum();
        assert_eq!(f[8].parse::<u64>().unwrap(), packets, "{l}");
        assert_eq!(f[9].parse::<u64>().unwrap(), bytes, "{l}");
    }
    // One endpoint only; bad intervals are refused.
    let out = node.ok(&[
        "stats",
        "vw1",
        "--watch",
        "--interval",
        "0.1",
        "--count",
        "1",
    ]);
    assert_eq!(out.lines().count(), 2, "{out}");
    node.fails(&["stats", "--watch", "--interval", "0"]);
    node.fails(&["stats", "--interval", "1"]);
}

/// The probes a DaemonSet's kubelet uses (deploy/kubernetes/daemonset.yaml): /healthz answers
/// while the agent runs, /readyz once the start reconciliation ran and the pinned state opens
/// (checked per request: after the state dir is removed, the agent opens it anew and stays
/// ready).
#[test]
fn health_and_readiness_probes() {
    let node = Node::new();
    let _c1 = node.add_container("vh1", &["10.1.0.2/24"]);
    let agent = Agent::start(&node, &[]);
    let (code, ctype, body) = http_get(node.name(), "/healthz").unwrap();
    assert_eq!((code, body.as_str()), (200, "ok\n"), "{}", agent.log());
    assert!(ctype.starts_with("text/plain"), "{ctype}");
    let (code, _, body) = http_get(node.name(), "/readyz").unwrap();
    assert_eq!((code, body.as_str()), (200, "ready\n"), "{}", agent.log());
    assert!(
        agent
            .scrape()
            .get("vethfp_agent_reconciles_total", &[])
            .unwrap()
            >= 1.0
    );

    std::fs::remove_dir_all(node.bpffs_dir()).unwrap();
    let (code, _, body) = http_get(node.name(), "/readyz").unwrap();
    assert_eq!((code, body.as_str()), (200, "ready\n"), "{}", agent.log());
    assert_eq!(
        agent.scrape().get("vethfp_agent_state_reopened_total", &[]),
        Some(1.0),
        "the readiness check re-opened the removed state"
    );
    let (st, log) = agent.terminate();
    assert!(st.success(), "{log}");
}
