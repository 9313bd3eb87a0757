//! One Service (plus its EndpointSlices) -> the frontends this node serves for it.
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use lb_common::{
    PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_F_AFFINITY, SVC_F_CLUSTER_IP,
    SVC_F_DROP_EMPTY, SVC_F_EXTERNAL_IP, SVC_F_LOCAL, SVC_F_NODEPORT, SVC_F_SRC_RANGES, ServiceKey,
};

use super::{Endpoint, EndpointSet, ModelOptions, NodeInfo, Slice};

/// Default ClientIP affinity timeout (API default: 3 hours).
const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;

/// A backend as the maps see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendAddr {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: u8,
    /// Runs on this node.
    pub local: bool,
}

/// One service map entry: an address:port:protocol in one scope, and its backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    pub key: ServiceKey,
    pub flags: u32,
    pub affinity_timeout_s: u32,
    /// Backends for new connections (the Maglev table). Sorted; empty means "reject new
    /// connections".
    pub backends: Vec<BackendAddr>,
    /// Serving but terminating endpoints not in `backends`: their entries stay so that
    /// connections already on them finish, but no new connection picks them.
    pub standby: Vec<BackendAddr>,
    /// The Service port's name, for metrics and inspection.
    pub port_name: String,
    /// `loadBalancerSourceRanges` (networks, host bits cleared) of a LoadBalancer address
    /// entry: the only sources it accepts new connections from (with `SVC_F_SRC_RANGES`).
    pub source_ranges: Vec<(Ipv4Addr, u8)>,
}

/// Everything this node programs for one Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceModel {
    pub frontends: Vec<Frontend>,
    /// `healthCheckNodePort` and the number of local endpoints behind it
    /// (type LoadBalancer with externalTrafficPolicy Local).
    pub health_check: Option<(u16, usize)>,
    /// Problems with parts of the Service (one port, one slice) that were skipped while
    /// the rest was programmed.
    pub problems: Vec<String>,
}

/// Why a Service is, correctly, not programmed at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SkipReason {
    #[error("type ExternalName is resolved by DNS, not proxied")]
    ExternalName,
    #[error("headless (clusterIP None) Services are not proxied")]
    Headless,
    #[error("labelled service.kubernetes.io/service-proxy-name={0}, served by another proxy")]
    OtherProxy(String),
    #[error("labelled service.kubernetes.io/headless: not proxied")]
    HeadlessLabel,
    /// A Service that cannot be translated: reported, counted and skipped.
    #[error("{0}")]
    Invalid(String),
}

fn protocol(p: Option<&str>) -> Result<(u8, &'static str), String> {
    match p.unwrap_or("TCP") {
        "TCP" => Ok((PROTO_TCP, "TCP")),
        "UDP" => Ok((PROTO_UDP, "UDP")),
        "SCTP" => Err("protocol SCTP is not supported by the data plane".to_owned()),
        other => Err(format!("unknown protocol {other:?}")),
    }
}

fn port16(p: i32, what: &str) -> Result<u16, String> {
    match u16::try_from(p) {
        Ok(v) if v != 0 => Ok(v),
        _ => Err(format!("{what} {p} is out of range 1-65535")),
    }
}

fn key(addr: Ipv4Addr, port: u16, proto: u8, scope: u8) -> ServiceKey {
    ServiceKey {
        addr_be: u32::from(addr).to_be(),
        port_be: port.to_be(),
        proto,
        scope,
    }
}

fn backends(eps: &[&Endpoint], proto: u8, node: &NodeInfo) -> Vec<BackendAddr> {
    let mut v: Vec<BackendAddr> = eps
        .iter()
        .map(|e| BackendAddr {
            addr: e.addr,
            port: e.port,
            proto,
            local: e.node_name.as_deref() == Some(node.name.as_str()),
        })
        .collect();
    v.sort();
    v
}

/// Legacy annotation kube-proxy still reads when `spec.loadBalancerSourceRanges` is empty.
const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

/// The IPv4 `loadBalancerSourceRanges` (or the legacy annotation, comma-separated), host
/// bits cleared, sorted and deduplicated. IPv6 ranges belong to the other family; an
/// unparsable range is reported and left out.
fn source_ranges(svc: &Service, problems: &mut Vec<String>) -> Vec<(Ipv4Addr, u8)> {
    let from_spec: Vec<String> = svc
        .spec
        .as_ref()
        .and_then(|s| s.load_balancer_source_ranges.clone())
        .unwrap_or_default();
    let raw: Vec<String> = if from_spec.is_empty() {
        svc.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SOURCE_RANGES_ANNOTATION))
            .map(|v| {
                v.split(',')
                    .map(|r| r.trim().to_owned())
                    .filter(|r| !r.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    } else {
        from_spec
    };
    let mut out = Vec::new();
    for r in &raw {
        let parsed = r.split_once('/').map_or_else(
            || {
                r.parse::<std::net::IpAddr>()
                    .map(|ip| (ip, if ip.is_ipv4() { 32 } else { 128 }))
                    .ok()
            },
            |(ip, len)| {
                Some((
                    ip.trim().parse::<std::net::IpAddr>().ok()?,
                    len.trim().parse::<u8>().ok()?,
                ))
            },
        );
        match parsed {
            Some((std::net::IpAddr::V4(ip), len)) if len <= 32 => {
                let mask = if len == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(len))
                };
                out.push((Ipv4Addr::from(u32::from(ip) & mask), len));
            }
            Some((std::net::IpAddr::V6(_), len)) if len <= 128 => {}
            _ => problems.push(format!("loadBalancerSourceRanges: {r:?} is not a CIDR")),
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Computes the frontends of `svc` on `node`. `slices` are the Service's EndpointSlices
/// (label `kubernetes.io/service-name`).
pub fn service_frontends(
    svc: &Service,
    slices: &[&Slice],
    node: &NodeInfo,
    opts: &ModelOptions,
) -> Result<ServiceModel, SkipReason> {
    if let Some(v) = svc
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("service.kubernetes.io/service-proxy-name"))
        && opts.service_proxy_name.as_deref() != Some(v.as_str())
    {
        return Err(SkipReason::OtherProxy(v.clone()));
    }
    // kube-proxy's informers select `!service.kubernetes.io/headless`: a Service with the
    // label (any value) is not proxied, and is again once the label is gone.
    if svc
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key("service.kubernetes.io/headless"))
    {
        return Err(SkipReason::HeadlessLabel);
    }
    let spec = svc
        .spec
        .as_ref()
        .ok_or_else(|| SkipReason::Invalid("spec is missing".into()))?;
    let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
    if type_ == "ExternalName" {
        return Err(SkipReason::ExternalName);
    }
    if !matches!(type_, "ClusterIP" | "NodePort" | "LoadBalancer") {
        return Err(SkipReason::Invalid(format!("unknown type {type_:?}")));
    }
    let cluster_ip_strs: Vec<&str> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        (_, Some(ip)) => vec![ip.as_str()],
        _ => vec![],
    };
    if cluster_ip_strs.first() == Some(&"None") {
        return Err(SkipReason::Headless);
    }
    let mut cluster_ips = Vec::new();
    for s in &cluster_ip_strs {
        if s.is_empty() {
            continue;
        }
        match s.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(ip)) => cluster_ips.push(ip),
            Ok(std::net::IpAddr::V6(_)) => {} // dual-stack: the IPv6 family is not served yet
            Err(_) => {
                return Err(SkipReason::Invalid(format!(
                    "clusterIP {s:?} is not an IP address"
                )));
            }
        }
    }
    let mut extra_ips = Vec::new(); // externalIPs and LoadBalancer ingress IPs
    let mut lb_ips = Vec::new(); // LoadBalancer ingress IPs only (source ranges apply)
    for s in spec.external_ips.iter().flatten() {
        match s.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(ip)) => extra_ips.push(ip),
            Ok(std::net::IpAddr::V6(_)) => {}
            Err(_) => {
                return Err(SkipReason::Invalid(format!(
                    "externalIP {s:?} is not an IP address"
                )));
            }
        }
    }
    if type_ == "LoadBalancer" {
        for ing in svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
        {
            // ipMode Proxy: the load balancer proxies, so traffic arrives for the node,
            // not for the LB IP; kube-proxy does not capture the address.
            if ing.ip_mode.as_deref() == Some("Proxy") {
                continue;
            }
            if let Some(Ok(ip)) = ing.ip.as_ref().map(|s| s.parse::<Ipv4Addr>()) {
                lb_ips.push(ip);
                if !extra_ips.contains(&ip) {
                    extra_ips.push(ip);
                }
            }
        }
    }

    let mut model = ServiceModel::default();
    let source_ranges = if type_ == "LoadBalancer" {
        source_ranges(svc, &mut model.problems)
    } else {
        Vec::new()
    };
    let etp_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let itp_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let (affinity_flag, affinity_timeout_s) =
        if spec.session_affinity.as_deref() == Some("ClientIP") {
            let t = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .filter(|t| *t > 0)
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_S);
            (SVC_F_AFFINITY, t)
        } else {
            (0, 0)
        };

    let mut local_endpoints = 0_usize;
    let ports = spec.ports.as_deref().unwrap_or(&[]);
    for sp in ports {
        let port_name = sp.name.clone().unwrap_or_default();
        let (proto, proto_name) = match protocol(sp.protocol.as_deref()) {
            Ok(p) => p,
            Err(e) => {
                model.problems.push(format!("port {port_name:?}: {e}"));
                continue;
            }
        };
        let port = port16(sp.port, "port").map_err(SkipReason::Invalid)?;
        let node_port = match sp.node_port {
            Some(np) if matches!(type_, "NodePort" | "LoadBalancer") => {
                Some(port16(np, "nodePort").map_err(SkipReason::Invalid)?)
            }
            _ => None,
        };
        let (set, problems) =
            EndpointSet::collect(slices, &port_name, proto_name, publish_not_ready);
        model.problems.extend(problems);
        let cluster = backends(&set.cluster(node), proto, node);
        let local = backends(&set.local(node), proto, node);
        local_endpoints = local_endpoints.max(local.len());
        let external = if etp_local { &local } else { &cluster };
        let ext_local_flag = if etp_local { SVC_F_LOCAL } else { 0 };

        let draining = backends(&set.terminating(), proto, node);
        // kube-proxy (CategorizeEndpoints): the endpoints some entry of this Service may
        // use. None at all: reject. Some, but none for an entry with a Local policy: that
        // entry drops ("has no local endpoints"), so a load balancer's health check, not
        // an RST, moves clients to a node that has endpoints.
        let externally_accessible = node_port.is_some() || !extra_ips.is_empty();
        let uses_cluster = !itp_local || (externally_accessible && !etp_local);
        let uses_local = itp_local || (externally_accessible && etp_local);
        let has_endpoints =
            (uses_cluster && !cluster.is_empty()) || (uses_local && !local.is_empty());
        let mut push = |addr: Ipv4Addr, port: u16, scope: u8, flags: u32, b: &Vec<BackendAddr>| {
            let drop_empty = if b.is_empty() && has_endpoints {
                SVC_F_DROP_EMPTY
            } else {
                0
            };
            // Source ranges guard the LoadBalancer address itself (kube-proxy's KUBE-FW
            // chain), from outside and from pods alike; NodePorts stay open.
            let ranges = if flags & SVC_F_EXTERNAL_IP != 0 && lb_ips.contains(&addr) {
                source_ranges.clone()
            } else {
                Vec::new()
            };
            let ranges_flag = if ranges.is_empty() {
                0
            } else {
                SVC_F_SRC_RANGES
            };
            model.frontends.push(Frontend {
                key: key(addr, port, proto, scope),
                flags: flags | affinity_flag | drop_empty | ranges_flag,
                source_ranges: ranges,
                affinity_timeout_s,
                backends: b.clone(),
                standby: draining
                    .iter()
                    .filter(|d| !b.contains(d))
                    .copied()
                    .collect(),
                port_name: port_name.clone(),
            });
        };
        for &ip in &cluster_ips {
            let (b, f) = if itp_local {
                (&local, SVC_F_LOCAL)
            } else {
                (&cluster, 0)
            };
            push(ip, port, SCOPE_INTERNAL, SVC_F_CLUSTER_IP | f, b);
        }
        if let Some(np) = node_port {
            for &addr in &node.addrs {
                push(
                    addr,
                    np,
                    SCOPE_EXTERNAL,
                    SVC_F_NODEPORT | ext_local_flag,
                    external,
                );
                // From pods and the node itself kube-proxy short-circuits to all cluster
                // endpoints, whatever the external policy.
                push(addr, np, SCOPE_INTERNAL, SVC_F_NODEPORT, &cluster);
            }
        }
        for &ip in &extra_ips {
            push(
                ip,
                port,
                SCOPE_EXTERNAL,
                SVC_F_EXTERNAL_IP | ext_local_flag,
                external,
            );
            push(ip, port, SCOPE_INTERNAL, SVC_F_EXTERNAL_IP, &cluster);
        }
    }
    if type_ == "LoadBalancer"
        && etp_local
        && let Some(hc) = spec.health_check_node_port
    {
        let hc = port16(hc, "healthCheckNodePort").map_err(SkipReason::Invalid)?;
        model.health_check = Some((hc, local_endpoints));
    }
    // Two ports of one Service may not claim the same frontend; keep the first.
    let mut seen = std::collections::BTreeSet::new();
    model.frontends.retain(|f| seen.insert(f.key));
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(yaml: &str) -> Service {
        serde_yaml::from_str(yaml).unwrap()
    }
    fn slice(yaml: &str) -> Slice {
        let es: k8s_openapi::api::discovery::v1::EndpointSlice =
            serde_yaml::from_str(yaml).unwrap();
        Slice::from(&es)
    }
    fn node() -> NodeInfo {
        NodeInfo {
            name: "node-0".into(),
            addrs: vec![Ipv4Addr::new(10, 0, 0, 10)],
            zone: None,
        }
    }
    const SLICE: &str = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: ["10.244.0.10"], nodeName: node-0, conditions: {ready: true}}
- {addresses: ["10.244.1.10"], nodeName: node-1, conditions: {ready: true}}
- {addresses: ["10.244.1.11"], nodeName: node-1, conditions: {ready: false, serving: true, terminating: true}}
"#;

    fn frontends_of(s: &str, sl: &str) -> ServiceModel {
        let sl = slice(sl);
        service_frontends(&svc(s), &[&sl], &node(), &ModelOptions::default()).unwrap()
    }

    #[test]
    fn cluster_ip_uses_ready_endpoints_matched_by_port_name() {
        let m = frontends_of(
            r"
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80, targetPort: 8080}]}",
            SLICE,
        );
        assert_eq!(m.frontends.len(), 1);
        let f = &m.frontends[0];
        assert_eq!(f.key.scope, SCOPE_INTERNAL);
        assert_eq!(u16::from_be(f.key.port_be), 80);
        let addrs: Vec<_> = f
            .backends
            .iter()
            .map(|b| (b.addr.to_string(), b.port, b.local))
            .collect();
        assert_eq!(
            addrs,
            [
                ("10.244.0.10".into(), 8080, true),
                ("10.244.1.10".into(), 8080, false)
            ]
        );
    }

    #[test]
    fn terminating_endpoints_are_the_fallback_only_when_none_is_ready() {
        let sl = SLICE.replace("conditions: {ready: true}", "conditions: {ready: false}");
        let m = frontends_of(
            r"
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}",
            &sl,
        );
        let b: Vec<_> = m.frontends[0]
            .backends
            .iter()
            .map(|b| b.addr.to_string())
            .collect();
        assert_eq!(b, ["10.244.1.11"]);
    }

    #[test]
    fn nodeport_local_policy_uses_only_local_endpoints_externally() {
        let m = frontends_of(
            r"
metadata: {name: web, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  ports: [{name: http, port: 80, nodePort: 30080}]
status: {loadBalancer: {ingress: [{ip: 10.0.100.1}]}}",
            SLICE,
        );
        let ext: Vec<_> = m
            .frontends
            .iter()
            .filter(|f| f.key.scope == SCOPE_EXTERNAL)
            .collect();
        assert_eq!(ext.len(), 2, "NodePort on the node address and the LB IP");
        for f in &ext {
            assert!(f.flags & SVC_F_LOCAL != 0);
            assert_eq!(f.backends.len(), 1);
            assert!(f.backends[0].local);
        }
        let int_np = m
            .frontends
            .iter()
            .find(|f| f.key.scope == SCOPE_INTERNAL && f.flags & SVC_F_NODEPORT != 0)
            .unwrap();
        assert_eq!(int_np.backends.len(), 2, "pods reach all endpoints");
        assert_eq!(m.health_check, Some((32000, 1)));
    }

    #[test]
    fn skips_headless_external_name_and_other_proxies() {
        let n = node();
        let o = ModelOptions::default();
        let headless = svc("metadata: {name: h}\nspec: {clusterIP: None, ports: [{port: 80}]}");
        assert_eq!(
            service_frontends(&headless, &[], &n, &o),
            Err(SkipReason::Headless)
        );
        let en = svc("metadata: {name: e}\nspec: {type: ExternalName, externalName: x.example}");
        assert_eq!(
            service_frontends(&en, &[], &n, &o),
            Err(SkipReason::ExternalName)
        );
        let other = svc(
            "metadata: {name: o, labels: {service.kubernetes.io/service-proxy-name: foo}}\nspec: {clusterIP: 10.96.0.3, ports: [{port: 80}]}",
        );
        assert!(matches!(
            service_frontends(&other, &[], &n, &o),
            Err(SkipReason::OtherProxy(_))
        ));
        let mine = ModelOptions {
            service_proxy_name: Some("foo".into()),
        };
        assert!(service_frontends(&other, &[], &n, &mine).is_ok());
        let labelled = svc(r#"
metadata: {name: h, labels: {service.kubernetes.io/headless: ""}}
spec: {clusterIP: 10.96.0.12, ports: [{port: 80}]}"#);
        assert_eq!(
            service_frontends(&labelled, &[], &n, &o),
            Err(SkipReason::HeadlessLabel)
        );
    }

    #[test]
    fn bad_input_is_named() {
        let bad = svc("metadata: {name: b}\nspec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}");
        let e = service_frontends(&bad, &[], &node(), &ModelOptions::default()).unwrap_err();
        assert!(e.to_string().contains("10.96.0.300"), "{e}");
        let sctp = svc(
            "metadata: {name: s}\nspec: {clusterIP: 10.96.0.3, ports: [{port: 80, protocol: SCTP}, {name: b, port: 81}]}",
        );
        let m = service_frontends(&sctp, &[], &node(), &ModelOptions::default()).unwrap();
        assert_eq!(m.frontends.len(), 1);
        assert!(m.problems[0].contains("SCTP"));
    }

    #[test]
    fn affinity_default_timeout_and_itp_local() {
        let m = frontends_of(
            r"
metadata: {name: web}
spec: {clusterIP: 10.96.0.10, sessionAffinity: ClientIP, internalTrafficPolicy: Local, ports: [{name: http, port: 80}]}",
            SLICE,
        );
        let f = &m.frontends[0];
        assert_eq!(f.affinity_timeout_s, 10_800);
        assert!(f.flags & SVC_F_AFFINITY != 0 && f.flags & SVC_F_LOCAL != 0);
        assert_eq!(f.backends.len(), 1);
    }

    /// kube-proxy's REJECT versus DROP: an entry whose Local policy leaves it without
    /// endpoints drops when the Service has endpoints elsewhere, rejects when it has none.
    #[test]
    fn local_policy_without_local_endpoints_drops_and_no_endpoints_at_all_rejects() {
        // SLICE's ready endpoint on this node (node-0) is removed: only node-1 has one.
        let remote_only = SLICE.replace(
            "- {addresses: [\"10.244.0.10\"], nodeName: node-0, conditions: {ready: true}}\n",
            "",
        );
        let lb = r"
metadata: {name: web, namespace: default}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  externalTrafficPolicy: Local
  ports: [{name: http, port: 80, nodePort: 30080}]";
        let m = frontends_of(lb, &remote_only);
        for f in &m.frontends {
            let external = f.key.scope == SCOPE_EXTERNAL;
            assert_eq!(f.backends.is_empty(), external, "{f:?}");
            assert_eq!(f.flags & SVC_F_DROP_EMPTY != 0, external, "{f:?}");
        }
        // No endpoint anywhere: every entry rejects.
        let none = SLICE.split("endpoints:").next().unwrap().to_owned() + "endpoints: []\n";
        for f in &frontends_of(lb, &none).frontends {
            assert!(
                f.backends.is_empty() && f.flags & SVC_F_DROP_EMPTY == 0,
                "{f:?}"
            );
        }
        // internalTrafficPolicy Local on a ClusterIP-only Service uses local endpoints
        // only: none here means none at all for it, so it rejects.
        let itp = r"
metadata: {name: web}
spec: {clusterIP: 10.96.0.10, internalTrafficPolicy: Local, ports: [{name: http, port: 80}]}";
        let f = &frontends_of(itp, &remote_only).frontends[0];
        assert!(
            f.backends.is_empty() && f.flags & SVC_F_DROP_EMPTY == 0,
            "{f:?}"
        );
        // ... but with a NodePort using cluster endpoints, the ClusterIP entry drops.
        let itp_np = r"
metadata: {name: web}
spec: {type: NodePort, clusterIP: 10.96.0.10, internalTrafficPolicy: Local, ports: [{name: http, port: 80, nodePort: 30080}]}";
        let m = frontends_of(itp_np, &remote_only);
        let cip = m
            .frontends
            .iter()
            .find(|f| f.flags & SVC_F_CLUSTER_IP != 0)
            .unwrap();
        assert!(
            cip.backends.is_empty() && cip.flags & SVC_F_DROP_EMPTY != 0,
            "{cip:?}"
        );
    }

    /// loadBalancerSourceRanges guard the LoadBalancer address only (from outside and from
    /// pods), not NodePorts, ClusterIPs or externalIPs; the legacy annotation is read when
    /// the field is empty; IPv6 ranges are the other family's; a bad one is reported.
    #[test]
    fn source_ranges_apply_to_the_load_balancer_address_only() {
        let lb = r#"
metadata: {name: web, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  externalIPs: [10.0.200.1]
  loadBalancerSourceRanges: ["192.168.7.9/24", "2001:db8::/32", "10.0.0.0/8", "nope/33"]
  ports: [{name: http, port: 80, nodePort: 30080}]
status: {loadBalancer: {ingress: [{ip: 10.0.100.1}]}}"#;
        let m = frontends_of(lb, SLICE);
        let want = vec![
            (Ipv4Addr::new(10, 0, 0, 0), 8),
            (Ipv4Addr::new(192, 168, 7, 0), 24),
        ];
        let lb_addr = u32::from(Ipv4Addr::new(10, 0, 100, 1)).to_be();
        let mut guarded = 0;
        for f in &m.frontends {
            if f.key.addr_be == lb_addr {
                guarded += 1;
                assert_eq!(f.source_ranges, want, "{f:?}");
                assert!(f.flags & SVC_F_SRC_RANGES != 0);
            } else {
                assert!(
                    f.source_ranges.is_empty() && f.flags & SVC_F_SRC_RANGES == 0,
                    "{f:?}"
                );
            }
        }
        assert_eq!(guarded, 2, "the LB address in both scopes");
        assert_eq!(
            m.problems,
            ["loadBalancerSourceRanges: \"nope/33\" is not a CIDR"]
        );
        // The annotation, when the field is empty.
        let annotated = lb
            .replace(
                "  loadBalancerSourceRanges: [\"192.168.7.9/24\", \"2001:db8::/32\", \"10.0.0.0/8\", \"nope/33\"]\n",
                "",
            )
            .replace(
                "namespace: default}",
                "namespace: default, annotations: {service.beta.kubernetes.io/load-balancer-source-ranges: \"10.1.2.3/32, 10.9.0.0/16\"}}",
            );
        let m = frontends_of(&annotated, SLICE);
        let f = m
            .frontends
            .iter()
            .find(|f| f.key.addr_be == lb_addr)
            .unwrap();
        assert_eq!(
            f.source_ranges,
            [
                (Ipv4Addr::new(10, 1, 2, 3), 32),
                (Ipv4Addr::new(10, 9, 0, 0), 16)
            ]
        );
    }
}
