//! Host rules: exact names, and `*.` wildcards that cover exactly one DNS label
//! (`*.foo.com` matches `bar.foo.com`, not `foo.com` nor `baz.bar.foo.com`).
//! Names compare case-insensitively; the port of a Host header is not part of the name.

/// `spec.rules[].host` of an Ingress.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostRule {
    /// No host in the rule: every host.
    Any,
    /// `foo.bar.com`, lowercased.
    Exact(String),
    /// `*.bar.com`, stored as `bar.com`.
    Wildcard(String),
}

impl HostRule {
    pub fn parse(host: Option<&str>) -> HostRule {
        match host.map(str::trim) {
            None | Some("") => HostRule::Any,
            Some(h) => match h.strip_prefix("*.") {
                Some(suffix) => HostRule::Wildcard(suffix.to_ascii_lowercase()),
                None => HostRule::Exact(h.to_ascii_lowercase()),
            },
        }
    }

    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostRule::Any => true,
            HostRule::Exact(h) => h == host,
            HostRule::Wildcard(suffix) => wildcard_suffix(host).is_some_and(|s| s == suffix),
        }
    }

    /// The rule as written in the Ingress (`""` for any host), for logs and labels.
    pub fn label(&self) -> String {
        match self {
            HostRule::Any => String::new(),
            HostRule::Exact(h) => h.clone(),
            HostRule::Wildcard(s) => format!("*.{s}"),
        }
    }
}

/// For a host `a.b.c`, the part a one-label wildcard would have to cover: `b.c`.
/// `None` when the host has a single label (a wildcard never covers zero labels).
pub fn wildcard_suffix(host: &str) -> Option<&str> {
    let (first, rest) = host.split_once('.')?;
    (!first.is_empty() && !rest.is_empty()).then_some(rest)
}

/// The host name a request names: the Host header (HTTP/1.1) or the URI authority
/// (HTTP/2's `:authority`, or an absolute-form HTTP/1.1 target), port removed, trailing
/// dot removed, lowercased. IPv6 literals keep their brackets.
pub fn request_host(authority: &str) -> String {
    let host = if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => authority,
        }
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_covers_exactly_one_label() {
        let w = HostRule::parse(Some("*.foo.com"));
        assert!(w.matches("bar.foo.com"));
        assert!(!w.matches("foo.com"));
        assert!(!w.matches("baz.bar.foo.com"));
        assert!(!w.matches("barfoo.com"));
    }

    #[test]
    fn exact_hosts_are_case_insensitive_and_any_matches_all() {
        let e = HostRule::parse(Some("Foo.Bar.com"));
        assert!(e.matches(&request_host("foo.BAR.com:8080")));
        assert!(!e.matches("bar.com"));
        assert_eq!(HostRule::parse(None), HostRule::Any);
        assert_eq!(HostRule::parse(Some("")), HostRule::Any);
        assert!(HostRule::Any.matches("anything"));
    }

    #[test]
    fn request_host_drops_port_and_trailing_dot() {
        assert_eq!(request_host("example.com:443"), "example.com");
        assert_eq!(request_host("Example.COM."), "example.com");
        assert_eq!(request_host("[::1]:8080"), "[::1]");
        assert_eq!(request_host("127.0.0.1"), "127.0.0.1");
    }
}
