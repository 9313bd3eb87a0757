//! Test support: real upstream HTTP servers on loopback, manifests written to a tempdir,
//! the proxy started in-process, and a real hyper client.
#![allow(dead_code, reason = "each test binary uses a part of the support code")]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lb_ingress::{ProxyOptions, Server, ServerConfig, ServerHandle};
use lb_k8s::SourceConfig;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

pub type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// A small upstream: answers with its name and what it saw, as JSON, except
/// `/upload` (counts the body), `/download?bytes=N` (streams N bytes), `/sleep?ms=N`,
/// and Upgrade requests (101, then echoes bytes).
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        Upstream::serve(name, None).await
    }

    /// The same upstream behind TLS, with a self-signed certificate no one can verify
    /// (as pods often have), HTTP/1.1 or HTTP/2 by ALPN.
    pub async fn start_tls(name: &str) -> Upstream {
        let cert = rcgen::generate_simple_self_signed(vec!["pod.invalid".to_owned()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        Upstream::start_tls_with(name, vec![cert.cert.der().clone()], key, None).await
    }

    /// Behind TLS with the given certificate chain and key (PEM).
    pub async fn start_tls_pem(name: &str, cert_pem: &str, key_pem: &str) -> Upstream {
        Upstream::start_mtls_pem(name, cert_pem, key_pem, None).await
    }

    /// Behind TLS with the given certificate chain and key (PEM), refusing clients
    /// without a certificate signed by `client_ca` (PEM) when there is one.
    pub async fn start_mtls_pem(
        name: &str,
        cert_pem: &str,
        key_pem: &str,
        client_ca: Option<&str>,
    ) -> Upstream {
        use rustls::pki_types::pem::PemObject as _;
        let chain = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        Upstream::start_tls_with(name, chain, key, client_ca).await
    }

    async fn start_tls_with(
        name: &str,
        chain: Vec<rustls::pki_types::CertificateDer<'static>>,
        key: rustls::pki_types::PrivateKeyDer<'static>,
        client_ca: Option<&str>,
    ) -> Upstream {
        use rustls::pki_types::pem::PemObject as _;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    roots.add(cert.unwrap()).unwrap();
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Upstream::serve(
            name,
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        )
        .await
    }

    async fn serve(name: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let (n, h) = (name.to_owned(), Arc::clone(&hits));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (n, h, tls) = (n.clone(), Arc::clone(&h), tls.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        h.fetch_add(1, Ordering::Relaxed);
                        answer(n.clone(), req)
                    });
                    let Some(acceptor) = tls else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .with_upgrades()
                            .await;
                        return;
                    };
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Upstream {
            name: name.into(),
            addr,
            hits,
            task,
        }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

fn query_param(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

async fn answer(name: String, mut req: Request<Incoming>) -> Result<Response<BoxBody>, Infallible> {
    let full = |status: StatusCode, s: String| {
        let mut r = Response::new(
            Full::new(Bytes::from(s))
                .map_err(|n| match n {})
                .boxed_unsync(),
        );
        *r.status_mut() = status;
        r
    };
    if req.headers().contains_key("upgrade") {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 4096];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        });
        let mut r = full(StatusCode::SWITCHING_PROTOCOLS, String::new());
        r.headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        r.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        return Ok(r);
    }
    match req.uri().path() {
        "/upload" => {
            let mut body = req.into_body();
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => return Ok(full(StatusCode::BAD_REQUEST, "body error".into())),
                }
            }
            return Ok(full(StatusCode::OK, n.to_string()));
        }
        "/download" => {
            let total = query_param(&req, "bytes").unwrap_or(0);
            return Ok(Response::new(generated_body(total).boxed_unsync()));
        }
        "/sleep" => {
            tokio::time::sleep(Duration::from_millis(query_param(&req, "ms").unwrap_or(0))).await;
        }
        // `/misbehave?name=N&ms=M&status=S&location=L`: upstream N waits M ms, then
        // answers S (when given; with `Location: L` when given); the others answer as
        // usual.
        "/misbehave" => {
            let named = req
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|kv| kv == format!("name={name}")));
            if named {
                let ms = query_param(&req, "ms").unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                if let Some(status) = query_param(&req, "status")
                    .and_then(|s| u16::try_from(s).ok())
                    .and_then(|s| StatusCode::from_u16(s).ok())
                {
                    let mut r = full(status, format!("{name} says {status}"));
                    let location = (req.uri().query().unwrap_or_default().split('&'))
                        .find_map(|kv| kv.strip_prefix("location="));
                    if let Some(l) = location.and_then(|l| l.parse().ok()) {
                        r.headers_mut().insert("location", l);
                    }
                    return Ok(r);
                }
            }
        }
        _ => {}
    }
    let headers: BTreeMap<String, Vec<String>> = req
        .headers()
        .keys()
        .map(|k| {
            (
                k.as_str().to_owned(),
                req.headers()
                    .get_all(k)
                    .iter()
                    .map(|v| v.to_str().unwrap_or("").to_owned())
                    .collect(),
            )
        })
        .collect();
    let seen = serde_json::json!({
        "name": name,
        "method": req.method().as_str(),
        "uri": req.uri().to_string(),
        "version": format!("{:?}", req.version()),
        "headers": headers,
    });
    let mut r = full(StatusCode::OK, seen.to_string());
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r.headers_mut().insert("x-upstream", name.parse().unwrap());
    r.headers_mut()
        .insert("server", "upstream-server".parse().unwrap());
    r.headers_mut()
        .insert("keep-alive", "timeout=5".parse().unwrap());
    Ok(r)
}

/// A body of `total` bytes produced 64 KiB at a time, never held whole.
pub fn generated_body(
    total: u64,
) -> StreamBody<impl futures::Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Send> {
    const CHUNK: u64 = 64 * 1024;
    let chunk = Bytes::from(vec![b'x'; CHUNK as usize]);
    let stream = futures::stream::unfold(0u64, move |sent| {
        let chunk = chunk.clone();
        async move {
            if sent >= total {
                return None;
            }
            let n = CHUNK.min(total - sent);
            Some((Ok(Frame::data(chunk.slice(..n as usize))), sent + n))
        }
    });
    StreamBody::new(stream)
}

/// A manifests directory in a tempdir; files are replaced atomically (write, rename),
/// as kubectl-style tools and ConfigMap volumes do.
pub struct Manifests {
    pub dir: tempfile::TempDir,
}

impl Manifests {
    pub fn new() -> Manifests {
        Manifests {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, file: &str, yaml: &str) {
        let tmp: PathBuf = self.dir.path().join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.dir.path().join(file)).unwrap();
    }

    pub fn remove(&self, file: &str) {
        std::fs::remove_file(self.dir.path().join(file)).unwrap();
    }
}

/// A Service with one port, `port -> target` (a number or a name), and one EndpointSlice
/// per upstream (each upstream has its own loopback port), named port `port_name`.
pub fn service(
    ns: &str,
    name: &str,
    port: u16,
    port_name: &str,
    target: &str,
    upstreams: &[&Upstream],
) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  ports:\n  - {{name: {port_name}, port: {port}, targetPort: {target}, protocol: TCP}}\n"
    );
    for (i, u) in upstreams.iter().enumerate() {
        y += &slice(ns, name, &format!("{name}-{i}"), port_name, &[u.addr], true);
    }
    y
}

pub fn slice(
    ns: &str,
    service: &str,
    name: &str,
    port_name: &str,
    addrs: &[SocketAddr],
    ready: bool,
) -> String {
    let port = addrs.first().map_or(1, SocketAddr::port);
    let mut y = format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {{kubernetes.io/service-name: {service}}}\naddressType: IPv4\nports:\n- {{name: {port_name}, port: {port}, protocol: TCP}}\nendpoints:\n"
    );
    for a in addrs {
        let _ = writeln!(
            y,
            "- addresses: [\"{}\"]\n  conditions: {{ready: {ready}}}",
            a.ip()
        );
    }
    y
}

/// Options for tests: short timeouts so failures show quickly.
pub fn test_options() -> ProxyOptions {
    ProxyOptions {
        header_read_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_secs(5),
        access_log: false,
        ..ProxyOptions::default()
    }
}

pub fn server_config(manifests: &Manifests) -> ServerConfig {
    let mut c = ServerConfig::new(
        SourceConfig::Manifests {
            dir: manifests.path().to_owned(),
            interval: Duration::from_millis(5),
        },
        "127.0.0.1:0".parse().unwrap(),
    );
    c.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    c.options = test_options();
    c.shutdown_grace = Duration::from_secs(5);
    c
}

pub async fn start(config: ServerConfig) -> ServerHandle {
    let mut h = Server::start(config).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), h.ready())
        .await
        .expect("proxy not ready in time")
        .unwrap();
    h
}

/// Waits until the configuration generation has moved past `after`.
pub async fn next_generation(h: &mut ServerHandle, after: u64) {
    tokio::time::timeout(Duration::from_secs(10), h.wait_generation(after + 1))
        .await
        .expect("no reload in time")
        .unwrap();
}

pub type HttpClient = Client<HttpConnector, BoxBody>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 client connection over `io` (prior knowledge, or after ALPN `h2`), driven
/// by a task whose handle comes back with the sender.
pub async fn h2_client<T, B>(
    io: T,
) -> (
    hyper::client::conn::http2::SendRequest<B>,
    tokio::task::JoinHandle<hyper::Result<()>>,
)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    (send, tokio::spawn(conn))
}

pub fn empty() -> BoxBody {
    http_body_util::Empty::new()
        .map_err(|n| match n {})
        .boxed_unsync()
}

/// GET `path` with `Host: host` through the proxy at `addr`: (status, headers, body).
pub async fn get(
    c: &HttpClient,
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> (StatusCode, hyper::HeaderMap, String) {
    let r = request(c, addr, "GET", host, path, &[], None).await;
    (r.status, r.headers, r.body)
}

/// A response, read whole.
pub struct Reply {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    /// The name of the test upstream that answered.
    pub fn upstream(&self) -> String {
        seen(&self.body)["name"].as_str().unwrap().to_owned()
    }

    /// The name of the upstream that answered with its usual body, or else the body.
    pub fn upstream_or_text(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["name"].as_str().map(str::to_owned))
            .unwrap_or_else(|| self.body.clone())
    }
}

/// `method path` with `Host: host`, the `headers` and a `body` through the proxy at
/// `addr`, the response read whole.
pub async fn request(
    c: &HttpClient,
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Bytes>,
) -> Reply {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let body = match body {
        Some(bytes) => Full::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync(),
        None => empty(),
    };
    let resp = c.request(b.body(body).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// The upstream's report of what it saw.
pub fn seen(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not an upstream answer ({e}): {body}"))
}

/// Scrapes the metrics endpoint and returns the value of the first sample whose line
/// starts with `prefix` and contains every `labels` fragment.
pub async fn metric(addr: SocketAddr, name: &str, labels: &[&str]) -> Option<u64> {
    let text = scrape(addr).await;
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .reduce(|a, b| a + b)
}

/// The configuration problems the proxy counts now (`lb_ingress_config_problems`).
pub async fn config_problems(h: &ServerHandle) -> Option<u64> {
    let addr = h
        .metrics_addr
        .expect("the test server has a metrics listener");
    metric(addr, "lb_ingress_config_problems", &[]).await
}

pub async fn scrape(addr: SocketAddr) -> String {
    let (status, _, body) = get(&client(), addr, "metrics", "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    body
}
