//! `vethfp admission [netfilter|always]` and `vethfp flows [flush] [--json]`.

use anyhow::Context as _;
use vethfp::{Admission, FlowView};

use super::{Ctx, out::outln, print_json, table::Plain};

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum AdmissionArg {
    /// The kernel admits each flow (netfilter, conntrack, NAT decide); then vethfp accelerates.
    Netfilter,
    /// Every packet between endpoints of one network takes the fast path.
    Always,
}

impl From<AdmissionArg> for Admission {
    fn from(a: AdmissionArg) -> Admission {
        match a {
            AdmissionArg::Netfilter => Admission::Netfilter,
            AdmissionArg::Always => Admission::Always,
        }
    }
}

#[derive(clap::Subcommand)]
pub enum FlowsCmd {
    /// Remove every flow: each is admitted by the kernel again (e.g. after a policy change).
    Flush,
}

pub fn admission(ctx: &Ctx, mode: Option<AdmissionArg>) -> anyhow::Result<()> {
    match mode {
        None => outln!("{}", ctx.read()?.admission()?),
        Some(m) => {
            let m = Admission::from(m);
            ctx.write()?.set_admission(m).context("admission")?;
            outln!("admission {m}");
        }
    }
    Ok(())
}

pub fn flows(ctx: &Ctx, cmd: Option<FlowsCmd>, json: bool) -> anyhow::Result<()> {
    match cmd {
        Some(FlowsCmd::Flush) => {
            let n = ctx.write()?.flush_flows().context("flows flush")?;
            outln!("flushed {n} flow(s)");
        }
        None => {
            let flows = ctx.read()?.flows()?;
            if json {
                print_json(&flows)?;
            } else {
                print_flows(&flows);
            }
        }
    }
    Ok(())
}

fn print_flows(flows: &[FlowView]) {
    let mut t = Plain::new(
        &[
            "PROTO",
            "A",
            "B",
            "STATE",
            "HANDOFF",
            "AGE_S",
            "PACKETS",
            "ENDPOINTS",
        ],
        &[5, 6],
    );
    for f in flows {
        t.row([
            f.proto.to_string(),
            f.a.to_string(),
            f.b.to_string(),
            f.state.to_string(),
            f.handoff.unwrap_or("-").to_string(),
            f.age_seconds
                .map(|a| format!("{a:.1}"))
                .unwrap_or("-".into()),
            f.packets.to_string(),
            format!(
                "{},{}",
                f.a_endpoint.as_deref().unwrap_or("-"),
                f.b_endpoint.as_deref().unwrap_or("-")
            ),
        ]);
    }
    t.print();
}
