//! The tables a session's transaction wrote, bumped when it commits and forgotten when it
//! rolls back. Pure bookkeeping driven by the relay's events, like the setting tracker: what
//! was sent (numbered by the ReadyForQuery that will answer it), the CommandComplete tags, and
//! each ReadyForQuery with its transaction status.
//!
//! It errs towards bumping: a write whose outcome is not known for certain is treated as
//! committed (an error in an implicit transaction, a lost connection), because bumping a table
//! nobody changed only costs hits, while missing a commit serves stale rows. A transaction is
//! forgotten only when the cycle that ends it (the messages answered by the ReadyForQuery with
//! status `I`) reported `ROLLBACK` last and no `COMMIT`.

use super::DatabaseGenerations;
use crate::router::classify::{Classification, StatementClass};
use std::collections::VecDeque;
use std::sync::Arc;

/// One session's writes not yet known to be committed or rolled back.
#[derive(Debug, Default)]
pub struct WriteSet {
    /// Writes sent whose ReadyForQuery has not come, by its sequence number.
    pending: VecDeque<(u64, Arc<Classification>)>,
    /// Writes of the open transaction block (and of the cycle being ended).
    block: Vec<Arc<Classification>>,
    /// Since the last ReadyForQuery: a CommandComplete said COMMIT.
    committed: bool,
    /// Since the last ReadyForQuery: the last transaction-ending CommandComplete said ROLLBACK.
    rolled_back: bool,
}

impl WriteSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// A request classified `c` was sent; the `ready_seq`-th ReadyForQuery will end its cycle.
    /// Only writes are kept (by reference: no copy of the table names).
    pub fn sent(&mut self, ready_seq: u64, c: &Arc<Classification>) {
        if writes(c) {
            self.pending.push_back((ready_seq, c.clone()));
        }
    }

    /// Whether CommandComplete tags are needed (to tell COMMIT from ROLLBACK).
    pub fn wants_command_tags(&self) -> bool {
        !self.is_empty()
    }

    /// Whether nothing is waiting to be committed or rolled back.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.block.is_empty()
    }

    /// A CommandComplete arrived with this tag.
    pub fn command_complete(&mut self, tag: &[u8]) {
        if tag.starts_with(b"COMMIT") {
            self.committed = true;
            self.rolled_back = false;
        } else if tag.starts_with(b"ROLLBACK") {
            // Also the answer to COMMIT of a failed transaction, and to ROLLBACK TO SAVEPOINT
            // (which leaves the block open: its ReadyForQuery says `T`).
            self.rolled_back = true;
        } else {
            // A statement after the ROLLBACK, in the same cycle, ran on its own (autocommit).
            self.rolled_back = false;
        }
    }

    /// The `ready_seq`-th ReadyForQuery arrived with `status` (`I`, `T` or `E`). At `I` the
    /// transaction is over: its tables are bumped in `gens` unless it was rolled back. At `T`
    /// after a `COMMIT AND CHAIN`, what was written so far is bumped and also kept for the
    /// chained transaction. Returns whether anything was bumped.
    ///
    /// Call it before the ReadyForQuery is relayed, so that the client's next read cannot be
    /// served a response the commit made stale.
    pub fn ready(&mut self, ready_seq: u64, status: u8, gens: &DatabaseGenerations) -> bool {
        self.ready_into(ready_seq, status, &mut &*gens)
    }

    /// [`ready`](Self::ready), with the tables to bump handed to `sink`.
    pub fn ready_into(&mut self, ready_seq: u64, status: u8, sink: &mut impl BumpSink) -> bool {
        while self.pending.front().is_some_and(|(seq, _)| *seq <= ready_seq) {
            if let Some((_, c)) = self.pending.pop_front() {
                self.block.push(c);
            }
        }
        let (committed, rolled_back) = (self.committed, self.rolled_back && !self.committed);
        self.committed = false;
        self.rolled_back = false;
        match status {
            b'I' if rolled_back => {
                self.rollback();
                false
            }
            b'I' => {
                let bumped = bump(&self.block, sink);
                self.block.clear();
                bumped
            }
            _ if committed => bump(&self.block, sink),
            _ => false,
        }
    }

    /// Whether [`ready`](Self::ready) with these arguments would bump anything (it changes
    /// nothing): a ReadyForQuery that ends a write transaction.
    pub fn would_bump(&self, ready_seq: u64, status: u8) -> bool {
        let has_writes = !self.block.is_empty() || self.pending.front().is_some_and(|(seq, _)| *seq <= ready_seq);
        let rolled_back = self.rolled_back && !self.committed;
        has_writes
            && match status {
                b'I' => !rolled_back,
                _ => self.committed,
            }
    }

    /// Everything written, including requests still unanswered, may have committed: bumps
    /// every table written (the whole database if a write's targets are unknown). The answer
    /// to a server connection lost with writes pending, whose outcome is unknown. Returns
    /// whether anything was bumped.
    pub fn commit(&mut self, gens: &DatabaseGenerations) -> bool {
        self.commit_into(&mut &*gens)
    }

    /// [`commit`](Self::commit), with the tables to bump handed to `sink`.
    pub fn commit_into(&mut self, sink: &mut impl BumpSink) -> bool {
        self.block.extend(self.pending.drain(..).map(|(_, c)| c));
        let bumped = bump(&self.block, sink);
        self.block.clear();
        bumped
    }

    /// The open transaction rolled back: its writes are forgotten and nothing is invalidated
    /// (requests still unanswered are kept).
    pub fn rollback(&mut self) {
        self.block.clear();
    }
}

/// Whether `c` may change table data.
fn writes(c: &Classification) -> bool {
    c.class == StatementClass::Write && (c.writes_unknown || !c.tables.is_empty())
}

/// Where a commit's tables go: the process's generations, or also a list to send to a shared
/// backend.
pub trait BumpSink {
    /// A commit wrote these tables.
    fn bump(&mut self, tables: &[Box<str>]);
    /// A commit may have written any table.
    fn bump_all(&mut self);
}

impl BumpSink for &DatabaseGenerations {
    fn bump(&mut self, tables: &[Box<str>]) {
        DatabaseGenerations::bump(self, tables);
    }

    fn bump_all(&mut self) {
        DatabaseGenerations::bump_all(self);
    }
}

/// Bumps the tables written by `writes` (the whole database if any is unknown).
fn bump(writes: &[Arc<Classification>], sink: &mut impl BumpSink) -> bool {
    if writes.is_empty() {
        return false;
    }
    if writes.iter().any(|c| c.writes_unknown) {
        sink.bump_all();
    } else {
        writes.iter().for_each(|c| sink.bump(&c.tables));
    }
    true
}
