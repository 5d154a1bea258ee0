//! PgBouncer's userlist.txt format: one `"user" "secret"` pair per line, `""` for a quote inside
//! a field, lines starting with `;` or `#` are comments.

use super::AuthError;
use std::path::Path;

/// Reads and parses a userlist file.
///
/// # Errors
/// [`AuthError::File`] naming the file and the line that does not parse.
pub fn parse_file(path: &Path) -> Result<Vec<(String, String)>, AuthError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AuthError::File { path: path.display().to_string(), reason: e.to_string() })?;
    parse(&text).map_err(|reason| AuthError::File { path: path.display().to_string(), reason })
}

/// Parses userlist text.
///
/// # Errors
/// A message naming the line that does not parse.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        let mut rest = line;
        let user = quoted(&mut rest).ok_or_else(|| format!("line {}: expected \"user\"", n + 1))?;
        rest = rest.trim_start();
        let secret = quoted(&mut rest).ok_or_else(|| format!("line {}: expected \"secret\"", n + 1))?;
        out.push((user, secret));
    }
    Ok(out)
}

fn quoted(rest: &mut &str) -> Option<String> {
    let s = rest.strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '"' {
            if let Some((_, '"')) = chars.peek() {
                out.push('"');
                chars.next();
                continue;
            }
            *rest = &s[i + 1..];
            return Some(out);
        }
        out.push(c);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs_comments_and_escaped_quotes() {
        let text = "; comment\n\"app\" \"secret\"\n# other\n\"o\"\"k\" \"md5abc\"\n\n";
        let v = parse(text).unwrap();
        assert_eq!(v, vec![("app".into(), "secret".into()), ("o\"k".into(), "md5abc".into())]);
    }

    #[test]
    fn unterminated_field_names_the_line() {
        let err = parse("\"a\" \"b\"\n\"c\" \"d").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }

    use proptest::collection::vec;
    use proptest::prelude::*;

    fn quote(s: &str) -> String {
        format!("\"{}\"", s.replace('"', "\"\""))
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}|[\" ;#\\na-z]{0,80}") {
            if let Ok(pairs) = parse(&text) {
                prop_assert!(pairs.len() <= text.lines().count());
            }
        }

        #[test]
        fn quoted_pairs_round_trip(pairs in vec(("[^\\r\\n]{0,20}", "[^\\r\\n]{0,40}"), 0..10)) {
            let text: String = pairs.iter().map(|(u, s)| format!("{} {}\n; comment\n", quote(u), quote(s))).collect();
            prop_assert_eq!(parse(&text).unwrap(), pairs);
        }

        #[test]
        fn a_line_cut_anywhere_inside_its_quotes_names_that_line(user in "[a-z\"]{1,10}", secret in "[a-z\"]{1,10}", cut in any::<proptest::sample::Index>()) {
            let line = format!("{} {}", quote(&user), quote(&secret));
            let cut = cut.index(line.len());
            let text = format!("\"ok\" \"ok\"\n{}", &line[..cut]);
            if let Err(e) = parse(&text) {
                prop_assert!(e.contains("line 2"), "{}", e);
            }
        }
    }
}
