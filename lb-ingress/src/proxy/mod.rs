//! The request path, from a parsed request to a response streaming back.
//!
//! # Request lifecycle
//!
//! Each request goes through these phases in order (Pingora's `ProxyHttp` phases, named
//! the same where they mean the same). A phase that fails answers locally with the
//! status its [`ProxyError`] carries, and no later phase runs; the logging phase always
//! runs.
//!
//! 0. **accept** (in [`crate::server`]): a connection slot (`--max-connections`), the TLS
//!    handshake with the certificate chosen by SNI (and a client certificate asked for
//!    and verified when that name's Ingress says `auth-tls-secret`,
//!    [`crate::tls::client_auth`]), HTTP/1.1 or HTTP/2 by ALPN or preface.
//!    hyper enforces the header read timeout and the header size limit (431) and answers
//!    unparseable requests with 400 before any of the phases below.
//! 1. **request_filter**: reject what no upstream should see: CONNECT (405), a missing,
//!    repeated or invalid Host (400), a non-origin path (400), a declared body over the
//!    limit (413).
//! 2. **route**: the configuration is loaded once ([`Proxy::config`], an `ArcSwap`) and
//!    the [`Target`](crate::source::Target) that host and path pick (or 404) is kept, with its endpoints, for
//!    the whole request, so a reload never changes a request midway. Then the route's
//!    own settings (its Ingress's annotations, [`crate::source::annotations`]): 503 for
//!    a rule whose settings could not be honoured, 403 for a client outside its
//!    `allowlist-source-range`, 429 over its `limit-rps` ([`ratelimit`]), 308 to https
//!    (`ssl-redirect`, `--redirect-https`, for hosts that have a certificate;
//!    `force-ssl-redirect` for any), 400, 403 or 421 for a client certificate the rule
//!    does not accept (`auth-tls-*`), 204 for a CORS preflight, 302 to its `app-root` for
//!    `/`, 413 for a declared body over its limit. The endpoint a session-affinity
//!    cookie names is noted for phase 3, `rewrite-prefix` or `rewrite-target` applied in phase 4.
//! 3. **upstream_peer** ([`balance`]): power of two choices over outstanding requests
//!    among the ready, non-ejected endpoints, or 503.
//! 4. **upstream_request_filter** ([`headers`]): hop-by-hop headers removed, forwarding
//!    headers set; method, path, query and Host unchanged. Sent over a pooled connection
//!    ([`upstream`]); connect failure ejects the endpoint and may be retried elsewhere;
//!    no response head within the upstream timeout: 504; other failures: 502.
//! 5. **response_filter**: hop-by-hop headers removed, `Server` set, CORS headers and a
//!    new affinity cookie added when the route asks for them; a 101 to an Upgrade
//!    request hands both connections to a tunnel ([`upgrade`]).
//! 6. **body**: streamed both ways ([`body`]), never buffered whole; the request body limit
//!    is enforced as it streams.
//! 7. **logging** ([`log`]): when the response body ends, one access-log line and the
//!    request metrics.
pub mod auth;
pub mod balance;
pub mod basic;
pub mod body;
pub mod error;
pub mod headers;
pub mod log;
pub mod mirror;
pub mod ratelimit;
pub mod retry;
pub mod shared;
pub mod upgrade;
pub mod upstream;

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::{Method, Request, Response, StatusCode, Version};

use crate::metrics::Metrics;
use crate::source::{Config, Target};
use crate::tls::CertResolver;
use crate::tls::client_auth::{self, ClientCert, Refusal};
use balance::EndpointRegistry;
use body::{RequestBody, ResponseBody};
use error::ProxyError;
use headers::TrustedProxies;
use log::RequestLog;
use retry::RetryBudget;
use upstream::PooledConn;

/// The value of the `Server` header on every response.
pub const SERVER: &str = concat!("lb-ingress/", env!("CARGO_PKG_VERSION"));

/// Timeouts longer than this (30 years, tokio's own "far future") never fire.
pub const FAR_FUTURE: Duration = Duration::from_hours(24 * 365 * 30);

/// Limits, timeouts and policies of the proxy. Defaults are safe for the open internet.
#[derive(Clone, Debug)]
pub struct ProxyOptions {
    /// Time a client has to send a complete request head (HTTP/1; hyper arms it while
    /// waiting for each request, so it also bounds idle keep-alive time on HTTP/1).
    pub header_read_timeout: Duration,
    /// A client connection with no request in flight for this long is closed
    /// gracefully (HTTP/2 gets a GOAWAY).
    pub idle_timeout: Duration,
    /// An ssl-passthrough relay with nothing sent either way for this long is closed.
    pub passthrough_idle_timeout: Duration,
    pub connect_timeout: Duration,
    /// Upstream connections (HTTP/1.1 in the pool, HTTP/2 shared) unused this long are
    /// closed.
    pub upstream_idle_timeout: Duration,
    /// Time the upstream has to send a response head, once the request has gone.
    pub response_timeout: Duration,
    /// Longest stretch without progress while the request body goes upstream (the
    /// upstream not taking it: 504; the client not sending it: 408).
    pub send_timeout: Duration,
    /// Request head size limit (HTTP/1 read buffer, HTTP/2 header list): 431 above it.
    pub max_header_bytes: usize,
    /// Request body size limit: 413 above it.
    pub max_body_bytes: u64,
    pub max_connections: usize,
    pub trusted_proxies: TrustedProxies,
    /// Answer plain-HTTP requests for hosts that have a certificate with 308 to https.
    pub redirect_https: bool,
    /// Port of the HTTPS listener, for redirects (None: 443).
    pub https_port: Option<u16>,
    /// How long an endpoint that failed to connect gets no requests.
    pub eject_for: Duration,
    /// Retries per request, at most (each to another endpoint).
    pub max_retries: u32,
    /// Long-run ratio of retries to requests (the retry budget).
    pub retry_ratio: f64,
    pub access_log: bool,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_mins(1),
            passthrough_idle_timeout: Duration::from_mins(10),
            connect_timeout: Duration::from_secs(3),
            upstream_idle_timeout: Duration::from_secs(90),
            response_timeout: Duration::from_mins(1),
            send_timeout: Duration::from_mins(1),
            max_header_bytes: 32 * 1024,
            max_body_bytes: 1 << 30,
            max_connections: 16 * 1024,
            trusted_proxies: TrustedProxies::default(),
            redirect_https: false,
            https_port: None,
            eject_for: Duration::from_secs(10),
            max_retries: 2,
            retry_ratio: 0.2,
            access_log: true,
        }
    }
}

/// One client connection, as the request phases and the idle timer see it.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    opened: Instant,
    in_flight: AtomicUsize,
    last_active_ms: AtomicU64,
    /// An HTTP/2 request was seen: the header read timeout no longer applies. (Not set
    /// from ALPN: until its first request, an HTTP/2 connection is held to the header
    /// timeout like any other, and closed at once, as hyper could close it gracefully
    /// only after the client's preface.)
    http2: AtomicBool,
    served_any: AtomicBool,
    /// What the first request's authority gave, for the next requests with the same
    /// one (nearly all of them: a connection rarely changes hosts).
    authority: OnceLock<AuthorityInfo>,
    /// What the handshake found of the client's certificate, when it asked for one
    /// (`auth-tls-secret` on the name the client gave).
    pub client_cert: Option<Box<ClientCert>>,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool) -> Self {
        ConnInfo {
            peer,
            tls,
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(0),
            http2: AtomicBool::new(false),
            served_any: AtomicBool::new(false),
            authority: OnceLock::new(),
            client_cert: None,
        }
    }

    /// When the connection was accepted (after its TLS handshake).
    pub fn opened(&self) -> Instant {
        self.opened
    }

    fn touch(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.opened).as_millis() as u64;
        self.last_active_ms.store(ms, Ordering::Relaxed);
    }

    /// A request started at `now`.
    pub fn request_started(&self, now: Instant, version: Version) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        if !self.served_any.load(Ordering::Relaxed) {
            self.served_any.store(true, Ordering::Relaxed);
        }
        if version == Version::HTTP_2 {
            self.http2.store(true, Ordering::Relaxed);
        }
        self.touch(now);
    }

    /// Whether a request has come over this connection.
    pub fn served_any(&self) -> bool {
        self.served_any.load(Ordering::Relaxed)
    }

    /// A request finished at `now`.
    pub fn request_finished(&self, now: Instant) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.touch(now);
    }

    fn proto(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    /// How long, at `now`, the connection has had no request in flight (None while it
    /// has one).
    pub fn idle_for(&self, now: Instant) -> Option<Duration> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_active_ms.load(Ordering::Relaxed));
        Some(
            now.saturating_duration_since(self.opened)
                .saturating_sub(last),
        )
    }

    /// The connection's timeouts at `now`: what is due, or when to look again.
    ///
    /// While no request is in flight, an HTTP/1 connection (or one that has not
    /// completed a request yet) has `header` (or `idle`, if shorter) to complete the next
    /// request head, counted from its last response or from its start: hyper's header
    /// read timeout, kept here instead of in a timer hyper makes and drops for every
    /// request. An HTTP/2 connection with no stream in flight for `idle` is idle. While
    /// requests are in flight nothing can be due before that limit has passed again.
    pub fn expiry(&self, now: Instant, header: Duration, idle: Duration) -> Expiry {
        let http2 = self.http2.load(Ordering::Relaxed);
        let limit = if http2 { idle } else { header.min(idle) };
        match self.idle_for(now) {
            None => Expiry::Check(now + limit),
            Some(d) if d < limit => Expiry::Check(now + limit.saturating_sub(d)),
            Some(_) if http2 => Expiry::Idle,
            Some(_) => Expiry::Close,
        }
    }
}

/// What [`ConnInfo::expiry`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// Nothing due before this instant.
    Check(Instant),
    /// HTTP/1 with no complete request head in time: close now. (A graceful shutdown
    /// would wait for a half-read first request, which is what a slow client sends.)
    Close,
    /// HTTP/2 idle for the idle timeout: close gracefully (GOAWAY).
    Idle,
}

/// The proxy: shared by every connection of every listener.
pub struct Proxy {
    /// The current configuration, swapped whole by the source.
    pub config: Arc<ArcSwap<Config>>,
    pub certs: Arc<CertResolver>,
    pub registry: Arc<EndpointRegistry>,
    pub metrics: Arc<Metrics>,
    pub client: upstream::UpstreamClient,
    /// For `auth-url` requests.
    pub auth_client: auth::AuthClient,
    /// Auth answers kept (`auth-cache-key`).
    pub auth_cache: Arc<auth::AuthCache>,
    pub mirrors: Arc<mirror::Mirrors>,
    pub budget: Arc<RetryBudget>,
    pub options: ProxyOptions,
}

impl Proxy {
    pub fn new(
        config: Arc<ArcSwap<Config>>,
        certs: Arc<CertResolver>,
        registry: Arc<EndpointRegistry>,
        metrics: Arc<Metrics>,
        options: ProxyOptions,
    ) -> Proxy {
        Proxy {
            config,
            certs,
            registry,
            metrics,
            client: upstream::client(options.upstream_idle_timeout),
            auth_client: auth::client(),
            auth_cache: Arc::default(),
            mirrors: Arc::default(),
            budget: Arc::new(RetryBudget::new(options.retry_ratio, 10)),
            options,
        }
    }

    /// Another handle on the same proxy (same configuration, endpoints, metrics and
    /// budget), for one serving thread. A request clones its thread's `Arc<Proxy>`; one
    /// shared by all threads would have its count bounce between their caches on every
    /// request.
    #[must_use]
    pub fn for_thread(&self) -> Proxy {
        Proxy {
            config: Arc::clone(&self.config),
            certs: Arc::clone(&self.certs),
            registry: Arc::clone(&self.registry),
            metrics: Arc::clone(&self.metrics),
            client: self.client.clone(),
            auth_client: self.auth_client.clone(),
            auth_cache: Arc::clone(&self.auth_cache),
            mirrors: Arc::clone(&self.mirrors),
            budget: Arc::clone(&self.budget),
            options: self.options.clone(),
        }
    }

    /// Serves one request through the phases documented on this module.
    ///
    /// The phases before the upstream request (1, 2 and 4) run in this call, and the
    /// returned future holds only what the upstream exchange needs, with the exchange
    /// itself boxed: hyper keeps that future in a box made per connection and moves each
    /// request's into it, so it is kept small (240 bytes; 1904 with the exchange inline, by `size_of_val` in a
    /// test build).
    pub fn handle(
        self: &Arc<Self>,
        req: Request<Incoming>,
        conn: &Arc<ConnInfo>,
    ) -> impl Future<Output = Response<ResponseBody>> + Send + use<> {
        let mut log = Box::new(RequestLog::new(
            Arc::clone(conn),
            Arc::clone(self),
            self.options.access_log,
            req.method().clone(),
            req.version(),
            req.uri().path(),
        ));
        let step = self.request_phases(req, conn, &mut log);
        let this = Arc::clone(self);
        async move {
            let forwarded = match step {
                Ok(Step::Upstream(outgoing)) => Box::pin(this.forward(outgoing, &mut log)).await,
                Ok(Step::Local(resp)) => Ok(Forwarded::Local(resp)),
                Err(e) => Err(e),
            };
            respond(forwarded, log)
        }
    }

    /// Phases 1 (request_filter), 2 (route) and 4 (upstream_request_filter).
    fn request_phases(
        &self,
        mut req: Request<Incoming>,
        conn: &ConnInfo,
        log: &mut RequestLog,
    ) -> Result<Step, ProxyError> {
        // 1. request_filter
        if req.method() == Method::CONNECT {
            return Err(ProxyError::MethodNotAllowed("CONNECT"));
        }
        let authority = authority(&req, conn)?;
        let host = authority.host.as_str();
        if log.access_log {
            log.host.clone_from(&authority.host);
        }
        let path = req.uri().path();
        if !path.starts_with('/') {
            return Err(ProxyError::BadRequest("the request target must be a path"));
        }
        // Matched as nginx matches locations, normalized; sent upstream as it came.
        let path = crate::routes::normalize_request_path(path)
            .map_err(|e| ProxyError::BadRequest(e.reason()))?;
        // Plain HTTP here, and not https before a trusted proxy either: may be redirected.
        let https = conn.tls
            || self.options.trusted_proxies.trusts(conn.peer.ip())
                && headers::forwarded_https(req.headers());
        let plain = !https;
        // The client's address (through trusted proxies), found once when some step
        // asks for it: the allowlist, a limit, upstream-hash-by, X-Real-IP.
        let client = std::cell::OnceCell::new();
        let client_of = |h: &hyper::HeaderMap| {
            *client.get_or_init(|| {
                headers::client_addr(h, conn.peer.ip(), &self.options.trusted_proxies)
            })
        };

        // 2. route: one load for the whole request (see source::watch on swap order);
        // the request keeps its rule's target, and with it the endpoints, to the end.
        let config = self.config.load();
        if config.generation == 0 {
            return Err(ProxyError::NotReady);
        }
        let Some(target) = config.routes.lookup(host, &path).map(Arc::clone) else {
            if plain && self.options.redirect_https && self.certs.table().has_host(host) {
                return Ok(Step::Local(self.redirect(host, &req)));
            }
            return Err(ProxyError::NoRoute);
        };
        drop(config);
        // A canary takes some of the rule's requests: its backend, the rule's settings.
        let target = match &target.canary {
            Some(c) if c.policy.selects(req.headers()) => Arc::clone(&c.target),
            _ => target,
        };
        // `default-backend`: while the rule's Service has no ready endpoint.
        let target = match &target.fallback {
            Some(f) if target.pool.is_empty() => Arc::clone(f),
            _ => target,
        };

        if let Some(to) = &target.www_redirect {
            let pq = req.uri().path_and_query().map_or("/", PathAndQuery::as_str);
            let scheme = if https { "https" } else { "http" };
            let location = format!("{scheme}://{to}{pq}");
            let resp = local_redirect(StatusCode::PERMANENT_REDIRECT, &location);
            log.target = Some(target);
            return Ok(Step::Local(resp));
        }
        // The route's own settings (its Ingress's annotations).
        let options = &target.options;
        if let Some(on) = options.access_log {
            log.access_log &= on;
        }
        if let Some(reason) = &options.deny {
            let reason = reason.clone();
            log.target = Some(target);
            return Err(ProxyError::Misconfigured { reason });
        }
        // `satisfy: any`: an address the source ranges admit needs no credentials, and
        // one they refuse may still bring them.
        let any_auth = target.basic_auth.is_some() || options.auth.is_some();
        let mut access = if options.satisfy_any && any_auth {
            Access::Any
        } else {
            Access::All
        };
        if options.filters_sources() || target.limiter.is_some() || target.concurrency.is_some() {
            let client = client_of(req.headers());
            match (options.allows(client), access) {
                (true, Access::Any) if options.filters_sources() => access = Access::Granted,
                (true, _) | (false, Access::Any) => {}
                (false, _) => {
                    log.target = Some(target);
                    return Err(ProxyError::SourceNotAllowed(client));
                }
            }
            if let Some(limiter) = &target.limiter
                && !options.rate_exempt(client)
                && let Err(wait) = limiter.check(client, Instant::now())
            {
                log.target = Some(target);
                let retry_after_s = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                return Err(ProxyError::RateLimited { retry_after_s });
            }
            if let Some(limiter) = &target.concurrency {
                match limiter.acquire(client) {
                    Some(slot) => log.concurrency = Some(slot),
                    None => {
                        let max = limiter.max();
                        log.target = Some(target);
                        return Err(ProxyError::TooManyInFlight { max });
                    }
                }
            }
        }
        let redirect = options.force_ssl_redirect
            || options.ssl_redirect.unwrap_or(self.options.redirect_https)
                && self.certs.table().has_host(host);
        if plain && redirect {
            log.target = Some(target);
            return Ok(Step::Local(self.redirect(host, &req)));
        }
        // auth-tls-*: the client's certificate, as this connection's handshake found it.
        let client_cert = match &target.client_auth {
            Some(auth) => match auth.admit(conn.client_cert.as_deref(), conn.tls) {
                Ok(headers) => Some(headers),
                Err(refusal) => {
                    let page = (auth.spec.error_page.clone())
                        .filter(|_| matches!(refusal, Refusal::Missing | Refusal::Invalid(_)));
                    log.target = Some(target);
                    return match page {
                        Some(page) => Ok(Step::Local(local_redirect(StatusCode::FOUND, &page))),
                        None => Err(ProxyError::ClientCert(refusal)),
                    };
                }
            },
            None => None,
        };
        // CORS: a preflight is answered here; other requests get the headers on the way
        // back.
        let cors = options.cors.as_ref().map(|cors| {
            let origin = req
                .headers()
                .get(header::ORIGIN)
                .and_then(|v| v.to_str().ok());
            let preflight = req.method() == Method::OPTIONS
                && req
                    .headers()
                    .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
            (cors_headers(cors, origin, preflight), preflight)
        });
        let cors = match cors {
            Some((headers, true)) => {
                let mut resp = local_head(StatusCode::NO_CONTENT);
                resp.headers_mut().extend(headers);
                log.target = Some(target);
                return Ok(Step::Local(resp));
            }
            Some((headers, false)) => Some(Box::new(headers)),
            None => None,
        };
        // External auth happens in the upstream phase (it is a request of its own); what
        // it needs of the client's request is taken now.
        let auth = options.auth.as_ref().map(|auth| {
            Box::new(auth::Original {
                scheme: if https { "https" } else { "http" },
                host: authority.text.to_string(),
                request_uri: req
                    .uri()
                    .path_and_query()
                    .map_or("/", PathAndQuery::as_str)
                    .to_owned(),
                method: req.method().clone(),
                cache_key: (auth.cache.as_ref()).map(|policy| {
                    let client = policy.key.needs_client().then(|| client_of(req.headers()));
                    policy.key.expand(&crate::source::annotations::KeyInput {
                        uri: req.uri(),
                        headers: req.headers(),
                        path: &path,
                        host,
                        client,
                    })
                }),
            })
        });
        // mirror-target: where the copy goes, made of the request as it came.
        let mirror = options.mirror.as_ref().and_then(|m| {
            let request_uri = req.uri().path_and_query().map_or("/", PathAndQuery::as_str);
            let scheme = if https { "https" } else { "http" };
            mirror::Destination::new(m, scheme, &authority.text, request_uri)
                .map_err(|e| tracing::debug!(error = %e, "request not mirrored"))
                .ok()
                .map(Box::new)
        });
        if let Some((status, to)) = &options.redirect {
            let resp = local_redirect(*status, to);
            log.target = Some(target);
            return Ok(Step::Local(resp));
        }
        if let Some(root) = &options.app_root
            && req.uri().path() == "/"
        {
            let resp = local_redirect(StatusCode::FOUND, root);
            log.target = Some(target);
            return Ok(Step::Local(resp));
        }
        let limit = options
            .max_body_bytes
            .unwrap_or(self.options.max_body_bytes);
        if req.body().size_hint().lower() > limit {
            log.target = Some(target);
            return Err(ProxyError::BodyTooLarge { limit });
        }
        if target.pool.is_empty() {
            let service = target.service.clone();
            log.target = Some(target);
            return Err(ProxyError::NoEndpoint { service });
        }
        let target_protocol = target.protocol;
        let upstream_host = target.options.upstream_host.clone();
        let set_prefix = target.options.forwarded_prefix.clone();
        // Session affinity: the endpoint the client's cookie names, if any.
        let sticky = (target.options.affinity.as_ref())
            .and_then(|a| headers::cookie(req.headers(), &a.name))
            .and_then(|v| u64::from_str_radix(v, 16).ok());
        // upstream-hash-by: the request's key.
        let hash = target.options.hash_by.as_ref().map(|key| {
            let client = key.needs_client().then(|| client_of(req.headers()));
            key.hash(&crate::source::annotations::KeyInput {
                uri: req.uri(),
                headers: req.headers(),
                path: &path,
                host,
                client,
            })
        });
        // `rewrite-prefix`: the path the upstream gets, built from the normalized one
        // (the one that matched the rule), and the prefix it no longer shows;
        // `rewrite-target`: the path its captures make.
        let rewritten = match (&target.options.rewrite_prefix, &target.rewrite) {
            (Some(replacement), _) => {
                Some(rewrite(&path, req.uri().query(), &target, replacement)?)
            }
            (None, Some(rw)) => match rw.apply(&path, req.uri().query()) {
                Some(pq) => Some((
                    PathAndQuery::try_from(pq).map_err(|_| {
                        ProxyError::BadRequest("the rewritten path is not a valid URI path")
                    })?,
                    None,
                )),
                None => None,
            },
            (None, None) => None,
        };
        let original_uri = (!target.options.custom_errors.is_empty()).then(|| {
            Box::new(
                (req.uri().path_and_query().cloned())
                    .unwrap_or_else(|| PathAndQuery::from_static("/")),
            )
        });
        // The log record holds the target; the upstream phases borrow it from there.
        log.target = Some(target);

        // 4. upstream_request_filter (3, the endpoint choice, happens per attempt).
        let upgrade = req.version() == Version::HTTP_11 && headers::is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        // With a single Host header the authority is that header, which stays as it is.
        let host_is_header =
            req.uri().authority().is_none() && req.headers().contains_key(header::HOST);
        let (parts, incoming) = req.into_parts();
        let te_trailers = target_protocol.http2() && headers::te_has_trailers(&parts.headers);
        let (path_and_query, forwarded_prefix) = match rewritten {
            Some((pq, prefix)) => (pq, prefix),
            None => (
                (parts.uri.path_and_query().cloned())
                    .unwrap_or_else(|| PathAndQuery::from_static("/")),
                None,
            ),
        };
        let mut head = upstream::Head {
            sticky,
            hash,
            te_trailers,
            method: parts.method,
            path_and_query,
            headers: parts.headers,
        };
        headers::strip_hop_by_hop(&mut head.headers, upgrade);
        // What the handshake found of the client's certificate; never what the client
        // says of it.
        if let Some(found) = client_cert {
            for name in [
                &client_auth::SSL_CLIENT_VERIFY,
                &client_auth::SSL_CLIENT_SUBJECT_DN,
                &client_auth::SSL_CLIENT_ISSUER_DN,
                &client_auth::SSL_CLIENT_CERT,
            ] {
                head.headers.remove(name);
            }
            for (name, value) in found {
                head.headers.insert(name, value);
            }
        }
        // `x-forwarded-prefix` as set, else what `rewrite-prefix` took away.
        if let Some(prefix) = set_prefix.or(forwarded_prefix) {
            head.headers.insert(&headers::X_FORWARDED_PREFIX, prefix);
        }
        // X-Request-ID (ingress-nginx's `$req_id`): the client's, else a new one.
        let request_id = match head.headers.get(&headers::X_REQUEST_ID) {
            Some(id) => id.clone(),
            None => {
                let id = headers::request_id();
                head.headers.insert(&headers::X_REQUEST_ID, id.clone());
                id
            }
        };
        if log.access_log {
            log.request_id = Some(request_id);
        }
        // X-Real-IP: the client, as the allowlist sees it; never what an untrusted peer
        // says.
        let peer_ip = conn.peer.ip();
        if self.options.trusted_proxies.trusts(peer_ip) {
            if let Ok(v) = HeaderValue::try_from(client_of(&head.headers).to_string()) {
                head.headers.insert(&headers::X_REAL_IP, v);
            }
            headers::set_forwarded(
                &mut head.headers,
                peer_ip,
                true,
                conn.proto(),
                &authority.text,
            );
        } else {
            head.headers
                .insert(&headers::X_REAL_IP, authority.xff.clone());
            headers::set_forwarded_untrusted(
                &mut head.headers,
                &authority.xff,
                authority.forwarded.as_ref(),
                conn.proto(),
                authority.value.as_ref(),
            );
        }
        // HTTP/2 carries the host in :authority; the HTTP/1.1 upstream needs it as Host.
        if let Some(v) = upstream_host {
            head.headers.insert(header::HOST, v);
        } else if !host_is_header && let Some(v) = &authority.value {
            head.headers.insert(header::HOST, v.clone());
        }
        Ok(Step::Upstream(Outgoing {
            head,
            body: RequestBody::new(incoming, limit),
            client_upgrade,
            upgrade,
            cors,
            auth,
            original_uri,
            https,
            access,
            mirror: mirror.filter(|_| !upgrade),
        }))
    }

    /// Phases 3 (upstream_peer, per attempt) and 5 (response_filter).
    async fn forward(
        &self,
        outgoing: Outgoing,
        log: &mut RequestLog,
    ) -> Result<Forwarded, ProxyError> {
        let Outgoing {
            mut head,
            body,
            client_upgrade,
            upgrade,
            cors,
            auth,
            original_uri,
            https,
            access,
            mirror,
        } = outgoing;
        let target = log.target.as_ref().expect("routed before forwarding");
        if (target.basic_auth.is_some() || auth.is_some())
            && let Some(refused) = self.authorize(access, &mut head, auth, target).await?
        {
            return Ok(Forwarded::Local(refused));
        }
        if let Some(copy) = mirror {
            let body = if copy.body {
                body.tee(self.mirrors.queued())
            } else {
                None
            };
            let timeout =
                (target.options.response_timeout).unwrap_or(self.options.response_timeout);
            (self.mirrors).send(
                *copy,
                &head.method,
                &head.headers,
                body,
                timeout,
                &self.metrics,
            );
        }
        // custom-http-errors: what the error page request needs of this one, taken now
        // (the request's headers go into the upstream request).
        let error_page = (log.target.as_ref())
            .filter(|t| !t.options.custom_errors.is_empty() && t.fallback.is_some())
            .map(|t| error_page_headers(t, &head, original_uri.as_deref()));
        // Taken from the log record for the exchange and put back whatever its outcome:
        // no count of the (shared) target is touched here.
        let target = log.target.take().expect("routed before forwarding");
        let sent = upstream::send(self, &target, &mut head, &body, log).await;
        let set_cookie = match (&sent, &target.options.affinity) {
            (Ok((_, slot, _)), Some(affinity)) if head.sticky != Some(slot.endpoint().affinity) => {
                // The cookie's endpoint is still there but failed: kept, unless
                // session-cookie-change-on-failure (the default) says otherwise.
                let kept = !affinity.change_on_failure
                    && head.sticky.is_some_and(|key| {
                        target.pool.endpoints().iter().any(|e| e.affinity == key)
                    });
                (!kept)
                    .then(|| affinity_cookie(affinity, slot.endpoint().affinity, &target, https))
                    .flatten()
            }
            _ => None,
        };
        log.target = Some(target);
        let (resp, slot, pooled) = sent?;
        let code = resp.status().as_u16();
        let (mut resp, slot, pooled) = match error_page {
            Some(headers)
                if (log.target.as_ref())
                    .is_some_and(|t| t.options.custom_errors.contains(&code)) =>
            {
                drop((resp, slot, pooled));
                Box::pin(self.error_page(headers, code, log)).await?
            }
            _ => (resp, slot, pooled),
        };
        log.in_flight = Some(slot);
        if let Some(cookie) = set_cookie {
            resp.headers_mut().append(header::SET_COOKIE, cookie);
        }

        // 5. response_filter
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        if let (true, Some(client_upgrade)) = (switching, client_upgrade) {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let idle = (log.target.as_ref())
                .and_then(|t| t.options.response_timeout)
                .unwrap_or(self.options.response_timeout);
            upgrade::tunnel(client_upgrade, upstream_upgrade, idle);
        }
        let (mut parts, body) = resp.into_parts();
        // From an HTTP/2 upstream: written to an HTTP/1 client as HTTP/1.1.
        parts.version = Version::HTTP_11;
        // proxy-cookie-path / -domain (nginx's proxy_cookie_path / _domain).
        if let Some(options) = log.target.as_ref().map(|t| &t.options)
            && (options.cookie_path.is_some() || options.cookie_domain.is_some())
        {
            rewrite_cookies(
                &mut parts.headers,
                options.cookie_path.as_ref(),
                options.cookie_domain.as_ref(),
            );
        }
        // proxy-redirect-from/-to (nginx's proxy_redirect).
        if let Some((from, to)) =
            (log.target.as_ref()).and_then(|t| t.options.redirect_rewrite.as_ref())
        {
            rewrite_redirects(&mut parts.headers, from, to);
        }
        headers::strip_hop_by_hop(&mut parts.headers, switching && upgrade);
        if let Some(cors) = cors {
            for (name, value) in *cors {
                let name = name.expect("one value per name");
                if name == header::VARY {
                    parts.headers.append(name, value);
                } else {
                    parts.headers.insert(name, value);
                }
            }
        }
        parts
            .headers
            .insert(header::SERVER, HeaderValue::from_static(SERVER));
        // A connection that switched protocols is the tunnel's, not the pool's.
        let pooled = match pooled {
            Some(conn) if switching => {
                conn.upgraded();
                None
            }
            other => other,
        };
        Ok(Forwarded::Response(parts, body, pooled))
    }

    /// The auth checks: `auth-type: basic`, then `auth-url`, combined as `satisfy` says
    /// (by default both must let the request through). The answer to send instead of
    /// forwarding, when the request is refused.
    async fn authorize(
        &self,
        access: Access,
        head: &mut upstream::Head,
        original: Option<Box<auth::Original>>,
        target: &Target,
    ) -> Result<Option<Response<()>>, ProxyError> {
        let config = target.options.auth.as_ref();
        // Only the auth service speaks for these names: a client's own
        // `X-Auth-Request-User` never reaches the upstream, whether or not the service is
        // asked (nginx's `proxy_set_header` from `auth_request_set` does the same).
        for name in config.iter().flat_map(|c| &c.response_headers) {
            head.headers.remove(name);
        }
        if access == Access::Granted {
            return Ok(None);
        }
        let any = access == Access::Any;
        // Refused by every check: an answer that asks for credentials (401) wins, as in
        // nginx.
        let mut challenge = None;
        if let Some(basic) = &target.basic_auth {
            if basic.check(head.headers.get(header::AUTHORIZATION)).await {
                if any {
                    return Ok(None);
                }
            } else {
                let mut resp = local_head(StatusCode::UNAUTHORIZED);
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, basic.challenge());
                if !any || original.is_none() {
                    return Ok(Some(resp));
                }
                challenge = Some(resp);
            }
        }
        let (Some(original), Some(config)) = (original, config) else {
            return Ok(None);
        };
        let timeout = (target.options.response_timeout).unwrap_or(self.options.response_timeout);
        let verdict = auth::check(
            &self.auth_client,
            &self.auth_cache,
            config,
            target.auth_headers.as_deref().unwrap_or_default(),
            &original,
            &head.headers,
            timeout,
        );
        match verdict.await? {
            auth::Verdict::Allow(headers) => {
                for (name, value) in headers {
                    head.headers.append(name, value);
                }
                Ok(None)
            }
            auth::Verdict::Deny(resp) => Ok(Some(challenge.unwrap_or(resp))),
        }
    }

    /// The default backend's answer in place of an upstream answer with `code`
    /// (`custom-http-errors`): `GET /` with ingress-nginx's `X-Code` and companions.
    async fn error_page(
        &self,
        mut headers: hyper::HeaderMap,
        code: u16,
        log: &mut RequestLog,
    ) -> Result<(Response<Incoming>, balance::InFlight, Option<PooledConn>), ProxyError> {
        let target = log.target.take().expect("routed before forwarding");
        let fallback = Arc::clone(target.fallback.as_ref().expect("checked before"));
        headers.insert("x-code", HeaderValue::from(code));
        let mut head = upstream::Head {
            method: Method::GET,
            path_and_query: PathAndQuery::from_static("/"),
            headers,
            sticky: None,
            hash: None,
            te_trailers: false,
        };
        let body = body::RequestBody::empty();
        let sent = upstream::send(self, &fallback, &mut head, &body, log).await;
        log.target = Some(target);
        sent
    }

    /// 308 to the same request over https.
    fn redirect(&self, host: &str, req: &Request<Incoming>) -> Response<()> {
        let port = match self.options.https_port {
            Some(443) | None => String::new(),
            Some(p) => format!(":{p}"),
        };
        let pq = req.uri().path_and_query().map_or("/", PathAndQuery::as_str);
        local_redirect(
            StatusCode::PERMANENT_REDIRECT,
            &format!("https://{host}{port}{pq}"),
        )
    }
}

/// A redirect answered here (the location is a valid header value: `app-root` is
/// checked to be a URI path when read, and the https one is built from a valid host
/// and path).
fn local_redirect(status: StatusCode, location: &str) -> Response<()> {
    let mut resp = local_head(status);
    if let Ok(v) = HeaderValue::try_from(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// A local answer without a body: `status` and our `Server`.
fn local_head(status: StatusCode) -> Response<()> {
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::SERVER, HeaderValue::from_static(SERVER));
    resp
}

/// `Location` (a leading `from`) and `Refresh` (after its `url=`) with `from` replaced
/// by `to`, as nginx's `proxy_redirect from to`.
fn rewrite_redirects(headers: &mut hyper::HeaderMap, from: &str, to: &str) {
    let replace =
        |v: &str| -> Option<String> { v.strip_prefix(from).map(|rest| format!("{to}{rest}")) };
    if let Some(location) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok())
        && let Some(new) = replace(location)
        && let Ok(v) = HeaderValue::try_from(new)
    {
        headers.insert(header::LOCATION, v);
    }
    let refresh = hyper::header::HeaderName::from_static("refresh");
    if let Some(value) = headers.get(&refresh).and_then(|v| v.to_str().ok()) {
        let at = value.to_ascii_lowercase().find("url=").map(|i| i + 4);
        if let Some(at) = at
            && let Some(new) = replace(value[at..].trim_start())
            && let Ok(v) = HeaderValue::try_from(format!("{}{new}", &value[..at]))
        {
            headers.insert(refresh, v);
        }
    }
}

/// `Set-Cookie` values with their `Path` (starting with `path.0`) and `Domain` (equal to
/// `domain.0`, case-insensitively) attributes changed, as nginx's `proxy_cookie_path`
/// and `proxy_cookie_domain` with a plain text `from`.
fn rewrite_cookies(
    headers: &mut hyper::HeaderMap,
    path: Option<&(String, String)>,
    domain: Option<&(String, String)>,
) {
    let values: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .cloned()
        .collect();
    if values.is_empty() {
        return;
    }
    headers.remove(header::SET_COOKIE);
    for value in values {
        let Ok(text) = value.to_str() else {
            headers.append(header::SET_COOKIE, value);
            continue;
        };
        let attrs: Vec<String> = text
            .split(';')
            .map(|attr| {
                let trimmed = attr.trim_start();
                let lead = &attr[..attr.len() - trimmed.len()];
                let Some((key, v)) = trimmed.split_once('=') else {
                    return attr.to_owned();
                };
                if let Some((from, to)) = path.filter(|_| key.eq_ignore_ascii_case("path"))
                    && let Some(rest) = v.strip_prefix(from.as_str())
                {
                    return format!("{lead}{key}={to}{rest}");
                }
                if let Some((from, to)) = domain.filter(|_| key.eq_ignore_ascii_case("domain"))
                    && v.eq_ignore_ascii_case(from)
                {
                    return format!("{lead}{key}={to}");
                }
                attr.to_owned()
            })
            .collect();
        let value = HeaderValue::try_from(attrs.join(";")).unwrap_or(value);
        headers.append(header::SET_COOKIE, value);
    }
}

/// The headers of a `custom-http-errors` page request for a request with `head` to
/// `target`'s rule (ingress-nginx's: `X-Format` is the client's Accept, `X-Original-URI`
/// the path and query as the client sent them, the names are the rule's Ingress and
/// Service), less `X-Code`, known once the answer is in.
fn error_page_headers(
    target: &crate::source::Target,
    head: &upstream::Head,
    original_uri: Option<&PathAndQuery>,
) -> hyper::HeaderMap {
    let mut headers = hyper::HeaderMap::new();
    let mut put = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::try_from(value) {
            headers.insert(name, v);
        }
    };
    let (namespace, ingress) = target
        .ingress
        .split_once('/')
        .unwrap_or(("", &target.ingress));
    let service = target
        .service
        .rsplit_once('/')
        .map_or(&*target.service, |(_, s)| s);
    let (service, port) = service.rsplit_once(':').unwrap_or((service, ""));
    put(
        "x-original-uri",
        original_uri.unwrap_or(&head.path_and_query).as_str(),
    );
    put("x-namespace", namespace);
    put("x-ingress-name", ingress);
    put("x-service-name", service);
    put("x-service-port", port);
    for (name, from) in [
        ("x-format", &header::ACCEPT),
        ("x-request-id", &headers::X_REQUEST_ID),
        ("host", &header::HOST),
        ("x-forwarded-for", &headers::X_FORWARDED_FOR),
    ] {
        if let Some(v) = head.headers.get(from) {
            headers.insert(name, v.clone());
        }
    }
    headers
}

/// The upstream path and query for a route with `rewrite-prefix`, and the
/// `X-Forwarded-Prefix` value (the prefix replaced; none when it was `/`).
fn rewrite(
    path: &str,
    query: Option<&str>,
    target: &crate::source::Target,
    replacement: &str,
) -> Result<(PathAndQuery, Option<HeaderValue>), ProxyError> {
    let prefix = target.rule_prefix().trim_end_matches('/');
    let mut pq = crate::routes::replace_prefix(path, prefix, replacement);
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    let pq = PathAndQuery::try_from(pq)
        .map_err(|_| ProxyError::BadRequest("the rewritten path is not a valid URI path"))?;
    let prefix = (!prefix.is_empty())
        .then(|| HeaderValue::try_from(prefix).ok())
        .flatten();
    Ok((pq, prefix))
}

/// The CORS response headers for a request from `origin` (a preflight's, or an actual
/// request's). None of them when the origin is not allowed: the browser then refuses.
fn cors_headers(
    cors: &crate::source::annotations::Cors,
    origin: Option<&str>,
    preflight: bool,
) -> hyper::HeaderMap {
    let mut h = hyper::HeaderMap::new();
    let Some(allow) = cors.allow_origin(origin) else {
        return h;
    };
    let value = |s: &str| HeaderValue::try_from(s).expect("checked when read");
    if let Ok(v) = HeaderValue::try_from(allow) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    if allow != "*" {
        // The answer depends on the request's Origin: caches must know.
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    if cors.credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if preflight {
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, value(&cors.methods));
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, value(&cors.headers));
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from(cors.max_age),
        );
    } else if let Some(expose) = &cors.expose {
        h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, value(expose));
    }
    h
}

/// The `Set-Cookie` that names endpoint `key` for `affinity` (`HttpOnly`; `Secure` when
/// the client spoke https; `Path` the rule's unless set).
fn affinity_cookie(
    affinity: &crate::source::annotations::CookieAffinity,
    key: u64,
    target: &crate::source::Target,
    tls: bool,
) -> Option<HeaderValue> {
    let path = match &affinity.path {
        Some(p) => p.as_str(),
        None => match target.rule_prefix().trim_end_matches('/') {
            "" => "/",
            p => p,
        },
    };
    let mut v = format!("{}={key:016x}; Path={path}; HttpOnly", affinity.name);
    if let Some(age) = affinity.max_age {
        let _ = write!(v, "; Max-Age={age}");
    }
    if let Some(secs) = affinity.expires {
        let at = std::time::SystemTime::now() + Duration::from_secs(secs);
        let _ = write!(v, "; Expires={}", httpdate::fmt_http_date(at));
    }
    if let Some(domain) = &affinity.domain {
        let _ = write!(v, "; Domain={domain}");
    }
    if let Some(same_site) = affinity.same_site {
        v.push_str("; SameSite=");
        v.push_str(same_site);
    }
    if tls || affinity.secure {
        v.push_str("; Secure");
    }
    HeaderValue::try_from(v).ok()
}

/// What the phases before the upstream request decided.
enum Step {
    /// Answered here (a redirect).
    Local(Response<()>),
    Upstream(Outgoing),
}

/// The upstream request, ready to go (its target is in the request's log record).
struct Outgoing {
    head: upstream::Head,
    body: RequestBody,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    upgrade: bool,
    /// CORS headers to set on the response (`enable-cors`; boxed, as this struct waits in
    /// every request's future).
    cors: Option<Box<hyper::HeaderMap>>,
    /// The client's request as the `auth-url` check needs it.
    auth: Option<Box<auth::Original>>,
    /// The path and query as the client sent them, for `custom-http-errors` pages'
    /// `X-Original-URI` (only on such routes).
    original_uri: Option<Box<PathAndQuery>>,
    /// The client spoke https (to us, or to a trusted proxy before us).
    https: bool,
    /// What the auth checks must find (`satisfy`).
    access: Access,
    /// `mirror-target`: where a copy of the request goes, once it is let through.
    mirror: Option<Box<mirror::Destination>>,
}

/// How the access checks combine (`satisfy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// `satisfy: all` (the default): every check the route has must let the request
    /// through.
    All,
    /// `satisfy: any`, and the source ranges admitted the client: no credentials asked.
    Granted,
    /// `satisfy: any`, not admitted by address (refused, or the route has no ranges):
    /// one auth check must let it through.
    Any,
}

/// The response to the client, with the request's log record.
fn respond(
    forwarded: Result<Forwarded, ProxyError>,
    mut log: Box<RequestLog>,
) -> Response<ResponseBody> {
    // custom-headers: on every answer of the rule, the proxy's own (503, redirects) too,
    // as nginx's more_set_headers without a status list.
    let set = (log.target.as_ref()).and_then(|t| t.response_headers.clone());
    let mut resp = match forwarded {
        Ok(Forwarded::Response(parts, body, pooled)) => {
            log.status = parts.status;
            let rate = log.target.as_ref().and_then(|t| t.options.limit_rate);
            Response::from_parts(parts, ResponseBody::upstream(body, log, pooled, rate))
        }
        Ok(Forwarded::Local(resp)) => {
            log.status = resp.status();
            let (parts, ()) = resp.into_parts();
            Response::from_parts(parts, ResponseBody::empty(Some(log)))
        }
        Err(e) => {
            let status = e.status();
            log.status = status;
            log.error = Some(e.to_string());
            let mut resp = local_text(status, e.public_text(), Some(log));
            if let ProxyError::RateLimited { retry_after_s } = e {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
            }
            resp
        }
    };
    for (name, value) in set.iter().flat_map(|s| s.iter()) {
        resp.headers_mut().insert(name.clone(), value.clone());
    }
    resp
}

enum Forwarded {
    Response(hyper::http::response::Parts, Incoming, Option<PooledConn>),
    Local(Response<()>),
}

/// What a request's authority gives: the same for every request of a connection that
/// names the same authority, so made once per connection ([`ConnInfo`] keeps it).
#[derive(Clone, Debug)]
struct AuthorityInfo {
    /// The authority as the client sent it (Host or `:authority`); a copy, not a slice
    /// of the connection's read buffer, which it would pin.
    text: Box<str>,
    /// The same as a header value (always one: a valid Host was one, and a URI
    /// authority has only characters a header value allows).
    value: Option<HeaderValue>,
    /// Its host name as routing sees it ([`crate::routes::request_host`]).
    host: String,
    /// The peer's address, for X-Forwarded-For from an untrusted peer.
    xff: HeaderValue,
    /// Forwarded from an untrusted peer ([`headers::forwarded_value`]).
    forwarded: Option<HeaderValue>,
}

impl AuthorityInfo {
    /// `authority` has been validated (a URI authority, a valid Host, or empty).
    fn new(authority: &str, conn: &ConnInfo) -> AuthorityInfo {
        let peer = conn.peer.ip();
        let peer_s = peer.to_string();
        let forwarded = headers::forwarded_element(peer, &peer_s, authority, conn.proto());
        // The three header values are slices of one buffer: one allocation for the
        // connection, and clones into each request that only count references.
        let mut buf = String::with_capacity(authority.len() + peer_s.len() + forwarded.len());
        buf.push_str(authority);
        buf.push_str(&peer_s);
        buf.push_str(&forwarded);
        let buf = bytes::Bytes::from(buf);
        let (a, p) = (authority.len(), authority.len() + peer_s.len());
        let value =
            |range: std::ops::Range<usize>| HeaderValue::from_maybe_shared(buf.slice(range)).ok();
        AuthorityInfo {
            text: authority.into(),
            value: value(0..a),
            host: crate::routes::request_host(authority),
            xff: value(a..p).expect("an address is a header value"),
            forwarded: value(p..buf.len()),
        }
    }
}

/// The authority the request names: the URI's (HTTP/2, absolute-form) or the single
/// Host header. HTTP/1.1 requires a Host; HTTP/1.0 may omit it.
///
/// The connection keeps what its first request's (non-empty) authority gave; a request
/// naming the same bytes reuses it (validity depends on the bytes alone).
fn authority<'c>(
    req: &Request<Incoming>,
    conn: &'c ConnInfo,
) -> Result<Cow<'c, AuthorityInfo>, ProxyError> {
    let host_header = if req.uri().authority().is_some() {
        None
    } else {
        let mut hosts = req.headers().get_all(header::HOST).iter();
        match (hosts.next(), hosts.next()) {
            (Some(_), Some(_)) => return Err(ProxyError::BadRequest("several Host headers")),
            (Some(h), None) => Some(h),
            (None, _) if req.version() == Version::HTTP_11 => {
                return Err(ProxyError::BadRequest("HTTP/1.1 request without Host"));
            }
            (None, _) => None,
        }
    };
    let bytes = match (req.uri().authority(), host_header) {
        (Some(a), _) => a.as_str().as_bytes(),
        (None, Some(h)) => h.as_bytes(),
        (None, None) => b"",
    };
    if let Some(known) = conn.authority.get()
        && !bytes.is_empty()
        && known.text.as_bytes() == bytes
    {
        return Ok(Cow::Borrowed(known));
    }
    let text = match (req.uri().authority(), host_header) {
        (Some(a), _) => a.as_str(),
        (None, Some(h)) => {
            let h = h
                .to_str()
                .map_err(|_| ProxyError::BadRequest("Host is not valid"))?;
            h.parse::<hyper::http::uri::Authority>()
                .map_err(|_| ProxyError::BadRequest("Host is not valid"))?;
            h
        }
        (None, None) => "",
    };
    let info = AuthorityInfo::new(text, conn);
    if text.is_empty() {
        return Ok(Cow::Owned(info));
    }
    Ok(match conn.authority.set(info) {
        Ok(()) => Cow::Borrowed(conn.authority.get().expect("just set")),
        Err(info) => Cow::Owned(info),
    })
}

/// A response made here, not by an upstream, for `status`.
pub fn local(status: StatusCode, log: Option<Box<RequestLog>>) -> Response<ResponseBody> {
    let text = match status {
        StatusCode::NOT_FOUND => "no route for this host and path\n",
        StatusCode::SERVICE_UNAVAILABLE => "no ready endpoint for this route\n",
        StatusCode::BAD_GATEWAY => "the upstream failed\n",
        StatusCode::GATEWAY_TIMEOUT => "the upstream did not answer in time\n",
        StatusCode::PAYLOAD_TOO_LARGE => "request body too large\n",
        StatusCode::METHOD_NOT_ALLOWED => "method not allowed\n",
        _ => "bad request\n",
    };
    local_text(status, text, log)
}

/// A response made here with body `text` (which says nothing of upstream addresses or
/// configuration: those go to the access log).
fn local_text(
    status: StatusCode,
    text: &'static str,
    log: Option<Box<RequestLog>>,
) -> Response<ResponseBody> {
    let http1 = log.as_ref().is_none_or(|l| l.version < Version::HTTP_2);
    let mut resp = Response::new(ResponseBody::local(text, log));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::SERVER, HeaderValue::from_static(SERVER));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if http1 && status.is_client_error() && status != StatusCode::NOT_FOUND {
        // The connection may hold an unread body: do not reuse it.
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Duration = Duration::from_secs(10);
    const I: Duration = Duration::from_mins(1);

    fn conn() -> (ConnInfo, Instant) {
        let c = ConnInfo::new("192.0.2.1:4000".parse().unwrap(), false);
        let t0 = c.opened();
        (c, t0)
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn cookies_are_rewritten_as_nginx_proxy_cookie_path_and_domain() {
        let mut h = hyper::HeaderMap::new();
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_static("sid=1; Path=/app/x; Domain=App.Internal; HttpOnly"),
        );
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_static("theme=dark; path=/other"),
        );
        let path = ("/app/".to_owned(), "/".to_owned());
        let domain = ("app.internal".to_owned(), "shop.example".to_owned());
        rewrite_cookies(&mut h, Some(&path), Some(&domain));
        let all: Vec<&str> = h
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(
            all,
            [
                "sid=1; Path=/x; Domain=shop.example; HttpOnly",
                "theme=dark; path=/other"
            ]
        );
    }

    #[test]
    fn redirects_are_rewritten_as_nginx_proxy_redirect() {
        let mut h = hyper::HeaderMap::new();
        h.insert(
            header::LOCATION,
            HeaderValue::from_static("http://app:8080/login?next=/"),
        );
        h.insert(
            "refresh",
            HeaderValue::from_static("5; URL=http://app:8080/home"),
        );
        rewrite_redirects(&mut h, "http://app:8080/", "https://shop.example/app/");
        assert_eq!(h[header::LOCATION], "https://shop.example/app/login?next=/");
        assert_eq!(h["refresh"], "5; URL=https://shop.example/app/home");
        // Other locations are left alone.
        let mut h = hyper::HeaderMap::new();
        h.insert(header::LOCATION, HeaderValue::from_static("/relative"));
        rewrite_redirects(&mut h, "http://app:8080/", "/");
        assert_eq!(h[header::LOCATION], "/relative");
    }

    #[test]
    fn a_new_connection_has_the_header_timeout_to_send_its_first_head() {
        let (c, t0) = conn();
        assert_eq!(c.expiry(t0, H, I), Expiry::Check(t0 + H));
        assert_eq!(c.expiry(t0 + secs(4), H, I), Expiry::Check(t0 + H));
        assert_eq!(c.expiry(t0 + H, H, I), Expiry::Close);
    }

    #[test]
    fn the_header_timeout_counts_from_the_last_response_and_not_during_requests() {
        let (c, t0) = conn();
        c.request_started(t0 + secs(5), Version::HTTP_11);
        // A request in flight (a slow upstream, a long body): nothing is due.
        assert_eq!(
            c.expiry(t0 + secs(30), H, I),
            Expiry::Check(t0 + secs(30) + H)
        );
        c.request_finished(t0 + secs(35));
        assert_eq!(c.expiry(t0 + secs(40), H, I), Expiry::Check(t0 + secs(45)));
        assert_eq!(c.expiry(t0 + secs(45), H, I), Expiry::Close);
    }

    #[test]
    fn a_shorter_idle_timeout_bounds_http1_too() {
        let (c, t0) = conn();
        let idle = secs(3);
        assert_eq!(c.expiry(t0, H, idle), Expiry::Check(t0 + idle));
        assert_eq!(c.expiry(t0 + idle, H, idle), Expiry::Close);
    }

    #[test]
    fn http2_connections_have_only_the_idle_timeout_and_close_gracefully() {
        let (c, t0) = conn();
        c.request_started(t0, Version::HTTP_2);
        c.request_finished(t0 + secs(1));
        assert_eq!(c.expiry(t0 + secs(20), H, I), Expiry::Check(t0 + secs(61)));
        assert_eq!(c.expiry(t0 + secs(61), H, I), Expiry::Idle);
    }
}
