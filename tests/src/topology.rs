//! The sandbox's address plan. The same in every sandbox: each sandbox lives in its own
//! namespaces, so concurrent sandboxes never see each other's addresses.
//!
//! | what | address |
//! | --- | --- |
//! | client network (bridge `br0` in the client ns) | 10.0.0.0/24 |
//! | client | 10.0.0.1 |
//! | node-N `eth0` | 10.0.0.(10+N) |
//! | pods of node-N | 10.244.N.(10+i), i = the pod's index on its node |
//! | ClusterIPs | 10.96.0.0/16 |
//! | LoadBalancer / external IPs | 10.0.100.0/24 (the client routes them via node-0) |
use std::net::Ipv4Addr;

pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const CLIENT_PREFIX_LEN: u8 = 24;
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
pub const EXTERNAL_IP_CIDR: &str = "10.0.100.0/24";
/// The pods' default gateway (a link-local address answered by the node side of the veth).
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The node's external interface (faces the client network).
pub const NODE_EXTERNAL_IFACE: &str = "eth0";
/// Host-side pod veths start with this (lb-agent's `--pod-iface-prefix`).
pub const POD_IFACE_PREFIX: &str = "lxc";

pub fn node_name(index: usize) -> String {
    format!("node-{index}")
}

pub fn node_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        10,
        0,
        0,
        10 + u8::try_from(index).expect("at most 245 nodes"),
    )
}

pub fn pod_cidr(index: usize) -> String {
    format!("10.244.{index}.0/24")
}

/// A pod to run in the sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSpec {
    pub name: String,
    pub node: usize,
    pub http_port: u16,
    pub udp_port: Option<u16>,
    /// `--backend URL` of the pod server (the frontend calls it).
    pub backend: Option<String>,
}

impl PodSpec {
    pub fn new(name: &str, node: usize, http_port: u16) -> Self {
        Self {
            name: name.into(),
            node,
            http_port,
            udp_port: None,
            backend: None,
        }
    }

    #[must_use]
    pub fn udp_port(mut self, port: u16) -> Self {
        self.udp_port = Some(port);
        self
    }

    #[must_use]
    pub fn backend(mut self, url: &str) -> Self {
        self.backend = Some(url.into());
        self
    }
}

/// Pod addresses in order: the i-th pod placed on node N gets 10.244.N.(10+i).
pub fn assign(pods: &[PodSpec]) -> Vec<(PodSpec, Ipv4Addr)> {
    let mut per_node = std::collections::HashMap::<usize, u8>::new();
    pods.iter()
        .map(|p| {
            let i = per_node.entry(p.node).or_default();
            let ip = Ipv4Addr::new(10, 244, u8::try_from(p.node).expect("node index"), 10 + *i);
            *i += 1;
            (p.clone(), ip)
        })
        .collect()
}
