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
//!
//! With `auth-cache-key`, answers are kept ([`AuthCache`]) under the route's auth settings
//! and the key expanded for the request, for the time `auth-cache-duration` gives their
//! status (ingress-nginx's `proxy_cache_valid` in its auth location).
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

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
use crate::source::annotations::HashKey;

/// A client for requests to URLs (auth services, mirror targets): hyper-util's pooled
/// client (such URLs are names to resolve and few in number, unlike upstream pods), over
/// TLS by hyper-rustls for `https://` URLs.
pub type UrlClient<B> = Client<HttpsConnector<HttpConnector>, B>;

/// The client for auth requests, which carry no body.
pub type AuthClient = UrlClient<Empty<Bytes>>;

pub fn client<B>() -> UrlClient<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
{
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
    /// `auth-cache-key` with `auth-cache-duration`: answers kept for a while.
    pub cache: Option<CachePolicy>,
    /// `auth-proxy-set-headers`: the ConfigMap (namespace, else the Ingress's; name)
    /// of headers set on the auth request (resolved by the build: [`AuthHeaders`]).
    pub proxy_set_headers: Option<(Option<String>, String)>,
}

/// `auth-proxy-set-headers` resolved: header names and value templates (nginx variables
/// as in the URL).
pub type AuthHeaders = [(HeaderName, String)];

/// Which auth answers are kept, under which key, for how long (nginx's `proxy_cache_key`
/// and `proxy_cache_valid` in ingress-nginx's auth location).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachePolicy {
    /// Expanded per request (`$http_authorization`, `$cookie_NAME`, ...).
    pub key: HashKey,
    /// (statuses, how long); no statuses: any status (nginx's `any`).
    pub valid: Vec<(Vec<u16>, Duration)>,
}

impl CachePolicy {
    /// ingress-nginx's default `auth-cache-duration`.
    pub const DEFAULT_VALID: &str = "200 202 401 5m";

    /// `auth-cache-duration`: comma-separated entries of status codes (or `any`) and a
    /// time, as nginx's `proxy_cache_valid`: `200 202 10m, 401 30s`. A time alone means
    /// 200, 301 and 302, as in nginx.
    pub fn parse_valid(v: &str) -> Result<Vec<(Vec<u16>, Duration)>, String> {
        v.split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|entry| {
                let mut words: Vec<&str> = entry.split_whitespace().collect();
                let time = words
                    .pop()
                    .ok_or_else(|| format!("{entry:?} has no time"))?;
                let ttl = nginx_time(time)
                    .ok_or_else(|| format!("{time:?} is not a time (like 30s, 5m, 1h)"))?;
                let statuses = match words.as_slice() {
                    [] => vec![200, 301, 302],
                    ["any"] => Vec::new(),
                    codes => codes
                        .iter()
                        .map(|c| {
                            c.parse::<u16>()
                                .ok()
                                .filter(|c| (100..600).contains(c))
                                .ok_or_else(|| format!("{c:?} is not a status code or any"))
                        })
                        .collect::<Result<_, _>>()?,
                };
                Ok((statuses, ttl))
            })
            .collect::<Result<Vec<_>, String>>()
            .and_then(|v| {
                (!v.is_empty())
                    .then_some(v)
                    .ok_or_else(|| "no entry".to_owned())
            })
    }

    /// How long an answer with `status` is kept, if at all: the first entry naming it,
    /// else an `any` entry.
    fn lifetime(&self, status: u16) -> Option<Duration> {
        (self.valid.iter().find(|(codes, _)| codes.contains(&status)))
            .or_else(|| self.valid.iter().find(|(codes, _)| codes.is_empty()))
            .map(|(_, ttl)| *ttl)
    }
}

/// An nginx time: `30s`, `5m`, `1h`, `1d` (or `500ms`, or bare seconds).
fn nginx_time(v: &str) -> Option<Duration> {
    let scaled = |d: &str, secs: u64| {
        (!d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            .then(|| d.parse::<u64>().ok())
            .flatten()
            .filter(|n| *n > 0)
            .map(|n| Duration::from_secs(n.saturating_mul(secs)))
    };
    if let Some(d) = v.strip_suffix('h') {
        scaled(d, 3600)
    } else if let Some(d) = v.strip_suffix('d') {
        scaled(d, 86_400)
    } else {
        crate::source::annotations::parse_duration(v)
    }
}

/// Auth answers kept for routes with `auth-cache-key`, shared by the serving threads:
/// the status and the headers a verdict needs, by route settings and expanded key.
#[derive(Debug, Default)]
pub struct AuthCache {
    entries: Mutex<HashMap<Vec<u8>, Cached>>,
}

#[derive(Debug, Clone)]
struct Cached {
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    until: Instant,
}

/// Entries kept at most; past it the expired go, and if none had, all.
const MAX_CACHED: usize = 10_000;

impl AuthCache {
    fn get(&self, key: &[u8], now: Instant) -> Option<Cached> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.get(key).filter(|c| c.until > now).cloned()
    }

    fn put(&self, key: Vec<u8>, entry: Cached) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= MAX_CACHED {
            let now = Instant::now();
            entries.retain(|_, c| c.until > now);
            if entries.len() >= MAX_CACHED {
                entries.clear();
            }
        }
        entries.insert(key, entry);
    }
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
    /// `auth-cache-key` expanded for this request, when the route caches auth answers.
    pub cache_key: Option<Vec<u8>>,
}

impl Original {
    /// `template` with nginx's variables replaced.
    fn expand(&self, template: &str) -> String {
        expand(template, self.scheme, &self.host, &self.request_uri)
    }

    fn url(&self) -> String {
        format!("{}://{}{}", self.scheme, self.host, self.request_uri)
    }
}

/// A URL `template` with nginx's `$escaped_request_uri`, `$request_uri`, `$host` and
/// `$scheme` replaced for a request to `host` (as sent, with any port) for `request_uri`.
pub fn expand(template: &str, scheme: &str, host: &str, request_uri: &str) -> String {
    let host_name = crate::routes::request_host(host);
    template
        .replace("$escaped_request_uri", &escape(request_uri))
        .replace("$request_uri", request_uri)
        .replace("$host", &host_name)
        .replace("$scheme", scheme)
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
        cache_key: None,
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

/// The key an answer is kept under: the route's auth settings (the same key may mean
/// another answer elsewhere) and the request's expanded `auth-cache-key`.
fn cache_key(auth: &ExternalAuth, expanded: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(auth.url.len() + expanded.len() + 64);
    key.extend_from_slice(auth.url.as_bytes());
    key.push(0);
    key.extend_from_slice(auth.method.as_str().as_bytes());
    for name in &auth.response_headers {
        key.push(0);
        key.extend_from_slice(name.as_str().as_bytes());
    }
    if let Some((ns, name)) = &auth.proxy_set_headers {
        key.push(0);
        key.extend_from_slice(ns.as_deref().unwrap_or_default().as_bytes());
        key.push(b'/');
        key.extend_from_slice(name.as_bytes());
    }
    key.push(0);
    key.extend_from_slice(expanded);
    key
}

/// Asks the auth service about a request with `headers` (the ones going upstream), or
/// answers from `cache` when the route keeps answers and one is there.
pub async fn check(
    client: &AuthClient,
    cache: &AuthCache,
    auth: &ExternalAuth,
    extra: &AuthHeaders,
    original: &Original,
    headers: &HeaderMap,
    timeout: std::time::Duration,
) -> Result<Verdict, ProxyError> {
    let key = (auth.cache.as_ref())
        .zip(original.cache_key.as_deref())
        .map(|(policy, expanded)| (policy, cache_key(auth, expanded)));
    if let Some((_, key)) = &key
        && let Some(hit) = cache.get(key, Instant::now())
    {
        return verdict(auth, original, hit.status, hit.headers);
    }
    let (status, answer) = ask(client, auth, extra, original, headers, timeout).await?;
    // What a verdict reads of the answer: the headers to copy upstream, or the
    // challenge to pass back.
    let kept: Vec<(HeaderName, HeaderValue)> = if status.is_success() {
        (auth.response_headers.iter())
            .filter_map(|name| answer.get(name).map(|v| (name.clone(), v.clone())))
            .collect()
    } else {
        (answer.get_all(header::WWW_AUTHENTICATE).iter())
            .map(|v| (header::WWW_AUTHENTICATE, v.clone()))
            .collect()
    };
    if let Some((policy, key)) = key
        && let Some(ttl) = policy.lifetime(status.as_u16())
    {
        let entry = Cached {
            status,
            headers: kept.clone(),
            until: Instant::now() + ttl,
        };
        cache.put(key, entry);
    }
    verdict(auth, original, status, kept)
}

/// Sends the auth request: the answer's status and headers.
async fn ask(
    client: &AuthClient,
    auth: &ExternalAuth,
    extra: &AuthHeaders,
    original: &Original,
    headers: &HeaderMap,
    timeout: std::time::Duration,
) -> Result<(StatusCode, HeaderMap), ProxyError> {
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
    for (name, template) in extra {
        h.insert(name.clone(), value(&original.expand(template))?);
    }
    *req.uri_mut() = url;
    let resp = match tokio::time::timeout(timeout, client.request(req)).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => return Err(failed(format!("auth request: {e}"))),
        Err(_) => return Err(failed("auth service did not answer in time".into())),
    };
    let (parts, _body) = resp.into_parts();
    Ok((parts.status, parts.headers))
}

/// The verdict on an auth answer with `status` (and the headers [`check`] kept of it).
fn verdict(
    auth: &ExternalAuth,
    original: &Original,
    status: StatusCode,
    kept: Vec<(HeaderName, HeaderValue)>,
) -> Result<Verdict, ProxyError> {
    let failed = |reason: String| ProxyError::Auth { reason };
    if status.is_success() {
        return Ok(Verdict::Allow(kept));
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
            let location = HeaderValue::try_from(location).map_err(|e| failed(e.to_string()))?;
            deny.headers_mut().insert(header::LOCATION, location);
        }
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            *deny.status_mut() = status;
            for (name, v) in kept {
                deny.headers_mut().append(name, v);
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
    fn cache_durations_read_as_nginx_proxy_cache_valid() {
        let p = |v: &str| CachePolicy {
            key: HashKey::parse("$http_authorization").unwrap(),
            valid: CachePolicy::parse_valid(v).unwrap(),
        };
        let default = p(CachePolicy::DEFAULT_VALID);
        assert_eq!(default.lifetime(200), Some(Duration::from_mins(5)));
        assert_eq!(default.lifetime(401), Some(Duration::from_mins(5)));
        assert_eq!(default.lifetime(403), None);
        let mixed = p("200 202 1h, 401 30s, any 1m");
        assert_eq!(mixed.lifetime(202), Some(Duration::from_hours(1)));
        assert_eq!(mixed.lifetime(401), Some(Duration::from_secs(30)));
        assert_eq!(mixed.lifetime(500), Some(Duration::from_mins(1)));
        // A time alone: 200, 301 and 302, as nginx.
        let bare = p("10m");
        assert_eq!(bare.lifetime(301), Some(Duration::from_mins(10)));
        assert_eq!(bare.lifetime(401), None);
        assert_eq!(
            CachePolicy::parse_valid("1d").unwrap()[0].1,
            Duration::from_hours(24)
        );
        for bad in ["", "200 five", "600 5m", "200 0s", "any"] {
            assert!(CachePolicy::parse_valid(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn nginx_variables_are_expanded() {
        let o = Original {
            scheme: "https",
            host: "Shop.example:8443".into(),
            request_uri: "/cart?item=a b&x=1".into(),
            method: Method::POST,
            cache_key: None,
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
