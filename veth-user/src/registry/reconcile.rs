//! Reconciliation: make the pinned state (maps, link pins, program pins) agree with the kernel
//! and with this build, without disturbing traffic.
//!
//! - An endpoint whose host interface is gone (deleted by someone else, or taken with its
//!   container's namespace) is removed: addresses, devmap, record, counters, link pins.
//! - An endpoint whose filter is missing (someone ran `tc qdisc del dev X clsact`), or an
//!   uplink whose link pin is missing, gets the program attached again.
//! - A filter or pinned link that runs a program of this state other than this build's (an
//!   older `vethfp` made it) is switched to this build's program in place: `NLM_F_REPLACE` at
//!   the same prio and handle for a filter, `BPF_LINK_UPDATE` for a link. The maps and the
//!   counters stay; no packet sees a missing program. A filter at vethfp's place running
//!   someone else's program is never touched (logged).
//! - Endpoint tcx links an older build pinned are replaced by filters: the filter is added
//!   first, then the link pin is pruned.
//! - Every part of a live endpoint is checked and restored if missing: each address in the
//!   address maps with the record's target, devmap, L2 entry, the node's /32 and /128 routes
//!   and permanent neighbours, and for pairs vethfp made the container end's addresses,
//!   gateway neighbours and routes ([`Registry::repair_endpoint`]).
//! - Endpoints with an operation in flight in another process (a journal entry left after
//!   recovery) are left to it, untouched.
//! - Interrupted operations in this state's journal are completed or rolled back
//!   ([`Registry::recover`]); link pins no endpoint or uplink owns and program pins of other
//!   builds that no filter or link runs any more are removed, so nothing accumulates. A link is never deleted unless a record or
//!   an intent of this state names it with its exact MAC.
//!
//! Callers hold the state lock (see [`crate::datapath::StateLock`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    time::{Duration, Instant},
};

use crate::types::Mode;
use crate::{
    datapath::{
        HOOK_TC_EGRESS, HOOK_TC_INGRESS, HOOK_UPLINK, HOOK_UPLINK_EGRESS, HOOK_XDP,
        PROG_L2_INGRESS, PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_UPLINK_EGRESS, PROG_UPLINK_INGRESS,
        PROG_XDP, links::LinkAction,
    },
    registry::{EndpointError, Registry},
    sys::netlink,
};

/// What one reconciliation pass did.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Endpoints removed because their host interface is gone.
    pub removed: Vec<String>,
    /// Uplinks removed because their interface is gone.
    pub removed_uplinks: Vec<String>,
    /// Interrupted operations of this state's journal, completed or rolled back:
    /// (host end, what was done).
    pub leftovers: Vec<(String, String)>,
    /// (host end, part) restored on a live endpoint: "addr_v4", "addr_v6", "devmap", "l2",
    /// "route", "neighbour", "container" (one per object restored inside the container).
    pub repaired: Vec<(String, &'static str)>,
    /// Ports of accelerated bridges that appeared since (accelerated by this pass).
    pub bridge_ports_added: Vec<String>,
    /// (interface, hook) attached anew because the filter (or the link pin) was missing.
    pub attached: Vec<(String, &'static str)>,
    /// (interface, hook, link id or filter handle, old program id, new program id) switched
    /// in place.
    pub replaced: Vec<(String, &'static str, u32, u32, u32)>,
    /// Endpoints left alone because an operation on them is in flight in another process.
    pub in_flight: Vec<String>,
    pub pruned_link_pins: usize,
    pub pruned_prog_pins: usize,
    /// Endpoints and uplinks left, each checked.
    pub endpoints: usize,
    pub uplinks: usize,
    pub took: Duration,
}

impl Report {
    /// True if the pass changed anything.
    pub fn changed(&self) -> bool {
        !(self.removed.is_empty()
            && self.removed_uplinks.is_empty()
            && self.leftovers.is_empty()
            && self.repaired.is_empty()
            && self.bridge_ports_added.is_empty()
            && self.attached.is_empty()
            && self.replaced.is_empty()
            && self.pruned_link_pins == 0
            && self.pruned_prog_pins == 0)
    }
}

impl Registry {
    /// One reconciliation pass over every endpoint and uplink (see the module docs).
    /// The caller holds the state lock. A failure on one endpoint is logged and the pass goes
    /// on with the others; only failures to read the state itself are returned.
    pub fn reconcile(&mut self) -> Result<Report, EndpointError> {
        let start = Instant::now();
        let mut report = Report::default();
        crate::registry::flows::sync_tcp(self.datapath())?;
        match self.recover() {
            Ok(l) => report.leftovers = l,
            Err(e) => log::warn!("completing interrupted operations (journal): {e}"),
        }
        let kernel: BTreeMap<u32, String> = netlink::links()?
            .into_iter()
            .map(|l| (l.ifindex, l.name))
            .collect();
        let present = |ifindex: u32, name: &str| kernel.get(&ifindex).is_some_and(|n| n == name);
        let mut live = BTreeSet::new();
        let view = match netlink::NodeView::dump() {
            Ok(v) => Some(v),
            Err(e) => {
                log::warn!("listing the node's routes and neighbours: {e}");
                None
            }
        };

        // Endpoints another process is adding or deleting right now: that process finishes
        // them (or, killed, the next recovery does). Repairing one would republish the
        // addresses a running `pair del` just took out of the fast path.
        let busy = self.in_flight()?;
        for ep in self.list()? {
            if busy.contains(&ep.host_if) {
                for hook in [HOOK_TC_INGRESS, HOOK_TC_EGRESS, HOOK_XDP] {
                    live.insert((hook, ep.host_ifindex)); // its pins are its own too
                }
                report.in_flight.push(ep.host_if);
                continue;
            }
            if !present(ep.host_ifindex, &ep.host_if) {
                match self.remove_by_ifindex(ep.host_ifindex) {
                    Ok(_) => report.removed.push(ep.host_if),
                    Err(e) => log::warn!("removing vanished endpoint {}: {e}", ep.host_if),
                }
                continue;
            }
            report.endpoints += 1;
            // Bridge ports run the L2 program at tc ingress, routed endpoints the L3 one.
            let ingress = if ep.mode == Mode::Bridge {
                PROG_L2_INGRESS
            } else {
                PROG_TC_INGRESS
            };
            let mut hooks = vec![(HOOK_TC_INGRESS, ingress), (HOOK_TC_EGRESS, PROG_TC_EGRESS)];
            if ep.mode == Mode::Xdp {
                hooks.push((HOOK_XDP, PROG_XDP));
            }
            for (hook, prog) in hooks {
                live.insert((hook, ep.host_ifindex));
                self.ensure(&ep.host_if, ep.host_ifindex, hook, prog, &mut report);
            }
            if let Some(rec) = self.record_by_ifindex(ep.host_ifindex)? {
                match self.repair_endpoint_with(&rec, view.as_ref()) {
                    Ok(parts) => report
                        .repaired
                        .extend(parts.into_iter().map(|p| (ep.host_if.clone(), p))),
                    Err(e) if gone(ep.host_ifindex, &ep.host_if) => {
                        log::debug!("{}: repairing: {e} (gone)", ep.host_if)
                    }
                    Err(e) => log::warn!("{}: repairing: {e}", ep.host_if),
                }
            }
        }
        // Accelerated bridges: follow their changes (new ports, a container's MAC moving to a
        // new port). Bridges refused now (a rule added since, say) keep what they have.
        let mut bridges: Vec<String> = self
            .list()?
            .into_iter()
            .filter(|e| e.mode == Mode::Bridge)
            .map(|e| e.network)
            .collect();
        bridges.sort();
        bridges.dedup();
        for br in bridges {
            match self.bridge_accelerate(&br, false) {
                Ok((added, _skipped)) => {
                    for v in added {
                        live.insert((HOOK_TC_INGRESS, v.host_ifindex));
                        live.insert((HOOK_TC_EGRESS, v.host_ifindex));
                        report.bridge_ports_added.push(v.host_if);
                    }
                }
                Err(e) => log::warn!("following bridge {br}: {e}"),
            }
        }
        for up in self.uplinks()? {
            if !present(up.ifindex, &up.name) {
                match self.uplink_detach(&up.name) {
                    Ok(()) => report.removed_uplinks.push(up.name),
                    Err(e) => log::warn!("removing vanished uplink {}: {e}", up.name),
                }
                continue;
            }
            report.uplinks += 1;
            live.insert((HOOK_UPLINK, up.ifindex));
            live.insert((HOOK_UPLINK_EGRESS, up.ifindex));
            self.ensure(
                &up.name,
                up.ifindex,
                HOOK_UPLINK,
                PROG_UPLINK_INGRESS,
                &mut report,
            );
            self.ensure(
                &up.name,
                up.ifindex,
                HOOK_UPLINK_EGRESS,
                PROG_UPLINK_EGRESS,
                &mut report,
            );
        }
        let (links, progs) = self.datapath().prune_pins(&live)?;
        report.pruned_link_pins = links;
        report.pruned_prog_pins = progs;
        report.took = start.elapsed();
        Ok(report)
    }

    fn ensure(
        &mut self,
        iface: &str,
        ifindex: u32,
        hook: &'static str,
        prog: &'static str,
        report: &mut Report,
    ) {
        match self.datapath().ensure_link(iface, ifindex, hook, prog) {
            Ok(LinkAction::Kept) => {}
            Ok(LinkAction::Attached) => report.attached.push((iface.to_string(), hook)),
            Ok(LinkAction::Replaced {
                link_id,
                old_prog,
                new_prog,
            }) => report
                .replaced
                .push((iface.to_string(), hook, link_id, old_prog, new_prog)),
            // It left while this pass ran (its container's namespace went away): the next
            // pass, or the agent's link event, removes it. Not worth a warning.
            Err(e) if gone(ifindex, iface) => log::debug!("{iface}: {hook} link: {e} (gone)"),
            Err(e) => log::warn!("{iface}: {hook} link: {e}"),
        }
    }

    /// Removes every endpoint and uplink, then every pin under the state directory (maps,
    /// programs, links) and the directory itself: `agent --cleanup-on-exit`.
    /// Returns how many endpoints were removed.
    pub fn remove_everything(&mut self) -> Result<usize, EndpointError> {
        let eps = self.list()?;
        for ep in &eps {
            if let Err(e) = self.remove_by_ifindex(ep.host_ifindex) {
                log::warn!("removing endpoint {}: {e}", ep.host_if);
            }
        }
        for up in self.uplinks()? {
            if let Err(e) = self.uplink_detach(&up.name) {
                log::warn!("removing uplink {}: {e}", up.name);
            }
        }
        let dir = self.datapath().dir().to_path_buf();
        for sub in [
            "links",
            "progs",
            "bridges",
            crate::datapath::OPS_DIR,
            crate::registry::flows::AGENT_DIR,
        ] {
            let _ = fs::remove_dir_all(dir.join(sub));
        }
        for m in veth_common::MAPS {
            let _ = fs::remove_file(dir.join(m));
        }
        let _ = fs::remove_file(dir.join(crate::datapath::VERSION_LINK));
        // Anything else in there is not ours: leave the directory if it is not empty.
        let _ = fs::remove_dir(&dir);
        Ok(eps.len())
    }
}

/// Is the interface `ifindex` named `name` gone (or renamed) now?
fn gone(ifindex: u32, name: &str) -> bool {
    !matches!(netlink::link_by_index(ifindex), Ok(Some(l)) if l.name == name)
}
