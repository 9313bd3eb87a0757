//! `fieldSelector` and `labelSelector` as the API server reads them: comma-separated
//! terms that must all hold. Fields: `path=value`, `path==value`, `path!=value` on any
//! dotted path of the object (`type`, `metadata.name`, `spec.nodeName`). Labels: the same
//! operators plus `key`, `!key`, `key in (a,b)`, `key notin (a,b)`.
use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Term {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    fields: Vec<Term>,
    labels: Vec<Term>,
}

impl Selector {
    /// Parses the two query parameters; the error says which term is malformed.
    pub fn parse(fields: Option<&str>, labels: Option<&str>) -> Result<Selector, String> {
        let mut s = Selector::default();
        for term in split_terms(fields.unwrap_or_default()) {
            s.fields.push(match parse_term(&term)? {
                t @ (Term::Eq(..) | Term::Ne(..)) => t,
                _ => {
                    return Err(format!(
                        "field selector term {term:?}: only =, == and != work"
                    ));
                }
            });
        }
        for term in split_terms(labels.unwrap_or_default()) {
            s.labels.push(parse_term(&term)?);
        }
        Ok(s)
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        self.fields.iter().all(|t| holds(t, |k| field(object, k)))
            && self.labels.iter().all(|t| {
                holds(t, |k| {
                    labels
                        .and_then(|l| l.get(k))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
            })
    }
}

/// A field's value as the API server compares it (a string; numbers and booleans are
/// written out).
fn field(object: &Value, path: &str) -> Option<String> {
    let mut v = object;
    for seg in path.split('.') {
        v = v.get(seg)?;
    }
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn holds(term: &Term, get: impl Fn(&str) -> Option<String>) -> bool {
    match term {
        // A missing field compares as the empty string, as the API server does for
        // unset fields.
        Term::Eq(k, v) => get(k).unwrap_or_default() == *v,
        Term::Ne(k, v) => get(k).unwrap_or_default() != *v,
        Term::Exists(k) => get(k).is_some(),
        Term::NotExists(k) => get(k).is_none(),
        Term::In(k, vs) => get(k).is_some_and(|v| vs.contains(&v)),
        Term::NotIn(k, vs) => get(k).is_none_or(|v| !vs.contains(&v)),
    }
}

/// Splits on commas that are not inside parentheses.
fn split_terms(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out.into_iter()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect()
}

fn parse_term(term: &str) -> Result<Term, String> {
    let set = |op: &str| -> Option<Result<(String, Vec<String>), String>> {
        let (k, rest) = term.split_once(op)?;
        let rest = rest.trim();
        let inner = rest
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .ok_or_else(|| format!("selector term {term:?}: expected ({op} a,b)"));
        Some(inner.map(|i| {
            (
                k.trim().to_owned(),
                i.split(',').map(|v| v.trim().to_owned()).collect(),
            )
        }))
    };
    if let Some(r) = set(" notin ") {
        let (k, vs) = r?;
        return Ok(Term::NotIn(k, vs));
    }
    if let Some(r) = set(" in ") {
        let (k, vs) = r?;
        return Ok(Term::In(k, vs));
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(Term::Ne(k.trim().to_owned(), v.trim().to_owned()));
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(Term::Eq(k.trim().to_owned(), v.trim().to_owned()));
    }
    if let Some(k) = term.strip_prefix('!') {
        return Ok(Term::NotExists(k.trim().to_owned()));
    }
    if term.contains(char::is_whitespace) {
        return Err(format!("selector term {term:?} is not understood"));
    }
    Ok(Term::Exists(term.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_and_labels() {
        let tls = json!({"type": "kubernetes.io/tls", "metadata": {"name": "a", "labels": {"app": "web", "tier": "fe"}}});
        let opaque = json!({"type": "Opaque", "metadata": {"name": "b"}});
        let s = Selector::parse(Some("type=kubernetes.io/tls"), None).unwrap();
        assert!(s.matches(&tls) && !s.matches(&opaque));
        let s = Selector::parse(Some("type!=kubernetes.io/tls,metadata.name==b"), None).unwrap();
        assert!(!s.matches(&tls) && s.matches(&opaque));
        let s = Selector::parse(None, Some("app in (web, api),tier,!missing")).unwrap();
        assert!(s.matches(&tls) && !s.matches(&opaque));
        let s = Selector::parse(None, Some("app notin (web)")).unwrap();
        assert!(!s.matches(&tls) && s.matches(&opaque));
        assert!(Selector::parse(Some("metadata.name"), None).is_err());
        assert!(Selector::parse(None, Some("app in web")).is_err());
        assert!(Selector::default().matches(&opaque));
    }
}
