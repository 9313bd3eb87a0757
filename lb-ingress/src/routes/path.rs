//! Path rules: `pathType` Exact and Prefix as the Kubernetes API defines them.
//!
//! Prefix matching is element-wise on `/`-separated segments, case-sensitive, and a
//! trailing slash on the rule is ignored: `/foo` and `/foo/` both match `/foo`, `/foo/`
//! and `/foo/bar`, and neither matches `/foobar`. ImplementationSpecific is treated as
//! Prefix. The request path is the URI path only: the query string is never part of it.
//!
//! Rules match the request path *normalized* ([`normalize_request_path`]): percent-encoded
//! unreserved characters decoded, runs of slashes merged and `.`/`..` segments resolved,
//! as nginx does before it matches a location. The request still goes upstream with its
//! path exactly as the client sent it; normalizing only for the match means a route
//! decision agrees with what an upstream that normalizes the path itself will serve:
//! `/api/../admin` is routed as `/admin`, not sent to the `/api` backend, which would
//! read it as `/admin`. A path that climbs above the root is refused (400).
//!
//! Rule paths of type Exact and Prefix are checked as the API server checks them (no
//! `//`, `/./`, `/../`, `%2f`, no trailing `/.` or `/..`), which a manifests directory
//! would otherwise bypass; every rule path is normalized like a request path (escapes;
//! for ImplementationSpecific also slashes and dot segments), so that it can match one.
use std::borrow::Cow;
use std::cmp::Ordering;

/// `spec.rules[].http.paths[].pathType`, after ImplementationSpecific became Prefix; or,
/// on a host where some Ingress asks for regular expressions, any path ([`PathRule::regex`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PathKind {
    Exact,
    Prefix,
    /// A case-insensitive regular expression anchored at the start of the path only
    /// (ingress-nginx's `use-regex`: `location ~* "^path"`).
    Regex,
}

impl PathKind {
    /// Parses `pathType`; ImplementationSpecific (and an absent type, which the API
    /// server would reject) are matched as Prefix.
    pub fn from_path_type(path_type: &str) -> PathKind {
        match path_type {
            "Exact" => PathKind::Exact,
            _ => PathKind::Prefix,
        }
    }
}

/// One path rule. For Prefix, `path` is stored without its trailing slashes, so `/` is
/// stored as the empty string and matches every path. For Regex, `path` is the
/// expression as written and `regex` its compiled form.
#[derive(Clone, Debug)]
pub struct PathRule {
    kind: PathKind,
    path: String,
    regex: Option<regex::Regex>,
}

/// A rule is its kind and path (the compiled expression follows from the path).
impl PartialEq for PathRule {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.path == other.path
    }
}

impl Eq for PathRule {}

impl std::hash::Hash for PathRule {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.kind.hash(state);
        self.path.hash(state);
    }
}

/// Why a path from an Ingress cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("path {path:?} {reason}")]
pub struct InvalidPath {
    pub path: String,
    pub reason: String,
}

/// Sequences the API server refuses in an Exact or Prefix path (networking validation),
/// and the endings it refuses.
const INVALID_SEQUENCES: [&str; 5] = ["//", "/./", "/../", "%2f", "%2F"];
const INVALID_SUFFIXES: [&str; 2] = ["/..", "/."];

impl PathRule {
    /// A rule from an Ingress path: `pathType` as written (Exact, Prefix or
    /// ImplementationSpecific) and the path, validated as the API server validates it.
    pub fn from_spec(path_type: &str, path: &str) -> Result<PathRule, InvalidPath> {
        let invalid = |reason: String| InvalidPath {
            path: path.into(),
            reason,
        };
        let kind = PathKind::from_path_type(path_type);
        if path.is_empty() {
            return PathRule::new(kind, path);
        }
        if !path.starts_with('/') {
            return Err(invalid("must be an absolute path (start with '/')".into()));
        }
        if matches!(path_type, "Exact" | "Prefix") {
            if let Some(seq) = INVALID_SEQUENCES.iter().find(|s| path.contains(*s)) {
                return Err(invalid(format!("must not contain '{seq}'")));
            }
            if let Some(suffix) = INVALID_SUFFIXES.iter().find(|s| path.ends_with(*s)) {
                return Err(invalid(format!("cannot end with '{suffix}'")));
            }
        }
        // Matched against normalized request paths, so normalized the same way: escapes
        // (`/%7Euser` is `/~user`, `%c3` is `%C3`) and, for ImplementationSpecific, which
        // the API server does not check, slashes and dot segments (`/a//b/` would
        // otherwise never match anything).
        let normal = normalize_request_path(path)
            .map_err(|e| invalid(format!("cannot be normalized: {e}")))?;
        PathRule::new(kind, &normal)
    }

    pub fn new(kind: PathKind, path: &str) -> Result<PathRule, InvalidPath> {
        // An empty path is what the API server defaults a missing Prefix path to ("/").
        let path = if path.is_empty() { "/" } else { path };
        if !path.starts_with('/') {
            return Err(InvalidPath {
                path: path.into(),
                reason: "must be an absolute path (start with '/')".into(),
            });
        }
        let path = match kind {
            PathKind::Exact | PathKind::Regex => path.to_owned(),
            PathKind::Prefix => path.trim_end_matches('/').to_owned(),
        };
        let regex = match kind {
            PathKind::Regex => Some(crate::template::regex(&format!("^{path}"), true).map_err(
                |reason| InvalidPath {
                    path: path.clone(),
                    reason,
                },
            )?),
            PathKind::Exact | PathKind::Prefix => None,
        };
        Ok(PathRule { kind, path, regex })
    }

    /// A path of an Ingress on a host where regular expressions are in force
    /// (ingress-nginx's `use-regex` or `rewrite-target` on some Ingress of the host):
    /// whatever its `pathType`, a case-insensitive regular expression that must match at
    /// the start of the request path, and may match only part of it (`location ~*
    /// "^path"`). The path is taken as written: neither normalized nor trimmed.
    pub fn regex(path: &str) -> Result<PathRule, InvalidPath> {
        PathRule::new(PathKind::Regex, path)
    }

    pub fn kind(&self) -> PathKind {
        self.kind
    }

    /// The rule as it would be written back (Prefix `/` shows as `/`).
    pub fn as_str(&self) -> &str {
        if self.path.is_empty() {
            "/"
        } else {
            &self.path
        }
    }

    /// Does `request_path` (the URI path, no query) match this rule?
    pub fn matches(&self, request_path: &str) -> bool {
        match self.kind {
            PathKind::Exact => request_path == self.path,
            PathKind::Regex => self
                .regex
                .as_ref()
                .is_some_and(|r| r.is_match(request_path)),
            PathKind::Prefix => {
                // Element-wise: the rule's segments are a prefix of the request's, i.e.
                // the request path equals the rule or continues it with a '/'.
                request_path
                    .strip_prefix(self.path.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
        }
    }

    /// Precedence among rules that match the same request: the longest path wins, and
    /// Exact beats Prefix when the lengths tie. `Ordering::Less` means "self first".
    /// Regular expressions are tried in the same order, longest expression first (as
    /// ingress-nginx orders its regex locations), the first that matches serving.
    pub fn precedence(&self, other: &PathRule) -> Ordering {
        let rank = |k: PathKind| match k {
            PathKind::Exact => 0,
            PathKind::Prefix => 1,
            PathKind::Regex => 2,
        };
        other
            .path
            .len()
            .cmp(&self.path.len())
            .then_with(|| rank(self.kind).cmp(&rank(other.kind)))
            .then_with(|| self.path.cmp(&other.path))
    }
}

/// Why a request path cannot be matched (answered 400).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadPath {
    Encoding,
    AboveRoot,
}

impl std::fmt::Display for BadPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for BadPath {}

impl BadPath {
    /// What a 400 response and the access log say.
    pub fn reason(self) -> &'static str {
        match self {
            BadPath::Encoding => "the request path has an invalid percent-encoding",
            BadPath::AboveRoot => "the request path climbs above the root with '..'",
        }
    }
}

/// Is `b` an unreserved character (RFC 3986 section 2.3)? Its percent-encoding means the
/// same as the character itself.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Does the path need [`normalize_request_path`] to do anything? (Nearly every request
/// path does not: then no allocation.)
fn is_normal(path: &[u8]) -> bool {
    let dot_segment = |rest: &[u8]| {
        matches!(
            rest,
            [b'.'] | [b'.', b'/', ..] | [b'.', b'.'] | [b'.', b'.', b'/', ..]
        )
    };
    path.iter().enumerate().all(|(i, &b)| match b {
        b'%' => false,
        b'/' => {
            let rest = &path[i + 1..];
            !(rest.first() == Some(&b'/') || dot_segment(rest))
        }
        _ => true,
    })
}

/// The request path as routing sees it: percent-encoded unreserved characters decoded
/// (other escapes kept, with upper-case hex digits; `%2F` stays an escape, not a
/// separator), runs of `/` merged into one, and `.` and `..` segments resolved (RFC 3986
/// section 5.2.4; a trailing `.` or `..` leaves a trailing slash). A path that is
/// already normal comes back borrowed.
/// Gateway API's `ReplacePrefixMatch`: `path` (normalized) matched the rule path
/// `prefix`; that prefix becomes `replacement`, the rest of the path stays
/// (`/api/users` by `/api` to `/` gives `/users`; to `/v2` gives `/v2/users`). A trailing
/// slash on the rule is ignored, as in matching.
pub fn replace_prefix(path: &str, prefix: &str, replacement: &str) -> String {
    let prefix = prefix.trim_end_matches('/');
    // A Prefix or Exact match is element-wise: the rest is empty or starts with `/`.
    let rest = path.strip_prefix(prefix).unwrap_or(path);
    let mut out = String::with_capacity(replacement.len() + rest.len());
    out.push_str(replacement);
    if out.ends_with('/') && rest.starts_with('/') {
        out.pop();
    }
    out.push_str(rest);
    if out.is_empty() {
        out.push('/');
    }
    out
}

pub fn normalize_request_path(path: &str) -> Result<Cow<'_, str>, BadPath> {
    if is_normal(path.as_bytes()) {
        return Ok(Cow::Borrowed(path));
    }
    // 1. Percent-decoding of unreserved characters (ASCII for ASCII: the bytes stay
    // UTF-8).
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            decoded.push(b);
            i += 1;
            continue;
        }
        let hex = |c: Option<&u8>| c.and_then(|c| char::from(*c).to_digit(16));
        let (Some(hi), Some(lo)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) else {
            return Err(BadPath::Encoding);
        };
        let v = u8::try_from(hi * 16 + lo).map_err(|_| BadPath::Encoding)?;
        if unreserved(v) {
            decoded.push(v);
        } else {
            decoded.push(b'%');
            decoded.extend(bytes[i + 1..i + 3].iter().map(u8::to_ascii_uppercase));
        }
        i += 3;
    }
    let decoded = String::from_utf8(decoded).map_err(|_| BadPath::Encoding)?;
    // 2. and 3. Empty segments (merged slashes) and dot segments. The path starts with
    // '/', so the first piece of the split is empty and skipped.
    let mut segments: Vec<&str> = Vec::new();
    let mut ends_as_directory = false;
    for seg in decoded.split('/').skip(1) {
        match seg {
            "" | "." => ends_as_directory = true,
            ".." => {
                segments.pop().ok_or(BadPath::AboveRoot)?;
                ends_as_directory = true;
            }
            s => {
                segments.push(s);
                ends_as_directory = false;
            }
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if ends_as_directory || segments.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_prefix_as_gateway_api_defines_it() {
        // (rule prefix, request path, replacement, result): Gateway API's examples.
        for (prefix, path, replacement, want) in [
            ("/foo", "/foo/bar", "/xyz", "/xyz/bar"),
            ("/foo", "/foo", "/xyz", "/xyz"),
            ("/foo", "/foo/", "/xyz", "/xyz/"),
            ("/foo/", "/foo/bar", "/xyz", "/xyz/bar"),
            ("/foo", "/foo/bar", "/xyz/", "/xyz/bar"),
            ("/foo", "/foo", "/xyz/", "/xyz/"),
            ("/foo", "/foo/bar", "/", "/bar"),
            ("/foo", "/foo", "/", "/"),
            ("/foo", "/foo/", "/", "/"),
            ("/", "/foo", "/v1", "/v1/foo"),
            ("/", "/", "/v1", "/v1/"),
            ("/a/b", "/a/b/c/d", "/x", "/x/c/d"),
        ] {
            assert_eq!(
                replace_prefix(path, prefix, replacement),
                want,
                "{prefix} {path} {replacement}"
            );
        }
    }

    fn prefix(p: &str) -> PathRule {
        PathRule::new(PathKind::Prefix, p).unwrap()
    }
    fn exact(p: &str) -> PathRule {
        PathRule::new(PathKind::Exact, p).unwrap()
    }

    /// The table of examples from the Kubernetes Ingress documentation
    /// (concepts/services-networking/ingress, "Examples").
    #[test]
    fn kubernetes_documentation_examples() {
        let cases: &[(PathRule, &str, bool)] = &[
            (prefix("/"), "/", true),
            (prefix("/"), "/anything/at/all", true),
            (exact("/foo"), "/foo", true),
            (exact("/foo"), "/bar", false),
            (exact("/foo"), "/foo/", false),
            (exact("/foo/"), "/foo", false),
            (prefix("/foo"), "/foo", true),
            (prefix("/foo"), "/foo/", true),
            (prefix("/foo/"), "/foo", true),
            (prefix("/foo/"), "/foo/", true),
            (prefix("/aaa/bb"), "/aaa/bbb", false),
            (prefix("/aaa/bbb"), "/aaa/bbb", true),
            (prefix("/aaa/bbb/"), "/aaa/bbb", true),
            (prefix("/aaa/bbb"), "/aaa/bbb/", true),
            (prefix("/aaa/bbb"), "/aaa/bbb/ccc", true),
            (prefix("/aaa/bbb"), "/aaa/bbbxyz", false),
        ];
        for (rule, path, want) in cases {
            assert_eq!(
                rule.matches(path),
                *want,
                "{:?} {} vs {path}",
                rule.kind(),
                rule.as_str()
            );
        }
    }

    #[test]
    fn request_paths_are_normalized_for_matching() {
        let ok = |p: &str| normalize_request_path(p).unwrap().into_owned();
        assert!(matches!(
            normalize_request_path("/api/v1?x"),
            Ok(Cow::Borrowed(_))
        ));
        assert!(matches!(
            normalize_request_path("/a.b/.c/..d"),
            Ok(Cow::Borrowed(_))
        ));
        assert_eq!(ok("/api/../admin"), "/admin");
        assert_eq!(ok("/api/./v1"), "/api/v1");
        assert_eq!(ok("//api///v1//"), "/api/v1/");
        assert_eq!(ok("/api/v1/."), "/api/v1/");
        assert_eq!(ok("/api/v1/.."), "/api/");
        assert_eq!(ok("/api/%2E%2e/admin"), "/admin");
        assert_eq!(ok("/%61pi/%7Euser"), "/api/~user");
        assert_eq!(ok("/a%2fb/%2F..%2f"), "/a%2Fb/%2F..%2F");
        assert_eq!(ok("/caf%C3%A9/é"), "/caf%C3%A9/é");
        assert_eq!(ok("/."), "/");
        assert_eq!(normalize_request_path("/../etc"), Err(BadPath::AboveRoot));
        assert_eq!(
            normalize_request_path("/a/../../b"),
            Err(BadPath::AboveRoot)
        );
        assert_eq!(normalize_request_path("/a%2"), Err(BadPath::Encoding));
        assert_eq!(normalize_request_path("/a%zz"), Err(BadPath::Encoding));
    }

    #[test]
    fn a_normalized_path_meets_the_rules_as_nginx_would_see_it() {
        let api = prefix("/api");
        let norm = |p: &str| normalize_request_path(p).unwrap().into_owned();
        assert!(!api.matches(&norm("/api/../admin")));
        assert!(api.matches(&norm("/api//v1")));
        assert!(exact("/foo").matches(&norm("//foo")));
        assert!(!exact("/foo").matches(&norm("/foo/.")));
    }

    #[test]
    fn spec_paths_are_validated_as_the_api_server_does() {
        for (ty, path, why) in [
            ("Prefix", "foo", "absolute"),
            ("Exact", "/a//b", "'//'"),
            ("Prefix", "/a/./b", "'/./'"),
            ("Prefix", "/a/../b", "'/../'"),
            ("Exact", "/a%2fb", "'%2f'"),
            ("Prefix", "/a/..", "end with '/..'"),
            ("Exact", "/a/.", "end with '/.'"),
            ("ImplementationSpecific", "/../x", "normalized"),
            ("ImplementationSpecific", "x", "absolute"),
        ] {
            let e = PathRule::from_spec(ty, path).unwrap_err();
            assert!(e.to_string().contains(why), "{ty} {path}: {e}");
        }
        let rule = PathRule::from_spec("Exact", "/caf%c3%a9").unwrap();
        assert!(rule.matches(&normalize_request_path("/caf%C3%A9").unwrap()));
        let rule = PathRule::from_spec("Prefix", "/%7Euser/").unwrap();
        assert!(rule.matches(&normalize_request_path("/~user/x").unwrap()));
        assert!(PathRule::from_spec("Prefix", "/a%zz").is_err());
        let rule = PathRule::from_spec("ImplementationSpecific", "/a//b/./c/").unwrap();
        assert_eq!(rule.as_str(), "/a/b/c");
        assert_eq!(PathRule::from_spec("Prefix", "").unwrap().as_str(), "/");
        assert_eq!(
            PathRule::from_spec("Exact", "/a.b").unwrap().as_str(),
            "/a.b"
        );
    }

    #[test]
    fn matching_is_case_sensitive() {
        assert!(!prefix("/Foo").matches("/foo"));
        assert!(!exact("/foo").matches("/FOO"));
    }

    #[test]
    fn relative_paths_are_rejected_and_empty_means_root() {
        assert!(PathRule::new(PathKind::Prefix, "foo").is_err());
        assert!(PathRule::new(PathKind::Prefix, "").unwrap().matches("/x"));
    }

    #[test]
    fn longest_wins_and_exact_beats_prefix_on_a_tie() {
        use std::cmp::Ordering::{Greater, Less};
        assert_eq!(prefix("/aaa").precedence(&prefix("/")), Less);
        assert_eq!(exact("/foo").precedence(&prefix("/foo")), Less);
        assert_eq!(prefix("/foo/").precedence(&exact("/foo")), Greater);
        assert_eq!(prefix("/a").precedence(&exact("/ab")), Greater);
    }

    #[test]
    fn implementation_specific_is_prefix() {
        assert_eq!(
            PathKind::from_path_type("ImplementationSpecific"),
            PathKind::Prefix
        );
        assert_eq!(PathKind::from_path_type("Exact"), PathKind::Exact);
    }
}
