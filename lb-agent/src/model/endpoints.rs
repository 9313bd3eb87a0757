//! Endpoints of one Service port, merged from all of the Service's EndpointSlices, and
//! the kube-proxy rules for which of them take new connections.
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::NodeInfo;

/// One address:port of a Service port, with its conditions.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub node_name: Option<String>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// Zones from topology hints (`hints.forZones`), empty when there are none.
    pub zone_hints: BTreeSet<String>,
}

/// All endpoints of one Service port, deduplicated by address and port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointSet {
    pub endpoints: Vec<Endpoint>,
}

impl EndpointSet {
    /// Collects the endpoints of the slice port named `port_name` with `protocol`.
    /// IPv6 and FQDN slices are skipped (the data plane is IPv4). Returns the set and the
    /// per-slice problems (bad addresses, ports out of range) to report.
    pub fn collect(
        slices: &[&EndpointSlice],
        port_name: &str,
        protocol: &str,
        publish_not_ready: bool,
    ) -> (EndpointSet, Vec<String>) {
        let mut out: Vec<Endpoint> = Vec::new();
        let mut problems = Vec::new();
        for slice in slices {
            if slice.address_type != "IPv4" {
                continue;
            }
            let slice_name = slice.metadata.name.as_deref().unwrap_or("?");
            let Some(port) = slice.ports.iter().flatten().find(|p| {
                p.name.as_deref().unwrap_or("") == port_name
                    && p.protocol.as_deref().unwrap_or("TCP") == protocol
            }) else {
                continue;
            };
            let Some(port_num) = port.port else {
                continue; // "all ports" slices are not used by Services
            };
            let Ok(port_num) = u16::try_from(port_num) else {
                problems.push(format!(
                    "EndpointSlice {slice_name}: port {port_num} out of range"
                ));
                continue;
            };
            if port_num == 0 {
                problems.push(format!("EndpointSlice {slice_name}: port 0"));
                continue;
            }
            for ep in slice.endpoints.iter().flatten() {
                let cond = ep.conditions.as_ref();
                // nil ready/serving mean true; nil terminating means false (API docs).
                let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
                let ready = cond.and_then(|c| c.ready).unwrap_or(true);
                let serving = cond.and_then(|c| c.serving).unwrap_or(ready);
                let zone_hints = ep
                    .hints
                    .as_ref()
                    .and_then(|h| h.for_zones.as_ref())
                    .into_iter()
                    .flatten()
                    .map(|z| z.name.clone())
                    .collect();
                // Only the first address is used, as kube-proxy does.
                let Some(addr) = ep.addresses.first() else {
                    continue;
                };
                let Ok(addr) = addr.parse::<Ipv4Addr>() else {
                    problems.push(format!(
                        "EndpointSlice {slice_name}: {addr:?} is not an IPv4 address"
                    ));
                    continue;
                };
                let e = Endpoint {
                    addr,
                    port: port_num,
                    node_name: ep.node_name.clone(),
                    // publishNotReadyAddresses: every endpoint counts as ready.
                    ready: (ready && !terminating) || publish_not_ready,
                    serving,
                    terminating,
                    zone_hints,
                };
                if !out.iter().any(|o| o.addr == e.addr && o.port == e.port) {
                    out.push(e);
                }
            }
        }
        out.sort();
        (EndpointSet { endpoints: out }, problems)
    }

    /// Endpoints that take new connections from anywhere in the cluster: the ready ones;
    /// when none is ready, the serving terminating ones (kube-proxy's terminating
    /// fallback), so connections drain instead of being refused during a rollout.
    pub fn cluster(&self, node: &NodeInfo) -> Vec<&Endpoint> {
        let usable = usable(self.endpoints.iter());
        apply_topology(usable, node)
    }

    /// Serving terminating endpoints: connections on them may still be open.
    pub fn terminating(&self) -> Vec<&Endpoint> {
        self.endpoints
            .iter()
            .filter(|e| e.serving && e.terminating)
            .collect()
    }

    /// Endpoints on this node that take new connections (`Local` traffic policies). The
    /// terminating fallback applies among local endpoints.
    pub fn local(&self, node: &NodeInfo) -> Vec<&Endpoint> {
        usable(
            self.endpoints
                .iter()
                .filter(|e| e.node_name.as_deref() == Some(node.name.as_str())),
        )
    }
}

fn usable<'a>(eps: impl Iterator<Item = &'a Endpoint> + Clone) -> Vec<&'a Endpoint> {
    let ready: Vec<&Endpoint> = eps.clone().filter(|e| e.ready).collect();
    if !ready.is_empty() {
        return ready;
    }
    eps.filter(|e| e.serving && e.terminating).collect()
}

/// Topology-aware routing: when every endpoint carries zone hints and some are for this
/// node's zone, use only those (kube-proxy's topology.go; otherwise hints are ignored).
fn apply_topology<'a>(eps: Vec<&'a Endpoint>, node: &NodeInfo) -> Vec<&'a Endpoint> {
    let Some(zone) = node.zone.as_ref() else {
        return eps;
    };
    if eps.is_empty() || eps.iter().any(|e| e.zone_hints.is_empty()) {
        return eps;
    }
    let in_zone: Vec<&Endpoint> = eps
        .iter()
        .copied()
        .filter(|e| e.zone_hints.contains(zone))
        .collect();
    if in_zone.is_empty() { eps } else { in_zone }
}
