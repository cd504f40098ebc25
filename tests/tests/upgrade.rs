//! Upgrade in place from the previous release, the real one: its `vethfp`, built from git at
//! the commit CHANGELOG.md records (`cargo xtask prev-release`, which `cargo xtask test` runs
//! and passes as `VETHFP_PREV_BIN`), makes a live node; this build takes it over.
//!
//! The node (admission `always`: 0.1.0 has `netfilter` too, but only `always` puts every
//! datagram on the fast path, so the counters can be checked to the packet; IPv4 forwarding
//! on, which the uplink's FIB lookup needs) has two tc endpoints and an XDP endpoint, a Linux
//! bridge with two ports accelerated in place, and an uplink to a remote namespace. Three
//! paced UDP streams with sequence numbers (tc → tc, uplink → tc, bridge port → bridge port)
//! and a TCP connection (tc ↔ XDP) run across the upgrade, as a rollout does it: 0.1.0's
//! agent runs while this build's `status` migrates the state's map ABI 3 → 4 and pins its
//! programs beside the old ones; then it is stopped (SIGTERM) and this build's agent starts
//! (switches every hook to its programs in place, prunes the old pins once nothing runs
//! them); `pair add`/`pair del` and a CNI ADD/DEL follow. Not one datagram may be lost, the
//! connection stays up, every counter (endpoints, bridge ports, uplink) goes on from where it
//! was (never backwards) and equals what was sent.
//!
//! The same with the takeover SIGKILLed at spread points (the CLI every 60 ms further into
//! it until it finishes on its own, the agent at its start and right after its first
//! in-place replacement): the next call completes it, traffic never stops. And a downgrade:
//! 0.1.0 refuses the upgraded state (map ABI 4). 0.1.0 pins its own programs before it checks
//! the ABI (a bug of that release, fixed since); that is all it changes, and this build's
//! agent removes those pins: asserted as exactly that.
//!
//! And the rollout on a stock node (0.1.0's default `netfilter` admission, be_liberal 0,
//! kube-proxy's INVALID drop, dual-stack): an IPv6 stream and two TCP connections across it,
//! which this build's agent then hands off per flow (0.1.0 never accelerated TCP there).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData};
use serde_json::{Value, json};
use veth_common::{ABI_VERSION, CONFIG_ABI, MAP_CONFIG};
use vethfp_tests::{
    Agent, Container, Count, EndpointStats, Netns, Node, TcpFlow, UplinkStats,
    cni::{CniEnv, TempDir, cni_plugin, exec_plugin, with_prev},
    ipt, ping, tcp_flow, udp_frame_len, udp_recv, udp_send_paced, vethfp_bin,
};

const UL: &str = "vup";
const BR: &str = "br0";
const PAYLOAD: usize = 200;
/// Datagrams per stream and the gap between them: a stream lasts about N × GAP.
const N: u64 = 30_000;
const GAP: Duration = Duration::from_micros(500);

/// The previous release's `vethfp`: `$VETHFP_PREV_BIN` (`cargo xtask test` sets it), else
/// where `cargo xtask prev-release` leaves it for the release CHANGELOG.md records
/// (`target/prev-release/<commit>/vethfp`). Missing: the test fails saying how to build it.
fn prev_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VETHFP_PREV_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "VETHFP_PREV_BIN={} does not exist: run `cargo xtask prev-release`",
            p.display()
        );
        return p;
    }
    let changelog = Path::new(env!("CARGO_MANIFEST_DIR")).join("../CHANGELOG.md");
    let text = std::fs::read_to_string(&changelog).expect("reading CHANGELOG.md");
    let commit = text
        .lines()
        .skip_while(|l| !l.starts_with("## ") || l.starts_with("## Unreleased"))
        .find_map(|l| l.strip_prefix("Commit "))
        .map(|c| c.trim_end_matches('.').to_string())
        .expect("CHANGELOG.md records the previous release's commit");
    // The test executable is target/<profile>/deps/upgrade-<hash>.
    let exe = std::env::current_exe().expect("current_exe");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("target dir of the test executable");
    let p = target.join("prev-release").join(&commit).join("vethfp");
    assert!(
        p.is_file(),
        "the upgrade tests need the previous release's vethfp ({commit}), built from git: run \
         `cargo xtask prev-release` (or set VETHFP_PREV_BIN; `cargo xtask test` does both); \
         not found at {}",
        p.display()
    );
    p
}

fn version_of(bin: &Path) -> String {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .expect("vethfp --version");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The map ABI stamped in the state's config map.
fn state_abi(dir: &Path) -> u32 {
    let data = MapData::from_pin(dir.join(MAP_CONFIG)).expect("open the config map pin");
    let m: Array<MapData, u32> = Array::try_from(Map::Array(data)).expect("config array");
    m.get(&CONFIG_ABI, 0).expect("ABI slot")
}

/// Object hashes of the program pins (`progs/<name>-<hash>`): hash → count.
fn prog_hashes(dir: &Path) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir.join("progs")).expect("progs dir") {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        let (_, hash) = name.rsplit_once('-').expect("progs/<name>-<hash>");
        *out.entry(hash.to_string()).or_default() += 1;
    }
    out
}

/// Kernel program ids of the tc filters on `dev` (both directions).
fn filter_prog_ids(ns: &Netns, dev: &str) -> BTreeSet<u64> {
    filter_progs(ns, dev).into_iter().collect()
}

/// Kernel program id of each tc filter on `dev` (both directions).
fn filter_progs(ns: &Netns, dev: &str) -> Vec<u64> {
    let mut ids = Vec::new();
    for dir in ["ingress", "egress"] {
        let out = ns.tc(&["-j", "filter", "show", "dev", dev, dir]);
        let v: Value = serde_json::from_str(&out).unwrap_or(json!([]));
        for f in v.as_array().into_iter().flatten() {
            if let Some(id) = f["options"]["prog"]["id"].as_u64() {
                ids.push(id);
            }
        }
    }
    ids
}

/// Kernel ids of this node's program pins whose name ends with `-hash`.
fn pinned_prog_ids(dir: &Path, hash: &str) -> BTreeSet<u64> {
    std::fs::read_dir(dir.join("progs"))
        .expect("progs dir")
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(&format!("-{hash}")))
        .map(|p| {
            aya::programs::ProgramInfo::from_pin(&p)
                .expect("program pin")
                .id() as u64
        })
        .collect()
}

fn check_ok_bin(node: &Node, bin: &Path, args: &[&str]) -> String {
    vethfp_tests::check_ok(&node.vethfp_with(bin, args), args)
}

/// `stats --json` by `bin`, by host interface.
fn stats_by(node: &Node, bin: &Path) -> BTreeMap<String, EndpointStats> {
    let out = check_ok_bin(node, bin, &["stats", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v.as_array()
        .expect("stats --json: array")
        .iter()
        .map(|v| {
            let s = EndpointStats::parse(v);
            (s.host_if.clone(), s)
        })
        .collect()
}

/// The uplink's counters from `status --json` by `bin`.
fn uplink_by(node: &Node, bin: &Path) -> UplinkStats {
    let out = check_ok_bin(node, bin, &["status", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["uplinks"]
        .as_array()
        .and_then(|a| a.iter().find(|u| u["name"] == UL))
        .map(UplinkStats::parse)
        .unwrap_or_else(|| panic!("status --json: no uplink {UL}: {v}"))
}

/// Every counter of every endpoint of `before` is in `after` and did not go backwards
/// ([`EndpointStats::since`] panics if one did).
fn assert_continuous(
    before: &BTreeMap<String, EndpointStats>,
    after: &BTreeMap<String, EndpointStats>,
    when: &str,
) {
    for (name, b) in before {
        let a = after
            .get(name)
            .unwrap_or_else(|| panic!("{when}: endpoint {name} lost its counters: {after:?}"));
        assert_eq!(a.host_ifindex, b.host_ifindex, "{when}: {name}");
        a.since(b);
    }
}

/// A live node made by the previous release.
struct OldNode {
    // Drop order: containers, remote and bridge ports before the node.
    c: Vec<Container>,
    ports: Vec<(Netns, IpAddr)>,
    remote: Netns,
    node: Node,
    old: PathBuf,
    old_hash: String,
}

impl OldNode {
    fn new(x: u8) -> OldNode {
        let old = prev_bin();
        let node = Node::without_state(x);
        // The uplink's fast path asks the kernel's FIB, which answers only with forwarding
        // on (as in uplink.rs); the counters prove what the fast path carried.
        node.ns.sysctl("net.ipv4.ip_forward", "1");
        let ok = |args: &[&str]| check_ok_bin(&node, &old, args);
        assert!(ok(&["admission", "always"]).contains("always"));
        let c1 = node.add_container_bin(&old, "vg1", &[&format!("10.{x}.0.2/24")], &[]);
        let c2 = node.add_container_bin(&old, "vg2", &[&format!("10.{x}.0.3/24")], &[]);
        let c3 = node.add_container_bin(
            &old,
            "vg3",
            &[&format!("10.{x}.0.4/24")],
            &["--mode", "xdp"],
        );
        // A docker-like bridge with two ports, accelerated in place.
        node.ns.ip(&["link", "add", BR, "type", "bridge"]);
        node.ns
            .ip(&["addr", "add", &format!("10.{x}.1.1/24"), "dev", BR]);
        node.ns.ip(&["link", "set", BR, "up"]);
        let mut ports = Vec::new();
        for k in 0..2 {
            let ns = Netns::new("vgb");
            ns.quiet_ipv6();
            let port = format!("vgp{k}");
            node.ns.add_veth(&port, "eth0", &ns);
            node.ns.ip(&["link", "set", &port, "master", BR, "up"]);
            let ip = format!("10.{x}.1.{}", k + 2);
            ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
            ns.ip(&["link", "set", "eth0", "up"]);
            ns.sysctl("net.ipv4.neigh.eth0.base_reachable_time_ms", "3600000");
            ports.push((ns, ip.parse().unwrap()));
        }
        ok(&["bridge", "accelerate", BR]);
        // An uplink to a remote namespace that routes the node's containers through it.
        let remote = Netns::new("vgr");
        remote.quiet_ipv6();
        node.ns.add_veth(UL, "eth0", &remote);
        node.ns
            .ip(&["addr", "add", &format!("10.255.{x}.1/24"), "dev", UL]);
        node.ns.ip(&["link", "set", UL, "up"]);
        remote.ip(&["addr", "add", &format!("10.255.{x}.2/24"), "dev", "eth0"]);
        remote.ip(&["link", "set", "eth0", "up"]);
        remote.ip(&[
            "route",
            "add",
            &format!("10.{x}.0.0/24"),
            "via",
            &format!("10.255.{x}.1"),
        ]);
        for (ns, dev) in [(&node.ns, UL), (&remote, "eth0")] {
            ns.sysctl(
                &format!("net.ipv4.neigh.{dev}.base_reachable_time_ms"),
                "3600000",
            );
        }
        ok(&["uplink", "attach", UL]);
        for ns in [&node.ns, &remote] {
            ns.wait_addrs_ready(Duration::from_secs(10));
        }
        for (ns, _) in &ports {
            ns.wait_addrs_ready(Duration::from_secs(10));
        }
        // Every path once (neighbours resolved), then quiet.
        let c = vec![c1, c2, c3];
        assert!(ping(c[0].name(), c[1].v4()), "tc -> tc");
        assert!(ping(c[1].name(), c[2].v4()), "tc -> xdp");
        assert!(ping(remote.name(), c[0].v4()), "uplink -> tc");
        assert!(ping(ports[0].0.name(), ports[1].1), "bridge port -> port");
        let hashes = prog_hashes(&node.bpffs_dir());
        assert_eq!(hashes.len(), 1, "one build's programs: {hashes:?}");
        let old_hash = hashes.into_keys().next().unwrap();
        let on = OldNode {
            c,
            ports,
            remote,
            node,
            old,
            old_hash,
        };
        on.wait_quiet();
        on
    }

    fn dir(&self) -> PathBuf {
        self.node.bpffs_dir()
    }

    fn wait_quiet(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = stats_by(&self.node, &self.old);
        let mut since = Instant::now();
        while since.elapsed() < Duration::from_millis(700) {
            assert!(
                Instant::now() < deadline,
                "counters still moving after 20 s"
            );
            std::thread::sleep(Duration::from_millis(100));
            let now = stats_by(&self.node, &self.old);
            if now != last {
                last = now;
                since = Instant::now();
            }
        }
    }
}

/// The three UDP streams and the TCP connection.
struct Traffic {
    streams: Vec<(&'static str, vethfp_tests::UdpReceiver, JoinHandle<u64>)>,
    tcp: TcpFlow,
}

impl Traffic {
    fn start(o: &OldNode) -> Traffic {
        let mut streams = Vec::new();
        let flows: [(&'static str, &str, &str, IpAddr); 3] = [
            ("tc -> tc", o.c[0].name(), o.c[1].name(), o.c[1].v4()),
            ("uplink -> tc", o.remote.name(), o.c[0].name(), o.c[0].v4()),
            (
                "bridge port -> port",
                o.ports[0].0.name(),
                o.ports[1].0.name(),
                o.ports[1].1,
            ),
        ];
        for (what, from, to, ip) in flows {
            let rx = udp_recv(
                to,
                SocketAddr::new(ip, 0),
                N,
                PAYLOAD,
                Duration::from_secs(120),
            );
            let tx = udp_send_paced(from, None, &rx, N, PAYLOAD, 256, GAP);
            streams.push((what, rx, tx));
        }
        let tcp = tcp_flow(o.c[1].name(), o.c[2].name(), o.c[2].v4());
        assert!(
            tcp.wait_echoed(1 << 20, Duration::from_secs(20)),
            "TCP tc <-> xdp before the upgrade"
        );
        Traffic { streams, tcp }
    }

    /// Every stream still running (none finished before this point).
    fn assert_running(&self, when: &str) {
        for (what, rx, _) in &self.streams {
            assert!(
                rx.so_far() < N,
                "{when}: the {what} stream already ended: make it longer (N, GAP)"
            );
        }
    }

    /// Waits for every stream: all N datagrams arrived (0 lost); the TCP connection echoed
    /// every byte. Returns the bytes the connection carried.
    fn finish(self) -> u64 {
        for (what, rx, tx) in self.streams {
            let sent = vethfp_tests::join(tx);
            let got = rx.wait();
            assert_eq!(sent, N, "{what}: the sender stalled (datagrams lost)");
            assert_eq!(got, N, "{what}: {} datagrams lost", N - got);
        }
        self.tcp
            .finish()
            .expect("the TCP connection across the upgrade")
    }
}

/// Waits until the state holds no program pin of the old build (this build's agent prunes
/// them once no filter or link runs them).
fn wait_old_pins_gone(o: &OldNode, agent: &Agent) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while prog_hashes(&o.dir()).contains_key(&o.old_hash) {
        assert!(
            Instant::now() < deadline,
            "old program pins still there after 30 s: {:?}\n{}",
            prog_hashes(&o.dir()),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The state is this build's: ABI, version link, only this build's programs, every hook of
/// every endpoint, bridge port and the uplink running them.
fn assert_taken_over(o: &OldNode, new_version: &str) {
    let dir = o.dir();
    assert_eq!(state_abi(&dir), ABI_VERSION, "the state's map ABI");
    let link = std::fs::read_link(dir.join("version")).expect("DIR/version");
    assert!(
        new_version.contains(link.to_string_lossy().split(' ').next().unwrap()),
        "version link {link:?} names this build ({new_version})"
    );
    let hashes = prog_hashes(&dir);
    assert_eq!(hashes.len(), 1, "only this build's programs: {hashes:?}");
    let (new_hash, _) = hashes.into_iter().next().unwrap();
    assert_ne!(new_hash, o.old_hash);
    let ours = pinned_prog_ids(&dir, &new_hash);
    let devs: Vec<String> =
        o.c.iter()
            .filter(|c| c.host_if != "vg3")
            .map(|c| c.host_if.clone())
            .chain(["vgp0".into(), "vgp1".into()])
            .collect();
    for dev in &devs {
        let ids = filter_prog_ids(&o.node.ns, dev);
        assert!(!ids.is_empty(), "{dev} has filters");
        assert!(
            ids.is_subset(&ours),
            "{dev}: filters run this build's programs {ours:?}, got {ids:?}"
        );
    }
    // XDP endpoint and uplink: pinned links, each running one of this build's programs.
    for e in std::fs::read_dir(dir.join("links")).unwrap() {
        let p = e.unwrap().path();
        let info = aya::programs::links::PinnedLink::from_pin(&p)
            .map(aya::programs::links::FdLink::from)
            .expect("link pin")
            .info()
            .expect("link info");
        assert!(
            ours.contains(&(info.program_id() as u64)),
            "{}: runs this build's program",
            p.display()
        );
    }
}

/// A CNI ADD with this build (a routed endpoint in 10.X.3.0/24), traffic to an endpoint of
/// the old release, and its DEL.
fn cni_add_del(o: &OldNode, x: u8) {
    cni_plugin("host-local");
    let ipam = TempDir::new("i");
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": vethfp_tests::unique_name("up"),
        "type": "vethfp",
        "bpffs": o.dir(),
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": format!("10.{x}.3.0/24")}]],
            "dataDir": ipam.path(),
        },
    });
    let ns = Netns::new("vgk");
    ns.quiet_ipv6();
    let cid = format!("upgrade{}", std::process::id());
    let env = CniEnv::full("ADD", &cid, ns.name(), "eth0");
    let res = exec_plugin(
        o.node.name(),
        &vethfp_bin(),
        &env,
        conf.to_string().as_bytes(),
    )
    .ok("ADD");
    ns.wait_addrs_ready(Duration::from_secs(10));
    assert!(
        ping(ns.name(), o.c[1].v4()),
        "CNI container -> old endpoint"
    );
    let env = CniEnv::full("DEL", &cid, ns.name(), "eth0");
    exec_plugin(
        o.node.name(),
        &vethfp_bin(),
        &env,
        with_prev(&conf, &res).to_string().as_bytes(),
    )
    .ok("DEL");
}

/// `pair add` a new endpoint with this build, traffic to an old one, `pair del`.
fn pair_add_del(o: &OldNode, x: u8) {
    let c = o.node.add_container("vg4", &[&format!("10.{x}.0.9/24")]);
    assert!(ping(c.name(), o.c[1].v4()), "new endpoint -> old endpoint");
    o.node.ok(&["pair", "del", "vg4"]);
    assert!(o.node.list_entry("vg4").is_none());
}

/// Counters that carried exactly one stream each went up by exactly that stream.
fn assert_exact(
    before: &BTreeMap<String, EndpointStats>,
    after: &BTreeMap<String, EndpointStats>,
    o: &OldNode,
) {
    let frame = udp_frame_len(o.c[1].v4(), PAYLOAD);
    let want = Count::new(N, N * frame);
    let d = |n: &str| after[n].since(&before[n]);
    assert_eq!(
        d("vg1").from("fast"),
        want,
        "vg1 from_container.fast: tc -> tc"
    );
    assert_eq!(
        d("vg1").to("fast_uplink"),
        want,
        "vg1 to_container.fast_uplink: uplink -> tc"
    );
    // Bridge ports resolve their neighbours with ARP, which the bypass carries too: a
    // re-probe (42-byte frames) may fall into the stream's time; nothing else may.
    for (what, got) in [
        ("vgp0 from_container.fast", d("vgp0").from("fast")),
        ("vgp1 to_container.fast", d("vgp1").to("fast")),
    ] {
        let extra = (
            got.packets.saturating_sub(want.packets),
            got.bytes.saturating_sub(want.bytes),
        );
        assert!(
            got.packets >= N && extra.0 <= 4 && extra.1 == extra.0 * 42,
            "{what}: bridge port -> port: {N} datagrams ({want:?}) and at most a few ARP \
             frames, got {got:?}"
        );
    }
    for (n, s) in after {
        if let Some(b) = before.get(n) {
            let s = s.since(b);
            for v in [
                "drop_spoof_ip",
                "drop_spoof_mac",
                "drop_policy",
                "drop_error",
            ] {
                assert_eq!(s.from(v), Count::default(), "{n}: from.{v}");
                assert_eq!(s.to(v), Count::default(), "{n}: to.{v}");
            }
        }
    }
}

#[test]
fn upgrade_from_previous_release_under_traffic() {
    let t0 = Instant::now();
    let o = OldNode::new(71);
    let new_version = version_of(&vethfp_bin());
    assert_ne!(version_of(&o.old), new_version);
    assert_eq!(state_abi(&o.dir()), 3, "0.1.0 made a state of map ABI 3");
    // 0.1.0's agent runs, as on a node, until the rollout stops it.
    let mut old_agent = Agent::spawn_bin(&o.node, &o.old, &[]);
    old_agent.wait_ready();
    let s0 = stats_by(&o.node, &o.old);
    let u0 = uplink_by(&o.node, &o.old);
    let traffic = Traffic::start(&o);
    let s1 = stats_by(&o.node, &o.old);
    assert_continuous(&s0, &s1, "old build, streams running");
    let u1 = uplink_by(&o.node, &o.old);
    u1.since(&u0);

    // The rollout: the new binary is installed (its first call, here `status`, migrates the
    // state and pins its programs beside the old ones) while 0.1.0's agent still runs; then
    // that agent is stopped (SIGTERM leaves the datapath) and this build's starts.
    let st = o.node.ok(&["status"]);
    assert!(st.contains("datapath"), "{st}");
    assert_eq!(
        state_abi(&o.dir()),
        ABI_VERSION,
        "migrated by the first call"
    );
    let hashes = prog_hashes(&o.dir());
    assert_eq!(
        hashes.len(),
        2,
        "old and new programs side by side: {hashes:?}"
    );
    let s2 = o.node.all_stats();
    assert_continuous(&s1, &s2, "after this build's first call");
    let u2 = o.node.uplink(UL);
    u2.since(&u1);

    // 0.1.0's agent ran across the migration; stopped now, it leaves the state as it is.
    let (st, log) = old_agent.terminate();
    assert!(
        st.success(),
        "0.1.0's agent stopped by SIGTERM: {st}: {log}"
    );
    assert_eq!(
        state_abi(&o.dir()),
        ABI_VERSION,
        "0.1.0's agent left the ABI alone"
    );
    // This build's agent swaps every hook to its programs and prunes the old pins.
    let agent = Agent::start(&o.node, &[]);
    wait_old_pins_gone(&o, &agent);
    traffic.assert_running("programs swapped");
    assert_taken_over(&o, &new_version);
    let s3 = o.node.all_stats();
    assert_continuous(&s2, &s3, "after the agent's takeover");
    let tcp_at_swap = traffic.tcp.echoed();

    pair_add_del(&o, 71);
    cni_add_del(&o, 71);
    traffic.assert_running("pair add/del and CNI ADD/DEL done");
    assert!(
        traffic
            .tcp
            .wait_echoed(tcp_at_swap + (1 << 20), Duration::from_secs(20)),
        "TCP goes on after the takeover"
    );
    let tcp_bytes = traffic.finish();
    o.wait_quiet_new();
    let s4 = o.node.all_stats();
    assert_continuous(&s3, &s4, "at the end");
    assert_exact(&s0, &s4, &o);
    let du = o.node.uplink(UL).since(&u2);
    assert_eq!(
        o.node.uplink(UL).since(&u0).received_fast.packets,
        N,
        "uplink received_fast: the uplink -> tc stream, each datagram once ({du:?} since the first call)"
    );
    eprintln!(
        "upgrade under traffic: 3 x {N} datagrams, 0 lost; TCP {tcp_bytes} bytes; {:?}",
        t0.elapsed()
    );
}

impl OldNode {
    /// [`OldNode::wait_quiet`] with this build (after the upgrade).
    fn wait_quiet_new(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = self.node.all_stats();
        let mut since = Instant::now();
        while since.elapsed() < Duration::from_millis(700) {
            assert!(
                Instant::now() < deadline,
                "counters still moving after 20 s"
            );
            std::thread::sleep(Duration::from_millis(100));
            let now = self.node.all_stats();
            if now != last {
                last = now;
                since = Instant::now();
            }
        }
    }
}

/// Where a killed takeover left the state: map ABI, program pins of the old build and of
/// this one, and how many hooks (filters, links) still run the old build's programs.
fn progress(o: &OldNode) -> String {
    let dir = o.dir();
    let h = prog_hashes(&dir);
    let old = h.get(&o.old_hash).copied().unwrap_or(0);
    let old_ids = pinned_prog_ids(&dir, &o.old_hash);
    let mut hooks = ["vg1", "vg2", "vgp0", "vgp1"]
        .iter()
        .flat_map(|d| filter_progs(&o.node.ns, d))
        .filter(|id| old_ids.contains(id))
        .count();
    for e in std::fs::read_dir(dir.join("links")).unwrap() {
        let p = e.unwrap().path();
        let id = aya::programs::links::PinnedLink::from_pin(&p)
            .ok()
            .map(aya::programs::links::FdLink::from)
            .and_then(|l| l.info().ok())
            .map_or(0, |i| i.program_id());
        hooks += old_ids.contains(&(id as u64)) as usize;
    }
    format!(
        "map ABI {}, program pins: {old} old, {} new; hooks (filters, links) running old programs: {hooks}",
        state_abi(&dir),
        h.values().sum::<usize>() - old
    )
}

/// The takeover SIGKILLed at spread points: this build's first CLI call (which migrates the
/// map ABI and pins its programs beside the old ones) every 60 ms further into it until one
/// finishes on its own, then its agent right after its start and right after its first
/// in-place program replacement (seen in its log), twice. No kill may cost a datagram or
/// the connection; the next agent completes the upgrade.
#[test]
fn upgrade_killed_at_spread_points_resumes() {
    let o = OldNode::new(72);
    let new_version = version_of(&vethfp_bin());
    let s0 = stats_by(&o.node, &o.old);
    let traffic = Traffic::start(&o);
    let mut seen = Vec::new();
    let check = |what: String, seen: &mut Vec<String>| {
        let abi = state_abi(&o.dir());
        assert!(
            abi == 3 || abi == ABI_VERSION,
            "{what}: map ABI {abi} is 0.1.0's or this build's"
        );
        seen.push(format!("{what}: {}", progress(&o)));
    };
    let mut ms = 0u64;
    loop {
        let mut child = o.node.spawn(&["status"]);
        let deadline = Instant::now() + Duration::from_millis(ms);
        let mut exited = None;
        while exited.is_none() && Instant::now() < deadline {
            exited = child.try_wait().expect("try_wait status");
            std::thread::sleep(Duration::from_millis(2));
        }
        if let Some(st) = exited.or(child.try_wait().expect("try_wait status")) {
            assert!(st.success(), "status after the kills: {st}");
            check(format!("status finished within {ms} ms"), &mut seen);
            break;
        }
        child.kill().expect("SIGKILL status");
        child.wait().expect("wait for the killed status");
        check(format!("status killed after {ms} ms"), &mut seen);
        ms += 60;
        assert!(ms < 20_000, "status never finished: {seen:?}");
    }
    assert_eq!(state_abi(&o.dir()), ABI_VERSION, "migrated");
    for kill_on in [None, Some("replaced by"), Some("replaced by")] {
        let agent = Agent::spawn(&o.node, &[]);
        if let Some(pat) = kill_on {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !agent.log().contains(pat) && prog_hashes(&o.dir()).contains_key(&o.old_hash) {
                assert!(Instant::now() < deadline, "agent: {}", agent.log());
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        agent.kill();
        check(
            format!(
                "agent killed {}",
                kill_on.map_or("at its start", |_| "after its first replacement")
            ),
            &mut seen,
        );
    }
    eprintln!("{}", seen.join("\n"));
    // Nothing was lost meanwhile: the next agent completes the upgrade.
    let agent = Agent::start(&o.node, &[]);
    wait_old_pins_gone(&o, &agent);
    assert_taken_over(&o, &new_version);
    traffic.assert_running("upgrade completed after the kills");
    pair_add_del(&o, 72);
    traffic.finish();
    o.wait_quiet_new();
    let s1 = o.node.all_stats();
    assert_continuous(&s0, &s1, "after the kills and the upgrade");
    assert_exact(&s0, &s1, &o);
}

fn config_values(dir: &Path) -> Vec<u32> {
    let data = MapData::from_pin(dir.join(MAP_CONFIG)).expect("open the config map pin");
    let m: Array<MapData, u32> = Array::try_from(Map::Array(data)).expect("config array");
    (0..m.len()).map(|i| m.get(&i, 0).expect("slot")).collect()
}

/// A downgrade: 0.1.0 run against the state this build upgraded is refused by every command
/// (map ABI 4), and changes nothing but what it does before checking the ABI: it pins its own
/// programs (`progs/<name>-<its hash>`). Maps, config, links, endpoints stay; this build's
/// agent removes those pins (nothing runs them); the endpoints keep working.
#[test]
fn downgrade_to_previous_release_is_refused() {
    let o = OldNode::new(73);
    let new_version = version_of(&vethfp_bin());
    o.node.ok(&["status"]);
    let agent = Agent::start(&o.node, &[]);
    wait_old_pins_gone(&o, &agent);
    assert_taken_over(&o, &new_version);
    // No agent of this build running: nothing else changes the state meanwhile.
    let (st, log) = agent.terminate();
    assert!(st.success(), "agent SIGTERM: {st}: {log}");

    let mount = o.node.bpffs.mount_point().to_path_buf();
    let before = vethfp_tests::pin_listing(&mount);
    let cfg = config_values(&o.dir());
    let links = o.node.ns.link_names();
    let list = o.node.list_json();
    let c = Netns::new("vgd");
    let cmds: Vec<Vec<&str>> = vec![
        vec!["status"],
        vec!["pair", "list"],
        vec!["stats", "--json"],
        vec![
            "pair",
            "add",
            "vg5",
            "--netns",
            c.name(),
            "--addr",
            "10.73.0.20/24",
        ],
        vec!["pair", "del", "vg1"],
        vec!["uplink", "detach", UL],
        vec!["bridge", "release", BR],
        vec!["admission", "netfilter"],
        vec!["agent", "--metrics-addr", "127.0.0.1:9752"],
    ];
    let old_name = format!("-{}", o.old_hash);
    for args in &cmds {
        let out = o.node.vethfp_with(&o.old, args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "0.1.0 {args:?} refused: {stderr}");
        assert!(
            stderr.contains(&format!("map ABI version {ABI_VERSION}"))
                && stderr.contains("this vethfp uses 3"),
            "0.1.0 {args:?} names the ABI: {stderr}"
        );
        if args[0] != "agent" {
            assert_eq!(out.status.code(), Some(1), "0.1.0 {args:?}: {stderr}");
        }
        let now = vethfp_tests::pin_listing(&mount);
        for (name, v) in &before {
            assert_eq!(now.get(name), Some(v), "0.1.0 {args:?}: {name} unchanged");
        }
        let added: Vec<&String> = now.keys().filter(|n| !before.contains_key(*n)).collect();
        assert!(
            added
                .iter()
                .all(|n| n.starts_with("vethfp/progs/") && n.ends_with(&old_name)),
            "0.1.0 {args:?} added only its program pins: {added:?}"
        );
        assert_eq!(config_values(&o.dir()), cfg, "0.1.0 {args:?}: config map");
        assert_eq!(o.node.ns.link_names(), links, "0.1.0 {args:?}: node links");
        assert_eq!(
            c.link_names().len(),
            1,
            "0.1.0 {args:?}: container has only lo"
        );
    }
    eprintln!(
        "0.1.0 on the upgraded state added: {:?}",
        vethfp_tests::pin_listing(&mount)
            .keys()
            .filter(|n| !before.contains_key(*n))
            .collect::<Vec<_>>()
    );
    assert_eq!(o.node.list_json(), list, "endpoints unchanged");

    // This build's agent removes what 0.1.0 left; the state is as it was.
    let agent = Agent::start(&o.node, &[]);
    wait_old_pins_gone(&o, &agent);
    assert_eq!(
        vethfp_tests::pin_listing(&mount),
        before,
        "the state is as before the downgrade"
    );
    // And works: exact fast path between two endpoints 0.1.0 made, pair add/del.
    o.wait_quiet_new();
    let s0 = o.node.all_stats();
    let got = vethfp_tests::udp_transfer(
        o.c[0].name(),
        None,
        o.c[1].name(),
        o.c[1].v4(),
        1000,
        PAYLOAD,
    );
    assert_eq!(got, 1000);
    let d = o.node.all_stats()["vg1"].since(&s0["vg1"]);
    assert_eq!(
        d.from("fast"),
        Count::new(1000, 1000 * udp_frame_len(o.c[1].v4(), PAYLOAD))
    );
    pair_add_del(&o, 73);
}

/// Packets dropped by the node's INVALID rules (FORWARD, v4 + v6).
fn invalid_drops(node: &Node) -> u64 {
    [false, true]
        .iter()
        .map(|v6| {
            let out = ipt(node.name(), *v6, "-L FORWARD -v -x -n");
            let line = out
                .lines()
                .find(|l| l.contains("invalid"))
                .expect("the INVALID rule");
            line.split_whitespace()
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum()
}

/// TCP entries of the flow table that this build says are handed off and admitted.
fn handed_off(node: &Node) -> usize {
    let v: Value = serde_json::from_str(&node.ok(&["flows", "--json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter(|f| f["proto"] == "tcp" && f["handoff"] == "handed_off" && f["state"] == "admitted")
        .count()
}

/// The upgrade on a stock node, the node that matters: 0.1.0 with its default admission
/// (`netfilter`), `nf_conntrack_tcp_be_liberal` at 0, kube-proxy's INVALID drop in FORWARD
/// (counting), forwarding on, dual-stack endpoints (two tc, one XDP). Under 0.1.0 TCP is
/// never accelerated there; a paced IPv6 UDP stream and two TCP connections (IPv6 tc ↔ XDP,
/// IPv4 tc ↔ XDP) run across the rollout. Then this build's agent hands both connections off
/// per flow, and their further bytes ride the fast path; not one datagram lost, not one packet
/// dropped as INVALID, both connections intact, counters continuous.
#[test]
fn upgrade_on_a_stock_node_hands_tcp_off() {
    let x = 74;
    let old = prev_bin();
    let node = Node::without_state(x);
    node.ns.sysctl("net.ipv4.ip_forward", "1");
    node.ns.sysctl("net.ipv6.conf.all.forwarding", "1");
    for v6 in [false, true] {
        ipt(
            node.name(),
            v6,
            "-A FORWARD -m conntrack --ctstate INVALID -m comment --comment invalid -j DROP",
        );
    }
    assert_eq!(
        node.ns
            .read_sysctl("net.netfilter.nf_conntrack_tcp_be_liberal")
            .trim(),
        "0",
        "a stock node"
    );
    assert_eq!(
        check_ok_bin(&node, &old, &["admission"]).trim(),
        "netfilter",
        "0.1.0's default admission"
    );
    let c: Vec<Container> = [("vs1", "tc", 2), ("vs2", "tc", 3), ("vs3", "xdp", 4)]
        .iter()
        .map(|(h, mode, i)| {
            let (a4, a6) = (format!("10.{x}.0.{i}/24"), format!("fd00:{x}::{i}/64"));
            node.add_container_bin(&old, h, &[&a4, &a6], &["--mode", mode])
        })
        .collect();
    assert!(ping(c[0].name(), c[1].v6()), "tc -> tc, v6");
    assert!(ping(c[1].name(), c[2].v6()), "tc -> xdp, v6");
    assert!(ping(c[0].name(), c[2].v4()), "tc -> xdp, v4");
    let mut old_agent = Agent::spawn_bin(&node, &old, &[]);
    old_agent.wait_ready();
    let dir = node.bpffs_dir();
    let old_hash = prog_hashes(&dir).into_keys().next().unwrap();

    let rx = udp_recv(
        c[1].name(),
        SocketAddr::new(c[1].v6(), 0),
        N,
        PAYLOAD,
        Duration::from_secs(120),
    );
    let tx = udp_send_paced(c[0].name(), None, &rx, N, PAYLOAD, 256, GAP);
    let tcp6 = tcp_flow(c[1].name(), c[2].name(), c[2].v6());
    let tcp4 = tcp_flow(c[0].name(), c[2].name(), c[2].v4());
    for (what, f) in [("v6", &tcp6), ("v4", &tcp4)] {
        assert!(
            f.wait_echoed(1 << 20, Duration::from_secs(20)),
            "TCP {what} under 0.1.0"
        );
    }
    let s1 = stats_by(&node, &old);

    // The rollout, as in upgrade_from_previous_release_under_traffic.
    let st = node.ok(&["status"]);
    assert!(st.contains("datapath"), "{st}");
    assert_eq!(state_abi(&dir), ABI_VERSION, "migrated by the first call");
    let (st, log) = old_agent.terminate();
    assert!(
        st.success(),
        "0.1.0's agent stopped by SIGTERM: {st}: {log}"
    );
    let agent = Agent::start(&node, &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while prog_hashes(&dir).contains_key(&old_hash) || handed_off(&node) < 2 {
        assert!(
            Instant::now() < deadline,
            "old pins {:?}, {} TCP flows handed off after 30 s; agent log:\n{}",
            prog_hashes(&dir),
            handed_off(&node),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(node.status_json()["tcp"], "handoff");
    assert!(
        rx.so_far() < N,
        "the UDP stream ended before the takeover: make it longer (N, GAP)"
    );

    // Handed off: the connections' further bytes are carried by the fast path.
    let s2 = node.all_stats();
    assert_continuous(&s1, &s2, "after the takeover");
    for (what, f) in [("v6", &tcp6), ("v4", &tcp4)] {
        let at = f.echoed();
        assert!(
            f.wait_echoed(at + (4 << 20), Duration::from_secs(20)),
            "TCP {what} after the hand-off"
        );
    }
    let s3 = node.all_stats();
    let d = s3["vs3"].since(&s2["vs3"]);
    let (fast, stack) = (d.to("fast").bytes, d.to("stack").bytes);
    assert!(
        fast >= 8 << 20 && fast * 10 >= (fast + stack) * 9,
        "vs3 to_container after the hand-off: fast {fast} B, stack {stack} B: {d:?}"
    );

    let sent = vethfp_tests::join(tx);
    assert_eq!(sent, N, "the sender stalled");
    assert_eq!(rx.wait(), N, "UDP v6 across the upgrade: datagrams lost");
    for (what, f) in [("v6", tcp6), ("v4", tcp4)] {
        f.finish()
            .unwrap_or_else(|e| panic!("TCP {what} across the upgrade: {e}"));
    }
    assert_eq!(invalid_drops(&node), 0, "packets dropped as INVALID");
    let s4 = node.all_stats();
    assert_continuous(&s3, &s4, "at the end");
    for (n, s) in &s4 {
        let s = s.since(&s1[n]);
        for v in [
            "drop_spoof_ip",
            "drop_spoof_mac",
            "drop_policy",
            "drop_error",
        ] {
            assert_eq!(s.from(v), Count::default(), "{n}: from.{v}");
            assert_eq!(s.to(v), Count::default(), "{n}: to.{v}");
        }
    }
    drop(agent);
}
