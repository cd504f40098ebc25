//! Bad input: exit 1, one line `vethfp: error: ...` on stderr, and nothing left behind —
//! node links, routes, neighbours, `pair list` and the bpffs exactly as before, the target
//! container untouched. Every node already has one endpoint (`vc0`), so there is state to
//! damage and the bpffs holds vethfp's maps before the failing call.

use vethfp_tests::{Container, Netns, Node, check_fails, ping};

struct Setup {
    node: Node,
    c0: Container,
    /// An empty container namespace the failing commands target.
    fresh: Netns,
}

fn setup() -> Setup {
    let node = Node::new();
    let c0 = node.add_container("vc0", &["10.1.0.2/24", "fd00:1::2/64"]);
    let fresh = Netns::new("vfc");
    Setup { node, c0, fresh }
}

impl Setup {
    /// Run a command that must fail; check that nothing changed; return the error line.
    fn refused(&self, args: &[&str]) -> String {
        let before = self.node.snapshot();
        let c0_links = self.c0.ns.link_names();
        let msg = self.node.fails(args);
        assert_eq!(
            self.node.snapshot(),
            before,
            "vethfp {args:?} changed the node"
        );
        assert_eq!(
            self.fresh.link_names().into_iter().collect::<Vec<_>>(),
            ["lo"],
            "vethfp {args:?} left something in the container"
        );
        assert_eq!(self.c0.ns.link_names(), c0_links);
        msg
    }

    fn add(&self, host_if: &str, extra: &[&str]) -> String {
        let mut a = vec!["pair", "add", host_if, "--netns", self.fresh.name()];
        a.extend_from_slice(extra);
        self.refused(&a)
    }

    /// The existing endpoint still works after the failure.
    fn c0_still_works(&self) {
        assert!(ping(self.node.name(), self.c0.v4()));
        assert!(self.node.list_entry("vc0").is_some());
    }
}

#[test]
fn host_name_longer_than_15_bytes() {
    let t = setup();
    let msg = t.add("vethfp0123456789", &["--addr", "10.1.0.9/24"]);
    assert!(
        msg.contains("vethfp0123456789"),
        "should name the bad value: {msg}"
    );
    t.c0_still_works();
}

#[test]
fn host_name_used_by_another_link() {
    let t = setup();
    t.node.ns.ip(&[
        "link", "add", "taken0", "type", "veth", "peer", "name", "taken1",
    ]);
    let before = t.node.ns.link("taken0").unwrap();
    let msg = t.add("taken0", &["--addr", "10.1.0.9/24"]);
    assert!(msg.contains("taken0"), "{msg}");
    assert_eq!(
        t.node.ns.link("taken0").unwrap(),
        before,
        "taken0 was modified"
    );
    t.c0_still_works();
}

#[test]
fn host_name_of_an_existing_endpoint() {
    let t = setup();
    let entry = t.node.list_entry("vc0").unwrap();
    t.add("vc0", &["--addr", "10.1.0.9/24"]);
    assert_eq!(t.node.list_entry("vc0").unwrap(), entry);
    t.c0_still_works();
}

#[test]
fn netns_that_does_not_exist() {
    let t = setup();
    let missing = format!("vfnone{}", std::process::id());
    assert!(!std::path::Path::new("/run/netns").join(&missing).exists());
    let msg = t.refused(&[
        "pair",
        "add",
        "vc9",
        "--netns",
        &missing,
        "--addr",
        "10.1.0.9/24",
    ]);
    assert!(msg.contains(&missing), "should name the netns: {msg}");
    t.refused(&[
        "pair",
        "add",
        "vc9",
        "--netns",
        "/proc/999999999/ns/net",
        "--addr",
        "10.1.0.9/24",
    ]);
    t.c0_still_works();
}

#[test]
fn malformed_cidr() {
    let t = setup();
    for bad in [
        "10.0.0.300/24",
        "10.0.0.1",
        "10.0.0.1/33",
        "fd00::zz/64",
        "fd00::9/129",
        "x",
    ] {
        let msg = t.add("vc9", &["--addr", bad]);
        assert!(msg.contains(bad), "should name the bad value {bad}: {msg}");
    }
    // A bad one after a good one: nothing of the good one stays either.
    t.add("vc9", &["--addr", "10.1.0.9/24", "--addr", "10.0.0.300/24"]);
    t.c0_still_works();
}

#[test]
fn malformed_mac() {
    let t = setup();
    for bad in [
        "02:aa:bb:cc:dd",
        "02:aa:bb:cc:dd:zz",
        "02:aa:bb:cc:dd:ee:ff",
        "nonsense",
    ] {
        let msg = t.add("vc9", &["--addr", "10.1.0.9/24", "--mac", bad]);
        assert!(msg.contains(bad), "should name the bad value {bad}: {msg}");
    }
    t.c0_still_works();
}

#[test]
fn address_another_endpoint_has() {
    let t = setup();
    for addrs in [
        &["--addr", "10.1.0.2/24"][..],
        &["--addr", "fd00:1::2/64"],
        &["--addr", "10.1.0.2/32"], // same address, other prefix: still taken
        &["--addr", "10.1.0.9/24", "--addr", "fd00:1::2/64"],
    ] {
        let msg = t.add("vc9", addrs);
        assert!(
            msg.contains("10.1.0.2") || msg.contains("fd00:1::2"),
            "{msg}"
        );
    }
    t.c0_still_works();
}

#[test]
fn container_ifname_already_taken() {
    // Fails only once the pair exists and its peer is in the container: a half-way failure
    // that must be rolled back.
    let t = setup();
    t.fresh.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
    ]);
    let before: Vec<String> = t.fresh.link_names().into_iter().collect();
    let snap = t.node.snapshot();
    let msg = t.node.fails(&[
        "pair",
        "add",
        "vc9",
        "--netns",
        t.fresh.name(),
        "--addr",
        "10.1.0.9/24",
    ]);
    eprintln!("error for a taken container ifname: {msg}");
    assert_eq!(t.node.snapshot(), snap, "node changed");
    assert_eq!(t.fresh.link_names().into_iter().collect::<Vec<_>>(), before);
    t.c0_still_works();
}

#[test]
fn mtu_out_of_range() {
    let t = setup();
    t.add("vc9", &["--addr", "10.1.0.9/24", "--mtu", "70000"]);
    t.add("vc9", &["--addr", "10.1.0.9/24", "--mtu", "10"]);
    t.c0_still_works();
}

#[test]
fn del_of_unknown_name() {
    let t = setup();
    let msg = t.refused(&["pair", "del", "vcnope"]);
    assert!(msg.contains("vcnope"), "{msg}");
    // A link that exists but is not a vethfp endpoint is not removed either.
    t.node.ns.ip(&[
        "link", "add", "taken0", "type", "veth", "peer", "name", "taken1",
    ]);
    t.refused(&["pair", "del", "taken0"]);
    assert!(t.node.ns.link("taken0").is_some());
    t.c0_still_works();
}

#[test]
fn not_running_as_root() {
    let t = setup();
    for args in [
        &["pair", "list"][..],
        &["stats"],
        &["pair", "del", "vc0"],
        &[
            "pair",
            "add",
            "vc9",
            "--netns",
            t.fresh.name(),
            "--addr",
            "10.1.0.9/24",
        ],
    ] {
        let before = t.node.snapshot();
        let out = t.node.vethfp_as(65534, args);
        let msg = check_fails(&out, args);
        assert!(
            msg.to_lowercase().contains("root"),
            "should mention root: {msg}"
        );
        assert_eq!(t.node.snapshot(), before);
    }
    t.c0_still_works();
}

#[test]
fn every_failure_exits_with_1() {
    // docs/CLI.md: "Failure: exit 1" — for bad arguments as for failures at run time.
    let t = setup();
    let fresh = t.fresh.name();
    for args in [
        &[
            "pair",
            "add",
            "vethfp0123456789",
            "--netns",
            fresh,
            "--addr",
            "10.1.0.9/24",
        ][..],
        &[
            "pair",
            "add",
            "vc9",
            "--netns",
            fresh,
            "--addr",
            "10.0.0.300/24",
        ],
        &[
            "pair",
            "add",
            "vc9",
            "--netns",
            fresh,
            "--addr",
            "10.1.0.9/24",
            "--mac",
            "zz",
        ],
        &[
            "pair",
            "add",
            "vc9",
            "--netns",
            fresh,
            "--addr",
            "10.1.0.2/24",
        ],
        &["pair", "del", "vcnope"],
    ] {
        let out = t.node.vethfp(args);
        check_fails(&out, args);
        assert_eq!(out.status.code(), Some(1), "vethfp {args:?}");
    }
}
