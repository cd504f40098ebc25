//! Pod sandbox create/delete wall time through containerd's CRI, vethfp (tc) against a
//! ptp-only conflist, on private nodes (tests/src/cri.rs), IPv4-only pods and dual-stack pods
//! (ptp waits for IPv6 DAD in the pod). Run by `cargo xtask bench`; prints one JSON object on
//! stdout. Usage: `vethfp-cri-bench [SANDBOXES]` (default 20).

use std::time::Instant;

use serde_json::json;
use vethfp_tests::cri::{CriNode, NetMode, containerd_available};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("SANDBOXES must be a number"))
        .unwrap_or(20);
    if let Err(why) = containerd_available() {
        println!("{}", json!({ "skipped": why }));
        return;
    }
    let modes = [
        ("vethfp-tc v4", NetMode::Tc, false),
        ("ptp-only v4", NetMode::PtpOnly, false),
        ("vethfp-tc dual-stack", NetMode::Tc, true),
        ("ptp-only dual-stack", NetMode::PtpOnly, true),
    ];
    let mut nodes: Vec<CriNode> = modes
        .iter()
        .map(|(_, m, ds)| CriNode::start_with(*m, *ds))
        .collect();
    let mut create = vec![Vec::new(); modes.len()];
    let mut delete = vec![Vec::new(); modes.len()];
    let mut first = vec![0.0; modes.len()];
    // Interleaved: sandbox i on every node before sandbox i + 1; the first one per node (BPF
    // programs loaded, caches cold) is reported apart.
    for i in 0..=n {
        for (m, node) in nodes.iter_mut().enumerate() {
            let t0 = Instant::now();
            let pod = node.run_pod(&format!("bench-{i}"), &[]);
            let t1 = Instant::now();
            node.remove_pod(&pod.id);
            let t2 = Instant::now();
            let c = (t1 - t0).as_secs_f64() * 1e3;
            if i == 0 {
                first[m] = c;
            } else {
                create[m].push(c);
                delete[m].push((t2 - t1).as_secs_f64() * 1e3);
            }
        }
    }
    drop(nodes);
    let results: Vec<_> = modes
        .iter()
        .enumerate()
        .map(|(m, (name, _, _))| {
            json!({
                "conflist": name,
                "first_create_ms": first[m],
                "create_ms": create[m],
                "delete_ms": delete[m],
            })
        })
        .collect();
    println!("{}", json!({ "sandboxes": n, "results": results }));
}
