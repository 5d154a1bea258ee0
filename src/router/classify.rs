//! What a query text does, as far as routing and caching care: reads that may run on a
//! replica, the start of a read-only transaction, or anything else; and which tables it reads
//! or writes. Parsed with sqlparser's PostgreSQL dialect once per distinct text; the answer is
//! cached by the text, so a repeated statement costs a hash lookup, and by the text's shape
//! (its literals blanked out), so a statement repeated with other values costs a scan of the
//! text and a hash lookup.
//!
//! - `parse`: splitting a simple query into statements, and the PostgreSQL syntax sqlparser
//!   lacks;
//! - `budget`: texts too costly to parse, and texts that need a bigger stack;
//! - `walk`: what one statement reads, writes and calls;
//! - `functions`: which functions may run on a replica;
//! - `shape`: texts that differ only in their literals.

mod budget;
mod functions;
mod parse;
mod shape;
#[cfg(test)]
mod tests;
mod walk;

use super::hint::{parse_hints, Hints};
use dashmap::DashMap;
use functions::ReadOnlyFunctions;
use parse::Parsed;
use sqlparser::ast::{ObjectName, ObjectNamePart, Statement, TransactionAccessMode, TransactionMode};
use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use walk::Walk;

/// Distinct query texts (or shapes) remembered at most; when full, the cache is emptied and
/// refills with the texts still in use.
pub const CACHE_CAPACITY: usize = 10_000;

/// Texts longer than this are classified but not cached (they are rarely repeated verbatim).
const MAX_CACHED_TEXT: usize = 16 * 1024;

/// What a query text (all of its statements together) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementClass {
    /// Autocommit reads that may run on a replica: SELECT, VALUES, TABLE, SHOW, and EXPLAIN of
    /// those; without row locks, writable CTEs or SELECT INTO; calling only read-only
    /// functions. An empty query is a read.
    Read,
    /// BEGIN READ ONLY / START TRANSACTION READ ONLY, possibly followed in the same text by
    /// reads, and by the COMMIT or ROLLBACK that ends it.
    BeginReadOnly,
    /// Anything else: writes, DDL, read-write transactions, session state, locks, functions
    /// not known to be read-only, text that does not parse. Runs on the primary.
    Write,
}

/// The classification of one query text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// What it does.
    pub class: StatementClass,
    /// Its `/* sluice:... */` hints (reported, not applied to `class`).
    pub hints: Hints,
    /// Relations, lowercase unless quoted, schema-qualified as written (`t`, `public.t`),
    /// sorted: for a [`Write`](StatementClass::Write) the tables it writes (DML, COPY FROM,
    /// SELECT INTO and DDL targets); otherwise the relations it reads (CTE names included).
    pub tables: Box<[Box<str>]>,
    /// A write whose targets cannot all be named (DDL on other objects, DO, CALL, EXECUTE,
    /// functions that may have effects, text that does not parse or is too costly to parse):
    /// a cache must forget everything of the database.
    pub writes_unknown: bool,
}

impl Classification {
    fn unknown_write(hints: Hints) -> Self {
        Self { class: StatementClass::Write, hints, tables: Box::new([]), writes_unknown: true }
    }
}

/// Classifies query texts and remembers the answers. Shared by all sessions (`&self`
/// everywhere; the cache is sharded, with no global lock).
pub struct Classifier {
    cache: DashMap<Box<str>, Arc<Classification>>,
    functions: ReadOnlyFunctions,
}

impl Classifier {
    /// A classifier that also trusts `read_only_functions` (names as configured, matched
    /// case-insensitively; `name` matches a call in any schema, `schema.name` matches that
    /// call and an unqualified `name(...)`) to run on replicas. Functions that write, lock or
    /// need a transaction id (`nextval`, `pg_advisory_lock`, `set_config`, ...) stay on the
    /// primary even if listed.
    pub fn new(read_only_functions: &[String]) -> Self {
        Self { cache: DashMap::new(), functions: ReadOnlyFunctions::new(read_only_functions) }
    }

    /// Classifies `sql`, from the cache when the same text, or a text of the same shape, was
    /// seen before.
    pub fn classify(&self, sql: &str) -> Arc<Classification> {
        if let Some(hit) = self.cache.get(sql) {
            return hit.clone();
        }
        thread_local! {
            static SHAPE: RefCell<String> = const { RefCell::new(String::new()) };
        }
        SHAPE.with(|shape| {
            let mut shape = shape.borrow_mut();
            let key: &str = if shape::literal_shape(sql, &mut shape) { &shape } else { sql };
            if let Some(hit) = self.cache.get(key) {
                return hit.clone();
            }
            let c = Arc::new(self.classify_uncached(sql));
            if key.len() <= MAX_CACHED_TEXT {
                if self.cache.len() >= CACHE_CAPACITY {
                    self.cache.clear();
                }
                self.cache.insert(key.into(), c.clone());
            }
            if shape.capacity() > MAX_CACHED_TEXT {
                *shape = String::new();
            }
            c
        })
    }

    /// Number of texts remembered.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Classifies `sql` without the cache. Never panics: text that cannot be classified
    /// safely (does not tokenize or parse, is too costly to parse, or makes the parser fail)
    /// is an unknown write.
    pub fn classify_uncached(&self, sql: &str) -> Classification {
        let hints = parse_hints(sql);
        let Some(split) = parse::split(sql) else { return Classification::unknown_write(hints) };
        if split.budget.too_costly() {
            return Classification::unknown_write(hints);
        }
        let judged = match split.budget.own_stack() {
            None => std::panic::catch_unwind(AssertUnwindSafe(|| self.judge(sql, split, hints))).ok(),
            // Parsed, walked and dropped on a thread with the stack the text needs.
            Some(stack) => std::thread::scope(|scope| {
                let worker = std::thread::Builder::new().name("sluice-classify".into()).stack_size(stack);
                worker.spawn_scoped(scope, || self.judge(sql, split, hints)).ok()?.join().ok()
            }),
        };
        // A panic in the parser is a bug there; the statement still runs, on the primary.
        judged.unwrap_or_else(|| {
            tracing::warn!(len = sql.len(), "classifying a statement failed; it runs on the primary");
            Classification::unknown_write(hints)
        })
    }

    /// Parses and walks the statements of `split`.
    fn judge(&self, sql: &str, split: parse::Split, hints: Hints) -> Classification {
        let mut walk = Walk::new(&self.functions);
        let mut class: Option<StatementClass> = None;
        for (i, parsed) in parse::statements(sql, split).iter().enumerate() {
            let this = match parsed {
                Parsed::Unknown => return Classification::unknown_write(hints),
                Parsed::NoDataEffect => StatementClass::Write,
                Parsed::Statement(st) => {
                    let not_read = walk.statement(st);
                    match statement_kind(st) {
                        Kind::Read if !not_read => StatementClass::Read,
                        Kind::BeginReadOnly if i == 0 => StatementClass::BeginReadOnly,
                        Kind::TransactionEnd if class == Some(StatementClass::BeginReadOnly) => {
                            StatementClass::BeginReadOnly
                        }
                        _ => StatementClass::Write,
                    }
                }
            };
            class = Some(match (class, this) {
                (None, c) | (Some(StatementClass::Read), c) => c,
                (Some(StatementClass::Write), _) | (_, StatementClass::Write) => StatementClass::Write,
                (Some(StatementClass::BeginReadOnly), _) => StatementClass::BeginReadOnly,
            });
        }
        let class = class.unwrap_or(StatementClass::Read);
        let (tables, writes_unknown) = match class {
            StatementClass::Write => (walk.targets, walk.unknown),
            _ => (walk.reads, false),
        };
        Classification { class, hints, tables: tables.into_iter().collect(), writes_unknown }
    }
}

/// What one statement is, before looking inside it.
enum Kind {
    /// A query, SHOW, or EXPLAIN of those: a read if nothing inside says otherwise.
    Read,
    BeginReadOnly,
    /// COMMIT / END / ROLLBACK (not to a savepoint).
    TransactionEnd,
    Write,
}

fn statement_kind(st: &Statement) -> Kind {
    match st {
        Statement::Query(_) | Statement::ShowVariable { .. } => Kind::Read,
        Statement::Explain { statement, .. } => match statement_kind(statement) {
            Kind::Read => Kind::Read,
            _ => Kind::Write,
        },
        Statement::StartTransaction { modes, statements, exception: None, .. } if statements.is_empty() => {
            let read_only = modes.iter().rev().find_map(|m| match m {
                TransactionMode::AccessMode(a) => Some(*a == TransactionAccessMode::ReadOnly),
                TransactionMode::IsolationLevel(_) => None,
            });
            if read_only == Some(true) {
                Kind::BeginReadOnly
            } else {
                Kind::Write
            }
        }
        Statement::Commit { .. } | Statement::Rollback { savepoint: None, .. } => Kind::TransactionEnd,
        _ => Kind::Write,
    }
}

/// `schema.name`: lowercase unless quoted.
pub(crate) fn object_name(name: &ObjectName) -> String {
    let mut out = String::new();
    for (i, part) in name.0.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        match part {
            ObjectNamePart::Identifier(id) if id.quote_style.is_some() => out.push_str(&id.value),
            ObjectNamePart::Identifier(id) => out.push_str(&id.value.to_lowercase()),
            ObjectNamePart::Function(f) => out.push_str(&f.name.value.to_lowercase()),
        }
    }
    out
}
