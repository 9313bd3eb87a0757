//! One Service (plus its EndpointSlices) -> the frontends this node serves for it.
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use lb_common::{
    PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_F_AFFINITY, SVC_F_CLUSTER_IP,
    SVC_F_DROP_EMPTY, SVC_F_EXTERNAL_IP, SVC_F_LOCAL, SVC_F_NODEPORT, ServiceKey,
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
            if let Some(Ok(ip)) = ing.ip.as_ref().map(|s| s.parse::<Ipv4Addr>())
                && !extra_ips.contains(&ip)
            {
                extra_ips.push(ip);
            }
        }
    }

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

    let mut model = ServiceModel::default();
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
            model.frontends.push(Frontend {
                key: key(addr, port, proto, scope),
                flags: flags | affinity_flag | drop_empty,
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
}
