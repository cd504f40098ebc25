//! Control-plane bench, to the measure of issue 13 §1: vethfp against the reference CNI `ptp`
//! plugin (host-local IPAM) in the same run, medians.
//!
//! - sequential: N endpoints added one after the other, then deleted (one process per call),
//!   ms per endpoint (median over endpoints and rounds) and the totals for N;
//! - bursts: B processes started together (as a runtime's concurrent CNI ADDs arrive), wall
//!   time until the last one exits, then the same for the deletes;
//! - each for `vethfp pair add/del` (the CLI), for the `vethfp` binary run as a CNI plugin
//!   (standalone, host-local IPAM) and for `ptp`;
//! - UDP ping-pong latency between two endpoints with 2 and with N installed.
//!
//! Every node namespace, container namespace, bpffs pin dir and host-local data dir lives in a
//! guard, so a run that fails half-way leaves nothing behind.

use super::report::Stat;
use super::topo::{SOCKPERF_UDP_PORT, Vethfp, wait_listening};
use super::work::pingpong;
use crate::util::{Bg, DirGuard, Netns, check_interrupted, output, setns_cmd, show};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const CNI_DIR: &str = "/usr/lib/cni";

/// Issue 13's targets, as ratios vethfp / ptp of the medians.
const ADD_TARGET: f64 = 1.5;
const DEL_TARGET: f64 = 1.0;
const BURST_TARGET: f64 = 1.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `vethfp pair add/del`.
    Vethfp,
    /// The `vethfp` binary as a standalone CNI plugin (host-local IPAM).
    VethfpCni,
    /// The reference `ptp` plugin (host-local IPAM).
    Ptp,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Vethfp => "vethfp",
            Kind::VethfpCni => "vethfp-cni",
            Kind::Ptp => "cni-ptp",
        }
    }

    fn short(self) -> char {
        match self {
            Kind::Vethfp => 'v',
            Kind::VethfpCni => 'c',
            Kind::Ptp => 'p',
        }
    }
}

/// One implementation under test.
pub struct Impl {
    pub kind: Kind,
    /// The binary and the bench's pin dir (vethfp kinds only).
    vethfp: Option<Vethfp>,
}

impl Impl {
    pub fn vethfp(v: &Vethfp) -> Self {
        Impl {
            kind: Kind::Vethfp,
            vethfp: Some(v.clone()),
        }
    }

    pub fn vethfp_cni(v: &Vethfp) -> Self {
        Impl {
            kind: Kind::VethfpCni,
            vethfp: Some(v.clone()),
        }
    }

    pub fn ptp() -> Self {
        Impl {
            kind: Kind::Ptp,
            vethfp: None,
        }
    }

    pub fn name(&self) -> &'static str {
        self.kind.name()
    }
}

/// Sequential add/del of `endpoints` endpoints, over all rounds.
#[derive(Serialize, Clone)]
pub struct CpResult {
    pub implementation: String,
    pub endpoints: usize,
    pub rounds: usize,
    /// Per-endpoint wall ms of one add; median/min/max over every endpoint of every round.
    /// With endpoints = 1 this is the add that creates the state (loads the programs).
    pub add_ms_per_endpoint: Stat,
    pub del_ms_per_endpoint: Stat,
    /// Sum over the round's endpoints; median/min/max over rounds.
    pub add_total_ms: Stat,
    pub del_total_ms: Stat,
    /// (UDP ping-pong median µs, p99 µs) between endpoints 0 and 1 with 2 endpoints installed
    /// (medians over rounds; measured at the largest endpoint count only).
    pub latency_2: Option<(f64, f64)>,
    /// The same with all `endpoints` installed.
    pub latency_n: Option<(f64, f64)>,
}

/// Bursts of `processes` concurrent adds, then as many concurrent dels.
#[derive(Serialize, Clone)]
pub struct BurstResult {
    pub implementation: String,
    pub processes: usize,
    /// Wall ms from starting the first process to the exit of the last; over rounds.
    pub add_wall_ms: Stat,
    pub del_wall_ms: Stat,
    pub add_wall_samples: Vec<f64>,
    pub del_wall_samples: Vec<f64>,
}

/// One line of the issue-13 table: a vethfp figure against ptp's.
#[derive(Serialize, Clone)]
pub struct Target {
    /// Short label (the chart's).
    pub key: String,
    pub measurement: String,
    pub vethfp_impl: String,
    pub vethfp: f64,
    pub ptp: f64,
    /// vethfp / ptp.
    pub ratio: f64,
    /// The bound for the ratio, if it sets one.
    pub target: Option<f64>,
    /// "PASS" or "MISS" against `target` (a report, never a failure).
    pub verdict: Option<String>,
}

#[derive(Serialize, Clone, Default)]
pub struct ControlPlane {
    pub rounds: usize,
    /// Endpoint counts of the sequential runs; the targets use the largest.
    pub endpoints: Vec<usize>,
    pub burst_processes: usize,
    pub sequential: Vec<CpResult>,
    pub bursts: Vec<BurstResult>,
    pub targets: Vec<Target>,
}

/// Are the CNI ptp plugin and host-local IPAM installed?
pub fn ptp_available() -> bool {
    Path::new(CNI_DIR).join("ptp").exists() && Path::new(CNI_DIR).join("host-local").exists()
}

/// A command to run and what to write on its stdin.
struct Op {
    cmd: Command,
    stdin: Option<String>,
}

/// Start `op` with stdout/stderr captured and its stdin written and closed.
fn spawn(op: &mut Op) -> Result<Child> {
    op.cmd
        .stdin(if op.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A group of its own, so a timeout or a failed burst kills what it started too
        // (host-local, a stuck helper holding our pipes), not just the process itself.
        .process_group(0);
    let mut child = op
        .cmd
        .spawn()
        .with_context(|| format!("could not start `{}`", show(&op.cmd)))?;
    if let Some(s) = &op.stdin {
        let written = child
            .stdin
            .take()
            .context("no stdin pipe")
            .and_then(|mut i| Ok(i.write_all(s.as_bytes())?));
        if let Err(e) = written {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e.context(format!("writing the config to `{}`", show(&op.cmd))));
        }
    }
    Ok(child)
}

/// How long one add or del may take before the bench kills it and fails (a hang must not
/// hang CI).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Wait for `child` (killed after [`CALL_TIMEOUT`]); its stdout, or an error with both
/// outputs.
fn finish(what: &str, child: Child) -> Result<String> {
    let pid = child.id() as libc::pid_t;
    let (done, rx) = mpsc::channel::<()>();
    // A watchdog instead of polling try_wait, which would blur the figures by its period.
    let dog = std::thread::spawn(move || {
        let late = rx.recv_timeout(CALL_TIMEOUT) == Err(mpsc::RecvTimeoutError::Timeout);
        if late {
            kill_group(pid);
        }
        late
    });
    let out = child.wait_with_output();
    drop(done);
    if dog.join().unwrap_or(false) {
        bail!("{what} did not finish within {CALL_TIMEOUT:?}: killed");
    }
    let out = out?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(stdout)
}

/// SIGKILL to the process group of our child `pid` (its own group, see [`spawn`]); the child
/// is not reaped yet (we are blocked in its wait or hold it in [`Kids`]), so its pid, which
/// is the group's id, is still ours.
fn kill_group(pid: libc::pid_t) {
    // SAFETY: plain kill(2) of a process group we created.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
}

/// Children killed and reaped on drop (a burst that fails half-way).
struct Kids(Vec<(String, Child)>);

impl Drop for Kids {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            kill_group(c.id() as libc::pid_t);
            let _ = c.wait();
        }
    }
}

/// A node namespace with `n` container namespaces and what one implementation needs there.
/// Field order is drop order: containers, node (its links go with it), then the dirs.
struct Node {
    cs: Vec<Netns>,
    ns: Netns,
    kind: Kind,
    /// The binary with this node's own pin dir (vethfp kinds).
    vethfp: Option<Vethfp>,
    /// The CNI network config (CNI kinds).
    conf: Option<String>,
    _ipam: Option<DirGuard>,
    _bpffs: Option<DirGuard>,
}

impl Node {
    fn new(imp: &Impl, base: &str, n: usize) -> Result<Node> {
        // Guards first: if anything below fails, they are dropped last.
        let vethfp = imp.vethfp.as_ref().map(|v| Vethfp {
            bin: v.bin.clone(),
            bpffs: v.bpffs.join(base),
        });
        let bpffs = vethfp.as_ref().map(|v| DirGuard(v.bpffs.clone()));
        let (conf, ipam) = match imp.kind {
            Kind::Vethfp => (None, None),
            Kind::VethfpCni | Kind::Ptp => {
                let data = std::env::temp_dir().join(format!("{base}-cni-ipam"));
                let guard = DirGuard(data.clone());
                std::fs::create_dir_all(&data)
                    .with_context(|| format!("creating {}", data.display()))?;
                let conf = match imp.kind {
                    Kind::Ptp => serde_json::json!({
                        "cniVersion": "1.0.0",
                        "name": base,
                        "type": "ptp",
                        "ipMasq": false,
                        "ipam": {
                            "type": "host-local",
                            "subnet": "10.231.0.0/16",
                            "dataDir": data,
                            "routes": [{"dst": "0.0.0.0/0"}]
                        }
                    }),
                    _ => serde_json::json!({
                        "cniVersion": "1.0.0",
                        "name": base,
                        "type": "vethfp",
                        "bpffs": vethfp.as_ref().map(|v| v.bpffs.clone()),
                        "ipam": {
                            "type": "host-local",
                            "subnet": "10.232.0.0/16",
                            "dataDir": data
                        }
                    }),
                };
                (Some(conf.to_string()), Some(guard))
            }
        };
        let ns = Netns::new(format!("{base}-n"))?;
        ns.ip(&["addr", "add", "10.200.255.1/32", "dev", "lo"])?;
        let mut cs = Vec::with_capacity(n);
        for i in 0..n {
            check_interrupted()?;
            cs.push(Netns::new(format!("{base}-{i}"))?);
        }
        Ok(Node {
            cs,
            ns,
            kind: imp.kind,
            vethfp,
            conf,
            _ipam: ipam,
            _bpffs: bpffs,
        })
    }

    fn plugin(&self) -> PathBuf {
        match self.kind {
            Kind::Ptp => Path::new(CNI_DIR).join("ptp"),
            _ => self.vethfp.as_ref().expect("vethfp kind").bin.clone(),
        }
    }

    fn host_if(i: usize) -> String {
        format!("vfc{i}")
    }

    fn cli_ip(i: usize) -> String {
        let k = i + 2;
        format!("10.230.{}.{}", k / 256, k % 256)
    }

    /// The add (or del) of endpoint `i`.
    fn op(&self, add: bool, i: usize) -> Result<Op> {
        let c = &self.cs[i];
        if self.kind == Kind::Vethfp {
            let v = self.vethfp.as_ref().expect("vethfp kind");
            let host_if = Self::host_if(i);
            let cmd = if add {
                let addr = format!("{}/16", Self::cli_ip(i));
                v.cmd(
                    &self.ns,
                    &["pair", "add", &host_if, "--netns", &c.name, "--addr", &addr],
                )?
            } else {
                v.cmd(&self.ns, &["pair", "del", &host_if])?
            };
            return Ok(Op { cmd, stdin: None });
        }
        let mut cmd = setns_cmd(&self.ns.path(), self.plugin())?;
        cmd.env("CNI_COMMAND", if add { "ADD" } else { "DEL" })
            .env("CNI_CONTAINERID", &c.name)
            .env("CNI_NETNS", c.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_DIR);
        Ok(Op {
            cmd,
            stdin: self.conf.clone(),
        })
    }

    fn what(&self, add: bool, i: usize) -> String {
        let op = match (self.kind, add) {
            (Kind::Vethfp, true) => "pair add",
            (Kind::Vethfp, false) => "pair del",
            (_, true) => "ADD",
            (_, false) => "DEL",
        };
        format!("{} {op} of {}", self.kind.name(), self.cs[i].name)
    }

    /// Timed add (or del) of endpoint `i`: (wall ms, stdout).
    fn timed(&self, add: bool, i: usize) -> Result<(f64, String)> {
        check_interrupted()?;
        let mut op = self.op(add, i)?;
        let t = Instant::now();
        let child = spawn(&mut op)?;
        let out = finish(&self.what(add, i), child)?;
        Ok((t.elapsed().as_secs_f64() * 1e3, out))
    }

    /// The container address of endpoint `i` from its add's output.
    fn ip(&self, i: usize, add_out: &str) -> Result<String> {
        if self.kind == Kind::Vethfp {
            return Ok(Self::cli_ip(i));
        }
        let v: serde_json::Value =
            serde_json::from_str(add_out).context("parsing the CNI ADD result")?;
        let addr = v["ips"][0]["address"]
            .as_str()
            .with_context(|| format!("CNI ADD result has no ips[0].address: {add_out}"))?;
        Ok(addr.split('/').next().unwrap_or(addr).to_owned())
    }

    /// Forwarding is off in this node: the latency probe between endpoints can only take the
    /// unconditional fast path (admission `always`; the default `netfilter` needs the kernel
    /// to forward each flow first). Called after the first add, untimed: that add keeps
    /// paying for creating the state.
    fn admission_always(&self) -> Result<()> {
        if let Some(v) = &self.vethfp {
            output(&mut v.cmd(&self.ns, &["admission", "always"])?)
                .context("vethfp admission always failed")?;
        }
        Ok(())
    }

    /// All `cs` adds (or dels) started together; wall ms until the last exits.
    fn burst(&self, add: bool) -> Result<f64> {
        check_interrupted()?;
        let mut ops = (0..self.cs.len())
            .map(|i| self.op(add, i))
            .collect::<Result<Vec<_>>>()?;
        let mut kids = Kids(Vec::with_capacity(ops.len()));
        let t = Instant::now();
        for (i, op) in ops.iter_mut().enumerate() {
            kids.0.push((self.what(add, i), spawn(op)?));
        }
        let mut results = Vec::with_capacity(kids.0.len());
        while let Some((what, child)) = kids.0.pop() {
            results.push(finish(&what, child));
        }
        let ms = t.elapsed().as_secs_f64() * 1e3;
        for r in results {
            r?;
        }
        Ok(ms)
    }
}

struct SeqRun {
    add: Vec<f64>,
    del: Vec<f64>,
    latency_2: Option<(f64, f64)>,
    latency_n: Option<(f64, f64)>,
}

/// One round: add `n` endpoints in a fresh node, (optionally) measure latency at 2 and at n,
/// delete them.
fn sequential(imp: &Impl, n: usize, base: &str, latency: bool, secs: u32) -> Result<SeqRun> {
    let node = Node::new(imp, base, n)?;
    let mut ips = Vec::with_capacity(n);
    let mut run = SeqRun {
        add: Vec::with_capacity(n),
        del: Vec::with_capacity(n),
        latency_2: None,
        latency_n: None,
    };
    for i in 0..n {
        let (ms, out) = node.timed(true, i)?;
        run.add.push(ms);
        ips.push(node.ip(i, &out)?);
        if i == 0 {
            node.admission_always()?;
        }
        if latency && i == 1 {
            run.latency_2 = Some(measure(&node.cs, &ips, secs)?);
        }
    }
    if latency && n >= 2 {
        run.latency_n = Some(measure(&node.cs, &ips, secs)?);
    }
    for i in 0..n {
        run.del.push(node.timed(false, i)?.0);
    }
    Ok(run)
}

/// What to run: the implementations, endpoint counts, burst size, rounds.
pub struct Plan<'a> {
    pub impls: &'a [Impl],
    pub sizes: &'a [usize],
    pub burst: usize,
    pub rounds: usize,
    pub secs: u32,
    pub tag: &'a str,
}

/// The whole control-plane section, rounds interleaved (every implementation once per round).
pub fn bench(p: &Plan) -> Result<ControlPlane> {
    let max = p.sizes.iter().copied().max().unwrap_or(0);
    // Burst nodes stay up for all rounds; each starts with an untimed add+del of one endpoint
    // (creates the state, sets admission `always`), so bursts never pay for loading programs.
    let mut bnodes = Vec::new();
    if p.burst > 0 {
        for imp in p.impls {
            check_interrupted()?;
            println!(
                "bench: control plane {}: {} namespaces for bursts",
                imp.name(),
                p.burst
            );
            let node = Node::new(imp, &format!("{}-cb{}", p.tag, imp.kind.short()), p.burst)?;
            node.timed(true, 0)?;
            node.admission_always()?;
            node.timed(false, 0)?;
            bnodes.push(node);
        }
    }
    let mut seq: Vec<Vec<SeqRun>> = (0..p.sizes.len() * p.impls.len())
        .map(|_| Vec::new())
        .collect();
    let mut bursts: Vec<(Vec<f64>, Vec<f64>)> = vec![(vec![], vec![]); bnodes.len()];
    for r in 1..=p.rounds {
        for (si, &n) in p.sizes.iter().enumerate() {
            for (ii, imp) in p.impls.iter().enumerate() {
                crate::util::step(&format!(
                    "round {r}/{}: control plane {} sequential, {n} endpoint(s)",
                    p.rounds,
                    imp.name()
                ));
                let base = format!("{}-cp{}{n}", p.tag, imp.kind.short());
                let run = sequential(imp, n, &base, n == max && n >= 2, p.secs)?;
                println!(
                    "bench:   add median {:.2} ms/endpoint (total {:.0} ms), del median {:.2} \
                     ms/endpoint (total {:.0} ms)",
                    median(&run.add),
                    run.add.iter().sum::<f64>(),
                    median(&run.del),
                    run.del.iter().sum::<f64>()
                );
                seq[si * p.impls.len() + ii].push(run);
            }
        }
        for (bi, node) in bnodes.iter().enumerate() {
            crate::util::step(&format!(
                "round {r}/{}: control plane {} bursts of {}",
                p.rounds,
                node.kind.name(),
                p.burst
            ));
            let a = node.burst(true)?;
            let d = node.burst(false)?;
            println!(
                "bench:   {} concurrent adds {a:.0} ms, dels {d:.0} ms",
                p.burst
            );
            bursts[bi].0.push(a);
            bursts[bi].1.push(d);
        }
    }
    drop(bnodes);

    let mut cp = ControlPlane {
        rounds: p.rounds,
        endpoints: p.sizes.to_vec(),
        burst_processes: p.burst,
        ..Default::default()
    };
    for (si, &n) in p.sizes.iter().enumerate() {
        for (ii, imp) in p.impls.iter().enumerate() {
            let runs = &seq[si * p.impls.len() + ii];
            let all = |f: fn(&SeqRun) -> &Vec<f64>| -> Vec<f64> {
                runs.iter().flat_map(|r| f(r).iter().copied()).collect()
            };
            let totals = |f: fn(&SeqRun) -> &Vec<f64>| -> Vec<f64> {
                runs.iter().map(|r| f(r).iter().sum()).collect()
            };
            let lat = |f: fn(&SeqRun) -> Option<(f64, f64)>| -> Option<(f64, f64)> {
                let v: Vec<(f64, f64)> = runs.iter().filter_map(f).collect();
                (!v.is_empty()).then(|| {
                    (
                        median(&v.iter().map(|x| x.0).collect::<Vec<_>>()),
                        median(&v.iter().map(|x| x.1).collect::<Vec<_>>()),
                    )
                })
            };
            cp.sequential.push(CpResult {
                implementation: imp.name().into(),
                endpoints: n,
                rounds: runs.len(),
                add_ms_per_endpoint: stat(&all(|r| &r.add)),
                del_ms_per_endpoint: stat(&all(|r| &r.del)),
                add_total_ms: stat(&totals(|r| &r.add)),
                del_total_ms: stat(&totals(|r| &r.del)),
                latency_2: lat(|r| r.latency_2),
                latency_n: lat(|r| r.latency_n),
            });
        }
    }
    for (imp, (a, d)) in p.impls.iter().zip(bursts) {
        cp.bursts.push(BurstResult {
            implementation: imp.name().into(),
            processes: p.burst,
            add_wall_ms: stat(&a),
            del_wall_ms: stat(&d),
            add_wall_samples: a,
            del_wall_samples: d,
        });
    }
    cp.targets = targets(&cp);
    Ok(cp)
}

fn median(v: &[f64]) -> f64 {
    Stat::of(v).map(|s| s.median).unwrap_or(f64::NAN)
}

fn stat(v: &[f64]) -> Stat {
    Stat::of(v).unwrap_or(Stat {
        median: f64::NAN,
        min: f64::NAN,
        max: f64::NAN,
    })
}

/// The issue-13 table: each vethfp front end against ptp at the largest endpoint count.
fn targets(cp: &ControlPlane) -> Vec<Target> {
    let n = cp.endpoints.iter().copied().max().unwrap_or(0);
    let b = cp.burst_processes;
    let seq = |imp: &str| {
        cp.sequential
            .iter()
            .find(|c| c.implementation == imp && c.endpoints == n)
    };
    let burst = |imp: &str| cp.bursts.iter().find(|c| c.implementation == imp);
    let mut out = Vec::new();
    let Some(ptp) = seq(Kind::Ptp.name()) else {
        return out;
    };
    let ptp_b = burst(Kind::Ptp.name());
    for (kind, short, add, del) in [
        (Kind::Vethfp, "pair", "`pair add`", "`pair del`"),
        (
            Kind::VethfpCni,
            "CNI",
            "CNI ADD (vethfp plugin)",
            "CNI DEL (vethfp plugin)",
        ),
    ] {
        let Some(v) = seq(kind.name()) else { continue };
        let mut row = |key: String, m: String, ours: f64, theirs: f64, target: Option<f64>| {
            let ratio = ours / theirs;
            out.push(Target {
                key: format!("{short} {key}"),
                measurement: m,
                vethfp_impl: kind.name().into(),
                vethfp: ours,
                ptp: theirs,
                ratio,
                target,
                verdict: target.map(|t| if ratio <= t { "PASS" } else { "MISS" }.into()),
            });
        };
        row(
            "add, sequential".into(),
            format!("{add}, sequential, ms/endpoint (median, N={n})"),
            v.add_ms_per_endpoint.median,
            ptp.add_ms_per_endpoint.median,
            Some(ADD_TARGET),
        );
        row(
            "del, sequential".into(),
            format!("{del}, sequential, ms/endpoint (median, N={n})"),
            v.del_ms_per_endpoint.median,
            ptp.del_ms_per_endpoint.median,
            Some(DEL_TARGET),
        );
        row(
            format!("add, total of {n}"),
            format!("{add}, total for {n} endpoints, ms"),
            v.add_total_ms.median,
            ptp.add_total_ms.median,
            None,
        );
        row(
            format!("del, total of {n}"),
            format!("{del}, total for {n} endpoints, ms"),
            v.del_total_ms.median,
            ptp.del_total_ms.median,
            None,
        );
        if let (Some(vb), Some(pb)) = (burst(kind.name()), ptp_b) {
            row(
                format!("add, {b} concurrent"),
                format!("{b} concurrent {add}, wall ms"),
                vb.add_wall_ms.median,
                pb.add_wall_ms.median,
                Some(BURST_TARGET),
            );
            row(
                format!("del, {b} concurrent"),
                format!("{b} concurrent {del}, wall ms"),
                vb.del_wall_ms.median,
                pb.del_wall_ms.median,
                Some(BURST_TARGET),
            );
        }
    }
    out
}

/// UDP ping-pong from endpoint 0 to endpoint 1.
fn measure(cs: &[Netns], ips: &[String], secs: u32) -> Result<(f64, f64)> {
    let _srv = Bg::spawn(cs[1].cmd("sockperf").args([
        "server",
        "-i",
        &ips[1],
        "-p",
        &SOCKPERF_UDP_PORT.to_string(),
    ]))?;
    wait_listening(&cs[1], "-lun", SOCKPERF_UDP_PORT)?;
    pingpong(&cs[0], &ips[1], SOCKPERF_UDP_PORT, false, secs, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(median: f64) -> Stat {
        Stat {
            median,
            min: median,
            max: median,
        }
    }

    fn seq(imp: &str, n: usize, add: f64, del: f64) -> CpResult {
        CpResult {
            implementation: imp.into(),
            endpoints: n,
            rounds: 1,
            add_ms_per_endpoint: st(add),
            del_ms_per_endpoint: st(del),
            add_total_ms: st(add * n as f64),
            del_total_ms: st(del * n as f64),
            latency_2: None,
            latency_n: None,
        }
    }

    fn burst(imp: &str, add: f64, del: f64) -> BurstResult {
        BurstResult {
            implementation: imp.into(),
            processes: 32,
            add_wall_ms: st(add),
            del_wall_ms: st(del),
            add_wall_samples: vec![add],
            del_wall_samples: vec![del],
        }
    }

    #[test]
    fn targets_use_the_largest_count_and_judge_each_ratio() {
        let cp = ControlPlane {
            rounds: 1,
            endpoints: vec![1, 100],
            burst_processes: 32,
            sequential: vec![
                // N=1 (state creation) must not be what is judged.
                seq("vethfp", 1, 1000.0, 1000.0),
                seq("cni-ptp", 1, 10.0, 10.0),
                seq("vethfp", 100, 14.0, 11.0),
                seq("cni-ptp", 100, 10.0, 10.0),
            ],
            bursts: vec![
                burst("vethfp", 100.0, 300.0),
                burst("cni-ptp", 200.0, 200.0),
            ],
            targets: vec![],
        };
        let t = targets(&cp);
        let got: Vec<(&str, f64, Option<&str>)> = t
            .iter()
            .map(|t| (t.key.as_str(), t.ratio, t.verdict.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("pair add, sequential", 1.4, Some("PASS")),
                ("pair del, sequential", 1.1, Some("MISS")),
                ("pair add, total of 100", 1.4, None),
                ("pair del, total of 100", 1.1, None),
                ("pair add, 32 concurrent", 0.5, Some("PASS")),
                ("pair del, 32 concurrent", 1.5, Some("MISS")),
            ]
        );
    }
}
