//! The ingress's Prometheus metrics (prefix `lb_ingress_`, base units, `_total`
//! counters), served on `--metrics-addr` at `/metrics` and nowhere else.
//!
//! Labels are bounded by configuration, never by traffic: the route labels are the
//! rule's own host and path (not the request's), methods outside the standard set are
//! counted as `OTHER`, and status codes are grouped into classes.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
#[cfg(doc)]
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::debug;

use crate::proxy::balance::EndpointRegistry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub ingress: String,
    pub host: String,
    pub path: String,
    pub service: String,
    pub status_class: &'static str,
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub ingress: String,
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

fn histogram() -> ShardedHistogram {
    // 0.5 ms .. ~65 s
    ShardedHistogram::new(exponential_buckets(0.000_5, 2.0, 18))
}

/// Histogram shards: threads use them in turn (more threads share them).
const HISTOGRAM_SHARDS: usize = 8;

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % HISTOGRAM_SHARDS;
}

/// Buckets of a [`ShardedHistogram`], `+Inf` included, at most.
const MAX_BUCKETS: usize = 32;

/// One thread's observations, on cache lines of its own (inline, not behind a pointer
/// to memory that another thread's shard could share a line with).
#[repr(align(64))]
struct HistogramShard {
    /// Observations per bucket (not cumulative), `+Inf` at the index of the bound count.
    buckets: [AtomicU64; MAX_BUCKETS],
    /// The sum of the observations, as `f64` bits.
    sum: AtomicU64,
}

/// A histogram exposed exactly as prometheus-client's [`Histogram`] with the same
/// buckets (`_sum`, `_count`, cumulative `_bucket`s ending with `+Inf`), but observed
/// without a lock: each thread adds to a shard of its own with atomics, and the shards
/// are summed when scraped. (prometheus-client's takes a mutex per observation, which
/// the serving threads of a busy route would contend for on every request.) `_count`
/// is the sum of the buckets, so the two always agree.
#[derive(Clone)]
pub struct ShardedHistogram {
    inner: Arc<ShardedInner>,
}

struct ShardedInner {
    /// Finite upper bounds, ascending.
    bounds: Box<[f64]>,
    shards: [HistogramShard; HISTOGRAM_SHARDS],
}

impl std::fmt::Debug for ShardedHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (sum, count, _) = self.snapshot();
        f.debug_struct("ShardedHistogram")
            .field("sum", &sum)
            .field("count", &count)
            .finish_non_exhaustive()
    }
}

impl ShardedHistogram {
    /// As [`Histogram::new`]: non-finite bounds are dropped, `+Inf` is implicit.
    ///
    /// # Panics
    ///
    /// With more than 31 finite bounds.
    pub fn new(buckets: impl IntoIterator<Item = f64>) -> Self {
        let bounds: Box<[f64]> = buckets.into_iter().filter(|b| b.is_finite()).collect();
        assert!(bounds.len() < MAX_BUCKETS, "too many histogram buckets");
        let shards = std::array::from_fn(|_| HistogramShard {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0f64.to_bits()),
        });
        ShardedHistogram {
            inner: Arc::new(ShardedInner { bounds, shards }),
        }
    }

    pub fn observe(&self, v: f64) {
        let inner = &*self.inner;
        let shard = &inner.shards[SHARD.with(|s| *s)];
        // The first bucket whose bound is at least `v`; NaN and larger values: `+Inf`.
        let i = inner
            .bounds
            .iter()
            .position(|b| *b >= v)
            .unwrap_or(inner.bounds.len());
        shard.buckets[i].fetch_add(1, Ordering::Relaxed);
        let _ = shard
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
    }

    /// (sum, count, per-bucket counts with their upper bounds).
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let inner = &*self.inner;
        let mut buckets: Vec<(f64, u64)> = inner
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .map(|b| (b, 0))
            .collect();
        let mut sum = 0.0;
        for shard in &inner.shards {
            sum += f64::from_bits(shard.sum.load(Ordering::Relaxed));
            for (b, n) in buckets.iter_mut().zip(&shard.buckets) {
                b.1 += n.load(Ordering::Relaxed);
            }
        }
        let count = buckets.iter().map(|b| b.1).sum();
        (sum, count, buckets)
    }
}

impl TypedMetric for ShardedHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ShardedHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A counter exposed as prometheus-client's [`Counter`], counted the way
/// [`ShardedHistogram`] observes: each thread adds to a cache line of its own, summed
/// when scraped. (One shared atomic per series would bounce between the serving threads
/// on every request of a busy route.)
#[derive(Clone, Default)]
pub struct ShardedCounter {
    shards: Arc<[CounterShard; HISTOGRAM_SHARDS]>,
}

#[derive(Default)]
#[repr(align(64))]
struct CounterShard(AtomicU64);

impl ShardedCounter {
    pub fn inc(&self) {
        self.shards[SHARD.with(|s| *s)]
            .0
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }
}

impl std::fmt::Debug for ShardedCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ShardedCounter").field(&self.get()).finish()
    }
}

impl TypedMetric for ShardedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ShardedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Everything the proxy, the TLS acceptor and the source update.
#[derive(Clone)]
pub struct Metrics {
    pub requests: Family<RequestLabels, ShardedCounter>,
    pub request_duration: Family<RouteLabels, ShardedHistogram, fn() -> ShardedHistogram>,
    pub upstream_response_duration: Family<RouteLabels, ShardedHistogram, fn() -> ShardedHistogram>,
    pub upstream_connect_errors: Family<ServiceLabel, Counter>,
    pub upstream_retries: Family<ServiceLabel, Counter>,
    pub active_connections: Family<ListenerLabel, Gauge>,
    pub tls_handshakes: Family<ResultLabel, Counter>,
    /// Copies sent for `mirror-target`, by outcome ([`crate::proxy::mirror::Outcome`]).
    pub mirror_requests: Family<ResultLabel, Counter>,
    pub config_reloads: Family<ResultLabel, Counter>,
    /// Problems in the current configuration (objects, references or annotations skipped).
    pub config_problems: Gauge,
    /// The series of requests that matched no rule (all route labels empty).
    pub unrouted: Arc<RouteSeries>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// `lb_ingress_ejected_endpoints`, read from the endpoint registry at scrape time
/// (ejection ends by the clock, not by an event that could decrement a gauge).
#[derive(Debug)]
struct EjectedCollector(Arc<EndpointRegistry>);

impl Collector for EjectedCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let enc = encoder.encode_descriptor(
            "lb_ingress_ejected_endpoints",
            "Endpoints currently ejected by passive health checking (failed to connect)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.0.ejected() as i64).encode(enc)
    }
}

impl Metrics {
    pub fn new(registry: &mut Registry, endpoints: Arc<EndpointRegistry>) -> Metrics {
        let m = Metrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(histogram),
            upstream_response_duration: Family::new_with_constructor(histogram),
            upstream_connect_errors: Family::default(),
            upstream_retries: Family::default(),
            active_connections: Family::default(),
            tls_handshakes: Family::default(),
            mirror_requests: Family::default(),
            config_reloads: Family::default(),
            config_problems: Gauge::default(),
            unrouted: Arc::default(),
        };
        registry.register(
            "lb_ingress_requests",
            "Requests answered, by Ingress rule, Service, status class and method",
            m.requests.clone(),
        );
        registry.register(
            "lb_ingress_request_duration_seconds",
            "Time from the request head to the end of the response body",
            m.request_duration.clone(),
        );
        registry.register(
            "lb_ingress_upstream_response_duration_seconds",
            "Time from sending the request upstream to its response head",
            m.upstream_response_duration.clone(),
        );
        registry.register(
            "lb_ingress_upstream_connect_errors",
            "Connections to endpoints that failed or timed out",
            m.upstream_connect_errors.clone(),
        );
        registry.register(
            "lb_ingress_upstream_retries",
            "Requests sent again to another endpoint",
            m.upstream_retries.clone(),
        );
        registry.register(
            "lb_ingress_active_connections",
            "Client connections open, by listener",
            m.active_connections.clone(),
        );
        registry.register(
            "lb_ingress_tls_handshakes",
            "TLS handshakes by result",
            m.tls_handshakes.clone(),
        );
        registry.register(
            "lb_ingress_mirror_requests",
            "Request copies for mirror-target: success (answered, whatever the status), \
             error (failed or timed out), skipped (too many in flight), lagged (the target \
             took the body slower than the upstream; cut off)",
            m.mirror_requests.clone(),
        );
        registry.register(
            "lb_ingress_config_reloads",
            "Configurations built and swapped in; error: some objects were skipped",
            m.config_reloads.clone(),
        );
        registry.register(
            "lb_ingress_config_problems",
            "Problems in the configuration serving now (each is logged once, naming its object)",
            m.config_problems.clone(),
        );
        registry.register_collector(Box::new(EjectedCollector(endpoints)));
        // Create the known series at zero, so dashboards see 0 rather than no data.
        for result in ["success", "error"] {
            m.tls_handshakes
                .get_or_create(&ResultLabel { result })
                .inc_by(0);
            m.config_reloads
                .get_or_create(&ResultLabel { result })
                .inc_by(0);
        }
        for result in ["success", "error", "skipped", "lagged"] {
            m.mirror_requests
                .get_or_create(&ResultLabel { result })
                .inc_by(0);
        }
        for listener in ["http", "https"] {
            m.active_connections
                .get_or_create(&ListenerLabel { listener })
                .set(0);
        }
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("lb_ingress_build_info", "Build information", build);
        m
    }
}

/// The `status_class` label values, indexed by [`status_index`].
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The `method` label values, indexed by [`method_index`].
const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "OTHER",
];

fn status_index(status: StatusCode) -> usize {
    match status.as_u16() {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

fn method_index(method: &hyper::Method) -> usize {
    use hyper::Method;
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => 9,
    }
}

/// `2xx`, `4xx`, ...
pub fn status_class(status: StatusCode) -> &'static str {
    STATUS_CLASSES[status_index(status)]
}

/// The method as a bounded label.
pub fn method_label(method: &hyper::Method) -> &'static str {
    METHODS[method_index(method)]
}

/// The label values of one route: the Ingress rule and its Service (all empty for
/// requests that matched no rule).
#[derive(Clone, Copy, Debug, Default)]
pub struct RouteLabelValues<'a> {
    pub ingress: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub service: &'a str,
}

/// The request series of one route, looked up in their families on first use and kept:
/// the per-request cost is then an atomic add and a histogram observation, with no
/// label strings built and no family map hashed. Each handle is the family's own series
/// (families never remove series), so what is exported is the same as looking the
/// series up on every request; a series still appears only once it has been used.
#[derive(Debug, Default)]
pub struct RouteSeries {
    requests: [[OnceLock<ShardedCounter>; METHODS.len()]; STATUS_CLASSES.len()],
    duration: OnceLock<ShardedHistogram>,
    upstream_duration: OnceLock<ShardedHistogram>,
}

impl RouteSeries {
    /// Counts one answered request and its durations.
    pub fn observe(
        &self,
        metrics: &Metrics,
        labels: RouteLabelValues<'_>,
        status: StatusCode,
        method: &hyper::Method,
        duration: Duration,
        upstream_duration: Option<Duration>,
    ) {
        let (s, m) = (status_index(status), method_index(method));
        self.requests[s][m]
            .get_or_init(|| {
                metrics
                    .requests
                    .get_or_create(&RequestLabels {
                        ingress: labels.ingress.to_owned(),
                        host: labels.host.to_owned(),
                        path: labels.path.to_owned(),
                        service: labels.service.to_owned(),
                        status_class: STATUS_CLASSES[s],
                        method: METHODS[m],
                    })
                    .clone()
            })
            .inc();
        let route = || RouteLabels {
            ingress: labels.ingress.to_owned(),
            service: labels.service.to_owned(),
        };
        self.duration
            .get_or_init(|| metrics.request_duration.get_or_create(&route()).clone())
            .observe(duration.as_secs_f64());
        if let Some(d) = upstream_duration {
            self.upstream_duration
                .get_or_init(|| {
                    metrics
                        .upstream_response_duration
                        .get_or_create(&route())
                        .clone()
                })
                .observe(d.as_secs_f64());
        }
    }
}

/// Serves `/metrics` (and 404 for anything else) on `addr`; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for metrics on {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let registry = Arc::clone(&registry);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let reply = if req.uri().path() == "/metrics" {
                        let mut body = String::new();
                        match prometheus_client::encoding::text::encode(&mut body, &registry) {
                            Ok(()) => Response::builder()
                                .header(
                                    "content-type",
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                )
                                .body(Full::new(Bytes::from(body))),
                            Err(_) => Response::builder()
                                .status(StatusCode::INTERNAL_SERVER_ERROR)
                                .body(Full::new(Bytes::from_static(b"encoding failed\n"))),
                        }
                    } else {
                        Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"only /metrics here\n")))
                    };
                    async move { reply }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), svc);
                if let Err(e) = conn.await {
                    debug!(%peer, error = %e, "metrics connection ended with an error");
                }
            });
        }
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::histogram::Histogram;

    fn text(register: impl FnOnce(&mut Registry)) -> String {
        let mut registry = Registry::default();
        register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn sharded_histogram_is_exposed_as_prometheus_clients() {
        let values = [0.0001, 0.0005, 0.0007, 0.003, 0.25, 1.0, 9.5, 70.0, 1e9];
        let reference = Histogram::new(exponential_buckets(0.000_5, 2.0, 18));
        let sharded = histogram();
        std::thread::scope(|s| {
            for chunk in values.chunks(3) {
                let sharded = sharded.clone();
                s.spawn(move || {
                    for v in chunk {
                        sharded.observe(*v);
                    }
                });
            }
        });
        for v in values {
            reference.observe(v);
        }
        let a = text(|r| r.register("d", "Durations", reference));
        let b = text(|r| r.register("d", "Durations", sharded));
        // The sums may differ in the last digits (added in another order).
        let without_sum = |t: &str| -> String {
            t.lines()
                .filter(|l| !l.starts_with("d_sum"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(without_sum(&a), without_sum(&b));
        assert!(a.contains("d_count 9") && b.contains("d_count 9"), "{b}");
    }
}
