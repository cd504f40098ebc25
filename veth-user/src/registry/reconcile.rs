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
//! [`Registry::reconcile`] does all of it in one go; its callers hold the state lock (see
//! [`crate::datapath::StateLock`]). The agent splits a pass in two: `Registry::survey` reads
//! without the lock and names the endpoints with something wrong, `Registry::repair_surveyed`
//! repairs those under the lock, so a pass with nothing to repair never takes it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs,
    net::IpAddr,
    time::{Duration, Instant},
};

use veth_common::{EP_ADOPTED, EP_BRIDGE_PORT, EndpointRecord, MODE_XDP, Target};

use crate::types::{Cidr, Mac, Mode};
use crate::{
    datapath::{Hook, Program, links::LinkAction},
    registry::{EndpointError, EndpointView, Registry, get_str, record_addrs},
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
        for rec in self.records()? {
            let (name, ifindex) = (get_str(&rec.host_name), rec.target.ifindex);
            if busy.contains(&name) {
                for hook in [Hook::TcIngress, Hook::TcEgress, Hook::Xdp] {
                    live.insert((hook, ifindex)); // its pins are its own too
                }
                report.in_flight.push(name);
                continue;
            }
            if !present(ifindex, &name) {
                match self.remove_by_ifindex(ifindex) {
                    Ok(_) => report.removed.push(name),
                    Err(e) => log::warn!("removing vanished endpoint {name}: {e}"),
                }
                continue;
            }
            report.endpoints += 1;
            live.extend(
                super::desired::hooks(&rec)
                    .into_iter()
                    .map(|(h, _)| (h, ifindex)),
            );
            self.restore_endpoint(&rec, &name, view.as_ref(), &mut report);
        }
        for v in self.reaccelerate_bridges(&mut report)? {
            live.insert((Hook::TcIngress, v.host_ifindex));
            live.insert((Hook::TcEgress, v.host_ifindex));
        }
        for ifindex in self.restore_uplinks(|i, n| !present(i, n), &mut report)? {
            report.uplinks += 1;
            live.insert((Hook::UplinkIngress, ifindex));
            live.insert((Hook::UplinkEgress, ifindex));
        }
        let (links, progs) = self.datapath().prune_pins(&live)?;
        report.pruned_link_pins = links;
        report.pruned_prog_pins = progs;
        report.took = start.elapsed();
        Ok(report)
    }

    /// An endpoint's hooks as this build attaches them, then every map entry and kernel
    /// object of it ([`Registry::repair_endpoint_with`]); what was done goes into `report`.
    fn restore_endpoint(
        &mut self,
        rec: &EndpointRecord,
        name: &str,
        view: Option<&netlink::NodeView>,
        report: &mut Report,
    ) {
        let ifindex = rec.target.ifindex;
        for (hook, prog) in super::desired::hooks(rec) {
            self.ensure(name, ifindex, hook, prog, report);
        }
        match self.repair_endpoint_with(rec, view) {
            Ok(parts) => report
                .repaired
                .extend(parts.into_iter().map(|p| (name.to_string(), p))),
            Err(e) if gone(ifindex, name) => log::debug!("{name}: repairing: {e} (gone)"),
            Err(e) => log::warn!("{name}: repairing: {e}"),
        }
    }

    /// Accelerated bridges follow their changes (new ports, a container's MAC moving to a new
    /// port); a bridge refused now (a rule added since, say) keeps what it has. Returns the
    /// ports added.
    fn reaccelerate_bridges(
        &mut self,
        report: &mut Report,
    ) -> Result<Vec<EndpointView>, EndpointError> {
        let mut bridges: Vec<String> = self
            .list()?
            .into_iter()
            .filter(|e| e.mode == Mode::Bridge)
            .map(|e| e.network)
            .collect();
        bridges.sort();
        bridges.dedup();
        let mut added = Vec::new();
        for br in bridges {
            match self.bridge_accelerate(&br, false) {
                Ok((ports, _skipped)) => added.extend(ports),
                Err(e) => log::warn!("following bridge {br}: {e}"),
            }
        }
        report
            .bridge_ports_added
            .extend(added.iter().map(|v| v.host_if.clone()));
        Ok(added)
    }

    /// Uplinks: a `gone` one is detached, the others get this build's programs. Returns the
    /// ifindexes of those still there.
    fn restore_uplinks(
        &mut self,
        gone: impl Fn(u32, &str) -> bool,
        report: &mut Report,
    ) -> Result<Vec<u32>, EndpointError> {
        let mut there = Vec::new();
        for up in self.uplinks()? {
            if gone(up.ifindex, &up.name) {
                match self.uplink_detach(&up.name) {
                    Ok(()) => report.removed_uplinks.push(up.name),
                    Err(e) => log::warn!("removing vanished uplink {}: {e}", up.name),
                }
                continue;
            }
            for (hook, prog) in [
                (Hook::UplinkIngress, Program::UplinkIngress),
                (Hook::UplinkEgress, Program::UplinkEgress),
            ] {
                self.ensure(&up.name, up.ifindex, hook, prog, report);
            }
            there.push(up.ifindex);
        }
        Ok(there)
    }

    fn ensure(
        &mut self,
        iface: &str,
        ifindex: u32,
        hook: Hook,
        prog: Program,
        report: &mut Report,
    ) {
        match self.datapath().ensure_link(iface, ifindex, hook, prog) {
            Ok(LinkAction::Kept) => {}
            Ok(LinkAction::Attached) => report.attached.push((iface.to_string(), hook.name())),
            Ok(LinkAction::Replaced {
                link_id,
                old_prog,
                new_prog,
            }) => {
                // As it happens (the pass's report comes at its end): an upgrade's progress.
                log::debug!("{iface}: {hook}: program {old_prog} replaced by {new_prog} in place");
                report
                    .replaced
                    .push((iface.to_string(), hook.name(), link_id, old_prog, new_prog))
            }
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

/// Which endpoints' hooks a survey looks at (see [`Registry::survey`]).
#[derive(Debug, Default, Clone)]
pub(crate) struct HookScope {
    /// Every endpoint's (the agent's first pass, after lost notifications).
    pub all: bool,
    /// These interfaces' besides the round-robin slice (named by tc notifications).
    pub named: BTreeSet<u32>,
}

/// What a survey looks at for one endpoint beyond its record, maps and node side.
#[derive(Debug, Clone, Copy)]
struct Look {
    hooks: bool,
    container: bool,
}

/// An endpoint the unlocked look found something wrong with (see [`Registry::survey`]).
#[derive(Debug, Clone)]
pub(crate) struct Suspect {
    pub ifindex: u32,
    pub name: String,
    /// What was seen: "gone", "hook", "devmap", "l2", "addr", "node", "container".
    pub why: &'static str,
}

/// What one look at the node without the state lock found: the periodic pass's read half.
/// Everything in it is a hint, re-checked under the lock before anything is changed.
#[derive(Debug, Default)]
pub(crate) struct Survey {
    pub suspects: Vec<Suspect>,
    /// The journal holds entries (operations in flight, or interrupted ones to recover).
    pub journal: bool,
    /// The TCP admission flags are not what [`crate::registry::flows::sync_tcp`] wants.
    pub tcp: bool,
    /// An uplink is gone or its link is missing or runs another program.
    pub uplinks: bool,
    /// An accelerated bridge has a veth port no record names.
    pub bridges: bool,
    /// A link pin or program pin would be pruned.
    pub prune: bool,
    pub endpoints: usize,
    /// Container sides looked at (the round-robin slice of this pass).
    pub containers_checked: usize,
    /// Endpoints whose hooks were looked at.
    pub hooks_checked: usize,
    pub took: Duration,
}

impl Survey {
    /// Nothing to repair: the pass never takes the state lock.
    pub fn clean(&self) -> bool {
        self.suspects.is_empty()
            && !self.journal
            && !self.tcp
            && !self.uplinks
            && !self.bridges
            && !self.prune
    }
}

impl Registry {
    /// The read half of a reconciliation pass, without the state lock: one dump each of the
    /// endpoint records, the journal, the address maps, the devmap, the L2 map, the node's
    /// links, routes and permanent neighbours; per endpoint a lookup in those, plus (see
    /// `hooks` below) its two tc filters. Container sides are entered
    /// for `containers` endpoints only, starting at position `*cursor` of the records
    /// (sorted by name) and moving the cursor on: a full round takes several passes, and
    /// a container whose host end comes up again, or whose endpoint is a suspect for any
    /// other reason, is checked (and repaired) at once. What it finds is repaired by
    /// [`Registry::repair_surveyed`] under the lock.
    ///
    /// Hooks (the two tc filters, the XDP link) are looked at per endpoint only when `hooks`
    /// says so: every endpoint on a full pass (`hooks.all`, or whenever a program pin of
    /// another build exists, so that no pin still in use is ever pruned), otherwise those
    /// of the round-robin slice and those a tc notification named (`hooks.named`). The kernel
    /// dumps filters per device only: two netlink dumps per endpoint were most of a pass.
    pub(crate) fn survey(
        &mut self,
        cursor: &mut usize,
        containers: usize,
        hooks: &HookScope,
        links: Option<HashMap<u32, netlink::Link>>,
    ) -> Result<Survey, EndpointError> {
        let start = Instant::now();
        let mut s = Survey {
            tcp: !crate::registry::flows::tcp_in_sync(self.datapath())?,
            ..Survey::default()
        };
        let all_hooks = hooks.all || self.datapath().other_builds_pinned()?;
        // Records first, then the journal: an endpoint whose operation is still running has
        // its journal entry until it is complete, so it is seen busy, never half-made.
        let records = self.records()?;
        let busy = self.in_flight()?;
        // Entries whose operation still runs are its own; recovery has work only when none
        // runs (the ops lock, taken and let go at once: a writer starting meanwhile waits
        // for that instant only).
        s.journal = !busy.is_empty()
            && crate::datapath::OpsLock::try_exclusive(self.datapath().dir())?.is_some();
        let seen = self.seen(links)?;
        let dumped = start.elapsed();
        let mut containers_took = Duration::ZERO;
        // Program ids our filters and links run: program pins of other builds still in use.
        let mut in_use = BTreeSet::new();
        let mut live: BTreeSet<(Hook, u32)> = BTreeSet::new();
        let n = records.len();
        let first = if n == 0 { 0 } else { *cursor % n };
        let slice = containers.min(n);
        *cursor = if n == 0 { 0 } else { (first + slice) % n };
        for (pos, rec) in records.iter().enumerate() {
            for hook in [Hook::TcIngress, Hook::TcEgress, Hook::Xdp] {
                live.insert((hook, rec.target.ifindex));
            }
            if busy.contains(&get_str(&rec.host_name)) {
                continue; // its operation finishes it
            }
            // The round-robin slice: positions first .. first + slice (mod n).
            let in_slice = (pos + n - first) % n.max(1) < slice;
            let look = Look {
                hooks: all_hooks || in_slice || hooks.named.contains(&rec.target.ifindex),
                container: in_slice,
            };
            let t = Instant::now();
            self.survey_endpoint(&seen, rec, look, &mut s, &mut in_use);
            if look.container {
                containers_took += t.elapsed();
            }
        }
        let looked = start.elapsed();
        s.bridges = new_bridge_ports(&records, &seen.kernel);
        self.survey_uplinks(&seen.kernel, &mut s, &mut live, &mut in_use)?;
        s.prune = self.datapath().would_prune(&live, &in_use)?;
        s.took = start.elapsed();
        log::debug!(
            "survey: dumps {} µs, endpoints {} µs (of which {} container sides {} µs, {} hooks), rest {} µs",
            dumped.as_micros(),
            (looked - dumped).as_micros(),
            s.containers_checked,
            containers_took.as_micros(),
            s.hooks_checked,
            (s.took - looked).as_micros()
        );
        Ok(s)
    }

    /// The node's links (`links`, as the agent's link watch keeps them, or dumped now),
    /// routes and neighbours and the fast path's maps, each dumped once for a survey, and the
    /// programs this build runs.
    fn seen(&mut self, links: Option<HashMap<u32, netlink::Link>>) -> Result<Seen, EndpointError> {
        let kernel = match links {
            Some(l) => l,
            None => netlink::links()?
                .into_iter()
                .map(|l| (l.ifindex, l))
                .collect(),
        };
        let view = match netlink::NodeView::dump() {
            Ok(v) => Some(v),
            Err(e) => {
                log::warn!("listing the node's routes and neighbours: {e}");
                None
            }
        };
        macro_rules! dump {
            ($m:ident) => {{
                let m = self.datapath().$m()?;
                let mut out = std::collections::HashMap::new();
                for (k, v) in m.iter().flatten() {
                    out.insert(k, v);
                }
                out
            }};
        }
        Ok(Seen {
            kernel,
            view,
            ep4: dump!(ep4),
            ep6: dump!(ep6),
            l2: dump!(l2),
            devmap: self
                .datapath()
                .devmap()?
                .keys()
                .filter_map(|k| k.ok())
                .collect(),
            want_in: self.datapath().program_id(Program::TcIngress)?,
            want_l2: self.datapath().program_id(Program::L2Ingress)?,
            want_eg: self.datapath().program_id(Program::TcEgress)?,
            want_xdp: self.datapath().program_id(Program::Xdp)?,
        })
    }

    /// One endpoint of a survey: the first part found wrong, in the order repair fixes them
    /// (gone, hook, devmap, l2 or addresses, node side), then in the round-robin slice the
    /// container side and GRO.
    fn survey_endpoint(
        &mut self,
        seen: &Seen,
        rec: &EndpointRecord,
        look: Look,
        s: &mut Survey,
        in_use: &mut BTreeSet<u32>,
    ) {
        let ifindex = rec.target.ifindex;
        let name = get_str(&rec.host_name);
        let Some(link) = seen.kernel.get(&ifindex).filter(|l| l.name == name) else {
            return suspect(s, rec, "gone");
        };
        s.endpoints += 1;
        if look.hooks {
            s.hooks_checked += 1;
            if !self.hooks_ok(seen, rec, &name, in_use) {
                return suspect(s, rec, "hook");
            }
        }
        if !seen.devmap.contains(&ifindex) {
            return suspect(s, rec, "devmap");
        }
        if rec.flags & EP_BRIDGE_PORT != 0 {
            if seen.l2.get(&rec.target.container_mac) != Some(&rec.target) {
                suspect(s, rec, "l2");
            }
            return;
        }
        let addrs: Vec<Cidr> = record_addrs(rec).collect();
        let published = addrs.iter().all(|a| {
            let t = match a.addr {
                IpAddr::V4(v4) => seen.ep4.get(&v4.octets()),
                IpAddr::V6(v6) => seen.ep6.get(&v6.octets()),
            };
            t == Some(&rec.target)
        });
        if !published {
            // Published for another endpoint is left alone by the repair (logged there).
            return suspect(s, rec, "addr");
        }
        if rec.flags & EP_ADOPTED != 0 {
            return;
        }
        let mac = Mac(rec.target.container_mac);
        if link.up
            && let Some(v) = &seen.view
            && v.missing(ifindex, &super::desired::node_side(&addrs, mac)) > 0
        {
            return suspect(s, rec, "node");
        }
        if look.container
            && let Some(host_mac) = link.mac
        {
            s.containers_checked += 1;
            survey_container(rec, &name, &addrs, host_mac, s);
        }
    }

    /// Whether the endpoint's filters (and XDP link) run this build's programs; notes the
    /// programs they run in `in_use`.
    fn hooks_ok(
        &mut self,
        seen: &Seen,
        rec: &EndpointRecord,
        name: &str,
        in_use: &mut BTreeSet<u32>,
    ) -> bool {
        let ifindex = rec.target.ifindex;
        let ingress = if rec.flags & EP_BRIDGE_PORT != 0 {
            seen.want_l2
        } else {
            seen.want_in
        };
        let mut ok = true;
        for (hook, want) in [(Hook::TcIngress, ingress), (Hook::TcEgress, seen.want_eg)] {
            match self.datapath().link_state(hook, ifindex) {
                Ok(Some(st)) => {
                    in_use.insert(st.prog_id);
                    ok &= st.prog_id == want;
                }
                Ok(None) => ok = false,
                // Gone meanwhile, or a netlink error: the locked half looks again.
                Err(e) => {
                    log::debug!("{name}: listing filters: {e}");
                    ok = false;
                }
            }
        }
        if rec.target.mode == MODE_XDP {
            match self.datapath().link_state(Hook::Xdp, ifindex) {
                Ok(Some(st)) => {
                    in_use.insert(st.prog_id);
                    ok &= st.prog_id == seen.want_xdp;
                }
                _ => ok = false,
            }
        }
        ok
    }

    /// Uplinks gone, or whose links are missing or run another program.
    fn survey_uplinks(
        &mut self,
        kernel: &HashMap<u32, netlink::Link>,
        s: &mut Survey,
        live: &mut BTreeSet<(Hook, u32)>,
        in_use: &mut BTreeSet<u32>,
    ) -> Result<(), EndpointError> {
        let want_up = self.datapath().program_id(Program::UplinkIngress)?;
        let want_up_eg = self.datapath().program_id(Program::UplinkEgress)?;
        for up in self.uplinks()? {
            if kernel.get(&up.ifindex).is_none_or(|l| l.name != up.name) {
                s.uplinks = true;
                continue;
            }
            for (hook, want) in [
                (Hook::UplinkIngress, want_up),
                (Hook::UplinkEgress, want_up_eg),
            ] {
                live.insert((hook, up.ifindex));
                match self.datapath().link_state(hook, up.ifindex) {
                    Ok(Some(st)) => {
                        in_use.insert(st.prog_id);
                        s.uplinks |= st.prog_id != want;
                    }
                    _ => s.uplinks = true,
                }
            }
        }
        Ok(())
    }

    /// The write half of a pass, under the state lock: repairs what [`Registry::survey`]
    /// found, each suspect re-checked first (it may have been fixed, removed or taken over
    /// by an operation meanwhile). Only the suspects' endpoints are touched, each with the
    /// full repair (hooks, maps, node routes and neighbours, container side).
    pub(crate) fn repair_surveyed(&mut self, survey: &Survey) -> Result<Report, EndpointError> {
        let start = Instant::now();
        let mut report = Report::default();
        crate::registry::flows::sync_tcp(self.datapath())?;
        if survey.journal {
            match self.recover() {
                Ok(l) => report.leftovers = l,
                Err(e) => log::warn!("completing interrupted operations (journal): {e}"),
            }
        }
        if !survey.suspects.is_empty() {
            let busy = self.in_flight()?;
            let view = match netlink::NodeView::dump() {
                Ok(v) => Some(v),
                Err(e) => {
                    log::warn!("listing the node's routes and neighbours: {e}");
                    None
                }
            };
            for sus in &survey.suspects {
                if busy.contains(&sus.name) {
                    report.in_flight.push(sus.name.clone());
                    continue;
                }
                // Re-validate: the record must still name this host end.
                let Some(rec) = self.record_by_ifindex(sus.ifindex)? else {
                    continue;
                };
                if crate::registry::get_str(&rec.host_name) != sus.name {
                    continue;
                }
                if gone(sus.ifindex, &sus.name) {
                    match self.remove_by_ifindex(sus.ifindex) {
                        Ok(_) => report.removed.push(sus.name.clone()),
                        Err(e) => log::warn!("removing vanished endpoint {}: {e}", sus.name),
                    }
                    continue;
                }
                self.restore_endpoint(&rec, &sus.name, view.as_ref(), &mut report);
            }
        }
        if survey.bridges {
            self.reaccelerate_bridges(&mut report)?;
        }
        if survey.uplinks {
            self.restore_uplinks(gone, &mut report)?;
        }
        // Programs switched in place, endpoints removed or operations recovered free pins
        // the read saw in use.
        if survey.prune
            || !report.removed.is_empty()
            || !report.removed_uplinks.is_empty()
            || !report.replaced.is_empty()
            || !report.leftovers.is_empty()
        {
            let mut live = BTreeSet::new();
            for ep in self.list()? {
                for hook in [Hook::TcIngress, Hook::TcEgress, Hook::Xdp] {
                    live.insert((hook, ep.host_ifindex));
                }
            }
            for up in self.uplinks()? {
                live.insert((Hook::UplinkIngress, up.ifindex));
                live.insert((Hook::UplinkEgress, up.ifindex));
            }
            let (links, progs) = self.datapath().prune_pins(&live)?;
            report.pruned_link_pins = links;
            report.pruned_prog_pins = progs;
        }
        report.endpoints = survey.endpoints;
        report.took = start.elapsed();
        Ok(report)
    }
}

/// What a survey compares each endpoint with (see [`Registry::survey`]).
struct Seen {
    kernel: HashMap<u32, netlink::Link>,
    view: Option<netlink::NodeView>,
    ep4: HashMap<[u8; 4], Target>,
    ep6: HashMap<[u8; 16], Target>,
    l2: HashMap<[u8; 6], Target>,
    devmap: BTreeSet<u32>,
    want_in: u32,
    want_l2: u32,
    want_eg: u32,
    want_xdp: u32,
}

fn suspect(s: &mut Survey, rec: &EndpointRecord, why: &'static str) {
    s.suspects.push(Suspect {
        ifindex: rec.target.ifindex,
        name: get_str(&rec.host_name),
        why,
    })
}

/// The container side of a survey: what the repair would restore there, counted, and GRO.
/// Skipped when the namespace is gone or is not the endpoint's any more.
fn survey_container(
    rec: &EndpointRecord,
    name: &str,
    addrs: &[Cidr],
    host_mac: Mac,
    s: &mut Survey,
) {
    let Ok(ns) = netlink::Netns::open(&get_str(&rec.netns)) else {
        return;
    };
    if ns.ino() != rec.netns_ino {
        return;
    }
    let peer = get_str(&rec.peer_name);
    let want = super::desired::container_side(addrs, host_mac);
    let at = netlink::At::Container(&ns, &peer);
    match netlink::apply(at, &want, netlink::Apply::Count, None).map(|m| m.total()) {
        Ok(0) => {}
        Ok(_) => suspect(s, rec, "container"),
        Err(e) => log::debug!("{name}: looking at the container side: {e}"),
    }
    if super::container_gro(&ns, &peer, super::wants_gro(rec), true).unwrap_or(false) {
        suspect(s, rec, "gro");
    }
}

/// Whether an accelerated bridge (of a bridge port's record) has a veth port (peer
/// elsewhere) that no record names: a new port.
fn new_bridge_ports(records: &[EndpointRecord], kernel: &HashMap<u32, netlink::Link>) -> bool {
    let mut bridges: Vec<String> = records
        .iter()
        .filter(|r| r.flags & EP_BRIDGE_PORT != 0)
        .map(|r| get_str(&r.network_name))
        .collect();
    bridges.sort();
    bridges.dedup();
    let known: BTreeSet<u32> = records.iter().map(|r| r.target.ifindex).collect();
    bridges.iter().any(|br| {
        kernel.values().find(|l| &l.name == br).is_some_and(|b| {
            kernel.values().any(|l| {
                l.master == Some(b.ifindex)
                    && l.kind.as_deref() == Some("veth")
                    && l.link_netnsid.is_some()
                    && !known.contains(&l.ifindex)
            })
        })
    })
}
