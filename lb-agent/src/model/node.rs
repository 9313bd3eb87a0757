//! What the agent knows about its own node, from its `v1/Node` object.
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Node;

/// This node's name, addresses and zone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// InternalIP first (the SNAT address), then ExternalIPs: every address NodePorts
    /// answer on.
    pub addrs: Vec<Ipv4Addr>,
    /// `topology.kubernetes.io/zone`, for topology-aware routing.
    pub zone: Option<String>,
}

impl NodeInfo {
    /// A node known only by name (its Node object has not arrived yet): no NodePort
    /// addresses, no zone.
    pub fn named(name: &str) -> Self {
        NodeInfo {
            name: name.to_owned(),
            ..Default::default()
        }
    }

    pub fn from_node(node: &Node) -> Self {
        let name = node.metadata.name.clone().unwrap_or_default();
        let mut internal = Vec::new();
        let mut external = Vec::new();
        for a in node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
        {
            let Ok(ip) = a.address.parse::<Ipv4Addr>() else {
                continue; // IPv6 and hostnames: not used by the IPv4 data plane
            };
            match a.type_.as_str() {
                "InternalIP" => internal.push(ip),
                "ExternalIP" => external.push(ip),
                _ => {}
            }
        }
        let mut addrs = internal;
        for ip in external {
            if !addrs.contains(&ip) {
                addrs.push(ip);
            }
        }
        let zone = node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("topology.kubernetes.io/zone"))
            .cloned();
        NodeInfo { name, addrs, zone }
    }

    /// The address external traffic is SNATed to when it goes to another node.
    pub fn snat_addr(&self) -> Option<Ipv4Addr> {
        self.addrs.first().copied()
    }
}
