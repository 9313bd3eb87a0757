//! Kubernetes Service behaviour through the real data plane, end to end on the sandbox
//! cluster: lb-agent on both nodes, its programs in the kernel, real TCP and UDP from the
//! client namespace and from pods. Each test is named after the Kubernetes network e2e
//! test (test/e2e/network/service.go) it mirrors. Needs root (fails loudly otherwise).
#![allow(clippy::missing_panics_doc, reason = "tests")]

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use lb_tests::manifests::{
    BACKEND_CLUSTER_IP, BACKEND_NODE_PORT, BACKEND_PORT, SliceEndpoint, SlicePort,
    endpoint_slice_yaml,
};
use lb_tests::topology::CLIENT_IP;
use lb_tests::{Proc, Sandbox};

/// The seed app on two nodes with an agent on each, ready (first sync programmed).
struct Cluster {
    sb: Sandbox,
    _agents: Vec<Proc>,
}

fn cluster() -> Cluster {
    let sb = Sandbox::builder()
        .seed_app()
        .build()
        .expect("build sandbox");
    let agents: Vec<Proc> = (0..sb.nodes().len())
        .map(|i| sb.start_agent(i, &[]).expect("start lb-agent"))
        .collect();
    for a in &agents {
        a.wait_for_log("first sync programmed", Duration::from_secs(30))
            .expect("agent ready");
    }
    Cluster {
        sb,
        _agents: agents,
    }
}

impl Cluster {
    /// Writes an extra Service (and its slice) and waits until the agents have programmed
    /// it: the frontend answers or is rejected, instead of being routed nowhere.
    fn apply(&self, file: &str, yaml: &str) {
        self.sb.write_manifest(file, yaml).expect("write manifest");
        // The manifests source polls every 200 ms; programming takes well under that.
        std::thread::sleep(Duration::from_millis(600));
    }

    fn pod_ns(&self, pod: &str) -> String {
        self.sb.pod(pod).ns.clone()
    }

    /// Pods that answered `n` requests from `ns` to `addr`; every request must succeed.
    fn answering(&self, ns: &str, addr: SocketAddr, n: usize) -> Vec<(String, SocketAddr)> {
        (0..n)
            .map(|i| {
                let r = self
                    .sb
                    .http_get(ns, addr, "/")
                    .unwrap_or_else(|e| panic!("request {i} from {ns} to {addr}: {e:#}"));
                assert_eq!(r.status, 200, "{r:?}");
                (r.pod().expect("pod"), r.client().expect("client"))
            })
            .collect()
    }

    fn distinct(&self, ns: &str, addr: SocketAddr, n: usize) -> BTreeSet<String> {
        self.answering(ns, addr, n)
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    }
}

/// The pod that sent a UDP answer (`<pod> <client address>`, maybe padded).
fn answering_pod(answer: &str) -> String {
    answer
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Requests that show every one of two backends answering: each connection picks by a
/// hash of its 5-tuple, so n requests all land on one of two with chance 2^(1-n); at 24
/// that is 1 in 8 million (at 6 it was 1 in 32, at 12 1 in 2048).
const SPREAD: usize = 24;

fn names(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

fn sock(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

/// A Service named `name` with the given spec lines (indented under `spec:`), port 80 ->
/// 8080 named http, and a slice over the named backend pods.
fn service_yaml(c: &Cluster, name: &str, spec: &str, pods: &[&str], udp: bool) -> String {
    let eps: Vec<SliceEndpoint> = pods
        .iter()
        .map(|p| {
            let pod = c.sb.pod(p);
            SliceEndpoint::ready(&pod.spec, pod.ip)
        })
        .collect();
    let mut ports = vec![SlicePort {
        name: "http",
        protocol: "TCP",
        port: BACKEND_PORT,
    }];
    if udp {
        ports.push(SlicePort {
            name: "echo",
            protocol: "UDP",
            port: BACKEND_PORT,
        });
    }
    let udp_port = if udp {
        "\n    - name: echo\n      protocol: UDP\n      port: 80\n      targetPort: 8080"
    } else {
        ""
    };
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
spec:
{spec}
  ports:
    - name: http
      protocol: TCP
      port: 80
      targetPort: 8080{udp_port}
---
{}",
        endpoint_slice_yaml(&format!("{name}-x1"), name, &ports, &eps)
    )
}

fn backend_vip() -> SocketAddr {
    sock(BACKEND_CLUSTER_IP, 80)
}

#[test]
fn should_serve_a_basic_endpoint_from_pods() {
    let c = cluster();
    for fe in ["frontend-0", "frontend-1", "frontend-2"] {
        let got = c.distinct(&c.pod_ns(fe), backend_vip(), 30);
        assert_eq!(
            got,
            names(&["backend-0", "backend-1", "backend-2"]),
            "from {fe}"
        );
    }
    // The seed app itself: frontend calls http://backend (the ClusterIP) and includes the
    // answer.
    let r =
        c.sb.http_get(c.sb.client_ns(), c.sb.pod("frontend-0").http_addr(), "/")
            .expect("frontend");
    let j = r.json().expect("json");
    assert!(
        j["backend"]["pod"]
            .as_str()
            .is_some_and(|p| p.starts_with("backend-")),
        "{j}"
    );
}

#[test]
fn should_preserve_source_pod_ip_for_traffic_thru_service_cluster_ip() {
    let c = cluster();
    for fe in ["frontend-0", "frontend-1"] {
        let ip = c.sb.pod(fe).ip;
        for (pod, client) in c.answering(&c.pod_ns(fe), backend_vip(), 10) {
            assert_eq!(
                client.ip(),
                IpAddr::from(ip),
                "{pod} saw {client}, not {fe}'s address"
            );
        }
    }
}

#[test]
fn should_be_able_to_create_a_functioning_nodeport_service() {
    let c = cluster();
    let all = names(&["backend-0", "backend-1", "backend-2"]);
    for node in c.sb.nodes() {
        let addr = sock(node.ip, BACKEND_NODE_PORT);
        let answers = c.answering(c.sb.client_ns(), addr, 30);
        let got: BTreeSet<String> = answers.iter().map(|(p, _)| p.clone()).collect();
        assert_eq!(got, all, "TCP NodePort on {}", node.name);
        for (pod, client) in &answers {
            // externalTrafficPolicy Cluster: a pod on the receiving node sees the client;
            // a pod on the other node sees the receiving node's address (SNAT).
            let local = c.sb.pod(pod).spec.node == node.index;
            let want = if local {
                IpAddr::from(CLIENT_IP)
            } else {
                IpAddr::from(node.ip)
            };
            assert_eq!(client.ip(), want, "{pod} via {}", node.name);
        }
        // UDP on the same port number.
        let mut udp_pods = BTreeSet::new();
        for _ in 0..30 {
            let (answer, from) = c.sb.udp(c.sb.client_ns(), addr, b"ping").expect("udp");
            assert_eq!(from, addr, "the reply comes from the NodePort address");
            udp_pods.insert(answering_pod(&answer));
        }
        assert!(
            udp_pods.is_subset(&all) && !udp_pods.is_empty(),
            "UDP answers {udp_pods:?}"
        );
    }
}

#[test]
fn should_be_rejected_when_no_endpoints_exist() {
    let c = cluster();
    let yaml = service_yaml(
        &c,
        "empty",
        "  type: NodePort\n  clusterIP: 10.96.5.5\n  clusterIPs: [10.96.5.5]",
        &[],
        true,
    )
    .replace(
        "targetPort: 8080\n",
        "targetPort: 8080\n      nodePort: 30555\n",
    );
    c.apply("empty.yaml", &yaml);
    let targets = [
        (
            c.pod_ns("frontend-0"),
            sock(Ipv4Addr::new(10, 96, 5, 5), 80),
        ),
        (c.sb.client_ns().to_owned(), sock(c.sb.node(0).ip, 30555)),
    ];
    for (ns, addr) in &targets {
        let started = Instant::now();
        let err =
            c.sb.in_ns(ns, || {
                TcpStream::connect_timeout(addr, Duration::from_secs(5))
            })
            .expect("netns")
            .expect_err("connect must fail");
        assert_eq!(
            err.kind(),
            ErrorKind::ConnectionRefused,
            "TCP to {addr} from {ns}: {err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "refused at once, not a timeout"
        );
        // UDP: ICMP port unreachable turns into ECONNREFUSED on a connected socket.
        let udp =
            c.sb.in_ns(ns, || -> std::io::Result<ErrorKind> {
                let s = UdpSocket::bind("0.0.0.0:0")?;
                s.connect(addr)?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.send(b"x")?;
                let mut buf = [0_u8; 64];
                Ok(s.recv(&mut buf)
                    .map_or_else(|e| e.kind(), |_| ErrorKind::Other))
            })
            .expect("netns")
            .expect("udp socket");
        assert_eq!(udp, ErrorKind::ConnectionRefused, "UDP to {addr} from {ns}");
    }
}

#[test]
fn should_have_session_affinity_work_for_service_with_type_clusterip() {
    let c = cluster();
    let spec = "  clusterIP: 10.96.6.6\n  clusterIPs: [10.96.6.6]\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 2}}";
    c.apply(
        "aff.yaml",
        &service_yaml(
            &c,
            "aff",
            spec,
            &["backend-0", "backend-1", "backend-2"],
            false,
        ),
    );
    let addr = sock(Ipv4Addr::new(10, 96, 6, 6), 80);
    let ns = c.pod_ns("frontend-1");
    let got = c.distinct(&ns, addr, 15);
    assert_eq!(got.len(), 1, "15 requests, one backend: {got:?}");
    // After the timeout the client is balanced again (kube-proxy: a new random pick).
    let mut seen = got.clone();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(2300));
        seen.extend(c.distinct(&ns, addr, 1));
        if seen.len() > 1 {
            break;
        }
    }
    assert!(seen.len() > 1, "affinity never expired: {seen:?}");
}

#[test]
fn should_be_able_to_switch_session_affinity_for_service() {
    let c = cluster();
    let pods = ["backend-0", "backend-1", "backend-2"];
    let on = "  clusterIP: 10.96.6.7\n  clusterIPs: [10.96.6.7]\n  sessionAffinity: ClientIP";
    let off = "  clusterIP: 10.96.6.7\n  clusterIPs: [10.96.6.7]\n  sessionAffinity: None";
    let addr = sock(Ipv4Addr::new(10, 96, 6, 7), 80);
    let ns = c.pod_ns("frontend-0");
    c.apply("sw.yaml", &service_yaml(&c, "sw", off, &pods, false));
    assert!(c.distinct(&ns, addr, 30).len() > 1, "no affinity: spread");
    c.apply("sw.yaml", &service_yaml(&c, "sw", on, &pods, false));
    assert_eq!(c.distinct(&ns, addr, 15).len(), 1, "affinity on");
    c.apply("sw.yaml", &service_yaml(&c, "sw", off, &pods, false));
    assert!(c.distinct(&ns, addr, 30).len() > 1, "affinity off again");
}

#[test]
fn should_work_for_type_loadbalancer_with_external_traffic_policy_local() {
    let c = cluster();
    // Only backend-1 (on node-0) backs it.
    let local_pod = "backend-1";
    assert_eq!(c.sb.pod(local_pod).spec.node, 0);
    let spec = "  type: LoadBalancer\n  clusterIP: 10.96.7.7\n  clusterIPs: [10.96.7.7]\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32090";
    let yaml = service_yaml(&c, "etpl", spec, &[local_pod], false).replace(
        "targetPort: 8080",
        "targetPort: 8080\n      nodePort: 30090",
    );
    c.apply("etpl.yaml", &yaml);
    // The client address is kept.
    for (pod, client) in c.answering(c.sb.client_ns(), sock(c.sb.node(0).ip, 30090), 10) {
        assert_eq!(pod, local_pod);
        assert_eq!(client.ip(), IpAddr::from(CLIENT_IP), "client address kept");
    }
    // node-1 has no local endpoint while the Service has one elsewhere: the SYN is dropped
    // there, not answered with an RST (kube-proxy's "has no local endpoints" DROP), so
    // the load balancer's health check below is what moves clients.
    let err =
        c.sb.in_ns(c.sb.client_ns(), || {
            TcpStream::connect_timeout(&sock(c.sb.node(1).ip, 30090), Duration::from_millis(1500))
        })
        .expect("netns")
        .expect_err("no local endpoint on node-1");
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    // healthCheckNodePort: 200 where there is a local endpoint, 503 where there is none.
    let h0 =
        c.sb.http_get(c.sb.client_ns(), sock(c.sb.node(0).ip, 32090), "/")
            .expect("hc0");
    assert_eq!(h0.status, 200, "{h0:?}");
    assert_eq!(h0.json().expect("json")["localEndpoints"], 1);
    let h1 =
        c.sb.http_get(c.sb.client_ns(), sock(c.sb.node(1).ip, 32090), "/")
            .expect("hc1");
    assert_eq!(h1.status, 503, "{h1:?}");
}

#[test]
fn should_respect_internal_traffic_policy_local() {
    let c = cluster();
    let spec = "  clusterIP: 10.96.8.8\n  clusterIPs: [10.96.8.8]\n  internalTrafficPolicy: Local";
    c.apply(
        "itp.yaml",
        &service_yaml(
            &c,
            "itp",
            spec,
            &["backend-0", "backend-1", "backend-2"],
            false,
        ),
    );
    let addr = sock(Ipv4Addr::new(10, 96, 8, 8), 80);
    for fe in ["frontend-0", "frontend-1"] {
        let node = c.sb.pod(fe).spec.node;
        let want: BTreeSet<String> =
            c.sb.pods_of("backend")
                .iter()
                .filter(|p| p.spec.node == node)
                .map(|p| p.name.clone())
                .collect();
        assert_eq!(
            c.distinct(&c.pod_ns(fe), addr, 20),
            want,
            "from {fe} on node-{node}"
        );
    }
}

#[test]
fn should_fallback_to_terminating_endpoints_when_there_are_no_ready_endpoints() {
    let c = cluster();
    let pods = ["backend-0", "backend-1"];
    let spec = "  clusterIP: 10.96.9.9\n  clusterIPs: [10.96.9.9]";
    let terminating = service_yaml(&c, "term", spec, &pods, false)
        .replace("ready: true", "ready: false")
        .replace("terminating: false", "terminating: true");
    c.apply("term.yaml", &terminating);
    let addr = sock(Ipv4Addr::new(10, 96, 9, 9), 80);
    let ns = c.pod_ns("frontend-0");
    assert_eq!(
        c.distinct(&ns, addr, 20),
        names(&pods),
        "serving terminating endpoints take traffic"
    );
    // One ready endpoint appears: terminating ones get no new connections.
    let mixed = terminating
        .replacen("ready: false", "ready: true", 1)
        .replacen("terminating: true", "terminating: false", 1);
    c.apply("term.yaml", &mixed);
    assert_eq!(c.distinct(&ns, addr, 20), names(&["backend-0"]));
}

#[test]
fn should_allow_pods_to_hairpin_back_to_themselves_through_services() {
    let c = cluster();
    let spec = "  clusterIP: 10.96.10.10\n  clusterIPs: [10.96.10.10]";
    c.apply(
        "hairpin.yaml",
        &service_yaml(&c, "hairpin", spec, &["backend-0"], false),
    );
    let ns = c.pod_ns("backend-0");
    let got = c.distinct(&ns, sock(Ipv4Addr::new(10, 96, 10, 10), 80), 5);
    assert_eq!(got, names(&["backend-0"]));
}

#[test]
fn should_keep_an_established_connection_on_its_backend_when_backends_change() {
    let c = cluster();
    let spec = "  clusterIP: 10.96.11.11\n  clusterIPs: [10.96.11.11]";
    let all = ["backend-0", "backend-1", "backend-2"];
    c.apply("est.yaml", &service_yaml(&c, "est", spec, &all, false));
    let addr = sock(Ipv4Addr::new(10, 96, 11, 11), 80);
    let ns = c.pod_ns("frontend-0");
    let mut conn =
        c.sb.in_ns(&ns, || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        })
        .expect("netns")
        .expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let first = keepalive_get(&mut conn);
    // Remove every other backend, then add them back: the connection stays where it is.
    let others: Vec<&str> = all.iter().copied().filter(|p| *p != first).collect();
    c.apply(
        "est.yaml",
        &service_yaml(&c, "est", spec, &[first.as_str()], false),
    );
    assert_eq!(keepalive_get(&mut conn), first);
    let mut swapped: Vec<&str> = others.clone();
    swapped.push(first.as_str());
    c.apply("est.yaml", &service_yaml(&c, "est", spec, &swapped, false));
    for _ in 0..5 {
        assert_eq!(
            keepalive_get(&mut conn),
            first,
            "the established connection moved"
        );
    }
    // Its own endpoint removed (the pod still runs): as with kube-proxy, whose conntrack
    // entry keeps the DNAT, the connection goes on with that pod; new ones never do.
    c.apply("est.yaml", &service_yaml(&c, "est", spec, &others, false));
    for _ in 0..5 {
        assert_eq!(
            keepalive_get(&mut conn),
            first,
            "a connection on a removed endpoint was moved or reset"
        );
    }
}

/// One GET on a kept-alive connection; returns the pod that answered.
fn keepalive_get(conn: &mut TcpStream) -> String {
    conn.write_all(b"GET / HTTP/1.1\r\nHost: est\r\nConnection: keep-alive\r\n\r\n")
        .expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0_u8; 4096];
    loop {
        let n = conn.read(&mut chunk).expect("read");
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(head_end) = text.find("\r\n\r\n") {
            let len: usize = text[..head_end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if buf.len() >= head_end + 4 + len {
                let body = &text[head_end + 4..head_end + 4 + len];
                let j: serde_json::Value = serde_json::from_str(body).expect("json");
                return j["pod"].as_str().expect("pod").to_owned();
            }
        }
    }
}

#[test]
fn should_not_send_requests_to_a_removed_endpoint_after_the_update_is_applied() {
    let c = cluster();
    let spec = "  clusterIP: 10.96.12.12\n  clusterIPs: [10.96.12.12]";
    c.apply(
        "upd.yaml",
        &service_yaml(
            &c,
            "upd",
            spec,
            &["backend-0", "backend-1", "backend-2"],
            false,
        ),
    );
    let addr = sock(Ipv4Addr::new(10, 96, 12, 12), 80);
    let ns = c.pod_ns("frontend-2");
    // Traffic flows while the endpoint set changes: no request fails.
    let sb = &c.sb;
    std::thread::scope(|s| {
        let load = s.spawn(|| {
            let mut failures = Vec::new();
            for i in 0..150 {
                match sb.http_get(&ns, addr, "/") {
                    Ok(r) if r.status == 200 => {}
                    Ok(r) => failures.push(format!("request {i}: status {}", r.status)),
                    Err(e) => failures.push(format!("request {i}: {e:#}")),
                }
            }
            failures
        });
        c.apply(
            "upd.yaml",
            &service_yaml(&c, "upd", spec, &["backend-0", "backend-1"], false),
        );
        let failures = load.join().expect("load thread");
        assert!(
            failures.is_empty(),
            "requests failed during the update: {failures:?}"
        );
    });
    // Once applied, the removed endpoint gets nothing.
    let got = c.distinct(&ns, addr, 40);
    assert_eq!(got, names(&["backend-0", "backend-1"]));
}

#[test]
fn udp_should_keep_working_when_the_server_endpoints_cycle() {
    let c = cluster();
    let spec = "  clusterIP: 10.96.13.13\n  clusterIPs: [10.96.13.13]";
    let addr = sock(Ipv4Addr::new(10, 96, 13, 13), 80);
    let ns = c.pod_ns("frontend-0");
    for round in 0..3 {
        let pod = ["backend-0", "backend-1", "backend-2"][round];
        c.apply("udp.yaml", &service_yaml(&c, "udp", spec, &[pod], true));
        // The same client socket keeps talking to the service while the endpoint changes.
        let answer =
            c.sb.in_ns(&ns, || -> std::io::Result<String> {
                let s = UdpSocket::bind("0.0.0.0:40000")?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.send_to(b"hello", addr)?;
                let mut buf = [0_u8; 256];
                let (n, from) = s.recv_from(&mut buf)?;
                assert_eq!(from, addr, "reply from the service address");
                Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
            })
            .expect("netns")
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(
            answer.starts_with(pod),
            "round {round}: {answer} (want {pod})"
        );
    }
}

/// Mirrors "should implement service.kubernetes.io/service-proxy-name" and "should
/// implement service.kubernetes.io/headless": a Service carrying either label is left to
/// someone else (nothing answers at its ClusterIP) while an unlabelled one next to it
/// works; once the label is removed it is served.
#[test]
fn should_implement_service_proxy_name_and_headless_labels() {
    let c = cluster();
    let pods = ["backend-0", "backend-1"];
    let ns = c.pod_ns("frontend-0");
    let plain_addr = sock(Ipv4Addr::new(10, 96, 13, 1), 80);
    c.apply(
        "plain.yaml",
        &service_yaml(
            &c,
            "plain",
            "  clusterIP: 10.96.13.1\n  clusterIPs: [10.96.13.1]",
            &pods,
            false,
        ),
    );
    for (i, label) in [
        "service.kubernetes.io/service-proxy-name: foo-bar",
        "service.kubernetes.io/headless: \"\"",
    ]
    .into_iter()
    .enumerate()
    {
        let ip = Ipv4Addr::new(10, 96, 13, 10 + i as u8);
        let name = format!("labelled-{i}");
        let spec = format!("  clusterIP: {ip}\n  clusterIPs: [{ip}]");
        let unlabelled = service_yaml(&c, &name, &spec, &pods, false);
        let labelled = unlabelled.replacen(
            "  namespace: default\n",
            &format!("  namespace: default\n  labels:\n    {label}\n"),
            1,
        );
        assert_ne!(labelled, unlabelled);
        let file = format!("{name}.yaml");
        c.apply(&file, &labelled);
        let addr = sock(ip, 80);
        let got =
            c.sb.in_ns(&ns, || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(1500))
            })
            .expect("netns");
        assert!(got.is_err(), "{label}: the Service answered: {got:?}");
        assert_eq!(c.distinct(&ns, plain_addr, SPREAD), names(&pods), "{label}");
        c.apply(&file, &unlabelled);
        assert_eq!(
            c.distinct(&ns, addr, SPREAD),
            names(&pods),
            "{label} removed"
        );
    }
}

/// Mirrors "should only allow access from service loadbalancer source ranges": the
/// LoadBalancer address answers only clients inside `loadBalancerSourceRanges` (from
/// outside and from pods alike), and everyone again once the ranges are removed. The
/// client reaches the LB address through node-0, as a router announcing it would send it.
#[test]
fn should_only_allow_access_from_service_loadbalancer_source_ranges() {
    let c = cluster();
    let lb_ip = Ipv4Addr::new(10, 0, 113, 1);
    lb_tests::netns::run(std::process::Command::new("ip").args([
        "-n",
        c.sb.client_ns(),
        "route",
        "replace",
        &format!("{lb_ip}/32"),
        "via",
        &c.sb.node(0).ip.to_string(),
    ]))
    .expect("route to the LB address");
    let yaml = |ranges: &str| {
        let spec = format!(
            "  type: LoadBalancer\n  clusterIP: 10.96.14.1\n  clusterIPs: [10.96.14.1]{ranges}"
        );
        service_yaml(&c, "lbsr", &spec, &["backend-0", "backend-1"], false).replacen(
            "\n---",
            &format!("\nstatus:\n  loadBalancer:\n    ingress: [{{ip: {lb_ip}}}]\n---"),
            1,
        )
    };
    let addr = sock(lb_ip, 80);
    let client = c.sb.client_ns().to_owned();
    let pod = c.pod_ns("frontend-0");
    let refused = |ns: &str| {
        c.sb.in_ns(ns, || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(1500))
        })
        .expect("netns")
        .is_err()
    };
    c.apply(
        "lbsr.yaml",
        &yaml(&format!(
            "\n  loadBalancerSourceRanges: [\"{CLIENT_IP}/32\"]"
        )),
    );
    assert_eq!(
        c.distinct(&client, addr, SPREAD).len(),
        2,
        "client inside the range"
    );
    assert!(
        refused(&pod),
        "a pod outside the range reached the LB address"
    );
    c.apply(
        "lbsr.yaml",
        &yaml("\n  loadBalancerSourceRanges: [\"10.255.0.0/16\"]"),
    );
    assert!(refused(&client), "the client outside the range reached it");
    c.apply("lbsr.yaml", &yaml(""));
    assert_eq!(
        c.distinct(&client, addr, SPREAD).len(),
        2,
        "no ranges: open"
    );
    assert_eq!(
        c.distinct(&pod, addr, SPREAD).len(),
        2,
        "no ranges: open to pods"
    );
}

/// UDP datagrams larger than the MTU (a large DNS answer, say) through a ClusterIP and a
/// NodePort: the sender's kernel fragments them and every fragment, not only the first,
/// must be translated both ways, or reassembly fails and nothing is answered.
#[test]
fn udp_datagrams_larger_than_the_mtu_go_through_services_both_ways() {
    let c = cluster();
    let pods = ["backend-0", "backend-1", "backend-2"];
    let yaml = service_yaml(
        &c,
        "bigudp",
        "  type: NodePort\n  clusterIP: 10.96.15.1\n  clusterIPs: [10.96.15.1]",
        &pods,
        true,
    )
    .replace(
        "      protocol: UDP\n      port: 80\n      targetPort: 8080",
        "      protocol: UDP\n      port: 80\n      targetPort: 8080\n      nodePort: 30515",
    );
    c.apply("bigudp.yaml", &yaml);
    let payload = vec![b'x'; 4000];
    let targets = [
        (
            c.pod_ns("frontend-0"),
            sock(Ipv4Addr::new(10, 96, 15, 1), 80),
        ),
        (c.sb.client_ns().to_owned(), sock(c.sb.node(1).ip, 30515)),
    ];
    for (ns, addr) in &targets {
        let mut seen = BTreeSet::new();
        for i in 0..12 {
            let (answer, from) =
                c.sb.udp(ns, *addr, &payload)
                    .unwrap_or_else(|e| panic!("datagram {i} from {ns} to {addr}: {e:#}"));
            assert_eq!(from, *addr, "the answer comes from the service address");
            assert_eq!(answer.len(), payload.len(), "the whole answer came back");
            seen.insert(answering_pod(&answer));
        }
        assert!(
            seen.len() > 1 && seen.is_subset(&names(&pods)),
            "{ns}: {seen:?}"
        );
    }
}
