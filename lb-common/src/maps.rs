//! Map names, keys and values. One line of purpose per map; the kernel and the agent both
//! refer to the names here so that a rename cannot drift between them.
//!
//! Write order (agent): backends, then Maglev slots, then the service entry last; delete in
//! the reverse order. A packet therefore never sees a service whose table points at a
//! backend that is not there yet.

/// Service entries: (address, port, protocol, scope) -> [`ServiceValue`]. Hash.
pub const MAP_SERVICES: &str = "LB_SERVICES";
/// Backends by id -> [`BackendValue`]. Hash (ids are sparse and never reused quickly).
pub const MAP_BACKENDS: &str = "LB_BACKENDS";
/// Maglev lookup tables, flattened: index `lut_id * maglev_size + slot` -> backend id. Array.
pub const MAP_MAGLEV: &str = "LB_MAGLEV";
/// Forward connection tracking: original tuple -> [`CtValue`]. LRU hash.
pub const MAP_CONNTRACK: &str = "LB_CONNTRACK";
/// Reverse NAT: reply tuple as it arrives -> [`NatValue`]. LRU hash.
pub const MAP_REVNAT: &str = "LB_REVNAT";
/// ClientIP session affinity: (lut id, client address) -> [`AffinityValue`]. LRU hash.
pub const MAP_AFFINITY: &str = "LB_AFFINITY";
/// Per-service-entry counters, indexed by `lut_id`. Per-CPU array of [`SvcCounters`].
pub const MAP_SVC_COUNTERS: &str = "LB_SVC_COUNTERS";
/// Verdict reasons, indexed by [`crate::Reason`]. Per-CPU array of u64.
pub const MAP_REASONS: &str = "LB_REASONS";
/// Node configuration, one entry at index 0: [`NodeConfig`]. Array.
pub const MAP_CONFIG: &str = "LB_CONFIG";
/// Socket-level LB (cgroup connect4/sendmsg4): (socket cookie, backend) -> service address
/// to show in recvmsg4/getpeername4: [`SockRevKey`] -> [`SockRevValue`]. LRU hash.
pub const MAP_SOCK_REVNAT: &str = "LB_SOCK_REVNAT";

/// `loadBalancerSourceRanges`: (lut id, source network) -> 1, longest-prefix match over
/// [`SrcRangeKey`] with prefix length `32 + network bits`. A service entry with
/// [`SVC_F_SRC_RANGES`] takes new connections only from sources found here. LPM trie.
pub const MAP_SRC_RANGES: &str = "LB_SRC_RANGES";

/// IPv4 fragment tracking: (source, destination, IP id, protocol) of a fragmented TCP/UDP
/// datagram -> the ports its first fragment carried, so that later fragments (which have
/// no L4 header) follow the same translation: [`FragKey`] -> [`FragValue`]. LRU hash.
pub const MAP_FRAGS: &str = "LB_FRAGS";

/// Every map of the object, for tools that open or remove all pins.
pub const ALL_MAPS: [&str; 12] = [
    MAP_SERVICES,
    MAP_BACKENDS,
    MAP_MAGLEV,
    MAP_CONNTRACK,
    MAP_REVNAT,
    MAP_AFFINITY,
    MAP_SVC_COUNTERS,
    MAP_REASONS,
    MAP_CONFIG,
    MAP_SOCK_REVNAT,
    MAP_SRC_RANGES,
    MAP_FRAGS,
];

/// Default capacities; the agent can override them with flags before load.
pub const DEFAULT_MAX_SERVICES: u32 = 4096;
pub const DEFAULT_MAX_BACKENDS: u32 = 65_536;
pub const DEFAULT_MAGLEV_SIZE: u32 = 1021;
pub const DEFAULT_CONNTRACK_SIZE: u32 = 262_144;
pub const DEFAULT_AFFINITY_SIZE: u32 = 65_536;
pub const DEFAULT_SRC_RANGES_SIZE: u32 = 16_384;
pub const DEFAULT_FRAGS_SIZE: u32 = 8192;

/// IP protocol numbers as used in keys.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;

/// Traffic from outside the cluster (XDP on the external interface).
pub const SCOPE_EXTERNAL: u8 = 0;
/// Traffic from pods or the node itself.
pub const SCOPE_INTERNAL: u8 = 1;

/// Key of [`MAP_SERVICES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ServiceKey {
    pub addr_be: u32,
    pub port_be: u16,
    pub proto: u8,
    /// [`SCOPE_EXTERNAL`] or [`SCOPE_INTERNAL`].
    pub scope: u8,
}
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 8);

/// The service has a ClientIP affinity: use [`MAP_AFFINITY`] with `affinity_timeout_s`.
pub const SVC_F_AFFINITY: u32 = 1 << 0;
/// externalTrafficPolicy/internalTrafficPolicy Local: never SNAT, the table has only local
/// endpoints.
pub const SVC_F_LOCAL: u32 = 1 << 1;
/// A NodePort entry (address is a node address).
pub const SVC_F_NODEPORT: u32 = 1 << 2;
/// A LoadBalancer ingress or externalIP entry.
pub const SVC_F_EXTERNAL_IP: u32 = 1 << 3;
/// A ClusterIP entry.
pub const SVC_F_CLUSTER_IP: u32 = 1 << 4;
/// With `backend_count == 0`: the Service has endpoints, just none this entry's Local
/// traffic policy may use, so new connections are dropped (kube-proxy's "has no local
/// endpoints" DROP), not rejected: a load balancer's health check steers clients away.
pub const SVC_F_DROP_EMPTY: u32 = 1 << 5;
/// The entry has `loadBalancerSourceRanges`: new connections from a source not in
/// [`MAP_SRC_RANGES`] under this entry's lut id are dropped (kube-proxy's KUBE-FW chain).
pub const SVC_F_SRC_RANGES: u32 = 1 << 6;

/// Key of [`MAP_FRAGS`]: one fragmented datagram as its fragments arrive.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragKey {
    pub saddr_be: u32,
    pub daddr_be: u32,
    pub id_be: u16,
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<FragKey>() == 12);

/// Value of [`MAP_FRAGS`]: the ports of the datagram's first fragment.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragValue {
    pub sport_be: u16,
    pub dport_be: u16,
}
const _: () = assert!(core::mem::size_of::<FragValue>() == 4);

/// Data of a [`MAP_SRC_RANGES`] key (after the LPM prefix length): the lut id, matched in
/// full, then the source network.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SrcRangeKey {
    /// Big-endian, so that it is the first 32 bits the trie matches.
    pub lut_id_be: u32,
    pub addr_be: u32,
}
const _: () = assert!(core::mem::size_of::<SrcRangeKey>() == 8);

/// Value of [`MAP_SERVICES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceValue {
    /// Index of this entry's Maglev table and counters; stable for the entry's life.
    pub lut_id: u32,
    /// Number of usable backends in the table; 0 means reject (RST / ICMP unreachable),
    /// or drop with [`SVC_F_DROP_EMPTY`].
    pub backend_count: u32,
    /// `SVC_F_*` bits.
    pub flags: u32,
    /// ClientIP affinity timeout in seconds (valid with [`SVC_F_AFFINITY`]).
    pub affinity_timeout_s: u32,
}
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 16);

/// The backend runs on this node (no SNAT needed for external traffic).
pub const BACKEND_F_LOCAL: u8 = 1 << 0;

/// Value of [`MAP_BACKENDS`], keyed by a u32 backend id (0 is never a valid id).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BackendValue {
    pub addr_be: u32,
    pub port_be: u16,
    pub proto: u8,
    /// `BACKEND_F_*` bits.
    pub flags: u8,
}
const _: () = assert!(core::mem::size_of::<BackendValue>() == 8);

/// A 5-tuple as seen at the hook: key of [`MAP_CONNTRACK`] and [`MAP_REVNAT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub saddr_be: u32,
    pub daddr_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 16);

/// The flow was source-NATed to the node address (external traffic to a remote backend,
/// or hairpin).
pub const CT_F_SNAT: u32 = 1 << 0;
/// A TCP FIN or RST was seen: the entry may be replaced by a new SYN.
pub const CT_F_CLOSING: u32 = 1 << 1;
/// Hairpin flow (a pod reached itself through a Service): the source was rewritten to
/// [`HAIRPIN_ADDR_BE`] and the packets are sent straight back into the pod's veth.
pub const CT_F_HAIRPIN: u32 = 1 << 2;

/// Link-local source address written on hairpin flows (169.254.42.1), so that a pod does
/// not receive a packet carrying its own address as the source (a martian it drops).
/// Network byte order, as every `_be` field.
pub const HAIRPIN_ADDR_BE: u32 = u32::from_ne_bytes([169, 254, 42, 1]);

/// Value of [`MAP_CONNTRACK`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtValue {
    /// Backend chosen for the flow; looked up per packet so a deleted backend is noticed.
    pub backend_id: u32,
    /// The service entry (for counters and re-selection).
    pub lut_id: u32,
    /// Source address/port written on forward packets when [`CT_F_SNAT`] is set.
    pub snat_addr_be: u32,
    pub snat_port_be: u16,
    pub _pad: u16,
    /// `CT_F_*` bits.
    pub flags: u32,
    pub _pad2: u32,
    /// bpf_ktime_get_ns() of the last packet.
    pub last_seen_ns: u64,
}
const _: () = assert!(core::mem::size_of::<CtValue>() == 32);

/// Value of [`MAP_REVNAT`]: how to rewrite a reply back to what the client expects.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatValue {
    /// Source address/port the client expects on replies (the service address).
    pub vip_addr_be: u32,
    pub vip_port_be: u16,
    pub _pad: u16,
    /// Destination the reply must go to (the client); differs from the arriving
    /// destination only when the forward direction was SNATed.
    pub client_addr_be: u32,
    pub client_port_be: u16,
    pub _pad1: u16,
    pub lut_id: u32,
    /// `CT_F_*` bits.
    pub flags: u32,
    pub last_seen_ns: u64,
}
const _: () = assert!(core::mem::size_of::<NatValue>() == 32);

/// Key of [`MAP_AFFINITY`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct AffinityKey {
    pub lut_id: u32,
    pub client_addr_be: u32,
}
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 8);

/// Value of [`MAP_AFFINITY`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AffinityValue {
    pub backend_id: u32,
    pub _pad: u32,
    pub last_used_ns: u64,
}
const _: () = assert!(core::mem::size_of::<AffinityValue>() == 16);

/// Value of [`MAP_SVC_COUNTERS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SvcCounters {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<SvcCounters>() == 16);

/// Value of [`MAP_CONFIG`] at index 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NodeConfig {
    /// Address used to SNAT external traffic sent to a remote backend.
    pub node_addr_be: u32,
    /// Maglev table size M (prime); slots per service entry in [`MAP_MAGLEV`].
    pub maglev_size: u32,
    /// Network namespace cookie of the agent's node, so socket hooks attached to a shared
    /// cgroup act only on this node's sockets.
    pub netns_cookie: u64,
    /// SNAT source port range (host order), inclusive.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// Non-zero once the agent has written the config.
    pub ready: u32,
}
const _: () = assert!(core::mem::size_of::<NodeConfig>() == 24);

/// Key of [`MAP_SOCK_REVNAT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SockRevKey {
    /// bpf_get_socket_cookie() of the client socket.
    pub cookie: u64,
    pub backend_addr_be: u32,
    pub backend_port_be: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<SockRevKey>() == 16);

/// Value of [`MAP_SOCK_REVNAT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockRevValue {
    pub vip_addr_be: u32,
    pub vip_port_be: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<SockRevValue>() == 8);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type below is #[repr(C)], has no implicit padding (checked by the size
    // assertions above) and is valid for any bit pattern.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceValue {}
    unsafe impl aya::Pod for super::BackendValue {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::CtValue {}
    unsafe impl aya::Pod for super::NatValue {}
    unsafe impl aya::Pod for super::AffinityKey {}
    unsafe impl aya::Pod for super::AffinityValue {}
    unsafe impl aya::Pod for super::SvcCounters {}
    unsafe impl aya::Pod for super::NodeConfig {}
    unsafe impl aya::Pod for super::SockRevKey {}
    unsafe impl aya::Pod for super::SockRevValue {}
    unsafe impl aya::Pod for super::SrcRangeKey {}
    unsafe impl aya::Pod for super::FragKey {}
    unsafe impl aya::Pod for super::FragValue {}
}
