//! Header rewriting between client and upstream: hop-by-hop headers removed (RFC 9110
//! section 7.6.1), X-Forwarded-For/-Proto/-Host and Forwarded (RFC 7239) set, incoming
//! ones kept only from trusted proxies.
use std::net::IpAddr;

use hyper::HeaderMap;
use hyper::header::{self, HeaderName, HeaderValue};
use ipnet::IpNet;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// The path prefix a `rewrite-prefix` route took away (what Traefik and Spring call it).
pub static X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
/// The client's address (ingress-nginx sets it on every upstream request).
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// A request's id, kept from the client or made here (ingress-nginx's `$req_id`).
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A new request id: 128 random bits as 32 hex digits, as nginx's `$request_id`.
pub fn request_id() -> HeaderValue {
    let mut digits = [0u8; 32];
    hex::encode_to_slice(fastrand::u128(..).to_be_bytes(), &mut digits)
        .expect("16 bytes fill 32 digits");
    HeaderValue::from_bytes(&digits).expect("hex digits are a header value")
}
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one connection, not the message: never forwarded.
fn fixed_hop_by_hop() -> [&'static HeaderName; 7] {
    [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ]
}

/// Is this an HTTP/1.1 Upgrade request (`Connection: upgrade` and an `Upgrade` header)?
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && has_token(headers, &header::CONNECTION, "upgrade")
}

/// Does the request's `TE` name `trailers`?
pub fn te_has_trailers(headers: &HeaderMap) -> bool {
    has_token(headers, &header::TE, "trailers")
}

/// Does the comma-separated list header `name` hold `token` (case-insensitive,
/// parameters after `;` ignored, as in `TE: deflate;q=0.5`)?
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| t.split(';').next())
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers, including those named in `Connection`. With
/// `keep_upgrade`, `Upgrade` and `Connection: upgrade` stay (the tunnel is end to end).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names finds which of the fixed ones are there (most messages
    // carry none, or only `Connection: keep-alive`); only those are removed.
    let fixed = fixed_hop_by_hop();
    let mut present = [false; 7];
    for name in headers.keys() {
        if let Some(i) = fixed.iter().position(|h| *h == name) {
            present[i] = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    // Headers named by `Connection` (index 0), other than the fixed ones, which go
    // anyway: looked up by the token itself, so no allocation for a token that names
    // nothing present. The usual values (`keep-alive`, `close`) skip the scan.
    let plain = |v: &HeaderValue| {
        let v = v.as_bytes();
        v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
    };
    let connection = headers.get_all(header::CONNECTION);
    let named: Vec<HeaderName> = if present[0] && !connection.iter().all(plain) {
        connection
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !fixed.iter().any(|h| h.as_str().eq_ignore_ascii_case(t)))
            .filter(|t| headers.contains_key(*t))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect()
    } else {
        Vec::new()
    };
    for name in named {
        headers.remove(&name);
    }
    // `Upgrade` is index 6.
    let upgrade = (keep_upgrade && present[6])
        .then(|| headers.remove(header::UPGRADE))
        .flatten();
    for (name, there) in fixed.into_iter().zip(present) {
        if there {
            headers.remove(name);
        }
    }
    if let Some(u) = upgrade {
        headers.insert(header::UPGRADE, u);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Incoming forwarding headers are believed only from these networks.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(pub Vec<IpNet>);

impl TrustedProxies {
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 @ IpAddr::V4(_) => v4,
        };
        self.0.iter().any(|n| n.contains(&ip))
    }
}

/// The client's address: the peer's, or, when the peer is a trusted proxy, the
/// right-most `X-Forwarded-For` address that is not itself a trusted proxy (nginx's
/// `real_ip_recursive`). An entry that is not an address ends the walk at the hop
/// before it: nothing left of it can be believed.
pub fn client_addr(headers: &HeaderMap, peer: IpAddr, trusted: &TrustedProxies) -> IpAddr {
    let mut client = peer;
    if !trusted.trusts(peer) {
        return client;
    }
    let entries = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect::<Vec<_>>();
    for entry in entries.iter().rev() {
        let Ok(ip) = entry.trim().parse::<IpAddr>() else {
            break;
        };
        client = ip;
        if !trusted.trusts(ip) {
            break;
        }
    }
    client
}

/// The value of cookie `name` in the request's `Cookie` headers (the first one).
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then(|| v.trim_matches('"'))
        })
}

/// Whether `X-Forwarded-Proto` says the client spoke https (the last value, the one the
/// nearest proxy set). Believe it only from a trusted peer.
pub fn forwarded_https(headers: &HeaderMap) -> bool {
    headers
        .get_all(&X_FORWARDED_PROTO)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .next_back()
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
}

/// The `Forwarded` element this hop adds (RFC 7239): `for=...;host="...";proto=...`.
pub fn forwarded_element(peer: IpAddr, peer_s: &str, host: &str, proto: &str) -> String {
    let for_node = match peer {
        IpAddr::V4(_) => peer_s.to_owned(),
        IpAddr::V6(_) => format!("\"[{peer_s}]\""),
    };
    let quoted_host: String = host.chars().filter(|c| *c != '"' && *c != '\\').collect();
    format!("for={for_node};host=\"{quoted_host}\";proto={proto}")
}

/// The `Forwarded` value [`set_forwarded`] sets for a peer that is not trusted (`None`
/// when it is not a valid header value: then it sets none).
pub fn forwarded_value(peer: IpAddr, host: &str, proto: &str) -> Option<HeaderValue> {
    HeaderValue::try_from(forwarded_element(peer, &peer.to_string(), host, proto)).ok()
}

/// What [`set_forwarded`] does for a peer that is not trusted, from values that can be
/// made once per connection and shared by its requests: `xff` the peer's address,
/// `forwarded` from [`forwarded_value`], and `host` the request's authority as a header
/// value (`None` if it is not one).
pub fn set_forwarded_untrusted(
    headers: &mut HeaderMap,
    xff: &HeaderValue,
    forwarded: Option<&HeaderValue>,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    headers.insert(&X_FORWARDED_FOR, xff.clone());
    if let Some(v) = forwarded {
        headers.insert(header::FORWARDED, v.clone());
    }
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    match host {
        Some(v) => {
            headers.insert(&X_FORWARDED_HOST, v.clone());
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
}

/// Sets the forwarding headers for a request from `peer`. From a trusted peer the
/// chain is extended (`X-Forwarded-For: client, proxy1, peer`) and its -Proto/-Host
/// kept; from anyone else all of them are replaced by what this hop saw.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: IpAddr,
    trusted: bool,
    proto: &'static str,
    host: &str,
) {
    let peer_s = peer.to_string();
    let joined = |headers: &HeaderMap, name: &HeaderName| -> Option<String> {
        let parts: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    };
    let xff = match (trusted, joined(headers, &X_FORWARDED_FOR)) {
        (true, Some(prev)) => format!("{prev}, {peer_s}"),
        _ => peer_s.clone(),
    };
    let element = forwarded_element(peer, &peer_s, host, proto);
    let forwarded = match (trusted, joined(headers, &header::FORWARDED)) {
        (true, Some(prev)) => format!("{prev}, {element}"),
        _ => element,
    };
    let keep = |headers: &HeaderMap, name: &HeaderName| trusted && headers.contains_key(name);
    if let Ok(v) = HeaderValue::try_from(xff) {
        headers.insert(&X_FORWARDED_FOR, v);
    }
    if let Ok(v) = HeaderValue::try_from(forwarded) {
        headers.insert(header::FORWARDED, v);
    }
    if !keep(headers, &X_FORWARDED_PROTO) {
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !keep(headers, &X_FORWARDED_HOST) {
        match HeaderValue::try_from(host) {
            Ok(v) => {
                headers.insert(&X_FORWARDED_HOST, v);
            }
            Err(_) => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_32_lowercase_hex_digits_and_differ() {
        let ids: Vec<String> = (0..64)
            .map(|_| request_id().to_str().unwrap().to_owned())
            .collect();
        for id in &ids {
            assert_eq!(id.len(), 32, "{id}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{id}"
            );
        }
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }

    #[test]
    fn te_trailers_is_found_among_other_codings() {
        let te = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.append(header::TE, HeaderValue::from_static(v));
            te_has_trailers(&h)
        };
        assert!(te("trailers"));
        assert!(te("gzip, Trailers"));
        assert!(te("deflate;q=0.5, trailers"));
        assert!(!te("gzip"));
        assert!(!te_has_trailers(&HeaderMap::new()));
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "gzip"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn connection_tokens_are_matched_case_insensitively() {
        let mut h = map(&[
            ("connection", "Keep-Alive, X-Secret, close"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("close", "odd but named"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
        let mut h = map(&[("connection", "keep-alive"), ("x-kept", "yes")]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.len(), 1, "{h:?}");
    }

    #[test]
    fn upgrade_is_kept_for_tunnels() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn untrusted_peers_cannot_spoof_the_chain() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=6.6.6.6"),
        ]);
        set_forwarded(&mut h, "10.0.0.9".parse().unwrap(), false, "http", "a.com");
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.com");
        assert_eq!(h["forwarded"], "for=10.0.0.9;host=\"a.com\";proto=http");
    }

    #[test]
    fn the_untrusted_fast_path_sets_what_set_forwarded_sets() {
        for (peer, host, proto) in [
            ("10.0.0.9", "a.com", "http"),
            ("::1", "b.example:8443", "https"),
            ("192.168.1.1", "", "http"),
        ] {
            let peer: IpAddr = peer.parse().unwrap();
            let incoming = [
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-host", "evil"),
                ("forwarded", "for=6.6.6.6"),
                ("x-kept", "yes"),
            ];
            let mut slow = map(&incoming);
            set_forwarded(&mut slow, peer, false, proto, host);
            let mut fast = map(&incoming);
            set_forwarded_untrusted(
                &mut fast,
                &HeaderValue::try_from(peer.to_string()).unwrap(),
                forwarded_value(peer, host, proto).as_ref(),
                proto,
                HeaderValue::try_from(host).ok().as_ref(),
            );
            assert_eq!(slow, fast, "{peer} {host} {proto}");
        }
    }

    #[test]
    fn trusted_peers_extend_the_chain() {
        let trusted = TrustedProxies(vec!["10.0.0.0/8".parse().unwrap()]);
        let peer: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert!(trusted.trusts(peer));
        assert!(!trusted.trusts("192.168.0.1".parse().unwrap()));
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-proto", "https"),
        ]);
        set_forwarded(
            &mut h,
            "10.1.2.3".parse().unwrap(),
            true,
            "http",
            "a.com:8080",
        );
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "a.com:8080");
        let mut h = HeaderMap::new();
        set_forwarded(&mut h, "::1".parse().unwrap(), false, "https", "b");
        assert_eq!(h["forwarded"], "for=\"[::1]\";host=\"b\";proto=https");
    }

    #[test]
    fn the_client_address_is_believed_from_trusted_proxies_only() {
        let trusted = TrustedProxies(vec!["10.0.0.0/8".parse().unwrap()]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let h = map(&[
            ("x-forwarded-for", "6.6.6.6, 1.1.1.1"),
            ("x-forwarded-for", "10.9.9.9"),
        ]);
        // Through two trusted hops to the first address no trusted proxy vouches past.
        assert_eq!(client_addr(&h, ip("10.1.2.3"), &trusted), ip("1.1.1.1"));
        // An untrusted peer is the client, whatever it claims.
        assert_eq!(client_addr(&h, ip("2.2.2.2"), &trusted), ip("2.2.2.2"));
        // Garbage ends the walk at the last hop that could be believed.
        let h = map(&[("x-forwarded-for", "1.1.1.1, junk, 10.7.7.7")]);
        assert_eq!(client_addr(&h, ip("10.1.2.3"), &trusted), ip("10.7.7.7"));
        // No header: the trusted peer itself.
        assert_eq!(
            client_addr(&HeaderMap::new(), ip("10.1.2.3"), &trusted),
            ip("10.1.2.3")
        );
    }

    #[test]
    fn forwarded_proto_is_the_nearest_proxys() {
        assert!(forwarded_https(&map(&[("x-forwarded-proto", "HTTPS")])));
        assert!(forwarded_https(&map(&[(
            "x-forwarded-proto",
            "http, https"
        )])));
        assert!(!forwarded_https(&map(&[(
            "x-forwarded-proto",
            "https, http"
        )])));
        assert!(!forwarded_https(&HeaderMap::new()));
    }

    #[test]
    fn cookies_by_name() {
        let h = map(&[
            ("cookie", "a=1; route=00ff"),
            ("cookie", "route=second; b=\"q\""),
        ]);
        assert_eq!(cookie(&h, "route"), Some("00ff"));
        assert_eq!(cookie(&h, "b"), Some("q"));
        assert_eq!(cookie(&h, "rout"), None);
        assert_eq!(cookie(&HeaderMap::new(), "route"), None);
    }
}
