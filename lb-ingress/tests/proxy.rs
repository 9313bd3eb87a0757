//! The whole proxy against real upstream servers on loopback, with real clients.
mod common;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use common::*;
use http_body_util::BodyExt as _;
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

/// The seed Ingress with `up` as the frontend Service's one endpoint.
fn seed_manifests(up: &Upstream) -> Manifests {
    let m = Manifests::new();
    m.write("ingress.yaml", SEED_INGRESS);
    m.write(
        "svc.yaml",
        &service("default", "frontend", 3000, "http", "3000", &[up]),
    );
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_path_to_every_replica() {
    let fe = [
        Upstream::start("frontend-0").await,
        Upstream::start("frontend-1").await,
    ];
    let be = [
        Upstream::start("backend-0").await,
        Upstream::start("backend-1").await,
    ];
    let m = Manifests::new();
    m.write("ingress.yaml", SEED_INGRESS);
    m.write(
        "frontend.yaml",
        &service(
            "default",
            "frontend",
            3000,
            "http",
            "3000",
            &[&fe[0], &fe[1]],
        ),
    );
    m.write(
        "backend.yaml",
        &service("default", "backend", 80, "http", "8080", &[&be[0], &be[1]]),
    );
    let h = start(server_config(&m)).await;
    let c = client();
    let mut answered = BTreeSet::new();
    for _ in 0..40 {
        let (status, headers, body) =
            get(&c, h.http_addr, "shop.example.com", "/api/items?id=1").await;
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
    assert!(
        seen(&body)["name"]
            .as_str()
            .unwrap()
            .starts_with("frontend-")
    );
    h.shutdown().await;
}

fn ingress(name: &str, class_line: &str, host: &str, paths: &[(&str, &str, &str, &str)]) -> String {
    let mut y = format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, namespace: default}}\nspec:\n{class_line}  rules:\n  - host: {host}\n    http:\n      paths:\n"
    );
    for (path, kind, svc, port) in paths {
        let _ = writeln!(
            y,
            "      - {{path: {path}, pathType: {kind}, backend: {{service: {{name: {svc}, port: {port}}}}}}}"
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

/// Routing sees the path normalized (as nginx matches locations), the upstream gets it
/// as sent: `/api/../admin` is not the `/api` backend's, whatever it would make of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_route_as_resolved_and_reach_the_upstream_unchanged() {
    let fe = Upstream::start("frontend").await;
    let be = Upstream::start("backend").await;
    let m = seed_manifests(&fe);
    m.write(
        "backend.yaml",
        &service("default", "backend", 80, "http", "8080", &[&be]),
    );
    let h = start(server_config(&m)).await;
    let request = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: shop.example.com\r\nConnection: close\r\n\r\n")
    };
    for (path, upstream) in [
        ("/api/../admin", "frontend"),
        ("/api/%2e%2E/admin", "frontend"),
        ("/static/../api/items", "backend"),
        ("//api//items", "backend"),
        ("/%61pi/items", "backend"),
        ("/api/./items/", "backend"),
        ("/api%2Fitems", "frontend"),
    ] {
        let resp = raw(h.http_addr, request(path).as_bytes()).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{path}: {resp}");
        let body = &resp[resp.find("\r\n\r\n").unwrap() + 4..];
        let v = seen(body);
        assert_eq!(v["name"], upstream, "{path}");
        assert_eq!(v["uri"], path, "the upstream gets the path as sent");
    }
    let hits = fe.hits() + be.hits();
    for path in ["/../etc/passwd", "/api/../../x", "/api%zz", "/api/%2"] {
        let resp = raw(h.http_addr, request(path).as_bytes()).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{path}: {resp}");
    }
    assert_eq!(
        fe.hits() + be.hits(),
        hits,
        "a refused path reached an upstream"
    );
    h.shutdown().await;
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
    svcs += &slice(
        "default",
        "notready",
        "notready-x",
        "http",
        &[up.addr],
        false,
    );
    m.write("services.yaml", &svcs);
    let h = start(server_config(&m)).await;
    let c = client();
    let (status, headers, _) = get(&c, h.http_addr, "a.example.com", "/ok").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["server"]
            .to_str()
            .unwrap()
            .starts_with("lb-ingress/")
    );
    for (host, path, want) in [
        ("b.example.com", "/ok", StatusCode::NOT_FOUND),
        ("a.example.com", "/ok/", StatusCode::NOT_FOUND),
        ("a.example.com", "/other", StatusCode::NOT_FOUND),
        ("a.example.com", "/empty", StatusCode::SERVICE_UNAVAILABLE),
        ("a.example.com", "/missing", StatusCode::SERVICE_UNAVAILABLE),
        (
            "a.example.com",
            "/notready/x",
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        ("a.example.com", "/badport", StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let (status, headers, _) = get(&c, h.http_addr, host, path).await;
        assert_eq!(status, want, "{host}{path}");
        assert!(headers.contains_key("server"));
    }
    assert_eq!(up.hits(), 1, "only /ok reached the upstream");
    h.shutdown().await;
}

/// `--default-backend-service` (ingress-nginx's flag): requests no rule takes (an
/// unknown host, an unmatched path on a known one) go to that Service's first port
/// instead of getting 404; a rule with no ready endpoint still answers 503; an Ingress's
/// own `defaultBackend` comes first; a flag naming no Service is reported and 404 stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_backend_service_takes_what_no_rule_takes() {
    let (up, errors, own) = (
        Upstream::start("up").await,
        Upstream::start("errors").await,
        Upstream::start("own").await,
    );
    let m = Manifests::new();
    m.write(
        "ingress.yaml",
        &ingress(
            "a",
            "  ingressClassName: lb\n",
            "a.example.com",
            &[
                ("/api", "Prefix", "up", "{number: 80}"),
                ("/empty", "Prefix", "empty", "{number: 80}"),
            ],
        ),
    );
    let mut svcs = service("default", "up", 80, "http", "8080", &[&up]);
    svcs += "---\n";
    svcs += &service("default", "empty", 80, "http", "8080", &[]);
    svcs += "---\n";
    svcs += &service("errors", "pages", 8080, "http", "8080", &[&errors]);
    svcs += "---\n";
    svcs += &service("default", "own", 80, "http", "8080", &[&own]);
    m.write("services.yaml", &svcs);
    let config = |flag: Option<&str>| {
        let mut cfg = server_config(&m);
        cfg.scope.default_backend = flag.map(|f| f.parse().unwrap());
        cfg
    };
    let c = client();
    let answers = |h: &lb_ingress::ServerHandle| {
        let (c, addr) = (c.clone(), h.http_addr);
        async move {
            let mut out = Vec::new();
            for (host, path) in [
                ("a.example.com", "/api/x"),
                ("a.example.com", "/other"),
                ("b.example.com", "/"),
                ("a.example.com", "/empty"),
            ] {
                let r = request(&c, addr, "GET", host, path, &[], None).await;
                out.push(format!(
                    "{} {}",
                    r.status.as_u16(),
                    r.upstream_or_text().trim()
                ));
            }
            out
        }
    };
    let mut h = start(config(Some("errors/pages"))).await;
    assert_eq!(
        answers(&h).await,
        [
            "200 up",
            "200 errors",
            "200 errors",
            "503 no ready endpoint for this route"
        ]
    );
    assert_eq!(config_problems(&h).await, Some(0));
    // An Ingress's defaultBackend comes before the flag.
    let generation = h.generation();
    m.write(
        "own.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: own, namespace: default}\nspec:\n  ingressClassName: lb\n  defaultBackend: {service: {name: own, port: {number: 80}}}\n",
    );
    next_generation(&mut h, generation).await;
    assert_eq!(answers(&h).await[..3], ["200 up", "200 own", "200 own"]);
    h.shutdown().await;
    m.remove("own.yaml");

    // A flag naming no Service: reported, and 404 as without it.
    let h = start(config(Some("errors/nope"))).await;
    let no_route = "404 no route for this host and path".to_owned();
    assert_eq!(answers(&h).await[1..3], [no_route.clone(), no_route]);
    assert_eq!(config_problems(&h).await, Some(1));
    h.shutdown().await;
}

/// `--watch-namespace` (as ingress-nginx's): only that namespace's Ingresses are served,
/// also from a manifests directory that holds others (the API server source does not
/// even watch them: lb-k8s's `one_namespace_is_watched_when_asked`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_watched_namespace_is_served() {
    let (in_a, in_b) = (Upstream::start("a").await, Upstream::start("b").await);
    let m = Manifests::new();
    let ing = |ns: &str| {
        ingress(
            "site",
            "  ingressClassName: lb\n",
            &format!("{ns}.example"),
            &[("/", "Prefix", "web", "{number: 80}")],
        )
        .replace("namespace: default", &format!("namespace: {ns}"))
    };
    m.write(
        "ingress.yaml",
        &format!("{}---\n{}", ing("team-a"), ing("team-b")),
    );
    m.write(
        "svc.yaml",
        &format!(
            "{}---\n{}",
            service("team-a", "web", 80, "http", "80", &[&in_a]),
            service("team-b", "web", 80, "http", "80", &[&in_b])
        ),
    );
    let mut cfg = server_config(&m);
    cfg.scope.namespace = Some("team-a".into());
    let h = start(cfg).await;
    let c = client();
    let r = request(&c, h.http_addr, "GET", "team-a.example", "/", &[], None).await;
    assert_eq!((r.status, r.upstream()), (StatusCode::OK, "a".to_owned()));
    let r = request(&c, h.http_addr, "GET", "team-b.example", "/", &[], None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(in_b.hits(), 0);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_ports_by_name_with_named_target_ports() {
    let up = Upstream::start("named").await;
    let m = Manifests::new();
    m.write(
        "ingress.yaml",
        &ingress(
            "n",
            "  ingressClassName: lb\n",
            "n.example.com",
            &[("/", "Prefix", "web", "{name: web}")],
        ),
    );
    // Service port "web" (80) -> targetPort "http-alt" (a container port name); the
    // slice's port is named after the Service port and carries the resolved number.
    m.write(
        "svc.yaml",
        &service("default", "web", 80, "web", "http-alt", &[&up]),
    );
    let h = start(server_config(&m)).await;
    let (status, _, body) = get(&client(), h.http_addr, "n.example.com", "/").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(seen(&body)["name"], "named");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_sees_the_request_unchanged_and_forwarding_headers() {
    let up = Upstream::start("echo").await;
    let m = seed_manifests(&up);
    let h = start(server_config(&m)).await;
    let c = client();
    let req = hyper::Request::builder()
        .method("DELETE")
        .uri(format!("http://{}/a/b%20c?x=1&y=%2F", h.http_addr))
        .header("host", "shop.example.com:8443")
        .header("x-forwarded-for", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6")
        .header("x-real-ip", "6.6.6.6")
        .header("connection", "x-hop")
        .header("x-hop", "must not pass")
        .header("te", "trailers")
        .header("x-custom", "kept")
        .body(empty())
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["server"]
            .to_str()
            .unwrap()
            .starts_with("lb-ingress/")
    );
    assert!(
        !resp.headers().contains_key("keep-alive"),
        "hop-by-hop response header passed"
    );
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let v = seen(std::str::from_utf8(&body).unwrap());
    assert_eq!(v["method"], "DELETE");
    assert_eq!(v["uri"], "/a/b%20c?x=1&y=%2F");
    assert_eq!(v["version"], "HTTP/1.1");
    let hdr = |k: &str| v["headers"][k].clone();
    assert_eq!(hdr("host"), serde_json::json!(["shop.example.com:8443"]));
    assert_eq!(hdr("x-forwarded-for"), serde_json::json!(["127.0.0.1"]));
    assert_eq!(hdr("x-forwarded-proto"), serde_json::json!(["http"]));
    assert_eq!(
        hdr("x-forwarded-host"),
        serde_json::json!(["shop.example.com:8443"])
    );
    assert_eq!(
        hdr("forwarded"),
        serde_json::json!(["for=127.0.0.1;host=\"shop.example.com:8443\";proto=http"])
    );
    assert_eq!(hdr("x-custom"), serde_json::json!(["kept"]));
    // As ingress-nginx: X-Real-IP is the peer (what an untrusted one says is replaced),
    // and a request without an X-Request-ID gets one.
    assert_eq!(hdr("x-real-ip"), serde_json::json!(["127.0.0.1"]));
    let id = hdr("x-request-id")[0].as_str().unwrap().to_owned();
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    for gone in ["x-hop", "te", "connection"] {
        assert!(hdr(gone).is_null(), "{gone} reached the upstream: {v}");
    }
    // Another request gets another id; a client's own id is passed on.
    let again = request(&c, h.http_addr, "GET", "shop.example.com", "/", &[], None).await;
    assert_ne!(seen(&again.body)["headers"]["x-request-id"][0], id.as_str());
    let mine = [("x-request-id", "trace-42")];
    let again = request(&c, h.http_addr, "GET", "shop.example.com", "/", &mine, None).await;
    assert_eq!(
        seen(&again.body)["headers"]["x-request-id"],
        serde_json::json!(["trace-42"])
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_extend_the_forwarded_chain() {
    let up = Upstream::start("echo").await;
    let m = seed_manifests(&up);
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
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let v = seen(std::str::from_utf8(&body).unwrap());
    assert_eq!(
        v["headers"]["x-forwarded-for"],
        serde_json::json!(["203.0.113.7, 127.0.0.1"])
    );
    assert_eq!(
        v["headers"]["x-forwarded-proto"],
        serde_json::json!(["https"])
    );
    // The client a trusted proxy names is the real one.
    assert_eq!(
        v["headers"]["x-real-ip"],
        serde_json::json!(["203.0.113.7"])
    );
    h.shutdown().await;
}

/// Opens a WebSocket through the proxy at `host` and checks the 101.
async fn open_websocket(addr: std::net::SocketAddr, host: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /chat HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    s
}

/// A masked text frame "hello" (RFC 6455 section 5.7) through the tunnel: the echo
/// server returns the bytes as they are.
async fn websocket_echo(s: &mut tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let frame = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    s.write_all(&frame).await.unwrap();
    let mut back = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .expect("the echo in time")
        .expect("the tunnel open");
    assert_eq!(back, frame);
}

/// WebSockets are tunnelled, and a tunnel idle for the route's `proxy-read-timeout`
/// is closed (nginx closes an upgraded connection idle for its proxy_read_timeout),
/// while one in use stays open past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_tunnelled_until_idle() {
    use tokio::io::AsyncReadExt as _;
    let up = Upstream::start("ws").await;
    let m = seed_manifests(&up);
    m.write(
        "short.yaml",
        &annotated(
            "short",
            "short.example",
            "frontend",
            &[("nginx.ingress.kubernetes.io/proxy-read-timeout", "1")],
        )
        .replace("number: 80", "number: 3000"),
    );
    let h = start(server_config(&m)).await;
    let mut s = open_websocket(h.http_addr, "shop.example.com").await;
    for _ in 0..3 {
        websocket_echo(&mut s).await;
    }

    // In use every 400 ms for 2.4 s: open past the 1 s timeout.
    let mut busy = open_websocket(h.http_addr, "short.example").await;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        websocket_echo(&mut busy).await;
    }
    // Then idle: closed by the proxy after about a second.
    let idle_from = Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), busy.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "an idle tunnel is still open after 10 s");
    let after = idle_from.elapsed();
    assert!(
        after >= Duration::from_millis(900),
        "closed after {after:?}, before the timeout"
    );
    assert!(rest.is_empty(), "{rest:?}");
    // The default route's tunnel (60 s) is still open.
    websocket_echo(&mut s).await;
    drop(s);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_reaches_an_http1_upstream() {
    let up = Upstream::start("h2c").await;
    let m = Manifests::new();
    m.write("ingress.yaml", SEED_INGRESS);
    m.write(
        "svc.yaml",
        &service("default", "backend", 80, "http", "8080", &[&up]),
    );
    let h = start(server_config(&m)).await;
    let tcp = tokio::net::TcpStream::connect(h.http_addr).await.unwrap();
    let (mut send, _conn) = h2_client(tcp).await;
    for i in 0..5 {
        let req = hyper::Request::get(format!("http://shop.example.com/api/{i}?q=1"))
            .body(empty())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), hyper::Version::HTTP_2);
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let v = seen(std::str::from_utf8(&body).unwrap());
        assert_eq!(v["uri"], format!("/api/{i}?q=1"));
        assert_eq!(
            v["headers"]["host"],
            serde_json::json!(["shop.example.com"])
        );
        assert_eq!(v["version"], "HTTP/1.1");
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_is_cut_off_by_the_header_timeout() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let up = Upstream::start("slow").await;
    let m = seed_manifests(&up);
    let h = start(server_config(&m)).await;
    let mut s = tokio::net::TcpStream::connect(h.http_addr).await.unwrap();
    let t0 = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: shop.example.com\r\n")
        .await
        .unwrap();
    // Keep trickling header bytes, slower than a real client would.
    let mut buf = [0u8; 1024];
    let closed = loop {
        tokio::select! {
            r = s.read(&mut buf) => break r.map_or(true, |n| n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408")),
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                if s.write_all(b"X-Slow: 1\r\n").await.is_err() { break true; }
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "still connected after 5 s"
        );
    };
    assert!(closed);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "cut off too early: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "cut off too late: {took:?}");
    assert_eq!(up.hits(), 0);
    h.shutdown().await;
}

/// The header read timeout (500 ms in tests) runs while a keep-alive connection waits
/// for its next request head, from the end of the last response; it does not cut a
/// request whose response takes longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_timeout_closes_idle_keep_alive_but_not_a_slow_response() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let up = Upstream::start("keepalive").await;
    let m = seed_manifests(&up);
    let h = start(server_config(&m)).await;
    let mut s = tokio::net::TcpStream::connect(h.http_addr).await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    // Twice the header timeout upstream: the response must still come.
    for ms in [1000, 0] {
        let req = format!("GET /sleep?ms={ms} HTTP/1.1\r\nHost: shop.example.com\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("no response in 5 s")
            .unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(
            head.starts_with("HTTP/1.1 200"),
            "after {ms} ms upstream: {head}"
        );
    }
    let idle_from = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("idle keep-alive connection still open after 5 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "{}", String::from_utf8_lossy(&buf[..n]));
    let took = idle_from.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "closed too early: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "closed too late: {took:?}");
    h.shutdown().await;
}

/// A plain connection is HTTP/2 if it opens with the preface; one that stalls inside it
/// is cut off by the header timeout like a slow HTTP/1 client, and connections that
/// never sent a request do not hold up shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_preface_is_cut_off_and_unused_connections_do_not_delay_shutdown() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let up = Upstream::start("preface").await;
    let m = seed_manifests(&up);
    let h = start(server_config(&m)).await;
    let mut s = tokio::net::TcpStream::connect(h.http_addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("a stalled preface still open after 5 s")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "cut off too early: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "cut off too late: {took:?}");

    // Shutdown's grace is 5 s in tests: connections with nothing sent must not use it.
    let _idle = tokio::net::TcpStream::connect(h.http_addr).await.unwrap();
    let mut half = tokio::net::TcpStream::connect(h.http_addr).await.unwrap();
    half.write_all(b"PRI * HT").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t0 = Instant::now();
    h.shutdown().await;
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "shutdown waited {:?} for unused connections",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_431_and_malformed_requests_400_without_upstream() {
    let up = Upstream::start("limits").await;
    let m = seed_manifests(&up);
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
    let resp = raw(
        h.http_addr,
        b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 405"), "{resp}");
    assert_eq!(up.hits(), 0, "a malformed request reached the upstream");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_over_the_limit_are_413() {
    let up = Upstream::start("body").await;
    let m = seed_manifests(&up);
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
    // Within the limit, streamed (chunked): passes.
    let resp = c
        .request(post(generated_body(90_000).boxed_unsync()))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let n = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&n[..], b"90000");
    // Declared too large: refused before the upstream.
    let hits = up.hits();
    let req = hyper::Request::post(format!("http://{}/upload", h.http_addr))
        .header("host", "shop.example.com")
        .header("content-length", "200000")
        .body(
            http_body_util::Full::new(bytes::Bytes::from(vec![0u8; 200_000]))
                .map_err(|n| match n {})
                .boxed_unsync(),
        )
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(up.hits(), hits);
    // Chunked and too large: cut off while streaming.
    let resp = client()
        .request(post(generated_body(1_000_000).boxed_unsync()))
        .await;
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
    h.shutdown().await;
}

/// Upload timeouts as nginx's: the response timeout counts from the end of the request
/// body, so a slow upload to a working upstream is not cut by it; while the body goes
/// up, a stall longer than the send timeout is the upstream's (504) when it stops
/// taking data, and the client's (408) when it stops sending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_timeouts_count_progress_not_the_whole_upload() {
    let up = Upstream::start("body").await;
    // An upstream that accepts connections and never reads from them (the test does,
    // at the end).
    let stuck = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stuck_addr = stuck.local_addr().unwrap();
    let (held_tx, mut held) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((socket, _)) = stuck.accept().await {
            let _ = held_tx.send(socket);
        }
    });
    let m = seed_manifests(&up);
    m.write(
        "ingress.yaml",
        &(SEED_INGRESS.to_owned() + &annotated("stuck", "stuck.example", "stuck", &[])),
    );
    m.write(
        "stuck.yaml",
        &(service("default", "stuck", 80, "http", "80", &[])
            + &slice("default", "stuck", "stuck-0", "http", &[stuck_addr], true)),
    );
    let mut cfg = server_config(&m);
    cfg.options.response_timeout = Duration::from_millis(400);
    cfg.options.send_timeout = Duration::from_millis(800);
    let h = start(cfg).await;
    // A body of `chunks` KiB, one every `gap`, then (if `stall`) a wait before the end.
    let paced = |chunks: u32, gap: Duration, stall: Duration| {
        let stream = futures::stream::unfold(0u32, move |sent| async move {
            if sent == chunks {
                return None;
            }
            tokio::time::sleep(if sent + 1 == chunks { stall } else { gap }).await;
            let frame = hyper::body::Frame::data(bytes::Bytes::from(vec![b'x'; 1024]));
            Some((Ok::<_, std::io::Error>(frame), sent + 1))
        });
        http_body_util::StreamBody::new(stream).boxed_unsync()
    };
    let post = |host: &str, body: BoxBody| {
        hyper::Request::post(format!("http://{}/upload", h.http_addr))
            .header("host", host)
            .body(body)
            .unwrap()
    };
    // 12 KiB over 1.8 s, a chunk every 150 ms: longer than the response timeout, each
    // stretch within the send timeout.
    let slow = paced(12, Duration::from_millis(150), Duration::from_millis(150));
    let resp = client()
        .request(post("shop.example.com", slow))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let n = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&n[..], b"12288");
    // The client stops for 2 s before its last chunk: 408.
    let stalled = paced(3, Duration::from_millis(50), Duration::from_secs(2));
    let resp = client()
        .request(post("shop.example.com", stalled))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
    // The upstream takes nothing: once the socket buffers are full, 504.
    let resp = client()
        .request(post(
            "stuck.example",
            generated_body(256 << 20).boxed_unsync(),
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    // ...and the exchange is given up for good: the proxy's connection to the stuck
    // upstream is closed (it would otherwise wait on it, holding the client's body, for
    // as long as that upstream keeps the socket open).
    let established_to_stuck = || {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let port = format!(":{:04X}", stuck_addr.port());
        table
            .lines()
            .skip(1)
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3 && f[2].ends_with(&port) && f[3] == "01"
            })
            .count()
    };
    let t0 = Instant::now();
    while established_to_stuck() > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the proxy still holds its connection to the stuck upstream"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...and the upstream connection is closed: what had been sent drains, then the end.
    let mut socket = held.recv().await.unwrap();
    let drained = tokio::time::timeout(Duration::from_secs(30), async {
        use tokio::io::AsyncReadExt as _;
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0usize;
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    })
    .await;
    let total = drained.expect("the proxy still holds its connection to the stuck upstream");
    assert!(total < 64 << 20, "{total} bytes reached the stuck upstream");
    h.shutdown().await;
}

/// A CA and leaf certificates for host names, made in the test.
struct Pki {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "lb-ingress test CA");
        Pki {
            ca: rcgen::CertifiedIssuer::self_signed(p, rcgen::KeyPair::generate().unwrap())
                .unwrap(),
        }
    }

    /// (certificate PEM, key PEM, certificate DER) for `host`.
    fn leaf(&self, host: &str) -> (String, String, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![host.to_owned()])
            .unwrap()
            .signed_by(&key, &self.ca)
            .unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    fn client_config(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let mut c = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        c
    }
}

const TLS_INGRESS: &str = r"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: tls, namespace: default}
spec:
  ingressClassName: lb
  tls:
  - {hosts: [a.example.com], secretName: a-tls}
  - {hosts: ['*.b.example.com'], secretName: b-tls}
  rules:
  - host: a.example.com
    http:
      paths: [{path: /, pathType: Prefix, backend: {service: {name: a, port: {number: 80}}}}]
  - host: '*.b.example.com'
    http:
      paths: [{path: /, pathType: Prefix, backend: {service: {name: b, port: {number: 80}}}}]
";

/// `curl -k -v https://name/x` through `https`: the status code, the certificate
/// subject curl printed, and the body.
async fn curl_insecure(https: std::net::SocketAddr, name: &str) -> (String, String, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-k", "-v", "--resolve"])
        .arg(format!("{name}:{}:127.0.0.1", https.port()))
        .args(["-w", "\n%{http_code}"])
        .arg(format!("https://{name}:{}/x", https.port()))
        .output()
        .await
        .expect("curl (Debian's package) runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "curl {name}: {stderr}");
    let subject = (stderr.lines())
        .find(|l| l.contains("subject:"))
        .unwrap_or_else(|| panic!("curl -v printed no subject: {stderr}"));
    let (body, code) = stdout.rsplit_once('\n').unwrap();
    (code.to_owned(), subject.to_owned(), body.to_owned())
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    config: rustls::ClientConfig,
    sni: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
}

/// `--default-ssl-certificate` (as ingress-nginx's flag): names without a certificate of
/// their own get it (the Host still picks the route), and so do the hosts of a
/// `spec.tls` entry without a `secretName`, which count as TLS hosts (redirected to
/// https). A name with its own certificate keeps it; without the flag such an entry is
/// reported and a name with no certificate gets the self-signed fake certificate
/// (ingress-nginx's subject): `curl -k` reaches the route, a verifying client refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_certificate_covers_names_without_one() {
    let up = Upstream::start("up").await;
    let pki = Pki::new();
    let (own_crt, own_key, own_der) = pki.leaf("own.example.com");
    let (default_crt, default_key, default_der) = pki.leaf("*.example.com");
    let m = Manifests::new();
    let rule = |host: &str| {
        format!(
            "  - host: {host}\n    http:\n      paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: up, port: {{number: 80}}}}}}}}]\n"
        )
    };
    m.write(
        "ingress.yaml",
        &format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: certs, namespace: default}}\nspec:\n  ingressClassName: lb\n  tls:\n  - {{hosts: [own.example.com], secretName: own-tls}}\n  - {{hosts: [listed.example.com]}}\n  rules:\n{}{}{}",
            rule("own.example.com"),
            rule("listed.example.com"),
            rule("plain.example.com"),
        ),
    );
    m.write(
        "secrets.yaml",
        &format!(
            "{}---\n{}",
            lb_tests::manifests::tls_secret_yaml("own-tls", &own_crt, &own_key),
            lb_tests::manifests::tls_secret_yaml("wildcard-tls", &default_crt, &default_key)
        ),
    );
    m.write(
        "svc.yaml",
        &service("default", "up", 80, "http", "80", &[&up]),
    );
    let config = |default: Option<&str>| {
        let mut cfg = server_config(&m);
        cfg.listen_tls = Some("127.0.0.1:0".parse().unwrap());
        cfg.options.redirect_https = true;
        cfg.scope.default_certificate = default.map(|d| d.parse().unwrap());
        cfg
    };
    let tls13 = pki.client_config(&[&rustls::version::TLS13]);

    // Without the flag: no certificate for plain or listed (listed is reported), so
    // the fake one, which a verifying client does not trust; own keeps its own.
    let h = start(config(None)).await;
    let https = h.https_addr.unwrap();
    for name in ["plain.example.com", "listed.example.com"] {
        let err = tls_connect(https, tls13.clone(), name).await.unwrap_err();
        assert!(err.to_string().contains("certificate"), "{name}: {err}");
        let (code, subject, body) = curl_insecure(https, name).await;
        assert_eq!(code, "200", "{name}");
        assert!(
            subject.contains(lb_ingress::tls::FAKE_CERTIFICATE_NAME),
            "{name}: {subject}"
        );
        assert_eq!(seen(&body)["name"], "up");
    }
    let (_, subject, _) = curl_insecure(https, "own.example.com").await;
    assert!(!subject.contains("Fake"), "{subject}");
    assert_eq!(config_problems(&h).await, Some(1));
    h.shutdown().await;

    let h = start(config(Some("default/wildcard-tls"))).await;
    let https = h.https_addr.unwrap();
    for (name, der) in [
        ("own.example.com", &own_der),
        ("listed.example.com", &default_der),
        ("plain.example.com", &default_der),
    ] {
        let tls = tls_connect(https, tls13.clone(), name).await.unwrap();
        assert_eq!(
            tls.get_ref().1.peer_certificates().unwrap()[0].as_ref(),
            der.as_slice(),
            "{name}"
        );
        let (status, _, body) = h2_get(tls, &format!("https://{name}/x"), &[]).await;
        assert_eq!(status, StatusCode::OK, "{name}");
        assert_eq!(seen(&body)["name"], "up");
    }
    // A spec.tls host (with or without its own Secret) is a TLS host: redirected; a host
    // only the default certificate covers is not (as with ingress-nginx).
    let c = client();
    for (host, want) in [
        ("own.example.com", StatusCode::PERMANENT_REDIRECT),
        ("listed.example.com", StatusCode::PERMANENT_REDIRECT),
        ("plain.example.com", StatusCode::OK),
    ] {
        assert_eq!(get(&c, h.http_addr, host, "/").await.0, want, "{host}");
    }
    assert_eq!(config_problems(&h).await, Some(0));
    h.shutdown().await;

    // A flag naming no Secret is reported.
    let h = start(config(Some("default/nope"))).await;
    assert_eq!(config_problems(&h).await, Some(2));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_certificates_by_sni_h2_by_alpn_and_hot_swapped() {
    let (ua, ub) = (Upstream::start("a").await, Upstream::start("b").await);
    let pki = Pki::new();
    let (a_crt, a_key, a_der) = pki.leaf("a.example.com");
    let (b_crt, b_key, b_der) = pki.leaf("*.b.example.com");
    let m = Manifests::new();
    m.write("ingress.yaml", TLS_INGRESS);
    m.write(
        "secrets.yaml",
        &format!(
            "{}---\n{}",
            lb_tests::manifests::tls_secret_yaml("a-tls", &a_crt, &a_key),
            lb_tests::manifests::tls_secret_yaml("b-tls", &b_crt, &b_key)
        ),
    );
    m.write(
        "svc.yaml",
        &format!(
            "{}---\n{}",
            service("default", "a", 80, "http", "80", &[&ua]),
            service("default", "b", 80, "http", "80", &[&ub])
        ),
    );
    let mut cfg = server_config(&m);
    cfg.listen_tls = Some("127.0.0.1:0".parse().unwrap());
    cfg.options.redirect_https = true;
    let mut h = start(cfg).await;
    let https = h.https_addr.unwrap();
    let tls13 = pki.client_config(&[&rustls::version::TLS13]);
    let tls12 = pki.client_config(&[&rustls::version::TLS12]);

    // SNI picks the certificate; ALPN picks HTTP/2; the Host picks the route.
    for (sni, der, upstream, config) in [
        ("a.example.com", &a_der, "a", tls13.clone()),
        ("x.b.example.com", &b_der, "b", tls12.clone()),
    ] {
        let tls = tls_connect(https, config, sni).await.unwrap();
        let (_, session) = tls.get_ref();
        assert_eq!(
            session.peer_certificates().unwrap()[0].as_ref(),
            der.as_slice(),
            "{sni}"
        );
        assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]));
        let (mut send, _conn) = h2_client(tls).await;
        let resp = send
            .send_request(
                hyper::Request::get(format!("https://{sni}/p"))
                    .body(empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let v = seen(std::str::from_utf8(&body).unwrap());
        assert_eq!(v["name"], upstream);
        assert_eq!(
            v["headers"]["x-forwarded-proto"],
            serde_json::json!(["https"])
        );
    }
    // No certificate for this name: the fake one, which the client does not trust.
    assert!(
        tls_connect(https, tls13.clone(), "nope.example.com")
            .await
            .is_err()
    );
    // A wildcard covers one label only.
    assert!(
        tls_connect(https, tls13.clone(), "y.x.b.example.com")
            .await
            .is_err()
    );

    // Plain HTTP for a host with a certificate is redirected.
    let (status, headers, _) = get(&client(), h.http_addr, "a.example.com", "/p?q=1").await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        headers["location"],
        format!("https://a.example.com:{}/p?q=1", https.port()).as_str()
    );

    // curl, once, over HTTP/2 and TLS.
    let ca = m.path().join("..").join(format!("ca-{}.pem", https.port()));
    std::fs::write(&ca, pki.ca.pem()).unwrap();
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--http2", "--cacert"])
        .arg(&ca)
        .args([
            "--resolve",
            &format!("a.example.com:{}:127.0.0.1", https.port()),
        ])
        .args(["-w", "\n%{http_code} %{http_version}"])
        .arg(format!("https://a.example.com:{}/curl?x=1", https.port()))
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_file(&ca);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, tail) = stdout.rsplit_once('\n').unwrap();
    assert_eq!(tail, "200 2");
    assert_eq!(seen(body)["uri"], "/curl?x=1");

    // A new certificate in the Secret is served from the next handshake on.
    let generation = h.generation();
    let (a2_crt, a2_key, a2_der) = pki.leaf("a.example.com");
    m.write(
        "secrets.yaml",
        &format!(
            "{}---\n{}",
            lb_tests::manifests::tls_secret_yaml("a-tls", &a2_crt, &a2_key),
            lb_tests::manifests::tls_secret_yaml("b-tls", &b_crt, &b_key)
        ),
    );
    next_generation(&mut h, generation).await;
    // A fresh client: a resumed session would not carry the certificate again.
    let fresh = pki.client_config(&[&rustls::version::TLS13]);
    let tls = tls_connect(https, fresh, "a.example.com").await.unwrap();
    assert_eq!(
        tls.get_ref().1.peer_certificates().unwrap()[0].as_ref(),
        a2_der.as_slice()
    );

    let metrics = h.metrics_addr.unwrap();
    // The server counts a handshake once it has read the client's Finished, which can
    // come just after the client is done with it: give the last one a moment.
    let mut successes = 0;
    for _ in 0..100 {
        successes = metric(
            metrics,
            "lb_ingress_tls_handshakes_total",
            &["result=\"success\""],
        )
        .await
        .unwrap();
        if successes >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(successes >= 4, "{successes} successful handshakes counted");
    assert!(
        metric(
            metrics,
            "lb_ingress_tls_handshakes_total",
            &["result=\"error\""]
        )
        .await
        .unwrap()
            >= 2
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_http1_and_h2c() {
    let up = Upstream::start("curl").await;
    let m = Manifests::new();
    m.write("ingress.yaml", SEED_INGRESS);
    m.write(
        "svc.yaml",
        &service("default", "backend", 80, "http", "8080", &[&up]),
    );
    let h = start(server_config(&m)).await;
    for extra in [&[][..], &["--http2-prior-knowledge"][..]] {
        let out = tokio::process::Command::new("curl")
            .args([
                "-sS",
                "-H",
                "Host: shop.example.com",
                "-w",
                "\n%{http_code}",
            ])
            .args(extra)
            .arg(format!("http://{}/api/x?y=z", h.http_addr))
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}");
        let (body, code) = stdout.rsplit_once('\n').unwrap();
        assert_eq!(code, "200");
        assert_eq!(seen(body)["uri"], "/api/x?y=z");
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_rule() {
    let up = Upstream::start("m").await;
    let m = Manifests::new();
    m.write("ingress.yaml", SEED_INGRESS);
    m.write(
        "svc.yaml",
        &service("default", "backend", 80, "http", "8080", &[&up]),
    );
    let h = start(server_config(&m)).await;
    let c = client();
    for _ in 0..7 {
        assert_eq!(
            get(&c, h.http_addr, "shop.example.com", "/api/1").await.0,
            StatusCode::OK
        );
    }
    for _ in 0..3 {
        assert_eq!(
            get(&c, h.http_addr, "nowhere", "/").await.0,
            StatusCode::NOT_FOUND
        );
    }
    let addr = h.metrics_addr.unwrap();
    let ok = [
        "ingress=\"default/seed\"",
        "host=\"shop.example.com\"",
        "path=\"/api\"",
        "service=\"default/backend:80\"",
        "status_class=\"2xx\"",
        "method=\"GET\"",
    ];
    // The access-log record (and its metrics) is written when the response body ends;
    // give the last one a moment.
    let mut n = 0;
    for _ in 0..50 {
        n = metric(addr, "lb_ingress_requests_total", &ok)
            .await
            .unwrap_or(0);
        if n >= 7 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(n, 7);
    assert_eq!(
        metric(addr, "lb_ingress_requests_total", &["status_class=\"4xx\""]).await,
        Some(3)
    );
    let text = scrape(addr).await;
    for name in [
        "lb_ingress_request_duration_seconds_bucket",
        "lb_ingress_upstream_response_duration_seconds_count",
        "lb_ingress_ejected_endpoints 0",
        "lb_ingress_active_connections{listener=\"http\"}",
        "lb_ingress_config_reloads_total{result=\"success\"}",
        "lb_ingress_build_info{",
        "lb_ingress_tls_handshakes_total",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    let (status, _, _) = get(&c, addr, "x", "/other").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "only /metrics on the metrics address"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_retried_elsewhere_and_ejected() {
    let up = Upstream::start("alive").await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let m = Manifests::new();
    m.write("ingress.yaml", SEED_INGRESS);
    let mut svc = service("default", "backend", 80, "http", "8080", &[&up]);
    svc += &slice("default", "backend", "backend-dead", "http", &[dead], true);
    m.write("svc.yaml", &svc);
    let h = start(server_config(&m)).await;
    let c = client();
    for i in 0..20 {
        let method = if i % 2 == 0 { "GET" } else { "POST" };
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{}/api/x", h.http_addr))
            .header("host", "shop.example.com")
            .body(empty())
            .unwrap();
        assert_eq!(
            c.request(req).await.unwrap().status(),
            StatusCode::OK,
            "request {i}"
        );
    }
    let addr = h.metrics_addr.unwrap();
    assert_eq!(
        metric(addr, "lb_ingress_ejected_endpoints", &[]).await,
        Some(1)
    );
    let errors = metric(addr, "lb_ingress_upstream_connect_errors_total", &[])
        .await
        .unwrap();
    let retries = metric(addr, "lb_ingress_upstream_retries_total", &[])
        .await
        .unwrap();
    // Ejected after its first failure: one connect error, one retry, then no more tries.
    assert_eq!(errors, 1);
    assert_eq!(retries, 1);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_timeout_is_504_and_upstream_failure_502() {
    let up = Upstream::start("slow").await;
    // An "upstream" that accepts and closes at once.
    let rude = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rude_addr = rude.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = rude.accept().await {
            drop(s);
        }
    });
    let m = Manifests::new();
    m.write(
        "ingress.yaml",
        &ingress(
            "t",
            "  ingressClassName: lb\n",
            "t.example.com",
            &[
                ("/sleep", "Prefix", "slow", "{number: 80}"),
                ("/rude", "Prefix", "rude", "{number: 80}"),
            ],
        ),
    );
    let mut svc = service("default", "slow", 80, "http", "80", &[&up]);
    svc += "---\n";
    svc += &service("default", "rude", 80, "http", "80", &[]);
    svc += &slice("default", "rude", "rude-0", "http", &[rude_addr], true);
    m.write("svc.yaml", &svc);
    let mut cfg = server_config(&m);
    cfg.options.response_timeout = Duration::from_millis(300);
    let h = start(cfg).await;
    let c = client();
    // The second request reuses the first one's upstream connection, and its timer.
    for (ms, want) in [
        (10, StatusCode::OK),
        (3000, StatusCode::GATEWAY_TIMEOUT),
        (10, StatusCode::OK),
        (3000, StatusCode::GATEWAY_TIMEOUT),
    ] {
        let t0 = Instant::now();
        let (status, _, _) =
            get(&c, h.http_addr, "t.example.com", &format!("/sleep?ms={ms}")).await;
        assert_eq!(status, want, "/sleep?ms={ms}");
        assert!(t0.elapsed() < Duration::from_secs(2));
    }
    let (status, _, _) = get(&c, h.http_addr, "t.example.com", "/rude").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_class_selection() {
    let up = Upstream::start("class").await;
    let m = Manifests::new();
    let mut yaml = ingress(
        "mine",
        "  ingressClassName: lb\n",
        "mine.example.com",
        &[("/", "Prefix", "s", "{number: 80}")],
    );
    yaml += "---\n";
    yaml += &ingress(
        "other",
        "  ingressClassName: nginx\n",
        "other.example.com",
        &[("/", "Prefix", "s", "{number: 80}")],
    );
    yaml += "---\n";
    yaml += &ingress(
        "unset",
        "",
        "unset.example.com",
        &[("/", "Prefix", "s", "{number: 80}")],
    );
    yaml += "---\n";
    yaml += &ingress(
        "legacy",
        "",
        "legacy.example.com",
        &[("/", "Prefix", "s", "{number: 80}")],
    )
    .replace(
        "namespace: default}",
        "namespace: default, annotations: {kubernetes.io/ingress.class: lb}}",
    );
    m.write("ingress.yaml", &yaml);
    m.write(
        "svc.yaml",
        &service("default", "s", 80, "http", "80", &[&up]),
    );
    let mut h = start(server_config(&m)).await;
    let c = client();
    let addr = h.http_addr;
    let status = |host: &'static str| {
        let c = c.clone();
        async move { get(&c, addr, host, "/").await.0 }
    };
    assert_eq!(status("mine.example.com").await, StatusCode::OK);
    assert_eq!(status("legacy.example.com").await, StatusCode::OK);
    assert_eq!(status("other.example.com").await, StatusCode::NOT_FOUND);
    assert_eq!(status("unset.example.com").await, StatusCode::NOT_FOUND);
    // Our IngressClass becomes the default: Ingresses without a class are ours too.
    let g = h.generation();
    m.write(
        "class.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata:\n  name: lb\n  annotations: {ingressclass.kubernetes.io/is-default-class: \"true\"}\nspec: {controller: example.com/lb-ingress}\n",
    );
    next_generation(&mut h, g).await;
    assert_eq!(status("unset.example.com").await, StatusCode::OK);
    assert_eq!(status("other.example.com").await, StatusCode::NOT_FOUND);
    // An IngressClass of another name whose spec.controller is ours (lb.dev/ingress,
    // --controller-name) is ours as well: its Ingresses are served; a class of another
    // controller's stays not ours.
    let g = h.generation();
    m.write(
        "more-classes.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: internal}\nspec: {controller: lb.dev/ingress}\n---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: nginx}\nspec: {controller: k8s.io/ingress-nginx}\n",
    );
    m.write(
        "internal.yaml",
        &ingress(
            "internal",
            "  ingressClassName: internal\n",
            "internal.example.com",
            &[("/", "Prefix", "s", "{number: 80}")],
        ),
    );
    next_generation(&mut h, g).await;
    // Both files may land in separate generations.
    let deadline = Instant::now() + Duration::from_secs(10);
    while status("internal.example.com").await != StatusCode::OK {
        assert!(
            Instant::now() < deadline,
            "the internal class is not served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status("other.example.com").await, StatusCode::NOT_FOUND);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests() {
    let up = Upstream::start("drain").await;
    let m = seed_manifests(&up);
    let h = start(server_config(&m)).await;
    let addr = h.http_addr;
    let c = client();
    let in_flight =
        tokio::spawn(async move { get(&c, addr, "shop.example.com", "/sleep?ms=500").await });
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_are_closed() {
    let up = Upstream::start("idle").await;
    let m = seed_manifests(&up);
    let mut cfg = server_config(&m);
    cfg.options.idle_timeout = Duration::from_millis(300);
    let h = start(cfg).await;
    let tcp = tokio::net::TcpStream::connect(h.http_addr).await.unwrap();
    let (mut send, conn) = h2_client(tcp).await;
    let resp = send
        .send_request(
            hyper::Request::get("http://shop.example.com/")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    drop(resp);
    let t0 = Instant::now();
    tokio::time::timeout(Duration::from_secs(3), conn)
        .await
        .expect("idle connection still open after 3 s")
        .unwrap()
        .unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "closed too early"
    );
    h.shutdown().await;
}

/// An h2c (HTTP/2, prior knowledge) upstream that answers as a gRPC server does: the
/// request body echoed back, then the trailer `grpc-status: 0`; what it saw of the
/// request in `x-seen`. Aborting the returned handles closes the connections it has.
async fn h2c_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let handles = std::sync::Arc::clone(&conns);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = hyper::service::service_fn(
                |req: hyper::Request<hyper::body::Incoming>| async move {
                    let seen = format!(
                        "{:?} {} {} authority={} te={}",
                        req.version(),
                        req.method(),
                        req.uri().path_and_query().map_or("", |p| p.as_str()),
                        req.uri().authority().map_or("", |a| a.as_str()),
                        req.headers().get("te").map_or("", |v| v.to_str().unwrap()),
                    );
                    let body = req.into_body().collect().await?.to_bytes();
                    let mut trailers = hyper::HeaderMap::new();
                    trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
                    let frames: Vec<Result<hyper::body::Frame<bytes::Bytes>, std::io::Error>> = vec![
                        Ok(hyper::body::Frame::data(body)),
                        Ok(hyper::body::Frame::trailers(trailers)),
                    ];
                    let resp = hyper::Response::builder()
                        .header("content-type", "application/grpc")
                        .header("x-seen", seen)
                        .body(http_body_util::StreamBody::new(futures::stream::iter(
                            frames,
                        )))
                        .unwrap();
                    Ok::<_, hyper::Error>(resp)
                },
            );
            let task = tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc),
            );
            handles.lock().unwrap().push(task.abort_handle());
        }
    });
    (addr, conns)
}

/// A Service port with `appProtocol: kubernetes.io/h2c` is reached over HTTP/2, so gRPC
/// works through the ingress: trailers come back, `TE: trailers` goes up, the authority
/// and path are the client's, calls share one upstream connection, and a connection the
/// upstream closed is replaced. (One serving thread, as the binary runs with one worker:
/// the proxy keeps one HTTP/2 connection per endpoint and serving thread.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_app_protocol_carries_grpc_with_trailers() {
    let (addr, upstream_conns) = h2c_upstream().await;
    let m = Manifests::new();
    m.write(
        "ingress.yaml",
        &ingress(
            "g",
            "  ingressClassName: lb\n",
            "grpc.example.com",
            &[("/", "Prefix", "greeter", "{number: 50051}")],
        ),
    );
    let mut svc = "apiVersion: v1\nkind: Service\nmetadata: {name: greeter, namespace: default}\nspec:\n  ports:\n  - {name: grpc, port: 50051, targetPort: 50051, protocol: TCP, appProtocol: kubernetes.io/h2c}\n".to_owned();
    svc += &slice("default", "greeter", "greeter-0", "grpc", &[addr], true);
    m.write("svc.yaml", &svc);
    let mut config = server_config(&m);
    config.serving_threads = 1;
    config.options.upstream_idle_timeout = Duration::from_millis(300);
    let h = start(config).await;

    // An HTTP/2 client, as gRPC clients are; several calls share the upstream connection.
    let tcp = tokio::net::TcpStream::connect(h.http_addr).await.unwrap();
    let (mut send, _conn) = h2_client(tcp).await;
    for i in 0..6 {
        if i == 3 {
            // The upstream drops its connection (a restart); once the proxy has seen it
            // close, the next call goes on a new one.
            let aborted: Vec<_> = std::mem::take(&mut *upstream_conns.lock().unwrap());
            assert_eq!(aborted.len(), 1, "3 calls, one upstream connection");
            aborted.iter().for_each(tokio::task::AbortHandle::abort);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let req = hyper::Request::post("http://grpc.example.com/helloworld.Greeter/SayHello")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(bytes::Bytes::from(format!(
                "hello {i}"
            ))))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()["x-seen"],
            "HTTP/2.0 POST /helloworld.Greeter/SayHello authority=grpc.example.com te=trailers"
        );
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected
            .trailers()
            .cloned()
            .expect("trailers through the proxy");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(collected.to_bytes(), format!("hello {i}").as_bytes());
    }
    assert_eq!(
        upstream_conns.lock().unwrap().len(),
        1,
        "a new connection, shared"
    );
    // Unused for the upstream idle timeout, it is closed (the upstream sees it end).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let conns = std::mem::take(&mut *upstream_conns.lock().unwrap());
    assert!(
        conns.iter().all(tokio::task::AbortHandle::is_finished),
        "the idle HTTP/2 connection was closed"
    );

    // An HTTP/1.1 client of the same route gets the body (its trailers have nowhere to go).
    let req = hyper::Request::post(format!("http://{}/x?y=1", h.http_addr))
        .header("host", "grpc.example.com")
        .body(
            http_body_util::Full::new(bytes::Bytes::from_static(b"plain"))
                .map_err(|n| match n {})
                .boxed_unsync(),
        )
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["x-seen"],
        "HTTP/2.0 POST /x?y=1 authority=grpc.example.com te="
    );
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        "plain"
    );
    h.shutdown().await;
}

/// An Ingress for `host` (every path to Service `svc`) with these annotations.
fn annotated(name: &str, host: &str, svc: &str, annotations: &[(&str, &str)]) -> String {
    let mut y = format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: default\n  annotations:\n"
    );
    for (k, v) in annotations {
        let _ = writeln!(y, "    {k}: {v:?}");
    }
    let _ = write!(
        y,
        "spec:\n  ingressClassName: lb\n  rules:\n  - host: {host}\n    http:\n      paths:\n      - {{path: /, pathType: Prefix, backend: {{service: {{name: {svc}, port: {{number: 80}}}}}}}}\n"
    );
    y
}

/// ingress-nginx's annotations (and ours) change what one Ingress's rules do, and no
/// other Ingress's: source allowlist, body size, https redirects, app root, timeouts,
/// backend protocol; a value that cannot be honoured fails closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotations_set_each_ingress_own_policy() {
    let up = Upstream::start("up").await;
    let m = Manifests::new();
    // One Ingress per setting: `name` serves host `name.example`.
    let one = |name: &str, key: &str, value: &str| {
        annotated(name, &format!("{name}.example"), "up", &[(key, value)])
    };
    let nginx = |key: &str| format!("nginx.ingress.kubernetes.io/{key}");
    let ingresses = [
        annotated("plain", "plain.example", "up", &[]),
        one("deny", &nginx("whitelist-source-range"), "192.0.2.0/24"),
        one(
            "allow",
            "ingress.lb.dev/allowlist-source-range",
            "10.0.0.0/8, 127.0.0.1",
        ),
        one("block", &nginx("denylist-source-range"), "192.0.2.0/28"),
        one("small", &nginx("proxy-body-size"), "1k"),
        one("force", &nginx("force-ssl-redirect"), "true"),
        one("root", &nginx("app-root"), "/app/"),
        one("fast", &nginx("proxy-read-timeout"), "300ms"),
        one("tls", &nginx("backend-protocol"), "AJP"),
        one("bad", &nginx("allowlist-source-range"), "10.0.0.300"),
    ];
    // rewrite-prefix on a `/api` rule, and on the `/` of another.
    let rewrite =
        one("rw", "ingress.lb.dev/rewrite-prefix", "/").replace("path: /,", "path: /api/,");
    let rewrite_root = one("rw-root", "ingress.lb.dev/rewrite-prefix", "/v1");
    let moved = annotated(
        "moved",
        "moved.example",
        "up",
        &[
            (
                "nginx.ingress.kubernetes.io/permanent-redirect",
                "https://new.example/home",
            ),
            ("nginx.ingress.kubernetes.io/permanent-redirect-code", "308"),
        ],
    );
    let vhost = annotated(
        "vhost",
        "vhost.example",
        "up",
        &[(
            "nginx.ingress.kubernetes.io/upstream-vhost",
            "internal.svc:8080",
        )],
    );
    m.write(
        "ingress.yaml",
        &(ingresses.concat() + &rewrite + &rewrite_root + &moved + &vhost),
    );
    m.write(
        "svc.yaml",
        &service("default", "up", 80, "http", "80", &[&up]),
    );
    let mut cfg = server_config(&m);
    cfg.options.response_timeout = Duration::from_secs(5);
    // Loopback is a trusted proxy here: its X-Forwarded-For and -Proto are believed.
    cfg.options.trusted_proxies =
        lb_ingress::proxy::headers::TrustedProxies(vec!["127.0.0.1/32".parse().unwrap()]);
    let h = start(cfg).await;
    let c = client();
    // (status, Location) of a GET, or of a POST of `body` bytes.
    let addr = h.http_addr;
    let send = |host: &'static str,
                path: &'static str,
                extra: &[(&'static str, &'static str)],
                body: Option<usize>| {
        let (c, extra) = (c.clone(), extra.to_vec());
        async move {
            let method = if body.is_some() { "POST" } else { "GET" };
            let body = body.map(|n| bytes::Bytes::from(vec![b'x'; n]));
            let r = request(&c, addr, method, host, path, &extra, body).await;
            (r.status, r.header("location"))
        }
    };

    assert_eq!(
        send("plain.example", "/", &[], None).await.0,
        StatusCode::OK
    );
    // Allowlists: the peer (127.0.0.1), or the client a trusted proxy names.
    let hits = up.hits();
    assert_eq!(
        send("deny.example", "/", &[], None).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(up.hits(), hits, "a refused client reaches no upstream");
    let xff = [("x-forwarded-for", "192.0.2.7")];
    assert_eq!(
        send("deny.example", "/", &xff, None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        send("allow.example", "/", &[], None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        send("allow.example", "/", &xff, None).await.0,
        StatusCode::FORBIDDEN
    );
    // Denylist: the client a trusted proxy names is refused, the peer itself is not.
    assert_eq!(
        send("block.example", "/", &xff, None).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send("block.example", "/", &[], None).await.0,
        StatusCode::OK
    );
    // Body size: this Ingress's limit, not the others'.
    assert_eq!(
        send("small.example", "/", &[], Some(1024)).await.0,
        StatusCode::OK
    );
    let hits = up.hits();
    assert_eq!(
        send("small.example", "/", &[], Some(1025)).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(up.hits(), hits);
    assert_eq!(
        send("plain.example", "/", &[], Some(4096)).await.0,
        StatusCode::OK
    );
    // force-ssl-redirect: no certificate needed; no loop behind a TLS-ending proxy.
    let (status, location) = send("force.example", "/p?q=1", &[], None).await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(location.as_deref(), Some("https://force.example/p?q=1"));
    let https = [("x-forwarded-proto", "https")];
    assert_eq!(
        send("force.example", "/p", &https, None).await.0,
        StatusCode::OK
    );
    // app-root: only `/` itself moves.
    let (status, location) = send("root.example", "/", &[], None).await;
    assert_eq!(status, StatusCode::FOUND);
    assert_eq!(location.as_deref(), Some("/app/"));
    assert_eq!(
        send("root.example", "/app/", &[], None).await.0,
        StatusCode::OK
    );
    // proxy-read-timeout: 504 after this Ingress's timeout, not the default 5 s.
    let t0 = Instant::now();
    let (status, _) = send("fast.example", "/sleep?ms=2000", &[], None).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(
        send("plain.example", "/sleep?ms=600", &[], None).await.0,
        StatusCode::OK
    );
    // rewrite-prefix: the matched prefix replaced, the query kept, the prefix named.
    for (host, path, uri, prefix) in [
        ("rw.example", "/api/users?x=1", "/users?x=1", Some("/api")),
        ("rw.example", "/api", "/", Some("/api")),
        ("rw.example", "/x/../api/a%2Fb", "/a%2Fb", Some("/api")),
        ("rw-root.example", "/a", "/v1/a", None),
    ] {
        let (status, _, body) = get(&c, h.http_addr, host, path).await;
        assert_eq!(status, StatusCode::OK, "{host}{path}");
        let v = seen(&body);
        assert_eq!(v["uri"], uri, "{host}{path}");
        let want = prefix.map(|p| serde_json::json!([p]));
        assert_eq!(
            v["headers"].get("x-forwarded-prefix"),
            want.as_ref(),
            "{host}{path}"
        );
    }
    // permanent-redirect: every request, to the URL as given, with the code asked for.
    let (status, location) = send("moved.example", "/any/path?q", &[], None).await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(location.as_deref(), Some("https://new.example/home"));
    // upstream-vhost: the upstream's Host; X-Forwarded-Host keeps the client's.
    let (_, _, body) = get(&c, h.http_addr, "vhost.example", "/").await;
    let v = seen(&body);
    assert_eq!(
        v["headers"]["host"],
        serde_json::json!(["internal.svc:8080"])
    );
    assert_eq!(
        v["headers"]["x-forwarded-host"],
        serde_json::json!(["vhost.example"])
    );
    // What cannot be honoured fails closed: an AJP upstream, a broken allowlist.
    let hits = up.hits();
    assert_eq!(
        send("tls.example", "/", &[], None).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        send("bad.example", "/", &xff, None).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(up.hits(), hits);
    // Both are counted as problems of the configuration serving now.
    assert_eq!(config_problems(&h).await, Some(2));
    h.shutdown().await;
}

/// ingress-nginx's `use-regex` and `rewrite-target`: on a host where some Ingress asks
/// for them, every path (of every Ingress of that host) is a case-insensitive regular
/// expression matched at the start of the path; the rewrite's captures make the upstream
/// path. Other hosts keep the API's matching; an expression or a rewrite that cannot be
/// honoured is reported (and the rewrite's rule fails closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regex_paths_and_rewrite_targets_as_ingress_nginx() {
    let up_a = Upstream::start("a").await;
    let up_b = Upstream::start("b").await;
    let m = Manifests::new();
    let nginx = |key: &str| format!("nginx.ingress.kubernetes.io/{key}");
    let with_path = |yaml: String, path: &str, path_type: &str| {
        yaml.replace(
            "path: /, pathType: Prefix",
            &format!("path: {path:?}, pathType: {path_type}"),
        )
    };
    let ingresses = [
        with_path(
            annotated(
                "rw",
                "rw.example",
                "a",
                &[
                    (&nginx("use-regex"), "true"),
                    (&nginx("rewrite-target"), "/$2"),
                ],
            ),
            "/something(/|$)(.*)",
            "ImplementationSpecific",
        ),
        // No annotation of its own; on rw.example its Exact path is an expression too.
        with_path(
            annotated("exact", "rw.example", "b", &[]),
            "/exact",
            "Exact",
        ),
        with_path(
            annotated("plain", "plain.example", "b", &[]),
            "/exact",
            "Exact",
        ),
        // Look-ahead is not RE2: reported, the path skipped.
        with_path(
            annotated(
                "lookahead",
                "bad.example",
                "a",
                &[(&nginx("use-regex"), "true")],
            ),
            "/(?=x)",
            "ImplementationSpecific",
        ),
        // A capture the path does not have: the rule answers 503.
        with_path(
            annotated(
                "nogroup",
                "nogroup.example",
                "a",
                &[(&nginx("rewrite-target"), "/$3")],
            ),
            "/a(.*)",
            "ImplementationSpecific",
        ),
    ];
    m.write("ingress.yaml", &ingresses.concat());
    m.write(
        "svc.yaml",
        &(service("default", "a", 80, "http", "80", &[&up_a])
            + "---\n"
            + &service("default", "b", 80, "http", "80", &[&up_b])),
    );
    let h = start(server_config(&m)).await;
    let cl = client();
    for (host, path, upstream, uri) in [
        ("rw.example", "/something", "a", "/"),
        ("rw.example", "/something/", "a", "/"),
        ("rw.example", "/something/new?x=1", "a", "/new?x=1"),
        ("rw.example", "/SOMETHING/Deep/Path", "a", "/Deep/Path"),
        // The regex location is anchored at the start only, and case-insensitive.
        ("rw.example", "/EXACTLY?q", "b", "/EXACTLY?q"),
        ("plain.example", "/exact", "b", "/exact"),
    ] {
        let r = request(&cl, h.http_addr, "GET", host, path, &[], None).await;
        assert_eq!(r.status, StatusCode::OK, "{host}{path}");
        assert_eq!(r.upstream(), upstream, "{host}{path}");
        assert_eq!(seen(&r.body)["uri"], uri, "{host}{path}");
    }
    for (host, path, status) in [
        // `(/|$)` wants a slash or the end after /something.
        ("rw.example", "/somethingelse", StatusCode::NOT_FOUND),
        // Exact stays exact where no Ingress asks for expressions.
        ("plain.example", "/exactly", StatusCode::NOT_FOUND),
        ("plain.example", "/EXACT", StatusCode::NOT_FOUND),
        ("bad.example", "/x", StatusCode::NOT_FOUND),
        ("nogroup.example", "/a1", StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let (got, _, _) = get(&cl, h.http_addr, host, path).await;
        assert_eq!(got, status, "{host}{path}");
    }
    assert_eq!(config_problems(&h).await, Some(2));
    h.shutdown().await;
}

/// `auth-type: basic` with ingress-nginx's htpasswd Secret (an Opaque Secret, key
/// `auth`): 401 with the realm's challenge until a user of the file signs in with the
/// right password (Apache MD5 and bcrypt lines here), the upstream never asked before;
/// the same with `auth-secret-type: auth-map` (users as the Secret's keys); no Secret, or
/// digest auth, fails closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_from_an_htpasswd_secret() {
    let up = Upstream::start("up").await;
    let m = Manifests::new();
    let nginx = |key: &str| format!("nginx.ingress.kubernetes.io/{key}");
    let (auth_type, auth_secret) = (nginx("auth-type"), nginx("auth-secret"));
    m.write(
        "ingress.yaml",
        &[
            annotated(
                "staff",
                "staff.example",
                "up",
                &[
                    (&auth_type, "basic"),
                    (&auth_secret, "basic-auth"),
                    (&nginx("auth-realm"), "Staff only"),
                ],
            ),
            annotated(
                "missing",
                "missing.example",
                "up",
                &[(&auth_type, "basic"), (&auth_secret, "no-such-secret")],
            ),
            annotated(
                "digest",
                "digest.example",
                "up",
                &[(&auth_type, "digest"), (&auth_secret, "basic-auth")],
            ),
            annotated("open", "open.example", "up", &[]),
            annotated(
                "mapped",
                "mapped.example",
                "up",
                &[
                    (&auth_type, "basic"),
                    (&auth_secret, "basic-map"),
                    (&nginx("auth-secret-type"), "auth-map"),
                ],
            ),
        ]
        .concat(),
    );
    m.write(
        "secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: basic-auth, namespace: default}\ntype: Opaque\nstringData:\n  auth: |\n    apr:$apr1$Zx8PqL2a$76aYfI91l4FjYZ.6m3AFl0\n    bcrypt:$2y$05$1OySy3v3hiUUxumhXe/bA.Hxp0C4GQGIsOP.AH0r.JkdsrxEpbjjK\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: basic-map, namespace: default}\ntype: Opaque\nstringData:\n  apr: '$apr1$Zx8PqL2a$76aYfI91l4FjYZ.6m3AFl0'\n",
    );
    m.write(
        "svc.yaml",
        &service("default", "up", 80, "http", "80", &[&up]),
    );
    let h = start(server_config(&m)).await;
    let cl = client();
    let send = |host: &'static str, authorization: Option<&'static str>| {
        let cl = cl.clone();
        let extra: Vec<(&'static str, &'static str)> = authorization
            .map(|v| ("authorization", v))
            .into_iter()
            .collect();
        async move { request(&cl, h.http_addr, "GET", host, "/", &extra, None).await }
    };
    for authorization in [None, Some("Basic YXByOndyb25n"), Some("Bearer abc")] {
        let r = send("staff.example", authorization).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{authorization:?}");
        assert_eq!(
            r.header("www-authenticate").as_deref(),
            Some("Basic realm=\"Staff only\""),
        );
    }
    assert_eq!(up.hits(), 0, "nobody reached the upstream unauthenticated");
    for authorization in [
        "Basic YXByOmFwci1zZWNyZXQ=",
        "Basic YmNyeXB0OmJjcnlwdC1zZWNyZXQ=",
        // Remembered once verified.
        "Basic YmNyeXB0OmJjcnlwdC1zZWNyZXQ=",
    ] {
        let r = send("staff.example", Some(authorization)).await;
        assert_eq!(r.status, StatusCode::OK, "{authorization}");
        // As nginx, the header goes on to the upstream.
        assert_eq!(
            seen(&r.body)["headers"]["authorization"],
            serde_json::json!([authorization])
        );
    }
    assert_eq!(up.hits(), 3);
    // auth-secret-type: auth-map: the Secret's keys are the users.
    let r = send("mapped.example", Some("Basic YXByOndyb25n")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = send("mapped.example", Some("Basic YXByOmFwci1zZWNyZXQ=")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(up.hits(), 4);
    for (host, status) in [
        ("missing.example", StatusCode::SERVICE_UNAVAILABLE),
        ("digest.example", StatusCode::SERVICE_UNAVAILABLE),
        ("open.example", StatusCode::OK),
    ] {
        assert_eq!(send(host, None).await.status, status, "{host}");
    }
    // The missing Secret; digest, and its auth-secret that nothing uses.
    assert_eq!(config_problems(&h).await, Some(3));
    h.shutdown().await;
}

/// ExternalName Services as Ingress backends: one naming a Service of another namespace
/// (`name.namespace.svc.cluster.local`, the usual way across namespaces) reaches that
/// Service's endpoints, by number or by the ExternalName's port name; one naming an IP
/// address reaches it; one naming a host outside the cluster reaches what the system
/// resolver says it is (`localhost`, from /etc/hosts); one naming a host that does not
/// resolve answers 503 and is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_name_services_in_the_cluster_by_address_and_by_host_name() {
    let other = Upstream::start("other-ns").await;
    let direct = Upstream::start("direct").await;
    let m = Manifests::new();
    let with_port = |yaml: String, port: &str| yaml.replace("port: {number: 80}", port);
    m.write(
        "ingress.yaml",
        &[
            annotated("alias", "alias.example", "alias", &[]),
            with_port(
                annotated("named", "named.example", "alias", &[]),
                "port: {name: web}",
            ),
            with_port(
                annotated("ip", "ip.example", "by-ip", &[]),
                &format!("port: {{number: {}}}", direct.addr.port()),
            ),
            with_port(
                annotated("outside", "outside.example", "outside", &[]),
                &format!("port: {{number: {}}}", direct.addr.port()),
            ),
            annotated("nowhere", "nowhere.example", "nowhere", &[]),
        ]
        .concat(),
    );
    let external = |name: &str, to: &str| {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  type: ExternalName\n  externalName: {to}\n  ports:\n  - {{name: web, port: 80}}\n"
        )
    };
    m.write(
        "svc.yaml",
        &(service("other", "up", 80, "http", "80", &[&other])
            + &external("alias", "up.other.svc.cluster.local")
            + &external("by-ip", "127.0.0.1")
            + &external("outside", "localhost.")
            + &external("nowhere", "no-such-host.invalid")),
    );
    let h = start(server_config(&m)).await;
    let cl = client();
    // Resolved beside the first configuration: 503 until the answer is in.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = request(&cl, h.http_addr, "GET", "outside.example", "/", &[], None).await;
        if r.status == StatusCode::OK {
            assert_eq!(r.upstream(), "direct");
            break;
        }
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(Instant::now() < deadline, "localhost never resolved");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (host, upstream) in [
        ("alias.example", "other-ns"),
        ("named.example", "other-ns"),
        ("ip.example", "direct"),
    ] {
        let r = request(&cl, h.http_addr, "GET", host, "/", &[], None).await;
        assert_eq!(r.status, StatusCode::OK, "{host}");
        assert_eq!(r.upstream(), upstream, "{host}");
    }
    let (status, _, _) = get(&cl, h.http_addr, "nowhere.example", "/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // The failed resolution is reported once it is known (the resolver's own timeouts
    // are below the deadline).
    while config_problems(&h).await != Some(1) {
        assert!(
            Instant::now() < deadline,
            "the unresolvable host is not reported"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _, _) = get(&cl, h.http_addr, "nowhere.example", "/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    h.shutdown().await;
}

/// `upstream-hash-by`: requests with the same key (a header, a query parameter) go to
/// the same endpoint; different keys spread over the endpoints. With
/// `upstream-hash-by-subset`, a key's requests spread over its set of endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_hash_by_keeps_a_key_on_one_endpoint() {
    // 24 keys on 3 endpoints all on one: a chance of 3 in 3^24.
    const USERS: usize = 24;
    let ups = [
        Upstream::start("u0").await,
        Upstream::start("u1").await,
        Upstream::start("u2").await,
    ];
    let m = Manifests::new();
    let hash_by = "nginx.ingress.kubernetes.io/upstream-hash-by";
    m.write(
        "ingress.yaml",
        &[
            annotated(
                "by-user",
                "user.example",
                "up",
                &[(hash_by, "$http_x_user")],
            ),
            annotated(
                "by-arg",
                "arg.example",
                "up",
                &[(hash_by, "cart-${arg_id}")],
            ),
            annotated(
                "by-set",
                "set.example",
                "up",
                &[
                    (hash_by, "$arg_id"),
                    (
                        "nginx.ingress.kubernetes.io/upstream-hash-by-subset",
                        "true",
                    ),
                    (
                        "nginx.ingress.kubernetes.io/upstream-hash-by-subset-size",
                        "2",
                    ),
                ],
            ),
        ]
        .concat(),
    );
    m.write(
        "svc.yaml",
        &service(
            "default",
            "up",
            80,
            "http",
            "80",
            &[&ups[0], &ups[1], &ups[2]],
        ),
    );
    let h = start(server_config(&m)).await;
    let cl = client();
    let mut by_user = std::collections::HashMap::new();
    for user in 0..USERS {
        let name = format!("user-{user}");
        for _ in 0..4 {
            let r = request(
                &cl,
                h.http_addr,
                "GET",
                "user.example",
                "/",
                &[("x-user", &name)],
                None,
            )
            .await;
            assert_eq!(r.status, StatusCode::OK);
            let first = by_user.entry(user).or_insert_with(|| r.upstream());
            assert_eq!(*first, r.upstream(), "user {user} moved");
        }
    }
    let used: std::collections::HashSet<_> = by_user.values().collect();
    assert!(used.len() >= 2, "{USERS} keys all on {used:?}");
    for id in 0..8 {
        let path = format!("/cart?x=1&id={id}");
        let first = request(&cl, h.http_addr, "GET", "arg.example", &path, &[], None)
            .await
            .upstream();
        for _ in 0..3 {
            let again = request(&cl, h.http_addr, "GET", "arg.example", &path, &[], None).await;
            assert_eq!(again.upstream(), first, "{path}");
        }
    }
    // Sets of two of the three endpoints in address order: {0, 1} and {2, 0}. Each key
    // stays in one set and (30 requests at random) reaches both of its endpoints.
    let mut by_port: Vec<&Upstream> = ups.iter().collect();
    by_port.sort_by_key(|u| u.addr);
    let names = |idx: [usize; 2]| -> BTreeSet<String> {
        idx.iter().map(|&i| by_port[i].name.clone()).collect()
    };
    let sets = [names([0, 1]), names([2, 0])];
    let mut sets_used = BTreeSet::new();
    for id in 0..12 {
        let path = format!("/?id={id}");
        let mut seen = BTreeSet::new();
        for _ in 0..30 {
            let r = request(&cl, h.http_addr, "GET", "set.example", &path, &[], None).await;
            seen.insert(r.upstream());
        }
        let set = sets.iter().position(|s| *s == seen);
        sets_used.insert(set.unwrap_or_else(|| panic!("id {id} reached {seen:?}, not one set")));
    }
    assert_eq!(sets_used.len(), 2, "12 keys all on one set");
    h.shutdown().await;
}

/// `load-balance`: `round_robin` takes the endpoints in turn; `ewma` learns that one
/// endpoint answers slowly and sends (nearly) everything to the other, where balancing
/// by requests in flight would split sequential requests evenly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balance_round_robin_and_ewma() {
    let (fast, slow) = (Upstream::start("fast").await, Upstream::start("slow").await);
    let m = Manifests::new();
    let key = "nginx.ingress.kubernetes.io/load-balance";
    m.write(
        "ingress.yaml",
        &[
            annotated("rr", "rr.example", "up", &[(key, "round_robin")]),
            annotated("ewma", "ewma.example", "up", &[(key, "ewma")]),
        ]
        .concat(),
    );
    m.write(
        "svc.yaml",
        &service("default", "up", 80, "http", "80", &[&fast, &slow]),
    );
    let h = start(server_config(&m)).await;
    assert_eq!(config_problems(&h).await, Some(0));
    let cl = client();
    // The slow upstream takes 30 ms on this path; the fast one answers at once.
    let path = "/misbehave?name=slow&ms=30";
    let mut turns = Vec::new();
    for _ in 0..8 {
        let r = request(&cl, h.http_addr, "GET", "rr.example", path, &[], None).await;
        assert_eq!(r.status, StatusCode::OK);
        turns.push(r.upstream());
    }
    assert!(
        turns.windows(2).all(|w| w[0] != w[1]),
        "round robin alternates: {turns:?}"
    );
    // Each endpoint is measured by its first answer (an unmeasured one is tried first);
    // after that the slow one costs 30 ms against well under 1 ms.
    let mut to_slow = 0;
    for _ in 0..40 {
        let r = request(&cl, h.http_addr, "GET", "ewma.example", path, &[], None).await;
        assert_eq!(r.status, StatusCode::OK);
        to_slow += usize::from(r.upstream() == "slow");
    }
    assert!(
        (1..=3).contains(&to_slow),
        "ewma sent {to_slow} of 40 requests to the slow endpoint"
    );
    h.shutdown().await;
}

/// `limit-rate` / `limit-rate-after`: past the first 64 KB, 256 KB more at 256 KB/s take
/// at least a second; the same download on a host without them takes far less, and
/// every byte arrives either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_rate_paces_responses_past_the_first_kilobytes() {
    let up = Upstream::start("up").await;
    let m = Manifests::new();
    let limits = [
        ("nginx.ingress.kubernetes.io/limit-rate", "256"),
        ("nginx.ingress.kubernetes.io/limit-rate-after", "64"),
    ];
    m.write(
        "ingress.yaml",
        &[
            annotated("slow", "slow.example", "up", &limits),
            annotated("free", "free.example", "up", &[]),
        ]
        .concat(),
    );
    m.write(
        "svc.yaml",
        &service("default", "up", 80, "http", "80", &[&up]),
    );
    let h = start(server_config(&m)).await;
    assert_eq!(config_problems(&h).await, Some(0));
    let cl = client();
    let bytes = (64 + 256) * 1024;
    let path = format!("/download?bytes={bytes}");
    let timed = |host: &'static str| {
        let (cl, path) = (&cl, &path);
        async move {
            let started = std::time::Instant::now();
            let r = request(cl, h.http_addr, "GET", host, path, &[], None).await;
            assert_eq!((r.status, r.body.len()), (StatusCode::OK, bytes), "{host}");
            started.elapsed()
        }
    };
    let free = timed("free.example").await;
    let paced = timed("slow.example").await;
    assert!(
        paced >= Duration::from_millis(950),
        "paced download took {paced:?}"
    );
    assert!(free < paced / 2, "unpaced {free:?}, paced {paced:?}");
    h.shutdown().await;
}

/// `default-backend`: a rule whose Service has no ready endpoint sends its requests to
/// the named Service instead of answering 503; a rule with endpoints keeps them; a
/// default backend that does not exist is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_backend_takes_requests_of_rules_without_endpoints() {
    let live = Upstream::start("live").await;
    let errors = Upstream::start("errors").await;
    let m = Manifests::new();
    let key = "nginx.ingress.kubernetes.io/default-backend";
    m.write(
        "ingress.yaml",
        &[
            annotated("down", "down.example", "dead", &[(key, "errors")]),
            annotated("up", "up.example", "live", &[(key, "errors")]),
            annotated("nowhere", "nowhere.example", "dead", &[(key, "missing")]),
        ]
        .concat(),
    );
    m.write(
        "svc.yaml",
        &(service("default", "dead", 80, "http", "80", &[])
            + "---\n"
            + &service("default", "live", 80, "http", "80", &[&live])
            + "---\n"
            + &service("default", "errors", 80, "http", "80", &[&errors])),
    );
    let h = start(server_config(&m)).await;
    let cl = client();
    for (host, upstream) in [("down.example", "errors"), ("up.example", "live")] {
        let r = request(&cl, h.http_addr, "GET", host, "/x?y=1", &[], None).await;
        assert_eq!(r.status, StatusCode::OK, "{host}");
        assert_eq!(r.upstream(), upstream, "{host}");
        assert_eq!(seen(&r.body)["uri"], "/x?y=1");
    }
    let (status, _, _) = get(&cl, h.http_addr, "nowhere.example", "/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(config_problems(&h).await, Some(1));
    h.shutdown().await;
}

/// `proxy-next-upstream`: with `http_503` an idempotent request answered 503 goes on to
/// the next endpoint, with `timeout` one whose answer is late; without them (the
/// default) the client gets what the first endpoint gave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_upstream_conditions_choose_what_goes_on() {
    let ups = [Upstream::start("bad").await, Upstream::start("good").await];
    let m = Manifests::new();
    let nginx = |k: &str| format!("nginx.ingress.kubernetes.io/{k}");
    m.write(
        "ingress.yaml",
        &[
            annotated("plain", "plain.example", "up", &[]),
            annotated(
                "retry",
                "retry.example",
                "up",
                &[
                    (&nginx("proxy-next-upstream"), "error timeout http_503"),
                    (&nginx("proxy-read-timeout"), "300ms"),
                ],
            ),
        ]
        .concat(),
    );
    m.write(
        "svc.yaml",
        &service("default", "up", 80, "http", "80", &[&ups[0], &ups[1]]),
    );
    let mut cfg = server_config(&m);
    // A retry per request: the budget's reserve (10) would otherwise run out within
    // this test's bursts of failures, as it is meant to.
    cfg.options.retry_ratio = 1.0;
    let h = start(cfg).await;
    let cl = client();
    let statuses = |host: &'static str, path: &'static str| {
        let cl = cl.clone();
        async move {
            let mut seen = Vec::new();
            // P2C between two idle endpoints picks "bad" first about half the time:
            // 16 requests all avoiding it would be a 1 in 65536 chance.
            for _ in 0..16 {
                let r = request(&cl, h.http_addr, "GET", host, path, &[], None).await;
                seen.push((r.status, r.upstream_or_text()));
            }
            seen
        }
    };
    let unavailable = "/misbehave?name=bad&status=503";
    let plain = statuses("plain.example", unavailable).await;
    assert!(
        plain
            .iter()
            .any(|(s, _)| *s == StatusCode::SERVICE_UNAVAILABLE),
        "{plain:?}"
    );
    let retried = statuses("retry.example", unavailable).await;
    assert!(
        retried
            .iter()
            .all(|(s, up)| *s == StatusCode::OK && up == "good"),
        "{retried:?}"
    );
    // "bad" answers after 1 s, past the 300 ms read timeout: the next one is asked.
    let late = statuses("retry.example", "/misbehave?name=bad&ms=1000").await;
    assert!(
        late.iter()
            .all(|(s, up)| *s == StatusCode::OK && up == "good"),
        "{late:?}"
    );
    assert!(metric(h.metrics_addr.unwrap(), "lb_ingress_upstream_retries", &[]).await > Some(0));
    h.shutdown().await;
}

/// `custom-http-errors` with `default-backend`: an upstream answer with a listed status
/// is replaced by the default backend's answer to `GET /`, told what happened as
/// ingress-nginx's error pages are (X-Code, X-Format, X-Original-URI, X-Namespace,
/// X-Ingress-Name, X-Service-Name, X-Service-Port); other statuses pass. Without a
/// default backend the annotation is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_http_errors_come_from_the_default_backend() {
    let app = Upstream::start("app").await;
    let pages = Upstream::start("pages").await;
    let m = Manifests::new();
    let nginx = |k: &str| format!("nginx.ingress.kubernetes.io/{k}");
    m.write(
        "ingress.yaml",
        &[
            annotated(
                "site",
                "site.example",
                "app",
                &[
                    (&nginx("default-backend"), "pages"),
                    (&nginx("custom-http-errors"), "404, 503"),
                ],
            ),
            annotated(
                "alone",
                "alone.example",
                "app",
                &[(&nginx("custom-http-errors"), "404")],
            ),
            annotated(
                "moved",
                "moved.example",
                "app",
                &[
                    (&nginx("default-backend"), "pages"),
                    (&nginx("custom-http-errors"), "404"),
                    ("ingress.lb.dev/rewrite-prefix", "/"),
                ],
            )
            .replace("path: /,", "path: /x,"),
        ]
        .concat(),
    );
    m.write(
        "svc.yaml",
        &(service("default", "app", 80, "http", "80", &[&app])
            + "---\n"
            + &service("default", "pages", 80, "http", "80", &[&pages])),
    );
    let h = start(server_config(&m)).await;
    let cl = client();
    let accept = [("accept", "text/html")];
    let path = "/misbehave?name=app&status=404";
    let r = request(&cl, h.http_addr, "GET", "site.example", path, &accept, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.upstream(), "pages");
    let v = seen(&r.body);
    assert_eq!(v["uri"], "/");
    let hdr = |k: &str| v["headers"][k][0].as_str().unwrap_or_default().to_owned();
    assert_eq!(hdr("x-code"), "404");
    assert_eq!(hdr("x-format"), "text/html");
    assert_eq!(hdr("x-original-uri"), path);
    assert_eq!(hdr("x-namespace"), "default");
    assert_eq!(hdr("x-ingress-name"), "site");
    assert_eq!(hdr("x-service-name"), "app");
    assert_eq!(hdr("x-service-port"), "80");
    assert_eq!(hdr("x-request-id").len(), 32);
    // A status not listed passes as the upstream gave it, and so does everything where
    // no default backend is named.
    for (host, path, status) in [
        ("site.example", "/misbehave?name=app&status=500", 500),
        ("site.example", "/", 200),
        ("alone.example", "/misbehave?name=app&status=404", 404),
    ] {
        let r = request(&cl, h.http_addr, "GET", host, path, &[], None).await;
        assert_eq!(r.status.as_u16(), status, "{host}{path}");
        assert_eq!(
            r.upstream_or_text(),
            if status == 200 { "app" } else { &r.body }
        );
    }
    // X-Original-URI is what the client asked for, not the rewritten path.
    let asked = "/x/misbehave?name=app&status=404";
    let r = request(&cl, h.http_addr, "GET", "moved.example", asked, &[], None).await;
    assert_eq!(r.upstream(), "pages");
    assert_eq!(seen(&r.body)["headers"]["x-original-uri"][0], asked);
    assert_eq!(config_problems(&h).await, Some(1));
    h.shutdown().await;
}

/// `proxy-redirect-from` / `-to`: an upstream's redirect to its own address is made one
/// to the public name; redirects elsewhere are left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_redirects_are_rewritten() {
    let up = Upstream::start("app").await;
    let m = Manifests::new();
    let nginx = |k: &str| format!("nginx.ingress.kubernetes.io/{k}");
    m.write(
        "ingress.yaml",
        &annotated(
            "app",
            "app.example",
            "app",
            &[
                (&nginx("proxy-redirect-from"), "http://app.internal:8080/"),
                (&nginx("proxy-redirect-to"), "https://app.example/"),
            ],
        ),
    );
    m.write(
        "svc.yaml",
        &service("default", "app", 80, "http", "80", &[&up]),
    );
    let h = start(server_config(&m)).await;
    let cl = client();
    for (location, want) in [
        (
            "http://app.internal:8080/login",
            "https://app.example/login",
        ),
        ("http://elsewhere/login", "http://elsewhere/login"),
    ] {
        let path = format!("/misbehave?name=app&status=302&location={location}");
        let r = request(&cl, h.http_addr, "GET", "app.example", &path, &[], None).await;
        assert_eq!(r.status, StatusCode::FOUND);
        assert_eq!(r.header("location").as_deref(), Some(want));
    }
    h.shutdown().await;
}

/// A Service port with `appProtocol: https` is reached over TLS (certificate not
/// verified, as ingress-nginx's default): HTTP/1.1 by ALPN; `backend-protocol: GRPCS`
/// makes it HTTP/2 over TLS; and HTTPS to a plain-HTTP port fails as a connect failure
/// (502), which shows that TLS is really spoken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_upstreams_by_app_protocol_and_annotation() {
    let secure = Upstream::start_tls("secure").await;
    let plain = Upstream::start("plain").await;
    let m = Manifests::new();
    let nginx = "nginx.ingress.kubernetes.io";
    m.write(
        "ingress.yaml",
        &[
            annotated("h1", "h1.example", "secure", &[]),
            annotated(
                "h2",
                "h2.example",
                "secure",
                &[(&format!("{nginx}/backend-protocol"), "GRPCS")],
            ),
            annotated(
                "wrong",
                "wrong.example",
                "plain",
                &[(&format!("{nginx}/backend-protocol"), "HTTPS")],
            ),
        ]
        .concat(),
    );
    let mut svc = "apiVersion: v1\nkind: Service\nmetadata: {name: secure, namespace: default}\nspec:\n  ports:\n  - {name: https, port: 80, targetPort: 8443, protocol: TCP, appProtocol: https}\n".to_owned();
    svc += &slice(
        "default",
        "secure",
        "secure-0",
        "https",
        &[secure.addr],
        true,
    );
    svc += "---\n";
    svc += &service("default", "plain", 80, "http", "80", &[&plain]);
    m.write("svc.yaml", &svc);
    let h = start(server_config(&m)).await;
    let c = client();

    let (status, _, body) = get(&c, h.http_addr, "h1.example", "/a?b=c").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v = seen(&body);
    assert_eq!(v["name"], "secure");
    assert_eq!(v["version"], "HTTP/1.1");
    assert_eq!(v["uri"], "/a?b=c");
    assert_eq!(v["headers"]["host"], serde_json::json!(["h1.example"]));

    let (status, _, body) = get(&c, h.http_addr, "h2.example", "/g").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v = seen(&body);
    assert_eq!(v["version"], "HTTP/2.0");
    assert_eq!(v["uri"], "https://h2.example/g");

    // Both went to the one TLS upstream, over separate pooled connections per protocol.
    assert_eq!(secure.hits(), 2);
    let (status, _, _) = get(&c, h.http_addr, "wrong.example", "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(plain.hits(), 0);
    h.shutdown().await;
}

/// `affinity: cookie` (ingress-nginx's annotation): a client keeps its endpoint while
/// that endpoint is there; a client without the cookie, or whose endpoint has gone, is
/// balanced and given a (new) cookie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_affinity_keeps_a_client_on_its_endpoint() {
    let ups = [
        Upstream::start("s0").await,
        Upstream::start("s1").await,
        Upstream::start("s2").await,
    ];
    let m = Manifests::new();
    let nginx = "nginx.ingress.kubernetes.io";
    m.write(
        "ingress.yaml",
        &annotated(
            "sticky",
            "sticky.example",
            "s",
            &[
                (&format!("{nginx}/affinity"), "cookie"),
                (&format!("{nginx}/session-cookie-name"), "route"),
                (&format!("{nginx}/session-cookie-max-age"), "3600"),
                (&format!("{nginx}/session-cookie-expires"), "3600"),
                (&format!("{nginx}/session-cookie-domain"), "sticky.example"),
                (&format!("{nginx}/session-cookie-secure"), "true"),
            ],
        ),
    );
    let svc = |ups: &[&Upstream]| service("default", "s", 80, "http", "80", ups);
    m.write("svc.yaml", &svc(&[&ups[0], &ups[1], &ups[2]]));
    let mut h = start(server_config(&m)).await;
    let c = client();
    let addr = h.http_addr;
    // (upstream, Set-Cookie) of a GET with `cookie` among others.
    let call = |cookie: Option<String>| {
        let c = c.clone();
        async move {
            let cookie = cookie.map(|k| format!("theme=dark; {k}"));
            let headers: Vec<(&str, &str)> =
                cookie.iter().map(|k| ("cookie", k.as_str())).collect();
            let r = request(&c, addr, "GET", "sticky.example", "/", &headers, None).await;
            assert_eq!(r.status, StatusCode::OK);
            (r.upstream(), r.header("set-cookie"))
        }
    };

    // No cookie: balanced, and told where it went.
    let (first, set) = call(None).await;
    let set = set.expect("a cookie for a new client");
    assert!(set.starts_with("route="), "{set}");
    assert!(
        set.contains("; Path=/; HttpOnly; Max-Age=3600; Expires="),
        "{set}"
    );
    // Secure although this request is plain HTTP: session-cookie-secure.
    assert!(set.ends_with("; Domain=sticky.example; Secure"), "{set}");
    let cookie = set.split(';').next().unwrap().to_owned();
    // With it: the same endpoint every time, and no new cookie.
    for _ in 0..12 {
        assert_eq!(call(Some(cookie.clone())).await, (first.clone(), None));
    }
    // A cookie naming no endpoint is replaced.
    let (_, set) = call(Some("route=00000000deadbeef".to_owned())).await;
    assert!(set.is_some_and(|s| s.starts_with("route=")));

    // Its endpoint leaves the Service: the client goes elsewhere, with a new cookie.
    let generation = h.generation();
    let rest: Vec<&Upstream> = ups.iter().filter(|u| u.name != first).collect();
    m.write("svc.yaml", &svc(&rest));
    next_generation(&mut h, generation).await;
    let (moved, set) = call(Some(cookie.clone())).await;
    assert_ne!(moved, first);
    let new_cookie = set
        .expect("a new cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert_ne!(new_cookie, cookie);
    for _ in 0..6 {
        assert_eq!(call(Some(new_cookie.clone())).await, (moved.clone(), None));
    }
    h.shutdown().await;
}

/// `session-cookie-change-on-failure`: a client whose endpoint is still in the Service
/// but refuses connections is served by another; by default its cookie moves there, with
/// `false` it keeps naming the first (which may come back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sticky_endpoint_moves_the_cookie_unless_told_not_to() {
    let live = Upstream::start("live").await;
    // A port nothing listens on: connections to it are refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let m = Manifests::new();
    let nginx = |k: &str| format!("nginx.ingress.kubernetes.io/{k}");
    let (affinity, change) = (nginx("affinity"), nginx("session-cookie-change-on-failure"));
    m.write(
        "ingress.yaml",
        &[
            annotated("moves", "moves.example", "s", &[(&affinity, "cookie")]),
            annotated(
                "stays",
                "stays.example",
                "s",
                &[(&affinity, "cookie"), (&change, "false")],
            ),
        ]
        .concat(),
    );
    m.write(
        "svc.yaml",
        &(service("default", "s", 80, "http", "80", &[&live])
            + &slice("default", "s", "s-dead", "http", &[dead], true)),
    );
    let h = start(server_config(&m)).await;
    let cl = client();
    // The cookie a client of the dead endpoint would carry (FNV-1a of its address).
    let key = dead
        .to_string()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    let cookie = format!("INGRESSCOOKIE={key:016x}");
    for (host, moves) in [("moves.example", true), ("stays.example", false)] {
        let r = request(
            &cl,
            h.http_addr,
            "GET",
            host,
            "/",
            &[("cookie", &cookie)],
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{host}");
        assert_eq!(r.upstream(), "live", "{host}");
        assert_eq!(r.header("set-cookie").is_some(), moves, "{host}");
    }
    h.shutdown().await;
}

/// `limit-rps` (ingress-nginx's annotation): per client address, a burst of
/// `limit-burst-multiplier` times the rate, then 429 with `Retry-After`; other clients
/// and `limit-allowlist` ones are not held back, and a reload does not refill anyone's
/// bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_per_client_survive_reloads() {
    let up = Upstream::start("up").await;
    let m = Manifests::new();
    let nginx = "nginx.ingress.kubernetes.io";
    let limited = annotated(
        "limited",
        "limited.example",
        "up",
        &[
            (&format!("{nginx}/limit-rps"), "1"),
            (&format!("{nginx}/limit-burst-multiplier"), "3"),
            (&format!("{nginx}/limit-allowlist"), "192.0.2.9"),
        ],
    );
    m.write("ingress.yaml", &limited);
    m.write(
        "svc.yaml",
        &service("default", "up", 80, "http", "80", &[&up]),
    );
    let mut cfg = server_config(&m);
    cfg.options.trusted_proxies =
        lb_ingress::proxy::headers::TrustedProxies(vec!["127.0.0.1/32".parse().unwrap()]);
    let mut h = start(cfg).await;
    let c = client();
    let addr = h.http_addr;
    // (status, Retry-After) of a GET from `client` (by a trusted X-Forwarded-For).
    let call = |client: &'static str| {
        let c = c.clone();
        async move {
            let xff = [("x-forwarded-for", client)];
            let r = request(&c, addr, "GET", "limited.example", "/", &xff, None).await;
            (r.status, r.header("retry-after"))
        }
    };
    // A burst of 3 (1 per second, times 3), then refused.
    for _ in 0..3 {
        assert_eq!(call("198.51.100.1").await, (StatusCode::OK, None));
    }
    let hits = up.hits();
    assert_eq!(
        call("198.51.100.1").await,
        (StatusCode::TOO_MANY_REQUESTS, Some("1".to_owned()))
    );
    assert_eq!(up.hits(), hits, "a refused request reaches no upstream");
    // Another client has its own bucket; an allowlisted one has none.
    assert_eq!(call("198.51.100.2").await.0, StatusCode::OK);
    for _ in 0..6 {
        assert_eq!(call("192.0.2.9").await.0, StatusCode::OK);
    }
    // A reload (another Ingress added) keeps the limiter and its state.
    let generation = h.generation();
    m.write(
        "other.yaml",
        &annotated("other", "other.example", "up", &[]),
    );
    next_generation(&mut h, generation).await;
    assert_eq!(call("198.51.100.1").await.0, StatusCode::TOO_MANY_REQUESTS);
    // A second later there is room for one more.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(call("198.51.100.1").await.0, StatusCode::OK);
    assert_eq!(call("198.51.100.1").await.0, StatusCode::TOO_MANY_REQUESTS);
    h.shutdown().await;
}

/// `enable-cors` (ingress-nginx's annotations): a preflight is answered 204 here with
/// the allowed methods and headers; an actual request from an allowed origin gets the
/// origin back (and `Vary: Origin`), one from another origin gets no CORS headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_and_response_headers() {
    let up = Upstream::start("up").await;
    let m = Manifests::new();
    let nginx = "nginx.ingress.kubernetes.io";
    m.write(
        "ingress.yaml",
        &[
            annotated(
                "cors",
                "api.example",
                "up",
                &[
                    (&format!("{nginx}/enable-cors"), "true"),
                    (
                        &format!("{nginx}/cors-allow-origin"),
                        "https://app.example, https://*.tools.example",
                    ),
                    (&format!("{nginx}/cors-expose-headers"), "X-Upstream"),
                    (&format!("{nginx}/cors-max-age"), "600"),
                ],
            ),
            annotated(
                "any",
                "any.example",
                "up",
                &[(&format!("{nginx}/enable-cors"), "true")],
            ),
        ]
        .concat(),
    );
    m.write(
        "svc.yaml",
        &service("default", "up", 80, "http", "80", &[&up]),
    );
    let h = start(server_config(&m)).await;
    let c = client();
    let addr = h.http_addr;
    let call =
        |method: &'static str, host: &'static str, headers: Vec<(&'static str, &'static str)>| {
            let c = c.clone();
            async move {
                let r = request(&c, addr, method, host, "/x", &headers, None).await;
                (r.status, r.headers)
            }
        };
    let hits = up.hits();
    let (status, headers) = call(
        "OPTIONS",
        "api.example",
        vec![
            ("origin", "https://app.example"),
            ("access-control-request-method", "PUT"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(headers["access-control-allow-credentials"], "true");
    assert_eq!(
        headers["access-control-allow-methods"],
        "GET, PUT, POST, DELETE, PATCH, OPTIONS"
    );
    assert!(headers.contains_key("access-control-allow-headers"));
    assert_eq!(headers["access-control-max-age"], "600");
    assert_eq!(up.hits(), hits, "a preflight is answered here");

    // Actual requests: allowed origins (one by wildcard) are echoed, others get nothing.
    for origin in ["https://app.example", "https://a.b.tools.example"] {
        let (status, headers) = call("GET", "api.example", vec![("origin", origin)]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["access-control-allow-origin"], origin);
        assert_eq!(headers["access-control-expose-headers"], "X-Upstream");
        assert_eq!(headers["vary"], "Origin");
        assert!(!headers.contains_key("access-control-allow-methods"));
    }
    for origin in [
        "https://evil.example",
        "https://tools.example",
        "http://app.example",
    ] {
        let (status, headers) = call("GET", "api.example", vec![("origin", origin)]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            !headers.contains_key("access-control-allow-origin"),
            "{origin}"
        );
    }
    // Any origin: `*`, and a plain OPTIONS (no preflight) goes to the upstream.
    let (_, headers) = call("GET", "any.example", vec![("origin", "https://x.example")]).await;
    assert_eq!(headers["access-control-allow-origin"], "*");
    let hits = up.hits();
    let (status, _) = call("OPTIONS", "any.example", vec![]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(up.hits(), hits + 1);
    h.shutdown().await;
}

/// ingress-nginx's canaries: an Ingress with `canary: "true"` takes some requests of the
/// main Ingress's rule with the same host and path: by header (`always`/`never`, or a
/// given value), then by cookie, then by weight. A canary without a main rule serves
/// nothing (reported).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_ingresses_take_requests_by_header_cookie_and_weight() {
    let (main, canary) = (
        Upstream::start("main").await,
        Upstream::start("canary").await,
    );
    let m = Manifests::new();
    let nginx = "nginx.ingress.kubernetes.io";
    let with_path = |y: String, path: &str| y.replace("path: /,", &format!("path: {path},"));
    m.write(
        "ingress.yaml",
        &[
            annotated("main", "c.example", "main", &[]),
            annotated(
                "main-canary",
                "c.example",
                "canary",
                &[
                    (&format!("{nginx}/canary"), "true"),
                    (&format!("{nginx}/canary-by-header"), "X-Canary"),
                    (&format!("{nginx}/canary-by-cookie"), "canary"),
                    (&format!("{nginx}/canary-weight"), "30"),
                ],
            ),
            with_path(annotated("v-main", "c.example", "main", &[]), "/v"),
            with_path(
                annotated(
                    "v-canary",
                    "c.example",
                    "canary",
                    &[
                        (&format!("{nginx}/canary"), "true"),
                        (&format!("{nginx}/canary-by-header"), "X-Version"),
                        (&format!("{nginx}/canary-by-header-value"), "v2"),
                    ],
                ),
                "/v",
            ),
            annotated(
                "orphan",
                "orphan.example",
                "canary",
                &[(&format!("{nginx}/canary"), "true")],
            ),
        ]
        .concat(),
    );
    m.write(
        "svc.yaml",
        &[
            service("default", "main", 80, "http", "80", &[&main]),
            service("default", "canary", 80, "http", "80", &[&canary]),
        ]
        .join("---\n"),
    );
    let h = start(server_config(&m)).await;
    let c = client();
    let addr = h.http_addr;
    // The upstream that answers a GET of `path` with these headers.
    let call = |path: &'static str, headers: Vec<(&'static str, &'static str)>| {
        let c = c.clone();
        async move {
            let r = request(&c, addr, "GET", "c.example", path, &headers, None).await;
            assert_eq!(r.status, StatusCode::OK);
            r.upstream()
        }
    };
    for (headers, want) in [
        (vec![("x-canary", "always")], "canary"),
        (
            vec![("x-canary", "never"), ("cookie", "canary=always")],
            "main",
        ),
        (vec![("cookie", "a=b; canary=always")], "canary"),
        (
            vec![("x-canary", "maybe"), ("cookie", "canary=never")],
            "main",
        ),
    ] {
        for _ in 0..5 {
            assert_eq!(call("/", headers.clone()).await, want, "{headers:?}");
        }
    }
    // By weight: about 30 in 100.
    let mut to_canary = 0;
    for _ in 0..400 {
        if call("/", vec![]).await == "canary" {
            to_canary += 1;
        }
    }
    assert!(
        (80..=160).contains(&to_canary),
        "{to_canary} of 400 to the canary"
    );
    // By header value: only that value; no weight, so nothing else.
    assert_eq!(call("/v", vec![("x-version", "v2")]).await, "canary");
    for v in ["always", "v1"] {
        assert_eq!(call("/v", vec![("x-version", v)]).await, "main");
    }
    assert_eq!(call("/v", vec![]).await, "main");
    // A canary of nothing is no route of its own.
    let (status, _, _) = get(&c, addr, "orphan.example", "/").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(config_problems(&h).await, Some(1));
    h.shutdown().await;
}

/// An auth service for `auth-url`: 2xx with `X-Auth-Request-User` for `Bearer good`,
/// 403 for `Bearer banned`, 500 for `Bearer boom`, else 401. It records the
/// `X-Original-URL` and `X-Original-Method` it was sent.
/// Over TLS with a self-signed certificate when `tls`.
async fn auth_service(
    tls: bool,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use hyper_util::rt::TokioIo;
    let acceptor = tls.then(|| {
        let cert = rcgen::generate_simple_self_signed(vec!["auth.invalid".to_owned()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = std::sync::Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = std::sync::Arc::clone(&log);
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let h = |n: &str| {
                        req.headers()
                            .get(n)
                            .map_or(String::new(), |v| v.to_str().unwrap().to_owned())
                    };
                    log.lock().unwrap().push(format!(
                        "{} {} {} {}",
                        req.method(),
                        h("x-original-method"),
                        h("x-original-url"),
                        h("content-length")
                    ));
                    let (status, user) = match h("authorization").as_str() {
                        "Bearer good" => (200, Some("alice")),
                        "Bearer anonymous" => (200, None),
                        "Bearer banned" => (403, None),
                        "Bearer boom" => (500, None),
                        _ => (401, None),
                    };
                    let mut resp = hyper::Response::builder().status(status);
                    if let Some(u) = user {
                        resp = resp
                            .header("x-auth-request-user", u)
                            .header("x-other", "no");
                    }
                    if status == 401 {
                        resp = resp.header("www-authenticate", "Bearer realm=\"test\"");
                    }
                    let resp = resp
                        .body(http_body_util::Empty::<bytes::Bytes>::new())
                        .unwrap();
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let server = hyper::server::conn::http1::Builder::new();
                match acceptor {
                    Some(a) => {
                        if let Ok(tls) = a.accept(stream).await {
                            let _ = server.serve_connection(TokioIo::new(tls), svc).await;
                        }
                    }
                    None => {
                        let _ = server.serve_connection(TokioIo::new(stream), svc).await;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// `satisfy: any` (nginx's): the source ranges, basic auth and `auth-url` each suffice.
/// An address the allowlist admits is asked for nothing (and a client's own
/// `X-Auth-Request-User` still never passes); another is served with good basic
/// credentials or when the auth service lets it through; refused by all, 401 (with the
/// basic challenge) wins over the auth service's 403. `satisfy: all` (the default) asks
/// an admitted address for credentials too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn satisfy_any_lets_one_check_suffice() {
    let up = Upstream::start("up").await;
    let (auth, seen_by_auth) = auth_service(false).await;
    let m = Manifests::new();
    let n = |key: &str| format!("nginx.ingress.kubernetes.io/{key}");
    let auth_url = format!("http://{auth}/check");
    let basic = [(n("auth-type"), "basic"), (n("auth-secret"), "basic-auth")];
    let ing = |name: &str, extra: &[(String, &str)]| {
        let pairs: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        annotated(name, &format!("{name}.example"), "up", &pairs)
    };
    let here = (n("allowlist-source-range"), "127.0.0.0/8");
    let elsewhere = (n("allowlist-source-range"), "10.0.0.0/8");
    let any = (n("satisfy"), "any");
    let url = (n("auth-url"), auth_url.as_str());
    let user_header = (n("auth-response-headers"), "X-Auth-Request-User");
    m.write(
        "ingress.yaml",
        &[
            ing(
                "admitted",
                &[here.clone(), any.clone(), url.clone(), user_header.clone()],
            ),
            ing(
                "strict",
                &[here.clone(), basic[0].clone(), basic[1].clone()],
            ),
            ing(
                "outsider",
                &[
                    elsewhere.clone(),
                    any.clone(),
                    basic[0].clone(),
                    basic[1].clone(),
                    url.clone(),
                ],
            ),
            ing("external", &[elsewhere.clone(), any.clone(), url.clone()]),
        ]
        .concat(),
    );
    m.write(
        "secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: basic-auth, namespace: default}\ntype: Opaque\nstringData:\n  auth: |\n    apr:$apr1$Zx8PqL2a$76aYfI91l4FjYZ.6m3AFl0\n",
    );
    m.write(
        "svc.yaml",
        &service("default", "up", 80, "http", "80", &[&up]),
    );
    let h = start(server_config(&m)).await;
    let cl = client();
    let send = |host: &'static str, headers: &'static [(&'static str, &'static str)]| {
        let cl = cl.clone();
        async move { request(&cl, h.http_addr, "GET", host, "/", headers, None).await }
    };
    let asked = || seen_by_auth.lock().unwrap().len();

    // Admitted by address: nothing asked, and the client's own auth header is dropped.
    let r = send("admitted.example", &[("x-auth-request-user", "mallory")]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let seen = seen(&r.body);
    assert!(
        seen["headers"].get("x-auth-request-user").is_none(),
        "{seen}"
    );
    assert_eq!(asked(), 0);
    // satisfy all: the same address still needs credentials.
    assert_eq!(
        send("strict.example", &[]).await.status,
        StatusCode::UNAUTHORIZED
    );
    let good_basic: &[(&str, &str)] = &[("authorization", "Basic YXByOmFwci1zZWNyZXQ=")];
    assert_eq!(
        send("strict.example", good_basic).await.status,
        StatusCode::OK
    );

    // Not admitted by address: good basic credentials suffice (the service is not asked),
    // so does the auth service's yes; refused by both, the basic challenge wins.
    assert_eq!(
        send("outsider.example", good_basic).await.status,
        StatusCode::OK
    );
    assert_eq!(asked(), 0);
    let r = send("outsider.example", &[("authorization", "Bearer good")]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(asked(), 1);
    let r = send("outsider.example", &[("authorization", "Bearer banned")]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        r.header("www-authenticate")
            .is_some_and(|v| v.starts_with("Basic")),
        "{:?}",
        r.header("www-authenticate")
    );
    // Without basic auth the service's own answer stands: 403, or through.
    let r = send("external.example", &[("authorization", "Bearer banned")]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = send("external.example", &[("authorization", "Bearer good")]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(up.hits(), 5);
    assert_eq!(config_problems(&h).await, Some(0));
    h.shutdown().await;
}

/// `auth-url` (ingress-nginx's external auth, as used with oauth2-proxy): the request
/// head goes to the auth service first; 2xx lets it through with the named auth
/// response headers, 401 comes back (or redirects to `auth-signin` with `rd=`), 403
/// comes back, anything else is a 500, and an auth URL that cannot be used fails closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_auth_guards_the_upstream() {
    let up = Upstream::start("up").await;
    let (auth, seen_by_auth) = auth_service(false).await;
    let (auth_tls, seen_over_tls) = auth_service(true).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let m = Manifests::new();
    let nginx = "nginx.ingress.kubernetes.io";
    let auth_url = format!("http://{auth}/check?host=$host");
    m.write(
        "ingress.yaml",
        &[
            annotated(
                "a",
                "a.example",
                "up",
                &[
                    (&format!("{nginx}/auth-url"), &auth_url),
                    (
                        &format!("{nginx}/auth-response-headers"),
                        "X-Auth-Request-User",
                    ),
                ],
            ),
            annotated(
                "b",
                "b.example",
                "up",
                &[
                    (&format!("{nginx}/auth-url"), &auth_url),
                    (
                        &format!("{nginx}/auth-signin"),
                        "https://login.example/start",
                    ),
                ],
            ),
            annotated(
                "down",
                "down.example",
                "up",
                &[(
                    &format!("{nginx}/auth-url"),
                    &format!("http://{closed}/check"),
                )],
            ),
            annotated(
                "bad",
                "bad.example",
                "up",
                &[(&format!("{nginx}/auth-url"), "ftp://auth.example/check")],
            ),
            annotated(
                "tls",
                "tls.example",
                "up",
                &[(
                    &format!("{nginx}/auth-url"),
                    &format!("https://{auth_tls}/check"),
                )],
            ),
        ]
        .concat(),
    );
    m.write(
        "svc.yaml",
        &service("default", "up", 80, "http", "80", &[&up]),
    );
    let h = start(server_config(&m)).await;
    let c = client();
    let addr = h.http_addr;
    // A POST with a body and, maybe, a bearer token: (status, headers, body).
    let call = |host: &'static str, token: Option<&'static str>| {
        let c = c.clone();
        async move {
            let auth = token.map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> =
                auth.iter().map(|a| ("authorization", a.as_str())).collect();
            let payload = Some(bytes::Bytes::from_static(b"payload"));
            let r = request(&c, addr, "POST", host, "/p?q=1", &headers, payload).await;
            (r.status, r.headers, r.body)
        }
    };

    let (status, _, body) = call("a.example", Some("good")).await;
    assert_eq!(status, StatusCode::OK);
    let v = seen(&body);
    assert_eq!(
        v["headers"]["x-auth-request-user"],
        serde_json::json!(["alice"])
    );
    assert!(
        v["headers"].get("x-other").is_none(),
        "only the named headers"
    );
    assert_eq!(
        seen_by_auth.lock().unwrap().last().unwrap(),
        "GET POST http://a.example/p?q=1 ",
        "the head only, as a GET, with the original method and URL"
    );
    // A client cannot name itself: its own X-Auth-Request-User is dropped, whether the
    // auth answer sets one or not.
    for (token, want) in [("good", Some("alice")), ("anonymous", None)] {
        let req = hyper::Request::get(format!("http://{addr}/p"))
            .header("host", "a.example")
            .header("authorization", format!("Bearer {token}"))
            .header("x-auth-request-user", "mallory")
            .body(empty())
            .unwrap();
        let resp = c.request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v = seen(std::str::from_utf8(&body).unwrap());
        let want = want.map(|u| serde_json::json!([u]));
        assert_eq!(
            v["headers"].get("x-auth-request-user"),
            want.as_ref(),
            "{token}"
        );
    }
    let hits = up.hits();
    let (status, headers, _) = call("a.example", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], "Bearer realm=\"test\"");
    assert_eq!(
        call("a.example", Some("banned")).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call("a.example", Some("boom")).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(up.hits(), hits, "no refused request reaches the upstream");

    let (status, headers, _) = call("b.example", None).await;
    assert_eq!(status, StatusCode::FOUND);
    assert_eq!(
        headers["location"],
        "https://login.example/start?rd=http%3A//b.example/p%3Fq%3D1"
    );
    assert_eq!(call("b.example", Some("good")).await.0, StatusCode::OK);

    assert_eq!(
        call("down.example", Some("good")).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        call("bad.example", Some("good")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Over https (the auth service's self-signed certificate is not verified, as nginx).
    assert_eq!(
        call("tls.example", Some("banned")).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(call("tls.example", Some("good")).await.0, StatusCode::OK);
    assert_eq!(
        seen_over_tls.lock().unwrap().last().unwrap(),
        "GET POST http://tls.example/p?q=1 "
    );
    assert_eq!(up.hits(), hits + 2);
    h.shutdown().await;
}

/// `auth-cache-key` / `auth-cache-duration`: an auth answer with a cacheable status is
/// kept under the request's key for its time, with the headers it carried; other keys,
/// other statuses and expired answers go to the auth service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_answers_are_cached_by_key() {
    let up = Upstream::start("up").await;
    let (auth, seen_by_auth) = auth_service(false).await;
    let m = Manifests::new();
    let nginx = "nginx.ingress.kubernetes.io";
    m.write(
        "ingress.yaml",
        &annotated(
            "cached",
            "c.example",
            "up",
            &[
                (
                    &format!("{nginx}/auth-url"),
                    &format!("http://{auth}/check"),
                ),
                (
                    &format!("{nginx}/auth-response-headers"),
                    "X-Auth-Request-User",
                ),
                (&format!("{nginx}/auth-cache-key"), "$http_authorization"),
                (&format!("{nginx}/auth-cache-duration"), "200 401 1s"),
            ],
        ),
    );
    m.write(
        "svc.yaml",
        &service("default", "up", 80, "http", "80", &[&up]),
    );
    let h = start(server_config(&m)).await;
    let c = client();
    let asked = || seen_by_auth.lock().unwrap().len();
    let call = |token: &'static str| {
        let c = c.clone();
        let addr = h.http_addr;
        async move {
            let bearer = format!("Bearer {token}");
            request(
                &c,
                addr,
                "GET",
                "c.example",
                "/p",
                &[("authorization", &bearer)],
                None,
            )
            .await
        }
    };
    let r = call("good").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(asked(), 1);
    // The same key: answered from the cache, the auth headers still added.
    let r = call("good").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        seen(&r.body)["headers"]["x-auth-request-user"],
        serde_json::json!(["alice"])
    );
    assert_eq!(asked(), 1);
    // 401 is kept too, with its challenge; 403 is not in the list.
    for _ in 0..2 {
        let r = call("nobody").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.header("www-authenticate").as_deref(),
            Some("Bearer realm=\"test\"")
        );
    }
    assert_eq!(asked(), 2);
    for _ in 0..2 {
        assert_eq!(call("banned").await.status, StatusCode::FORBIDDEN);
    }
    assert_eq!(asked(), 4);
    // After the duration the service is asked again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(call("good").await.status, StatusCode::OK);
    assert_eq!(asked(), 5);
    h.shutdown().await;
}

/// A Service `name` (default namespace) whose port 80 speaks TLS (`appProtocol: https`),
/// its endpoints to be added as `https` slices.
fn tls_service(name: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  ports:\n  - {{name: https, port: 80, targetPort: 8443, protocol: TCP, appProtocol: https}}\n"
    )
}

/// `proxy-ssl-verify: on` with `proxy-ssl-secret`: a TLS upstream must show a
/// certificate for the Service's name (or `proxy-ssl-name`) signed by the Secret's
/// `ca.crt`; otherwise the connection fails (502), and a missing CA fails closed (503).
/// Without it, TLS upstreams stay unverified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_tls_upstreams() {
    let pki = Pki::new();
    let (crt, key, _) = pki.leaf("secure.default.svc");
    let up = Upstream::start_tls_pem("secure", &crt, &key).await;
    let other = Pki::new();
    // A canary's pod with a certificate from another CA: the main rule's verification
    // must refuse it too.
    let (rogue_crt, rogue_key, _) = other.leaf("rogue.default.svc");
    let rogue = Upstream::start_tls_pem("rogue", &rogue_crt, &rogue_key).await;
    // As cert-manager issues them: a kubernetes.io/tls Secret with ca.crt beside the pair.
    let ca_secret = |name: &str, ca: &str| {
        let secret = lb_tests::manifests::pem_secret_yaml(
            name,
            &[("ca.crt", ca), ("tls.crt", &crt), ("tls.key", &key)],
        );
        format!("---\n{secret}")
    };
    let m = Manifests::new();
    let nginx = "nginx.ingress.kubernetes.io";
    let verify = |secret: &'static str| {
        vec![
            (format!("{nginx}/proxy-ssl-verify"), "on"),
            (format!("{nginx}/proxy-ssl-secret"), secret),
        ]
    };
    let ing = |name: &str, extra: Vec<(String, &str)>| {
        let pairs: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        annotated(name, &format!("{name}.example"), "secure", &pairs)
    };
    let mut wrong_name = verify("default/upstream-ca");
    wrong_name.push((format!("{nginx}/proxy-ssl-name"), "other.default.svc"));
    m.write(
        "ingress.yaml",
        &[
            ing("good", verify("default/upstream-ca")),
            ing("named", wrong_name),
            ing("strange", verify("default/other-ca")),
            ing("missing", verify("default/nope")),
            ing("unverified", vec![]),
            annotated(
                "good-canary",
                "good.example",
                "rogue",
                &[
                    (&format!("{nginx}/canary"), "true"),
                    (&format!("{nginx}/canary-by-header"), "x-canary"),
                ],
            ),
        ]
        .concat(),
    );
    let mut svc = tls_service("secure");
    svc += &slice("default", "secure", "secure-0", "https", &[up.addr], true);
    svc += &tls_service("rogue");
    svc += &slice("default", "rogue", "rogue-0", "https", &[rogue.addr], true);
    svc += &ca_secret("upstream-ca", &pki.ca.pem());
    svc += &ca_secret("other-ca", &other.ca.pem());
    m.write("svc.yaml", &svc);
    let h = start(server_config(&m)).await;
    let c = client();
    for (host, want) in [
        ("good.example", StatusCode::OK),
        ("named.example", StatusCode::BAD_GATEWAY),
        ("strange.example", StatusCode::BAD_GATEWAY),
        ("missing.example", StatusCode::SERVICE_UNAVAILABLE),
        ("unverified.example", StatusCode::OK),
        ("good.example", StatusCode::OK),
    ] {
        let (status, _, body) = get(&c, h.http_addr, host, "/").await;
        assert_eq!(status, want, "{host}: {body}");
    }
    assert_eq!(up.hits(), 3);
    // The canary goes to the rogue pod under the main rule's verification: refused.
    let canary = [("x-canary", "always")];
    let r = request(&c, h.http_addr, "GET", "good.example", "/", &canary, None).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.body);
    assert_eq!(rogue.hits(), 0);
    h.shutdown().await;
}

/// `proxy-ssl-secret`'s `tls.crt` and `tls.key`: the client certificate shown to an
/// upstream that asks for one (nginx's `proxy_ssl_certificate`), with or without
/// `proxy-ssl-verify`. Without it such an upstream refuses the proxy (502); a Secret
/// with half a pair, or a key that is not the certificate's, fails closed (503); a
/// Secret with neither and no verification changes nothing (reported).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_to_upstreams() {
    let pki = Pki::new();
    let (crt, key, _) = pki.leaf("mtls.default.svc");
    let clients = Pki::new();
    let (client_crt, client_key, _) = clients.leaf("ingress.example");
    let (stranger_crt, stranger_key, _) = Pki::new().leaf("ingress.example");
    let up = Upstream::start_mtls_pem("mtls", &crt, &key, Some(&clients.ca.pem())).await;
    let nginx = "nginx.ingress.kubernetes.io";
    let ing = |name: &str, extra: &[(&str, &str)]| {
        let pairs: Vec<(String, &str)> = (extra.iter())
            .map(|(k, v)| (format!("{nginx}/{k}"), *v))
            .collect();
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        annotated(name, &format!("{name}.example"), "mtls", &pairs)
    };
    let m = Manifests::new();
    m.write(
        "ingress.yaml",
        &[
            ing("shown", &[("proxy-ssl-secret", "default/client")]),
            ing(
                "verified",
                &[
                    ("proxy-ssl-secret", "default/client-and-ca"),
                    ("proxy-ssl-verify", "on"),
                ],
            ),
            ing("stranger", &[("proxy-ssl-secret", "default/stranger")]),
            ing("none", &[]),
            ing("ca-only", &[("proxy-ssl-secret", "default/ca-only")]),
            ing("half", &[("proxy-ssl-secret", "default/half")]),
            ing("mismatched", &[("proxy-ssl-secret", "default/mismatched")]),
        ]
        .concat(),
    );
    let secret = |name: &str, keys: &[(&str, &str)]| {
        format!("---\n{}", lb_tests::manifests::pem_secret_yaml(name, keys))
    };
    let ca = pki.ca.pem();
    let mut svc = tls_service("mtls");
    svc += &slice("default", "mtls", "mtls-0", "https", &[up.addr], true);
    svc += &secret(
        "client",
        &[("tls.crt", &client_crt), ("tls.key", &client_key)],
    );
    svc += &secret(
        "client-and-ca",
        &[
            ("ca.crt", &ca),
            ("tls.crt", &client_crt),
            ("tls.key", &client_key),
        ],
    );
    svc += &secret(
        "stranger",
        &[("tls.crt", &stranger_crt), ("tls.key", &stranger_key)],
    );
    svc += &secret("ca-only", &[("ca.crt", &ca)]);
    svc += &secret("half", &[("tls.crt", &client_crt)]);
    svc += &secret(
        "mismatched",
        &[("tls.crt", &client_crt), ("tls.key", &stranger_key)],
    );
    m.write("svc.yaml", &svc);
    let h = start(server_config(&m)).await;
    let c = client();
    for (host, want) in [
        ("shown.example", StatusCode::OK),
        ("verified.example", StatusCode::OK),
        ("stranger.example", StatusCode::BAD_GATEWAY),
        ("none.example", StatusCode::BAD_GATEWAY),
        ("ca-only.example", StatusCode::BAD_GATEWAY),
        ("half.example", StatusCode::SERVICE_UNAVAILABLE),
        ("mismatched.example", StatusCode::SERVICE_UNAVAILABLE),
        ("shown.example", StatusCode::OK),
    ] {
        let (status, _, body) = get(&c, h.http_addr, host, "/").await;
        assert_eq!(status, want, "{host}: {body}");
    }
    assert_eq!(up.hits(), 3);
    // half, mismatched (503), ca-only (changes nothing).
    assert_eq!(config_problems(&h).await, Some(3));
    h.shutdown().await;
}

/// `server-alias` (more hosts for an Ingress's rules), `service-upstream` (the ClusterIP
/// instead of the endpoints), `x-forwarded-prefix` and `from-to-www-redirect`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_alias_service_upstream_and_forwarded_prefix() {
    let up = Upstream::start("up").await;
    let m = Manifests::new();
    let nginx = |key: &str| format!("nginx.ingress.kubernetes.io/{key}");
    // A Service whose "ClusterIP" is loopback at the upstream's port, and whose only
    // endpoint is an address nothing listens on: only service-upstream reaches `up`.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let port = up.addr.port();
    let mut svc = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: vip, namespace: default}}\nspec:\n  clusterIP: 127.0.0.1\n  ports:\n  - {{name: http, port: {port}, protocol: TCP}}\n"
    );
    svc += &slice("default", "vip", "vip-0", "http", &[dead], true);
    svc += "---\n";
    svc += &service("default", "up", 80, "http", "80", &[&up]);
    m.write("svc.yaml", &svc);
    let via_vip = |name: &str, annotations: &[(&str, &str)]| {
        annotated(name, &format!("{name}.example"), "vip", annotations)
            .replace("port: {number: 80}", &format!("port: {{number: {port}}}"))
    };
    m.write(
        "ingress.yaml",
        &[
            annotated(
                "alias",
                "alias.example",
                "up",
                &[(
                    &nginx("server-alias"),
                    "www.alias.example, *.alias2.example",
                )],
            ),
            via_vip("vip", &[(&nginx("service-upstream"), "true")]),
            via_vip("endpoints", &[]),
            annotated(
                "prefix",
                "prefix.example",
                "up",
                &[(&nginx("x-forwarded-prefix"), "/shop")],
            ),
            annotated(
                "www",
                "www.site.example",
                "up",
                &[(&nginx("from-to-www-redirect"), "true")],
            ),
            // Both names served: no redirect between them.
            annotated(
                "both",
                "both.example",
                "up",
                &[(&nginx("from-to-www-redirect"), "true")],
            ),
            annotated("www-both", "www.both.example", "up", &[]),
        ]
        .concat(),
    );
    let h = start(server_config(&m)).await;
    let c = client();
    for (host, want) in [
        ("alias.example", StatusCode::OK),
        ("www.alias.example", StatusCode::OK),
        ("x.alias2.example", StatusCode::OK),
        ("other.example", StatusCode::NOT_FOUND),
        ("vip.example", StatusCode::OK),
        ("endpoints.example", StatusCode::BAD_GATEWAY),
    ] {
        let (status, _, body) = get(&c, h.http_addr, host, "/").await;
        assert_eq!(status, want, "{host}: {body}");
    }
    // from-to-www-redirect: the other name of a served host, to it.
    let (status, headers, _) = get(&c, h.http_addr, "site.example", "/a?b=1").await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(headers["location"], "http://www.site.example/a?b=1");
    assert_eq!(
        get(&c, h.http_addr, "www.site.example", "/").await.0,
        StatusCode::OK
    );
    for host in ["both.example", "www.both.example"] {
        assert_eq!(
            get(&c, h.http_addr, host, "/").await.0,
            StatusCode::OK,
            "{host}"
        );
    }
    let (_, _, body) = get(&c, h.http_addr, "prefix.example", "/").await;
    assert_eq!(
        seen(&body)["headers"]["x-forwarded-prefix"],
        serde_json::json!(["/shop"])
    );
    h.shutdown().await;
}

/// `limit-connections`: at most that many requests of one client in flight on the
/// route; another waits for none of them, it is refused (429), and the places come back
/// when the responses end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_per_client_are_limited() {
    let up = Upstream::start("up").await;
    let m = Manifests::new();
    m.write(
        "ingress.yaml",
        &annotated(
            "busy",
            "busy.example",
            "up",
            &[("nginx.ingress.kubernetes.io/limit-connections", "2")],
        ),
    );
    m.write(
        "svc.yaml",
        &service("default", "up", 80, "http", "80", &[&up]),
    );
    let h = start(server_config(&m)).await;
    let addr = h.http_addr;
    let slow = || {
        let c = client();
        tokio::spawn(async move {
            request(&c, addr, "GET", "busy.example", "/sleep?ms=1000", &[], None)
                .await
                .status
        })
    };
    let (first, second) = (slow(), slow());
    // Both are at the upstream (so both hold their place) before the third is sent.
    let t0 = Instant::now();
    while up.hits() < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the slow requests never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let other = client();
    let third = request(&other, addr, "GET", "busy.example", "/", &[], None).await;
    assert_eq!(third.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        (first.await.unwrap(), second.await.unwrap()),
        (StatusCode::OK, StatusCode::OK)
    );
    for _ in 0..3 {
        let again = request(&other, addr, "GET", "busy.example", "/", &[], None).await;
        assert_eq!(again.status, StatusCode::OK);
    }
    h.shutdown().await;
}

/// A client certificate with common name `cn`, issued by `pki`'s CA: (DER, key).
fn client_cert(
    pki: &Pki,
    cn: &str,
) -> (
    rustls::pki_types::CertificateDer<'static>,
    rustls::pki_types::PrivateKeyDer<'static>,
    String,
    String,
) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = p.signed_by(&key, &pki.ca).unwrap();
    let der = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into();
    (cert.der().clone(), der, cert.pem(), key.serialize_pem())
}

/// `server`'s roots, presenting `cert` (a chain, the client's first, and its key) when
/// asked for one.
fn client_config_with_cert(
    server: &Pki,
    cert: Option<(
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    )>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server.ca.der().clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots);
    let mut c = match cert {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    c.alpn_protocols = vec![b"h2".to_vec()];
    c
}

/// GET `https://host/` over HTTP/2 on a new TLS connection with `sni`: status,
/// `location`, body.
async fn mtls_get(
    https: std::net::SocketAddr,
    config: rustls::ClientConfig,
    sni: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, Option<String>, String) {
    let tls = tls_connect(https, config, sni).await.unwrap();
    h2_get(tls, &format!("https://{host}/who"), headers).await
}

/// GET `uri` over HTTP/2 on `tls`, which is closed after: status, `location`, body.
async fn h2_get(
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    uri: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, Option<String>, String) {
    let (mut send, _conn) = h2_client(tls).await;
    let mut req = hyper::Request::get(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = send.send_request(req.body(empty()).unwrap()).await.unwrap();
    let status = resp.status();
    let location = (resp.headers().get("location")).map(|v| v.to_str().unwrap().to_owned());
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (
        status,
        location,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// A Secret with `key: value` under stringData.
fn opaque_secret(name: &str, key: &str, value: &str) -> String {
    let indented = value.lines().fold(String::new(), |mut out, l| {
        out.push_str("    ");
        out.push_str(l);
        out.push('\n');
        out
    });
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: default}}\ntype: Opaque\nstringData:\n  {key}: |\n{indented}"
    )
}

const MTLS_INGRESSES: &str = r"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: required
  namespace: default
  annotations:
    nginx.ingress.kubernetes.io/auth-tls-secret: default/client-ca
    nginx.ingress.kubernetes.io/auth-tls-pass-certificate-to-upstream: 'true'
spec:
  ingressClassName: lb
  tls: [{hosts: [c.example.com, o.example.com, e.example.com, p.example.com, d.example.com], secretName: server-tls}]
  rules:
  - host: c.example.com
    http:
      paths: [{path: /, pathType: Prefix, backend: {service: {name: c, port: {number: 80}}}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: optional
  namespace: default
  annotations:
    nginx.ingress.kubernetes.io/auth-tls-secret: client-ca
    nginx.ingress.kubernetes.io/auth-tls-verify-client: optional
    nginx.ingress.kubernetes.io/auth-tls-match-cn: CN=^alice$
spec:
  ingressClassName: lb
  rules:
  - host: o.example.com
    http:
      paths: [{path: /, pathType: Prefix, backend: {service: {name: c, port: {number: 80}}}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: error-page
  namespace: default
  annotations:
    nginx.ingress.kubernetes.io/auth-tls-secret: client-ca
    nginx.ingress.kubernetes.io/auth-tls-error-page: https://help.example.com/certificates
spec:
  ingressClassName: lb
  rules:
  - host: e.example.com
    http:
      paths: [{path: /, pathType: Prefix, backend: {service: {name: c, port: {number: 80}}}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: no-ca
  namespace: default
  annotations:
    nginx.ingress.kubernetes.io/auth-tls-secret: default/missing
spec:
  ingressClassName: lb
  rules:
  - host: m.example.com
    http:
      paths: [{path: /, pathType: Prefix, backend: {service: {name: c, port: {number: 80}}}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: deep
  namespace: default
  annotations:
    nginx.ingress.kubernetes.io/auth-tls-secret: client-ca
    nginx.ingress.kubernetes.io/auth-tls-verify-depth: '2'
spec:
  ingressClassName: lb
  rules:
  - host: d.example.com
    http:
      paths: [{path: /, pathType: Prefix, backend: {service: {name: c, port: {number: 80}}}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: open, namespace: default}
spec:
  ingressClassName: lb
  rules:
  - host: p.example.com
    http:
      paths: [{path: /, pathType: Prefix, backend: {service: {name: c, port: {number: 80}}}}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_asked_for_verified_and_passed_on() {
    let up = Upstream::start("c").await;
    let server_pki = Pki::new();
    let clients = Pki::new();
    let strangers = Pki::new();
    let m = Manifests::new();
    m.write("ingress.yaml", MTLS_INGRESSES);
    m.write(
        "svc.yaml",
        &service("default", "c", 80, "http", "80", &[&up]),
    );
    // One certificate for all the names: SNI and Host may differ on a connection.
    let (crt, key) = {
        let key = rcgen::KeyPair::generate().unwrap();
        let names = ["c", "o", "e", "p", "d"].map(|h| format!("{h}.example.com"));
        let cert = rcgen::CertificateParams::new(names.to_vec())
            .unwrap()
            .signed_by(&key, &server_pki.ca)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    m.write(
        "secrets.yaml",
        &format!(
            "{}---\n{}",
            lb_tests::manifests::tls_secret_yaml("server-tls", &crt, &key),
            opaque_secret("client-ca", "ca.crt", &clients.ca.pem())
        ),
    );
    let mut cfg = server_config(&m);
    cfg.listen_tls = Some("127.0.0.1:0".parse().unwrap());
    let mut h = start(cfg).await;
    let https = h.https_addr.unwrap();
    let tls13 = [&rustls::version::TLS13];
    let tls12 = [&rustls::version::TLS12];
    let (alice_der, alice_key, alice_pem, alice_key_pem) = client_cert(&clients, "alice");
    let (bob_der, bob_key, ..) = client_cert(&clients, "bob");
    let (eve_der, eve_key, ..) = client_cert(&strangers, "alice");
    let alice = |v| {
        client_config_with_cert(
            &server_pki,
            Some((vec![alice_der.clone()], alice_key.clone_key())),
            v,
        )
    };
    let nobody = |v| client_config_with_cert(&server_pki, None, v);

    // A certificate the CA issued, over TLS 1.3 and 1.2: through, and the upstream
    // learns who it is (and not what the client claims about it).
    for versions in [&tls13[..], &tls12[..]] {
        let (status, _, body) = mtls_get(
            https,
            alice(versions),
            "c.example.com",
            "c.example.com",
            &[
                ("ssl-client-subject-dn", "CN=mallory"),
                ("ssl-client-verify", "SUCCESS"),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let v = seen(&body);
        let headers = &v["headers"];
        assert_eq!(headers["ssl-client-verify"], serde_json::json!(["SUCCESS"]));
        assert_eq!(
            headers["ssl-client-subject-dn"],
            serde_json::json!(["CN=alice"])
        );
        assert_eq!(
            headers["ssl-client-issuer-dn"],
            serde_json::json!(["CN=lb-ingress test CA"])
        );
        let passed = headers["ssl-client-cert"][0].as_str().unwrap();
        let expected: String = percent_encoding::utf8_percent_encode(
            &alice_pem.replace("\r\n", "\n"),
            percent_encoding::NON_ALPHANUMERIC,
        )
        .to_string()
        .replace("%2D", "-");
        assert_eq!(passed, expected);
    }
    // No certificate, or one from another CA: 400 with nginx's words, never the upstream.
    let hits = up.hits();
    let (status, _, body) =
        mtls_get(https, nobody(&tls13), "c.example.com", "c.example.com", &[]).await;
    assert_eq!(
        (status, body.as_str()),
        (
            StatusCode::BAD_REQUEST,
            "No required SSL certificate was sent\n"
        )
    );
    let eve = client_config_with_cert(&server_pki, Some((vec![eve_der], eve_key)), &tls13);
    let (status, _, body) = mtls_get(https, eve, "c.example.com", "c.example.com", &[]).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::BAD_REQUEST, "The SSL certificate error\n")
    );
    assert_eq!(up.hits(), hits);

    // optional: no certificate passes as NONE; a certificate must still be the CA's, and
    // match-cn picks alice only.
    let (status, _, body) =
        mtls_get(https, nobody(&tls13), "o.example.com", "o.example.com", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        seen(&body)["headers"]["ssl-client-verify"],
        serde_json::json!(["NONE"])
    );
    let (status, _, _) =
        mtls_get(https, alice(&tls13), "o.example.com", "o.example.com", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let bob = client_config_with_cert(&server_pki, Some((vec![bob_der], bob_key)), &tls13);
    let (status, _, body) = mtls_get(https, bob, "o.example.com", "o.example.com", &[]).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::FORBIDDEN, "client certificate unauthorized\n")
    );

    // auth-tls-error-page: a refused request is sent there.
    let (status, location, _) =
        mtls_get(https, nobody(&tls13), "e.example.com", "e.example.com", &[]).await;
    assert_eq!(status, StatusCode::FOUND);
    assert_eq!(
        location.as_deref(),
        Some("https://help.example.com/certificates")
    );

    // A connection made for a name without client certificates cannot be used for one
    // with them (421, as nginx: the client opens one for the right name).
    let (status, _, _) =
        mtls_get(https, alice(&tls13), "p.example.com", "c.example.com", &[]).await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
    let (status, _, _) =
        mtls_get(https, nobody(&tls13), "p.example.com", "p.example.com", &[]).await;
    assert_eq!(status, StatusCode::OK);
    // auth-tls-verify-depth counts the chain to the CA: a certificate from an
    // intermediate needs 2.
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "intermediate");
    let intermediate =
        rcgen::CertifiedIssuer::signed_by(p, rcgen::KeyPair::generate().unwrap(), &clients.ca)
            .unwrap();
    let intermediate_der = intermediate.der().clone();
    let (dave_der, dave_key, ..) = client_cert(&Pki { ca: intermediate }, "dave");
    let dave = || {
        let chain = vec![dave_der.clone(), intermediate_der.clone()];
        client_config_with_cert(&server_pki, Some((chain, dave_key.clone_key())), &tls13)
    };
    let (status, _, body) = mtls_get(https, dave(), "c.example.com", "c.example.com", &[]).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::BAD_REQUEST, "The SSL certificate error\n")
    );
    let (status, _, body) = mtls_get(https, dave(), "d.example.com", "d.example.com", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        seen(&body)["headers"]["ssl-client-issuer-dn"],
        serde_json::json!(["CN=intermediate"])
    );

    // Plain HTTP carries no certificate: refused, not served unchecked.
    let (status, _, body) = get(&client(), h.http_addr, "c.example.com", "/").await;
    assert_eq!(
        (status, body.as_str()),
        (
            StatusCode::BAD_REQUEST,
            "No required SSL certificate was sent\n"
        )
    );
    // A CA Secret that is not there: the rules fail closed.
    let (status, _, _) = get(&client(), h.http_addr, "m.example.com", "/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    // curl, with the certificate and key in files.
    let dir = tempfile::tempdir().unwrap();
    let path = |f: &str| dir.path().join(f);
    std::fs::write(path("ca.pem"), server_pki.ca.pem()).unwrap();
    std::fs::write(path("alice.pem"), &alice_pem).unwrap();
    std::fs::write(path("alice.key"), &alice_key_pem).unwrap();
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(path("ca.pem"))
        .arg("--cert")
        .arg(path("alice.pem"))
        .arg("--key")
        .arg(path("alice.key"))
        .args([
            "--resolve",
            &format!("c.example.com:{}:127.0.0.1", https.port()),
        ])
        .args(["-w", "\n%{http_code}"])
        .arg(format!("https://c.example.com:{}/curl", https.port()))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (body, code) = stdout.rsplit_once('\n').unwrap();
    assert_eq!(
        code,
        "200",
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        seen(body)["headers"]["ssl-client-subject-dn"],
        serde_json::json!(["CN=alice"])
    );

    // A new CA in the Secret: the next handshake asks for its certificates.
    let generation = h.generation();
    let rotated = Pki::new();
    m.write(
        "secrets.yaml",
        &format!(
            "{}---\n{}",
            lb_tests::manifests::tls_secret_yaml("server-tls", &crt, &key),
            opaque_secret("client-ca", "ca.crt", &rotated.ca.pem())
        ),
    );
    next_generation(&mut h, generation).await;
    let (status, _, _) =
        mtls_get(https, alice(&tls13), "c.example.com", "c.example.com", &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (carol_der, carol_key, ..) = client_cert(&rotated, "carol");
    let carol = client_config_with_cert(&server_pki, Some((vec![carol_der], carol_key)), &tls13);
    let (status, _, body) = mtls_get(https, carol, "c.example.com", "c.example.com", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    h.shutdown().await;
}

/// Writes its first write in two pieces, 100 ms apart (a ClientHello split over two
/// segments).
struct Trickle(std::net::TcpStream, bool);

impl std::io::Write for Trickle {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if std::mem::replace(&mut self.1, false) && buf.len() > 7 {
            self.0.write_all(&buf[..7])?;
            self.0.flush()?;
            std::thread::sleep(Duration::from_millis(100));
            return Ok(7);
        }
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl std::io::Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_passthrough_relays_tls_to_the_backend_unopened() {
    // The backend's own certificate, from a CA lb-ingress knows nothing of.
    let backend_pki = Pki::new();
    let (b_crt, b_key, b_der) = backend_pki.leaf("pt.example.com");
    let backend = Upstream::start_tls_pem("backend", &b_crt, &b_key).await;
    let terminated = Upstream::start("terminated").await;
    let ingress_pki = Pki::new();
    let (t_crt, t_key, t_der) = ingress_pki.leaf("t.example.com");
    let m = Manifests::new();
    m.write(
        "ingress.yaml",
        r"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: pt
  namespace: default
  annotations: {nginx.ingress.kubernetes.io/ssl-passthrough: 'true'}
spec:
  ingressClassName: lb
  rules:
  - host: pt.example.com
    http:
      paths: [{path: /, pathType: Prefix, backend: {service: {name: pt, port: {number: 443}}}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: t, namespace: default}
spec:
  ingressClassName: lb
  tls: [{hosts: [t.example.com], secretName: t-tls}]
  rules:
  - host: t.example.com
    http:
      paths: [{path: /, pathType: Prefix, backend: {service: {name: t, port: {number: 80}}}}]
",
    );
    m.write(
        "secrets.yaml",
        &lb_tests::manifests::tls_secret_yaml("t-tls", &t_crt, &t_key),
    );
    m.write(
        "svc.yaml",
        &format!(
            "{}---\n{}",
            service("default", "pt", 443, "https", "443", &[&backend]),
            service("default", "t", 80, "http", "80", &[&terminated])
        ),
    );
    let mut cfg = server_config(&m);
    cfg.listen_tls = Some("127.0.0.1:0".parse().unwrap());
    cfg.options.passthrough_idle_timeout = Duration::from_millis(800);
    let h = start(cfg).await;
    let https = h.https_addr.unwrap();

    // The passthrough host: the backend's certificate, and the backend sees the request
    // as the client sent it (no forwarding headers: the proxy never saw it).
    let tls = tls_connect(
        https,
        backend_pki.client_config(&[&rustls::version::TLS13]),
        "pt.example.com",
    )
    .await
    .unwrap();
    assert_eq!(
        tls.get_ref().1.peer_certificates().unwrap()[0].as_ref(),
        b_der.as_slice()
    );
    let (status, _, body) = h2_get(tls, "https://pt.example.com/deep/path", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let v = seen(&body);
    assert_eq!(v["name"], "backend");
    assert!(v["headers"].get("x-forwarded-for").is_none(), "{v}");
    assert_eq!(backend.hits(), 1);

    // Other names on the same listener are terminated here as usual.
    let tls = tls_connect(
        https,
        ingress_pki.client_config(&[&rustls::version::TLS12]),
        "t.example.com",
    )
    .await
    .unwrap();
    assert_eq!(
        tls.get_ref().1.peer_certificates().unwrap()[0].as_ref(),
        t_der.as_slice()
    );
    let (_, _, body) = h2_get(tls, "https://t.example.com/", &[]).await;
    let v = seen(&body);
    assert_eq!(v["name"], "terminated");
    assert_eq!(
        v["headers"]["x-forwarded-proto"],
        serde_json::json!(["https"])
    );

    // A ClientHello that arrives in two pieces is still read whole, and the bytes peeked
    // at reach the backend (HTTP/1.1 this time, blocking rustls on a plain socket).
    let mut config = backend_pki.client_config(&[&rustls::version::TLS13]);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::{Read as _, Write as _};
        let tcp = std::net::TcpStream::connect(https).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let conn = rustls::ClientConnection::new(
            std::sync::Arc::new(config),
            rustls::pki_types::ServerName::try_from("pt.example.com").unwrap(),
        )
        .unwrap();
        let mut tls = rustls::StreamOwned::new(conn, Trickle(tcp, true));
        tls.write_all(b"GET /split HTTP/1.1\r\nHost: pt.example.com\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"/split\""), "{answer}");
    assert_eq!(backend.hits(), 2);

    // A relay with nothing sent either way for --passthrough-idle-timeout-ms is closed.
    let mut idle = tls_connect(
        https,
        backend_pki.client_config(&[&rustls::version::TLS13]),
        "pt.example.com",
    )
    .await
    .unwrap();
    let idle_from = Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut idle, &mut rest),
    )
    .await;
    assert!(read.is_ok(), "an idle relay is still open after 10 s");
    let after = idle_from.elapsed();
    assert!(
        after >= Duration::from_millis(700),
        "closed after {after:?}"
    );
    assert!(rest.is_empty());
    h.shutdown().await;
}

/// A mirror target (or auth service): records `METHOD URI host=H length=CL team=T
/// body=N` (`X-Team` as T) for each request once its body is read (`body=error` when the
/// body failed), and answers 500 (a mirror's answer is ignored). A request with the query `stall` is held for a minute with its
/// body unread.
async fn mirror_target() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = std::sync::Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = std::sync::Arc::clone(&log);
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let log = std::sync::Arc::clone(&log);
                    async move {
                        if req.uri().query() == Some("stall") {
                            tokio::time::sleep(Duration::from_mins(1)).await;
                        }
                        let h = |n: &str| {
                            (req.headers().get(n))
                                .map_or("-".to_owned(), |v| v.to_str().unwrap().to_owned())
                        };
                        let line = format!(
                            "{} {} host={} length={} team={}",
                            req.method(),
                            req.uri(),
                            h("host"),
                            h("content-length"),
                            h("x-team")
                        );
                        let body = match req.into_body().collect().await {
                            Ok(b) => b.to_bytes().len().to_string(),
                            Err(_) => "error".to_owned(),
                        };
                        log.lock().unwrap().push(format!("{line} body={body}"));
                        let resp = hyper::Response::builder()
                            .status(500)
                            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                                b"ignored",
                            )))
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// Waits until `seen` holds `n` lines (5 s at most; 300 ms for none) and takes them.
async fn mirrored(seen: &std::sync::Mutex<Vec<String>>, n: usize) -> Vec<String> {
    let wait = if n == 0 { 300 } else { 5000 };
    let deadline = Instant::now() + Duration::from_millis(wait);
    while seen.lock().unwrap().len() < n.max(1) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    std::mem::take(&mut *seen.lock().unwrap())
}

/// `mirror-target` (ingress-nginx's): a copy of each request the access checks let
/// through goes to the target with the client's path and query (`$request_uri`, or
/// added when the target has no path), `mirror-host` as its Host, and the body unless
/// `mirror-request-body: off`; the client gets the upstream's answer whatever the copy's
/// fate: a target that is down, or one that takes the body slower than the upstream (cut
/// off, counted `lagged`), changes nothing for the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_target_gets_a_copy_of_each_request() {
    let up = Upstream::start("up").await;
    let (target, seen) = mirror_target().await;
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let manifests = Manifests::new();
    let n = |key: &str| format!("nginx.ingress.kubernetes.io/{key}");
    let with_uri = format!("http://{target}$request_uri");
    let no_path = format!("http://{target}");
    let to_down = format!("http://{down}$request_uri");
    let ing = |name: &str, extra: &[(String, &str)]| {
        let pairs: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        annotated(name, &format!("{name}.example"), "up", &pairs)
    };
    manifests.write(
        "ingress.yaml",
        &[
            ing(
                "copied",
                &[
                    (n("mirror-target"), with_uri.as_str()),
                    (n("mirror-host"), "shadow.example"),
                ],
            ),
            ing(
                "headonly",
                &[
                    (n("mirror-target"), no_path.as_str()),
                    (n("mirror-request-body"), "off"),
                ],
            ),
            ing(
                "guarded",
                &[
                    (n("mirror-target"), with_uri.as_str()),
                    (n("allowlist-source-range"), "10.0.0.0/8"),
                ],
            ),
            ing("down", &[(n("mirror-target"), to_down.as_str())]),
        ]
        .concat(),
    );
    manifests.write(
        "svc.yaml",
        &service("default", "up", 80, "http", "80", &[&up]),
    );
    let h = start(server_config(&manifests)).await;
    let c = client();
    let metrics = h.metrics_addr.unwrap();
    let count = |result: &'static str| async move {
        metric(
            metrics,
            "lb_ingress_mirror_requests",
            &[&format!("result=\"{result}\"")],
        )
        .await
        .unwrap_or(0)
    };

    // The head as it went upstream, the client's path and query, the mirror host.
    let r = request(
        &c,
        h.http_addr,
        "GET",
        "copied.example",
        "/a/b?x=1",
        &[],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.upstream(), "up");
    assert_eq!(
        mirrored(&seen, 1).await,
        ["GET /a/b?x=1 host=shadow.example length=- team=- body=0"]
    );
    // A body, whole, to both.
    let body = bytes::Bytes::from(vec![b'x'; 3 << 20]);
    let r = request(
        &c,
        h.http_addr,
        "POST",
        "copied.example",
        "/upload",
        &[],
        Some(body.clone()),
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "3145728"));
    assert_eq!(
        mirrored(&seen, 1).await,
        ["POST /upload host=shadow.example length=3145728 team=- body=3145728"]
    );
    // mirror-request-body off: the head only; a target without a path gets the
    // request's; Host is the target's.
    let r = request(
        &c,
        h.http_addr,
        "POST",
        "headonly.example",
        "/upload?q",
        &[],
        Some(bytes::Bytes::from_static(b"hello")),
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "5"));
    assert_eq!(
        mirrored(&seen, 1).await,
        [format!(
            "POST /upload?q host={target} length=- team=- body=0"
        )]
    );
    // Refused by the access checks: not copied.
    let r = request(&c, h.http_addr, "GET", "guarded.example", "/", &[], None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(mirrored(&seen, 0).await, Vec::<String>::new());
    assert_eq!(count("success").await, 3);

    // A target that is down: the client does not notice.
    let r = request(&c, h.http_addr, "GET", "down.example", "/", &[], None).await;
    assert_eq!(r.status, StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(5);
    while count("error").await < 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count("error").await, 1);

    // A target that takes the body slower than the upstream (here: not at all) is cut
    // off; the client's upload goes through at the upstream's pace.
    let big = bytes::Bytes::from(vec![b'y'; 64 << 20]);
    let r = request(
        &c,
        h.http_addr,
        "POST",
        "copied.example",
        "/upload?stall",
        &[],
        Some(big),
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "67108864"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while count("lagged").await < 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count("lagged").await, 1);
    assert_eq!(count("success").await, 3);
    h.shutdown().await;
}

/// A ConfigMap of headers in the `default` namespace.
fn header_config_map(name: &str, entries: &[(&str, &str)]) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: default}}\ndata:\n"
    );
    for (k, v) in entries {
        let _ = writeln!(y, "  {k:?}: {v:?}");
    }
    y
}

/// ConfigMap-named annotations (ingress-nginx's): `custom-headers` sets its entries on
/// the rules' responses, the proxy's own too (an entry that is not a header is reported and skipped, a missing
/// ConfigMap reported and the rules served without); `auth-proxy-set-headers` sets its
/// entries, with nginx variables expanded, on the auth request (a missing ConfigMap fails
/// the rules closed). A change to a ConfigMap is picked up like any other object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_from_config_maps() {
    let up = Upstream::start("up").await;
    let (auth, seen) = mirror_target().await;
    let manifests = Manifests::new();
    let n = |key: &str| format!("nginx.ingress.kubernetes.io/{key}");
    let auth_url = format!("http://{auth}/check");
    let ing = |name: &str, extra: &[(String, &str)]| {
        let pairs: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        annotated(name, &format!("{name}.example"), "up", &pairs)
    };
    manifests.write(
        "ingress.yaml",
        &[
            ing(
                "headed",
                &[(n("custom-headers"), "default/response-headers")],
            ),
            annotated(
                "headed-empty",
                "headed-empty.example",
                "empty",
                &[(
                    "nginx.ingress.kubernetes.io/custom-headers",
                    "response-headers",
                )],
            ),
            ing("unheaded", &[(n("custom-headers"), "nope")]),
            ing(
                "authed",
                &[
                    (n("auth-url"), auth_url.as_str()),
                    (n("auth-proxy-set-headers"), "auth-headers"),
                ],
            ),
            ing(
                "unauthed",
                &[
                    (n("auth-url"), auth_url.as_str()),
                    (n("auth-proxy-set-headers"), "nope"),
                ],
            ),
        ]
        .concat(),
    );
    let maps = |frame: &str| {
        format!(
            "{}---\n{}",
            header_config_map(
                "response-headers",
                &[("X-Frame-Options", frame), ("bad name", "x")]
            ),
            header_config_map("auth-headers", &[("X-Team", "web-$host")])
        )
    };
    manifests.write("maps.yaml", &maps("DENY"));
    manifests.write(
        "svc.yaml",
        &format!(
            "{}---\n{}",
            service("default", "up", 80, "http", "80", &[&up]),
            service("default", "empty", 80, "http", "80", &[])
        ),
    );
    let mut h = start(server_config(&manifests)).await;
    let c = client();
    let r = request(&c, h.http_addr, "GET", "headed.example", "/", &[], None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-frame-options").as_deref(), Some("DENY"));
    // The proxy's own answers for the rule get them too (as more_set_headers).
    let r = request(
        &c,
        h.http_addr,
        "GET",
        "headed-empty.example",
        "/",
        &[],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.header("x-frame-options").as_deref(), Some("DENY"));
    let r = request(&c, h.http_addr, "GET", "unheaded.example", "/", &[], None).await;
    assert_eq!(
        (r.status, r.header("x-frame-options")),
        (StatusCode::OK, None)
    );
    // The auth service answers 500 (so does the proxy), having seen the header.
    let r = request(&c, h.http_addr, "GET", "authed.example", "/", &[], None).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        mirrored(&seen, 1).await,
        [
            "GET /check host=127.0.0.1 length=- team=web-authed.example body=0"
                .replace("127.0.0.1", &auth.to_string())
        ]
    );
    let r = request(&c, h.http_addr, "GET", "unauthed.example", "/", &[], None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(mirrored(&seen, 0).await, Vec::<String>::new());
    // The bad entry (for each of the two Ingresses naming its ConfigMap), and the two
    // missing ConfigMaps.
    assert_eq!(config_problems(&h).await, Some(4));
    let generation = h.generation();
    manifests.write("maps.yaml", &maps("SAMEORIGIN"));
    next_generation(&mut h, generation).await;
    let r = request(&c, h.http_addr, "GET", "headed.example", "/", &[], None).await;
    assert_eq!(r.header("x-frame-options").as_deref(), Some("SAMEORIGIN"));
    h.shutdown().await;
}
