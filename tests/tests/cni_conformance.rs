//! vethfp as a CNI plugin, driven exactly as a runtime drives it (CNI_* environment, config on
//! stdin, result or error object on stdout), for every operation and every spec version it
//! claims, with host-local from Debian's containernetworking-plugins as IPAM.
//! Each test has its own node, bpffs, IPAM data dir and containers: they run in parallel.

use std::net::IpAddr;

use serde_json::{Value, json};
use vethfp_tests::cni::{CniEnv, CniNet, container_id, container_ns, link_mac, with_prev};

fn version_at_least(v: &str, min: &str) -> bool {
    let t = |s: &str| -> Vec<u32> { s.split('.').map(|p| p.parse().unwrap()).collect() };
    t(v) >= t(min)
}

/// Checks an ADD result of standalone vethfp against the spec and against the kernel.
fn check_add_result(net: &CniNet, r: &Value, version: &str, ns: &vethfp_tests::Netns) {
    assert_eq!(r["cniVersion"], version, "{r}");
    let ifs = r["interfaces"].as_array().expect("interfaces");
    assert_eq!(ifs.len(), 2, "{r}");
    let host = &ifs[0];
    let host_if = host["name"].as_str().unwrap();
    assert!(host_if.starts_with("vfp") && host_if.len() == 15, "{r}");
    assert!(
        host.get("sandbox").is_none(),
        "host end has no sandbox: {r}"
    );
    assert_eq!(host["mac"], link_mac(&net.node.ns, host_if));
    let cont = &ifs[1];
    assert_eq!(cont["name"], "eth0");
    assert_eq!(cont["sandbox"], format!("/run/netns/{}", ns.name()));
    assert_eq!(
        cont["mac"],
        link_mac(ns, "eth0"),
        "result carries the container MAC"
    );
    let ips = r["ips"].as_array().expect("ips");
    assert_eq!(ips.len(), 2, "{r}");
    let addrs: Vec<Value> = ns
        .ip_json(&["addr", "show", "dev", "eth0"])
        .as_array()
        .unwrap()[0]["addr_info"]
        .as_array()
        .unwrap()
        .clone();
    for ip in ips {
        assert_eq!(
            ip["interface"], 1,
            "ips point at the container interface: {r}"
        );
        assert_eq!(
            ip.get("version").is_some(),
            !version_at_least(version, "1.0.0"),
            "ips[].version exists before 1.0.0 only: {r}"
        );
        let (a, p) = ip["address"].as_str().unwrap().split_once('/').unwrap();
        let a: IpAddr = a.parse().unwrap();
        let in_range = match a {
            IpAddr::V4(v4) => v4.octets()[..3] == [10, 1, 0],
            IpAddr::V6(v6) => v6.segments()[..4] == [0xfd00, 1, 0, 0],
        };
        assert!(in_range, "{a} comes from the IPAM ranges");
        assert!(
            addrs.iter().any(|x| x["local"] == a.to_string()
                && x["prefixlen"] == p.parse::<u64>().unwrap()),
            "{a}/{p} is on eth0: {addrs:?}"
        );
    }
    let dsts: Vec<&str> = r["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["dst"].as_str().unwrap())
        .collect();
    assert_eq!(dsts, ["0.0.0.0/0", "::/0"], "{r}");
    assert_eq!(
        host.get("mtu").is_some(),
        version_at_least(version, "1.1.0"),
        "interface mtu only from 1.1.0: {r}"
    );
}

/// ADD, CHECK, DEL, DEL again at one spec version; everything gone afterwards.
fn lifecycle(version: &str) {
    let net = CniNet::new();
    let ns = container_ns();
    let cid = container_id();
    let conf = net.conf(version);
    let env = CniEnv::full("ADD", &cid, ns.name(), "eth0");
    let out = net.vethfp(&env, &conf);
    let r = out.ok("ADD");
    let add_ms = out.elapsed.as_secs_f64() * 1e3;
    check_add_result(&net, &r, version, &ns);
    let host_if = r["interfaces"][0]["name"].as_str().unwrap().to_string();
    let ep = net.node.list_entry(&host_if).expect("registered");
    // The CNI network name is the fast-path network: its id is a hash of the name, never 0.
    assert_ne!(ep["network_id"], 0, "{ep}");
    assert_eq!(ep["adopted"], false);
    assert_eq!(net.allocated().len(), 2, "one v4 and one v6 allocation");

    if version_at_least(version, "0.4.0") {
        let out = net.vethfp(&env.clone().with_command("CHECK"), &with_prev(&conf, &r));
        assert_eq!(out.ok("CHECK"), Value::Null, "CHECK prints nothing");
    }

    let out = net.vethfp(&env.clone().with_command("DEL"), &with_prev(&conf, &r));
    assert_eq!(out.ok("DEL"), Value::Null);
    let del_ms = out.elapsed.as_secs_f64() * 1e3;
    assert!(net.node_links().is_empty(), "{:?}", net.node_links());
    assert!(
        ns.link("eth0").is_none(),
        "the container end went with the pair"
    );
    assert!(net.node.list_json().is_empty());
    assert!(
        net.allocated().is_empty(),
        "IPAM released: {:?}",
        net.allocated()
    );
    net.vethfp(&env.clone().with_command("DEL"), &with_prev(&conf, &r))
        .ok("DEL twice");
    eprintln!("cni {version}: ADD {add_ms:.1} ms, DEL {del_ms:.1} ms (incl. host-local)");
}

#[test]
fn lifecycle_0_3_1() {
    lifecycle("0.3.1");
}

#[test]
fn lifecycle_0_4_0() {
    lifecycle("0.4.0");
}

#[test]
fn lifecycle_1_0_0() {
    lifecycle("1.0.0");
}

#[test]
fn lifecycle_1_1_0() {
    lifecycle("1.1.0");
}

#[test]
fn version_answers_supported_versions() {
    let net = CniNet::new();
    for stdin in [
        json!({"cniVersion": "1.1.0"}),
        json!({"cniVersion": "0.4.0"}),
        json!({}),
    ] {
        let env = CniEnv {
            command: Some("VERSION".into()),
            ..Default::default()
        };
        let v = net.vethfp(&env, &stdin).ok("VERSION");
        assert_eq!(v["cniVersion"], "1.1.0");
        let sv: Vec<&str> = v["supportedVersions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        for want in ["0.4.0", "1.0.0", "1.1.0"] {
            assert!(sv.contains(&want), "{want} in {sv:?}");
        }
    }
}

#[test]
fn missing_env_vars_are_code_4() {
    let net = CniNet::new();
    let ns = container_ns();
    let conf = net.conf("1.0.0");
    let full = CniEnv::full("ADD", &container_id(), ns.name(), "eth0");
    type Unset = fn(&mut CniEnv);
    let cases: [(&str, Unset); 4] = [
        ("CNI_CONTAINERID", |e| e.container_id = None),
        ("CNI_NETNS", |e| e.netns = None),
        ("CNI_IFNAME", |e| e.ifname = None),
        ("CNI_PATH", |e| e.path = None),
    ];
    for (var, unset) in cases {
        let mut env = full.clone();
        unset(&mut env);
        let e = net
            .vethfp(&env, &conf)
            .err_code(4, &format!("ADD without {var}"));
        assert!(e["msg"].as_str().unwrap().contains(var), "{e}");
    }
    let mut env = full.clone().with_command("DEL");
    env.container_id = None;
    net.vethfp(&env, &conf)
        .err_code(4, "DEL without CNI_CONTAINERID");
    net.vethfp(&full.clone().with_command("BOGUS"), &conf)
        .err_code(4, "unknown command");
    let mut env = full.clone();
    env.ifname = Some("a/b".into());
    net.vethfp(&env, &conf).err_code(4, "invalid CNI_IFNAME");
    let mut env = full.clone();
    env.netns = Some("/run/netns/does-not-exist-vfp".into());
    net.vethfp(&env, &conf)
        .err_code(4, "CNI_NETNS that does not exist");
    assert!(
        net.allocated().is_empty(),
        "the failed ADD released its addresses"
    );
    assert!(net.node_links().is_empty());
}

#[test]
fn bad_config_codes() {
    let net = CniNet::new();
    let ns = container_ns();
    let env = CniEnv::full("ADD", &container_id(), ns.name(), "eth0");
    let node = net.node.name().to_string();
    let run = |stdin: &str| {
        vethfp_tests::cni::exec_plugin(&node, &vethfp_tests::vethfp_bin(), &env, stdin.as_bytes())
    };
    let e = run("{\"cniVersion\": \"1.0.0\", \"name\": ").err_code(6, "truncated JSON");
    assert_eq!(e["cniVersion"], "1.1.0", "no version readable: the newest");
    run("not json at all").err_code(6, "garbage");
    let mut c = net.conf("0.2.0");
    let e = run(&c.to_string()).err_code(1, "cniVersion 0.2.0");
    assert!(e["msg"].as_str().unwrap().contains("0.2.0"), "{e}");
    c["cniVersion"] = json!("2.0.0");
    run(&c.to_string()).err_code(1, "cniVersion 2.0.0");
    c = net.conf("1.0.0");
    c["mtu"] = json!("big");
    run(&c.to_string()).err_code(7, "mtu of the wrong type");
    c = net.conf("1.0.0");
    c["mode"] = json!("bridge");
    run(&c.to_string()).err_code(7, "unknown mode");
    c = net.conf("1.0.0");
    c.as_object_mut().unwrap().remove("ipam");
    run(&c.to_string()).err_code(7, "standalone without ipam");
    c = net.conf("1.0.0");
    c["bpffs"] = json!(format!("/tmp/not-a-bpffs-{}", std::process::id()));
    run(&c.to_string()).err_code(7, "bpffs not on a bpffs");
    c = net.conf("1.0.0");
    c["ipam"]["type"] = json!("no-such-ipam");
    run(&c.to_string()).err_code(102, "IPAM plugin missing");
    assert!(net.node_links().is_empty());
    assert!(net.allocated().is_empty());
}

#[test]
fn duplicate_add_fails_and_keeps_the_first() {
    let net = CniNet::new();
    let ns = container_ns();
    let cid = container_id();
    let conf = net.conf("1.0.0");
    let env = CniEnv::full("ADD", &cid, ns.name(), "eth0");
    let r = net.vethfp(&env, &conf).ok("ADD");
    let before = net.allocated();
    net.vethfp(&env, &conf).err_code(100, "second ADD");
    assert_eq!(
        net.allocated(),
        before,
        "the first ADD's addresses are kept"
    );
    assert_eq!(net.node_links().len(), 1);
    net.vethfp(&env.clone().with_command("CHECK"), &with_prev(&conf, &r))
        .ok("CHECK after the failed duplicate");
    net.vethfp(&env.clone().with_command("DEL"), &with_prev(&conf, &r))
        .ok("DEL");
    assert!(net.node_links().is_empty());
    assert!(net.allocated().is_empty());
}

#[test]
fn del_is_idempotent() {
    let net = CniNet::new();
    let conf = net.conf("1.1.0");

    // DEL of something never added.
    let env = CniEnv::full("DEL", &container_id(), "nonexistent-vfp", "eth0");
    net.vethfp(&env, &conf).ok("DEL of an unknown container");

    // DEL without CNI_NETNS and without prevResult.
    let ns = container_ns();
    let cid = container_id();
    let env = CniEnv::full("ADD", &cid, ns.name(), "eth0");
    net.vethfp(&env, &conf).ok("ADD");
    let mut del = env.clone().with_command("DEL");
    del.netns = None;
    net.vethfp(&del, &conf).ok("DEL without netns");
    assert!(net.node_links().is_empty());
    assert!(net.allocated().is_empty());
    net.vethfp(&del, &conf).ok("DEL twice");

    // DEL after the netns is gone (the pair went with it).
    let ns2 = container_ns();
    let cid2 = container_id();
    let env2 = CniEnv::full("ADD", &cid2, ns2.name(), "eth0");
    let r = net.vethfp(&env2, &conf).ok("ADD 2");
    let ns2_name = ns2.name().to_string();
    drop(ns2);
    net.vethfp(&env2.clone().with_command("DEL"), &with_prev(&conf, &r))
        .ok("DEL after the netns is gone");
    assert!(net.node.list_json().is_empty());
    assert!(net.allocated().is_empty());
    assert!(!std::path::Path::new("/run/netns").join(ns2_name).exists());

    // DEL after the interface is gone but the netns remains.
    let ns3 = container_ns();
    let env3 = CniEnv::full("ADD", &container_id(), ns3.name(), "eth0");
    net.vethfp(&env3, &conf).ok("ADD 3");
    ns3.ip(&["link", "del", "eth0"]);
    net.vethfp(&env3.clone().with_command("DEL"), &conf)
        .ok("DEL after the interface is gone");
    assert!(net.node.list_json().is_empty());
    assert!(net.allocated().is_empty());
}

#[test]
fn check_detects_drift() {
    let net = CniNet::new();
    let ns = container_ns();
    let conf = net.conf("1.0.0");
    let env = CniEnv::full("ADD", &container_id(), ns.name(), "eth0");
    let r = net.vethfp(&env, &conf).ok("ADD");
    let check = env.clone().with_command("CHECK");
    net.vethfp(&check, &with_prev(&conf, &r)).ok("CHECK");
    net.vethfp(&check, &conf)
        .err_code(7, "CHECK without prevResult");

    let mut wrong = r.clone();
    wrong["interfaces"][1]["mac"] = json!("02:de:ad:be:ef:01");
    net.vethfp(&check, &with_prev(&conf, &wrong))
        .err_code(103, "CHECK with another MAC");
    let mut wrong = r.clone();
    wrong["ips"][0]["address"] = json!("10.1.0.200/24");
    net.vethfp(&check, &with_prev(&conf, &wrong))
        .err_code(103, "CHECK with another address");

    // The container lost its default route.
    ns.ip(&["route", "del", "default"]);
    let e = net
        .vethfp(&check, &with_prev(&conf, &r))
        .err_code(103, "CHECK without the default route");
    assert!(e["msg"].as_str().unwrap().contains("route"), "{e}");
    ns.ip(&[
        "route",
        "add",
        "default",
        "via",
        "169.254.1.1",
        "dev",
        "eth0",
    ]);
    net.vethfp(&check, &with_prev(&conf, &r))
        .ok("CHECK repaired");

    // Beyond prevResult (it names no neighbours and no node routes), the endpoint as it was
    // made: the container's gateway neighbour, then the node's host route.
    let host_if = r["interfaces"][0]["name"].as_str().unwrap();
    let host_mac = r["interfaces"][0]["mac"].as_str().unwrap();
    ns.ip(&["neigh", "del", "169.254.1.1", "dev", "eth0"]);
    let e = net
        .vethfp(&check, &with_prev(&conf, &r))
        .err_code(103, "CHECK without the gateway neighbour");
    assert!(e["msg"].as_str().unwrap().contains("container side"), "{e}");
    ns.ip(&[
        "neigh",
        "replace",
        "169.254.1.1",
        "lladdr",
        host_mac,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    net.vethfp(&check, &with_prev(&conf, &r))
        .ok("CHECK with the neighbour back");
    let addr = r["ips"][0]["address"].as_str().unwrap();
    let addr = addr.split('/').next().unwrap();
    net.node.ns.ip(&["route", "del", addr, "dev", host_if]);
    let e = net
        .vethfp(&check, &with_prev(&conf, &r))
        .err_code(103, "CHECK without the node's host route");
    assert!(e["msg"].as_str().unwrap().contains("node side"), "{e}");
    net.node.ns.ip(&["route", "add", addr, "dev", host_if]);
    net.vethfp(&check, &with_prev(&conf, &r))
        .ok("CHECK with the host route back");

    // The fast path detached (clsact deleted behind vethfp's back: the filters go with it).
    assert!(net.node.has_filters(host_if));
    net.node.ns.tc(&["qdisc", "del", "dev", host_if, "clsact"]);
    let e = net
        .vethfp(&check, &with_prev(&conf, &r))
        .err_code(103, "CHECK with the programs detached");
    assert!(e["msg"].as_str().unwrap().contains("not attached"), "{e}");
    net.vethfp(&env.clone().with_command("DEL"), &with_prev(&conf, &r))
        .ok("DEL");
    assert!(net.node_links().is_empty());
}

#[test]
fn status_reports_availability() {
    let net = CniNet::new();
    let env = CniEnv {
        command: Some("STATUS".into()),
        path: Some(vethfp_tests::cni::CNI_PLUGIN_DIR.into()),
        ..Default::default()
    };
    net.vethfp(&env, &net.conf("1.1.0")).ok("STATUS");
    net.vethfp(&env, &net.conf("1.0.0"))
        .err_code(1, "STATUS needs 1.1.0");
    let mut c = net.conf("1.1.0");
    let not_bpffs = vethfp_tests::cni::TempDir::new("s");
    c["bpffs"] = json!(not_bpffs.path().join("state"));
    let e = net.vethfp(&env, &c).err_code(50, "STATUS without bpffs");
    assert!(e["msg"].as_str().unwrap().contains("bpffs"), "{e}");
    c = net.conf("1.1.0");
    c["ipam"]["type"] = json!("no-such-ipam");
    net.vethfp(&env, &c)
        .err_code(50, "STATUS without the IPAM plugin");
}

#[test]
fn gc_removes_what_is_not_valid() {
    let net = CniNet::new();
    let conf = net.conf("1.1.0");
    let (ns1, ns2) = (container_ns(), container_ns());
    let (c1, c2) = (container_id(), container_id());
    let r1 = net
        .vethfp(&CniEnv::full("ADD", &c1, ns1.name(), "eth0"), &conf)
        .ok("ADD 1");
    let r2 = net
        .vethfp(&CniEnv::full("ADD", &c2, ns2.name(), "eth0"), &conf)
        .ok("ADD 2");
    // An endpoint of another network in the same bpffs, and one made by the CLI: not ours.
    let mut other = net.conf("1.1.0");
    other["name"] = json!("othernet");
    other["ipam"]["ranges"] = json!([[{"subnet": "10.1.1.0/24"}]]);
    let ns3 = container_ns();
    let c3 = container_id();
    let r3 = net
        .vethfp(&CniEnv::full("ADD", &c3, ns3.name(), "eth0"), &other)
        .ok("ADD other network");
    let cli = net.node.add_container("vfcli", &["10.1.2.2/24"]);

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": c1, "ifname": "eth0"}]);
    let env = CniEnv {
        command: Some("GC".into()),
        path: Some(vethfp_tests::cni::CNI_PLUGIN_DIR.into()),
        ..Default::default()
    };
    net.vethfp(&env, &gc).ok("GC");
    let names: Vec<String> = net
        .node
        .list_json()
        .iter()
        .map(|e| e["host_if"].as_str().unwrap().to_string())
        .collect();
    let name = |r: &Value| r["interfaces"][0]["name"].as_str().unwrap().to_string();
    assert!(
        names.contains(&name(&r1)),
        "valid attachment kept: {names:?}"
    );
    assert!(
        !names.contains(&name(&r2)),
        "stale attachment removed: {names:?}"
    );
    assert!(
        names.contains(&name(&r3)),
        "other network untouched: {names:?}"
    );
    assert!(
        names.contains(&cli.host_if),
        "CLI endpoint untouched: {names:?}"
    );
    assert!(!net.node_links().contains(&name(&r2)));
}

#[test]
fn gc_without_valid_attachments_removes_nothing() {
    // cnitool (and runtimes before CNI 1.1) send GC without the list of attachments to keep:
    // that must succeed without touching a running container, and say so on stderr.
    let net = CniNet::new();
    let conf = net.conf("1.1.0");
    let ns1 = container_ns();
    let c1 = container_id();
    let r1 = net
        .vethfp(&CniEnv::full("ADD", &c1, ns1.name(), "eth0"), &conf)
        .ok("ADD");
    let host = r1["interfaces"][0]["name"].as_str().unwrap().to_string();
    let before = net.node.list_json();
    let env = CniEnv {
        command: Some("GC".into()),
        path: Some(vethfp_tests::cni::CNI_PLUGIN_DIR.into()),
        ..Default::default()
    };
    let out = net.vethfp(&env, &conf);
    out.ok("GC without valid-attachments");
    assert!(
        out.stderr.contains("valid-attachments") && out.stderr.contains("nothing removed"),
        "GC logs why it removed nothing: {:?}",
        out.stderr
    );
    assert_eq!(net.node.list_json(), before, "no endpoint removed");
    assert!(net.node_links().contains(&host), "{:?}", net.node_links());
    assert_eq!(
        net.allocated().len(),
        2,
        "leases kept: {:?}",
        net.allocated()
    );
    net.vethfp(&CniEnv::full("DEL", &c1, ns1.name(), "eth0"), &conf)
        .ok("DEL");
}
