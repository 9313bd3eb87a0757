//! 100 MB through the proxy each way, with memory bounded: bodies are streamed, never
//! buffered whole. Its own test binary so that no other test's allocations disturb the
//! RSS measurement.
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use http_body_util::BodyExt as _;
use hyper::StatusCode;

const TOTAL: u64 = 100_000_000;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabytes_each_way_with_bounded_memory() {
    let up = Upstream::start("bulk").await;
    let m = Manifests::new();
    m.write(
        "ingress.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: bulk}\nspec:\n  ingressClassName: lb\n  defaultBackend: {service: {name: bulk, port: {number: 80}}}\n",
    );
    m.write(
        "svc.yaml",
        &service("default", "bulk", 80, "http", "80", &[&up]),
    );
    let h = start(server_config(&m)).await;
    let c = client();
    // Warm up allocator pools and connections before the baseline.
    let (status, _, _) = get(&c, h.http_addr, "bulk", "/download?bytes=1000000").await;
    assert_eq!(status, StatusCode::OK);
    let baseline = rss_kib();
    let peak = Arc::new(AtomicU64::new(baseline));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (Arc::clone(&peak), Arc::clone(&done));
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // Upload: the upstream counts what arrives.
    let req = hyper::Request::post(format!("http://{}/upload", h.http_addr))
        .header("host", "bulk")
        .body(generated_body(TOTAL).boxed_unsync())
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let n = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(std::str::from_utf8(&n).unwrap(), TOTAL.to_string());

    // Download: counted frame by frame, never collected.
    let req = hyper::Request::get(format!("http://{}/download?bytes={TOTAL}", h.http_addr))
        .header("host", "bulk")
        .body(empty())
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        got += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(got, TOTAL);

    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let growth_mib = (peak.load(Ordering::Relaxed).saturating_sub(baseline)) / 1024;
    assert!(
        growth_mib < 30,
        "RSS grew by {growth_mib} MiB while streaming 2 x 100 MB"
    );
    h.shutdown().await;
}
