//! The maps of the data plane, one line of purpose each. Names, keys and values are the
//! contract in `lb_common::maps`; capacities here are defaults that the loader overrides
//! (`EbpfLoader::set_max_entries`) before creation. Every map is pinned by name, so an
//! agent restart finds and reuses them (established flows keep their conntrack).
use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
};
use lb_common::{
    AffinityKey, AffinityValue, BackendValue, CtValue, DEFAULT_AFFINITY_SIZE,
    DEFAULT_CONNTRACK_SIZE, DEFAULT_FRAGS_SIZE, DEFAULT_MAGLEV_SIZE, DEFAULT_MAX_BACKENDS,
    DEFAULT_MAX_SERVICES, DEFAULT_SRC_RANGES_SIZE, FlowKey, FragKey, FragValue, NatValue,
    NodeConfig, Reason, ServiceKey, ServiceValue, SockRevKey, SockRevValue, SrcRangeKey,
    SvcCounters,
};

/// (address, port, protocol, scope) -> service entry. Written last by the agent.
#[map]
pub static LB_SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::pinned(DEFAULT_MAX_SERVICES, 0);

/// Backend id -> address/port/flags. Written first by the agent.
#[map]
pub static LB_BACKENDS: HashMap<u32, BackendValue> = HashMap::pinned(DEFAULT_MAX_BACKENDS, 0);

/// Flattened Maglev tables: `lut_id * maglev_size + slot` -> backend id. Mmapable so the
/// agent writes slots with plain stores (Linux 5.5+).
#[map]
pub static LB_MAGLEV: Array<u32> =
    Array::pinned(DEFAULT_MAX_SERVICES * DEFAULT_MAGLEV_SIZE, BPF_F_MMAPABLE);

/// Original tuple -> chosen backend (and SNAT address/port). LRU: old flows age out.
#[map]
pub static LB_CONNTRACK: LruHashMap<FlowKey, CtValue> =
    LruHashMap::pinned(DEFAULT_CONNTRACK_SIZE, 0);

/// Reply tuple as it arrives -> service address and client to restore. LRU.
#[map]
pub static LB_REVNAT: LruHashMap<FlowKey, NatValue> = LruHashMap::pinned(DEFAULT_CONNTRACK_SIZE, 0);

/// (lut id, client address) -> backend for ClientIP session affinity. LRU.
#[map]
pub static LB_AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::pinned(DEFAULT_AFFINITY_SIZE, 0);

/// Per-CPU packets/bytes per service entry (`lut_id`).
#[map]
pub static LB_SVC_COUNTERS: PerCpuArray<SvcCounters> = PerCpuArray::pinned(DEFAULT_MAX_SERVICES, 0);

/// Per-CPU count of every exit, indexed by `Reason`.
#[map]
pub static LB_REASONS: PerCpuArray<u64> = PerCpuArray::pinned(Reason::COUNT, 0);

/// The node's configuration at index 0.
#[map]
pub static LB_CONFIG: Array<NodeConfig> = Array::pinned(1, 0);

/// Socket LB: (socket cookie, backend address, backend port) -> service address/port, so
/// recvmsg4/getpeername4 show the address the application connected to. LRU.
#[map]
pub static LB_SOCK_REVNAT: LruHashMap<SockRevKey, SockRevValue> =
    LruHashMap::pinned(DEFAULT_CONNTRACK_SIZE, 0);

/// loadBalancerSourceRanges: (lut id, source network) -> 1, longest-prefix match.
#[map]
pub static LB_SRC_RANGES: LpmTrie<SrcRangeKey, u8> = LpmTrie::pinned(DEFAULT_SRC_RANGES_SIZE, 0);

/// Ports of fragmented datagrams, recorded from their first fragment. LRU.
#[map]
pub static LB_FRAGS: LruHashMap<FragKey, FragValue> = LruHashMap::pinned(DEFAULT_FRAGS_SIZE, 0);

/// True when `saddr_be` is inside one of the source ranges of service entry `lut_id`.
#[inline(always)]
pub fn source_allowed(lut_id: u32, saddr_be: u32) -> bool {
    let key = Key::new(
        64,
        SrcRangeKey {
            lut_id_be: lut_id.to_be(),
            addr_be: saddr_be,
        },
    );
    LB_SRC_RANGES.get(&key).is_some()
}

/// Counts one exit under `reason`.
#[inline(always)]
pub fn count(reason: Reason) {
    if let Some(p) = LB_REASONS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU value, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}

/// Adds one packet of `bytes` to the counters of service entry `lut_id`.
#[inline(always)]
pub fn count_svc(lut_id: u32, bytes: u32) {
    if let Some(p) = LB_SVC_COUNTERS.get_ptr_mut(lut_id) {
        // SAFETY: per-CPU value, no concurrent writer on this CPU.
        unsafe {
            (*p).packets += 1;
            (*p).bytes += u64::from(bytes);
        }
    }
}

/// The node configuration once the agent has written it.
#[inline(always)]
pub fn config() -> Option<NodeConfig> {
    let c = LB_CONFIG.get(0)?;
    if c.ready == 0 || c.maglev_size == 0 {
        return None;
    }
    Some(*c)
}
