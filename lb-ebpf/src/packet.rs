//! Packet access behind one small trait, so the load-balancing logic is written once for
//! XDP (direct packet access, manual checksums) and TC (skb helpers, which also keep
//! `skb->csum` right for CHECKSUM_COMPLETE/PARTIAL packets), plus the IPv4/TCP/UDP parser.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC},
    helpers::{bpf_skb_change_tail, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::{TcContext, XdpContext},
};
use lb_common::{FlowKey, FragKey, FragValue, PROTO_TCP, PROTO_UDP, Reason};

use crate::{csum, maps::LB_FRAGS};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const IP_OFF: usize = ETH_HLEN;
pub const IP_CSUM_OFF: usize = IP_OFF + 10;
pub const IP_SADDR_OFF: usize = IP_OFF + 12;
pub const IP_DADDR_OFF: usize = IP_OFF + 16;
pub const PROTO_ICMP: u8 = 1;
/// IPv4 flags/fragment-offset field: more fragments, and the offset bits.
pub const IP_MF: u16 = 0x2000;
pub const IP_OFFSET_MASK: u16 = 0x1fff;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Byte access to the packet plus the one rewrite every path needs.
pub trait Packet {
    /// Bytes in the packet (for counters).
    fn len(&self) -> u32;
    /// Reads a `T` at `off`; `DropMalformed` when the packet is shorter.
    fn load<T: Copy>(&self, off: usize) -> Result<T, Reason>;
    /// Writes a `T` at `off`, no checksum update.
    fn store<T: Copy>(&self, off: usize, v: T) -> Result<(), Reason>;
    /// Rewrites the IPv4 addresses and TCP/UDP ports of a parsed packet to `to`, keeping
    /// the IP and L4 checksums valid (a zero UDP checksum stays zero).
    fn rewrite(&self, p: &Parsed, to: &FlowKey) -> Result<(), Reason>;
    /// Sets the packet length to `len` bytes (cuts or extends the tail).
    fn set_len(&self, len: u32) -> Result<(), Reason>;
    /// Makes room for `n` bytes between the Ethernet and the IP header: afterwards the old
    /// IP header starts at `ETH_HLEN + n` and bytes `0..ETH_HLEN` must be rewritten.
    fn insert_after_eth(&self, n: u32) -> Result<(), Reason>;
}

/// What the parser found in a TCP or UDP (or ICMP) IPv4 packet.
#[derive(Clone, Copy)]
pub struct Parsed {
    /// Offset of the L4 header (Ethernet + IHL*4: IP options are skipped, not parsed).
    pub l4_off: usize,
    /// The tuple as it arrives (ports zero for ICMP).
    pub key: FlowKey,
    /// TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
    /// The IP header had options.
    pub ip_options: bool,
    /// A later (non-first) fragment of a tracked TCP/UDP datagram: `key` carries the
    /// ports of its first fragment, and there is no L4 header to read or rewrite.
    pub later_fragment: bool,
}

impl Parsed {
    /// Offset of the L4 checksum field.
    #[inline(always)]
    pub fn l4_csum_off(&self) -> usize {
        if self.key.proto == PROTO_TCP {
            self.l4_off + 16
        } else {
            self.l4_off + 6
        }
    }

    #[inline(always)]
    pub fn has(&self, flag: u8) -> bool {
        self.key.proto == PROTO_TCP && self.tcp_flags & flag != 0
    }
}

/// Parses Ethernet/IPv4/{TCP,UDP,ICMP}. `Err` carries the reason to count: anything that
/// is not IPv4 TCP/UDP/ICMP passes as `PassNotService`, non-first fragments as
/// `PassFragment`, truncated headers drop as `DropMalformed`.
#[inline(always)]
pub fn parse<P: Packet>(pkt: &P) -> Result<Parsed, Reason> {
    let eth_type = u16::from_be(pkt.load::<u16>(12)?);
    if eth_type != ETH_P_IP {
        return Err(Reason::PassNotService);
    }
    let ver_ihl: u8 = pkt.load(IP_OFF)?;
    if ver_ihl >> 4 != 4 {
        return Err(Reason::DropMalformed);
    }
    // The mask keeps the offset provably bounded (<= 60) for the verifier.
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    if ihl < 20 {
        return Err(Reason::DropMalformed);
    }
    let tot_len = usize::from(u16::from_be(pkt.load::<u16>(IP_OFF + 2)?));
    if tot_len < ihl || (pkt.len() as usize) < ETH_HLEN + tot_len {
        return Err(Reason::DropMalformed);
    }
    let frag = u16::from_be(pkt.load::<u16>(IP_OFF + 6)?);
    let proto: u8 = pkt.load(IP_OFF + 9)?;
    if proto != PROTO_TCP && proto != PROTO_UDP && proto != PROTO_ICMP {
        return Err(Reason::PassNotService);
    }
    let l4_off = ETH_HLEN + ihl;
    let l4_len = tot_len - ihl;
    let saddr: u32 = pkt.load(IP_SADDR_OFF)?;
    let daddr: u32 = pkt.load(IP_DADDR_OFF)?;
    if frag & IP_OFFSET_MASK != 0 {
        // A later fragment has no L4 header: it takes the ports its first fragment had
        // (Cilium's fragment tracking; netfilter reassembles instead). Not seen first, or
        // ICMP: passed as it is.
        if proto == PROTO_ICMP {
            return Err(Reason::PassFragment);
        }
        let key = frag_key(pkt, saddr, daddr, proto)?;
        // SAFETY: the value is copied out at once.
        let Some(ports) = (unsafe { LB_FRAGS.get(&key) }).copied() else {
            return Err(Reason::PassFragment);
        };
        return Ok(Parsed {
            l4_off,
            key: FlowKey {
                saddr_be: saddr,
                daddr_be: daddr,
                sport_be: ports.sport_be,
                dport_be: ports.dport_be,
                proto,
                _pad: [0; 3],
            },
            tcp_flags: 0,
            ip_options: ihl > 20,
            later_fragment: true,
        });
    }
    let (sport, dport, tcp_flags) = if proto == PROTO_TCP {
        if l4_len < 20 {
            return Err(Reason::DropMalformed);
        }
        // Loading the last byte of the fixed header proves the whole header is there.
        let _: u32 = pkt.load(l4_off + 16)?;
        let flags: u8 = pkt.load(l4_off + 13)?;
        (
            pkt.load::<u16>(l4_off)?,
            pkt.load::<u16>(l4_off + 2)?,
            flags,
        )
    } else if proto == PROTO_UDP {
        if l4_len < 8 {
            return Err(Reason::DropMalformed);
        }
        let _: u16 = pkt.load(l4_off + 6)?;
        (pkt.load::<u16>(l4_off)?, pkt.load::<u16>(l4_off + 2)?, 0)
    } else {
        if l4_len < 8 {
            return Err(Reason::DropMalformed);
        }
        let _: u32 = pkt.load(l4_off + 4)?;
        (0, 0, 0)
    };
    if frag & IP_MF != 0 && proto != PROTO_ICMP {
        // First fragment of a larger datagram: remember its ports for the rest.
        let ports = FragValue {
            sport_be: sport,
            dport_be: dport,
        };
        let _ = LB_FRAGS.insert(&frag_key(pkt, saddr, daddr, proto)?, &ports, 0);
    }
    Ok(Parsed {
        l4_off,
        key: FlowKey {
            saddr_be: saddr,
            daddr_be: daddr,
            sport_be: sport,
            dport_be: dport,
            proto,
            _pad: [0; 3],
        },
        tcp_flags,
        ip_options: ihl > 20,
        later_fragment: false,
    })
}

/// The [`LB_FRAGS`] key of a fragmented datagram (the IP id is read only for fragments,
/// off the path of unfragmented packets).
#[inline(always)]
fn frag_key<P: Packet>(pkt: &P, saddr: u32, daddr: u32, proto: u8) -> Result<FragKey, Reason> {
    Ok(FragKey {
        saddr_be: saddr,
        daddr_be: daddr,
        id_be: pkt.load::<u16>(IP_OFF + 4)?,
        proto,
        _pad: 0,
    })
}

/// XDP: direct packet access; every access is checked against `data_end` right before it
/// (the verifier only accepts a packet pointer dereference after such a check).
pub struct XdpPkt<'a>(pub &'a XdpContext);

/// A pointer to `size_of::<T>()` bytes at `data + off`, checked against `data_end` (XDP
/// and TC direct packet access alike).
///
/// Verifier: the access must go through the very register that was compared with
/// data_end. Left alone, LLVM re-associates `data + off + k` differently in the check and
/// in the access (two pointers with different ids, and the access is rejected as "offset
/// is outside of the packet"). `black_box` pins the pointer (one spill/fill, which the
/// verifier tracks), so check and access use the same value.
#[inline(always)]
fn checked_ptr<T>(data: usize, data_end: usize, off: usize) -> Result<usize, Reason> {
    let ptr = core::hint::black_box(data + off);
    if ptr + core::mem::size_of::<T>() > data_end {
        return Err(Reason::DropMalformed);
    }
    Ok(ptr)
}

impl XdpPkt<'_> {
    #[inline(always)]
    fn ptr<T>(&self, off: usize) -> Result<usize, Reason> {
        checked_ptr::<T>(self.0.data(), self.0.data_end(), off)
    }
}

impl Packet for XdpPkt<'_> {
    #[inline(always)]
    fn len(&self) -> u32 {
        (self.0.data_end() - self.0.data()) as u32
    }

    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Result<T, Reason> {
        let ptr = self.ptr::<T>(off)?;
        // SAFETY: `ptr` was checked against data_end by `ptr`.
        Ok(unsafe { (ptr as *const T).read_unaligned() })
    }

    #[inline(always)]
    fn store<T: Copy>(&self, off: usize, v: T) -> Result<(), Reason> {
        let ptr = self.ptr::<T>(off)?;
        // SAFETY: `ptr` was checked against data_end by `ptr`.
        unsafe { (ptr as *mut T).write_unaligned(v) };
        Ok(())
    }

    #[inline(always)]
    fn rewrite(&self, p: &Parsed, to: &FlowKey) -> Result<(), Reason> {
        let from = &p.key;
        if p.later_fragment {
            // No L4 header here: its checksum and ports were fixed in the first fragment.
            let mut ipc: u16 = self.load(IP_CSUM_OFF)?;
            if from.saddr_be != to.saddr_be {
                ipc = csum::replace4(ipc, from.saddr_be, to.saddr_be);
                self.store(IP_SADDR_OFF, to.saddr_be)?;
            }
            if from.daddr_be != to.daddr_be {
                ipc = csum::replace4(ipc, from.daddr_be, to.daddr_be);
                self.store(IP_DADDR_OFF, to.daddr_be)?;
            }
            return self.store(IP_CSUM_OFF, ipc);
        }
        let mut ipc: u16 = self.load(IP_CSUM_OFF)?;
        let coff = p.l4_csum_off();
        let l4c_in: u16 = self.load(coff)?;
        // A zero UDP checksum means "none" and stays zero.
        let l4_none = p.key.proto == PROTO_UDP && l4c_in == 0;
        let mut l4c = l4c_in;
        if from.saddr_be != to.saddr_be {
            ipc = csum::replace4(ipc, from.saddr_be, to.saddr_be);
            l4c = csum::replace4(l4c, from.saddr_be, to.saddr_be);
            self.store(IP_SADDR_OFF, to.saddr_be)?;
        }
        if from.daddr_be != to.daddr_be {
            ipc = csum::replace4(ipc, from.daddr_be, to.daddr_be);
            l4c = csum::replace4(l4c, from.daddr_be, to.daddr_be);
            self.store(IP_DADDR_OFF, to.daddr_be)?;
        }
        if from.sport_be != to.sport_be {
            l4c = csum::replace2(l4c, from.sport_be, to.sport_be);
            self.store(p.l4_off, to.sport_be)?;
        }
        if from.dport_be != to.dport_be {
            l4c = csum::replace2(l4c, from.dport_be, to.dport_be);
            self.store(p.l4_off + 2, to.dport_be)?;
        }
        self.store(IP_CSUM_OFF, ipc)?;
        if !l4_none {
            if l4c == 0 && p.key.proto == PROTO_UDP {
                l4c = 0xffff;
            }
            self.store(coff, l4c)?;
        }
        Ok(())
    }

    #[inline(always)]
    fn set_len(&self, len: u32) -> Result<(), Reason> {
        let delta = len as i32 - self.len() as i32;
        if delta == 0 {
            return Ok(());
        }
        // SAFETY: helper on our own context.
        let r = unsafe { bpf_xdp_adjust_tail(self.0.ctx, delta) };
        if r == 0 {
            Ok(())
        } else {
            Err(Reason::DropRewriteFailed)
        }
    }

    #[inline(always)]
    fn insert_after_eth(&self, n: u32) -> Result<(), Reason> {
        // XDP can only grow at the front: the old Ethernet header ends up at n..n+14 and
        // is overwritten by the caller.
        // SAFETY: helper on our own context.
        let r = unsafe { bpf_xdp_adjust_head(self.0.ctx, -(n as i32)) };
        if r == 0 {
            Ok(())
        } else {
            Err(Reason::DropRewriteFailed)
        }
    }
}

/// TC: direct packet access for reads and plain writes (as Cilium does: a helper call per
/// load made the TC paths ~60 ns slower than XDP's), and the csum_replace helpers for
/// checksums (they also fix `skb->csum` and understand CHECKSUM_PARTIAL packets from a veth
/// with offloads). Direct writes make the kernel unclone a cloned skb before the program
/// runs (the verifier's TC prologue), as bpf_skb_store_bytes would.
pub struct TcPkt<'a>(&'a TcContext);

/// Bytes made linear at entry: Ethernet, the largest IP header, an ICMP header and the
/// quoted IP and L4 headers of an ICMP error (14 + 60 + 8 + 60 + 8 = 150), rounded up.
const TC_LINEAR: u32 = 160;

impl<'a> TcPkt<'a> {
    /// Makes the headers directly readable: pulls them into the skb's linear part when a
    /// sender left them in fragments (rare for a veth; then one helper call).
    #[inline(always)]
    pub fn new(ctx: &'a TcContext) -> Self {
        let want = ctx.len().min(TC_LINEAR) as usize;
        if ctx.data_end() - ctx.data() < want {
            // On failure the loads below see a short packet and drop it as malformed.
            let _ = ctx.pull_data(want as u32);
        }
        TcPkt(ctx)
    }

    #[inline(always)]
    fn ptr<T>(&self, off: usize) -> Result<usize, Reason> {
        checked_ptr::<T>(self.0.data(), self.0.data_end(), off)
    }
}

impl Packet for TcPkt<'_> {
    #[inline(always)]
    fn len(&self) -> u32 {
        self.0.len()
    }

    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Result<T, Reason> {
        let ptr = self.ptr::<T>(off)?;
        // SAFETY: `ptr` was checked against data_end by `ptr`.
        Ok(unsafe { (ptr as *const T).read_unaligned() })
    }

    #[inline(always)]
    fn store<T: Copy>(&self, off: usize, v: T) -> Result<(), Reason> {
        let ptr = self.ptr::<T>(off).map_err(|_| Reason::DropRewriteFailed)?;
        // SAFETY: `ptr` was checked against data_end by `ptr`.
        unsafe { (ptr as *mut T).write_unaligned(v) };
        Ok(())
    }

    #[inline(always)]
    fn rewrite(&self, p: &Parsed, to: &FlowKey) -> Result<(), Reason> {
        let from = &p.key;
        let coff = p.l4_csum_off();
        // UDP: BPF_F_MARK_MANGLED_0 leaves a zero checksum alone and writes 0xffff for a
        // computed zero.
        let mangled = if p.key.proto == PROTO_UDP {
            u64::from(BPF_F_MARK_MANGLED_0)
        } else {
            0
        };
        let pseudo = u64::from(BPF_F_PSEUDO_HDR);
        let err = |_| Reason::DropRewriteFailed;
        if p.later_fragment {
            // No L4 header here: its checksum and ports were fixed in the first fragment.
            for (off, a, b) in [
                (IP_SADDR_OFF, from.saddr_be, to.saddr_be),
                (IP_DADDR_OFF, from.daddr_be, to.daddr_be),
            ] {
                if a != b {
                    self.0
                        .l3_csum_replace(IP_CSUM_OFF, u64::from(a), u64::from(b), 4)
                        .map_err(err)?;
                    self.store(off, b)?;
                }
            }
            return Ok(());
        }
        if from.saddr_be != to.saddr_be {
            let (a, b) = (u64::from(from.saddr_be), u64::from(to.saddr_be));
            self.0
                .l4_csum_replace(coff, a, b, pseudo | mangled | 4)
                .map_err(err)?;
            self.0.l3_csum_replace(IP_CSUM_OFF, a, b, 4).map_err(err)?;
            self.store(IP_SADDR_OFF, to.saddr_be)?;
        }
        if from.daddr_be != to.daddr_be {
            let (a, b) = (u64::from(from.daddr_be), u64::from(to.daddr_be));
            self.0
                .l4_csum_replace(coff, a, b, pseudo | mangled | 4)
                .map_err(err)?;
            self.0.l3_csum_replace(IP_CSUM_OFF, a, b, 4).map_err(err)?;
            self.store(IP_DADDR_OFF, to.daddr_be)?;
        }
        if from.sport_be != to.sport_be {
            let (a, b) = (u64::from(from.sport_be), u64::from(to.sport_be));
            self.0
                .l4_csum_replace(coff, a, b, mangled | 2)
                .map_err(err)?;
            self.store(p.l4_off, to.sport_be)?;
        }
        if from.dport_be != to.dport_be {
            let (a, b) = (u64::from(from.dport_be), u64::from(to.dport_be));
            self.0
                .l4_csum_replace(coff, a, b, mangled | 2)
                .map_err(err)?;
            self.store(p.l4_off + 2, to.dport_be)?;
        }
        Ok(())
    }

    #[inline(always)]
    fn set_len(&self, len: u32) -> Result<(), Reason> {
        // SAFETY: helper on our own context.
        let r = unsafe { bpf_skb_change_tail(self.0.skb.skb, len, 0) };
        if r == 0 {
            Ok(())
        } else {
            Err(Reason::DropRewriteFailed)
        }
    }

    #[inline(always)]
    fn insert_after_eth(&self, n: u32) -> Result<(), Reason> {
        self.0
            .adjust_room(n as i32, BPF_ADJ_ROOM_MAC, 0)
            .map_err(|_| Reason::DropRewriteFailed)
    }
}

/// Swaps the Ethernet source and destination addresses (for a packet sent back out of the
/// interface it came in on).
#[inline(always)]
pub fn swap_macs<P: Packet>(pkt: &P) -> Result<(), Reason> {
    let dst: [u8; 6] = pkt.load(0)?;
    let src: [u8; 6] = pkt.load(6)?;
    pkt.store(0, src)?;
    pkt.store(6, dst)
}
