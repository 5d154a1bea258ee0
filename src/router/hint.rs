//! `/* sluice:... */` hints: SQL comments that override where a statement runs or whether its
//! result is cached. Only real comments count (block comments and `--` line comments): the
//! same text inside a string literal, a quoted identifier or a dollar-quoted body is data, not
//! a hint.
//!
//! Words are read case-insensitively and whitespace is free: `/*sluice:REPLICA*/`,
//! `/* sluice: cache ttl = 10s */`. Unknown `sluice:` words are ignored; when a kind of hint is
//! given twice the last one wins.

use crate::config::ConfigDuration;
use std::time::Duration;

/// Where the hint says a statement runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteHint {
    /// `/* sluice:primary */`
    Primary,
    /// `/* sluice:replica */`
    Replica,
}

/// What the hint says about caching a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheHint {
    /// `/* sluice:cache */` or `/* sluice:cache ttl=10s */`
    Cache {
        /// Its own time to live, if given (and valid).
        ttl: Option<Duration>,
    },
    /// `/* sluice:nocache */`
    NoCache,
}

/// The hints of one query text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hints {
    /// Routing override.
    pub route: Option<RouteHint>,
    /// Caching override.
    pub cache: Option<CacheHint>,
}

/// Reads the hints in `sql`. Text without `sluice:` (any case) costs one scan for `:`.
pub fn parse_hints(sql: &str) -> Hints {
    let mut hints = Hints::default();
    if !mentions_sluice(sql.as_bytes()) {
        return hints;
    }
    for comment in comments(sql) {
        read_comment(&comment.to_ascii_lowercase(), &mut hints);
    }
    hints
}

/// Whether `sluice:` occurs, in any case: looks only before each `:` (found with memchr).
fn mentions_sluice(b: &[u8]) -> bool {
    const WORD: &[u8] = b"sluice";
    let mut from = 0;
    while let Some(p) = b[from..].iter().position(|&c| c == b':') {
        let colon = from + p;
        if colon >= WORD.len() && b[colon - WORD.len()..colon].eq_ignore_ascii_case(WORD) {
            return true;
        }
        from = colon + 1;
    }
    false
}

/// Applies the `sluice:` words of one comment (already lowercase).
fn read_comment(text: &str, hints: &mut Hints) {
    let mut rest = text;
    while let Some(at) = rest.find("sluice:") {
        let boundary = rest[..at].chars().next_back().is_none_or(|c| !c.is_alphanumeric() && c != '_');
        rest = rest[at + "sluice:".len()..].trim_start();
        if !boundary {
            continue;
        }
        let (word, after) = take_word(rest);
        rest = after;
        match word {
            "primary" => hints.route = Some(RouteHint::Primary),
            "replica" => hints.route = Some(RouteHint::Replica),
            "nocache" => hints.cache = Some(CacheHint::NoCache),
            "cache" => {
                let (ttl, after) = ttl_option(rest);
                rest = after;
                hints.cache = Some(CacheHint::Cache { ttl });
            }
            _ => {}
        }
    }
}

/// `ttl = <duration>` right after `sluice:cache`, if present: (the ttl if valid, what follows).
fn ttl_option(text: &str) -> (Option<Duration>, &str) {
    let Some(after_key) = text.trim_start().strip_prefix("ttl") else { return (None, text) };
    let Some(value) = after_key.trim_start().strip_prefix('=') else { return (None, text) };
    let value = value.trim_start();
    let end = value.find(|c: char| !(c.is_ascii_alphanumeric() || c == '.')).unwrap_or(value.len());
    (ConfigDuration::parse(&value[..end]).ok().map(|d| d.0), &value[end..])
}

/// The leading word of letters and underscores, and what follows it.
fn take_word(text: &str) -> (&str, &str) {
    let end = text.find(|c: char| !(c.is_ascii_alphabetic() || c == '_')).unwrap_or(text.len());
    text.split_at(end)
}

/// The texts of the comments in `sql` that are outside literals, quoted identifiers and
/// dollar-quoted bodies (a nested block comment is part of its outer one).
fn comments(sql: &str) -> Vec<&str> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\'' => i = skip_string(b, i),
            b'"' => i = skip_quoted(b, i, false),
            b'-' if b.get(i + 1) == Some(&b'-') => {
                let end = b[i..].iter().position(|&c| c == b'\n' || c == b'\r').map_or(b.len(), |p| i + p);
                out.push(&sql[i + 2..end]);
                i = end;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let (end, body_end) = skip_block_comment(b, i);
                out.push(&sql[i + 2..body_end]);
                i = end;
            }
            b'$' if i == 0 || !is_ident_byte(b[i - 1]) => i = skip_dollar_quoted(b, i),
            _ => i += 1,
        }
    }
    out
}

/// Letters, digits, `_`, `$` and any non-ASCII byte continue an identifier.
fn is_ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// From a `'`: past the string. Backslash escapes count only in `E'...'` strings.
fn skip_string(b: &[u8], start: usize) -> usize {
    let escape = start > 0 && b[start - 1].eq_ignore_ascii_case(&b'e') && (start < 2 || !is_ident_byte(b[start - 2]));
    skip_quoted(b, start, escape)
}

/// From an opening quote, the index after its closing quote (a doubled quote is an escape).
pub(crate) fn skip_quoted(b: &[u8], start: usize, backslash_escapes: bool) -> usize {
    let q = b[start];
    let mut i = start + 1;
    while i < b.len() {
        if b[i] == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += if backslash_escapes && b[i] == b'\\' { 2 } else { 1 };
    }
    b.len()
}

/// From `/*`, the index after the comment (block comments nest, as in PostgreSQL); `None` if
/// it never ends.
pub(crate) fn block_comment_end(b: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = start;
    while i + 1 < b.len() {
        if b[i] == b'/' && b[i + 1] == b'*' {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && b[i + 1] == b'/' {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return Some(i);
            }
        } else {
            i += 1;
        }
    }
    None
}

/// From `/*`, (index after the comment, index where its text ends).
fn skip_block_comment(b: &[u8], start: usize) -> (usize, usize) {
    block_comment_end(b, start).map_or((b.len(), b.len()), |end| (end, end - 2))
}

/// From a `$`: past a dollar-quoted body if one starts here (`$$` or `$tag$`), else past the `$`
/// (a parameter such as `$1`).
fn skip_dollar_quoted(b: &[u8], start: usize) -> usize {
    let tag_len = b[start + 1..].iter().position(|&c| !is_ident_byte(c) || c == b'$');
    let Some(tag_len) = tag_len.filter(|&n| b.get(start + 1 + n) == Some(&b'$')) else { return start + 1 };
    if b.get(start + 1).is_some_and(u8::is_ascii_digit) {
        return start + 1;
    }
    let tag = &b[start..start + tag_len + 2];
    let body = start + tag.len();
    b[body..].windows(tag.len()).position(|w| w == tag).map_or(b.len(), |p| body + p + tag.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(sql: &str) -> Option<RouteHint> {
        parse_hints(sql).route
    }

    #[test]
    fn route_hints_anywhere_in_the_statement() {
        assert_eq!(route("/* sluice:primary */ SELECT 1"), Some(RouteHint::Primary));
        assert_eq!(route("SELECT 1 /*sluice:replica*/"), Some(RouteHint::Replica));
        assert_eq!(route("SELECT /* SLUICE:Replica */ 1"), Some(RouteHint::Replica));
        assert_eq!(route("SELECT /*\n\tsluice:  primary\n*/ 1"), Some(RouteHint::Primary));
        assert_eq!(route("SELECT 1 -- sluice:replica"), Some(RouteHint::Replica));
        assert_eq!(route("SELECT 1"), None);
    }

    #[test]
    fn cache_hints_with_and_without_ttl() {
        let cache = |sql| parse_hints(sql).cache;
        let ttl = |d| Some(CacheHint::Cache { ttl: Some(d) });
        assert_eq!(cache("/* sluice:cache ttl=10s */ SELECT 1"), ttl(Duration::from_secs(10)));
        assert_eq!(cache("/* sluice:cache TTL = 250MS */ SELECT 1"), ttl(Duration::from_millis(250)));
        assert_eq!(cache("/* sluice:cache ttl=10m*/ SELECT 1"), ttl(Duration::from_secs(600)));
        assert_eq!(cache("/* sluice:cache */ SELECT 1"), Some(CacheHint::Cache { ttl: None }));
        assert_eq!(cache("/* sluice:cache ttl=soon */ SELECT 1"), Some(CacheHint::Cache { ttl: None }));
        assert_eq!(cache("/* sluice:nocache */ SELECT 1"), Some(CacheHint::NoCache));
        let both = parse_hints("/* sluice:replica sluice:cache ttl=250ms */ SELECT 1");
        assert_eq!(both.route, Some(RouteHint::Replica));
        assert_eq!(both.cache, ttl(Duration::from_millis(250)));
    }

    #[test]
    fn the_last_hint_of_a_kind_wins() {
        assert_eq!(route("/* sluice:replica */ SELECT /* sluice:primary */ 1"), Some(RouteHint::Primary));
    }

    #[test]
    fn hint_text_inside_literals_and_identifiers_is_not_a_hint() {
        assert_eq!(route("SELECT '/* sluice:primary */'"), None);
        assert_eq!(route("SELECT 'it''s /* sluice:primary */'"), None);
        assert_eq!(route("SELECT E'it\\'s /* sluice:primary */'"), None);
        assert_eq!(route("SELECT 1 AS \"/* sluice:primary */\""), None);
        assert_eq!(route("SELECT 1 AS \"a\"\"/* sluice:primary */\""), None);
        assert_eq!(route("SELECT $$ /* sluice:primary */ $$"), None);
        assert_eq!(route("SELECT $f$ /* sluice:primary */ $f$"), None);
        assert_eq!(route("SELECT $f$ $$ /* sluice:primary */ $f$"), None);
    }

    #[test]
    fn a_backslash_ends_nothing_in_a_standard_string() {
        assert_eq!(route("SELECT 'C:\\' /* sluice:primary */"), Some(RouteHint::Primary));
        assert_eq!(route("SELECT 'a\\', '/* sluice:primary */'"), None);
    }

    #[test]
    fn parameters_and_dollar_identifiers_are_not_dollar_quotes() {
        assert_eq!(route("SELECT $1 /* sluice:primary */ , $2"), Some(RouteHint::Primary));
        assert_eq!(route("SELECT a$b$ /* sluice:primary */ , c$b$"), Some(RouteHint::Primary));
    }

    #[test]
    fn unknown_words_and_unterminated_input_are_harmless() {
        assert_eq!(parse_hints("/* sluice:bogus */ SELECT 1"), Hints::default());
        assert_eq!(parse_hints("/* notsluice:primary */ SELECT 1"), Hints::default());
        assert_eq!(parse_hints("/* sluice:primary"), Hints { route: Some(RouteHint::Primary), cache: None });
        assert_eq!(parse_hints("SELECT 'sluice: /*"), Hints::default());
        assert_eq!(parse_hints("$sluice:"), Hints::default());
        assert_eq!(
            parse_hints("/* sluice:cache ttl="),
            Hints { route: None, cache: Some(CacheHint::Cache { ttl: None }) }
        );
        assert_eq!(parse_hints("é/* sluice:é */ sluice:"), Hints::default());
    }

    #[test]
    fn text_without_the_marker_is_not_scanned() {
        assert!(!mentions_sluice(b"SELECT x::int FROM t"));
        assert!(mentions_sluice(b"/* SLUICE:primary */"));
        assert!(!mentions_sluice(b":sluice"));
    }
}
