//! `vethfp pair add|del|mode|list`.

use anyhow::Context as _;
use clap::{Args, Subcommand};
use vethfp::{AddRequest, Cidr, EndpointView, IfName, Mac, Mode, Spoof};

use super::{Ctx, out::outln, print_json, table::Plain};

#[derive(Subcommand)]
pub enum PairCmd {
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
        #[arg(value_enum)]
        mode: ModeArg,
    },
    /// List endpoints.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct AddArgs {
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
    #[arg(long, value_enum, default_value_t = ModeArg::Tc)]
    mode: ModeArg,
    /// Network (isolation domain): the fast path joins only endpoints of the same network;
    /// traffic across networks takes the node's routing and firewall.
    #[arg(long, default_value = "default")]
    network: String,
    /// Anti-spoofing of the container's source MAC and IP addresses.
    #[arg(long, value_enum, default_value_t = SpoofArg::Enforce)]
    spoof: SpoofArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ModeArg {
    /// tcx ingress program, bpf_redirect_peer (default).
    Tc,
    /// native XDP program, devmap redirect (tcx stays attached for everything XDP passes).
    Xdp,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Tc => Mode::Tc,
            ModeArg::Xdp => Mode::Xdp,
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum SpoofArg {
    /// Drop frames whose source MAC or IP is not the endpoint's own.
    Enforce,
    /// Count such frames under their drop reason, but let them through (kernel path only).
    Audit,
    /// No check.
    Off,
}

impl From<SpoofArg> for Spoof {
    fn from(s: SpoofArg) -> Spoof {
        match s {
            SpoofArg::Enforce => Spoof::Enforce,
            SpoofArg::Audit => Spoof::Audit,
            SpoofArg::Off => Spoof::Off,
        }
    }
}

pub fn run(ctx: &Ctx, cmd: PairCmd) -> anyhow::Result<()> {
    match cmd {
        PairCmd::Add(a) => {
            let mut req = AddRequest::new(a.host_if, a.netns, a.addrs);
            req.ifname = a.ifname;
            req.mtu = a.mtu;
            req.mac = a.mac;
            req.network = a.network;
            req.spoof = a.spoof.into();
            req.mode = a.mode.into();
            let view = ctx
                .write()?
                .add(&req)
                .map_err(|e| super::hint::add_error(e, &req))
                .with_context(|| format!("pair add {}", req.host))?;
            outln!(
                "added {} (ifindex {}) -> {} in {} [{}]",
                view.host_if,
                view.host_ifindex,
                view.ifname,
                view.netns,
                join(&view.addrs, ", ")
            );
        }
        PairCmd::Del { host_if } => {
            ctx.write()?
                .del(&host_if)
                .with_context(|| format!("pair del {host_if}"))?;
            outln!("removed {host_if}");
        }
        PairCmd::Mode { host_if, mode } => {
            let view = ctx
                .write()?
                .set_mode(&host_if, mode.into())
                .with_context(|| format!("pair mode {host_if}"))?;
            outln!("{} is now in {} mode", view.host_if, view.mode);
        }
        PairCmd::List { json } => {
            let list = ctx.read()?.list()?;
            if json {
                print_json(&list)?;
            } else {
                print_list(&list);
            }
        }
    }
    Ok(())
}

fn join<T: ToString>(v: &[T], sep: &str) -> String {
    v.iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(sep)
}

fn print_list(list: &[EndpointView]) {
    let mut t = Plain::new(
        &[
            "HOST_IF",
            "IFINDEX",
            "HOST_MAC",
            "NETNS",
            "IFNAME",
            "CONTAINER_MAC",
            "MTU",
            "MODE",
            "NETWORK",
            "ADDRESSES",
        ],
        &[1, 6],
    );
    for e in list {
        t.row([
            e.host_if.clone(),
            e.host_ifindex.to_string(),
            e.host_mac.to_string(),
            e.netns.clone(),
            e.ifname.clone(),
            e.container_mac.to_string(),
            e.mtu.to_string(),
            e.mode.to_string(),
            e.network.clone(),
            join(&e.addrs, ","),
        ]);
    }
    t.print();
}
