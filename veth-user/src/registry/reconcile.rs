//! Reconciliation: make the pinned state (maps, link pins, program pins) agree with the kernel
//! and with this build, without disturbing traffic.
//!
//! - An endpoint whose host interface is gone (deleted by someone else, or taken with its
//!   container's namespace) is removed: addresses, devmap, record, counters, link pins.
//! - An endpoint (or uplink) whose link pin is missing gets the program attached again.
//! - A pinned link that runs a program other than this build's (an older `vethfp` made it) is
//!   switched to this build's program in place with `BPF_LINK_UPDATE`: the link, its position
//!   in the tcx chain, the maps and the counters stay; no packet sees a missing program.
//! - Every part of a live endpoint is checked and restored if missing: each address in the
//!   address maps with the record's target, devmap, L2 entry, the node's /32 and /128 routes
//!   and permanent neighbours, and for pairs vethfp made the container end's addresses,
//!   gateway neighbours and routes ([`Registry::repair_endpoint`]).
//! - Interrupted operations in this state's journal are completed or rolled back
//!   ([`Registry::recover`]); link pins no endpoint or uplink owns and program pins of other
//!   builds are removed, so nothing accumulates. A link is never deleted unless a record or
//!   an intent of this state names it with its exact MAC.
//!
//! Callers hold the state lock (see [`crate::datapath::StateLock`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::ErrorKind,
    path::Path,
    time::{Duration, Instant},
};

use aya::programs::{
    ProgramInfo, SchedClassifier, TcAttachType, Xdp,
    links::{FdLink, LinkError, PinnedLink},
    tc::SchedClassifierLink,
    xdp::XdpLink,
};
use aya_obj::programs::XdpAttachType;

use crate::types::Mode;
use crate::{
    datapath::{
        Datapath, DatapathError, HOOK_TC_EGRESS, HOOK_TC_INGRESS, HOOK_UPLINK, HOOK_UPLINK_EGRESS,
        HOOK_XDP, PROG_L2_INGRESS, PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_UPLINK_EGRESS,
        PROG_UPLINK_INGRESS, PROG_XDP, object_hash,
    },
    registry::{EndpointError, Registry},
    sys::netlink,
};

/// A pinned link as the kernel sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkState {
    pub link_id: u32,
    pub prog_id: u32,
}

/// What [`Datapath::ensure_link`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkAction {
    /// Present and running this build's program.
    Kept,
    /// The pin was missing: attached and pinned anew.
    Attached,
    /// Switched in place (same link) from an older program to this build's.
    Replaced {
        link_id: u32,
        old_prog: u32,
        new_prog: u32,
    },
}

/// A name for the program behind a hook, for error messages.
fn hook_program(hook: &str) -> Option<&'static str> {
    Some(match hook {
        HOOK_TC_INGRESS => "tcx ingress program",
        HOOK_TC_EGRESS => PROG_TC_EGRESS,
        HOOK_XDP => PROG_XDP,
        HOOK_UPLINK => PROG_UPLINK_INGRESS,
        HOOK_UPLINK_EGRESS => PROG_UPLINK_EGRESS,
        _ => return None,
    })
}

fn link_err(iface: String) -> impl FnOnce(LinkError) -> DatapathError {
    move |source| DatapathError::Link { iface, source }
}

impl Datapath {
    /// The pinned link of `hook` on `ifindex`, if its pin exists.
    pub fn link_state(&self, hook: &str, ifindex: u32) -> Result<Option<LinkState>, DatapathError> {
        let pin = self.link_pin(hook, ifindex);
        let link: FdLink = match PinnedLink::from_pin(&pin) {
            Ok(l) => l.into(),
            Err(LinkError::SyscallError(e)) if e.io_error.kind() == ErrorKind::NotFound => {
                return Ok(None);
            }
            Err(e) => return Err(link_err(format!("ifindex {ifindex}"))(e)),
        };
        let info = link
            .info()
            .map_err(link_err(format!("ifindex {ifindex}")))?;
        Ok(Some(LinkState {
            link_id: info.id(),
            prog_id: info.program_id(),
        }))
    }

    /// Kernel id of this build's program `name` (loading and pinning it first if needed).
    pub fn program_id(&mut self, name: &'static str) -> Result<u32, DatapathError> {
        let pin = self.pinned_program(name)?;
        ProgramInfo::from_pin(&pin)
            .map(|i| i.id())
            .map_err(|source| DatapathError::Program { name, source })
    }

    /// Atomically replaces the program of the pinned link of `hook` on `ifindex` with the
    /// program pinned at `prog_pin` (`BPF_LINK_UPDATE`): the link stays, and so does its
    /// place in the tcx chain; packets see either the old or the new program.
    pub fn replace_program(
        &mut self,
        hook: &str,
        ifindex: u32,
        prog_pin: &Path,
    ) -> Result<(), DatapathError> {
        let name = hook_program(hook).ok_or(DatapathError::Program {
            name: "unknown hook",
            source: aya::programs::ProgramError::NotLoaded,
        })?;
        let iface = format!("ifindex {ifindex}");
        let link: FdLink = PinnedLink::from_pin(self.link_pin(hook, ifindex))
            .map_err(link_err(iface.clone()))?
            .into();
        let perr = |source| DatapathError::Program { name, source };
        if hook == HOOK_XDP {
            let mut prog = Xdp::from_pin(prog_pin, XdpAttachType::Interface).map_err(perr)?;
            let link = XdpLink::try_from(link).map_err(link_err(iface))?;
            let id = prog.attach_to_link(link).map_err(perr)?;
            // Our fd only: the pin keeps the link (and the program) attached.
            drop(prog.take_link(id).map_err(perr)?);
        } else {
            let mut prog = SchedClassifier::from_pin(prog_pin).map_err(perr)?;
            let link = SchedClassifierLink::try_from(link).map_err(link_err(iface))?;
            let id = prog.attach_to_link(link).map_err(perr)?;
            drop(prog.take_link(id).map_err(perr)?);
        }
        Ok(())
    }

    /// Makes sure `hook` on host end `iface` (`ifindex`) has a pinned link running this
    /// build's program `name`: attaches it if the pin is missing, replaces another program
    /// (an older build's) in place.
    pub fn ensure_link(
        &mut self,
        iface: &str,
        ifindex: u32,
        hook: &'static str,
        name: &'static str,
    ) -> Result<LinkAction, DatapathError> {
        match self.link_state(hook, ifindex)? {
            None => {
                match hook {
                    HOOK_XDP => self.attach_xdp(iface, ifindex)?,
                    HOOK_UPLINK => self.attach_one(
                        iface,
                        ifindex,
                        PROG_UPLINK_INGRESS,
                        TcAttachType::Ingress,
                        hook,
                    )?,
                    HOOK_UPLINK_EGRESS => self.attach_uplink_egress(iface, ifindex)?,
                    HOOK_TC_EGRESS => {
                        self.attach_one(iface, ifindex, name, TcAttachType::Egress, hook)?
                    }
                    _ => self.attach_one(iface, ifindex, name, TcAttachType::Ingress, hook)?,
                }
                Ok(LinkAction::Attached)
            }
            Some(st) => {
                let want = self.program_id(name)?;
                if st.prog_id == want {
                    return Ok(LinkAction::Kept);
                }
                let pin = self.pinned_program(name)?;
                self.replace_program(hook, ifindex, &pin)?;
                Ok(LinkAction::Replaced {
                    link_id: st.link_id,
                    old_prog: st.prog_id,
                    new_prog: want,
                })
            }
        }
    }

    /// Removes link pins whose (hook, ifindex) is not in `live`, and program pins of other
    /// builds. Returns (link pins removed, program pins removed).
    pub fn prune_pins(
        &self,
        live: &BTreeSet<(&'static str, u32)>,
    ) -> Result<(usize, usize), DatapathError> {
        let io = |what: &Path| {
            let what = what.display().to_string();
            move |source| DatapathError::Io { what, source }
        };
        let mut links = 0;
        let dir = self.dir().join("links");
        for e in fs::read_dir(&dir).map_err(io(&dir))? {
            let e = e.map_err(io(&dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let keep = name.rsplit_once('-').is_some_and(|(hook, idx)| {
                let hook = [
                    HOOK_TC_INGRESS,
                    HOOK_TC_EGRESS,
                    HOOK_XDP,
                    HOOK_UPLINK,
                    HOOK_UPLINK_EGRESS,
                ]
                .into_iter()
                .find(|h| *h == hook);
                matches!((hook, idx.parse::<u32>()), (Some(h), Ok(i)) if live.contains(&(h, i)))
            });
            if !keep {
                match fs::remove_file(e.path()) {
                    Ok(()) => links += 1,
                    Err(err) if err.kind() == ErrorKind::NotFound => {}
                    Err(err) => return Err(io(&e.path())(err)),
                }
            }
        }
        let mut progs = 0;
        let suffix = format!("-{:016x}", object_hash());
        let dir = self.dir().join("progs");
        for e in fs::read_dir(&dir).map_err(io(&dir))? {
            let e = e.map_err(io(&dir))?;
            if !e.file_name().to_string_lossy().ends_with(&suffix) {
                match fs::remove_file(e.path()) {
                    Ok(()) => progs += 1,
                    Err(err) if err.kind() == ErrorKind::NotFound => {}
                    Err(err) => return Err(io(&e.path())(err)),
                }
            }
        }
        Ok((links, progs))
    }
}

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
    /// (interface, hook) attached anew because the link pin was missing.
    pub attached: Vec<(String, &'static str)>,
    /// (interface, hook, link id, old program id, new program id) switched in place.
    pub replaced: Vec<(String, &'static str, u32, u32, u32)>,
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

        for ep in self.list()? {
            if !present(ep.host_ifindex, &ep.host_if) {
                match self.remove_by_ifindex(ep.host_ifindex) {
                    Ok(_) => report.removed.push(ep.host_if),
                    Err(e) => log::warn!("removing vanished endpoint {}: {e}", ep.host_if),
                }
                continue;
            }
            report.endpoints += 1;
            // Bridge ports run the L2 program at tcx ingress, routed endpoints the L3 one.
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
        for sub in ["links", "progs", "bridges"] {
            let _ = fs::remove_dir_all(dir.join(sub));
        }
        for m in veth_common::MAPS {
            let _ = fs::remove_file(dir.join(m));
        }
        // Anything else in there is not ours: leave the directory if it is not empty.
        let _ = fs::remove_dir(&dir);
        Ok(eps.len())
    }
}
