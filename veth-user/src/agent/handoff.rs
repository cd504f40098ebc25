//! TCP hand-off: the agent's half of per-flow TCP acceleration on a stock node (the
//! nf_flowtable model; docs/ARCHITECTURE.md, "TCP hand-off").
//!
//! The datapath reports a TCP flow on the `VFP_HANDOFF` ring buffer once the kernel forwarded
//! both of its directions unchanged after the handshake. For each report this module reads the
//! flow's conntrack entry; if it is ESTABLISHED and ASSURED, untranslated, in the default zone
//! and without a helper, it sets `IP_CT_TCP_FLAG_BE_LIBERAL` on both directions of *that*
//! entry (clearing `IP_CT_TCP_FLAG_MAXACK_SET`, as the kernel's flowtable does when it hands a
//! flow back), and only after the kernel acknowledged that does it set `FLOW_LIBERAL` on the
//! flow, which the fast path requires of TCP. Conntrack then accepts the flow's later kernel
//! path packets (FIN/RST, re-verification) although it did not see the fast-path ones.
//!
//! A conntrack destroy notification of a handed-off flow removes the flow from the table at
//! once (demotion): its next packet goes through the kernel again, which makes a new entry.
//! A periodic check covers what notifications cannot: lost ones (ENOBUFS), entries made
//! before the agent subscribed, flows reported while no agent ran, entries whose flags were
//! changed behind our back. It also sweeps stale entries out of the flow table.
//!
//! Everything runs on one OS thread with its own map descriptors and netlink sockets, so a
//! hand-off never waits for the state lock or a reconciliation pass.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, mpsc as std_mpsc},
    time::Duration,
};

use aya::maps::{Map, MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tracing::{debug, info, warn};
use veth_common::{AF_V4, FLOW_FIN, FLOW_LIBERAL, FlowKey, FlowState, HandoffEvent, MAP_HANDOFF};

use crate::{
    agent::{AbortOnDrop, AgentError, Shared},
    registry::{
        Registry,
        flows::{Clock, FlowStateName},
        node,
    },
    sys::ctnetlink::{
        Conntrack, CtEvent, Entry, IP_CT_TCP_FLAG_BE_LIBERAL, IP_CT_TCP_FLAG_MAXACK_SET,
        IPS_ASSURED, IPS_DST_NAT, IPS_OFFLOAD, IPS_SRC_NAT, TCP_CONNTRACK_ESTABLISHED, Tuple,
        watch_destroy,
    },
};

/// How often the periodic check runs.
pub(crate) const CHECK_INTERVAL: Duration = Duration::from_secs(5);
const BPF_EXIST: u64 = 2;

/// Work for the hand-off thread.
#[derive(Debug)]
enum Cmd {
    /// The datapath reported a flow (CLOCK_MONOTONIC ns of the report).
    Report(FlowKey, u64),
    Destroyed(Tuple),
    /// Periodic check (also after lost notifications).
    Check,
}

/// Handed-off flows by their conntrack tuple (network 0, canonical order) → networks. Shared
/// with the destroy-notification thread, which forwards only the notifications of these flows:
/// on a node with many short connections (none handed off) the hand-off thread is not woken
/// for each of them.
type Index = Arc<Mutex<HashMap<FlowKey, Vec<u32>>>>;

/// The running hand-off: its thread ends when this is dropped (with the agent).
pub(crate) struct Handoff {
    _tasks: Vec<AbortOnDrop>,
}

/// Starts the hand-off thread, the ring buffer reader, the destroy-notification watch and the
/// periodic check. The first check runs right away: flows reported while no agent ran are
/// handed off now.
pub(crate) fn start(shared: &Arc<Shared>) -> Result<Handoff, AgentError> {
    let (tx, rx) = std_mpsc::channel::<Cmd>();
    let dir = shared.dir.clone();
    let sh = shared.clone();
    let index = Index::default();
    let idx = index.clone();
    std::thread::Builder::new()
        .name("vethfp-handoff".into())
        .spawn(move || worker(sh, dir, idx, rx))
        .map_err(|source| AgentError::Io {
            what: "starting the hand-off thread".into(),
            source,
        })?;
    let mut tasks = vec![read_reports(&shared.dir, tx.clone())?];
    follow_destroys(index, tx.clone());
    tasks.push(check_periodically(tx));
    Ok(Handoff { _tasks: tasks })
}

/// The datapath's reports of flows to hand off, read from the ring buffer as they come.
fn read_reports(dir: &Path, t: std_mpsc::Sender<Cmd>) -> Result<AbortOnDrop, AgentError> {
    let map = MapData::from_pin(dir.join(MAP_HANDOFF))
        .map_err(|e| AgentError::BpfLog(format!("opening {MAP_HANDOFF}: {e}")))?;
    let ring = RingBuf::try_from(Map::RingBuf(map))
        .map_err(|e| AgentError::BpfLog(format!("{MAP_HANDOFF} is no ring buffer: {e}")))?;
    // SAFETY: the ring buffer owns its fd and keeps it open, unchanged, until it is dropped,
    // which only happens with the AsyncFd.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| AgentError::Io {
            what: format!("polling {MAP_HANDOFF}"),
            source: e.into(),
        })?;
    Ok(AbortOnDrop(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            let ring = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                if item.len() < size_of::<HandoffEvent>() {
                    continue;
                }
                // SAFETY: the record holds a whole HandoffEvent (checked), any bytes are valid.
                let ev: HandoffEvent =
                    unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<HandoffEvent>()) };
                if t.send(Cmd::Report(ev.key, ev.at_ns)).is_err() {
                    return;
                }
            }
            guard.clear_ready();
        }
    })))
}

/// Conntrack destroy notifications, if the kernel gives them (else the periodic check only):
/// those of handed-off flows go to the hand-off thread, the rest are dropped where they are
/// read. The reading thread ends with the hand-off thread (at its next notification).
fn follow_destroys(index: Index, t: std_mpsc::Sender<Cmd>) {
    let watched = watch_destroy(move |ev| match forwarded(&index, ev) {
        Some(cmd) => t.send(cmd).is_ok(),
        None => true,
    });
    if let Err(e) = watched {
        warn!(
            "conntrack destroy notifications unavailable ({e}); handed-off flows are checked every {}s",
            CHECK_INTERVAL.as_secs()
        );
    }
}

/// What a destroy notification asks of the hand-off thread, if anything: the destruction of a
/// handed-off flow's entry, or a check after lost notifications.
fn forwarded(index: &Index, ev: CtEvent) -> Option<Cmd> {
    match ev {
        CtEvent::Destroyed { orig } => {
            let ours = orig.proto == 6
                && index
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains_key(&Key::of_tuple(&orig));
            ours.then_some(Cmd::Destroyed(orig))
        }
        CtEvent::Overrun => {
            warn!("conntrack destroy notifications were lost; checking every handed-off flow");
            Some(Cmd::Check)
        }
    }
}

/// The periodic check of every handed-off flow.
fn check_periodically(tx: std_mpsc::Sender<Cmd>) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if tx.send(Cmd::Check).is_err() {
                return;
            }
        }
    }))
}

fn worker(shared: Arc<Shared>, dir: PathBuf, index: Index, rx: std_mpsc::Receiver<Cmd>) {
    let mut w = match Worker::open(shared, dir, index) {
        Ok(w) => w,
        Err(e) => {
            warn!("TCP hand-off is off: {e}");
            return;
        }
    };
    while let Ok(cmd) = rx.recv() {
        let r = match cmd {
            Cmd::Report(key, at) => w.hand_off(key, Some(at)),
            Cmd::Destroyed(t) => w.destroyed(&t),
            Cmd::Check => w.check(),
        };
        if let Err(e) = r {
            warn!("TCP hand-off: {e}");
        }
    }
}

/// The outcome of one hand-off attempt.
enum Outcome {
    HandedOff,
    /// Already handed off (nothing to do).
    Already,
    Refused(&'static str),
}

struct Worker {
    shared: Arc<Shared>,
    dir: PathBuf,
    reg: Registry,
    ident: Option<(u64, u64)>,
    ct: Conntrack,
    index: Index,
}

impl Worker {
    fn open(shared: Arc<Shared>, dir: PathBuf, index: Index) -> Result<Worker, AgentError> {
        let reg = Registry::open_read(&dir)?;
        let ct = Conntrack::open().map_err(|e| AgentError::Io {
            what: "opening ctnetlink".into(),
            source: std::io::Error::other(e),
        })?;
        Ok(Worker {
            ident: node::state_identity(&dir),
            shared,
            dir,
            reg,
            ct,
            index,
        })
    }

    fn hand_off(&mut self, key: FlowKey, at_ns: Option<u64>) -> Result<(), AgentError> {
        // Watched for destroy notifications before the entry is made liberal: one that comes
        // while this runs is queued behind it and demotes the flow right after. A flow found
        // liberal already (handed off by an earlier agent) stays watched too.
        let added = self.watch(&key);
        let outcome = self.try_hand_off(&key);
        if added && !matches!(outcome, Ok(Outcome::HandedOff | Outcome::Already)) {
            self.unwatch(&key);
        }
        match outcome? {
            Outcome::HandedOff => {
                let m = &self.shared.metrics;
                m.handoffs.inc();
                if let Some(at) = at_ns {
                    let delay = crate::sys::clock::monotonic_ns().saturating_sub(at);
                    m.handoff_delay.observe(delay as f64 / 1e9);
                }
                debug!(flow = %Key::show(&key), "TCP flow handed off");
            }
            Outcome::Already => {}
            Outcome::Refused(reason) => {
                self.shared.metrics.refused(reason);
                debug!(flow = %Key::show(&key), reason, "TCP hand-off refused");
            }
        }
        Ok(())
    }

    fn index(&self) -> std::sync::MutexGuard<'_, HashMap<FlowKey, Vec<u32>>> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the flow to the index; false if it was there already.
    fn watch(&self, key: &FlowKey) -> bool {
        let mut i = self.index();
        let nets = i.entry(Key::canonical(key)).or_default();
        if nets.contains(&key.network) {
            return false;
        }
        nets.push(key.network);
        true
    }

    fn unwatch(&self, key: &FlowKey) {
        let mut i = self.index();
        let c = Key::canonical(key);
        if let Some(nets) = i.get_mut(&c) {
            nets.retain(|n| *n != key.network);
            if nets.is_empty() {
                i.remove(&c);
            }
        }
    }

    fn try_hand_off(&mut self, key: &FlowKey) -> Result<Outcome, AgentError> {
        let Some(v) = self.flow(key)? else {
            return Ok(Outcome::Refused("flow_gone"));
        };
        if v.flags & (FLOW_FIN[0] | FLOW_FIN[1]) != 0 {
            return Ok(Outcome::Refused("closing"));
        }
        if v.flags & FLOW_LIBERAL != 0 {
            return Ok(Outcome::Already);
        }
        let t = Key::tuple(key);
        let e = match self.ct.get(&t) {
            Ok(Some(e)) => e,
            Ok(None) => return Ok(Outcome::Refused("no_conntrack")),
            Err(e) => {
                warn!(flow = %Key::show(key), "reading the conntrack entry: {e}");
                return Ok(Outcome::Refused("ctnetlink_error"));
            }
        };
        if let Some(reason) = unsuitable(&e) {
            return Ok(Outcome::Refused(reason));
        }
        let maxack = e
            .tcp_flags
            .iter()
            .any(|f| f & IP_CT_TCP_FLAG_MAXACK_SET != 0);
        if !e.liberal() || maxack {
            match self.ct.set_tcp_flags(
                &e.orig,
                IP_CT_TCP_FLAG_BE_LIBERAL,
                IP_CT_TCP_FLAG_BE_LIBERAL | IP_CT_TCP_FLAG_MAXACK_SET,
            ) {
                Ok(true) => {}
                Ok(false) => return Ok(Outcome::Refused("no_conntrack")),
                Err(err) => {
                    warn!(flow = %Key::show(key), "making the conntrack entry liberal: {err}");
                    return Ok(Outcome::Refused("update_failed"));
                }
            }
        }
        // Read the flow again: the datapath may have changed it meanwhile (a FIN, an expiry).
        let Some(mut v) = self.flow(key)? else {
            return Ok(Outcome::Refused("flow_gone"));
        };
        if v.flags & (FLOW_FIN[0] | FLOW_FIN[1]) != 0 {
            return Ok(Outcome::Refused("closing"));
        }
        v.flags |= FLOW_LIBERAL;
        let mut flows = self.reg.datapath().flows()?;
        if flows.insert(key, v, BPF_EXIST).is_err() {
            return Ok(Outcome::Refused("flow_gone"));
        }
        // The packets the kernel saw between the update and the mark (in window, so tracked)
        // set MAXACK_SET again with an ack the fast path then leaves behind: a later RST
        // would not match it, and conntrack would keep the entry ESTABLISHED (for a possible
        // challenge ACK) instead of closing it. Clear it once more, now that the fast path
        // carries the flow.
        self.clear_maxack(&e.orig);
        Ok(Outcome::HandedOff)
    }

    fn clear_maxack(&mut self, orig: &Tuple) {
        if let Err(e) = self.ct.set_tcp_flags(
            orig,
            IP_CT_TCP_FLAG_BE_LIBERAL,
            IP_CT_TCP_FLAG_BE_LIBERAL | IP_CT_TCP_FLAG_MAXACK_SET,
        ) {
            debug!("clearing MAXACK_SET: {e}");
        }
    }

    fn flow(&mut self, key: &FlowKey) -> Result<Option<FlowState>, AgentError> {
        let flows = self.reg.datapath().flows()?;
        Ok(flows.get(key, 0).ok())
    }

    /// A conntrack entry went away: a flow handed off with it leaves the fast path now.
    fn destroyed(&mut self, t: &Tuple) -> Result<(), AgentError> {
        if t.proto != 6 {
            return Ok(());
        }
        let Some(nets) = self.index().remove(&Key::of_tuple(t)) else {
            return Ok(());
        };
        let mut flows = self.reg.datapath().flows()?;
        for n in nets {
            let mut k = Key::of_tuple(t);
            k.network = n;
            if flows.remove(&k).is_ok() {
                self.shared.metrics.demoted("conntrack_destroyed");
                debug!(flow = %Key::show(&k), "conntrack entry destroyed: flow demoted");
            }
        }
        Ok(())
    }

    /// The periodic check: demote handed-off flows whose entry is gone or no longer liberal,
    /// hand off flows that wait, sweep stale entries, rebuild the index.
    fn check(&mut self) -> Result<(), AgentError> {
        if node::state_identity(&self.dir) != self.ident {
            info!("TCP hand-off: the state directory was replaced; re-opening it");
            self.reg = Registry::open_read(&self.dir)?;
            self.ident = node::state_identity(&self.dir);
        }
        let clock = Clock::of(self.reg.datapath())?;
        let entries: Vec<(FlowKey, FlowState)> = self
            .reg
            .datapath()
            .flows()?
            .iter()
            .filter_map(|i| i.ok())
            .collect();
        let mut index: HashMap<FlowKey, Vec<u32>> = HashMap::new();
        let mut waiting = Vec::new();
        let mut doomed: Vec<(FlowKey, Option<&'static str>)> = Vec::new();
        for (k, v) in entries {
            if clock.stale(&k, &v) {
                doomed.push((k, None));
                continue;
            }
            if k.proto != 6 {
                continue;
            }
            if v.flags & FLOW_LIBERAL != 0 && v.flags & (FLOW_FIN[0] | FLOW_FIN[1]) == 0 {
                match self.ct.get(&Key::tuple(&k)) {
                    Ok(None) => doomed.push((k, Some("conntrack_gone"))),
                    Ok(Some(e)) if !e.liberal() => doomed.push((k, Some("conntrack_not_liberal"))),
                    Ok(Some(e)) => {
                        if e.tcp_flags
                            .iter()
                            .any(|f| f & IP_CT_TCP_FLAG_MAXACK_SET != 0)
                        {
                            // Set again by kernel-path packets (re-verification).
                            self.clear_maxack(&e.orig);
                        }
                        index.entry(Key::canonical(&k)).or_default().push(k.network)
                    }
                    Err(e) => {
                        warn!(flow = %Key::show(&k), "checking the conntrack entry: {e}");
                        index.entry(Key::canonical(&k)).or_default().push(k.network);
                    }
                }
            } else if clock.state(&k, &v) == FlowStateName::Waiting {
                waiting.push(k);
            }
        }
        *self.index() = index;
        let mut flows = self.reg.datapath().flows()?;
        for (k, why) in doomed {
            if flows.remove(&k).is_ok() {
                match why {
                    Some(reason) => {
                        self.shared.metrics.demoted(reason);
                        debug!(flow = %Key::show(&k), reason, "flow demoted");
                    }
                    None => {
                        self.shared.metrics.flows_swept.inc();
                    }
                }
            }
        }
        for k in waiting {
            self.hand_off(k, None)?;
        }
        Ok(())
    }
}

/// Why a conntrack entry cannot be handed off, if it cannot.
fn unsuitable(e: &Entry) -> Option<&'static str> {
    if e.status & (IPS_SRC_NAT | IPS_DST_NAT) != 0 || e.reply != e.orig.inverse() {
        Some("nat")
    } else if e.helper {
        Some("helper")
    } else if e.zone != 0 {
        Some("zone")
    } else if e.status & IPS_OFFLOAD != 0 {
        Some("offloaded")
    } else if e.tcp_state != Some(TCP_CONNTRACK_ESTABLISHED) {
        Some("not_established")
    } else if e.status & IPS_ASSURED == 0 {
        Some("not_assured")
    } else {
        None
    }
}

/// Between flow keys and conntrack tuples.
struct Key;

impl Key {
    fn addr(k: &FlowKey, b: &[u8; 16]) -> IpAddr {
        if k.family == AF_V4 {
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(*b))
        }
    }

    /// The flow's lower end → higher end direction as a conntrack tuple.
    fn tuple(k: &FlowKey) -> Tuple {
        Tuple {
            proto: k.proto,
            src: Key::addr(k, &k.addr_lo),
            dst: Key::addr(k, &k.addr_hi),
            sport: u16::from_be_bytes(k.port_lo),
            dport: u16::from_be_bytes(k.port_hi),
        }
    }

    /// The flow key of a conntrack tuple, in the datapath's canonical order, network 0.
    fn of_tuple(t: &Tuple) -> FlowKey {
        let bytes = |a: IpAddr| -> [u8; 16] {
            match a {
                IpAddr::V4(v) => {
                    let mut b = [0u8; 16];
                    b[..4].copy_from_slice(&v.octets());
                    b
                }
                IpAddr::V6(v) => v.octets(),
            }
        };
        let (s, d) = (bytes(t.src), bytes(t.dst));
        let fwd = (s, t.sport) <= (d, t.dport);
        let ((lo, plo), (hi, phi)) = if fwd {
            ((s, t.sport), (d, t.dport))
        } else {
            ((d, t.dport), (s, t.sport))
        };
        FlowKey {
            family: if t.src.is_ipv4() {
                AF_V4
            } else {
                veth_common::AF_V6
            },
            proto: t.proto,
            _pad: [0; 2],
            network: 0,
            addr_lo: lo,
            addr_hi: hi,
            port_lo: plo.to_be_bytes(),
            port_hi: phi.to_be_bytes(),
        }
    }

    fn canonical(k: &FlowKey) -> FlowKey {
        FlowKey { network: 0, ..*k }
    }

    fn show(k: &FlowKey) -> String {
        let t = Key::tuple(k);
        format!("{}:{} <-> {}:{}", t.src, t.sport, t.dst, t.dport)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tuple in either direction maps to the key the datapath builds (lower end first), and
    /// back to the lower → higher tuple.
    #[test]
    fn tuples_and_keys_agree_with_the_datapath_order() {
        let t = Tuple {
            proto: 6,
            src: "10.0.0.3".parse().unwrap(),
            dst: "10.0.0.2".parse().unwrap(),
            sport: 80,
            dport: 40000,
        };
        let k = Key::of_tuple(&t);
        assert_eq!(k, Key::of_tuple(&t.inverse()));
        assert_eq!(&k.addr_lo[..4], &[10, 0, 0, 2]);
        assert_eq!(u16::from_be_bytes(k.port_lo), 40000);
        assert_eq!(Key::tuple(&k), t.inverse());
        // Same address: the lower port is the lower end.
        let same = Tuple {
            proto: 6,
            src: "fd00::2".parse().unwrap(),
            dst: "fd00::2".parse().unwrap(),
            sport: 9000,
            dport: 80,
        };
        let k = Key::of_tuple(&same);
        assert_eq!(u16::from_be_bytes(k.port_lo), 80);
        assert_eq!(k.family, veth_common::AF_V6);
    }

    /// Only the destroy notifications of handed-off flows (either direction of the tuple)
    /// reach the hand-off thread; the others end where they are read.
    #[test]
    fn only_handed_off_flows_destroy_notifications_are_forwarded() {
        let ours = entry().orig;
        let other = Tuple {
            sport: 40001,
            ..ours
        };
        let index = Index::default();
        let mut k = Key::of_tuple(&ours);
        k.network = 7;
        index
            .lock()
            .unwrap()
            .insert(Key::canonical(&k), vec![k.network]);
        let ev = |orig| CtEvent::Destroyed { orig };
        let got = |ev| forwarded(&index, ev);
        assert!(matches!(got(ev(ours)), Some(Cmd::Destroyed(t)) if t == ours));
        assert!(matches!(got(ev(ours.inverse())), Some(Cmd::Destroyed(_))));
        assert!(got(ev(other)).is_none(), "a flow never handed off");
        assert!(
            got(ev(Tuple { proto: 17, ..ours })).is_none(),
            "UDP is never handed off"
        );
        assert!(matches!(got(CtEvent::Overrun), Some(Cmd::Check)));
        index.lock().unwrap().clear();
        assert!(got(ev(ours)).is_none(), "demoted: no longer forwarded");
    }

    fn entry() -> Entry {
        let orig = Tuple {
            proto: 6,
            src: "10.0.0.2".parse().unwrap(),
            dst: "10.0.0.3".parse().unwrap(),
            sport: 40000,
            dport: 80,
        };
        Entry {
            orig,
            reply: orig.inverse(),
            status: IPS_ASSURED,
            tcp_state: Some(TCP_CONNTRACK_ESTABLISHED),
            tcp_flags: [0, 0],
            helper: false,
            zone: 0,
        }
    }

    #[test]
    fn only_plain_established_assured_entries_are_handed_off() {
        assert_eq!(unsuitable(&entry()), None);
        let cases: [(&str, Entry); 7] = [
            (
                "nat",
                Entry {
                    status: IPS_ASSURED | IPS_DST_NAT,
                    ..entry()
                },
            ),
            (
                "nat",
                Entry {
                    reply: Tuple {
                        sport: 8080,
                        ..entry().reply
                    },
                    ..entry()
                },
            ),
            (
                "helper",
                Entry {
                    helper: true,
                    ..entry()
                },
            ),
            ("zone", Entry { zone: 3, ..entry() }),
            (
                "offloaded",
                Entry {
                    status: IPS_ASSURED | IPS_OFFLOAD,
                    ..entry()
                },
            ),
            (
                "not_established",
                Entry {
                    tcp_state: Some(4),
                    ..entry()
                },
            ),
            (
                "not_assured",
                Entry {
                    status: 0,
                    ..entry()
                },
            ),
        ];
        for (want, e) in cases {
            assert_eq!(unsuitable(&e), Some(want), "{e:?}");
        }
    }
}
