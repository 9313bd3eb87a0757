//! The agent's control path end to end without a cluster or root: a KubeSource (kube-rs
//! watchers) against the fake API server feeds `Reconciler<MemoryMaps>` the way `run.rs`
//! does, and the in-memory maps must follow what happens on the server.
use std::net::Ipv4Addr;
use std::time::Duration;

use fakeapi::FakeApi;
use lb_agent::maps::memory::MemoryMaps;
use lb_agent::model::ModelOptions;
use lb_agent::plan::Limits;
use lb_agent::reconcile::{KINDS, Reconciler};
use lb_common::{SCOPE_INTERNAL, ServiceKey};
use lb_k8s::kube_source::KubeSource;
use lb_k8s::{Event, Kind, KindSet, Source as _};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::timeout;

const M: u32 = 31;
const LIMITS: Limits = Limits {
    max_services: 64,
    max_backends: 64,
    maglev_size: M,
};
/// Every wait in these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(20);

fn node() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-0"},
        "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.10"}]},
    })
}

fn svc(name: &str, cluster_ip: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
            "ports": [{"name": "http", "protocol": "TCP", "port": port, "targetPort": 8080}],
        },
    })
}

fn slice(name: &str, service: &str, ips: &[&str]) -> Value {
    let endpoints: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "nodeName": "node-0", "conditions": {"ready": true}}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

fn cluster_ip_key(ip: [u8; 4], port: u16) -> ServiceKey {
    ServiceKey {
        addr_be: u32::from(Ipv4Addr::from(ip)).to_be(),
        port_be: port.to_be(),
        proto: lb_common::PROTO_TCP,
        scope: SCOPE_INTERNAL,
    }
}

/// The backends a packet to `key` would reach, as "ip:port", sorted; `None` when the
/// frontend is not in the maps.
fn backends(maps: &MemoryMaps, key: ServiceKey) -> Option<Vec<String>> {
    maps.resolve(&key, M).map(|v| {
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

fn agent(maps: MemoryMaps) -> Reconciler<MemoryMaps> {
    Reconciler::new("node-0", ModelOptions::default(), LIMITS, maps).unwrap()
}

/// The agent's loop (as in run.rs) over a KubeSource against a fake API server.
struct Agent {
    api: FakeApi,
    _dir: tempfile::TempDir,
    rx: mpsc::Receiver<Event>,
    reconciler: Reconciler<MemoryMaps>,
    /// Kinds whose Resync has been handled, in order.
    resynced: Vec<Kind>,
    /// Objects applied or deleted by watch events handled, in order.
    watched: Vec<String>,
}

impl Agent {
    fn start(api: FakeApi, maps: MemoryMaps) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        // As the daemon does (run.rs): only its own Node, no headless Services' slices.
        let source = Box::new(KubeSource::for_node(
            Some(api.kubeconfig_file(dir.path())),
            "node-0".into(),
        ));
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(source.run(KindSet::of(&KINDS), tx));
        Agent {
            api,
            _dir: dir,
            rx,
            reconciler: agent(maps),
            resynced: Vec::new(),
            watched: Vec::new(),
        }
    }

    fn maps(&self) -> &MemoryMaps {
        self.reconciler.writer()
    }

    /// Handles events until `done` holds; `each` checks an invariant after every event.
    async fn until_checked(
        &mut self,
        what: &str,
        done: impl Fn(&Agent) -> bool,
        each: impl Fn(&Agent),
    ) {
        let wait = async {
            while !done(self) {
                let event = self
                    .rx
                    .recv()
                    .await
                    .unwrap_or_else(|| panic!("the source ended while waiting for {what}"));
                match &event {
                    Event::Resync { kinds, .. } => self.resynced.extend(kinds.iter().copied()),
                    Event::Apply(o) => self.watched.push(o.object_ref().to_string()),
                    Event::Delete(r) => self.watched.push(r.to_string()),
                }
                self.reconciler.handle(event);
                each(self);
            }
        };
        assert!(
            timeout(WAIT, wait).await.is_ok(),
            "timed out waiting for {what}; resynced {:?}; requests: {:#?}",
            self.resynced,
            self.api.requests()
        );
    }

    async fn until(&mut self, what: &str, done: impl Fn(&Agent) -> bool) {
        self.until_checked(what, done, |_| {}).await;
    }

    async fn until_api(&self, what: &str, done: impl Fn(&FakeApi) -> bool) {
        let wait = async {
            while !done(&self.api) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        assert!(
            timeout(WAIT, wait).await.is_ok(),
            "timed out waiting for {what}"
        );
    }
}

const BACKEND: [u8; 4] = [10, 96, 0, 10];
const FRONTEND: [u8; 4] = [10, 96, 0, 20];

async fn seeded_api() -> FakeApi {
    let api = FakeApi::start().await;
    api.apply(node()).unwrap();
    api.apply(svc("backend", "10.96.0.10", 80)).unwrap();
    api.apply(slice(
        "backend-1",
        "backend",
        &["10.244.0.10", "10.244.0.11", "10.244.0.12"],
    ))
    .unwrap();
    api
}

#[tokio::test]
async fn maps_follow_services_and_endpointslices_on_the_api_server() {
    let mut a = Agent::start(seeded_api().await, MemoryMaps::new(64, 64));
    a.until("first sync", |a| a.reconciler.is_synced()).await;
    let k = cluster_ip_key(BACKEND, 80);
    assert_eq!(
        backends(a.maps(), k).unwrap(),
        ["10.244.0.10:8080", "10.244.0.11:8080", "10.244.0.12:8080"]
    );

    // An endpoint goes away.
    a.api
        .apply(slice(
            "backend-1",
            "backend",
            &["10.244.0.10", "10.244.0.12"],
        ))
        .unwrap();
    a.until("endpoint removed", |a| {
        backends(a.maps(), k).is_some_and(|b| b.len() == 2)
    })
    .await;
    assert_eq!(
        backends(a.maps(), k).unwrap(),
        ["10.244.0.10:8080", "10.244.0.12:8080"]
    );

    // A second slice of the same Service adds to it.
    a.api
        .apply(slice("backend-2", "backend", &["10.244.1.10"]))
        .unwrap();
    a.until("second slice merged", |a| {
        backends(a.maps(), k).is_some_and(|b| b.len() == 3)
    })
    .await;

    // A new Service, then its endpoints.
    let f = cluster_ip_key(FRONTEND, 80);
    a.api.apply(svc("frontend", "10.96.0.20", 80)).unwrap();
    a.until("frontend programmed, no endpoints yet", |a| {
        backends(a.maps(), f).is_some_and(|b| b.is_empty())
    })
    .await;
    a.api
        .apply(slice("frontend-1", "frontend", &["10.244.0.20"]))
        .unwrap();
    a.until("frontend endpoints", |a| {
        backends(a.maps(), f).is_some_and(|b| b == ["10.244.0.20:8080"])
    })
    .await;

    // The Service's port changes: the old frontend goes, the new one serves.
    a.api.apply(svc("frontend", "10.96.0.20", 81)).unwrap();
    let f81 = cluster_ip_key(FRONTEND, 81);
    a.until("port changed", |a| {
        backends(a.maps(), f).is_none() && backends(a.maps(), f81).is_some()
    })
    .await;
    assert_eq!(backends(a.maps(), f81).unwrap(), ["10.244.0.20:8080"]);

    // Slices and Services deleted.
    a.api
        .delete("EndpointSlice", "default", "backend-2")
        .unwrap();
    a.until("slice deleted", |a| {
        backends(a.maps(), k).is_some_and(|b| b.len() == 2)
    })
    .await;
    a.api.delete("Service", "default", "frontend").unwrap();
    a.until("service deleted", |a| backends(a.maps(), f81).is_none())
        .await;
    assert!(
        !a.maps()
            .backends
            .values()
            .any(|b| b.addr_be == u32::from(Ipv4Addr::new(10, 244, 0, 20)).to_be()),
        "the deleted Service's backend entry is gone"
    );
    assert_eq!(
        a.maps().services.len(),
        1,
        "only the backend's frontend remains"
    );
}

#[tokio::test]
async fn not_ready_until_all_three_kinds_are_listed() {
    let api = seeded_api().await;
    api.pause_lists_of("Node").unwrap();
    let mut a = Agent::start(api, MemoryMaps::new(64, 64));
    a.until_checked(
        "Services and EndpointSlices listed",
        |a| a.resynced.contains(&Kind::Service) && a.resynced.contains(&Kind::EndpointSlice),
        |a| {
            assert!(!a.reconciler.is_synced(), "ready before Nodes were listed");
            assert!(
                a.maps().log.is_empty(),
                "maps written before the first full sync"
            );
        },
    )
    .await;
    // Changes before the first full sync are folded in, not programmed.
    a.api
        .apply(slice("backend-1", "backend", &["10.244.0.10"]))
        .unwrap();
    a.until("the slice update", |a| {
        a.watched
            .iter()
            .any(|w| w == "EndpointSlice default/backend-1")
    })
    .await;
    assert_eq!(a.resynced.len(), 2);
    assert!(!a.reconciler.is_synced());
    assert!(a.maps().services.is_empty());

    a.api.resume_lists();
    a.until("first sync", |a| a.reconciler.is_synced()).await;
    assert!(a.resynced.contains(&Kind::Node));
    let k = cluster_ip_key(BACKEND, 80);
    a.until("the update made before the sync", |a| {
        backends(a.maps(), k).is_some_and(|b| b == ["10.244.0.10:8080"])
    })
    .await;
}

/// Maps as a previous agent left them: `backend` and `gone` programmed.
fn maps_of_a_previous_run() -> MemoryMaps {
    let mut previous = agent(MemoryMaps::new(64, 64));
    let objects = [
        node(),
        svc("backend", "10.96.0.10", 80),
        slice("backend-1", "backend", &["10.244.0.10"]),
        svc("gone", "10.96.0.99", 80),
        slice("gone-1", "gone", &["10.244.0.99"]),
    ]
    .into_iter()
    .map(|v| (lb_k8s::Object::from_value(v).unwrap().unwrap(), None))
    .collect();
    previous.handle(Event::Resync {
        kinds: KINDS.to_vec(),
        objects,
        errors: vec![],
    });
    assert!(previous.is_synced());
    let mut maps = previous.writer().clone();
    maps.log.clear();
    maps
}

#[tokio::test]
async fn maps_are_not_pruned_before_the_first_full_sync() {
    let previous = maps_of_a_previous_run();
    let gone = cluster_ip_key([10, 96, 0, 99], 80);
    assert_eq!(backends(&previous, gone).unwrap(), ["10.244.0.99:8080"]);

    // The cluster no longer has "gone"; Nodes are slow to list.
    let api = seeded_api().await;
    api.pause_lists_of("Node").unwrap();
    let mut a = Agent::start(api, previous);
    a.until_checked(
        "Services and EndpointSlices listed",
        |a| a.resynced.contains(&Kind::Service) && a.resynced.contains(&Kind::EndpointSlice),
        |a| {
            assert_eq!(
                backends(a.maps(), gone).as_deref(),
                Some(&["10.244.0.99:8080".to_owned()][..]),
                "an entry of the previous run was removed before the first full sync"
            );
        },
    )
    .await;
    assert!(a.maps().log.is_empty());

    a.api.resume_lists();
    a.until("first sync", |a| a.reconciler.is_synced()).await;
    assert!(
        backends(a.maps(), gone).is_none(),
        "pruned after the full sync"
    );
    assert_eq!(
        backends(a.maps(), cluster_ip_key(BACKEND, 80)).unwrap(),
        ["10.244.0.10:8080", "10.244.0.11:8080", "10.244.0.12:8080"]
    );
}

#[tokio::test]
async fn a_relist_after_410_gone_removes_what_was_deleted_while_cut_off() {
    let api = seeded_api().await;
    api.apply(svc("frontend", "10.96.0.20", 80)).unwrap();
    api.apply(slice("frontend-1", "frontend", &["10.244.0.20"]))
        .unwrap();
    let mut a = Agent::start(api, MemoryMaps::new(64, 64));
    a.until("first sync", |a| a.reconciler.is_synced()).await;
    let f = cluster_ip_key(FRONTEND, 80);
    assert!(backends(a.maps(), f).is_some());
    a.until_api("watches open", |api| {
        ["Service", "EndpointSlice", "Node"]
            .iter()
            .all(|k| api.open_watches(k) == 1)
    })
    .await;

    a.api.pause_watches();
    a.api.delete("Service", "default", "frontend").unwrap();
    a.api
        .delete("EndpointSlice", "default", "frontend-1")
        .unwrap();
    a.api
        .apply(slice("backend-1", "backend", &["10.244.0.10"]))
        .unwrap();
    a.api.compact();
    a.api.resume_watches();

    let k = cluster_ip_key(BACKEND, 80);
    a.until("the relisted state programmed", |a| {
        backends(a.maps(), f).is_none()
            && backends(a.maps(), k).is_some_and(|b| b == ["10.244.0.10:8080"])
    })
    .await;
    assert!(
        a.resynced.iter().filter(|k| **k == Kind::Service).count() >= 2,
        "learnt by a relist: {:?}",
        a.resynced
    );
    assert!(a.reconciler.is_synced());
}
