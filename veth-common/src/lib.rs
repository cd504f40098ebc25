//! The map ABI shared by the datapath (`veth-ebpf`) and the control plane (`veth-user`).
//!
//! Every type here is `#[repr(C)]`, has no padding holes the kernel could reject, and is
//! `Copy`. The `user` feature adds `aya::Pod` so userspace can read and write the maps.
//!
//! Changing any of these layouts is an ABI change: bump [`ABI_VERSION`]; the control plane
//! refuses pinned state written by another version instead of misreading it.
#![cfg_attr(not(test), no_std)]

mod kinds;
pub use kinds::{Dir, Hook, Mode, Program, Spoof, UnknownName, UnknownValue, Verdict};

/// Version of the layouts and meanings below. Stored in [`CONFIG_ABI`] of the config map.
/// 3: 0.1.0. 4: TCP per-flow hand-off (`VFP_HANDOFF`, [`FLOW_LIBERAL`], [`CFG_TCP_HANDOFF`]),
/// which 0.1.0's programs do not honour. Every bump ships its migration step from the ABI
/// before (veth-user `datapath::migrate`).
pub const ABI_VERSION: u32 = 4;

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
/// Ring buffer of TCP hand-off candidates ([`HandoffEvent`]), read by the agent.
pub const MAP_HANDOFF: &str = "VFP_HANDOFF";
/// Every map of the datapath: all are pinned by name.
pub const MAPS: [&str; 13] = [
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
    MAP_HANDOFF,
];
/// Size of `VFP_HANDOFF` in bytes (a power of two multiple of the page size): 4096 events.
pub const HANDOFF_RING_BYTES: usize = 256 * 1024;

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
/// Under `netfilter` admission, TCP flows are handed off per flow (the nf_flowtable model): a
/// TCP flow the kernel forwarded unchanged both ways is reported on `VFP_HANDOFF`; the agent
/// makes that flow's conntrack entry liberal about windows and only then sets
/// [`FLOW_LIBERAL`], which the fast path requires of TCP. Set by the agent while it runs;
/// takes precedence over [`CFG_ADMIT_TCP`] (which is then clear).
pub const CFG_TCP_HANDOFF: u32 = 1 << 5;
/// Under [`CFG_TCP_HANDOFF`], a confirmed TCP flow is reported to the agent once this many
/// more packets (either direction, not FIN/RST/SYN) crossed the kernel: a request/response
/// connection that closes right after its answer is never handed off (the agent's
/// ctnetlink round trip would cost more than it saves), a flow that lives on is, two round
/// trips later. The agent's periodic check hands off waiting flows that went quiet earlier.
pub const HANDOFF_AFTER_PACKETS: u64 = 4;
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

/// Counter directions ([`Dir`]).
pub const DIR_FROM_CONTAINER: usize = Dir::FromContainer.index();
pub const DIR_TO_CONTAINER: usize = Dir::ToContainer.index();
pub const DIRS: usize = Dir::ALL.len();

/// Counter verdicts ([`Verdict`], which documents each).
pub const V_FAST: usize = Verdict::Fast.index();
pub const V_FAST_UPLINK: usize = Verdict::FastUplink.index();
pub const V_STACK: usize = Verdict::Stack.index();
pub const V_DROP_SPOOF_IP: usize = Verdict::DropSpoofIp.index();
pub const V_DROP_SPOOF_MAC: usize = Verdict::DropSpoofMac.index();
pub const V_DROP_POLICY: usize = Verdict::DropPolicy.index();
pub const V_DROP_ERROR: usize = Verdict::DropError.index();
pub const V_RESERVED: usize = Verdict::Reserved.index();
pub const VERDICTS: usize = Verdict::ALL.len();

/// Human names of the verdicts, indexed by `V_*`.
pub const VERDICT_NAMES: [&str; VERDICTS] = Verdict::NAMES;
/// Human names of the directions, indexed by `DIR_*`.
pub const DIR_NAMES: [&str; DIRS] = Dir::NAMES;

/// Endpoint modes ([`Mode`]).
pub const MODE_TC: u32 = Mode::Tc.as_u32();
pub const MODE_XDP: u32 = Mode::Xdp.as_u32();

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

impl EndpointRecord {
    /// The anti-spoofing mode its flags say.
    pub const fn spoof(&self) -> Spoof {
        Spoof::from_flags(self.flags)
    }

    /// The mode as `list` shows it: "bridge" for a bridge port (`EP_BRIDGE_PORT`, always tc
    /// hooks), else [`Mode::name`] ("tc" for any value that is not `xdp`, as the datapath
    /// treats it).
    pub const fn mode_name(&self) -> &'static str {
        if self.flags & EP_BRIDGE_PORT != 0 {
            "bridge"
        } else if self.target.mode == Mode::Xdp.as_u32() {
            Mode::Xdp.name()
        } else {
            Mode::Tc.name()
        }
    }
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
    /// The packets and bytes counted in `dir` under `verdict`.
    #[inline(always)]
    pub fn get(&self, dir: Dir, verdict: Verdict) -> PacketBytes {
        self.c[dir.index()][verdict.index()]
    }

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
/// Both directions confirmed: the flow is admitted to the fast path (TCP under
/// [`CFG_TCP_HANDOFF`] also needs [`FLOW_LIBERAL`]).
pub const FLOW_ADMITTED: u64 = FLOW_CONFIRMED[0] | FLOW_CONFIRMED[1];
/// TCP: the agent made this flow's conntrack entry liberal (set by userspace only, after the
/// kernel acknowledged the change; cleared with the entry, by a new SYN, or by the agent when
/// the conntrack entry goes away).
pub const FLOW_LIBERAL: u64 = 1 << 4;
/// TCP: direction d sent a FIN. The flow is closing: every packet takes the kernel path; the
/// first packet after both FINs (the last ACK) removes the entry.
pub const FLOW_FIN: [u64; 2] = [1 << 5, 1 << 6];
/// TCP: reported on `VFP_HANDOFF` (once per admission).
pub const FLOW_REPORTED: u64 = 1 << 7;

/// A TCP hand-off candidate (`VFP_HANDOFF` ring buffer record).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandoffEvent {
    pub key: FlowKey,
    pub _pad: u32,
    /// CLOCK_MONOTONIC ns when the datapath reported it.
    pub at_ns: u64,
}

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
/// TCP flows reported to the agent for hand-off.
pub const FS_REPORTED: usize = 5;
/// Reports lost because `VFP_HANDOFF` was full (the agent's periodic check finds them).
pub const FS_REPORT_LOST: usize = 6;
pub const FLOW_STATS: usize = 8;
pub const FLOW_STAT_NAMES: [&str; 7] = [
    "created",
    "admitted",
    "torn_down",
    "expired",
    "insert_failed",
    "reported",
    "report_lost",
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
    unsafe impl aya::Pod for HandoffEvent {}
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
        assert_eq!(size_of::<HandoffEvent>(), size_of::<FlowKey>() + 4 + 8);
        let bits = [
            FLOW_PENDING[0],
            FLOW_PENDING[1],
            FLOW_CONFIRMED[0],
            FLOW_CONFIRMED[1],
            FLOW_LIBERAL,
            FLOW_FIN[0],
            FLOW_FIN[1],
            FLOW_REPORTED,
        ];
        assert_eq!(bits.iter().fold(0, |a, b| a | b).count_ones(), 8);
    }

    /// Every enum: ALL is in index order and complete (indices 0..N, unique), names are unique,
    /// and index, u32 and name all round-trip.
    macro_rules! round_trip {
        ($t:ty) => {{
            let all = <$t>::ALL;
            for (i, v) in all.iter().enumerate() {
                assert_eq!(v.index(), i, "{v:?}: ALL in index order, no gaps");
                assert_eq!(v.as_u32() as usize, i);
                assert_eq!(<$t>::from_u32(v.as_u32()), Some(*v));
                assert_eq!(<$t>::try_from(v.as_u32()), Ok(*v));
                assert_eq!(<$t>::from_name(v.name()), Some(*v));
                assert_eq!(v.name().parse::<$t>(), Ok(*v));
                assert_eq!(<$t>::NAMES[i], v.name());
                assert_eq!(std::format!("{v}"), v.name());
                for w in &all[i + 1..] {
                    assert_ne!(v.name(), w.name(), "names unique");
                }
            }
            let n = all.len() as u32;
            assert_eq!(<$t>::from_u32(n), None, "nothing past ALL");
            assert_eq!(<$t>::try_from(n).unwrap_err().value, n);
            assert_eq!(<$t>::from_name("no-such-name"), None);
            let err = "no-such-name".parse::<$t>().unwrap_err();
            assert_eq!(err.valid, &<$t>::NAMES[..]);
        }};
    }

    #[test]
    fn enums_round_trip() {
        round_trip!(Dir);
        round_trip!(Verdict);
        round_trip!(Mode);
        round_trip!(Spoof);
        round_trip!(Hook);
        round_trip!(Program);
    }

    /// The names and indices veth-user, the JSON output and the pinned maps have always used.
    #[test]
    fn enums_keep_the_abi_values_and_names() {
        assert_eq!(
            VERDICT_NAMES,
            [
                "fast",
                "fast_uplink",
                "stack",
                "drop_spoof_ip",
                "drop_spoof_mac",
                "drop_policy",
                "drop_error",
                "reserved",
            ]
        );
        assert_eq!(DIR_NAMES, ["from_container", "to_container"]);
        assert_eq!(
            (
                V_FAST,
                V_FAST_UPLINK,
                V_STACK,
                V_DROP_SPOOF_IP,
                V_DROP_SPOOF_MAC
            ),
            (0, 1, 2, 3, 4)
        );
        assert_eq!(
            (V_DROP_POLICY, V_DROP_ERROR, V_RESERVED, VERDICTS),
            (5, 6, 7, 8)
        );
        assert_eq!((DIR_FROM_CONTAINER, DIR_TO_CONTAINER, DIRS), (0, 1, 2));
        assert_eq!((MODE_TC, MODE_XDP), (0, 1));
        assert_eq!(Mode::NAMES, ["tc", "xdp"]);
        assert_eq!(
            Hook::NAMES,
            [
                "tc-ingress",
                "tc-egress",
                "xdp",
                "uplink-ingress",
                "uplink-egress"
            ]
        );
        assert_eq!(
            Program::NAMES,
            [
                "vfp_tc_ingress",
                "vfp_tc_egress",
                "vfp_xdp",
                "vfp_uplink_ingress",
                "vfp_l2_ingress",
                "vfp_uplink_egress",
            ]
        );
        assert_eq!(Spoof::NAMES, ["off", "enforce", "audit"]);
    }

    #[test]
    fn hooks_and_programs_map_both_ways() {
        for h in Hook::ALL {
            assert_eq!(h.program().hook(), h);
            assert_eq!(h.program_for(false), h.program());
            assert_eq!(h.program_for(true).hook(), h);
        }
        assert_eq!(Hook::TcIngress.program_for(true), Program::L2Ingress);
        for p in Program::ALL {
            assert!(
                p == p.hook().program() || p == p.hook().program_for(true),
                "{p:?} is reachable from its hook"
            );
            assert_eq!(p.is_xdp(), p.hook() == Hook::Xdp);
        }
        assert_eq!(
            Hook::of_endpoint(Mode::Tc),
            [Hook::TcIngress, Hook::TcEgress]
        );
        assert_eq!(Hook::of_endpoint(Mode::Xdp).last(), Some(&Hook::Xdp));
        assert!(Hook::UPLINK.iter().all(|h| h.name().starts_with("uplink-")));
    }

    #[test]
    fn spoof_modes_are_the_record_flags() {
        for s in Spoof::ALL {
            assert_eq!(Spoof::from_flags(s.flags()), s);
        }
        assert_eq!(
            Spoof::from_flags(EP_SPOOF_ENFORCE | EP_SPOOF_AUDIT),
            Spoof::Enforce
        );
        assert_eq!(Spoof::from_flags(EP_CNI | EP_ADOPTED), Spoof::Off);
    }

    #[test]
    fn record_helpers_say_what_list_shows() {
        let mut r = EndpointRecord::default();
        assert_eq!((r.mode_name(), r.spoof()), ("tc", Spoof::Off));
        r.target.mode = MODE_XDP;
        r.flags = EP_SPOOF_AUDIT;
        assert_eq!((r.mode_name(), r.spoof()), ("xdp", Spoof::Audit));
        r.target.mode = MODE_TC;
        r.flags = EP_ADOPTED | EP_BRIDGE_PORT;
        assert_eq!((r.mode_name(), r.spoof()), ("bridge", Spoof::Off));
    }

    #[test]
    fn verdict_classes_and_counter_access() {
        let fast: std::vec::Vec<_> = Verdict::ALL.into_iter().filter(|v| v.is_fast()).collect();
        assert_eq!(fast, [Verdict::Fast, Verdict::FastUplink]);
        assert!(!Verdict::Stack.is_drop() && !Verdict::Stack.is_fast());
        assert!(Verdict::DropSpoofIp.is_drop() && Verdict::DropError.is_drop());
        let mut c = Counters::default();
        c.c[DIR_TO_CONTAINER][V_DROP_ERROR].packets = 3;
        assert_eq!(c.get(Dir::ToContainer, Verdict::DropError).packets, 3);
        assert_eq!(c.get(Dir::FromContainer, Verdict::DropError).packets, 0);
    }
}
