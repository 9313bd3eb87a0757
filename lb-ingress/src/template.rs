//! Annotation values in nginx's syntax: regular expressions (`template::regex`), and
//! templates, text with `$name`, `${name}` and `$1`..`$9` in it, as the
//! annotation values that take nginx variables or regex captures are written
//! (`rewrite-target`, `upstream-hash-by`).

/// Compiled size one expression from an annotation or a path may take (`regex`'s
/// default is 10 MiB): they come from Ingress objects, any number of them.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A regular expression from an Ingress (a path, a canary's header pattern), or why it
/// is not one this proxy can run, on one line.
pub fn regex(pattern: &str, case_insensitive: bool) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(pattern)
        .case_insensitive(case_insensitive)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            // regex's messages draw a caret under the pattern, over several lines.
            let message = e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            format!(
                "is not a regular expression lb-ingress can match (RE2 syntax: no \
                 look-around, no back-references): {message}"
            )
        })
}

/// A piece of a template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token<'a> {
    Text(&'a str),
    /// What follows `$`: one digit (`$1`: nginx reads `$10` as `$1` then `0`), a name of
    /// letters, digits and `_` (`$http_x_user`), or anything up to `}` after `${`.
    Var(&'a str),
}

/// The tokens of `value`, or why it is not a template (a `$` that starts nothing, a
/// `${` without its `}`).
pub fn tokens(value: &str) -> Result<Vec<Token<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        if at > 0 {
            out.push(Token::Text(&rest[..at]));
        }
        let after = &rest[at + 1..];
        let (var, next) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced
                .find('}')
                .ok_or_else(|| format!("{value:?} has a '${{' without its '}}'"))?;
            (&braced[..end], &braced[end + 1..])
        } else if after.starts_with(|c: char| c.is_ascii_digit()) {
            after.split_at(1)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            after.split_at(end)
        };
        if var.is_empty() {
            return Err(format!(
                "{value:?} has a '$' that starts no variable (like $1, $name or ${{name}})"
            ));
        }
        out.push(Token::Var(var));
        rest = next;
    }
    if !rest.is_empty() {
        out.push(Token::Text(rest));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Token::{Text, Var};

    #[test]
    fn text_digits_names_and_braces() {
        assert_eq!(
            tokens("/${2}/$ver/${ver}x/$10?a=$arg_id").unwrap(),
            [
                Text("/"),
                Var("2"),
                Text("/"),
                Var("ver"),
                Text("/"),
                Var("ver"),
                Text("x/"),
                Var("1"),
                Text("0?a="),
                Var("arg_id"),
            ]
        );
        assert_eq!(tokens("plain").unwrap(), [Text("plain")]);
        for bad in ["/$", "/$-", "/${", "${}"] {
            assert!(tokens(bad).is_err(), "{bad}");
        }
    }
}
