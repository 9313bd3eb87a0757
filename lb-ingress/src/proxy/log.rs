//! The logging phase: one access-log line and the request metrics per request, written
//! when the response body is finished (or abandoned), so durations cover the whole
//! exchange.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::header::HeaderValue;
use hyper::{Method, StatusCode, Version};
use tracing::info;

use super::ConnInfo;
use super::Proxy;
use super::balance::InFlight;
use crate::metrics::RouteLabelValues;
use crate::source::Target;

/// Everything known about one request, filled in phase by phase.
pub struct RequestLog {
    pub start: Instant,
    pub conn: Arc<ConnInfo>,
    /// For the metrics: the serving thread's own handle (see [`Proxy::for_thread`]), so
    /// that taking and dropping it does not touch a count other threads share.
    pub proxy: Arc<Proxy>,
    pub access_log: bool,
    pub method: Method,
    pub version: Version,
    /// The request's host and path, kept for the access log only (empty without it).
    pub host: String,
    pub path: String,
    pub target: Option<Arc<Target>>,
    pub upstream: Option<SocketAddr>,
    pub upstream_duration: Option<Duration>,
    pub status: StatusCode,
    pub retries: u32,
    /// The request's `X-Request-ID` (set only when the access log is on).
    pub request_id: Option<HeaderValue>,
    pub error: Option<String>,
    pub body_error: Option<String>,
    pub bytes_sent: u64,
    /// The endpoint's outstanding-request slot, released with this record.
    pub in_flight: Option<InFlight>,
    /// The client's place under the route's `limit-connections`, released with it too.
    pub concurrency: Option<crate::proxy::ratelimit::ConcurrencySlot>,
    /// When the response ended, if known (else when this record is dropped).
    pub finished: Option<Instant>,
}

impl RequestLog {
    pub fn new(
        conn: Arc<ConnInfo>,
        proxy: Arc<Proxy>,
        access_log: bool,
        method: Method,
        version: Version,
        path: &str,
    ) -> Self {
        let start = Instant::now();
        conn.request_started(start, version);
        RequestLog {
            start,
            conn,
            proxy,
            access_log,
            method,
            version,
            host: String::new(),
            path: if access_log {
                path.to_owned()
            } else {
                String::new()
            },
            target: None,
            upstream: None,
            upstream_duration: None,
            status: StatusCode::OK,
            retries: 0,
            request_id: None,
            error: None,
            body_error: None,
            bytes_sent: 0,
            in_flight: None,
            concurrency: None,
            finished: None,
        }
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        drop(self.in_flight.take());
        let end = self.finished.unwrap_or_else(Instant::now);
        self.conn.request_finished(end);
        let duration = end.saturating_duration_since(self.start);
        let (series, labels) = match &self.target {
            Some(t) => (&t.series, t.labels()),
            None => (&*self.proxy.metrics.unrouted, RouteLabelValues::default()),
        };
        series.observe(
            &self.proxy.metrics,
            labels,
            self.status,
            &self.method,
            duration,
            self.upstream_duration,
        );
        let RouteLabelValues {
            ingress,
            host: rule_host,
            path: rule_path,
            service,
        } = labels;
        if self.access_log {
            info!(
                target: "lb_ingress::access",
                client = %self.conn.peer,
                tls = self.conn.tls,
                method = %self.method,
                version = ?self.version,
                host = %self.host,
                path = %self.path,
                ingress,
                rule = %format_args!("{rule_host}{rule_path}"),
                service,
                upstream = %self.upstream.map(|a| a.to_string()).unwrap_or_default(),
                status = self.status.as_u16(),
                retries = self.retries,
                bytes = self.bytes_sent,
                upstream_ms = self.upstream_duration.map_or(-1.0, |d| d.as_secs_f64() * 1e3),
                duration_ms = duration.as_secs_f64() * 1e3,
                error = self.error.as_deref().or(self.body_error.as_deref()).unwrap_or(""),
                request_id = self.request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or(""),
                "request"
            );
        }
    }
}
