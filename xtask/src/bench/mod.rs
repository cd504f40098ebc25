//! `cargo xtask bench`: vethfp against direct veth, bridge (plain and accelerated by
//! `vethfp bridge accelerate`), docker-like bridge and kernel routing, measured side by side
//! in one run with interleaved rounds.

mod bpf;
mod bpfcost;
mod control;
mod pods;
mod report;
mod scale;
mod topo;
mod work;

pub use topo::{Vethfp, VethfpPairs};

use crate::util::{
    DirGuard, cargo_cmd, check_interrupted, have, run, step, vethfp_bin, workspace_root,
};
use anyhow::{Context, Result, bail};
use control::Impl;
use report::{Metric, Report, TopoResult};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use topo::{
    CRR_PORT, IPERF_PORT, Kind, PIN_CPU, SOCKPERF_TCP_PIN_PORT, SOCKPERF_TCP_PORT,
    SOCKPERF_UDP_PIN_PORT, SOCKPERF_UDP_PORT, Topo,
};

#[derive(clap::Args)]
pub struct Args {
    /// Interleaved rounds (default 5, or 1 with --quick).
    #[arg(long)]
    rounds: Option<u32>,
    /// One short round (~1 s per workload, control plane with 1 and 10 endpoints and bursts
    /// of 8): the CI smoke test of the harness.
    #[arg(long)]
    quick: bool,
    /// Seconds per workload (default 5, or 1 with --quick).
    #[arg(long)]
    secs: Option<u32>,
    /// Output directory for results.md, results.json and bench.svg (default: bench-out/ in
    /// the workspace).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Endpoint counts for the control-plane bench (default 1,100,1000; 1,10 with --quick).
    #[arg(long, value_delimiter = ',')]
    endpoints: Option<Vec<usize>>,
    /// Concurrent processes per control-plane burst (default 32, or 8 with --quick, which CI
    /// runs with a debug build; 0 skips the bursts).
    #[arg(long)]
    burst: Option<usize>,
    /// Run only these sections (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Option<Vec<Section>>,
    /// Endpoints for the agent-at-scale bench (default 1000; 20 with --quick).
    #[arg(long)]
    scale_endpoints: Option<usize>,
    /// Data-path topologies to build, by name (default: all), e.g.
    /// `--topology direct,routed+rules,vethfp-stock`.
    #[arg(long, value_delimiter = ',')]
    topology: Option<Vec<String>>,
    /// Data-path workloads to run in each round (default: all), e.g. `--workload crr` to
    /// measure only the connection rate, with more rounds in the same time.
    #[arg(long, value_enum, value_delimiter = ',')]
    workload: Option<Vec<Workload>>,
    /// vethfp binary to bench (default: $VETHFP_BIN, else a fresh release build).
    #[arg(long)]
    vethfp_bin: Option<PathBuf>,
    /// A second vethfp binary (e.g. one built from main) for the `bpfcost` section: its
    /// topologies are built beside this build's and measured in the same rounds, interleaved,
    /// so the report shows the BPF cost before and after.
    #[arg(long)]
    baseline_bin: Option<PathBuf>,
}

impl Args {
    /// The CI smoke test: one short round against the given vethfp binary.
    pub fn quick(out: PathBuf, vethfp_bin: PathBuf) -> Self {
        Args {
            rounds: None,
            quick: true,
            secs: None,
            out: Some(out),
            endpoints: None,
            burst: None,
            scale_endpoints: None,
            only: None,
            topology: None,
            workload: None,
            vethfp_bin: Some(vethfp_bin),
            baseline_bin: None,
        }
    }
}

/// A data-path workload, for `--workload`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// sockperf UDP and TCP ping-pong, client and server pinned to one CPU.
    RrPin,
    /// sockperf UDP and TCP ping-pong, free-running.
    Rr,
    /// TCP connect/request/close, free-running and pinned.
    Crr,
    /// iperf3 TCP, 1 and 2 streams.
    Stream,
    /// iperf3 UDP 64-byte packet rate, CPU per packet and BPF run time.
    UdpRate,
}

/// A part of the bench, for `--only`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    /// The data-path topologies (latency, throughput, CPU).
    Datapath,
    /// Control plane: sequential and burst add/del against CNI ptp, latency with N endpoints.
    Control,
    /// Pod sandboxes through containerd's CRI.
    Pods,
    /// The agent at a full node: idle CPU, pass duration, writer wait, /metrics.
    Scale,
    /// BPF cost per program and path: BPF_PROG_TEST_RUN on representative frames and
    /// run_time_ns/run_cnt under load (BPF_ENABLE_STATS), in the vethfp topologies.
    Bpfcost,
}

/// Find a working vethfp binary, or say why there is none. $VETHFP_BIN wins; otherwise the
/// release binary is built.
pub fn find_vethfp(
    given: Option<&std::path::Path>,
    tag: &str,
) -> Result<std::result::Result<Vethfp, String>> {
    let given = given
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("VETHFP_BIN").map(PathBuf::from));
    let bin = if let Some(b) = given {
        if !b.exists() {
            bail!(
                "vethfp binary {} does not exist (from --vethfp-bin or VETHFP_BIN)",
                b.display()
            );
        }
        b
    } else {
        step("cargo build --release -p veth-user (the vethfp binary)");
        if let Err(e) = run(cargo_cmd().args(["build", "--release", "-p", "veth-user"])) {
            return Ok(Err(format!("building vethfp failed: {e:#}")));
        }
        vethfp_bin("release")?
    };
    if !bin.exists() {
        return Ok(Err(format!("{} does not exist", bin.display())));
    }
    let help = crate::util::raw_output(Command::new(&bin).arg("--help"))?;
    let text = String::from_utf8_lossy(&help.stdout);
    if !help.status.success() || !text.contains("pair") {
        return Ok(Err(format!(
            "{} has no `pair` command yet (not implemented); vethfp rows skipped",
            bin.display()
        )));
    }
    Ok(Ok(Vethfp {
        bin,
        bpffs: PathBuf::from(format!("/sys/fs/bpf/{tag}")),
    }))
}

/// Removes what a bench run that died without cleaning up (SIGKILL, a machine restart) left:
/// its network namespaces, its bpffs dir and its IPAM dirs, all named `vfb<pid>…`, when no
/// process of that pid is alive.
fn sweep_dead_runs() {
    let dead = |name: &str| -> bool {
        let Some(rest) = name.strip_prefix("vfb") else {
            return false;
        };
        let pid: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
    };
    let names = |dir: &str| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| dead(n))
                    .collect()
            })
            .unwrap_or_default()
    };
    for ns in names("/run/netns") {
        println!("bench: removing namespace {ns} of a bench run that died");
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    }
    for dir in ["/sys/fs/bpf", "/tmp"] {
        for n in names(dir) {
            let _ = std::fs::remove_dir_all(std::path::Path::new(dir).join(n));
        }
    }
}

pub fn bench(args: Args) -> Result<()> {
    let quick = args.quick;
    let rounds = args.rounds.unwrap_or(if quick { 1 } else { 5 }).max(1);
    let secs = args.secs.unwrap_or(if quick { 1 } else { 5 }).max(1);
    let sizes = args.endpoints.clone().unwrap_or_else(|| {
        if quick {
            vec![1, 10]
        } else {
            vec![1, 100, 1000]
        }
    });
    let burst = args.burst.unwrap_or(if quick { 8 } else { 32 });
    let want = |s: Section| args.only.as_ref().is_none_or(|o| o.contains(&s));
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| workspace_root().join("bench-out"));
    for tool in [
        "ip",
        "ss",
        "ping",
        "sockperf",
        "iperf3",
        "iptables",
        "iptables-restore",
        "bpftool",
        "curl",
    ] {
        if !have(tool) {
            bail!("`{tool}` is missing: run `cargo xtask setup`");
        }
    }
    if unsafe { libc::geteuid() } != 0 {
        bail!("the bench creates network namespaces: run it as root");
    }
    sweep_dead_runs();
    let tag = format!("vfb{}", std::process::id());
    let vethfp = find_vethfp(args.vethfp_bin.as_deref(), &tag)?;
    if let Err(why) = &vethfp {
        println!("bench: WARNING: vethfp topologies skipped: {why}");
    }
    let _pins = vethfp.as_ref().ok().map(|v| DirGuard(v.bpffs.clone()));

    // Build every topology up front; they stay up for all rounds (idle servers cost nothing).
    let mut topos = Vec::new();
    let mut skipped = BTreeMap::new();
    if let Some(names) = &args.topology
        && let Some(bad) = names
            .iter()
            .find(|n| !Kind::ALL.iter().any(|k| k.name() == n.as_str()))
    {
        let all: Vec<_> = Kind::ALL.iter().map(|k| k.name()).collect();
        bail!("unknown topology `{bad}`: choose from {}", all.join(", "));
    }
    let want_topo = |k: Kind| {
        args.topology
            .as_ref()
            .is_none_or(|t| t.iter().any(|n| n == k.name()))
    };
    for kind in Kind::ALL
        .into_iter()
        .filter(|k| want(Section::Datapath) && want_topo(*k))
    {
        check_interrupted()?;
        if kind.needs_vethfp()
            && let Err(why) = &vethfp
        {
            skipped.insert(kind.name().to_owned(), why.clone());
            continue;
        }
        step(&format!("building topology {}", kind.name()));
        let v = vethfp.as_ref().ok().map(|v| Vethfp {
            bin: v.bin.clone(),
            bpffs: v.bpffs.join(kind.name()),
        });
        topos.push(
            Topo::build(kind, &tag, v.as_ref())
                .with_context(|| format!("building topology {}", kind.name()))?,
        );
    }

    let mut samples: BTreeMap<(String, Metric), Vec<f64>> = BTreeMap::new();
    for r in 1..=rounds {
        for t in &topos {
            check_interrupted()?;
            step(&format!("round {r}/{rounds}: {}", t.kind.name()));
            let name = t.kind.name().to_owned();
            let mut add = |m: Metric, v: f64| samples.entry((name.clone(), m)).or_default().push(v);
            let ip = t.server_ip();
            let pin = Some(PIN_CPU);
            let run = |w: Workload| args.workload.as_ref().is_none_or(|ws| ws.contains(&w));
            if run(Workload::RrPin) {
                let (p50, _) =
                    work::pingpong(&t.client, ip, SOCKPERF_UDP_PIN_PORT, false, secs, pin)?;
                add(Metric::UdpRrPinP50, p50);
                let (p50, _) =
                    work::pingpong(&t.client, ip, SOCKPERF_TCP_PIN_PORT, true, secs, pin)?;
                add(Metric::TcpRrPinP50, p50);
            }
            if run(Workload::Rr) {
                let (p50, p99) =
                    work::pingpong(&t.client, ip, SOCKPERF_UDP_PORT, false, secs, None)?;
                add(Metric::UdpRrP50, p50);
                add(Metric::UdpRrP99, p99);
                let (p50, p99) =
                    work::pingpong(&t.client, ip, SOCKPERF_TCP_PORT, true, secs, None)?;
                add(Metric::TcpRrP50, p50);
                add(Metric::TcpRrP99, p99);
            }
            if run(Workload::Crr) {
                add(
                    Metric::TcpCrr,
                    work::tcp_crr(&t.client, &t.server, ip, CRR_PORT, secs, None)?,
                );
                add(
                    Metric::TcpCrrPin,
                    work::tcp_crr(&t.client, &t.server, ip, CRR_PORT, secs, pin)?,
                );
            }
            if run(Workload::Stream) {
                add(
                    Metric::Tcp1Gbps,
                    work::iperf_tcp(&t.client, ip, IPERF_PORT, 1, secs)?,
                );
                add(
                    Metric::Tcp2Gbps,
                    work::iperf_tcp(&t.client, ip, IPERF_PORT, 2, secs)?,
                );
            }
            if run(Workload::UdpRate) {
                let u = work::udp_rate(&t.client, ip, IPERF_PORT, secs)?;
                add(Metric::Udp64Kpps, u.pps / 1e3);
                add(Metric::CpuNsPerPkt, u.cpu_machine_ns);
                add(Metric::CpuIperfNsPerPkt, u.cpu_iperf_ns);
            }
            if run(Workload::UdpRate)
                && let Some(dir) = t.vethfp_bpffs()
            {
                // Separate short run: stats collection itself costs a little per program run.
                // On only while the fd is held (BPF_ENABLE_STATS), no sysctl written.
                let stats = bpf::enable_stats()?;
                let (ns0, n0) = work::bpf_prog_stats(dir)?;
                work::udp_rate(&t.client, ip, IPERF_PORT, 1)?;
                let (ns1, n1) = work::bpf_prog_stats(dir)?;
                drop(stats);
                if n1 > n0 {
                    add(Metric::BpfNsPerRun, (ns1 - ns0) as f64 / (n1 - n0) as f64);
                }
            }
            if let Some((p50, p99)) = t.handoff_delay()? {
                // Cumulative over the run so far: the last round's value covers them all.
                add(Metric::HandoffP50Us, p50);
                add(Metric::HandoffP99Us, p99);
            }
            let line: Vec<String> = samples
                .iter()
                .filter(|((n, _), _)| *n == name)
                .map(|((_, m), v)| {
                    format!("{}={:.2}", m.key(), v.last().copied().unwrap_or(f64::NAN))
                })
                .collect();
            println!("bench:   {}", line.join(" "));
        }
    }
    drop(topos);

    let mut impls = Vec::new();
    match &vethfp {
        Ok(v) => {
            impls.push(Impl::vethfp(v));
            impls.push(Impl::vethfp_cni(v));
        }
        Err(why) => {
            skipped.insert("control plane: vethfp".into(), why.clone());
        }
    }
    if control::ptp_available() {
        impls.push(Impl::ptp());
    } else {
        skipped.insert(
            "control plane: cni-ptp".into(),
            format!(
                "{}/ptp not installed: run `cargo xtask setup`",
                control::CNI_DIR
            ),
        );
    }
    let cp = if want(Section::Control) {
        let started = std::time::Instant::now();
        let cp = control::bench(&control::Plan {
            impls: &impls,
            sizes: &sizes,
            burst,
            rounds: rounds as usize,
            secs,
            tag: &tag,
        })?;
        println!(
            "bench: control plane took {:.0} s",
            started.elapsed().as_secs_f64()
        );
        Some(cp)
    } else {
        None
    };

    check_interrupted()?;
    let pods = if want(Section::Pods) {
        pods::bench(vethfp.as_ref().ok(), if quick { 5 } else { 20 })?
    } else {
        pods::PodBench::not_selected()
    };

    check_interrupted()?;
    let scale = if want(Section::Scale) {
        let n = args
            .scale_endpoints
            .unwrap_or(if quick { 20 } else { 1000 });
        scale::bench(
            vethfp.as_ref().ok(),
            &tag,
            n,
            if quick { 1.0 } else { 10.0 },
        )?
    } else {
        scale::ScaleBench::not_selected()
    };

    check_interrupted()?;
    let bpf_cost = if want(Section::Bpfcost) {
        match &vethfp {
            Ok(v) => Some(bench_bpfcost(&args, v, &tag, rounds, secs)?),
            Err(why) => {
                skipped.insert("bpfcost".into(), why.clone());
                None
            }
        }
    } else {
        None
    };

    let results: Vec<TopoResult> = Kind::ALL
        .iter()
        .filter(|k| want(Section::Datapath) && !skipped.contains_key(k.name()))
        .map(|k| TopoResult::new(k.name(), &samples))
        .collect();
    let report = Report {
        machine: report::machine(),
        rounds,
        secs_per_workload: secs,
        quick,
        topologies: results,
        skipped,
        control_plane: cp,
        bpf_cost,
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let md = report.markdown() + &pods.markdown() + &scale.markdown();
    println!("\n{md}");
    std::fs::write(out.join("results.md"), &md)?;
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(out.join("bench.svg"), report.svg())?;
    pods.write(&out)?;
    scale.write(&out)?;
    println!(
        "bench: wrote {}/results.md, results.json, bench.svg, pods.json, scale.json",
        out.display()
    );
    Ok(())
}

/// The `bpfcost` section: this build, and `--baseline-bin` beside it when given.
fn bench_bpfcost(
    args: &Args,
    v: &Vethfp,
    tag: &str,
    rounds: u32,
    secs: u32,
) -> Result<bpfcost::BpfCost> {
    let kinds: Vec<Kind> = bpfcost::KINDS
        .into_iter()
        .filter(|k| {
            args.topology
                .as_ref()
                .is_none_or(|t| t.iter().any(|n| n == k.name()))
        })
        .collect();
    let mut builds = vec![bpfcost::Build {
        label: "this build".into(),
        vethfp: Vethfp {
            bin: v.bin.clone(),
            bpffs: v.bpffs.join("bpfcost"),
        },
        tag: format!("{tag}c"),
    }];
    let mut _base_pins = None;
    if let Some(b) = &args.baseline_bin {
        if !b.exists() {
            bail!("--baseline-bin {} does not exist", b.display());
        }
        let bpffs = PathBuf::from(format!("/sys/fs/bpf/{tag}b"));
        _base_pins = Some(DirGuard(bpffs.clone()));
        builds.push(bpfcost::Build {
            label: "baseline".into(),
            vethfp: Vethfp {
                bin: b.clone(),
                bpffs,
            },
            tag: format!("{tag}b"),
        });
    }
    bpfcost::bench(&builds, &kinds, rounds, secs.min(2))
}
