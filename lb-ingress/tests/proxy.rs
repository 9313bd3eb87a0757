//! The whole proxy against real upstream servers on loopback, with real clients.
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use hyper::StatusCode;

const SEED_INGRESS: &str = r"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: seed, namespace: default}
spec:
  ingressClassName: lb
  rules:
  - host: shop.example.com
    http:
      paths:
      - {path: /api, pathType: Prefix, backend: {service: {name: backend, port: {number: 80}}}}
      - {path: /, pathType: Prefix, backend: {service: {name: frontend, port: {number: 3000}}}}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_path_to_every_replica() {
    let fe = [Upstream::start("frontend-0").await, Upstream::start("frontend-1").await];
    let be = [Upstream::start("backend-0").await, Upstream::start("backend-1").await];
    let m = Manifests::new();
    m.write("ingress.yaml", SEED_INGRESS);
    m.write("frontend.yaml", &service("default", "frontend", 3000, "http", "3000", &[&fe[0], &fe[1]]));
    m.write("backend.yaml", &service("default", "backend", 80, "http", "8080", &[&be[0], &be[1]]));
    let h = start(server_config(&m)).await;
    let c = client();
    let mut answered = BTreeSet::new();
    for _ in 0..40 {
        let (status, headers, body) = get(&c, h.http_addr, "shop.example.com", "/api/items?id=1").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let name = seen(&body)["name"].as_str().unwrap().to_owned();
        assert!(name.starts_with("backend-"), "{name}");
        assert_eq!(headers["x-upstream"], name.as_str());
        answered.insert(name);
        let (status, _, body) = get(&c, h.http_addr, "SHOP.example.com:8080", "/index.html").await;
        assert_eq!(status, StatusCode::OK);
        answered.insert(seen(&body)["name"].as_str().unwrap().to_owned());
    }
    assert_eq!(answered.len(), 4, "every replica answers: {answered:?}");
    // /apix is not under /api (element-wise prefix): the frontend serves it.
    let (_, _, body) = get(&c, h.http_addr, "shop.example.com", "/apix").await;
    assert!(seen(&body)["name"].as_str().unwrap().starts_with("frontend-"));
    h.shutdown().await;
}
