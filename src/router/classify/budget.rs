//! How much time and stack parsing a statement may take, judged from its tokens before
//! sqlparser sees it.
//!
//! sqlparser 0.59 has two weak spots a client could hit, by accident or on purpose:
//! - **time**: nested calls backtrack, so parse time roughly doubles with each level of
//!   `f(g(h(...)))` (14 levels take ~70 ms, 20 take seconds) and grows about eightfold per
//!   level of `(VALUES (...))`. A `(` after a function name counts as one call level, after
//!   VALUES as three; texts whose calls nest deeper than [`MAX_CALL_DEPTH`] levels, or whose
//!   nested calls add up past [`CALL_BUDGET`], are not parsed (they run on the primary as
//!   unknown writes);
//! - **stack**: parsing recurses once per nesting level (up to sqlparser's limit of 50, which
//!   can take ~1.7 MB in a release build), and walking and dropping the tree recurse once per
//!   operator of a chain such as `1+1+...+1`. A text whose estimated need exceeds
//!   [`INLINE_STACK`] is classified on a short-lived thread with a stack of its size.

use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::Token;

/// Call levels (a `(` right after a function name or VALUES) nested deeper than this make a
/// text too costly to parse.
pub(crate) const MAX_CALL_DEPTH: usize = 8;

/// The sum over all calls of 2^(depth - 1) a text may have (a nest of depth 8 costs 255).
pub(crate) const CALL_BUDGET: u64 = 2048;

/// Syntax tree nodes a text may have that could each add a level (operators, keywords).
pub(crate) const MAX_OPERATORS: usize = 200_000;

/// Stack a classification may use on the caller's thread (which is assumed to have at least
/// 2 MiB, as tokio's workers and Rust's threads do).
pub(crate) const INLINE_STACK: usize = 768 << 10;

/// Measured worst cases, with a margin: stack per nesting level of the parser, and per level
/// of the syntax tree while it is walked and dropped. Debug builds use about four and twenty
/// times as much.
const PER_NESTING: usize = if cfg!(debug_assertions) { 192 << 10 } else { 48 << 10 };
const PER_NODE: usize = if cfg!(debug_assertions) { 4 << 10 } else { 256 };
const BASE: usize = 64 << 10;

/// What the tokens of one statement say about the work of parsing it.
#[derive(Debug, Default, Clone)]
pub(crate) struct Shape {
    /// Tokens that may add a level to the syntax tree.
    operators: usize,
    /// Tokens that may make the parser recurse without a bracket: NOT, CASE, prefix operators.
    prefixes: usize,
    /// Open brackets, innermost last: how many call levels each counts for.
    open: Vec<usize>,
    calls_open: usize,
    max_brackets: usize,
    max_calls: usize,
    call_cost: u64,
    /// The previous significant token was an operand (so a `-` now is infix).
    after_operand: bool,
    /// How many call levels a `(` now would count for: 1 after a function name, 3 after
    /// VALUES, 0 after a clause keyword or a symbol.
    call_weight: usize,
}

impl Shape {
    /// Takes in the next significant token (not whitespace or comments).
    pub(crate) fn push(&mut self, t: &Token) {
        match t {
            Token::LParen | Token::LBracket => {
                let weight = if *t == Token::LParen { self.call_weight } else { 0 };
                self.open.push(weight);
                self.max_brackets = self.max_brackets.max(self.open.len());
                if weight > 0 {
                    self.calls_open += weight;
                    self.max_calls = self.max_calls.max(self.calls_open);
                    for level in self.calls_open - weight..self.calls_open {
                        self.call_cost = self.call_cost.saturating_add(1 << level.min(62));
                    }
                }
            }
            Token::RParen | Token::RBracket => {
                self.calls_open -= self.open.pop().unwrap_or(0);
            }
            Token::Word(w) => match w.keyword {
                Keyword::NoKeyword | Keyword::NULL | Keyword::TRUE | Keyword::FALSE | Keyword::DEFAULT => {}
                Keyword::NOT | Keyword::CASE => {
                    self.prefixes += 1;
                    self.operators += 1;
                }
                _ => self.operators += 1,
            },
            Token::Comma
            | Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::EscapedStringLiteral(_)
            | Token::DollarQuotedString(_)
            | Token::NationalStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::Placeholder(_)
            | Token::SemiColon
            | Token::EOF
            | Token::Whitespace(_) => {}
            _ => {
                self.operators += 1;
                if !self.after_operand {
                    self.prefixes += 1;
                }
            }
        }
        self.call_weight = match t {
            Token::Word(w) if w.quote_style.is_some() => 1,
            Token::Word(w) => match w.keyword {
                // sqlparser tries several readings of a row list: each level costs ~8 times the last.
                Keyword::VALUES => 3,
                Keyword::SELECT
                | Keyword::WHERE
                | Keyword::AND
                | Keyword::OR
                | Keyword::NOT
                | Keyword::ON
                | Keyword::FROM
                | Keyword::JOIN
                | Keyword::LATERAL
                | Keyword::IN
                | Keyword::EXISTS
                | Keyword::ANY
                | Keyword::ALL
                | Keyword::SOME
                | Keyword::AS
                | Keyword::WHEN
                | Keyword::THEN
                | Keyword::ELSE
                | Keyword::HAVING
                | Keyword::BY
                | Keyword::USING
                | Keyword::UNION
                | Keyword::INTERSECT
                | Keyword::EXCEPT
                | Keyword::RETURNING
                | Keyword::SET => 0,
                _ => 1,
            },
            _ => 0,
        };
        self.after_operand = match t {
            Token::Word(w) => w.keyword == Keyword::NoKeyword || w.quote_style.is_some(),
            Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::EscapedStringLiteral(_)
            | Token::DollarQuotedString(_)
            | Token::NationalStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::Placeholder(_)
            | Token::RParen
            | Token::RBracket => true,
            _ => false,
        };
    }

    /// Stack that parsing, walking and dropping this statement may need.
    fn stack(&self) -> usize {
        let nesting = (self.max_brackets + self.prefixes).min(64);
        BASE + nesting * PER_NESTING + self.operators.min(MAX_OPERATORS) * PER_NODE
    }
}

/// The shapes of a text's statements, together.
#[derive(Debug, Default)]
pub(crate) struct Budget {
    call_cost: u64,
    max_calls: usize,
    operators: usize,
    stack: usize,
}

impl Budget {
    /// Adds a statement.
    pub(crate) fn add(&mut self, s: &Shape) {
        self.call_cost = self.call_cost.saturating_add(s.call_cost);
        self.max_calls = self.max_calls.max(s.max_calls);
        self.operators = self.operators.max(s.operators);
        self.stack = self.stack.max(s.stack());
    }

    /// Whether parsing would take too long or too much stack: classify without parsing.
    pub(crate) fn too_costly(&self) -> bool {
        self.max_calls > MAX_CALL_DEPTH || self.call_cost > CALL_BUDGET || self.operators > MAX_OPERATORS
    }

    /// The stack the text needs, if more than the caller's thread can be assumed to spare.
    pub(crate) fn own_stack(&self) -> Option<usize> {
        (self.stack > INLINE_STACK).then_some(self.stack)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::tokenizer::Tokenizer;

    fn budget(sql: &str) -> Budget {
        let mut shape = Shape::default();
        for t in Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().unwrap() {
            if !matches!(t, Token::Whitespace(_)) {
                shape.push(&t);
            }
        }
        let mut b = Budget::default();
        b.add(&shape);
        b
    }

    #[test]
    fn nested_calls_are_costly_past_the_limit() {
        let nest = |n: usize| format!("SELECT {}1{}", "abs(".repeat(n), ")".repeat(n));
        assert!(!budget(&nest(MAX_CALL_DEPTH)).too_costly());
        assert!(budget(&nest(MAX_CALL_DEPTH + 1)).too_costly());
        let many = vec![nest(MAX_CALL_DEPTH); 9].join(", ");
        assert!(budget(&format!("SELECT {many}")).too_costly(), "the nests add up");
        let flat = vec!["coalesce(a, 0)"; 1000].join(", ");
        assert!(!budget(&format!("SELECT {flat}")).too_costly());
    }

    #[test]
    fn grouping_parentheses_and_subqueries_are_not_calls() {
        let sql = format!("SELECT {}1{}", "((SELECT ".repeat(20), "))".repeat(20));
        assert_eq!(budget(&sql).max_calls, 0);
        assert_eq!(budget("SELECT * FROM t WHERE a IN (SELECT f(g(1)))").max_calls, 2);
        assert_eq!(budget("SELECT * FROM (VALUES (1), (2)) v").max_calls, 3);
    }

    #[test]
    fn long_operator_chains_need_their_own_stack() {
        assert_eq!(budget("SELECT a + b - c * 2 FROM t WHERE x = 1 AND y = -2").own_stack(), None);
        let chain = format!("SELECT {}1", "1+".repeat(20_000));
        assert!(budget(&chain).own_stack().is_some_and(|s| s > 20_000 * PER_NODE));
        let nots = format!("SELECT {}true", "NOT ".repeat(40));
        assert!(budget(&nots).own_stack().is_some());
    }

    #[test]
    fn a_typical_statement_is_classified_inline() {
        let sql = "SELECT id, name, lower(email) FROM users WHERE id = $1 AND (deleted_at IS NULL OR deleted_at > now()) ORDER BY id LIMIT 10";
        if !cfg!(debug_assertions) {
            assert_eq!(budget(sql).own_stack(), None);
        }
        assert!(!budget(sql).too_costly());
    }
}
