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
