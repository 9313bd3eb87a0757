//! Listeners and connections: the accept phase, composed in one place.
//!
//! Per connection, in this order and for these reasons:
//! 1. a permit from the connection semaphore, taken *before* `accept`, so that past
//!    `--max-connections` new clients wait in the kernel's backlog instead of costing
//!    memory here;
//! 2. the TLS handshake (HTTPS listener), bounded by the header read timeout, counted in
//!    `tls_handshakes_total`;
//! 3. hyper-util's auto connection (HTTP/1.1 with keep-alive, or HTTP/2 by ALPN or by
//!    prior knowledge), with upgrades, a timer for the header read timeout, and the
//!    header size limit;
//! 4. a watch on the connection: graceful shutdown on SIGTERM/SIGINT or
//!    [`ServerHandle::shutdown`], and the idle timeout.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use lb_k8s::SourceConfig;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::metrics::{ListenerLabel, Metrics, ResultLabel};
use crate::proxy::balance::EndpointRegistry;
use crate::proxy::{ConnInfo, Proxy, ProxyOptions};
use crate::source::Config;
use crate::source::watch::{Sinks, run as run_source};
use crate::tls::{CertResolver, server_config};

/// Everything needed to start the ingress.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub source: SourceConfig,
    pub listen: SocketAddr,
    pub listen_tls: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    pub ingress_class: String,
    pub options: ProxyOptions,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
}

impl ServerConfig {
    pub fn new(source: SourceConfig, listen: SocketAddr) -> Self {
        ServerConfig {
            source,
            listen,
            listen_tls: None,
            metrics_addr: None,
            ingress_class: "lb".into(),
            options: ProxyOptions::default(),
            shutdown_grace: Duration::from_secs(30),
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
}

impl Server {
    /// Binds the listeners (port 0 picks a free port), starts the source and serves.
    /// Requests are answered 503 until the first complete configuration is in.
    pub async fn start(config: ServerConfig) -> anyhow::Result<ServerHandle> {
        let mut options = config.options.clone();
        let registry = Arc::new(EndpointRegistry::new(options.eject_for));
        let mut prometheus = Registry::default();
        let metrics = Arc::new(Metrics::new(&mut prometheus, Arc::clone(&registry)));
        let certs = Arc::new(CertResolver::new());
        let routes = Arc::new(ArcSwap::from_pointee(Config::default()));

        let http = TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        let http_addr = http.local_addr()?;
        let https = match config.listen_tls {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?,
            ),
            None => None,
        };
        let https_addr = https.as_ref().map(TcpListener::local_addr).transpose()?;
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
        let source = tokio::spawn(run_source(
            config.source.into_source(),
            config.ingress_class.clone(),
            Sinks {
                config: Arc::clone(&routes),
                certs: Arc::clone(&certs),
                registry: Arc::clone(&registry),
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
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (drain_tx, drained) = mpsc::channel::<()>(1);
        let connections = Arc::new(Semaphore::new(options.max_connections));
        let listener = Listener {
            proxy: Arc::clone(&proxy),
            builder: builder(&options),
            connections: Arc::clone(&connections),
            shutdown: shutdown_rx.clone(),
            _drain: drain_tx.clone(),
            idle_timeout: options.idle_timeout,
        };
        tokio::spawn(listener.clone().accept_loop(http, None));
        info!(addr = %http_addr, class = %config.ingress_class, "serving HTTP");
        if let Some(https) = https {
            let tls = TlsAcceptor::from(Arc::new(server_config(certs)?));
            tokio::spawn(listener.accept_loop(https, Some((tls, options.header_read_timeout))));
            info!(addr = ?https_addr, "serving HTTPS");
        }
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
        })
    }
}

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
        self.source.abort();
        if let Some(t) = self.metrics_task {
            t.abort();
        }
    }
}

fn builder(options: &ProxyOptions) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(options.max_header_bytes.max(8192))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(options.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

#[derive(Clone)]
struct Listener {
    proxy: Arc<Proxy>,
    builder: auto::Builder<TokioExecutor>,
    connections: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
    /// Held by every connection task: shutdown is complete when all are dropped.
    _drain: mpsc::Sender<()>,
    idle_timeout: Duration,
}

impl Listener {
    async fn accept_loop(self, listener: TcpListener, tls: Option<(TlsAcceptor, Duration)>) {
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
            let this = self.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                this.connection(stream, peer, tls).await;
                drop(permit);
            });
        }
    }

    async fn connection(
        self,
        stream: TcpStream,
        peer: SocketAddr,
        tls: Option<(TlsAcceptor, Duration)>,
    ) {
        let listener = if tls.is_some() { "https" } else { "http" };
        let gauge = self
            .proxy
            .metrics
            .active_connections
            .get_or_create(&ListenerLabel { listener })
            .clone();
        gauge.inc();
        let _dec = scopeguard(move || {
            gauge.dec();
        });
        match tls {
            None => self.serve(TokioIo::new(stream), peer, false).await,
            Some((acceptor, timeout)) => {
                let handshake = tokio::time::timeout(timeout, acceptor.accept(stream)).await;
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
                    Ok(Ok(tls)) => self.serve(TokioIo::new(tls), peer, true).await,
                    Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                }
            }
        }
    }

    async fn serve<I>(&self, io: TokioIo<I>, peer: SocketAddr, tls: bool)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let info = Arc::new(ConnInfo::new(peer, tls));
        let proxy = Arc::clone(&self.proxy);
        let conn_info = Arc::clone(&info);
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let proxy = Arc::clone(&proxy);
            let info = Arc::clone(&conn_info);
            async move { Ok::<_, std::convert::Infallible>(proxy.handle(req, &info).await) }
        });
        let conn = self.builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(conn);
        let mut shutdown = self.shutdown.clone();
        let mut closing = false;
        let tick = (self.idle_timeout / 4).max(Duration::from_millis(10));
        let mut idle = tokio::time::interval(tick);
        idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        debug!(%peer, error = %e, "connection ended with an error");
                    }
                    break;
                }
                () = stopped(&mut shutdown), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = idle.tick(), if !closing => {
                    if info.idle_for().is_some_and(|d| d >= self.idle_timeout) {
                        debug!(%peer, "idle timeout");
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
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
