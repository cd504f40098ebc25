//! Admission: which flows the fast path may carry (see docs/ARCHITECTURE.md, "Admission").
//!
//! - `netfilter` (default): a flow takes the fast path once the kernel forwarded it unchanged
//!   in both directions; NAT'd or dropped flows never do. TCP per flow while the agent runs
//!   (it hands each flow's conntrack entry over: [`TcpMode::Handoff`]); without the agent only
//!   while the node's conntrack is liberal about TCP windows (or absent): [`tcp_admissible`].
//! - `always`: every packet between endpoints of one network (no NAT, no firewall).

use std::{
    collections::HashMap as StdHashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::Serialize;
use veth_common::{
    AF_V4, CFG_ADMIT_ALWAYS, CFG_ADMIT_TCP, CFG_TCP_HANDOFF, CONFIG_IDLE, CONFIG_REVERIFY,
    DEFAULT_IDLE_S, DEFAULT_REVERIFY_S, FLOW_ADMITTED, FLOW_FIN, FLOW_LIBERAL, FLOW_STAT_NAMES,
    FlowKey, FlowState, FlowStats,
};

use crate::{
    datapath::{Datapath, DatapathError},
    registry::{EndpointError, Registry},
    sys::lock,
};

/// The sysctl that decides whether TCP flows may be admitted (read in the node namespace).
pub const TCP_BE_LIBERAL: &str = "/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Admission {
    /// The kernel admits each flow (netfilter, conntrack, NAT decide); then vethfp accelerates.
    Netfilter,
    /// Every packet between endpoints of one network takes the fast path.
    Always,
}

impl std::str::FromStr for Admission {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "netfilter" => Ok(Admission::Netfilter),
            "always" => Ok(Admission::Always),
            _ => Err(format!("admission mode {s:?}: use netfilter or always")),
        }
    }
}

impl std::fmt::Display for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Registry {
    /// The node-wide admission mode of this state.
    pub fn admission(&mut self) -> Result<Admission, EndpointError> {
        Ok(Admission::of_flags(self.dp.flags()?))
    }

    /// Sets the node-wide admission mode (see [`Admission`]); takes effect with the next
    /// packet. Switching to `netfilter` starts with an empty flow table.
    pub fn set_admission(&mut self, mode: Admission) -> Result<(), EndpointError> {
        Ok(set(&mut self.dp, mode)?)
    }

    /// Every entry of the admission flow table, admitted first.
    pub fn flows(&mut self) -> Result<Vec<FlowView>, EndpointError> {
        list(self)
    }

    /// Empties the flow table (every flow is admitted by the kernel again); returns how many
    /// entries were removed.
    pub fn flush_flows(&mut self) -> Result<usize, EndpointError> {
        Ok(flush(&mut self.dp)?)
    }
}

impl Admission {
    pub(crate) fn of_flags(flags: u32) -> Admission {
        if flags & CFG_ADMIT_ALWAYS != 0 {
            Admission::Always
        } else {
            Admission::Netfilter
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Admission::Netfilter => "netfilter",
            Admission::Always => "always",
        }
    }
}

/// Why TCP is or is not admitted, as `status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TcpAdmission {
    /// nf_conntrack_tcp_be_liberal = 1.
    Liberal,
    /// No conntrack in the node namespace.
    NoConntrack,
    /// nf_conntrack_tcp_be_liberal = 0: TCP stays on the kernel path.
    Strict,
}

/// TCP flows may be admitted only while conntrack does not check TCP windows: it does not see
/// an admitted flow's packets, so its window state goes stale and the FIN/RST would be INVALID
/// (and dropped by the usual `--ctstate INVALID -j DROP`). vethfp never sets the sysctl.
pub fn tcp_admissible() -> TcpAdmission {
    match std::fs::read_to_string(TCP_BE_LIBERAL) {
        Ok(v) if v.trim() == "0" => TcpAdmission::Strict,
        Ok(_) => TcpAdmission::Liberal,
        Err(_) => TcpAdmission::NoConntrack,
    }
}

/// How TCP flows are accelerated under `netfilter` admission, as `status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TcpMode {
    /// Per flow: the agent makes each admitted flow's conntrack entry liberal first.
    Handoff,
    /// Per flow, but no agent runs now: flows handed off stay fast, new ones wait on the
    /// kernel path for the next agent.
    HandoffNoAgent,
    /// Node-wide: no agent, and the node's conntrack is liberal (or absent).
    NodeWide,
    /// Not accelerated: no agent, and the node's conntrack checks TCP windows.
    Off,
}

impl TcpMode {
    pub(crate) fn of(flags: u32, agent: bool) -> TcpMode {
        if flags & CFG_TCP_HANDOFF != 0 {
            if agent {
                TcpMode::Handoff
            } else {
                TcpMode::HandoffNoAgent
            }
        } else if flags & CFG_ADMIT_TCP != 0 {
            TcpMode::NodeWide
        } else {
            TcpMode::Off
        }
    }
}

/// The subdirectory of the state dir an agent holds a shared flock on while it runs.
pub const AGENT_DIR: &str = "agent";

/// Marks this process as the state's agent until the returned descriptor is closed (also by
/// SIGKILL: the kernel drops the lock with the process).
pub fn hold_agent_lock(dir: &std::path::Path) -> std::io::Result<std::os::fd::OwnedFd> {
    let path = dir.join(AGENT_DIR);
    match std::fs::create_dir(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let fd = std::fs::File::open(&path)?;
    lock::flock(&fd, lock::LOCK_SH)?;
    Ok(fd.into())
}

/// Is an agent running on the state in `dir` (holding [`hold_agent_lock`])?
pub fn agent_running(dir: &std::path::Path) -> bool {
    let Ok(fd) = std::fs::File::open(dir.join(AGENT_DIR)) else {
        return false;
    };
    // A lock we get is dropped with the descriptor.
    lock::flock(&fd, lock::LOCK_EX | lock::LOCK_NB)
        .is_err_and(|e| e.raw_os_error() == Some(libc::EWOULDBLOCK))
}

/// Sets how TCP is admitted (every write operation, every reconcile): per-flow hand-off
/// (`CFG_TCP_HANDOFF`) while an agent runs, else node-wide (`CFG_ADMIT_TCP`) while the node's
/// conntrack is liberal, else not at all.
pub fn sync_tcp(dp: &mut Datapath) -> Result<(), DatapathError> {
    let (flags, want) = tcp_flags(dp)?;
    if want != flags {
        dp.set_flags(want)?;
    }
    Ok(())
}

/// True if [`sync_tcp`] would change nothing (a read: no lock needed).
pub(crate) fn tcp_in_sync(dp: &mut Datapath) -> Result<bool, DatapathError> {
    let (flags, want) = tcp_flags(dp)?;
    Ok(flags == want)
}

/// (config flags now, config flags [`sync_tcp`] wants).
fn tcp_flags(dp: &mut Datapath) -> Result<(u32, u32), DatapathError> {
    let flags = dp.flags()?;
    let base = flags & !(CFG_ADMIT_TCP | CFG_TCP_HANDOFF);
    let conntrack = tcp_admissible();
    let want = if conntrack == TcpAdmission::NoConntrack {
        base | CFG_ADMIT_TCP // nothing to hand over: no conntrack sees the flows
    } else if agent_running(dp.dir()) {
        base | CFG_TCP_HANDOFF
    } else if conntrack == TcpAdmission::Liberal {
        base | CFG_ADMIT_TCP
    } else {
        base
    };
    Ok((flags, want))
}

/// Sets the node-wide admission mode. Takes effect with the next packet; nothing is
/// reattached. Switching to `netfilter` starts with an empty flow table.
pub fn set(dp: &mut Datapath, mode: Admission) -> Result<(), DatapathError> {
    let flags = dp.flags()?;
    let flags = match mode {
        Admission::Always => flags | CFG_ADMIT_ALWAYS,
        Admission::Netfilter => flags & !CFG_ADMIT_ALWAYS,
    };
    dp.set_flags(flags)?;
    sync_tcp(dp)?;
    if mode == Admission::Netfilter {
        flush(dp)?;
    }
    Ok(())
}

/// Empties the flow table: every flow is admitted by the kernel again. Returns how many
/// entries were removed.
pub fn flush(dp: &mut Datapath) -> Result<usize, DatapathError> {
    let mut flows = dp.flows()?;
    let keys: Vec<FlowKey> = flows.keys().filter_map(|k| k.ok()).collect();
    let mut n = 0;
    for k in keys {
        if flows.remove(&k).is_ok() {
            n += 1;
        }
    }
    Ok(n)
}

/// Removes every flow with an end at one of `addrs` (an endpoint going away: a later endpoint
/// with the same address must be admitted by the kernel afresh). Returns how many.
pub fn forget(dp: &mut Datapath, addrs: &[IpAddr]) -> Result<usize, DatapathError> {
    if addrs.is_empty() {
        return Ok(0);
    }
    let mut flows = dp.flows()?;
    let doomed: Vec<FlowKey> = flows
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| {
            addrs
                .iter()
                .any(|a| *a == addr_of(k, &k.addr_lo) || *a == addr_of(k, &k.addr_hi))
        })
        .collect();
    let mut n = 0;
    for k in doomed {
        if flows.remove(&k).is_ok() {
            n += 1;
        }
    }
    Ok(n)
}

/// Flow table fill and node flow counters (`status`, /metrics).
#[derive(Debug, Clone, Serialize)]
pub struct FlowTable {
    pub entries: usize,
    /// Flows whose next packet takes the fast path.
    pub admitted: usize,
    /// Flows waiting for the kernel to forward them (both directions, unchanged).
    pub pending: usize,
    /// TCP flows confirmed by the kernel, waiting for the agent's hand-off.
    pub waiting: usize,
    /// TCP flows after a FIN (kernel path until the last ACK removes them).
    pub closing: usize,
    /// Admitted flows due for re-verification by the kernel (their next packet takes it).
    pub expired: usize,
    /// TCP flows whose conntrack entry the agent made liberal.
    pub handed_off: usize,
    pub capacity: u32,
    pub reverify_seconds: u32,
    pub idle_seconds: u32,
    /// Node counters since the state was made: created, admitted, torn_down, expired,
    /// insert_failed. LRU evictions are not visible to BPF (see docs/ARCHITECTURE.md).
    pub counters: std::collections::BTreeMap<&'static str, u64>,
}

pub fn table(dp: &mut Datapath) -> Result<FlowTable, DatapathError> {
    let stats: FlowStats = dp.flow_stats()?;
    let clock = Clock::of(dp)?;
    let mut t = FlowTable {
        entries: 0,
        admitted: 0,
        pending: 0,
        waiting: 0,
        closing: 0,
        expired: 0,
        handed_off: 0,
        capacity: dp.flow_table_size(),
        reverify_seconds: clock.reverify_s,
        idle_seconds: clock.idle_s,
        counters: Default::default(),
    };
    for item in dp.flows()?.iter() {
        let Ok((k, v)) = item else { continue };
        t.entries += 1;
        if v.flags & FLOW_LIBERAL != 0 {
            t.handed_off += 1;
        }
        *match clock.state(&k, &v) {
            FlowStateName::Admitted => &mut t.admitted,
            FlowStateName::Pending => &mut t.pending,
            FlowStateName::Waiting => &mut t.waiting,
            FlowStateName::Closing => &mut t.closing,
            FlowStateName::Expired => &mut t.expired,
        } += 1;
    }
    Ok(FlowTable {
        counters: FLOW_STAT_NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| (*n, stats.c[i]))
            .collect(),
        ..t
    })
}

/// What the datapath does with a flow's next packet (see `veth-ebpf/src/dp/flow.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowStateName {
    /// Fast path.
    Admitted,
    /// TCP confirmed by the kernel, waiting for the agent's hand-off (kernel path).
    Waiting,
    /// Due for re-verification: the next packet takes the kernel path and re-confirms it.
    Expired,
    /// Not yet forwarded unchanged both ways by the kernel (kernel path).
    Pending,
    /// TCP after a FIN (kernel path until the last ACK).
    Closing,
}

impl FlowStateName {
    pub fn name(self) -> &'static str {
        match self {
            FlowStateName::Admitted => "admitted",
            FlowStateName::Waiting => "waiting",
            FlowStateName::Expired => "expired",
            FlowStateName::Pending => "pending",
            FlowStateName::Closing => "closing",
        }
    }
}

/// The datapath's clock and the flow timers, to judge entries as the datapath does.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    pub(crate) now: u64,
    pub(crate) reverify_s: u32,
    pub(crate) idle_s: u32,
    pub(crate) flags: u32,
}

impl Clock {
    pub(crate) fn of(dp: &mut Datapath) -> Result<Clock, DatapathError> {
        let slot = |dp: &mut Datapath, s: u32, d: u32| -> Result<u32, DatapathError> {
            let v = dp.config_slot(s)?;
            Ok(if v == 0 { d } else { v })
        };
        Ok(Clock {
            now: crate::sys::clock::monotonic_coarse_ns(),
            reverify_s: slot(dp, CONFIG_REVERIFY, DEFAULT_REVERIFY_S)?,
            idle_s: slot(dp, CONFIG_IDLE, DEFAULT_IDLE_S)?,
            flags: dp.flags()?,
        })
    }

    /// Does this TCP flow need the agent's hand-off before it may take the fast path?
    pub(crate) fn needs_handoff(&self, k: &FlowKey) -> bool {
        k.proto == 6 && self.flags & CFG_ADMIT_TCP == 0
    }

    pub(crate) fn state(&self, k: &FlowKey, v: &FlowState) -> FlowStateName {
        if v.flags & (FLOW_FIN[0] | FLOW_FIN[1]) != 0 {
            return FlowStateName::Closing;
        }
        if v.flags & FLOW_ADMITTED != FLOW_ADMITTED {
            return FlowStateName::Pending;
        }
        if self.needs_handoff(k) && v.flags & FLOW_LIBERAL == 0 {
            return FlowStateName::Waiting;
        }
        let s = 1_000_000_000u64;
        if self.now.saturating_sub(v.admitted_at) >= self.reverify_s as u64 * s
            || self.now.saturating_sub(v.last_seen) >= self.idle_s as u64 * s
        {
            return FlowStateName::Expired;
        }
        FlowStateName::Admitted
    }

    /// An entry nothing will make fast again without the kernel: pending or expired for
    /// longer than twice the idle time, closing for longer than half of it (removed by the
    /// agent's sweep; its flow, if it lives on, is noted afresh by its next packet).
    ///
    /// Closing entries go sooner: a close normally removes its entry at the last ACK, so one
    /// that stays is a half of a flow the kernel rewrote (a DNAT'd Service flow: each direction
    /// is its own entry, and neither sees both FINs) or a close whose last packets were lost.
    pub(crate) fn stale(&self, k: &FlowKey, v: &FlowState) -> bool {
        let s = 1_000_000_000u64;
        let limit = match self.state(k, v) {
            FlowStateName::Admitted | FlowStateName::Waiting => return false,
            FlowStateName::Closing => (self.idle_s as u64 / 2).max(1) * s,
            FlowStateName::Pending | FlowStateName::Expired => 2 * self.idle_s as u64 * s,
        };
        self.now.saturating_sub(v.last_seen) > limit
    }
}

/// One flow as `vethfp flows` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FlowView {
    pub proto: &'static str,
    /// "addr:port" of the lower end (`[v6]:port`; ICMP: the echo id as port).
    pub a: String,
    pub b: String,
    /// Host interface of the endpoint owning each end, if it is local.
    pub a_endpoint: Option<String>,
    pub b_endpoint: Option<String>,
    pub network: u32,
    /// What the datapath does with the flow's next packet: "admitted" (fast path),
    /// "waiting" (TCP: for the agent's hand-off), "expired" (due for re-verification),
    /// "pending" or "closing" (kernel path).
    pub state: &'static str,
    /// TCP: "handed_off" (the agent made its conntrack entry liberal), "waiting" (confirmed,
    /// not yet handed off), "not_needed" (node-wide liberal conntrack); None otherwise.
    pub handoff: Option<&'static str>,
    /// Seconds since admission (admitted flows).
    pub age_seconds: Option<f64>,
    /// Fast-path packets since admission.
    pub packets: u64,
}

fn addr_of(k: &FlowKey, b: &[u8; 16]) -> IpAddr {
    if k.family == AF_V4 {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*b))
    }
}

/// Every entry of the flow table, admitted first.
pub fn list(reg: &mut Registry) -> Result<Vec<FlowView>, EndpointError> {
    let owners: StdHashMap<IpAddr, String> = reg
        .list()?
        .into_iter()
        .flat_map(|e| {
            let name = e.host_if.clone();
            e.addrs
                .into_iter()
                .map(move |a| (a.addr, name.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let clock = Clock::of(reg.datapath())?;
    let now = clock.now;
    let mut out = Vec::new();
    let entries: Vec<(FlowKey, FlowState)> = reg
        .datapath()
        .flows()?
        .iter()
        .filter_map(|i| i.ok())
        .collect();
    for (k, v) in entries {
        let (a, b) = (addr_of(&k, &k.addr_lo), addr_of(&k, &k.addr_hi));
        let end = |ip: IpAddr, port: [u8; 2]| match ip {
            IpAddr::V4(_) => format!("{ip}:{}", u16::from_be_bytes(port)),
            IpAddr::V6(_) => format!("[{ip}]:{}", u16::from_be_bytes(port)),
        };
        let state = clock.state(&k, &v);
        let admitted = v.flags & FLOW_ADMITTED == FLOW_ADMITTED;
        let handoff = (k.proto == 6).then(|| {
            if v.flags & FLOW_LIBERAL != 0 {
                "handed_off"
            } else if !clock.needs_handoff(&k) {
                "not_needed"
            } else {
                "waiting"
            }
        });
        out.push(FlowView {
            proto: match k.proto {
                6 => "tcp",
                17 => "udp",
                1 => "icmp",
                58 => "icmpv6",
                _ => "other",
            },
            a: end(a, k.port_lo),
            b: end(b, k.port_hi),
            a_endpoint: owners.get(&a).cloned(),
            b_endpoint: owners.get(&b).cloned(),
            network: k.network,
            state: state.name(),
            handoff,
            age_seconds: admitted
                .then(|| now.saturating_sub(v.admitted_at) as f64 / 1e9)
                .map(|s| (s * 10.0).round() / 10.0),
            packets: v.packets,
        });
    }
    out.sort_by(|x, y| (x.state, &x.a, &x.b).cmp(&(y.state, &y.a, &y.b)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_reads_and_writes_its_names() {
        for a in [Admission::Netfilter, Admission::Always] {
            assert_eq!(a.name().parse::<Admission>(), Ok(a));
            assert_eq!(serde_json::to_value(a).unwrap(), a.name());
        }
        assert!("fast".parse::<Admission>().is_err());
    }

    const S: u64 = 1_000_000_000;

    fn tcp() -> FlowKey {
        FlowKey {
            family: AF_V4,
            proto: 6,
            _pad: [0; 2],
            network: 1,
            addr_lo: [0; 16],
            addr_hi: [0; 16],
            port_lo: [0; 2],
            port_hi: [0; 2],
        }
    }

    fn entry(flags: u64, last_seen: u64) -> FlowState {
        FlowState {
            flags,
            egress_ifindex: [0; 2],
            admitted_at: last_seen,
            last_seen,
            packets: 0,
        }
    }

    fn clock(now: u64) -> Clock {
        Clock {
            now,
            reverify_s: DEFAULT_REVERIFY_S,
            idle_s: 20,
            flags: CFG_TCP_HANDOFF,
        }
    }

    #[test]
    fn closing_entries_go_after_half_the_idle_time_pending_after_twice_it() {
        let k = tcp();
        let closing = entry(FLOW_FIN[1], 100 * S);
        let pending = entry(0, 100 * S);
        let waiting = entry(FLOW_ADMITTED, 100 * S);
        assert_eq!(clock(105 * S).state(&k, &closing), FlowStateName::Closing);
        assert!(!clock(109 * S).stale(&k, &closing));
        assert!(clock(111 * S).stale(&k, &closing));
        assert_eq!(clock(111 * S).state(&k, &pending), FlowStateName::Pending);
        assert!(!clock(139 * S).stale(&k, &pending));
        assert!(clock(141 * S).stale(&k, &pending));
        // A TCP flow waiting for the agent is never swept: the agent decides about it.
        assert_eq!(clock(1000 * S).state(&k, &waiting), FlowStateName::Waiting);
        assert!(!clock(1000 * S).stale(&k, &waiting));
    }
}
