//! Concurrency and faults: 100 concurrent `pair add`/`pair del` processes, then the maps, the
//! kernel's links and routes in the node, and the link pins must agree exactly. Faults: the
//! container netns deleted under a live endpoint, link pins removed by hand, the bpffs gone,
//! and `pair add` killed with SIGKILL at different points.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use vethfp::datapath::Datapath;
use vethfp_tests::{Netns, Node, check_fails, check_ok, ping, vethfp_bin};

/// What the maps hold: address -> ifindex, and the ifindex keys of the per-endpoint maps.
#[derive(Debug, PartialEq, Eq, Default)]
struct Maps {
    ep4: BTreeMap<String, u32>,
    ep6: BTreeMap<String, u32>,
    endpoints: BTreeSet<u32>,
    counters: BTreeSet<u32>,
    devmap: BTreeSet<u32>,
}

fn maps(node: &Node) -> Maps {
    let mut dp = Datapath::open(&node.bpffs_dir()).expect("open the pinned datapath");
    let mut m = Maps::default();
    for kv in dp.ep4().unwrap().iter() {
        let (k, t) = kv.unwrap();
        m.ep4
            .insert(std::net::Ipv4Addr::from(k).to_string(), t.ifindex);
    }
    for kv in dp.ep6().unwrap().iter() {
        let (k, t) = kv.unwrap();
        m.ep6
            .insert(std::net::Ipv6Addr::from(k).to_string(), t.ifindex);
    }
    m.endpoints = dp.endpoints().unwrap().keys().map(|k| k.unwrap()).collect();
    // Counters live in a per-CPU array by slot: each endpoint must have a slot of its own.
    m.counters = dp
        .endpoints()
        .unwrap()
        .iter()
        .map(|kv| kv.unwrap().1.target.slot)
        .collect();
    m.devmap = dp.devmap().unwrap().keys().map(|k| k.unwrap()).collect();
    m
}

/// Link pins (file names under links/).
fn link_pins(node: &Node) -> BTreeSet<String> {
    std::fs::read_dir(node.bpffs_dir().join("links"))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Node links vethfp made (alias "vethfp"): name -> ifindex.
fn owned_links(node: &Node) -> BTreeMap<String, u32> {
    node.ns
        .ip_json(&["-d", "link", "show"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["ifalias"] == "vethfp" || l["linkinfo"]["info_kind"] == "veth")
        .map(|l| {
            (
                l["ifname"].as_str().unwrap().to_string(),
                l["ifindex"].as_u64().unwrap() as u32,
            )
        })
        .collect()
}

/// Host routes in the node: destination -> device.
fn host_routes(node: &Node) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for fam in ["-4", "-6"] {
        for r in node.ns.ip_json(&[fam, "route", "show"]).as_array().unwrap() {
            let dst = r["dst"].as_str().unwrap_or("");
            let dev = r["dev"].as_str().unwrap_or("");
            // Host routes only (shown without a prefix); not the kernel's fe80::/64 per link.
            if !dst.contains('/')
                && (dev.starts_with("vq") || dev.starts_with("vk") || dev.starts_with("vc"))
            {
                let dst = dst
                    .trim_end_matches("/32")
                    .trim_end_matches("/128")
                    .to_string();
                assert!(
                    out.insert(dst.clone(), dev.to_string()).is_none(),
                    "duplicate route {dst}"
                );
            }
        }
    }
    out
}

fn addrs(i: usize) -> (String, String) {
    (
        format!("10.1.{}.{}", i / 200, i % 200 + 2),
        format!("fd00:1::{:x}", i + 2),
    )
}

/// Everything agrees with exactly the endpoints `want` (host name -> index for addresses).
fn assert_consistent(node: &Node, want: &BTreeMap<String, usize>) {
    let list = node.list_json();
    let listed: Vec<String> = list
        .iter()
        .map(|e| e["host_if"].as_str().unwrap().to_string())
        .collect();
    let uniq: BTreeSet<&String> = listed.iter().collect();
    assert_eq!(
        uniq.len(),
        listed.len(),
        "duplicate entries in pair list: {listed:?}"
    );
    assert_eq!(
        uniq.into_iter().cloned().collect::<BTreeSet<_>>(),
        want.keys().cloned().collect::<BTreeSet<_>>(),
        "pair list vs expected"
    );
    let links = owned_links(node);
    assert_eq!(
        links.keys().cloned().collect::<BTreeSet<_>>(),
        want.keys().cloned().collect::<BTreeSet<_>>(),
        "veth host ends in the node vs expected"
    );
    let mut want_ep4 = BTreeMap::new();
    let mut want_ep6 = BTreeMap::new();
    let mut want_routes = BTreeMap::new();
    for e in &list {
        let name = e["host_if"].as_str().unwrap();
        let idx = links[name];
        assert_eq!(e["host_ifindex"].as_u64(), Some(idx as u64), "{e}");
        let (a4, a6) = addrs(want[name]);
        let got: BTreeSet<String> = e["addrs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        assert_eq!(got, [format!("{a4}/24"), format!("{a6}/64")].into(), "{e}");
        want_ep4.insert(a4.clone(), idx);
        want_ep6.insert(a6.clone(), idx);
        want_routes.insert(a4, name.to_string());
        want_routes.insert(a6, name.to_string());
        assert!(node.has_filters(name), "{name}: our two filters");
    }
    let idxs: BTreeSet<u32> = links.values().copied().collect();
    let m = maps(node);
    assert_eq!(m.ep4, want_ep4, "VFP_EP4");
    assert_eq!(m.ep6, want_ep6, "VFP_EP6");
    assert_eq!(m.endpoints, idxs, "VFP_ENDPOINTS");
    assert_eq!(
        m.counters.len(),
        idxs.len(),
        "one counter slot per endpoint"
    );
    assert_eq!(m.devmap, idxs, "VFP_DEVMAP");
    assert_eq!(host_routes(node), want_routes, "host routes in the node");
    assert_eq!(
        link_pins(node),
        BTreeSet::new(),
        "link pins (tc mode has none)"
    );
}

fn add_args(name: &str, ns: &str, i: usize) -> Vec<String> {
    let (a4, a6) = addrs(i);
    [
        "pair",
        "add",
        name,
        "--netns",
        ns,
        "--addr",
        &format!("{a4}/24"),
        "--addr",
        &format!("{a6}/64"),
    ]
    .map(String::from)
    .to_vec()
}

#[derive(Clone)]
enum Op {
    Add(usize),
    Del(usize),
}

/// Run `ops` from `threads` threads, each op a separate vethfp process; all must succeed.
fn run_parallel(node: &Arc<Node>, nss: &Arc<Vec<Netns>>, ops: Vec<Op>, threads: usize) {
    let ops = Arc::new(ops);
    let next = Arc::new(AtomicUsize::new(0));
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let (node, nss, ops, next) = (node.clone(), nss.clone(), ops.clone(), next.clone());
            std::thread::spawn(move || {
                loop {
                    let k = next.fetch_add(1, Ordering::SeqCst);
                    let Some(op) = ops.get(k) else { break };
                    let args: Vec<String> = match op {
                        Op::Add(i) => add_args(&format!("vq{i}"), nss[*i].name(), *i),
                        Op::Del(i) => ["pair", "del", &format!("vq{i}")]
                            .map(String::from)
                            .to_vec(),
                    };
                    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
                    check_ok(&node.vethfp(&a), &a);
                }
            })
        })
        .collect();
    for h in hs {
        vethfp_tests::join(h);
    }
}

#[test]
fn hundred_concurrent_adds_and_dels_leave_consistent_state() {
    let node = Arc::new(Node::new());
    let nss: Arc<Vec<Netns>> = Arc::new((0..75).map(|_| Netns::new("vfq")).collect());
    let t = Instant::now();
    run_parallel(&node, &nss, (0..50).map(Op::Add).collect(), 8);
    let want: BTreeMap<String, usize> = (0..50).map(|i| (format!("vq{i}"), i)).collect();
    assert_consistent(&node, &want);
    // 25 dels and 25 new adds, interleaved.
    let mixed: Vec<Op> = (0..25)
        .flat_map(|i| [Op::Del(i), Op::Add(50 + i)])
        .collect();
    run_parallel(&node, &nss, mixed, 8);
    let want: BTreeMap<String, usize> = (25..75).map(|i| (format!("vq{i}"), i)).collect();
    assert_consistent(&node, &want);
    println!(
        "concurrency: 100 add/del processes on 8 threads in {:?}; state consistent",
        t.elapsed()
    );
    // Containers of deleted endpoints have nothing left; the others have their eth0.
    for (i, ns) in nss.iter().enumerate() {
        let want: BTreeSet<String> = if i < 25 {
            ["lo"].map(String::from).into()
        } else {
            ["lo", "eth0"].map(String::from).into()
        };
        assert_eq!(ns.link_names(), want, "{}", ns.name());
    }
}

#[test]
fn container_netns_deleted_under_a_live_endpoint() {
    let node = Node::new();
    let c1 = node.add_container("vc1", &["10.1.0.2/24", "fd00:1::2/64"]);
    let c2 = node.add_container("vc2", &["10.1.0.3/24", "fd00:1::3/64"]);
    drop(c1); // ip netns del: the veth pair goes with it
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.ns.link("vc1").is_some() {
        assert!(
            Instant::now() < deadline,
            "vc1 still there 10 s after its netns was deleted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    node.ok(&["pair", "del", "vc1"]);
    let m = maps(&node);
    let idx2 = node.list_entry("vc2").unwrap()["host_ifindex"]
        .as_u64()
        .unwrap() as u32;
    assert_eq!(node.list_json().len(), 1);
    assert_eq!(m.endpoints, [idx2].into());
    assert_eq!(m.counters.len(), 1, "one counter slot in use");
    assert_eq!(m.devmap, [idx2].into());
    assert_eq!(m.ep4.keys().cloned().collect::<Vec<_>>(), ["10.1.0.3"]);
    assert_eq!(m.ep6.keys().cloned().collect::<Vec<_>>(), ["fd00:1::3"]);
    assert!(link_pins(&node).is_empty());
    assert!(node.has_filters("vc2"));
    assert!(
        node.ns
            .ip(&["route", "show"])
            .lines()
            .all(|l| !l.contains("vc1"))
    );
    assert!(ping(node.name(), c2.v4()), "the other endpoint still works");
}

#[test]
fn filter_removed_by_hand_stops_the_fast_path_and_del_cleans() {
    let node = Node::new();
    let c1 = node.add_container("vc1", &["10.1.0.2/24", "fd00:1::2/64"]);
    let c2 = node.add_container("vc2", &["10.1.0.3/24", "fd00:1::3/64"]);
    assert!(ping(c1.name(), c2.v4()));
    node.ns.tc(&[
        "filter", "del", "dev", "vc1", "ingress", "protocol", "all", "prio", "65520", "handle",
        "0x766670", "bpf",
    ]);
    assert_eq!(
        node.our_filters("vc1"),
        (None, Some("vfp_tc_egress".into()))
    );
    node.wait_quiet("vc1");
    let before = node.stats("vc1");
    // Forwarding is off in the node: without vc1's ingress program nothing carries c1's traffic.
    assert!(
        !ping(c1.name(), c2.v4()),
        "fast path still up after its ingress filter was deleted"
    );
    let d = node.stats("vc1").since(&before);
    assert_eq!(d.from("fast").packets, 0, "{d:?}");
    node.ok(&["pair", "del", "vc1"]);
    assert!(node.ns.link("vc1").is_none());
    let idx2 = node.list_entry("vc2").unwrap()["host_ifindex"]
        .as_u64()
        .unwrap();
    assert!(link_pins(&node).is_empty());
    assert!(node.has_filters("vc2"));
    let m = maps(&node);
    assert_eq!(m.endpoints, [idx2 as u32].into());
    assert_eq!(m.ep4.len() + m.ep6.len(), 2);
}

#[test]
fn bpffs_unmounted_under_the_state_is_refused() {
    let node = Node::new();
    let _c1 = node.add_container("vc1", &["10.1.0.2/24"]);
    let c2 = Netns::new("vfc");
    nix::mount::umount2(node.bpffs.mount_point(), nix::mount::MntFlags::MNT_DETACH).unwrap();
    let links = node.ns.link_names();
    for args in [
        &["pair", "list"][..],
        &["stats", "--json"],
        &[
            "pair",
            "add",
            "vc2",
            "--netns",
            c2.name(),
            "--addr",
            "10.1.0.3/24",
        ],
        &["pair", "del", "vc1"],
    ] {
        let msg = check_fails(&node.vethfp(args), args);
        assert!(
            msg.contains("bpffs"),
            "{args:?}: refusal should say why: {msg}"
        );
    }
    assert_eq!(node.ns.link_names(), links);
    assert_eq!(c2.link_names(), ["lo".to_string()].into());
}

/// `pair add` killed with SIGKILL after a delay spread over its whole run, 20 times; after
/// each kill, `pair del` of that name (if it was registered) or `pair add` + `pair del` of
/// it must succeed and leave the node, the container and the bpffs as before.
#[test]
fn pair_add_killed_at_random_points_is_repaired() {
    let node = Node::new();
    let c = Netns::new("vfc");
    let args = add_args("vk1", c.name(), 0);
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    // How long one add takes (the second one: the first also loads and pins the programs),
    // to spread the kill points over it.
    node.ok(&a);
    node.ok(&["pair", "del", "vk1"]);
    let t = Instant::now();
    node.ok(&a);
    let full = t.elapsed();
    node.ok(&["pair", "del", "vk1"]);
    // The baseline: programs stay pinned for the next call; nothing else is left.
    let base = node.snapshot();
    let base_maps = maps(&node);
    assert_eq!(base_maps, Maps::default());
    assert!(
        base.links == ["lo".to_string()].into() && base.neigh.is_empty(),
        "{base:?}"
    );
    let mut log = Vec::new();
    let mut failures = Vec::new();
    for i in 0..20u32 {
        let delay = full * (i + 1) / 16; // up to 1.25x a full run
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", node.name()))
            .arg(vethfp_bin())
            .arg("--bpffs")
            .arg(node.bpffs_dir())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn vethfp");
        std::thread::sleep(delay);
        let _ = child.kill();
        let st = child.wait().unwrap();
        let registered = node.list_entry("vk1").is_some();
        let link = node.ns.link("vk1").is_some();
        let alias = node
            .ns
            .ip_json(&["-d", "link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["ifname"] == "vk1")
            .map(|l| l["ifalias"].as_str().unwrap_or("(none)").to_string());
        let pins = link_pins(&node).len();
        let m = maps(&node);
        let state = format!(
            "delay {delay:?} exit {st}: registered={registered} link={link} alias={alias:?} container={:?} link_pins={pins} ep4={} ep6={} endpoints={} counters={} devmap={}",
            c.link_names(),
            m.ep4.len(),
            m.ep6.len(),
            m.endpoints.len(),
            m.counters.len(),
            m.devmap.len()
        );
        let mut step = |what: &str, args: &[&str]| -> bool {
            let out = node.vethfp(args);
            if !out.status.success() {
                failures.push(format!(
                    "{state}: {what} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
                return false;
            }
            true
        };
        let ok = if registered {
            step("pair del", &["pair", "del", "vk1"])
        } else {
            // Nothing registered: a del says so (or repairs); an add of the name must work.
            let _ = node.vethfp(&["pair", "del", "vk1"]);
            step("pair add", &a) && step("pair del", &["pair", "del", "vk1"])
        };
        let after = node.snapshot();
        let after_maps = maps(&node);
        if ok
            && (after != base
                || after_maps != base_maps
                || c.link_names() != ["lo".to_string()].into())
        {
            failures.push(format!(
                "{state}: leftovers after repair: links {:?} pins {:?} maps {:?} container {:?}",
                after.links.difference(&base.links).collect::<Vec<_>>(),
                after.pins.difference(&base.pins).collect::<Vec<_>>(),
                after_maps,
                c.link_names()
            ));
        }
        log.push(state);
        if !ok || !failures.is_empty() {
            // Clean by hand so the next round starts from the baseline.
            let _ = node.vethfp(&["pair", "del", "vk1"]);
            if node.ns.link("vk1").is_some() {
                node.ns.ip(&["link", "del", "vk1"]);
            }
        }
    }
    println!("SIGKILL during pair add (full run {full:?}):");
    for l in &log {
        println!("  {l}");
    }
    assert!(
        failures.is_empty(),
        "{} of 20 kills not repaired:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
