//! An agent of a new build takes over filters running an older build's programs: it switches
//! each endpoint's cls_bpf filter to its own program in place (NLM_F_REPLACE at the same
//! prio and handle), under a live TCP connection.
//!
//! "Older build" is simulated: the test loads the programs of the embedded object a second
//! time, as separate kernel programs, pins them under another object hash
//! (`progs/<name>-00000000000000aa`, as an older vethfp would have) and switches the filters
//! to them. The agent must notice that the filters do not run this build's programs and
//! replace them: same filter handles, program ids of this build's pins, the old pins gone, the
//! connection alive, the counters going on from where they were.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use aya::{EbpfLoader, programs::SchedClassifier};
use veth_common::MAPS;
use vethfp::datapath::{Datapath, EBPF_OBJECT, Hook, Program};
use vethfp_tests::{Agent, Node, in_netns, join, run_in_netns};

const OLD_HASH: &str = "00000000000000aa";

/// Loads the tcx programs again (new kernel program ids) with the node's pinned maps and
/// pins them as an older build's. Returns their pin paths.
fn load_old_programs(dir: &std::path::Path) -> Vec<(Hook, PathBuf)> {
    let mut loader = EbpfLoader::new();
    for m in MAPS {
        loader.map_pin_path(m, dir.join(m));
    }
    let mut ebpf = loader.load(EBPF_OBJECT).expect("load object");
    [
        (Hook::TcIngress, Program::TcIngress.name()),
        (Hook::TcEgress, Program::TcEgress.name()),
    ]
    .into_iter()
    .map(|(hook, name)| {
        let p: &mut SchedClassifier = ebpf
            .program_mut(name)
            .expect("program")
            .try_into()
            .expect("classifier");
        p.load().expect("load program");
        let pin = dir.join("progs").join(format!("{name}-{OLD_HASH}"));
        p.pin(&pin).expect("pin old program");
        (hook, pin)
    })
    .collect()
}

/// A TCP connection from `client_ns` to a server in `server_ns` that echoes; the client
/// sends 64 KiB rounds and checks every echoed byte until stopped. Returns (rounds done so
/// far, stop flag, client thread, server thread).
struct Echo {
    rounds: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    client: std::thread::JoinHandle<Result<u64, String>>,
    server: std::thread::JoinHandle<Result<(), String>>,
}

fn echo(client_ns: &str, server_ns: &str, server: SocketAddr) -> Echo {
    let (tx, rx) = mpsc::channel();
    let srv = in_netns(server_ns, move || -> Result<(), String> {
        let l = TcpListener::bind(server).map_err(|e| format!("bind {server}: {e}"))?;
        tx.send(()).unwrap();
        let (mut s, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = vec![0u8; 65536];
        loop {
            let k = s.read(&mut buf).map_err(|e| format!("server read: {e}"))?;
            if k == 0 {
                return Ok(());
            }
            s.write_all(&buf[..k])
                .map_err(|e| format!("server write: {e}"))?;
        }
    });
    rx.recv_timeout(Duration::from_secs(10)).expect("server up");
    let rounds = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (r, st) = (rounds.clone(), stop.clone());
    let client = in_netns(client_ns, move || -> Result<u64, String> {
        let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(10))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut back = vec![0u8; 65536];
        let mut n = 0u64;
        while !st.load(Ordering::Acquire) {
            let data: Vec<u8> = (0..65536u32).map(|i| (i as u64 ^ n) as u8).collect();
            s.write_all(&data)
                .map_err(|e| format!("round {n}: write: {e}"))?;
            s.read_exact(&mut back)
                .map_err(|e| format!("round {n}: read: {e}"))?;
            if back != data {
                return Err(format!("round {n}: echo corrupted"));
            }
            n += 1;
            r.store(n, Ordering::Release);
        }
        Ok(n)
    });
    Echo {
        rounds,
        stop,
        client,
        server: srv,
    }
}

fn wait_rounds(e: &Echo, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while e.rounds.load(Ordering::Acquire) < at_least {
        assert!(
            !e.client.is_finished(),
            "the TCP client stopped early (connection broken)"
        );
        assert!(Instant::now() < deadline, "TCP echo stalled");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn new_build_replaces_programs_in_place_under_tcp() {
    let node = Node::new();
    let c1 = node.add_container("vu1", &["10.1.0.2/24"]);
    let c2 = node.add_container("vu2", &["10.1.0.3/24"]);
    let dir = node.bpffs_dir();
    let ifx: Vec<u32> = ["vu1", "vu2"]
        .iter()
        .map(|n| node.stats(n).host_ifindex as u32)
        .collect();

    let mut dp = Datapath::open(&dir).expect("open datapath");
    let current: Vec<u32> = [Program::TcIngress, Program::TcEgress]
        .iter()
        .map(|p| dp.program_id(*p).expect("program id"))
        .collect();

    // A connection through the fast path, running the whole time.
    let e = echo(c1.name(), c2.name(), SocketAddr::new(c2.v4(), 7000));
    wait_rounds(&e, 10);
    let s0 = node.stats("vu1");
    assert!(s0.from("fast").packets > 0, "{s0:?}");

    // The links now run "an older build's" programs.
    let agent = Agent::start(&node, &[]);
    agent.kill();
    let old = load_old_programs(&dir);
    let (d, cur, ix) = (dir.clone(), current.clone(), ifx.clone());
    // Filters are asked and changed inside the node's namespace.
    let links = run_in_netns(node.name(), move || {
        let mut dp = Datapath::open(&d).expect("open datapath");
        let mut links = Vec::new();
        for (hook, pin) in &old {
            for i in &ix {
                let before = dp.link_state(*hook, *i).unwrap().expect("filter");
                dp.replace_program(*hook, *i, pin).expect("switch to old");
                let after = dp.link_state(*hook, *i).unwrap().unwrap();
                assert_eq!(
                    after.link_id, before.link_id,
                    "filter replaced, not updated"
                );
                assert!(!cur.contains(&after.prog_id), "still the current program");
                links.push((*hook, *i, after.link_id, after.prog_id));
            }
        }
        links
    });
    let r = e.rounds.load(Ordering::Acquire);
    wait_rounds(&e, r + 10);
    let s1 = node.stats("vu1");
    // Counting went on under the old programs (same maps).
    assert!(s1.since(&s0).from("fast").packets > 0);

    // The new build's agent starts: its first reconciliation switches every link back.
    let agent = Agent::start(&node, &[]);
    let d = dir.clone();
    let (hooks, l) = (links.clone(), links.len());
    let now_states = run_in_netns(node.name(), move || {
        let dp = Datapath::open(&d).expect("open datapath");
        hooks
            .iter()
            .map(|(hook, i, _, _)| dp.link_state(*hook, *i).unwrap().expect("filter kept"))
            .collect::<Vec<_>>()
    });
    assert_eq!(now_states.len(), l);
    for ((hook, i, link_id, old_prog), now) in links.iter().zip(now_states) {
        assert_eq!(
            now.link_id, *link_id,
            "{hook} on {i}: the filter must stay at its handle"
        );
        assert_ne!(
            now.prog_id, *old_prog,
            "{hook} on {i}: still the old program"
        );
        let want = if *hook == Hook::TcIngress {
            current[0]
        } else {
            current[1]
        };
        assert_eq!(now.prog_id, want, "{hook} on {i}: not this build's program");
    }
    let progs: Vec<String> = std::fs::read_dir(dir.join("progs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        progs.iter().all(|p| !p.ends_with(OLD_HASH)),
        "old program pins left: {progs:?}"
    );

    // The connection carries on, and so do the counters.
    let r = e.rounds.load(Ordering::Acquire);
    wait_rounds(&e, r + 10);
    e.stop.store(true, Ordering::Release);
    let rounds = join(e.client).expect("TCP client");
    let s2 = node.stats("vu1");
    let d = s2.since(&s1); // panics if any counter went backwards
    assert!(d.from("fast").packets > 0, "{d:?}");
    assert_eq!(d.from("drop_error").packets, 0, "{d:?}");
    assert!(rounds >= 30);
    join(e.server).expect("TCP server");

    let metrics = agent.scrape();
    assert_eq!(
        metrics.get("vethfp_agent_programs_replaced_total", &[]),
        Some(4.0)
    );
    let (st, log) = agent.terminate();
    assert!(st.success(), "{log}");
    assert_eq!(log.matches("replaced program in place").count(), 4, "{log}");
}
