//! Answers for a service with no endpoints, built in place from the offending packet:
//! TCP gets a RST (RFC 9293 3.10.7.1 rules for seq/ack), UDP an ICMP port unreachable
//! quoting the original IP header and 8 bytes (RFC 792). Both are sent back out of the
//! interface the packet came in on (XDP_TX, or bpf_redirect to the pod's veth in TC).
use lb_common::{PROTO_TCP, Reason};

use crate::{
    csum,
    packet::{
        ETH_HLEN, ETH_P_IP, IP_OFF, PROTO_ICMP, Packet, Parsed, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
    },
};

#[repr(C)]
#[derive(Clone, Copy)]
struct IpHdr {
    ver_ihl: u8,
    tos: u8,
    tot_len_be: u16,
    id_be: u16,
    frag_be: u16,
    ttl: u8,
    proto: u8,
    check: u16,
    saddr_be: u32,
    daddr_be: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct TcpHdr {
    sport_be: u16,
    dport_be: u16,
    seq_be: u32,
    ack_be: u32,
    doff_res: u8,
    flags: u8,
    window_be: u16,
    check: u16,
    urg_be: u16,
}

/// Sum of the ten 16-bit words of a 20-byte header.
#[inline(always)]
fn sum20<T: Copy>(h: &T) -> u64 {
    // SAFETY: T is one of the 20-byte #[repr(C)] headers above.
    let w: [u16; 10] = unsafe { core::mem::transmute_copy(h) };
    let mut s = 0_u64;
    let mut i = 0;
    while i < 10 {
        s += u64::from(w[i]);
        i += 1;
    }
    s
}

#[inline(always)]
fn ip_header(tot_len: u16, proto: u8, saddr_be: u32, daddr_be: u32) -> IpHdr {
    let mut ip = IpHdr {
        ver_ihl: 0x45,
        tos: 0,
        tot_len_be: tot_len.to_be(),
        id_be: 0,
        frag_be: 0x4000_u16.to_be(),
        ttl: 64,
        proto,
        check: 0,
        saddr_be,
        daddr_be,
    };
    ip.check = !csum::fold(sum20(&ip));
    ip
}

#[inline(always)]
fn write_eth<P: Packet>(pkt: &P, dst: [u8; 6], src: [u8; 6]) -> Result<(), Reason> {
    pkt.store(0, dst)?;
    pkt.store(6, src)?;
    pkt.store(12, ETH_P_IP.to_be())
}

/// Turns a TCP segment into the RST a closed port would send. A RST is never answered.
#[inline(always)]
pub fn tcp_rst<P: Packet>(pkt: &P, p: &Parsed) -> Result<(), Reason> {
    if p.has(TCP_RST) {
        return Err(Reason::RejectNoEndpoints);
    }
    let dmac: [u8; 6] = pkt.load(0)?;
    let smac: [u8; 6] = pkt.load(6)?;
    let seq = u32::from_be(pkt.load::<u32>(p.l4_off + 4)?);
    let ack = u32::from_be(pkt.load::<u32>(p.l4_off + 8)?);
    let doff = u32::from(pkt.load::<u8>(p.l4_off + 12)? >> 4) * 4;
    let tot_len = u32::from(u16::from_be(pkt.load::<u16>(IP_OFF + 2)?));
    let ihl = (p.l4_off - ETH_HLEN) as u32;
    let payload = tot_len.saturating_sub(ihl + doff);
    let (rseq, rack, rflags) = if p.has(TCP_ACK) {
        (ack, 0, TCP_RST)
    } else {
        let mut n = seq.wrapping_add(payload);
        if p.has(TCP_SYN) {
            n = n.wrapping_add(1);
        }
        if p.has(TCP_FIN) {
            n = n.wrapping_add(1);
        }
        (0, n, TCP_RST | TCP_ACK)
    };
    let ip = ip_header(40, PROTO_TCP, p.key.daddr_be, p.key.saddr_be);
    let mut tcp = TcpHdr {
        sport_be: p.key.dport_be,
        dport_be: p.key.sport_be,
        seq_be: rseq.to_be(),
        ack_be: rack.to_be(),
        doff_res: 5 << 4,
        flags: rflags,
        window_be: 0,
        check: 0,
        urg_be: 0,
    };
    let pseudo = csum::add32(csum::add32(0, ip.saddr_be), ip.daddr_be)
        + u64::from(u16::from(PROTO_TCP).to_be())
        + u64::from(20_u16.to_be());
    tcp.check = !csum::fold(pseudo + sum20(&tcp));

    pkt.set_len((ETH_HLEN + 40) as u32)?;
    write_eth(pkt, smac, dmac)?;
    pkt.store(IP_OFF, ip)?;
    pkt.store(IP_OFF + 20, tcp)
}

/// Longest quote: a 60-byte IP header plus 8 bytes, in 16-bit words.
const MAX_QUOTE_WORDS: usize = 34;

/// Turns an IPv4 datagram into an ICMP destination unreachable (port unreachable) that
/// quotes its IP header and first 8 payload bytes.
#[inline(always)]
pub fn icmp_port_unreachable<P: Packet>(pkt: &P, p: &Parsed) -> Result<(), Reason> {
    let dmac: [u8; 6] = pkt.load(0)?;
    let smac: [u8; 6] = pkt.load(6)?;
    let ihl = p.l4_off - ETH_HLEN;
    let quote = ihl + 8;
    pkt.insert_after_eth(28)?;
    // The old IP header now starts at 42; keep it and 8 bytes after it.
    let quote_off = ETH_HLEN + 28;
    pkt.set_len((quote_off + quote) as u32)?;
    let ip = ip_header(
        (28 + quote) as u16,
        PROTO_ICMP,
        p.key.daddr_be,
        p.key.saddr_be,
    );
    write_eth(pkt, smac, dmac)?;
    pkt.store(IP_OFF, ip)?;
    // type 3 (destination unreachable), code 3 (port unreachable), checksum, unused.
    let type_code: u16 = u16::from_ne_bytes([3, 3]);
    let mut s = u64::from(type_code);
    let mut i = 0;
    // Bounded loop over at most 34 words; offsets stay provably inside the packet.
    while i < MAX_QUOTE_WORDS {
        if i * 2 >= quote {
            break;
        }
        s += u64::from(pkt.load::<u16>(quote_off + i * 2)?);
        i += 1;
    }
    pkt.store(IP_OFF + 20, type_code)?;
    pkt.store(IP_OFF + 22, !csum::fold(s))?;
    pkt.store(IP_OFF + 24, 0_u32)
}
