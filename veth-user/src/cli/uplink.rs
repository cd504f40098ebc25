//! `vethfp uplink attach|detach`.

use anyhow::Context as _;
use clap::Subcommand;

use super::{Ctx, out::outln};

#[derive(Subcommand)]
pub enum UplinkCmd {
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

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Egress {
    Fast,
    Kernel,
}

pub fn run(ctx: &Ctx, cmd: UplinkCmd) -> anyhow::Result<()> {
    match cmd {
        UplinkCmd::Attach { iface, egress } => {
            let up = ctx
                .write()?
                .uplink_attach(&iface, egress == Egress::Fast)
                .with_context(|| format!("uplink attach {iface}"))?;
            outln!(
                "uplink {} (ifindex {}) attached, egress {}",
                up.name,
                up.ifindex,
                if egress == Egress::Fast {
                    "fast"
                } else {
                    "kernel"
                }
            );
        }
        UplinkCmd::Detach { iface } => {
            ctx.write()?
                .uplink_detach(&iface)
                .with_context(|| format!("uplink detach {iface}"))?;
            outln!("uplink {iface} detached");
        }
    }
    Ok(())
}
