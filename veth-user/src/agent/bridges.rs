//! The agent's part of bridge bypass: keeps every recorded bridge accelerated as containers
//! come and go (Docker, CNI bridge).

use std::{sync::Arc, time::Instant};

use super::{AgentError, Shared};
use crate::registry::{bridges, node::LinkEvent};

/// The agent's part: keeps every recorded bridge accelerated. On a link event about a port of
/// one of them (a new or changed port; deletions are handled by the agent's endpoint cleanup)
/// or with `all` (start, periodic safety net), prunes and accelerates that bridge. A refusal
/// (a netfilter rule appeared, a port became isolated) leaves the bridge as it is and is logged.
/// Never fails: what goes wrong is logged, and the agent's other work goes on.
pub(crate) async fn follow(shared: &Arc<Shared>, batch: &[LinkEvent], all: bool) {
    if let Err(e) = follow_bridges(shared, batch, all).await {
        tracing::warn!("following accelerated bridges failed: {e}");
    }
}

async fn follow_bridges(
    shared: &Arc<Shared>,
    batch: &[LinkEvent],
    all: bool,
) -> Result<(), AgentError> {
    let mut state = bridges::accelerated(&shared.dir);
    if state.is_empty() {
        return Ok(());
    }
    if all && batch.is_empty() {
        // The periodic safety net: look without the state lock first, and lock only for the
        // bridges whose ports changed (the locked half checks them again).
        let sh = shared.clone();
        state = super::blocking(move || {
            let mut reg = sh.read_survey()?;
            reg.bridges_changed(state)
        })
        .await??;
        if state.is_empty() {
            return Ok(());
        }
    }
    let masters: Vec<u32> = batch
        .iter()
        .filter_map(|e| match e {
            LinkEvent::Changed {
                master: Some(m), ..
            } => Some(*m),
            _ => None,
        })
        .collect();
    if !all && masters.is_empty() {
        return Ok(());
    }
    let at = batch.iter().find_map(|e| match e {
        LinkEvent::Changed { at, .. } => Some(*at),
        _ => None,
    });
    let results = shared
        .write(move |reg| reg.follow_bridges(state, &masters, all))
        .await?;
    for (bridge, r) in results {
        match r {
            Ok(s) if s.added.is_empty() && s.removed.is_empty() => {}
            Ok(s) => tracing::info!(
                bridge = %bridge,
                added = %s.added.iter().map(|v| v.host_if.as_str()).collect::<Vec<_>>().join(","),
                removed = %s.removed.join(","),
                latency_us = at.map(|t: Instant| t.elapsed().as_micros() as u64).unwrap_or(0),
                "bridge ports followed"
            ),
            Err(e) => tracing::warn!(bridge = %bridge, "not following the bridge's new ports: {e}"),
        }
    }
    Ok(())
}
