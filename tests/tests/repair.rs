//! Repair (issue 15): the agent never acts on a stale state, and it restores every part of a
//! live endpoint that went missing (address map entries, node routes and neighbours).
//! The numbers are the cases of issue 15.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use vethfp::datapath::Datapath;
use vethfp_tests::{Agent, Netns, Node, ping, udp_transfer, vethfp_bin};

fn poll(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn metric(agent: &Agent, name: &str, labels: &[(&str, &str)]) -> f64 {
    agent.scrape().get(name, labels).unwrap_or(0.0)
}

/// Case 2: the state dir is wiped under a running agent and made again by new `pair add`s.
/// The agent must notice, re-open it, never delete the new endpoints, and report them.
#[test]
fn agent_reopens_a_replaced_state_dir_and_never_deletes_new_endpoints() {
    let node = Node::new();
    let _c0 = node.add_container("vs0", &["10.1.0.2/24"]);
    let agent = Agent::start(&node, &["--reconcile-interval", "0.2"]);
    std::fs::remove_dir_all(node.bpffs_dir()).expect("wipe the state dir");
    // The new state starts under the default admission (netfilter); forwarding is off here,
    // so the proof below needs the unconditional fast path, as the harness node had.
    node.ok(&["admission", "always"]);
    let c1 = node.add_container("vs1", &["10.1.0.3/24"]);
    let c2 = node.add_container("vs2", &["10.1.0.4/24"]);
    // Two periodic passes after the new state exists.
    let base = metric(&agent, "vethfp_agent_reconciles_total", &[]);
    poll("two more reconciliation passes", || {
        metric(&agent, "vethfp_agent_reconciles_total", &[]) >= base + 2.0
    });
    for c in [&c1, &c2] {
        assert!(
            node.ns.link(&c.host_if).is_some(),
            "{} still exists",
            c.host_if
        );
        assert!(
            node.list_entry(&c.host_if).is_some(),
            "{} listed",
            c.host_if
        );
    }
    // Forwarding is off in the node: only the fast path delivers between containers.
    let got = udp_transfer(c1.name(), None, c2.name(), c2.v4(), 2000, 64);
    assert_eq!(got, 2000, "every datagram arrives");
    let m = agent.scrape();
    assert_eq!(
        m.get("vethfp_endpoints", &[]),
        Some(2.0),
        "metrics do not lie"
    );
    assert!(
        m.get("vethfp_agent_state_reopened_total", &[])
            .unwrap_or(0.0)
            >= 1.0,
        "the reopen is counted"
    );
}

/// Case 3: an endpoint that lost its address map entries (what a SIGKILLed `pair add` or
/// `pair del` left) is repaired by the agent: each address published with the right target.
#[test]
fn agent_republishes_missing_address_map_entries() {
    let node = Node::new();
    let c1 = node.add_container("vm1", &["10.1.0.2/24", "fd00:1::2/64"]);
    let c2 = node.add_container("vm2", &["10.1.0.3/24", "fd00:1::3/64"]);
    let (a4, a6): (Ipv4Addr, Ipv6Addr) =
        ("10.1.0.2".parse().unwrap(), "fd00:1::2".parse().unwrap());
    let want = {
        let mut dp = Datapath::open(&node.bpffs_dir()).unwrap();
        let t = dp.ep4().unwrap().get(&a4.octets(), 0).unwrap();
        dp.ep4().unwrap().remove(&a4.octets()).unwrap();
        dp.ep6().unwrap().remove(&a6.octets()).unwrap();
        t
    };
    // Broken now: with forwarding off, nothing reaches vm1.
    assert!(!ping(c2.name(), c1.v4()), "the entry really is missing");
    let agent = Agent::start(&node, &["--reconcile-interval", "3600"]);
    let mut dp = Datapath::open(&node.bpffs_dir()).unwrap();
    assert_eq!(dp.ep4().unwrap().get(&a4.octets(), 0).unwrap(), want);
    assert_eq!(dp.ep6().unwrap().get(&a6.octets(), 0).unwrap(), want);
    let m = agent.scrape();
    assert_eq!(
        m.get("vethfp_agent_repairs_total", &[("part", "addr_v4")]),
        Some(1.0)
    );
    assert_eq!(
        m.get("vethfp_agent_repairs_total", &[("part", "addr_v6")]),
        Some(1.0)
    );
    assert!(ping(c2.name(), c1.v4()) && ping(c2.name(), c1.v6()));
}

/// Runs `vethfp --bpffs DIR ARGS` in the node and SIGKILLs it after `delay`.
fn kill_after(node: &Node, args: &[&str], delay: Duration) {
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", node.name()))
        .arg(vethfp_bin())
        .arg("--bpffs")
        .arg(node.bpffs_dir())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vethfp");
    std::thread::sleep(delay);
    let _ = child.kill();
    child.wait().unwrap();
}

/// (v4, v6) of vd1/vk1's addresses published in the address maps.
fn published(node: &Node) -> (bool, bool) {
    let mut dp = Datapath::open(&node.bpffs_dir()).unwrap();
    let v4 = dp.ep4().unwrap().get(&[10, 1, 0, 2], 0).is_ok();
    let v6 = dp
        .ep6()
        .unwrap()
        .get(&"fd00:1::2".parse::<Ipv6Addr>().unwrap().octets(), 0)
        .is_ok();
    (v4, v6)
}

/// Case 3: `pair add` killed at points spread over its run; after the next write (the
/// journal completes or rolls it back) an endpoint is either listed and complete — link and
/// both addresses published — or gone without a trace.
#[test]
fn pair_add_killed_at_random_points_is_complete_or_gone() {
    let node = Node::new();
    let c = Netns::new("vfc");
    let add = [
        "pair",
        "add",
        "vk1",
        "--netns",
        c.name(),
        "--addr",
        "10.1.0.2/24",
        "--addr",
        "fd00:1::2/64",
    ];
    node.ok(&add);
    node.ok(&["pair", "del", "vk1"]);
    let t = Instant::now();
    node.ok(&add);
    let full = t.elapsed();
    node.ok(&["pair", "del", "vk1"]);
    let mut half_made = Vec::new();
    for i in 0..12u32 {
        kill_after(&node, &add, full * (i + 1) / 10);
        let _ = node.vethfp(&["uplink", "detach", "nonexistent0"]);
        let listed = node.list_entry("vk1").is_some();
        let link = node.ns.link("vk1").is_some();
        let p = published(&node);
        if listed != link || p != (listed, listed) || (!listed && c.link("eth0").is_some()) {
            half_made.push(format!(
                "kill {i}: listed={listed} link={link} published={p:?}"
            ));
        }
        if listed {
            node.ok(&["pair", "del", "vk1"]);
        } else if link {
            node.ns.ip(&["link", "del", "vk1"]);
        }
    }
    assert!(half_made.is_empty(), "{half_made:?}");
}

/// Case 3, the real thing: `pair del` killed at points spread over its run; the next write
/// completes it (the journal), and nothing is left half-made.
#[test]
fn pair_del_killed_at_random_points_is_completed() {
    let node = Node::new();
    let keep = node.add_container("vd0", &["10.1.0.9/24"]);
    let c = Netns::new("vfc");
    let add = [
        "pair",
        "add",
        "vd1",
        "--netns",
        c.name(),
        "--addr",
        "10.1.0.2/24",
        "--addr",
        "fd00:1::2/64",
    ];
    node.ok(&add);
    let t = Instant::now();
    node.ok(&["pair", "del", "vd1"]);
    let full = t.elapsed();
    let mut half_made = Vec::new();
    for i in 0..12u32 {
        node.ok(&add);
        kill_after(&node, &["pair", "del", "vd1"], full * (i + 1) / 10);
        // The next write (any, even one that fails) completes what the journal says.
        let _ = node.vethfp(&["uplink", "detach", "nonexistent0"]);
        let listed = node.list_entry("vd1").is_some();
        let link = node.ns.link("vd1").is_some();
        let published = published(&node);
        if listed != link || published != (listed, listed) {
            half_made.push(format!(
                "kill {i}: listed={listed} link={link} published={published:?}"
            ));
        }
        if listed {
            node.ok(&["pair", "del", "vd1"]);
        }
        assert!(node.ns.link("vd1").is_none(), "kill {i}: vd1 gone");
    }
    assert!(half_made.is_empty(), "{half_made:?}");
    assert!(
        ping(keep.name(), node.v4()),
        "the other endpoint is untouched"
    );
}

fn has_route_and_neigh(node: &Node, host_if: &str, addr: &str) -> bool {
    let family = if addr.contains(':') { "-6" } else { "-4" };
    let routes = node.ns.ip(&[family, "route", "show", "dev", host_if]);
    let neigh = node
        .ns
        .ip(&["neigh", "show", "dev", host_if, "nud", "permanent"]);
    routes
        .lines()
        .any(|l| l.starts_with(&format!("{addr} ")) || l == addr)
        && neigh.contains(addr)
}

/// Case 5: `ip link set X down; up` drops the node's /32 route and permanent neighbour; the
/// agent restores them on the link event, and a reconciliation does too.
#[test]
fn bounced_host_end_gets_its_routes_and_neighbours_back() {
    let node = Node::new();
    let c = node.add_container("vb1", &["10.1.0.2/24", "fd00:1::2/64"]);
    assert!(has_route_and_neigh(&node, "vb1", "10.1.0.2"));
    let agent = Agent::start(&node, &["--reconcile-interval", "3600"]);
    node.ns.ip(&["link", "set", "vb1", "down"]);
    assert!(
        !has_route_and_neigh(&node, "vb1", "10.1.0.2"),
        "down flushed them"
    );
    node.ns.ip(&["link", "set", "vb1", "up"]);
    let start = Instant::now();
    while !(has_route_and_neigh(&node, "vb1", "10.1.0.2")
        && has_route_and_neigh(&node, "vb1", "fd00:1::2"))
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "routes/neighbours not restored after the link came up: routes {} {} neigh {}; agent log:\n{}",
            node.ns.ip(&["route", "show", "dev", "vb1"]),
            node.ns.ip(&["-6", "route", "show", "dev", "vb1"]),
            node.ns.ip(&["neigh", "show", "dev", "vb1"]),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(ping(c.name(), node.v4()), "node <-> container works again");
    assert!(metric(&agent, "vethfp_agent_repairs_total", &[("part", "route")]) >= 1.0);
    assert!(
        metric(
            &agent,
            "vethfp_agent_repairs_total",
            &[("part", "neighbour")]
        ) >= 1.0
    );
    agent.kill();

    // Without an agent running: the next agent's first reconciliation restores them.
    node.ns.ip(&["link", "set", "vb1", "down"]);
    node.ns.ip(&["link", "set", "vb1", "up"]);
    assert!(!has_route_and_neigh(&node, "vb1", "10.1.0.2"));
    let _agent = Agent::start(&node, &["--reconcile-interval", "3600"]);
    assert!(has_route_and_neigh(&node, "vb1", "10.1.0.2"));
    assert!(has_route_and_neigh(&node, "vb1", "fd00:1::2"));
    assert!(ping(c.name(), node.v4()));
}

fn container_has(c: &vethfp_tests::Container, args: &[&str], needle: &str) -> bool {
    c.ns.ip(args).lines().any(|l| l.starts_with(needle))
}

/// The container side (issue 15, "container config"): someone deletes a container's default
/// routes and its gateway neighbour; the agent restores them (and counts it), traffic flows
/// again, and what the user added in the container stays.
#[test]
fn agent_restores_a_containers_default_routes_and_gateway_neighbour() {
    let node = Node::new();
    let c1 = node.add_container("vr1", &["10.1.0.2/24", "fd00:1::2/64"]);
    let c2 = node.add_container("vr2", &["10.1.0.3/24", "fd00:1::3/64"]);
    let eth = c1.ifname.as_str();
    assert!(ping(c1.name(), c2.v4()), "works before");
    let agent = Agent::start(&node, &["--reconcile-interval", "0.2"]);
    // Something the user added in the container: must survive the repair.
    c1.ns.ip(&["addr", "add", "192.0.2.9/32", "dev", eth]);
    c1.ns.ip(&["route", "del", "default"]);
    c1.ns.ip(&["-6", "route", "del", "default"]);
    c1.ns.ip(&["neigh", "del", "169.254.1.1", "dev", eth]);
    let restored = || {
        container_has(
            &c1,
            &["-4", "route", "show", "dev", eth],
            "default via 169.254.1.1",
        ) && container_has(
            &c1,
            &["-6", "route", "show", "dev", eth],
            "default via fe80::1",
        ) && container_has(
            &c1,
            &["neigh", "show", "dev", eth, "nud", "permanent"],
            "169.254.1.1 ",
        )
    };
    let start = Instant::now();
    while !restored() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "container config not restored: routes {} {} neigh {}; agent log:\n{}",
            c1.ns.ip(&["route", "show"]),
            c1.ns.ip(&["-6", "route", "show"]),
            c1.ns.ip(&["neigh", "show"]),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    poll("the container repairs counted", || {
        metric(
            &agent,
            "vethfp_agent_repairs_total",
            &[("part", "container")],
        ) >= 3.0
    });
    assert!(
        ping(c1.name(), c2.v4()),
        "container -> container (v4) again"
    );
    assert!(
        ping(c1.name(), c2.v6()),
        "container -> container (v6) again"
    );
    assert!(
        c1.ns
            .ip(&["addr", "show", "dev", eth])
            .contains("192.0.2.9/32"),
        "the user's address is kept"
    );
}
