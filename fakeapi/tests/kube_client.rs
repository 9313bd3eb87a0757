//! The fake server as kube-rs' own client sees it: watch events with selectors,
//! bookmarks, 410 Gone as an ERROR event, and kube-runtime's streaming-list mode.
use std::time::Duration;

use fakeapi::FakeApi;
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

async fn client(api: &FakeApi, dir: &tempfile::TempDir) -> kube::Client {
    // kube builds a rustls connector even for http://; it needs a crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = kube::config::Kubeconfig::read_from(api.kubeconfig_file(dir.path())).unwrap();
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .unwrap();
    kube::Client::try_from(config).unwrap()
}

fn cm(name: &str, app: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
           "data": {"k": "v"}})
}

fn describe(e: &WatchEvent<ConfigMap>) -> String {
    let name = |o: &ConfigMap| o.metadata.name.clone().unwrap_or_default();
    match e {
        WatchEvent::Added(o) => format!("ADDED {}", name(o)),
        WatchEvent::Modified(o) => format!("MODIFIED {}", name(o)),
        WatchEvent::Deleted(o) => format!("DELETED {}", name(o)),
        WatchEvent::Bookmark(b) => format!("BOOKMARK {}", b.metadata.resource_version),
        WatchEvent::Error(s) => format!("ERROR {} {}", s.code, s.reason),
    }
}

#[tokio::test]
async fn watch_with_a_selector_sees_objects_enter_and_leave_it_and_bookmarks() {
    let api = FakeApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client(&api, &dir).await, "default");
    let list = cms.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.unwrap();
    let mut stream = cms
        .watch(&WatchParams::default().labels("app=web"), &rv)
        .await
        .unwrap()
        .boxed();
    api.apply(cm("a", "web")).unwrap();
    api.apply(cm("b", "db")).unwrap();
    api.apply(cm("b", "web")).unwrap();
    api.apply(cm("a", "db")).unwrap();
    api.delete("ConfigMap", "default", "b").unwrap();
    api.send_bookmarks();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let e = timeout(WAIT, stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push(describe(&e));
    }
    let now = api.resource_version();
    assert_eq!(
        seen,
        [
            "ADDED a".to_owned(),
            "ADDED b".to_owned(),
            "DELETED a".to_owned(),
            "DELETED b".to_owned(),
            format!("BOOKMARK {now}"),
        ]
    );
}

#[tokio::test]
async fn a_watch_from_a_compacted_version_gets_an_expired_error_event() {
    let api = FakeApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client(&api, &dir).await, "default");
    let old = api.apply(cm("a", "web")).unwrap();
    api.apply(cm("a", "api")).unwrap();
    api.compact();
    let mut stream = cms
        .watch(&WatchParams::default(), &(old - 1).to_string())
        .await
        .unwrap()
        .boxed();
    let e = timeout(WAIT, stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(describe(&e), "ERROR 410 Expired");
    assert!(
        timeout(WAIT, stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .is_none(),
        "the stream ends after the error"
    );
    // A continue token from before the compaction is expired too (HTTP 410).
    api.apply(cm("b", "web")).unwrap();
    let page = cms.list(&ListParams::default().limit(1)).await.unwrap();
    let token = page.metadata.continue_.unwrap();
    api.compact();
    let err = cms
        .list(&ListParams::default().limit(1).continue_token(&token))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 410),
        "{err:?}"
    );
}

#[tokio::test]
async fn streaming_lists_end_with_the_initial_events_bookmark() {
    let api = FakeApi::start().await;
    api.apply(cm("a", "web")).unwrap();
    api.apply(cm("b", "web")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client(&api, &dir).await, "default");
    let mut events = watcher(cms, watcher::Config::default().streaming_lists()).boxed();
    let mut seen = Vec::new();
    loop {
        let e = timeout(WAIT, events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match e {
            watcher::Event::Init => seen.push("init".to_owned()),
            watcher::Event::InitApply(o) => seen.push(o.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            other => panic!("{other:?} before InitDone"),
        }
    }
    assert_eq!(seen, ["init", "a", "b"]);
    api.apply(cm("c", "web")).unwrap();
    let e = timeout(WAIT, events.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(e, watcher::Event::Apply(o) if o.metadata.name.as_deref() == Some("c")));
}

fn ingress(name: &str) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
           "metadata": {"name": name, "namespace": "web", "labels": {"app": "site"}},
           "spec": {"ingressClassName": "lb", "defaultBackend":
               {"service": {"name": "site", "port": {"number": 80}}}}})
}

fn lb_status(ip: &str) -> Value {
    json!({"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}})
}

#[tokio::test]
async fn merge_patches_of_the_status_subresource_change_only_the_status_and_are_watched() {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::networking::v1::Ingress;
    use kube::api::{Patch, PatchParams};

    let api = FakeApi::start().await;
    api.apply(ingress("site")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = client(&api, &dir).await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), "web");
    let list = ingresses.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.unwrap();
    let mut stream = ingresses
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();

    // The status changes, and nothing else does even when the patch says so.
    let mut patch = lb_status("192.0.2.10");
    patch["spec"] = json!({"ingressClassName": "other"});
    let pp = PatchParams::default();
    let written = ingresses
        .patch_status("site", &pp, &Patch::Merge(&patch))
        .await
        .unwrap();
    let ips = |i: &Ingress| -> Vec<String> {
        i.status
            .iter()
            .flat_map(|s| s.load_balancer.iter())
            .flat_map(|lb| lb.ingress.iter().flatten())
            .filter_map(|e| e.ip.clone())
            .collect()
    };
    assert_eq!(ips(&written), ["192.0.2.10"]);
    assert_eq!(
        written.spec.as_ref().unwrap().ingress_class_name.as_deref(),
        Some("lb")
    );
    let after = written.metadata.resource_version.clone().unwrap();
    assert!(after.parse::<u64>().unwrap() > rv.parse::<u64>().unwrap());
    assert_eq!(api.resource_version().to_string(), after);
    let stored = api.get("Ingress", "web", "site").unwrap();
    assert_eq!(stored["status"], lb_status("192.0.2.10")["status"]);
    assert_eq!(stored["metadata"]["labels"], json!({"app": "site"}));
    let e = timeout(WAIT, stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match e {
        WatchEvent::Modified(o) => {
            assert_eq!(ips(&o), ["192.0.2.10"]);
            assert_eq!(o.metadata.resource_version.as_deref(), Some(after.as_str()));
        }
        other => panic!("expected MODIFIED, got {other:?}"),
    }

    // The same patch again changes nothing: same resourceVersion, no event.
    let again = ingresses
        .patch_status("site", &pp, &Patch::Merge(&lb_status("192.0.2.10")))
        .await
        .unwrap();
    assert_eq!(
        again.metadata.resource_version.as_deref(),
        Some(after.as_str())
    );

    // A patch of the object itself changes it, but never its status.
    let patch = json!({"metadata": {"labels": {"app": null, "tier": "edge"}},
                       "status": {"loadBalancer": {}}});
    let patched = ingresses
        .patch("site", &pp, &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(ips(&patched), ["192.0.2.10"]);
    assert_eq!(
        patched.metadata.labels.unwrap(),
        [("tier".to_owned(), "edge".to_owned())].into()
    );
    let e = timeout(WAIT, stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(e, WatchEvent::Modified(_)), "{e:?}");

    // Services too (cluster-wide and namespaced paths name the same objects).
    api.apply(json!({"apiVersion": "v1", "kind": "Service",
                     "metadata": {"name": "lb", "namespace": "web"},
                     "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}))
        .unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), "web");
    let svc = services
        .patch_status("lb", &pp, &Patch::Merge(&lb_status("198.51.100.7")))
        .await
        .unwrap();
    let lb = svc.status.unwrap().load_balancer.unwrap().ingress.unwrap();
    assert_eq!(lb[0].ip.as_deref(), Some("198.51.100.7"));
}

#[tokio::test]
async fn writes_of_missing_objects_other_patch_types_and_stale_versions_fail_like_the_api_server() {
    use k8s_openapi::api::networking::v1::Ingress;
    use kube::api::{Patch, PatchParams, PostParams};

    let api = FakeApi::start().await;
    api.apply(ingress("site")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ingresses: Api<Ingress> = Api::namespaced(client(&api, &dir).await, "web");
    let pp = PatchParams::default();
    let code = |e: kube::Error| match e {
        kube::Error::Api(s) => (s.code, s.reason),
        other => panic!("not an API error: {other:?}"),
    };

    let missing = ingresses
        .patch_status("nope", &pp, &Patch::Merge(&lb_status("192.0.2.1")))
        .await
        .unwrap_err();
    assert_eq!(code(missing), (404, "NotFound".to_owned()));
    let strategic = ingresses
        .patch_status("site", &pp, &Patch::Strategic(&lb_status("192.0.2.1")))
        .await
        .unwrap_err();
    assert_eq!(code(strategic), (415, "UnsupportedMediaType".to_owned()));
    let apply = ingresses
        .patch_status(
            "site",
            &PatchParams::apply("test"),
            &Patch::Apply(&lb_status("192.0.2.1")),
        )
        .await
        .unwrap_err();
    assert_eq!(code(apply), (415, "UnsupportedMediaType".to_owned()));
    assert!(
        api.get("Ingress", "web", "site")
            .unwrap()
            .get("status")
            .is_none()
    );

    // PUT of the status: a stale resourceVersion is a conflict; the current one writes.
    let mut current = ingresses.get("site").await.unwrap();
    let rv = current.metadata.resource_version.clone();
    api.apply({
        let mut changed = ingress("site");
        changed["metadata"]["annotations"] = json!({"a": "b"});
        changed
    })
    .unwrap();
    current.status = serde_json::from_value(lb_status("192.0.2.2")["status"].clone()).unwrap();
    let stale = ingresses
        .replace_status("site", &PostParams::default(), &current)
        .await
        .unwrap_err();
    assert_eq!(code(stale), (409, "Conflict".to_owned()));
    current.metadata = ingresses.get("site").await.unwrap().metadata;
    assert_ne!(current.metadata.resource_version, rv);
    let written = ingresses
        .replace_status("site", &PostParams::default(), &current)
        .await
        .unwrap();
    assert_eq!(
        written
            .status
            .unwrap()
            .load_balancer
            .unwrap()
            .ingress
            .unwrap()[0]
            .ip
            .as_deref(),
        Some("192.0.2.2")
    );
}
