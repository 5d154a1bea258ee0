//! What the stream means for the cache, without IO: the tables each transaction changed,
//! reported at its commit, and the position sluice may confirm to the primary.
//!
//! Relation ids are mapped to names with the Relation messages pgoutput sends before a
//! relation's first change. Names are kept as the catalog has them and bumped by their bare
//! relation name, like writes through sluice, so that a change from the stream invalidates
//! exactly what the same write through sluice would. A change that cannot be named (an id
//! never described, a message cut to its head that cannot be read) invalidates the whole
//! database: safe, and rare.

use super::decode::{parse_copy_data, parse_pgoutput, CopyData, DecodeError, Lsn, Pgoutput};
use std::collections::HashMap;

/// Relation names remembered; past it the map starts over (pgoutput describes a relation
/// again only after its definition changes, so forgotten ids invalidate everything once).
pub const MAX_RELATIONS: usize = 100_000;

/// Distinct tables remembered per transaction; past it the commit invalidates everything.
pub const MAX_TOUCHED: usize = 1024;

/// What a commit invalidates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// These tables (catalog names, without schema).
    Tables(Vec<Box<str>>),
    /// The whole database.
    All,
}

/// What one CopyData message asks of the IO task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Nothing to do.
    None,
    /// A transaction committed: invalidate, then the position may be confirmed.
    Commit(Invalidation),
    /// The server wants a status update now.
    ReplyRequested,
}

/// The decoding state of one replication connection.
#[derive(Debug, Default)]
pub struct StreamTracker {
    relations: HashMap<u32, Box<str>>,
    touched: Vec<Box<str>>,
    touched_all: bool,
    in_transaction: bool,
    flushed: Lsn,
}

impl StreamTracker {
    /// A fresh connection's state.
    pub fn new() -> Self {
        Self::default()
    }

    /// The position to confirm as flushed: the end of the last commit applied, or the server's
    /// end of WAL from a keepalive received between transactions.
    pub fn flushed(&self) -> Lsn {
        self.flushed
    }

    /// Relation names known.
    pub fn relations(&self) -> usize {
        self.relations.len()
    }

    /// Takes one CopyData body; `cut` when it is only the head of a longer message.
    ///
    /// # Errors
    /// [`DecodeError`] when the walsender's own wrapper is malformed (the stream cannot be
    /// followed). A pgoutput message that cannot be read invalidates the whole database at
    /// its commit instead.
    pub fn copy_data(&mut self, body: &[u8], cut: bool) -> Result<Event, DecodeError> {
        match parse_copy_data(body)? {
            CopyData::Keepalive { wal_end, reply_requested } => {
                if !self.in_transaction {
                    self.flushed = self.flushed.max(wal_end);
                }
                Ok(if reply_requested { Event::ReplyRequested } else { Event::None })
            }
            CopyData::XLogData { data, .. } => Ok(match parse_pgoutput(data) {
                Ok(m) => self.pgoutput(m),
                Err(e) => {
                    if !cut {
                        tracing::warn!(error = %e, "unreadable pgoutput message: its transaction invalidates the whole database");
                    }
                    self.touched_all = true;
                    Event::None
                }
            }),
        }
    }

    fn pgoutput(&mut self, m: Pgoutput<'_>) -> Event {
        match m {
            Pgoutput::Begin { .. } => {
                self.in_transaction = true;
                self.touched.clear();
                self.touched_all = false;
            }
            Pgoutput::Relation { id, name, .. } => {
                if self.relations.len() >= MAX_RELATIONS && !self.relations.contains_key(&id) {
                    self.relations.clear();
                }
                self.relations.insert(id, name.into());
            }
            Pgoutput::Change { relation, .. } => self.touch(relation),
            Pgoutput::Truncate { .. } => m.truncated().for_each(|id| self.touch(id)),
            Pgoutput::Commit { end_lsn, .. } => {
                self.in_transaction = false;
                self.flushed = self.flushed.max(end_lsn);
                let tables = std::mem::take(&mut self.touched);
                let all = std::mem::replace(&mut self.touched_all, false);
                return Event::Commit(if all { Invalidation::All } else { Invalidation::Tables(tables) });
            }
            Pgoutput::Other(_) => {}
        }
        Event::None
    }

    fn touch(&mut self, relation: u32) {
        if self.touched_all {
            return;
        }
        let Some(name) = self.relations.get(&relation) else {
            tracing::debug!(relation, "change to a relation never described: the whole database is invalidated");
            self.touched_all = true;
            return;
        };
        if self.touched.iter().any(|t| t == name) {
            return;
        }
        if self.touched.len() >= MAX_TOUCHED {
            self.touched_all = true;
            self.touched.clear();
            return;
        }
        self.touched.push(name.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xlog(data: &[u8]) -> Vec<u8> {
        let mut v = vec![b'w'];
        v.extend_from_slice(&[0u8; 24]);
        v.extend_from_slice(data);
        v
    }

    fn relation(id: u32, ns: &str, name: &str) -> Vec<u8> {
        let mut v = vec![b'R'];
        v.extend_from_slice(&id.to_be_bytes());
        for s in [ns, name] {
            v.extend_from_slice(s.as_bytes());
            v.push(0);
        }
        v.extend_from_slice(&[b'd', 0, 0]);
        v
    }

    fn begin() -> Vec<u8> {
        let mut v = vec![b'B'];
        v.extend_from_slice(&[0u8; 20]);
        v
    }

    fn commit(end: u64) -> Vec<u8> {
        let mut v = vec![b'C', 0];
        v.extend_from_slice(&(end - 0x10).to_be_bytes());
        v.extend_from_slice(&end.to_be_bytes());
        v.extend_from_slice(&[0u8; 8]);
        v
    }

    fn change(kind: u8, id: u32) -> Vec<u8> {
        let mut v = vec![kind];
        v.extend_from_slice(&id.to_be_bytes());
        v.extend_from_slice(b"N\0\x01n");
        v
    }

    fn truncate(ids: &[u32]) -> Vec<u8> {
        let mut v = vec![b'T'];
        v.extend_from_slice(&(ids.len() as u32).to_be_bytes());
        v.push(0);
        ids.iter().for_each(|id| v.extend_from_slice(&id.to_be_bytes()));
        v
    }

    fn keepalive(end: u64, reply: bool) -> Vec<u8> {
        let mut v = vec![b'k'];
        v.extend_from_slice(&end.to_be_bytes());
        v.extend_from_slice(&[0u8; 8]);
        v.push(reply as u8);
        v
    }

    fn feed(t: &mut StreamTracker, msgs: &[Vec<u8>]) -> Vec<Event> {
        msgs.iter()
            .map(|m| if m[0] == b'k' { m.clone() } else { xlog(m) })
            .map(|m| t.copy_data(&m, false).unwrap())
            .filter(|e| *e != Event::None)
            .collect()
    }

    fn tables(names: &[&str]) -> Event {
        Event::Commit(Invalidation::Tables(names.iter().map(|n| Box::from(*n)).collect()))
    }

    #[test]
    fn a_commit_names_every_table_its_transaction_changed_once() {
        let mut t = StreamTracker::new();
        let events = feed(
            &mut t,
            &[
                begin(),
                relation(1, "public", "orders"),
                change(b'I', 1),
                relation(2, "app", "Items"),
                change(b'U', 2),
                change(b'D', 1),
                commit(0x100),
            ],
        );
        assert_eq!(events, [tables(&["orders", "Items"])]);
        assert_eq!(t.flushed(), 0x100);
        // Known relations are remembered across transactions.
        let events = feed(&mut t, &[begin(), change(b'D', 2), commit(0x200)]);
        assert_eq!(events, [tables(&["Items"])]);
    }

    #[test]
    fn truncate_names_every_relation() {
        let mut t = StreamTracker::new();
        let events = feed(
            &mut t,
            &[begin(), relation(1, "public", "a"), relation(2, "public", "b"), truncate(&[1, 2]), commit(0x10)],
        );
        assert_eq!(events, [tables(&["a", "b"])]);
    }

    #[test]
    fn an_unknown_relation_or_unreadable_change_invalidates_everything() {
        let mut t = StreamTracker::new();
        let events = feed(&mut t, &[begin(), change(b'I', 99), commit(0x10)]);
        assert_eq!(events, [Event::Commit(Invalidation::All)]);
        // The next transaction starts clean.
        let events = feed(&mut t, &[begin(), relation(1, "public", "a"), change(b'I', 1), commit(0x20)]);
        assert_eq!(events, [tables(&["a"])]);
        t.copy_data(&xlog(&begin()), false).unwrap();
        assert_eq!(t.copy_data(&xlog(&[b'I', 0, 0]), true).unwrap(), Event::None);
        assert_eq!(feed(&mut t, &[commit(0x30)]), [Event::Commit(Invalidation::All)]);
    }

    #[test]
    fn a_cut_change_still_names_its_relation() {
        let mut t = StreamTracker::new();
        feed(&mut t, &[begin(), relation(1, "public", "big")]);
        let mut head = xlog(&change(b'I', 1));
        head.truncate(super::super::framer::HEAD);
        assert_eq!(t.copy_data(&head, true).unwrap(), Event::None);
        assert_eq!(feed(&mut t, &[commit(0x40)]), [tables(&["big"])]);
    }

    #[test]
    fn an_empty_commit_invalidates_nothing_but_moves_the_position() {
        let mut t = StreamTracker::new();
        assert_eq!(feed(&mut t, &[begin(), commit(0x50)]), [tables(&[])]);
        assert_eq!(t.flushed(), 0x50);
    }

    #[test]
    fn keepalives_move_the_position_only_between_transactions() {
        let mut t = StreamTracker::new();
        assert_eq!(feed(&mut t, &[keepalive(0x80, false)]), []);
        assert_eq!(t.flushed(), 0x80);
        assert_eq!(feed(&mut t, &[begin(), keepalive(0x90, true)]), [Event::ReplyRequested]);
        assert_eq!(t.flushed(), 0x80, "inside a transaction");
        feed(&mut t, &[commit(0x88)]);
        assert_eq!(t.flushed(), 0x88);
    }

    #[test]
    fn many_tables_become_all() {
        let mut t = StreamTracker::new();
        let mut msgs = vec![begin()];
        for id in 0..=MAX_TOUCHED as u32 {
            msgs.push(relation(id, "public", &format!("t{id}")));
            msgs.push(change(b'I', id));
        }
        msgs.push(commit(0x10));
        assert_eq!(feed(&mut t, &msgs), [Event::Commit(Invalidation::All)]);
    }

    #[test]
    fn a_broken_wrapper_is_an_error() {
        let mut t = StreamTracker::new();
        assert!(t.copy_data(b"w\0\0", false).is_err());
        assert!(t.copy_data(b"?", false).is_err());
    }
}
