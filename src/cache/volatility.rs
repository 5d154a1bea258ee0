//! What in a statement's text makes its result depend on more than its tables and the key:
//! calls of functions that are volatile, read the clock or the session (`now()`, `random()`,
//! `current_user`, `current_setting(...)`), or may read tables the statement does not name
//! (any user function); literals that denote a relative time (`'now'`, `'today'`); and
//! statements that are not queries (`SHOW`, `EXPLAIN`).
//!
//! The classifier does not (yet) report the functions a read calls, so this is a conservative
//! lexical rule, one pass over the text without allocating:
//! - every word followed by `(` must be in [`DETERMINISTIC`] (deterministic built-ins, SQL
//!   keywords, type names), unless it follows `)`, `AS` or `WITH` (an alias's column list or a
//!   CTE's). A call qualified by a schema other than `pg_catalog` is a user function;
//! - none of the SQL keywords that read the clock or the session ([`CLOCK_AND_SESSION`])
//!   appears unquoted, anywhere;
//! - no string literal (plain, escape or dollar-quoted) contains `now`, `today`, `tomorrow`
//!   or `yesterday` as a word;
//! - each statement starts with `SELECT`, `WITH`, `VALUES`, `TABLE` or `(`.
//!
//! It errs towards not caching: a column named `user` or a literal `'buy now'` makes a read
//! uncacheable, and so does a function whose name shadows a built-in in a schema that comes
//! before `pg_catalog` in `search_path` (only when `pg_catalog` is placed there explicitly).
//! Operators are not looked at: a user-defined operator backed by a volatile function is not
//! seen.

use crate::router::hint::skip_quoted;
use super::Bypass;

/// Words that may be followed by `(` in a cacheable read: deterministic built-in functions
/// (given the session settings in the key), SQL keywords and type names. Sorted (a test checks).
#[rustfmt::skip]
pub const DETERMINISTIC: &[&str] = &[
    "abs", "acos", "all", "and", "any", "any_value", "array", "array_agg", "array_append",
    "array_cat", "array_dims", "array_fill", "array_length", "array_lower", "array_ndims",
    "array_position", "array_positions", "array_prepend", "array_remove", "array_replace",
    "array_to_json", "array_to_string", "array_upper", "as", "ascii", "asin", "atan", "atan2",
    "avg", "between", "bit", "bit_and", "bit_count", "bit_length", "bit_or", "bit_xor", "bool_and",
    "bool_or", "btrim", "by", "cardinality", "case", "cast", "cbrt", "ceil", "ceiling", "char",
    "char_length", "character", "character_length", "chr", "coalesce", "collate", "concat",
    "concat_ws", "convert_from", "convert_to", "corr", "cos", "cosh", "count", "covar_pop",
    "covar_samp", "cross", "cube", "cume_dist", "date_add", "date_bin", "date_part",
    "date_subtract", "date_trunc", "daterange", "dec", "decimal", "decode", "degrees", "dense_rank",
    "distinct", "div", "else", "encode", "escape", "every", "except", "exists", "exp", "extract",
    "factorial", "fetch", "filter", "first", "first_value", "float", "floor", "format", "from",
    "full", "gcd", "generate_series", "generate_subscripts", "get_byte", "greatest", "group",
    "grouping", "groups", "having", "ilike", "in", "initcap", "inner", "int4range", "int8range",
    "intersect", "interval", "is", "isempty", "isfinite", "join", "json_agg", "json_agg_strict",
    "json_array_elements", "json_array_elements_text", "json_array_length", "json_build_array",
    "json_build_object", "json_each", "json_each_text", "json_extract_path",
    "json_extract_path_text", "json_object", "json_object_agg", "json_object_keys",
    "json_populate_record", "json_populate_recordset", "json_strip_nulls", "json_to_record",
    "json_to_recordset", "json_typeof", "jsonb_agg", "jsonb_agg_strict", "jsonb_array_elements",
    "jsonb_array_elements_text", "jsonb_array_length", "jsonb_build_array", "jsonb_build_object",
    "jsonb_each", "jsonb_each_text", "jsonb_extract_path", "jsonb_extract_path_text",
    "jsonb_insert", "jsonb_object", "jsonb_object_agg", "jsonb_object_keys", "jsonb_path_exists",
    "jsonb_path_match", "jsonb_path_query", "jsonb_path_query_array", "jsonb_path_query_first",
    "jsonb_populate_record", "jsonb_populate_recordset", "jsonb_pretty", "jsonb_set",
    "jsonb_set_lax", "jsonb_strip_nulls", "jsonb_to_record", "jsonb_to_recordset", "jsonb_typeof",
    "justify_days", "justify_hours", "justify_interval", "lag", "last_value", "lateral", "lcm",
    "lead", "least", "left", "length", "like", "limit", "ln", "log", "log10", "lower", "lower_inc",
    "lower_inf", "lpad", "ltrim", "make_date", "make_interval", "make_time", "make_timestamp",
    "make_timestamptz", "materialized", "max", "md5", "min", "min_scale", "mod", "mode", "natural",
    "next", "normalize", "not", "nth_value", "ntile", "nullif", "numeric", "numnode", "numrange",
    "octet_length", "offset", "on", "only", "or", "order", "ordinality", "outer", "over", "overlay",
    "partition", "percent_rank", "percentile_cont", "percentile_disc", "phraseto_tsquery", "pi",
    "plainto_tsquery", "position", "pow", "power", "querytree", "quote_ident", "quote_literal",
    "quote_nullable", "radians", "range", "range_agg", "range_merge", "rank", "recursive",
    "regexp_count", "regexp_instr", "regexp_like", "regexp_match", "regexp_matches",
    "regexp_replace", "regexp_split_to_array", "regexp_split_to_table", "regexp_substr",
    "regr_avgx", "regr_avgy", "regr_count", "regr_intercept", "regr_r2", "regr_slope", "regr_sxx",
    "regr_sxy", "regr_syy", "repeat", "replace", "reverse", "right", "rollup", "round", "row",
    "row_number", "row_to_json", "rows", "rpad", "rtrim", "scale", "select", "sets", "setweight",
    "sha224", "sha256", "sha384", "sha512", "sign", "similar", "sin", "sinh", "some", "split_part",
    "sqrt", "starts_with", "stddev", "stddev_pop", "stddev_samp", "string_agg", "string_to_array",
    "string_to_table", "strip", "strpos", "substr", "substring", "sum", "tan", "tanh", "then",
    "time", "timestamp", "timestamptz", "timetz", "timezone", "to_char", "to_date", "to_hex",
    "to_json", "to_jsonb", "to_number", "to_timestamp", "to_tsquery", "to_tsvector", "translate",
    "treat", "trim", "trim_array", "trim_scale", "trunc", "ts_headline", "ts_rank", "ts_rank_cd",
    "tsrange", "tstzrange", "union", "unnest", "upper", "upper_inc", "upper_inf", "using", "values",
    "var_pop", "var_samp", "varchar", "variance", "varying", "websearch_to_tsquery", "when",
    "where", "width_bucket", "window", "with", "within", "xmlagg",
];

/// SQL keywords that read the clock or the session, without parentheses.
#[rustfmt::skip]
pub const CLOCK_AND_SESSION: &[&str] = &[
    "current_catalog", "current_date", "current_role", "current_schema", "current_time",
    "current_timestamp", "current_user", "localtime", "localtimestamp", "session_user",
    "system_user", "user",
];

/// Words that start a query.
const QUERY_START: &[&str] = &["select", "table", "values", "with"];

/// Words that, inside a literal or a text parameter, make a date or time relative to now.
const RELATIVE_TIME: &[&[u8]] = &[b"now", b"today", b"tomorrow", b"yesterday"];

/// Longest word compared (longer ones are not in the lists).
const MAX_WORD: usize = 64;

/// Checks the text of a read; see the module documentation for the rule.
pub fn check_text(sql: &str) -> Result<(), Bypass> {
    Scan { b: sql.as_bytes(), i: 0, prev: Prev::StatementStart }.run()
}

/// Whether `text` contains one of `now`, `today`, `tomorrow`, `yesterday` (any case) as a word.
pub fn mentions_relative_time(text: &[u8]) -> bool {
    let mut i = 0;
    while i < text.len() {
        if !text[i].is_ascii_alphabetic() {
            i += 1;
            continue;
        }
        let start = i;
        while i < text.len() && text[i].is_ascii_alphabetic() {
            i += 1;
        }
        let word = &text[start..i];
        if RELATIVE_TIME.iter().any(|w| w.eq_ignore_ascii_case(word)) {
            return true;
        }
    }
    false
}

/// The previous significant token, as far as the rule cares.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Prev {
    /// Start of the text or after `;`.
    StatementStart,
    /// `)`, `AS`, `WITH`, `RECURSIVE`: a word followed by `(` names columns, it is no call.
    ColumnListContext,
    /// A word followed by `.`: `pg_catalog.` (true) or another schema (false).
    Qualifier(bool),
    /// A word (to become a qualifier if `.` follows): whether it was `pg_catalog`.
    Word(bool),
    /// Anything else.
    Other,
}

struct Scan<'a> {
    b: &'a [u8],
    i: usize,
    prev: Prev,
}

impl Scan<'_> {
    fn run(mut self) -> Result<(), Bypass> {
        while self.i < self.b.len() {
            let c = self.b[self.i];
            match c {
                _ if c.is_ascii_whitespace() => self.i += 1,
                b'-' if self.b.get(self.i + 1) == Some(&b'-') => self.i = self.line_comment_end(self.i),
                b'/' if self.b.get(self.i + 1) == Some(&b'*') => self.i = self.block_comment_end(self.i),
                b'\'' => self.literal(self.escape_string())?,
                b'"' => {
                    let end = skip_quoted(self.b, self.i, false);
                    let inner = &self.b[self.i + 1..end.saturating_sub(1).max(self.i + 1)];
                    self.i = end;
                    self.word(inner, true)?;
                }
                b'$' if self.b.get(self.i + 1).is_some_and(u8::is_ascii_digit) => {
                    self.i += 1;
                    while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
                        self.i += 1;
                    }
                    self.prev = Prev::Other;
                }
                b'$' => self.dollar()?,
                _ if is_word_start(c) => {
                    let start = self.i;
                    while self.b.get(self.i).is_some_and(|&c| is_word_byte(c)) {
                        self.i += 1;
                    }
                    self.word(&self.b[start..self.i], false)?;
                }
                b'0'..=b'9' => {
                    while self.b.get(self.i).is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'.' || *c == b'_') {
                        self.i += 1;
                    }
                    self.prev = Prev::Other;
                }
                b';' => {
                    self.i += 1;
                    self.prev = Prev::StatementStart;
                }
                b'.' => {
                    self.i += 1;
                    self.prev = match self.prev {
                        Prev::Word(pg_catalog) => Prev::Qualifier(pg_catalog),
                        _ => Prev::Other,
                    };
                }
                b')' => {
                    self.i += 1;
                    self.prev = Prev::ColumnListContext;
                }
                _ => {
                    self.i += 1;
                    self.prev = Prev::Other;
                }
            }
        }
        Ok(())
    }

    /// A word (`quoted`: a quoted identifier's inside, compared in its exact case).
    fn word(&mut self, word: &[u8], quoted: bool) -> Result<(), Bypass> {
        let is = |w: &str| {
            w.len() == word.len() && if quoted { w.as_bytes() == word } else { w.as_bytes().eq_ignore_ascii_case(word) }
        };
        let prev = self.prev;
        if prev == Prev::StatementStart && (quoted || !QUERY_START.iter().any(|w| is(w))) {
            return Err(Bypass::NotASelect);
        }
        if !quoted && CLOCK_AND_SESSION.iter().any(|w| is(w)) {
            return Err(Bypass::VolatileCall);
        }
        if self.next_significant() == Some(b'(') {
            let mut buf = [0u8; MAX_WORD];
            let deterministic = lowercase(word, quoted, &mut buf)
                .is_some_and(|w| DETERMINISTIC.binary_search_by(|d| d.as_bytes().cmp(w)).is_ok());
            let allowed = match prev {
                Prev::ColumnListContext => true,
                Prev::Qualifier(pg_catalog) => pg_catalog && deterministic,
                _ => deterministic,
            };
            if !allowed {
                return Err(Bypass::VolatileCall);
            }
        }
        self.prev = if !quoted && (is("as") || is("with") || is("recursive")) {
            Prev::ColumnListContext
        } else {
            Prev::Word(is("pg_catalog"))
        };
        Ok(())
    }

    /// A string literal starting at `self.i`, with backslash escapes if `escape`.
    fn literal(&mut self, escape: bool) -> Result<(), Bypass> {
        let end = skip_quoted(self.b, self.i, escape);
        let inner = &self.b[self.i + 1..end.max(self.i + 1)];
        self.i = end;
        self.prev = Prev::Other;
        if mentions_relative_time(inner) {
            return Err(Bypass::RelativeTime);
        }
        Ok(())
    }

    /// Whether the literal at `self.i` is an `E'...'` string.
    fn escape_string(&self) -> bool {
        let i = self.i;
        i > 0 && self.b[i - 1].eq_ignore_ascii_case(&b'e') && (i < 2 || !is_word_byte(self.b[i - 2]))
    }

    /// From a `$` that is not a parameter: a dollar-quoted body, or a lone `$`.
    fn dollar(&mut self) -> Result<(), Bypass> {
        let b = self.b;
        let start = self.i;
        let tag_len = b[start + 1..].iter().position(|&c| !is_word_byte(c) || c == b'$');
        let Some(tag_len) = tag_len.filter(|&n| b.get(start + 1 + n) == Some(&b'$')) else {
            self.i += 1;
            self.prev = Prev::Other;
            return Ok(());
        };
        let tag = &b[start..start + tag_len + 2];
        let body = start + tag.len();
        let end = b[body..].windows(tag.len()).position(|w| w == tag).map_or(b.len(), |p| body + p);
        self.i = (end + tag.len()).min(b.len());
        self.prev = Prev::Other;
        if mentions_relative_time(&b[body..end]) {
            return Err(Bypass::RelativeTime);
        }
        Ok(())
    }

    /// The first byte after `self.i` that is not whitespace or in a comment.
    fn next_significant(&self) -> Option<u8> {
        let mut i = self.i;
        loop {
            match self.b.get(i)? {
                c if c.is_ascii_whitespace() => i += 1,
                b'-' if self.b.get(i + 1) == Some(&b'-') => i = self.line_comment_end(i),
                b'/' if self.b.get(i + 1) == Some(&b'*') => i = self.block_comment_end(i),
                &c => return Some(c),
            }
        }
    }

    fn line_comment_end(&self, from: usize) -> usize {
        self.b[from..].iter().position(|&c| c == b'\n').map_or(self.b.len(), |p| from + p + 1)
    }

    /// From `/*`, the index after the comment (block comments nest).
    fn block_comment_end(&self, from: usize) -> usize {
        crate::router::hint::block_comment_end(self.b, from).unwrap_or(self.b.len())
    }
}

/// `word` in lowercase (a quoted identifier as it is), if it is short enough to be in a list.
fn lowercase<'b>(word: &[u8], quoted: bool, buf: &'b mut [u8; MAX_WORD]) -> Option<&'b [u8]> {
    if word.len() > MAX_WORD {
        return None;
    }
    let out = &mut buf[..word.len()];
    out.copy_from_slice(word);
    if !quoted {
        out.make_ascii_lowercase();
    }
    Some(out)
}

fn is_word_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deterministic_list_is_sorted_for_binary_search() {
        assert!(DETERMINISTIC.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn plain_queries_with_deterministic_calls_pass() {
        for sql in [
            "SELECT id, lower(name) FROM users WHERE id = $1",
            "select count(*) from t where x in (1, 2) and exists (select 1 from u)",
            "SELECT a::numeric(10,2), CAST(b AS varchar(3)) FROM t",
            "WITH x(a) AS (SELECT 1) SELECT * FROM x",
            "SELECT g FROM generate_series(1, 3) AS g(x)",
            "SELECT * FROM (VALUES (1, 2)) v(a, b)",
            "(SELECT 1) UNION (SELECT 2)",
            "SELECT pg_catalog.lower('A')",
            "SELECT date_trunc('day', created_at) FROM t /* now() */ -- random()",
            "TABLE users",
            "SELECT 'a''b', E'c\\'x' || 'd' FROM t",
            "",
        ] {
            assert_eq!(check_text(sql), Ok(()), "{sql}");
        }
    }

    #[test]
    fn clock_random_and_session_reads_are_refused() {
        for sql in [
            "SELECT now()",
            "SELECT * FROM t WHERE at > NOW() - interval '1 day'",
            "SELECT * FROM t ORDER BY random()",
            "SELECT * FROM t WHERE d = current_date",
            "SELECT CURRENT_TIMESTAMP(3)",
            "SELECT current_user",
            "SELECT current_setting('app.tenant')",
            "SELECT clock_timestamp()",
            "SELECT gen_random_uuid()",
            "SELECT age(born) FROM people",
            "SELECT * FROM t TABLESAMPLE BERNOULLI (10)",
            "SELECT pg_is_in_recovery()",
            "SELECT \"now\"()",
        ] {
            assert_eq!(check_text(sql), Err(Bypass::VolatileCall), "{sql}");
        }
    }

    #[test]
    fn user_functions_are_refused_even_with_a_built_in_name() {
        assert_eq!(check_text("SELECT my_report(1)"), Err(Bypass::VolatileCall));
        assert_eq!(check_text("SELECT app.lower(name) FROM t"), Err(Bypass::VolatileCall));
        assert_eq!(check_text("SELECT pg_catalog.now()"), Err(Bypass::VolatileCall));
    }

    #[test]
    fn relative_time_literals_are_refused() {
        for sql in [
            "SELECT * FROM t WHERE day = 'today'",
            "SELECT * FROM t WHERE at > 'Yesterday 10:00'::timestamp",
            "SELECT 'now'::timestamptz",
            "SELECT $$tomorrow$$::date",
            "SELECT E'it\\'s', 'now'",
        ] {
            assert_eq!(check_text(sql), Err(Bypass::RelativeTime), "{sql}");
        }
        assert!(!mentions_relative_time(b"snow known"));
        assert!(mentions_relative_time(b"2024-01-01 or NOW"));
    }

    #[test]
    fn statements_that_are_not_queries_are_refused() {
        assert_eq!(check_text("SHOW TimeZone"), Err(Bypass::NotASelect));
        assert_eq!(check_text("EXPLAIN SELECT 1"), Err(Bypass::NotASelect));
        assert_eq!(check_text("SELECT 1; SHOW search_path"), Err(Bypass::NotASelect));
    }
}
