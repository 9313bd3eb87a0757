//! Why a request could not be proxied, and whose fault it was. The status code, the
//! access log's `error` and the metric follow from the variant (pingora-error's habit:
//! an error knows its origin).
use std::net::SocketAddr;

use hyper::StatusCode;

use crate::tls::client_auth::Refusal;

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
    #[error("over the route's rate limit (retry after {retry_after_s} s)")]
    RateLimited { retry_after_s: u64 },
    #[error("external authentication failed: {reason}")]
    Auth { reason: String },
    #[error("client certificate: {0:?}")]
    ClientCert(crate::tls::client_auth::Refusal),
    #[error("the client has {max} requests in flight on this route already")]
    TooManyInFlight { max: u32 },
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
    #[error("{addr} took no request body data for {timeout_ms} ms")]
    SendTimeout { addr: SocketAddr, timeout_ms: u128 },
    #[error("the client sent no request body data for {timeout_ms} ms")]
    ClientBodyTimeout { timeout_ms: u128 },
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
            ProxyError::RateLimited { .. } | ProxyError::TooManyInFlight { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NotReady
            | ProxyError::NoEndpoint { .. }
            | ProxyError::Misconfigured { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect { .. } | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } | ProxyError::SendTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::ClientBodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Auth { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::ClientCert(r) => match r {
                Refusal::Misdirected => StatusCode::MISDIRECTED_REQUEST,
                Refusal::Missing | Refusal::Invalid(_) => StatusCode::BAD_REQUEST,
                Refusal::CommonName => StatusCode::FORBIDDEN,
            },
        }
    }

    /// The body of the local response: what the client may know.
    pub fn public_text(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad request\n",
            ProxyError::MethodNotAllowed(_) => "method not allowed\n",
            ProxyError::BodyTooLarge { .. } => "request body too large\n",
            ProxyError::SourceNotAllowed(_) => "forbidden\n",
            ProxyError::RateLimited { .. } | ProxyError::TooManyInFlight { .. } => {
                "too many requests\n"
            }
            ProxyError::NotReady => "not ready\n",
            ProxyError::NoRoute => "no route for this host and path\n",
            ProxyError::NoEndpoint { .. } => "no ready endpoint for this route\n",
            ProxyError::Misconfigured { .. } => {
                "this route cannot be served (see the ingress's log)\n"
            }
            ProxyError::Connect { .. } | ProxyError::Upstream { .. } => "the upstream failed\n",
            ProxyError::Timeout { .. } | ProxyError::SendTimeout { .. } => {
                "the upstream did not answer in time\n"
            }
            ProxyError::ClientBodyTimeout { .. } => "request body timeout\n",
            ProxyError::Auth { .. } => "the authentication service failed\n",
            ProxyError::ClientCert(r) => match r {
                Refusal::Misdirected => "misdirected request\n",
                Refusal::Missing => "No required SSL certificate was sent\n",
                Refusal::Invalid(_) => "The SSL certificate error\n",
                Refusal::CommonName => "client certificate unauthorized\n",
            },
        }
    }

    pub fn blame(&self) -> Blame {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::MethodNotAllowed(_)
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::SourceNotAllowed(_)
            | ProxyError::RateLimited { .. }
            | ProxyError::TooManyInFlight { .. }
            | ProxyError::ClientCert(_)
            | ProxyError::ClientBodyTimeout { .. } => Blame::Client,
            ProxyError::NotReady
            | ProxyError::NoRoute
            | ProxyError::NoEndpoint { .. }
            | ProxyError::Misconfigured { .. } => Blame::Config,
            ProxyError::Connect { .. }
            | ProxyError::Timeout { .. }
            | ProxyError::SendTimeout { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::Auth { .. } => Blame::Upstream,
        }
    }
}
