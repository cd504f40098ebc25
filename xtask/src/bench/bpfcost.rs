//! `--only bpfcost`: what each vethfp program costs per packet, per path.
//!
//! Two measurements, both on the programs a vethfp topology really runs (opened from its pins,
//! its maps filled by `pair add` and by real traffic):
//! - BPF_PROG_TEST_RUN on representative 64-byte frames, as received on the interface the
//!   program is attached to: an accelerated UDP and TCP frame between the two endpoints, and
//!   frames that go to the kernel path. The programs rewrite the frame they are given (MACs,
//!   TTL), so every run is a test run of its own (repeat 1) and each sample is the kernel's
//!   timing of it minus that of an empty program of the same type run right after: the
//!   program's own cost, without the harness. Mean of the middle half of `SAMPLES` samples
//!   per round.
//! - run_time_ns / run_cnt of each program under load (iperf3 UDP 64 B between the
//!   endpoints; for `vethfp-tc` also UDP to the node: the kernel path), with statistics on
//!   through BPF_ENABLE_STATS for just that window (includes the statistics' own cost,
//!   ~2 clock reads per run).
//!
//! With `--baseline-bin`, every topology is built twice, once per binary, and both are
//! measured in the same rounds, interleaved: before/after figures for a datapath change.

use super::bpf::{self, PROG_TYPE_SCHED_CLS, PROG_TYPE_XDP, Prog};
use super::report::Stat;
use super::topo::{CLIENT_IP, IPERF_PORT, Kind, SERVER_IP, Topo, Vethfp};
use super::work;
use crate::util::{Netns, check_interrupted, step};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Test runs per frame, build and round.
const SAMPLES: usize = 1000;
const NODE_IP: [u8; 4] = [10, 210, 255, 1];
/// The UDP echo that makes the netfilter topology's measured flow a real, admitted one.
const ECHO_PORT: u16 = 11301;

/// The topologies measured here.
pub const KINDS: [Kind; 5] = [
    Kind::VethfpTc,
    Kind::VethfpNetfilter,
    Kind::VethfpXdp,
    Kind::VethfpUplink,
    Kind::BridgeVethfp,
];

/// One binary under test.
pub struct Build {
    pub label: String,
    pub vethfp: Vethfp,
    pub tag: String,
}

#[derive(Serialize)]
pub struct CostRow {
    pub program: String,
    pub path: String,
    pub topology: String,
    /// `test_run` or `bpf_stats`.
    pub method: &'static str,
    /// ns per run, per build label, over rounds.
    pub ns: BTreeMap<String, Stat>,
    pub samples: BTreeMap<String, Vec<f64>>,
    /// What the program returned on the frame (test_run), per build.
    pub verdict: BTreeMap<String, String>,
}

#[derive(Serialize, Default)]
pub struct BpfCost {
    /// Build labels in column order ("this build" first).
    pub builds: Vec<String>,
    pub rows: Vec<CostRow>,
}

type Key = (String, String, String, &'static str);

#[derive(Default)]
struct Acc {
    order: Vec<Key>,
    samples: BTreeMap<Key, BTreeMap<String, Vec<f64>>>,
    verdicts: BTreeMap<Key, BTreeMap<String, String>>,
}

impl Acc {
    fn add(&mut self, key: Key, build: &str, ns: f64, verdict: Option<String>) {
        if !self.samples.contains_key(&key) {
            self.order.push(key.clone());
        }
        self.samples
            .entry(key.clone())
            .or_default()
            .entry(build.to_owned())
            .or_default()
            .push(ns);
        if let Some(v) = verdict {
            self.verdicts
                .entry(key)
                .or_default()
                .insert(build.to_owned(), v);
        }
    }
}

fn program_label(name: &str) -> &'static str {
    match name {
        "vfp_tc_ingress" => "lxc tc ingress",
        "vfp_tc_egress" => "lxc tc egress",
        "vfp_xdp" => "lxc xdp",
        "vfp_uplink_ingress" => "uplink ingress",
        "vfp_uplink_egress" => "uplink egress",
        "vfp_l2_ingress" => "bridge port ingress",
        _ => "other",
    }
}

fn verdict(xdp: bool, ret: i32) -> String {
    if xdp {
        match ret {
            1 => "drop",
            2 => "pass",
            4 => "redirect",
            _ => "other",
        }
    } else {
        match ret {
            -1 => "pass",
            2 => "drop",
            7 => "redirect",
            _ => "other",
        }
    }
    .to_owned()
}

/// The pinned programs of a topology's state: (ELF name, pin path).
fn pinned_programs(bpffs: &Path) -> Result<Vec<(String, std::path::PathBuf)>> {
    let dir = bpffs.join("progs");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let n = e.file_name().to_string_lossy().into_owned();
        let name = n.rsplit_once('-').map(|(a, _)| a).unwrap_or(&n).to_owned();
        out.push((name, e.path()));
    }
    out.sort();
    Ok(out)
}

/// ifindex and MAC of `dev` in `ns`.
fn link(ns: &Netns, dev: &str) -> Result<(u32, [u8; 6])> {
    let out = ns.ip(&["-j", "link", "show", "dev", dev])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let idx = v[0]["ifindex"]
        .as_u64()
        .with_context(|| format!("no ifindex for {dev} in {}", ns.name))?;
    let mac = bpf::parse_mac(v[0]["address"].as_str().unwrap_or(""))?;
    Ok((idx as u32, mac))
}

fn ip4(s: &str) -> [u8; 4] {
    s.parse::<std::net::Ipv4Addr>()
        .expect("a constant IPv4 address")
        .octets()
}

/// A frame to test-run on `prog` as received on `dev` (in the node namespace).
struct Case {
    prog: &'static str,
    dev: &'static str,
    path: String,
    frame: Vec<u8>,
}

/// Exchanges `n` UDP request/answers between the client and the server (the server side is an
/// echo thread of the bench), so the kernel forwards, and vethfp admits, that flow; returns the
/// client's port.
fn udp_flow(client: &Netns, server: &Netns, n: usize) -> Result<u16> {
    use std::net::UdpSocket;
    use std::time::Duration;
    let (spath, cpath) = (server.path(), client.path());
    let (tx, rx) = std::sync::mpsc::channel();
    let srv = std::thread::spawn(move || -> Result<()> {
        work::enter_netns(&spath)?;
        let s = UdpSocket::bind((SERVER_IP, ECHO_PORT)).context("bind the UDP echo")?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        tx.send(()).ok();
        let mut b = [0u8; 64];
        loop {
            let (len, from) = s.recv_from(&mut b).context("UDP echo: recv")?;
            if &b[..len] == b"q" {
                return Ok(());
            }
            s.send_to(&b[..len], from)?;
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .context("the UDP echo did not start")?;
    let cli = std::thread::spawn(move || -> Result<u16> {
        work::enter_netns(&cpath)?;
        let s = UdpSocket::bind((CLIENT_IP, 0))?;
        s.connect((SERVER_IP, ECHO_PORT))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut b = [0u8; 64];
        for i in 0..n {
            s.send(&[b'x'; 32])
                .with_context(|| format!("UDP to the echo, message {i}"))?;
            s.recv(&mut b)
                .with_context(|| format!("no answer from the UDP echo to message {i}"))?;
        }
        s.send(b"q")?;
        Ok(s.local_addr()?.port())
    });
    let port = cli
        .join()
        .map_err(|_| anyhow::anyhow!("UDP client thread panicked"))??;
    srv.join()
        .map_err(|_| anyhow::anyhow!("UDP echo thread panicked"))??;
    Ok(port)
}

/// Sends 64-byte UDP frames from `ns` to `to`:9 for `secs` seconds (nothing listens: the
/// receiver answers with rate-limited ICMP): a kernel-path load for the hooks on the way.
fn udp_flood(ns: &Netns, to: [u8; 4], secs: u32) -> Result<()> {
    let path = ns.path();
    std::thread::spawn(move || -> Result<()> {
        work::enter_netns(&path)?;
        let s = std::net::UdpSocket::bind(("0.0.0.0", 0))?;
        let to = std::net::SocketAddr::from((to, 9));
        let end = std::time::Instant::now() + std::time::Duration::from_secs(secs as u64);
        let buf = [0u8; 22];
        while std::time::Instant::now() < end {
            for _ in 0..256 {
                let _ = s.send_to(&buf, to);
            }
        }
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("UDP sender thread panicked"))?
}

/// The frames to test-run in this topology.
fn cases(t: &Topo) -> Result<Vec<Case>> {
    let node = t.node.as_ref().context("vethfp topologies have a node")?;
    let (a, b, nd) = (ip4(CLIENT_IP), ip4(SERVER_IP), NODE_IP);
    let a_mac = link(&t.client, "eth0")?.1;
    let b_mac = link(&t.server, "eth0")?.1;
    let case = |prog, dev, path: &str, frame| Case {
        prog,
        dev,
        path: path.to_owned(),
        frame,
    };
    let f = bpf::frame4;
    Ok(match t.kind {
        Kind::VethfpTc | Kind::VethfpXdp | Kind::VethfpNetfilter => {
            let ha = link(node, "vfha")?.1;
            let hb = link(node, "vfhb")?.1;
            let ingress = if t.kind == Kind::VethfpXdp {
                "vfp_xdp"
            } else {
                "vfp_tc_ingress"
            };
            let mut v = Vec::new();
            if t.kind == Kind::VethfpNetfilter {
                let port = udp_flow(&t.client, &t.server, 20)?;
                v.push(case(
                    ingress,
                    "vfha",
                    "accelerated UDP (admitted flow)",
                    f(ha, a_mac, a, b, port, ECHO_PORT, false),
                ));
                v.push(case(
                    ingress,
                    "vfha",
                    "kernel path: UDP, flow pending",
                    f(ha, a_mac, a, b, 40999, 9, false),
                ));
                v.push(case(
                    "vfp_tc_egress",
                    "vfhb",
                    "kernel path: UDP into the container, flow pending",
                    f(b_mac, hb, a, b, 40999, 9, false),
                ));
            } else {
                v.push(case(
                    ingress,
                    "vfha",
                    "accelerated UDP",
                    f(ha, a_mac, a, b, 40000, 11111, false),
                ));
                v.push(case(
                    ingress,
                    "vfha",
                    "accelerated TCP",
                    f(ha, a_mac, a, b, 40000, 11112, true),
                ));
            }
            v.push(case(
                ingress,
                "vfha",
                "kernel path: UDP to the node",
                f(ha, a_mac, a, nd, 40000, 9, false),
            ));
            if t.kind != Kind::VethfpXdp {
                v.push(case(
                    "vfp_tc_egress",
                    "vfhb",
                    "kernel path: UDP from the node into the container",
                    f(b_mac, hb, nd, b, 9, 40000, false),
                ));
            }
            v
        }
        Kind::VethfpUplink => {
            let up = link(node, "up0")?.1;
            let hb = link(node, "vfhb")?.1;
            vec![
                case(
                    "vfp_uplink_ingress",
                    "up0",
                    "accelerated UDP from outside",
                    f(up, a_mac, a, b, 40000, 11111, false),
                ),
                case(
                    "vfp_tc_ingress",
                    "vfhb",
                    "accelerated UDP to outside (--egress fast: FIB)",
                    f(hb, b_mac, b, a, 11111, 40000, false),
                ),
                case(
                    "vfp_uplink_egress",
                    "up0",
                    "kernel path: UDP out of the uplink",
                    f(a_mac, up, b, a, 11111, 40000, false),
                ),
            ]
        }
        Kind::BridgeVethfp => {
            let br = link(node, "br0")?.1;
            vec![
                case(
                    "vfp_l2_ingress",
                    "ha",
                    "accelerated UDP (bridge bypass)",
                    f(b_mac, a_mac, a, b, 40000, 11111, false),
                ),
                case(
                    "vfp_l2_ingress",
                    "ha",
                    "kernel path: UDP to the bridge's MAC",
                    f(br, a_mac, a, nd, 40000, 9, false),
                ),
            ]
        }
        _ => bail!("{} has no vethfp programs", t.kind.name()),
    })
}

/// Mean of the middle half (robust to the runs an interrupt or the other CPU's load hit, and
/// finer than a median: the kernel's timings come in steps of ~10 ns on some machines).
fn middle_mean(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let (lo, hi) = (v.len() / 4, v.len() - v.len() / 4);
    if lo >= hi {
        return f64::NAN;
    }
    v[lo..hi].iter().sum::<f64>() / (hi - lo) as f64
}

/// One topology's frames, ready to test-run in its node namespace.
struct RunSet {
    netns: std::fs::File,
    /// (program, xdp, ifindex, frame) per case.
    runs: Vec<(Prog, bool, u32, Vec<u8>)>,
}

fn run_set(t: &Topo, cases: &[Case]) -> Result<RunSet> {
    let node = t.node.as_ref().context("vethfp topologies have a node")?;
    let bpffs = t.vethfp_bpffs().context("a vethfp topology")?;
    let progs = pinned_programs(bpffs)?;
    let mut runs = Vec::new();
    for c in cases {
        let pin = progs
            .iter()
            .find(|(n, _)| n == c.prog)
            .with_context(|| format!("no pinned {} under {}", c.prog, bpffs.display()))?;
        runs.push((
            Prog::pinned(&pin.1)?,
            c.prog == "vfp_xdp",
            link(node, c.dev)?.0,
            c.frame.clone(),
        ));
    }
    let netns = std::fs::File::open(node.path())
        .with_context(|| format!("opening {}", node.path().display()))?;
    Ok(RunSet { netns, runs })
}

/// Test-runs case i of every set (the same topology kind, one per build) sample by sample,
/// alternating between the sets, so that whatever else the machine does at that moment weighs
/// on every build alike. Each sample is the program's run minus an empty program's run right
/// after it; the figure is the mean of the middle half of the samples. Returns, per set and case, (ns, verdict).
fn test_runs(sets: Vec<RunSet>) -> Result<Vec<Vec<(f64, String)>>> {
    std::thread::spawn(move || -> Result<Vec<Vec<(f64, String)>>> {
        let enter = |f: &std::fs::File| -> Result<()> {
            use std::os::fd::AsRawFd;
            // SAFETY: setns(2) on a valid namespace fd; affects only this thread.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns: {}", std::io::Error::last_os_error());
            }
            Ok(())
        };
        let empty_tc = Prog::empty(PROG_TYPE_SCHED_CLS, -1)?;
        let empty_xdp = Prog::empty(PROG_TYPE_XDP, 2)?;
        let ncases = sets.first().map(|s| s.runs.len()).unwrap_or(0);
        let mut out: Vec<Vec<(f64, String)>> = sets.iter().map(|_| Vec::new()).collect();
        for i in 0..ncases {
            let mut samples: Vec<Vec<f64>> = sets.iter().map(|_| Vec::new()).collect();
            let mut rets = vec![0; sets.len()];
            for set in &sets {
                // A first run outside the figures (a pending flow's first packet creates it).
                enter(&set.netns)?;
                let (prog, xdp, ifindex, frame) = &set.runs[i];
                prog.test_run(*xdp, *ifindex, frame, 1)?;
            }
            for _ in 0..SAMPLES {
                for (j, set) in sets.iter().enumerate() {
                    enter(&set.netns)?;
                    let (prog, xdp, ifindex, frame) = &set.runs[i];
                    let empty = if *xdp { &empty_xdp } else { &empty_tc };
                    let (r, d) = prog.test_run(*xdp, *ifindex, frame, 1)?;
                    let e = empty.test_run(*xdp, *ifindex, frame, 1)?.1;
                    rets[j] = r;
                    samples[j].push(d as f64 - e as f64);
                }
            }
            for (j, set) in sets.iter().enumerate() {
                out[j].push((
                    middle_mean(&mut samples[j]),
                    verdict(set.runs[i].1, rets[j]),
                ));
            }
        }
        Ok(out)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("test-run thread panicked"))?
}

/// Per program: (run_time_ns, run_cnt) now.
fn stats(progs: &[(String, Prog)]) -> Result<BTreeMap<String, (u64, u64)>> {
    let mut m = BTreeMap::new();
    for (n, p) in progs {
        let (ns, cnt) = p.stats()?;
        let e = m.entry(n.clone()).or_insert((0, 0));
        e.0 += ns;
        e.1 += cnt;
    }
    Ok(m)
}

/// run_time_ns/run_cnt of each program of `t` while `load` runs.
fn under_load(t: &Topo, load: impl FnOnce() -> Result<()>) -> Result<BTreeMap<String, f64>> {
    let bpffs = t.vethfp_bpffs().context("a vethfp topology")?;
    let progs: Vec<(String, Prog)> = pinned_programs(bpffs)?
        .into_iter()
        .map(|(n, p)| Ok((n, Prog::pinned(&p)?)))
        .collect::<Result<_>>()?;
    let on = bpf::enable_stats()?;
    let before = stats(&progs)?;
    load()?;
    let after = stats(&progs)?;
    drop(on);
    let mut out = BTreeMap::new();
    for (n, (ns1, c1)) in after {
        let (ns0, c0) = before.get(&n).copied().unwrap_or((0, 0));
        if c1 > c0 + 100 {
            out.insert(n, (ns1 - ns0) as f64 / (c1 - c0) as f64);
        }
    }
    Ok(out)
}

pub fn bench(builds: &[Build], kinds: &[Kind], rounds: u32, secs: u32) -> Result<BpfCost> {
    let mut topos: Vec<(&Build, Topo)> = Vec::new();
    for b in builds {
        for &kind in kinds {
            check_interrupted()?;
            step(&format!("bpfcost: building {} ({})", kind.name(), b.label));
            let v = Vethfp {
                bin: b.vethfp.bin.clone(),
                bpffs: b.vethfp.bpffs.join(kind.name()),
            };
            topos.push((
                b,
                Topo::build(kind, &b.tag, Some(&v))
                    .with_context(|| format!("building topology {}", kind.name()))?,
            ));
        }
    }
    let mut acc = Acc::default();
    for r in 1..=rounds {
        // Test runs: per kind, every build's topology sample by sample (see `test_runs`).
        for &kind in kinds {
            check_interrupted()?;
            step(&format!(
                "bpfcost round {r}/{rounds}: test runs in {}",
                kind.name()
            ));
            let mine: Vec<&(&Build, Topo)> = topos.iter().filter(|(_, t)| t.kind == kind).collect();
            let mut sets = Vec::new();
            let mut all_cases = Vec::new();
            for (_, t) in &mine {
                let c = cases(t)?;
                sets.push(run_set(t, &c)?);
                all_cases.push(c);
            }
            for (k, res) in test_runs(sets)?.into_iter().enumerate() {
                let b = mine[k].0;
                for (c, (ns, v)) in all_cases[k].iter().zip(res) {
                    let key = (
                        program_label(c.prog).to_owned(),
                        c.path.clone(),
                        kind.name().to_owned(),
                        "test_run",
                    );
                    println!(
                        "bpfcost:   {} / {} ({}): {ns:.1} ns ({v})",
                        key.0, key.1, b.label
                    );
                    acc.add(key, &b.label, ns, Some(v));
                }
            }
        }
        // Under load: each topology of each build once per round, builds alternating.
        let mut order: Vec<usize> = (0..topos.len()).collect();
        if r % 2 == 0 {
            order.reverse();
        }
        for i in order {
            check_interrupted()?;
            let (b, t) = &topos[i];
            step(&format!(
                "bpfcost round {r}/{rounds}: under load in {} ({})",
                t.kind.name(),
                b.label
            ));
            let topo = t.kind.name().to_owned();
            let loaded = under_load(t, || {
                work::udp_rate(&t.client, SERVER_IP, IPERF_PORT, secs).map(|_| ())
            })?;
            for (n, ns) in loaded {
                let key = (
                    program_label(&n).to_owned(),
                    "under load: iperf3 UDP, 64 B payload, client → server".to_owned(),
                    topo.clone(),
                    "bpf_stats",
                );
                println!("bpfcost:   {} / {}: {ns:.1} ns", key.0, key.1);
                acc.add(key, &b.label, ns, None);
            }
            if matches!(t.kind, Kind::VethfpTc | Kind::VethfpNetfilter) {
                // The kernel path both ways: container → node, node → container.
                let node = t.node.as_ref().context("vethfp topologies have a node")?;
                let flows = [
                    (&t.client, NODE_IP, "vfp_tc_ingress", "UDP 64 B to the node"),
                    (
                        node,
                        ip4(SERVER_IP),
                        "vfp_tc_egress",
                        "UDP 64 B from the node",
                    ),
                ];
                for (from, to, prog, what) in flows {
                    let loaded = under_load(t, || udp_flood(from, to, secs))?;
                    if let Some(ns) = loaded.get(prog) {
                        let key = (
                            program_label(prog).to_owned(),
                            format!("under load: {what} (kernel path)"),
                            topo.clone(),
                            "bpf_stats",
                        );
                        println!("bpfcost:   {} / {}: {ns:.1} ns", key.0, key.1);
                        acc.add(key, &b.label, *ns, None);
                    }
                }
            }
        }
    }
    drop(topos);
    let mut rows = Vec::new();
    for key in &acc.order {
        let samples = acc.samples.remove(key).unwrap_or_default();
        let ns = samples
            .iter()
            .filter_map(|(b, v)| Stat::of(v).map(|s| (b.clone(), s)))
            .collect();
        rows.push(CostRow {
            program: key.0.clone(),
            path: key.1.clone(),
            topology: key.2.clone(),
            method: key.3,
            ns,
            samples,
            verdict: acc.verdicts.remove(key).unwrap_or_default(),
        });
    }
    Ok(BpfCost {
        builds: builds.iter().map(|b| b.label.clone()).collect(),
        rows,
    })
}
