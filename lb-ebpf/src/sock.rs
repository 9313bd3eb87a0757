//! Socket-level load balancing for the node's own processes (hostNetwork pods, kubelet),
//! Cilium's "socket LB": cgroup/connect4 and cgroup/sendmsg4 replace a service address
//! with a backend before the kernel routes anything, cgroup/recvmsg4 and
//! cgroup/getpeername4 show the service address again to the application. No per-packet
//! NAT at all for these flows. cgroup sock_addr hooks: Linux 4.17 (connect4), 4.18
//! (sendmsg4), 5.2 (recvmsg4), 5.8 (getpeername4); bpf_get_netns_cookie for them: 5.8.
//!
//! Several agents (one per node network namespace) may share one cgroup hierarchy on a
//! test machine: each program acts only on sockets of its own node's namespace
//! (`NodeConfig.netns_cookie`).
use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns},
    programs::SockAddrContext,
};
use lb_common::{
    AffinityKey, AffinityValue, NodeConfig, PROTO_TCP, PROTO_UDP, Reason, SCOPE_INTERNAL,
    SVC_F_AFFINITY, SVC_F_DROP_EMPTY, ServiceKey, SockRevKey, SockRevValue, maglev::flow_hash,
};

use crate::maps::{
    LB_AFFINITY, LB_BACKENDS, LB_MAGLEV, LB_SERVICES, LB_SOCK_REVNAT, config, count, count_svc,
};

const AF_INET: u32 = 2;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;

/// Allow the syscall (the only verdict recvmsg4/getpeername4 may return).
pub const ALLOW: i32 = 1;
/// Refuse connect()/sendmsg() with EPERM: the service has no endpoints.
pub const REJECT: i32 = 0;

/// Config when this socket lives in this agent's node namespace.
#[inline(always)]
fn own_config(ctx: &SockAddrContext) -> Option<NodeConfig> {
    let cfg = config()?;
    // SAFETY: helper on our own context.
    let cookie = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    (cookie == cfg.netns_cookie).then_some(cfg)
}

#[inline(always)]
fn proto(ctx: &SockAddrContext) -> Option<u8> {
    // SAFETY: reading fields of our own context.
    let (family, ty) = unsafe { ((*ctx.sock_addr).user_family, (*ctx.sock_addr).type_) };
    if family != AF_INET {
        return None;
    }
    match ty {
        SOCK_STREAM => Some(PROTO_TCP),
        SOCK_DGRAM => Some(PROTO_UDP),
        _ => None,
    }
}

/// connect4 / sendmsg4: a service destination becomes a backend destination.
#[inline(always)]
pub fn forward(ctx: &SockAddrContext) -> i32 {
    let Some(cfg) = own_config(ctx) else {
        return ALLOW;
    };
    let Some(proto) = proto(ctx) else {
        return ALLOW;
    };
    // SAFETY: reading fields of our own context.
    let (daddr, dport) = unsafe { ((*ctx.sock_addr).user_ip4, (*ctx.sock_addr).user_port as u16) };
    let skey = ServiceKey {
        addr_be: daddr,
        port_be: dport,
        proto,
        scope: SCOPE_INTERNAL,
    };
    // SAFETY: the value is copied out at once.
    let Some(svc) = (unsafe { LB_SERVICES.get(&skey) }).copied() else {
        return ALLOW;
    };
    count_svc(svc.lut_id, 0);
    if svc.backend_count == 0 {
        // A socket cannot be left to time out the way a dropped SYN does: the connect
        // fails at once either way, counted under the packet path's reason.
        count(if svc.flags & SVC_F_DROP_EMPTY != 0 {
            Reason::DropNoLocalEndpoints
        } else {
            Reason::RejectNoEndpoints
        });
        return REJECT;
    }
    // SAFETY: helper on our own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let m = cfg.maglev_size;
    // The source port is not chosen yet at connect time: the socket cookie stands in for
    // it as per-connection entropy. Affinity keys on the node address (the client).
    let affinity = svc.flags & SVC_F_AFFINITY != 0;
    // A new (or expired) affinity picks like any new connection, so that after the
    // timeout the node is balanced again (kube-proxy's random pick).
    let h = flow_hash(cookie as u32, daddr, (cookie >> 32) as u16, dport, proto);
    let Some(slot) = h.checked_rem(m) else {
        return ALLOW;
    };
    let mut id = LB_MAGLEV
        .get(svc.lut_id.wrapping_mul(m).wrapping_add(slot))
        .copied()
        .unwrap_or(0);
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let akey = AffinityKey {
        lut_id: svc.lut_id,
        client_addr_be: cfg.node_addr_be,
    };
    if affinity {
        // SAFETY: the value is copied out at once.
        if let Some(a) = unsafe { LB_AFFINITY.get(&akey) }
            && now.wrapping_sub(a.last_used_ns) < u64::from(svc.affinity_timeout_s) * 1_000_000_000
            // SAFETY: only checks presence.
            && unsafe { LB_BACKENDS.get(&a.backend_id) }.is_some()
        {
            id = a.backend_id;
        }
    }
    if id == 0 {
        count(Reason::DropNoBackend);
        return ALLOW;
    }
    // SAFETY: the value is copied out at once.
    let Some(b) = (unsafe { LB_BACKENDS.get(&id) }).copied() else {
        count(Reason::DropNoBackend);
        return ALLOW;
    };
    if affinity {
        let v = AffinityValue {
            backend_id: id,
            _pad: 0,
            last_used_ns: now,
        };
        let _ = LB_AFFINITY.insert(&akey, &v, 0);
    }
    let rkey = SockRevKey {
        cookie,
        backend_addr_be: b.addr_be,
        backend_port_be: b.port_be,
        _pad: 0,
    };
    let rval = SockRevValue {
        vip_addr_be: daddr,
        vip_port_be: dport,
        _pad: 0,
    };
    let _ = LB_SOCK_REVNAT.insert(&rkey, &rval, 0);
    // SAFETY: connect4/sendmsg4 may write the destination of our own context.
    unsafe {
        (*ctx.sock_addr).user_ip4 = b.addr_be;
        (*ctx.sock_addr).user_port = u32::from(b.port_be);
    }
    count(Reason::NatNew);
    ALLOW
}

/// recvmsg4 / getpeername4: a backend address the socket talks to shows as the service.
#[inline(always)]
pub fn reverse(ctx: &SockAddrContext) -> i32 {
    if own_config(ctx).is_none() || proto(ctx).is_none() {
        return ALLOW;
    }
    // SAFETY: helper on our own context; fields of our own context.
    let key = unsafe {
        SockRevKey {
            cookie: bpf_get_socket_cookie(ctx.sock_addr.cast()),
            backend_addr_be: (*ctx.sock_addr).user_ip4,
            backend_port_be: (*ctx.sock_addr).user_port as u16,
            _pad: 0,
        }
    };
    // SAFETY: the value is copied out at once.
    if let Some(v) = (unsafe { LB_SOCK_REVNAT.get(&key) }).copied() {
        // SAFETY: recvmsg4/getpeername4 may write the address of our own context.
        unsafe {
            (*ctx.sock_addr).user_ip4 = v.vip_addr_be;
            (*ctx.sock_addr).user_port = u32::from(v.vip_port_be);
        }
        count(Reason::ReverseNat);
    }
    ALLOW
}
