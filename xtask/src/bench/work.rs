//! Workloads: each runs in a topology's client namespace against its server and returns
//! plain numbers. Parsers are separate functions so they can be unit-tested on saved output.

use crate::util::{Netns, output, raw_output};
use anyhow::{Context, Result, bail};
use std::time::Instant;

/// sockperf ping-pong, 64-byte messages; returns (median, p99) latency in µs as sockperf
/// reports it (half the round trip). With `pin`, the client runs on that CPU only (`taskset`).
pub fn pingpong(
    client: &Netns,
    ip: &str,
    port: u16,
    tcp: bool,
    secs: u32,
    pin: Option<&str>,
) -> Result<(f64, f64)> {
    let mut c = match pin {
        Some(cpu) => {
            let mut c = client.cmd("taskset");
            c.args(["-c", cpu, "sockperf"]);
            c
        }
        None => client.cmd("sockperf"),
    };
    c.args([
        "ping-pong",
        "-i",
        ip,
        "-p",
        &port.to_string(),
        "-m",
        "64",
        "-t",
        &secs.to_string(),
    ]);
    if tcp {
        c.arg("--tcp");
    }
    let out = raw_output(&mut c)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!(
            "sockperf ping-pong to {ip}:{port} failed ({}): {}",
            out.status,
            text.trim()
        );
    }
    parse_sockperf(&text).with_context(|| format!("unexpected sockperf output:\n{text}"))
}

pub fn parse_sockperf(text: &str) -> Option<(f64, f64)> {
    let pct = |p: &str| {
        text.lines().find_map(|l| {
            let rest = l.split(&format!("percentile {p} =")).nth(1)?;
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
    };
    Some((pct("50.000")?, pct("99.000")?))
}

/// iperf3 TCP with `streams` parallel streams; Gbit/s received.
pub fn iperf_tcp(client: &Netns, ip: &str, port: u16, streams: u32, secs: u32) -> Result<f64> {
    let v = iperf(client, ip, port, secs, &["-P", &streams.to_string()])?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 JSON has no end.sum_received.bits_per_second")?;
    Ok(bps / 1e9)
}

pub struct UdpRate {
    /// Packets received per second.
    pub pps: f64,
    /// Busy CPU time of the whole machine per received packet (/proc/stat; includes any
    /// unrelated load on the machine).
    pub cpu_machine_ns: f64,
    /// CPU time of the two iperf3 processes (as iperf3 reports it) per received packet.
    pub cpu_iperf_ns: f64,
}

/// Small-packet UDP rate: iperf3 -u -l 64 -b 0.
pub fn udp_rate(client: &Netns, ip: &str, port: u16, secs: u32) -> Result<UdpRate> {
    let before = cpu_busy_ns()?;
    let v = iperf(client, ip, port, secs, &["-u", "-l", "64", "-b", "0"])?;
    let busy = cpu_busy_ns()?.saturating_sub(before);
    let (pkts, secs) = parse_iperf_udp(&v).context("iperf3 UDP JSON lacks end.sum_received")?;
    if pkts <= 0.0 {
        bail!("iperf3 UDP to {ip} delivered no packets");
    }
    let cpu = &v["end"]["cpu_utilization_percent"];
    let pct =
        cpu["host_total"].as_f64().unwrap_or(0.0) + cpu["remote_total"].as_f64().unwrap_or(0.0);
    Ok(UdpRate {
        pps: pkts / secs,
        cpu_machine_ns: busy as f64 / pkts,
        cpu_iperf_ns: pct / 100.0 * secs * 1e9 / pkts,
    })
}

/// (packets received, seconds). iperf3 3.12's sum_received.packets is unreliable for UDP,
/// so count received bytes / 64.
pub fn parse_iperf_udp(v: &serde_json::Value) -> Option<(f64, f64)> {
    let r = &v["end"]["sum_received"];
    Some((r["bytes"].as_f64()? / 64.0, r["seconds"].as_f64()?))
}

fn iperf(
    client: &Netns,
    ip: &str,
    port: u16,
    secs: u32,
    extra: &[&str],
) -> Result<serde_json::Value> {
    let mut c = client.cmd("iperf3");
    c.args([
        "-c",
        ip,
        "-p",
        &port.to_string(),
        "-t",
        &secs.to_string(),
        "-J",
    ])
    .args(extra);
    // The server serves one test at a time; a just-finished test can still be closing.
    let mut last = String::new();
    for _ in 0..5 {
        let out = raw_output(&mut c)?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            return serde_json::from_str(&text).context("parsing iperf3 -J output");
        }
        crate::util::check_interrupted()?;
        last = text;
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    bail!("iperf3 to {ip}:{port} failed 5 times; last output:\n{last}")
}

/// Busy CPU time of the whole machine (all CPUs, everything but idle and iowait), in ns.
pub fn cpu_busy_ns() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if f.len() < 8 {
        bail!("unexpected /proc/stat cpu line: {line}");
    }
    // user nice system idle iowait irq softirq steal
    let busy = f[0] + f[1] + f[2] + f[5] + f[6] + f[7];
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(busy * 1_000_000_000 / hz)
}

/// Run-time and run-count totals of the BPF programs pinned under `dir` (the state's
/// `progs/`), from `bpftool -f prog show`. Endpoint hooks are cls_bpf filters (no link pins),
/// so the programs are found by their pins; ones that never ran add nothing.
pub fn bpf_prog_stats(dir: &std::path::Path) -> Result<(u64, u64)> {
    let progs: serde_json::Value = serde_json::from_str(&output(
        std::process::Command::new("bpftool").args(["-j", "-f", "prog", "show"]),
    )?)
    .context("parsing bpftool prog show")?;
    let prefix = dir.to_string_lossy().into_owned();
    let ours: Vec<&serde_json::Value> = progs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["pinned"].as_array().is_some_and(|pins| {
                pins.iter()
                    .any(|p| p.as_str().is_some_and(|p| p.starts_with(&prefix)))
            })
        })
        .collect();
    if ours.is_empty() {
        bail!("no BPF programs pinned under {prefix}");
    }
    let ns = ours
        .iter()
        .map(|p| p["run_time_ns"].as_u64().unwrap_or(0))
        .sum();
    let cnt = ours
        .iter()
        .map(|p| p["run_cnt"].as_u64().unwrap_or(0))
        .sum();
    Ok((ns, cnt))
}

/// Enters the network namespace at `path` (this thread only).
pub fn enter_netns(path: &std::path::Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: setns(2) on a valid namespace fd; affects only the calling thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!(
            "setns {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Connection rate: one client thread connects, sends a 1-byte request, reads the 1-byte
/// answer and the server's close, for `secs` seconds; returns connections per second. The
/// server closes first (its side keeps TIME_WAIT, so client ports never run out).
/// Connections per second, one at a time: connect, 1 byte each way, close. With `pin`, the
/// client and the server thread both run on that CPU only: then the rate is the inverse of
/// the path's CPU cost per connection, as steady as the same-CPU ping-pong.
pub fn tcp_crr(
    client: &Netns,
    server: &Netns,
    ip: &str,
    port: u16,
    secs: u32,
    pin: Option<&str>,
) -> Result<f64> {
    let cpu: Option<usize> = pin.map(str::parse).transpose().context("CPU number")?;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::time::Duration;
    let addr: SocketAddr = format!("{ip}:{port}").parse().context("server address")?;
    let (tx, rx) = std::sync::mpsc::channel();
    let spath = server.path();
    let srv = std::thread::spawn(move || -> Result<()> {
        enter_netns(&spath)?;
        pin_thread(cpu)?;
        let l = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
        tx.send(()).ok();
        for s in l.incoming() {
            let mut s = s.context("accept")?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).is_err() {
                continue;
            }
            if b[0] == b'q' {
                return Ok(());
            }
            let _ = s.write_all(&b);
        }
        Ok(())
    });
    rx.recv_timeout(Duration::from_secs(5))
        .context("connection-rate server did not start")?;
    let cpath = client.path();
    let cli = std::thread::spawn(move || -> Result<u64> {
        enter_netns(&cpath)?;
        pin_thread(cpu)?;
        let deadline = Instant::now() + Duration::from_secs(secs as u64);
        let mut n = 0u64;
        let mut buf = [0u8; 8];
        while Instant::now() < deadline {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                .with_context(|| format!("connect {addr} after {n} connections"))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"x")?;
            s.read_exact(&mut buf[..1]).context("answer")?;
            while s.read(&mut buf)? != 0 {}
            n += 1;
        }
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.write_all(b"q")?;
        Ok(n)
    });
    let n = cli
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    srv.join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    Ok(n as f64 / secs as f64)
}

/// Restricts the calling thread to `cpu` (no-op for None).
fn pin_thread(cpu: Option<usize>) -> Result<()> {
    let Some(cpu) = cpu else {
        return Ok(());
    };
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET and sched_setaffinity(0 = this
    // thread) only touch it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockperf_percentiles() {
        let text = "sockperf: ---> percentile 99.000 =   15.929\n\
                    sockperf: ---> percentile 90.000 =   10.464\n\
                    sockperf: ---> percentile 50.000 =    8.530\n";
        assert_eq!(parse_sockperf(text), Some((8.53, 15.929)));
        assert_eq!(parse_sockperf("nothing"), None);
    }

    #[test]
    fn iperf_udp_counts_bytes() {
        let v = serde_json::json!({"end":{"sum_received":{"bytes":6400.0,"seconds":2.0}}});
        assert_eq!(parse_iperf_udp(&v), Some((100.0, 2.0)));
    }
}
