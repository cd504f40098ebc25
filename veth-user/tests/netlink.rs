//! Integration tests for `vethfp::netlink` (run as root).
//!
//! Every test creates its own network namespaces (`nlt-<pid>-<n>`) and runs the code under
//! test on a thread that entered the test's "node" namespace, so nothing touches the
//! machine's own namespace. A guard deletes the namespaces, also when a test panics.

use std::{
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;
use vethfp::{
    Cidr, Mac, desired,
    sys::netlink::{
        Apply, At, Link, NetlinkError, Netns, Place, VethRequest, apply, create_veth,
        current_netns_ino, delete_link, in_netns, link_by_index, link_by_name, links, routes_via,
    },
};

/// An endpoint's container side as `pair add` creates it.
fn configure_container(
    ns: &Netns,
    ifname: &str,
    addrs: &[Cidr],
    gateway_mac: Mac,
) -> Result<(), NetlinkError> {
    let want = desired::container_side(addrs, gateway_mac);
    apply(At::Container(ns, ifname), &want, Apply::Create, None).map(drop)
}

/// An endpoint's node side as `pair add` creates it.
fn configure_node(
    host_ifindex: u32,
    addrs: &[Cidr],
    container_mac: Mac,
) -> Result<(), NetlinkError> {
    let want = desired::node_side(addrs, container_mac);
    apply(At::Node(host_ifindex), &want, Apply::Create, None).map(drop)
}

// ---------------------------------------------------------------------------------------------
// Harness.

/// Runs `ip ARGS`, panics with its stderr on failure, returns stdout.
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 from ip")
}

fn ip_json(args: &[&str]) -> Vec<Value> {
    let mut a = vec!["-j"];
    a.extend_from_slice(args);
    let s = ip(&a);
    if s.trim().is_empty() {
        return vec![];
    }
    serde_json::from_str::<Value>(&s)
        .unwrap_or_else(|e| panic!("ip {}: bad JSON ({e}): {s}", a.join(" ")))
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A named network namespace that is deleted when dropped (also on panic).
struct TestNs {
    name: String,
}

impl TestNs {
    fn new() -> TestNs {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "nlt-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        TestNs { name }
    }
    fn open(&self) -> Netns {
        Netns::open(&self.name).expect("open test netns")
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A node namespace and a container namespace.
struct Env {
    node: TestNs,
    ctr: TestNs,
    node_ns: Netns,
    ctr_ns: Netns,
}

impl Env {
    fn new() -> Env {
        let node = TestNs::new();
        let ctr = TestNs::new();
        let (node_ns, ctr_ns) = (node.open(), ctr.open());
        Env {
            node,
            ctr,
            node_ns,
            ctr_ns,
        }
    }

    /// Runs `f` on a thread inside the node namespace; panics propagate.
    fn in_node<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.node_ns, || Ok(f())).expect("entering the node namespace")
    }

    /// Runs `f` on a thread inside the container namespace; panics propagate.
    fn in_ctr<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.ctr_ns, || Ok(f())).expect("entering the container namespace")
    }
}

fn mac(s: &str) -> Mac {
    s.parse().unwrap()
}

fn cidrs(v: &[&str]) -> Vec<Cidr> {
    v.iter().map(|s| s.parse().unwrap()).collect()
}

fn veth<'a>(host: &'a str, peer: &'a str, ns: &'a Netns, mtu: Option<u32>) -> VethRequest<'a> {
    VethRequest {
        host_name: host,
        host_mac: Mac::random(),
        peer_name: peer,
        peer_mac: Mac::random(),
        peer_netns: ns,
        mtu,
    }
}

/// TCP handshake from inside `ns` to `dst`: proves packets flow both ways.
fn tcp_connect_from(ns: &Netns, dst: SocketAddr) -> std::io::Result<()> {
    in_netns(ns, || {
        Ok(TcpStream::connect_timeout(&dst, Duration::from_secs(2)))
    })
    .unwrap()?;
    Ok(())
}

fn sysctl(path: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/{path}"))
        .unwrap()
        .trim()
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn netns_open_and_in_netns() {
    let t = TestNs::new();
    let ns = t.open();
    assert_eq!(ns.spec(), t.name);
    let st = nix::sys::stat::stat(format!("/run/netns/{}", t.name).as_str()).unwrap();
    assert_eq!(ns.ino(), st.st_ino);

    let mine = current_netns_ino().unwrap();
    assert_ne!(mine, ns.ino());
    let inside = in_netns(&ns, current_netns_ino).unwrap();
    assert_eq!(inside, ns.ino());
    assert_eq!(
        current_netns_ino().unwrap(),
        mine,
        "caller's thread must not move"
    );

    // A path works too, and names the same namespace.
    let by_path = Netns::open(&format!("/run/netns/{}", t.name)).unwrap();
    assert_eq!(by_path.ino(), ns.ino());
    let own = Netns::open("/proc/thread-self/ns/net").unwrap();
    assert_eq!(own.ino(), mine);

    // Errors travel out of in_netns; panics are propagated to the caller.
    let e = in_netns(&ns, || link_by_name("bad/name")).unwrap_err();
    assert!(matches!(e, NetlinkError::InvalidIfName(_)), "{e}");
    let p = std::panic::catch_unwind(|| in_netns(&ns, || -> Result<(), _> { panic!("boom") }));
    assert!(p.is_err());
}

#[test]
fn netns_open_errors() {
    let missing = format!("nlt-{}-missing", std::process::id());
    let e = Netns::open(&missing).unwrap_err();
    assert!(
        matches!(&e, NetlinkError::NoSuchNetns { spec, path } if *spec == missing && *path == format!("/run/netns/{missing}")),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(msg.contains(&format!("ip netns add {missing}")), "{msg}");

    let e = Netns::open("/proc/999999999/ns/net").unwrap_err();
    assert!(matches!(e, NetlinkError::NoSuchNetns { .. }), "{e:?}");
    assert!(e.to_string().contains("process"), "{e}");

    // Namespace files of another type and plain files are refused.
    for not_net in ["/proc/self/ns/uts", "/proc/self/status", "/proc", "..", ""] {
        let e = Netns::open(not_net).unwrap_err();
        assert!(
            matches!(e, NetlinkError::NotANetns { .. }),
            "{not_net}: {e:?}"
        );
    }
}

#[test]
fn namespace_guard_cleans_up_on_panic() {
    let mut name = String::new();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let t = TestNs::new();
        name = t.name.clone();
        panic!("test failure");
    }));
    assert!(r.is_err());
    assert!(!name.is_empty());
    assert!(!std::path::Path::new(&format!("/run/netns/{name}")).exists());
}

#[test]
fn veth_pair_end_to_end() {
    let env = Env::new();
    let (n, c) = (&env.node.name, &env.ctr.name);
    let host_mac = mac("02:aa:00:00:00:01");
    let peer_mac = mac("02:bb:00:00:00:02");
    let addrs = cidrs(&["10.77.0.2/24", "fd00:77::2/64"]);
    // The node's own addresses the container will talk to (on lo: local delivery only).
    ip(&["-n", n, "link", "set", "lo", "up"]);
    ip(&["-n", n, "addr", "add", "10.250.0.1/32", "dev", "lo"]);
    ip(&["-n", n, "addr", "add", "fd00:250::1/128", "dev", "lo"]);

    env.in_node(|| {
        assert_eq!(current_netns_ino().unwrap(), env.node_ns.ino());
        // Forwarding stays off: the node only delivers locally.
        assert_eq!(sysctl("net/ipv4/ip_forward"), "0");
        assert_eq!(sysctl("net/ipv6/conf/all/forwarding"), "0");

        let req = VethRequest {
            host_name: "vfa",
            host_mac,
            peer_name: "eth0",
            peer_mac,
            peer_netns: &env.ctr_ns,
            mtu: Some(1400),
        };
        let t0 = Instant::now();
        let hidx = create_veth(&req).unwrap();
        let t_create = t0.elapsed();

        // Host end: in the node, right MAC/MTU, a veth whose peer is elsewhere.
        let host = link_by_name("vfa").unwrap().expect("host end in the node");
        assert_eq!(host.ifindex, hidx);
        assert_eq!(host.mac, Some(host_mac));
        assert_eq!(host.mtu, 1400);
        assert_eq!(host.kind.as_deref(), Some("veth"));
        assert!(!host.up);
        assert!(host.link_netnsid.is_some(), "{host:?}");
        assert_eq!(link_by_index(hidx).unwrap().unwrap().name, "vfa");
        assert!(
            link_by_name("eth0").unwrap().is_none(),
            "peer must not be in the node"
        );
        let all: Vec<Link> = links().unwrap();
        assert!(all.iter().any(|l| l.name == "vfa" && l.ifindex == hidx));
        assert!(all.iter().any(|l| l.name == "lo"));

        // Peer: created inside the container under its final name.
        let peer = env
            .in_ctr(|| link_by_name("eth0").unwrap())
            .expect("peer in the container");
        assert_eq!(peer.mac, Some(peer_mac));
        assert_eq!(peer.mtu, 1400);
        assert_eq!(host.peer_ifindex, Some(peer.ifindex));
        assert!(env.in_ctr(|| link_by_name("vfa").unwrap()).is_none());

        let t1 = Instant::now();
        configure_container(&env.ctr_ns, "eth0", &addrs, host_mac).unwrap();
        let t_ctr = t1.elapsed();
        let t2 = Instant::now();
        configure_node(hidx, &addrs, peer_mac).unwrap();
        let t_node = t2.elapsed();
        eprintln!(
            "timing: create_veth {t_create:?}, configure_container {t_ctr:?}, \
             configure_node {t_node:?}"
        );

        assert!(link_by_index(hidx).unwrap().unwrap().up);
        let mut via: Vec<(IpAddr, u8)> = routes_via(hidx).unwrap();
        via.retain(|(a, _)| !matches!(a, IpAddr::V6(v6) if v6.is_unicast_link_local()));
        via.sort();
        assert_eq!(
            via,
            vec![
                ("10.77.0.2".parse().unwrap(), 32),
                ("fd00:77::2".parse().unwrap(), 128)
            ]
        );

        // Real traffic, both families: a TCP handshake from the container to the node.
        for local in ["10.250.0.1:0", "[fd00:250::1]:0"] {
            let l = TcpListener::bind(local).unwrap();
            let dst = l.local_addr().unwrap();
            tcp_connect_from(&env.ctr_ns, dst)
                .unwrap_or_else(|e| panic!("container -> node {dst}: {e}"));
        }
    });

    // Container side as `ip` sees it.
    let link = &ip_json(&["-n", c, "addr", "show", "dev", "eth0"])[0];
    assert!(link["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    let ai = link["addr_info"].as_array().unwrap();
    let find = |local: &str| {
        ai.iter()
            .find(|a| a["local"] == local)
            .unwrap_or_else(|| panic!("{local} missing: {ai:?}"))
    };
    let a4 = find("10.77.0.2");
    assert_eq!(a4["prefixlen"], 24);
    assert_eq!(a4["noprefixroute"], true);
    let a6 = find("fd00:77::2");
    assert_eq!(a6["prefixlen"], 64);
    assert_eq!(a6["noprefixroute"], true);
    assert_eq!(a6["nodad"], true);
    assert!(a6.get("tentative").is_none(), "{a6}");

    let r4 = ip_json(&["-n", c, "-4", "route", "show"]);
    assert_eq!(r4.len(), 2, "{r4:?}");
    let def = r4
        .iter()
        .find(|r| r["dst"] == "default")
        .expect("v4 default");
    assert_eq!(def["gateway"], "169.254.1.1");
    assert_eq!(def["dev"], "eth0");
    let gw = r4
        .iter()
        .find(|r| r["dst"] == "169.254.1.1")
        .expect("gw route");
    assert_eq!(gw["dev"], "eth0");
    assert_eq!(gw["scope"], "link");
    assert_eq!(gw["protocol"], "247");

    let r6 = ip_json(&["-n", c, "-6", "route", "show"]);
    let def6 = r6
        .iter()
        .find(|r| r["dst"] == "default")
        .expect("v6 default");
    assert_eq!(def6["gateway"], "fe80::1");
    assert_eq!(def6["dev"], "eth0");
    assert!(
        !r6.iter().any(|r| r["dst"] == "fd00:77::/64"),
        "no prefix route: {r6:?}"
    );

    let neigh = ip_json(&["-n", c, "neigh", "show", "dev", "eth0", "nud", "permanent"]);
    for gw in ["169.254.1.1", "fe80::1"] {
        let e = neigh
            .iter()
            .find(|e| e["dst"] == gw)
            .unwrap_or_else(|| panic!("{gw}: {neigh:?}"));
        assert_eq!(e["lladdr"], host_mac.to_string());
    }

    // Node side.
    let r4 = ip_json(&["-n", n, "-4", "route", "show", "dev", "vfa"]);
    assert_eq!(r4.len(), 1, "{r4:?}");
    assert_eq!(r4[0]["dst"], "10.77.0.2");
    assert_eq!(r4[0]["scope"], "link");
    assert_eq!(r4[0]["protocol"], "247");
    let r6 = ip_json(&["-n", n, "-6", "route", "show", "dev", "vfa", "proto", "247"]);
    assert_eq!(r6.len(), 1, "{r6:?}");
    assert_eq!(r6[0]["dst"], "fd00:77::2");
    let neigh = ip_json(&["-n", n, "neigh", "show", "dev", "vfa", "nud", "permanent"]);
    for a in ["10.77.0.2", "fd00:77::2"] {
        let e = neigh
            .iter()
            .find(|e| e["dst"] == a)
            .unwrap_or_else(|| panic!("{a}: {neigh:?}"));
        assert_eq!(e["lladdr"], peer_mac.to_string());
    }

    // Deleting the host end removes both ends and the node routes; a second delete is a no-op.
    env.in_node(|| {
        let hidx = link_by_name("vfa").unwrap().unwrap().ifindex;
        assert!(delete_link(hidx).unwrap());
        assert!(link_by_name("vfa").unwrap().is_none());
        assert!(link_by_index(hidx).unwrap().is_none());
        assert!(env.in_ctr(|| link_by_name("eth0").unwrap()).is_none());
        assert!(routes_via(hidx).unwrap().is_empty());
        assert!(!delete_link(hidx).unwrap());
    });
}

#[test]
fn v4_only_and_v6_only_containers() {
    let env = Env::new();
    let c2 = TestNs::new();
    let c2_ns = c2.open();
    env.in_node(|| {
        let r = veth("vf4", "eth0", &env.ctr_ns, None);
        let h4 = create_veth(&r).unwrap();
        let only4 = cidrs(&["10.9.0.2/32"]);
        configure_container(&env.ctr_ns, "eth0", &only4, r.host_mac).unwrap();
        configure_node(h4, &only4, r.peer_mac).unwrap();
        assert_eq!(link_by_index(h4).unwrap().unwrap().mtu, 1500);

        let r = veth("vf6", "net1", &c2_ns, Some(9000));
        let h6 = create_veth(&r).unwrap();
        let only6 = cidrs(&["fd00:9::2/128"]);
        configure_container(&c2_ns, "net1", &only6, r.host_mac).unwrap();
        configure_node(h6, &only6, r.peer_mac).unwrap();
        assert_eq!(link_by_index(h6).unwrap().unwrap().mtu, 9000);
    });
    let c = &env.ctr.name;
    assert!(ip_json(&["-n", c, "-6", "route", "show", "default"]).is_empty());
    assert_eq!(
        ip_json(&["-n", c, "-4", "route", "show", "default"]).len(),
        1
    );
    assert!(ip_json(&["-n", &c2.name, "-4", "route", "show"]).is_empty());
    assert_eq!(
        ip_json(&["-n", &c2.name, "-6", "route", "show", "default"]).len(),
        1
    );
}

#[test]
fn errors_are_precise() {
    let env = Env::new();
    let (n, c) = (&env.node.name, &env.ctr.name);
    // Occupy a host name in the node and a container name in the container.
    ip(&[
        "-n", n, "link", "add", "vfdup", "type", "veth", "peer", "name", "vfdup-p",
    ]);
    ip(&[
        "-n", c, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-p",
    ]);

    env.in_node(|| {
        let e = create_veth(&veth("vfdup", "eth1", &env.ctr_ns, None)).unwrap_err();
        match &e {
            NetlinkError::Exists { name, place } => {
                assert_eq!(name, "vfdup");
                assert_eq!(*place, Place::Node);
            }
            e => panic!("{e:?}"),
        }
        assert_eq!(
            e.to_string(),
            "interface 'vfdup' already exists in the node: choose another name or \
             `vethfp pair del vfdup`"
        );

        let e = create_veth(&veth("vfnew", "eth0", &env.ctr_ns, None)).unwrap_err();
        match &e {
            NetlinkError::Exists { name, place } => {
                assert_eq!(name, "eth0");
                assert_eq!(*place, Place::Netns(env.ctr.name.clone()));
            }
            e => panic!("{e:?}"),
        }
        assert!(e.to_string().contains(&env.ctr.name), "{e}");
        // Nothing was left behind by the failed attempts.
        assert!(link_by_name("vfnew").unwrap().is_none());
        assert!(env.in_ctr(|| link_by_name("eth1").unwrap()).is_none());

        for bad in ["", "0123456789abcdef", "a/b", "a b"] {
            let e = create_veth(&veth(bad, "eth1", &env.ctr_ns, None)).unwrap_err();
            assert!(matches!(e, NetlinkError::InvalidIfName(_)), "{bad}: {e:?}");
            let e = create_veth(&veth("vfok", bad, &env.ctr_ns, None)).unwrap_err();
            assert!(matches!(e, NetlinkError::InvalidIfName(_)), "{bad}: {e:?}");
        }
        for bad in [0, 67, 65536] {
            let e = create_veth(&veth("vfok", "eth1", &env.ctr_ns, Some(bad))).unwrap_err();
            assert!(matches!(e, NetlinkError::InvalidMtu(m) if m == bad), "{e:?}");
        }
        let mut r = veth("vfok", "eth1", &env.ctr_ns, None);
        r.peer_mac = Mac([0x01, 0, 0, 0, 0, 1]);
        assert!(matches!(
            create_veth(&r).unwrap_err(),
            NetlinkError::InvalidMac(_)
        ));
        assert!(link_by_name("vfok").unwrap().is_none());

        let e =
            configure_container(&env.ctr_ns, "nosuch0", &cidrs(&["10.0.0.2/24"]), Mac::random())
                .unwrap_err();
        assert!(
            matches!(&e, NetlinkError::NoSuchLink { name, place: Place::Netns(_) } if name == "nosuch0"),
            "{e:?}"
        );

        // The same address on two endpoints: the node route collides.
        let a = cidrs(&["10.5.0.2/24"]);
        let r1 = veth("vfr1", "eth1", &env.ctr_ns, None);
        let h1 = create_veth(&r1).unwrap();
        configure_node(h1, &a, r1.peer_mac).unwrap();
        let r2 = veth("vfr2", "eth2", &env.ctr_ns, None);
        let h2 = create_veth(&r2).unwrap();
        let e = configure_node(h2, &a, r2.peer_mac).unwrap_err();
        assert!(
            matches!(&e, NetlinkError::RouteExists { dst } if dst == "10.5.0.2/32"),
            "{e:?}"
        );

        assert!(!delete_link(999_999).unwrap());
        assert!(link_by_index(999_999).unwrap().is_none());
    });
}

#[test]
fn works_when_called_from_async_code() {
    let env = Env::new();
    env.in_node(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let r = veth("vfasync", "eth0", &env.ctr_ns, None);
            let idx = create_veth(&r).unwrap();
            assert_eq!(link_by_name("vfasync").unwrap().unwrap().ifindex, idx);
            // The helper thread worked in the node namespace, not the machine's.
            let node = ip_json(&["-n", &env.node.name, "link", "show", "vfasync"]);
            assert_eq!(node[0]["ifindex"], idx);
            assert!(delete_link(idx).unwrap());
        });
    });
}
