//! Listeners and connections: the accept phase, composed in one place.
//!
//! Per connection, in this order and for these reasons:
//! 1. a permit from the connection semaphore, taken *before* `accept`, so that past
//!    `--max-connections` new clients wait in the kernel's backlog instead of costing
//!    memory here;
//! 2. the TLS handshake (HTTPS listener), bounded by the header read timeout, counted in
//!    `tls_handshakes_total`;
//! 3. hyper's HTTP/1.1 connection (keep-alive, upgrades, the header size limit) or its
//!    HTTP/2 connection, chosen by ALPN or, on plain connections, by the HTTP/2 preface
//!    (prior knowledge) seen with a peek;
//! 4. a watch on the connection: graceful shutdown on SIGTERM/SIGINT or
//!    [`ServerHandle::shutdown`], the header read timeout and the idle timeout.
//!
//! Connections are served either by the runtime that starts the server or, with
//! [`ServerConfig::serving_threads`] (what the binary does), by threads with a
//! single-threaded runtime each and listening sockets of their own, the way nginx's
//! workers share nothing: a connection's requests, their upstream connections and the
//! pooled ones stay on its thread.
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::task::AtomicWaker;
use hyper::Request;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use lb_k8s::SourceConfig;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::{debug, info, warn};

use crate::metrics::{ListenerLabel, Metrics, ResultLabel};
use crate::proxy::balance::EndpointRegistry;
use crate::proxy::{ConnInfo, Expiry, FAR_FUTURE, Proxy, ProxyOptions};
use crate::source::Config;
use crate::source::watch::{Sinks, run as run_source};
use crate::tls::client_auth::ClientCert;
use crate::tls::{CertResolver, Handshakes, passthrough};

/// Everything needed to start the ingress.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub source: SourceConfig,
    pub listen: SocketAddr,
    pub listen_tls: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    /// The IngressClasses served (`--ingress-class`, `--controller-name`) and the
    /// certificate for names without one of their own (`--default-ssl-certificate`).
    pub scope: crate::source::Scope,
    pub options: ProxyOptions,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// What to write into the status of our Ingresses (nothing by default).
    pub status: crate::status::StatusConfig,
    /// Threads that serve connections. 0 (the default): the runtime that calls
    /// [`Server::start`] serves them, on its worker threads. N: N threads of their own,
    /// each with a single-threaded runtime and its own listening sockets (SO_REUSEPORT:
    /// the kernel spreads new connections over them), so that a connection, its
    /// requests and their upstream connections stay on one thread: no work stealing,
    /// no wakeups across threads, no contention for the connection pools.
    pub serving_threads: usize,
}

impl ServerConfig {
    pub fn new(source: SourceConfig, listen: SocketAddr) -> Self {
        ServerConfig {
            source,
            listen,
            listen_tls: None,
            metrics_addr: None,
            scope: crate::source::Scope {
                class: crate::source::class::ClassId {
                    name: "lb".into(),
                    controller: crate::source::class::CONTROLLER.into(),
                },
                default_certificate: None,
                default_backend: None,
                namespace: None,
            },
            options: ProxyOptions::default(),
            shutdown_grace: Duration::from_secs(30),
            status: crate::status::StatusConfig::default(),
            serving_threads: 0,
        }
    }
}

/// The running ingress.
pub struct Server;

/// Handle on a running ingress: its bound addresses, readiness and shutdown.
pub struct ServerHandle {
    pub http_addr: SocketAddr,
    pub https_addr: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    generation: watch::Receiver<u64>,
    shutdown: watch::Sender<bool>,
    drained: mpsc::Receiver<()>,
    source: tokio::task::JoinHandle<anyhow::Result<()>>,
    metrics_task: Option<tokio::task::JoinHandle<()>>,
    grace: Duration,
    /// `--update-status-on-shutdown`: what clears the Ingress status when this is the
    /// last replica.
    clear_status: Option<crate::status::ShutdownStatus>,
}

impl Server {
    /// Binds the listeners (port 0 picks a free port), starts the source and serves.
    /// Requests are answered 503 until the first complete configuration is in.
    pub async fn start(config: ServerConfig) -> anyhow::Result<ServerHandle> {
        let mut options = config.options.clone();
        let registry = Arc::new(EndpointRegistry::new(options.eject_for));
        let mut prometheus = Registry::default();
        let metrics = Arc::new(Metrics::new(&mut prometheus, Arc::clone(&registry)));
        let status_metrics = crate::status::StatusMetrics::new(&mut prometheus);
        let certs = Arc::new(CertResolver::new(match config.listen_tls {
            Some(_) => Some(crate::tls::fake_certificate()?),
            None => None,
        }));
        let routes = Arc::new(ArcSwap::from_pointee(Config::default()));

        let threads = config.serving_threads;
        let http = Sockets::bind(config.listen, threads).await?;
        let http_addr = http.local_addr()?;
        let https = match config.listen_tls {
            Some(addr) => Some(Sockets::bind(addr, threads).await?),
            None => None,
        };
        let https_addr = https.as_ref().map(Sockets::local_addr).transpose()?;
        options.https_port = https_addr.map(|a| a.port());
        let (metrics_addr, metrics_task) = match config.metrics_addr {
            Some(addr) => {
                let (bound, task) = crate::metrics::serve(addr, Arc::new(prometheus)).await?;
                info!(addr = %bound, "metrics at http://{bound}/metrics");
                (Some(bound), Some(task))
            }
            None => (None, None),
        };

        let (generation_tx, generation) = watch::channel(0u64);
        let scope = config.scope.clone();
        let clear_status =
            crate::status::ShutdownStatus::new(&config.source, &config.scope, &config.status);
        let source = tokio::spawn(run_source(
            crate::status::source(config.source, &scope.class, config.status, status_metrics),
            scope,
            Sinks {
                config: Arc::clone(&routes),
                certs: Arc::clone(&certs),
                registry: Arc::clone(&registry),
                limits: Arc::default(),
                metrics: Arc::clone(&metrics),
                generation: generation_tx,
            },
        ));

        let proxy = Arc::new(Proxy::new(
            routes,
            Arc::clone(&certs),
            registry,
            Arc::clone(&metrics),
            options.clone(),
        ));
        tokio::spawn(crate::proxy::upstream::reap(
            Arc::downgrade(&proxy.registry),
            proxy.client.idle_timeout(),
        ));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (drain_tx, drained) = mpsc::channel::<()>(1);
        let connections = Arc::new(Semaphore::new(options.max_connections));
        let listener = Listener {
            proxy: Arc::clone(&proxy),
            builders: builders(&options),
            connections: Arc::clone(&connections),
            shutdown: shutdown_rx.clone(),
            _drain: drain_tx.clone(),
            _thread: None,
            header_timeout: options.header_read_timeout,
            idle_timeout: options.idle_timeout,
        };
        let https = match https {
            Some(sockets) => {
                let tls = Arc::new(Handshakes::new(certs)?);
                Some((sockets, (tls, options.header_read_timeout)))
            }
            None => None,
        };
        match (http, https) {
            (Sockets::Runtime(http), https) => {
                tokio::spawn(listener.clone().accept_loop(http, None));
                if let Some((Sockets::Runtime(https), tls)) = https {
                    tokio::spawn(listener.clone().accept_loop(https, Some(tls)));
                }
            }
            (Sockets::Threads(http), https) => {
                let mut https = match https {
                    Some((Sockets::Threads(sockets), tls)) => sockets
                        .into_iter()
                        .map(|s| Some((s, tls.clone())))
                        .collect(),
                    _ => Vec::new(),
                };
                https.resize_with(http.len(), || None);
                for (i, (http, https)) in http.into_iter().zip(https).enumerate() {
                    let listener = listener.clone();
                    std::thread::Builder::new()
                        .name(format!("lb-serve-{i}"))
                        .spawn(move || listener.serve_thread(http, https))
                        .map_err(|e| anyhow::anyhow!("cannot start a serving thread: {e}"))?;
                }
            }
        }
        info!(addr = %http_addr, class = %config.scope.class.name, threads, "serving HTTP");
        if let Some(addr) = https_addr {
            info!(%addr, "serving HTTPS");
        }
        drop(listener);
        drop(drain_tx);
        Ok(ServerHandle {
            http_addr,
            https_addr,
            metrics_addr,
            generation,
            shutdown,
            drained,
            source,
            metrics_task,
            grace: config.shutdown_grace,
            clear_status,
        })
    }
}

/// How long shutdown waits for the Ingress status to be cleared.
const STATUS_CLEAR_TIME: Duration = Duration::from_secs(10);

impl ServerHandle {
    /// Waits for the first complete configuration (or the source to fail).
    pub async fn ready(&mut self) -> anyhow::Result<()> {
        self.wait_generation(1).await
    }

    /// Waits until configuration generation `n` (or a later one) is serving.
    pub async fn wait_generation(&mut self, n: u64) -> anyhow::Result<()> {
        tokio::select! {
            r = self.generation.wait_for(|g| *g >= n) => r.map(|_| ()).map_err(|_| anyhow::anyhow!("the source stopped")),
            r = &mut self.source => Err(match r {
                Ok(Ok(())) => anyhow::anyhow!("the source stopped"),
                Ok(Err(e)) => e,
                Err(e) => e.into(),
            }),
        }
    }

    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Runs until SIGTERM or SIGINT, or until the source fails; then shuts down.
    pub async fn run_until_signal(mut self) -> anyhow::Result<()> {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let result = tokio::select! {
            _ = term.recv() => { info!("SIGTERM: draining"); Ok(()) }
            _ = tokio::signal::ctrl_c() => { info!("SIGINT: draining"); Ok(()) }
            r = &mut self.source => match r {
                Ok(Ok(())) => Err(anyhow::anyhow!("the source stopped")),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(e.into()),
            },
        };
        self.shutdown().await;
        result
    }

    /// Stops accepting, lets in-flight requests finish (up to the grace period) and
    /// closes every connection.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if tokio::time::timeout(self.grace, self.drained.recv())
            .await
            .is_err()
        {
            warn!(grace = ?self.grace, "connections still open after the grace period");
        }
        // The status writer stops first: it would write back what is cleared next.
        self.source.abort();
        if let Some(clear) = self.clear_status.take() {
            match tokio::time::timeout(STATUS_CLEAR_TIME, clear.run()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn!(error = %e, "cannot clear the Ingress status on shutdown"),
                Err(_) => warn!(
                    "clearing the Ingress status on shutdown took over {STATUS_CLEAR_TIME:?}; \
                     left as it is"
                ),
            }
        }
        if let Some(t) = self.metrics_task {
            t.abort();
        }
    }
}

/// hyper's HTTP/1.1 and HTTP/2 connection builders. Which one serves a connection is
/// decided here (ALPN, or the HTTP/2 preface on plain connections), not by hyper-util's
/// auto connection: that one reads the first 24 bytes on their own and replays them,
/// so hyper's first read of every connection returns only those and its read buffer
/// grows to 16 KiB for good (8 KiB otherwise), and every later read passes through the
/// replaying wrapper.
#[derive(Clone)]
struct Builders {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

fn builders(options: &ProxyOptions) -> Builders {
    let mut h1 = http1::Builder::new();
    // The header read timeout is the connection watch's (see `Listener::serve`): hyper's
    // makes, registers and drops a timer for every request.
    h1.header_read_timeout(None)
        .max_buf_size(options.max_header_bytes.max(8192))
        .keep_alive(true);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(options.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    Builders { h1, h2 }
}

/// One client connection as hyper serves it. HTTP/1 is inline on purpose: it is the
/// common case, and the enum lives inside the connection's task anyway.
#[allow(clippy::large_enum_variant)]
enum Served<I, S>
where
    S: HttpService<Incoming>,
{
    Http1(http1::UpgradeableConnection<I, S>),
    /// Boxed: rare, and pinned by its own future.
    Http2(Pin<Box<http2::Connection<I, S, TokioExecutor>>>),
}

impl<I, S, B> Served<I, S>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send + 'static,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(&mut self) {
        match self {
            Served::Http1(c) => Pin::new(c).graceful_shutdown(),
            Served::Http2(c) => c.as_mut().graceful_shutdown(),
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<hyper::Result<()>> {
        match self {
            Served::Http1(c) => Pin::new(c).poll(cx),
            Served::Http2(c) => c.as_mut().poll(cx),
        }
    }
}

/// Whether a plain connection opens with the HTTP/2 preface (h2c with prior knowledge).
/// Peeks, so nothing is consumed; decided by the first byte that differs from the
/// preface, which for HTTP/1 is the first byte of nearly every request.
async fn opens_with_h2_preface(stream: &TcpStream) -> std::io::Result<bool> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; PREFACE.len()];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 || buf[..n] != PREFACE[..n] {
            return Ok(false);
        }
        if n == PREFACE.len() {
            return Ok(true);
        }
        // A part of the preface so far: wait for the rest (bounded by the caller).
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[derive(Clone)]
struct Listener {
    proxy: Arc<Proxy>,
    builders: Builders,
    connections: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
    /// Held by every connection task: shutdown is complete when all are dropped.
    _drain: mpsc::Sender<()>,
    /// On a serving thread: held the same way, for that thread's connections alone.
    _thread: Option<mpsc::Sender<()>>,
    header_timeout: Duration,
    idle_timeout: Duration,
}

/// The listening sockets of one address.
enum Sockets {
    /// One, served by the runtime that started the server.
    Runtime(TcpListener),
    /// One per serving thread, bound to the same address with SO_REUSEPORT.
    Threads(Vec<std::net::TcpListener>),
}

impl Sockets {
    async fn bind(addr: SocketAddr, threads: usize) -> anyhow::Result<Sockets> {
        let cannot = |e: std::io::Error| anyhow::anyhow!("cannot listen on {addr}: {e}");
        if threads == 0 {
            return Ok(Sockets::Runtime(
                TcpListener::bind(addr).await.map_err(cannot)?,
            ));
        }
        let mut bound = addr;
        let mut sockets = Vec::with_capacity(threads);
        for _ in 0..threads {
            let socket = if bound.is_ipv4() {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            }
            .map_err(cannot)?;
            socket.set_reuseaddr(true).map_err(cannot)?;
            socket.set_reuseport(true).map_err(cannot)?;
            socket.bind(bound).map_err(cannot)?;
            // The backlog tokio's TcpListener::bind uses.
            let listener = socket.listen(1024).map_err(cannot)?;
            // Port 0: the others take the port the first one got.
            bound = listener.local_addr().map_err(cannot)?;
            sockets.push(listener.into_std().map_err(cannot)?);
        }
        Ok(Sockets::Threads(sockets))
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Sockets::Runtime(l) => l.local_addr(),
            Sockets::Threads(l) => l[0].local_addr(),
        }
    }
}

impl Listener {
    /// A serving thread: its own runtime, accepting on its own sockets until shutdown,
    /// then running until the last of its connections has ended.
    fn serve_thread(
        self,
        http: std::net::TcpListener,
        https: Option<(std::net::TcpListener, (Arc<Handshakes>, Duration))>,
    ) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                warn!(error = %e, "cannot start a serving runtime");
                return;
            }
        };
        rt.block_on(async move {
            let (done, mut all_done) = mpsc::channel::<()>(1);
            let this = Listener {
                proxy: Arc::new(self.proxy.for_thread()),
                _thread: Some(done),
                ..self
            };
            match TcpListener::from_std(http) {
                Ok(l) => drop(tokio::spawn(this.clone().accept_loop(l, None))),
                Err(e) => warn!(error = %e, "cannot serve HTTP on this thread"),
            }
            if let Some((https, tls)) = https {
                match TcpListener::from_std(https) {
                    Ok(l) => drop(tokio::spawn(this.clone().accept_loop(l, Some(tls)))),
                    Err(e) => warn!(error = %e, "cannot serve HTTPS on this thread"),
                }
            }
            drop(this);
            // Every accept loop and connection of this thread holds a sender.
            let _ = all_done.recv().await;
        });
    }

    async fn accept_loop(self, listener: TcpListener, tls: Option<(Arc<Handshakes>, Duration)>) {
        let mut shutdown = self.shutdown.clone();
        loop {
            let permit = tokio::select! {
                p = Arc::clone(&self.connections).acquire_owned() => p.expect("semaphore closed"),
                () = stopped(&mut shutdown) => return,
            };
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = stopped(&mut shutdown) => return,
            };
            let _ = stream.set_nodelay(true);
            // One task type per listener kind: a task's memory is its future's size, and
            // one future for both kinds would give every plain connection the size of the
            // TLS one (the rustls connection state is held inline): 6.6 KiB instead of
            // the plain path's own.
            let this = self.clone();
            match &tls {
                None => drop(tokio::spawn(async move {
                    let _open = this.count_open("http");
                    this.plain_connection(stream, peer).await;
                    drop(permit);
                })),
                Some((acceptor, timeout)) => {
                    let (acceptor, timeout) = (acceptor.clone(), *timeout);
                    drop(tokio::spawn(async move {
                        let _open = this.count_open("https");
                        this.tls_connection(stream, peer, acceptor, timeout).await;
                        drop(permit);
                    }));
                }
            }
        }
    }

    /// Counts a connection of `listener` as open until the returned guard is dropped.
    fn count_open(&self, listener: &'static str) -> impl Drop + use<> {
        let gauge = self
            .proxy
            .metrics
            .active_connections
            .get_or_create(&ListenerLabel { listener })
            .clone();
        gauge.inc();
        scopeguard(move || {
            gauge.dec();
        })
    }

    async fn plain_connection(&self, stream: TcpStream, peer: SocketAddr) {
        let mut shutdown = self.shutdown.clone();
        let h2 = tokio::select! {
            r = tokio::time::timeout(self.header_timeout, opens_with_h2_preface(&stream)) => r,
            // Nothing received yet: nothing to drain.
            () = stopped(&mut shutdown) => return,
        };
        match h2 {
            Ok(Ok(h2)) => {
                self.serve(TokioIo::new(stream), ConnInfo::new(peer, false), h2)
                    .await;
            }
            Ok(Err(e)) => debug!(%peer, error = %e, "connection failed before a request"),
            Err(_) => debug!(%peer, "no request head in time: closing"),
        }
    }

    async fn tls_connection(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        handshakes: Arc<Handshakes>,
        timeout: Duration,
    ) {
        // ssl-passthrough: the ClientHello is peeked at, and a passthrough host's
        // connection relayed as it is.
        if handshakes.table().has_passthrough() {
            let name = tokio::time::timeout(timeout, passthrough::peek_server_name(&stream)).await;
            let target = match name {
                // The table of now: the configuration may have changed while waiting.
                Ok(Ok(Some(name))) => handshakes.table().passthrough(&name),
                Ok(Ok(None)) => None,
                Ok(Err(e)) => {
                    return debug!(%peer, error = %e, "connection failed before a ClientHello");
                }
                Err(_) => return debug!(%peer, "no ClientHello in time: closing"),
            };
            if let Some(target) = target {
                // Relayed until both sides close or neither sends anything for
                // `--passthrough-idle-timeout-ms`; at shutdown, until the grace period
                // ends (the relay cannot tell where requests end).
                let proxy = &self.proxy;
                let relay = passthrough::relay(
                    stream,
                    &target,
                    &proxy.registry,
                    proxy.options.connect_timeout,
                    proxy.options.passthrough_idle_timeout,
                );
                match relay.await {
                    Ok((up, down)) => {
                        debug!(%peer, service = %target.service, up, down, "ssl-passthrough connection ended");
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotConnected => {
                        warn!(%peer, service = %target.service, error = %e, "ssl-passthrough: no endpoint");
                    }
                    Err(e) => {
                        debug!(%peer, service = %target.service, error = %e, "ssl-passthrough connection failed");
                    }
                }
                return;
            }
        }
        // The configuration is chosen from the ClientHello: a name whose Ingress checks
        // client certificates gets a handshake that asks for one.
        let handshake = tokio::time::timeout(timeout, async {
            let start =
                tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream)
                    .await?;
            let (config, ca) = handshakes.choose(start.client_hello().server_name());
            let tls = start.into_stream(config).await?;
            Ok::<_, std::io::Error>((tls, ca))
        })
        .await;
        let result = match &handshake {
            Ok(Ok(_)) => "success",
            _ => "error",
        };
        self.proxy
            .metrics
            .tls_handshakes
            .get_or_create(&ResultLabel { result })
            .inc();
        match handshake {
            Ok(Ok((tls, ca))) => {
                let session = tls.get_ref().1;
                let h2 = session.alpn_protocol() == Some(b"h2");
                let mut info = ConnInfo::new(peer, true);
                if let Some(ca) = ca {
                    info.client_cert = Some(Box::new(ClientCert::check(
                        &ca,
                        session.peer_certificates(),
                    )));
                }
                self.serve(TokioIo::new(tls), info, h2).await;
            }
            Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
            Err(_) => debug!(%peer, "TLS handshake timed out"),
        }
    }

    async fn serve<I>(&self, io: TokioIo<I>, info: ConnInfo, h2: bool)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let peer = info.peer;
        let info = Arc::new(info);
        let proxy = Arc::clone(&self.proxy);
        let conn_info = Arc::clone(&info);
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let response = proxy.handle(req, &conn_info);
            async move { Ok::<_, std::convert::Infallible>(response.await) }
        });
        let mut conn = if h2 {
            Served::Http2(Box::pin(self.builders.h2.serve_connection(io, service)))
        } else {
            Served::Http1(
                self.builders
                    .h1
                    .serve_connection(io, service)
                    .with_upgrades(),
            )
        };
        let mut shutdown = self.shutdown.clone();
        let stop = stopped(&mut shutdown);
        tokio::pin!(stop);
        let mut closing = false;
        // One timer for the connection's life, reset only when it fires: the header
        // read and idle timeouts cost nothing per request.
        let (header, idle) = (
            self.header_timeout.min(FAR_FUTURE),
            self.idle_timeout.min(FAR_FUTURE),
        );
        let mut watch = Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(
            info.opened() + header.min(idle),
        )));
        // The shutdown signal and the timer wake the task through their own waker,
        // which records it: they are polled only then (and once at the start), not on
        // every read and write of the connection, which are nearly all the wakeups.
        let side = Arc::new(SideWaker::new());
        let side_waker = Waker::from(Arc::clone(&side));
        let result = std::future::poll_fn(|cx| {
            side.task.register(cx.waker());
            if let Poll::Ready(r) = conn.poll(cx) {
                return Poll::Ready(r);
            }
            if closing || !side.woken.swap(false, Ordering::AcqRel) {
                return Poll::Pending;
            }
            let mut side_cx = Context::from_waker(&side_waker);
            if stop.as_mut().poll(&mut side_cx).is_ready() {
                if !info.served_any() {
                    // Nothing to drain, and an HTTP/2 connection would wait for its
                    // preface before it could close gracefully.
                    return Poll::Ready(Ok(()));
                }
                closing = true;
            }
            while !closing && watch.as_mut().poll(&mut side_cx).is_ready() {
                match info.expiry(std::time::Instant::now(), header, idle) {
                    Expiry::Check(at) => watch.as_mut().reset(tokio::time::Instant::from_std(at)),
                    Expiry::Close => {
                        debug!(%peer, "no request head in time: closing");
                        return Poll::Ready(Ok(()));
                    }
                    Expiry::Idle => {
                        debug!(%peer, "idle timeout");
                        closing = true;
                    }
                }
            }
            if !closing {
                return Poll::Pending;
            }
            conn.graceful_shutdown();
            conn.poll(cx)
        })
        .await;
        if let Err(e) = result {
            debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

/// The waker of a connection's side signals (see [`Listener::serve`]): wakes the
/// connection task and remembers that it did.
struct SideWaker {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl SideWaker {
    fn new() -> Self {
        SideWaker {
            // Polled once at the start, to register.
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        }
    }
}

impl Wake for SideWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// Runs `f` when dropped.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// Resolves once shutdown has been asked for.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}
