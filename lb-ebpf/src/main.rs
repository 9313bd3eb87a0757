//! The data plane programs. Each entry point has one shape: `try_*` returns the decision
//! and the reason it is counted under, or the reason of an early exit; the entry turns both
//! into a verdict and counts every exit once in `LB_REASONS`.
#![no_std]
#![no_main]

mod csum;
mod icmp;
mod maps;
mod nat;
mod packet;
mod reject;
mod sock;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    helpers::bpf_redirect,
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use lb_common::{PROTO_TCP, Reason, SCOPE_EXTERNAL, SCOPE_INTERNAL};

use crate::packet::PROTO_ICMP;

use crate::{
    maps::{config, count},
    nat::{Action, Exit},
    packet::{Packet, Parsed, TcPkt, XdpPkt, parse, swap_macs},
};

/// Whether an early exit drops the packet (true) or lets it through untouched.
#[inline(always)]
fn drops(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::DropMalformed
            | Reason::DropNoBackend
            | Reason::DropConntrackFull
            | Reason::DropSnatExhausted
            | Reason::DropRewriteFailed
            | Reason::DropNoLocalEndpoints
            | Reason::DropSourceRange
            | Reason::RejectNoEndpoints
    )
}

/// Parses and counts IP options (on top of the packet's own verdict reason).
#[inline(always)]
fn parse_counted<P: Packet>(pkt: &P) -> Result<Parsed, Reason> {
    let p = parse(pkt)?;
    if p.ip_options {
        count(Reason::IpOptions);
    }
    Ok(p)
}

/// Builds the reject answer in place. A later fragment has no header to answer from (its
/// first fragment was answered): dropped, under the same reason.
#[inline(always)]
fn reject<P: Packet>(pkt: &P, p: &Parsed) -> Result<(), Reason> {
    if p.later_fragment {
        return Err(Reason::RejectNoEndpoints);
    }
    if p.key.proto == PROTO_TCP {
        reject::tcp_rst(pkt, p)
    } else {
        reject::icmp_port_unreachable(pkt, p)
    }
}

// ---------------------------------------------------------------------------------------
// XDP on the node's external interface.

#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    match try_lb_xdp(&ctx) {
        Ok(exit) => {
            count(exit.reason);
            match exit.action {
                Action::Pass | Action::BackOut => xdp_action::XDP_PASS,
                Action::Reject => xdp_action::XDP_TX,
            }
        }
        Err(reason) => {
            count(reason);
            if drops(reason) {
                xdp_action::XDP_DROP
            } else {
                xdp_action::XDP_PASS
            }
        }
    }
}

#[inline(always)]
fn try_lb_xdp(ctx: &XdpContext) -> Result<Exit, Reason> {
    let pkt = XdpPkt(ctx);
    let p = parse_counted(&pkt)?;
    if p.key.proto == PROTO_ICMP {
        return icmp::translate_error(&pkt, &p);
    }
    if let Some(exit) = nat::reverse(&pkt, &p)? {
        return Ok(exit);
    }
    let Some(cfg) = config() else {
        return Err(Reason::PassOther);
    };
    let exit = nat::forward(&pkt, &p, &cfg, SCOPE_EXTERNAL)?;
    if exit.action == Action::Reject {
        reject(&pkt, &p)?;
    }
    Ok(exit)
}

/// A program that passes everything (for veth peers that need an XDP program for native
/// redirect to deliver).
#[xdp]
pub fn lb_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Benchmark reference, never attached: one insert of a fresh key into the conntrack map,
/// what a new connection does twice (conntrack and reverse NAT, both LRU maps of the same
/// size). The key comes from the clock (distinct on every run) with protocol 255, which no
/// parsed packet carries, so no flow ever meets these entries; they age out like any.
#[xdp]
pub fn lb_bench_ct_insert(_ctx: XdpContext) -> u32 {
    // SAFETY: helper without arguments.
    let t = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    let key = lb_common::FlowKey {
        saddr_be: t as u32,
        daddr_be: (t >> 32) as u32,
        sport_be: 0,
        dport_be: 0,
        proto: 255,
        _pad: [0; 3],
    };
    let ct = lb_common::CtValue {
        backend_id: 0,
        lut_id: 0,
        snat_addr_be: 0,
        snat_port_be: 0,
        _pad: 0,
        flags: 0,
        _pad2: 0,
        last_seen_ns: t,
    };
    match maps::LB_CONNTRACK.insert(&key, &ct, 0) {
        Ok(()) => xdp_action::XDP_PASS,
        Err(_) => xdp_action::XDP_DROP,
    }
}

// ---------------------------------------------------------------------------------------
// TC (tcx) on the host side of each pod's veth.

/// Turns a TC decision into a verdict: back out of the same interface means a redirect
/// to the egress of the veth the packet arrived on, i.e. into the pod.
#[inline(always)]
fn tc_verdict(ctx: &TcContext, r: Result<Exit, Reason>) -> i32 {
    match r {
        Ok(exit) => {
            count(exit.reason);
            match exit.action {
                Action::Pass => TC_ACT_OK,
                Action::BackOut | Action::Reject => {
                    // SAFETY: reads a field of our own context.
                    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
                    // SAFETY: plain helper call.
                    unsafe { bpf_redirect(ifindex, 0) as i32 }
                }
            }
        }
        Err(reason) => {
            count(reason);
            if drops(reason) {
                TC_ACT_SHOT
            } else {
                TC_ACT_OK
            }
        }
    }
}

/// Packets leaving a pod (ingress of the host-side veth).
#[classifier]
pub fn lb_tc_from_pod(ctx: TcContext) -> i32 {
    let r = try_from_pod(&ctx);
    tc_verdict(&ctx, r)
}

#[inline(always)]
fn try_from_pod(ctx: &TcContext) -> Result<Exit, Reason> {
    let pkt = TcPkt::new(ctx);
    let p = parse_counted(&pkt)?;
    if p.key.proto == PROTO_ICMP {
        let exit = icmp::translate_error(&pkt, &p)?;
        if exit.action == Action::BackOut {
            swap_macs(&pkt)?;
        }
        return Ok(exit);
    }
    if let Some(exit) = nat::reverse(&pkt, &p)? {
        if exit.action == Action::BackOut {
            swap_macs(&pkt)?;
        }
        return Ok(exit);
    }
    let Some(cfg) = config() else {
        return Err(Reason::PassOther);
    };
    let exit = nat::forward(&pkt, &p, &cfg, SCOPE_INTERNAL)?;
    match exit.action {
        Action::BackOut => swap_macs(&pkt)?,
        Action::Reject => reject(&pkt, &p)?,
        Action::Pass => {}
    }
    Ok(exit)
}

/// Packets going into a pod (egress of the host-side veth): reverse NAT only.
#[classifier]
pub fn lb_tc_to_pod(ctx: TcContext) -> i32 {
    let r = try_to_pod(&ctx);
    tc_verdict(&ctx, r)
}

#[inline(always)]
fn try_to_pod(ctx: &TcContext) -> Result<Exit, Reason> {
    let pkt = TcPkt::new(ctx);
    let p = parse_counted(&pkt)?;
    let reply = if p.key.proto == PROTO_ICMP {
        Some(icmp::translate_error(&pkt, &p)?)
    } else {
        nat::reverse(&pkt, &p)?
    };
    match reply {
        // A hairpin reply never comes this way (it is redirected at from_pod); pass.
        Some(exit) => Ok(Exit {
            action: Action::Pass,
            reason: exit.reason,
        }),
        None => Err(Reason::PassNotService),
    }
}

// ---------------------------------------------------------------------------------------
// Socket LB on the cgroup of the node's processes (see sock.rs). These count their own
// translations; a socket that is for no service is not counted (it is no packet).

#[cgroup_sock_addr(connect4)]
pub fn lb_sock_connect4(ctx: SockAddrContext) -> i32 {
    sock::forward(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn lb_sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::forward(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn lb_sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn lb_sock_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
