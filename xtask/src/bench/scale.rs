//! The agent at a full node (issue 23): `cargo xtask bench --only scale`.
//!
//! One node namespace with N endpoints (`pair add`, each in its own container namespace), then:
//! - writers without an agent: `pair add` + `pair del` of one more endpoint, timed, and the
//!   state-lock wait each reports (`RUST_LOG=vethfp=debug`: "state lock: waited N µs");
//! - the agent at its default interval: the first /metrics scrapes (size, time), then its CPU
//!   over three idle intervals (utime+stime from /proc) and the duration of each periodic pass
//!   (its own log, `took_us`);
//! - the agent passing every 0.2 s, so that every writer meets a pass: the same writers again;
//! - the agent with `--per-endpoint-metrics=false`: the scrape again.
//!
//! Targets (issue 23): idle agent < 1% of a CPU at 1000 endpoints, writer wait p99 < 20 ms,
//! /metrics well under a second.

use super::Vethfp;
use crate::util::{DirGuard, Netns, check_interrupted, output, step};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

const METRICS: &str = "127.0.0.1:9761";
/// Writer operations (each a `pair add` and a `pair del`) per phase.
const WRITES: usize = 30;

#[derive(Debug, Default, Serialize)]
pub struct Writers {
    pub add_ms_p50: f64,
    pub add_ms_p99: f64,
    pub wait_ms_p50: f64,
    pub wait_ms_p99: f64,
    pub wait_ms_max: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct ScaleBench {
    pub endpoints: usize,
    pub interval_s: f64,
    pub idle_cpu_pct: f64,
    pub idle_window_s: f64,
    pub passes: usize,
    pub pass_ms_p50: f64,
    pub pass_ms_max: f64,
    pub scrape_bytes: usize,
    pub scrape_ms: f64,
    pub scrape_off_bytes: usize,
    pub scrape_off_ms: f64,
    pub writers_alone: Writers,
    pub writers_under_agent: Writers,
    pub skipped: Option<String>,
}

/// `vethfp agent` with its log in a file; SIGKILLed and reaped on drop.
struct AgentProc {
    child: Child,
    log: PathBuf,
}

impl AgentProc {
    fn start(v: &Vethfp, node: &Netns, log: PathBuf, extra: &[&str]) -> Result<AgentProc> {
        let mut args = vec!["agent", "--metrics-addr", METRICS];
        args.extend_from_slice(extra);
        let f = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = v
            .cmd(node, &args)?
            .env("RUST_LOG", "info,vethfp=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .context("starting vethfp agent")?;
        let mut a = AgentProc { child, log };
        let deadline = Instant::now() + Duration::from_secs(120);
        while scrape(node).is_err() {
            if let Some(st) = a.child.try_wait()? {
                bail!("vethfp agent exited ({st}):\n{}", a.log_text());
            }
            if Instant::now() > deadline {
                bail!("vethfp agent not serving /metrics after 120 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(a)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// utime + stime in clock ticks.
    fn cpu_ticks(&self) -> Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        let after = &stat[stat.rfind(')').context("stat")? + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
    }

    /// `took_us` of every finished periodic pass so far.
    fn periodic_passes(&self) -> Vec<f64> {
        self.log_text()
            .lines()
            .filter(|l| l.contains("reconciled") && l.contains("why=\"periodic\""))
            .filter_map(|l| {
                l.split("took_us=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .collect()
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// One GET /metrics from inside the node: (bytes, ms).
fn scrape(node: &Netns) -> Result<(usize, f64)> {
    let t = Instant::now();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &node.name, "curl", "-sf"])
        .arg(format!("http://{METRICS}/metrics"))
        .stderr(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!("GET /metrics failed");
    }
    Ok((out.stdout.len(), t.elapsed().as_secs_f64() * 1e3))
}

fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    s[((s.len() - 1) as f64 * q).round() as usize]
}

fn addr(i: usize) -> String {
    format!("10.240.{}.{}/16", i / 250, i % 250 + 2)
}

/// `WRITES` × (`pair add` + `pair del`) of one extra endpoint in `extra`: add wall times and
/// the longest state-lock wait of each command.
fn writers(v: &Vethfp, node: &Netns, extra: &Netns) -> Result<Writers> {
    let (mut add, mut wait) = (Vec::new(), Vec::new());
    for _ in 0..WRITES {
        check_interrupted()?;
        for args in [
            vec![
                "pair",
                "add",
                "sw0",
                "--netns",
                extra.name.as_str(),
                "--addr",
                "10.241.0.2/16",
            ],
            vec!["pair", "del", "sw0"],
        ] {
            let t = Instant::now();
            let out = v
                .cmd(node, &args)?
                .env("RUST_LOG", "vethfp=debug")
                .stdin(Stdio::null())
                .output()?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            if !out.status.success() {
                bail!(
                    "vethfp {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            if args[1] == "add" {
                add.push(ms);
            }
            let waited = String::from_utf8_lossy(&out.stderr)
                .lines()
                .filter_map(|l| {
                    l.split("state lock: waited ")
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .parse::<f64>()
                        .ok()
                })
                .fold(0.0, f64::max);
            wait.push(waited / 1e3);
        }
    }
    Ok(Writers {
        add_ms_p50: quantile(&add, 0.5),
        add_ms_p99: quantile(&add, 0.99),
        wait_ms_p50: quantile(&wait, 0.5),
        wait_ms_p99: quantile(&wait, 0.99),
        wait_ms_max: quantile(&wait, 1.0),
    })
}

/// Runs the scale bench with `n` endpoints; `interval` is the agent's reconcile interval for
/// the idle measurement (its default, 10 s, in a full run).
pub fn bench(v: Option<&Vethfp>, tag: &str, n: usize, interval: f64) -> Result<ScaleBench> {
    let Some(v) = v else {
        return Ok(ScaleBench::skipped("no vethfp binary".into()));
    };
    // The writers' endpoint needs a counter slot of its own (veth_common::MAX_SLOTS = 4096).
    let max = 4095;
    if n > max {
        println!(
            "bench: scale: {n} endpoints asked, {max} made: the writers' endpoint needs a slot"
        );
    }
    let n = n.min(max);
    let v = Vethfp {
        bin: v.bin.clone(),
        bpffs: v.bpffs.join("scale"),
    };
    // Drop order (reverse of declaration): agents first, then the node (its host ends and
    // with them every pair), the containers, the pin dir.
    let _pins = DirGuard(v.bpffs.clone());
    step(&format!("scale: {n} container namespaces"));
    let mut cs = Vec::with_capacity(n);
    for i in 0..n {
        check_interrupted()?;
        cs.push(Netns::new(format!("{tag}-s{i}"))?);
    }
    let extra = Netns::new(format!("{tag}-sw"))?;
    let node = Netns::new(format!("{tag}-sn"))?;
    step(&format!("scale: {n} endpoints (pair add, 4 at a time)"));
    let started = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let (v, node, cs) = (&v, &node, &cs);
                s.spawn(move || -> Result<()> {
                    for i in (w..n).step_by(4) {
                        check_interrupted()?;
                        let h = format!("s{i}");
                        let a = addr(i);
                        let args = ["pair", "add", &h, "--netns", &cs[i].name, "--addr", &a];
                        output(&mut v.cmd(node, &args)?)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("pair add worker panicked"))??;
        }
        Ok(())
    })?;
    println!(
        "bench: scale: {n} endpoints made in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut r = ScaleBench {
        endpoints: n,
        interval_s: interval,
        ..ScaleBench::default()
    };
    step("scale: writers without an agent");
    r.writers_alone = writers(&v, &node, &extra)?;

    let logs = std::env::temp_dir();
    let log = |what: &str| logs.join(format!("{tag}-agent-{what}.log"));
    step(&format!(
        "scale: idle agent, reconcile interval {interval} s"
    ));
    {
        let iv = interval.to_string();
        let a = AgentProc::start(&v, &node, log("idle"), &["--reconcile-interval", &iv])?;
        // The first scrape reads every endpoint's counters; the second shows the steady cost.
        let mut first = (0, 0.0);
        for i in 0..2 {
            let s = scrape(&node)?;
            if i == 0 {
                first = s;
            }
        }
        (r.scrape_bytes, r.scrape_ms) = first;
        let p0 = a.periodic_passes().len();
        let c0 = a.cpu_ticks()?;
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(interval * 3.0 + 0.2));
        while a.periodic_passes().len() < p0 + 3 && t0.elapsed().as_secs_f64() < interval * 10.0 {
            check_interrupted()?;
            std::thread::sleep(Duration::from_millis(100));
        }
        let c1 = a.cpu_ticks()?;
        r.idle_window_s = t0.elapsed().as_secs_f64();
        // USER_HZ is 100 on Linux.
        r.idle_cpu_pct = (c1 - c0) as f64 / 100.0 / r.idle_window_s * 100.0;
        let took: Vec<f64> = a.periodic_passes().into_iter().skip(p0).collect();
        r.passes = took.len();
        r.pass_ms_p50 = quantile(&took, 0.5) / 1e3;
        r.pass_ms_max = quantile(&took, 1.0) / 1e3;
    }
    step("scale: writers while the agent passes every 0.2 s");
    {
        let _a = AgentProc::start(&v, &node, log("busy"), &["--reconcile-interval", "0.2"])?;
        r.writers_under_agent = writers(&v, &node, &extra)?;
    }
    step("scale: /metrics with --per-endpoint-metrics=false");
    {
        let _a = AgentProc::start(&v, &node, log("off"), &["--per-endpoint-metrics=false"])?;
        (r.scrape_off_bytes, r.scrape_off_ms) = scrape(&node)?;
    }
    drop(node);
    print!("{}", r.markdown());
    Ok(r)
}

impl ScaleBench {
    fn skipped(why: String) -> Self {
        println!("bench: WARNING: scale bench skipped: {why}");
        ScaleBench {
            skipped: Some(why),
            ..ScaleBench::default()
        }
    }

    /// The section was left out with `--only`.
    pub fn not_selected() -> Self {
        ScaleBench {
            skipped: Some("not selected (--only)".into()),
            ..ScaleBench::default()
        }
    }

    pub fn markdown(&self) -> String {
        let mut s = String::from("\n## Agent at scale\n\n");
        if let Some(why) = &self.skipped {
            s += &format!("Skipped: {why}\n");
            return s;
        }
        let w = |w: &Writers| {
            format!(
                "{:.2} / {:.2} (max {:.2})",
                w.wait_ms_p50, w.wait_ms_p99, w.wait_ms_max
            )
        };
        let add = |w: &Writers| format!("{:.1} / {:.1}", w.add_ms_p50, w.add_ms_p99);
        s += &format!(
            "{} endpoints, each in its own namespace. Idle: the agent at a {} s reconcile \
             interval over {:.1} s ({} periodic passes). Writers: {WRITES} × `pair add` + \
             `pair del` of one more endpoint, the longest state-lock wait each command \
             reports; \"under the agent\" with a pass every 0.2 s.\n\n",
            self.endpoints, self.interval_s, self.idle_window_s, self.passes
        );
        s += "| metric | value | target |\n| --- | ---: | ---: |\n";
        s += &format!(
            "| idle agent CPU (% of one CPU) | {:.2} | < 1 |\n",
            self.idle_cpu_pct
        );
        s += &format!(
            "| periodic pass p50 / max (ms) | {:.1} / {:.1} | |\n",
            self.pass_ms_p50, self.pass_ms_max
        );
        s += &format!(
            "| writer lock wait p50 / p99, no agent (ms) | {} | |\n",
            w(&self.writers_alone)
        );
        s += &format!(
            "| writer lock wait p50 / p99, under the agent (ms) | {} | p99 < 20 |\n",
            w(&self.writers_under_agent)
        );
        s += &format!(
            "| `pair add` p50 / p99, no agent / under the agent (ms) | {} / {} | |\n",
            add(&self.writers_alone),
            add(&self.writers_under_agent)
        );
        s += &format!(
            "| first /metrics scrape, per-endpoint series (KB, ms) | {:.0}, {:.0} | < 1000 ms |\n",
            self.scrape_bytes as f64 / 1e3,
            self.scrape_ms
        );
        s += &format!(
            "| /metrics, `--per-endpoint-metrics=false` (KB, ms) | {:.1}, {:.0} | |\n",
            self.scrape_off_bytes as f64 / 1e3,
            self.scrape_off_ms
        );
        s
    }

    pub fn write(&self, out: &Path) -> Result<()> {
        std::fs::write(out.join("scale.json"), serde_json::to_string_pretty(self)?)?;
        Ok(())
    }
}
