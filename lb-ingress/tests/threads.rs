//! The proxy on serving threads of its own (`ServerConfig::serving_threads`), as the
//! binary runs it: a single-threaded runtime per thread, each with its own listening
//! sockets (SO_REUSEPORT) and its own share of the upstream connection pools.
mod common;

use std::time::{Duration, Instant};

use common::*;
use hyper::StatusCode;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const INGRESS: &str = "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: t, namespace: default}\nspec:\n  ingressClassName: lb\n  rules:\n  - host: t.example.com\n    http:\n      paths:\n      - {path: /, pathType: Prefix, backend: {service: {name: t, port: {number: 80}}}}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_threads_proxy_tunnel_and_drain() {
    let ups = [Upstream::start("t-0").await, Upstream::start("t-1").await];
    let m = Manifests::new();
    m.write("ingress.yaml", INGRESS);
    m.write(
        "svc.yaml",
        &service("default", "t", 80, "http", "80", &[&ups[0], &ups[1]]),
    );
    let mut cfg = server_config(&m);
    cfg.serving_threads = 2;
    cfg.listen_tls = Some("127.0.0.1:0".parse().unwrap());
    let h = start(cfg).await;

    // Connections of their own (the kernel spreads them over the threads), several
    // requests on each, over pooled upstream connections.
    let mut clients = Vec::new();
    for i in 0..16 {
        let addr = h.http_addr;
        clients.push(tokio::spawn(async move {
            let c = client();
            for j in 0..10 {
                let path = format!("/{i}/{j}?q=1");
                let (status, _, body) = get(&c, addr, "t.example.com", &path).await;
                assert_eq!(status, StatusCode::OK, "{body}");
                assert_eq!(seen(&body)["uri"], path.as_str());
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(ups[0].hits() + ups[1].hits(), 160);

    // An upgraded connection is tunnelled by a task on its thread's runtime.
    let mut s = tokio::net::TcpStream::connect(h.http_addr).await.unwrap();
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: t.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    s.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"ping");
    drop(s);

    // The HTTPS sockets accept on every thread (garbage for a ClientHello: each
    // handshake fails, and is counted).
    let https = h.https_addr.unwrap();
    for _ in 0..8 {
        let mut s = tokio::net::TcpStream::connect(https).await.unwrap();
        s.write_all(b"not a ClientHello\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    }
    let metrics = h.metrics_addr.unwrap();
    let mut errors = 0;
    for _ in 0..100 {
        errors = metric(
            metrics,
            "lb_ingress_tls_handshakes_total",
            &["result=\"error\""],
        )
        .await
        .unwrap();
        if errors >= 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(errors, 8);

    // Shutdown waits for a request in flight on a serving thread, then nothing accepts.
    let addr = h.http_addr;
    let c = client();
    let in_flight =
        tokio::spawn(async move { get(&c, addr, "t.example.com", "/sleep?ms=500").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = Instant::now();
    h.shutdown().await;
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "shutdown did not wait"
    );
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting"
    );
    assert!(
        tokio::net::TcpStream::connect(https).await.is_err(),
        "still accepting HTTPS"
    );
}
