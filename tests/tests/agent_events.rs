//! The agent cleans up after interfaces that leave the node behind its back: an external
//! `ip link del` of a host end, and a container namespace that disappears (taking its veth
//! with it). The periodic reconciliation is pushed out of the way (`--reconcile-interval
//! 3600`), so only the netlink event path can do it; the tests poll for the result.
//!
//! Also: what an agent finds at start (vanished endpoints, a clsact qdisc deleted behind
//! vethfp's back, stray pins) is
//! reconciled before it serves, and CLI writes running concurrently with an agent that
//! reconciles all the time leave a consistent state.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use vethfp_tests::{Agent, Container, Node, ping};

/// Polls until `cond` holds (deadline 30 s: a bound for a broken agent, not a timing
/// requirement); returns how long it took.
fn poll(what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    start.elapsed()
}

fn link_pins(node: &Node) -> BTreeSet<String> {
    node.bpffs
        .files()
        .into_iter()
        .filter(|f| f.starts_with("vethfp/links/"))
        .collect()
}

fn pins_of(node: &Node, ifindex: u64) -> Vec<String> {
    link_pins(node)
        .into_iter()
        .filter(|p| p.ends_with(&format!("-{ifindex}")))
        .collect()
}

/// State of `host_if` is gone: not in `pair list`, not in `stats`, no link pin.
fn gone(node: &Node, host_if: &str, ifindex: u64) -> bool {
    node.list_entry(host_if).is_none()
        && !node.all_stats().contains_key(host_if)
        && pins_of(node, ifindex).is_empty()
}

fn ifindex(node: &Node, c: &Container) -> u64 {
    node.stats(&c.host_if).host_ifindex
}

#[test]
fn external_link_del_and_vanished_netns_are_cleaned_up() {
    let node = Node::new();
    let c1 = node.add_container("ve1", &["10.1.0.2/24", "fd00:1::2/64"]);
    let c2 = node.add_container("ve2", &["10.1.0.3/24"]);
    let c3 = node.add_container_with("ve3", &["10.1.0.4/24"], &["--mode", "xdp"]);
    let (i1, i3) = (ifindex(&node, &c1), ifindex(&node, &c3));
    assert_eq!(
        pins_of(&node, i3).len(),
        1,
        "the xdp link (tc hooks are filters)"
    );
    assert!(node.has_filters("ve3"));
    let agent = Agent::start(&node, &["--reconcile-interval", "3600"]);

    // Someone else deletes a host end.
    node.ns.ip(&["link", "del", "ve1"]);
    let t1 = poll("ve1's state to be removed", || gone(&node, "ve1", i1));

    // A container's namespace disappears, and its veth with it.
    drop(c3);
    let t3 = poll("ve3's state to be removed", || gone(&node, "ve3", i3));
    eprintln!("observed cleanup: ip link del {t1:?}, netns gone {t3:?} (incl. polling)");

    // The rest is untouched and works; nothing accumulates.
    let list = node.list_json();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["host_if"], "ve2");
    assert!(link_pins(&node).is_empty(), "{:?}", link_pins(&node));
    assert!(node.has_filters("ve2"));
    assert!(ping(node.name(), c2.v4()));
    // The addresses are free again.
    let c4 = node.add_container("ve4", &["10.1.0.2/24"]);
    assert!(ping(c4.name(), c2.v4()));

    let m = agent.scrape();
    assert_eq!(
        m.get("vethfp_agent_endpoints_removed_total", &[]),
        Some(2.0)
    );
    assert_eq!(m.get("vethfp_agent_reconciles_total", &[]), Some(1.0));
    assert_eq!(m.get("vethfp_endpoints", &[]), Some(2.0));
    let (st, log) = agent.terminate();
    assert!(st.success(), "{log}");
    for name in ["ve1", "ve3"] {
        let line = log
            .lines()
            .find(|l| l.contains("endpoint removed") && l.contains(&format!("host_if={name}")))
            .unwrap_or_else(|| panic!("no event cleanup logged for {name}:\n{log}"));
        eprintln!("agent: {line}");
    }
}

#[test]
fn start_reconciles_what_happened_while_no_agent_ran() {
    let node = Node::new();
    let c1 = node.add_container_with("vr1", &["10.1.0.2/24"], &["--mode", "xdp"]);
    let c2 = node.add_container("vr2", &["10.1.0.3/24"]);
    let c3 = node.add_container("vr3", &["10.1.0.4/24"]);
    let (i2, i3) = (ifindex(&node, &c2), ifindex(&node, &c3));
    let dir = node.bpffs_dir();

    // While no agent runs: a host end vanishes, someone deletes the clsact qdisc of
    // another (and our filters with it), and a stray pin is left by some crash.
    node.ns.ip(&["link", "del", "vr3"]);
    node.ns.tc(&["qdisc", "del", "dev", "vr2", "clsact"]);
    assert_eq!(node.our_filters("vr2"), (None, None));
    let i1 = ifindex(&node, &c1);
    let link: aya::programs::links::FdLink =
        aya::programs::links::PinnedLink::from_pin(dir.join(format!("links/xdp-{i1}")))
            .expect("open pin")
            .into();
    link.pin(dir.join("links/xdp-999999")).expect("stray pin");
    // Without the ingress program, c2's traffic goes the kernel's way (forwarding is off
    // in the node, so it does not arrive).
    assert!(!ping(c2.name(), c1.v4()));

    let agent = Agent::start(&node, &["--reconcile-interval", "3600"]);
    assert!(gone(&node, "vr3", i3));
    assert_eq!(
        node.our_filters("vr2"),
        (Some("vfp_tc_ingress".into()), Some("vfp_tc_egress".into())),
        "filters re-added"
    );
    assert!(pins_of(&node, i2).is_empty(), "{:?}", link_pins(&node));
    assert_eq!(
        link_pins(&node),
        [format!("vethfp/links/xdp-{i1}")].into(),
        "stray pin pruned"
    );
    // The fast path is back: forwarding is still off in the node, so only it delivers.
    assert!(ping(c2.name(), c1.v4()));
    let (st, log) = agent.terminate();
    assert!(st.success(), "{log}");
    assert!(log.contains("re-attached missing link"), "{log}");
    assert!(
        log.contains("removed endpoint: host interface is gone"),
        "{log}"
    );
}

/// A filter or the clsact qdisc deleted under a running agent is restored from the tc
/// notification (the periodic pass is an hour away: only the notification can bring it).
#[test]
fn deleted_filters_come_back_on_the_tc_notification() {
    let node = Node::new();
    let c1 = node.add_container("vt1", &["10.1.0.2/24"]);
    let c2 = node.add_container("vt2", &["10.1.0.3/24"]);
    let agent = Agent::start(&node, &["--reconcile-interval", "3600"]);
    let passes = |a: &Agent| {
        a.scrape()
            .get("vethfp_agent_reconciles_total", &[])
            .unwrap_or(0.0)
    };
    let hooks = |a: &Agent| {
        a.scrape()
            .get("vethfp_agent_hook_checks_total", &[])
            .unwrap_or(0.0)
    };
    assert_eq!(passes(&agent), 1.0, "only the start pass so far");
    assert_eq!(
        hooks(&agent),
        2.0,
        "the start pass looks at every endpoint's hooks"
    );

    // One filter of ours, by its place.
    node.ns.tc(&[
        "filter", "del", "dev", "vt1", "egress", "protocol", "all", "prio", "65520", "handle",
        "0x766670", "bpf",
    ]);
    assert_eq!(node.our_filters("vt1").1, None, "really deleted");
    let t1 = poll("vt1's egress filter back", || node.has_filters("vt1"));
    // The whole clsact qdisc of the other endpoint.
    node.ns.tc(&["qdisc", "del", "dev", "vt2", "clsact"]);
    let t2 = poll("vt2's filters back", || node.has_filters("vt2"));
    eprintln!("restored after: filter del {t1:?}, qdisc del {t2:?} (incl. polling)");
    assert!(ping(c1.name(), c2.v4()));
    let m = agent.scrape();
    assert_eq!(
        m.get("vethfp_agent_links_reattached_total", &[]),
        Some(3.0),
        "one filter, then two"
    );
    assert!(passes(&agent) >= 3.0, "a pass per notification burst");
    let (st, log) = agent.terminate();
    assert!(st.success(), "{log}");
    assert!(log.contains("re-attached missing link"), "{log}");
}

#[test]
fn cli_writes_while_the_agent_reconciles_stay_consistent() {
    let node = Node::new();
    let base = node.add_container("vk0", &["10.1.0.2/24"]);
    // Reconcile as often as it can, to collide with the CLI.
    let agent = Agent::start(&node, &["--reconcile-interval", "0.1"]);
    let node_ref = &node;
    std::thread::scope(|s| {
        for t in 0..2u8 {
            s.spawn(move || {
                for round in 0..4u8 {
                    let name = format!("vk{t}{round}");
                    let addr = format!("10.1.{}.{}/24", 10 + t, 10 + round);
                    let c = node_ref.add_container(&name, &[&addr]);
                    assert!(ping(c.name(), "10.1.0.2".parse().unwrap()));
                    if round % 2 == 0 {
                        node_ref.ok(&["pair", "del", &name]);
                    }
                    // Odd rounds: the container namespace goes away with `c`; the agent
                    // cleans up.
                }
            });
        }
    });
    poll("only vk0 left", || {
        node.list_json().len() == 1 && link_pins(&node).is_empty()
    });
    let list = node.list_json();
    assert_eq!(list[0]["host_if"], "vk0");
    let links: Vec<String> = node
        .ns
        .link_names()
        .into_iter()
        .filter(|l| l.starts_with("vk"))
        .collect();
    assert_eq!(links, ["vk0"]);
    assert!(ping(node.name(), base.v4()));
    let (st, log) = agent.terminate();
    assert!(st.success(), "{log}");
    assert!(!log.contains("WARN") && !log.contains("ERROR"), "{log}");
}

/// Bridge `vbr0` in the node (made the way Docker does, with `ip`).
fn bridge(node: &Node) {
    node.ns.ip(&["link", "add", "vbr0", "type", "bridge"]);
    node.ns.ip(&["link", "set", "vbr0", "up"]);
}

/// A container on `vbr0`: port `vbp{i}` in the node, `eth0` with `addr` in its namespace.
fn plug(node: &Node, i: u32, addr: &str) -> (String, vethfp_tests::Netns) {
    let ns = vethfp_tests::Netns::new("vfc");
    let port = format!("vbp{i}");
    node.ns.add_veth(&port, "eth0", &ns);
    node.ns.ip(&["link", "set", &port, "master", "vbr0", "up"]);
    ns.ip(&["addr", "add", addr, "dev", "eth0"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    (port, ns)
}

#[test]
fn bridge_ports_keep_their_l2_program() {
    use vethfp::datapath::{Datapath, Hook, Program};
    let node = Node::new();
    bridge(&node);
    let ports = [plug(&node, 1, "10.2.0.2/24"), plug(&node, 2, "10.2.0.3/24")];
    node.ok(&["bridge", "accelerate", "vbr0", "--force"]);
    let mut dp = Datapath::open(&node.bpffs_dir()).unwrap();
    let l2 = dp.program_id(Program::L2Ingress).unwrap();
    let ifx: Vec<u32> = ports
        .iter()
        .map(|(p, _)| node.stats(p).host_ifindex as u32)
        .collect();
    // The ingress filters, asked inside the node's namespace.
    let states = || {
        let (dir, ifx) = (node.bpffs_dir(), ifx.clone());
        vethfp_tests::run_in_netns(node.name(), move || {
            let dp = Datapath::open(&dir).unwrap();
            ifx.iter()
                .map(|i| dp.link_state(Hook::TcIngress, *i).unwrap().unwrap())
                .collect::<Vec<_>>()
        })
    };
    let before = states();
    assert!(before.iter().all(|s| s.prog_id == l2));

    let agent = Agent::start(&node, &[]);
    let after = states();
    assert_eq!(after, before, "the agent changed the bridge ports' links");
    assert!(ping(ports[0].1.name(), "10.2.0.3".parse().unwrap()));
    // A port deleted behind vethfp's back is cleaned up like any endpoint.
    node.ns.ip(&["link", "del", "vbp2"]);
    poll("vbp2's state to be removed", || {
        gone(&node, "vbp2", ifx[1] as u64)
    });
    let (st, log) = agent.terminate();
    assert!(st.success(), "{log}");
    assert!(!log.contains("replaced program"), "{log}");
}

/// The agent follows an accelerated bridge: a container plugged in later gets the fast path
/// on the next reconciliation, and traffic to it is carried by it.
#[test]
fn agent_accelerates_ports_added_to_a_bridge() {
    let node = Node::new();
    bridge(&node);
    let (_p1, c1) = plug(&node, 1, "10.2.0.2/24");
    let (_p2, _c2) = plug(&node, 2, "10.2.0.3/24");
    node.ok(&["bridge", "accelerate", "vbr0"]);
    assert_eq!(node.list_json().len(), 2);

    let agent = Agent::start(&node, &["--reconcile-interval", "1"]);
    let (p3, _c3) = plug(&node, 3, "10.2.0.4/24");
    // Accelerated per `bridge status`: registered and published (`pair list` shows an endpoint
    // from the first step of registering on).
    poll("the agent to accelerate the new port", || {
        let st: serde_json::Value =
            serde_json::from_str(&node.ok(&["bridge", "status", "vbr0", "--json"])).unwrap();
        st["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["port"] == p3.as_str() && p["accelerated"] == true)
    });
    let e = node.list_entry(&p3).unwrap();
    assert_eq!(e["mode"], "bridge", "{e}");
    assert_eq!(e["network"], "vbr0", "{e}");
    let before = node.stats(&p3);
    assert!(ping(c1.name(), "10.2.0.4".parse().unwrap()));
    let after = node.stats(&p3);
    let d = after.since(&before);
    assert!(
        d.to("fast").packets >= 1,
        "the new port's traffic took the fast path: {d:?}"
    );
    let (st, log) = agent.terminate();
    assert!(st.success(), "{log}");
}

/// A periodic pass with an accelerated bridge whose ports are all accelerated looks without
/// the state lock (it used to take it every pass to compare the ports), and a port plugged in
/// later is still picked up by a pass.
#[test]
fn idle_passes_with_an_accelerated_bridge_take_no_lock() {
    use vethfp_tests::{Metrics, agent::http_get};
    const PASSES: &str = "vethfp_agent_reconcile_pass_seconds_count";
    let node = Node::new();
    bridge(&node);
    let _ports = [plug(&node, 1, "10.2.0.2/24"), plug(&node, 2, "10.2.0.3/24")];
    node.ok(&["bridge", "accelerate", "vbr0"]);
    let agent = Agent::start(&node, &["--reconcile-interval", "0.2"]);
    let scrape = || {
        let (status, _, body) = http_get(node.name(), "/metrics").expect("GET /metrics");
        assert_eq!(status, 200);
        Metrics::parse(&body)
    };
    let passes = |m: &Metrics| m.get(PASSES, &[]).unwrap_or(0.0);
    // Lock waits of the agent's own writes: every locked step logs one line at debug level.
    let locked = || agent.log().matches("state lock: waited").count();
    let p0 = passes(&scrape());
    poll("two passes after start", || passes(&scrape()) >= p0 + 2.0);
    let (p1, l1) = (passes(&scrape()), locked());
    poll("five more passes", || passes(&scrape()) >= p1 + 5.0);
    assert_eq!(
        locked(),
        l1,
        "idle passes took the state lock; log:\n{}",
        agent.log()
    );
    let (p3, _c3) = plug(&node, 3, "10.2.0.4/24");
    poll("the agent to accelerate the new port", || {
        node.list_entry(&p3).is_some()
    });
    let (st, log) = agent.terminate();
    assert!(st.success(), "{log}");
}
