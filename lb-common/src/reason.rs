//! One table of verdict reasons: every exit of the kernel programs that is not a plain
//! pass is counted under one of these slots (Katran's balancer_consts.h habit). The agent
//! exports them under the names in [`Reason::name`]; the dashboard has a panel for them.

/// A reason slot in the per-CPU `REASONS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Packet was not for a service and passed untouched.
    PassNotService = 0,
    /// Packet too short for the headers it claims.
    DropMalformed = 1,
    /// IPv4 fragment (non-first) of a service flow: cannot be load balanced by port.
    PassFragment = 2,
    /// A service was hit but had no usable endpoint: a TCP RST / ICMP unreachable was sent.
    RejectNoEndpoints = 3,
    /// Backend id 0 or a dangling backend id in a lookup table.
    DropNoBackend = 4,
    /// The conntrack map refused an insert (full and not LRU-evictable).
    DropConntrackFull = 5,
    /// No free SNAT port for a flow that needed one.
    DropSnatExhausted = 6,
    /// A packet was rewritten for a new connection (DNAT, maybe SNAT).
    NatNew = 7,
    /// A packet was rewritten on an established connection.
    NatEstablished = 8,
    /// A reply was reverse-translated back to the service address.
    ReverseNat = 9,
    /// An ICMP error for a tracked flow was translated back.
    IcmpErrorTranslated = 10,
    /// IP header with options: handled through the slow path on purpose.
    IpOptions = 11,
    /// A packet the program chose to pass to the stack unmodified for other reasons.
    PassOther = 12,
    /// A checksum or header rewrite helper failed.
    DropRewriteFailed = 13,
    /// A new connection to a Service entry with a Local traffic policy and no endpoint
    /// on this node while the Service has endpoints elsewhere: dropped, as kube-proxy does.
    DropNoLocalEndpoints = 14,
    /// A new connection to a LoadBalancer address from a source outside the Service's
    /// `loadBalancerSourceRanges`: dropped.
    DropSourceRange = 15,
}

impl Reason {
    /// Number of slots; the size of the `REASONS` array.
    pub const COUNT: u32 = 16;

    pub const ALL: [Reason; Self::COUNT as usize] = [
        Reason::PassNotService,
        Reason::DropMalformed,
        Reason::PassFragment,
        Reason::RejectNoEndpoints,
        Reason::DropNoBackend,
        Reason::DropConntrackFull,
        Reason::DropSnatExhausted,
        Reason::NatNew,
        Reason::NatEstablished,
        Reason::ReverseNat,
        Reason::IcmpErrorTranslated,
        Reason::IpOptions,
        Reason::PassOther,
        Reason::DropRewriteFailed,
        Reason::DropNoLocalEndpoints,
        Reason::DropSourceRange,
    ];

    /// The metric label value for this slot.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::PassNotService => "pass_not_service",
            Reason::DropMalformed => "drop_malformed",
            Reason::PassFragment => "pass_fragment",
            Reason::RejectNoEndpoints => "reject_no_endpoints",
            Reason::DropNoBackend => "drop_no_backend",
            Reason::DropConntrackFull => "drop_conntrack_full",
            Reason::DropSnatExhausted => "drop_snat_exhausted",
            Reason::NatNew => "nat_new",
            Reason::NatEstablished => "nat_established",
            Reason::ReverseNat => "reverse_nat",
            Reason::IcmpErrorTranslated => "icmp_error_translated",
            Reason::IpOptions => "ip_options",
            Reason::PassOther => "pass_other",
            Reason::DropRewriteFailed => "drop_rewrite_failed",
            Reason::DropNoLocalEndpoints => "drop_no_local_endpoints",
            Reason::DropSourceRange => "drop_source_range",
        }
    }
}
