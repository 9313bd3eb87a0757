//! The seed application through lb-ingress on the sandbox: an external client reaches
//! `/api` (backend) and `/` (frontend, which itself calls the backend through its
//! ClusterIP, i.e. through the eBPF data plane), and every replica answers in turn.
//! Needs root (fails loudly otherwise).
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lb_tests::{HttpRequest, Sandbox};

#[test]
fn client_reaches_every_frontend_and_backend_replica_through_the_ingress() {
    let sb = Sandbox::builder()
        .seed_app()
        .build()
        .expect("build sandbox");
    let agents: Vec<_> = (0..sb.nodes().len())
        .map(|i| sb.start_agent(i, &[]).expect("start lb-agent"))
        .collect();
    for a in &agents {
        a.wait_for_log("first sync programmed", Duration::from_secs(30))
            .expect("agent ready");
    }
    let _ingress = sb.start_ingress(0, &[]).expect("start lb-ingress");
    let ingress = SocketAddr::from((sb.node(0).ip, 80));

    // Until the ingress has read the manifests, it answers 404 (no route).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = sb.http_get(sb.client_ns(), ingress, "/api/ping");
        if r.as_ref().is_ok_and(|r| r.status == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ingress never routed /api: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let mut backends = BTreeSet::new();
    let mut frontends = BTreeSet::new();
    let mut via_frontend = BTreeSet::new();
    for i in 0..30 {
        let r = sb
            .http(
                sb.client_ns(),
                &HttpRequest::get(ingress, &format!("/api/items?i={i}")).host("shop.example"),
            )
            .expect("GET /api");
        assert_eq!(r.status, 200, "{r:?}");
        let j = r.json().expect("json");
        assert_eq!(
            j["path"],
            format!("/api/items?i={i}"),
            "path and query passed unchanged"
        );
        backends.insert(r.pod().expect("pod"));
        // The ingress tells the upstream who the client was.
        let xff = j["headers"]["x-forwarded-for"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(xff.contains("10.0.0.1"), "X-Forwarded-For: {xff:?} in {j}");

        let r = sb.http_get(sb.client_ns(), ingress, "/").expect("GET /");
        assert_eq!(r.status, 200, "{r:?}");
        let j = r.json().expect("json");
        frontends.insert(r.pod().expect("pod"));
        // The frontend's own call to http://backend (ClusterIP, through the data plane).
        let inner = j["backend"]["pod"].as_str().unwrap_or_default().to_owned();
        assert!(
            inner.starts_with("backend-"),
            "frontend's backend call failed: {j}"
        );
        via_frontend.insert(inner);
    }
    let all = |app: &str| -> BTreeSet<String> { (0..3).map(|i| format!("{app}-{i}")).collect() };
    assert_eq!(
        backends,
        all("backend"),
        "every backend replica answers /api"
    );
    assert_eq!(
        frontends,
        all("frontend"),
        "every frontend replica answers /"
    );
    assert!(
        via_frontend.len() > 1,
        "frontends reach several backends: {via_frontend:?}"
    );

    // The same over HTTPS (the seed Ingress's spec.tls, a certificate the sandbox made),
    // with curl from the client: HTTP/2 by ALPN, every replica in turn.
    let tls = SocketAddr::from((sb.node(0).ip, 443));
    let mut backends = BTreeSet::new();
    let mut frontends = BTreeSet::new();
    for i in 0..30 {
        let (r, version) = sb
            .https_get(sb.client_ns(), tls, &format!("/api/items?i={i}"))
            .expect("GET https /api");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(version, "2", "ALPN picks HTTP/2");
        let j = r.json().expect("json");
        assert_eq!(j["path"], format!("/api/items?i={i}"));
        assert_eq!(j["headers"]["x-forwarded-proto"], "https", "{j}");
        backends.insert(r.pod().expect("pod"));
        let (r, _) = sb.https_get(sb.client_ns(), tls, "/").expect("GET https /");
        assert_eq!(r.status, 200, "{r:?}");
        frontends.insert(r.pod().expect("pod"));
    }
    assert_eq!(backends, all("backend"), "every backend over HTTPS");
    assert_eq!(frontends, all("frontend"), "every frontend over HTTPS");
}
