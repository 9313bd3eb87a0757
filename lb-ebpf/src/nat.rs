//! The load-balancing decision, shared by the XDP and TC programs: reverse NAT of replies,
//! conntrack of established flows, service lookup, backend choice (Maglev, ClientIP
//! affinity), SNAT port allocation and the entries that make the reply find its way back.
use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns};
use lb_common::{
    AffinityKey, AffinityValue, BACKEND_F_LOCAL, BackendValue, CT_F_CLOSING, CT_F_HAIRPIN,
    CT_F_SNAT, CtValue, FlowKey, HAIRPIN_ADDR_BE, NatValue, NodeConfig, Reason, SCOPE_EXTERNAL,
    SVC_F_AFFINITY, SVC_F_DROP_EMPTY, SVC_F_LOCAL, SVC_F_SRC_RANGES, ServiceKey, ServiceValue,
    maglev::flow_hash,
};

use crate::{
    maps::{
        LB_AFFINITY, LB_BACKENDS, LB_CONNTRACK, LB_MAGLEV, LB_REVNAT, LB_SERVICES, count_svc,
        source_allowed,
    },
    packet::{Packet, Parsed, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

/// What the hook should do with the packet after the decision.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Let the kernel route the (possibly rewritten) packet.
    Pass,
    /// Send it back out of the interface it came in on (hairpin: back into the pod).
    BackOut,
    /// The service has no endpoints: answer with a TCP RST / ICMP port unreachable.
    Reject,
}

/// A decision and the reason slot it is counted under.
#[derive(Clone, Copy)]
pub struct Exit {
    pub action: Action,
    pub reason: Reason,
}

/// How many SNAT ports are tried before giving up (each try is one NOEXIST insert).
const SNAT_TRIES: u32 = 8;

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// The backend with id `id`, if it (still) exists. Id 0 is never valid.
#[inline(always)]
fn backend(id: u32) -> Option<BackendValue> {
    if id == 0 {
        return None;
    }
    // SAFETY: the value is copied out at once.
    unsafe { LB_BACKENDS.get(&id) }.copied()
}

/// Backend in slot `slot` of table `lut_id`; id 0 or a dangling id is `DropNoBackend`.
#[inline(always)]
fn lut_backend(lut_id: u32, slot: u32, m: u32) -> Result<(u32, BackendValue), Reason> {
    let idx = lut_id.wrapping_mul(m).wrapping_add(slot);
    let id = *LB_MAGLEV.get(idx).ok_or(Reason::DropNoBackend)?;
    let b = backend(id).ok_or(Reason::DropNoBackend)?;
    Ok((id, b))
}

/// Chooses a backend for a new flow: ClientIP affinity when the service has it (a fresh
/// entry whose backend still exists wins; otherwise the client address picks the slot and
/// the choice is remembered), else the 5-tuple hash picks the Maglev slot.
#[inline(always)]
fn select(
    svc: &ServiceValue,
    key: &FlowKey,
    cfg: &NodeConfig,
    now: u64,
) -> Result<(u32, BackendValue), Reason> {
    let m = cfg.maglev_size;
    if svc.flags & SVC_F_AFFINITY != 0 {
        let akey = AffinityKey {
            lut_id: svc.lut_id,
            client_addr_be: key.saddr_be,
        };
        let timeout_ns = u64::from(svc.affinity_timeout_s) * 1_000_000_000;
        if let Some(a) = LB_AFFINITY.get_ptr_mut(&akey) {
            // SAFETY: map value pointer, valid for this program run.
            let a = unsafe { &mut *a };
            if now.wrapping_sub(a.last_used_ns) < timeout_ns
                && let Some(b) = backend(a.backend_id)
            {
                a.last_used_ns = now;
                return Ok((a.backend_id, b));
            }
        }
        // A new (or expired) affinity picks like any new flow, by the 5-tuple hash, as
        // kube-proxy picks at random: after the timeout a client is balanced again.
        let slot = flow_hash(
            key.saddr_be,
            key.daddr_be,
            key.sport_be,
            key.dport_be,
            key.proto,
        )
        .checked_rem(m)
        .ok_or(Reason::PassOther)?;
        let (id, b) = lut_backend(svc.lut_id, slot, m)?;
        let v = AffinityValue {
            backend_id: id,
            _pad: 0,
            last_used_ns: now,
        };
        // Best effort: without the entry the next flow is balanced afresh.
        let _ = LB_AFFINITY.insert(&akey, &v, 0);
        return Ok((id, b));
    }
    let h = flow_hash(
        key.saddr_be,
        key.daddr_be,
        key.sport_be,
        key.dport_be,
        key.proto,
    );
    // checked_rem: no division by zero path for the verifier (panics are not allowed).
    lut_backend(svc.lut_id, h.checked_rem(m).ok_or(Reason::PassOther)?, m)
}

/// Reverse NAT: a reply whose arriving tuple is in `LB_REVNAT` gets the service address as
/// source and the original client as destination. `None` when the packet is no reply.
#[inline(always)]
pub fn reverse<P: Packet>(pkt: &P, p: &Parsed) -> Result<Option<Exit>, Reason> {
    // A SYN without ACK opens a connection and is never a reply: no lookup for it (new
    // connections are the costly path; replies carry ACK from the SYN-ACK on).
    if p.has(TCP_SYN) && !p.has(TCP_ACK) {
        return Ok(None);
    }
    let Some(nat) = LB_REVNAT.get_ptr_mut(&p.key) else {
        return Ok(None);
    };
    // SAFETY: map value pointer, valid for this program run.
    let nat = unsafe { &mut *nat };
    nat.last_seen_ns = now();
    let to = FlowKey {
        saddr_be: nat.vip_addr_be,
        sport_be: nat.vip_port_be,
        daddr_be: nat.client_addr_be,
        dport_be: nat.client_port_be,
        ..p.key
    };
    let hairpin = nat.flags & CT_F_HAIRPIN != 0;
    pkt.rewrite(p, &to)?;
    Ok(Some(Exit {
        action: if hairpin {
            Action::BackOut
        } else {
            Action::Pass
        },
        reason: Reason::ReverseNat,
    }))
}

/// A new connection that is for no service, from a client port that an earlier service
/// connection to the same backend used (without SNAT): its replies would match that
/// connection's reverse-NAT entry and be rewritten to the service address, so the client
/// would never see its SYN-ACK. The old entry is stale (the client reuses the port only
/// when its own socket for the service connection is gone, or the two would collide on
/// the wire anyway): drop it. Only on SYNs, so established traffic pays nothing.
#[inline(always)]
fn forget_stale_reply(key: &FlowKey) {
    let reply = FlowKey {
        saddr_be: key.daddr_be,
        daddr_be: key.saddr_be,
        sport_be: key.dport_be,
        dport_be: key.sport_be,
        ..*key
    };
    // SAFETY: the value is only tested for presence.
    if unsafe { LB_REVNAT.get(&reply) }.is_some() {
        let _ = LB_REVNAT.remove(&reply);
    }
}

/// Forward direction: conntrack first, then the service lookup in `scope`. `Err` with
/// `PassNotService` when the packet is for no service.
#[inline(always)]
pub fn forward<P: Packet>(
    pkt: &P,
    p: &Parsed,
    cfg: &NodeConfig,
    scope: u8,
) -> Result<Exit, Reason> {
    let key = p.key;
    let now = now();
    if let Some(ct) = LB_CONNTRACK.get_ptr_mut(&key) {
        // SAFETY: map value pointer, valid for this program run.
        let ct = unsafe { &mut *ct };
        // A new SYN on a closing entry is a new connection reusing the tuple: choose again.
        let reopen = p.has(TCP_SYN) && !p.has(TCP_ACK) && ct.flags & CT_F_CLOSING != 0;
        // The backend is looked up on every packet: when it is gone the flow re-selects.
        if !reopen && let Some(b) = backend(ct.backend_id) {
            if p.has(TCP_FIN) || p.has(TCP_RST) {
                ct.flags |= CT_F_CLOSING;
            }
            ct.last_seen_ns = now;
            let snat = ct.flags & CT_F_SNAT != 0;
            let to = FlowKey {
                saddr_be: if snat { ct.snat_addr_be } else { key.saddr_be },
                sport_be: if snat { ct.snat_port_be } else { key.sport_be },
                daddr_be: b.addr_be,
                dport_be: b.port_be,
                ..key
            };
            let action = if ct.flags & CT_F_HAIRPIN != 0 {
                Action::BackOut
            } else {
                Action::Pass
            };
            count_svc(ct.lut_id, pkt.len());
            pkt.rewrite(p, &to)?;
            return Ok(Exit {
                action,
                reason: Reason::NatEstablished,
            });
        }
    }
    let skey = ServiceKey {
        addr_be: key.daddr_be,
        port_be: key.dport_be,
        proto: key.proto,
        scope,
    };
    // SAFETY: the value is copied out at once.
    let Some(svc) = (unsafe { LB_SERVICES.get(&skey) }).copied() else {
        if p.has(TCP_SYN) && !p.has(TCP_ACK) {
            forget_stale_reply(&key);
        }
        return Err(Reason::PassNotService);
    };
    if svc.flags & SVC_F_SRC_RANGES != 0 && !source_allowed(svc.lut_id, key.saddr_be) {
        return Err(Reason::DropSourceRange);
    }
    count_svc(svc.lut_id, pkt.len());
    if svc.backend_count == 0 {
        if svc.flags & SVC_F_DROP_EMPTY != 0 {
            return Err(Reason::DropNoLocalEndpoints);
        }
        return Ok(Exit {
            action: Action::Reject,
            reason: Reason::RejectNoEndpoints,
        });
    }
    let (backend_id, b) = select(&svc, &key, cfg, now)?;

    let mut flags = 0;
    let mut snat_addr = key.saddr_be;
    if scope == SCOPE_EXTERNAL {
        // External traffic to a backend on another node is SNATed to this node, so the
        // reply comes back here for reverse NAT; Local policy keeps the client address.
        if b.flags & BACKEND_F_LOCAL == 0 && svc.flags & SVC_F_LOCAL == 0 {
            flags |= CT_F_SNAT;
            snat_addr = cfg.node_addr_be;
        }
    } else if b.addr_be == key.saddr_be {
        // Hairpin: a pod reached itself through the service.
        flags |= CT_F_SNAT | CT_F_HAIRPIN;
        snat_addr = HAIRPIN_ADDR_BE;
    }

    let nat = NatValue {
        vip_addr_be: key.daddr_be,
        vip_port_be: key.dport_be,
        _pad: 0,
        client_addr_be: key.saddr_be,
        client_port_be: key.sport_be,
        _pad1: 0,
        lut_id: svc.lut_id,
        flags,
        last_seen_ns: now,
    };
    let mut rkey = FlowKey {
        saddr_be: b.addr_be,
        daddr_be: snat_addr,
        sport_be: b.port_be,
        dport_be: key.sport_be,
        proto: key.proto,
        _pad: [0; 3],
    };
    if flags & CT_F_SNAT != 0 {
        rkey.dport_be = alloc_port(cfg, &key, &mut rkey, &nat)?;
    } else if LB_REVNAT.insert(&rkey, &nat, 0).is_err() {
        return Err(Reason::DropConntrackFull);
    }

    let ct = CtValue {
        backend_id,
        lut_id: svc.lut_id,
        snat_addr_be: snat_addr,
        snat_port_be: rkey.dport_be,
        _pad: 0,
        flags,
        _pad2: 0,
        last_seen_ns: now,
    };
    if LB_CONNTRACK.insert(&key, &ct, 0).is_err() {
        return Err(Reason::DropConntrackFull);
    }
    let to = FlowKey {
        saddr_be: snat_addr,
        sport_be: rkey.dport_be,
        daddr_be: b.addr_be,
        dport_be: b.port_be,
        ..key
    };
    pkt.rewrite(p, &to)?;
    Ok(Exit {
        action: if flags & CT_F_HAIRPIN != 0 {
            Action::BackOut
        } else {
            Action::Pass
        },
        reason: Reason::NatNew,
    })
}

/// Picks a SNAT port in `[snat_port_min, snat_port_max]` by hash and makes it unique by
/// inserting the reverse NAT entry with BPF_NOEXIST; tries a few ports. Returns the port
/// (network order); the entry is in `LB_REVNAT` on success.
#[inline(always)]
fn alloc_port(
    cfg: &NodeConfig,
    key: &FlowKey,
    rkey: &mut FlowKey,
    nat: &NatValue,
) -> Result<u16, Reason> {
    let min = u32::from(cfg.snat_port_min);
    let max = u32::from(cfg.snat_port_max);
    if min == 0 || max < min {
        return Err(Reason::DropSnatExhausted);
    }
    let range = max - min + 1;
    let h = flow_hash(
        key.saddr_be,
        key.daddr_be,
        key.sport_be,
        key.dport_be,
        key.proto,
    );
    let mut i = 0;
    while i < SNAT_TRIES {
        let off = h
            .wrapping_add(i.wrapping_mul(0x9e37_79b1))
            .checked_rem(range)
            .ok_or(Reason::DropSnatExhausted)?;
        let port = (min + off) as u16;
        rkey.dport_be = port.to_be();
        if LB_REVNAT
            .insert(&*rkey, nat, u64::from(BPF_NOEXIST))
            .is_ok()
        {
            return Ok(port.to_be());
        }
        i += 1;
    }
    Err(Reason::DropSnatExhausted)
}
