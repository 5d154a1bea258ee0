//! A query text as statements: tokenized once, split at its semicolons as the server splits a
//! simple query, each statement parsed on its own with sqlparser's PostgreSQL dialect.
//!
//! Some PostgreSQL syntax sqlparser 0.59 does not know is rewritten, at the token level, to an
//! equivalent it knows, and only for a statement that failed to parse:
//! `TABLE t` (as `SELECT * FROM t`), `ABORT` (as `ROLLBACK`), `FOR NO KEY UPDATE` /
//! `FOR KEY SHARE` (as `FOR UPDATE` / `FOR SHARE`), and `[NOT] DEFERRABLE` in transaction
//! modes (dropped). A statement that still fails is judged by its first word: a few commands
//! that change no table data (`RESET`, `LOCK`, `VACUUM`...) are [`Parsed::NoDataEffect`],
//! anything else is [`Parsed::Unknown`]. The inheritance marker `ONLY` (`FROM ONLY t`), which
//! sqlparser misreads as a table name, is dropped before parsing.

use super::budget::{Budget, Shape};
use sqlparser::ast::Statement;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer, Whitespace};

/// One statement of a query text.
#[derive(Debug)]
pub(crate) enum Parsed {
    /// It parsed.
    Statement(Box<Statement>),
    /// It did not parse, but its command writes no table data (`RESET`, `LOCK`, ...).
    NoDataEffect,
    /// It did not parse (or the whole text did not tokenize): it may do anything.
    Unknown,
}

/// Commands that change no table data, for statements sqlparser cannot parse.
const NO_DATA_EFFECT: &[&str] = &[
    "reset",
    "lock",
    "abort",
    "checkpoint",
    "vacuum",
    "analyze",
    "analyse",
    "reindex",
    "cluster",
    "listen",
    "unlisten",
    "notify",
    "set",
    "discard",
    "deallocate",
    "close",
    "fetch",
    "move",
    "savepoint",
    "release",
    "rollback",
    "commit",
    "end",
    "begin",
    "start",
    "load",
    "prepare",
];

/// A query text cut into statements, not yet parsed.
pub(crate) struct Split {
    /// The tokens of each statement that has more than whitespace and comments.
    chunks: Vec<Vec<TokenWithSpan>>,
    /// What parsing them may cost.
    pub(crate) budget: Budget,
}

/// Tokenizes `sql` and cuts it at its semicolons; `None` when the text does not tokenize (an
/// unterminated literal or comment, for instance).
pub(crate) fn split(sql: &str) -> Option<Split> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize_with_location().ok()?;
    let mut chunks = Vec::new();
    let mut budget = Budget::default();
    let mut chunk: Vec<TokenWithSpan> = Vec::new();
    let mut shape = Shape::default();
    let mut previous_word: Option<Keyword> = None;
    for mut token in tokens {
        if let Token::Word(w) = &token.token {
            // `FROM ONLY t`, `UPDATE ONLY t`, `TABLE ONLY t`: sqlparser would read ONLY as
            // the table and `t` as its alias. ONLY is reserved in PostgreSQL, so outside
            // READ ONLY and FETCH ... ROWS ONLY it is this inheritance marker: drop it.
            let marker = w.keyword == Keyword::ONLY
                && w.quote_style.is_none()
                && !matches!(previous_word, Some(Keyword::READ | Keyword::ROW | Keyword::ROWS));
            previous_word = Some(w.keyword);
            if marker {
                token.token = Token::Whitespace(Whitespace::Space);
            }
        } else if significant(&token.token) {
            previous_word = None;
        }
        if token.token == Token::SemiColon {
            if chunk.iter().any(|t| significant(&t.token)) {
                chunks.push(std::mem::take(&mut chunk));
                budget.add(&shape);
            }
            chunk.clear();
            shape = Shape::default();
            continue;
        }
        if significant(&token.token) {
            shape.push(&token.token);
        }
        chunk.push(token);
    }
    if chunk.iter().any(|t| significant(&t.token)) {
        chunks.push(chunk);
        budget.add(&shape);
    }
    Some(Split { chunks, budget })
}

/// Parses the statements of `split` (cut from `sql`), in order.
pub(crate) fn statements(sql: &str, split: Split) -> Vec<Parsed> {
    let dialect = PostgreSqlDialect {};
    let mut out = Vec::with_capacity(split.chunks.len());
    // The tokens again, for the statements that fail (the parser consumed the first copy).
    let mut again: Option<Vec<Vec<TokenWithSpan>>> = None;
    for (i, chunk) in split.chunks.into_iter().enumerate() {
        match parse_one(&dialect, chunk) {
            Ok(st) => out.push(Parsed::Statement(Box::new(st))),
            Err(_) => {
                let tokens = again.get_or_insert_with(|| self::split(sql).map(|s| s.chunks).unwrap_or_default());
                out.push(fallback(&dialect, std::mem::take(&mut tokens[i])));
            }
        }
    }
    out
}

/// A statement that failed to parse: parsed again after [`rewrite`], else judged by its first
/// word.
fn fallback(dialect: &PostgreSqlDialect, tokens: Vec<TokenWithSpan>) -> Parsed {
    let first_word =
        tokens.iter().find(|t| significant(&t.token)).and_then(|t| word(&t.token)).map(str::to_ascii_lowercase);
    match rewrite(tokens).map(|t| parse_one(dialect, t)) {
        Some(Ok(st)) => Parsed::Statement(Box::new(st)),
        _ if first_word.as_deref().is_some_and(|w| NO_DATA_EFFECT.contains(&w)) => Parsed::NoDataEffect,
        _ => Parsed::Unknown,
    }
}

/// Parses exactly one statement. A separator is appended because `COPY ... FROM STDIN`
/// expects one (and then inline data, of which there is none here).
fn parse_one(dialect: &PostgreSqlDialect, mut tokens: Vec<TokenWithSpan>) -> Result<Statement, ParserError> {
    tokens.push(TokenWithSpan::wrap(Token::SemiColon));
    let mut parser = Parser::new(dialect).with_tokens_with_locations(tokens);
    let st = parser.parse_statement()?;
    let _ = parser.consume_token(&Token::SemiColon);
    match parser.peek_token().token {
        Token::EOF => Ok(st),
        other => Err(ParserError::ParserError(format!("unexpected {other} after the statement"))),
    }
}

fn significant(t: &Token) -> bool {
    !matches!(t, Token::Whitespace(_))
}

/// The text of an unquoted word.
fn word(t: &Token) -> Option<&str> {
    match t {
        Token::Word(w) if w.quote_style.is_none() => Some(&w.value),
        _ => None,
    }
}

fn is_word(t: &Token, w: &str) -> bool {
    word(t).is_some_and(|v| v.eq_ignore_ascii_case(w))
}

/// The statement with the PostgreSQL-only syntax sqlparser lacks replaced by what it knows;
/// `None` when there was nothing to replace.
fn rewrite(tokens: Vec<TokenWithSpan>) -> Option<Vec<TokenWithSpan>> {
    let blank = || Token::Whitespace(Whitespace::Space);
    let mut t: Vec<Token> = tokens.into_iter().map(|t| t.token).filter(significant).collect();
    let before = t.clone();
    let first = t.first().and_then(word).map(str::to_ascii_lowercase)?;
    match first.as_str() {
        "table" => {
            t.splice(0..1, [Token::make_keyword("SELECT"), Token::Mul, Token::make_keyword("FROM")]);
        }
        "abort" => t[0] = Token::make_keyword("ROLLBACK"),
        "begin" | "start" | "set" => {
            for i in 0..t.len() {
                if !is_word(&t[i], "deferrable") {
                    continue;
                }
                t[i] = blank();
                let mut start = i;
                if i > 0 && is_word(&t[i - 1], "not") {
                    t[i - 1] = blank();
                    start = i - 1;
                }
                if start > 0 && t[start - 1] == Token::Comma {
                    t[start - 1] = blank();
                } else if t.get(i + 1) == Some(&Token::Comma) {
                    t[i + 1] = blank();
                }
            }
        }
        _ => {}
    }
    for i in 0..t.len() {
        if !is_word(&t[i], "for") {
            continue;
        }
        if t.len() > i + 3 && is_word(&t[i + 1], "no") && is_word(&t[i + 2], "key") && is_word(&t[i + 3], "update") {
            t[i + 1] = blank();
            t[i + 2] = blank();
        } else if t.len() > i + 2 && is_word(&t[i + 1], "key") && is_word(&t[i + 2], "share") {
            t[i + 1] = blank();
        }
    }
    if t == before {
        return None;
    }
    // Words must stay apart: put a space between every two tokens.
    let spaced = t.into_iter().filter(significant).flat_map(|tok| [tok, blank()]);
    Some(spaced.map(TokenWithSpan::wrap).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(sql: &str) -> Vec<&'static str> {
        statements(sql, split(sql).unwrap())
            .iter()
            .map(|p| match p {
                Parsed::Statement(_) => "statement",
                Parsed::NoDataEffect => "no data effect",
                Parsed::Unknown => "unknown",
            })
            .collect()
    }

    #[test]
    fn a_simple_query_splits_at_semicolons_outside_literals() {
        assert_eq!(kinds("SELECT ';'; SELECT $$;$$ /* ; */ -- ;\n"), ["statement", "statement"]);
        assert_eq!(kinds(" ; ;; -- nothing\n /* at all */"), Vec::<&str>::new());
    }

    #[test]
    fn copy_from_stdin_parses_without_inline_data() {
        assert_eq!(kinds("COPY t (a, b) FROM STDIN WITH (FORMAT csv); DROP TABLE x"), ["statement", "statement"]);
    }

    #[test]
    fn postgres_syntax_unknown_to_sqlparser_is_rewritten() {
        assert_eq!(kinds("TABLE t"), ["statement"]);
        assert_eq!(kinds("ABORT"), ["statement"]);
        assert_eq!(
            kinds("SELECT * FROM t FOR NO KEY UPDATE; SELECT * FROM t FOR KEY SHARE"),
            ["statement", "statement"]
        );
        assert_eq!(kinds("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE"), ["statement"]);
        assert_eq!(kinds("START TRANSACTION NOT DEFERRABLE, READ ONLY"), ["statement"]);
        assert_eq!(kinds("START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE"), ["statement"]);
    }

    #[test]
    fn unparsable_statements_are_judged_by_their_first_word() {
        assert_eq!(kinds("RESET ALL; LOCK TABLE t IN ACCESS EXCLUSIVE MODE"), ["no data effect", "no data effect"]);
        assert_eq!(kinds("REFRESH MATERIALIZED VIEW mv; DO $$ BEGIN END $$"), ["unknown", "unknown"]);
        assert!(split("SELECT 'unterminated").is_none());
    }
}
