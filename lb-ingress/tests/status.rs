//! The Ingress status address, end to end: the ingress runs against the fake API server
//! (kube-rs unmodified) and writes `status.loadBalancer.ingress` of the Ingresses of its
//! class, from `--publish-service` or `--publish-status-address`.
mod common;

use std::time::Duration;

use fakeapi::FakeApi;
use lb_ingress::status::{PublishService, StatusConfig};
use lb_ingress::{ServerConfig, ServerHandle};
use lb_k8s::SourceConfig;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

fn ingress_class(default: bool) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
           "metadata": {"name": "lb", "annotations":
               {"ingressclass.kubernetes.io/is-default-class": default.to_string()}},
           "spec": {"controller": "example.com/lb-ingress"}})
}

fn ingress(name: &str, class: Option<&str>, status: &Value) -> Value {
    let mut spec = json!({"defaultBackend": {"service": {"name": "site", "port": {"number": 80}}}});
    if let Some(c) = class {
        spec["ingressClassName"] = json!(c);
    }
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
           "metadata": {"name": name, "namespace": "web"},
           "spec": spec, "status": {"loadBalancer": {"ingress": status}}})
}

fn lb_service(status: &Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": "lb-ingress", "namespace": "lb-ingress"},
           "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80}]},
           "status": {"loadBalancer": {"ingress": status}}})
}

/// `status.loadBalancer.ingress` of Ingress web/`name` as stored (null when unset).
fn status_of(api: &FakeApi, name: &str) -> Value {
    let o = api.get("Ingress", "web", name).expect("the Ingress exists");
    o.pointer("/status/loadBalancer/ingress")
        .cloned()
        .unwrap_or(Value::Null)
}

/// Status PATCH requests for Ingress web/`name` so far.
fn patches_of(api: &FakeApi, name: &str) -> usize {
    let path = format!("/apis/networking.k8s.io/v1/namespaces/web/ingresses/{name}/status");
    api.requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path == path)
        .count()
}

fn all_patches(api: &FakeApi) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.method == "PATCH" || r.method == "PUT")
        .count()
}

async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for the configuration loop to take in a change made after generation `g`
/// (the status writer sees every event before it does), then gives the writer some time
/// to act on it.
async fn settle(h: &mut ServerHandle, g: u64) {
    common::next_generation(h, g).await;
    quiet().await;
}

/// Time for writes that should not happen to show up.
async fn quiet() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

async fn start(api: &FakeApi, dir: &tempfile::TempDir, status: StatusConfig) -> ServerHandle {
    let mut config = ServerConfig::new(
        SourceConfig::Kube {
            kubeconfig: Some(api.kubeconfig_file(dir.path())),
            node: None,
            namespace: None,
        },
        "127.0.0.1:0".parse().unwrap(),
    );
    config.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    config.options = common::test_options();
    config.shutdown_grace = Duration::from_secs(1);
    config.status = status;
    common::start(config).await
}

#[tokio::test]
async fn ingresses_of_our_class_get_the_published_service_address_and_follow_it() {
    let api = FakeApi::start().await;
    let first = json!([{"ip": "192.0.2.10"}]);
    api.apply(ingress_class(false)).unwrap();
    api.apply(ingress("a", Some("lb"), &json!([]))).unwrap();
    api.apply(ingress("b", Some("lb"), &json!([]))).unwrap();
    api.apply(ingress("other", Some("nginx"), &json!([])))
        .unwrap();
    // Already right: never written.
    api.apply(ingress("done", Some("lb"), &first)).unwrap();
    api.apply(lb_service(&first)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(
        &api,
        &dir,
        StatusConfig {
            service: Some("lb-ingress/lb-ingress".parse::<PublishService>().unwrap()),
            ..StatusConfig::default()
        },
    )
    .await;

    until("a and b show the Service's address", || {
        status_of(&api, "a") == first && status_of(&api, "b") == first
    })
    .await;
    // Something else changes (an Ingress of ours, not its status): nothing is rewritten.
    let mut a = api.get("Ingress", "web", "a").unwrap();
    a["metadata"]["annotations"] = json!({"touched": "yes"});
    let g = h.generation();
    api.apply(a).unwrap();
    settle(&mut h, g).await;
    assert_eq!(
        (
            patches_of(&api, "a"),
            patches_of(&api, "b"),
            patches_of(&api, "done")
        ),
        (1, 1, 0)
    );
    assert_eq!(all_patches(&api), 2, "{:?}", api.requests());
    assert_eq!(
        status_of(&api, "other"),
        json!([]),
        "another class's Ingress"
    );

    // The load balancer's address changes: every Ingress of ours follows.
    let second = json!([{"hostname": "lb.example.com"}, {"ip": "192.0.2.20"}]);
    api.apply(lb_service(
        &json!([{"ip": "192.0.2.20"}, {"hostname": "lb.example.com"}]),
    ))
    .unwrap();
    until("a, b and done show the new address", || {
        ["a", "b", "done"]
            .iter()
            .all(|n| status_of(&api, n) == second)
    })
    .await;
    assert_eq!(status_of(&api, "other"), json!([]));
    quiet().await;
    assert_eq!(all_patches(&api), 5);

    // An Ingress that moves to another class keeps what was written (the other
    // controller owns its status now), as with ingress-nginx.
    let mut b = api.get("Ingress", "web", "b").unwrap();
    b["spec"]["ingressClassName"] = json!("nginx");
    let g = h.generation();
    api.apply(b).unwrap();
    settle(&mut h, g).await;
    let third = json!([{"ip": "192.0.2.30"}]);
    api.apply(lb_service(&third)).unwrap();
    until("a and done show the third address", || {
        status_of(&api, "a") == third && status_of(&api, "done") == third
    })
    .await;
    quiet().await;
    assert_eq!(status_of(&api, "b"), second);
    assert_eq!(all_patches(&api), 7);

    // Without load-balancer addresses, the Service's externalIPs are published.
    let mut svc = lb_service(&json!([]));
    svc["spec"]["externalIPs"] = json!(["203.0.113.5"]);
    api.apply(svc).unwrap();
    let external = json!([{"ip": "203.0.113.5"}]);
    until("a shows the external IP", || {
        status_of(&api, "a") == external && status_of(&api, "done") == external
    })
    .await;

    let metrics = h.metrics_addr.unwrap();
    assert_eq!(status_updates(metrics, "success").await, Some(9));
    h.shutdown().await;
}

#[tokio::test]
async fn published_addresses_are_written_and_failed_writes_back_off() {
    let api = FakeApi::start().await;
    // Default class: an Ingress without a class is ours too.
    api.apply(ingress_class(true)).unwrap();
    api.apply(ingress("a", Some("lb"), &json!([]))).unwrap();
    api.apply(ingress("classless", None, &json!([]))).unwrap();
    api.apply(lb_service(&json!([{"ip": "192.0.2.10"}])))
        .unwrap();
    api.fail_writes(Some(500));
    let dir = tempfile::tempdir().unwrap();
    let h = start(
        &api,
        &dir,
        StatusConfig {
            // Wins over the Service.
            addresses: vec!["192.0.2.99".into(), "lb.example.com".into()],
            service: Some("lb-ingress/lb-ingress".parse().unwrap()),
            retry: Duration::from_millis(100),
            max_retry: Duration::from_millis(400),
            ..StatusConfig::default()
        },
    )
    .await;
    let metrics = h.metrics_addr.unwrap();
    let errors = || async { status_updates(metrics, "error").await.unwrap_or(0) };
    let deadline = tokio::time::Instant::now() + WAIT;
    while errors().await < 4 {
        assert!(tokio::time::Instant::now() < deadline, "no retries");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Retries are spaced 100, 200, 400, 400 ms ... per Ingress: over one more second,
    // each Ingress is tried a handful of times, not in a loop.
    let before = all_patches(&api);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = all_patches(&api) - before;
    assert!((2..=2 * 5).contains(&during), "{during} writes in a second");

    api.fail_writes(None);
    let want = json!([{"hostname": "lb.example.com"}, {"ip": "192.0.2.99"}]);
    until("both Ingresses show the published addresses", || {
        status_of(&api, "a") == want && status_of(&api, "classless") == want
    })
    .await;
    quiet().await;
    assert_eq!(status_updates(metrics, "success").await, Some(2));
    assert_eq!(errors().await, all_patches(&api) as u64 - 2);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_manifests_no_status_is_written_and_the_ingress_still_serves() {
    let manifests = common::Manifests::new();
    manifests.write(
        "class.yaml",
        &serde_yaml::to_string(&ingress_class(true)).unwrap(),
    );
    let mut config = common::server_config(&manifests);
    config.status = StatusConfig {
        addresses: vec!["192.0.2.99".into()],
        ..StatusConfig::default()
    };
    let h = common::start(config).await;
    assert!(h.generation() >= 1);
    h.shutdown().await;
}

/// `lb_ingress_status_updates_total{result}` as the ingress exports it.
async fn status_updates(metrics: std::net::SocketAddr, result: &str) -> Option<u64> {
    let label = format!("result=\"{result}\"");
    common::metric(
        metrics,
        "lb_ingress_status_updates_total",
        &[label.as_str()],
    )
    .await
}

/// A pod of the ingress's Deployment: `rs` is its ReplicaSet's pod-template-hash.
fn ingress_pod(name: &str, rs: &str, terminating: bool) -> Value {
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "lb-ingress",
                     "labels": {"app.kubernetes.io/name": "lb-ingress", "pod-template-hash": rs}},
        "spec": {"containers": [{"name": "lb-ingress", "image": "lb-ingress"}]},
        "status": {"phase": "Running"}});
    if terminating {
        pod["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    }
    pod
}

/// `--update-status-on-shutdown` (on by default): a replica that stops while another
/// pod of its Deployment runs (a rollout's new pod, another replica) leaves the status;
/// the last one (the others terminating too, as when the Deployment is deleted) clears
/// it from the Ingresses of its class, and from no other. Without its pod's name it
/// cannot tell, and leaves the status.
#[tokio::test]
async fn the_last_replica_clears_the_status_when_it_stops() {
    let api = FakeApi::start().await;
    api.apply(ingress_class(false)).unwrap();
    api.apply(ingress("ours", Some("lb"), &json!([]))).unwrap();
    let other = json!([{"ip": "198.51.100.1"}]);
    api.apply(ingress("theirs", Some("nginx"), &other)).unwrap();
    api.apply(ingress_pod("lb-ingress-new-1", "new", false))
        .unwrap();
    api.apply(ingress_pod("lb-ingress-old-1", "old", false))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let want = json!([{"ip": "192.0.2.7"}]);
    let config = |pod: Option<&str>| StatusConfig {
        addresses: vec!["192.0.2.7".into()],
        pod: pod.map(|p| p.parse().unwrap()),
        ..StatusConfig::default()
    };
    let mut stops = Vec::new();
    for (pod, sibling_terminating, cleared) in [
        // Without its pod's name: left.
        (None, true, false),
        // The new ReplicaSet's pod runs (a rollout): left.
        (Some("lb-ingress/lb-ingress-old-1"), false, false),
        // The only other pod is terminating too: cleared.
        (Some("lb-ingress/lb-ingress-old-1"), true, true),
    ] {
        api.apply(ingress_pod("lb-ingress-new-1", "new", sibling_terminating))
            .unwrap();
        let h = start(&api, &dir, config(pod)).await;
        until("the address is published", || {
            status_of(&api, "ours") == want
        })
        .await;
        h.shutdown().await;
        stops.push((status_of(&api, "ours") == Value::Null) == cleared);
        assert_eq!(status_of(&api, "theirs"), other, "another class's Ingress");
    }
    assert_eq!(stops, [true, true, true], "left, left, cleared");
    // With the switch off, even the last replica leaves it.
    let h = start(
        &api,
        &dir,
        StatusConfig {
            clear_on_shutdown: false,
            ..config(Some("lb-ingress/lb-ingress-old-1"))
        },
    )
    .await;
    until("the address is published", || {
        status_of(&api, "ours") == want
    })
    .await;
    h.shutdown().await;
    assert_eq!(status_of(&api, "ours"), want);
}
