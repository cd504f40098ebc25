//! The map ABI shared by the datapath (`veth-ebpf`) and the control plane (`veth-user`).
//!
//! Every type here is `#[repr(C)]`, has no padding holes the kernel could reject, and is
//! `Copy`. The `user` feature adds `aya::Pod` so userspace can read and write the maps.
//!
//! Changing any of these layouts is an ABI change: bump [`ABI_VERSION`]; the control plane
//! refuses pinned state written by another version instead of misreading it.
#![cfg_attr(not(test), no_std)]

/// Version of the layouts below. Stored in [`CONFIG_ABI`] of the config map.
pub const ABI_VERSION: u32 = 3;

/// Map names (also the pin file names under `--bpffs DIR`).
pub const MAP_EP4: &str = "VFP_EP4";
pub const MAP_EP6: &str = "VFP_EP6";
pub const MAP_ENDPOINTS: &str = "VFP_ENDPOINTS";
pub const MAP_COUNTERS: &str = "VFP_COUNTERS";
pub const MAP_CONFIG: &str = "VFP_CONFIG";
pub const MAP_DEVMAP: &str = "VFP_DEVMAP";
pub const MAP_UPLINKS: &str = "VFP_UPLINKS";
pub const MAP_L2: &str = "VFP_L2";
/// Intents of this state (journal): host name → [`Intent`]. Written before a link is created
/// or deleted, removed when the operation is complete (see docs/ARCHITECTURE.md, "Ownership").
pub const MAP_JOURNAL: &str = "VFP_JOURNAL";
/// Host ifindex → [`CniOwner`]: the CNI container ID and ifname an endpoint was added for.
pub const MAP_CNI_OWNERS: &str = "VFP_CNI_OWNERS";
pub const MAP_FLOWS: &str = "VFP_FLOWS";
pub const MAP_FLOW_STATS: &str = "VFP_FLOW_STATS";
/// Every map of the datapath: all are pinned by name.
pub const MAPS: [&str; 12] = [
    MAP_EP4,
    MAP_EP6,
    MAP_ENDPOINTS,
    MAP_COUNTERS,
    MAP_CONFIG,
    MAP_DEVMAP,
    MAP_UPLINKS,
    MAP_L2,
    MAP_JOURNAL,
    MAP_CNI_OWNERS,
    MAP_FLOWS,
    MAP_FLOW_STATS,
];

/// Capacity of the endpoint maps.
pub const MAX_ENDPOINTS: usize = 65_536;
/// Counter slots (endpoints + uplinks that can be counted at once). Per-CPU array: 256 bytes a
/// slot a CPU, so 4096 slots are 1 MiB per possible CPU.
pub const MAX_SLOTS: usize = 4096;

/// Config map slots (an `Array<u32>`).
pub const CONFIG_ABI: u32 = 0;
/// Feature switches, see `CFG_*`.
pub const CONFIG_FLAGS: u32 = 1;
/// Identity of this state (random, made when the state is created): low and high 32 bits.
pub const CONFIG_STATE_ID_LO: u32 = 4;
pub const CONFIG_STATE_ID_HI: u32 = 5;
/// Netns cookie (SO_NETNS_COOKIE) of the node namespace the state is bound to: low, high.
pub const CONFIG_NETNS_COOKIE_LO: u32 = 6;
pub const CONFIG_NETNS_COOKIE_HI: u32 = 7;
pub const CONFIG_SLOTS: u32 = 8;
/// When set, the fast path is off: every packet goes to the kernel stack (still counted).
pub const CFG_FASTPATH_OFF: u32 = 1 << 0;
/// When set, traffic from containers to destinations outside the node that the FIB routes out
/// of an attached uplink is sent there directly (fib_lookup + redirect / redirect_neigh),
/// skipping the node's netfilter FORWARD, conntrack and NAT. Off = `--egress kernel`.
pub const CFG_EGRESS_FAST: u32 = 1 << 1;
/// When set, the programs emit debug events through aya-log (`vethfp agent --bpf-log`).
/// Checked before any logging, so it costs one bit test when off.
pub const CFG_BPF_LOG: u32 = 1 << 2;
/// Admission `always`: every candidate packet takes the fast path (no flow table). Clear =
/// admission `netfilter` (the default of a fresh state): a flow takes the fast path only after
/// the kernel forwarded it unchanged in both directions (see [`FlowKey`]).
pub const CFG_ADMIT_ALWAYS: u32 = 1 << 3;
/// Under `netfilter` admission, TCP flows may be admitted too. Set by the control plane only
/// while the node's conntrack is liberal about TCP windows
/// (`net.netfilter.nf_conntrack_tcp_be_liberal = 1`) or absent; otherwise TCP stays on the
/// kernel path (conntrack would see the close out of window and mark it INVALID).
pub const CFG_ADMIT_TCP: u32 = 1 << 4;
/// Config slot: seconds after which an admitted flow must be confirmed by the kernel again
/// (0 = [`DEFAULT_REVERIFY_S`]).
pub const CONFIG_REVERIFY: u32 = 2;
/// Config slot: seconds without a fast-path packet after which an admitted flow is verified
/// again (0 = [`DEFAULT_IDLE_S`]).
pub const CONFIG_IDLE: u32 = 3;
/// Below conntrack's UDP timeout (30 s): the kernel sees every fast flow at least this often.
pub const DEFAULT_REVERIFY_S: u32 = 20;
pub const DEFAULT_IDLE_S: u32 = 20;
/// Default capacity of `VFP_FLOWS` (`--flow-table-size`).
pub const DEFAULT_FLOW_TABLE_SIZE: u32 = 65_536;

/// Counter directions.
pub const DIR_FROM_CONTAINER: usize = 0;
pub const DIR_TO_CONTAINER: usize = 1;
pub const DIRS: usize = 2;

/// Counter verdicts.
/// Redirected straight to/from a local endpoint by the fast path.
pub const V_FAST: usize = 0;
/// Reserved for the uplink fast path (to/from outside the node).
pub const V_FAST_UPLINK: usize = 1;
/// Handed to (or delivered by) the kernel stack.
pub const V_STACK: usize = 2;
/// Dropped: source address not the endpoint's own (anti-spoofing).
pub const V_DROP_SPOOF_IP: usize = 3;
/// Dropped: source MAC not the endpoint's own.
pub const V_DROP_SPOOF_MAC: usize = 4;
/// Dropped by policy (isolation).
pub const V_DROP_POLICY: usize = 5;
/// Dropped: the redirect helper failed.
pub const V_DROP_ERROR: usize = 6;
pub const V_RESERVED: usize = 7;
pub const VERDICTS: usize = 8;

/// Human names of the verdicts, indexed by `V_*`.
pub const VERDICT_NAMES: [&str; VERDICTS] = [
    "fast",
    "fast_uplink",
    "stack",
    "drop_spoof_ip",
    "drop_spoof_mac",
    "drop_policy",
    "drop_error",
    "reserved",
];
/// Human names of the directions, indexed by `DIR_*`.
pub const DIR_NAMES: [&str; DIRS] = ["from_container", "to_container"];

/// Endpoint modes.
pub const MODE_TC: u32 = 0;
pub const MODE_XDP: u32 = 1;

/// Where the fast path sends a packet addressed to one endpoint address.
/// Value of `VFP_EP4` (key `[u8; 4]`, network order) and `VFP_EP6` (key `[u8; 16]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Target {
    /// Host end ifindex (redirect_peer target) in the node namespace.
    pub ifindex: u32,
    /// MTU of the pair; larger packets are checked precisely with bpf_check_mtu.
    pub mtu: u32,
    /// Network id: the fast path only joins endpoints of the same network.
    pub network: u32,
    /// `MODE_*`.
    pub mode: u32,
    /// Index of this endpoint's counters in `VFP_COUNTERS`.
    pub slot: u32,
    /// MAC of the container end (new destination MAC).
    pub container_mac: [u8; 6],
    /// MAC of the host end (new source MAC, the container's gateway).
    pub host_mac: [u8; 6],
}

/// Address family tags in [`EndpointAddr`].
pub const AF_NONE: u8 = 0;
pub const AF_V4: u8 = 4;
pub const AF_V6: u8 = 6;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointAddr {
    /// `AF_V4`, `AF_V6`, or `AF_NONE` for an unused slot.
    pub family: u8,
    pub prefix: u8,
    pub _pad: [u8; 2],
    /// v4 in the first 4 bytes, network order.
    pub addr: [u8; 16],
}

/// `EndpointRecord::flags`: the veth was made by someone else (CNI chaining, bridge bypass);
/// removing the endpoint detaches and unregisters but leaves the link.
pub const EP_ADOPTED: u32 = 1 << 0;
/// `EndpointRecord::flags`: made by the CNI plugin (GC may remove it).
pub const EP_CNI: u32 = 1 << 1;
/// `EndpointRecord::flags`: drop frames whose source MAC or IP is not the endpoint's own.
pub const EP_SPOOF_ENFORCE: u32 = 1 << 2;
/// `EndpointRecord::flags`: count such frames under their drop reason but let them through to
/// the kernel stack (never the fast path) — for migrating to enforcement.
pub const EP_SPOOF_AUDIT: u32 = 1 << 3;
/// `EndpointRecord::flags`: a port of an accelerated bridge (L2 semantics, no routing).
pub const EP_BRIDGE_PORT: u32 = 1 << 4;

pub const MAX_ADDRS: usize = 8;
pub const NAME_LEN: usize = 16;
pub const NETNS_LEN: usize = 128;

/// Everything known about one endpoint, keyed by host ifindex (`VFP_ENDPOINTS`).
/// The control plane's registry lives here, next to the datapath, so that any later process
/// (CLI call, agent) finds the complete state in the pinned maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointRecord {
    /// Inode of the container network namespace when the endpoint was made.
    pub netns_ino: u64,
    pub target: Target,
    pub naddrs: u32,
    pub flags: u32,
    /// Host end name, NUL padded.
    pub host_name: [u8; NAME_LEN],
    /// Container end name, NUL padded.
    pub peer_name: [u8; NAME_LEN],
    /// The netns as the user gave it (a name under /run/netns or a path), NUL padded.
    pub netns: [u8; NETNS_LEN],
    /// Name of the network (isolation domain), NUL padded; `target.network` is its id.
    pub network_name: [u8; NAME_LEN],
    pub addrs: [EndpointAddr; MAX_ADDRS],
}

impl Default for EndpointRecord {
    fn default() -> Self {
        Self {
            target: Target::default(),
            netns_ino: 0,
            naddrs: 0,
            flags: 0,
            host_name: [0; NAME_LEN],
            peer_name: [0; NAME_LEN],
            netns: [0; NETNS_LEN],
            network_name: [0; NAME_LEN],
            addrs: [EndpointAddr::default(); MAX_ADDRS],
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketBytes {
    pub packets: u64,
    pub bytes: u64,
}

/// Per-CPU counters of one endpoint or uplink (`VFP_COUNTERS`, a per-CPU array indexed by
/// the slot in its `Target` / `Uplink`: an inlined lookup on the hot path).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub c: [[PacketBytes; VERDICTS]; DIRS],
}

impl Counters {
    /// Adds `other` into `self` (summing per-CPU values).
    pub fn add(&mut self, other: &Counters) {
        for d in 0..DIRS {
            for v in 0..VERDICTS {
                self.c[d][v].packets = self.c[d][v].packets.wrapping_add(other.c[d][v].packets);
                self.c[d][v].bytes = self.c[d][v].bytes.wrapping_add(other.c[d][v].bytes);
            }
        }
    }
}

/// An attached uplink (`VFP_UPLINKS`, key = uplink ifindex).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Uplink {
    pub ifindex: u32,
    pub flags: u32,
    /// Index of this uplink's counters in `VFP_COUNTERS`.
    pub slot: u32,
    pub name: [u8; NAME_LEN],
}

/// [`Intent::op`]: a `pair add` is creating this host end.
pub const INTENT_ADD: u32 = 1;
/// [`Intent::op`]: a `pair del` is removing this host end.
pub const INTENT_DEL: u32 = 2;
/// Capacity of the journal (operations in flight or interrupted).
pub const MAX_INTENTS: usize = 1024;

/// One journal entry (`VFP_JOURNAL`, key = host end name, NUL padded): written before the
/// link is created (or deleted), removed once the operation is complete. Only a link whose
/// name AND exact MAC match an intent (or a record) of this state is ever touched.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Intent {
    /// `INTENT_*`.
    pub op: u32,
    /// Host ifindex once known (0 before the link exists).
    pub ifindex: u32,
    /// The exact MAC the host end has (or gets at creation).
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
    /// Inode of the container netns.
    pub netns_ino: u64,
    /// Seconds since the epoch when the intent was written.
    pub time: u64,
}

pub const CONTAINER_ID_LEN: usize = 128;

/// `VFP_CNI_OWNERS` value: the CNI ADD an endpoint belongs to. DEL must match both.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CniOwner {
    /// CNI_CONTAINERID, NUL padded (longer IDs are refused by the plugin).
    pub container_id: [u8; CONTAINER_ID_LEN],
    /// CNI_IFNAME, NUL padded.
    pub ifname: [u8; NAME_LEN],
}

impl Default for CniOwner {
    fn default() -> Self {
        Self {
            container_id: [0; CONTAINER_ID_LEN],
            ifname: [0; NAME_LEN],
        }
    }
}

/// `FlowKey::network` of flows between an endpoint and an attached uplink.
pub const FLOW_NET_UPLINK: u32 = 0;

/// Key of `VFP_FLOWS`: one entry for both directions of a flow. The two ends (address, port)
/// are ordered (`lo` is the smaller by address bytes, then port), so a packet from `lo` to `hi`
/// is direction 0 and its reply direction 1. ICMP echo: the identifier is both ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// `AF_V4` or `AF_V6`.
    pub family: u8,
    /// IP protocol: 6, 17, 1 or 58.
    pub proto: u8,
    pub _pad: [u8; 2],
    /// The endpoints' network id, the bridge ifindex for bridge ports, or [`FLOW_NET_UPLINK`].
    pub network: u32,
    /// v4 in the first 4 bytes, network order.
    pub addr_lo: [u8; 16],
    pub addr_hi: [u8; 16],
    /// Ports in network order (as in the packet).
    pub port_lo: [u8; 2],
    pub port_hi: [u8; 2],
}

/// `FlowState::flags`: direction d (0 = lo→hi, 1 = hi→lo) went to the kernel and is waiting
/// to be seen leaving on `egress_ifindex[d]` with the same tuple.
pub const FLOW_PENDING: [u64; 2] = [1 << 0, 1 << 1];
/// `FlowState::flags`: the kernel forwarded direction d unchanged.
pub const FLOW_CONFIRMED: [u64; 2] = [1 << 2, 1 << 3];
/// Both directions confirmed: the flow is admitted to the fast path.
pub const FLOW_ADMITTED: u64 = FLOW_CONFIRMED[0] | FLOW_CONFIRMED[1];

/// Value of `VFP_FLOWS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// `FLOW_*` bits, changed with atomic or / and (64-bit: the BPF target's atomic width).
    pub flags: u64,
    /// Where the kernel is expected to send each direction (host end or uplink ifindex).
    pub egress_ifindex: [u32; 2],
    /// CLOCK_MONOTONIC_COARSE ns: when the flow was (last) admitted.
    pub admitted_at: u64,
    /// CLOCK_MONOTONIC_COARSE ns: last fast-path packet (or admission).
    pub last_seen: u64,
    /// Fast-path packets since admission.
    pub packets: u64,
}

/// Node-wide flow counters (`VFP_FLOW_STATS`, per-CPU array, one slot), indexed by `FS_*`.
pub const FS_CREATED: usize = 0;
pub const FS_ADMITTED: usize = 1;
pub const FS_TORN_DOWN: usize = 2;
pub const FS_EXPIRED: usize = 3;
pub const FS_INSERT_FAILED: usize = 4;
pub const FLOW_STATS: usize = 8;
pub const FLOW_STAT_NAMES: [&str; 5] = [
    "created",
    "admitted",
    "torn_down",
    "expired",
    "insert_failed",
];

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    pub c: [u64; FLOW_STATS],
}

impl FlowStats {
    pub fn add(&mut self, other: &FlowStats) {
        for i in 0..FLOW_STATS {
            self.c[i] = self.c[i].wrapping_add(other.c[i]);
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are repr(C), Copy, made only of integers and byte arrays, no padding.
    unsafe impl aya::Pod for Target {}
    unsafe impl aya::Pod for EndpointRecord {}
    unsafe impl aya::Pod for PacketBytes {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for Uplink {}
    unsafe impl aya::Pod for Intent {}
    unsafe impl aya::Pod for CniOwner {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowState {}
    unsafe impl aya::Pod for FlowStats {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(size_of::<Target>(), 5 * 4 + 12);
        assert_eq!(size_of::<EndpointAddr>(), 20);
        assert_eq!(
            size_of::<EndpointRecord>(),
            size_of::<Target>() + 8 + 4 + 4 + 16 + 16 + 128 + 16 + 20 * MAX_ADDRS
        );
        assert_eq!(size_of::<Counters>(), DIRS * VERDICTS * 16);
        assert_eq!(size_of::<Intent>(), 4 + 4 + 6 + 2 + 8 + 8);
        assert_eq!(size_of::<CniOwner>(), CONTAINER_ID_LEN + NAME_LEN);
        assert_eq!(size_of::<FlowKey>(), 1 + 1 + 2 + 4 + 16 + 16 + 2 + 2);
        assert_eq!(size_of::<FlowState>(), 8 + 8 + 3 * 8);
        assert_eq!(size_of::<FlowStats>(), FLOW_STATS * 8);
        assert_eq!(FLOW_CONFIRMED[0] & (FLOW_PENDING[0] | FLOW_PENDING[1]), 0);
    }
}
