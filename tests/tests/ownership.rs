//! Ownership (issue 15): a state directory, the agent on it and the CNI plugin touch only
//! what that state created and recorded. Each test is a private node namespace with its own
//! bpffs; the numbers are the cases of issue 15.

use std::{
    path::Path,
    process::Output,
    time::{Duration, Instant},
};

use vethfp_tests::{
    Agent, Netns, Node, check_fails, check_ok,
    cni::{CniEnv, CniNet, container_id, container_ns, with_prev},
    ping,
};

/// Polls until `cond` holds (deadline 30 s: a bound for a broken implementation, not a
/// timing requirement).
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

fn with_dir(node: &Node, dir: &Path, args: &[&str]) -> Output {
    let d = dir.to_str().unwrap();
    let mut a = vec!["--bpffs", d];
    a.extend_from_slice(args);
    node.vethfp_raw(&a)
}

fn host_mac(ns: &Netns, ifname: &str) -> String {
    ns.link(ifname).unwrap_or_else(|| panic!("{ifname} exists"))["address"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Case 1: two state dirs on one node. Endpoints made under B are never touched through A
/// (agent, `pair add` of the same name, `pair del`), and a veth someone else made with
/// vethfp's MAC prefix is not "removed" by `pair del`.
#[test]
fn another_state_dirs_endpoints_and_foreign_veths_are_never_touched() {
    let node = Node::new();
    let dir_b = node.bpffs.mount_point().join("other");
    // Forwarding is off in the node: B's traffic can only be carried by the unconditional
    // fast path (the harness sets it for the node's own state, not for B's).
    check_ok(
        &with_dir(&node, &dir_b, &["admission", "always"]),
        &["admission always under B"],
    );
    let cb = Netns::new("vfc");
    cb.quiet_ipv6();
    check_ok(
        &with_dir(
            &node,
            &dir_b,
            &[
                "pair",
                "add",
                "vfb1",
                "--netns",
                cb.name(),
                "--addr",
                "10.1.0.9/24",
            ],
        ),
        &["pair add vfb1 under B"],
    );
    let ca = node.add_container("vfa1", &["10.1.0.2/24"]);
    let mac_b = host_mac(&node.ns, "vfb1");

    // An agent on A reconciles (at start) and must leave B's live endpoint alone.
    let agent = Agent::start(&node, &["--reconcile-interval", "3600"]);
    // The same name through A: refused, B's endpoint stays.
    let msg = node.fails(&[
        "pair",
        "add",
        "vfb1",
        "--netns",
        ca.name(),
        "--addr",
        "10.1.0.8/24",
    ]);
    assert!(msg.contains("vfb1") && msg.contains("exists"), "{msg}");
    // `pair del` through A of B's endpoint: refused, naming why.
    let msg = node.fails(&["pair", "del", "vfb1"]);
    assert!(
        msg.contains("vfb1") && msg.contains("not made by this state"),
        "{msg}"
    );
    drop(agent);
    assert_eq!(
        host_mac(&node.ns, "vfb1"),
        mac_b,
        "B's host end is the same link"
    );
    let list_b = check_ok(
        &with_dir(&node, &dir_b, &["pair", "list", "--json"]),
        &["pair list under B"],
    );
    assert!(list_b.contains("vfb1"), "{list_b}");
    assert!(
        cb.link("eth0").is_some(),
        "B's container end is still there"
    );
    // B's endpoint still carries traffic (node forwarding is off: only vethfp can).
    let cb2 = Netns::new("vfc");
    cb2.quiet_ipv6();
    check_ok(
        &with_dir(
            &node,
            &dir_b,
            &[
                "pair",
                "add",
                "vfb2",
                "--netns",
                cb2.name(),
                "--addr",
                "10.1.0.10/24",
            ],
        ),
        &["pair add vfb2 under B"],
    );
    cb2.wait_addrs_ready(Duration::from_secs(10));
    assert!(
        ping(cb2.name(), "10.1.0.9".parse().unwrap()),
        "B's endpoints still work"
    );

    // A veth with vethfp's MAC prefix made by someone else.
    node.ns.ip(&[
        "link",
        "add",
        "vfx1",
        "address",
        "02:76:66:00:00:99",
        "type",
        "veth",
        "peer",
        "name",
        "vfx1p",
    ]);
    let msg = node.fails(&["pair", "del", "vfx1"]);
    assert!(msg.contains("not made by this state"), "{msg}");
    assert!(
        node.ns.link("vfx1").is_some(),
        "the foreign veth is untouched"
    );
    // A's own endpoint is still removable.
    node.ok(&["pair", "del", "vfa1"]);
    assert!(node.ns.link("vfa1").is_none());
}

/// Case 4: CNI DEL of another container ID with the same CNI_NETNS and CNI_IFNAME succeeds
/// (spec: DEL of something unknown) but leaves the live container's endpoint and lease.
#[test]
fn cni_del_of_another_container_id_leaves_the_live_endpoint() {
    let net = CniNet::new();
    let ns = container_ns();
    let (a, b) = (container_id(), container_id());
    let conf = net.conf("1.0.0");
    let add = CniEnv::full("ADD", &a, ns.name(), "eth0");
    let r = net.vethfp(&add, &conf).ok("ADD ctr-A");
    let host_if = r["interfaces"][0]["name"].as_str().unwrap().to_string();
    let leases = net.allocated();
    assert_eq!(leases.len(), 2, "{leases:?}");

    let del_b = CniEnv::full("DEL", &b, ns.name(), "eth0");
    net.vethfp(&del_b, &conf).ok("DEL ctr-B");
    assert!(
        net.node.list_entry(&host_if).is_some(),
        "ctr-A still registered"
    );
    assert!(
        net.node.ns.link(&host_if).is_some(),
        "ctr-A's host end exists"
    );
    assert!(ns.link("eth0").is_some(), "ctr-A's eth0 exists");
    assert_eq!(net.allocated(), leases, "ctr-A's lease is kept");

    // DEL with the right ID but another ifname does not match either.
    let del_if = CniEnv::full("DEL", &a, ns.name(), "eth1");
    net.vethfp(&del_if, &conf).ok("DEL ctr-A eth1");
    assert!(net.node.list_entry(&host_if).is_some());

    // The real DEL removes it and its lease.
    net.vethfp(&add.clone().with_command("DEL"), &with_prev(&conf, &r))
        .ok("DEL ctr-A");
    assert!(net.node.list_entry(&host_if).is_none());
    assert!(net.node.ns.link(&host_if).is_none());
    assert!(net.allocated().is_empty(), "{:?}", net.allocated());
}

/// Case 6: a HOST_IF (or --ifname) with '%' is refused before anything is created.
#[test]
fn names_with_percent_are_refused_before_anything_is_made() {
    let node = Node::new();
    let c = Netns::new("vfc");
    let before = node.ns.link_names();
    for args in [
        &[
            "pair",
            "add",
            "vf%d",
            "--netns",
            c.name(),
            "--addr",
            "10.1.0.2/24",
        ][..],
        &[
            "pair",
            "add",
            "vfp1",
            "--netns",
            c.name(),
            "--ifname",
            "eth%d",
            "--addr",
            "10.1.0.2/24",
        ],
    ] {
        let out = node.vethfp(args);
        assert!(!out.status.success(), "{args:?} must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains('%'),
            "{args:?}: the refusal names the '%': {err}"
        );
        assert_eq!(
            node.ns.link_names(),
            before,
            "{args:?}: nothing left in the node"
        );
        assert_eq!(c.link_names(), ["lo".to_string()].into(), "{args:?}");
    }
}

/// Case 7: `--netns` naming the node's own namespace is refused; nothing changes there.
#[test]
fn the_nodes_own_namespace_is_refused_as_container() {
    let node = Node::new();
    node.ok(&["pair", "list"]); // the state exists: the snapshot compares pins too
    let base = node.snapshot();
    let nodens = format!("/run/netns/{}", node.name());
    for netns in [
        "/proc/self/ns/net",
        "/proc/thread-self/ns/net",
        nodens.as_str(),
    ] {
        let msg = node.fails(&[
            "pair",
            "add",
            "vfn1",
            "--netns",
            netns,
            "--addr",
            "10.1.0.2/24",
        ]);
        assert!(msg.contains("own network namespace"), "{netns}: {msg}");
        assert_eq!(node.snapshot(), base, "{netns}: the node is unchanged");
    }
}

/// Case 8: one state used from two node namespaces. While its owner lives, the other
/// namespace is refused (reads and writes); once every recorded interface is gone, the
/// first write from the new node clears the stale state, says so, and proceeds.
#[test]
fn state_is_bound_to_its_node_namespace() {
    let a = Node::new();
    let b = Node::with_x(2);
    let dir = a.bpffs_dir();
    let ca = a.add_container("vfo1", &["10.1.0.2/24"]);
    let cb = Netns::new("vfc");
    cb.quiet_ipv6();
    let add_b = [
        "pair",
        "add",
        "vfo2",
        "--netns",
        cb.name(),
        "--addr",
        "10.2.0.2/24",
    ];
    for args in [&add_b[..], &["pair", "list"], &["pair", "del", "vfo1"]] {
        let msg = check_fails(&with_dir(&b, &dir, args), args);
        assert!(
            msg.contains("another live network namespace") && msg.contains("--bpffs"),
            "{args:?}: {msg}"
        );
    }
    assert_eq!(b.ns.link_names(), ["lo".to_string()].into());
    assert_eq!(a.list_json().len(), 1, "A's state unchanged");
    assert!(ping(ca.name(), a.v4()), "A's endpoint works");

    // The owner goes away (a deleted node): its veths go with its namespace.
    let Node {
        ns: a_ns,
        bpffs: a_fs,
        ..
    } = a;
    drop(a_ns);
    poll("A's host end to vanish with its namespace", || {
        ca.ns.link("eth0").is_none()
    });
    let out = with_dir(&b, &dir, &add_b);
    let stdout = check_ok(&out, &add_b);
    assert!(stdout.contains("vfo2"), "{stdout}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cleared") && err.contains("stale"),
        "says so: {err}"
    );
    let list = check_ok(
        &with_dir(&b, &dir, &["pair", "list", "--json"]),
        &["pair list"],
    );
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["host_if"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["vfo2"], "only the new node's endpoint");
    check_ok(&with_dir(&b, &dir, &["pair", "del", "vfo2"]), &["pair del"]);
    drop(a_fs);
}

/// Case 8, second half: `bridge accelerate` never reports success for work it skipped; it
/// names each skipped port and why, and fails when it accelerated none of those it should.
#[test]
fn bridge_accelerate_names_skipped_ports() {
    let node = Node::new();
    let c = Netns::new("vfc");
    node.ns.ip(&["link", "add", "vfbr0", "type", "bridge"]);
    node.ns.ip(&["link", "set", "vfbr0", "up"]);
    node.ns.add_veth("vfbp1", "eth0", &c);
    node.ns
        .ip(&["link", "set", "vfbp1", "master", "vfbr0", "up"]);
    c.ip(&["link", "set", "eth0", "up"]);
    let out = node.ok(&["bridge", "accelerate", "vfbr0"]);
    assert!(
        out.contains("1 port(s) accelerated") && out.contains("vfbp1"),
        "{out}"
    );
    // Again: nothing to do, and it says which port was skipped and why.
    let again = node.vethfp(&["bridge", "accelerate", "vfbr0"]);
    let stdout = check_ok(&again, &["bridge accelerate again"]);
    assert!(stdout.contains("0 port(s) accelerated"), "{stdout}");
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("skipped port vfbp1") && err.contains("already accelerated"),
        "{err}"
    );
    node.ok(&["bridge", "release", "vfbr0"]);
}
