//! The shape of a query text: the text with its numeric and string literals blanked out.
//!
//! How a statement is classified never depends on the value of a literal, so texts of the same
//! shape share one classification. Applications that inline their values (`... WHERE id = 42`,
//! pgbench's default mode) then pay for one parse per distinct statement, not per value.
//!
//! The scan is deliberately narrow. It follows PostgreSQL's lexical rules for what it
//! understands (comments, nested block comments, quoted identifiers, `$n` parameters, plain and
//! `E''` strings, unsigned numbers) and gives up — the text is then its own key — on anything
//! else that could hold a literal: dollar quoting, `B''`/`X''`/`N''`/`U&''` strings, a
//! backslash in a plain string (whose meaning depends on `standard_conforming_strings`), a
//! number run into a word. Giving up costs a parse; a wrong shape could route a write to a
//! replica, so there is no guessing.

/// Writes the shape of `sql` into `out` (cleared first). Returns `false` when `sql` has no
/// literal to blank out, or has something the scan does not understand: `sql` itself is then
/// the key.
pub(crate) fn literal_shape(sql: &str, out: &mut String) -> bool {
    out.clear();
    let b = sql.as_bytes();
    let mut copied = 0; // bytes of `sql` before this index are already in `out`
    let mut replaced = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let previous = if i > 0 { b[i - 1] } else { b' ' };
        match c {
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = b[i..].iter().position(|&c| c == b'\n').map_or(b.len(), |n| i + n + 1);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => match crate::router::hint::block_comment_end(b, i) {
                Some(end) => i = end,
                None => return false,
            },
            b'"' => match skip_quoted_identifier(b, i) {
                Some(end) => i = end,
                None => return false,
            },
            b'$' if !is_word_byte(previous) => {
                // `$1` is a parameter; anything else here opens a dollar-quoted string.
                if !b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    return false;
                }
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            b'\'' => {
                let backslash_escapes = match word_before(b, i) {
                    b"" if previous != b'&' => false,
                    b"e" | b"E" => true,
                    _ => return false,
                };
                let Some(end) = skip_string(b, i, backslash_escapes) else { return false };
                out.push_str(&sql[copied..i]);
                out.push_str("''");
                copied = end;
                replaced = true;
                i = end;
            }
            b'0'..=b'9' if !is_word_byte(previous) && previous != b'.' => {
                let end = skip_number(b, i);
                if b.get(end).is_some_and(|&c| is_word_byte(c) || c == b'.') {
                    return false;
                }
                out.push_str(&sql[copied..i]);
                out.push('0');
                copied = end;
                replaced = true;
                i = end;
            }
            _ => i += 1,
        }
    }
    out.push_str(&sql[copied..]);
    replaced
}

/// Bytes that continue an identifier or keyword (every non-ASCII byte does, as in PostgreSQL).
fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// The identifier or keyword that ends right before `at`.
fn word_before(b: &[u8], at: usize) -> &[u8] {
    let start = b[..at].iter().rposition(|&c| !is_word_byte(c)).map_or(0, |p| p + 1);
    &b[start..at]
}

/// From `"`, the index after the quoted identifier (`""` inside is a quote); `None` if it
/// never ends.
fn skip_quoted_identifier(b: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < b.len() {
        if b[i] == b'"' {
            if b.get(i + 1) != Some(&b'"') {
                return Some(i + 1);
            }
            i += 1;
        }
        i += 1;
    }
    None
}

/// From `'`, the index after the string (`''` inside is a quote; with `backslash_escapes`, so
/// is `\'`). `None` if it never ends, or if a plain string holds a backslash.
fn skip_string(b: &[u8], start: usize, backslash_escapes: bool) -> Option<usize> {
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return Some(i + 1),
            b'\\' if backslash_escapes => i += 2,
            b'\\' => return None,
            _ => i += 1,
        }
    }
    None
}

/// From a digit, the index after the unsigned number: digits, an optional fraction, an
/// optional exponent.
fn skip_number(b: &[u8], start: usize) -> usize {
    let digits = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    let mut i = digits(start);
    if b.get(i) == Some(&b'.') && b.get(i + 1) != Some(&b'.') {
        i = digits(i + 1);
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(b.get(i + 1), Some(b'+' | b'-')));
        if b.get(i + 1 + sign).is_some_and(u8::is_ascii_digit) {
            i = digits(i + 1 + sign);
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::literal_shape;

    fn shape(sql: &str) -> Option<String> {
        let mut out = String::new();
        literal_shape(sql, &mut out).then_some(out)
    }

    #[test]
    fn numbers_and_strings_are_blanked_out() {
        assert_eq!(
            shape("SELECT abalance FROM pgbench_accounts WHERE aid = 4242").as_deref(),
            Some("SELECT abalance FROM pgbench_accounts WHERE aid = 0")
        );
        assert_eq!(
            shape("select * from t where a = 'it''s' and b in (1.5, 2e-3, 3.) and c = E'x\\'y'").as_deref(),
            Some("select * from t where a = '' and b in (0, 0, 0) and c = E''")
        );
        assert_eq!(shape("SELECT -7, interval '1 day'").as_deref(), Some("SELECT -0, interval ''"));
    }

    #[test]
    fn identifiers_parameters_and_comments_are_kept() {
        assert_eq!(shape("SELECT t1.c2 FROM t1 WHERE id = $1"), None);
        assert_eq!(
            shape("/* sluice:cache ttl=30 '5' */ SELECT \"col 1\" FROM \"t\"\"2\" -- 7 '8'\nWHERE x = 9").as_deref(),
            Some("/* sluice:cache ttl=30 '5' */ SELECT \"col 1\" FROM \"t\"\"2\" -- 7 '8'\nWHERE x = 0")
        );
        assert_eq!(shape("/* outer /* inner 1 */ still 2 */ SELECT 3").as_deref(), Some("/* outer /* inner 1 */ still 2 */ SELECT 0"));
    }

    #[test]
    fn texts_differing_only_in_literals_share_a_shape() {
        let a = shape("UPDATE t SET v = v + 1 WHERE k = 'a'").unwrap();
        let b = shape("UPDATE t SET v = v + 100 WHERE k = 'bcd'").unwrap();
        assert_eq!(a, b);
        assert_ne!(shape("SELECT 1 FROM t").unwrap(), shape("SELECT 1 FROM u").unwrap());
        assert_ne!(shape("SELECT 'a' 'b'").unwrap(), shape("SELECT 'a'").unwrap());
    }

    #[test]
    fn anything_the_scan_does_not_understand_is_its_own_key() {
        for sql in [
            "SELECT $$1$$",
            "SELECT $tag$ 'x' $tag$",
            "SELECT B'0101'",
            "SELECT X'1f'",
            "SELECT N'x'",
            "SELECT U&'d\\0061t'",
            "SELECT 'a\\' , 1",
            "SELECT 1abc",
            "SELECT 'unterminated",
            "SELECT 1 /* unterminated",
            "SELECT \"unterminated",
            "SELECT 1.2.3",
        ] {
            assert_eq!(shape(sql), None, "{sql}");
        }
    }

    #[test]
    fn shapes_are_their_own_shape() {
        for sql in ["SELECT 1, 'x', E'y', 2.5e10 FROM t WHERE a = $1", "INSERT INTO t VALUES (1, 'a''b')"] {
            let once = shape(sql).unwrap();
            let mut again = String::new();
            literal_shape(&once, &mut again);
            assert_eq!(again, once);
        }
    }
}
