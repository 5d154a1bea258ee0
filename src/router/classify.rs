//! What a statement does, as far as routing and caching care: a read that may run on a replica,
//! the start of a read-only transaction, or anything else. Parsed with sqlparser's PostgreSQL
//! dialect once per distinct query text; the result is cached by the text, so a repeated
//! statement costs a hash lookup.

mod functions;
#[cfg(test)]
mod tests;

use super::hint::{parse_hints, Hints};
use dashmap::DashMap;
use sqlparser::ast::{
    Expr, ObjectName, ObjectNamePart, Query, SetExpr, Statement, TableFactor, TransactionAccessMode,
    TransactionMode, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use std::collections::{BTreeSet, HashSet};
use std::ops::ControlFlow;
use std::sync::Arc;

/// Distinct query texts remembered at most; past it, new texts are parsed every time.
pub const CACHE_CAPACITY: usize = 10_000;

/// Texts longer than this are classified but not cached (they are rarely repeated verbatim).
const MAX_CACHED_TEXT: usize = 16 * 1024;

/// What a statement (or a simple query's statements together) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementClass {
    /// Autocommit reads that may run on a replica: SELECT, VALUES, TABLE, SHOW and EXPLAIN of
    /// those, without row locks, writable CTEs or SELECT INTO, calling only read-only functions.
    Read,
    /// BEGIN READ ONLY / START TRANSACTION READ ONLY, possibly followed by reads (and its
    /// COMMIT) in the same text.
    BeginReadOnly,
    /// Anything else: writes, DDL, read-write transactions, session state, unknown functions,
    /// text that does not parse.
    Write,
}

/// The classification of one query text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// What it does.
    pub class: StatementClass,
    /// Its `/* sluice:... */` hints (not applied to `class`).
    pub hints: Hints,
    /// The relations it names, lowercased as written (`t`, `public.t`).
    pub tables: Box<[Box<str>]>,
    /// A write whose targets cannot be known (DDL, DO, CALL, functions with effects, text that
    /// does not parse): a cache must forget everything of the database.
    pub writes_unknown: bool,
}

/// Classifies statements and remembers the answers.
pub struct Classifier {
    cache: DashMap<Box<str>, Arc<Classification>>,
    read_only_functions: HashSet<String>,
}

impl Classifier {
    /// A classifier that also trusts `read_only_functions` (names as configured, with or
    /// without a schema) to run on replicas.
    pub fn new(read_only_functions: &[String]) -> Self {
        Self {
            cache: DashMap::new(),
            read_only_functions: read_only_functions.iter().map(|f| f.to_ascii_lowercase()).collect(),
        }
    }

    /// Classifies `sql`, from the cache when the same text was seen before.
    pub fn classify(&self, sql: &str) -> Arc<Classification> {
        if let Some(hit) = self.cache.get(sql) {
            return hit.clone();
        }
        let c = Arc::new(self.classify_uncached(sql));
        if sql.len() <= MAX_CACHED_TEXT && self.cache.len() < CACHE_CAPACITY {
            self.cache.insert(sql.into(), c.clone());
        }
        c
    }

    /// Number of texts remembered.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    fn classify_uncached(&self, sql: &str) -> Classification {
        let hints = parse_hints(sql);
        let statements = match parse(sql) {
            Some(s) => s,
            None => {
                return Classification { class: StatementClass::Write, hints, tables: Box::new([]), writes_unknown: true }
            }
        };
        let mut tables = BTreeSet::new();
        let mut writes_unknown = false;
        let mut class: Option<StatementClass> = None;
        for (i, st) in statements.iter().enumerate() {
            let mut walk = Walk { functions: &self.read_only_functions, tables: &mut tables, effects: false };
            let _ = st.visit(&mut walk);
            let this = match statement_kind(st) {
                Kind::Read if !walk.effects => StatementClass::Read,
                Kind::BeginReadOnly if i == 0 => StatementClass::BeginReadOnly,
                Kind::TransactionEnd if class == Some(StatementClass::BeginReadOnly) => StatementClass::BeginReadOnly,
                Kind::Read | Kind::BeginReadOnly | Kind::TransactionEnd => StatementClass::Write,
                Kind::Write { known_targets } => {
                    writes_unknown |= !known_targets || walk.effects;
                    StatementClass::Write
                }
            };
            class = Some(match (class, this) {
                (None, c) => c,
                (Some(StatementClass::Write), _) | (_, StatementClass::Write) => StatementClass::Write,
                (Some(StatementClass::BeginReadOnly), _) => StatementClass::BeginReadOnly,
                (Some(StatementClass::Read), c) => c,
            });
        }
        Classification {
            // An empty query runs anywhere.
            class: class.unwrap_or(StatementClass::Read),
            hints,
            tables: tables.into_iter().collect(),
            writes_unknown,
        }
    }
}

/// Parses `sql`; `TABLE name`, which sqlparser does not know, is read as `SELECT * FROM name`.
fn parse(sql: &str) -> Option<Vec<Statement>> {
    match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
        Ok(s) => Some(s),
        Err(_) => {
            let trimmed = sql.trim_start();
            let rest = trimmed.get(..6).filter(|k| k.eq_ignore_ascii_case("table ")).map(|_| &trimmed[6..])?;
            Parser::parse_sql(&PostgreSqlDialect {}, &format!("SELECT * FROM {rest}")).ok()
        }
    }
}

enum Kind {
    Read,
    BeginReadOnly,
    /// COMMIT / ROLLBACK / END.
    TransactionEnd,
    Write {
        /// The tables it writes are among the relations it names.
        known_targets: bool,
    },
}

fn statement_kind(st: &Statement) -> Kind {
    match st {
        Statement::Query(q) if query_is_plain_read(q) => Kind::Read,
        Statement::Query(_) => Kind::Write { known_targets: true },
        Statement::ShowVariable { .. } => Kind::Read,
        Statement::Explain { analyze, statement, .. } => match statement_kind(statement) {
            Kind::Read => Kind::Read,
            // EXPLAIN without ANALYZE plans but does not run: fine on a replica.
            Kind::Write { .. } if !analyze => Kind::Read,
            other => other,
        },
        Statement::StartTransaction { modes, .. }
            if modes.iter().any(|m| matches!(m, TransactionMode::AccessMode(TransactionAccessMode::ReadOnly))) =>
        {
            Kind::BeginReadOnly
        }
        Statement::Commit { .. } | Statement::Rollback { .. } => Kind::TransactionEnd,
        Statement::Insert(_) | Statement::Update { .. } | Statement::Delete(_) | Statement::Merge { .. } => {
            Kind::Write { known_targets: true }
        }
        Statement::Truncate { .. } => Kind::Write { known_targets: true },
        _ => Kind::Write { known_targets: false },
    }
}

/// A query with no row locks, no SELECT INTO and no data-modifying parts (checked at the top
/// level; nested queries are walked by [`Walk`]).
fn query_is_plain_read(q: &Query) -> bool {
    q.locks.is_empty() && set_expr_is_plain_read(&q.body)
}

fn set_expr_is_plain_read(e: &SetExpr) -> bool {
    match e {
        SetExpr::Select(s) => s.into.is_none(),
        SetExpr::Query(q) => query_is_plain_read(q),
        SetExpr::SetOperation { left, right, .. } => set_expr_is_plain_read(left) && set_expr_is_plain_read(right),
        SetExpr::Values(_) | SetExpr::Table(_) => true,
        SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => false,
    }
}

/// Walks a statement: collects the relations it names and notes anything with effects inside
/// it (writable CTEs, row locks in subqueries, SELECT INTO, functions not known to be
/// read-only).
struct Walk<'a> {
    functions: &'a HashSet<String>,
    tables: &'a mut BTreeSet<Box<str>>,
    effects: bool,
}

impl Walk<'_> {
    fn function(&mut self, name: &ObjectName) {
        if !functions::is_read_only(name, self.functions) {
            self.effects = true;
        }
    }
}

impl Visitor for Walk<'_> {
    type Break = ();

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        self.tables.insert(object_name(relation).into());
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match factor {
            TableFactor::Table { name, args: Some(_), .. } | TableFactor::Function { name, .. } => self.function(name),
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if !query_is_plain_read(q) {
            self.effects = true;
        }
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                if !query_is_plain_read(&cte.query) {
                    self.effects = true;
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = expr {
            self.function(&f.name);
        }
        ControlFlow::Continue(())
    }
}

/// `schema.name`, lowercased, identifiers unquoted.
pub(crate) fn object_name(name: &ObjectName) -> String {
    let mut out = String::new();
    for (i, part) in name.0.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        match part {
            ObjectNamePart::Identifier(id) if id.quote_style.is_some() => out.push_str(&id.value),
            ObjectNamePart::Identifier(id) => out.push_str(&id.value.to_ascii_lowercase()),
            ObjectNamePart::Function(f) => out.push_str(&f.name.value.to_ascii_lowercase()),
        }
    }
    out
}
