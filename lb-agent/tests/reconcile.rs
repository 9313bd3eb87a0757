//! Reconciliation against the in-memory maps: the agent's behaviour from events to map
#![allow(
    clippy::trivially_copy_pass_by_ref,
    clippy::format_collect,
    reason = "test helpers favour readability"
)]
//! contents, without root. Every test also replays the applied operations one by one and
//! checks that no intermediate state has a service pointing at a missing backend.
use std::net::Ipv4Addr;

use lb_agent::maps::MapWriter as _;
use lb_agent::maps::memory::MemoryMaps;
use lb_agent::model::ModelOptions;
use lb_agent::plan::{Limits, MapOp};
use lb_agent::reconcile::Reconciler;
use lb_common::{SCOPE_EXTERNAL, SCOPE_INTERNAL, ServiceKey};
use lb_k8s::{Event, Kind, Object, ObjectRef};

const M: u32 = 31;
const LIMITS: Limits = Limits {
    max_services: 64,
    max_backends: 64,
    maglev_size: M,
};

fn objects(yaml: &str) -> Vec<(Object, Option<String>)> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| {
            let v: serde_json::Value = serde::Deserialize::deserialize(d).unwrap();
            (
                Object::from_value(v).unwrap().unwrap(),
                Some("test.yaml".to_owned()),
            )
        })
        .collect()
}

fn resync(yaml: &str) -> Event {
    Event::Resync {
        kinds: vec![Kind::Service, Kind::EndpointSlice, Kind::Node],
        objects: objects(yaml),
        errors: vec![],
    }
}

fn key(ip: [u8; 4], port: u16, scope: u8) -> ServiceKey {
    ServiceKey {
        addr_be: u32::from(Ipv4Addr::from(ip)).to_be(),
        port_be: port.to_be(),
        proto: lb_common::PROTO_TCP,
        scope,
    }
}

fn backends_of(maps: &MemoryMaps, k: &ServiceKey) -> Option<Vec<String>> {
    maps.resolve(k, M).map(|v| {
        let mut s: Vec<String> = v
            .iter()
            .map(|b| {
                format!(
                    "{}:{}",
                    Ipv4Addr::from(u32::from_be(b.addr_be)),
                    u16::from_be(b.port_be)
                )
            })
            .collect();
        s.sort();
        s
    })
}

/// Replays `log` op by op and checks the invariant a packet relies on.
fn assert_safe_order(log: &[MapOp]) {
    let mut m = MemoryMaps::new(usize::MAX, usize::MAX);
    for (i, op) in log.iter().enumerate() {
        m.apply(op).unwrap();
        for (k, v) in &m.services {
            if v.backend_count == 0 {
                continue;
            }
            for s in 0..M {
                let id = m.maglev.get(&(v.lut_id, s)).copied().unwrap_or(0);
                assert!(
                    m.backends.contains_key(&id),
                    "after op {i} ({op:?}) service {k:?} slot {s} points at missing backend {id}"
                );
            }
        }
    }
}

const NODE: &str = r"
apiVersion: v1
kind: Node
metadata: {name: node-0, labels: {topology.kubernetes.io/zone: a}}
status: {addresses: [{type: InternalIP, address: 10.0.0.10}, {type: Hostname, address: node-0}]}
";

fn seed(backend_ips: &[&str]) -> String {
    let eps: String = backend_ips
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            format!(
                "- {{addresses: [\"{ip}\"], nodeName: node-{}, conditions: {{ready: true}}}}\n",
                i % 2
            )
        })
        .collect();
    format!(
        r"{NODE}
---
apiVersion: v1
kind: Service
metadata: {{name: backend, namespace: default}}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  ports: [{{name: http, port: 80, targetPort: 8080, nodePort: 30081}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: backend-1, namespace: default, labels: {{kubernetes.io/service-name: backend}}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
{eps}"
    )
}

fn agent() -> Reconciler<MemoryMaps> {
    Reconciler::new(
        "node-0",
        ModelOptions::default(),
        LIMITS,
        MemoryMaps::new(64, 64),
    )
    .unwrap()
}

#[test]
fn full_sync_programs_cluster_ip_and_node_port() {
    let mut a = agent();
    let out = a.handle(resync(&seed(&[
        "10.244.0.10",
        "10.244.1.10",
        "10.244.0.11",
    ])));
    assert!(out.first_sync && a.is_synced());
    assert!(out.problems.is_empty(), "{:?}", out.problems);
    let maps = a.writer();
    let all = ["10.244.0.10:8080", "10.244.0.11:8080", "10.244.1.10:8080"];
    assert_eq!(
        backends_of(maps, &key([10, 96, 0, 10], 80, SCOPE_INTERNAL)).unwrap(),
        all
    );
    assert_eq!(
        backends_of(maps, &key([10, 0, 0, 10], 30081, SCOPE_EXTERNAL)).unwrap(),
        all
    );
    assert_eq!(
        backends_of(maps, &key([10, 0, 0, 10], 30081, SCOPE_INTERNAL)).unwrap(),
        all
    );
    assert_eq!(maps.services.len(), 3);
    assert_eq!(
        maps.config.node_addr_be,
        u32::from(Ipv4Addr::new(10, 0, 0, 10)).to_be()
    );
    assert_safe_order(&maps.log);
}

#[test]
fn endpoint_changes_follow_with_work_proportional_to_the_change() {
    let mut a = agent();
    a.handle(resync(&seed(&[
        "10.244.0.10",
        "10.244.1.10",
        "10.244.0.11",
    ])));
    let before = a.writer().log.len();
    let out = a.handle(resync(&seed(&["10.244.0.10", "10.244.1.10"])));
    assert_eq!(out.services_recomputed, 1);
    let k = key([10, 96, 0, 10], 80, SCOPE_INTERNAL);
    assert_eq!(
        backends_of(a.writer(), &k).unwrap(),
        ["10.244.0.10:8080", "10.244.1.10:8080"]
    );
    assert!(
        !a.writer()
            .backends
            .values()
            .any(|b| b.addr_be == u32::from(Ipv4Addr::new(10, 244, 0, 11)).to_be()),
        "the removed endpoint's backend entry is deleted"
    );
    let ops = &a.writer().log[before..];
    assert!(
        matches!(ops.last(), Some(MapOp::DelBackend { .. })),
        "{ops:?}"
    );
    // Scale to zero: entries stay, with no backends (reject), until endpoints return.
    a.handle(resync(&seed(&[])));
    assert_eq!(backends_of(a.writer(), &k).unwrap(), Vec::<String>::new());
    a.handle(resync(&seed(&["10.244.1.12"])));
    assert_eq!(backends_of(a.writer(), &k).unwrap(), ["10.244.1.12:8080"]);
    assert_safe_order(&a.writer().log);
}

#[test]
fn bad_objects_are_named_and_skipped_while_good_ones_apply() {
    let mut a = agent();
    let bad = format!(
        "{}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: broken, namespace: shop}}\nspec: {{clusterIP: 10.96.0.999, ports: [{{port: 80}}]}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: bigport, namespace: shop}}\nspec: {{clusterIP: 10.96.0.12, ports: [{{port: 70000}}]}}\n",
        seed(&["10.244.0.10"])
    );
    let out = a.handle(resync(&bad));
    let named: Vec<&str> = out.problems.iter().map(|(_, at, _)| at.as_str()).collect();
    assert!(named.contains(&"Service shop/broken"), "{:?}", out.problems);
    assert!(
        named.contains(&"Service shop/bigport"),
        "{:?}",
        out.problems
    );
    assert!(
        out.problems
            .iter()
            .any(|(_, _, r)| r.contains("10.96.0.999"))
    );
    assert!(backends_of(a.writer(), &key([10, 96, 0, 10], 80, SCOPE_INTERNAL)).is_some());
    // Reported once: the same state again reports nothing new.
    let out = a.handle(resync(&bad));
    assert!(out.problems.is_empty());
}

#[test]
fn a_restarted_agent_rewrites_nothing_and_prunes_only_after_sync() {
    let mut a = agent();
    a.handle(resync(&seed(&["10.244.0.10", "10.244.1.10"])));
    let maps = a.writer().clone();
    let mut maps2 = maps.clone();
    maps2.log.clear();
    let mut b = Reconciler::new("node-0", ModelOptions::default(), LIMITS, maps2).unwrap();
    // A partial listing (API server: Services listed, slices not yet) changes nothing.
    b.handle(Event::Resync {
        kinds: vec![Kind::Service],
        objects: vec![],
        errors: vec![],
    });
    assert!(
        b.writer().log.is_empty(),
        "nothing may be pruned before the first full sync"
    );
    b.handle(resync(&seed(&["10.244.0.10", "10.244.1.10"])));
    assert!(
        b.writer().log.is_empty(),
        "restart must not rewrite: {:?}",
        b.writer().log
    );
    assert_eq!(b.writer().services, maps.services);
}

#[test]
fn deleting_a_service_removes_its_entries_and_backends() {
    let mut a = agent();
    a.handle(resync(&seed(&["10.244.0.10"])));
    a.handle(Event::Delete(ObjectRef::new(
        Kind::Service,
        "default",
        "backend",
    )));
    assert!(a.writer().services.is_empty());
    assert!(a.writer().backends.is_empty());
    assert_safe_order(&a.writer().log);
}

#[test]
fn node_address_change_moves_node_ports() {
    let mut a = agent();
    a.handle(resync(&seed(&["10.244.0.10"])));
    let moved = seed(&["10.244.0.10"]).replace("address: 10.0.0.10", "address: 10.0.0.20");
    a.handle(resync(&moved));
    assert!(backends_of(a.writer(), &key([10, 0, 0, 10], 30081, SCOPE_EXTERNAL)).is_none());
    assert!(backends_of(a.writer(), &key([10, 0, 0, 20], 30081, SCOPE_EXTERNAL)).is_some());
    assert_safe_order(&a.writer().log);
}

#[test]
fn a_full_service_map_is_reported_and_the_rest_is_served() {
    let mut a = Reconciler::new(
        "node-0",
        ModelOptions::default(),
        Limits {
            max_services: 2,
            ..LIMITS
        },
        MemoryMaps::new(2, 64),
    )
    .unwrap();
    let out = a.handle(resync(&seed(&["10.244.0.10"])));
    assert!(!out.map_full.is_empty());
    assert_eq!(a.writer().services.len(), 2);
    assert!(
        out.problems
            .iter()
            .any(|(_, _, r)| r.contains("--max-services"))
    );
}

#[test]
fn a_slice_for_an_unknown_service_is_reported() {
    let mut a = agent();
    let text = seed(&["10.244.0.10"]).replace(
        "kubernetes.io/service-name: backend",
        "kubernetes.io/service-name: nosuch",
    );
    let out = a.handle(resync(&text));
    assert!(
        out.problems
            .iter()
            .any(|(k, at, r)| *k == Kind::EndpointSlice
                && at == "EndpointSlice default/backend-1"
                && r.contains("Service default/nosuch does not exist")),
        "{:?}",
        out.problems
    );
}

#[test]
fn removing_an_endpoint_from_one_service_deletes_its_entry_even_if_another_service_uses_the_pod() {
    let mut a = agent();
    let other = "\n---\napiVersion: v1\nkind: Service\nmetadata: {name: other, namespace: default}\nspec: {clusterIP: 10.96.0.11, ports: [{name: http, port: 80}]}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: other-1, namespace: default, labels: {kubernetes.io/service-name: other}}\naddressType: IPv4\nports: [{name: http, port: 8080, protocol: TCP}]\nendpoints:\n- {addresses: [\"10.244.0.10\"], nodeName: node-0}\n";
    a.handle(resync(&(seed(&["10.244.0.10", "10.244.1.10"]) + other)));
    let before: Vec<u32> = a.writer().backends.keys().copied().collect();
    a.handle(resync(&(seed(&["10.244.1.10"]) + other)));
    let deleted: Vec<u32> = before
        .iter()
        .filter(|id| !a.writer().backends.contains_key(id))
        .copied()
        .collect();
    // backend's ClusterIP and its two NodePort frontends each drop their entry for the pod.
    assert_eq!(deleted.len(), 3, "{:?}", a.writer().log);
    assert_eq!(
        backends_of(a.writer(), &key([10, 96, 0, 11], 80, SCOPE_INTERNAL)).unwrap(),
        ["10.244.0.10:8080"]
    );
}

#[test]
fn terminating_endpoints_keep_their_entries_but_leave_the_table() {
    let mut a = agent();
    let text = seed(&["10.244.0.10", "10.244.1.10"]);
    a.handle(resync(&text));
    let draining = text.replacen(
        "conditions: {ready: true}",
        "conditions: {ready: false, serving: true, terminating: true}",
        1,
    );
    a.handle(resync(&draining));
    let k = key([10, 96, 0, 10], 80, SCOPE_INTERNAL);
    assert_eq!(backends_of(a.writer(), &k).unwrap(), ["10.244.1.10:8080"]);
    let pod = u32::from(Ipv4Addr::new(10, 244, 0, 10)).to_be();
    assert!(
        a.writer().backends.values().any(|b| b.addr_be == pod),
        "the draining endpoint's entry stays for its open connections"
    );
    assert_safe_order(&a.writer().log);
}
