//! `lb-agent inspect`: what is in the pinned maps, as tables for people or JSON.
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use lb_common::{FlowKey, SCOPE_EXTERNAL, ServiceKey, ServiceValue};
use serde_json::json;

use crate::cli::{InspectArgs, InspectWhat};
use crate::maps::MapWriter;
use crate::maps::kernel::KernelMaps;

fn ip(be: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be(be))
}

fn proto(p: u8) -> &'static str {
    match p {
        lb_common::PROTO_TCP => "TCP",
        lb_common::PROTO_UDP => "UDP",
        _ => "?",
    }
}

fn flags(v: &ServiceValue) -> Vec<&'static str> {
    let mut f = vec![];
    for (bit, name) in [
        (lb_common::SVC_F_CLUSTER_IP, "ClusterIP"),
        (lb_common::SVC_F_NODEPORT, "NodePort"),
        (lb_common::SVC_F_EXTERNAL_IP, "ExternalIP"),
        (lb_common::SVC_F_LOCAL, "Local"),
        (lb_common::SVC_F_AFFINITY, "ClientIP-affinity"),
        (lb_common::SVC_F_DROP_EMPTY, "DropWhenEmpty"),
        (lb_common::SVC_F_SRC_RANGES, "SourceRanges"),
    ] {
        if v.flags & bit != 0 {
            f.push(name);
        }
    }
    f
}

fn flow(k: &FlowKey) -> String {
    format!(
        "{} {}:{} -> {}:{}",
        proto(k.proto),
        ip(k.saddr_be),
        u16::from_be(k.sport_be),
        ip(k.daddr_be),
        u16::from_be(k.dport_be)
    )
}

/// Renders the requested view. Returns the text to print.
pub fn inspect(args: &InspectArgs) -> anyhow::Result<String> {
    let maps = KernelMaps::open_pinned(&args.bpffs)?;
    let rb = maps.read_back(args.maglev_size)?;
    let backends: std::collections::BTreeMap<u32, lb_common::BackendValue> =
        rb.backends.iter().copied().collect();
    let mut out = String::new();
    match args.what {
        InspectWhat::Services => {
            let mut services: Vec<(ServiceKey, ServiceValue)> = rb.services.clone();
            services
                .sort_by_key(|(k, _)| (u32::from_be(k.addr_be), u16::from_be(k.port_be), k.scope));
            let rows: Vec<serde_json::Value> = services
                .iter()
                .map(|(k, v)| {
                    let mut ids: Vec<u32> = if v.backend_count == 0 {
                        vec![]
                    } else {
                        rb.tables.get(&v.lut_id).cloned().unwrap_or_default()
                    };
                    ids.sort_unstable();
                    ids.dedup();
                    let bs: Vec<String> = ids
                        .iter()
                        .filter_map(|id| backends.get(id))
                        .map(|b| format!("{}:{}", ip(b.addr_be), u16::from_be(b.port_be)))
                        .collect();
                    json!({
                        "frontend": format!("{}:{}", ip(k.addr_be), u16::from_be(k.port_be)),
                        "protocol": proto(k.proto),
                        "scope": if k.scope == SCOPE_EXTERNAL { "external" } else { "internal" },
                        "flags": flags(v),
                        "affinity_timeout_s": v.affinity_timeout_s,
                        "lut_id": v.lut_id,
                        "backends": bs,
                    })
                })
                .collect();
            if args.json {
                return Ok(serde_json::to_string_pretty(&rows)?);
            }
            writeln!(
                out,
                "{:<22} {:<5} {:<9} {:<28} BACKENDS",
                "FRONTEND", "PROTO", "SCOPE", "FLAGS"
            )?;
            for r in &rows {
                let bs: Vec<&str> = r["backends"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|b| b.as_str())
                    .collect();
                let fl: Vec<&str> = r["flags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|b| b.as_str())
                    .collect();
                writeln!(
                    out,
                    "{:<22} {:<5} {:<9} {:<28} {}",
                    r["frontend"].as_str().unwrap_or_default(),
                    r["protocol"].as_str().unwrap_or_default(),
                    r["scope"].as_str().unwrap_or_default(),
                    fl.join(","),
                    if bs.is_empty() {
                        "(none: rejected)".to_owned()
                    } else {
                        bs.join(" ")
                    }
                )?;
            }
        }
        InspectWhat::Backends => {
            let rows: Vec<serde_json::Value> = backends
                .iter()
                .map(|(id, b)| {
                    json!({
                        "id": id,
                        "address": format!("{}:{}", ip(b.addr_be), u16::from_be(b.port_be)),
                        "protocol": proto(b.proto),
                        "local": b.flags & lb_common::BACKEND_F_LOCAL != 0,
                    })
                })
                .collect();
            if args.json {
                return Ok(serde_json::to_string_pretty(&rows)?);
            }
            writeln!(out, "{:<6} {:<22} {:<5} LOCAL", "ID", "ADDRESS", "PROTO")?;
            for r in &rows {
                writeln!(
                    out,
                    "{:<6} {:<22} {:<5} {}",
                    r["id"],
                    r["address"].as_str().unwrap_or_default(),
                    r["protocol"].as_str().unwrap_or_default(),
                    r["local"]
                )?;
            }
        }
        InspectWhat::Conntrack => {
            let ct = maps.conntrack(args.limit)?;
            let rows: Vec<serde_json::Value> = ct
                .iter()
                .map(|(k, v)| {
                    let b = backends.get(&v.backend_id);
                    json!({
                        "flow": flow(k),
                        "backend": b.map(|b| format!("{}:{}", ip(b.addr_be), u16::from_be(b.port_be))),
                        "backend_id": v.backend_id,
                        "snat": (v.flags & lb_common::CT_F_SNAT != 0).then(|| format!("{}:{}", ip(v.snat_addr_be), u16::from_be(v.snat_port_be))),
                        "closing": v.flags & lb_common::CT_F_CLOSING != 0,
                    })
                })
                .collect();
            if args.json {
                return Ok(serde_json::to_string_pretty(&rows)?);
            }
            writeln!(out, "{:<52} {:<22} SNAT", "FLOW", "BACKEND")?;
            for r in &rows {
                writeln!(
                    out,
                    "{:<52} {:<22} {}",
                    r["flow"].as_str().unwrap_or_default(),
                    r["backend"].as_str().unwrap_or("(gone)"),
                    r["snat"].as_str().unwrap_or("-")
                )?;
            }
        }
    }
    Ok(out)
}
