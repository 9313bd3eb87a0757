//! External authentication (ingress-nginx's `auth-url`, which is nginx's `auth_request`):
//! before a request goes upstream, its head (no body) is sent to an auth service, such
//! as oauth2-proxy; a 2xx lets it through (with the auth response's
//! `auth-response-headers` added), a 401 is passed back or becomes a redirect to
//! `auth-signin`, a 403 is passed back, anything else (or no answer) is a 500.
//!
//! The URL may use nginx's `$host`, `$scheme`, `$request_uri` and `$escaped_request_uri`.
//! `https://` URLs are spoken to as nginx's `proxy_pass https://` in ingress-nginx's auth
//! location does by default (`proxy_ssl_verify off`): encrypted, SNI from the URL's
//! host, the handshake's signatures checked, the certificate not verified (auth services
//! in the cluster mostly show certificates of their own CA). Point `auth-url` at a
//! service you reach over a network you trust.
use std::fmt::Write as _;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::SERVER;
use super::error::ProxyError;

/// The client for auth requests: hyper-util's pooled client (auth URLs are names to
/// resolve and few in number, unlike upstream pods), over TLS by hyper-rustls for
/// `https://` URLs.
pub type AuthClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

pub fn client() -> AuthClient {
    let mut tls = crate::tls::upstream::unverified(b"http/1.1");
    // hyper-rustls offers the protocols it is built for (`enable_http1`) itself.
    tls.alpn_protocols.clear();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(https)
}

/// An Ingress's `auth-url` and its companions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalAuth {
    /// URL template (`http://...`, nginx variables allowed).
    pub url: String,
    pub method: Method,
    /// `auth-signin`: where a 401 redirects to (template), with `rd=` the original URL
    /// added unless it has one.
    pub signin: Option<String>,
    /// `auth-response-headers`: copied from a 2xx auth answer into the upstream request.
    pub response_headers: Vec<HeaderName>,
}

/// What the auth request needs to know of the client's request.
#[derive(Debug)]
pub struct Original {
    pub scheme: &'static str,
    /// The Host as sent (with its port, if any).
    pub host: String,
    /// Path and query as sent.
    pub request_uri: String,
    pub method: Method,
}

impl Original {
    /// `template` with nginx's variables replaced.
    fn expand(&self, template: &str) -> String {
        let host_name = crate::routes::request_host(&self.host);
        template
            .replace("$escaped_request_uri", &escape(&self.request_uri))
            .replace("$request_uri", &self.request_uri)
            .replace("$host", &host_name)
            .replace("$scheme", self.scheme)
    }

    fn url(&self) -> String {
        format!("{}://{}{}", self.scheme, self.host, self.request_uri)
    }
}

/// Percent-encodes everything but unreserved characters and `/` (nginx's
/// `$escaped_request_uri`, for a query parameter).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Whether a URL template is one we can call: `http://` or `https://` and a valid URI
/// once expanded.
pub fn valid_template(template: &str) -> bool {
    let sample = Original {
        scheme: "http",
        host: "example.com".into(),
        request_uri: "/".into(),
        method: Method::GET,
    };
    (template.starts_with("http://") || template.starts_with("https://"))
        && sample.expand(template).parse::<Uri>().is_ok()
}

/// The outcome of an auth check.
pub enum Verdict {
    /// Go on, with these headers added to the upstream request.
    Allow(Vec<(HeaderName, HeaderValue)>),
    /// Answer the client with this instead.
    Deny(Response<()>),
}

/// Asks the auth service about a request with `headers` (the ones going upstream).
pub async fn check(
    client: &AuthClient,
    auth: &ExternalAuth,
    original: &Original,
    headers: &HeaderMap,
    timeout: std::time::Duration,
) -> Result<Verdict, ProxyError> {
    let failed = |reason: String| ProxyError::Auth { reason };
    let url: Uri = original
        .expand(&auth.url)
        .parse()
        .map_err(|e| failed(format!("auth URL: {e}")))?;
    let mut req = Request::new(Empty::<Bytes>::new());
    *req.method_mut() = auth.method.clone();
    *req.headers_mut() = headers.clone();
    let h = req.headers_mut();
    // The head only: no body, and no Upgrade of a WebSocket request being checked.
    super::headers::strip_hop_by_hop(h, false);
    h.remove(header::CONTENT_LENGTH);
    h.remove(header::HOST);
    let value = |s: &str| HeaderValue::try_from(s).map_err(|e| failed(e.to_string()));
    h.insert("x-original-url", value(&original.url())?);
    h.insert("x-original-method", value(original.method.as_str())?);
    h.insert("x-auth-request-redirect", value(&original.request_uri)?);
    h.insert("x-sent-from", HeaderValue::from_static("lb-ingress"));
    *req.uri_mut() = url;
    let resp = match tokio::time::timeout(timeout, client.request(req)).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => return Err(failed(format!("auth request: {e}"))),
        Err(_) => return Err(failed("auth service did not answer in time".into())),
    };
    let status = resp.status();
    let (parts, _body) = resp.into_parts();
    if status.is_success() {
        let copied = auth
            .response_headers
            .iter()
            .filter_map(|name| parts.headers.get(name).map(|v| (name.clone(), v.clone())))
            .collect();
        return Ok(Verdict::Allow(copied));
    }
    let mut deny = Response::new(());
    deny.headers_mut()
        .insert(header::SERVER, HeaderValue::from_static(SERVER));
    match status {
        StatusCode::UNAUTHORIZED if auth.signin.is_some() => {
            let signin = original.expand(auth.signin.as_deref().unwrap_or_default());
            let location = if signin.contains("rd=") {
                signin
            } else {
                let sep = if signin.contains('?') { '&' } else { '?' };
                format!("{signin}{sep}rd={}", escape(&original.url()))
            };
            *deny.status_mut() = StatusCode::FOUND;
            deny.headers_mut()
                .insert(header::LOCATION, value(&location)?);
        }
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            *deny.status_mut() = status;
            for v in parts.headers.get_all(header::WWW_AUTHENTICATE) {
                deny.headers_mut()
                    .append(header::WWW_AUTHENTICATE, v.clone());
            }
        }
        other => return Err(failed(format!("auth service answered {other}"))),
    }
    Ok(Verdict::Deny(deny))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_variables_are_expanded() {
        let o = Original {
            scheme: "https",
            host: "Shop.example:8443".into(),
            request_uri: "/cart?item=a b&x=1".into(),
            method: Method::POST,
        };
        assert_eq!(
            o.expand("http://auth.svc/check?h=$host&u=$escaped_request_uri&s=$scheme"),
            "http://auth.svc/check?h=shop.example&u=/cart%3Fitem%3Da%20b%26x%3D1&s=https"
        );
        assert_eq!(o.url(), "https://Shop.example:8443/cart?item=a b&x=1");
        assert!(valid_template("http://oauth2-proxy.auth:4180/oauth2/auth"));
        assert!(valid_template("http://$host/oauth2/auth"));
        assert!(valid_template("https://$host/oauth2/auth"));
        assert!(!valid_template("ftp://auth.example/"));
        assert!(!valid_template("http://bad host/"));
    }
}
