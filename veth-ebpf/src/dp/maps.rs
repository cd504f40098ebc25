//! The maps, by the ABI in `veth-common`. BTF-defined so `bpftool map dump` shows named fields.
//! Hash maps are not preallocated: the control plane inserts, the datapath only looks up.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray, RingBuf},
    macros::btf_map,
};
use veth_common::{
    CONFIG_FLAGS, CONFIG_SLOTS, CniOwner, Counters, DEFAULT_FLOW_TABLE_SIZE, EndpointRecord,
    FlowKey, FlowState, FlowStats, HANDOFF_RING_BYTES, HandoffEvent, Intent, MAX_ENDPOINTS,
    MAX_INTENTS, MAX_SLOTS, NAME_LEN, Target, Uplink,
};

const NO_PREALLOC: usize = BPF_F_NO_PREALLOC as usize;

/// IPv4 endpoint address (network order) → where to deliver it.
#[btf_map]
pub static VFP_EP4: HashMap<[u8; 4], Target, MAX_ENDPOINTS, NO_PREALLOC> = HashMap::new();

/// IPv6 endpoint address → where to deliver it.
#[btf_map]
pub static VFP_EP6: HashMap<[u8; 16], Target, MAX_ENDPOINTS, NO_PREALLOC> = HashMap::new();

/// Host ifindex → the endpoint's full record (control plane registry; the datapath may read it).
#[btf_map]
pub static VFP_ENDPOINTS: HashMap<u32, EndpointRecord, MAX_ENDPOINTS, NO_PREALLOC> = HashMap::new();

/// Counter slot → per-CPU counters by direction and verdict.
#[btf_map]
pub static VFP_COUNTERS: PerCpuArray<Counters, MAX_SLOTS> = PerCpuArray::new();

/// Host ifindex → host ifindex: XDP redirect targets (every endpoint's host end).
#[btf_map]
pub static VFP_DEVMAP: DevMapHash<MAX_ENDPOINTS> = DevMapHash::new();

/// Container MAC → its bridge port (bridge bypass). `Target::network` is the bridge ifindex.
#[btf_map]
pub static VFP_L2: HashMap<[u8; 6], Target, MAX_ENDPOINTS, NO_PREALLOC> = HashMap::new();

/// Uplink ifindex → uplink: where `--egress fast` may send container traffic.
#[btf_map]
pub static VFP_UPLINKS: HashMap<u32, Uplink, 64> = HashMap::new();

/// Host end name → intent of an operation in flight (control plane only: the ownership
/// journal, see docs/ARCHITECTURE.md "Ownership").
#[btf_map]
pub static VFP_JOURNAL: HashMap<[u8; NAME_LEN], Intent, MAX_INTENTS, NO_PREALLOC> = HashMap::new();

/// Host ifindex → the CNI container ID and ifname it was added for (control plane only).
#[btf_map]
pub static VFP_CNI_OWNERS: HashMap<u32, CniOwner, MAX_ENDPOINTS, NO_PREALLOC> = HashMap::new();
/// Admission flow table (both directions of a flow in one entry). The capacity is set by the
/// control plane when the map is first created (`--flow-table-size`); LRU evicts the oldest.
#[btf_map]
pub static VFP_FLOWS: LruHashMap<FlowKey, FlowState, { DEFAULT_FLOW_TABLE_SIZE as usize }> =
    LruHashMap::new();

/// Node-wide flow counters (one slot).
#[btf_map]
pub static VFP_FLOW_STATS: PerCpuArray<FlowStats, 1> = PerCpuArray::new();

/// TCP hand-off candidates for the agent (see `dp::flow`).
#[btf_map]
pub static VFP_HANDOFF: RingBuf<HandoffEvent, HANDOFF_RING_BYTES> = RingBuf::new();

/// Small config array: ABI version and feature switches.
#[btf_map]
pub static VFP_CONFIG: Array<u32, { CONFIG_SLOTS as usize }> = Array::new();

#[inline(always)]
pub fn config_flags() -> u32 {
    match VFP_CONFIG.get(CONFIG_FLAGS) {
        Some(v) => *v,
        None => 0,
    }
}
