//! Integration tests for `vethfp::sys::tc_filter` (run as root).
//!
//! Each test makes its own "node" and "ctr" namespaces (`tcf-<pid>-<n>`) joined by a veth
//! `h` (node) / `c` (ctr) and runs the session on a thread inside the node namespace; a guard
//! deletes the namespaces also when a test panics. Programs are vethfp's own, loaded unpinned
//! (private maps), so nothing is pinned anywhere.

use std::{
    net::UdpSocket,
    os::fd::{AsFd, OwnedFd},
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{HashMap, PerCpuArray},
    programs::SchedClassifier,
};
use veth_common::{
    Counters, DIR_FROM_CONTAINER, DIR_TO_CONTAINER, EndpointRecord, MAP_COUNTERS, MAP_ENDPOINTS,
    V_STACK,
};
use vethfp::{
    datapath::{Datapath, Program},
    sys::netlink::{Netns, in_netns},
    sys::tc_filter::{BpfFilter, Dir, TcError, TcSession},
};

const NODE_IP: &str = "10.91.0.1";
const CTR_IP: &str = "10.91.0.2";

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect("spawning");
    assert!(
        out.status.success(),
        "{cmd} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// A named namespace, deleted on drop (also on panic).
struct TestNs {
    name: String,
}

impl TestNs {
    fn new() -> TestNs {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "tcf-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        let ns = TestNs { name };
        // No IPv6 chatter (router solicitations, DAD) to blur exact packet counts; net
        // sysctls are per namespace, so write them from a thread inside it.
        in_netns(&Netns::open(&ns.name).unwrap(), || {
            for k in ["all", "default"] {
                std::fs::write(format!("/proc/sys/net/ipv6/conf/{k}/disable_ipv6"), "1")
                    .unwrap_or_else(|e| panic!("disabling IPv6 ({k}): {e}"));
            }
            Ok(())
        })
        .unwrap();
        ns
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

struct Env {
    node: TestNs,
    /// Kept for its Drop (deletes the container namespace).
    _ctr: TestNs,
    node_ns: Netns,
    ctr_ns: Netns,
    /// ifindex of `vh0` in the node namespace.
    host: u32,
    ebpf: Ebpf,
}

impl Env {
    /// Namespaces, veth vh0/vc0 with addresses and permanent neighbours (no ARP in the counts),
    /// and vethfp's tc programs loaded.
    fn new() -> Env {
        let (node, ctr) = (TestNs::new(), TestNs::new());
        let (n, c) = (node.name.as_str(), ctr.name.as_str());
        run(
            "ip",
            &[
                "-n", n, "link", "add", "vh0", "type", "veth", "peer", "name", "vc0", "netns", c,
            ],
        );
        run(
            "ip",
            &[
                "-n",
                n,
                "addr",
                "add",
                &format!("{NODE_IP}/24"),
                "dev",
                "vh0",
            ],
        );
        run(
            "ip",
            &[
                "-n",
                c,
                "addr",
                "add",
                &format!("{CTR_IP}/24"),
                "dev",
                "vc0",
            ],
        );
        let mac = |ns: &str, dev: &str| {
            let s = run("ip", &["-n", ns, "-j", "link", "show", dev]);
            let v: serde_json::Value = serde_json::from_str(&s).unwrap();
            v[0]["address"].as_str().unwrap().to_string()
        };
        let (hmac, cmac) = (mac(n, "vh0"), mac(c, "vc0"));
        run(
            "ip",
            &[
                "-n",
                n,
                "neigh",
                "add",
                CTR_IP,
                "lladdr",
                &cmac,
                "dev",
                "vh0",
                "nud",
                "permanent",
            ],
        );
        run(
            "ip",
            &[
                "-n",
                c,
                "neigh",
                "add",
                NODE_IP,
                "lladdr",
                &hmac,
                "dev",
                "vc0",
                "nud",
                "permanent",
            ],
        );
        run("ip", &["-n", n, "link", "set", "vh0", "up"]);
        run("ip", &["-n", c, "link", "set", "vc0", "up"]);
        let node_ns = Netns::open(n).unwrap();
        let ctr_ns = Netns::open(c).unwrap();
        let s = run("ip", &["-n", n, "-j", "link", "show", "vh0"]);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        let host = v[0]["ifindex"].as_u64().unwrap() as u32;
        let mut ebpf = Datapath::unpinned().expect("BPF object loads");
        for name in [
            Program::TcIngress.name(),
            Program::TcEgress.name(),
            Program::L2Ingress.name(),
        ] {
            let p: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
            p.load()
                .unwrap_or_else(|e| panic!("verifier rejected {name}: {e:?}"));
        }
        Env {
            node,
            _ctr: ctr,
            node_ns,
            ctr_ns,
            host,
            ebpf,
        }
    }

    fn prog(&self, name: &str) -> (OwnedFd, u32) {
        let p: &SchedClassifier = self.ebpf.program(name).unwrap().try_into().unwrap();
        let fd = p.fd().unwrap().as_fd().try_clone_to_owned().unwrap();
        (fd, p.info().unwrap().id())
    }

    /// Runs `f` with a fresh session opened inside the node namespace.
    fn tc<T: Send>(&self, f: impl FnOnce(&mut TcSession) -> T + Send) -> T {
        in_netns(&self.node_ns, || {
            let mut s = TcSession::new().expect("netlink session");
            Ok(f(&mut s))
        })
        .expect("entering the node namespace")
    }

    /// `tc -j filter show dev vh0 DIR` in the node namespace.
    fn tc_show(&self, dir: &str) -> Vec<serde_json::Value> {
        let s = run(
            "tc",
            &[
                "-n",
                &self.node.name,
                "-j",
                "filter",
                "show",
                "dev",
                "vh0",
                dir,
            ],
        );
        if s.trim().is_empty() {
            return vec![];
        }
        serde_json::from_str::<serde_json::Value>(&s)
            .unwrap()
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Sends `k` UDP datagrams of `payload` bytes from `from` to a socket bound in `to`,
    /// and waits until all `k` arrived.
    fn udp(&self, from: &Netns, from_ip: &str, to: &Netns, to_ip: &str, k: usize, payload: usize) {
        let rx = in_netns(to, || Ok(UdpSocket::bind((to_ip, 0)).unwrap())).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let dst = rx.local_addr().unwrap();
        in_netns(from, || {
            let tx = UdpSocket::bind((from_ip, 0)).unwrap();
            for _ in 0..k {
                tx.send_to(&vec![7u8; payload], dst).unwrap();
            }
            Ok(())
        })
        .unwrap();
        let mut buf = [0u8; 2048];
        for i in 0..k {
            rx.recv(&mut buf)
                .unwrap_or_else(|e| panic!("datagram {i} of {k} did not arrive: {e}"));
        }
    }

    fn counters(&mut self, slot: u32) -> Counters {
        let m: PerCpuArray<_, Counters> =
            PerCpuArray::try_from(self.ebpf.map_mut(MAP_COUNTERS).unwrap()).unwrap();
        let mut sum = Counters::default();
        for c in m.get(&slot, 0).unwrap().iter() {
            sum.add(c);
        }
        sum
    }
}

fn ours(filters: &[BpfFilter], prio: u16) -> &BpfFilter {
    let f: Vec<_> = filters.iter().filter(|f| f.prio == prio).collect();
    assert_eq!(f.len(), 1, "one filter at prio {prio}: {filters:?}");
    f[0]
}

#[test]
fn both_directions_run_our_programs_and_count_traffic() {
    let mut env = Env::new();
    let (ing, ing_id) = env.prog(Program::TcIngress.name());
    let (eg, eg_id) = env.prog(Program::TcEgress.name());
    let host = env.host;
    // Slot 0 counts for host end vh0.
    {
        let mut rec: EndpointRecord = unsafe { std::mem::zeroed() };
        rec.target.ifindex = host;
        rec.target.slot = 0;
        let mut eps: HashMap<_, u32, EndpointRecord> =
            HashMap::try_from(env.ebpf.map_mut(MAP_ENDPOINTS).unwrap()).unwrap();
        eps.insert(host, rec, 0).unwrap();
    }
    let (ingress, egress) = env.tc(|s| {
        assert!(s.ensure_clsact(host).unwrap(), "first call adds clsact");
        assert!(!s.ensure_clsact(host).unwrap(), "second call finds it");
        s.add_or_replace_bpf(
            host,
            Dir::Ingress,
            1,
            1,
            ing.as_fd(),
            Program::TcIngress.name(),
        )
        .unwrap();
        s.add_or_replace_bpf(
            host,
            Dir::Egress,
            1,
            1,
            eg.as_fd(),
            Program::TcEgress.name(),
        )
        .unwrap();
        (
            s.list(host, Dir::Ingress).unwrap(),
            s.list(host, Dir::Egress).unwrap(),
        )
    });
    let (i, e) = (ours(&ingress, 1), ours(&egress, 1));
    assert_eq!(
        (i.handle, i.prog_id, i.name.as_str()),
        (1, ing_id, Program::TcIngress.name())
    );
    assert_eq!(
        (e.handle, e.prog_id, e.name.as_str()),
        (1, eg_id, Program::TcEgress.name())
    );
    assert!(i.direct_action && e.direct_action);
    assert!(i.tag.is_some());

    // From the container (tc ingress of vh0), then to it (tc egress of vh0): lengths as tc sees
    // them, Ethernet header included.
    let (k, payload) = (5u64, 100usize);
    let frame = 14 + 20 + 8 + payload as u64;
    env.udp(
        &env.ctr_ns,
        CTR_IP,
        &env.node_ns,
        NODE_IP,
        k as usize,
        payload,
    );
    let c = env.counters(0);
    assert_eq!(c.c[DIR_FROM_CONTAINER][V_STACK].packets, k);
    assert_eq!(c.c[DIR_FROM_CONTAINER][V_STACK].bytes, k * frame);
    assert_eq!(c.c[DIR_TO_CONTAINER][V_STACK].packets, 0);
    env.udp(
        &env.node_ns,
        NODE_IP,
        &env.ctr_ns,
        CTR_IP,
        k as usize,
        payload,
    );
    let c = env.counters(0);
    assert_eq!(c.c[DIR_TO_CONTAINER][V_STACK].packets, k);
    assert_eq!(c.c[DIR_TO_CONTAINER][V_STACK].bytes, k * frame);
    assert_eq!(c.c[DIR_FROM_CONTAINER][V_STACK].packets, k);
}

#[test]
fn replace_in_place_keeps_the_filter_and_swaps_the_program() {
    let env = Env::new();
    let (a, a_id) = env.prog(Program::TcIngress.name());
    let (b, b_id) = env.prog(Program::L2Ingress.name());
    assert_ne!(a_id, b_id);
    let host = env.host;
    let (before, after, again) = env.tc(|s| {
        s.ensure_clsact(host).unwrap();
        s.add_or_replace_bpf(host, Dir::Ingress, 3, 0x10, a.as_fd(), "a")
            .unwrap();
        let before = s.list(host, Dir::Ingress).unwrap();
        s.add_or_replace_bpf(host, Dir::Ingress, 3, 0x10, b.as_fd(), "b")
            .unwrap();
        let after = s.list(host, Dir::Ingress).unwrap();
        // Replacing with the same program again is fine too (idempotent upgrade).
        s.add_or_replace_bpf(host, Dir::Ingress, 3, 0x10, b.as_fd(), "b")
            .unwrap();
        (before, after, s.list(host, Dir::Ingress).unwrap())
    });
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(
        (before[0].prio, before[0].handle, before[0].prog_id),
        (3, 0x10, a_id)
    );
    assert_eq!(after.len(), 1, "still one filter: {after:?}");
    assert_eq!(
        (after[0].prio, after[0].handle, after[0].prog_id),
        (3, 0x10, b_id)
    );
    assert_eq!(after[0].name, "b");
    assert_eq!(again, after);
    assert!(env.tc_show("egress").is_empty(), "egress untouched");
}

#[test]
fn delete_is_idempotent_and_leaves_foreign_filters_alone() {
    let env = Env::new();
    let (a, a_id) = env.prog(Program::TcIngress.name());
    let host = env.host;
    env.tc(|s| s.ensure_clsact(host).unwrap());
    // Someone else's filter at another prio, added with tc(8): classic BPF (no program id)
    // that matches nothing.
    run(
        "tc",
        &[
            "-n",
            &env.node.name,
            "filter",
            "add",
            "dev",
            "vh0",
            "ingress",
            "prio",
            "7",
            "handle",
            "7",
            "bpf",
            "bytecode",
            "1,6 0 0 0,",
        ],
    );
    let (listed, deleted, again, left) = env.tc(|s| {
        s.add_or_replace_bpf(host, Dir::Ingress, 1, 1, a.as_fd(), "ours")
            .unwrap();
        let listed = s.list(host, Dir::Ingress).unwrap();
        // What an owner-checking caller does: delete only filters running its program.
        let mine: Vec<_> = listed
            .iter()
            .filter(|f| f.prog_id == a_id)
            .cloned()
            .collect();
        let mut deleted = 0;
        for f in &mine {
            deleted += s.delete(host, Dir::Ingress, f.prio, f.handle).unwrap() as usize;
        }
        let again = s.delete(host, Dir::Ingress, 1, 1).unwrap();
        (listed, deleted, again, s.list(host, Dir::Ingress).unwrap())
    });
    assert_eq!(listed.len(), 2, "ours and the foreign one: {listed:?}");
    assert_eq!(ours(&listed, 1).prog_id, a_id);
    assert_eq!(ours(&listed, 7).prog_id, 0, "classic BPF has no program id");
    assert_eq!(deleted, 1, "exactly our filter was deleted");
    assert!(!again, "second delete finds nothing");
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(
        (left[0].prio, left[0].handle),
        (7, 7),
        "the foreign filter stays"
    );
    let shown = env.tc_show("ingress");
    assert!(
        shown.iter().any(|f| f["pref"] == 7),
        "tc(8) still shows the foreign filter: {shown:?}"
    );
    assert!(
        !shown.iter().any(|f| f["pref"] == 1),
        "nothing of ours left: {shown:?}"
    );
    // clsact is still there (and idempotent).
    assert!(!env.tc(|s| s.ensure_clsact(host).unwrap()));
}

#[test]
fn filters_go_away_with_the_veth() {
    let env = Env::new();
    let (a, _) = env.prog(Program::TcIngress.name());
    let (e, _) = env.prog(Program::TcEgress.name());
    let host = env.host;
    env.tc(|s| {
        s.ensure_clsact(host).unwrap();
        s.add_or_replace_bpf(host, Dir::Ingress, 1, 1, a.as_fd(), "i")
            .unwrap();
        s.add_or_replace_bpf(host, Dir::Egress, 1, 1, e.as_fd(), "e")
            .unwrap();
    });
    assert_eq!(env.tc_show("ingress").len(), 2, "chain entry + filter");
    run("ip", &["-n", &env.node.name, "link", "del", "vh0"]);
    let r = env.tc(|s| {
        (
            s.list(host, Dir::Ingress).map_err(|e| e.to_string()),
            s.delete(host, Dir::Ingress, 1, 1)
                .map_err(|e| e.to_string()),
        )
    });
    assert_eq!(r, (Ok(vec![]), Ok(false)), "nothing left to list or delete");
    // A veth made again gets a fresh device: no filters, no clsact.
    run(
        "ip",
        &[
            "-n",
            &env.node.name,
            "link",
            "add",
            "vh0",
            "type",
            "veth",
            "peer",
            "name",
            "vh1",
        ],
    );
    assert!(env.tc_show("ingress").is_empty());
}

#[test]
fn errors_say_what_to_do() {
    let env = Env::new();
    let (a, _) = env.prog(Program::TcIngress.name());
    let host = env.host;
    let (no_clsact, unaddressed, no_dev) = env.tc(|s| {
        // Without clsact there is nothing to list or delete: not an error.
        assert_eq!(s.list(host, Dir::Ingress).unwrap(), vec![]);
        assert!(!s.delete(host, Dir::Egress, 1, 1).unwrap());
        (
            s.add_or_replace_bpf(host, Dir::Ingress, 1, 1, a.as_fd(), "x"),
            s.add_or_replace_bpf(host, Dir::Ingress, 0, 1, a.as_fd(), "x"),
            s.ensure_clsact(999_999),
        )
    });
    assert!(
        matches!(&no_clsact, Err(TcError::NoClsact { .. })),
        "{no_clsact:?}"
    );
    assert!(no_clsact.unwrap_err().to_string().contains("ensure_clsact"));
    assert!(matches!(unaddressed, Err(TcError::Unaddressed { .. })));
    assert!(matches!(
        no_dev,
        Err(TcError::NoDevice {
            ifindex: 999_999,
            ..
        })
    ));
    // An `ingress` qdisc where clsact belongs is reported, never replaced.
    run(
        "tc",
        &[
            "-n",
            &env.node.name,
            "qdisc",
            "add",
            "dev",
            "vh0",
            "ingress",
        ],
    );
    let other = env.tc(|s| s.ensure_clsact(host));
    assert!(
        matches!(&other, Err(TcError::OtherQdisc { kind, .. }) if kind == "ingress"),
        "{other:?}"
    );
}
