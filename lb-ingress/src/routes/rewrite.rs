//! `rewrite-target`: ingress-nginx's path rewrite with regular expression captures.
//!
//! ingress-nginx turns `rewrite-target: T` on a rule with path `P` into nginx's
//! `rewrite "(?i)P" T break;`: when `P` matches the request path (anywhere; the location
//! already matched `^P`), the *whole* path becomes `T` with `$1`..`$9` (and `${name}` for
//! named groups) replaced by what the groups captured. The classic use:
//!
//! ```text
//! path: /something(/|$)(.*)     rewrite-target: /$2
//! /something -> /    /something/ -> /    /something/new -> /new
//! ```
//!
//! The query string follows nginx's rule: kept when `T` has none; when `T` has one, the
//! request's is appended after it with `&`, unless `T` ends with `?` (then dropped).
use regex::Regex;

use crate::template::Token;

/// One part of a rewrite target.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// `$0`..`$9`, `${12}`.
    Group(usize),
    /// `$name`, `${name}`.
    Named(String),
}

/// A parsed `rewrite-target` value (not yet tied to a path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RewriteTarget {
    raw: String,
    pieces: Vec<Piece>,
}

/// Characters a target's literal text may hold: those of a URI path and query (RFC 3986
/// pchar, `/`, `?`, and `%` for escapes), nothing that would need escaping.
fn uri_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/?%".contains(c)
}

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

impl RewriteTarget {
    /// Parses an annotation value: a path (`/`, `/$2`, `/api/$1?x=1`) with capture
    /// references; `$` must introduce one.
    pub fn parse(value: &str) -> Result<RewriteTarget, String> {
        if !(value.starts_with('/') || value.starts_with('$')) {
            return Err(format!(
                "{value:?} is not a path (it must start with '/' or a capture like '$1')"
            ));
        }
        let pieces = crate::template::tokens(value)?
            .into_iter()
            .map(|token| match token {
                Token::Text(text) => match text.chars().find(|c| !uri_char(*c)) {
                    Some(c) => Err(format!(
                        "{value:?} has {c:?}, which a URI path cannot hold unescaped"
                    )),
                    None => Ok(Piece::Text(text.to_owned())),
                },
                Token::Var(var) => {
                    if let Ok(n) = var.parse::<usize>() {
                        Ok(Piece::Group(n))
                    } else if var.chars().all(name_char)
                        && !var.starts_with(|c: char| c.is_ascii_digit())
                    {
                        Ok(Piece::Named(var.to_owned()))
                    } else {
                        Err(format!(
                            "{value:?}: '${{{var}}}' is not a capture group number or name"
                        ))
                    }
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(RewriteTarget {
            raw: value.to_owned(),
            pieces,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Does this target rewrite the rule with `path`? (ingress-nginx: not when it is
    /// the path itself.)
    pub fn rewrites(&self, path: &str) -> bool {
        self.raw != path
    }
}

/// A target bound to its rule's path expression.
#[derive(Clone, Debug)]
pub struct PathRewrite {
    regex: Regex,
    target: RewriteTarget,
}

impl PathRewrite {
    /// The rewrite of the rule with `path` (a regular expression) to `target`; refused
    /// when the expression does not compile or lacks a group the target names.
    pub fn new(path: &str, target: &RewriteTarget) -> Result<PathRewrite, String> {
        let regex = crate::template::regex(path, true).map_err(|e| format!("path {path:?} {e}"))?;
        for piece in &target.pieces {
            match piece {
                Piece::Group(n) if *n >= regex.captures_len() => {
                    return Err(format!(
                        "rewrite-target {:?} uses ${n}, but path {path:?} has {} capture group(s)",
                        target.raw,
                        regex.captures_len() - 1
                    ));
                }
                Piece::Named(name) if !regex.capture_names().flatten().any(|n| n == name) => {
                    return Err(format!(
                        "rewrite-target {:?} uses ${name}, which is not a named group of path \
                         {path:?} (nginx variables are not supported)",
                        target.raw
                    ));
                }
                _ => {}
            }
        }
        Ok(PathRewrite {
            regex,
            target: target.clone(),
        })
    }

    /// The path and query the upstream gets for a request with `path` (normalized, as
    /// matched) and `query`; None when the expression does not match (the request goes
    /// on unchanged, as with nginx).
    pub fn apply(&self, path: &str, query: Option<&str>) -> Option<String> {
        let caps = self.regex.captures(path)?;
        let mut out = String::with_capacity(self.target.raw.len() + path.len());
        for piece in &self.target.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Group(n) => out.push_str(caps.get(*n).map_or("", |m| m.as_str())),
                Piece::Named(n) => out.push_str(caps.name(n).map_or("", |m| m.as_str())),
            }
        }
        if !out.starts_with('/') {
            out.insert(0, '/');
        }
        let original = query.filter(|q| !q.is_empty());
        match out.find('?') {
            None => {
                if let Some(q) = original {
                    out.push('?');
                    out.push_str(q);
                }
            }
            // A target ending with '?' drops the request's query.
            Some(_) if self.target.raw.ends_with('?') => {
                out.pop();
            }
            Some(at) => {
                if let Some(q) = original {
                    if at + 1 < out.len() {
                        out.push('&');
                    }
                    out.push_str(q);
                }
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(path: &str, target: &str) -> PathRewrite {
        PathRewrite::new(path, &RewriteTarget::parse(target).unwrap()).unwrap()
    }

    /// ingress-nginx's documented example.
    #[test]
    fn the_captured_rest_becomes_the_path() {
        let r = rewrite("/something(/|$)(.*)", "/$2");
        assert_eq!(r.apply("/something", None).as_deref(), Some("/"));
        assert_eq!(r.apply("/something/", None).as_deref(), Some("/"));
        assert_eq!(r.apply("/something/new", None).as_deref(), Some("/new"));
        assert_eq!(
            r.apply("/SOMETHING/new/a", Some("x=1")).as_deref(),
            Some("/new/a?x=1")
        );
        assert_eq!(r.apply("/other", None), None);
    }

    #[test]
    fn the_whole_path_is_replaced_not_only_the_match() {
        // `rewrite-target: /` on a plain path sends everything to `/`, as nginx does.
        let r = rewrite("/foo", "/");
        assert_eq!(r.apply("/foo/bar/baz", Some("q")).as_deref(), Some("/?q"));
        // Unanchored, as nginx's rewrite: the location matched at the start already.
        let r = rewrite("/api/(.*)", "/v2/$1");
        assert_eq!(
            r.apply("/api/users/7", None).as_deref(),
            Some("/v2/users/7")
        );
    }

    #[test]
    fn queries_follow_nginx() {
        let r = rewrite("/a/(.*)", "/b?x=$1");
        assert_eq!(r.apply("/a/1", Some("y=2")).as_deref(), Some("/b?x=1&y=2"));
        assert_eq!(r.apply("/a/1", None).as_deref(), Some("/b?x=1"));
        let r = rewrite("/a/(.*)", "/b?x=$1?");
        assert_eq!(r.apply("/a/1", Some("y=2")).as_deref(), Some("/b?x=1"));
        let r = rewrite("/a/(.*)", "/b?");
        assert_eq!(r.apply("/a/1", Some("y=2")).as_deref(), Some("/b"));
        let r = rewrite("/a", "/b?");
        assert_eq!(r.apply("/a", None).as_deref(), Some("/b"));
    }

    #[test]
    fn groups_by_number_name_and_braces() {
        let r = rewrite("/(?P<ver>v[0-9]+)/(.*)", "/${2}/$ver/${ver}x/$10");
        assert_eq!(r.apply("/v1/a", None).as_deref(), Some("/a/v1/v1x/v10"));
        // A group that took no part is empty; a target starting with a capture gets '/'.
        let r = rewrite("/x(/.*)?", "$1");
        assert_eq!(r.apply("/x", None).as_deref(), Some("/"));
        assert_eq!(r.apply("/x/y", None).as_deref(), Some("/y"));
    }

    #[test]
    fn bad_targets_and_missing_groups_are_refused() {
        for bad in [
            "http://x/",
            "a/b",
            "/a b",
            "/$",
            "/$-",
            "/${",
            "/${a-b}",
            "/#x",
        ] {
            assert!(RewriteTarget::parse(bad).is_err(), "{bad}");
        }
        let t = RewriteTarget::parse("/$2").unwrap();
        let e = PathRewrite::new("/a(.*)", &t).unwrap_err();
        assert!(e.contains("has 1 capture group"), "{e}");
        let t = RewriteTarget::parse("/$host").unwrap();
        let e = PathRewrite::new("/a", &t).unwrap_err();
        assert!(e.contains("nginx variables are not supported"), "{e}");
        let e = PathRewrite::new("/a(?=b)", &RewriteTarget::parse("/").unwrap()).unwrap_err();
        assert!(e.contains("not a regular expression"), "{e}");
    }

    #[test]
    fn a_target_equal_to_its_path_rewrites_nothing() {
        let t = RewriteTarget::parse("/api").unwrap();
        assert!(!t.rewrites("/api"));
        assert!(t.rewrites("/api/(.*)"));
    }
}
