//! Per-Ingress settings from annotations.
//!
//! Each setting is read under our prefix, `ingress.lb.dev/`, and under ingress-nginx's,
//! `nginx.ingress.kubernetes.io/`, so that an Ingress written for ingress-nginx keeps
//! its meaning when it moves to this class; when both are set, ours wins. A setting
//! applies to every rule of its Ingress, and its `defaultBackend`.
//!
//! | annotation | value | effect |
//! | --- | --- | --- |
//! | `ssl-redirect` | bool | 308 to https for plain-HTTP requests to a host that has a certificate (default: `--redirect-https`) |
//! | `force-ssl-redirect` | bool | the same, whether or not the host has a certificate (TLS ended before this proxy) |
//! | `proxy-body-size` | nginx size: `512`, `8k`, `10m`, `1g`; `0` unlimited | request body limit, 413 above it (default: `--max-body-bytes`) |
//! | `proxy-connect-timeout` | seconds, or with a unit: `500ms`, `5s`, `1m` | upstream connect timeout (default: `--connect-timeout-ms`) |
//! | `proxy-read-timeout` | as above | time the upstream has to send a response head once the request has gone, then 504 (default: `--upstream-timeout-ms`); also how long an upgraded tunnel may sit idle |
//! | `proxy-send-timeout` | as above | longest stretch without progress while the request body goes upstream: the upstream not taking it 504, the client not sending it 408 (default: `--upstream-send-timeout-ms`) |
//! | `allowlist-source-range` (or `whitelist-source-range`) | comma-separated CIDRs or addresses | other clients get 403 |
//! | `denylist-source-range` | comma-separated CIDRs or addresses | these clients get 403 (even when the allowlist has them) |
//! | `satisfy` | `all`, `any` | `any`: the source ranges, `auth-type: basic` and `auth-url` each suffice (nginx's `satisfy any`): an admitted address is asked for no credentials, and another is served if either auth check lets it through; refused by all, it gets 401 if a check asked for credentials, else 403 (default: `all`, every one of them must let the request through) |
//! | `backend-protocol` | `HTTP`, `AUTO_HTTP`, `HTTPS`, `GRPC`, `GRPCS`, `H2C` | HTTP/1.1 or HTTP/2 with prior knowledge, over TLS for `HTTPS` and `GRPCS` (default: the Service port's `appProtocol`) |
//! | `app-root` | a path | a request for `/` gets 302 to it |
//! | `affinity` | `cookie` | session affinity: a client that carries the cookie goes back to the endpoint that served it, while that endpoint is ready and not ejected; otherwise it gets a new one and a new cookie |
//! | `session-cookie-name`, `-path`, `-max-age`, `-expires`, `-domain`, `-samesite`, `-secure`, `-change-on-failure` | cookie attributes | defaults: `INGRESSCOOKIE`, the rule's path, a session cookie, no domain, none (`HttpOnly` always; `Secure` over https or when `-secure`); a client whose endpoint failed gets a cookie for the one that answered unless `-change-on-failure` is false |
//! | `limit-rps`, `limit-rpm` | requests per second / minute | per client address; a burst of `limit-burst-multiplier` (5) times that; 429 with `Retry-After` above it |
//! | `limit-allowlist` (or `limit-whitelist`) | CIDRs or addresses | clients not rate limited |
//! | `limit-connections` | number | requests in flight per client, at most; 429 above it |
//! | `enable-cors` | bool | CORS: preflights answered 204 here, the `Access-Control-Allow-*` headers set on responses |
//! | `cors-allow-origin`, `-methods`, `-headers`, `-expose-headers`, `-credentials`, `-max-age` | as in ingress-nginx | the CORS answer (defaults: ingress-nginx's) |
//! | `canary` | bool | this Ingress's rules are the canaries of a main Ingress's rules with the same host and path, not routes of their own |
//! | `canary-by-header`, `-by-header-value`, `-by-header-pattern`, `-by-cookie`, `-weight`, `-weight-total` | as in ingress-nginx | which requests go to the canary: header, then cookie, then weight |
//! | `auth-url` (`http://` or `https://`, the certificate not verified, as ingress-nginx), `auth-method`, `auth-signin`, `auth-response-headers`, `auth-cache-key`, `auth-cache-duration` | as in ingress-nginx | external authentication before the upstream ([`crate::proxy::auth`]); answers kept per expanded cache key for the duration's statuses |
//! | `auth-type: basic`, `auth-secret` (`name` or `namespace/name`), `auth-realm`, `auth-secret-type` (`auth-file`, `auth-map`) | | HTTP basic authentication against the htpasswd file under the Secret's `auth` key, or (`auth-map`) the Secret's keys as users and values as their hashes ([`crate::proxy::basic`]); 401 with `WWW-Authenticate` otherwise |
//! | `auth-tls-secret` (`name` or `namespace/name`: its `ca.crt`, and `ca.crl` if present), `auth-tls-verify-client` (`on`, `optional`, `optional_no_ca`, `off`), `auth-tls-verify-depth` (1), `auth-tls-error-page`, `auth-tls-pass-certificate-to-upstream`, `auth-tls-match-cn` (`CN=<regex>`) | as in ingress-nginx | client certificates ([`crate::tls::client_auth`]): asked for in the handshakes of the Ingress's hosts; a request without one the CA vouches for gets 400 (or 302 to the error page), one whose CN does not match 403; the upstream gets `ssl-client-verify`, `ssl-client-subject-dn`, `ssl-client-issuer-dn` (and `ssl-client-cert`), never the client's own |
//! | `ssl-passthrough` | bool | TLS connections for the Ingress's hosts go to the backend of their `/` rule unopened ([`crate::tls::passthrough`]): the backend does the handshake; no other setting applies to them |
//! | `upstream-hash-by` | nginx variables and text: `$request_uri`, `$uri`, `$args`, `$remote_addr`, `$host`, `$http_NAME`, `$cookie_NAME`, `$arg_NAME` | requests with the same key go to the same endpoint (rendezvous hashing; [`crate::proxy::balance::Pool::pick_hashed`]); cookie affinity wins over it |
//! | `upstream-hash-by-subset`, `upstream-hash-by-subset-size` | bool; a number (3) | with `upstream-hash-by`: the key picks a set of that many endpoints (consecutive in address order), and each request goes to one of the set at random ([`crate::proxy::balance::Pool::pick_hashed`]) |
//! | `limit-rate`, `limit-rate-after` | kilobytes (1024 bytes) a second; kilobytes | each response's bytes beyond the first `limit-rate-after` KB leave at most `limit-rate` KB a second (nginx's `limit_rate`, per request; `0`: no limit) |
//! | `load-balance` | `round_robin`, `ewma` | how an endpoint is picked ([`crate::proxy::balance::Balance`]): each in turn, or power of two choices over peak EWMA latency x (requests in flight + 1); without it, power of two choices over requests in flight |
//! | `default-backend` | a Service of the Ingress's namespace | requests to a rule whose Service has no ready endpoint go to it (its first port) instead of getting 503 |
//! | `custom-http-errors` | status codes, comma-separated | with `default-backend`: an upstream answer with one of them is replaced by the default backend's answer to `GET /` with `X-Code`, `X-Format`, `X-Original-URI`, `X-Namespace`, `X-Ingress-Name`, `X-Service-Name`, `X-Service-Port`, `X-Request-ID` (ingress-nginx's custom error pages) |
//! | `permanent-redirect` (`-code`, 301), `temporal-redirect` (302) | absolute URL | every request of the rules answered with that redirect; temporal wins |
//! | `upstream-vhost` | a host | the `Host` sent upstream (`X-Forwarded-Host` keeps the client's) |
//! | `proxy-next-upstream` | nginx's tokens: `error`, `timeout`, `invalid_header`, `http_500`, `http_502`, `http_503`, `http_504`, `http_403`, `http_404`, `http_429`, `non_idempotent`, `off` | when a request goes on to another endpoint ([`NextUpstream`]; default: `error`) |
//! | `proxy-next-upstream-tries` | number; `0` no limit | attempts per request, at most (default: `--max-retries` + 1) |
//! | `enable-access-log` | bool | `false`: no access-log lines for these rules |
//! | `proxy-ssl-secret` (`namespace/name`), `proxy-ssl-verify`, `proxy-ssl-name`, `proxy-ssl-server-name` | | TLS upstreams shown the Secret's `tls.crt`/`tls.key` when they ask for a client certificate; with `proxy-ssl-verify: on`, verified against its `ca.crt` for that name (default: `service.namespace.svc`), sent as SNI when `on` |
//! | `server-alias` | host names, comma-separated | the Ingress's rules for its named hosts serve these hosts too |
//! | `service-upstream` | bool | proxy to the Service's ClusterIP (the kernel balances) instead of its endpoints |
//! | `proxy-redirect-from`, `proxy-redirect-to` | text | in upstream responses' `Location` and `Refresh` headers, a leading `from` is replaced by `to` (nginx's `proxy_redirect from to`) |
//! | `proxy-cookie-path`, `proxy-cookie-domain` | `from to` | in upstream `Set-Cookie` headers, a `Path` starting with `from` gets `to` instead of that start, a `Domain` equal to `from` becomes `to` (nginx's `proxy_cookie_path` / `proxy_cookie_domain`) |
//! | `x-forwarded-prefix` | a path | sent upstream as `X-Forwarded-Prefix` |
//! | `from-to-www-redirect` | bool | a request for `www.` + a host of the Ingress (or that host without `www.`) gets 308 to it, unless some Ingress has rules for that name |
//! | `use-regex` | bool | the paths of every Ingress on this Ingress's hosts are case-insensitive regular expressions (RE2 syntax) matched at the start of the path, longest expression first ([`crate::routes::PathRule::regex`]) |
//! | `rewrite-target` | a path with captures: `/$2` | the upstream path becomes it, `$1`.. replaced by the rule path's groups ([`crate::routes::rewrite`]); implies `use-regex` for the host |
//! | `mirror-target` (`http://` or `https://`, nginx variables as in `auth-url`), `mirror-request-body` (`on`, `off`), `mirror-host` | as in ingress-nginx | a copy of each request (after the access checks) goes to the target too, its answer ignored, in the background: the client's request never waits for it ([`crate::proxy::mirror`]) |
//! | `custom-headers` | a ConfigMap (`name` or `namespace/name`) | its entries are set as headers on the rules' responses (nginx's `more_set_headers`); entries that are not a header name and value are reported and skipped, a missing ConfigMap is reported |
//! | `auth-proxy-set-headers` (with `auth-url`) | a ConfigMap (`name` or `namespace/name`) | its entries are set on the auth request, values with the variables of `auth-url`; a missing ConfigMap fails the rules closed (503) |
//! | `rewrite-prefix` (ours only) | a path | the matched rule path is replaced by it upstream (Gateway API's `ReplacePrefixMatch`); `X-Forwarded-Prefix` names what was replaced |
//!
//! A bad value is a problem reported against its Ingress (named, with the reason). For
//! the settings that guard access or decide what reaches the upstream
//! (`allowlist-source-range`, `denylist-source-range`, `auth-url`, `auth-type`,
//! `auth-secret`, `auth-tls-secret`, `backend-protocol`, `rewrite-prefix`,
//! `rewrite-target`), the
//! Ingress's rules are then answered 503 instead of being served without them: failing
//! closed, as ingress-nginx denies a location whose annotations did not parse. Other bad
//! values fall back to the default.
//! Annotations under either prefix that are not in the table are reported as ignored:
//! in particular the snippet annotations, which in ingress-nginx run arbitrary proxy
//! configuration and are never honoured here.
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use crate::proxy::auth::{CachePolicy, ExternalAuth, valid_template};
use crate::proxy::balance::Balance;
use crate::proxy::body::ResponseRate;
use crate::proxy::ratelimit::Rate;
use crate::proxy::upstream::UpstreamProtocol;
use crate::routes::RewriteTarget;
use crate::template::Token;

/// Our annotation prefix.
pub const PREFIX: &str = "ingress.lb.dev/";
/// ingress-nginx's, read for compatibility.
pub const NGINX_PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// What an Ingress's annotations set; `None` leaves the proxy's default.
// One field per annotation: the switches are independent settings, not a state.
#[allow(clippy::struct_excessive_bools)]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteOptions {
    pub ssl_redirect: Option<bool>,
    pub force_ssl_redirect: bool,
    /// `Some(u64::MAX)` for no limit.
    pub max_body_bytes: Option<u64>,
    pub connect_timeout: Option<Duration>,
    pub response_timeout: Option<Duration>,
    /// `proxy-send-timeout`.
    pub send_timeout: Option<Duration>,
    /// Clients allowed (by the address [`crate::proxy::headers::client_addr`] gives).
    pub allow_sources: Option<Vec<IpNet>>,
    /// Clients refused (`denylist-source-range`), before the allowlist is asked.
    pub deny_sources: Option<Vec<IpNet>>,
    pub protocol: Option<UpstreamProtocol>,
    pub app_root: Option<String>,
    pub rewrite_prefix: Option<String>,
    /// `use-regex`.
    pub use_regex: bool,
    /// `rewrite-target`.
    pub rewrite_target: Option<RewriteTarget>,
    /// `permanent-redirect` / `temporal-redirect`: every request answered so.
    pub redirect: Option<(hyper::StatusCode, String)>,
    /// `upstream-vhost`: the `Host` sent upstream.
    pub upstream_host: Option<hyper::header::HeaderValue>,
    /// Retries per request at most (`proxy-next-upstream-tries` less one).
    pub max_retries: Option<u32>,
    /// `proxy-next-upstream`: what makes a request go on to another endpoint.
    pub next_upstream: Option<NextUpstream>,
    /// `enable-access-log: "false"`.
    pub access_log: Option<bool>,
    /// `server-alias`: more hosts for the Ingress's named hosts' rules.
    pub server_alias: Vec<String>,
    /// `service-upstream`: the ClusterIP instead of the endpoints.
    pub service_upstream: bool,
    /// `satisfy: any`: the source ranges, basic auth and external auth each suffice.
    pub satisfy_any: bool,
    /// `proxy-redirect-from` / `proxy-redirect-to`: a prefix of upstream redirects and
    /// what replaces it.
    pub redirect_rewrite: Option<(String, String)>,
    /// `proxy-cookie-path`: (from, to).
    pub cookie_path: Option<(String, String)>,
    /// `proxy-cookie-domain`: (from, to).
    pub cookie_domain: Option<(String, String)>,
    /// `x-forwarded-prefix`.
    pub forwarded_prefix: Option<hyper::header::HeaderValue>,
    /// `from-to-www-redirect`.
    pub www_redirect: bool,
    /// Per-client request rate (`limit-rps`, `limit-rpm`, `limit-burst-multiplier`).
    pub rate: Option<Rate>,
    /// Clients the rate limit does not apply to.
    pub limit_exempt: Vec<IpNet>,
    /// `limit-connections`: requests in flight per client.
    pub max_in_flight: Option<u32>,
    /// `canary: "true"`: when requests go to this Ingress's backends instead of the main
    /// Ingress's.
    pub canary: Option<CanaryPolicy>,
    /// `auth-url` and its companions.
    pub auth: Option<ExternalAuth>,
    /// `auth-type: basic` and its companions.
    pub basic_auth: Option<BasicAuthSpec>,
    /// `ssl-passthrough`: TLS for the Ingress's hosts relayed to the `/` backend
    /// unopened.
    pub ssl_passthrough: bool,
    /// `auth-tls-secret` and its companions: client certificates.
    pub client_cert: Option<ClientCertSpec>,
    /// `proxy-ssl-secret` and its companions: TLS upstreams verified against a CA, shown
    /// a client certificate.
    pub proxy_ssl: Option<ProxySsl>,
    /// `enable-cors`, with its settings.
    pub cors: Option<Cors>,
    /// `default-backend`: the Service (of the Ingress's namespace) that takes requests
    /// when a rule's own has no ready endpoint.
    pub default_backend: Option<String>,
    /// `custom-http-errors` (only with `default_backend`).
    pub custom_errors: Vec<u16>,
    /// `upstream-hash-by`: the key that picks the endpoint.
    pub hash_by: Option<HashKey>,
    /// `upstream-hash-by-subset` (with `upstream-hash-by`): the key picks a set of this
    /// many endpoints (`upstream-hash-by-subset-size`, 3), one of which takes the request.
    pub hash_subset: Option<u32>,
    /// `load-balance`: how an endpoint is picked otherwise.
    pub load_balance: Balance,
    /// `limit-rate` / `limit-rate-after`: the pace of each response's body.
    pub limit_rate: Option<ResponseRate>,
    /// `affinity: cookie`, with the cookie's attributes.
    pub affinity: Option<CookieAffinity>,
    /// `mirror-target` and its companions: a copy of each request sent elsewhere.
    pub mirror: Option<Mirror>,
    /// `custom-headers`: the ConfigMap (namespace, else the Ingress's; name) whose
    /// entries are set on responses.
    pub custom_headers: Option<(Option<String>, String)>,
    /// Why the rules of this Ingress are answered 503 (a setting it asks for could not
    /// be honoured).
    pub deny: Option<String>,
}

/// `upstream-hash-by`: a request key made of nginx variables and text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashKey(Vec<KeyPart>);

#[derive(Clone, Debug, PartialEq, Eq)]
enum KeyPart {
    Text(String),
    /// `$request_uri`: path and query as sent.
    RequestUri,
    /// `$uri`: the normalized path (the one routes match).
    Uri,
    /// `$args`, `$query_string`.
    Args,
    /// `$remote_addr`, `$binary_remote_addr`: the client (through trusted proxies).
    RemoteAddr,
    /// `$remote_user`: the user of a `Basic` `Authorization` header.
    RemoteUser,
    /// `$host`: the request's host name, lowercase, without port.
    Host,
    /// `$http_NAME`: a request header (`_` read as `-`).
    Header(hyper::header::HeaderName),
    /// `$cookie_NAME`.
    Cookie(String),
    /// `$arg_NAME`: a query parameter, as sent.
    Arg(String),
}

/// What a [`HashKey`] reads of a request.
pub struct KeyInput<'a> {
    pub uri: &'a hyper::Uri,
    pub headers: &'a hyper::HeaderMap,
    /// Normalized path.
    pub path: &'a str,
    pub host: &'a str,
    /// Only needed when [`HashKey::needs_client`].
    pub client: Option<IpAddr>,
}

impl HashKey {
    pub fn parse(value: &str) -> Result<HashKey, String> {
        let parts: Vec<KeyPart> = crate::template::tokens(value)?
            .into_iter()
            .map(|token| {
                let name = match token {
                    Token::Text(text) => return Ok(KeyPart::Text(text.to_owned())),
                    Token::Var(name) => name,
                };
                Ok(match name {
                    "request_uri" => KeyPart::RequestUri,
                    "uri" | "document_uri" => KeyPart::Uri,
                    "args" | "query_string" => KeyPart::Args,
                    "remote_addr" | "binary_remote_addr" => KeyPart::RemoteAddr,
                    "remote_user" => KeyPart::RemoteUser,
                    "host" => KeyPart::Host,
                    n if n.starts_with("http_") && n.len() > 5 => {
                        header_name(&n[5..].replace('_', "-")).map(KeyPart::Header)?
                    }
                    n if n.starts_with("cookie_") && n.len() > 7 => {
                        KeyPart::Cookie(n[7..].to_owned())
                    }
                    n if n.starts_with("arg_") && n.len() > 4 => KeyPart::Arg(n[4..].to_owned()),
                    n => {
                        return Err(format!(
                            "${n} is not a variable lb-ingress reads in a key (request_uri, \
                             uri, args, remote_addr, remote_user, host, http_NAME, cookie_NAME, \
                             arg_NAME)"
                        ));
                    }
                })
            })
            .collect::<Result<_, String>>()?;
        if parts.iter().all(|p| matches!(p, KeyPart::Text(_))) {
            return Err(format!(
                "{value:?} names no variable: every request would have one key"
            ));
        }
        Ok(HashKey(parts))
    }

    /// Does the key read the client's address?
    pub fn needs_client(&self) -> bool {
        self.0.contains(&KeyPart::RemoteAddr)
    }

    /// FNV-1a (64 bits) of the key expanded for a request: the same in every replica.
    pub fn hash(&self, input: &KeyInput<'_>) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        self.each(input, |bytes| {
            for &b in bytes {
                h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
            }
        });
        h
    }

    /// The key expanded for a request, whole (where a hash's collisions would matter:
    /// `auth-cache-key`).
    pub fn expand(&self, input: &KeyInput<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        self.each(input, |bytes| out.extend_from_slice(bytes));
        out
    }

    /// Feeds the key's pieces for a request, in order.
    fn each(&self, input: &KeyInput<'_>, mut feed: impl FnMut(&[u8])) {
        for part in &self.0 {
            match part {
                KeyPart::Text(t) => feed(t.as_bytes()),
                KeyPart::RequestUri => {
                    feed(
                        input
                            .uri
                            .path_and_query()
                            .map_or(b"/", |pq| pq.as_str().as_bytes()),
                    );
                }
                KeyPart::Uri => feed(input.path.as_bytes()),
                KeyPart::Args => feed(input.uri.query().unwrap_or_default().as_bytes()),
                KeyPart::RemoteAddr => {
                    if let Some(ip) = input.client {
                        feed(ip.to_string().as_bytes());
                    }
                }
                KeyPart::RemoteUser => {
                    let authorization = input.headers.get(hyper::header::AUTHORIZATION);
                    if let Some(user) = authorization.and_then(crate::proxy::basic::user) {
                        feed(user.as_bytes());
                    }
                }
                KeyPart::Host => feed(input.host.as_bytes()),
                KeyPart::Header(name) => {
                    if let Some(v) = input.headers.get(name) {
                        feed(v.as_bytes());
                    }
                }
                KeyPart::Cookie(name) => {
                    if let Some(v) = crate::proxy::headers::cookie(input.headers, name) {
                        feed(v.as_bytes());
                    }
                }
                KeyPart::Arg(name) => {
                    let value = (input.uri.query().unwrap_or_default().split('&'))
                        .find_map(|kv| kv.strip_prefix(name.as_str())?.strip_prefix('='));
                    feed(value.unwrap_or_default().as_bytes());
                }
            }
        }
    }
}

/// `proxy-next-upstream` (nginx's `proxy_next_upstream`): when a request goes on to
/// another endpoint. Whatever it says, a request whose body has started going up is
/// never sent again (bodies are streamed, not kept), and the retry budget and
/// `proxy-next-upstream-tries` still bound retries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NextUpstream {
    /// `error` (and `invalid_header`): the connection failed or the exchange broke
    /// before a response head.
    pub error: bool,
    /// `timeout`: no connection, or no response head, in time.
    pub timeout: bool,
    /// `http_NNN`: a response head with one of these statuses.
    pub statuses: Vec<u16>,
    /// `non_idempotent`: POST, PATCH and the like may go on too (after a connect failure
    /// they always may: nothing reached the upstream).
    pub non_idempotent: bool,
}

impl NextUpstream {
    /// Without the annotation: connection failures, and broken exchanges of idempotent
    /// requests.
    pub const DEFAULT: NextUpstream = NextUpstream {
        error: true,
        timeout: false,
        statuses: Vec::new(),
        non_idempotent: false,
    };
    const NOTHING: NextUpstream = NextUpstream {
        error: false,
        timeout: false,
        statuses: Vec::new(),
        non_idempotent: false,
    };

    pub fn parse(value: &str) -> Result<NextUpstream, String> {
        if value.trim().is_empty() {
            return Err("no condition given".to_owned());
        }
        let mut next = NextUpstream::NOTHING;
        let mut off = false;
        for token in value.split_whitespace() {
            match token {
                "error" | "invalid_header" => next.error = true,
                "timeout" => next.timeout = true,
                "non_idempotent" => next.non_idempotent = true,
                "off" => off = true,
                t => {
                    let code = t
                        .strip_prefix("http_")
                        .and_then(|c| c.parse::<u16>().ok())
                        .filter(|c| [500, 502, 503, 504, 403, 404, 429].contains(c))
                        .ok_or_else(|| {
                            format!("{t:?} is not one of nginx's proxy_next_upstream conditions")
                        })?;
                    next.statuses.push(code);
                }
            }
        }
        Ok(if off { NextUpstream::NOTHING } else { next })
    }
}

/// `auth-type: basic`: where the htpasswd file is, and the realm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BasicAuthSpec {
    /// The Secret's namespace when `auth-secret` names one; else the Ingress's.
    pub namespace: Option<String>,
    pub name: String,
    pub realm: String,
    /// `auth-secret-type: auth-map`: the Secret's keys are the users, its values their
    /// hashes (else `auth-file`: an htpasswd file under the key `auth`).
    pub map: bool,
}

/// `auth-tls-verify-client`: what a request needs of the client's certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifyClient {
    /// A certificate the CA vouches for (nginx's `ssl_verify_client on`).
    On,
    /// None, or one the CA vouches for.
    Optional,
    /// Any or none: asked for and passed on, not verified.
    OptionalNoCa,
}

/// `auth-tls-*`: where the CA is and what a request needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCertSpec {
    /// The Secret's namespace when `auth-tls-secret` names one; else the Ingress's.
    pub namespace: Option<String>,
    pub name: String,
    pub verify: VerifyClient,
    /// `auth-tls-verify-depth`: certificates in the client's chain, at most (1: the
    /// client's own, issued by the CA itself).
    pub depth: u8,
    /// `auth-tls-error-page`: where a refused request is redirected (302) instead of
    /// getting 400.
    pub error_page: Option<String>,
    /// `auth-tls-pass-certificate-to-upstream`: the PEM, URL-encoded, as `ssl-client-cert`.
    pub pass_certificate: bool,
    /// `auth-tls-match-cn: CN=<regex>`: the subject's common name must match (else 403).
    pub match_cn: Option<HeaderPattern>,
}

/// Which requests a canary takes, in ingress-nginx's order: the header (`always`,
/// `never`, the configured value, or a value the configured pattern finds a match in),
/// then the cookie (`always`, `never`), then the weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanaryPolicy {
    pub header: Option<hyper::header::HeaderName>,
    pub header_value: Option<String>,
    /// `canary-by-header-pattern` (ignored when a value is set).
    pub header_pattern: Option<HeaderPattern>,
    pub cookie: Option<String>,
    pub weight: u32,
    pub weight_total: u32,
}

/// A regular expression a header value is searched with (unanchored, case-sensitive, as
/// `ngx.re.match`); equal when written the same.
#[derive(Clone, Debug)]
pub struct HeaderPattern(pub regex::Regex);

impl PartialEq for HeaderPattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for HeaderPattern {}

impl Default for CanaryPolicy {
    fn default() -> Self {
        CanaryPolicy {
            header: None,
            header_value: None,
            header_pattern: None,
            cookie: None,
            weight: 0,
            weight_total: 100,
        }
    }
}

impl CanaryPolicy {
    /// Whether a request with `headers` goes to the canary.
    pub fn selects(&self, headers: &hyper::HeaderMap) -> bool {
        if let Some(v) = self.header.as_ref().and_then(|h| headers.get(h)) {
            // With a value set, only that value counts; other values fall through.
            match (&self.header_value, &self.header_pattern) {
                (Some(want), _) if v.as_bytes() == want.as_bytes() => return true,
                (None, Some(p)) if v.to_str().is_ok_and(|v| p.0.is_match(v)) => return true,
                (None, None) if v == "always" => return true,
                (None, None) if v == "never" => return false,
                _ => {}
            }
        }
        if let Some(name) = &self.cookie {
            match crate::proxy::headers::cookie(headers, name) {
                Some("always") => return true,
                Some("never") => return false,
                _ => {}
            }
        }
        self.weight > 0 && fastrand::u32(..self.weight_total) < self.weight
    }
}

/// CORS settings (ingress-nginx's annotations and defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cors {
    /// Allowed origins; empty means any (`*`). `https://*.example.com` covers one or
    /// more labels in place of the `*`.
    pub origins: Vec<String>,
    pub methods: String,
    pub headers: String,
    pub expose: Option<String>,
    pub credentials: bool,
    pub max_age: u64,
}

impl Default for Cors {
    fn default() -> Self {
        Cors {
            origins: Vec::new(),
            methods: "GET, PUT, POST, DELETE, PATCH, OPTIONS".to_owned(),
            headers: "DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,Range,Authorization".to_owned(),
            expose: None,
            credentials: true,
            max_age: 1_728_000,
        }
    }
}

impl Cors {
    /// The `Access-Control-Allow-Origin` for a request from `origin`: `*` when any origin
    /// is allowed, the origin itself when it is in the list, else none (no CORS headers).
    pub fn allow_origin<'a>(&self, origin: Option<&'a str>) -> Option<&'a str> {
        if self.origins.is_empty() {
            return Some("*");
        }
        let origin = origin?;
        self.origins
            .iter()
            .any(|allowed| origin_matches(allowed, origin))
            .then_some(origin)
    }
}

/// `https://*.example.com` matches `https://a.example.com` and `https://a.b.example.com`;
/// anything else matches itself only (case-insensitively: scheme and host are).
fn origin_matches(allowed: &str, origin: &str) -> bool {
    match allowed.split_once("*.") {
        Some((scheme, suffix)) => {
            origin
                .get(..scheme.len())
                .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
                && origin.len() > scheme.len() + suffix.len() + 1
                && origin[scheme.len()..]
                    .to_ascii_lowercase()
                    .ends_with(&format!(".{}", suffix.to_ascii_lowercase()))
        }
        None => allowed.eq_ignore_ascii_case(origin),
    }
}

/// `proxy-ssl-secret` and its companions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxySsl {
    /// The Secret (`namespace`, `name`): its `ca.crt` signs the upstreams' certificates,
    /// its `tls.crt` and `tls.key` (if any) are the client certificate shown to them.
    pub secret: (String, String),
    /// `proxy-ssl-verify: on`: upstreams must show a certificate `ca.crt` signed.
    pub verify: bool,
    /// `proxy-ssl-name`; None: the Service's name, `service.namespace.svc`.
    pub name: Option<String>,
    /// `proxy-ssl-server-name: on`: send the name as SNI.
    pub sni: bool,
}

/// A session-affinity cookie's name and attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CookieAffinity {
    pub name: String,
    /// `None`: the path of the rule.
    pub path: Option<String>,
    pub max_age: Option<u64>,
    /// `session-cookie-expires`: seconds from when the cookie is set.
    pub expires: Option<u64>,
    pub domain: Option<String>,
    pub same_site: Option<&'static str>,
    /// `session-cookie-secure`: Secure even over plain HTTP (else only over https).
    pub secure: bool,
    /// `session-cookie-change-on-failure` (default true): a client whose endpoint is
    /// still there but failed gets a cookie for the one that answered.
    pub change_on_failure: bool,
}

impl Default for CookieAffinity {
    fn default() -> Self {
        CookieAffinity {
            name: "INGRESSCOOKIE".to_owned(),
            path: None,
            max_age: None,
            expires: None,
            domain: None,
            same_site: None,
            secure: false,
            change_on_failure: true,
        }
    }
}

impl RouteOptions {
    /// Does the rule with `path` (as written) put its host under regular expressions?
    /// (`use-regex`, or a `rewrite-target` that changes the path: ingress-nginx's
    /// `enforceRegexModifier`.)
    pub fn wants_regex(&self, path: &str) -> bool {
        self.use_regex
            || self
                .rewrite_target
                .as_ref()
                .is_some_and(|t| t.rewrites(path))
    }

    /// Whether `ip` may use the rules these options belong to.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        let listed =
            |nets: &Option<Vec<IpNet>>| nets.as_ref().map(|n| n.iter().any(|n| n.contains(&ip)));
        listed(&self.deny_sources) != Some(true) && listed(&self.allow_sources) != Some(false)
    }

    /// Do the rules check the client's address (allowlist or denylist)?
    pub fn filters_sources(&self) -> bool {
        self.allow_sources.is_some() || self.deny_sources.is_some()
    }

    /// Whether `ip` is exempt from the rate limit (`limit-allowlist`).
    pub fn rate_exempt(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.limit_exempt.iter().any(|n| n.contains(&ip))
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// What a refused value means for its setting, in problem messages.
const IGNORED: &str = "ignored";
/// Settings read under our prefix only.
const OURS_ONLY: [&str; 1] = ["rewrite-prefix"];
/// ingress-nginx settings for nginx's own buffering and protocol handling, which this
/// proxy has no counterpart of and needs none: it streams bodies both ways without
/// buffering them, speaks HTTP/1.1 to upstreams with keep-alive, and has no temp files.
/// Accepted silently, so that Ingresses carrying them do not show as having problems.
const NOT_APPLICABLE: [&str; 8] = [
    "proxy-buffering",
    "proxy-buffer-size",
    "proxy-buffers-number",
    "proxy-request-buffering",
    "proxy-max-temp-file-size",
    "client-body-buffer-size",
    "proxy-http-version",
    "connection-proxy-header",
];

/// The annotations under either prefix by setting name, with the annotation as written
/// and its value (ours replace ingress-nginx's), and the problems found. Each parser
/// takes its settings out; what is left at the end is reported as ignored.
struct Settings<'a> {
    by_name: BTreeMap<&'a str, (&'a str, &'a str)>,
    problems: Vec<String>,
}

impl<'a> Settings<'a> {
    fn new(annotations: &'a BTreeMap<String, String>) -> Self {
        let mut by_name = BTreeMap::new();
        let mut problems = Vec::new();
        for prefix in [NGINX_PREFIX, PREFIX] {
            for (key, value) in annotations {
                let Some(name) = key.strip_prefix(prefix) else {
                    continue;
                };
                let name = match name {
                    "whitelist-source-range" => "allowlist-source-range",
                    "limit-whitelist" => "limit-allowlist",
                    other => other,
                };
                if prefix == NGINX_PREFIX && OURS_ONLY.contains(&name) {
                    problems.push(format!(
                        "annotation {key}: ingress-nginx has no such annotation (ours is {PREFIX}{name}); ignored"
                    ));
                    continue;
                }
                by_name.insert(name, (key.as_str(), value.trim()));
            }
        }
        Settings { by_name, problems }
    }

    /// Takes setting `name` and parses its value; a value `parse` refuses (saying why)
    /// is reported with `consequence` and gives None.
    fn get<T>(
        &mut self,
        name: &str,
        consequence: &str,
        parse: impl FnOnce(&'a str) -> Result<T, String>,
    ) -> Option<T> {
        let (key, value) = self.by_name.remove(name)?;
        parse(value)
            .map_err(|why| {
                self.problems
                    .push(format!("annotation {key}: {why}; {consequence}"));
            })
            .ok()
    }

    /// [`Settings::get`] for a setting that guards the rules: a refused value sets
    /// `deny`, so that they answer 503 rather than being served without it.
    fn guard<T>(
        &mut self,
        name: &str,
        deny: &mut Option<String>,
        parse: impl FnOnce(&'a str) -> Result<T, String>,
    ) -> Option<T> {
        let (key, value) = self.by_name.remove(name)?;
        parse(value)
            .map_err(|why| {
                self.problems.push(format!(
                    "annotation {key}: {why}; its rules answer 503 until it is fixed"
                ));
                *deny = Some(format!("annotation {key}: {why}"));
            })
            .ok()
    }

    /// Takes and reports settings `names`, which mean nothing without the setting that
    /// `missing` says is not there.
    fn drop_companions(&mut self, names: &[&str], missing: &str) {
        for name in names {
            if let Some((key, _)) = self.by_name.remove(*name) {
                self.problems
                    .push(format!("annotation {key}: {missing}; ignored"));
            }
        }
    }

    /// The problems, with every setting no parser took reported as ignored.
    fn finish(self) -> Vec<String> {
        let mut problems = self.problems;
        for (name, (key, _)) in self.by_name {
            if NOT_APPLICABLE.contains(&name) {
                continue;
            }
            let why = match name {
                n if n.ends_with("-snippet") => {
                    "snippets (raw proxy configuration) are never honoured".to_owned()
                }
                _ => "not supported by lb-ingress".to_owned(),
            };
            problems.push(format!("annotation {key}: {why}; {IGNORED}"));
        }
        problems
    }
}

/// The settings read from `annotations`, and the problems found (each one sentence,
/// naming the annotation, without the Ingress's name, which the caller adds).
pub fn parse(annotations: Option<&BTreeMap<String, String>>) -> (RouteOptions, Vec<String>) {
    let Some(annotations) = annotations else {
        return (RouteOptions::default(), Vec::new());
    };
    let mut s = Settings::new(annotations);
    let mut deny = None;
    let mut o = RouteOptions {
        ssl_redirect: s.get("ssl-redirect", IGNORED, boolean),
        force_ssl_redirect: s
            .get("force-ssl-redirect", IGNORED, boolean)
            .unwrap_or(false),
        max_body_bytes: s.get("proxy-body-size", IGNORED, |v| {
            parse_size(v).ok_or_else(|| {
                format!("{v:?} is not a size (like 512, 8k, 10m, 1g, or 0 for no limit)")
            })
        }),
        connect_timeout: s.get("proxy-connect-timeout", IGNORED, duration),
        response_timeout: s.get("proxy-read-timeout", IGNORED, duration),
        send_timeout: s.get("proxy-send-timeout", IGNORED, duration),
        app_root: s.get("app-root", IGNORED, |v| {
            absolute_path(v).ok_or_else(|| format!("{v:?} is not an absolute path"))
        }),
        allow_sources: s.guard("allowlist-source-range", &mut deny, parse_ranges),
        deny_sources: s.guard("denylist-source-range", &mut deny, parse_ranges),
        protocol: s.guard("backend-protocol", &mut deny, backend_protocol),
        rewrite_prefix: s.guard("rewrite-prefix", &mut deny, |v| {
            absolute_path(v)
                .filter(|p| !p.contains('?'))
                .ok_or_else(|| format!("{v:?} is not an absolute path without a query"))
        }),
        use_regex: s.get("use-regex", IGNORED, boolean).unwrap_or(false),
        rewrite_target: s.guard("rewrite-target", &mut deny, RewriteTarget::parse),
        upstream_host: s.get("upstream-vhost", IGNORED, |v| {
            (hyper::http::uri::Authority::try_from(v).is_ok())
                .then(|| hyper::header::HeaderValue::try_from(v).ok())
                .flatten()
                .ok_or_else(|| format!("{v:?} is not a host"))
        }),
        max_retries: s.get("proxy-next-upstream-tries", IGNORED, |v| {
            let tries = v
                .parse::<u32>()
                .map_err(|_| format!("{v:?} is not a whole number"))?;
            Ok(tries.checked_sub(1).unwrap_or(u32::MAX))
        }),
        access_log: s.get("enable-access-log", IGNORED, boolean),
        next_upstream: s.get("proxy-next-upstream", IGNORED, NextUpstream::parse),
        server_alias: s
            .get("server-alias", IGNORED, |v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .map(|h| {
                        let name = h.strip_prefix("*.").unwrap_or(h);
                        rustls::pki_types::DnsName::try_from(name)
                            .map(|_| h.to_ascii_lowercase())
                            .map_err(|_| format!("{h:?} is not a host name"))
                    })
                    .collect()
            })
            .unwrap_or_default(),
        service_upstream: s.get("service-upstream", IGNORED, boolean).unwrap_or(false),
        satisfy_any: s
            .get("satisfy", "`all` applies", |v| match v {
                "any" => Ok(true),
                "all" => Ok(false),
                other => Err(format!("{other:?} is not all or any")),
            })
            .unwrap_or(false),
        www_redirect: s
            .get("from-to-www-redirect", IGNORED, boolean)
            .unwrap_or(false),
        forwarded_prefix: s.get("x-forwarded-prefix", IGNORED, |v| {
            (v.starts_with('/'))
                .then(|| hyper::header::HeaderValue::try_from(v).ok())
                .flatten()
                .ok_or_else(|| format!("{v:?} is not a path"))
        }),
        ..RouteOptions::default()
    };
    if o.rewrite_prefix.is_some()
        && let Some(t) = o.rewrite_target.take()
    {
        s.problems.push(format!(
            "annotation rewrite-target {:?}: rewrite-prefix is set too and applies; ignored",
            t.as_str()
        ));
    }
    o.ssl_passthrough = s.get("ssl-passthrough", IGNORED, boolean).unwrap_or(false);
    o.redirect = redirect(&mut s);
    o.auth = external_auth(&mut s, &mut deny);
    o.basic_auth = basic_auth(&mut s, &mut deny);
    o.client_cert = client_certificates(&mut s, &mut deny);
    o.proxy_ssl = proxy_ssl(&mut s, &mut deny);
    o.deny = deny;
    o.affinity = affinity(&mut s);
    (o.default_backend, o.custom_errors) = error_pages(&mut s);
    (o.redirect_rewrite, o.cookie_path, o.cookie_domain) = response_rewrites(&mut s);
    (o.hash_by, o.hash_subset) = hash_by(&mut s);
    o.load_balance = s
        .get(
            "load-balance",
            "power of two choices over requests in flight",
            load_balance,
        )
        .unwrap_or_default();
    o.limit_rate = response_rate(&mut s);
    (o.rate, o.limit_exempt) = rate_limit(&mut s);
    o.max_in_flight = s.get("limit-connections", "no limit", positive);
    o.cors = cors(&mut s);
    o.canary = canary(&mut s);
    o.mirror = mirror(&mut s);
    o.custom_headers = s.get("custom-headers", IGNORED, config_map_ref);
    (o, s.finish())
}

/// `upstream-hash-by`, and `upstream-hash-by-subset` with `upstream-hash-by-subset-size`.
fn hash_by(s: &mut Settings<'_>) -> (Option<HashKey>, Option<u32>) {
    let Some(key) = s.get(
        "upstream-hash-by",
        "requests are balanced as without it",
        HashKey::parse,
    ) else {
        s.drop_companions(
            &["upstream-hash-by-subset", "upstream-hash-by-subset-size"],
            "there is no usable upstream-hash-by",
        );
        return (None, None);
    };
    let subset = s
        .get("upstream-hash-by-subset", IGNORED, boolean)
        .unwrap_or(false);
    if !subset {
        s.drop_companions(
            &["upstream-hash-by-subset-size"],
            "upstream-hash-by-subset is not true",
        );
        return (Some(key), None);
    }
    let size = s
        .get("upstream-hash-by-subset-size", "sets of 3", positive)
        .unwrap_or(3);
    (Some(key), Some(size))
}

/// `mirror-target`: where a copy of each request goes ([`crate::proxy::mirror`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    /// URL template (`http://` or `https://`, nginx's `$request_uri`, `$host`,
    /// `$scheme`, `$escaped_request_uri`); without a path, the request's own path and
    /// query are added.
    pub target: String,
    /// `mirror-request-body` (`on`, the default): the copy carries the request body.
    pub body: bool,
    /// `mirror-host`: the copy's `Host` (default: the target URL's host).
    pub host: Option<hyper::header::HeaderValue>,
}

/// `mirror-target` with `mirror-request-body` and `mirror-host`.
fn mirror(s: &mut Settings<'_>) -> Option<Mirror> {
    let Some(target) = s.get("mirror-target", IGNORED, |v| {
        valid_template(v)
            .then(|| v.to_owned())
            .ok_or_else(|| format!("{v:?} is not an http:// or https:// URL"))
    }) else {
        s.drop_companions(
            &["mirror-request-body", "mirror-host"],
            "there is no usable mirror-target",
        );
        return None;
    };
    let body = s
        .get("mirror-request-body", "the body is mirrored", |v| match v {
            "on" => Ok(true),
            "off" => Ok(false),
            other => Err(format!("{other:?} is not on or off")),
        })
        .unwrap_or(true);
    let host = s.get("mirror-host", "the target's host is sent", |v| {
        (hyper::http::uri::Authority::try_from(v).is_ok())
            .then(|| hyper::header::HeaderValue::try_from(v).ok())
            .flatten()
            .ok_or_else(|| format!("{v:?} is not a host"))
    });
    Some(Mirror { target, body, host })
}

/// A text to replace and what replaces it.
type FromTo = Option<(String, String)>;

/// `default-backend` and `custom-http-errors` (which needs it: there is no global one).
fn error_pages(s: &mut Settings<'_>) -> (Option<String>, Vec<u16>) {
    let default_backend = s.get("default-backend", IGNORED, |v| {
        (!v.is_empty()
            && v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !v.starts_with('-')
            && !v.ends_with('-'))
        .then(|| v.to_owned())
        .ok_or_else(|| format!("{v:?} is not a Service name"))
    });
    let mut custom_errors: Vec<u16> = s
        .get("custom-http-errors", IGNORED, |v| {
            v.split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(|c| {
                    c.parse::<u16>()
                        .ok()
                        .filter(|c| (400..=599).contains(c))
                        .ok_or_else(|| format!("{c:?} is not an error status (400-599)"))
                })
                .collect()
        })
        .unwrap_or_default();
    if !custom_errors.is_empty() && default_backend.is_none() {
        custom_errors.clear();
        s.problems.push(
            "annotation custom-http-errors: needs default-backend (the Service with the error \
             pages; there is no global one); ignored"
                .to_owned(),
        );
    }
    (default_backend, custom_errors)
}

/// Rewrites of upstream response headers: `proxy-redirect-from`/`-to` (Location,
/// Refresh), `proxy-cookie-path` and `proxy-cookie-domain` (Set-Cookie).
fn response_rewrites(s: &mut Settings<'_>) -> (FromTo, FromTo, FromTo) {
    let redirect_from = s.get("proxy-redirect-from", IGNORED, header_value);
    let redirect_to = s.get("proxy-redirect-to", IGNORED, |v| {
        hyper::header::HeaderValue::from_str(v)
            .map(|_| v.to_owned())
            .map_err(|_| format!("{v:?} is not a header value"))
    });
    let redirect = match (redirect_from, redirect_to) {
        (Some(from), _) if from == "off" || from == "default" => None,
        (Some(from), Some(to)) => Some((from, to)),
        (Some(_), None) | (None, Some(_)) => {
            s.problems.push(
                "annotations proxy-redirect-from and proxy-redirect-to: both are needed; ignored"
                    .to_owned(),
            );
            None
        }
        (None, None) => None,
    };
    let from_to = |v: &str| -> Result<FromTo, String> {
        if v == "off" {
            return Ok(None);
        }
        let mut words = v.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some(from), Some(to), None)
                if hyper::header::HeaderValue::from_str(to).is_ok() && !to.contains(';') =>
            {
                Ok(Some((from.to_owned(), to.to_owned())))
            }
            _ => Err(format!("{v:?} is not \"from to\" (or off)")),
        }
    };
    let cookie_path = s.get("proxy-cookie-path", IGNORED, from_to).flatten();
    let cookie_domain = s.get("proxy-cookie-domain", IGNORED, from_to).flatten();
    (redirect, cookie_path, cookie_domain)
}

/// `temporal-redirect` (302, or `temporal-redirect-code`), else `permanent-redirect`
/// (301, or `permanent-redirect-code`), as ingress-nginx picks them.
fn redirect(s: &mut Settings<'_>) -> Option<(hyper::StatusCode, String)> {
    let url = |v: &str| {
        (v.parse::<hyper::Uri>().ok())
            .filter(|u| u.scheme().is_some() && u.host().is_some())
            .map(|_| v.to_owned())
            .ok_or_else(|| format!("{v:?} is not an absolute URL"))
    };
    let code = |v: &str| {
        (v.parse::<u16>().ok())
            .and_then(|c| hyper::StatusCode::from_u16(c).ok())
            .filter(hyper::StatusCode::is_redirection)
            .ok_or_else(|| format!("{v:?} is not a redirect status (300-308)"))
    };
    let temporal = s.get("temporal-redirect", IGNORED, url);
    let temporal_code = s.get("temporal-redirect-code", IGNORED, code);
    let permanent = s.get("permanent-redirect", IGNORED, url);
    let permanent_code = s.get("permanent-redirect-code", IGNORED, code);
    match (temporal, permanent) {
        (Some(to), _) => Some((temporal_code.unwrap_or(hyper::StatusCode::FOUND), to)),
        (None, Some(to)) => Some((
            permanent_code.unwrap_or(hyper::StatusCode::MOVED_PERMANENTLY),
            to,
        )),
        (None, None) => None,
    }
}

/// `proxy-ssl-secret` with `proxy-ssl-verify`, `proxy-ssl-name`, `proxy-ssl-server-name`.
/// Verification asked for without a Secret fails closed.
fn proxy_ssl(s: &mut Settings<'_>, deny: &mut Option<String>) -> Option<ProxySsl> {
    let on_off = |v: &str| match v {
        "on" => Ok(true),
        "off" => Ok(false),
        other => boolean(other),
    };
    let verify_key = s.by_name.get("proxy-ssl-verify").map(|(key, _)| *key);
    let verify = s.get("proxy-ssl-verify", IGNORED, on_off).unwrap_or(false);
    let secret_given = s.by_name.contains_key("proxy-ssl-secret");
    if !verify && !secret_given {
        s.drop_companions(
            &["proxy-ssl-name", "proxy-ssl-server-name"],
            "there is no proxy-ssl-secret",
        );
        return None;
    }
    let secret = s.guard("proxy-ssl-secret", deny, |v| {
        v.split_once('/')
            .filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
            .map(|(ns, name)| (ns.to_owned(), name.to_owned()))
            .ok_or_else(|| format!("{v:?} is not namespace/name"))
    });
    let name = s.get("proxy-ssl-name", IGNORED, |v| {
        rustls::pki_types::ServerName::try_from(v)
            .map(|_| v.to_owned())
            .map_err(|_| format!("{v:?} is not a server name"))
    });
    let sni = s
        .get("proxy-ssl-server-name", IGNORED, on_off)
        .unwrap_or(false);
    let Some(secret) = secret else {
        if !secret_given {
            let key = verify_key.unwrap_or("proxy-ssl-verify");
            let why = format!("annotation {key}: on, but there is no proxy-ssl-secret");
            s.problems
                .push(format!("{why}; its rules answer 503 until it is fixed"));
            *deny = Some(why);
        }
        return None;
    };
    Some(ProxySsl {
        secret,
        verify,
        name,
        sni,
    })
}

/// `auth-url` and its companions.
fn external_auth(s: &mut Settings<'_>, deny: &mut Option<String>) -> Option<ExternalAuth> {
    let Some(url) = s.guard("auth-url", deny, |v| {
        valid_template(v)
            .then(|| v.to_owned())
            .ok_or_else(|| format!("{v:?} is not an http:// or https:// URL"))
    }) else {
        s.drop_companions(
            &[
                "auth-method",
                "auth-signin",
                "auth-response-headers",
                "auth-cache-key",
                "auth-cache-duration",
                "auth-proxy-set-headers",
            ],
            "there is no usable auth-url",
        );
        return None;
    };
    Some(ExternalAuth {
        proxy_set_headers: s.guard("auth-proxy-set-headers", deny, config_map_ref),
        url,
        method: s
            .get("auth-method", IGNORED, |v| {
                hyper::Method::from_bytes(v.as_bytes())
                    .map_err(|_| format!("{v:?} is not a method"))
            })
            .unwrap_or(hyper::Method::GET),
        signin: s.get("auth-signin", IGNORED, |v| {
            // Checked with the variables' `$` taken out.
            (v.replace('$', "").parse::<hyper::Uri>().is_ok())
                .then(|| v.to_owned())
                .ok_or_else(|| format!("{v:?} is not a URL"))
        }),
        response_headers: s
            .get("auth-response-headers", IGNORED, |v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(header_name)
                    .collect()
            })
            .unwrap_or_default(),
        cache: auth_cache(s),
    })
}

/// `auth-cache-key` (nginx variables) and `auth-cache-duration` (default
/// [`CachePolicy::DEFAULT_VALID`]); the duration alone means nothing.
fn auth_cache(s: &mut Settings<'_>) -> Option<CachePolicy> {
    let Some(key) = s.get(
        "auth-cache-key",
        "auth answers are not cached",
        HashKey::parse,
    ) else {
        s.drop_companions(
            &["auth-cache-duration"],
            "there is no usable auth-cache-key",
        );
        return None;
    };
    let valid = s
        .get(
            "auth-cache-duration",
            "ingress-nginx's default applies",
            CachePolicy::parse_valid,
        )
        .unwrap_or_else(|| {
            CachePolicy::parse_valid(CachePolicy::DEFAULT_VALID).expect("the default parses")
        });
    Some(CachePolicy { key, valid })
}

/// `auth-type: basic` with `auth-secret`, `auth-realm`, `auth-secret-type`. Any other
/// type, or no Secret, fails closed.
fn basic_auth(s: &mut Settings<'_>, deny: &mut Option<String>) -> Option<BasicAuthSpec> {
    const COMPANIONS: [&str; 3] = ["auth-secret", "auth-secret-type", "auth-realm"];
    let basic = s.guard("auth-type", deny, |v| match v {
        "basic" => Ok(()),
        "digest" => Err("digest authentication is not supported (basic is)".to_owned()),
        other => Err(format!("{other:?} is not basic")),
    });
    if basic.is_none() {
        s.drop_companions(&COMPANIONS, "there is no usable auth-type");
        return None;
    }
    let map = s
        .guard("auth-secret-type", deny, |v| match v {
            "auth-file" => Ok(false),
            "auth-map" => Ok(true),
            other => Err(format!(
                "{other:?} is neither auth-file (an htpasswd file under the key auth) nor \
                 auth-map (users as keys, hashes as values)"
            )),
        })
        .unwrap_or(false);
    let realm = s
        .get("auth-realm", IGNORED, |v| Ok(v.to_owned()))
        .unwrap_or_default();
    let secret = s.guard("auth-secret", deny, secret_ref);
    let Some((namespace, name)) = secret else {
        if deny.is_none() {
            let why = "auth-type: basic needs auth-secret (a Secret with an htpasswd file)";
            s.problems
                .push(format!("{why}; its rules answer 503 until it is fixed"));
            *deny = Some(why.to_owned());
        }
        return None;
    };
    Some(BasicAuthSpec {
        namespace,
        name,
        realm,
        map,
    })
}

/// `auth-tls-secret` with its companions: client certificates asked for in the TLS
/// handshake of the Ingress's hosts and checked against the Secret's `ca.crt` (and
/// `ca.crl` when present). `auth-tls-verify-client: off` (or no Secret) turns it off;
/// a value that cannot be honoured makes the rules fail closed.
fn client_certificates(s: &mut Settings<'_>, deny: &mut Option<String>) -> Option<ClientCertSpec> {
    const COMPANIONS: [&str; 5] = [
        "auth-tls-verify-client",
        "auth-tls-verify-depth",
        "auth-tls-error-page",
        "auth-tls-pass-certificate-to-upstream",
        "auth-tls-match-cn",
    ];
    let verify = s.guard("auth-tls-verify-client", deny, |v| match v {
        "on" => Ok(Some(VerifyClient::On)),
        "optional" => Ok(Some(VerifyClient::Optional)),
        "optional_no_ca" => Ok(Some(VerifyClient::OptionalNoCa)),
        "off" => Ok(None),
        other => Err(format!(
            "{other:?} is not one of on, off, optional, optional_no_ca"
        )),
    });
    if verify == Some(None) || !s.by_name.contains_key("auth-tls-secret") {
        s.by_name.remove("auth-tls-secret");
        let why = if verify == Some(None) {
            "auth-tls-verify-client is off"
        } else {
            "there is no auth-tls-secret"
        };
        s.drop_companions(&COMPANIONS, why);
        return None;
    }
    let (namespace, name) = s.guard("auth-tls-secret", deny, secret_ref)?;
    let depth = s
        .guard("auth-tls-verify-depth", deny, |v| {
            (v.parse::<u8>().ok())
                .filter(|d| (1..=16).contains(d))
                .ok_or_else(|| format!("{v:?} is not a depth from 1 to 16"))
        })
        .unwrap_or(1);
    let error_page = s.get("auth-tls-error-page", "failures answer 400", |v| {
        (v.starts_with("https://") || v.starts_with("http://") || v.starts_with('/'))
            .then(|| v.to_owned())
            .ok_or_else(|| format!("{v:?} is not a URL or a path"))
    });
    let pass_certificate = s
        .get("auth-tls-pass-certificate-to-upstream", IGNORED, boolean)
        .unwrap_or(false);
    let match_cn = s.guard("auth-tls-match-cn", deny, |v| {
        let pattern = v
            .strip_prefix("CN=")
            .ok_or_else(|| format!("{v:?} does not start with CN="))?;
        regex::Regex::new(pattern)
            .map(HeaderPattern)
            .map_err(|e| format!("{pattern:?} is not a regular expression: {e}"))
    });
    Some(ClientCertSpec {
        namespace,
        name,
        verify: verify.flatten().unwrap_or(VerifyClient::On),
        depth,
        error_page,
        pass_certificate,
        match_cn,
    })
}

/// A ConfigMap: `name` or `namespace/name`.
fn config_map_ref(v: &str) -> Result<(Option<String>, String), String> {
    secret_ref(v).map_err(|_| format!("{v:?} is not a ConfigMap name (name or namespace/name)"))
}

/// `name` or `namespace/name`.
fn secret_ref(v: &str) -> Result<(Option<String>, String), String> {
    let (namespace, name) = match v.split_once('/') {
        Some((ns, name)) => (Some(ns.to_owned()), name),
        None => (None, v),
    };
    (!name.is_empty() && !name.contains('/') && namespace.as_deref() != Some(""))
        .then(|| (namespace, name.to_owned()))
        .ok_or_else(|| format!("{v:?} is not a Secret name (name or namespace/name)"))
}

/// `affinity: cookie` and the cookie's attributes.
fn affinity(s: &mut Settings<'_>) -> Option<CookieAffinity> {
    const ATTRIBUTES: [&str; 8] = [
        "session-cookie-name",
        "session-cookie-path",
        "session-cookie-max-age",
        "session-cookie-expires",
        "session-cookie-domain",
        "session-cookie-samesite",
        "session-cookie-secure",
        "session-cookie-change-on-failure",
    ];
    // Ours never moves a client whose endpoint is still there (ingress-nginx's
    // "persistent"); "balanced" (rebalancing on scale-out) is taken to mean the same.
    s.get("affinity-mode", IGNORED, |v| {
        matches!(v, "balanced" | "persistent")
            .then_some(())
            .ok_or_else(|| format!("{v:?} is not balanced or persistent"))
    });
    let cookie = s.get("affinity", "no affinity", |v| {
        (v == "cookie")
            .then_some(())
            .ok_or_else(|| format!("{v:?}: only \"cookie\" is supported"))
    });
    if cookie.is_none() {
        s.drop_companions(&ATTRIBUTES, "there is no affinity: cookie");
        return None;
    }
    let default = CookieAffinity::default();
    Some(CookieAffinity {
        name: s
            .get("session-cookie-name", IGNORED, cookie_name)
            .unwrap_or(default.name),
        path: s.get("session-cookie-path", IGNORED, |v| {
            absolute_path(v)
                .filter(|p| !p.contains([';', '?']))
                .ok_or_else(|| format!("{v:?} is not a path"))
        }),
        max_age: s.get("session-cookie-max-age", IGNORED, |v| {
            v.parse::<u64>()
                .map_err(|_| format!("{v:?} is not seconds"))
        }),
        expires: s.get("session-cookie-expires", IGNORED, |v| {
            v.parse::<u64>()
                .ok()
                .filter(|s| *s <= 400 * 24 * 3600)
                .ok_or_else(|| format!("{v:?} is not seconds (at most 400 days)"))
        }),
        domain: s.get("session-cookie-domain", IGNORED, |v| {
            let name = v.strip_prefix('.').unwrap_or(v);
            rustls::pki_types::DnsName::try_from(name)
                .map(|_| v.to_ascii_lowercase())
                .map_err(|_| format!("{v:?} is not a domain"))
        }),
        secure: s
            .get("session-cookie-secure", IGNORED, boolean)
            .unwrap_or(false),
        change_on_failure: s
            .get("session-cookie-change-on-failure", IGNORED, boolean)
            .unwrap_or(true),
        same_site: s.get("session-cookie-samesite", IGNORED, |v| {
            match v.to_ascii_lowercase().as_str() {
                "strict" => Ok("Strict"),
                "lax" => Ok("Lax"),
                "none" => Ok("None"),
                _ => Err(format!("{v:?} is not Strict, Lax or None")),
            }
        }),
    })
}

/// `limit-rps` / `limit-rpm` (per second wins, as in ingress-nginx) with the burst
/// multiplier, and the clients exempt from it.
fn rate_limit(s: &mut Settings<'_>) -> (Option<Rate>, Vec<IpNet>) {
    let rps = s.get("limit-rps", "no rate limit", positive);
    let rpm = s.get("limit-rpm", "no rate limit", positive);
    let multiplier = s
        .get("limit-burst-multiplier", IGNORED, positive)
        .unwrap_or(5);
    let exempt = s
        .get("limit-allowlist", IGNORED, parse_ranges)
        .unwrap_or_default();
    let rate = (rps.map(|n| (n, Duration::from_secs(1))))
        .or(rpm.map(|n| (n, Duration::from_mins(1))))
        .map(|(n, per)| Rate::per(n, per, multiplier));
    (rate, exempt)
}

/// `enable-cors` and its settings.
fn cors(s: &mut Settings<'_>) -> Option<Cors> {
    const SETTINGS: [&str; 6] = [
        "cors-allow-origin",
        "cors-allow-methods",
        "cors-allow-headers",
        "cors-expose-headers",
        "cors-allow-credentials",
        "cors-max-age",
    ];
    if !s.get("enable-cors", IGNORED, boolean).unwrap_or(false) {
        s.drop_companions(&SETTINGS, "enable-cors is not \"true\"");
        return None;
    }
    let default = Cors::default();
    Some(Cors {
        origins: s
            .get("cors-allow-origin", "any origin allowed", origins)
            .unwrap_or_default(),
        methods: s
            .get("cors-allow-methods", IGNORED, header_value)
            .unwrap_or(default.methods),
        headers: s
            .get("cors-allow-headers", IGNORED, header_value)
            .unwrap_or(default.headers),
        expose: s.get("cors-expose-headers", IGNORED, header_value),
        credentials: s
            .get("cors-allow-credentials", IGNORED, boolean)
            .unwrap_or(default.credentials),
        max_age: s
            .get("cors-max-age", IGNORED, |v| {
                v.parse::<u64>()
                    .map_err(|_| format!("{v:?} is not seconds"))
            })
            .unwrap_or(default.max_age),
    })
}

/// `canary` and the rules that pick its requests.
fn canary(s: &mut Settings<'_>) -> Option<CanaryPolicy> {
    const SETTINGS: [&str; 6] = [
        "canary-by-header",
        "canary-by-header-value",
        "canary-by-header-pattern",
        "canary-by-cookie",
        "canary-weight",
        "canary-weight-total",
    ];
    if !s.get("canary", IGNORED, boolean).unwrap_or(false) {
        s.drop_companions(&SETTINGS, "canary is not \"true\"");
        return None;
    }
    let weight_total = s
        .get("canary-weight-total", IGNORED, positive)
        .unwrap_or(100);
    let header_value = s.get("canary-by-header-value", IGNORED, |v| Ok(v.to_owned()));
    if header_value.is_some() {
        s.drop_companions(
            &["canary-by-header-pattern"],
            "canary-by-header-value is set and wins",
        );
    }
    Some(CanaryPolicy {
        header: s.get("canary-by-header", IGNORED, header_name),
        header_value,
        header_pattern: s.get("canary-by-header-pattern", IGNORED, |v| {
            crate::template::regex(v, false)
                .map(HeaderPattern)
                .map_err(|e| format!("{v:?} {e}"))
        }),
        cookie: s.get("canary-by-cookie", IGNORED, cookie_name),
        weight: s
            .get("canary-weight", IGNORED, |v| {
                v.parse::<u32>()
                    .map_err(|_| format!("{v:?} is not a whole number"))
            })
            .unwrap_or(0)
            .min(weight_total),
        weight_total,
    })
}

fn boolean(v: &str) -> Result<bool, String> {
    parse_bool(v).ok_or_else(|| format!("{v:?} is not a boolean"))
}

fn duration(v: &str) -> Result<Duration, String> {
    parse_duration(v)
        .ok_or_else(|| format!("{v:?} is not a duration (seconds, or like 500ms, 5s, 1m)"))
}

/// `limit-rate` (KB/s, 0: none) and `limit-rate-after` (KB, default 0).
fn response_rate(s: &mut Settings<'_>) -> Option<ResponseRate> {
    let kilobytes = |v: &str| {
        v.trim()
            .parse::<u64>()
            .ok()
            .and_then(|k| k.checked_mul(1024))
            .ok_or_else(|| format!("{v:?} is not a whole number of kilobytes"))
    };
    let per_sec = s.get("limit-rate", "responses are not paced", kilobytes);
    let after = s.get(
        "limit-rate-after",
        "pacing starts at the first byte",
        kilobytes,
    );
    per_sec.filter(|r| *r > 0).map(|per_sec| ResponseRate {
        per_sec,
        after: after.unwrap_or(0),
    })
}

fn load_balance(v: &str) -> Result<Balance, String> {
    match v.trim() {
        "round_robin" => Ok(Balance::RoundRobin),
        "ewma" => Ok(Balance::Ewma),
        other => Err(format!(
            "{other:?} is not a balancing method (round_robin or ewma; upstream-hash-by for \
             consistent hashing)"
        )),
    }
}

fn positive(v: &str) -> Result<u32, String> {
    (v.parse::<u32>().ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{v:?} is not a positive whole number"))
}

fn cookie_name(v: &str) -> Result<String, String> {
    (!v.is_empty() && v.bytes().all(is_token_byte))
        .then(|| v.to_owned())
        .ok_or_else(|| format!("{v:?} is not a cookie name"))
}

fn header_name(v: &str) -> Result<hyper::header::HeaderName, String> {
    hyper::header::HeaderName::from_bytes(v.as_bytes())
        .map_err(|_| format!("{v:?} is not a header name"))
}

fn header_value(v: &str) -> Result<String, String> {
    (!v.is_empty() && hyper::header::HeaderValue::from_str(v).is_ok())
        .then(|| v.to_owned())
        .ok_or_else(|| format!("{v:?} is not a header value"))
}

/// `*`, or a list of origins (`scheme://host[:port]`, `https://*.example.com`); empty
/// for any.
fn origins(v: &str) -> Result<Vec<String>, String> {
    let list: Vec<String> = v
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(str::to_owned)
        .collect();
    if list.iter().any(|o| o == "*") {
        Ok(Vec::new())
    } else if !list.is_empty() && list.iter().all(|o| o.contains("://")) {
        Ok(list)
    } else {
        Err(format!(
            "{v:?} is not * or a list of origins (scheme://host[:port])"
        ))
    }
}

fn backend_protocol(v: &str) -> Result<UpstreamProtocol, String> {
    match v.to_ascii_uppercase().as_str() {
        "HTTP" | "AUTO_HTTP" => Ok(UpstreamProtocol::Http1),
        "GRPC" | "H2C" => Ok(UpstreamProtocol::H2c),
        "HTTPS" => Ok(UpstreamProtocol::Https),
        "GRPCS" => Ok(UpstreamProtocol::H2Tls),
        other => Err(format!(
            "{other} is not supported (HTTP, AUTO_HTTP, HTTPS, GRPC, GRPCS and H2C are)"
        )),
    }
}

/// RFC 9110 token characters (a cookie name).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `value` if it is an absolute URI path (with an optional query).
fn absolute_path(value: &str) -> Option<String> {
    (value.starts_with('/') && hyper::http::uri::PathAndQuery::try_from(value).is_ok())
        .then(|| value.to_owned())
}

/// Booleans as ingress-nginx reads them (Go's `strconv.ParseBool`).
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// nginx's size syntax: bytes, or `k`/`m`/`g` (either case) for KiB/MiB/GiB; `0` means
/// no limit (`u64::MAX`).
pub fn parse_size(v: &str) -> Option<u64> {
    let (digits, shift) = match v.as_bytes().last()? {
        b'k' | b'K' => (&v[..v.len() - 1], 10),
        b'm' | b'M' => (&v[..v.len() - 1], 20),
        b'g' | b'G' => (&v[..v.len() - 1], 30),
        _ => (v, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    if n == 0 {
        return Some(u64::MAX);
    }
    n.checked_mul(1 << shift)
}

/// Seconds (ingress-nginx's form), or a number with `ms`, `s` or `m`. Zero is refused
/// (a timeout that fires at once serves nobody).
pub fn parse_duration(v: &str) -> Option<Duration> {
    let (digits, unit_ms) = if let Some(d) = v.strip_suffix("ms") {
        (d, 1)
    } else if let Some(d) = v.strip_suffix('s') {
        (d, 1000)
    } else if let Some(d) = v.strip_suffix('m') {
        (d, 60_000)
    } else {
        (v, 1000)
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    (n > 0).then(|| Duration::from_millis(n.saturating_mul(unit_ms)))
}

/// `10.0.0.0/8, 192.168.1.7`: networks, or addresses (a /32 or /128 each).
fn parse_ranges(v: &str) -> Result<Vec<IpNet>, String> {
    let mut nets = Vec::new();
    for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let net = item
            .parse::<IpNet>()
            .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| format!("{item:?} is not a CIDR or an IP address"))?;
        nets.push(net.trunc());
    }
    if nets.is_empty() {
        return Err("no range given".to_owned());
    }
    Ok(nets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// [`parse`] of `pairs` named under ingress-nginx's prefix.
    fn parse_nginx(pairs: &[(&str, &str)]) -> (RouteOptions, Vec<String>) {
        let a: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (format!("{NGINX_PREFIX}{k}"), (*v).to_owned()))
            .collect();
        parse(Some(&a))
    }

    #[test]
    fn nginx_names_are_read_and_ours_win() {
        let a = annotations(&[
            ("nginx.ingress.kubernetes.io/proxy-body-size", "8m"),
            ("ingress.lb.dev/proxy-body-size", "1k"),
            ("nginx.ingress.kubernetes.io/ssl-redirect", "false"),
            (
                "nginx.ingress.kubernetes.io/whitelist-source-range",
                "10.0.0.0/8, 192.168.1.7",
            ),
            ("nginx.ingress.kubernetes.io/backend-protocol", "grpc"),
            ("nginx.ingress.kubernetes.io/proxy-read-timeout", "120"),
            ("ingress.lb.dev/proxy-connect-timeout", "500ms"),
            ("nginx.ingress.kubernetes.io/app-root", "/app"),
            ("kubernetes.io/ingress.class", "lb"),
        ]);
        let (o, problems) = parse(Some(&a));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(o.max_body_bytes, Some(1024));
        assert_eq!(o.ssl_redirect, Some(false));
        assert_eq!(o.protocol, Some(UpstreamProtocol::H2c));
        assert_eq!(o.response_timeout, Some(Duration::from_mins(2)));
        assert_eq!(o.connect_timeout, Some(Duration::from_millis(500)));
        assert_eq!(o.app_root.as_deref(), Some("/app"));
        assert!(o.allows("10.1.2.3".parse().unwrap()));
        assert!(o.allows("192.168.1.7".parse().unwrap()));
        assert!(o.allows("::ffff:192.168.1.7".parse().unwrap()));
        assert!(!o.allows("192.168.1.8".parse().unwrap()));
        assert_eq!(o.deny, None);
    }

    /// ingress-nginx writes the denylist's `deny` lines before the allowlist's `allow`:
    /// a client on both is refused.
    #[test]
    fn the_denylist_is_asked_before_the_allowlist() {
        let a = annotations(&[
            (
                "nginx.ingress.kubernetes.io/denylist-source-range",
                "10.0.9.0/24, 2001:db8::1",
            ),
            (
                "nginx.ingress.kubernetes.io/allowlist-source-range",
                "10.0.0.0/8",
            ),
        ]);
        let (o, problems) = parse(Some(&a));
        assert!(problems.is_empty(), "{problems:?}");
        assert!(o.filters_sources());
        assert!(o.allows("10.0.8.1".parse().unwrap()));
        assert!(!o.allows("10.0.9.1".parse().unwrap()));
        assert!(!o.allows("::ffff:10.0.9.1".parse().unwrap()));
        assert!(!o.allows("192.0.2.1".parse().unwrap()));
        // A denylist alone lets everyone else in.
        let a = annotations(&[(
            "nginx.ingress.kubernetes.io/denylist-source-range",
            "2001:db8::1",
        )]);
        let (o, _) = parse(Some(&a));
        assert!(!o.allows("2001:db8::1".parse().unwrap()));
        assert!(o.allows("2001:db8::2".parse().unwrap()));
        assert!(o.allows("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn no_annotations_change_nothing() {
        let (o, problems) = parse(None);
        assert_eq!(o, RouteOptions::default());
        assert!(problems.is_empty());
        assert!(o.allows("203.0.113.9".parse().unwrap()));
    }

    #[test]
    fn sizes_as_nginx_reads_them() {
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("8k"), Some(8 << 10));
        assert_eq!(parse_size("10M"), Some(10 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("0"), Some(u64::MAX));
        for bad in ["", "m", "1.5m", "-1", "10mb", "k10", "99999999999999999999"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60"), Some(Duration::from_mins(1)));
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_mins(2)));
        for bad in ["", "0", "0s", "s", "1h", "1.5", "-3"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn bad_values_are_reported_and_access_guards_fail_closed() {
        let a = annotations(&[
            ("nginx.ingress.kubernetes.io/proxy-body-size", "lots"),
            ("nginx.ingress.kubernetes.io/ssl-redirect", "yes"),
            (
                "nginx.ingress.kubernetes.io/allowlist-source-range",
                "10.0.0.0/8, 300.1.1.1",
            ),
        ]);
        let (o, problems) = parse(Some(&a));
        assert_eq!(o.max_body_bytes, None);
        assert_eq!(o.ssl_redirect, None);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("proxy-body-size") && p.contains("\"lots\""))
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("ssl-redirect") && p.contains("\"yes\""))
        );
        let deny = o.deny.expect("a broken allowlist denies");
        assert!(deny.contains("\"300.1.1.1\" is not a CIDR"), "{deny}");
        let a = annotations(&[(
            "nginx.ingress.kubernetes.io/denylist-source-range",
            "10.0.0.0/33",
        )]);
        assert!(
            parse(Some(&a)).0.deny.is_some(),
            "a broken denylist denies too"
        );

        let a = annotations(&[("nginx.ingress.kubernetes.io/backend-protocol", "FCGI")]);
        let (o, problems) = parse(Some(&a));
        assert!(o.deny.unwrap().contains("FCGI is not supported"));
        assert!(problems[0].contains("503"), "{problems:?}");
    }

    #[test]
    fn mirror_target_with_its_companions() {
        let a = annotations(&[(
            "nginx.ingress.kubernetes.io/mirror-target",
            "https://test.env.com$request_uri",
        )]);
        let (o, problems) = parse(Some(&a));
        assert_eq!(problems, Vec::<String>::new());
        assert_eq!(
            o.mirror,
            Some(Mirror {
                target: "https://test.env.com$request_uri".into(),
                body: true,
                host: None,
            })
        );
        let a = annotations(&[
            (
                "nginx.ingress.kubernetes.io/mirror-target",
                "http://10.0.0.9:8080/copy",
            ),
            ("nginx.ingress.kubernetes.io/mirror-request-body", "off"),
            ("nginx.ingress.kubernetes.io/mirror-host", "shadow.example"),
        ]);
        let m = parse(Some(&a)).0.mirror.unwrap();
        assert!(!m.body);
        assert_eq!(m.host.unwrap(), "shadow.example");
        // A bad target: no mirror, and its companions are reported with it.
        let a = annotations(&[
            ("nginx.ingress.kubernetes.io/mirror-target", "ftp://x/"),
            ("nginx.ingress.kubernetes.io/mirror-host", "shadow.example"),
        ]);
        let (o, problems) = parse(Some(&a));
        assert_eq!(o.mirror, None);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("mirror-target") && problems[0].contains("ftp://x/"));
        assert!(problems[1].contains("no usable mirror-target"));
        // A bad companion falls back to its default.
        let a = annotations(&[
            ("nginx.ingress.kubernetes.io/mirror-target", "http://x/"),
            ("nginx.ingress.kubernetes.io/mirror-request-body", "maybe"),
        ]);
        let (o, problems) = parse(Some(&a));
        assert!(o.mirror.unwrap().body);
        assert!(problems[0].contains("not on or off"), "{problems:?}");
    }

    #[test]
    fn config_map_annotations() {
        let a = annotations(&[
            ("nginx.ingress.kubernetes.io/custom-headers", "web/headers"),
            ("nginx.ingress.kubernetes.io/auth-url", "http://auth/check"),
            (
                "nginx.ingress.kubernetes.io/auth-proxy-set-headers",
                "auth-headers",
            ),
        ]);
        let (o, problems) = parse(Some(&a));
        assert_eq!(problems, Vec::<String>::new());
        assert_eq!(
            o.custom_headers,
            Some((Some("web".into()), "headers".into()))
        );
        assert_eq!(
            o.auth.unwrap().proxy_set_headers,
            Some((None, "auth-headers".into()))
        );
        // Without auth-url: reported with it; a bad name fails the auth closed.
        let a = annotations(&[("nginx.ingress.kubernetes.io/auth-proxy-set-headers", "x")]);
        let (o, problems) = parse(Some(&a));
        assert!(o.deny.is_none() && problems[0].contains("no usable auth-url"));
        let a = annotations(&[
            ("nginx.ingress.kubernetes.io/auth-url", "http://auth/check"),
            (
                "nginx.ingress.kubernetes.io/auth-proxy-set-headers",
                "a/b/c",
            ),
        ]);
        let (o, problems) = parse(Some(&a));
        assert!(o.deny.is_some() && problems[0].contains("not a ConfigMap name"));
    }

    #[test]
    fn unknown_and_snippet_annotations_are_reported() {
        let a = annotations(&[
            (
                "nginx.ingress.kubernetes.io/configuration-snippet",
                "more_set_headers x",
            ),
            ("nginx.ingress.kubernetes.io/mirror-uri", "/mirror"),
            ("ingress.lb.dev/colour", "blue"),
        ]);
        let (o, problems) = parse(Some(&a));
        assert_eq!(o, RouteOptions::default());
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("configuration-snippet") && p.contains("never"))
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("mirror-uri") && p.contains("not supported"))
        );
        assert!(problems.iter().any(|p| p.contains("ingress.lb.dev/colour")));
        // nginx's buffering knobs have nothing to configure here: not problems.
        let a = annotations(&[
            ("nginx.ingress.kubernetes.io/proxy-buffering", "off"),
            ("nginx.ingress.kubernetes.io/proxy-request-buffering", "off"),
        ]);
        assert_eq!(parse(Some(&a)), (RouteOptions::default(), Vec::new()));
    }

    #[test]
    fn cookie_affinity_and_its_attributes() {
        let a = annotations(&[
            ("nginx.ingress.kubernetes.io/affinity", "cookie"),
            ("nginx.ingress.kubernetes.io/affinity-mode", "persistent"),
            ("nginx.ingress.kubernetes.io/session-cookie-name", "route"),
            ("nginx.ingress.kubernetes.io/session-cookie-path", "/app"),
            (
                "nginx.ingress.kubernetes.io/session-cookie-max-age",
                "172800",
            ),
            ("nginx.ingress.kubernetes.io/session-cookie-samesite", "lax"),
            ("nginx.ingress.kubernetes.io/session-cookie-expires", "3600"),
            (
                "nginx.ingress.kubernetes.io/session-cookie-domain",
                ".Shop.example",
            ),
            ("nginx.ingress.kubernetes.io/session-cookie-secure", "true"),
            (
                "nginx.ingress.kubernetes.io/session-cookie-change-on-failure",
                "false",
            ),
        ]);
        let (o, problems) = parse(Some(&a));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            o.affinity,
            Some(CookieAffinity {
                name: "route".into(),
                path: Some("/app".into()),
                max_age: Some(172_800),
                expires: Some(3600),
                domain: Some(".shop.example".into()),
                same_site: Some("Lax"),
                secure: true,
                change_on_failure: false,
            })
        );
        // Defaults, and attributes without affinity or with bad values are reported.
        let a = annotations(&[("nginx.ingress.kubernetes.io/affinity", "cookie")]);
        assert_eq!(parse(Some(&a)).0.affinity, Some(CookieAffinity::default()));
        let a = annotations(&[("nginx.ingress.kubernetes.io/session-cookie-name", "x")]);
        let (o, problems) = parse(Some(&a));
        assert_eq!(o.affinity, None);
        assert!(problems[0].contains("no affinity"), "{problems:?}");
        // One problem per annotation: the refused mode, and the attribute it orphans.
        let a = annotations(&[
            ("nginx.ingress.kubernetes.io/affinity", "ip"),
            ("ingress.lb.dev/session-cookie-name", "a b"),
        ]);
        let (o, problems) = parse(Some(&a));
        assert_eq!(o.affinity, None);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("only \"cookie\""), "{problems:?}");
        assert!(problems[1].contains("session-cookie-name: there is no affinity"));
        // A bad attribute of a working affinity is reported and left at its default.
        let a = annotations(&[
            ("nginx.ingress.kubernetes.io/affinity", "cookie"),
            ("nginx.ingress.kubernetes.io/session-cookie-name", "a b"),
        ]);
        let (o, problems) = parse(Some(&a));
        assert_eq!(o.affinity, Some(CookieAffinity::default()));
        assert!(problems[0].contains("is not a cookie name"), "{problems:?}");
        // Ours only: rewrite-prefix under ingress-nginx's prefix is not read.
        let a = annotations(&[("nginx.ingress.kubernetes.io/rewrite-prefix", "/")]);
        let (o, problems) = parse(Some(&a));
        assert_eq!(o.rewrite_prefix, None);
        assert!(problems[0].contains("ours is ingress.lb.dev/rewrite-prefix"));
    }

    #[test]
    fn regex_paths_and_rewrite_targets() {
        let a = annotations(&[
            ("nginx.ingress.kubernetes.io/use-regex", "true"),
            ("nginx.ingress.kubernetes.io/rewrite-target", "/$2"),
        ]);
        let (o, problems) = parse(Some(&a));
        assert!(problems.is_empty(), "{problems:?}");
        assert!(o.use_regex);
        assert_eq!(
            o.rewrite_target.as_ref().map(RewriteTarget::as_str),
            Some("/$2")
        );
        // A rewrite-target alone puts the host under regexes, unless it is the path.
        let a = annotations(&[("nginx.ingress.kubernetes.io/rewrite-target", "/")]);
        let (o, _) = parse(Some(&a));
        assert!(o.wants_regex("/app"));
        assert!(!o.wants_regex("/"));
        assert!(!RouteOptions::default().wants_regex("/app"));
        // It decides what reaches the upstream: a bad one fails closed.
        let a = annotations(&[("nginx.ingress.kubernetes.io/rewrite-target", "http://x/$1")]);
        let (o, problems) = parse(Some(&a));
        assert!(o.deny.is_some());
        assert!(problems[0].contains("503"), "{problems:?}");
        // Ours, rewrite-prefix, wins over it.
        let a = annotations(&[
            ("ingress.lb.dev/rewrite-prefix", "/"),
            ("nginx.ingress.kubernetes.io/rewrite-target", "/$1"),
        ]);
        let (o, problems) = parse(Some(&a));
        assert_eq!(
            (o.rewrite_prefix.as_deref(), o.rewrite_target),
            (Some("/"), None)
        );
        assert!(
            problems[0].contains("rewrite-prefix is set too"),
            "{problems:?}"
        );
    }

    #[test]
    fn rate_limits_per_second_win_over_per_minute() {
        let a = annotations(&[
            ("nginx.ingress.kubernetes.io/limit-rpm", "600"),
            ("nginx.ingress.kubernetes.io/limit-rps", "20"),
            ("nginx.ingress.kubernetes.io/limit-whitelist", "10.0.0.0/8"),
        ]);
        let (o, problems) = parse(Some(&a));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(o.rate, Some(Rate::per(20, Duration::from_secs(1), 5)));
        assert_eq!(o.rate.unwrap().burst, 100);
        assert!(o.rate_exempt("::ffff:10.1.1.1".parse().unwrap()));
        let a = annotations(&[
            ("nginx.ingress.kubernetes.io/limit-rpm", "60"),
            ("nginx.ingress.kubernetes.io/limit-burst-multiplier", "1"),
        ]);
        let rate = parse(Some(&a)).0.rate.unwrap();
        assert_eq!((rate.interval, rate.burst), (Duration::from_secs(1), 60));
        let a = annotations(&[("nginx.ingress.kubernetes.io/limit-rps", "0")]);
        let (o, problems) = parse(Some(&a));
        assert_eq!(o.rate, None);
        assert_eq!(problems.len(), 1);
    }

    #[test]
    fn cors_origins() {
        let a = annotations(&[
            ("nginx.ingress.kubernetes.io/enable-cors", "true"),
            (
                "nginx.ingress.kubernetes.io/cors-allow-origin",
                "https://a.example, https://*.b.example:8443",
            ),
            (
                "nginx.ingress.kubernetes.io/cors-allow-credentials",
                "false",
            ),
        ]);
        let (o, problems) = parse(Some(&a));
        assert!(problems.is_empty(), "{problems:?}");
        let cors = o.cors.unwrap();
        assert!(!cors.credentials);
        assert_eq!(
            cors.allow_origin(Some("https://A.example")),
            Some("https://A.example")
        );
        assert_eq!(
            cors.allow_origin(Some("https://x.b.example:8443")),
            Some("https://x.b.example:8443")
        );
        assert_eq!(cors.allow_origin(Some("https://b.example:8443")), None);
        assert_eq!(cors.allow_origin(Some("https://x.b.example")), None);
        assert_eq!(cors.allow_origin(Some("http://a.example")), None);
        assert_eq!(cors.allow_origin(None), None);
        assert_eq!(Cors::default().allow_origin(None), Some("*"));
        // Settings without enable-cors are reported.
        let a = annotations(&[("nginx.ingress.kubernetes.io/cors-max-age", "5")]);
        let (o, problems) = parse(Some(&a));
        assert_eq!(o.cors, None);
        assert!(problems[0].contains("enable-cors"), "{problems:?}");
    }

    #[test]
    fn canary_policy() {
        let a = annotations(&[
            ("nginx.ingress.kubernetes.io/canary", "true"),
            ("nginx.ingress.kubernetes.io/canary-weight", "150"),
            ("nginx.ingress.kubernetes.io/canary-weight-total", "1000"),
            ("nginx.ingress.kubernetes.io/canary-by-header", "X-Canary"),
        ]);
        let (o, problems) = parse(Some(&a));
        assert!(problems.is_empty(), "{problems:?}");
        let p = o.canary.unwrap();
        assert_eq!((p.weight, p.weight_total), (150, 1000));
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = hyper::HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, hyper::header::HeaderValue::from_static(v));
            }
            h
        };
        assert!(p.selects(&headers(&[("x-canary", "always")])));
        assert!(!p.selects(&headers(&[("x-canary", "never")])));
        // Weight 100 of 100 always, 0 never.
        let all = CanaryPolicy {
            weight: 100,
            ..CanaryPolicy::default()
        };
        assert!((0..50).all(|_| all.selects(&hyper::HeaderMap::new())));
        let none = CanaryPolicy::default();
        assert!((0..50).all(|_| !none.selects(&hyper::HeaderMap::new())));
        // Canary settings without canary: "true" are reported.
        let a = annotations(&[("nginx.ingress.kubernetes.io/canary-weight", "5")]);
        let (o, problems) = parse(Some(&a));
        assert_eq!(o.canary, None);
        assert!(problems[0].contains("canary is not"), "{problems:?}");
    }

    #[test]
    fn auth_cache_settings() {
        let url = ("auth-url", "https://auth.example/check");
        // ingress-nginx's default duration when only the key is set.
        let (o, problems) = parse_nginx(&[url, ("auth-cache-key", "$http_authorization")]);
        assert!(problems.is_empty(), "{problems:?}");
        let cache = o.auth.unwrap().cache.unwrap();
        assert_eq!(
            cache.valid,
            CachePolicy::parse_valid(CachePolicy::DEFAULT_VALID).unwrap()
        );
        let (o, problems) = parse_nginx(&[
            url,
            ("auth-cache-key", "$cookie_session$host"),
            ("auth-cache-duration", "200 30s, 401 5s"),
        ]);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(o.auth.unwrap().cache.unwrap().valid.len(), 2);
        // A duration without a key, a key that does not parse: reported, no cache.
        for pairs in [
            &[url, ("auth-cache-duration", "200 30s")][..],
            &[url, ("auth-cache-key", "$request_body")],
        ] {
            let (o, problems) = parse_nginx(pairs);
            assert!(o.auth.unwrap().cache.is_none(), "{pairs:?}");
            assert!(!problems.is_empty(), "{pairs:?}");
            assert_eq!(o.deny, None);
        }
        // A bad duration falls back to the default.
        let (o, problems) = parse_nginx(&[
            url,
            ("auth-cache-key", "$http_authorization"),
            ("auth-cache-duration", "soon"),
        ]);
        assert!(problems[0].contains("default applies"), "{problems:?}");
        assert!(o.auth.unwrap().cache.is_some());
    }

    #[test]
    fn ssl_passthrough() {
        let a = |v: &str| parse_nginx(&[("ssl-passthrough", v)]);
        let (o, problems) = a("true");
        assert!(o.ssl_passthrough && problems.is_empty(), "{problems:?}");
        let (o, problems) = a("yes please");
        assert!(!o.ssl_passthrough);
        assert!(problems[0].contains("not a boolean"), "{problems:?}");
    }

    #[test]
    fn basic_auth_and_client_certificates() {
        let (o, problems) = parse_nginx(&[
            ("auth-type", "basic"),
            ("auth-secret", "auth/staff"),
            ("auth-realm", "Staff"),
            ("auth-secret-type", "auth-file"),
        ]);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            o.basic_auth,
            Some(BasicAuthSpec {
                namespace: Some("auth".into()),
                name: "staff".into(),
                realm: "Staff".into(),
                map: false,
            })
        );
        assert_eq!(o.deny, None);
        // The Ingress's own namespace by default; the realm empty, as ingress-nginx's.
        let (o, _) = parse_nginx(&[("auth-type", "basic"), ("auth-secret", "staff")]);
        let spec = o.basic_auth.unwrap();
        assert_eq!(
            (spec.namespace, spec.realm.as_str(), spec.map),
            (None, "", false)
        );
        let (o, problems) = parse_nginx(&[
            ("auth-type", "basic"),
            ("auth-secret", "staff"),
            ("auth-secret-type", "auth-map"),
        ]);
        assert!(problems.is_empty(), "{problems:?}");
        assert!(o.basic_auth.unwrap().map);
        // What cannot be honoured fails closed: no Secret, digest, another Secret type,
        // client certificate settings that do not parse.
        for pairs in [
            &[("auth-type", "basic")][..],
            &[("auth-type", "digest"), ("auth-secret", "s")],
            &[
                ("auth-type", "basic"),
                ("auth-secret", "s"),
                ("auth-secret-type", "auth-list"),
            ],
            &[
                ("auth-tls-secret", "default/ca"),
                ("auth-tls-verify-client", "always"),
            ],
            &[("auth-tls-secret", "default/")],
            &[("auth-tls-secret", "ca"), ("auth-tls-verify-depth", "0")],
            &[("auth-tls-secret", "ca"), ("auth-tls-match-cn", "alice")],
            &[("auth-tls-secret", "ca"), ("auth-tls-match-cn", "CN=(")],
        ] {
            let (o, problems) = parse_nginx(pairs);
            assert!(o.deny.is_some(), "{pairs:?}");
            assert!(problems[0].contains("503"), "{pairs:?}: {problems:?}");
        }
        // Companions without auth-type are reported, and deny nothing.
        let (o, problems) = parse_nginx(&[("auth-secret", "s")]);
        assert_eq!((o.basic_auth, o.deny), (None, None));
        assert!(problems[0].contains("no usable auth-type"), "{problems:?}");
        // Client certificates explicitly off: nothing to enforce, the rest reported.
        let (o, problems) = parse_nginx(&[
            ("auth-tls-secret", "default/ca"),
            ("auth-tls-verify-client", "off"),
            ("auth-tls-verify-depth", "2"),
        ]);
        assert_eq!((o.deny, o.client_cert), (None, None));
        assert!(problems[0].contains("is off; ignored"), "{problems:?}");
        // Client certificates: ingress-nginx's defaults (on, depth 1) and every setting.
        let (o, problems) = parse_nginx(&[("auth-tls-secret", "default/ca")]);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            o.client_cert,
            Some(ClientCertSpec {
                namespace: Some("default".into()),
                name: "ca".into(),
                verify: VerifyClient::On,
                depth: 1,
                error_page: None,
                pass_certificate: false,
                match_cn: None,
            })
        );
        let (o, problems) = parse_nginx(&[
            ("auth-tls-secret", "ca"),
            ("auth-tls-verify-client", "optional_no_ca"),
            ("auth-tls-verify-depth", "3"),
            ("auth-tls-error-page", "https://example.com/cert-help"),
            ("auth-tls-pass-certificate-to-upstream", "true"),
            ("auth-tls-match-cn", "CN=^(alice|bob)$"),
        ]);
        assert!(problems.is_empty(), "{problems:?}");
        let spec = o.client_cert.unwrap();
        assert_eq!(
            (
                spec.namespace,
                spec.verify,
                spec.depth,
                spec.pass_certificate
            ),
            (None, VerifyClient::OptionalNoCa, 3, true)
        );
        assert_eq!(
            spec.error_page.as_deref(),
            Some("https://example.com/cert-help")
        );
        assert!(spec.match_cn.unwrap().0.is_match("bob"));
        assert_eq!(o.deny, None);
    }

    #[test]
    fn limit_rate_in_kilobytes() {
        let rate = |pairs: &[(&str, &str)]| {
            let a: Vec<(String, &str)> = pairs
                .iter()
                .map(|(k, v)| (format!("nginx.ingress.kubernetes.io/{k}"), *v))
                .collect();
            let a: Vec<(&str, &str)> = a.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            parse(Some(&annotations(&a)))
        };
        let (o, problems) = rate(&[("limit-rate", "100"), ("limit-rate-after", "512")]);
        assert!(problems.is_empty(), "{problems:?}");
        let want = ResponseRate {
            per_sec: 102_400,
            after: 524_288,
        };
        assert_eq!(o.limit_rate, Some(want));
        assert_eq!(rate(&[("limit-rate", "8")]).0.limit_rate.unwrap().after, 0);
        // 0 is nginx's "no limit"; after alone paces nothing.
        assert_eq!(rate(&[("limit-rate", "0")]).0.limit_rate, None);
        assert_eq!(rate(&[("limit-rate-after", "10")]).0.limit_rate, None);
        let (o, problems) = rate(&[("limit-rate", "fast")]);
        assert_eq!(o.limit_rate, None);
        assert!(problems[0].contains("limit-rate"), "{problems:?}");
    }

    #[test]
    fn load_balance_methods() {
        let lb = |v: &str| {
            let a = annotations(&[("nginx.ingress.kubernetes.io/load-balance", v)]);
            parse(Some(&a))
        };
        assert_eq!(lb("round_robin").0.load_balance, Balance::RoundRobin);
        assert_eq!(lb("ewma").0.load_balance, Balance::Ewma);
        assert_eq!(parse(None).0.load_balance, Balance::LeastRequest);
        // ingress-nginx dropped least_conn; chash is upstream-hash-by.
        for bad in ["least_conn", "chash", "EWMA", ""] {
            let (o, problems) = lb(bad);
            assert_eq!(o.load_balance, Balance::LeastRequest, "{bad:?}");
            assert!(
                problems.len() == 1 && problems[0].contains("load-balance"),
                "{bad:?}: {problems:?}"
            );
        }
    }

    #[test]
    fn upstream_hash_by_keys() {
        let uri: hyper::Uri = "/a/../cart?id=7&x=1".parse().unwrap();
        let mut headers = hyper::HeaderMap::new();
        headers.insert("x-user", hyper::header::HeaderValue::from_static("alice"));
        headers.insert(
            "cookie",
            hyper::header::HeaderValue::from_static("s=1; sid=abc"),
        );
        // bob:secret
        headers.insert(
            "authorization",
            hyper::header::HeaderValue::from_static("Basic Ym9iOnNlY3JldA=="),
        );
        let input = |client: Option<IpAddr>| KeyInput {
            uri: &uri,
            headers: &headers,
            path: "/cart",
            host: "shop.example",
            client,
        };
        let fnv = |s: &str| {
            s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
            })
        };
        for (template, expanded) in [
            ("$request_uri", "/a/../cart?id=7&x=1"),
            ("$uri", "/cart"),
            ("$args", "id=7&x=1"),
            ("$host$uri", "shop.example/cart"),
            ("$http_x_user", "alice"),
            ("user-${http_x_user}-x", "user-alice-x"),
            ("$cookie_sid", "abc"),
            ("$arg_id", "7"),
            ("$arg_nope|$http_nope", "|"),
            ("$remote_user:$uri", "bob:/cart"),
        ] {
            let key = HashKey::parse(template).unwrap();
            assert!(!key.needs_client());
            assert_eq!(key.hash(&input(None)), fnv(expanded), "{template}");
        }
        let key = HashKey::parse("$remote_addr").unwrap();
        assert!(key.needs_client());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(key.hash(&input(Some(ip))), fnv("192.0.2.1"));
        // No Basic credentials: $remote_user is empty.
        let mut bearer = headers.clone();
        bearer.insert(
            "authorization",
            hyper::header::HeaderValue::from_static("Bearer Ym9iOnNlY3JldA=="),
        );
        let key = HashKey::parse("$remote_user$uri").unwrap();
        let without = KeyInput {
            headers: &bearer,
            ..input(None)
        };
        assert_eq!(key.expand(&without), b"/cart");
        for bad in ["$server_name", "constant", "$http_", "${uri"] {
            assert!(HashKey::parse(bad).is_err(), "{bad}");
        }
        // A bad key is reported and balancing goes on as without it.
        let a = annotations(&[("nginx.ingress.kubernetes.io/upstream-hash-by", "$pid")]);
        let (o, problems) = parse(Some(&a));
        assert_eq!((o.hash_by, o.deny), (None, None));
        assert!(
            problems[0].contains("balanced as without it"),
            "{problems:?}"
        );
    }

    #[test]
    fn upstream_hash_by_subsets() {
        let n = |k: &str| format!("nginx.ingress.kubernetes.io/{k}");
        let parsed = |pairs: &[(String, &str)]| {
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            let (o, problems) = parse(Some(&annotations(&pairs)));
            (o.hash_by.is_some(), o.hash_subset, problems)
        };
        let key = (n("upstream-hash-by"), "$arg_id");
        let on = (n("upstream-hash-by-subset"), "true");
        let size = (n("upstream-hash-by-subset-size"), "4");
        assert_eq!(parsed(&[key.clone(), on.clone()]), (true, Some(3), vec![]));
        assert_eq!(
            parsed(&[key.clone(), on.clone(), size.clone()]),
            (true, Some(4), vec![])
        );
        // The size without the switch, the switch without a key, a bad size: reported.
        let (hash, subset, problems) = parsed(&[key.clone(), size.clone()]);
        assert_eq!((hash, subset), (true, None));
        assert!(problems[0].contains("subset is not true"), "{problems:?}");
        let (hash, subset, problems) = parsed(std::slice::from_ref(&on));
        assert_eq!((hash, subset), (false, None));
        assert!(
            problems[0].contains("no usable upstream-hash-by"),
            "{problems:?}"
        );
        let zero = (n("upstream-hash-by-subset-size"), "0");
        let (_, subset, problems) = parsed(&[key, on, zero]);
        assert_eq!(subset, Some(3));
        assert!(problems[0].contains("positive"), "{problems:?}");
    }

    #[test]
    fn next_upstream_conditions() {
        let n = NextUpstream::parse("error timeout http_502 http_503 non_idempotent").unwrap();
        assert!(n.error && n.timeout && n.non_idempotent);
        assert_eq!(n.statuses, [502, 503]);
        let n = NextUpstream::parse("invalid_header").unwrap();
        assert!(n.error && !n.timeout);
        // off: nothing goes on, whatever else is listed.
        let n = NextUpstream::parse("error off").unwrap();
        assert!(!n.error && !n.timeout && n.statuses.is_empty());
        for bad in ["", "http_418", "sometimes"] {
            assert!(NextUpstream::parse(bad).is_err(), "{bad}");
        }
        let a = annotations(&[(
            "nginx.ingress.kubernetes.io/proxy-next-upstream",
            "http_500",
        )]);
        let (o, problems) = parse(Some(&a));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(o.next_upstream.unwrap().statuses, [500]);
    }

    #[test]
    fn custom_http_errors_need_a_default_backend() {
        let nginx = |k: &str| format!("nginx.ingress.kubernetes.io/{k}");
        let a: BTreeMap<String, String> = [
            (nginx("default-backend"), "pages".to_owned()),
            (nginx("custom-http-errors"), "404, 503,".to_owned()),
        ]
        .into_iter()
        .collect();
        let (o, problems) = parse(Some(&a));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(o.custom_errors, [404, 503]);
        let a = annotations(&[("nginx.ingress.kubernetes.io/custom-http-errors", "404")]);
        let (o, problems) = parse(Some(&a));
        assert!(o.custom_errors.is_empty());
        assert!(
            problems[0].contains("needs default-backend"),
            "{problems:?}"
        );
        let a = annotations(&[
            ("nginx.ingress.kubernetes.io/default-backend", "pages"),
            ("nginx.ingress.kubernetes.io/custom-http-errors", "200"),
        ]);
        assert!(parse(Some(&a)).1[0].contains("not an error status"));
    }

    #[test]
    fn proxy_redirect_needs_both_ends() {
        let a = annotations(&[
            (
                "nginx.ingress.kubernetes.io/proxy-redirect-from",
                "http://app/",
            ),
            (
                "nginx.ingress.kubernetes.io/proxy-redirect-to",
                "https://shop.example/",
            ),
        ]);
        let (o, problems) = parse(Some(&a));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            o.redirect_rewrite,
            Some(("http://app/".into(), "https://shop.example/".into()))
        );
        let a = annotations(&[(
            "nginx.ingress.kubernetes.io/proxy-redirect-from",
            "http://app/",
        )]);
        let (o, problems) = parse(Some(&a));
        assert_eq!(o.redirect_rewrite, None);
        assert!(problems[0].contains("both are needed"), "{problems:?}");
        let a = annotations(&[("nginx.ingress.kubernetes.io/proxy-redirect-from", "off")]);
        assert_eq!(parse(Some(&a)), (RouteOptions::default(), Vec::new()));
        // The cookie rewrites are "from to", or off.
        let a = annotations(&[
            ("nginx.ingress.kubernetes.io/proxy-cookie-path", "/app/ /"),
            ("nginx.ingress.kubernetes.io/proxy-cookie-domain", "off"),
        ]);
        let (o, problems) = parse(Some(&a));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(o.cookie_path, Some(("/app/".into(), "/".into())));
        assert_eq!(o.cookie_domain, None);
        let a = annotations(&[("nginx.ingress.kubernetes.io/proxy-cookie-path", "/app/")]);
        assert!(parse(Some(&a)).1[0].contains("is not \"from to\""));
    }

    #[test]
    fn canary_by_header_pattern() {
        let nginx = |k: &str| format!("nginx.ingress.kubernetes.io/{k}");
        let policy = |extra: &[(&str, &str)]| {
            let mut pairs = vec![
                (nginx("canary"), "true".to_owned()),
                (nginx("canary-by-header"), "X-User".to_owned()),
            ];
            pairs.extend(extra.iter().map(|(k, v)| (nginx(k), (*v).to_owned())));
            let a: BTreeMap<String, String> = pairs.into_iter().collect();
            parse(Some(&a))
        };
        let user = |v: &'static str| {
            let mut h = hyper::HeaderMap::new();
            h.insert("x-user", hyper::header::HeaderValue::from_static(v));
            h
        };
        let (o, problems) = policy(&[("canary-by-header-pattern", "^(alice|bob)@corp")]);
        assert!(problems.is_empty(), "{problems:?}");
        let p = o.canary.unwrap();
        assert!(p.selects(&user("alice@corp.example")));
        assert!(!p.selects(&user("carol@corp.example")));
        // With a pattern, "always" is just a value that does not match.
        assert!(!p.selects(&user("always")));
        // Unanchored, case-sensitive: as ngx.re.match without options.
        let (o, _) = policy(&[("canary-by-header-pattern", "beta")]);
        let p = o.canary.unwrap();
        assert!(p.selects(&user("x-beta-1")));
        assert!(!p.selects(&user("BETA")));
        // A value wins over a pattern (reported); a bad pattern is reported.
        let (o, problems) = policy(&[
            ("canary-by-header-value", "yes"),
            ("canary-by-header-pattern", ".*"),
        ]);
        assert!(o.canary.unwrap().header_pattern.is_none());
        assert!(
            problems[0].contains("canary-by-header-value is set"),
            "{problems:?}"
        );
        let (o, problems) = policy(&[("canary-by-header-pattern", "a(?=b)")]);
        assert!(o.canary.unwrap().header_pattern.is_none());
        assert!(
            problems[0].contains("not a regular expression"),
            "{problems:?}"
        );
    }

    #[test]
    fn redirects_upstream_host_tries_and_access_log() {
        let a = annotations(&[
            (
                "nginx.ingress.kubernetes.io/permanent-redirect",
                "https://a.example/x",
            ),
            (
                "nginx.ingress.kubernetes.io/temporal-redirect",
                "https://b.example/",
            ),
            ("nginx.ingress.kubernetes.io/temporal-redirect-code", "307"),
            ("nginx.ingress.kubernetes.io/upstream-vhost", "api.internal"),
            ("nginx.ingress.kubernetes.io/proxy-next-upstream-tries", "1"),
            ("nginx.ingress.kubernetes.io/enable-access-log", "false"),
        ]);
        let (o, problems) = parse(Some(&a));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            o.redirect,
            Some((
                hyper::StatusCode::TEMPORARY_REDIRECT,
                "https://b.example/".into()
            ))
        );
        assert_eq!(o.upstream_host.unwrap(), "api.internal");
        assert_eq!(o.max_retries, Some(0));
        assert_eq!(o.access_log, Some(false));
        let a = annotations(&[
            (
                "nginx.ingress.kubernetes.io/permanent-redirect",
                "https://a.example/x",
            ),
            ("nginx.ingress.kubernetes.io/proxy-next-upstream-tries", "0"),
        ]);
        let o = parse(Some(&a)).0;
        assert_eq!(
            o.redirect,
            Some((
                hyper::StatusCode::MOVED_PERMANENTLY,
                "https://a.example/x".into()
            ))
        );
        assert_eq!(o.max_retries, Some(u32::MAX));
        for (k, v) in [
            ("permanent-redirect", "/relative"),
            ("permanent-redirect-code", "200"),
            ("upstream-vhost", "a b"),
        ] {
            let key = format!("nginx.ingress.kubernetes.io/{k}");
            let a = annotations(&[(key.as_str(), v)]);
            let (o, problems) = parse(Some(&a));
            assert_eq!(o.redirect, None);
            assert_eq!(problems.len(), 1, "{k}: {problems:?}");
        }
    }

    /// The migration example parses without a single problem (it says so).
    #[test]
    fn the_migration_example_is_all_supported() {
        let text = include_str!("../../../examples/ingress-nginx-migration/ingress.yaml");
        let mut ingresses = 0;
        for doc in serde_yaml::Deserializer::from_str(text) {
            let ingress: k8s_openapi::api::networking::v1::Ingress =
                serde::Deserialize::deserialize(doc).unwrap();
            let (options, problems) = parse(ingress.metadata.annotations.as_ref());
            assert!(
                problems.is_empty(),
                "{:?}: {problems:?}",
                ingress.metadata.name
            );
            assert_eq!(options.deny, None);
            ingresses += 1;
        }
        assert_eq!(ingresses, 5);
    }

    #[test]
    fn satisfy_is_all_unless_any() {
        let key = "nginx.ingress.kubernetes.io/satisfy";
        let (o, problems) = parse(Some(&annotations(&[(key, "any")])));
        assert!(o.satisfy_any && problems.is_empty(), "{problems:?}");
        let (o, problems) = parse(Some(&annotations(&[(key, "all")])));
        assert!(!o.satisfy_any && problems.is_empty(), "{problems:?}");
        // Anything else is reported and the stricter `all` applies.
        let (o, problems) = parse(Some(&annotations(&[(key, "either")])));
        assert!(!o.satisfy_any);
        assert!(problems[0].contains("`all` applies"), "{problems:?}");
        assert_eq!(o.deny, None);
    }

    #[test]
    fn upstream_verification_needs_a_secret() {
        let a = annotations(&[
            ("nginx.ingress.kubernetes.io/proxy-ssl-verify", "on"),
            (
                "nginx.ingress.kubernetes.io/proxy-ssl-secret",
                "certs/upstream-ca",
            ),
            ("nginx.ingress.kubernetes.io/proxy-ssl-name", "api.internal"),
            ("nginx.ingress.kubernetes.io/proxy-ssl-server-name", "on"),
        ]);
        let (o, problems) = parse(Some(&a));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            o.proxy_ssl,
            Some(ProxySsl {
                secret: ("certs".into(), "upstream-ca".into()),
                verify: true,
                name: Some("api.internal".into()),
                sni: true,
            })
        );
        // Verification without a CA to verify against fails closed.
        for secret in [None, Some("no-namespace")] {
            let mut pairs = vec![("nginx.ingress.kubernetes.io/proxy-ssl-verify", "on")];
            if let Some(s) = secret {
                pairs.push(("nginx.ingress.kubernetes.io/proxy-ssl-secret", s));
            }
            let (o, problems) = parse(Some(&annotations(&pairs)));
            assert_eq!(o.proxy_ssl, None);
            assert!(o.deny.is_some(), "{secret:?}");
            assert_eq!(problems.len(), 1, "{problems:?}");
        }
        // A Secret without verification: its client certificate, nothing verified.
        let a = annotations(&[("nginx.ingress.kubernetes.io/proxy-ssl-secret", "a/b")]);
        let (o, problems) = parse(Some(&a));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            o.proxy_ssl,
            Some(ProxySsl {
                secret: ("a".into(), "b".into()),
                verify: false,
                name: None,
                sni: false,
            })
        );
        // Neither: the companions are named as ignored.
        let a = annotations(&[("nginx.ingress.kubernetes.io/proxy-ssl-name", "a.internal")]);
        let (o, problems) = parse(Some(&a));
        assert_eq!((o.proxy_ssl, o.deny), (None, None));
        assert!(
            problems[0].contains("there is no proxy-ssl-secret"),
            "{problems:?}"
        );
    }
}
