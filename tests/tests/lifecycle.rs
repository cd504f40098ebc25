//! `pair add` / `pair list` / `pair del` against docs/CLI.md, checked from the kernel's side
//! (`ip` in the node and in the containers) and on the bpffs.

use std::collections::BTreeSet;

use serde_json::Value;
use vethfp_tests::{Bpffs, Count, Netns, Node, check_ok, ping, udp_frame_len, udp_transfer};

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

fn addr_set(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("addrs not an array: {v}"))
        .iter()
        .map(|a| s(a).to_string())
        .collect()
}

/// Addresses on `dev` as `ip -j addr` shows them, as "addr/prefix".
fn ip_addrs(ns: &Netns, dev: &str) -> BTreeSet<String> {
    let v = ns.ip_json(&["addr", "show", "dev", dev]);
    v[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["scope"] == "global")
        .map(|a| format!("{}/{}", s(&a["local"]), a["prefixlen"]))
        .collect()
}

#[test]
fn list_shows_every_endpoint_as_the_kernel_sees_it() {
    let node = Node::new();
    let c1 = node.add_container("vc1", &["10.1.0.2/24", "fd00:1::2/64"]);
    let c2 = node.add_container("vc2", &["10.1.0.3/24"]);
    let list = node.list_json();
    assert_eq!(list.len(), 2, "{list:?}");
    for c in [&c1, &c2] {
        let e = node.list_entry(&c.host_if).expect("listed");
        let host = node
            .ns
            .link(&c.host_if)
            .expect("host end exists in the node");
        let peer = c.ns.link("eth0").expect("eth0 in the container");
        assert_eq!(e["host_ifindex"], host["ifindex"], "{e}");
        assert_eq!(s(&e["host_mac"]), s(&host["address"]), "{e}");
        assert_eq!(s(&e["netns"]), c.name(), "{e}");
        assert_eq!(s(&e["ifname"]), "eth0", "{e}");
        assert_eq!(s(&e["container_mac"]), s(&peer["address"]), "{e}");
        assert_eq!(e["mtu"], 1500, "{e}");
        assert_eq!(peer["mtu"], 1500);
        assert_eq!(s(&e["mode"]), "tc", "{e}");
        assert_eq!(s(&e["network"]), "default", "{e}");
        assert_eq!(e["network_id"], 0, "{e}");
        assert_eq!(s(&e["spoof"]), "enforce", "{e}");
        assert_eq!(e["adopted"], false, "{e}");
        let want: BTreeSet<String> = c.addrs.iter().cloned().collect();
        assert_eq!(addr_set(&e["addrs"]), want, "{e}");
    }
    // stats lists the same endpoints, with the same ifindexes, all counters present.
    let stats = node.all_stats();
    assert_eq!(stats.keys().cloned().collect::<Vec<_>>(), ["vc1", "vc2"]);
    for (host_if, st) in &stats {
        let e = node.list_entry(host_if).unwrap();
        assert_eq!(Some(st.host_ifindex), e["host_ifindex"].as_u64());
    }
}

#[test]
fn routed_mode_configuration() {
    let node = Node::new();
    let c = node.add_container("vc1", &["10.1.0.2/24", "fd00:1::2/64"]);
    let e = node.list_entry("vc1").unwrap();
    let host_mac = s(&e["host_mac"]).to_string();
    let c_mac = s(&e["container_mac"]).to_string();

    // Container: addresses with their prefix, but no prefix route; link-local gateways with
    // permanent neighbours for the host end's MAC; default routes through them.
    let want: BTreeSet<String> = ["10.1.0.2/24", "fd00:1::2/64"].map(String::from).into();
    assert_eq!(ip_addrs(&c.ns, "eth0"), want);
    let r4 = c.ns.ip(&["-4", "route", "show"]);
    assert!(
        !r4.contains("10.1.0.0/24"),
        "prefix route in the container: {r4}"
    );
    let r6 = c.ns.ip(&["-6", "route", "show"]);
    assert!(
        !r6.contains("fd00:1::/64"),
        "prefix route in the container: {r6}"
    );
    let d4 = c.ns.ip_json(&["-4", "route", "show", "default"]);
    assert_eq!(s(&d4[0]["gateway"]), "169.254.1.1", "{d4}");
    assert_eq!(s(&d4[0]["dev"]), "eth0", "{d4}");
    let d6 = c.ns.ip_json(&["-6", "route", "show", "default"]);
    assert_eq!(s(&d6[0]["gateway"]), "fe80::1", "{d6}");
    assert_eq!(s(&d6[0]["dev"]), "eth0", "{d6}");
    let neigh = c.ns.ip_json(&["neigh", "show", "nud", "permanent"]);
    for gw in ["169.254.1.1", "fe80::1"] {
        let n = neigh
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["dst"] == gw)
            .unwrap_or_else(|| panic!("no permanent neighbour {gw} in the container: {neigh}"));
        assert_eq!(s(&n["lladdr"]), host_mac, "{n}");
        assert_eq!(s(&n["dev"]), "eth0", "{n}");
    }

    // Node: a host route per container address via the host end, permanent neighbours.
    let h4 = node.ns.ip_json(&["-4", "route", "show", "10.1.0.2/32"]);
    assert_eq!(s(&h4[0]["dev"]), "vc1", "{h4}");
    let h6 = node.ns.ip_json(&["-6", "route", "show", "fd00:1::2/128"]);
    assert_eq!(s(&h6[0]["dev"]), "vc1", "{h6}");
    let neigh = node
        .ns
        .ip_json(&["neigh", "show", "nud", "permanent", "dev", "vc1"]);
    for a in ["10.1.0.2", "fd00:1::2"] {
        let n = neigh
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["dst"] == a)
            .unwrap_or_else(|| panic!("no permanent neighbour {a} on vc1: {neigh}"));
        assert_eq!(s(&n["lladdr"]), c_mac, "{n}");
    }
    // Both ends up.
    for (ns, dev) in [(&node.ns, "vc1"), (&c.ns, "eth0")] {
        let l = ns.link(dev).unwrap();
        let flags: Vec<&str> = l["flags"].as_array().unwrap().iter().map(s).collect();
        assert!(
            flags.contains(&"UP") && flags.contains(&"LOWER_UP"),
            "{dev}: {l}"
        );
    }
}

#[test]
fn add_honours_mac_mtu_ifname() {
    let node = Node::new();
    let c = node.add_container_with(
        "vc1",
        &["10.1.0.2/24", "fd00:1::2/64"],
        &[
            "--mac",
            "02:aa:bb:cc:dd:01",
            "--mtu",
            "1400",
            "--ifname",
            "net1",
        ],
    );
    let v = c.ns.ip_json(&["link", "show"]);
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|l| s(&l["ifname"]))
        .collect();
    assert!(!names.contains(&"eth0"), "{names:?}");
    let l = c.ns.link("net1").expect("net1 in the container");
    assert_eq!(s(&l["address"]), "02:aa:bb:cc:dd:01", "{l}");
    assert_eq!(l["mtu"], 1400, "{l}");
    let e = node.list_entry("vc1").unwrap();
    assert_eq!(s(&e["ifname"]), "net1", "{e}");
    assert_eq!(s(&e["container_mac"]), "02:aa:bb:cc:dd:01", "{e}");
    assert_eq!(e["mtu"], 1400, "{e}");
    let want: BTreeSet<String> = ["10.1.0.2/24", "fd00:1::2/64"].map(String::from).into();
    assert_eq!(ip_addrs(&c.ns, "net1"), want);
    // And it carries traffic.
    assert!(ping(node.name(), c.v4()));
    assert!(ping(c.name(), node.v6()));
}

#[test]
fn del_leaves_nothing_behind() {
    let node = Node::new();
    let c1 = node.add_container("vc1", &["10.1.0.2/24", "fd00:1::2/64"]);
    let before = node.snapshot();
    let c2 = node.add_container("vc2", &["10.1.0.3/24", "fd00:1::3/64"]);
    let with = node.snapshot();
    assert!(with.links.contains("vc2"));
    // The fast path is two cls_bpf filters on the host end (no pin needed: they live with
    // the device), running this state's programs.
    assert_eq!(
        node.our_filters("vc2"),
        (Some("vfp_tc_ingress".into()), Some("vfp_tc_egress".into()))
    );
    let new_pins: Vec<&String> = with.pins.difference(&before.pins).collect();
    assert!(ping(c1.name(), c2.v4()));

    node.ok(&["pair", "del", "vc2"]);
    let after = node.snapshot();
    assert!(
        !after.links.contains("vc2"),
        "host end left: {:?}",
        after.links
    );
    assert_eq!(
        c2.ns.link_names().into_iter().collect::<Vec<_>>(),
        ["lo"],
        "container end left"
    );
    assert!(
        !after.routes4.contains("vc2"),
        "v4 route left: {}",
        after.routes4
    );
    assert!(
        !after.routes6.contains("vc2"),
        "v6 route left: {}",
        after.routes6
    );
    assert!(!after.routes4.contains("10.1.0.3"), "{}", after.routes4);
    assert!(!after.routes6.contains("fd00:1::3"), "{}", after.routes6);
    assert!(node.list_entry("vc2").is_none());
    assert!(!node.all_stats().contains_key("vc2"));
    for p in &new_pins {
        assert!(!after.pins.contains(*p), "pin {p} left behind");
    }
    // Everything is exactly as before the add.
    assert_eq!(after, before);

    // The other endpoint is untouched and still fast.
    assert!(ping(node.name(), c1.v4()));
    // The name and the addresses are free again: re-add, and the fast path reaches it.
    node.ok(&[
        "pair",
        "add",
        "vc2",
        "--netns",
        c2.name(),
        "--addr",
        "10.1.0.3/24",
        "--addr",
        "fd00:1::3/64",
    ]);
    c2.ns.wait_addrs_ready(std::time::Duration::from_secs(10));
    let b = node.stats("vc2");
    assert_eq!(
        udp_transfer(c1.name(), None, c2.name(), c2.v6(), 100, 100),
        100
    );
    let d = node.stats("vc2").since(&b);
    assert_eq!(
        d.to("fast"),
        Count::new(100, 100 * udp_frame_len(c2.v6(), 100))
    );
}

#[test]
fn bpffs_flag_accepted_after_subcommand() {
    let node = Node::new();
    let c = Netns::new("vfc");
    c.quiet_ipv6();
    let dir = node.bpffs_dir();
    let dir = dir.to_str().unwrap();
    check_ok(
        &node.vethfp_raw(&[
            "pair",
            "add",
            "vc1",
            "--netns",
            c.name(),
            "--addr",
            "10.1.0.2/24",
            "--bpffs",
            dir,
        ]),
        &["pair", "add", "...", "--bpffs", dir],
    );
    // Global flag before the subcommand sees the same state...
    assert!(node.list_entry("vc1").is_some());
    // ...and after it, for list and stats too.
    let out = check_ok(
        &node.vethfp_raw(&["pair", "list", "--json", "--bpffs", dir]),
        &["pair", "list", "--json", "--bpffs", dir],
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(s(&v[0]["host_if"]), "vc1");
    let out = check_ok(
        &node.vethfp_raw(&["stats", "--json", "--bpffs", dir]),
        &["stats", "--json", "--bpffs", dir],
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s(&v[0]["host_if"]), "vc1");
    // A different state dir really is different state.
    let other = Bpffs::new();
    let other_dir = other.state_dir();
    let out = check_ok(
        &node.vethfp_raw(&[
            "pair",
            "list",
            "--json",
            "--bpffs",
            other_dir.to_str().unwrap(),
        ]),
        &["pair", "list", "--json", "--bpffs", "OTHER"],
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v,
        Value::Array(vec![]),
        "fresh state dir should list nothing"
    );
    node.ok(&["pair", "del", "vc1", "--bpffs", dir]);
    assert!(node.list_json().is_empty());
}

#[test]
fn state_and_datapath_persist_across_processes() {
    let node = Node::new();
    let c1 = node.add_container("vc1", &["10.1.0.2/24", "fd00:1::2/64"]);
    let c2 = node.add_container("vc2", &["10.1.0.3/24", "fd00:1::3/64"]);
    // Every call above was its own process, now gone. A new one finds both endpoints...
    let list = node.list_json();
    let names: BTreeSet<&str> = list.iter().map(|e| s(&e["host_if"])).collect();
    assert_eq!(names, ["vc1", "vc2"].into());
    // ...and the datapath they attached works with no vethfp process alive, counted in maps
    // that a later process reads.
    let before = node.stats("vc1");
    assert_eq!(
        udp_transfer(c1.name(), None, c2.name(), c2.v4(), 200, 100),
        200
    );
    let d = node.stats("vc1").since(&before);
    assert_eq!(
        d.from("fast"),
        Count::new(200, 200 * udp_frame_len(c2.v4(), 100))
    );
}
