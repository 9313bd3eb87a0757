//! The matcher: from (host, path) to the rule that serves it.
//!
//! A [`RouteTable`] is immutable once built (the source builds a new one on every change
//! and swaps it in). Lookup order, the same as ingress-nginx's server/location choice:
//!
//! 1. Host: the rules for the exact host name, then those of a `*.` wildcard covering
//!    its first label, then the rules without a host. The first of these host levels
//!    that has a matching path serves the request.
//! 2. Path, within that host level: the longest matching path; Exact beats Prefix when
//!    the lengths tie (see [`path`]).
//! 3. Otherwise the `defaultBackend`, otherwise no route (404).
//!
//! Several Ingress objects may name the same host: their rules are merged. When two of
//! them define the same host, path and pathType (or both have a `defaultBackend`), the
//! one with the oldest `creationTimestamp` wins, then the smaller namespace/name (an
//! object without a timestamp, as in a manifests directory, counts as oldest). This is
//! ingress-nginx's rule; the loser is reported as a [`Conflict`].
pub mod host;
pub mod path;
pub mod rewrite;

use std::collections::HashMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

pub use host::{HostRule, request_host, wildcard_suffix};
pub use path::{BadPath, InvalidPath, PathKind, PathRule, normalize_request_path, replace_prefix};
pub use rewrite::{PathRewrite, RewriteTarget};

/// Order of precedence between Ingress objects: smaller wins.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rank {
    pub created: Option<Time>,
    pub namespace: String,
    pub name: String,
}

impl Rank {
    pub fn ingress(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A rule that lost to an older Ingress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// `host path` of the rule, or `defaultBackend`.
    pub rule: String,
    pub winner: String,
    pub loser: String,
}

/// Paths of one host level, most specific first.
#[derive(Debug)]
struct PathTable<T> {
    rules: Vec<(PathRule, T)>,
}

impl<T> Default for PathTable<T> {
    fn default() -> Self {
        PathTable { rules: Vec::new() }
    }
}

impl<T> PathTable<T> {
    fn lookup(&self, path: &str) -> Option<&T> {
        self.rules
            .iter()
            .find(|(rule, _)| rule.matches(path))
            .map(|(_, t)| t)
    }
}

/// The immutable routing table; `T` is what a rule leads to.
#[derive(Debug)]
pub struct RouteTable<T> {
    exact: HashMap<String, PathTable<T>>,
    wildcard: HashMap<String, PathTable<T>>,
    any: PathTable<T>,
    default_backend: Option<T>,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        RouteTable {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            any: PathTable::default(),
            default_backend: None,
        }
    }
}

impl<T> RouteTable<T> {
    /// `host` is already normalized by [`request_host`]; `path` is the URI path without
    /// the query.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&T> {
        self.exact
            .get(host)
            .and_then(|t| t.lookup(path))
            .or_else(|| {
                wildcard_suffix(host)
                    .and_then(|s| self.wildcard.get(s))
                    .and_then(|t| t.lookup(path))
            })
            .or_else(|| self.any.lookup(path))
            .or(self.default_backend.as_ref())
    }

    /// Number of path rules (all hosts), for logs.
    pub fn len(&self) -> usize {
        self.exact
            .values()
            .chain(self.wildcard.values())
            .chain(std::iter::once(&self.any))
            .map(|t| t.rules.len())
            .sum::<usize>()
            + usize::from(self.default_backend.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every rule's path and what it leads to (hosts in no order), then the default
    /// backend's (no path), for `lb-ingress check`.
    pub fn rules(&self) -> impl Iterator<Item = (Option<&PathRule>, &T)> {
        (self.exact.values())
            .chain(self.wildcard.values())
            .chain(std::iter::once(&self.any))
            .flat_map(|t| t.rules.iter().map(|(p, t)| (Some(p), t)))
            .chain(self.default_backend.iter().map(|t| (None, t)))
    }
}

/// Collects rules from any number of Ingresses, resolving conflicts by [`Rank`].
#[derive(Debug)]
pub struct RouteTableBuilder<T> {
    rules: HashMap<(HostRule, PathRule), (Rank, T)>,
    default_backend: Option<(Rank, T)>,
    conflicts: Vec<Conflict>,
}

impl<T> Default for RouteTableBuilder<T> {
    fn default() -> Self {
        RouteTableBuilder {
            rules: HashMap::new(),
            default_backend: None,
            conflicts: Vec::new(),
        }
    }
}

impl<T> RouteTableBuilder<T> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, rank: &Rank, host: HostRule, path: PathRule, target: T) {
        let rule = format!("{} {}", host.label(), path.as_str());
        let slot = (host, path);
        match self.rules.get(&slot) {
            Some((held, _)) if held <= rank => {
                if held != rank {
                    self.conflicts.push(Conflict {
                        rule,
                        winner: held.ingress(),
                        loser: rank.ingress(),
                    });
                }
            }
            Some((held, _)) => {
                self.conflicts.push(Conflict {
                    rule,
                    winner: rank.ingress(),
                    loser: held.ingress(),
                });
                self.rules.insert(slot, (rank.clone(), target));
            }
            None => {
                self.rules.insert(slot, (rank.clone(), target));
            }
        }
    }

    /// Whether some Ingress gave a `defaultBackend`.
    pub fn has_default_backend(&self) -> bool {
        self.default_backend.is_some()
    }

    pub fn default_backend(&mut self, rank: &Rank, target: T) {
        match &self.default_backend {
            Some((held, _)) if held <= rank => self.conflicts.push(Conflict {
                rule: "defaultBackend".into(),
                winner: held.ingress(),
                loser: rank.ingress(),
            }),
            Some((held, _)) => {
                self.conflicts.push(Conflict {
                    rule: "defaultBackend".into(),
                    winner: rank.ingress(),
                    loser: held.ingress(),
                });
                self.default_backend = Some((rank.clone(), target));
            }
            None => self.default_backend = Some((rank.clone(), target)),
        }
    }

    pub fn build(self) -> (RouteTable<T>, Vec<Conflict>) {
        let mut table = RouteTable::default();
        for ((host, path), (_, target)) in self.rules {
            let level = match host {
                HostRule::Any => &mut table.any,
                HostRule::Exact(h) => table.exact.entry(h).or_default(),
                HostRule::Wildcard(s) => table.wildcard.entry(s).or_default(),
            };
            level.rules.push((path, target));
        }
        for level in table
            .exact
            .values_mut()
            .chain(table.wildcard.values_mut())
            .chain(std::iter::once(&mut table.any))
        {
            level.rules.sort_by(|(a, _), (b, _)| a.precedence(b));
        }
        table.default_backend = self.default_backend.map(|(_, t)| t);
        (table, self.conflicts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rank(name: &str, created: Option<&str>) -> Rank {
        Rank {
            created: created.map(|c| Time(c.parse().unwrap())),
            namespace: "default".into(),
            name: name.into(),
        }
    }

    fn table(rules: &[(&str, PathKind, &str, &'static str)]) -> RouteTable<&'static str> {
        let mut b = RouteTableBuilder::new();
        let r = rank("ing", None);
        for (host, kind, path, target) in rules {
            let host = (!host.is_empty()).then_some(*host);
            b.add(
                &r,
                HostRule::parse(host),
                PathRule::new(*kind, path).unwrap(),
                *target,
            );
        }
        b.build().0
    }

    use PathKind::{Exact, Prefix};

    /// The multiple-match rows of the Kubernetes documentation's examples table.
    #[test]
    fn longest_path_wins_and_exact_beats_prefix() {
        let t = table(&[
            ("", Prefix, "/", "root"),
            ("", Prefix, "/aaa", "aaa"),
            ("", Prefix, "/foo", "foo-prefix"),
            ("", Exact, "/foo", "foo-exact"),
            ("", Prefix, "/aaa/bbb", "bbb"),
        ]);
        assert_eq!(t.lookup("x", "/ccc"), Some(&"root"));
        assert_eq!(t.lookup("x", "/aaa/ccc"), Some(&"aaa"));
        assert_eq!(t.lookup("x", "/aaa/bbb/c"), Some(&"bbb"));
        assert_eq!(t.lookup("x", "/aaa/bbbc"), Some(&"aaa"));
        assert_eq!(t.lookup("x", "/foo"), Some(&"foo-exact"));
        assert_eq!(t.lookup("x", "/foo/"), Some(&"foo-prefix"));
    }

    #[test]
    fn exact_host_then_wildcard_then_any_then_default() {
        let mut b = RouteTableBuilder::new();
        let r = rank("ing", None);
        let p = |s: &str| PathRule::new(Prefix, s).unwrap();
        b.add(
            &r,
            HostRule::parse(Some("a.example.com")),
            p("/api"),
            "exact-api",
        );
        b.add(&r, HostRule::parse(Some("*.example.com")), p("/"), "wild");
        b.add(&r, HostRule::Any, p("/any"), "any");
        b.default_backend(&r, "default");
        let (t, conflicts) = b.build();
        assert!(conflicts.is_empty());
        assert_eq!(t.lookup("a.example.com", "/api/x"), Some(&"exact-api"));
        // The exact host has no rule for "/": the wildcard level serves it.
        assert_eq!(t.lookup("a.example.com", "/"), Some(&"wild"));
        assert_eq!(t.lookup("b.example.com", "/any"), Some(&"wild"));
        assert_eq!(t.lookup("example.com", "/any"), Some(&"any"));
        assert_eq!(t.lookup("x.b.example.com", "/other"), Some(&"default"));
    }

    #[test]
    fn no_rule_and_no_default_is_no_route() {
        let t = table(&[("foo.com", Exact, "/x", "x")]);
        assert_eq!(t.lookup("foo.com", "/y"), None);
        assert_eq!(t.lookup("bar.com", "/x"), None);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn conflicts_go_to_the_oldest_then_namespace_name() {
        let p = || PathRule::new(Prefix, "/").unwrap();
        let h = || HostRule::parse(Some("foo.com"));
        let old = rank("zzz", Some("2020-01-01T00:00:00Z"));
        let new = rank("aaa", Some("2024-01-01T00:00:00Z"));
        let untimed = rank("mmm", None);
        for order in [[&new, &old], [&old, &new]] {
            let mut b = RouteTableBuilder::new();
            for r in order {
                b.add(r, h(), p(), r.name.clone());
            }
            let (t, conflicts) = b.build();
            assert_eq!(t.lookup("foo.com", "/").map(String::as_str), Some("zzz"));
            assert_eq!(conflicts.len(), 1);
            assert_eq!(conflicts[0].loser, "default/aaa");
        }
        let mut b = RouteTableBuilder::new();
        b.default_backend(&old, "old");
        b.default_backend(&untimed, "untimed");
        let (t, conflicts) = b.build();
        assert_eq!(t.lookup("foo.com", "/"), Some(&"untimed"));
        assert_eq!(conflicts[0].winner, "default/mmm");
    }

    #[test]
    fn same_path_with_other_type_is_not_a_conflict() {
        let t = table(&[
            ("foo.com", Prefix, "/a", "prefix"),
            ("foo.com", Exact, "/a", "exact"),
        ]);
        assert_eq!(t.lookup("foo.com", "/a"), Some(&"exact"));
        assert_eq!(t.lookup("foo.com", "/a/b"), Some(&"prefix"));
    }

    /// A host under `use-regex`: expressions anchored at the start only, case-insensitive,
    /// the longest expression tried first, the first match serving.
    #[test]
    fn regex_paths_longest_expression_first() {
        let mut b = RouteTableBuilder::new();
        let r = rank("ing", None);
        let host = || HostRule::parse(Some("foo.com"));
        for (path, target) in [
            ("/", "root"),
            ("/api", "api"),
            ("/api/v[0-9]+/", "versioned"),
            ("/api/v1/admin", "admin"),
        ] {
            b.add(&r, host(), PathRule::regex(path).unwrap(), target);
        }
        let (t, _) = b.build();
        assert_eq!(t.lookup("foo.com", "/API/V2/users"), Some(&"versioned"));
        assert_eq!(t.lookup("foo.com", "/api/v1/admin/x"), Some(&"admin"));
        assert_eq!(t.lookup("foo.com", "/apix"), Some(&"api"));
        assert_eq!(t.lookup("foo.com", "/other"), Some(&"root"));
        assert!(PathRule::regex("/(?=x)").is_err());
        // The expression is kept as written: not normalized, its trailing slash kept.
        assert_eq!(PathRule::regex("/a//b/").unwrap().as_str(), "/a//b/");
    }

    #[test]
    fn query_is_not_part_of_the_path() {
        // Callers pass uri.path(); a path with a '?' never comes from a parsed URI, and
        // a literal '?' does not match a rule without one.
        let t = table(&[("", Exact, "/search", "s")]);
        let uri: hyper::Uri = "/search?q=/x".parse().unwrap();
        assert_eq!(t.lookup("h", uri.path()), Some(&"s"));
    }
}
