//! The endpoint registry: adding or removing an endpoint is netlink + maps + links, done under
//! the state lock, with rollback of everything created when a step fails.
//!
//! The registry itself is the `VFP_ENDPOINTS` map (host ifindex → [`EndpointRecord`]), pinned
//! next to the datapath, so every process sees the same state and nothing lives in files.

pub mod bridges;
pub mod flows;
pub(crate) mod node;
pub mod reconcile;

/// The container's gateways (link-local, on-link via the host end).
pub(crate) use crate::sys::netlink::{GATEWAY_V4, GATEWAY_V6};

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
};

use serde::Serialize;
use veth_common::{
    AF_V4, AF_V6, CFG_EGRESS_FAST, CFG_FASTPATH_OFF, CONTAINER_ID_LEN, CniOwner, Counters,
    DIR_FROM_CONTAINER, DIR_NAMES, DIR_TO_CONTAINER, EP_ADOPTED, EP_BRIDGE_PORT, EP_SPOOF_AUDIT,
    EP_SPOOF_ENFORCE, EndpointAddr, EndpointRecord, INTENT_ADD, INTENT_DEL, Intent, MAX_ADDRS,
    MAX_SLOTS, MODE_XDP, NAME_LEN, NETNS_LEN, PacketBytes, Target, Uplink, V_FAST_UPLINK, V_STACK,
    VERDICT_NAMES,
};

use crate::{
    datapath::{
        Datapath, DatapathError, OpsLock, StateLock, current_netns_cookie, prepare_bpffs_made,
        remove_made_dirs,
    },
    sys::netlink::{self, NetlinkError, Netns, VethRequest},
    types::{Cidr, IfName, Mac, Mode, Spoof},
};

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("at least one --addr is required (e.g. --addr 10.0.0.2/24)")]
    NoAddr,
    #[error("{0} addresses given: an endpoint has at most {MAX_ADDRS}")]
    TooManyAddrs(usize),
    #[error("address {0} is given twice")]
    DuplicateAddr(IpAddr),
    #[error("address {addr} already belongs to endpoint {owner}: each address can be used once")]
    AddrInUse { addr: IpAddr, owner: String },
    #[error("MTU {0} is out of range: use 68 to 65535")]
    Mtu(u32),
    #[error(
        "interface {0} already exists in the node: choose another name, or `vethfp pair del {0}` if it is an old endpoint"
    )]
    HostExists(String),
    #[error("no endpoint named {0}: `vethfp pair list` shows the endpoints")]
    NotFound(String),
    #[error(
        "the endpoint's container end could not get GRO on ({0}); XDP redirects into it would be dropped"
    )]
    Gro(String),
    #[error("{0} is not a veth interface: only veth host ends can be adopted")]
    NotVeth(String),
    #[error(
        "no interface named {0} in the node (for `uplink attach`), or it is not an attached uplink (for `uplink detach`): see `ip link` and `vethfp status`"
    )]
    NoSuchUplink(String),
    #[error("{0} is an endpoint's host end, not an uplink")]
    UplinkIsEndpoint(String),
    #[error("no bridge named {0} in the node: see `ip -br link show type bridge`")]
    NoSuchBridge(String),
    #[error("not accelerating: {0} (pass --force to accelerate anyway)")]
    BridgeRefused(String),
    #[error(
        "not accelerating the new ports of {bridge}: {reason}. The fast path set up earlier stays in place on {kept} and skips this; `vethfp bridge release {bridge}` puts them back on the bridge path (or pass --force to accelerate anyway)"
    )]
    BridgeRefusedKept {
        bridge: String,
        reason: String,
        kept: String,
    },
    #[error("state directory entry {path}: {source}")]
    State {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("all {0} counter slots are in use: remove endpoints or uplinks first")]
    Full(usize),
    #[error("XDP devmap update failed: {0}")]
    Devmap(String),
    #[error("netns '{0}' is longer than {max} bytes", max = NETNS_LEN - 1)]
    NetnsTooLong(String),
    #[error(
        "{name} was not made by this state ({dir}): {why}; vethfp only deletes or changes \
         interfaces it created and recorded under the same --bpffs"
    )]
    NotOurs {
        name: String,
        dir: String,
        why: String,
    },
    #[error(
        "--netns {0} is the node's own network namespace (the one vethfp runs in): give the \
         container's namespace"
    )]
    NodeNetns(String),
    #[error(
        "state {dir} belongs to another live network namespace (netns cookie {owner}, {live} \
         interface(s) still attached there); this process runs in netns cookie {here}: use a \
         separate --bpffs directory per node namespace"
    )]
    OtherNamespace {
        dir: String,
        owner: u64,
        here: u64,
        live: usize,
    },
    #[error("reading this network namespace's cookie (SO_NETNS_COOKIE): {0}")]
    Cookie(std::io::Error),
    #[error("mode bridge is set by `vethfp bridge accelerate`, not per endpoint: use tc or xdp")]
    BridgeMode,
    #[error("BPF map {what}: {source}")]
    Map {
        what: &'static str,
        source: aya::maps::MapError,
    },
}

type Result<T, E = EndpointError> = std::result::Result<T, E>;

/// The ABI value of a mode a request may ask for.
fn mode_raw(mode: Mode) -> Result<u32> {
    match mode {
        Mode::Tc => Ok(veth_common::MODE_TC),
        Mode::Xdp => Ok(MODE_XDP),
        Mode::Bridge => Err(EndpointError::BridgeMode),
    }
}

fn map_err(what: &'static str) -> impl FnOnce(aya::maps::MapError) -> EndpointError {
    move |source| EndpointError::Map { what, source }
}

/// What `pair add` asks for.
#[derive(Debug, Clone)]
pub struct AddRequest {
    pub host: IfName,
    pub netns: String,
    pub ifname: IfName,
    pub addrs: Vec<Cidr>,
    pub mtu: Option<u32>,
    pub mac: Option<Mac>,
    /// Network (isolation domain) name; "default" if empty.
    pub network: String,
    /// Anti-spoofing of the container's source addresses.
    pub spoof: Spoof,
    /// [`Mode::Tc`] or [`Mode::Xdp`].
    pub mode: Mode,
    /// Extra `EP_*` record flags (e.g. `EP_CNI`).
    pub(crate) flags: u32,
    /// CNI (container ID, ifname) this endpoint is added for; recorded in `VFP_CNI_OWNERS`.
    pub(crate) cni_owner: Option<(String, String)>,
}

impl AddRequest {
    /// A request with the defaults of `vethfp pair add`: container end `eth0`, kernel MTU,
    /// random MAC, network `default`, spoofing enforced, TC mode.
    pub fn new(host: IfName, netns: impl Into<String>, addrs: Vec<Cidr>) -> AddRequest {
        AddRequest {
            host,
            netns: netns.into(),
            ifname: "eth0".parse().expect("eth0 is a valid interface name"),
            addrs,
            mtu: None,
            mac: None,
            network: "default".into(),
            spoof: Spoof::Enforce,
            mode: Mode::Tc,
            flags: 0,
            cni_owner: None,
        }
    }

    fn record_flags(&self) -> u32 {
        self.flags | spoof_flags(self.spoof)
    }
}

impl AdoptRequest {
    /// Adopt the veth pair `host` (node) ↔ `ifname` (in `netns`), spoofing enforced, network
    /// `default`.
    pub fn new(
        host: IfName,
        netns: impl Into<String>,
        ifname: impl Into<String>,
        container_mac: Mac,
        addrs: Vec<Cidr>,
    ) -> AdoptRequest {
        AdoptRequest {
            host,
            netns: netns.into(),
            ifname: ifname.into(),
            container_mac,
            addrs,
            network: "default".into(),
            spoof: Spoof::Enforce,
            flags: 0,
            cni_owner: None,
        }
    }
}

fn spoof_flags(s: Spoof) -> u32 {
    match s {
        Spoof::Enforce => EP_SPOOF_ENFORCE,
        Spoof::Audit => EP_SPOOF_AUDIT,
        Spoof::Off => 0,
    }
}

/// What `adopt` asks for: an existing veth pair made by someone else.
#[derive(Debug, Clone)]
pub struct AdoptRequest {
    /// Host end, in the node.
    pub host: IfName,
    /// Container netns (name under /run/netns or path).
    pub netns: String,
    /// Container end name inside the netns.
    pub ifname: String,
    pub container_mac: Mac,
    pub addrs: Vec<Cidr>,
    /// Network (isolation domain) name; "default" if empty.
    pub network: String,
    /// Anti-spoofing of the container's source addresses.
    pub spoof: Spoof,
    /// Extra `EP_*` record flags (e.g. `EP_CNI`).
    pub(crate) flags: u32,
    /// CNI (container ID, ifname) this endpoint is added for; recorded in `VFP_CNI_OWNERS`.
    pub(crate) cni_owner: Option<(String, String)>,
}

/// One endpoint as `pair list` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EndpointView {
    pub host_if: String,
    pub host_ifindex: u32,
    pub host_mac: Mac,
    pub netns: String,
    pub ifname: String,
    pub container_mac: Mac,
    pub addrs: Vec<Cidr>,
    pub mtu: u32,
    pub mode: Mode,
    pub network: String,
    pub network_id: u32,
    pub spoof: Spoof,
    /// Made by someone else and adopted (CNI chaining, bridge bypass).
    pub adopted: bool,
}

/// An attached uplink.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UplinkView {
    pub name: String,
    pub ifindex: u32,
}

impl From<&Uplink> for UplinkView {
    fn from(u: &Uplink) -> Self {
        UplinkView {
            name: get_str(&u.name),
            ifindex: u.ifindex,
        }
    }
}

/// An uplink with its counters: `received_fast` went straight into a container,
/// `received_stack` to the node's stack, `sent_fast` came straight from a container.
#[derive(Debug, Clone)]
pub struct UplinkStatus {
    pub uplink: UplinkView,
    pub counters: Counters,
}

impl Serialize for UplinkStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let c = &self.counters.c;
        let pb = |d: usize, v: usize| serde_json::json!({"packets": c[d][v].packets, "bytes": c[d][v].bytes});
        let mut m = s.serialize_map(Some(5))?;
        m.serialize_entry("name", &self.uplink.name)?;
        m.serialize_entry("ifindex", &self.uplink.ifindex)?;
        m.serialize_entry("received_fast", &pb(DIR_TO_CONTAINER, V_FAST_UPLINK))?;
        m.serialize_entry("received_stack", &pb(DIR_TO_CONTAINER, V_STACK))?;
        m.serialize_entry("sent_fast", &pb(DIR_FROM_CONTAINER, V_FAST_UPLINK))?;
        m.end()
    }
}

/// `vethfp status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub bpffs: String,
    /// The version of the vethfp that created or last upgraded the state (its datapath);
    /// None if that vethfp did not record it (0.1.0).
    pub datapath_version: Option<String>,
    /// This vethfp's version.
    pub version: &'static str,
    pub endpoints: usize,
    pub fast_path: bool,
    /// "fast" or "kernel".
    pub egress: &'static str,
    /// "netfilter" or "always".
    pub admission: &'static str,
    /// Whether TCP flows may be admitted under `netfilter` (in the flags now).
    pub tcp_admitted: bool,
    /// How TCP is accelerated under `netfilter`: per flow by the agent, node-wide, or not.
    pub tcp: crate::registry::flows::TcpMode,
    /// The node's conntrack TCP policy as read now.
    pub tcp_conntrack: crate::registry::flows::TcpAdmission,
    pub flow_table: crate::registry::flows::FlowTable,
    pub uplinks: Vec<UplinkStatus>,
}

/// Counters of one endpoint, summed over CPUs.
#[derive(Debug, Clone)]
pub struct EndpointStats {
    pub host_if: String,
    pub host_ifindex: u32,
    pub counters: Counters,
}

impl Serialize for EndpointStats {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        #[derive(Serialize)]
        struct Pb {
            packets: u64,
            bytes: u64,
        }
        let mut m = s.serialize_map(Some(2 + DIR_NAMES.len()))?;
        m.serialize_entry("host_if", &self.host_if)?;
        m.serialize_entry("host_ifindex", &self.host_ifindex)?;
        for (d, dname) in DIR_NAMES.iter().enumerate() {
            let by_verdict: BTreeMap<&str, Pb> = VERDICT_NAMES
                .iter()
                .enumerate()
                .filter(|(_, n)| **n != "reserved")
                .map(|(v, n)| {
                    let PacketBytes { packets, bytes } = self.counters.c[d][v];
                    (*n, Pb { packets, bytes })
                })
                .collect();
            m.serialize_entry(dname, &by_verdict)?;
        }
        m.end()
    }
}

fn set_container_tx_csum(ns: &Netns, ifname: &str, on: bool) -> Result<(), NetlinkError> {
    netlink::in_netns(ns, || {
        crate::sys::ethtool::set_tx_csum(ifname, on).map_err(|e| NetlinkError::Io {
            op: format!(
                "turning TX checksum offload {} on {ifname}",
                if on { "on" } else { "off" }
            ),
            source: e,
        })
    })
}

fn set_network(rec: &mut EndpointRecord, name: &str) {
    rec.target.network = network_id(name);
    put_str(&mut rec.network_name, network_name(name));
}

fn network_name(name: &str) -> &str {
    if name.is_empty() { "default" } else { name }
}

/// The id of a network: 0 for "default", else FNV-1a of the name (never 0). Stable across
/// processes and versions, so no table of names is needed to compare networks in the datapath.
pub fn network_id(name: &str) -> u32 {
    let name = network_name(name);
    if name == "default" {
        return 0;
    }
    crate::types::fnv1a32(name.bytes()).max(1)
}

/// GRO (and with it NAPI) on the container end of an `xdp` endpoint, so XDP-mode senders can
/// redirect into it; off on a `tc` endpoint's, whose frames from XDP senders go through tcx
/// (see sys/ethtool.rs for why GRO costs the kernel path). Returns whether it changed
/// anything; `dry` only compares.
pub(crate) fn container_gro(
    ns: &Netns,
    ifname: &str,
    on: bool,
    dry: bool,
) -> Result<bool, NetlinkError> {
    netlink::in_netns(ns, || {
        let io = |op: &str, e| NetlinkError::Io {
            op: format!("{op} GRO on {ifname}"),
            source: e,
        };
        if crate::sys::ethtool::gro(ifname).map_err(|e| io("reading", e))? == on {
            return Ok(false);
        }
        if !dry {
            crate::sys::ethtool::set_gro(ifname, on)
                .map_err(|e| io(if on { "enabling" } else { "disabling" }, e))?;
        }
        Ok(true)
    })
}

/// The GRO setting an endpoint's container end should have: on only in `xdp` mode.
pub(crate) fn wants_gro(rec: &EndpointRecord) -> bool {
    rec.target.mode == MODE_XDP
}

fn make_record(
    target: Target,
    netns_ino: u64,
    host: &str,
    peer: &str,
    netns: &str,
    addrs: &[Cidr],
    flags: u32,
) -> EndpointRecord {
    let mut rec = EndpointRecord {
        netns_ino,
        target,
        naddrs: addrs.len() as u32,
        flags,
        ..Default::default()
    };
    put_str(&mut rec.host_name[..NAME_LEN], host);
    put_str(&mut rec.peer_name[..NAME_LEN], peer);
    put_str(&mut rec.netns, netns);
    for (slot, a) in rec.addrs.iter_mut().zip(addrs) {
        slot.prefix = a.prefix;
        match a.addr {
            IpAddr::V4(v4) => {
                slot.family = AF_V4;
                slot.addr[..4].copy_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                slot.family = AF_V6;
                slot.addr = v6.octets();
            }
        }
    }
    rec
}

fn name_key(name: &str) -> [u8; NAME_LEN] {
    let mut k = [0; NAME_LEN];
    put_str(&mut k, name);
    k
}

fn put_str(dst: &mut [u8], s: &str) {
    let n = s.len().min(dst.len() - 1);
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
}

fn get_str(src: &[u8]) -> String {
    let n = src.iter().position(|b| *b == 0).unwrap_or(src.len());
    String::from_utf8_lossy(&src[..n]).into_owned()
}

/// The addresses an endpoint record holds.
fn record_addrs(rec: &EndpointRecord) -> impl Iterator<Item = Cidr> + '_ {
    rec.addrs[..(rec.naddrs as usize).min(MAX_ADDRS)]
        .iter()
        .filter_map(cidr_of)
}

fn cidr_of(a: &EndpointAddr) -> Option<Cidr> {
    let addr = match a.family {
        AF_V4 => IpAddr::from([a.addr[0], a.addr[1], a.addr[2], a.addr[3]]),
        AF_V6 => IpAddr::from(a.addr),
        _ => return None,
    };
    Some(Cidr {
        addr,
        prefix: a.prefix,
    })
}

impl EndpointView {
    fn from_record(r: &EndpointRecord) -> EndpointView {
        EndpointView {
            host_if: get_str(&r.host_name),
            host_ifindex: r.target.ifindex,
            host_mac: Mac(r.target.host_mac),
            netns: get_str(&r.netns),
            ifname: get_str(&r.peer_name),
            container_mac: Mac(r.target.container_mac),
            addrs: r.addrs[..(r.naddrs as usize).min(MAX_ADDRS)]
                .iter()
                .filter_map(cidr_of)
                .collect(),
            mtu: r.target.mtu,
            mode: if r.flags & EP_BRIDGE_PORT != 0 {
                Mode::Bridge
            } else if r.target.mode == MODE_XDP {
                Mode::Xdp
            } else {
                Mode::Tc
            },
            network: get_str(&r.network_name),
            network_id: r.target.network,
            spoof: if r.flags & EP_SPOOF_ENFORCE != 0 {
                Spoof::Enforce
            } else if r.flags & EP_SPOOF_AUDIT != 0 {
                Spoof::Audit
            } else {
                Spoof::Off
            },
            adopted: r.flags & EP_ADOPTED != 0,
        }
    }
}

/// What the kernel part of `add` made.
struct Made {
    host_ifindex: u32,
    container_mac: Mac,
    mtu: u32,
}

/// Something `add` created, undone in reverse order if a later step fails.
enum Undo {
    Link(u32),
    Record(u32),
    Links(u32),
    Addr(IpAddr),
    Devmap(u32),
    Uplink(u32),
    UplinkLink(u32),
    L2([u8; 6]),
    CniOwner(u32),
}

/// Options for [`Registry::open_with`]; they apply when a state's maps are first created (an
/// existing state keeps its sizes).
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Capacity of the admission flow table (LRU).
    pub flow_table_size: u32,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            flow_table_size: veth_common::DEFAULT_FLOW_TABLE_SIZE,
        }
    }
}

/// The registry over the pinned state in one bpffs directory.
pub struct Registry {
    dp: Datapath,
    /// The state lock (exclusive), held except while an operation does kernel work (see
    /// [`Registry::unlocked`]); None when opened for reading, or for the agent, which locks
    /// per operation itself.
    lock: Option<StateLock>,
    /// Shared for a writer's lifetime: journal recovery waits until no operation is in flight.
    _ops: Option<OpsLock>,
    /// One scan of `VFP_ENDPOINTS` per locked step: an `add` asks for the records several
    /// times (name, addresses, free slot), each a syscall per entry. Dropped on every change
    /// of the map through [`Registry::endpoint_map`] and whenever the lock was let go.
    snapshot: Option<Vec<EndpointRecord>>,
}

impl Registry {
    /// Opens for changes: the state lock is held until the registry is dropped, so concurrent
    /// processes (CLI calls, the agent) never interleave their updates.
    pub fn open(dir: &Path) -> Result<Registry> {
        Self::open_with(dir, &OpenOptions::default())
    }

    /// [`Registry::open`] with options that apply when the state's maps are first created.
    pub fn open_with(dir: &Path, opts: &OpenOptions) -> Result<Registry> {
        crate::datapath::set_flow_table_size(opts.flow_table_size);
        // A refused or failed open leaves no directory it made behind (nor any pin: see
        // Datapath::open_checked).
        let made = prepare_bpffs_made(dir)?;
        let r = Self::open_locked(dir);
        if r.is_err() {
            remove_made_dirs(&made);
        }
        r
    }

    fn open_locked(dir: &Path) -> Result<Registry> {
        // One-time work that needs no lock, done before it: concurrent writers queue for it.
        crate::datapath::detect_features();
        if let Err(e) = netlink::warm() {
            log::debug!("netlink session: {e}"); // the first real call reports it
        }
        let lock = StateLock::acquire(dir)?;
        let dp = Datapath::open_checked(dir, Self::check_owner)?;
        let mut reg = Registry {
            dp,
            lock: Some(lock),
            _ops: None,
            snapshot: None,
        };
        reg.bind(true)?;
        // Every write operation re-reads the node's conntrack TCP policy (see admission.rs).
        crate::registry::flows::sync_tcp(&mut reg.dp)?;
        for (name, what) in reg.recover()? {
            log::warn!("{name}: {what}");
        }
        // From here on this process is an operation in flight: nobody recovers its intents.
        // Never blocks: whoever holds it exclusively holds the state lock too, and we do.
        reg._ops = Some(OpsLock::shared(dir)?);
        Ok(reg)
    }

    /// Opens for reading only (list, stats): no lock, so a long `stats --watch` never blocks
    /// writers. Each map read is atomic per entry.
    pub fn open_read(dir: &Path) -> Result<Registry> {
        Self::open_read_with(dir, &OpenOptions::default())
    }

    /// [`Registry::open_read`] with options that apply if this call creates the state.
    pub fn open_read_with(dir: &Path, opts: &OpenOptions) -> Result<Registry> {
        crate::datapath::set_flow_table_size(opts.flow_table_size);
        let dp = Datapath::open_checked(dir, Self::check_owner)?;
        let mut reg = Registry {
            dp,
            lock: None,
            _ops: None,
            snapshot: None,
        };
        reg.bind(false)?;
        Ok(reg)
    }

    /// Binds the state to the node namespace it is used from (netns cookie in config slots
    /// 6–7). A call from another namespace is refused while the owner is alive (any pinned
    /// link still attached to a device); once every recorded interface is gone, the first
    /// write clears the stale state and binds it to the caller.
    pub(crate) fn bind(&mut self, write: bool) -> Result<()> {
        let here = current_netns_cookie().map_err(EndpointError::Cookie)?;
        let bound = self.dp.netns_cookie()?;
        if bound == here {
            if write && self.dp.state_id()? == 0 {
                self.dp.new_state_id()?;
            }
            return Ok(());
        }
        if bound == 0 {
            if write {
                // A state made before the binding existed: it is this node's from now on.
                self.dp.set_netns_cookie(here)?;
                if self.dp.state_id()? == 0 {
                    self.dp.new_state_id()?;
                }
            }
            return Ok(());
        }
        Self::check_owner(&mut self.dp)?;
        let dir = self.dp.dir().display().to_string();
        if !write {
            log::warn!(
                "state {dir} was made in network namespace cookie {bound}, which has none of its \
                 interfaces any more (this is cookie {here}): its records are stale; the next \
                 write clears them"
            );
            return Ok(());
        }
        let n = self.clear_stale()?;
        self.dp.set_netns_cookie(here)?;
        let id = self.dp.new_state_id()?;
        log::warn!(
            "state {dir} belonged to network namespace cookie {bound}, whose interfaces are all \
             gone: cleared its {n} stale endpoint record(s); now bound to this namespace \
             (cookie {here}, state id {id:016x})"
        );
        Ok(())
    }

    /// Refuses a state bound to another node namespace that is still alive (any of its
    /// interfaces still attached). Reads only: run on the state as found, before anything is
    /// loaded or pinned ([`Datapath::open_checked`]).
    fn check_owner(dp: &mut Datapath) -> Result<()> {
        let here = current_netns_cookie().map_err(EndpointError::Cookie)?;
        let bound = dp.netns_cookie()?;
        if bound == 0 || bound == here {
            return Ok(());
        }
        let live = dp.attached_link_ifindexes().len();
        if live > 0 {
            return Err(EndpointError::OtherNamespace {
                dir: dp.dir().display().to_string(),
                owner: bound,
                here,
                live,
            });
        }
        Ok(())
    }

    /// Empties every map of a state whose node namespace is gone and removes its (detached)
    /// link pins. Never touches a link: the ifindexes in there mean other devices here.
    fn clear_stale(&mut self) -> Result<usize> {
        let n = self.records()?.len();
        self.snapshot = None;
        macro_rules! clear {
            ($m:ident, $what:literal) => {{
                let keys: Vec<_> = self
                    .dp
                    .$m()?
                    .keys()
                    .collect::<std::result::Result<_, _>>()
                    .map_err(map_err($what))?;
                let mut m = self.dp.$m()?;
                for k in keys {
                    let _ = m.remove(&k);
                }
            }};
        }
        clear!(ep4, "VFP_EP4");
        clear!(ep6, "VFP_EP6");
        clear!(l2, "VFP_L2");
        clear!(endpoints, "VFP_ENDPOINTS");
        clear!(uplinks, "VFP_UPLINKS");
        clear!(journal, "VFP_JOURNAL");
        clear!(cni_owners, "VFP_CNI_OWNERS");
        let keys: Vec<u32> = self
            .dp
            .devmap()?
            .keys()
            .collect::<std::result::Result<_, _>>()
            .map_err(map_err("VFP_DEVMAP"))?;
        for k in keys {
            let _ = self.dp.devmap()?.remove(k);
        }
        let _ = self.dp.prune_pins(&Default::default());
        Ok(n)
    }

    // ---------------------------------------------------------------------------------------
    // The journal (see docs/ARCHITECTURE.md, "Ownership").

    fn intend(
        &mut self,
        op: u32,
        name: &str,
        mac: Mac,
        ifindex: u32,
        netns_ino: u64,
    ) -> Result<()> {
        let intent = Intent {
            op,
            ifindex,
            mac: mac.0,
            _pad: [0; 2],
            netns_ino,
            time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        self.dp
            .journal()?
            .insert(name_key(name), intent, 0)
            .map_err(map_err("VFP_JOURNAL"))
    }

    /// Host names with a journal entry: after [`Registry::recover`] ran, operations in flight
    /// in other processes (between their locked steps). Their endpoints are theirs to finish:
    /// a repair would republish what a running `pair del` just took out of the fast path.
    pub(crate) fn in_flight(&mut self) -> Result<BTreeSet<String>> {
        self.dp
            .journal()?
            .keys()
            .map(|k| k.map(|k| get_str(&k)))
            .collect::<std::result::Result<_, _>>()
            .map_err(map_err("VFP_JOURNAL"))
    }

    fn done(&mut self, name: &str) {
        match self.dp.journal() {
            Ok(mut j) => {
                let _ = j.remove(&name_key(name));
            }
            Err(e) => log::warn!("{name}: clearing its journal entry: {e}"),
        }
    }

    /// Completes or rolls back every operation the journal holds (a process killed half-way;
    /// live operations hold the state lock, so whatever is in there was interrupted):
    /// - an add whose record exists is completed (links, devmap, addresses repaired);
    /// - an add without record is rolled back: its link (same name AND exact MAC) is deleted;
    /// - a del is completed.
    ///
    /// Returns (host name, what was done).
    pub(crate) fn recover(&mut self) -> Result<Vec<(String, String)>> {
        // Operations in flight (other processes between their locked steps) own their
        // intents: recover only when none is running; the next writer retries.
        let Some(_quiet) = OpsLock::try_exclusive(self.dp.dir())? else {
            return Ok(Vec::new());
        };
        let entries: Vec<([u8; NAME_LEN], Intent)> = self
            .dp
            .journal()?
            .iter()
            .collect::<std::result::Result<_, _>>()
            .map_err(map_err("VFP_JOURNAL"))?;
        let mut out = Vec::new();
        for (key, intent) in entries {
            let name = get_str(&key);
            let rec = self
                .record_by_name(&name)?
                .filter(|r| r.target.host_mac == intent.mac);
            let link =
                netlink::link_by_name(&name)?.filter(|l| l.mac.is_some_and(|m| m.0 == intent.mac));
            let what = match (intent.op, rec) {
                (INTENT_ADD, Some(rec)) => {
                    let parts = self.repair_endpoint(&rec)?;
                    self.ensure_links(&rec);
                    format!("completed an interrupted pair add (repaired: {parts:?})")
                }
                (_, Some(rec)) => {
                    self.remove_record(&rec)?;
                    "completed an interrupted pair del".to_string()
                }
                (op, None) => {
                    if let Some(link) = &link {
                        self.remove_leftover(link)?;
                    } else if intent.ifindex != 0 {
                        self.dp.detach(intent.ifindex)?;
                    }
                    if op == INTENT_ADD {
                        "rolled back an interrupted pair add".to_string()
                    } else {
                        "completed an interrupted pair del".to_string()
                    }
                }
            };
            self.done(&name);
            out.push((name, what));
        }
        Ok(out)
    }

    /// Attaches whatever link of the endpoint is missing (see [`Datapath::ensure_link`]).
    fn ensure_links(&mut self, rec: &EndpointRecord) {
        use crate::datapath::{
            HOOK_TC_EGRESS, HOOK_TC_INGRESS, HOOK_XDP, PROG_L2_INGRESS, PROG_TC_EGRESS,
            PROG_TC_INGRESS, PROG_XDP,
        };
        let name = get_str(&rec.host_name);
        let ifindex = rec.target.ifindex;
        let ingress = if rec.flags & EP_BRIDGE_PORT != 0 {
            PROG_L2_INGRESS
        } else {
            PROG_TC_INGRESS
        };
        let mut hooks = vec![(HOOK_TC_INGRESS, ingress), (HOOK_TC_EGRESS, PROG_TC_EGRESS)];
        if rec.target.mode == MODE_XDP {
            hooks.push((HOOK_XDP, PROG_XDP));
        }
        for (hook, prog) in hooks {
            if let Err(e) = self.dp.ensure_link(&name, ifindex, hook, prog) {
                log::warn!("{name}: {hook} link: {e}");
            }
        }
    }

    /// Checks every map entry and node-side kernel object of a live endpoint and restores
    /// what is missing or wrong: its devmap entry, each address in `VFP_EP4`/`VFP_EP6` with
    /// the record's target (L2 entry for bridge ports), the node's /32 and /128 routes and
    /// permanent neighbours, and (pairs vethfp made) the container side
    /// ([`netlink::repair_container`]). Returns the parts repaired (one name per repair).
    pub(crate) fn repair_endpoint(&mut self, rec: &EndpointRecord) -> Result<Vec<&'static str>> {
        self.repair_endpoint_with(rec, None)
    }

    /// [`Registry::repair_endpoint`] with the node's routes and neighbours dumped once for a
    /// whole pass.
    pub(crate) fn repair_endpoint_with(
        &mut self,
        rec: &EndpointRecord,
        view: Option<&netlink::NodeView>,
    ) -> Result<Vec<&'static str>> {
        let mut parts = Vec::new();
        let ifindex = rec.target.ifindex;
        let name = get_str(&rec.host_name);
        let Some(link) = netlink::link_by_index(ifindex)? else {
            return Ok(parts);
        };
        if link.name != name {
            return Ok(parts);
        }
        if self.dp.devmap()?.get(ifindex, 0).is_err() {
            self.dp
                .devmap()?
                .insert(ifindex, ifindex, None, 0)
                .map_err(|e| EndpointError::Devmap(e.to_string()))?;
            parts.push("devmap");
        }
        if rec.flags & EP_BRIDGE_PORT != 0 {
            let l2 = self.dp.l2()?.get(&rec.target.container_mac, 0).ok();
            if l2 != Some(rec.target) {
                self.dp
                    .l2()?
                    .insert(rec.target.container_mac, rec.target, 0)
                    .map_err(map_err("VFP_L2"))?;
                parts.push("l2");
            }
            return Ok(parts);
        }
        let records = self.records()?;
        let addrs: Vec<Cidr> = record_addrs(rec).collect();
        for a in &addrs {
            let current = match a.addr {
                IpAddr::V4(v4) => self.dp.ep4()?.get(&v4.octets(), 0).ok(),
                IpAddr::V6(v6) => self.dp.ep6()?.get(&v6.octets(), 0).ok(),
            };
            if current == Some(rec.target) {
                continue;
            }
            if let Some(t) = current
                && t.ifindex != ifindex
                && records.iter().any(|r| r.target.ifindex == t.ifindex)
            {
                log::warn!(
                    "{name}: address {} is published for ifindex {} (another endpoint): left alone",
                    a.addr,
                    t.ifindex
                );
                continue;
            }
            self.publish(a.addr, rec.target)?;
            parts.push(if a.is_v4() { "addr_v4" } else { "addr_v6" });
        }
        if rec.flags & EP_ADOPTED == 0 {
            let r = netlink::repair_node(ifindex, &addrs, Mac(rec.target.container_mac), view)?;
            parts.extend(std::iter::repeat_n("route", r.routes));
            parts.extend(std::iter::repeat_n("neighbour", r.neighbours));
            if let Some(mac) = link.mac {
                let n = self.repair_container(rec, &addrs, mac)?;
                parts.extend(std::iter::repeat_n("container", n));
            }
        }
        Ok(parts)
    }

    /// The container side of an endpoint vethfp made: restores its container end's
    /// addresses, gateway neighbours and routes ([`netlink::repair_container`]). Skipped when
    /// the namespace is gone or is not the one the endpoint was made in (its inode differs).
    fn repair_container(
        &mut self,
        rec: &EndpointRecord,
        addrs: &[Cidr],
        host_mac: Mac,
    ) -> Result<usize> {
        let spec = get_str(&rec.netns);
        let Ok(ns) = Netns::open(&spec) else {
            return Ok(0);
        };
        if ns.ino() != rec.netns_ino {
            return Ok(0);
        }
        let peer = get_str(&rec.peer_name);
        let mut n = netlink::repair_container(&ns, &peer, addrs, host_mac)?;
        // A state made before GRO followed the mode has it on for every container end.
        match container_gro(&ns, &peer, wants_gro(rec), false) {
            Ok(changed) => n += usize::from(changed),
            Err(e) => log::debug!("{peer}: GRO left as it is: {e}"),
        }
        Ok(n)
    }

    /// The record of host ifindex `ifindex`, if any.
    pub(crate) fn record_by_ifindex(&mut self, ifindex: u32) -> Result<Option<EndpointRecord>> {
        match self.endpoint_map()?.get(&ifindex, 0) {
            Ok(r) => Ok(Some(r)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err("VFP_ENDPOINTS")(e)),
        }
    }

    /// The CNI (container ID, ifname) recorded for host ifindex `ifindex`.
    pub(crate) fn cni_owner(&mut self, ifindex: u32) -> Result<Option<(String, String)>> {
        match self.dp.cni_owners()?.get(&ifindex, 0) {
            Ok(o) => Ok(Some((get_str(&o.container_id), get_str(&o.ifname)))),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err("VFP_CNI_OWNERS")(e)),
        }
    }

    fn set_cni_owner(
        &mut self,
        ifindex: u32,
        owner: &Option<(String, String)>,
        undo: &mut Vec<Undo>,
    ) -> Result<()> {
        let Some((id, ifname)) = owner else {
            return Ok(());
        };
        let mut o = CniOwner::default();
        put_str(&mut o.container_id[..CONTAINER_ID_LEN], id);
        put_str(&mut o.ifname, ifname);
        self.dp
            .cni_owners()?
            .insert(ifindex, o, 0)
            .map_err(map_err("VFP_CNI_OWNERS"))?;
        undo.push(Undo::CniOwner(ifindex));
        Ok(())
    }

    pub(crate) fn datapath(&mut self) -> &mut Datapath {
        &mut self.dp
    }

    /// Runs `f` without the state lock (kernel work: veth create and delete, addresses,
    /// routes), then takes the lock again. The operation's journal intent, written under the
    /// lock before, marks what `f` creates as ours; the ops lock keeps recovery away from it.
    /// A registry opened without the lock just runs `f`.
    pub(crate) fn unlocked<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> Result<T> {
        let held = self.lock.take().is_some();
        let r = f(self);
        if held {
            self.snapshot = None;
            self.lock = Some(StateLock::acquire(self.dp.dir())?);
        }
        Ok(r)
    }

    fn records(&mut self) -> Result<Vec<EndpointRecord>> {
        // Only a locked writer may trust a snapshot: nobody else changes the map meanwhile.
        if self.lock.is_some()
            && let Some(s) = &self.snapshot
        {
            return Ok(s.clone());
        }
        let map = self.dp.endpoints()?;
        let mut out = Vec::new();
        for item in map.iter() {
            let (_, rec) = item.map_err(map_err("VFP_ENDPOINTS"))?;
            out.push(rec);
        }
        out.sort_by_key(|r| r.host_name);
        if self.lock.is_some() {
            self.snapshot = Some(out.clone());
        }
        Ok(out)
    }

    /// `VFP_ENDPOINTS` for a change (or a single lookup): drops the records snapshot.
    fn endpoint_map(
        &mut self,
    ) -> Result<aya::maps::HashMap<&mut aya::maps::MapData, u32, EndpointRecord>> {
        self.snapshot = None;
        Ok(self.dp.endpoints()?)
    }

    fn record_by_name(&mut self, name: &str) -> Result<Option<EndpointRecord>> {
        // Usually the link of that name is the endpoint: one netlink lookup and one map
        // lookup instead of a walk of the whole endpoint map (2 syscalls per endpoint: 2 ms
        // at 1000 endpoints). Anything else (link gone, renamed, someone else's) walks.
        if self.snapshot.is_none()
            && let Ok(Some(link)) = netlink::link_by_name(name)
            && let Ok(rec) = self.dp.endpoints()?.get(&link.ifindex, 0)
            && get_str(&rec.host_name) == name
        {
            return Ok(Some(rec));
        }
        Ok(self
            .records()?
            .into_iter()
            .find(|r| get_str(&r.host_name) == name))
    }

    fn owner_of(&mut self, addr: IpAddr) -> Result<Option<u32>> {
        let found = match addr {
            IpAddr::V4(a) => self.dp.ep4()?.get(&a.octets(), 0),
            IpAddr::V6(a) => self.dp.ep6()?.get(&a.octets(), 0),
        };
        match found {
            Ok(t) => Ok(Some(t.ifindex)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(EndpointError::Map {
                what: "endpoint address",
                source: e,
            }),
        }
    }

    fn validate(&mut self, req: &AddRequest) -> Result<()> {
        if let Some(m) = req.mtu
            && !(68..=65535).contains(&m)
        {
            return Err(EndpointError::Mtu(m));
        }
        if req.netns.len() >= NETNS_LEN {
            return Err(EndpointError::NetnsTooLong(req.netns.clone()));
        }
        self.check_addrs(&req.addrs)?;
        // Leftovers of interrupted operations were completed or rolled back when the
        // registry was opened (the journal): whatever has this name now is not ours.
        if netlink::link_by_name(req.host.as_str())?.is_some() {
            return Err(EndpointError::HostExists(req.host.to_string()));
        }
        Ok(())
    }

    /// Why `link` (no record, no intent of this state) is not ours, for the refusal.
    fn not_ours(&self, link: &netlink::Link) -> EndpointError {
        let marked = link.alias.as_deref() == Some(netlink::OWNER_ALIAS)
            || link.mac.is_some_and(|m| m.is_owned());
        let why = if marked {
            format!(
                "it looks like a vethfp host end (MAC {}) but no record or intent of this state \
                 names it with that MAC: another state dir (--bpffs) or someone else owns it",
                link.mac
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "none".into())
            )
        } else {
            format!(
                "this state has no record or intent for it (kind {}, MAC {})",
                link.kind.as_deref().unwrap_or("unknown"),
                link.mac
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "none".into())
            )
        };
        EndpointError::NotOurs {
            name: link.name.clone(),
            dir: self.dp.dir().display().to_string(),
            why,
        }
    }

    fn remove_leftover(&mut self, link: &netlink::Link) -> Result<()> {
        self.dp.detach_with_veth(link.ifindex)?; // its filters go with the veth
        let _ = self.dp.devmap()?.remove(link.ifindex);
        netlink::delete_link(link.ifindex)?;
        Ok(())
    }

    fn check_addrs(&mut self, addrs: &[Cidr]) -> Result<()> {
        if addrs.is_empty() {
            return Err(EndpointError::NoAddr);
        }
        if addrs.len() > MAX_ADDRS {
            return Err(EndpointError::TooManyAddrs(addrs.len()));
        }
        for (i, a) in addrs.iter().enumerate() {
            if addrs[..i].iter().any(|b| b.addr == a.addr) {
                return Err(EndpointError::DuplicateAddr(a.addr));
            }
        }
        let records = self.records()?;
        for a in addrs {
            if let Some(owner) = self.owner_of(a.addr)?
                && !records.iter().any(|r| r.target.ifindex == owner)
            {
                // Published by an endpoint that no longer exists (interrupted del): stale.
                self.unpublish(a.addr)?;
            }
            if let Some(owner) = self.owner_of(a.addr)? {
                let owner = self
                    .records()?
                    .into_iter()
                    .find(|r| r.target.ifindex == owner)
                    .map(|r| get_str(&r.host_name))
                    .unwrap_or_else(|| format!("ifindex {owner}"));
                return Err(EndpointError::AddrInUse {
                    addr: a.addr,
                    owner,
                });
            }
        }
        Ok(())
    }

    /// Creates the pair, configures routed mode on both sides, registers the endpoint and
    /// attaches the fast path. All or nothing.
    pub fn add(&mut self, req: &AddRequest) -> Result<EndpointView> {
        self.validate(req)?;
        let ns = Netns::open(&req.netns)?;
        if ns.ino() == netlink::current_netns_ino()? {
            return Err(EndpointError::NodeNetns(req.netns.clone()));
        }
        // Record before create: the exact MAC is chosen now and journaled with the name, so
        // whoever finds this half-made (a later call, the agent) knows the link is ours.
        let host_mac = Mac::random_owned();
        let name = req.host.as_str();
        self.intend(INTENT_ADD, name, host_mac, 0, ns.ino())?;
        let mut undo = Vec::new();
        // The kernel work runs unlocked (concurrent ADDs overlap it); the map updates that
        // make the endpoint visible are done under the lock again.
        let made = self
            .unlocked(|me| me.add_kernel(req, &ns, host_mac, &mut undo))
            .and_then(|r| r);
        let r = made.and_then(|k| self.add_register(req, &ns, host_mac, k, &mut undo));
        if r.is_err() {
            self.rollback(undo);
            // A rollback that could not delete the link keeps the intent: the next write
            // (or the agent) retries, and still knows the link is ours.
            if netlink::link_by_name(name)
                .ok()
                .flatten()
                .is_some_and(|l| l.mac == Some(host_mac))
            {
                return r;
            }
        }
        self.done(name);
        r
    }

    /// The kernel part of `add`: the pair, the container's and the node's configuration.
    fn add_kernel(
        &mut self,
        req: &AddRequest,
        ns: &Netns,
        host_mac: Mac,
        undo: &mut Vec<Undo>,
    ) -> Result<Made> {
        let container_mac = req.mac.unwrap_or_else(Mac::random);
        let host_ifindex = netlink::create_veth(&VethRequest {
            host_name: req.host.as_str(),
            host_mac,
            peer_name: req.ifname.as_str(),
            peer_mac: container_mac,
            peer_netns: ns,
            mtu: req.mtu,
        })?;
        undo.push(Undo::Link(host_ifindex));
        netlink::configure_container(ns, req.ifname.as_str(), &req.addrs, host_mac)?;
        // A new veth end has GRO off; only an XDP endpoint's needs it on.
        if req.mode == Mode::Xdp {
            container_gro(ns, req.ifname.as_str(), true, false)?;
            set_container_tx_csum(ns, req.ifname.as_str(), false)?;
        }
        netlink::configure_node(host_ifindex, &req.addrs, container_mac)?;
        let mtu = match req.mtu {
            Some(m) => m,
            None => netlink::link_by_index(host_ifindex)?
                .map(|l| l.mtu)
                .unwrap_or(1500),
        };
        Ok(Made {
            host_ifindex,
            container_mac,
            mtu,
        })
    }

    /// The map part of `add` (under the lock): record, counters, links, devmap, addresses.
    fn add_register(
        &mut self,
        req: &AddRequest,
        ns: &Netns,
        host_mac: Mac,
        made: Made,
        undo: &mut Vec<Undo>,
    ) -> Result<EndpointView> {
        let Made {
            host_ifindex,
            container_mac,
            mtu,
        } = made;
        // Another operation may have published one of these addresses meanwhile.
        self.check_addrs(&req.addrs)?;
        let target = Target {
            ifindex: host_ifindex,
            mtu,
            network: 0, // set_network
            mode: mode_raw(req.mode)?,
            slot: 0, // assigned by register
            container_mac: container_mac.0,
            host_mac: host_mac.0,
        };
        let mut rec = make_record(
            target,
            ns.ino(),
            req.host.as_str(),
            req.ifname.as_str(),
            &req.netns,
            &req.addrs,
            req.record_flags(),
        );
        set_network(&mut rec, &req.network);
        self.set_cni_owner(host_ifindex, &req.cni_owner, undo)?;
        self.register(&mut rec, &req.addrs, undo)?;
        Ok(EndpointView::from_record(&rec))
    }

    /// Registers an endpoint whose veth exists already: counters, record, links, devmap and,
    /// last, its addresses in the fast path.
    fn register(
        &mut self,
        rec: &mut EndpointRecord,
        addrs: &[Cidr],
        undo: &mut Vec<Undo>,
    ) -> Result<()> {
        let host_ifindex = rec.target.ifindex;
        let host = get_str(&rec.host_name);
        // Zeroed counters exist before any program can see a packet of this endpoint.
        rec.target.slot = self.free_slot()?;
        self.dp.reset_counters(rec.target.slot)?;
        let target = rec.target;
        self.endpoint_map()?
            .insert(host_ifindex, *rec, 0)
            .map_err(map_err("VFP_ENDPOINTS"))?;
        undo.push(Undo::Record(host_ifindex));
        undo.push(Undo::Links(host_ifindex));
        let bridge_port = rec.flags & EP_BRIDGE_PORT != 0;
        self.dp.attach_tc(&host, host_ifindex, bridge_port)?;
        self.dp
            .devmap()?
            .insert(host_ifindex, host_ifindex, None, 0)
            .map_err(|e| match e {
                aya::maps::xdp::XdpMapError::MapError(source) => EndpointError::Map {
                    what: "VFP_DEVMAP",
                    source,
                },
                other => EndpointError::Devmap(other.to_string()),
            })?;
        undo.push(Undo::Devmap(host_ifindex));
        if target.mode == MODE_XDP {
            self.dp.attach_xdp(&host, host_ifindex)?;
        }
        // Publish last: from here on other endpoints redirect into this one. Bridge ports are
        // reached by MAC (L2), never by address: the bridge's semantics stay intact.
        if bridge_port {
            self.dp
                .l2()?
                .insert(target.container_mac, target, 0)
                .map_err(map_err("VFP_L2"))?;
            undo.push(Undo::L2(target.container_mac));
            return Ok(());
        }
        for a in addrs {
            self.publish(a.addr, target)?;
            undo.push(Undo::Addr(a.addr));
        }
        Ok(())
    }

    /// Publishes `addr` → `target` in the fast path's address maps.
    fn publish(&mut self, addr: IpAddr, target: Target) -> Result<()> {
        match addr {
            IpAddr::V4(v4) => self.dp.ep4()?.insert(v4.octets(), target, 0),
            IpAddr::V6(v6) => self.dp.ep6()?.insert(v6.octets(), target, 0),
        }
        .map_err(map_err("VFP_EP4/6"))
    }

    /// Removes `addr` from the fast path's address maps.
    fn unpublish(&mut self, addr: IpAddr) -> Result<()> {
        match addr {
            IpAddr::V4(v4) => self.dp.ep4()?.remove(&v4.octets()),
            IpAddr::V6(v6) => self.dp.ep6()?.remove(&v6.octets()),
        }
        .map_err(map_err("VFP_EP4/6"))
    }

    /// The lowest counter slot no endpoint or uplink uses.
    fn free_slot(&mut self) -> Result<u32> {
        let mut used: Vec<u32> = self.records()?.iter().map(|r| r.target.slot).collect();
        used.extend(self.uplink_records()?.iter().map(|u| u.slot));
        used.sort_unstable();
        let mut slot = 0;
        for u in used {
            if u == slot {
                slot += 1;
            } else if u > slot {
                break;
            }
        }
        if slot as usize >= MAX_SLOTS {
            return Err(EndpointError::Full(MAX_SLOTS));
        }
        Ok(slot)
    }

    /// Registers an existing veth pair made by someone else (a chained CNI plugin, a bridge)
    /// and attaches the fast path to its host end. Routes and addresses are left as they are;
    /// `del` later detaches and unregisters but does not delete the link.
    pub fn adopt(&mut self, req: &AdoptRequest) -> Result<EndpointView> {
        self.check_addrs(&req.addrs)?;
        if req.netns.len() >= NETNS_LEN {
            return Err(EndpointError::NetnsTooLong(req.netns.clone()));
        }
        if self.record_by_name(req.host.as_str())?.is_some() {
            return Err(EndpointError::HostExists(req.host.to_string()));
        }
        let link = netlink::link_by_name(req.host.as_str())?
            .ok_or_else(|| EndpointError::NotFound(req.host.to_string()))?;
        if link.kind.as_deref() != Some("veth") {
            return Err(EndpointError::NotVeth(req.host.to_string()));
        }
        let host_mac = link
            .mac
            .ok_or_else(|| EndpointError::NotVeth(req.host.to_string()))?;
        let ns = Netns::open(&req.netns)?;
        let target = Target {
            ifindex: link.ifindex,
            mtu: link.mtu,
            network: 0, // set_network
            mode: veth_common::MODE_TC,
            slot: 0, // assigned by register
            container_mac: req.container_mac.0,
            host_mac: host_mac.0,
        };
        let mut rec = make_record(
            target,
            ns.ino(),
            req.host.as_str(),
            req.ifname.as_str(),
            &req.netns,
            &req.addrs,
            EP_ADOPTED | req.flags | spoof_flags(req.spoof),
        );
        set_network(&mut rec, &req.network);
        // A port of a Linux bridge (CNI `bridge` plugin before us): L2 semantics, like
        // `bridge accelerate`; the routed program would only ever pass its traffic on.
        if let Some(master) = link.master
            && let Some(br) = netlink::link_by_index(master)?
            && br.kind.as_deref() == Some("bridge")
        {
            rec.flags |= EP_BRIDGE_PORT;
            rec.flags &= !(EP_SPOOF_ENFORCE | EP_SPOOF_AUDIT);
            rec.target.network = br.ifindex;
            rec.network_name = [0; NAME_LEN];
            put_str(&mut rec.network_name, &br.name);
        }
        let mut undo = Vec::new();
        let r = self
            .set_cni_owner(link.ifindex, &req.cni_owner, &mut undo)
            .and_then(|()| self.register(&mut rec, &req.addrs, &mut undo));
        match r {
            Ok(()) => Ok(EndpointView::from_record(&rec)),
            Err(e) => {
                self.rollback(undo);
                Err(e)
            }
        }
    }

    fn rollback(&mut self, undo: Vec<Undo>) {
        for u in undo.into_iter().rev() {
            let r: Result<()> = (|| {
                match u {
                    Undo::Addr(a) => {
                        let _ = self.unpublish(a);
                    }
                    Undo::Links(i) => {
                        self.dp.detach(i)?;
                    }
                    Undo::Record(i) => {
                        let _ = self.endpoint_map()?.remove(&i);
                    }
                    Undo::L2(mac) => {
                        let _ = self.dp.l2()?.remove(&mac);
                    }
                    Undo::Uplink(i) => {
                        let _ = self.dp.uplinks()?.remove(&i);
                    }
                    Undo::UplinkLink(i) => {
                        self.dp.detach_uplink(i)?;
                    }
                    Undo::Devmap(i) => {
                        let _ = self.dp.devmap()?.remove(i);
                    }
                    Undo::Link(i) => {
                        netlink::delete_link(i)?;
                    }
                    Undo::CniOwner(i) => {
                        let _ = self.dp.cni_owners()?.remove(&i);
                    }
                }
                Ok(())
            })();
            if let Err(e) = r {
                log::warn!("rollback step failed: {e}");
            }
        }
    }

    /// Removes the endpoint: its addresses from the fast path first, then links, the pair
    /// (which takes its routes and neighbour entries with it), and its map entries.
    /// Works also when the interface was already deleted by someone else.
    pub fn del(&mut self, name: &str) -> Result<()> {
        let Some(rec) = self.record_by_name(name)? else {
            // Interrupted operations were completed or rolled back when the registry was
            // opened; a link of this name without record is someone else's.
            if let Some(link) = netlink::link_by_name(name)? {
                return Err(self.not_ours(&link));
            }
            return Err(EndpointError::NotFound(name.into()));
        };
        self.intend(
            INTENT_DEL,
            name,
            Mac(rec.target.host_mac),
            rec.target.ifindex,
            rec.netns_ino,
        )?;
        // The veth delete (~20 ms, an RCU grace period) runs without the state lock.
        self.remove_record_with(&rec, true)?;
        self.done(name);
        Ok(())
    }

    /// Removes the endpoint registered under host ifindex `ifindex` (the agent does this when
    /// the interface vanished). Returns its host interface name; None if there is none.
    pub fn remove_by_ifindex(&mut self, ifindex: u32) -> Result<Option<String>> {
        let rec = match self.endpoint_map()?.get(&ifindex, 0) {
            Ok(rec) => rec,
            Err(aya::maps::MapError::KeyNotFound) => return Ok(None),
            Err(e) => return Err(map_err("VFP_ENDPOINTS")(e)),
        };
        self.remove_record(&rec)?;
        Ok(Some(get_str(&rec.host_name)))
    }

    fn remove_record(&mut self, rec: &EndpointRecord) -> Result<()> {
        self.remove_record_with(rec, false)
    }

    /// Removes the endpoint: addresses out of the fast path first, hooks, the pair, its flows
    /// (with `unlock`: the pair and the flows without holding the state lock; the record, and
    /// with it the counter slot and the ifindex, stays reserved until the pair is gone), then
    /// its records.
    fn remove_record_with(&mut self, rec: &EndpointRecord, unlock: bool) -> Result<()> {
        let name = get_str(&rec.host_name);
        let ifindex = rec.target.ifindex;
        let adopted = rec.flags & EP_ADOPTED != 0;
        self.unpublish_endpoint(rec)?;
        if adopted {
            self.dp.detach(ifindex)?;
        } else {
            self.dp.detach_with_veth(ifindex)?; // the veth delete below takes the filters
        }
        let host_mac = rec.target.host_mac;
        let addrs: Vec<IpAddr> = record_addrs(rec).map(|a| a.addr).collect();
        let kernel = |reg: &mut Self| -> Result<()> {
            // Only the link this record describes: same ifindex, name and host MAC.
            if !adopted
                && let Some(link) = netlink::link_by_index(ifindex)?
                && link.name == name
                && link.mac.is_some_and(|m| m.0 == host_mac)
            {
                netlink::delete_link(ifindex)?;
            }
            // Its flows go too, once no packet of the pair can make new ones: a later
            // endpoint with one of these addresses starts unadmitted. A walk of the whole
            // flow table (65536 entries by default), so never under the lock. Removing a
            // flow is always safe: the kernel admits it again.
            if let Err(e) = crate::registry::flows::forget(&mut reg.dp, &addrs) {
                log::warn!("removing the flows of {name}: {e}");
            }
            Ok(())
        };
        if unlock {
            self.unlocked(kernel)??;
            // Locked again: whatever republished a part meanwhile (an older agent) goes too.
            self.unpublish_endpoint(rec)?;
        } else {
            kernel(self)?;
        }
        let _ = self.dp.cni_owners()?.remove(&ifindex);
        let _ = self.endpoint_map()?.remove(&ifindex);
        Ok(())
    }

    /// Takes the endpoint out of the fast path: its addresses (those it still owns), its L2
    /// entry (bridge ports), its devmap entry. Idempotent.
    fn unpublish_endpoint(&mut self, rec: &EndpointRecord) -> Result<()> {
        let ifindex = rec.target.ifindex;
        for a in record_addrs(rec) {
            if self.owner_of(a.addr)? == Some(ifindex) {
                self.unpublish(a.addr)?;
            }
        }
        if rec.flags & EP_BRIDGE_PORT != 0
            && let Ok(t) = self.dp.l2()?.get(&rec.target.container_mac, 0)
            && t.ifindex == ifindex
        {
            let _ = self.dp.l2()?.remove(&rec.target.container_mac);
        }
        let _ = self.dp.devmap()?.remove(ifindex);
        Ok(())
    }

    /// Switches a live endpoint between TC and XDP mode. Established connections survive:
    /// only a program is attached or detached; the tcx programs stay in both modes.
    pub fn set_mode(&mut self, name: &str, mode: Mode) -> Result<EndpointView> {
        let mode = mode_raw(mode)?;
        let mut rec = self
            .record_by_name(name)?
            .ok_or_else(|| EndpointError::NotFound(name.into()))?;
        let ifindex = rec.target.ifindex;
        // Checksums computed by the container's stack before XDP may redirect its frames, and
        // offloaded again only once XDP no longer sees them (see ethtool::set_tx_csum).
        let ns = Netns::open(&get_str(&rec.netns))?;
        let peer = get_str(&rec.peer_name);
        let owned = rec.flags & EP_ADOPTED == 0;
        if mode == MODE_XDP {
            // NAPI on the container end before any XDP sender learns (from the published
            // target) that it may redirect into it.
            container_gro(&ns, &peer, true, false)?;
            set_container_tx_csum(&ns, &peer, false)?;
            self.dp.attach_xdp(name, ifindex)?;
            rec.target.mode = mode;
            self.publish_record(&rec)?;
        } else {
            // XDP senders stop redirecting into it first; the XDP detach then waits for an
            // RCU grace period, after which no redirect chosen under the old target is in
            // flight, and GRO can go (on ends vethfp made; an adopted end keeps its owner's).
            rec.target.mode = mode;
            self.publish_record(&rec)?;
            self.dp.detach_xdp(ifindex)?;
            set_container_tx_csum(&ns, &peer, true)?;
            if owned {
                container_gro(&ns, &peer, false, false)?;
            }
        }
        Ok(EndpointView::from_record(&rec))
    }

    /// Writes `rec` and republishes its target under every address it owns.
    fn publish_record(&mut self, rec: &EndpointRecord) -> Result<()> {
        let ifindex = rec.target.ifindex;
        self.endpoint_map()?
            .insert(ifindex, *rec, 0)
            .map_err(map_err("VFP_ENDPOINTS"))?;
        for a in record_addrs(rec) {
            if self.owner_of(a.addr)? == Some(ifindex) {
                self.publish(a.addr, rec.target)?;
            }
        }
        Ok(())
    }

    /// Attaches the uplink fast path to `name` (an interface of the node): packets from
    /// outside for local endpoints are delivered straight into the container; with
    /// `egress_fast`, container traffic the FIB routes out of this uplink goes straight out.
    pub fn uplink_attach(&mut self, name: &str, egress_fast: bool) -> Result<UplinkView> {
        let link =
            netlink::link_by_name(name)?.ok_or_else(|| EndpointError::NoSuchUplink(name.into()))?;
        if self
            .records()?
            .iter()
            .any(|r| r.target.ifindex == link.ifindex)
        {
            return Err(EndpointError::UplinkIsEndpoint(name.into()));
        }
        let mut up = Uplink {
            ifindex: link.ifindex,
            flags: 0,
            slot: self.free_slot()?,
            name: [0; NAME_LEN],
        };
        put_str(&mut up.name, name);
        let mut undo = vec![Undo::Uplink(link.ifindex)];
        let r: Result<()> = (|| {
            self.dp.reset_counters(up.slot)?;
            self.dp
                .uplinks()?
                .insert(link.ifindex, up, 0)
                .map_err(map_err("VFP_UPLINKS"))?;
            self.dp.attach_uplink(name, link.ifindex)?;
            Ok(())
        })();
        if let Err(e) = r {
            undo.push(Undo::UplinkLink(link.ifindex));
            self.rollback(undo);
            return Err(e);
        }
        self.set_egress_fast(egress_fast)?;
        Ok(UplinkView::from(&up))
    }

    /// Detaches the uplink fast path from `name`.
    pub fn uplink_detach(&mut self, name: &str) -> Result<()> {
        let up = self
            .uplink_records()?
            .into_iter()
            .find(|u| get_str(&u.name) == name)
            .ok_or_else(|| EndpointError::NoSuchUplink(name.into()))?;
        self.rollback(vec![Undo::Uplink(up.ifindex), Undo::UplinkLink(up.ifindex)]);
        Ok(())
    }

    fn uplink_records(&mut self) -> Result<Vec<Uplink>> {
        let map = self.dp.uplinks()?;
        let mut out = Vec::new();
        for item in map.iter() {
            out.push(item.map_err(map_err("VFP_UPLINKS"))?.1);
        }
        out.sort_by_key(|u| u.name);
        Ok(out)
    }

    pub fn uplinks(&mut self) -> Result<Vec<UplinkView>> {
        Ok(self
            .uplink_records()?
            .iter()
            .map(UplinkView::from)
            .collect())
    }

    /// `--egress fast|kernel`: node-wide switch for container → outside traffic.
    pub fn set_egress_fast(&mut self, fast: bool) -> Result<()> {
        let flags = self.dp.flags()?;
        let flags = if fast {
            flags | CFG_EGRESS_FAST
        } else {
            flags & !CFG_EGRESS_FAST
        };
        Ok(self.dp.set_flags(flags)?)
    }

    /// Node-wide view: uplinks, switches, endpoint count.
    pub fn status(&mut self) -> Result<Status> {
        let flags = self.dp.flags()?;
        let mut uplinks = Vec::new();
        for u in self.uplink_records()? {
            let counters = self.dp.read_counters(u.slot)?;
            uplinks.push(UplinkStatus {
                uplink: UplinkView::from(&u),
                counters,
            });
        }
        Ok(Status {
            bpffs: self.dp.dir().display().to_string(),
            datapath_version: self.dp.state_version(),
            version: crate::LONG_VERSION,
            endpoints: self.records()?.len(),
            fast_path: flags & CFG_FASTPATH_OFF == 0,
            egress: if flags & CFG_EGRESS_FAST != 0 {
                "fast"
            } else {
                "kernel"
            },
            admission: crate::registry::flows::Admission::of_flags(flags).name(),
            tcp_admitted: flags & (veth_common::CFG_ADMIT_TCP | veth_common::CFG_TCP_HANDOFF) != 0,
            tcp: crate::registry::flows::TcpMode::of(
                flags,
                crate::registry::flows::agent_running(self.dp.dir()),
            ),
            tcp_conntrack: crate::registry::flows::tcp_admissible(),
            flow_table: crate::registry::flows::table(&mut self.dp)?,
            uplinks,
        })
    }

    /// Accelerates an existing Linux bridge in place: every veth port whose peer lives in
    /// another namespace gets the L2 fast path; the bridge stays the slow path. Refuses (unless
    /// `force`) where the bridge enforces something the fast path would skip.
    ///
    /// Returns the ports accelerated by this call and those skipped, each with the reason.
    #[allow(clippy::type_complexity)]
    pub(crate) fn bridge_accelerate(
        &mut self,
        bridge: &str,
        force: bool,
    ) -> Result<(Vec<EndpointView>, Vec<(String, String)>)> {
        let br = netlink::link_by_name(bridge)?
            .filter(|l| l.kind.as_deref() == Some("bridge"))
            .ok_or_else(|| EndpointError::NoSuchBridge(bridge.into()))?;
        let ports: Vec<netlink::Link> = netlink::links()?
            .into_iter()
            .filter(|l| {
                l.master == Some(br.ifindex)
                    && l.kind.as_deref() == Some("veth")
                    && l.link_netnsid.is_some()
            })
            .collect();
        if !force {
            if br.vlan_filtering == Some(true) {
                return Err(EndpointError::BridgeRefused(format!(
                    "{bridge} has vlan_filtering on; the fast path does not apply VLAN membership"
                )));
            }
            if let Some(p) = ports.iter().find(|p| p.port_isolated == Some(true)) {
                return Err(EndpointError::BridgeRefused(format!(
                    "port {} of {bridge} is isolated; the fast path would join it to the other ports",
                    p.name
                )));
            }
            // Under netfilter admission the bridge's own path (br_netfilter included) admits
            // every flow first: its rules are not skipped, so they are no reason to refuse.
            if self.dp.flags()? & veth_common::CFG_ADMIT_ALWAYS != 0 {
                crate::registry::bridges::netfilter_check(bridge)
                    .map_err(EndpointError::BridgeRefused)?;
            }
        }
        let namespaces = crate::registry::bridges::namespaces_by_id()?;
        let known: Vec<(u32, String)> = self
            .records()?
            .iter()
            .map(|r| (r.target.ifindex, get_str(&r.host_name)))
            .collect();
        let mut added = Vec::new();
        let mut skipped = Vec::new();
        let mut todo: Vec<&netlink::Link> = Vec::new();
        for p in &ports {
            match known.iter().find(|(i, _)| *i == p.ifindex) {
                Some((_, n)) if *n == p.name => {
                    skipped.push((p.name.clone(), "already accelerated".to_string()))
                }
                Some((_, n)) => skipped.push((
                    p.name.clone(),
                    format!(
                        "its ifindex {} is recorded for endpoint {n} of this state (stale record?)",
                        p.ifindex
                    ),
                )),
                None => todo.push(p),
            }
        }
        if let Err(e) = self.accelerate_ports(
            bridge,
            br.ifindex,
            &todo,
            &namespaces,
            &mut added,
            &mut skipped,
        ) {
            // All or nothing: ports accelerated by this call go back to the plain bridge.
            for v in &added {
                let _ = self.del(&v.host_if);
            }
            return Err(e);
        }
        Ok((added, skipped))
    }

    fn accelerate_ports(
        &mut self,
        bridge: &str,
        bridge_ifindex: u32,
        ports: &[&netlink::Link],
        namespaces: &std::collections::HashMap<i32, (String, Netns)>,
        added: &mut Vec<EndpointView>,
        skipped: &mut Vec<(String, String)>,
    ) -> Result<()> {
        for port in ports {
            let (Some(nsid), Some(peer_index)) = (port.link_netnsid, port.peer_ifindex) else {
                skipped.push((port.name.clone(), "its veth peer is unknown".into()));
                continue;
            };
            let Some((spec, ns)) = namespaces.get(&nsid) else {
                skipped.push((
                    port.name.clone(),
                    format!("cannot find the namespace of its peer (nsid {nsid})"),
                ));
                continue;
            };
            let (peer, mut addrs) = netlink::in_netns(ns, || {
                let peer = netlink::link_by_index(peer_index)?;
                let addrs = netlink::addresses(peer_index)?;
                Ok((peer, addrs))
            })?;
            let Some(peer) = peer else {
                skipped.push((port.name.clone(), "its veth peer vanished".into()));
                continue;
            };
            let (Some(container_mac), Some(host_mac)) = (peer.mac, port.mac) else {
                skipped.push((port.name.clone(), "it or its peer has no MAC".into()));
                continue;
            };
            addrs.truncate(MAX_ADDRS);
            let mut rec = make_record(
                Target {
                    ifindex: port.ifindex,
                    mtu: port.mtu,
                    network: 0,
                    mode: veth_common::MODE_TC,
                    slot: 0, // assigned by register
                    container_mac: container_mac.0,
                    host_mac: host_mac.0,
                },
                ns.ino(),
                &port.name,
                &peer.name,
                spec,
                &addrs,
                EP_ADOPTED | EP_BRIDGE_PORT,
            );
            put_str(&mut rec.network_name, bridge);
            rec.target.network = bridge_ifindex;
            let mut undo = Vec::new();
            if let Err(e) = self.register(&mut rec, &addrs, &mut undo) {
                self.rollback(undo);
                return Err(e);
            }
            added.push(EndpointView::from_record(&rec));
        }
        Ok(())
    }

    /// Removes the fast path from every port of `bridge`: plain bridge behaviour again.
    pub(crate) fn bridge_release(&mut self, bridge: &str) -> Result<Vec<String>> {
        let br = netlink::link_by_name(bridge)?
            .filter(|l| l.kind.as_deref() == Some("bridge"))
            .ok_or_else(|| EndpointError::NoSuchBridge(bridge.into()))?;
        let names: Vec<String> = self
            .records()?
            .iter()
            .filter(|r| r.flags & EP_BRIDGE_PORT != 0 && r.target.network == br.ifindex)
            .map(|r| get_str(&r.host_name))
            .collect();
        for n in &names {
            self.del(n)?;
        }
        Ok(names)
    }

    /// How many endpoints are recorded (keys only: no record is copied out).
    pub(crate) fn list_len(&mut self) -> Result<usize> {
        let map = self.dp.endpoints()?;
        Ok(map.keys().filter(|k| k.is_ok()).count())
    }

    pub fn list(&mut self) -> Result<Vec<EndpointView>> {
        Ok(self
            .records()?
            .iter()
            .map(EndpointView::from_record)
            .collect())
    }

    /// Counters of every endpoint with its namespace: one pass over the records (the
    /// metrics encoder's read; [`Registry::stats`] and [`Registry::list`] would read them
    /// twice and leave the caller to join them).
    pub(crate) fn stats_with_netns(&mut self) -> Result<Vec<(EndpointStats, String)>> {
        let recs = self.records()?;
        let mut out = Vec::with_capacity(recs.len());
        for r in recs {
            let counters = self.dp.read_counters(r.target.slot)?;
            out.push((
                EndpointStats {
                    host_if: get_str(&r.host_name),
                    host_ifindex: r.target.ifindex,
                    counters,
                },
                get_str(&r.netns),
            ));
        }
        Ok(out)
    }

    /// Counters of every endpoint, or of `name` only.
    pub fn stats(&mut self, name: Option<&str>) -> Result<Vec<EndpointStats>> {
        let recs = self.records()?;
        if let Some(n) = name
            && !recs.iter().any(|r| get_str(&r.host_name) == n)
        {
            return Err(EndpointError::NotFound(n.into()));
        }
        let mut out = Vec::new();
        for r in recs {
            let host_if = get_str(&r.host_name);
            if name.is_some_and(|n| n != host_if) {
                continue;
            }
            let counters = self.dp.read_counters(r.target.slot)?;
            out.push(EndpointStats {
                host_if,
                host_ifindex: r.target.ifindex,
                counters,
            });
        }
        Ok(out)
    }
}
