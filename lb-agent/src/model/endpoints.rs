//! Endpoints of one Service port, merged from all of the Service's EndpointSlices, and
//! the kube-proxy rules for which of them take new connections.
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::NodeInfo;

/// The parts of an EndpointSlice the model reads (k8s-openapi's `Endpoint` is 352 bytes
/// before its strings; [`SliceEndpoint`] is at most 64, asserted in a test; in the
/// control-plane benchmark the agent's RSS went from 190 to 121 MiB with this form). The
/// agent keeps slices only in this form (Cilium's "slim" objects do the same).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slice {
    pub name: Box<str>,
    /// The `kubernetes.io/service-name` label: the Service the slice belongs to.
    pub service_name: Option<Box<str>>,
    /// `addressType: IPv4`; other families are ignored until IPv6 lands.
    pub ipv4: bool,
    pub ports: Box<[SlicePort]>,
    pub endpoints: Box<[SliceEndpoint]>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    /// Empty when unnamed (matches an unnamed Service port).
    pub name: Box<str>,
    /// `TCP` when unset, as the API defaults it.
    pub protocol: Box<str>,
    /// None: "all ports" (not used by Services).
    pub port: Option<i32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    /// The first address (kube-proxy uses only that one).
    pub addr: SliceAddr,
    pub node_name: Option<Box<str>>,
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
    /// `hints.forZones` and `hints.forNodes` names.
    pub hints: Box<[Hint]>,
}

/// One topology hint of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hint {
    /// `hints.forZones[].name` (trafficDistribution PreferClose / PreferSameZone).
    Zone(Box<str>),
    /// `hints.forNodes[].name` (trafficDistribution PreferSameNode).
    Node(Box<str>),
}

impl Hint {
    fn zone(&self) -> Option<&str> {
        match self {
            Hint::Zone(z) => Some(z),
            Hint::Node(_) => None,
        }
    }

    fn node(&self) -> Option<&str> {
        match self {
            Hint::Node(n) => Some(n),
            Hint::Zone(_) => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SliceAddr {
    V4(Ipv4Addr),
    /// Kept as written, to report it.
    Invalid(Box<str>),
    Missing,
}

impl From<&EndpointSlice> for Slice {
    fn from(es: &EndpointSlice) -> Self {
        Slice {
            name: es.metadata.name.as_deref().unwrap_or("?").into(),
            service_name: es
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .map(|n| n.as_str().into()),
            ipv4: es.address_type == "IPv4",
            ports: es
                .ports
                .iter()
                .flatten()
                .map(|p| SlicePort {
                    name: p.name.as_deref().unwrap_or("").into(),
                    protocol: p.protocol.as_deref().unwrap_or("TCP").into(),
                    port: p.port,
                })
                .collect(),
            endpoints: es
                .endpoints
                .iter()
                .flatten()
                .map(|ep| {
                    let cond = ep.conditions.as_ref();
                    SliceEndpoint {
                        addr: match ep.addresses.first() {
                            None => SliceAddr::Missing,
                            Some(a) => a.parse().map_or_else(
                                |_| SliceAddr::Invalid(a.as_str().into()),
                                SliceAddr::V4,
                            ),
                        },
                        node_name: ep.node_name.as_deref().map(Into::into),
                        ready: cond.and_then(|c| c.ready),
                        serving: cond.and_then(|c| c.serving),
                        terminating: cond.and_then(|c| c.terminating),
                        hints: ep
                            .hints
                            .iter()
                            .flat_map(|h| {
                                let zones = h.for_zones.iter().flatten();
                                let nodes = h.for_nodes.iter().flatten();
                                zones
                                    .map(|z| Hint::Zone(z.name.as_str().into()))
                                    .chain(nodes.map(|n| Hint::Node(n.name.as_str().into())))
                            })
                            .collect(),
                    }
                })
                .collect(),
        }
    }
}

/// The label naming an EndpointSlice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

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
    /// Nodes from topology hints (`hints.forNodes`), empty when there are none.
    pub node_hints: BTreeSet<String>,
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
        slices: &[&Slice],
        port_name: &str,
        protocol: &str,
        publish_not_ready: bool,
    ) -> (EndpointSet, Vec<String>) {
        let mut out: Vec<Endpoint> = Vec::new();
        let mut problems = Vec::new();
        for slice in slices {
            if !slice.ipv4 {
                continue;
            }
            let slice_name = &slice.name;
            let Some(port) = slice
                .ports
                .iter()
                .find(|p| &*p.name == port_name && &*p.protocol == protocol)
            else {
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
            for ep in &slice.endpoints {
                // nil ready/serving mean true; nil terminating means false (API docs).
                let terminating = ep.terminating.unwrap_or(false);
                let ready = ep.ready.unwrap_or(true);
                let serving = ep.serving.unwrap_or(ready);
                let addr = match &ep.addr {
                    SliceAddr::V4(a) => *a,
                    SliceAddr::Missing => continue,
                    SliceAddr::Invalid(a) => {
                        problems.push(format!(
                            "EndpointSlice {slice_name}: {a:?} is not an IPv4 address"
                        ));
                        continue;
                    }
                };
                let e = Endpoint {
                    addr,
                    port: port_num,
                    node_name: ep.node_name.as_deref().map(str::to_owned),
                    // publishNotReadyAddresses: every endpoint counts as ready.
                    ready: (ready && !terminating) || publish_not_ready,
                    serving,
                    terminating,
                    zone_hints: ep
                        .hints
                        .iter()
                        .filter_map(Hint::zone)
                        .map(Into::into)
                        .collect(),
                    node_hints: ep
                        .hints
                        .iter()
                        .filter_map(Hint::node)
                        .map(Into::into)
                        .collect(),
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

/// Topology-aware routing, as kube-proxy's topology.go: when every endpoint carries node
/// hints (`trafficDistribution: PreferSameNode`) and some are for this node, only those;
/// else when every endpoint carries zone hints and some are for this node's zone, only
/// those; otherwise hints are ignored.
fn apply_topology<'a>(eps: Vec<&'a Endpoint>, node: &NodeInfo) -> Vec<&'a Endpoint> {
    if eps.is_empty() {
        return eps;
    }
    if eps.iter().all(|e| !e.node_hints.is_empty()) {
        let on_node: Vec<&Endpoint> = eps
            .iter()
            .copied()
            .filter(|e| e.node_hints.contains(&node.name))
            .collect();
        if !on_node.is_empty() {
            return on_node;
        }
    }
    let Some(zone) = node.zone.as_ref() else {
        return eps;
    };
    if eps.iter().any(|e| e.zone_hints.is_empty()) {
        return eps;
    }
    let in_zone: Vec<&Endpoint> = eps
        .iter()
        .copied()
        .filter(|e| e.zone_hints.contains(zone))
        .collect();
    if in_zone.is_empty() { eps } else { in_zone }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(yaml: &str) -> Slice {
        let es: EndpointSlice = serde_yaml::from_str(yaml).unwrap();
        Slice::from(&es)
    }

    #[test]
    fn compact_slice_keeps_what_the_model_reads_and_reports_bad_addresses() {
        let s = slice(
            r#"
metadata: {name: web-abc, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: ["10.244.0.10"], nodeName: node-0, hints: {forZones: [{name: a}]}}
- {addresses: ["10.244.0.300"], nodeName: node-0}
- {addresses: [], nodeName: node-0}
- {addresses: ["10.244.0.11"], conditions: {ready: false, serving: true, terminating: true}}
"#,
        );
        assert_eq!(s.service_name.as_deref(), Some("web"));
        assert_eq!(&*s.ports[0].protocol, "TCP", "protocol defaults to TCP");
        let (set, problems) = EndpointSet::collect(&[&s], "http", "TCP", false);
        assert_eq!(
            problems,
            ["EndpointSlice web-abc: \"10.244.0.300\" is not an IPv4 address"]
        );
        let got: Vec<_> = set
            .endpoints
            .iter()
            .map(|e| (e.addr.to_string(), e.ready, e.serving, e.terminating))
            .collect();
        assert_eq!(
            got,
            [
                ("10.244.0.10".to_owned(), true, true, false),
                ("10.244.0.11".to_owned(), false, true, true)
            ]
        );
        assert_eq!(
            set.endpoints[0].zone_hints,
            BTreeSet::from(["a".to_owned()])
        );
        assert_eq!(set.endpoints[0].node_name.as_deref(), Some("node-0"));
        // Another port name or protocol, or an IPv6 slice: nothing.
        assert!(
            EndpointSet::collect(&[&s], "http", "UDP", false)
                .0
                .endpoints
                .is_empty()
        );
        let v6 = Slice {
            ipv4: false,
            ..s.clone()
        };
        assert!(
            EndpointSet::collect(&[&v6], "http", "TCP", false)
                .0
                .endpoints
                .is_empty()
        );
    }

    #[test]
    fn compact_endpoint_stays_small() {
        // What keeps 100k endpoints in a few MiB instead of 35 (k8s-openapi's Endpoint is
        // 352 bytes before its strings).
        assert!(std::mem::size_of::<SliceEndpoint>() <= 64);
    }

    /// kube-proxy's topology.go: same-node hints first (when every endpoint has some and
    /// one is for this node), then same-zone hints, else every endpoint.
    #[test]
    fn node_hints_then_zone_hints_then_everything() {
        let s = slice(
            r#"
metadata: {name: web-abc, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: ["10.244.0.10"], nodeName: node-0, hints: {forNodes: [{name: node-0}], forZones: [{name: a}]}}
- {addresses: ["10.244.1.10"], nodeName: node-1, hints: {forNodes: [{name: node-1}], forZones: [{name: a}]}}
- {addresses: ["10.244.2.10"], nodeName: node-2, hints: {forNodes: [{name: node-2}], forZones: [{name: b}]}}
"#,
        );
        let (set, _) = EndpointSet::collect(&[&s], "http", "TCP", false);
        let picked = |name: &str, zone: Option<&str>| -> Vec<String> {
            let node = NodeInfo {
                name: name.into(),
                addrs: vec![],
                zone: zone.map(Into::into),
            };
            set.cluster(&node)
                .iter()
                .map(|e| e.addr.to_string())
                .collect()
        };
        assert_eq!(picked("node-1", Some("a")), ["10.244.1.10"], "same node");
        assert_eq!(picked("node-1", None), ["10.244.1.10"], "no zone needed");
        assert_eq!(
            picked("node-9", Some("a")),
            ["10.244.0.10", "10.244.1.10"],
            "no endpoint for this node: same zone"
        );
        assert_eq!(picked("node-9", None).len(), 3, "neither: all");
        assert_eq!(
            picked("node-9", Some("c")).len(),
            3,
            "no endpoint in the zone: all"
        );
    }
}
