//! `vethfp agent --bpf-log`: BPF debug events reach the agent's log; without the flag the
//! programs log nothing (the config bit is off), also after an agent with --bpf-log was killed.

use std::time::{Duration, Instant};

use veth_common::CFG_BPF_LOG;
use vethfp::datapath::Datapath;
use vethfp_tests::{Agent, Node, ping};

fn flags(node: &Node) -> u32 {
    Datapath::open(&node.bpffs_dir())
        .expect("open datapath")
        .flags()
        .expect("flags")
}

#[test]
fn bpf_log_only_when_asked() {
    let node = Node::new();
    let c1 = node.add_container("vl1", &["10.1.0.2/24"]);
    let c2 = node.add_container("vl2", &["10.1.0.3/24"]);
    assert_eq!(flags(&node) & CFG_BPF_LOG, 0);

    let agent = Agent::start(&node, &["--bpf-log"]);
    assert_ne!(flags(&node) & CFG_BPF_LOG, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(ping(c1.name(), c2.v4()));
        if agent.log().contains("verdict=redirect") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no BPF event logged:\n{}",
            agent.log()
        );
    }
    let ifindex = node.stats("vl1").host_ifindex;
    assert!(
        agent
            .log()
            .contains(&format!("tc ingress ifindex={ifindex} ")),
        "{}",
        agent.log()
    );
    // Killed: the bit stays on until the next agent starts, which turns it off.
    agent.kill();
    assert_ne!(flags(&node) & CFG_BPF_LOG, 0);
    let agent = Agent::start(&node, &[]);
    assert_eq!(flags(&node) & CFG_BPF_LOG, 0);
    assert!(ping(c1.name(), c2.v4()));
    let (st, log) = agent.terminate();
    assert!(st.success(), "{log}");
    assert!(!log.contains("tc ingress"), "{log}");

    // SIGTERM of a --bpf-log agent turns the events off too.
    let (st, log) = Agent::start(&node, &["--bpf-log"]).terminate();
    assert!(st.success(), "{log}");
    assert_eq!(flags(&node) & CFG_BPF_LOG, 0);
}
