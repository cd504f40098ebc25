//! Control plane v2 (issue 13): the state lock is held only around map updates. An operation
//! doing its kernel work (veth, addresses, routes) does not block other writers, and its
//! journal intent is never recovered (rolled back) by them while it runs.

use std::{
    process::Child,
    time::{Duration, Instant},
};

use veth_common::{INTENT_DEL, Intent, NAME_LEN};
use vethfp::datapath::{Datapath, OpsLock, StateLock};
use vethfp_tests::{
    Agent,
    cni::{CNI_PLUGIN_DIR, CniEnv, CniNet, TempDir, container_id, container_ns},
    node::Node,
    ns::Netns,
    traffic::ping,
};

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

/// Waits for `child` to exit with `within`, killing it if it does not. Some(success) if it
/// exited in time.
fn wait_within(child: &mut Child, within: Duration) -> Option<bool> {
    let t = Instant::now();
    while t.elapsed() < within {
        if let Some(st) = child.try_wait().expect("waiting for vethfp") {
            return Some(st.success());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

/// `pair add A` frozen (SIGSTOP) in the middle of its kernel work, after its veth exists and
/// before it registered: another `pair add B` completes meanwhile (old code: B waits for A's
/// lock forever), B's recovery leaves A's half-made veth alone (its intent is live), and A,
/// continued, completes. Both endpoints then work.
#[test]
fn a_stopped_add_blocks_no_writer_and_is_not_rolled_back() {
    let node = Node::new();
    let ca = Netns::new("vfia");
    let cb = Netns::new("vfib");
    let mut caught = 0;
    let mut blocked = 0;
    for attempt in 0..20 {
        let add_a = [
            "pair",
            "add",
            "vfi0",
            "--netns",
            ca.name(),
            "--addr",
            "10.1.0.2/24",
            "--addr",
            "fd00:1::2/64",
        ];
        let mut a = node.spawn(&add_a);
        // Freeze A as soon as its veth exists: it is then in its unlocked kernel part, unless
        // it was already past it (then the attempt does not count).
        let t = Instant::now();
        while node.ns.link("vfi0").is_none() && t.elapsed() < Duration::from_secs(10) {
            if a.try_wait().unwrap().is_some() {
                break;
            }
        }
        signal(&a, libc::SIGSTOP);
        let registered = node.list_entry("vfi0").is_some();
        let mut b = node.spawn(&[
            "pair",
            "add",
            "vfi1",
            "--netns",
            cb.name(),
            "--addr",
            "10.1.0.3/24",
        ]);
        let b_done = wait_within(&mut b, Duration::from_secs(10));
        if b_done.is_none() {
            // B waits for the lock: A was stopped inside a locked step (or this is the old
            // code, where every step is locked). Let A go and try again.
            signal(&a, libc::SIGCONT);
            let _ = b.wait();
            blocked += 1;
        }
        let a_link_kept = node.ns.link("vfi0").is_some();
        signal(&a, libc::SIGCONT);
        let a_ok = wait_within(&mut a, Duration::from_secs(30)) == Some(true);
        assert!(
            a_ok,
            "attempt {attempt}: pair add vfi0 failed after SIGCONT"
        );
        if b_done.is_some() && !registered {
            assert_eq!(
                b_done,
                Some(true),
                "attempt {attempt}: pair add vfi1 failed"
            );
            assert!(
                a_link_kept,
                "attempt {attempt}: B's recovery rolled back A's veth while A was running"
            );
            caught += 1;
        }
        assert!(node.list_entry("vfi0").is_some(), "attempt {attempt}");
        // Both work: the containers reach each other through their endpoints.
        if node.list_entry("vfi1").is_some() {
            assert!(
                ping(ca.name(), "10.1.0.3".parse().unwrap()),
                "attempt {attempt}"
            );
            assert!(
                ping(cb.name(), "10.1.0.2".parse().unwrap()),
                "attempt {attempt}"
            );
            node.ok(&["pair", "del", "vfi1"]);
        }
        node.ok(&["pair", "del", "vfi0"]);
        if caught >= 3 || (caught == 0 && blocked >= 5) {
            break;
        }
    }
    assert!(
        caught >= 3,
        "only {caught} attempts ({blocked} blocked) froze `pair add` in its kernel part with another add \
         completing meanwhile: the state lock is held across kernel work"
    );
}

/// A `pair del` in flight, between its locked steps (its addresses already out of the fast
/// path, its journal intent written, the process alive holding its ops lock), is left to that
/// process by the agent's passes. The old agent "repaired" the dying endpoint: it put its
/// addresses back into the fast path, where they outlived the endpoint. Once the operation is
/// over without finishing (its process gone: ops lock released), the next pass completes it.
#[test]
fn the_agent_leaves_an_endpoint_being_deleted_to_its_del() {
    let node = Node::new();
    let c = node.add_container("vfid0", &["10.1.0.2/24"]);
    let a4 = std::net::Ipv4Addr::new(10, 1, 0, 2);
    let dir = node.bpffs_dir();
    // What `pair del vfid0` has done when it unlocks for the veth delete.
    let in_flight = {
        let _lock = StateLock::acquire(&dir).expect("state lock");
        let mut dp = Datapath::open(&dir).expect("open the state");
        let rec = dp
            .endpoints()
            .unwrap()
            .iter()
            .map(|r| r.unwrap().1)
            .find(|r| r.host_name.starts_with(b"vfid0\0"))
            .expect("the record of vfid0");
        let mut key = [0u8; NAME_LEN];
        key[..5].copy_from_slice(b"vfid0");
        let intent = Intent {
            op: INTENT_DEL,
            ifindex: rec.target.ifindex,
            mac: rec.target.host_mac,
            netns_ino: rec.netns_ino,
            ..Default::default()
        };
        dp.journal().unwrap().insert(key, intent, 0).unwrap();
        dp.ep4().unwrap().remove(&a4.octets()).unwrap();
        OpsLock::shared(&dir).expect("ops lock")
    };
    let agent = Agent::start(&node, &["--reconcile-interval", "0.2"]);
    let passes = |agent: &Agent| {
        agent
            .scrape()
            .get("vethfp_agent_reconciles_total", &[])
            .unwrap_or(0.0)
    };
    let base = passes(&agent);
    let t = Instant::now();
    while passes(&agent) < base + 2.0 {
        assert!(t.elapsed() < Duration::from_secs(30), "no reconcile passes");
        std::thread::sleep(Duration::from_millis(20));
    }
    let published = Datapath::open(&dir)
        .unwrap()
        .ep4()
        .unwrap()
        .get(&a4.octets(), 0)
        .is_ok();
    assert!(
        !published,
        "an agent pass put the address of an endpoint being deleted back into the fast path"
    );
    assert!(
        node.ns.link("vfid0").is_some(),
        "the del in flight deletes its veth itself"
    );
    // The del's process is gone without finishing: the next pass completes its del.
    drop(in_flight);
    let t = Instant::now();
    while node.list_entry("vfid0").is_some() || node.ns.link("vfid0").is_some() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the interrupted del was not completed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(c);
}

/// A CNI ADD waiting for its IPAM plugin (a process of its own, with its own lock) does not
/// hold the state lock: another container's ADD completes meanwhile. On the old code the
/// second ADD queued behind the first one's IPAM exec (32 concurrent ADDs paid every IPAM
/// exec one after the other). The CNI spec forbids parallel calls for one container, and
/// different containers touch different host ends.
#[test]
fn a_cni_add_waiting_for_ipam_blocks_no_other_add() {
    let net = CniNet::new();
    // An IPAM plugin that makes container "slow…" wait for a file, then is host-local.
    let bin = TempDir::new("ipam");
    let gate = bin.path().join("release");
    let started = bin.path().join("started");
    let script = bin.path().join("gated-ipam");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \"$CNI_CONTAINERID\" in slow*)\n  touch {started}\n  \
             while [ ! -e {gate} ]; do sleep 0.01; done;;\nesac\nexec {CNI_PLUGIN_DIR}/host-local\n",
            started = started.display(),
            gate = gate.display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut conf = net.conf("1.0.0");
    conf["ipam"]["type"] = "gated-ipam".into();
    let path = format!("{}:{CNI_PLUGIN_DIR}", bin.path().display());
    let env = |cid: &str, ns: &Netns| {
        let mut e = CniEnv::full("ADD", cid, ns.name(), "eth0");
        e.path = Some(path.clone());
        e
    };
    let (ns_a, ns_b) = (container_ns(), container_ns());
    let (cid_a, cid_b) = (format!("slow{}", container_id()), container_id());
    let (env_a, env_b) = (env(&cid_a, &ns_a), env(&cid_b, &ns_b));
    std::thread::scope(|s| {
        let a = s.spawn(|| net.vethfp(&env_a, &conf));
        let t = Instant::now();
        while !started.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "ADD A never ran its IPAM"
            );
            assert!(!a.is_finished(), "ADD A ended before its IPAM was released");
            std::thread::sleep(Duration::from_millis(5));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let (net, env_b, conf) = (&net, &env_b, &conf);
        let b = s.spawn(move || {
            let out = net.vethfp(env_b, conf);
            let _ = tx.send(());
            out
        });
        let b_done = rx.recv_timeout(Duration::from_secs(20)).is_ok();
        std::fs::write(&gate, b"").unwrap(); // let A go, whatever happened
        let (out_a, out_b) = (a.join().unwrap(), b.join().unwrap());
        assert!(
            b_done,
            "ADD B waited for ADD A's IPAM exec: the state lock is held across it"
        );
        let ra = out_a.ok("ADD A");
        let rb = out_b.ok("ADD B");
        for (r, ns) in [(&ra, &ns_a), (&rb, &ns_b)] {
            let host = r["interfaces"][0]["name"].as_str().unwrap();
            assert!(net.node.list_entry(host).is_some(), "{host} registered");
            assert_eq!(ns.link_names().len(), 2, "lo and eth0 in {}", ns.name());
        }
        assert_eq!(net.allocated().len(), 4, "two addresses each");
        for (cid, ns, r) in [(&cid_a, &ns_a, &ra), (&cid_b, &ns_b, &rb)] {
            let mut e = env(cid, ns).with_command("DEL");
            e.path = Some(path.clone());
            let mut c = conf.clone();
            c["prevResult"] = r.clone();
            net.vethfp(&e, &c).ok("DEL");
        }
        assert!(net.allocated().is_empty(), "{:?}", net.allocated());
        assert!(net.node_links().is_empty(), "{:?}", net.node_links());
    });
}
