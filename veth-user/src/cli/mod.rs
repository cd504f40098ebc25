//! The `vethfp` command line: one file per command, each parsing its arguments, calling the
//! library's [`Registry`] and printing. Nothing here touches the kernel directly.

mod admission;
mod agent;
mod bridge;
mod completions;
mod hint;
pub mod out;
mod pair;
mod status;
mod table;
mod uplink;
pub mod watch;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use vethfp::{DEFAULT_BPFFS, OpenOptions, Registry};

#[derive(Parser)]
#[command(
    name = "vethfp",
    version = vethfp::LONG_VERSION,
    about = "eBPF veth fast path: veth pairs whose traffic skips the bridge, the node's stack and the backlog",
    propagate_version = true
)]
pub struct Cli {
    /// Directory inside a mounted bpffs where maps, programs and links are pinned.
    #[arg(long, global = true, value_name = "DIR", default_value = DEFAULT_BPFFS)]
    bpffs: PathBuf,
    /// Capacity of the admission flow table, used when the state's maps are first created
    /// (an existing state keeps its size: remove every endpoint and the state dir to change it).
    #[arg(long, global = true, value_name = "N", default_value_t = OpenOptions::default().flow_table_size,
          value_parser = clap::value_parser!(u32).range(16..=16_777_216))]
    flow_table_size: u32,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create, remove and list veth pairs (endpoints).
    #[command(subcommand)]
    Pair(pair::PairCmd),
    /// Attach or detach the uplink fast path (node NIC ↔ containers).
    #[command(subcommand)]
    Uplink(uplink::UplinkCmd),
    /// Accelerate an existing Linux bridge (docker0, cni0) in place, or release it.
    #[command(subcommand)]
    Bridge(bridge::BridgeCmd),
    /// Print (no argument) or set the node-wide admission mode: `netfilter` (default: the kernel
    /// forwards each flow first; NAT'd or dropped flows never take the fast path) or `always`
    /// (every packet between endpoints of one network, skipping netfilter).
    Admission {
        #[arg(value_enum)]
        mode: Option<admission::AdmissionArg>,
    },
    /// List the admission flow table, or `flows flush` to empty it.
    Flows {
        #[command(subcommand)]
        cmd: Option<admission::FlowsCmd>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Node-wide view: uplinks and their counters, switches, number of endpoints.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Per-endpoint packet and byte counters by direction and verdict.
    Stats(status::StatsArgs),
    /// Long-running agent: reconciles the pinned state, cleans up after vanished interfaces,
    /// serves Prometheus metrics. Logs with RUST_LOG (default info).
    Agent(agent::AgentArgs),
    /// Print a shell completion script: `vethfp completions bash > /etc/bash_completion.d/vethfp`.
    Completions {
        #[arg(value_enum)]
        shell: completions::Shell,
    },
}

/// Where the state lives and how it is opened: every command gets this.
pub struct Ctx {
    pub dir: PathBuf,
    pub opts: OpenOptions,
}

impl Ctx {
    /// For changes: holds the state lock while the registry lives.
    pub fn write(&self) -> anyhow::Result<Registry> {
        Ok(Registry::open_with(&self.dir, &self.opts)?)
    }
    /// For reading: no lock.
    pub fn read(&self) -> anyhow::Result<Registry> {
        Ok(Registry::open_read_with(&self.dir, &self.opts)?)
    }
}

pub fn main() -> ExitCode {
    if std::env::var_os("CNI_COMMAND").is_some() {
        init_env_logger();
        return vethfp::cni::main();
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind::*;
            if matches!(
                e.kind(),
                DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                if let Err(err) = e.print() {
                    out::fail(err);
                }
                out::flush();
                return ExitCode::SUCCESS;
            }
            // One line, like every other error: clap's first line without its prefix.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("vethfp: error: {first} (see `vethfp --help`)");
            return ExitCode::FAILURE;
        }
    };
    if matches!(cli.cmd, Cmd::Agent(_)) {
        agent::init_tracing();
    } else {
        init_env_logger();
    }
    match run(cli) {
        Ok(()) => {
            out::flush();
            ExitCode::SUCCESS
        }
        Err(e) => {
            let mut msg = format!("{e:#}").replace('\n', " ");
            msg.push_str(&hint::suffix(&e).unwrap_or_default());
            eprintln!("vethfp: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn init_env_logger() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
}

/// vethfp changes links and loads BPF: it needs CAP_NET_ADMIN and CAP_BPF (or CAP_SYS_ADMIN).
fn check_privileges() -> anyhow::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |bit: u32| eff & (1u64 << bit) != 0;
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_BPF: u32 = 39;
    if !(has(CAP_NET_ADMIN) && (has(CAP_BPF) || has(CAP_SYS_ADMIN))) {
        anyhow::bail!(
            "vethfp must run as root (it needs CAP_NET_ADMIN and CAP_BPF): run it with sudo"
        );
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Cmd::Completions { shell } = cli.cmd {
        completions::print(shell);
        return Ok(());
    }
    check_privileges()?;
    let ctx = Ctx {
        dir: cli.bpffs,
        opts: OpenOptions {
            flow_table_size: cli.flow_table_size,
        },
    };
    match cli.cmd {
        Cmd::Pair(c) => pair::run(&ctx, c),
        Cmd::Uplink(c) => uplink::run(&ctx, c),
        Cmd::Bridge(c) => bridge::run(&ctx, c),
        Cmd::Admission { mode } => admission::admission(&ctx, mode),
        Cmd::Flows { cmd, json } => admission::flows(&ctx, cmd, json),
        Cmd::Status { json } => status::status(&ctx, json),
        Cmd::Stats(a) => status::stats(&ctx, a),
        Cmd::Agent(a) => agent::run(&ctx, a),
        Cmd::Completions { .. } => unreachable!("handled above"),
    }
}

/// Pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    out::outln!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}
