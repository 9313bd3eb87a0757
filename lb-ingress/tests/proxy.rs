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

fn ingress(name: &str, class_line: &str, host: &str, paths: &[(&str, &str, &str, &str)]) -> String {
    let mut y = format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, namespace: default}}\nspec:\n{class_line}  rules:\n  - host: {host}\n    http:\n      paths:\n"
    );
    for (path, kind, svc, port) in paths {
        y += &format!(
            "      - {{path: {path}, pathType: {kind}, backend: {{service: {{name: {svc}, port: {port}}}}}}}\n"
        );
    }
    y
}

async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_404_and_no_ready_endpoint_is_503() {
    let up = Upstream::start("only").await;
    let m = Manifests::new();
    m.write(
        "ingress.yaml",
        &ingress(
            "a",
            "  ingressClassName: lb\n",
            "a.example.com",
            &[
                ("/empty", "Prefix", "empty", "{number: 80}"),
                ("/missing", "Prefix", "missing", "{number: 80}"),
                ("/notready", "Prefix", "notready", "{number: 80}"),
                ("/badport", "Prefix", "ok", "{number: 81}"),
                ("/ok", "Exact", "ok", "{number: 80}"),
            ],
        ),
    );
    let mut svcs = service("default", "ok", 80, "http", "8080", &[&up]);
    svcs += "---\n";
    svcs += &service("default", "empty", 80, "http", "8080", &[]);
    svcs += "---\n";
    svcs += &service("default", "notready", 80, "http", "8080", &[]);
    svcs += &slice("default", "notready", "notready-x", "http", &[up.addr], false);
    m.write("services.yaml", &svcs);
    let h = start(server_config(&m)).await;
    let c = client();
    let (status, headers, _) = get(&c, h.http_addr, "a.example.com", "/ok").await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["server"].to_str().unwrap().starts_with("lb-ingress/"));
    for (host, path, want) in [
        ("b.example.com", "/ok", StatusCode::NOT_FOUND),
        ("a.example.com", "/ok/", StatusCode::NOT_FOUND),
        ("a.example.com", "/other", StatusCode::NOT_FOUND),
        ("a.example.com", "/empty", StatusCode::SERVICE_UNAVAILABLE),
        ("a.example.com", "/missing", StatusCode::SERVICE_UNAVAILABLE),
        ("a.example.com", "/notready/x", StatusCode::SERVICE_UNAVAILABLE),
        ("a.example.com", "/badport", StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let (status, headers, _) = get(&c, h.http_addr, host, path).await;
        assert_eq!(status, want, "{host}{path}");
        assert!(headers.contains_key("server"));
    }
    assert_eq!(up.hits(), 1, "only /ok reached the upstream");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_ports_by_name_with_named_target_ports() {
    let up = Upstream::start("named").await;
    let m = Manifests::new();
    m.write(
        "ingress.yaml",
        &ingress("n", "  ingressClassName: lb\n", "n.example.com", &[("/", "Prefix", "web", "{name: web}")]),
    );
    // Service port "web" (80) -> targetPort "http-alt" (a container port name); the
    // slice's port is named after the Service port and carries the resolved number.
    m.write("svc.yaml", &service("default", "web", 80, "web", "http-alt", &[&up]));
    let h = start(server_config(&m)).await;
    let (status, _, body) = get(&client(), h.http_addr, "n.example.com", "/").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(seen(&body)["name"], "named");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_sees_the_request_unchanged_and_forwarding_headers() {
    let up = Upstream::start("echo").await;
    let m = Manifests::new();
    m.write("ingress.yaml", SEED_INGRESS);
    m.write("svc.yaml", &service("default", "frontend", 3000, "http", "3000", &[&up]));
    let h = start(server_config(&m)).await;
    let c = client();
    let req = hyper::Request::builder()
        .method("DELETE")
        .uri(format!("http://{}/a/b%20c?x=1&y=%2F", h.http_addr))
        .header("host", "shop.example.com:8443")
        .header("x-forwarded-for", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6")
        .header("connection", "x-hop")
        .header("x-hop", "must not pass")
        .header("te", "trailers")
        .header("x-custom", "kept")
        .body(empty())
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["server"].to_str().unwrap().starts_with("lb-ingress/"));
    assert!(!resp.headers().contains_key("keep-alive"), "hop-by-hop response header passed");
    let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
    let v = seen(std::str::from_utf8(&body).unwrap());
    assert_eq!(v["method"], "DELETE");
    assert_eq!(v["uri"], "/a/b%20c?x=1&y=%2F");
    assert_eq!(v["version"], "HTTP/1.1");
    let hdr = |k: &str| v["headers"][k].clone();
    assert_eq!(hdr("host"), serde_json::json!(["shop.example.com:8443"]));
    assert_eq!(hdr("x-forwarded-for"), serde_json::json!(["127.0.0.1"]));
    assert_eq!(hdr("x-forwarded-proto"), serde_json::json!(["http"]));
    assert_eq!(hdr("x-forwarded-host"), serde_json::json!(["shop.example.com:8443"]));
    assert_eq!(
        hdr("forwarded"),
        serde_json::json!(["for=127.0.0.1;host=\"shop.example.com:8443\";proto=http"])
    );
    assert_eq!(hdr("x-custom"), serde_json::json!(["kept"]));
    for gone in ["x-hop", "te", "connection"] {
        assert!(hdr(gone).is_null(), "{gone} reached the upstream: {v}");
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_extend_the_forwarded_chain() {
    let up = Upstream::start("echo").await;
    let m = Manifests::new();
    m.write("ingress.yaml", SEED_INGRESS);
    m.write("svc.yaml", &service("default", "frontend", 3000, "http", "3000", &[&up]));
    let mut cfg = server_config(&m);
    cfg.options.trusted_proxies =
        lb_ingress::proxy::headers::TrustedProxies(vec!["127.0.0.0/8".parse().unwrap()]);
    let h = start(cfg).await;
    let req = hyper::Request::get(format!("http://{}/", h.http_addr))
        .header("host", "shop.example.com")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .body(empty())
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
    let v = seen(std::str::from_utf8(&body).unwrap());
    assert_eq!(v["headers"]["x-forwarded-for"], serde_json::json!(["203.0.113.7, 127.0.0.1"]));
    assert_eq!(v["headers"]["x-forwarded-proto"], serde_json::json!(["https"]));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_tunnelled() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let up = Upstream::start("ws").await;
    let m = Manifests::new();
    m.write("ingress.yaml", SEED_INGRESS);
    m.write("svc.yaml", &service("default", "frontend", 3000, "http", "3000", &[&up]));
    let h = start(server_config(&m)).await;
    let mut s = tokio::net::TcpStream::connect(h.http_addr).await.unwrap();
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: shop.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    // A masked text frame "hello" (RFC 6455 section 5.7), several times: the echo
    // server returns the bytes as they are.
    let frame = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
    for _ in 0..3 {
        s.write_all(&frame).await.unwrap();
        let mut back = [0u8; 11];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, frame);
    }
    drop(s);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_reaches_an_http1_upstream() {
    let up = Upstream::start("h2c").await;
    let m = Manifests::new();
    m.write("ingress.yaml", SEED_INGRESS);
    m.write("svc.yaml", &service("default", "backend", 80, "http", "8080", &[&up]));
    let h = start(server_config(&m)).await;
    let tcp = tokio::net::TcpStream::connect(h.http_addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for i in 0..5 {
        let req = hyper::Request::get(format!("http://shop.example.com/api/{i}?q=1"))
            .body(empty())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), hyper::Version::HTTP_2);
        let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
        let v = seen(std::str::from_utf8(&body).unwrap());
        assert_eq!(v["uri"], format!("/api/{i}?q=1"));
        assert_eq!(v["headers"]["host"], serde_json::json!(["shop.example.com"]));
        assert_eq!(v["version"], "HTTP/1.1");
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_is_cut_off_by_the_header_timeout() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let up = Upstream::start("slow").await;
    let m = Manifests::new();
    m.write("ingress.yaml", SEED_INGRESS);
    m.write("svc.yaml", &service("default", "frontend", 3000, "http", "3000", &[&up]));
    let h = start(server_config(&m)).await;
    let mut s = tokio::net::TcpStream::connect(h.http_addr).await.unwrap();
    let t0 = std::time::Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: shop.example.com\r\n").await.unwrap();
    // Keep trickling header bytes, slower than a real client would.
    let mut buf = [0u8; 1024];
    let closed = loop {
        tokio::select! {
            r = s.read(&mut buf) => break r.map_or(true, |n| n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408")),
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                if s.write_all(b"X-Slow: 1\r\n").await.is_err() { break true; }
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "still connected after 5 s");
    };
    assert!(closed);
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(400), "cut off too early: {took:?}");
    assert!(took < Duration::from_secs(3), "cut off too late: {took:?}");
    assert_eq!(up.hits(), 0);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_431_and_malformed_requests_400_without_upstream() {
    let up = Upstream::start("limits").await;
    let m = Manifests::new();
    m.write("ingress.yaml", SEED_INGRESS);
    m.write("svc.yaml", &service("default", "frontend", 3000, "http", "3000", &[&up]));
    let h = start(server_config(&m)).await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: shop.example.com\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let resp = raw(h.http_addr, big.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: shop.example.com\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: bad host\r\n\r\n",
    ] {
        let resp = raw(h.http_addr, bad).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{}: {resp}", String::from_utf8_lossy(bad));
    }
    let resp = raw(h.http_addr, b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 405"), "{resp}");
    assert_eq!(up.hits(), 0, "a malformed request reached the upstream");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_over_the_limit_are_413() {
    let up = Upstream::start("body").await;
    let m = Manifests::new();
    m.write("ingress.yaml", SEED_INGRESS);
    m.write("svc.yaml", &service("default", "frontend", 3000, "http", "3000", &[&up]));
    let mut cfg = server_config(&m);
    cfg.options.max_body_bytes = 100_000;
    let h = start(cfg).await;
    let c = client();
    let post = |body: BoxBody| {
        hyper::Request::post(format!("http://{}/upload", h.http_addr))
            .header("host", "shop.example.com")
            .body(body)
            .unwrap()
    };
    use http_body_util::BodyExt as _;
    // Within the limit, streamed (chunked): passes.
    let resp = c.request(post(generated_body(90_000).boxed_unsync())).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let n = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&n[..], b"90000");
    // Declared too large: refused before the upstream.
    let hits = up.hits();
    let req = hyper::Request::post(format!("http://{}/upload", h.http_addr))
        .header("host", "shop.example.com")
        .header("content-length", "200000")
        .body(http_body_util::Full::new(bytes::Bytes::from(vec![0u8; 200_000])).map_err(|n| match n {}).boxed_unsync())
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(up.hits(), hits);
    // Chunked and too large: cut off while streaming.
    let resp = client().request(post(generated_body(1_000_000).boxed_unsync())).await;
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
    h.shutdown().await;
}
