//! `vethfp bridge accelerate|release|status`.

use anyhow::Context as _;
use clap::Subcommand;

use super::{Ctx, out::outln, print_json, table::Plain};

#[derive(Subcommand)]
pub enum BridgeCmd {
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

pub fn run(ctx: &Ctx, cmd: BridgeCmd) -> anyhow::Result<()> {
    match cmd {
        BridgeCmd::Accelerate { bridge, force } => accelerate(ctx, &bridge, force),
        BridgeCmd::Release { bridge } => {
            let ports = ctx
                .write()?
                .bridge_release_all(&bridge)
                .with_context(|| format!("bridge release {bridge}"))?;
            outln!("{bridge}: {} port(s) released", ports.len());
            Ok(())
        }
        BridgeCmd::Status { bridge, json } => status(ctx, &bridge, json),
    }
}

/// `bridge accelerate`: the ports accelerated, each one skipped and why, the gone ones removed.
fn accelerate(ctx: &Ctx, bridge: &str, force: bool) -> anyhow::Result<()> {
    let sync = ctx
        .write()?
        .bridge_sync(bridge, force)
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
    outln!(
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
        outln!(
            "{bridge}: {} gone port(s) removed: {}",
            sync.removed.len(),
            sync.removed.join(", ")
        );
    }
    Ok(())
}

/// `bridge status`: the bridge, then one row per port (and per registered port now gone).
fn status(ctx: &Ctx, bridge: &str, json: bool) -> anyhow::Result<()> {
    let st = ctx
        .read()?
        .bridge_status(bridge)
        .with_context(|| format!("bridge status {bridge}"))?;
    if json {
        return print_json(&st);
    }
    outln!(
        "{}: {}",
        st.bridge,
        match (st.accelerated, st.forced) {
            (false, _) => "not accelerated",
            (true, false) => "accelerated",
            (true, true) => "accelerated (forced)",
        }
    );
    let mut t = Plain::new(&["  PORT", "STATE"], &[]);
    for p in &st.ports {
        match &p.reason {
            None => t.row([format!("  {}", p.port), "accelerated".into()]),
            Some(r) => t.row([format!("  {}", p.port), format!("bridge path: {r}")]),
        }
    }
    for s in &st.stale {
        t.row([
            format!("  {s}"),
            "gone (registered still; never delivered to)".into(),
        ]);
    }
    t.print();
    Ok(())
}
