//! KubeSource (kube-rs watchers) against the fake API server: what the consumer sees of
//! lists, watches, watch restarts, 410 Gone and changes made while a relist is under way.
use std::time::Duration;

use fakeapi::{Config, FakeApi};
use lb_k8s::kube_source::KubeSource;
use lb_k8s::{Event, Kind, KindSet, Object, ObjectRef, Source as _, Store};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Every wait in these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(20);

fn svc(name: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10", "ports": [{"port": port, "targetPort": 8080}]},
    })
}

fn slice(name: &str, service: &str, ips: &[&str]) -> Value {
    let endpoints: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

fn node(name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
    })
}

fn svc_ref(name: &str) -> ObjectRef {
    ObjectRef::new(Kind::Service, "default", name)
}

fn port_of(store: &Store, name: &str) -> Option<i32> {
    match store.get(&svc_ref(name)) {
        Some(Object::Service(s)) => Some(s.spec.as_ref()?.ports.as_ref()?.first()?.port),
        _ => None,
    }
}

fn addresses_of(store: &Store, name: &str) -> Option<Vec<String>> {
    match store.get(&ObjectRef::new(Kind::EndpointSlice, "default", name)) {
        Some(Object::EndpointSlice(es)) => Some(
            es.endpoints
                .iter()
                .flatten()
                .flat_map(|e| e.addresses.iter().cloned())
                .collect(),
        ),
        _ => None,
    }
}

/// A KubeSource running against a fake API server, and the store its events fold into.
struct Harness {
    api: FakeApi,
    _dir: tempfile::TempDir,
    rx: mpsc::Receiver<Event>,
    store: Store,
    /// Every event received, in order.
    seen: Vec<Event>,
    source: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Harness {
    async fn start(kinds: &[Kind], config: Config, setup: impl FnOnce(&FakeApi)) -> Harness {
        let api = FakeApi::start_with(config).await;
        setup(&api);
        let dir = tempfile::tempdir().unwrap();
        let source = Box::new(KubeSource::new(Some(api.kubeconfig_file(dir.path()))));
        let (tx, rx) = mpsc::channel(64);
        let source = tokio::spawn(source.run(KindSet::of(kinds), tx));
        Harness {
            api,
            _dir: dir,
            rx,
            store: Store::new(),
            seen: Vec::new(),
            source,
        }
    }

    /// Folds events into the store until `done` holds; fails after [`WAIT`].
    async fn until(&mut self, what: &str, done: impl Fn(&Store) -> bool) {
        let wait = async {
            while !done(&self.store) {
                let Some(event) = self.rx.recv().await else {
                    panic!("the source ended while waiting for {what}");
                };
                self.seen.push(event.clone());
                self.store.apply(event);
            }
        };
        if timeout(WAIT, wait).await.is_err() {
            let source_state = if self.source.is_finished() {
                "the source task ended"
            } else {
                "the source task is running"
            };
            panic!(
                "timed out waiting for {what} ({source_state}); events: {:#?}; requests: {:#?}",
                self.seen,
                self.api.requests()
            );
        }
    }

    /// Waits, on the server side, until `done` holds.
    async fn until_api(&self, what: &str, done: impl Fn(&FakeApi) -> bool) {
        let wait = async {
            while !done(&self.api) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        assert!(
            timeout(WAIT, wait).await.is_ok(),
            "timed out waiting for {what}; events: {:#?}; requests: {:#?}",
            self.seen,
            self.api.requests()
        );
    }

    fn resyncs_of(&self, kind: Kind) -> Vec<&Vec<(Object, Option<String>)>> {
        self.seen
            .iter()
            .filter_map(|e| match e {
                Event::Resync { kinds, objects, .. } if kinds == &[kind] => Some(objects),
                _ => None,
            })
            .collect()
    }

    fn list_requests(&self, kind: &str) -> usize {
        self.api
            .requests()
            .iter()
            .filter(|r| r.is_list() && r.kind == Some(kind))
            .count()
    }
}

/// Runs `source` for `kinds` until their first listing is in: the task, the events
/// after it, and the store they made.
async fn synced(
    source: Box<KubeSource>,
    kinds: &[Kind],
) -> (
    tokio::task::JoinHandle<anyhow::Result<()>>,
    mpsc::Receiver<Event>,
    Store,
) {
    let (tx, mut rx) = mpsc::channel(64);
    let task = tokio::spawn(source.run(KindSet::of(kinds), tx));
    let mut store = Store::new();
    timeout(WAIT, async {
        while !store.is_synced(kinds) {
            store.apply(rx.recv().await.expect("source ended"));
        }
    })
    .await
    .expect("initial sync");
    (task, rx, store)
}

const AGENT_KINDS: [Kind; 3] = [Kind::Service, Kind::EndpointSlice, Kind::Node];

#[tokio::test]
async fn initial_listing_is_one_resync_per_kind() {
    let mut h = Harness::start(&AGENT_KINDS, Config::default(), |api| {
        api.apply(svc("backend", 80)).unwrap();
        api.apply(svc("frontend", 80)).unwrap();
        api.apply(slice("backend-1", "backend", &["10.244.0.10"]))
            .unwrap();
        api.apply(node("node-0", "10.0.0.10")).unwrap();
    })
    .await;
    h.until("all three kinds listed", |s| s.is_synced(&AGENT_KINDS))
        .await;
    for (kind, count) in [
        (Kind::Service, 2),
        (Kind::EndpointSlice, 1),
        (Kind::Node, 1),
    ] {
        let resyncs = h.resyncs_of(kind);
        assert_eq!(resyncs.len(), 1, "{kind}: one resync");
        assert_eq!(resyncs[0].len(), count, "{kind}: every object listed");
    }
    assert_eq!(port_of(&h.store, "backend"), Some(80));
    assert_eq!(
        addresses_of(&h.store, "backend-1").unwrap(),
        ["10.244.0.10"]
    );
    assert!(
        !h.seen
            .iter()
            .any(|e| matches!(e, Event::Apply(_) | Event::Delete(_))),
        "a listing arrives as Resync only: {:#?}",
        h.seen
    );
}

/// A node agent's source (kube-proxy's informer setup): its own Node only, and no slices
/// of headless Services, filtered by the API server.
#[tokio::test]
async fn a_node_agent_watches_its_own_node_and_no_headless_slices() {
    let api = FakeApi::start_with(Config::default()).await;
    api.apply(node("node-0", "10.0.0.10")).unwrap();
    api.apply(node("node-1", "10.0.0.11")).unwrap();
    api.apply(slice("web-1", "web", &["10.244.0.5"])).unwrap();
    let mut headless = slice("db-1", "db", &["10.244.0.6"]);
    headless["metadata"]["labels"]["service.kubernetes.io/headless"] = json!("");
    api.apply(headless).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let source = Box::new(KubeSource::for_node(
        Some(api.kubeconfig_file(dir.path())),
        "node-0".into(),
    ));
    let (task, mut rx, store) = synced(source, &AGENT_KINDS).await;
    let names =
        |kind| -> Vec<String> { store.of_kind(kind).map(|o| o.object_ref().name).collect() };
    assert_eq!(names(Kind::Node), ["node-0"]);
    assert_eq!(names(Kind::EndpointSlice), ["web-1"]);
    // A change to another node never arrives; one to ours does.
    api.apply(node("node-1", "10.0.0.21")).unwrap();
    api.apply(node("node-0", "10.0.0.20")).unwrap();
    let next = timeout(WAIT, rx.recv())
        .await
        .expect("an event")
        .expect("source ended");
    match next {
        Event::Apply(o) => assert_eq!(o.object_ref().name, "node-0"),
        other => panic!("expected node-0's update, got {other:?}"),
    }
    assert!(
        api.requests()
            .iter()
            .filter(|r| r.kind == Some("Node"))
            .all(|r| r.param("fieldSelector") == Some("metadata.name=node-0")),
        "every Node request is for this node only"
    );
    task.abort();
}

/// `in_namespace` (an ingress's `--watch-namespace`): the namespaced kinds are listed and
/// watched in that namespace only, by the API server; the cluster-scoped ones whole.
#[tokio::test]
async fn one_namespace_is_watched_when_asked() {
    let api = FakeApi::start_with(Config::default()).await;
    for (ns, name) in [("team-a", "web"), ("team-b", "db"), ("team-a", "api")] {
        let mut s = svc(name, 80);
        s["metadata"]["namespace"] = json!(ns);
        api.apply(s).unwrap();
    }
    api.apply(node("node-0", "10.0.0.10")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let source = Box::new(
        KubeSource::new(Some(api.kubeconfig_file(dir.path()))).in_namespace(Some("team-a".into())),
    );
    let kinds = [Kind::Service, Kind::Node];
    let (task, mut rx, store) = synced(source, &kinds).await;
    let refs = |kind| -> Vec<String> {
        let mut r: Vec<String> = (store.of_kind(kind))
            .map(|o| {
                let r = o.object_ref();
                format!("{}/{}", r.namespace, r.name)
            })
            .collect();
        r.sort();
        r
    };
    assert_eq!(refs(Kind::Service), ["team-a/api", "team-a/web"]);
    assert_eq!(refs(Kind::Node), ["/node-0"]);
    // A change elsewhere never arrives; one in the namespace does.
    let mut other = svc("db", 81);
    other["metadata"]["namespace"] = json!("team-b");
    api.apply(other).unwrap();
    let mut ours = svc("web", 81);
    ours["metadata"]["namespace"] = json!("team-a");
    api.apply(ours).unwrap();
    match timeout(WAIT, rx.recv())
        .await
        .expect("an event")
        .expect("source ended")
    {
        Event::Apply(o) => assert_eq!(o.object_ref().name, "web"),
        other => panic!("expected team-a/web's update, got {other:?}"),
    }
    let requests = api.requests();
    assert!(
        (requests.iter().filter(|r| r.kind == Some("Service")))
            .all(|r| r.path.starts_with("/api/v1/namespaces/team-a/services")),
        "every Service request is for team-a: {requests:#?}"
    );
    task.abort();
}

#[tokio::test]
async fn paginated_listing_is_complete_and_secrets_are_slimmed() {
    let config = Config {
        max_page_size: Some(2),
        ..Config::default()
    };
    let mut h = Harness::start(&[Kind::Service, Kind::Secret], config, |api| {
        for i in 0..7 {
            api.apply(svc(&format!("svc-{i}"), 80)).unwrap();
        }
        let secret = |name: &str, ty: &str, data: Value| {
            json!({"apiVersion": "v1", "kind": "Secret", "type": ty,
                   "metadata": {"name": name, "namespace": "default"}, "data": data})
        };
        api.apply(secret(
            "cert",
            "kubernetes.io/tls",
            json!({"tls.crt": "Y3J0", "tls.key": "a2V5"}),
        ))
        .unwrap();
        api.apply(secret(
            "basic-auth",
            "Opaque",
            json!({"auth": "dTpw", "db-password": "aHVudGVyMg=="}),
        ))
        .unwrap();
        api.apply(secret(
            "release",
            "helm.sh/release.v1",
            json!({"release": "eA=="}),
        ))
        .unwrap();
    })
    .await;
    h.until("services and secrets listed", |s| {
        s.is_synced(&[Kind::Service, Kind::Secret])
    })
    .await;
    assert_eq!(h.resyncs_of(Kind::Service)[0].len(), 7);
    assert!(
        h.api
            .requests()
            .iter()
            .any(|r| r.kind == Some("Service") && r.param("continue").is_some()),
        "the listing took several pages"
    );
    let mut secrets: Vec<(String, Vec<String>)> = h
        .store
        .of_kind(Kind::Secret)
        .map(|o| match o {
            Object::Secret(s) => (
                o.object_ref().name,
                s.data.iter().flatten().map(|(k, _)| k.clone()).collect(),
            ),
            _ => unreachable!(),
        })
        .collect();
    secrets.sort();
    // Helm's release is never listed; the Opaque Secret keeps only its htpasswd file.
    assert_eq!(
        secrets,
        [
            ("basic-auth".to_owned(), vec!["auth".to_owned()]),
            (
                "cert".to_owned(),
                vec!["tls.crt".to_owned(), "tls.key".to_owned()]
            ),
        ]
    );
    assert!(
        h.api
            .requests()
            .iter()
            .filter(|r| r.kind == Some("Secret"))
            .all(|r| r.param("fieldSelector") == Some(lb_k8s::kube_source::SECRET_FIELD_SELECTOR)),
        "every secret request carries the field selector"
    );
}

#[tokio::test]
async fn creates_updates_and_deletes_arrive_as_apply_and_delete() {
    let mut h = Harness::start(&AGENT_KINDS, Config::default(), |_| {}).await;
    h.until("first listing", |s| s.is_synced(&AGENT_KINDS))
        .await;

    h.api.apply(svc("backend", 80)).unwrap();
    h.until("service created", |s| port_of(s, "backend") == Some(80))
        .await;
    h.api.apply(svc("backend", 8080)).unwrap();
    h.until("service updated", |s| port_of(s, "backend") == Some(8080))
        .await;
    h.api
        .apply(slice("backend-1", "backend", &["10.244.0.10"]))
        .unwrap();
    h.until("slice created", |s| addresses_of(s, "backend-1").is_some())
        .await;
    h.api
        .apply(slice(
            "backend-1",
            "backend",
            &["10.244.0.10", "10.244.1.10"],
        ))
        .unwrap();
    h.until("slice updated", |s| {
        addresses_of(s, "backend-1").is_some_and(|a| a.len() == 2)
    })
    .await;
    h.api
        .delete("EndpointSlice", "default", "backend-1")
        .unwrap();
    h.until("slice deleted", |s| addresses_of(s, "backend-1").is_none())
        .await;
    h.api.delete("Service", "default", "backend").unwrap();
    h.until("service deleted", |s| port_of(s, "backend").is_none())
        .await;

    let after_sync: Vec<String> = h
        .seen
        .iter()
        .skip_while(|e| matches!(e, Event::Resync { .. }))
        .map(|e| match e {
            Event::Apply(o) => format!("apply {}", o.object_ref()),
            Event::Delete(r) => format!("delete {r}"),
            Event::Resync { kinds, .. } => format!("resync {kinds:?}"),
        })
        .collect();
    assert_eq!(
        after_sync,
        [
            "apply Service default/backend",
            "apply Service default/backend",
            "apply EndpointSlice default/backend-1",
            "apply EndpointSlice default/backend-1",
            "delete EndpointSlice default/backend-1",
            "delete Service default/backend",
        ]
    );
}

#[tokio::test]
async fn an_ended_watch_resumes_from_its_resource_version_without_losing_an_update() {
    let mut h = Harness::start(&AGENT_KINDS, Config::default(), |api| {
        api.apply(svc("backend", 80)).unwrap();
    })
    .await;
    h.until("first listing", |s| s.is_synced(&AGENT_KINDS))
        .await;
    h.until_api("service watch open", |api| api.open_watches("Service") == 1)
        .await;
    let lists_before = h.list_requests("Service");
    let rv_before = h.api.resource_version();

    // The watch ends, and the update happens before the client has a new watch open:
    // only a watch resumed from the old resourceVersion can deliver it.
    h.api.pause_watches();
    h.api.close_watches();
    h.api.apply(svc("backend", 81)).unwrap();
    h.api.apply(svc("frontend", 80)).unwrap();
    h.until_api("service watch reopened", |api| {
        api.open_watches("Service") == 1
    })
    .await;
    h.api.resume_watches();
    h.until("the updates made while the watch was down", |s| {
        port_of(s, "backend") == Some(81) && port_of(s, "frontend") == Some(80)
    })
    .await;

    assert_eq!(
        h.list_requests("Service"),
        lists_before,
        "resumed by a watch, not a relist"
    );
    let resumed = h
        .api
        .requests()
        .into_iter()
        .rfind(|r| r.is_watch() && r.kind == Some("Service"))
        .unwrap();
    assert_eq!(
        resumed.param("resourceVersion"),
        Some(rv_before.to_string().as_str())
    );
    assert_eq!(h.resyncs_of(Kind::Service).len(), 1);
}

#[tokio::test]
async fn gone_forces_a_relist_that_drops_what_was_deleted_meanwhile() {
    let mut h = Harness::start(&AGENT_KINDS, Config::default(), |api| {
        api.apply(svc("stays", 80)).unwrap();
        api.apply(svc("deleted", 80)).unwrap();
    })
    .await;
    h.until("first listing", |s| s.is_synced(&AGENT_KINDS))
        .await;
    h.until_api("service watch open", |api| api.open_watches("Service") == 1)
        .await;

    // The client is cut off while "deleted" goes away and the history is compacted:
    // its watch cannot be resumed, only a relist can tell it.
    h.api.pause_watches();
    h.api.delete("Service", "default", "deleted").unwrap();
    h.api.apply(svc("created", 80)).unwrap();
    h.api.compact();
    h.api.resume_watches();
    h.until("the relist after 410 Gone", |s| {
        s.get(&svc_ref("deleted")).is_none() && port_of(s, "created") == Some(80)
    })
    .await;

    let resyncs = h.resyncs_of(Kind::Service);
    assert_eq!(resyncs.len(), 2, "the 410 led to a second listing");
    let relisted: Vec<String> = resyncs[1]
        .iter()
        .map(|(o, _)| o.object_ref().name)
        .collect();
    assert_eq!(relisted, ["created", "stays"]);
    assert!(
        !h.seen.iter().any(|e| matches!(e, Event::Delete(_))),
        "the deletion was learnt from the relist, not from a watch event"
    );
    assert_eq!(port_of(&h.store, "stays"), Some(80));
}

#[tokio::test]
async fn changes_made_during_a_relist_are_not_lost() {
    let config = Config {
        max_page_size: Some(2),
        ..Config::default()
    };
    let mut h = Harness::start(&AGENT_KINDS, config, |api| {
        for i in 0..5 {
            api.apply(svc(&format!("svc-{i}"), 80)).unwrap();
        }
    })
    .await;
    h.until("first listing", |s| s.is_synced(&AGENT_KINDS))
        .await;
    h.until_api("service watch open", |api| api.open_watches("Service") == 1)
        .await;
    let lists_before = h.list_requests("Service");

    // Force a relist (410), and hold its first page: its snapshot is taken, and the
    // changes below are newer than it.
    h.api.pause_watches();
    h.api.apply(svc("svc-0", 81)).unwrap();
    h.api.compact();
    h.api.pause_lists();
    h.api.resume_watches();
    h.until_api("the relist request", |api| {
        api.requests()
            .iter()
            .filter(|r| r.is_list() && r.kind == Some("Service"))
            .count()
            > lists_before
    })
    .await;
    h.api.apply(svc("svc-1", 81)).unwrap();
    h.api.delete("Service", "default", "svc-2").unwrap();
    h.api.apply(svc("svc-new", 80)).unwrap();
    h.api.resume_lists();

    h.until("every change made during the relist", |s| {
        port_of(s, "svc-0") == Some(81)
            && port_of(s, "svc-1") == Some(81)
            && port_of(s, "svc-2").is_none()
            && port_of(s, "svc-new") == Some(80)
    })
    .await;
    let resyncs = h.resyncs_of(Kind::Service);
    assert_eq!(resyncs.len(), 2);
    // The relist is as of before the changes (all pages from one snapshot): it still
    // has svc-2 and lacks svc-new; the watch from its resourceVersion brought the rest.
    let relisted: Vec<String> = resyncs[1]
        .iter()
        .map(|(o, _)| o.object_ref().name)
        .collect();
    assert_eq!(relisted, ["svc-0", "svc-1", "svc-2", "svc-3", "svc-4"]);
    assert_eq!(h.store.of_kind(Kind::Service).count(), 5);
}

#[tokio::test]
async fn objects_are_kept_without_managed_fields_or_the_last_applied_copy() {
    let fat = |port: u16| {
        let mut s = svc("fat", port);
        s["metadata"]["managedFields"] = json!([{
            "manager": "kubectl", "operation": "Apply", "apiVersion": "v1",
            "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:ports": {}}},
        }]);
        s["metadata"]["annotations"] = json!({
            "kubectl.kubernetes.io/last-applied-configuration": svc("fat", port).to_string(),
            "team": "payments",
        });
        s
    };
    let mut h = Harness::start(&AGENT_KINDS, Config::default(), |api| {
        api.apply(fat(80)).unwrap();
    })
    .await;
    h.until("first listing", |s| s.is_synced(&AGENT_KINDS))
        .await;
    // Listed (InitApply) and then watched (Apply): both paths slim the object.
    h.api.apply(fat(81)).unwrap();
    h.until("update", |s| port_of(s, "fat") == Some(81)).await;
    let slim_ones: Vec<&Object> = h
        .seen
        .iter()
        .flat_map(|e| match e {
            Event::Resync { objects, .. } => objects.iter().map(|(o, _)| o).collect(),
            Event::Apply(o) => vec![o],
            Event::Delete(_) => vec![],
        })
        .filter(|o| o.object_ref() == svc_ref("fat"))
        .collect();
    assert_eq!(slim_ones.len(), 2, "listed once, updated once");
    for o in slim_ones {
        let Object::Service(s) = o else {
            panic!("not a Service: {o:?}")
        };
        assert_eq!(s.metadata.managed_fields, None);
        let annotations = s.metadata.annotations.clone().unwrap_or_default();
        assert!(!annotations.contains_key("kubectl.kubernetes.io/last-applied-configuration"));
        assert_eq!(
            annotations.get("team").map(String::as_str),
            Some("payments"),
            "other annotations stay"
        );
    }
}
