//! Generation counters: invalidation in time proportional to the tables a commit wrote.
//!
//! Each database has a counter per table, a database-wide counter (for writes whose targets
//! cannot be named) and a commit sequence. A read takes a [`GenSnapshot`] of its tables'
//! counters before it runs; a commit increments the counters of the tables it wrote
//! ([`DatabaseGenerations::bump`]) or the database-wide one ([`bump_all`]); an entry is
//! current while every counter in its snapshot is unchanged. No entry is visited at a bump.
//!
//! # Table names
//!
//! Classifications name relations as written: `t`, `public.t`, `app.public.t`. Without the
//! catalog, sluice cannot tell which schema an unqualified name resolves to under a session's
//! `search_path`, so a counter is keyed by the *bare relation name*, the part after the last
//! dot: `t`, `public.t` and `s.t` all share the counter of `t`. A write to `s.t` therefore
//! also invalidates reads of `public.t` (safe: only a lost hit), and a read of `t` is
//! invalidated by a write to any schema's `t`, whichever one it resolved to (the one it must
//! not miss). Quoted names keep their case (`"T"` is not `t`), as Postgres does.
//!
//! # Ordering
//!
//! A bump increments the table counters first and the commit sequence last (release); a
//! snapshot reads the commit sequence first (acquire), then the counters. A snapshot that
//! sees a commit's sequence therefore sees its counters, and [`GenSnapshot::is_current`] may
//! answer from the sequence alone when no commit happened since the snapshot.
//!
//! # Memory
//!
//! A database keeps at most `max_tables` counters (names come from clients' statements, which
//! may name tables that do not exist). Past that, new names share one overflow counter, bumped
//! by any write to a table without a counter of its own.

use dashmap::DashMap;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::Arc;

/// Table counters a database keeps at most before names share the overflow counter.
pub const DEFAULT_MAX_TABLES: usize = 65_536;

/// The part of a relation name that keys its counter: after the last dot.
pub fn bare_relation(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

/// The generations of every database, by the identity of the server database.
///
/// Key it by what the server database *is* (the primary's address and the database name on
/// it), not by the name clients connect with: two `[databases]` entries naming the same
/// server database must share their generations, or a write through one would not invalidate
/// reads through the other.
#[derive(Debug)]
pub struct Generations {
    databases: DashMap<Box<str>, Arc<DatabaseGenerations>>,
    max_tables: usize,
}

impl Default for Generations {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_TABLES)
    }
}

impl Generations {
    /// No databases yet; each will keep at most `max_tables` table counters.
    pub fn new(max_tables: usize) -> Self {
        Self { databases: DashMap::new(), max_tables }
    }

    /// The generations of `database`, created on first use. Sessions resolve it once (at
    /// login) and keep the `Arc`.
    pub fn database(&self, database: &str) -> Arc<DatabaseGenerations> {
        if let Some(d) = self.databases.get(database) {
            return d.clone();
        }
        self.databases
            .entry(database.into())
            .or_insert_with(|| Arc::new(DatabaseGenerations::new(self.max_tables)))
            .clone()
    }
}

/// One database's counters.
#[derive(Debug)]
pub struct DatabaseGenerations {
    /// Bare relation name → its counter.
    tables: DashMap<Box<str>, Arc<AtomicU64>>,
    /// Counters in `tables` (an upper bound: racing creations may overshoot by a few).
    counters: AtomicUsize,
    max_tables: usize,
    /// Shared by names that came after `max_tables`, and bumped by writes to unknown names.
    overflow: Arc<AtomicU64>,
    /// Bumped by writes that may have changed any table.
    everything: AtomicU64,
    /// Incremented by every bump, last.
    commits: AtomicU64,
    /// Bare name → bare names also bumped when it is.
    dependents: DashMap<Box<str>, Box<[Box<str>]>>,
    has_dependents: AtomicBool,
    /// While set, no snapshot is current: changes may be happening that nothing reports (the
    /// logical replication stream that would report them is down).
    suspended: AtomicBool,
}

impl DatabaseGenerations {
    /// A database with no counters yet, keeping at most `max_tables`.
    pub fn new(max_tables: usize) -> Self {
        Self {
            tables: DashMap::new(),
            counters: AtomicUsize::new(0),
            max_tables,
            overflow: Arc::new(AtomicU64::new(0)),
            everything: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            dependents: DashMap::new(),
            has_dependents: AtomicBool::new(false),
            suspended: AtomicBool::new(false),
        }
    }

    /// The generations of `tables` now, to be taken before a read is sent to a server. Costs
    /// a map lookup and a reference count per table, and one allocation.
    pub fn snapshot<S: AsRef<str>>(self: &Arc<Self>, tables: &[S]) -> GenSnapshot {
        let commit = self.commits.load(Acquire);
        let everything = self.everything.load(Acquire);
        let cells = tables
            .iter()
            .map(|t| {
                let cell = self.counter(bare_relation(t.as_ref()));
                let seen = cell.load(Acquire);
                (cell, seen)
            })
            .collect();
        GenSnapshot { db: self.clone(), commit, everything, cells }
    }

    /// Whether no table of `snapshot` was bumped since it was taken (false for a snapshot of
    /// another database).
    pub fn is_current(&self, snapshot: &GenSnapshot) -> bool {
        std::ptr::eq(self, Arc::as_ptr(&snapshot.db)) && snapshot.is_current()
    }

    /// A commit wrote `tables`: every entry that read one of them (or a dependent of one, see
    /// [`add_dependent`](Self::add_dependent)) stops being served. Call it once the server
    /// has reported the commit, before the client hears of it.
    pub fn bump<S: AsRef<str>>(&self, tables: &[S]) {
        for t in tables {
            let bare = bare_relation(t.as_ref());
            self.bump_one(bare);
            if self.has_dependents.load(Acquire) {
                if let Some(deps) = self.dependents.get(bare) {
                    deps.iter().for_each(|d| self.bump_one(d));
                }
            }
        }
        self.commits.fetch_add(1, AcqRel);
    }

    /// A commit may have changed any table (DDL on other objects, `DO`, `CALL`, functions with
    /// effects): no entry of this database is served any more.
    pub fn bump_all(&self) {
        self.everything.fetch_add(1, AcqRel);
        self.commits.fetch_add(1, AcqRel);
    }

    /// Stops every entry of this database from being served or stored, until
    /// [`resume`](Self::resume): for while writes may be committed that no bump will report.
    pub fn suspend(&self) {
        self.suspended.store(true, Release);
    }

    /// Ends a [`suspend`](Self::suspend): bumps the whole database first (whatever was read
    /// before, or during, the suspension is never served), then lets snapshots be current again.
    pub fn resume(&self) {
        self.bump_all();
        self.suspended.store(false, Release);
    }

    /// Whether [`suspend`](Self::suspend)ed.
    pub fn is_suspended(&self) -> bool {
        self.suspended.load(Acquire)
    }

    /// How many writes that may have changed any table (or object) were committed: it only
    /// grows.
    pub fn everything_seq(&self) -> u64 {
        self.everything.load(Acquire)
    }

    /// How many commits have bumped generations: it only grows.
    pub fn commit_seq(&self) -> u64 {
        self.commits.load(Acquire)
    }

    /// Declares that a write to `table` changes what reads of `dependent` return: a view over
    /// it, a table its triggers or rules write, a child with `ON DELETE CASCADE`, the parent of
    /// a partition. Not transitive: declare the closure. Both names are mapped to their bare
    /// names.
    pub fn add_dependent(&self, table: &str, dependent: &str) {
        let dependent = bare_relation(dependent);
        let mut deps = self.dependents.entry(bare_relation(table).into()).or_default();
        if !deps.iter().any(|d| &**d == dependent) {
            let mut v = std::mem::take(&mut *deps).into_vec();
            v.push(dependent.into());
            *deps = v.into_boxed_slice();
        }
        self.has_dependents.store(true, Release);
    }

    /// Table counters held.
    pub fn tables(&self) -> usize {
        self.tables.len()
    }

    /// The counter of a bare name, created if there is room, else the overflow counter.
    fn counter(&self, bare: &str) -> Arc<AtomicU64> {
        if let Some(c) = self.tables.get(bare) {
            return c.clone();
        }
        if self.counters.load(Acquire) >= self.max_tables {
            return self.overflow.clone();
        }
        self.tables
            .entry(bare.into())
            .or_insert_with(|| {
                self.counters.fetch_add(1, AcqRel);
                Arc::new(AtomicU64::new(0))
            })
            .clone()
    }

    /// Increments a bare name's counter, or the overflow counter when it has none: a snapshot
    /// taken before this bump either created its counter (found here) or used the overflow.
    fn bump_one(&self, bare: &str) {
        match self.tables.get(bare) {
            Some(c) => c.fetch_add(1, AcqRel),
            None => self.overflow.fetch_add(1, AcqRel),
        };
    }
}

/// The generations a read's tables had when it began.
#[derive(Debug, Clone)]
pub struct GenSnapshot {
    db: Arc<DatabaseGenerations>,
    commit: u64,
    everything: u64,
    cells: Box<[(Arc<AtomicU64>, u64)]>,
}

impl GenSnapshot {
    /// Whether no table of this snapshot was bumped, and the whole database was not, since it
    /// was taken, and the database is not suspended. Answers from the commit sequence alone when nothing at all was committed
    /// since; otherwise one load per table.
    pub fn is_current(&self) -> bool {
        if self.db.suspended.load(Acquire) {
            return false;
        }
        if self.db.commits.load(Acquire) == self.commit {
            return true;
        }
        self.db.everything.load(Acquire) == self.everything
            && self.cells.iter().all(|(c, seen)| c.load(Acquire) == *seen)
    }

    /// The commit sequence when it was taken.
    pub fn commit_seq(&self) -> u64 {
        self.commit
    }

    /// Tables it watches.
    pub fn tables(&self) -> usize {
        self.cells.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Arc<DatabaseGenerations> {
        Arc::new(DatabaseGenerations::new(DEFAULT_MAX_TABLES))
    }

    #[test]
    fn qualified_and_unqualified_names_share_the_bare_name() {
        assert_eq!(bare_relation("t"), "t");
        assert_eq!(bare_relation("public.t"), "t");
        assert_eq!(bare_relation("app.public.t"), "t");
        let g = db();
        let read_unqualified = g.snapshot(&["t"]);
        let read_other_schema = g.snapshot(&["s.t"]);
        g.bump(&["public.t"]);
        assert!(!read_unqualified.is_current());
        assert!(!read_other_schema.is_current());
    }

    #[test]
    fn a_bump_leaves_other_tables_current() {
        let g = db();
        let reads_u = g.snapshot(&["u"]);
        let reads_t_and_u = g.snapshot(&["t", "u"]);
        g.bump(&["t"]);
        assert!(reads_u.is_current());
        assert!(!reads_t_and_u.is_current());
        assert_eq!(g.commit_seq(), 1);
    }

    #[test]
    fn a_snapshot_after_the_bump_is_current() {
        let g = db();
        g.bump(&["t"]);
        assert!(g.snapshot(&["t"]).is_current());
    }

    #[test]
    fn bump_all_invalidates_every_table_and_tableless_reads() {
        let g = db();
        let snaps = [g.snapshot(&["t"]), g.snapshot(&["u", "v"]), g.snapshot::<&str>(&[])];
        g.bump_all();
        assert!(snaps.iter().all(|s| !s.is_current()));
    }

    #[test]
    fn a_snapshot_of_another_database_is_never_current_there() {
        let gens = Generations::default();
        let (a, b) = (gens.database("a"), gens.database("b"));
        assert!(Arc::ptr_eq(&a, &gens.database("a")));
        let s = a.snapshot(&["t"]);
        assert!(a.is_current(&s));
        assert!(!b.is_current(&s));
        b.bump(&["t"]);
        assert!(a.is_current(&s));
    }

    #[test]
    fn names_past_the_limit_share_the_overflow_counter() {
        let g = Arc::new(DatabaseGenerations::new(2));
        let _ = g.snapshot(&["a", "b"]);
        let c = g.snapshot(&["c"]);
        let d = g.snapshot(&["d"]);
        assert_eq!(g.tables(), 2);
        g.bump(&["c"]);
        assert!(!c.is_current());
        assert!(!d.is_current(), "d shares the overflow counter with c");
    }

    #[test]
    fn a_write_to_a_table_never_read_costs_no_counter() {
        let g = db();
        g.bump(&["never_read"]);
        assert_eq!(g.tables(), 0);
    }

    #[test]
    fn nothing_is_current_while_suspended_nor_after_resume() {
        let g = db();
        let before = g.snapshot(&["t"]);
        g.suspend();
        let during = g.snapshot(&["t"]);
        assert!(!before.is_current() && !during.is_current());
        g.resume();
        assert!(!before.is_current() && !during.is_current(), "resume bumps everything");
        assert!(g.snapshot(&["t"]).is_current());
    }

    #[test]
    fn dependents_are_bumped_with_their_table() {
        let g = db();
        g.add_dependent("public.orders", "order_totals");
        g.add_dependent("orders", "order_totals");
        let view = g.snapshot(&["order_totals"]);
        let other = g.snapshot(&["customers"]);
        g.bump(&["orders"]);
        assert!(!view.is_current());
        assert!(other.is_current());
    }
}
