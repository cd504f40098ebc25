//! The datapath does not depend on the agent: SIGKILL it in the middle of a paced UDP stream
//! between two containers, let the stream run on without any agent, start it again. Every
//! datagram arrives, and the counters account for every one of them exactly; the restarted
//! agent finds the state as it was and changes nothing (same pins, same filters and programs).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use vethfp::datapath::{Datapath, Hook};
use vethfp_tests::{Agent, Node, join, run_in_netns, udp_frame_len, udp_recv, udp_send_paced};

const N: u64 = 20_000;
const PAYLOAD: usize = 64;

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// (filter handle, program id) of both cls_bpf filters of every endpoint, asked from the
/// kernel inside the node's namespace.
fn link_ids(node: &Node, ifindexes: &[u32]) -> Vec<(u32, u32)> {
    let dir = node.bpffs_dir();
    let ifindexes = ifindexes.to_vec();
    run_in_netns(node.name(), move || {
        let dp = Datapath::open(&dir).expect("open datapath");
        let owned = dp.owned_program_ids().expect("program ids");
        ifindexes
            .iter()
            .flat_map(|i| [Hook::TcIngress, Hook::TcEgress].map(|h| (h, *i)))
            .map(|(h, i)| {
                let s = dp
                    .link_state(h, i)
                    .expect("filter state")
                    .unwrap_or_else(|| panic!("no {h} filter on ifindex {i}"));
                assert!(owned.contains(&s.prog_id), "{h} on {i}: not our program");
                (s.link_id, s.prog_id)
            })
            .collect()
    })
}

#[test]
fn sigkill_under_udp_stream_loses_nothing() {
    let node = Node::new();
    let c1 = node.add_container("va1", &["10.1.0.2/24"]);
    let c2 = node.add_container("va2", &["10.1.0.3/24"]);
    let agent = Agent::start(&node, &[]);
    node.wait_quiet("va1");
    node.wait_quiet("va2");
    let ifx: Vec<u32> = ["va1", "va2"]
        .iter()
        .map(|n| node.stats(n).host_ifindex as u32)
        .collect();
    let pins_before = node.bpffs.files();
    let links_before = link_ids(&node, &ifx);
    let s1 = node.stats("va1");
    let s2 = node.stats("va2");

    // ~20 000 × 200 µs ≈ 4 s of traffic.
    let rx = udp_recv(
        c2.name(),
        SocketAddr::new(c2.v4(), 9000),
        N,
        PAYLOAD,
        Duration::from_secs(120),
    );
    let tx = udp_send_paced(
        c1.name(),
        None,
        &rx,
        N,
        PAYLOAD,
        256,
        Duration::from_micros(200),
    );

    wait_for("the stream to start", || rx.so_far() >= 2_000);
    agent.kill();
    let at_kill = rx.so_far();
    assert!(at_kill < N, "the stream ended before the agent was killed");
    let down1 = node.stats("va1");
    // The stream goes on with no agent at all.
    wait_for("traffic while the agent is down", || {
        rx.so_far() >= at_kill + 3_000
    });
    let down2 = node.stats("va1");
    let moved = down2.since(&down1);
    assert!(
        moved.from("fast").packets >= 2_000,
        "fast-path counters did not move while the agent was down: {moved:?}"
    );
    assert!(
        rx.so_far() < N,
        "the stream ended before the agent came back: make it longer"
    );

    let agent = Agent::start(&node, &[]);
    let sent = join(tx);
    let got = rx.wait();
    assert_eq!(sent, N, "sender gave up (lost datagrams stall its window)");
    assert_eq!(got, N, "datagrams lost: {} of {N}", N - got);

    // Exact counters: every datagram once on the sender's side and once on the receiver's,
    // all on the fast path, none dropped.
    let frame = udp_frame_len(c2.v4(), PAYLOAD);
    let d1 = node.stats("va1").since(&s1);
    let d2 = node.stats("va2").since(&s2);
    assert_eq!(d1.from("fast").packets, N, "{d1:?}");
    assert_eq!(d1.from("fast").bytes, N * frame, "{d1:?}");
    assert_eq!(d2.to("fast").packets, N, "{d2:?}");
    assert_eq!(d2.to("fast").bytes, N * frame, "{d2:?}");
    for d in [&d1, &d2] {
        for v in [
            "drop_spoof_ip",
            "drop_spoof_mac",
            "drop_policy",
            "drop_error",
        ] {
            assert_eq!(d.from(v).packets + d.to(v).packets, 0, "{v}: {d:?}");
        }
    }

    // The restarted agent found everything in place: same pins, same links, same programs.
    assert_eq!(node.bpffs.files(), pins_before);
    assert_eq!(link_ids(&node, &ifx), links_before);
    let (st, log) = agent.terminate();
    assert!(st.success(), "agent exit: {st}; log:\n{log}");
    assert!(
        !log.contains("re-attached") && !log.contains("replaced program"),
        "the restarted agent changed links:\n{log}"
    );
    // SIGTERM leaves the datapath in place.
    assert_eq!(node.bpffs.files(), pins_before);
    assert!(vethfp_tests::ping(c1.name(), c2.v4()));
}

#[test]
fn sigterm_keeps_datapath_cleanup_on_exit_removes_everything() {
    let node = Node::new();
    let c1 = node.add_container("va1", &["10.1.0.2/24", "fd00:1::2/64"]);
    let c2 = node.add_container("va2", &["10.1.0.3/24"]);
    let pins = node.bpffs.files();

    let (st, log) = Agent::start(&node, &[]).interrupt();
    assert!(st.success(), "{st}: {log}");
    assert!(log.contains("datapath stays"), "{log}");
    // Every pin stays; the one thing the agent adds is its (now unlocked) lock directory.
    let after = node.bpffs.files();
    assert!(after.is_superset(&pins), "{pins:?} -> {after:?}");
    let added: Vec<_> = after.difference(&pins).collect();
    assert!(
        added.iter().all(|f| f.ends_with("/agent")),
        "only the agent's lock directory is new: {added:?}"
    );
    assert!(vethfp_tests::ping(c1.name(), c2.v4()));

    let (st, log) = Agent::start(&node, &["--cleanup-on-exit"]).terminate();
    assert!(st.success(), "{st}: {log}");
    // (maps.debug and progs.debug are the kernel's own, in every bpffs root.)
    assert!(
        !node.bpffs_dir().exists(),
        "pins left after --cleanup-on-exit: {:?}",
        node.bpffs.files()
    );
    let links = node.ns.link_names();
    assert!(
        !links.contains("va1") && !links.contains("va2"),
        "host ends left: {links:?}"
    );
    assert_eq!(c1.ns.link_names().into_iter().collect::<Vec<_>>(), ["lo"]);
}
