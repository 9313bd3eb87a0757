//! Kubernetes objects for the sandbox, as YAML text: Nodes with the sandbox's addresses,
//! EndpointSlices as the EndpointSlice controller would write them for the sandbox's pods,
//! and the seed application (the same files are committed under examples/seed-app/, and a
//! test keeps them equal to what this module generates).
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::topology::{PodSpec, node_ip, node_name, pod_cidr};

/// ClusterIP of the seed app's backend Service.
pub const BACKEND_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// ClusterIP of the seed app's frontend Service.
pub const FRONTEND_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
/// NodePort of the seed app's frontend (Service `frontend-nodeport`).
pub const FRONTEND_NODE_PORT: u16 = 30080;
/// NodePort of the seed app's backend, TCP and UDP (Service `backend-nodeport`).
pub const BACKEND_NODE_PORT: u16 = 30081;
pub const FRONTEND_PORT: u16 = 3000;
pub const BACKEND_PORT: u16 = 8080;
/// Replicas of each seed deployment.
pub const REPLICAS: usize = 3;

/// The `v1/Node` object of node `index`.
pub fn node_yaml(index: usize) -> String {
    let (name, ip, cidr) = (node_name(index), node_ip(index), pod_cidr(index));
    format!(
        "apiVersion: v1
kind: Node
metadata:
  name: {name}
  labels:
    kubernetes.io/hostname: {name}
    kubernetes.io/os: linux
spec:
  podCIDR: {cidr}
  podCIDRs:
    - {cidr}
status:
  addresses:
    - type: InternalIP
      address: {ip}
    - type: Hostname
      address: {name}
"
    )
}

/// All Nodes of a sandbox with `nodes` nodes, as one multi-document file.
pub fn nodes_yaml(nodes: usize) -> String {
    (0..nodes).map(node_yaml).collect::<Vec<_>>().join("---\n")
}

/// One port of an EndpointSlice: name, protocol (`TCP`/`UDP`), port.
#[derive(Clone, Copy, Debug)]
pub struct SlicePort<'a> {
    pub name: &'a str,
    pub protocol: &'a str,
    pub port: u16,
}

/// One endpoint of an EndpointSlice.
#[derive(Clone, Debug)]
pub struct SliceEndpoint {
    pub ip: Ipv4Addr,
    pub node: String,
    pub pod: String,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl SliceEndpoint {
    /// A ready endpoint for a pod of the sandbox.
    pub fn ready(pod: &PodSpec, ip: Ipv4Addr) -> Self {
        Self {
            ip,
            node: node_name(pod.node),
            pod: pod.name.clone(),
            ready: true,
            serving: true,
            terminating: false,
        }
    }
}

/// An EndpointSlice of Service `service` (namespace `default`).
/// A `kubernetes.io/tls` Secret in namespace `default` holding a PEM certificate chain
/// and key (as `stringData`, which the manifests source reads as the API server would).
pub fn tls_secret_yaml(name: &str, crt_pem: &str, key_pem: &str) -> String {
    pem_secret_yaml(name, &[("tls.crt", crt_pem), ("tls.key", key_pem)])
}

/// A `kubernetes.io/tls` Secret in namespace `default` with these PEM entries (`tls.crt`,
/// `tls.key`, `ca.crt`, ...) as `stringData`.
pub fn pem_secret_yaml(name: &str, entries: &[(&str, &str)]) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: default}}\ntype: kubernetes.io/tls\nstringData:\n"
    );
    for (key, pem) in entries {
        let _ = writeln!(y, "  {key}: |");
        for line in pem.lines() {
            let _ = writeln!(y, "    {line}");
        }
    }
    y
}

pub fn endpoint_slice_yaml(
    slice_name: &str,
    service: &str,
    ports: &[SlicePort<'_>],
    endpoints: &[SliceEndpoint],
) -> String {
    let mut y = format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {slice_name}
  namespace: default
  labels:
    kubernetes.io/service-name: {service}
    endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
addressType: IPv4
ports:
"
    );
    for p in ports {
        let _ = writeln!(
            y,
            "  - name: {}\n    protocol: {}\n    port: {}",
            p.name, p.protocol, p.port
        );
    }
    y.push_str("endpoints:\n");
    if endpoints.is_empty() {
        y.truncate(y.len() - 1);
        y.push_str(" []\n");
    }
    for e in endpoints {
        let _ = write!(
            y,
            "  - addresses:
      - {}
    conditions:
      ready: {}
      serving: {}
      terminating: {}
    nodeName: {}
    targetRef:
      kind: Pod
      namespace: default
      name: {}
",
            e.ip, e.ready, e.serving, e.terminating, e.node, e.pod
        );
    }
    y
}

/// The seed application's pods: frontend-0..2 and backend-0..2, alternating over two nodes
/// so that each node has pods of both.
pub fn seed_pods() -> Vec<PodSpec> {
    let frontend = (0..REPLICAS).map(|i| {
        PodSpec::new(&format!("frontend-{i}"), i % 2, FRONTEND_PORT)
            .udp_port(FRONTEND_PORT)
            .backend("http://backend")
    });
    let backend = (0..REPLICAS).map(|i| {
        PodSpec::new(&format!("backend-{i}"), (i + 1) % 2, BACKEND_PORT).udp_port(BACKEND_PORT)
    });
    frontend.chain(backend).collect()
}

const SERVICES: &str =
    "# The seed application's Services, as in a real cluster (see cluster/ for the Deployments).
apiVersion: v1
kind: Service
metadata:
  name: backend
  namespace: default
spec:
  type: ClusterIP
  clusterIP: 10.96.0.10
  clusterIPs:
    - 10.96.0.10
  selector:
    app: backend
  ports:
    - name: http
      protocol: TCP
      port: 80
      targetPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: frontend
  namespace: default
spec:
  type: ClusterIP
  clusterIP: 10.96.0.20
  clusterIPs:
    - 10.96.0.20
  selector:
    app: frontend
  ports:
    - name: http
      protocol: TCP
      port: 80
      targetPort: 3000
---
apiVersion: v1
kind: Service
metadata:
  name: frontend-nodeport
  namespace: default
spec:
  type: NodePort
  clusterIP: 10.96.0.21
  clusterIPs:
    - 10.96.0.21
  selector:
    app: frontend
  ports:
    - name: http
      protocol: TCP
      port: 80
      targetPort: 3000
      nodePort: 30080
---
apiVersion: v1
kind: Service
metadata:
  name: backend-nodeport
  namespace: default
spec:
  type: NodePort
  clusterIP: 10.96.0.11
  clusterIPs:
    - 10.96.0.11
  selector:
    app: backend
  ports:
    - name: http
      protocol: TCP
      port: 80
      targetPort: 8080
      nodePort: 30081
    - name: echo
      protocol: UDP
      port: 80
      targetPort: 8080
      nodePort: 30081
";

/// The Secret the seed Ingress's `spec.tls` names: the sandbox writes it with a
/// certificate it generates (see `Sandbox`); on a real cluster, create it with
/// `kubectl create secret tls seed-app-tls --cert=CRT --key=KEY`.
pub const SEED_TLS_SECRET: &str = "seed-app-tls";

/// The name the seed app's certificate is for (and the Host the tests send).
pub const SEED_TLS_HOST: &str = "shop.example";

const INGRESS: &str =
    "# Ingress for the seed application: /api to the backend, everything else to the frontend,
# over HTTP and HTTPS. The Secret seed-app-tls is not in this directory: the sandbox
# generates it (a self-signed certificate); on a real cluster create it with
# `kubectl create secret tls seed-app-tls --cert=CRT --key=KEY`.
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: lb
  annotations:
    ingressclass.kubernetes.io/is-default-class: \"true\"
spec:
  controller: lb.dev/ingress
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: seed-app
  namespace: default
spec:
  ingressClassName: lb
  tls:
    - secretName: seed-app-tls
  rules:
    - http:
        paths:
          - path: /api
            pathType: Prefix
            backend:
              service:
                name: backend
                port:
                  number: 80
          - path: /
            pathType: Prefix
            backend:
              service:
                name: frontend
                port:
                  number: 80
";

/// The seed application for the two-node sandbox, as (file name, YAML) pairs: exactly the
/// files under examples/seed-app/.
pub fn seed_manifests() -> Vec<(&'static str, String)> {
    let pods = crate::topology::assign(&seed_pods());
    let endpoints = |app: &str| -> Vec<SliceEndpoint> {
        pods.iter()
            .filter(|(p, _)| p.name.starts_with(&format!("{app}-")))
            .map(|(p, ip)| SliceEndpoint::ready(p, *ip))
            .collect()
    };
    let http = |port| SlicePort {
        name: "http",
        protocol: "TCP",
        port,
    };
    let slices = [
        endpoint_slice_yaml(
            "backend-sb001",
            "backend",
            &[http(BACKEND_PORT)],
            &endpoints("backend"),
        ),
        endpoint_slice_yaml(
            "frontend-sb001",
            "frontend",
            &[http(FRONTEND_PORT)],
            &endpoints("frontend"),
        ),
        endpoint_slice_yaml(
            "frontend-nodeport-sb001",
            "frontend-nodeport",
            &[http(FRONTEND_PORT)],
            &endpoints("frontend"),
        ),
        endpoint_slice_yaml(
            "backend-nodeport-sb001",
            "backend-nodeport",
            &[
                http(BACKEND_PORT),
                SlicePort {
                    name: "echo",
                    protocol: "UDP",
                    port: BACKEND_PORT,
                },
            ],
            &endpoints("backend"),
        ),
    ];
    vec![
        (
            "nodes.yaml",
            format!(
                "# The sandbox's nodes (cargo xtask manifests writes this file).\n{}",
                nodes_yaml(2)
            ),
        ),
        ("services.yaml", SERVICES.to_owned()),
        (
            "endpointslices.yaml",
            format!(
                "# EndpointSlices for the sandbox's pods (cargo xtask manifests writes this file).\n{}",
                slices.join("---\n")
            ),
        ),
        ("ingress.yaml", INGRESS.to_owned()),
    ]
}

/// `/etc/hosts` names of the seed app's Services, for pods (`http://backend`).
pub fn seed_hosts() -> Vec<(String, Ipv4Addr)> {
    vec![
        ("backend".into(), BACKEND_CLUSTER_IP),
        ("frontend".into(), FRONTEND_CLUSTER_IP),
    ]
}
