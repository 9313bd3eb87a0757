//! The upstream side: pooled HTTP/1.1 connections straight to pod addresses, and the
//! attempt loop with its retry rules.
//!
//! Pooling: each [`Endpoint`] keeps its own idle connections ([`ConnPool`], one shard
//! per thread), so that a request takes a connection with one uncontended lock and no
//! map lookup, and a reload that keeps an endpoint keeps its warm connections (endpoint
//! state outlives configuration swaps, see [`super::balance`]). A connection is lent to
//! one request and given back when its response has been read to the end
//! ([`PooledConn::release`]); the most recently used is taken first, at most
//! [`MAX_IDLE_PER_ENDPOINT`] are kept per thread, and one idle for the idle timeout is
//! closed ([`ConnPool::prune`], run by [`reap`]). A request that a reused connection
//! could not start (the upstream closed it while it was idle) is sent again on another
//! connection, as no byte of it has gone out. Each connection is driven by a task of its
//! own (hyper's client connection), on the runtime that opened it.
//!
//! HTTP/2 (h2c, prior knowledge) goes to the Service ports whose `appProtocol` says so
//! (`kubernetes.io/h2c`, or `grpc`), which is what gRPC backends need: HTTP/1.1 cannot
//! carry their trailers. Streams are multiplexed, so each endpoint keeps one shared
//! connection per pool shard instead of a stack of idle ones; a closed one is replaced
//! by the next request.
//!
//! Retry rules: a request is sent again, to another endpoint, only when no byte of it
//! can have been processed: the connection could not be made, or the method is
//! idempotent and the request body was never read. Never after a timeout (the upstream
//! may still be working on it), and only while the [`RetryBudget`] allows. An Ingress's
//! `proxy-next-upstream` changes which of these go on ([`NextUpstream`]), and may add
//! late answers and answers with given statuses.
//!
//! [`RetryBudget`]: super::retry::RetryBudget
use std::net::SocketAddr;
use std::ops::DerefMut;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::header::HeaderMap;
use hyper::http::uri::PathAndQuery;
use hyper::{Method, Request, Response, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tracing::debug;

use super::balance::{Balance, Endpoint, EndpointRegistry, InFlight};
use super::body::{Progress, RequestBody};
use super::error::{BoxError, ProxyError};
use super::log::RequestLog;
use super::{FAR_FUTURE, Proxy};
use crate::metrics::ServiceLabel;
use crate::source::Target;
use crate::source::annotations::NextUpstream;
use crate::tls::upstream::UpstreamTls;

/// Idle connections kept per endpoint and thread, at most; more are closed once done.
pub const MAX_IDLE_PER_ENDPOINT: usize = 256;

/// Pool shards per endpoint: threads use them in turn (more threads share them).
const SHARDS: usize = 8;

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
}

/// This thread's pool shard.
fn shard() -> usize {
    SHARD.with(|s| *s)
}

/// An HTTP/1.1 connection's request handle, and its task: dropping the handle ends the
/// task, so that a connection given up on (a deadline missed, a client gone) does not
/// linger with an upstream that neither answers nor reads, holding the client's request
/// body and, through it, the client's connection. (hyper's connection task would
/// otherwise wait for that upstream for as long as it keeps the socket open.)
struct Sender {
    tx: http1::SendRequest<RequestBody>,
    /// None once the connection is handed to an upgrade (its task must finish that).
    task: Option<tokio::task::AbortHandle>,
}

impl std::ops::Deref for Sender {
    type Target = http1::SendRequest<RequestBody>;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl std::ops::DerefMut for Sender {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

type H2Sender = http2::SendRequest<RequestBody>;

/// The protocol spoken to a Service port's endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    /// HTTP/2 over cleartext TCP with prior knowledge.
    H2c,
    /// HTTP/1.1 over TLS.
    Https,
    /// HTTP/2 over TLS (ALPN `h2`): gRPC over TLS.
    H2Tls,
}

impl UpstreamProtocol {
    /// From a Service port's `appProtocol`: `kubernetes.io/h2c` (the standard name) or
    /// `h2c`/`grpc` (common unprefixed ones) mean HTTP/2; `https`, `kubernetes.io/wss`
    /// and `wss` HTTP/1.1 over TLS; anything else HTTP/1.1.
    pub fn from_app_protocol(app_protocol: Option<&str>) -> UpstreamProtocol {
        match app_protocol.map(str::to_ascii_lowercase).as_deref() {
            Some("kubernetes.io/h2c" | "h2c" | "grpc") => UpstreamProtocol::H2c,
            Some("https" | "kubernetes.io/wss" | "wss") => UpstreamProtocol::Https,
            _ => UpstreamProtocol::Http1,
        }
    }

    pub fn http2(self) -> bool {
        matches!(self, UpstreamProtocol::H2c | UpstreamProtocol::H2Tls)
    }

    pub fn tls(self) -> bool {
        matches!(self, UpstreamProtocol::Https | UpstreamProtocol::H2Tls)
    }
}

/// A connection's response timer: one tokio timer for the connection's life, moved to
/// each request's deadline. Moving a registered timer later is one atomic update in
/// tokio; a timer made and dropped per request is an allocation and two updates of the
/// timer wheel under its lock. While the connection is idle its timer may still fire
/// (at the last request's deadline): that wakes the task that last waited on it, which
/// finds nothing to do.
type Timer = Pin<Box<tokio::time::Sleep>>;

struct Idle {
    tx: Sender,
    timer: Timer,
    since: Instant,
}

/// One thread's idle connections, oldest first, on a cache line of its own.
#[derive(Default)]
#[repr(align(64))]
struct Shard(Mutex<Vec<Idle>>);

/// The idle keep-alive connections to one endpoint, by thread: a connection goes back
/// to the shard of the thread that took it, and a thread takes only from its own, so
/// that with a runtime per thread a request never drives (and wakes) a connection task
/// of another thread, and threads do not contend for one lock.
#[derive(Default)]
pub struct ConnPool {
    shards: [Shard; SHARDS],
    /// HTTP/2: one shared connection per shard, and when a request last took it.
    h2: [Mutex<Option<(H2Sender, Instant)>>; SHARDS],
}

impl std::fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnPool")
            .field("idle", &self.len())
            .finish()
    }
}

impl ConnPool {
    fn lock(&self, shard: usize) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.shards[shard]
            .0
            .lock()
            .expect("connection pool poisoned")
    }

    /// The most recently used open connection of `shard`, unless it has been idle too
    /// long (then so have all the others, which are closed).
    fn take(&self, shard: usize, now: Instant, idle_timeout: Duration) -> Option<(Sender, Timer)> {
        let mut idle = self.lock(shard);
        while let Some(c) = idle.pop() {
            if now.saturating_duration_since(c.since) >= idle_timeout {
                idle.clear();
                return None;
            }
            if !c.tx.is_closed() {
                return Some((c.tx, c.timer));
            }
        }
        None
    }

    fn put(&self, shard: usize, tx: Sender, timer: Timer, now: Instant) {
        let mut idle = self.lock(shard);
        if idle.len() < MAX_IDLE_PER_ENDPOINT {
            idle.push(Idle {
                tx,
                timer,
                since: now,
            });
        }
    }

    /// Closes the connections idle for `idle_timeout` or more, and forgets closed ones.
    /// An HTTP/2 connection no request has taken for that long is let go: streams still
    /// open on it finish (each holds the connection), then it closes.
    pub fn prune(&self, now: Instant, idle_timeout: Duration) {
        for shard in 0..SHARDS {
            self.lock(shard).retain(|c| {
                !c.tx.is_closed() && now.saturating_duration_since(c.since) < idle_timeout
            });
            let mut h2 = self.h2_lock(shard);
            if h2.as_ref().is_some_and(|(tx, since)| {
                tx.is_closed() || now.saturating_duration_since(*since) >= idle_timeout
            }) {
                *h2 = None;
            }
        }
    }

    fn h2_lock(&self, shard: usize) -> std::sync::MutexGuard<'_, Option<(H2Sender, Instant)>> {
        self.h2[shard].lock().expect("connection pool poisoned")
    }

    /// The shard's HTTP/2 connection, if it is open, taken at `now`.
    fn h2_take(&self, shard: usize, now: Instant) -> Option<H2Sender> {
        let mut slot = self.h2_lock(shard);
        match slot.as_mut() {
            Some((tx, since)) if !tx.is_closed() => {
                *since = now;
                Some(tx.clone())
            }
            Some(_) => {
                *slot = None;
                None
            }
            None => None,
        }
    }

    fn h2_put(&self, shard: usize, tx: &H2Sender, now: Instant) {
        let mut slot = self.h2_lock(shard);
        if slot.as_ref().is_none_or(|(tx, _)| tx.is_closed()) {
            *slot = Some((tx.clone(), now));
        }
    }

    /// Idle connections held (an HTTP/2 connection counts as one).
    pub fn len(&self) -> usize {
        (0..SHARDS)
            .map(|shard| self.lock(shard).len() + usize::from(self.h2_lock(shard).is_some()))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A connection lent to one request. [`PooledConn::release`] gives it back to its
/// endpoint's pool (call it once the response has been read to the end); dropping it
/// instead closes the connection once the exchange on it is over.
pub struct PooledConn {
    tx: Sender,
    timer: Timer,
    endpoint: Arc<Endpoint>,
    /// The pool shard it goes back to.
    shard: usize,
}

impl std::fmt::Debug for PooledConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledConn")
            .field("endpoint", &self.endpoint.addr)
            .finish_non_exhaustive()
    }
}

impl PooledConn {
    /// The connection switched protocols: its task hands the socket to the upgrade and
    /// ends by itself.
    pub fn upgraded(mut self) {
        self.tx.task = None;
    }

    /// Gives the connection back, idle since `now`.
    pub fn release(mut self, now: Instant) {
        if self.tx.is_closed() {
            return;
        }
        if self.tx.is_ready() {
            self.endpoint
                .conns
                .put(self.shard, self.tx, self.timer, now);
            return;
        }
        // The connection is still busy (the request body may still be going out): it
        // goes back to the pool once it can take the next request, not before, so that
        // no other request waits on it.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if self.tx.ready().await.is_ok() {
                    let now = Instant::now();
                    self.endpoint
                        .conns
                        .put(self.shard, self.tx, self.timer, now);
                }
            });
        }
    }
}

/// How a request goes to an endpoint: over TLS or not, how long a new connection may
/// take (TCP, then the TLS handshake, each), and when the response head is due.
#[derive(Clone, Copy, Debug)]
struct Exchange<'a> {
    tls: bool,
    /// `proxy-ssl-verify`: the connectors and name to verify against (else the
    /// unverified ones, for the endpoint's address).
    verified: Option<&'a UpstreamTls>,
    connect: Duration,
    deadlines: Deadlines,
}

/// The deadlines of one exchange, as nginx's: while the request body is on its way, a
/// stretch without progress may last `send` (`proxy-send-timeout`); once all of it has
/// gone (or there was none), the response head has `read` (`proxy-read-timeout`). A
/// large upload to a slow but working upstream is therefore never cut by the read
/// timeout, and a client that stops sending its body is told so (408), not blamed on
/// the upstream.
#[derive(Clone, Copy, Debug)]
struct Deadlines {
    started: Instant,
    send: Duration,
    read: Duration,
}

/// Which deadline of [`Deadlines`] was missed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Missed {
    Response,
    UpstreamSend,
    ClientBody,
}

impl Deadlines {
    fn next(&self, body: &RequestBody) -> (Instant, Missed) {
        // Capped as tokio caps a far-off deadline.
        let after = |from: Option<Instant>, d: Duration| {
            from.map_or(self.started, |t| t.max(self.started)) + d.min(FAR_FUTURE)
        };
        match body.progress() {
            Progress::Sent(at) => (after(at, self.read), Missed::Response),
            Progress::Sending {
                moved_at,
                waiting_on_client,
            } => (
                after(moved_at, self.send),
                if waiting_on_client {
                    Missed::ClientBody
                } else {
                    Missed::UpstreamSend
                },
            ),
        }
    }
}

/// A TCP connection to `addr` (Nagle off), or the reason there is none within `timeout`.
async fn tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, Failure> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(Failure::Connect(e.into())),
        Err(_) => {
            return Err(Failure::Connect(
                format!("connect timed out after {} ms", timeout.as_millis()).into(),
            ));
        }
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Why an attempt failed.
enum Failure {
    /// The TCP connection could not be made (or not in time).
    Connect(BoxError),
    /// The connection was made but the exchange failed.
    Upstream(BoxError),
    /// A deadline of the exchange passed ([`Deadlines`]).
    Timeout(Missed),
}

impl Failure {
    fn into_error(self, addr: SocketAddr, deadlines: &Deadlines) -> ProxyError {
        match self {
            Failure::Connect(source) => ProxyError::Connect { addr, source },
            Failure::Upstream(source) => ProxyError::Upstream { addr, source },
            Failure::Timeout(Missed::Response) => ProxyError::Timeout {
                addr,
                timeout_ms: deadlines.read.as_millis(),
            },
            Failure::Timeout(Missed::UpstreamSend) => ProxyError::SendTimeout {
                addr,
                timeout_ms: deadlines.send.as_millis(),
            },
            Failure::Timeout(Missed::ClientBody) => ProxyError::ClientBodyTimeout {
                timeout_ms: deadlines.send.as_millis(),
            },
        }
    }
}

/// Opens connections to endpoints and sends requests on pooled ones.
#[derive(Clone)]
pub struct UpstreamClient {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    tls_h1: TlsConnector,
    tls_h2: TlsConnector,
    idle_timeout: Duration,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

pub fn client(idle_timeout: Duration) -> UpstreamClient {
    UpstreamClient {
        h1: http1::Builder::new(),
        h2: http2::Builder::new(TokioExecutor::new()),
        tls_h1: crate::tls::upstream::connector(b"http/1.1"),
        tls_h2: crate::tls::upstream::connector(b"h2"),
        idle_timeout,
    }
}

/// The TLS client side of `stream` to `addr` (no SNI, certificate not verified: see
/// [`crate::tls::upstream`]).
async fn tls(
    connector: &TlsConnector,
    name: ServerName<'static>,
    stream: TcpStream,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, Failure> {
    match tokio::time::timeout(timeout, connector.connect(name, stream)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(Failure::Connect(format!("TLS handshake: {e}").into())),
        Err(_) => Err(Failure::Connect(
            format!("TLS handshake timed out after {} ms", timeout.as_millis()).into(),
        )),
    }
}

impl UpstreamClient {
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// The connector (ALPN `h2` or `http/1.1`) and server name for TLS to `addr`: the
    /// route's verified ones, or the unverified ones with the pod's address (no SNI).
    fn tls_for<'a>(
        &'a self,
        addr: SocketAddr,
        how: &Exchange<'a>,
        h2: bool,
    ) -> (&'a TlsConnector, ServerName<'static>) {
        match (how.verified, h2) {
            (Some(v), true) => (&v.h2, v.name.clone()),
            (Some(v), false) => (&v.h1, v.name.clone()),
            (None, true) => (&self.tls_h2, ServerName::IpAddress(addr.ip().into())),
            (None, false) => (&self.tls_h1, ServerName::IpAddress(addr.ip().into())),
        }
    }

    /// A new HTTP/1.1 connection to `addr`, driven by a task of its own.
    async fn connect(&self, addr: SocketAddr, how: &Exchange<'_>) -> Result<Sender, Failure> {
        let stream = tcp(addr, how.connect).await?;
        if how.tls {
            let (connector, name) = self.tls_for(addr, how, false);
            let stream = tls(connector, name, stream, how.connect).await?;
            self.h1_handshake(addr, stream).await
        } else {
            self.h1_handshake(addr, stream).await
        }
    }

    async fn h1_handshake<T>(&self, addr: SocketAddr, io: T) -> Result<Sender, Failure>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, conn) = self
            .h1
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| Failure::Upstream(e.into()))?;
        let task = drive(addr, conn.with_upgrades());
        Ok(Sender {
            tx,
            task: Some(task),
        })
    }

    /// A new HTTP/2 connection to `addr`, driven by a task of its own.
    async fn connect_h2(&self, addr: SocketAddr, how: &Exchange<'_>) -> Result<H2Sender, Failure> {
        let stream = tcp(addr, how.connect).await?;
        if how.tls {
            let (connector, name) = self.tls_for(addr, how, true);
            let stream = tls(connector, name, stream, how.connect).await?;
            self.h2_handshake(addr, stream).await
        } else {
            self.h2_handshake(addr, stream).await
        }
    }

    async fn h2_handshake<T>(&self, addr: SocketAddr, io: T) -> Result<H2Sender, Failure>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, conn) = self
            .h2
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| Failure::Upstream(e.into()))?;
        // Shared by requests: a request given up on resets its own stream only.
        drive(addr, conn);
        Ok(tx)
    }

    /// Sends the request `build` makes to `endpoint` over HTTP/2 and waits for the
    /// response head until `deadline`. A request refused before it was sent (the shared
    /// connection had just closed) goes once more on a new connection.
    async fn request_h2(
        &self,
        endpoint: &Endpoint,
        build: impl FnOnce() -> Request<RequestBody>,
        now: Instant,
        how: Exchange<'_>,
    ) -> Result<Response<Incoming>, Failure> {
        let shard = shard();
        let mut req = build();
        let body = req.body().clone();
        let mut timer = std::pin::pin!(tokio::time::sleep_until(how.deadlines.started.into()));
        let mut reused = true;
        loop {
            let mut tx = match endpoint.conns.h2_take(shard, now) {
                Some(tx) if reused => tx,
                _ => {
                    reused = false;
                    let tx = Box::pin(self.connect_h2(endpoint.addr, &how)).await?;
                    endpoint.conns.h2_put(shard, &tx, now);
                    tx
                }
            };
            let sent = within(
                tx.try_send_request(req),
                timer.as_mut(),
                body.clone(),
                how.deadlines,
            );
            match sent.await.0? {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => {
                        debug!(error = %e.error(), "HTTP/2 request not started, trying again");
                        req = unsent;
                        reused = false;
                    }
                    _ => return Err(Failure::Upstream(e.into_error().into())),
                },
            }
        }
    }

    /// An idle connection to `endpoint`, or a new one; true when reused.
    async fn checkout(
        &self,
        endpoint: &Endpoint,
        now: Instant,
        how: &Exchange<'_>,
    ) -> Result<(Sender, Timer, bool), Failure> {
        if let Some((mut tx, timer)) = endpoint.conns.take(shard(), now, self.idle_timeout) {
            // Pooled connections are ready; this only waits if one was given back early.
            if tx.is_ready() || tx.ready().await.is_ok() {
                return Ok((tx, timer, true));
            }
        }
        // A new connection (boxed: rare, and the future of every request carries this
        // one) takes its first request before the connection task has run.
        let tx = Box::pin(self.connect(endpoint.addr, how)).await?;
        let timer = Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(
            now + FAR_FUTURE,
        )));
        Ok((tx, timer, false))
    }

    /// Sends the request `build` makes (called once a connection is there, so that a
    /// failed connect has not consumed anything) to `endpoint`, and waits for the
    /// response head until `deadline`.
    async fn request(
        &self,
        endpoint: &Arc<Endpoint>,
        build: impl FnOnce() -> Request<RequestBody>,
        now: Instant,
        how: Exchange<'_>,
    ) -> Result<(Response<Incoming>, Option<PooledConn>), Failure> {
        let conn = self.checkout(endpoint, now, &how).await?;
        match Self::attempt(endpoint, conn, build(), how.deadlines).await? {
            Attempt::Done(resp, conn) => Ok((resp, Some(conn))),
            // A rare path, boxed to keep the common future small.
            Attempt::Unsent(req) => Box::pin(self.resend(endpoint, req, now, how))
                .await
                .map(|(resp, conn)| (resp, Some(conn))),
        }
    }

    /// [`UpstreamClient::request`] again, for a request no byte of which went out.
    async fn resend(
        &self,
        endpoint: &Arc<Endpoint>,
        mut req: Request<RequestBody>,
        now: Instant,
        how: Exchange<'_>,
    ) -> Result<(Response<Incoming>, PooledConn), Failure> {
        loop {
            let conn = self.checkout(endpoint, now, &how).await?;
            match Self::attempt(endpoint, conn, req, how.deadlines).await? {
                Attempt::Done(resp, conn) => return Ok((resp, conn)),
                Attempt::Unsent(unsent) => req = unsent,
            }
        }
    }

    /// One send of `req` on a checked-out connection, waiting for the response head
    /// within `deadlines`.
    ///
    /// Not an `async fn`: the request goes into the connection's queue here, and the
    /// future returned holds only the wait and what follows it (an `async fn` would keep
    /// room for the request and its own copy of every argument, and every request's
    /// future carries this one).
    fn attempt(
        endpoint: &Arc<Endpoint>,
        (mut tx, timer, reused): (Sender, Timer, bool),
        req: Request<RequestBody>,
        deadlines: Deadlines,
    ) -> impl Future<Output = Result<Attempt, Failure>> + use<> {
        let body = req.body().clone();
        let endpoint = Arc::clone(endpoint);
        let response = tx.try_send_request(req);
        within(response, timer, body, deadlines).map(move |(answer, timer)| match answer? {
            Ok(resp) => Ok(Attempt::Done(
                resp,
                PooledConn {
                    tx,
                    timer,
                    endpoint,
                    shard: shard(),
                },
            )),
            Err(mut e) => match e.take_message() {
                // Not started on a connection that closed while idle: another one.
                Some(unsent) if reused => {
                    debug!(error = %e.error(), "unstarted request canceled, trying again");
                    Ok(Attempt::Unsent(unsent))
                }
                _ => Err(Failure::Upstream(e.into_error().into())),
            },
        })
    }
}

/// Drives a hyper client connection to `addr` on a task of its own, on this runtime.
fn drive(
    addr: SocketAddr,
    conn: impl Future<Output = hyper::Result<()>> + Send + 'static,
) -> tokio::task::AbortHandle {
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(%addr, error = %e, "upstream connection ended with an error");
        }
    })
    .abort_handle()
}

/// How one send went, short of a failure.
enum Attempt {
    Done(Response<Incoming>, PooledConn),
    /// Never started (a pooled connection had closed): it may go on another.
    Unsent(Request<RequestBody>),
}

/// `fut` (the wait for a response head), or the deadline of `deadlines` it missed, the
/// timer moved on as `body` makes progress. The timer is given back with the outcome.
fn within<F: Future, P: DerefMut<Target = tokio::time::Sleep>>(
    fut: F,
    mut timer: Pin<P>,
    body: RequestBody,
    deadlines: Deadlines,
) -> Within<F, P> {
    timer.as_mut().reset(deadlines.next(&body).0.into());
    Within {
        fut,
        timer: Some(timer),
        body,
        deadlines,
    }
}

pin_project_lite::pin_project! {
    /// See [`within`]: a future of its own rather than an `async fn`, so that `fut` is
    /// stored once.
    struct Within<F, P> {
        #[pin]
        fut: F,
        timer: Option<Pin<P>>,
        body: RequestBody,
        deadlines: Deadlines,
    }
}

impl<F: Future, P: DerefMut<Target = tokio::time::Sleep>> Future for Within<F, P> {
    type Output = (Result<F::Output, Failure>, Pin<P>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let outcome = match this.fut.poll(cx) {
            Poll::Ready(v) => Ok(v),
            Poll::Pending => {
                let timer = this.timer.as_mut().expect("Within polled after completion");
                loop {
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let (next, missed) = this.deadlines.next(this.body);
                    if next <= Instant::now() {
                        break Err(Failure::Timeout(missed));
                    }
                    timer.as_mut().reset(next.into());
                }
            }
        };
        let timer = this.timer.take().expect("Within polled after completion");
        Poll::Ready((outcome, timer))
    }
}

/// Closes idle connections that have outlived the client's idle timeout, on every
/// endpoint, until the registry is gone.
pub async fn reap(registry: Weak<EndpointRegistry>, idle_timeout: Duration) {
    let mut tick = tokio::time::interval(idle_timeout.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(registry) = registry.upgrade() else {
            return;
        };
        let now = Instant::now();
        registry.for_each(|e| e.conns.prune(now, idle_timeout));
    }
}

/// The parts of the upstream request that are the same for every attempt.
pub struct Head {
    pub method: Method,
    pub path_and_query: PathAndQuery,
    pub headers: HeaderMap,
    /// The endpoint a session-affinity cookie asks for ([`super::balance::affinity_key`]):
    /// tried first when it is there and healthy.
    pub sticky: Option<u64>,
    /// The request's `upstream-hash-by` key, hashed: it picks the endpoint
    /// ([`super::balance::Pool::pick_hashed`]) when no affinity cookie does.
    pub hash: Option<u64>,
    /// The client sent `TE: trailers` (removed with the hop-by-hop headers): passed on
    /// to an HTTP/2 upstream, where it is the one TE allowed and gRPC servers need it.
    pub te_trailers: bool,
}

/// Makes an HTTP/1.1-shaped request one for an HTTP/2 upstream: the Host becomes the
/// `:authority` of an absolute URI (an intermediary forwarding a request builds it from
/// the request's authority, RFC 9113 section 8.3.1), and `TE: trailers` goes back on.
/// Without a usable Host the URI stays relative and no `:authority` is sent.
fn h2_request(req: &mut Request<RequestBody>, te_trailers: bool, tls: bool) {
    let authority = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| hyper::http::uri::Authority::try_from(h.as_bytes()).ok());
    if let Some(authority) = authority {
        let mut parts = hyper::http::uri::Parts::default();
        parts.scheme = Some(if tls {
            hyper::http::uri::Scheme::HTTPS
        } else {
            hyper::http::uri::Scheme::HTTP
        });
        parts.authority = Some(authority);
        parts.path_and_query = req.uri().path_and_query().cloned();
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
            *req.version_mut() = Version::HTTP_2;
            req.headers_mut().remove(hyper::header::HOST);
        }
    }
    if te_trailers {
        req.headers_mut().insert(
            hyper::header::TE,
            hyper::header::HeaderValue::from_static("trailers"),
        );
    }
}

static DEFAULT_NEXT_UPSTREAM: NextUpstream = NextUpstream::DEFAULT;

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Sends the request to an endpoint of `target`, retrying as the rules above allow.
/// Returns the response head, the endpoint's in-flight slot and the HTTP/1.1 connection
/// (to be released when the response body has been read; an HTTP/2 one stays shared).
pub async fn send(
    proxy: &Proxy,
    target: &Target,
    head: &mut Head,
    body: &RequestBody,
    log: &mut RequestLog,
) -> Result<(Response<Incoming>, InFlight, Option<PooledConn>), ProxyError> {
    let mut tried: Vec<SocketAddr> = Vec::new();
    let connect_timeout = (target.options.connect_timeout).unwrap_or(proxy.options.connect_timeout);
    let response_timeout =
        (target.options.response_timeout).unwrap_or(proxy.options.response_timeout);
    let send_timeout = (target.options.send_timeout).unwrap_or(proxy.options.send_timeout);
    let next = (target.options.next_upstream.as_ref()).unwrap_or(&DEFAULT_NEXT_UPSTREAM);
    proxy.budget.deposit();
    loop {
        let sticky = (head.sticky)
            .filter(|_| tried.is_empty())
            .and_then(|key| target.pool.pick_sticky(&proxy.registry, key, &tried));
        let slot = sticky.or_else(|| match head.hash {
            Some(key) => {
                let subset = target.options.hash_subset;
                (target.pool).pick_hashed(&proxy.registry, key, &tried, subset)
            }
            None => (target.pool).pick(&proxy.registry, &tried, target.options.load_balance),
        });
        let Some(slot) = slot else {
            return Err(ProxyError::NoEndpoint {
                service: target.service.clone(),
            });
        };
        let endpoint = slot.endpoint();
        let addr = endpoint.addr;
        log.upstream = Some(addr);
        // The headers are moved into the request when no other attempt can follow.
        let max_retries = (target.options.max_retries).unwrap_or(proxy.options.max_retries);
        let last = log.retries >= max_retries || tried.len() + 1 >= target.pool.len();
        let build = || {
            let headers = if last {
                std::mem::take(&mut head.headers)
            } else {
                head.headers.clone()
            };
            let mut req = Request::new(body.clone());
            *req.method_mut() = head.method.clone();
            *req.uri_mut() = Uri::from(head.path_and_query.clone());
            *req.version_mut() = Version::HTTP_11;
            *req.headers_mut() = headers;
            if target.protocol.http2() {
                h2_request(&mut req, head.te_trailers, target.protocol.tls());
            }
            req
        };

        let started = Instant::now();
        let how = Exchange {
            tls: target.protocol.tls(),
            verified: target.verified.as_deref(),
            connect: connect_timeout,
            deadlines: Deadlines {
                started,
                send: send_timeout,
                read: response_timeout,
            },
        };
        let result = if target.protocol.http2() {
            // Boxed: the HTTP/1.1 path's future (every request's) stays as small.
            Box::pin(proxy.client.request_h2(endpoint, build, started, how))
                .await
                .map(|resp| (resp, None))
        } else {
            proxy.client.request(endpoint, build, started, how).await
        };
        let took = started.elapsed();
        log.upstream_duration = Some(took);
        // Peak EWMA learns from answers and from timeouts (a slow endpoint is the point);
        // a refused connection ejects the endpoint instead.
        if target.options.load_balance == Balance::Ewma
            && matches!(result, Ok(_) | Err(Failure::Timeout(_)))
        {
            endpoint.observe_latency(&proxy.registry, took);
        }
        let may_resend = (idempotent(&head.method) || next.non_idempotent) && body.untouched();
        // What this attempt gave, and whether the request may go on to the next
        // endpoint for it ([`NextUpstream`]).
        let (retriable, outcome) = match result {
            // `http_NNN`: an answer with one of those statuses (the last one's is
            // returned).
            Ok((resp, conn)) => {
                let status = resp.status().as_u16();
                let retriable = may_resend && next.statuses.contains(&status);
                (retriable, Ok((resp, conn)))
            }
            // Only `timeout` retries a late answer: the upstream may still be working on
            // it.
            Err(Failure::Timeout(missed)) => (
                next.timeout && missed == Missed::Response && may_resend,
                Err(Failure::Timeout(missed).into_error(addr, &how.deadlines)),
            ),
            Err(failure) => {
                if body.too_large() {
                    return Err(ProxyError::BodyTooLarge {
                        limit: body.limit(),
                    });
                }
                if body.client_failed() {
                    return Err(ProxyError::BadRequest("the request body could not be read"));
                }
                let connect = matches!(failure, Failure::Connect(_));
                if connect {
                    proxy
                        .metrics
                        .upstream_connect_errors
                        .get_or_create(&ServiceLabel {
                            service: target.service.clone(),
                        })
                        .inc();
                    // Passive health: an endpoint that cannot be connected to gets no
                    // requests for a while.
                    proxy.registry.eject(endpoint);
                }
                // Nothing reached the upstream after a connect failure: any method may
                // go on.
                let retriable = if connect {
                    (next.error || next.timeout) && body.untouched()
                } else {
                    next.error && may_resend
                };
                (retriable, Err(failure.into_error(addr, &how.deadlines)))
            }
        };
        if last || !retriable || !proxy.budget.withdraw() {
            return outcome.map(|(resp, conn)| (resp, slot, conn));
        }
        match &outcome {
            Ok((resp, _)) => tracing::debug!(status = %resp.status(), "answer retried elsewhere"),
            Err(error) => tracing::debug!(%error, "retrying on another endpoint"),
        }
        // The answer given up on goes with its connection, which is closed.
        drop(outcome);
        tried.push(addr);
        log.retries += 1;
        proxy
            .metrics
            .upstream_retries
            .get_or_create(&ServiceLabel {
                service: target.service.clone(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_protocol_names_that_mean_http2() {
        for h2 in ["kubernetes.io/h2c", "h2c", "grpc", "GRPC"] {
            assert_eq!(
                UpstreamProtocol::from_app_protocol(Some(h2)),
                UpstreamProtocol::H2c
            );
        }
        assert_eq!(
            UpstreamProtocol::from_app_protocol(Some("https")),
            UpstreamProtocol::Https
        );
        for h1 in [None, Some("http"), Some("kubernetes.io/ws")] {
            assert_eq!(
                UpstreamProtocol::from_app_protocol(h1),
                UpstreamProtocol::Http1
            );
        }
    }
}
