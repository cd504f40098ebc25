//! `vethfp agent`: the long-running agent (the loop itself is the library's [`vethfp::agent`]).

use anyhow::Context as _;
use clap::Args;

use super::{Ctx, admission::AdmissionArg};

#[derive(Args)]
pub struct AgentArgs {
    /// Admission mode applied at start (default: leave the state's mode as it is).
    #[arg(long, value_enum)]
    admission: Option<AdmissionArg>,
    /// Address of the /metrics HTTP listener (in the node's network namespace).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9750")]
    metrics_addr: std::net::SocketAddr,
    /// On SIGTERM/SIGINT remove every endpoint and pin instead of leaving the datapath running.
    #[arg(long)]
    cleanup_on_exit: bool,
    /// Turn on BPF debug events (aya-log) and log them.
    #[arg(long)]
    bpf_log: bool,
    /// Seconds between safety-net reconciliations (link events are handled at once).
    #[arg(long, value_name = "S", default_value_t = 10.0)]
    reconcile_interval: f64,
    /// Serve the per-endpoint series (`vethfp_endpoint_*`, about 40 per endpoint) at
    /// /metrics; `false` keeps a scrape small and cheap on a full node (node-wide series only).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    per_endpoint_metrics: bool,
}

/// Structured logs (tracing); `log` records (library, aya-log) are forwarded to it.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

pub fn run(ctx: &Ctx, a: AgentArgs) -> anyhow::Result<()> {
    keep_heap();
    if !(a.reconcile_interval.is_finite() && a.reconcile_interval >= 0.1) {
        anyhow::bail!(
            "--reconcile-interval {}: use at least 0.1 seconds",
            a.reconcile_interval
        );
    }
    if let Some(m) = a.admission {
        ctx.write()?
            .set_admission(m.into())
            .context("--admission")?;
    }
    let cfg = vethfp::agent::Config {
        bpffs: ctx.dir.clone(),
        metrics_addr: a.metrics_addr,
        cleanup_on_exit: a.cleanup_on_exit,
        bpf_log: a.bpf_log,
        reconcile_interval: std::time::Duration::from_secs_f64(a.reconcile_interval),
        per_endpoint_metrics: a.per_endpoint_metrics,
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // A blocking thread outlives the pause between two periodic passes (10 s by default)
        // and keeps its netlink session: the next pass does not make both again.
        .thread_keep_alive(std::time::Duration::from_secs(120))
        .build()
        .context("starting the async runtime")?
        .block_on(vethfp::agent::run(cfg))?;
    Ok(())
}

/// Keeps the agent's heap between periodic passes instead of giving it back to the kernel.
///
/// Each pass at a full node reads dumps of a few MB and frees them. With glibc's defaults
/// (allocations over 128 KiB by mmap, the heap trimmed once 128 KiB at its top are free,
/// both thresholds growing only as far as their first large frees) every pass faulted those
/// pages in again and the kernel zeroed each: at 1000 endpoints a third of the idle agent's
/// CPU (perf: clear_page_erms under sysmalloc and realloc). The price is that the agent keeps
/// its peak heap (about the size of one /metrics page plus one pass's dumps).
fn keep_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters; called before the agent's threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}
