//! `/* sluice:... */` hints: SQL comments that override where a statement runs or whether its
//! result is cached. Only real comments count: the same text inside a string literal, a quoted
//! identifier or a dollar-quoted body is data, not a hint.

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
        /// Its own time to live, if given.
        ttl: Option<Duration>,
    },
    /// `/* sluice:nocache */`
    NoCache,
}

/// The hints of one statement (the last one of each kind wins).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hints {
    /// Routing override.
    pub route: Option<RouteHint>,
    /// Caching override.
    pub cache: Option<CacheHint>,
}

const MARK: &[u8] = b"sluice:";

/// Reads the hints in `sql`. Costs one substring search when there is none.
pub fn parse_hints(sql: &str) -> Hints {
    let mut hints = Hints::default();
    if !contains_ignore_case(sql.as_bytes(), MARK) {
        return hints;
    }
    for comment in block_comments(sql) {
        read_comment(comment, &mut hints);
    }
    hints
}

fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle))
}

/// Applies the `sluice:` words of one comment's text.
fn read_comment(text: &str, hints: &mut Hints) {
    let mut words = text.split_whitespace().peekable();
    while let Some(word) = words.next() {
        let Some(rest) = strip_prefix_ignore_case(word, "sluice:") else { continue };
        match rest.to_ascii_lowercase().as_str() {
            "primary" => hints.route = Some(RouteHint::Primary),
            "replica" => hints.route = Some(RouteHint::Replica),
            "nocache" => hints.cache = Some(CacheHint::NoCache),
            "cache" => {
                let ttl = words
                    .peek()
                    .and_then(|w| strip_prefix_ignore_case(w, "ttl="))
                    .and_then(|v| ConfigDuration::parse(v).ok())
                    .map(|d| d.0);
                if ttl.is_some() {
                    words.next();
                }
                hints.cache = Some(CacheHint::Cache { ttl });
            }
            _ => {}
        }
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

/// The texts of the block comments in `sql` that are outside literals, quoted identifiers and
/// dollar-quoted bodies (nested comments are part of their outer one).
fn block_comments(sql: &str) -> Vec<&str> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\'' | b'"' => i = skip_quoted(b, i),
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = b[i..].iter().position(|&c| c == b'\n').map_or(b.len(), |p| i + p + 1);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let (end, body_end) = skip_block_comment(b, i);
                out.push(&sql[i + 2..body_end]);
                i = end;
            }
            b'$' => i = skip_dollar_quoted(b, i),
            _ => i += 1,
        }
    }
    out
}

/// From an opening quote, the index after its closing quote (a doubled quote is an escape).
fn skip_quoted(b: &[u8], start: usize) -> usize {
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
        // E'...' strings may escape a quote with a backslash.
        if b[i] == b'\\' && q == b'\'' {
            i += 2;
            continue;
        }
        i += 1;
    }
    b.len()
}

/// From `/*`, (index after the comment, index where its text ends).
fn skip_block_comment(b: &[u8], start: usize) -> (usize, usize) {
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
                return (i, i - 2);
            }
        } else {
            i += 1;
        }
    }
    (b.len(), b.len())
}

/// From a `$`: past a dollar-quoted body if one starts here, else past the `$`.
fn skip_dollar_quoted(b: &[u8], start: usize) -> usize {
    let tag_len = b[start + 1..].iter().position(|&c| c == b'$');
    let Some(tag_len) = tag_len else { return start + 1 };
    let tag = &b[start..start + tag_len + 2];
    let tag_ok = tag[1..tag.len() - 1].iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_')
        && !tag.get(1).is_some_and(u8::is_ascii_digit);
    if !tag_ok {
        return start + 1;
    }
    let body = start + tag.len();
    b[body..].windows(tag.len()).position(|w| w == tag).map_or(b.len(), |p| body + p + tag.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_hints_anywhere_in_the_statement() {
        assert_eq!(parse_hints("/* sluice:primary */ SELECT 1").route, Some(RouteHint::Primary));
        assert_eq!(parse_hints("SELECT 1 /*sluice:replica*/").route, Some(RouteHint::Replica));
        assert_eq!(parse_hints("SELECT /* SLUICE:Replica */ 1").route, Some(RouteHint::Replica));
        assert_eq!(parse_hints("SELECT 1").route, None);
    }

    #[test]
    fn cache_hints_with_and_without_ttl() {
        assert_eq!(
            parse_hints("/* sluice:cache ttl=10s */ SELECT 1").cache,
            Some(CacheHint::Cache { ttl: Some(Duration::from_secs(10)) })
        );
        assert_eq!(parse_hints("/* sluice:cache */ SELECT 1").cache, Some(CacheHint::Cache { ttl: None }));
        assert_eq!(parse_hints("/* sluice:nocache */ SELECT 1").cache, Some(CacheHint::NoCache));
        let both = parse_hints("/* sluice:replica sluice:cache ttl=250ms */ SELECT 1");
        assert_eq!(both.route, Some(RouteHint::Replica));
        assert_eq!(both.cache, Some(CacheHint::Cache { ttl: Some(Duration::from_millis(250)) }));
    }

    #[test]
    fn hint_text_inside_literals_identifiers_and_line_comments_is_not_a_hint() {
        assert_eq!(parse_hints("SELECT '/* sluice:primary */'").route, None);
        assert_eq!(parse_hints("SELECT 'it''s /* sluice:primary */'").route, None);
        assert_eq!(parse_hints("SELECT 1 AS \"/* sluice:primary */\"").route, None);
        assert_eq!(parse_hints("SELECT $$ /* sluice:primary */ $$").route, None);
        assert_eq!(parse_hints("SELECT $f$ /* sluice:primary */ $f$").route, None);
        assert_eq!(parse_hints("SELECT 1 -- /* sluice:primary */").route, None);
        assert_eq!(parse_hints("SELECT $1 /* sluice:primary */").route, Some(RouteHint::Primary));
    }

    #[test]
    fn unknown_words_and_unterminated_input_are_harmless() {
        assert_eq!(parse_hints("/* sluice:bogus */ SELECT 1"), Hints::default());
        assert_eq!(parse_hints("/* sluice:primary"), Hints { route: Some(RouteHint::Primary), cache: None });
        assert_eq!(parse_hints("SELECT 'sluice: /*"), Hints::default());
        assert_eq!(parse_hints("$sluice:"), Hints::default());
    }
}
