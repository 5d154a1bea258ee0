//! Read/write routing inside a session (transaction mode): where the next transaction runs,
//! and what the relay watches for while it holds a server connection.
//!
//! Routing goes by *segments*: a simple Query, or the extended-protocol messages up to and
//! including a Sync, which the server runs as one unit. A segment goes to a replica only when
//! all of it is buffered and every statement in it may run there; otherwise it goes to the
//! primary. On a replica, the relay forwards one segment at a time and looks at the next one
//! before it forwards it: one that may not run there ends the checkout once the replica is idle,
//! and is routed afresh. On the primary, a write marks the checkout so that the commit position
//! is learned for read-your-writes.

use super::prepared::ClientStatements;
use bytes::BytesMut;
use std::collections::VecDeque;
use super::ServerPool;
use crate::app::{DatabaseReplicas, RoutingTable, Shared};
use crate::config::ReadYourWrites;
use crate::protocol::frame::peek_header;
use crate::router::lag::{Lsn, ReplicaState};
use crate::router::replica::{CommitMark, ReplicaLoad};
use crate::router::classify::{Classification, Classifier, StatementClass};
use crate::router::{request_text, wanted, Wanted};
use crate::server::Credentials;
use std::sync::Arc;

/// Messages looked at, at most, when judging one segment; a longer one goes to the primary.
const MAX_SEGMENT_MESSAGES: usize = 64;

/// What a buffered segment may run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// Every message is buffered (`len` bytes): this is where it may run.
    Whole {
        /// Where it may run.
        wanted: Wanted,
        /// Its length in bytes.
        len: usize,
    },
    /// Not even the first message is whole yet: read more before deciding.
    Partial,
    /// Its first messages are here but not its end: only the primary is safe.
    Unfinished,
}

impl Segment {
    /// Judges the segment at the start of `buf`.
    pub fn judge(buf: &[u8], max_message: u32, classifier: &Classifier, statements: Option<&ClientStatements>) -> Segment {
        let mut pos = 0;
        let mut wanted_so_far: Option<Wanted> = None;
        for _ in 0..MAX_SEGMENT_MESSAGES {
            let header = match peek_header(&buf[pos..], max_message) {
                Ok(Some(h)) if buf.len() - pos >= h.total() => h,
                Ok(_) if pos == 0 => return Segment::Partial,
                Ok(_) => return Segment::Unfinished,
                // Not the protocol: the relay reports it; nothing goes to a replica.
                Err(_) => return Segment::Whole { wanted: Wanted::Primary, len: 0 },
            };
            let body = &buf[pos + 5..pos + header.total()];
            pos += header.total();
            let here = match header.tag {
                b'Q' | b'P' | b'B' => classify(classifier, header.tag, body, statements).map(|c| wanted(&c)),
                b'D' | b'E' | b'C' | b'H' | b'S' => None,
                _ => Some(Wanted::Primary),
            };
            wanted_so_far = combine(wanted_so_far, here);
            if matches!(header.tag, b'Q' | b'S') {
                return Segment::Whole { wanted: wanted_so_far.unwrap_or(Wanted::ReplicaStatement), len: pos };
            }
            if wanted_so_far == Some(Wanted::Primary) {
                return Segment::Whole { wanted: Wanted::Primary, len: pos };
            }
        }
        Segment::Unfinished
    }
}

/// The strictest of two: the primary over a replica transaction over a replica statement.
fn combine(a: Option<Wanted>, b: Option<Wanted>) -> Option<Wanted> {
    let rank = |w: Wanted| match w {
        Wanted::ReplicaStatement => 0,
        Wanted::ReplicaTransaction => 1,
        Wanted::Primary => 2,
    };
    match (a, b) {
        (Some(x), Some(y)) => Some(if rank(x) >= rank(y) { x } else { y }),
        (x, y) => x.or(y),
    }
}

/// What the relay watches for on the connection it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchMode {
    /// A replica running autocommit reads.
    ReplicaStatements,
    /// A replica running a read-only transaction: anything goes until it ends.
    ReplicaTransaction,
    /// The primary, with read-your-writes on: note whether anything was written.
    PrimaryWrites,
}

/// What the relay should do before scanning the client's next segment on a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Forward it.
    Open,
    /// Wait: for the server to answer (is the transaction over?) or for more client bytes.
    WaitServer,
    /// Read more from the client.
    ReadClient,
    /// Release this replica once idle and route the segment again.
    Reroute,
}

/// The relay's view of routing for one checkout.
pub struct RouteWatch {
    classifier: Arc<Classifier>,
    /// The current mode.
    pub mode: WatchMode,
    /// A write went to the primary in this checkout.
    pub wrote: bool,
    /// The next segment may not run on this replica: release it and route that segment again.
    pub reroute: bool,
    /// The autocommit segments in flight on a replica, oldest first, kept until their answers
    /// reach the client, so that they can run on the primary if the replica fails first.
    retry: BytesMut,
    /// The length of each segment in `retry`.
    retry_lens: VecDeque<usize>,
    /// Part of the oldest segment's answer reached the client: the segments in flight can no
    /// longer be run elsewhere.
    answered: bool,
    /// Each autocommit read is placed afresh, never sent on after another on this replica: the
    /// replica was chosen for what it had replayed when the first one was placed, and a later
    /// read must see commits made since (read-your-writes on, or the result cache on, whose
    /// lookups happen between reads).
    pub one_read: bool,
    /// The length of the first segment, already judged when the checkout was placed: the gate
    /// does not judge it again.
    placed: Option<usize>,
}

/// Segments longer than this are not kept for a retry.
const MAX_RETRY: usize = 64 * 1024;

impl RouteWatch {
    /// Watches a checkout in `mode`.
    pub fn new(classifier: Arc<Classifier>, mode: WatchMode) -> Self {
        Self {
            classifier,
            mode,
            wrote: false,
            reroute: false,
            retry: BytesMut::new(),
            retry_lens: VecDeque::new(),
            answered: false,
            one_read: false,
            placed: None,
        }
    }

    /// Whether the segments in flight can still be run elsewhere: the replica may fail them.
    pub fn can_retry(&self) -> bool {
        !self.retry_lens.is_empty() && !self.answered
    }

    /// Part of the oldest segment's answer went to the client.
    pub fn answered(&mut self) {
        self.answered = true;
    }

    /// The oldest segment's answer went to the client whole (through its ReadyForQuery).
    pub fn segment_answered(&mut self) {
        if let Some(len) = self.retry_lens.pop_front() {
            let _ = self.retry.split_to(len.min(self.retry.len()));
        }
        if self.retry_lens.is_empty() {
            self.retry.clear();
        }
        self.answered = false;
    }

    /// The segments to run elsewhere, if they can be.
    pub fn take_retry(&mut self) -> Option<BytesMut> {
        let can = self.can_retry();
        self.retry_lens.clear();
        let segments = std::mem::take(&mut self.retry);
        can.then_some(segments)
    }

    /// Stops keeping segments until those in flight are answered.
    fn untrack(&mut self) {
        self.answered = true;
    }

    /// On a replica: every segment is looked at before it is forwarded.
    pub fn on_replica(&self) -> bool {
        self.mode != WatchMode::PrimaryWrites
    }

    /// Whether the ReadyForQuery ending this checkout's transaction waits until the commit
    /// position is learned: a write went to the primary.
    pub fn holds_commit(&self) -> bool {
        self.mode == WatchMode::PrimaryWrites && self.wrote
    }

    /// Whether the relay needs the body of a client message with this tag.
    pub fn wants_body(&self, tag: u8) -> bool {
        self.mode == WatchMode::PrimaryWrites && matches!(tag, b'Q' | b'P' | b'B')
    }

    /// Looks at one client message as it is forwarded (on the primary: was it a write?).
    pub fn message(&mut self, tag: u8, body: &[u8], statements: Option<&ClientStatements>) {
        if self.mode != WatchMode::PrimaryWrites || self.wrote {
            return;
        }
        self.wrote = match classify(&self.classifier, tag, body, statements) {
            Some(c) => c.class == StatementClass::Write,
            None => tag == b'F',
        };
    }

    /// On a replica, at a segment boundary with the next segment's header buffered: may it go?
    /// `pending` is whether the server still owes answers, `in_transaction` whether the last
    /// ReadyForQuery said a transaction is open.
    pub fn gate(
        &mut self,
        buf: &[u8],
        max_message: u32,
        statements: Option<&ClientStatements>,
        pending: bool,
        in_transaction: bool,
    ) -> Gate {
        if self.mode == WatchMode::ReplicaTransaction {
            if pending {
                return Gate::WaitServer;
            }
            if in_transaction {
                return Gate::Open;
            }
        }
        let first = self.placed.is_some();
        let judged = match self.placed.take() {
            Some(len) if len <= buf.len() => {
                let wanted = match self.mode {
                    WatchMode::ReplicaTransaction => Wanted::ReplicaTransaction,
                    _ => Wanted::ReplicaStatement,
                };
                Segment::Whole { wanted, len }
            }
            _ => Segment::judge(buf, max_message, &self.classifier, statements),
        };
        match judged {
            Segment::Partial => Gate::ReadClient,
            Segment::Whole { wanted: Wanted::ReplicaStatement, .. } if self.one_read && !first => {
                self.reroute = true;
                Gate::Reroute
            }
            Segment::Whole { wanted: Wanted::ReplicaStatement, len } => {
                self.mode = WatchMode::ReplicaStatements;
                if !pending {
                    self.retry.clear();
                    self.retry_lens.clear();
                    self.answered = false;
                }
                // Kept only while every segment in flight is kept.
                let keep = !self.answered
                    && (!pending || !self.retry_lens.is_empty())
                    && self.retry.len() + len <= MAX_RETRY;
                if keep {
                    self.retry.extend_from_slice(&buf[..len]);
                    self.retry_lens.push_back(len);
                } else {
                    self.untrack();
                }
                Gate::Open
            }
            Segment::Whole { wanted: Wanted::ReplicaTransaction, .. } => {
                self.mode = WatchMode::ReplicaTransaction;
                // Nothing of a transaction is run again elsewhere.
                self.untrack();
                Gate::Open
            }
            Segment::Whole { wanted: Wanted::Primary, .. } | Segment::Unfinished => {
                self.reroute = true;
                Gate::Reroute
            }
        }
    }
}

/// The classification of a request message, if it carries a query.
pub fn classify(
    classifier: &Classifier,
    tag: u8,
    body: &[u8],
    statements: Option<&ClientStatements>,
) -> Option<Arc<Classification>> {
    let text = request_text(tag, body, |name| statements.and_then(|s| s.query_text(name)))?;
    // Query text that is not UTF-8 cannot be parsed: the classifier sends it to the primary.
    Some(classifier.classify(std::str::from_utf8(text).unwrap_or("\u{fffd}")))
}

/// A session's routing state: the table it last saw, its database's replica pools and the
/// newest commit position it wrote.
pub(crate) struct SessionRouting {
    database: String,
    server_user: String,
    credentials: Credentials,
    table: Arc<RoutingTable>,
    replicas: Option<Arc<DatabaseReplicas>>,
    pools: Vec<ServerPool>,
    /// This client's newest commit: marked, then placed in the WAL by a later primary poll.
    own_commit: OwnCommit,
    /// Each replica read is placed on its own (the result cache is on).
    pub one_read: bool,
}

/// Where a transaction was sent.
pub(crate) struct Placement {
    /// A replica's pool and the guard counting the transaction on it; `None` for the primary.
    pub replica: Option<(ServerPool, ReplicaLoad)>,
    /// What the relay watches; `None` when routing has nothing to watch.
    pub watch: Option<RouteWatch>,
}

impl SessionRouting {
    /// Routing for a client of `database` logging in to the servers as `server_user`.
    pub fn new(database: String, server_user: String, credentials: Credentials, ctx: &Shared) -> Self {
        let mut r = Self {
            database,
            server_user,
            credentials,
            table: ctx.routing.load_full(),
            replicas: None,
            pools: Vec::new(),
            own_commit: OwnCommit::Placed(Lsn::ZERO),
            one_read: ctx.cache.is_some(),
        };
        r.refresh_pools(ctx);
        r
    }

    fn refresh_pools(&mut self, ctx: &Shared) {
        self.replicas = self.table.databases.get(&self.database).cloned();
        self.pools.clear();
        let config = ctx.config.load();
        let (Some(replicas), Some(db)) = (&self.replicas, config.databases.get(&self.database)) else { return };
        for status in replicas.set.replicas() {
            self.pools.push(ctx.pools.get_or_create_on(
                &config,
                &self.database,
                db,
                status.address(),
                &self.server_user,
                self.credentials.clone(),
            ));
        }
    }

    /// Whether reads may be split at all (checks for a reload first).
    pub fn active(&mut self, ctx: &Shared) -> bool {
        let current = ctx.routing.load();
        if !Arc::ptr_eq(&current, &self.table) {
            self.table = arc_swap::Guard::into_inner(current);
            self.refresh_pools(ctx);
        }
        self.replicas.is_some()
    }

    /// The classifier.
    pub fn classifier(&self) -> &Arc<Classifier> {
        &self.table.classifier
    }

    /// The watch for a checkout on the primary.
    pub fn primary_watch(&self) -> Option<RouteWatch> {
        (self.table.read_your_writes != ReadYourWrites::Off)
            .then(|| RouteWatch::new(self.table.classifier.clone(), WatchMode::PrimaryWrites))
    }

    /// Places a segment that wants `wanted`: on a replica that is healthy and has replayed what
    /// this read must see, else on the primary (or nowhere, with `replica_fallback = "error"`
    /// and no healthy replica at all).
    /// `len` is the length of the segment that was judged.
    pub fn place(&mut self, wanted: Wanted, len: usize) -> Result<Placement, NoReplica> {
        self.settle();
        let ryw = self.table.read_your_writes;
        let primary = || Placement { replica: None, watch: self.primary_watch() };
        let Some(replicas) = &self.replicas else { return Ok(primary()) };
        let mode = match wanted {
            Wanted::Primary => return Ok(primary()),
            Wanted::ReplicaStatement => WatchMode::ReplicaStatements,
            Wanted::ReplicaTransaction => WatchMode::ReplicaTransaction,
        };
        let min_lsn = match ryw {
            ReadYourWrites::Off => Some(Lsn::ZERO),
            ReadYourWrites::Session => self.own_commit_lsn(replicas),
            ReadYourWrites::Global => {
                let last = replicas.set.last_commit();
                let global = if last == CommitMark(0) { Some(Lsn::ZERO) } else { replicas.set.lsn_after(last) };
                self.own_commit_lsn(replicas).zip(global).map(|(own, global)| own.max(global))
            }
        };
        // A commit not yet placed in the WAL: only the primary is sure to have it.
        let picked = min_lsn.and_then(|min| replicas.set.pick(min));
        if let Some((i, load)) = picked {
            let mut watch = RouteWatch::new(self.table.classifier.clone(), mode);
            watch.placed = (len > 0).then_some(len);
            watch.one_read = ryw != ReadYourWrites::Off || self.one_read;
            return Ok(Placement { replica: Some((self.pools[i].clone(), load)), watch: Some(watch) });
        }
        let any_healthy = replicas.set.replicas().iter().any(|r| r.state() == ReplicaState::Healthy);
        if !any_healthy && !self.table.fallback_to_primary {
            return Err(NoReplica);
        }
        Ok(primary())
    }

    /// The WAL position this client's reads must wait for, once known.
    fn own_commit_lsn(&self, replicas: &DatabaseReplicas) -> Option<Lsn> {
        match self.own_commit {
            OwnCommit::Placed(lsn) => Some(lsn),
            OwnCommit::Marked(mark) => replicas.set.lsn_after(mark),
        }
    }

    /// This client's write transaction just committed (its ReadyForQuery has not been relayed
    /// yet): from now on its reads wait for a replica that has replayed it.
    pub fn committed(&mut self) {
        let Some(r) = &self.replicas else { return };
        // A poll that places this commit also places every earlier one.
        let mark = r.set.mark_commit();
        self.own_commit = OwnCommit::Marked(mark);
        if self.table.read_your_writes == ReadYourWrites::Global {
            r.set.note_commit(mark);
        }
    }

    /// Turns a marked commit into its position once a poll has placed it, so that later reads
    /// need not look it up again.
    fn settle(&mut self) {
        if let (OwnCommit::Marked(mark), Some(r)) = (self.own_commit, &self.replicas) {
            if let Some(lsn) = r.set.lsn_after(mark) {
                self.own_commit = OwnCommit::Placed(lsn);
            }
        }
    }
}

/// A client's newest commit, as read-your-writes tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OwnCommit {
    /// Committed after this many primary polls had started; no later poll has finished yet.
    Marked(CommitMark),
    /// Known to be at or before this WAL position.
    Placed(Lsn),
}

/// No replica is healthy and `replica_fallback = "error"`.
#[derive(Debug, Clone, Copy)]
pub struct NoReplica;
