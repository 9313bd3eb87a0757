//! ICMP errors (destination unreachable incl. "fragmentation needed", time exceeded) that
//! quote a packet of a translated flow are translated back, outer and inner headers, so
//! that the client's stack matches them to its socket: PMTU discovery and fast failure
//! work through a Service (RFC 5508 section 7 behaviour for NATs).
//!
//! The quoted packet went towards the backend, so its reversed tuple is a `LB_REVNAT` key.
//! Checksums are updated incrementally: inner IP header, inner UDP (when quoted and not
//! zero), the ICMP checksum for every changed word of the quote, and the outer IP header
//! (ICMP has no pseudo header).
use lb_common::{CT_F_HAIRPIN, FlowKey, PROTO_TCP, PROTO_UDP, Reason};

use crate::{
    csum,
    maps::LB_REVNAT,
    nat::{Action, Exit},
    packet::{IP_CSUM_OFF, IP_DADDR_OFF, IP_SADDR_OFF, Packet, Parsed},
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;

/// `Err(PassNotService)` when the packet is no ICMP error about a tracked flow.
#[inline(always)]
pub fn translate_error<P: Packet>(pkt: &P, p: &Parsed) -> Result<Exit, Reason> {
    let icmp = p.l4_off;
    let ty: u8 = pkt.load(icmp)?;
    if ty != ICMP_DEST_UNREACH && ty != ICMP_TIME_EXCEEDED {
        return Err(Reason::PassNotService);
    }
    let inner = icmp + 8;
    let ver_ihl: u8 = pkt.load(inner).map_err(|_| Reason::PassNotService)?;
    // Masked: the inner offset stays provably bounded for the verifier.
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    if ver_ihl >> 4 != 4 || ihl < 20 {
        return Err(Reason::PassNotService);
    }
    let proto: u8 = pkt.load(inner + 9)?;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Err(Reason::PassNotService);
    }
    let inner_l4 = inner + ihl;
    let isaddr: u32 = pkt.load(inner + 12)?;
    let idaddr: u32 = pkt.load(inner + 16)?;
    // RFC 792 guarantees 8 bytes of the quoted datagram: both ports are there.
    let isport: u16 = pkt.load(inner_l4).map_err(|_| Reason::PassNotService)?;
    let idport: u16 = pkt.load(inner_l4 + 2)?;
    let rkey = FlowKey {
        saddr_be: idaddr,
        daddr_be: isaddr,
        sport_be: idport,
        dport_be: isport,
        proto,
        _pad: [0; 3],
    };
    // SAFETY: the value is copied out at once.
    let Some(nat) = (unsafe { LB_REVNAT.get(&rkey) }).copied() else {
        return Err(Reason::PassNotService);
    };

    // Inner header: source -> client, destination -> service address.
    let mut icmp_c: u16 = pkt.load(icmp + 2)?;
    let ip_c_old: u16 = pkt.load(inner + 10)?;
    let mut ip_c = ip_c_old;
    ip_c = csum::replace4(ip_c, isaddr, nat.client_addr_be);
    ip_c = csum::replace4(ip_c, idaddr, nat.vip_addr_be);
    icmp_c = csum::replace4(icmp_c, isaddr, nat.client_addr_be);
    icmp_c = csum::replace4(icmp_c, idaddr, nat.vip_addr_be);
    icmp_c = csum::replace2(icmp_c, isport, nat.client_port_be);
    icmp_c = csum::replace2(icmp_c, idport, nat.vip_port_be);
    icmp_c = csum::replace2(icmp_c, ip_c_old, ip_c);
    if proto == PROTO_UDP {
        let u_old: u16 = pkt.load(inner_l4 + 6)?;
        if u_old != 0 {
            let mut u = csum::replace4(u_old, isaddr, nat.client_addr_be);
            u = csum::replace4(u, idaddr, nat.vip_addr_be);
            u = csum::replace2(u, isport, nat.client_port_be);
            u = csum::replace2(u, idport, nat.vip_port_be);
            if u == 0 {
                u = 0xffff;
            }
            icmp_c = csum::replace2(icmp_c, u_old, u);
            pkt.store(inner_l4 + 6, u)?;
        }
    }
    pkt.store(inner + 12, nat.client_addr_be)?;
    pkt.store(inner + 16, nat.vip_addr_be)?;
    pkt.store(inner + 10, ip_c)?;
    pkt.store(inner_l4, nat.client_port_be)?;
    pkt.store(inner_l4 + 2, nat.vip_port_be)?;
    pkt.store(icmp + 2, icmp_c)?;

    // Outer header: to the client; from the service when the backend itself reported.
    let mut oc: u16 = pkt.load(IP_CSUM_OFF)?;
    if p.key.daddr_be != nat.client_addr_be {
        oc = csum::replace4(oc, p.key.daddr_be, nat.client_addr_be);
        pkt.store(IP_DADDR_OFF, nat.client_addr_be)?;
    }
    if p.key.saddr_be == idaddr {
        oc = csum::replace4(oc, p.key.saddr_be, nat.vip_addr_be);
        pkt.store(IP_SADDR_OFF, nat.vip_addr_be)?;
    }
    pkt.store(IP_CSUM_OFF, oc)?;
    Ok(Exit {
        action: if nat.flags & CT_F_HAIRPIN != 0 {
            Action::BackOut
        } else {
            Action::Pass
        },
        reason: Reason::IcmpErrorTranslated,
    })
}
