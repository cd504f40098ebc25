//! `vethfp status [--json]` and `vethfp stats [HOST_IF] [--json | --watch ...]`.

use clap::Args;
use vethfp::{Dir, EndpointStats, Status, Verdict};

use super::{Ctx, out::outln, print_json, table::Plain};

#[derive(Args)]
pub struct StatsArgs {
    /// Only this endpoint (its host interface name).
    host_if: Option<String>,
    /// Print JSON with every field.
    #[arg(long, conflicts_with = "watch")]
    json: bool,
    /// Live packet and byte rates, refreshed every --interval (in place on a terminal,
    /// appended plain lines otherwise). Takes no lock.
    #[arg(long)]
    watch: bool,
    /// Seconds between refreshes of --watch.
    #[arg(long, value_name = "S", default_value_t = 1.0, requires = "watch")]
    interval: f64,
    /// Stop --watch after N refreshes.
    #[arg(long, value_name = "N", requires = "watch")]
    count: Option<u64>,
}

pub fn stats(ctx: &Ctx, a: StatsArgs) -> anyhow::Result<()> {
    if a.watch {
        if !(a.interval.is_finite() && (0.01..=86400.0).contains(&a.interval)) {
            anyhow::bail!("--interval {}: use 0.01 to 86400 seconds", a.interval);
        }
        let tty = super::out::is_terminal();
        super::watch::run(
            &ctx.dir,
            a.host_if.as_deref(),
            std::time::Duration::from_secs_f64(a.interval),
            a.count,
            tty,
            &mut super::out::writer(),
        )?;
        return Ok(());
    }
    let stats = ctx.read()?.stats(a.host_if.as_deref())?;
    if a.json {
        print_json(&stats)
    } else {
        print_stats(&stats);
        Ok(())
    }
}

pub fn status(ctx: &Ctx, json: bool) -> anyhow::Result<()> {
    let st = ctx.read()?.status()?;
    if json {
        print_json(&st)
    } else {
        print_status(&st);
        Ok(())
    }
}

/// How TCP is accelerated, and why (one line).
fn tcp_line(st: &Status) -> String {
    use vethfp::{TcpAdmission, TcpMode};
    match st.tcp {
        TcpMode::Handoff => "accelerated per flow: the agent hands each flow's conntrack entry \
             over (liberal windows for that entry only) before the fast path takes it"
            .into(),
        TcpMode::HandoffNoAgent => "per flow, but no agent is running: flows handed off stay \
             fast, new TCP flows wait on the kernel path (correct, slower) until `vethfp agent` \
             runs again"
            .into(),
        TcpMode::NodeWide => format!(
            "accelerated node-wide: no agent, and conntrack does not check TCP windows \
             ({}). If net.netfilter.nf_conntrack_tcp_be_liberal goes back to 0, the admitted \
             TCP flows' closes are dropped as INVALID until `vethfp flows flush`; run \
             `vethfp agent` for per-flow hand-off, which does not depend on the sysctl",
            match st.tcp_conntrack {
                TcpAdmission::NoConntrack => "no conntrack in this namespace",
                _ => "nf_conntrack_tcp_be_liberal = 1",
            }
        ),
        TcpMode::Off => "NOT accelerated: no agent is running and conntrack checks TCP \
             windows (nf_conntrack_tcp_be_liberal = 0), so TCP stays on the kernel path \
             (correct, slower). Run `vethfp agent`: it hands each TCP flow's conntrack entry \
             over per flow, without the node-wide setting"
            .into(),
    }
}

fn print_status(st: &Status) {
    outln!("state:     {}", st.bpffs);
    match &st.datapath_version {
        Some(v) => outln!("datapath:  vethfp {v}"),
        None => outln!("datapath:  vethfp 0.1.0 or older (it did not record its version)"),
    }
    if st.datapath_version.as_deref() != Some(st.version) {
        outln!(
            "vethfp:    {} (this command, not the vethfp that last upgraded the state)",
            st.version
        );
    }
    outln!("endpoints: {}", st.endpoints);
    outln!("fast path: {}", if st.fast_path { "on" } else { "off" });
    outln!("egress:    {}", st.egress);
    outln!("admission: {}", st.admission);
    if st.admission == vethfp::Admission::Netfilter {
        outln!("tcp:       {}", tcp_line(st));
    }
    let t = &st.flow_table;
    outln!(
        "flows:     {} of {} ({} admitted, {} pending, {} waiting for hand-off, {} closing, {} expired; {} handed off); created {} admitted {} torn_down {} expired {} insert_failed {}",
        t.entries,
        t.capacity,
        t.admitted,
        t.pending,
        t.waiting,
        t.closing,
        t.expired,
        t.handed_off,
        t.counters["created"],
        t.counters["admitted"],
        t.counters["torn_down"],
        t.counters["expired"],
        t.counters["insert_failed"]
    );
    if st.uplinks.is_empty() {
        outln!("uplinks:   none");
        return;
    }
    let mut tb = Plain::new(
        &[
            "UPLINK",
            "IFINDEX",
            "RX_FAST_PKTS",
            "RX_STACK_PKTS",
            "TX_FAST_PKTS",
        ],
        &[1, 2, 3, 4],
    );
    for u in &st.uplinks {
        let c = &u.counters;
        tb.row([
            u.uplink.name.clone(),
            u.uplink.ifindex.to_string(),
            c.get(Dir::ToContainer, Verdict::FastUplink)
                .packets
                .to_string(),
            c.get(Dir::ToContainer, Verdict::Stack).packets.to_string(),
            c.get(Dir::FromContainer, Verdict::FastUplink)
                .packets
                .to_string(),
        ]);
    }
    tb.print();
}

fn print_stats(stats: &[EndpointStats]) {
    let mut t = Plain::new(
        &[
            "HOST_IF",
            "DIRECTION",
            "FAST_PKTS",
            "FAST_BYTES",
            "STACK_PKTS",
            "STACK_BYTES",
            "DROPPED",
        ],
        &[2, 3, 4, 5, 6],
    );
    for s in stats {
        for d in Dir::ALL {
            let sum = |pick: fn(Verdict) -> bool, bytes: bool| -> u64 {
                Verdict::ALL
                    .into_iter()
                    .filter(|v| pick(*v))
                    .map(|v| {
                        let c = s.counters.get(d, v);
                        if bytes { c.bytes } else { c.packets }
                    })
                    .sum()
            };
            let stack = s.counters.get(d, Verdict::Stack);
            t.row([
                s.host_if.clone(),
                d.name().to_string(),
                sum(Verdict::is_fast, false).to_string(),
                sum(Verdict::is_fast, true).to_string(),
                stack.packets.to_string(),
                stack.bytes.to_string(),
                sum(Verdict::is_drop, false).to_string(),
            ]);
        }
    }
    t.print();
}
