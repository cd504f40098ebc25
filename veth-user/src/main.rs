//! `vethfp`: the command-line front end. Thin: parse, call the registry, print.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use veth_common::{
    DIR_FROM_CONTAINER, DIR_TO_CONTAINER, V_DROP_ERROR, V_DROP_POLICY, V_DROP_SPOOF_IP,
    V_DROP_SPOOF_MAC, V_FAST, V_FAST_UPLINK, V_STACK,
};
use vethfp::{
    datapath::DEFAULT_BPFFS,
    endpoint::{AddRequest, EndpointStats, EndpointView, Registry, Status},
    types::{Cidr, IfName, Mac},
};

#[derive(Parser)]
#[command(
    name = "vethfp",
    version,
    about = "eBPF veth fast path: veth pairs whose traffic skips the bridge, the node's stack and the backlog",
    propagate_version = true
)]
struct Cli {
    /// Directory inside a mounted bpffs where maps, programs and links are pinned.
    #[arg(long, global = true, value_name = "DIR", default_value = DEFAULT_BPFFS)]
    bpffs: PathBuf,
    /// Capacity of the admission flow table, used when the state's maps are first created
    /// (an existing state keeps its size: remove every endpoint and the state dir to change it).
    #[arg(long, global = true, value_name = "N", default_value_t = veth_common::DEFAULT_FLOW_TABLE_SIZE,
          value_parser = clap::value_parser!(u32).range(16..=16_777_216))]
    flow_table_size: u32,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create, remove and list veth pairs (endpoints).
    #[command(subcommand)]
    Pair(PairCmd),
    /// Attach or detach the uplink fast path (node NIC ↔ containers).
    #[command(subcommand)]
    Uplink(UplinkCmd),
    /// Accelerate an existing Linux bridge (docker0, cni0) in place, or release it.
    #[command(subcommand)]
    Bridge(BridgeCmd),
    /// Print (no argument) or set the node-wide admission mode: `netfilter` (default: the kernel
    /// forwards each flow first; NAT'd or dropped flows never take the fast path) or `always`
    /// (every packet between endpoints of one network, skipping netfilter).
    Admission {
        mode: Option<vethfp::admission::Admission>,
    },
    /// List the admission flow table, or `flows flush` to empty it.
    Flows {
        #[command(subcommand)]
        cmd: Option<FlowsCmd>,
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
    Stats {
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
    },
    /// Long-running agent: reconciles the pinned state, cleans up after vanished interfaces,
    /// serves Prometheus metrics. Logs with RUST_LOG (default info).
    Agent(AgentArgs),
}

#[derive(Subcommand)]
enum FlowsCmd {
    /// Remove every flow: each is admitted by the kernel again (e.g. after a policy change).
    Flush,
}

#[derive(Args)]
struct AgentArgs {
    /// Admission mode applied at start (default: leave the state's mode as it is).
    #[arg(long, value_enum)]
    admission: Option<vethfp::admission::Admission>,
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
}

#[derive(Subcommand)]
enum UplinkCmd {
    /// Deliver packets from IFACE for local endpoints straight into the container; with
    /// `--egress fast` (default), send container traffic that the node routes out of IFACE
    /// straight there too (skipping the node's netfilter FORWARD, conntrack and NAT).
    Attach {
        iface: String,
        /// fast: container → outside skips the node's stack; kernel: it takes the kernel path
        /// (needed when the node must NAT/masquerade or firewall that traffic). Node-wide.
        #[arg(long, value_enum, default_value_t = Egress::Fast)]
        egress: Egress,
    },
    /// Remove the uplink fast path from IFACE.
    Detach { iface: String },
}

#[derive(Subcommand)]
enum BridgeCmd {
    /// Deliver unicast between the bridge's containers straight to the destination container
    /// (L2 semantics: frames unchanged); ARP, broadcast, multicast and unknown MACs keep going
    /// through the bridge. Refuses where the bridge enforces isolation, VLANs or netfilter rules.
    Accelerate {
        bridge: String,
        /// Accelerate even where the bridge would enforce something the fast path skips.
        #[arg(long)]
        force: bool,
    },
    /// Remove the fast path from every port of the bridge.
    Release { bridge: String },
    /// Which ports of the bridge are accelerated, which are not (yet) and why.
    Status {
        bridge: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Egress {
    Fast,
    Kernel,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Spoof {
    /// Drop frames whose source MAC or IP is not the endpoint's own.
    Enforce,
    /// Count such frames under their drop reason, but let them through (kernel path only).
    Audit,
    /// No check.
    Off,
}

#[derive(Subcommand)]
enum PairCmd {
    /// Create a veth pair into a container netns, configure routed mode, attach the fast path.
    Add(AddArgs),
    /// Remove a pair with its routes, map entries, links and pins.
    Del {
        /// Host interface name of the endpoint.
        host_if: String,
    },
    /// Switch a live endpoint between the TC and the XDP fast path.
    Mode {
        /// Host interface name of the endpoint.
        host_if: String,
        /// tc or xdp.
        mode: Mode,
    },
    /// List endpoints.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct AddArgs {
    /// Name of the host end (1-15 bytes), stays in the node's network namespace.
    host_if: IfName,
    /// Container network namespace: a name under /run/netns or a path such as /proc/PID/ns/net.
    #[arg(long, value_name = "NS")]
    netns: String,
    /// Name of the container end inside NS.
    #[arg(long, default_value = "eth0")]
    ifname: IfName,
    /// Container address with prefix, e.g. 10.0.0.2/24 or fd00::2/64 (repeatable).
    #[arg(long = "addr", value_name = "CIDR", required = true)]
    addrs: Vec<Cidr>,
    /// MTU of both ends (default: the kernel's, 1500).
    #[arg(long)]
    mtu: Option<u32>,
    /// MAC of the container end (default: random, locally administered).
    #[arg(long)]
    mac: Option<Mac>,
    /// Fast path hook on the host end.
    #[arg(long, value_enum, default_value_t = Mode::Tc)]
    mode: Mode,
    /// Network (isolation domain): the fast path joins only endpoints of the same network;
    /// traffic across networks takes the node's routing and firewall.
    #[arg(long, default_value = "default")]
    network: String,
    /// Anti-spoofing of the container's source MAC and IP addresses.
    #[arg(long, value_enum, default_value_t = Spoof::Enforce)]
    spoof: Spoof,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Mode {
    /// tcx ingress program, bpf_redirect_peer (default).
    Tc,
    /// native XDP program, devmap redirect (tcx stays attached for everything XDP passes).
    Xdp,
}

impl Mode {
    fn raw(self) -> u32 {
        match self {
            Mode::Tc => veth_common::MODE_TC,
            Mode::Xdp => veth_common::MODE_XDP,
        }
    }
}

fn main() -> ExitCode {
    if std::env::var_os("CNI_COMMAND").is_some() {
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
        return cni_main();
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind::*;
            if matches!(
                e.kind(),
                DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
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
        // Structured logs (tracing); `log` records (library, aya-log) are forwarded to it.
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    } else {
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("vethfp: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// CNI plugin mode (see docs/CNI.md): config on stdin, the result or the spec's error object
/// on stdout, non-zero exit on error. Logs go to stderr only.
fn cni_main() -> ExitCode {
    use std::io::Read as _;
    use vethfp::cni;
    let mut stdin = Vec::new();
    let reply = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => cni::handle(&cni::CniEnv::from_process(), &stdin),
        Err(e) => cni::Reply::error(
            cni::CURRENT_VERSION,
            &cni::CniError::new(cni::ERR_IO, format!("reading the config from stdin: {e}")),
        ),
    };
    if let Some(json) = &reply.json {
        println!("{json}");
    }
    if reply.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
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
    check_privileges()?;
    let dir = cli.bpffs;
    vethfp::datapath::set_flow_table_size(cli.flow_table_size);
    match cli.cmd {
        Cmd::Admission { mode: None } => {
            let mut reg = Registry::open_read(&dir)?;
            let flags = reg.datapath().flags()?;
            println!("{}", vethfp::admission::Admission::of_flags(flags).name());
        }
        Cmd::Admission { mode: Some(m) } => {
            let mut reg = Registry::open(&dir)?;
            vethfp::admission::set(reg.datapath(), m).context("admission")?;
            println!("admission {}", m.name());
        }
        Cmd::Flows {
            cmd: Some(FlowsCmd::Flush),
            ..
        } => {
            let mut reg = Registry::open(&dir)?;
            let n = vethfp::admission::flush(reg.datapath()).context("flows flush")?;
            println!("flushed {n} flow(s)");
        }
        Cmd::Flows { cmd: None, json } => {
            let flows = vethfp::admission::list(&mut Registry::open_read(&dir)?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&flows)?);
            } else {
                print_flows(&flows);
            }
        }
        Cmd::Pair(PairCmd::Add(a)) => {
            let req = AddRequest {
                host: a.host_if,
                netns: a.netns,
                ifname: a.ifname,
                addrs: a.addrs,
                mtu: a.mtu,
                mac: a.mac,
                network: a.network,
                spoof: match a.spoof {
                    Spoof::Enforce => veth_common::EP_SPOOF_ENFORCE,
                    Spoof::Audit => veth_common::EP_SPOOF_AUDIT,
                    Spoof::Off => 0,
                },
                mode: a.mode.raw(),
                flags: 0,
                cni_owner: None,
            };
            let view = Registry::open(&dir)?
                .add(&req)
                .with_context(|| format!("pair add {}", req.host))?;
            println!(
                "added {} (ifindex {}) -> {} in {} [{}]",
                view.host_if,
                view.host_ifindex,
                view.ifname,
                view.netns,
                view.addrs
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Cmd::Pair(PairCmd::Del { host_if }) => {
            Registry::open(&dir)?
                .del(&host_if)
                .with_context(|| format!("pair del {host_if}"))?;
            println!("removed {host_if}");
        }
        Cmd::Pair(PairCmd::Mode { host_if, mode }) => {
            let view = Registry::open(&dir)?
                .set_mode(&host_if, mode.raw())
                .with_context(|| format!("pair mode {host_if}"))?;
            println!("{} is now in {} mode", view.host_if, view.mode);
        }
        Cmd::Pair(PairCmd::List { json }) => {
            let list = Registry::open_read(&dir)?.list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print_list(&list);
            }
        }
        Cmd::Uplink(UplinkCmd::Attach { iface, egress }) => {
            let up = Registry::open(&dir)?
                .uplink_attach(&iface, matches!(egress, Egress::Fast))
                .with_context(|| format!("uplink attach {iface}"))?;
            println!(
                "uplink {} (ifindex {}) attached, egress {}",
                up.name,
                up.ifindex,
                if matches!(egress, Egress::Fast) {
                    "fast"
                } else {
                    "kernel"
                }
            );
        }
        Cmd::Uplink(UplinkCmd::Detach { iface }) => {
            Registry::open(&dir)?
                .uplink_detach(&iface)
                .with_context(|| format!("uplink detach {iface}"))?;
            println!("uplink {iface} detached");
        }
        Cmd::Bridge(BridgeCmd::Accelerate { bridge, force }) => {
            let sync = Registry::open(&dir)?
                .bridge_sync(&bridge, force)
                .with_context(|| format!("bridge accelerate {bridge}"))?;
            // Never report success for work skipped: name each port and why; fail when none
            // of those that needed it was accelerated.
            let skipped = &sync.skipped;
            let failed: Vec<String> = skipped
                .iter()
                .filter(|(_, why)| why != "already accelerated")
                .map(|(p, why)| format!("{p}: {why}"))
                .collect();
            let ports = &sync.added;
            if ports.is_empty() && !failed.is_empty() {
                anyhow::bail!(
                    "bridge accelerate {bridge}: no port accelerated; skipped {}",
                    failed.join("; ")
                );
            }
            for (port, why) in skipped {
                eprintln!("vethfp: {bridge}: skipped port {port}: {why}");
            }
            println!(
                "{bridge}: {} port(s) accelerated{}{}",
                ports.len(),
                if ports.is_empty() { "" } else { ": " },
                ports
                    .iter()
                    .map(|p| p.host_if.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if !sync.removed.is_empty() {
                println!(
                    "{bridge}: {} gone port(s) removed: {}",
                    sync.removed.len(),
                    sync.removed.join(", ")
                );
            }
        }
        Cmd::Bridge(BridgeCmd::Release { bridge }) => {
            let ports = Registry::open(&dir)?
                .bridge_release_all(&bridge)
                .with_context(|| format!("bridge release {bridge}"))?;
            println!("{bridge}: {} port(s) released", ports.len());
        }
        Cmd::Bridge(BridgeCmd::Status { bridge, json }) => {
            let st = Registry::open_read(&dir)?
                .bridge_status(&bridge)
                .with_context(|| format!("bridge status {bridge}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                println!(
                    "{}: {}",
                    st.bridge,
                    match (st.accelerated, st.forced) {
                        (false, _) => "not accelerated",
                        (true, false) => "accelerated",
                        (true, true) => "accelerated (forced)",
                    }
                );
                for p in &st.ports {
                    match &p.reason {
                        None => println!("  {:<16} accelerated", p.port),
                        Some(r) => println!("  {:<16} bridge path: {r}", p.port),
                    }
                }
                for s in &st.stale {
                    println!("  {s:<16} gone (registered still; never delivered to)");
                }
            }
        }
        Cmd::Status { json } => {
            let st = Registry::open_read(&dir)?.status()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print_status(&st);
            }
        }
        Cmd::Stats {
            host_if,
            watch: true,
            interval,
            count,
            ..
        } => {
            if !(interval.is_finite() && (0.01..=86400.0).contains(&interval)) {
                anyhow::bail!("--interval {interval}: use 0.01 to 86400 seconds");
            }
            let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
            vethfp::watch::run(
                &dir,
                host_if.as_deref(),
                std::time::Duration::from_secs_f64(interval),
                count,
                tty,
                &mut std::io::stdout().lock(),
            )?;
        }
        Cmd::Agent(a) => {
            if !(a.reconcile_interval.is_finite() && a.reconcile_interval >= 0.1) {
                anyhow::bail!(
                    "--reconcile-interval {}: use at least 0.1 seconds",
                    a.reconcile_interval
                );
            }
            if let Some(m) = a.admission {
                let mut reg = Registry::open(&dir)?;
                vethfp::admission::set(reg.datapath(), m).context("--admission")?;
            }
            let cfg = vethfp::agent::Config {
                bpffs: dir,
                metrics_addr: a.metrics_addr,
                cleanup_on_exit: a.cleanup_on_exit,
                bpf_log: a.bpf_log,
                reconcile_interval: std::time::Duration::from_secs_f64(a.reconcile_interval),
            };
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(vethfp::agent::run(cfg))?;
        }
        Cmd::Stats { host_if, json, .. } => {
            let stats = Registry::open_read(&dir)?.stats(host_if.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                print_stats(&stats);
            }
        }
    }
    Ok(())
}

fn print_list(list: &[EndpointView]) {
    println!(
        "{:<15} {:>7} {:<17} {:<20} {:<8} {:<17} {:>5} {:<4} {:<10} ADDRESSES",
        "HOST_IF",
        "IFINDEX",
        "HOST_MAC",
        "NETNS",
        "IFNAME",
        "CONTAINER_MAC",
        "MTU",
        "MODE",
        "NETWORK"
    );
    for e in list {
        println!(
            "{:<15} {:>7} {:<17} {:<20} {:<8} {:<17} {:>5} {:<4} {:<10} {}",
            e.host_if,
            e.host_ifindex,
            e.host_mac.to_string(),
            e.netns,
            e.ifname,
            e.container_mac.to_string(),
            e.mtu,
            e.mode,
            e.network,
            e.addrs
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
    }
}

fn print_flows(flows: &[vethfp::admission::FlowView]) {
    println!(
        "{:<6} {:<44} {:<44} {:<8} {:>8} {:>10} ENDPOINTS",
        "PROTO", "A", "B", "STATE", "AGE_S", "PACKETS"
    );
    for f in flows {
        println!(
            "{:<6} {:<44} {:<44} {:<8} {:>8} {:>10} {},{}",
            f.proto,
            f.a,
            f.b,
            f.state,
            f.age_seconds
                .map(|a| format!("{a:.1}"))
                .unwrap_or("-".into()),
            f.packets,
            f.a_endpoint.as_deref().unwrap_or("-"),
            f.b_endpoint.as_deref().unwrap_or("-")
        );
    }
}

fn print_status(st: &Status) {
    println!("state:     {}", st.bpffs);
    println!("endpoints: {}", st.endpoints);
    println!("fast path: {}", if st.fast_path { "on" } else { "off" });
    println!("egress:    {}", st.egress);
    println!("admission: {}", st.admission);
    if st.admission == "netfilter" {
        if st.tcp_admitted {
            println!("tcp:       admitted (conntrack: {:?})", st.tcp_conntrack);
        } else {
            println!(
                "tcp:       NOT accelerated: net.netfilter.nf_conntrack_tcp_be_liberal is 0, so \
                 TCP stays on the kernel path (correct, slower). To accelerate TCP set it to 1 \
                 (kube-proxy --conntrack-tcp-be-liberal, or sysctl -w)"
            );
        }
    }
    let t = &st.flow_table;
    println!(
        "flows:     {} of {} ({} admitted); created {} admitted {} torn_down {} expired {} insert_failed {}",
        t.entries,
        t.capacity,
        t.admitted,
        t.counters["created"],
        t.counters["admitted"],
        t.counters["torn_down"],
        t.counters["expired"],
        t.counters["insert_failed"]
    );
    if st.uplinks.is_empty() {
        println!("uplinks:   none");
        return;
    }
    println!(
        "{:<15} {:>7} {:>14} {:>14} {:>14}",
        "UPLINK", "IFINDEX", "RX_FAST_PKTS", "RX_STACK_PKTS", "TX_FAST_PKTS"
    );
    for u in &st.uplinks {
        let c = &u.counters.c;
        println!(
            "{:<15} {:>7} {:>14} {:>14} {:>14}",
            u.uplink.name,
            u.uplink.ifindex,
            c[DIR_TO_CONTAINER][V_FAST_UPLINK].packets,
            c[DIR_TO_CONTAINER][V_STACK].packets,
            c[DIR_FROM_CONTAINER][V_FAST_UPLINK].packets
        );
    }
}

fn print_stats(stats: &[EndpointStats]) {
    println!(
        "{:<15} {:<15} {:>12} {:>14} {:>12} {:>14} {:>10}",
        "HOST_IF", "DIRECTION", "FAST_PKTS", "FAST_BYTES", "STACK_PKTS", "STACK_BYTES", "DROPPED"
    );
    for s in stats {
        for (d, name) in [
            (DIR_FROM_CONTAINER, "from_container"),
            (DIR_TO_CONTAINER, "to_container"),
        ] {
            let c = &s.counters.c[d];
            let fast_p = c[V_FAST].packets + c[V_FAST_UPLINK].packets;
            let fast_b = c[V_FAST].bytes + c[V_FAST_UPLINK].bytes;
            let dropped: u64 = [
                V_DROP_SPOOF_IP,
                V_DROP_SPOOF_MAC,
                V_DROP_POLICY,
                V_DROP_ERROR,
            ]
            .iter()
            .map(|v| c[*v].packets)
            .sum();
            println!(
                "{:<15} {:<15} {:>12} {:>14} {:>12} {:>14} {:>10}",
                s.host_if, name, fast_p, fast_b, c[V_STACK].packets, c[V_STACK].bytes, dropped
            );
        }
    }
}
