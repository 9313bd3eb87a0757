//! The ingress's Prometheus metrics (prefix `lb_ingress_`, base units, `_total`
//! counters), served on `--metrics-addr` at `/metrics` and nowhere else.
//!
//! Labels are bounded by configuration, never by traffic: the route labels are the
//! rule's own host and path (not the request's), methods outside the standard set are
//! counted as `OTHER`, and status codes are grouped into classes.
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
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

fn histogram() -> Histogram {
    // 0.5 ms .. ~65 s
    Histogram::new(exponential_buckets(0.000_5, 2.0, 18))
}

/// Everything the proxy, the TLS acceptor and the source update.
#[derive(Clone)]
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub upstream_response_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub upstream_connect_errors: Family<ServiceLabel, Counter>,
    pub upstream_retries: Family<ServiceLabel, Counter>,
    pub active_connections: Family<ListenerLabel, Gauge>,
    pub tls_handshakes: Family<ResultLabel, Counter>,
    pub config_reloads: Family<ResultLabel, Counter>,
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
            config_reloads: Family::default(),
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
            "lb_ingress_config_reloads",
            "Configurations built and swapped in; error: some objects were skipped",
            m.config_reloads.clone(),
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

/// `2xx`, `4xx`, ...
pub fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// The method as a bounded label.
pub fn method_label(method: &hyper::Method) -> &'static str {
    use hyper::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
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
