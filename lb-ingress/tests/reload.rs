//! A reload storm: the Ingress changes every 10 ms for 10 s while clients send requests
//! without pause. Not one request may fail.
mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use hyper::StatusCode;

fn ingress(flip_to: &str, extra: u64) -> String {
    format!(
        r"apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: storm, namespace: default}}
spec:
  ingressClassName: lb
  rules:
  - host: storm.example.com
    http:
      paths:
      - {{path: /stable, pathType: Prefix, backend: {{service: {{name: one, port: {{number: 80}}}}}}}}
      - {{path: /flip, pathType: Prefix, backend: {{service: {{name: {flip_to}, port: {{number: 80}}}}}}}}
      - {{path: /extra-{extra}, pathType: Exact, backend: {{service: {{name: two, port: {{number: 80}}}}}}}}
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_storm_under_load_fails_no_request() {
    let one = [
        Upstream::start("one-0").await,
        Upstream::start("one-1").await,
    ];
    let two = [
        Upstream::start("two-0").await,
        Upstream::start("two-1").await,
    ];
    let m = Manifests::new();
    m.write(
        "svc.yaml",
        &format!(
            "{}---\n{}",
            service("default", "one", 80, "http", "80", &[&one[0], &one[1]]),
            service("default", "two", 80, "http", "80", &[&two[0], &two[1]])
        ),
    );
    m.write("ingress.yaml", &ingress("one", 0));
    let h = start(server_config(&m)).await;
    let first_generation = h.generation();

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for i in 0..4 {
        let (stop, ok, addr) = (Arc::clone(&stop), Arc::clone(&ok), h.http_addr);
        clients.push(tokio::spawn(async move {
            let c = client();
            let mut failures = Vec::new();
            let mut flip_seen = BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                let path = if i % 2 == 0 { "/stable/x" } else { "/flip/y" };
                let req = hyper::Request::get(format!("http://{addr}{path}"))
                    .header("host", "storm.example.com")
                    .body(empty())
                    .unwrap();
                match c.request(req).await {
                    Ok(resp) if resp.status() == StatusCode::OK => {
                        let name = resp.headers()["x-upstream"].to_str().unwrap().to_owned();
                        let body = http_body_util::BodyExt::collect(resp.into_body()).await;
                        if body.is_err() {
                            failures.push(format!("{path}: body error"));
                            continue;
                        }
                        if path == "/stable/x" && !name.starts_with("one-") {
                            failures.push(format!("{path} answered by {name}"));
                        }
                        if path == "/flip/y" {
                            flip_seen.insert(name[..3].to_owned());
                        }
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(resp) => failures.push(format!("{path}: {}", resp.status())),
                    Err(e) => failures.push(format!("{path}: {e}")),
                }
            }
            (failures, flip_seen)
        }));
    }

    let t0 = Instant::now();
    let mut changes = 0u64;
    while t0.elapsed() < Duration::from_secs(10) {
        changes += 1;
        let to = if changes.is_multiple_of(2) {
            "one"
        } else {
            "two"
        };
        m.write("ingress.yaml", &ingress(to, changes));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    let mut flip_seen = BTreeSet::new();
    for c in clients {
        let (f, s) = c.await.unwrap();
        failures.extend(f);
        flip_seen.extend(s);
    }
    let reloads = h.generation() - first_generation;
    let ok = ok.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} failed of {}: {:?}",
        failures.len(),
        ok + failures.len() as u64,
        &failures[..failures.len().min(10)]
    );
    assert!(ok > 500, "only {ok} requests in 10 s");
    assert!(
        reloads > 100,
        "only {reloads} reloads for {changes} changes"
    );
    assert_eq!(
        flip_seen,
        BTreeSet::from(["one".to_owned(), "two".to_owned()]),
        "the flipping route did not follow the changes"
    );
    h.shutdown().await;
}
