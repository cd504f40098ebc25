//! `vethfp stats --watch`: packet and byte rates per endpoint, sampled from the pinned
//! counters every interval. Reads only: never takes the state lock, so it can run next to
//! CLI writes and the agent for as long as anyone likes.
//!
//! On a terminal the table is redrawn in place (ANSI: cursor home, clear screen); otherwise
//! each sample appends plain lines (`time host_if direction pkt/s byte/s ...`) for logs and
//! pipes.

use std::{
    collections::BTreeMap,
    io::{self, Write},
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use veth_common::{
    Counters, DIR_NAMES, DIRS, V_DROP_ERROR, V_DROP_POLICY, V_DROP_SPOOF_IP, V_DROP_SPOOF_MAC,
    V_FAST, V_FAST_UPLINK, V_STACK, VERDICTS,
};

use vethfp::{EndpointError, EndpointStats, Registry};

/// Rates of one endpoint and direction over the last interval (None on the first sample or
/// for an endpoint that just appeared), plus the totals.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub host_if: String,
    pub direction: &'static str,
    pub rate: Option<Rates>,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Rates {
    pub pps: f64,
    pub bps: f64,
    pub fast_pps: f64,
    pub stack_pps: f64,
    pub drop_pps: f64,
}

fn totals(c: &Counters, d: usize) -> (u64, u64) {
    (0..VERDICTS).fold((0, 0), |(p, b), v| {
        (p + c.c[d][v].packets, b + c.c[d][v].bytes)
    })
}

fn sum(c: &Counters, d: usize, vs: &[usize]) -> u64 {
    vs.iter().map(|v| c.c[d][*v].packets).sum()
}

/// The rows for sample `now`, with rates against `prev` (keyed by host ifindex) over `secs`.
pub fn rows(prev: &BTreeMap<u32, Counters>, now: &[EndpointStats], secs: f64) -> Vec<Row> {
    let mut out = Vec::new();
    for s in now {
        for (d, dir) in DIR_NAMES.iter().enumerate().take(DIRS) {
            let (packets, bytes) = totals(&s.counters, d);
            let rate = prev.get(&s.host_ifindex).filter(|_| secs > 0.0).map(|p| {
                let (pp, pb) = totals(p, d);
                let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
                let fast = [V_FAST, V_FAST_UPLINK];
                let drop = [
                    V_DROP_SPOOF_IP,
                    V_DROP_SPOOF_MAC,
                    V_DROP_POLICY,
                    V_DROP_ERROR,
                ];
                Rates {
                    pps: per(packets, pp),
                    bps: per(bytes, pb),
                    fast_pps: per(sum(&s.counters, d, &fast), sum(p, d, &fast)),
                    stack_pps: per(sum(&s.counters, d, &[V_STACK]), sum(p, d, &[V_STACK])),
                    drop_pps: per(sum(&s.counters, d, &drop), sum(p, d, &drop)),
                }
            });
            out.push(Row {
                host_if: s.host_if.clone(),
                direction: dir,
                rate,
                packets,
                bytes,
            });
        }
    }
    out
}

/// A human rate: 12.3k, 4.56M.
fn human(v: f64) -> String {
    let (v, unit) = if v >= 1e9 {
        (v / 1e9, "G")
    } else if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    if unit.is_empty() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}{unit}")
    }
}

/// The table as drawn on a terminal.
pub fn table(rows: &[Row], interval: Duration) -> String {
    let mut s = format!(
        "vethfp stats --watch (every {:.1}s, Ctrl-C to stop)\n\n{:<15} {:<15} {:>10} {:>10} {:>10} {:>10} {:>10} {:>14} {:>16}\n",
        interval.as_secs_f64(),
        "HOST_IF",
        "DIRECTION",
        "PKT/s",
        "BYTE/s",
        "FAST/s",
        "STACK/s",
        "DROP/s",
        "PACKETS",
        "BYTES"
    );
    for r in rows {
        let f = |g: fn(&Rates) -> f64| r.rate.as_ref().map(|x| human(g(x))).unwrap_or("-".into());
        s.push_str(&format!(
            "{:<15} {:<15} {:>10} {:>10} {:>10} {:>10} {:>10} {:>14} {:>16}\n",
            r.host_if,
            r.direction,
            f(|x| x.pps),
            f(|x| x.bps),
            f(|x| x.fast_pps),
            f(|x| x.stack_pps),
            f(|x| x.drop_pps),
            r.packets,
            r.bytes
        ));
    }
    if rows.is_empty() {
        s.push_str("(no endpoints)\n");
    }
    s
}

/// Plain lines, one per endpoint and direction, for a pipe or a log: unix time (s.ms),
/// host_if, direction, pkt/s, byte/s, fast pkt/s, stack pkt/s, drop pkt/s, packets, bytes.
/// Nothing is printed for the first sample (no rate yet).
pub fn lines(rows: &[Row], unix: Duration) -> String {
    let mut s = String::new();
    for r in rows {
        let Some(x) = r.rate else { continue };
        s.push_str(&format!(
            "{}.{:03} {} {} {:.1} {:.1} {:.1} {:.1} {:.1} {} {}\n",
            unix.as_secs(),
            unix.subsec_millis(),
            r.host_if,
            r.direction,
            x.pps,
            x.bps,
            x.fast_pps,
            x.stack_pps,
            x.drop_pps,
            r.packets,
            r.bytes
        ));
    }
    s
}

/// Samples the counters of every endpoint (or `host_if`) every `interval` and prints rates
/// to `out` until `count` refreshes were printed (forever if None). `tty` selects the
/// in-place table; otherwise plain lines are appended.
pub fn run(
    dir: &Path,
    host_if: Option<&str>,
    interval: Duration,
    count: Option<u64>,
    tty: bool,
    out: &mut dyn Write,
) -> Result<(), EndpointError> {
    let mut reg = Registry::open_read(dir)?;
    let mut prev: BTreeMap<u32, Counters> = BTreeMap::new();
    let mut prev_at: Option<Instant> = None;
    let mut printed = 0u64;
    let mut next = Instant::now();
    loop {
        let stats = reg.stats(host_if)?;
        let at = Instant::now();
        let secs = prev_at.map(|p| (at - p).as_secs_f64()).unwrap_or(0.0);
        let rows = rows(&prev, &stats, secs);
        let text = if tty {
            // Home, clear to the end of the screen, then the table.
            format!("\x1b[H\x1b[2J{}", table(&rows, interval))
        } else {
            let unix = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            lines(&rows, unix)
        };
        // A closed pipe (e.g. `| head`) ends the watch quietly, as SIGPIPE would.
        if let Err(e) = write_all(out, &text) {
            super::out::fail(e);
        }
        if tty || prev_at.is_some() {
            printed += 1;
        }
        if count.is_some_and(|c| printed >= c) {
            return Ok(());
        }
        prev = stats.iter().map(|s| (s.host_ifindex, s.counters)).collect();
        prev_at = Some(at);
        next += interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

fn write_all(out: &mut dyn Write, s: &str) -> io::Result<()> {
    out.write_all(s.as_bytes())?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use veth_common::{DIR_FROM_CONTAINER, DIR_TO_CONTAINER};

    fn st(name: &str, ifindex: u32, from_fast: u64, to_stack: u64) -> EndpointStats {
        let mut c = Counters::default();
        c.c[DIR_FROM_CONTAINER][V_FAST].packets = from_fast;
        c.c[DIR_FROM_CONTAINER][V_FAST].bytes = from_fast * 100;
        c.c[DIR_TO_CONTAINER][V_STACK].packets = to_stack;
        c.c[DIR_TO_CONTAINER][V_STACK].bytes = to_stack * 60;
        EndpointStats {
            host_if: name.into(),
            host_ifindex: ifindex,
            counters: c,
        }
    }

    #[test]
    fn rates_over_the_interval() {
        let first = vec![st("a", 5, 1000, 10)];
        let r = rows(&BTreeMap::new(), &first, 0.0);
        assert_eq!(r.len(), 2);
        assert!(r.iter().all(|x| x.rate.is_none()));
        assert_eq!(lines(&r, Duration::ZERO), "");

        let prev: BTreeMap<u32, Counters> = first.iter().map(|s| (5, s.counters)).collect();
        let now = vec![st("a", 5, 3000, 30), st("b", 6, 7, 0)];
        let r = rows(&prev, &now, 2.0);
        let from = r[0].rate.unwrap();
        assert_eq!(from.pps, 1000.0);
        assert_eq!(from.bps, 100_000.0);
        assert_eq!(from.fast_pps, 1000.0);
        assert_eq!(from.stack_pps, 0.0);
        let to = r[1].rate.unwrap();
        assert_eq!(to.pps, 10.0);
        assert_eq!(to.stack_pps, 10.0);
        assert_eq!(to.bps, 600.0);
        // A new endpoint has no rate yet.
        assert!(r[2].rate.is_none() && r[3].rate.is_none());
        assert_eq!(r[0].packets, 3000);

        let t = table(&r, Duration::from_secs(2));
        assert!(t.contains("HOST_IF"), "{t}");
        assert!(t.contains("100.00k"), "{t}");
        let l = lines(&r, Duration::from_millis(1_700_000_000_123));
        assert_eq!(l.lines().count(), 2, "{l}");
        assert!(
            l.starts_with(
                "1700000000.123 a from_container 1000.0 100000.0 1000.0 0.0 0.0 3000 300000\n"
            ),
            "{l}"
        );
    }

    #[test]
    fn counters_going_backwards_never_underflow() {
        // An endpoint re-created under the same ifindex starts from zero.
        let prev: BTreeMap<u32, Counters> = [(5, st("a", 5, 100, 0).counters)].into();
        let r = rows(&prev, &[st("a", 5, 1, 0)], 1.0);
        assert_eq!(r[0].rate.unwrap().pps, 0.0);
    }
}
