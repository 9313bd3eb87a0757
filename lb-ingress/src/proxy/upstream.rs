//! The upstream side: pooled HTTP/1.1 connections straight to pod addresses (hyper-util's
//! pooling client keyed by `ip:port`, shared by every configuration so that a reload
//! keeps warm connections), and the attempt loop with its retry rules.
//!
//! Retry rules: a request is sent again, to another endpoint, only when no byte of it
//! can have been processed: the connection could not be made, or the method is
//! idempotent and the request body was never read. Never after a timeout (the upstream
//! may still be working on it), and only while the [`RetryBudget`] allows.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::http::uri::PathAndQuery;
use hyper::{Method, Request, Response, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::Proxy;
use super::balance::InFlight;
use super::body::RequestBody;
use super::error::ProxyError;
use super::log::RequestLog;
use crate::metrics::ServiceLabel;
use crate::source::Target;

pub type UpstreamClient = Client<HttpConnector, RequestBody>;

pub fn client(connect_timeout: Duration, idle_timeout: Duration) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(idle_timeout)
        .pool_max_idle_per_host(256)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector)
}

/// The parts of the upstream request that are the same for every attempt.
pub struct Head {
    pub method: Method,
    pub path_and_query: PathAndQuery,
    pub headers: HeaderMap,
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Sends the request to an endpoint of `target`, retrying as the rules above allow.
pub async fn send(
    proxy: &Proxy,
    target: &Target,
    head: &Head,
    body: &RequestBody,
    log: &mut RequestLog,
) -> Result<(Response<Incoming>, InFlight), ProxyError> {
    let mut tried: Vec<SocketAddr> = Vec::new();
    proxy.budget.deposit();
    loop {
        let Some(slot) = target.pool.pick(&proxy.registry, &tried) else {
            return Err(ProxyError::NoEndpoint {
                service: target.service.clone(),
            });
        };
        let endpoint = slot.endpoint();
        let addr = endpoint.addr;
        log.upstream = Some(addr);
        let uri = Uri::builder()
            .scheme("http")
            .authority(endpoint.authority.as_str())
            .path_and_query(head.path_and_query.clone())
            .build()
            .map_err(|e| ProxyError::Upstream {
                addr,
                source: e.into(),
            })?;
        let mut req = Request::new(body.clone());
        *req.method_mut() = head.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = head.headers.clone();

        let started = Instant::now();
        let result =
            tokio::time::timeout(proxy.options.response_timeout, proxy.client.request(req)).await;
        log.upstream_duration = Some(started.elapsed());
        let error = match result {
            Ok(Ok(resp)) => return Ok((resp, slot)),
            Err(_elapsed) => {
                return Err(ProxyError::Timeout {
                    addr,
                    timeout_ms: proxy.options.response_timeout.as_millis(),
                });
            }
            Ok(Err(e)) => e,
        };
        if body.too_large() {
            return Err(ProxyError::BodyTooLarge {
                limit: proxy.options.max_body_bytes,
            });
        }
        if body.client_failed() {
            return Err(ProxyError::BadRequest("the request body could not be read"));
        }
        let connect = error.is_connect();
        if connect {
            proxy
                .metrics
                .upstream_connect_errors
                .get_or_create(&ServiceLabel {
                    service: target.service.clone(),
                })
                .inc();
            // Passive health: an endpoint that cannot be connected to gets no requests
            // for a while.
            proxy.registry.eject(endpoint);
        }
        let retriable = (connect || idempotent(&head.method)) && body.untouched();
        let error = if connect {
            ProxyError::Connect {
                addr,
                source: error.into(),
            }
        } else {
            ProxyError::Upstream {
                addr,
                source: error.into(),
            }
        };
        tried.push(addr);
        if !retriable
            || log.retries >= proxy.options.max_retries
            || tried.len() >= target.pool.len()
            || !proxy.budget.withdraw()
        {
            return Err(error);
        }
        log.retries += 1;
        proxy
            .metrics
            .upstream_retries
            .get_or_create(&ServiceLabel {
                service: target.service.clone(),
            })
            .inc();
        tracing::debug!(%error, "retrying on another endpoint");
    }
}
