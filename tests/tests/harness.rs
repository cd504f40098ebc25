//! The harness tested on its own, without vethfp: namespaces joined by a plain veth made with
//! `ip`, real traffic counted exactly, guards that clean up even when a test panics.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use vethfp_tests::{
    Bpffs, Netns, Node, is_bpffs, ping, ping_from, run_in_netns, tcp_echo, udp_frame_len, udp_recv,
    udp_send, udp_send_to, udp_transfer, unique_name,
};

/// Two namespaces joined by a veth `va` <-> `vb`, v4 and v6 on both ends.
fn pair() -> (Netns, Netns) {
    let a = Netns::new("vfa");
    let b = Netns::new("vfb");
    a.quiet_ipv6();
    b.quiet_ipv6();
    a.add_veth("va", "vb", &b);
    a.ip(&["addr", "add", "10.9.0.1/24", "dev", "va"]);
    a.ip(&["addr", "add", "fd09::1/64", "dev", "va"]);
    b.ip(&["addr", "add", "10.9.0.2/24", "dev", "vb"]);
    b.ip(&["addr", "add", "fd09::2/64", "dev", "vb"]);
    a.ip(&["link", "set", "va", "up"]);
    b.ip(&["link", "set", "vb", "up"]);
    a.wait_addrs_ready(Duration::from_secs(10));
    b.wait_addrs_ready(Duration::from_secs(10));
    (a, b)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

#[test]
fn unique_names_fit_interface_names() {
    let a = unique_name("vfn");
    let b = unique_name("vfn");
    assert_ne!(a, b);
    assert!(a.len() <= 15 && b.len() <= 15, "{a} {b}");
    assert!(a.contains(&std::process::id().to_string()));
}

#[test]
fn netns_guard_removes_namespace_on_drop_and_on_panic() {
    let ns = Netns::new("vfg");
    let name = ns.name().to_string();
    assert!(exists(&name));
    assert_eq!(ns.link_names().into_iter().collect::<Vec<_>>(), ["lo"]);
    drop(ns);
    assert!(!exists(&name), "{name} left behind");

    let r = std::panic::catch_unwind(|| {
        let ns = Netns::new("vfg");
        std::panic::panic_any(ns.name().to_string());
    });
    let name = *r.unwrap_err().downcast::<String>().unwrap();
    assert!(!exists(&name), "{name} left behind after a panic");
}

#[test]
fn bpffs_guard_mounts_and_unmounts() {
    let fs = Bpffs::new();
    let mp = fs.mount_point().to_path_buf();
    assert!(is_bpffs(&mp));
    // A fresh bpffs may hold the kernel's preloaded iterators (maps.debug, progs.debug).
    let mut files = fs.files();
    assert!(!files.contains("vethfp"), "{files:?}");
    std::fs::create_dir(fs.state_dir()).unwrap();
    files.insert("vethfp".into());
    assert_eq!(fs.files(), files);
    drop(fs);
    assert!(!mp.exists(), "{mp:?} left behind");
}

#[test]
fn sysctl_in_namespace_leaves_machine_alone() {
    let host_before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let ns = Netns::new("vfs");
    let flip = if host_before.trim() == "1" { "0" } else { "1" };
    ns.sysctl("net.ipv4.ip_forward", flip);
    assert_eq!(ns.read_sysctl("net.ipv4.ip_forward"), flip);
    let host_after = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    assert_eq!(host_before, host_after, "the machine's sysctl changed");
}

#[test]
fn udp_counts_exactly_v4_and_v6() {
    let (a, b) = pair();
    for (src, dst) in [("10.9.0.1", "10.9.0.2"), ("fd09::1", "fd09::2")] {
        let got = udp_transfer(a.name(), Some(ip(src)), b.name(), ip(dst), 1000, 100);
        assert_eq!(got, 1000, "{src} -> {dst}");
    }
    // Back the other way, unpaced sender and a plain count.
    let got = udp_transfer(b.name(), None, a.name(), ip("10.9.0.1"), 300, 64);
    assert_eq!(got, 300);
}

#[test]
fn udp_receiver_reports_short_counts() {
    // The count can fail: fewer datagrams than expected come back as fewer.
    let (a, b) = pair();
    let rx = udp_recv(
        b.name(),
        SocketAddr::new(ip("10.9.0.2"), 0),
        100,
        100,
        Duration::from_millis(1500),
    );
    udp_send_to(a.name(), None, &rx, 90, 100, 16);
    assert_eq!(rx.wait(), 90);

    // Datagrams of another flow (wrong tag/length) are not counted.
    let rx = udp_recv(
        b.name(),
        SocketAddr::new(ip("10.9.0.2"), 0),
        10,
        100,
        Duration::from_millis(1500),
    );
    udp_send(a.name(), None, rx.addr(), 10, 100);
    assert_eq!(rx.wait(), 0);

    // Nothing arrives at an address that is not reachable.
    let rx = udp_recv(
        b.name(),
        SocketAddr::new(ip("10.9.0.2"), 0),
        10,
        100,
        Duration::from_millis(1500),
    );
    let lo_only = Netns::new("vfl");
    let (name, dst) = (lo_only.name().to_string(), rx.addr());
    let sent = std::panic::catch_unwind(move || udp_send(&name, None, dst, 10, 100));
    assert!(sent.is_err(), "send without a route must fail");
    assert_eq!(rx.wait(), 0);
}

/// udp_frame_len matches what the kernel counts on the wire (IPv6 off: nothing else sent).
#[test]
fn udp_frame_len_matches_kernel_link_counters() {
    let a = Netns::new("vfa");
    let b = Netns::new("vfb");
    for ns in [&a, &b] {
        ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1");
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
    }
    a.add_veth("va", "vb", &b);
    a.ip(&["addr", "add", "10.9.0.1/24", "dev", "va"]);
    b.ip(&["addr", "add", "10.9.0.2/24", "dev", "vb"]);
    // Permanent neighbours: no ARP on the link either.
    let mac = |ns: &Netns, dev: &str| {
        ns.link(dev).unwrap()["address"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (ma, mb) = (mac(&a, "va"), mac(&b, "vb"));
    a.ip(&[
        "neigh",
        "add",
        "10.9.0.2",
        "lladdr",
        &mb,
        "dev",
        "va",
        "nud",
        "permanent",
    ]);
    b.ip(&[
        "neigh",
        "add",
        "10.9.0.1",
        "lladdr",
        &ma,
        "dev",
        "vb",
        "nud",
        "permanent",
    ]);
    a.ip(&["link", "set", "va", "up"]);
    b.ip(&["link", "set", "vb", "up"]);
    let tx = |ns: &Netns| {
        let v = ns.ip_json(&["-s", "link", "show", "dev", "va"]);
        let s = &v[0]["stats64"]["tx"];
        (s["packets"].as_u64().unwrap(), s["bytes"].as_u64().unwrap())
    };
    let before = tx(&a);
    let n = 500;
    assert_eq!(
        udp_transfer(a.name(), None, b.name(), ip("10.9.0.2"), n, 100),
        n
    );
    let after = tx(&a);
    assert_eq!(after.0 - before.0, n);
    assert_eq!(after.1 - before.1, n * udp_frame_len(ip("10.9.0.2"), 100));
    assert_eq!(udp_frame_len(ip("fd09::2"), 100), 162);
}

#[test]
fn tcp_echo_both_ways_v4_v6() {
    let (a, b) = pair();
    tcp_echo(a.name(), b.name(), ip("10.9.0.2"), 4 << 20).unwrap();
    tcp_echo(b.name(), a.name(), ip("10.9.0.1"), 4 << 20).unwrap();
    tcp_echo(a.name(), b.name(), ip("fd09::2"), 4 << 20).unwrap();
    tcp_echo(b.name(), a.name(), ip("fd09::1"), 1 << 20).unwrap();
    // A server address nobody has cannot be served.
    assert!(tcp_echo(a.name(), b.name(), ip("10.9.0.99"), 10).is_err());
}

#[test]
fn ping_v4_v6_and_failure() {
    let (a, b) = pair();
    assert!(ping(a.name(), ip("10.9.0.2")));
    assert!(ping(b.name(), ip("fd09::1")));
    assert!(ping_from(a.name(), Some(ip("fd09::1")), ip("fd09::2")));
    // Down link: no reply.
    b.ip(&["link", "set", "vb", "down"]);
    assert!(!ping(a.name(), ip("10.9.0.2")));
    assert!(!ping(a.name(), ip("fd09::2")));
}

#[test]
fn threads_enter_only_their_namespace() {
    let ns = Netns::new("vft");
    let inside = run_in_netns(ns.name(), || {
        std::fs::read_link("/proc/thread-self/ns/net").unwrap()
    });
    let outside = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    assert_ne!(inside, outside);
    // The calling thread never moved.
    assert_eq!(
        outside,
        std::fs::read_link("/proc/self/ns/net").unwrap(),
        "the test thread must stay in the namespace the process started in"
    );
}

#[test]
fn node_without_vethfp() {
    let node = Node::new();
    assert_eq!(node.ns.read_sysctl("net.ipv4.ip_forward"), "0");
    assert_eq!(node.ns.read_sysctl("net.ipv6.conf.all.forwarding"), "0");
    let lo = node.ns.ip_json(&["addr", "show", "dev", "lo"]);
    let addrs: Vec<String> = lo[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    assert!(addrs.contains(&"10.1.255.1/32".to_string()), "{addrs:?}");
    assert!(addrs.contains(&"fd00:1::ffff/128".to_string()), "{addrs:?}");
    assert!(ping(node.name(), node.v4()));
    assert!(ping(node.name(), node.v6()));
    let dir = node.bpffs.mount_point().to_path_buf();
    let name = node.name().to_string();
    assert!(is_bpffs(&dir));
    drop(node);
    assert!(!dir.exists() && !exists(&name));
}
