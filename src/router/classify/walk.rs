//! One walk over a parsed statement with sqlparser's [`Visitor`]: the tables it reads, the
//! tables it writes, and whatever in it keeps it off a replica (row locks, `SELECT INTO`,
//! writable CTEs, functions not known to be read-only), wherever in the tree they are.

use super::functions::ReadOnlyFunctions;
use super::object_name;
use sqlparser::ast::{
    CascadeOption, CopySource, Expr, FromTable, ObjectName, ObjectType, Query, SetExpr, Statement, TableFactor,
    TableObject, TableWithJoins, UtilityOption, Visit, Visitor,
};
use std::collections::BTreeSet;
use std::ops::ControlFlow;

/// What the walks of a query text's statements found, together.
pub(crate) struct Walk<'a> {
    functions: &'a ReadOnlyFunctions,
    /// Relations named in FROM clauses (and join, USING, MERGE sources).
    pub reads: BTreeSet<Box<str>>,
    /// Relations written: DML and COPY FROM targets, SELECT INTO tables, DDL targets.
    pub targets: BTreeSet<Box<str>>,
    /// Something writes what cannot be named (DDL on other objects, CALL, DO, functions with
    /// effects...).
    pub unknown: bool,
    /// In the current statement: something that may not run on a replica.
    not_read: bool,
    /// Depth of statements that are planned but not run (EXPLAIN without ANALYZE, PREPARE).
    planned: usize,
}

impl<'a> Walk<'a> {
    pub(crate) fn new(functions: &'a ReadOnlyFunctions) -> Self {
        Self {
            functions,
            reads: BTreeSet::new(),
            targets: BTreeSet::new(),
            unknown: false,
            not_read: false,
            planned: 0,
        }
    }

    /// Walks one statement; returns whether anything in it keeps it off a replica.
    pub(crate) fn statement(&mut self, st: &Statement) -> bool {
        self.not_read = false;
        self.planned = 0;
        let _ = st.visit(self);
        self.not_read
    }

    fn target(&mut self, name: &ObjectName) {
        if self.planned == 0 {
            self.targets.insert(object_name(name).into());
        }
    }

    fn unknown_target(&mut self) {
        if self.planned == 0 {
            self.unknown = true;
        }
    }

    fn table_target(&mut self, factor: &TableFactor) {
        match factor {
            TableFactor::Table { name, .. } => self.target(name),
            _ => self.unknown_target(),
        }
    }

    fn tables_target(&mut self, tables: &[TableWithJoins]) {
        for t in tables {
            self.table_target(&t.relation);
        }
    }

    /// Records what `st` itself writes (statements nested in it are visited on their own).
    fn writes(&mut self, st: &Statement) {
        match st {
            Statement::Insert(i) => match &i.table {
                TableObject::TableName(name) => self.target(name),
                TableObject::TableFunction(_) => self.unknown_target(),
            },
            Statement::Update { table, .. } => self.table_target(&table.relation),
            Statement::Delete(d) => {
                for name in &d.tables {
                    self.target(name);
                }
                match &d.from {
                    FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => self.tables_target(t),
                }
            }
            Statement::Merge { table, .. } => self.table_target(table),
            Statement::Truncate { table_names, cascade, .. } => {
                for t in table_names {
                    self.target(&t.name);
                }
                if matches!(cascade, Some(CascadeOption::Cascade)) {
                    self.unknown_target();
                }
            }
            Statement::Copy { source: CopySource::Table { table_name, .. }, to: false, .. } => self.target(table_name),
            Statement::CreateTable(ct) => self.target(&ct.name),
            Statement::CreateView { name, .. } => self.target(name),
            Statement::CreateIndex(ci) => self.target(&ci.table_name),
            Statement::AlterTable { name, .. } => self.target(name),
            Statement::Drop {
                object_type: ObjectType::Table | ObjectType::View | ObjectType::MaterializedView,
                names,
                cascade,
                ..
            } => {
                for name in names {
                    self.target(name);
                }
                // CASCADE drops what depends on them too.
                if *cascade {
                    self.unknown_target();
                }
            }
            Statement::Drop { object_type: ObjectType::Index, cascade: false, .. } => {}
            // Change no table data (the queries inside are walked on their own).
            Statement::Query(_)
            | Statement::Copy { .. }
            | Statement::StartTransaction { .. }
            | Statement::Commit { .. }
            | Statement::Rollback { .. }
            | Statement::Savepoint { .. }
            | Statement::ReleaseSavepoint { .. }
            | Statement::Set(_)
            | Statement::ShowVariable { .. }
            | Statement::Discard { .. }
            | Statement::LISTEN { .. }
            | Statement::UNLISTEN { .. }
            | Statement::NOTIFY { .. }
            | Statement::Deallocate { .. }
            | Statement::Prepare { .. }
            | Statement::Declare { .. }
            | Statement::Fetch { .. }
            | Statement::Close { .. }
            | Statement::Explain { .. }
            | Statement::Analyze { .. }
            | Statement::Vacuum(_)
            | Statement::Comment { .. } => {}
            _ => self.unknown_target(),
        }
    }
}

/// Whether `st` is only planned, not run: EXPLAIN without ANALYZE, PREPARE.
fn planned_only(st: &Statement) -> bool {
    match st {
        Statement::Explain { analyze, options, .. } => !explain_analyzes(*analyze, options.as_deref()),
        Statement::Prepare { .. } => true,
        _ => false,
    }
}

/// `EXPLAIN ANALYZE` or `EXPLAIN (ANALYZE [true|on|1])`.
pub(crate) fn explain_analyzes(analyze: bool, options: Option<&[UtilityOption]>) -> bool {
    analyze
        || options.unwrap_or_default().iter().any(|o| {
            o.name.value.eq_ignore_ascii_case("analyze")
                && o.arg.as_ref().is_none_or(|a| {
                    let v = a.to_string().to_ascii_lowercase();
                    !matches!(v.trim_matches('\''), "false" | "off" | "0" | "no")
                })
        })
}

/// The table a `SELECT ... INTO` at the top of `e` creates (nested queries are visited on their
/// own).
fn select_into(e: &SetExpr) -> Option<&ObjectName> {
    match e {
        SetExpr::Select(s) => s.into.as_ref().map(|i| &i.name),
        SetExpr::SetOperation { left, right, .. } => select_into(left).or_else(|| select_into(right)),
        _ => None,
    }
}

impl Visitor for Walk<'_> {
    type Break = ();

    fn pre_visit_statement(&mut self, st: &Statement) -> ControlFlow<()> {
        self.writes(st);
        if matches!(
            st,
            Statement::Insert(_) | Statement::Update { .. } | Statement::Delete(_) | Statement::Merge { .. }
        ) {
            self.not_read = true;
        }
        if planned_only(st) {
            self.planned += 1;
        }
        ControlFlow::Continue(())
    }

    fn post_visit_statement(&mut self, st: &Statement) -> ControlFlow<()> {
        if planned_only(st) {
            self.planned -= 1;
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if !q.locks.is_empty() {
            self.not_read = true;
        }
        if let Some(into) = select_into(&q.body) {
            self.not_read = true;
            self.target(into);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match factor {
            TableFactor::Table { name, args: None, .. } => {
                self.reads.insert(object_name(name).into());
            }
            TableFactor::Table { name, args: Some(_), .. } | TableFactor::Function { name, .. } => self.call(name),
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = expr {
            self.call(&f.name);
        }
        ControlFlow::Continue(())
    }
}

impl Walk<'_> {
    /// A function call: unless known read-only it keeps the statement off replicas and, when
    /// it runs, may write anything.
    fn call(&mut self, name: &ObjectName) {
        if !self.functions.allows(name) {
            self.not_read = true;
            self.unknown_target();
        }
    }
}
