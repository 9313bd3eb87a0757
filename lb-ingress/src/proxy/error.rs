//! Why a request could not be proxied, and whose fault it was. The status code, the
//! access log's `error` and the metric follow from the variant (pingora-error's habit:
//! an error knows its origin).
use std::net::SocketAddr;

use hyper::StatusCode;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Who caused an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blame {
    /// The client sent something we refuse.
    Client,
    /// Our configuration has nothing to serve (no route, no endpoint, not ready).
    Config,
    /// The endpoint failed, timed out, or could not be reached.
    Upstream,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error("method not allowed: {0}")]
    MethodNotAllowed(&'static str),
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("no configuration yet")]
    NotReady,
    #[error("no route for this host and path")]
    NoRoute,
    #[error("client {0} is not in the route's allowlist-source-range")]
    SourceNotAllowed(std::net::IpAddr),
    #[error("route not served: {reason}")]
    Misconfigured { reason: String },
    #[error("no ready endpoint for {service}")]
    NoEndpoint { service: String },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: BoxError,
    },
    #[error("{addr} did not answer within {timeout_ms} ms")]
    Timeout { addr: SocketAddr, timeout_ms: u128 },
    #[error("{addr} failed: {source}")]
    Upstream {
        addr: SocketAddr,
        #[source]
        source: BoxError,
    },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::SourceNotAllowed(_) => StatusCode::FORBIDDEN,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NotReady
            | ProxyError::NoEndpoint { .. }
            | ProxyError::Misconfigured { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect { .. } | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub fn blame(&self) -> Blame {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::MethodNotAllowed(_)
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::SourceNotAllowed(_) => Blame::Client,
            ProxyError::NotReady
            | ProxyError::NoRoute
            | ProxyError::NoEndpoint { .. }
            | ProxyError::Misconfigured { .. } => Blame::Config,
            ProxyError::Connect { .. }
            | ProxyError::Timeout { .. }
            | ProxyError::Upstream { .. } => Blame::Upstream,
        }
    }
}
