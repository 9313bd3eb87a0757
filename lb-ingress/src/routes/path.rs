//! Path rules: `pathType` Exact and Prefix as the Kubernetes API defines them.
//!
//! Prefix matching is element-wise on `/`-separated segments, case-sensitive, and a
//! trailing slash on the rule is ignored: `/foo` and `/foo/` both match `/foo`, `/foo/`
//! and `/foo/bar`, and neither matches `/foobar`. ImplementationSpecific is treated as
//! Prefix. The request path is the URI path only: the query string is never part of it.
use std::cmp::Ordering;

/// `spec.rules[].http.paths[].pathType`, after ImplementationSpecific became Prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PathKind {
    Exact,
    Prefix,
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
/// stored as the empty string and matches every path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PathRule {
    kind: PathKind,
    path: String,
}

/// Why a path from an Ingress cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("path {path:?} must be absolute (start with '/')")]
pub struct InvalidPath {
    pub path: String,
}

impl PathRule {
    pub fn new(kind: PathKind, path: &str) -> Result<PathRule, InvalidPath> {
        // An empty path is what the API server defaults a missing Prefix path to ("/").
        let path = if path.is_empty() { "/" } else { path };
        if !path.starts_with('/') {
            return Err(InvalidPath { path: path.into() });
        }
        let path = match kind {
            PathKind::Exact => path.to_owned(),
            PathKind::Prefix => path.trim_end_matches('/').to_owned(),
        };
        Ok(PathRule { kind, path })
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
    pub fn precedence(&self, other: &PathRule) -> Ordering {
        other
            .path
            .len()
            .cmp(&self.path.len())
            .then_with(|| match (self.kind, other.kind) {
                (PathKind::Exact, PathKind::Prefix) => Ordering::Less,
                (PathKind::Prefix, PathKind::Exact) => Ordering::Greater,
                _ => Ordering::Equal,
            })
            .then_with(|| self.path.cmp(&other.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
