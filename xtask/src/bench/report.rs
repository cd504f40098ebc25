//! Bench output: markdown table, JSON, and an SVG chart written by hand (no fonts, no deps).

use super::bpfcost::BpfCost;
use super::control::{ControlPlane, Target};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Metric {
    UdpRrPinP50,
    TcpRrPinP50,
    UdpRrP50,
    UdpRrP99,
    TcpRrP50,
    TcpRrP99,
    Tcp1Gbps,
    Tcp2Gbps,
    Udp64Kpps,
    CpuNsPerPkt,
    CpuIperfNsPerPkt,
    BpfNsPerRun,
    TcpCrr,
    TcpCrrPin,
    HandoffP50Us,
    HandoffP99Us,
}

impl Metric {
    pub const ALL: [Metric; 16] = [
        Metric::UdpRrPinP50,
        Metric::TcpRrPinP50,
        Metric::UdpRrP50,
        Metric::UdpRrP99,
        Metric::TcpRrP50,
        Metric::TcpRrP99,
        Metric::Tcp1Gbps,
        Metric::Tcp2Gbps,
        Metric::Udp64Kpps,
        Metric::CpuNsPerPkt,
        Metric::CpuIperfNsPerPkt,
        Metric::BpfNsPerRun,
        Metric::TcpCrr,
        Metric::TcpCrrPin,
        Metric::HandoffP50Us,
        Metric::HandoffP99Us,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Metric::UdpRrPinP50 => "udp_rr_same_cpu_p50_us",
            Metric::TcpRrPinP50 => "tcp_rr_same_cpu_p50_us",
            Metric::UdpRrP50 => "udp_rr_p50_us",
            Metric::UdpRrP99 => "udp_rr_p99_us",
            Metric::TcpRrP50 => "tcp_rr_p50_us",
            Metric::TcpRrP99 => "tcp_rr_p99_us",
            Metric::Tcp1Gbps => "tcp_1stream_gbps",
            Metric::Tcp2Gbps => "tcp_2streams_gbps",
            Metric::Udp64Kpps => "udp_64b_kpps",
            Metric::CpuNsPerPkt => "cpu_ns_per_udp_pkt",
            Metric::CpuIperfNsPerPkt => "iperf3_cpu_ns_per_udp_pkt",
            Metric::BpfNsPerRun => "bpf_ns_per_prog_run",
            Metric::TcpCrr => "tcp_crr_per_s",
            Metric::TcpCrrPin => "tcp_crr_same_cpu_per_s",
            Metric::HandoffP50Us => "tcp_handoff_p50_us",
            Metric::HandoffP99Us => "tcp_handoff_p99_us",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Metric::UdpRrPinP50 => "UDP ping-pong 64 B, same CPU, median (µs, RTT/2)",
            Metric::TcpRrPinP50 => "TCP ping-pong 64 B, same CPU, median (µs, RTT/2)",
            Metric::UdpRrP50 => "UDP ping-pong 64 B, median (µs, RTT/2)",
            Metric::UdpRrP99 => "UDP ping-pong 64 B, p99 (µs, RTT/2)",
            Metric::TcpRrP50 => "TCP ping-pong 64 B, median (µs, RTT/2)",
            Metric::TcpRrP99 => "TCP ping-pong 64 B, p99 (µs, RTT/2)",
            Metric::Tcp1Gbps => "TCP 1 stream (Gbit/s)",
            Metric::Tcp2Gbps => "TCP 2 streams (Gbit/s)",
            Metric::Udp64Kpps => "UDP 64 B received (kpps)",
            Metric::CpuNsPerPkt => "CPU per UDP packet, whole machine (ns)",
            Metric::CpuIperfNsPerPkt => "CPU per UDP packet, iperf3 processes (ns)",
            Metric::BpfNsPerRun => "BPF program cost per run (ns)",
            Metric::TcpCrr => "TCP connect/request/close (conn/s)",
            Metric::TcpCrrPin => "TCP connect/request/close, same CPU (conn/s)",
            Metric::HandoffP50Us => "TCP hand-off delay, median (µs, bucket bound)",
            Metric::HandoffP99Us => "TCP hand-off delay, p99 (µs, bucket bound)",
        }
    }

    pub fn higher_is_better(self) -> bool {
        matches!(
            self,
            Metric::Tcp1Gbps
                | Metric::Tcp2Gbps
                | Metric::Udp64Kpps
                | Metric::TcpCrr
                | Metric::TcpCrrPin
        )
    }
}

#[derive(Serialize, Clone, Copy)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    pub fn of(v: &[f64]) -> Option<Stat> {
        if v.is_empty() {
            return None;
        }
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Some(Stat {
            median,
            min: s[0],
            max: s[n - 1],
        })
    }
}

#[derive(Serialize)]
pub struct TopoResult {
    pub name: String,
    pub metrics: BTreeMap<&'static str, Stat>,
    pub samples: BTreeMap<&'static str, Vec<f64>>,
}

impl TopoResult {
    pub fn new(name: &str, all: &BTreeMap<(String, Metric), Vec<f64>>) -> Self {
        let mut metrics = BTreeMap::new();
        let mut samples = BTreeMap::new();
        for m in Metric::ALL {
            if let Some(v) = all.get(&(name.to_owned(), m))
                && let Some(s) = Stat::of(v)
            {
                metrics.insert(m.key(), s);
                samples.insert(m.key(), v.clone());
            }
        }
        TopoResult {
            name: name.into(),
            metrics,
            samples,
        }
    }

    fn get(&self, m: Metric) -> Option<Stat> {
        self.metrics.get(m.key()).copied()
    }
}

#[derive(Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpu: String,
    pub cpus: usize,
    pub unix_time: u64,
}

pub fn machine() -> Machine {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let unix_time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Machine {
        kernel,
        cpu,
        cpus,
        unix_time,
    }
}

#[derive(Serialize)]
pub struct Report {
    pub machine: Machine,
    pub rounds: u32,
    pub secs_per_workload: u32,
    pub quick: bool,
    pub topologies: Vec<TopoResult>,
    pub skipped: BTreeMap<String, String>,
    /// None when left out with `--only`.
    pub control_plane: Option<ControlPlane>,
    /// BPF cost per program and path (`bpfcost` section); None when left out.
    pub bpf_cost: Option<BpfCost>,
}

fn num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

impl Report {
    fn topo(&self, name: &str) -> Option<&TopoResult> {
        self.topologies.iter().find(|t| t.name == name)
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(s, "# vethfp bench\n");
        let _ = writeln!(
            s,
            "Machine: {} ({} CPUs), kernel {}. {} round(s), {} s per workload{}; unix time {}.\n",
            m.cpu,
            m.cpus,
            m.kernel,
            self.rounds,
            self.secs_per_workload,
            match (&self.control_plane, self.quick) {
                (Some(cp), true) => format!(
                    " (--quick: smoke test, not a measurement; control plane with {:?} \
                     endpoints and bursts of {})",
                    cp.endpoints, cp.burst_processes
                ),
                (None, true) => " (--quick: smoke test, not a measurement)".into(),
                _ => String::new(),
            },
            m.unix_time
        );
        if !self.topologies.is_empty() {
            self.datapath_markdown(&mut s);
        }
        if let Some(cp) = &self.control_plane {
            control_markdown(cp, &mut s);
        }
        if let Some(c) = &self.bpf_cost {
            bpf_cost_markdown(c, &mut s);
        }
        if !self.skipped.is_empty() {
            let _ = writeln!(s, "\n## Skipped\n");
            for (k, why) in &self.skipped {
                let _ = writeln!(s, "- {k}: {why}");
            }
        }
        s
    }

    fn datapath_markdown(&self, s: &mut String) {
        let _ = writeln!(s, "## Data path: medians\n");
        let _ = write!(s, "| metric |");
        for t in &self.topologies {
            let _ = write!(s, " {} |", t.name);
        }
        let _ = write!(s, "\n|---|");
        for _ in &self.topologies {
            let _ = write!(s, "---:|");
        }
        s.push('\n');
        for metric in Metric::ALL {
            if self.topologies.iter().all(|t| t.get(metric).is_none()) {
                continue;
            }
            let arrow = if metric.higher_is_better() {
                "↑"
            } else {
                "↓"
            };
            let _ = write!(s, "| {} {arrow} |", metric.label());
            for t in &self.topologies {
                let cell = t
                    .get(metric)
                    .map(|v| num(v.median))
                    .unwrap_or_else(|| "–".into());
                let _ = write!(s, " {cell} |");
            }
            s.push('\n');
        }
        let _ = writeln!(
            s,
            "\n## Data path: every figure with min–max and ratios\n\n\
             Ratio = this topology's median / the reference's median \
             (latency and CPU: lower is better; Gbit/s and kpps: higher is better).\n"
        );
        let _ = writeln!(
            s,
            "| metric | topology | median | min–max | vs direct | vs bridge | vs routed+rules |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|");
        let direct = self.topo("direct");
        let bridge = self.topo("bridge");
        // The do-no-harm reference: the same node and rules without vethfp.
        let rules = self.topo("routed+rules");
        for metric in Metric::ALL {
            for t in &self.topologies {
                let Some(v) = t.get(metric) else { continue };
                let ratio = |r: Option<&TopoResult>| {
                    r.and_then(|r| r.get(metric))
                        .filter(|b| b.median != 0.0)
                        .map(|b| format!("{:.2}×", v.median / b.median))
                        .unwrap_or_else(|| "–".into())
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {}–{} | {} | {} | {} |",
                    metric.label(),
                    t.name,
                    num(v.median),
                    num(v.min),
                    num(v.max),
                    ratio(direct),
                    ratio(bridge),
                    ratio(rules)
                );
            }
        }
    }

    /// Three bar panels (latency medians, TCP throughput, small-packet UDP rate) when the data
    /// path ran, and a panel of the control plane's vethfp/ptp ratios against issue 13's
    /// targets when it did.
    pub fn svg(&self) -> String {
        const PW: f64 = 380.0;
        const PH: f64 = 340.0;
        let all_panels: [(&str, &[(Metric, &str)]); 3] = [
            (
                "Same-CPU latency, median (µs, lower is better)",
                &[
                    (Metric::UdpRrPinP50, "#4e79a7"),
                    (Metric::TcpRrPinP50, "#f28e2b"),
                ],
            ),
            (
                "TCP throughput (Gbit/s, higher is better)",
                &[(Metric::Tcp1Gbps, "#59a14f"), (Metric::Tcp2Gbps, "#76b7b2")],
            ),
            (
                "UDP 64 B rate (kpps, higher is better)",
                &[(Metric::Udp64Kpps, "#e15759")],
            ),
        ];
        let panels: &[(&str, &[(Metric, &str)])] = if self.topologies.is_empty() {
            &[]
        } else {
            &all_panels
        };
        let targets = self
            .control_plane
            .as_ref()
            .map(|c| c.targets.as_slice())
            .unwrap_or_default();
        let cp_w = if targets.is_empty() { 0.0 } else { CPW };
        let width = (PW * panels.len() as f64 + cp_w).max(PW);
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" viewBox="0 0 {width} {h}" font-family="sans-serif" font-size="11">"#,
            h = PH + 30.0
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r##"<text x="10" y="{}" fill="#555">vethfp bench — {} ({} CPUs), kernel {}; {} round(s), {} s/workload</text>"##,
            PH + 20.0,
            esc(&self.machine.cpu),
            self.machine.cpus,
            esc(&self.machine.kernel),
            self.rounds,
            self.secs_per_workload
        );
        for (pi, (title, series)) in panels.iter().enumerate() {
            let x0 = pi as f64 * PW;
            let (left, top, bottom) = (x0 + 45.0, 40.0, PH - 90.0);
            let plot_w = PW - 60.0;
            let _ = writeln!(
                s,
                r#"<text x="{}" y="20" font-size="13" font-weight="bold">{}</text>"#,
                x0 + 10.0,
                esc(title)
            );
            let max = self
                .topologies
                .iter()
                .flat_map(|t| series.iter().filter_map(|(m, _)| t.get(*m).map(|v| v.max)))
                .fold(0.0_f64, f64::max);
            let max = if max > 0.0 { max * 1.1 } else { 1.0 };
            let y = |v: f64| bottom - (v / max) * (bottom - top);
            for i in 0..=4 {
                let v = max * i as f64 / 4.0;
                let _ = writeln!(
                    s,
                    "<line x1=\"{left}\" x2=\"{}\" y1=\"{yy}\" y2=\"{yy}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\" fill=\"#555\">{}</text>",
                    left + plot_w,
                    left - 4.0,
                    y(v) + 4.0,
                    num(v),
                    yy = y(v)
                );
            }
            let n = self.topologies.len().max(1) as f64;
            let group = plot_w / n;
            let bw = (group * 0.8) / series.len() as f64;
            for (ti, t) in self.topologies.iter().enumerate() {
                let gx = left + ti as f64 * group + group * 0.1;
                for (si, (m, color)) in series.iter().enumerate() {
                    let Some(v) = t.get(*m) else { continue };
                    let bx = gx + si as f64 * bw;
                    let _ = writeln!(
                        s,
                        r#"<rect x="{bx:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"><title>{} {}: {}</title></rect>"#,
                        y(v.median),
                        bw - 1.0,
                        bottom - y(v.median),
                        esc(&t.name),
                        m.key(),
                        num(v.median)
                    );
                    // min–max whisker
                    let cx = bx + bw / 2.0;
                    let _ = writeln!(
                        s,
                        r#"<line x1="{cx:.1}" x2="{cx:.1}" y1="{:.1}" y2="{:.1}" stroke="black"/>"#,
                        y(v.min),
                        y(v.max)
                    );
                }
                let lx = gx + group * 0.4;
                let _ = writeln!(
                    s,
                    r#"<text x="{lx:.1}" y="{:.1}" text-anchor="end" transform="rotate(-35 {lx:.1} {:.1})">{}</text>"#,
                    bottom + 14.0,
                    bottom + 14.0,
                    esc(&t.name)
                );
            }
            let _ = writeln!(
                s,
                "<line x1=\"{left}\" x2=\"{}\" y1=\"{bottom}\" y2=\"{bottom}\" stroke=\"black\"/>",
                left + plot_w
            );
            for (si, (m, color)) in series.iter().enumerate() {
                let ly = 30.0 + si as f64 * 0.0;
                let lx = x0 + 60.0 + si as f64 * 150.0;
                let _ = writeln!(
                    s,
                    r#"<rect x="{lx}" y="{}" width="10" height="10" fill="{color}"/><text x="{}" y="{}">{}</text>"#,
                    ly - 9.0,
                    lx + 14.0,
                    ly,
                    esc(m.key())
                );
            }
        }
        if !targets.is_empty() {
            control_panel(&mut s, targets, PW * panels.len() as f64, PH);
        }
        s.push_str("</svg>\n");
        s
    }
}

/// The control-plane section: the issue-13 table first, then every figure behind it.
fn bpf_cost_markdown(c: &BpfCost, s: &mut String) {
    let _ = writeln!(
        s,
        "\n## BPF cost per program and path (ns per run)\n\n\
         `test_run`: BPF_PROG_TEST_RUN of one 64-byte frame as received on the program's \
         interface minus an empty program's run right after it, mean of the middle half of \
         1000 samples per round, the builds' samples alternating; `bpf_stats`: run_time_ns/run_cnt under load \
         (BPF_ENABLE_STATS, includes the statistics' own cost). Median over rounds, min–max; \
         the verdict is what the program returned.\n"
    );
    let _ = write!(s, "| program | path | topology | method |");
    for b in &c.builds {
        let _ = write!(s, " {b} |");
    }
    let _ = write!(s, " verdict |\n|---|---|---|---|");
    for _ in &c.builds {
        let _ = write!(s, "---:|");
    }
    s.push_str("---|\n");
    for r in &c.rows {
        let _ = write!(
            s,
            "| {} | {} | {} | {} |",
            r.program, r.path, r.topology, r.method
        );
        for b in &c.builds {
            let cell =
                r.ns.get(b)
                    .map(|v| format!("{} ({}–{})", num(v.median), num(v.min), num(v.max)))
                    .unwrap_or_else(|| "–".into());
            let _ = write!(s, " {cell} |");
        }
        let mut v: Vec<&str> = r.verdict.values().map(String::as_str).collect();
        v.dedup();
        let _ = writeln!(
            s,
            " {} |",
            if v.is_empty() {
                "–".into()
            } else {
                v.join(" / ")
            }
        );
    }
}

fn control_markdown(cp: &ControlPlane, s: &mut String) {
    let sizes: Vec<String> = cp.endpoints.iter().map(|n| n.to_string()).collect();
    let _ = writeln!(s, "\n## Control plane (issue 13 §1)\n");
    let _ = writeln!(
        s,
        "One process per call, each implementation in a node namespace of its own (forwarding \
         off; vethfp runs `admission always` after the first add, untimed): `vethfp pair \
         add/del` (CLI), the `vethfp` binary as a standalone CNI plugin (`vethfp-cni`, \
         host-local IPAM) and the reference CNI `ptp` plugin (`cni-ptp`, host-local IPAM), \
         interleaved, {} round(s). Sequential: N = {} endpoints added one after the other, \
         then deleted; ms/endpoint is the median over every endpoint of every round, totals the \
         median over rounds. Bursts: {} processes started together (as a runtime's concurrent \
         CNI ADDs arrive), wall time until the last exits, median over rounds. Ratio = vethfp / \
         ptp; targets from issue 13 (a report, not a test).\n",
        cp.rounds,
        sizes.join(", "),
        cp.burst_processes
    );
    if !cp.targets.is_empty() {
        let _ = writeln!(
            s,
            "| measurement | vethfp | ptp | ratio | target | PASS/MISS |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---|");
        for t in &cp.targets {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.2}× | {} | {} |",
                t.measurement,
                num(t.vethfp),
                num(t.ptp),
                t.ratio,
                t.target
                    .map(|x| format!("≤ {x:.1}×"))
                    .unwrap_or_else(|| "–".into()),
                t.verdict.as_deref().unwrap_or("")
            );
        }
    }
    let range = |st: &Stat| format!("{} ({}–{})", num(st.median), num(st.min), num(st.max));
    let _ = writeln!(
        s,
        "\n### Sequential add/del: median (min–max)\n\n\
         | implementation | endpoints | add ms/endpoint | del ms/endpoint | add total ms | del total ms |\n\
         |---|---:|---:|---:|---:|---:|"
    );
    for c in &cp.sequential {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            c.implementation,
            c.endpoints,
            range(&c.add_ms_per_endpoint),
            range(&c.del_ms_per_endpoint),
            range(&c.add_total_ms),
            range(&c.del_total_ms)
        );
    }
    if !cp.bursts.is_empty() {
        let _ = writeln!(
            s,
            "\n### Bursts of concurrent processes: wall ms, median (min–max)\n\n\
             | implementation | processes | adds | dels |\n|---|---:|---:|---:|"
        );
        for b in &cp.bursts {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                b.implementation,
                b.processes,
                range(&b.add_wall_ms),
                range(&b.del_wall_ms)
            );
        }
    }
    let lat: Vec<_> = cp
        .sequential
        .iter()
        .filter(|c| c.latency_n.is_some())
        .collect();
    if !lat.is_empty() {
        let _ = writeln!(
            s,
            "\n### UDP ping-pong between two endpoints, 2 vs N installed (µs, RTT/2)\n\n\
             | implementation | N | 2 installed: median / p99 | N installed: median / p99 |\n\
             |---|---:|---:|---:|"
        );
        for c in lat {
            let f = |x: Option<(f64, f64)>| {
                x.map(|(a, b)| format!("{} / {}", num(a), num(b)))
                    .unwrap_or_else(|| "–".into())
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                c.implementation,
                c.endpoints,
                f(c.latency_2),
                f(c.latency_n)
            );
        }
    }
}

/// Width of the control-plane panel.
const CPW: f64 = 520.0;

/// Horizontal bars: vethfp / ptp per measurement, a line at 1×, the target as a red tick;
/// green when the target is met, orange when missed, grey without a target.
fn control_panel(s: &mut String, targets: &[Target], x0: f64, ph: f64) {
    let (label_w, top, bottom) = (190.0, 40.0, ph - 20.0);
    let left = x0 + label_w;
    let plot_w = CPW - label_w - 20.0;
    let _ = writeln!(
        s,
        r#"<text x="{}" y="20" font-size="13" font-weight="bold">Control plane: vethfp / ptp (×, lower is better)</text>"#,
        x0 + 10.0
    );
    let max = targets
        .iter()
        .flat_map(|t| [t.ratio, t.target.unwrap_or(0.0)])
        .filter(|v| v.is_finite())
        .fold(1.0_f64, f64::max)
        * 1.1;
    let x = |v: f64| left + (v.clamp(0.0, max) / max) * plot_w;
    let row_h = (bottom - top) / targets.len() as f64;
    let bar_h = (row_h * 0.7).min(16.0);
    for (i, t) in targets.iter().enumerate() {
        let y = top + i as f64 * row_h;
        let color = match t.verdict.as_deref() {
            Some("PASS") => "#59a14f",
            Some(_) => "#f28e2b",
            None => "#bab0ac",
        };
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 6.0,
            y + bar_h * 0.8,
            esc(&t.key)
        );
        let w = if t.ratio.is_finite() {
            x(t.ratio) - left
        } else {
            0.0
        };
        let _ = writeln!(
            s,
            r#"<rect x="{left:.1}" y="{y:.1}" width="{w:.1}" height="{bar_h:.1}" fill="{color}"><title>{}: {:.2}×</title></rect><text x="{:.1}" y="{:.1}">{:.2}×</text>"#,
            esc(&t.measurement),
            t.ratio,
            left + w + 3.0,
            y + bar_h * 0.8,
            t.ratio
        );
        if let Some(tg) = t.target {
            let tx = x(tg);
            let _ = writeln!(
                s,
                r#"<line x1="{tx:.1}" x2="{tx:.1}" y1="{:.1}" y2="{:.1}" stroke="red" stroke-width="2"/>"#,
                y - 2.0,
                y + bar_h + 2.0
            );
        }
    }
    let one = x(1.0);
    let _ = writeln!(
        s,
        r##"<line x1="{one:.1}" x2="{one:.1}" y1="{top}" y2="{bottom}" stroke="black" stroke-dasharray="3,3"/><text x="{one:.1}" y="{:.1}" text-anchor="middle" fill="#555">1×</text>"##,
        bottom + 12.0
    );
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_range() {
        let s = Stat::of(&[3.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 10.0));
        assert!(Stat::of(&[]).is_none());
    }
}
