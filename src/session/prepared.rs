//! Named prepared statements in transaction mode, without IO.
//!
//! A client's statement names mean nothing to the server connection it lands on next, so sluice
//! keeps each client's statements (name → query text and parameter types) and gives every
//! distinct (text, types) a pooler-wide server name. Clients' Parse, Bind, Describe and Close
//! messages are rewritten to those names; a statement is prepared lazily on each server
//! connection the first time it is needed there and stays prepared (bounded, least recently used
//! first out) for every client that uses the same text.
//!
//! Because sluice sometimes answers for the server (a Parse of a statement the server already
//! has, a Close) or adds messages of its own (a Parse injected before a Bind, statements added to
//! a simple query), it keeps a queue of the responses each server connection still owes, so that
//! its own ParseComplete and CloseComplete go to the client exactly where Postgres would have
//! sent them, and the responses to its own messages are not passed on.
//!
//! sluice answers a Parse itself only when the transaction it runs in cannot have failed;
//! otherwise the server parses the text under a throwaway name, and refuses it as it would have
//! refused the client's. A message that needs a statement whose Parse is still unanswered in an
//! earlier pipelined request waits for that answer: had the Parse failed, the server would skip
//! only up to its own Sync.
//!
//! When a table changes so that a prepared statement's result type does (ALTER TABLE under a
//! `SELECT *`), the server refuses to run the statement any more (0A000, "cached plan must not
//! change result type"). A client would prepare it again; as sluice shares statements, it drops
//! the statement from that server connection (closing it before it is prepared there again) and
//! gives the text a fresh pooler-wide name, so that new Parses of it are parsed anew everywhere.

use crate::protocol::backend::{self, SqlState};
use crate::protocol::ProtocolError;
use bytes::{BufMut, Bytes, BytesMut};
use dashmap::DashMap;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Server-side statement names start with this.
pub const SERVER_PREFIX: &str = "sluice_";

/// The throwaway name under which the server parses a text it already has, when only it can
/// say whether the Parse is refused (the transaction may have failed).
const PROBE_NAME: &str = "sluice_probe";

/// Pooler-wide names for statement texts.
#[derive(Debug, Default)]
pub struct StatementRegistry {
    names: DashMap<Bytes, Arc<str>>,
    next: AtomicU64,
}

impl StatementRegistry {
    /// The server name for a statement spec (query text and parameter types as in Parse).
    pub fn name_for(&self, spec: &Bytes) -> Arc<str> {
        if let Some(n) = self.names.get(spec) {
            return n.clone();
        }
        self.names
            .entry(spec.clone())
            .or_insert_with(|| Arc::from(format!("{SERVER_PREFIX}{}", self.next.fetch_add(1, Ordering::Relaxed))))
            .clone()
    }

    /// Gives the statement spec a fresh server name, unless it has one other than `old` already:
    /// what was prepared under `old` can no longer run (its result type changed).
    pub fn renew(&self, spec: &Bytes, old: &str) {
        if let Some(mut name) = self.names.get_mut(spec) {
            if &**name == old {
                *name = Arc::from(format!("{SERVER_PREFIX}{}", self.next.fetch_add(1, Ordering::Relaxed)));
            }
        }
    }

    /// Distinct statements seen.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether none were seen.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// A statement as a client prepared it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The name on servers.
    pub server_name: Arc<str>,
    /// The Parse body after the statement name: query text, parameter count and types.
    pub spec: Bytes,
}

/// One client's named statements.
#[derive(Debug, Default)]
pub struct ClientStatements {
    by_name: HashMap<String, Statement>,
}

impl ClientStatements {
    /// Number of statements.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether the client has none.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Forgets every statement (DEALLOCATE ALL, DISCARD ALL).
    pub fn clear(&mut self) {
        self.by_name.clear();
    }

    /// The query text of a statement, by the client's name.
    pub fn query_text(&self, name: &[u8]) -> Option<&[u8]> {
        let stmt = self.by_name.get(std::str::from_utf8(name).ok()?)?;
        let end = stmt.spec.iter().position(|&b| b == 0).unwrap_or(stmt.spec.len());
        Some(&stmt.spec[..end])
    }

    /// The Parse body after the name (query text, parameter count and types) of a statement,
    /// by the client's name.
    pub fn query_spec(&self, name: &[u8]) -> Option<&[u8]> {
        Some(&self.by_name.get(std::str::from_utf8(name).ok()?)?.spec)
    }

    /// Forgets one statement (DEALLOCATE name), returning its server name.
    pub fn forget(&mut self, name: &str) -> Option<Arc<str>> {
        self.by_name.remove(name).map(|s| s.server_name)
    }
}

/// The statements prepared on one server connection, bounded, least recently used first out.
#[derive(Debug)]
pub struct ServerStatements {
    prepared: HashMap<Arc<str>, u64>,
    tick: u64,
    capacity: usize,
    /// Statements the server still has but can no longer run: closed before they are prepared
    /// again.
    stale: Vec<Arc<str>>,
}

impl ServerStatements {
    /// An empty set holding at most `capacity` statements.
    pub fn new(capacity: usize) -> Self {
        Self { prepared: HashMap::new(), tick: 0, capacity: capacity.max(1), stale: Vec::new() }
    }

    /// Whether `name` is prepared; marks it used.
    pub fn touch(&mut self, name: &str) -> bool {
        self.tick += 1;
        match self.prepared.get_mut(name) {
            Some(t) => {
                *t = self.tick;
                true
            }
            None => false,
        }
    }

    /// Records `name` as prepared; returns the statement evicted to make room, if any.
    pub fn insert(&mut self, name: Arc<str>) -> Option<Arc<str>> {
        self.tick += 1;
        let evicted = if self.prepared.len() >= self.capacity && !self.prepared.contains_key(&name) {
            let oldest = self.prepared.iter().min_by_key(|(_, t)| **t).map(|(n, _)| n.clone());
            oldest.inspect(|n| {
                self.prepared.remove(n);
            })
        } else {
            None
        };
        self.prepared.insert(name, self.tick);
        evicted
    }

    /// Forgets `name` (its Parse failed).
    pub fn remove(&mut self, name: &str) {
        self.prepared.remove(name);
    }

    /// Forgets everything (after DISCARD ALL or DEALLOCATE ALL on the server).
    pub fn clear(&mut self) {
        self.prepared.clear();
        self.stale.clear();
    }

    /// `name` stays on the server but can no longer run: it is not prepared any more as far as
    /// clients are concerned.
    pub fn mark_stale(&mut self, name: &Arc<str>) {
        self.prepared.remove(name);
        if !self.stale.contains(name) {
            self.stale.push(name.clone());
        }
    }

    /// Whether `name` was stale (and must be closed before it is prepared again); it is not
    /// any more.
    fn take_stale(&mut self, name: &str) -> bool {
        let at = self.stale.iter().position(|n| &**n == name);
        at.map(|i| self.stale.swap_remove(i)).is_some()
    }

    /// Number prepared.
    pub fn len(&self) -> usize {
        self.prepared.len()
    }

    /// Whether none are prepared.
    pub fn is_empty(&self) -> bool {
        self.prepared.is_empty()
    }
}

/// A response (or run of responses) a server connection owes, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Forward until a message with one of these tags ends the entry.
    Pass {
        /// Tags that end the entry.
        until: &'static [u8],
        /// This entry is a Sync's ReadyForQuery (where skipping after an error stops).
        sync: bool,
    },
    /// The ParseComplete of a Parse sluice sent under a server name; `swallow` when sluice
    /// injected it (the client never sent that Parse).
    Parse {
        /// The server name, marked prepared when this completes.
        name: Arc<str>,
        /// Keep the ParseComplete from the client.
        swallow: bool,
    },
    /// The response to a Bind or Describe of a named statement: forwarded, up to a message with
    /// one of these tags.
    Uses {
        /// Tags that end the entry.
        until: &'static [u8],
        /// The statement.
        stmt: Statement,
    },
    /// The CloseComplete of a Close sluice sent to evict a statement: swallowed.
    EvictClose,
    /// A simple query sluice rewrote: one entry per statement, in order, `true` for those sluice
    /// added, whose CommandComplete is swallowed. Ends at ReadyForQuery.
    Query {
        /// The statements whose CommandComplete is still due.
        internal: VecDeque<bool>,
    },
    /// A message sluice sends the client itself when this entry reaches the head.
    Synthetic(u8),
}

const PARSE_DONE: &[u8] = b"1";
const BIND_DONE: &[u8] = b"2";
const CLOSE_DONE: &[u8] = b"3";
const DESCRIBE_DONE: &[u8] = b"Tn";
const EXECUTE_DONE: &[u8] = b"CIs";
const READY: &[u8] = b"Z";

/// What to do with one server message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerAction {
    /// Send it to the client.
    Forward,
    /// Keep it from the client (the response to sluice's own message).
    Swallow,
}

/// A Parse sent to the server and not answered yet.
#[derive(Debug, Clone)]
struct Awaited {
    name: Arc<str>,
    /// The request (counted in ReadyForQuery entries queued before it) it belongs to.
    request: u64,
    /// sluice injected it.
    injected: bool,
}

/// The responses a server connection owes, in order.
#[derive(Debug, Default)]
pub struct ResponseQueue {
    q: VecDeque<Expect>,
    /// An error ended the extended-protocol work before its Sync reached the queue: the server
    /// skips every message up to that Sync, and nothing is owed for them.
    skipping: bool,
    /// ReadyForQuery entries queued so far: the number of the request being queued.
    requests: u64,
    /// The Parse entries in `q`, oldest first.
    awaited: Vec<Awaited>,
}

impl ResponseQueue {
    /// Responses owed, in entries.
    pub fn len(&self) -> usize {
        self.q.len()
    }

    /// Nothing is owed.
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// Forgets everything (the connection is being reset).
    pub fn clear(&mut self) {
        self.q.clear();
        self.skipping = false;
        self.awaited.clear();
    }

    /// The server is skipping messages until the client's next Sync.
    pub fn skipping_until_sync(&self) -> bool {
        self.skipping
    }

    fn push(&mut self, e: Expect) {
        match &e {
            Expect::Pass { until: READY, .. } | Expect::Query { .. } => self.requests += 1,
            Expect::Parse { name, swallow } if &**name != PROBE_NAME => {
                self.awaited.push(Awaited { name: name.clone(), request: self.requests, injected: *swallow });
            }
            _ => {}
        }
        self.q.push_back(e);
    }

    /// Takes the entry at the head of the queue.
    fn pop(&mut self) {
        if let Some(Expect::Parse { name, .. }) = self.q.pop_front() {
            if let Some(i) = self.awaited.iter().position(|a| a.name == name) {
                self.awaited.remove(i);
            }
        }
    }

    /// Whether a Parse of `name` (one sluice injected, unless `any`) in an earlier request than
    /// the one being queued is still unanswered.
    fn awaits_earlier(&self, name: &str, any: bool) -> bool {
        self.awaited.iter().any(|a| (any || a.injected) && a.request < self.requests && &*a.name == name)
    }

    /// A simple query that sluice rewrote went out; `internal` marks, per statement, those
    /// sluice added.
    pub fn rewritten_query(&mut self, internal: &[bool]) {
        if self.skipping {
            return;
        }
        if internal.iter().any(|&i| i) {
            self.push(Expect::Query { internal: internal.iter().copied().collect() });
        } else {
            self.push(Expect::Pass { until: READY, sync: false });
        }
    }

    /// Whether an ErrorResponse arriving now is to be read (see [`ResponseQueue::error_fields`]).
    pub fn wants_error_fields(&self) -> bool {
        matches!(self.q.front(), Some(Expect::Uses { .. }))
    }

    /// Whether an ErrorResponse (its body) arriving now refuses a Bind only because its
    /// statement went stale, with the Bind's request the only one owed: nothing of that request
    /// ran, so it may run again once the statement is prepared anew.
    pub fn stale_statement_retries(&self, body: &[u8]) -> bool {
        let Some(Expect::Uses { until: BIND_DONE, .. }) = self.q.front() else { return false };
        let last_sync = self.q.iter().rposition(|e| matches!(e, Expect::Pass { sync: true, .. }));
        if last_sync != Some(self.q.len() - 1) || self.q.iter().filter(|e| matches!(e, Expect::Pass { sync: true, .. })).count() != 1 {
            return false;
        }
        let (_, code, _) = backend::parse_error_fields(body);
        code.as_bytes() == SqlState::FEATURE_NOT_SUPPORTED.0
    }

    /// Reads an ErrorResponse (its body) before it is accounted for: when it says the result
    /// type of the statement at the head of the queue changed, the statement is stale on this
    /// connection and its text gets a fresh name in `registry`.
    pub fn error_fields(&self, body: &[u8], server: &mut ServerStatements, registry: Option<&StatementRegistry>) {
        let Some(Expect::Uses { stmt, .. }) = self.q.front() else { return };
        let (_, code, _) = backend::parse_error_fields(body);
        if code.as_bytes() == SqlState::FEATURE_NOT_SUPPORTED.0 {
            server.mark_stale(&stmt.server_name);
            if let Some(registry) = registry {
                registry.renew(&stmt.spec, &stmt.server_name);
            }
        }
    }

    /// Whether the next owed response is one sluice must write itself.
    pub fn synthetic_due(&self) -> bool {
        matches!(self.q.front(), Some(Expect::Synthetic(_)))
    }

    /// Whether a message with this tag, arriving now, is to be swallowed.
    pub fn swallows(&self, tag: u8) -> bool {
        match self.q.front() {
            Some(Expect::Parse { swallow: true, .. }) => tag == b'1',
            Some(Expect::EvictClose) => tag == b'3',
            Some(Expect::Query { internal }) => tag == b'C' && internal.front() == Some(&true),
            _ => false,
        }
    }

    /// Writes the synthetic messages at the head of the queue into `out`.
    pub fn take_synthetic(&mut self, out: &mut BytesMut) {
        while let Some(Expect::Synthetic(tag)) = self.q.front() {
            out.put_slice(&[*tag, 0, 0, 0, 4]);
            self.q.pop_front();
        }
    }

    /// COPY FROM STDIN began and the server ignored `ignored` Syncs sent after the command that
    /// started it: they get no ReadyForQuery, so nothing is owed for them.
    pub fn copy_started(&mut self, ignored: u32) {
        let mut left = ignored;
        let mut i = 1;
        while left > 0 && i < self.q.len() {
            if matches!(self.q[i], Expect::Pass { sync: true, .. }) {
                self.q.remove(i);
                left -= 1;
            } else {
                i += 1;
            }
        }
    }

    /// Accounts for one server message and says what to do with it.
    pub fn on_server_message(&mut self, tag: u8, server: &mut ServerStatements) -> ServerAction {
        if tag == b'E' {
            return self.on_error(server);
        }
        if matches!(tag, b'G' | b'W') {
            // The Syncs the server ignores are accounted for by `copy_started`.
            return ServerAction::Forward;
        }
        let Some(head) = self.q.front_mut() else { return ServerAction::Forward };
        match head {
            Expect::Pass { until, .. } | Expect::Uses { until, .. } => {
                if until.contains(&tag) {
                    self.pop();
                }
                ServerAction::Forward
            }
            Expect::Parse { name, swallow } if tag == b'1' => {
                let swallow = *swallow;
                server.touch(name);
                self.pop();
                if swallow {
                    ServerAction::Swallow
                } else {
                    ServerAction::Forward
                }
            }
            Expect::EvictClose if tag == b'3' => {
                self.pop();
                ServerAction::Swallow
            }
            Expect::Query { internal } if tag == b'C' => {
                if internal.pop_front() == Some(true) {
                    ServerAction::Swallow
                } else {
                    ServerAction::Forward
                }
            }
            Expect::Query { .. } if tag == b'Z' => {
                self.pop();
                ServerAction::Forward
            }
            // Notices, ParameterStatus and the like arrive between responses.
            _ => ServerAction::Forward,
        }
    }

    /// An ErrorResponse ends the current entry; in the extended protocol the server then skips
    /// everything up to the next Sync, so do the responses sluice would have made up.
    fn on_error(&mut self, server: &mut ServerStatements) -> ServerAction {
        match self.q.front() {
            // A simple query's error ends it: the ReadyForQuery follows.
            Some(Expect::Pass { until: READY, .. } | Expect::Query { .. }) | None => return ServerAction::Forward,
            Some(Expect::Parse { name, .. }) => server.remove(name),
            _ => {}
        }
        self.pop();
        self.skipping = true;
        while let Some(e) = self.q.front() {
            match e {
                Expect::Pass { sync: true, .. } => {
                    self.skipping = false;
                    break;
                }
                Expect::Parse { name, .. } => {
                    // Skipped by the server: it was never prepared.
                    server.remove(name);
                }
                _ => {}
            }
            self.pop();
        }
        ServerAction::Forward
    }
}

/// What became of one client message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewrite {
    /// Forward the original bytes.
    AsIs,
    /// The bytes written to `out` replace it (possibly none).
    Replaced,
    /// Nothing yet: the message depends on the answer to a Parse of an earlier request. Offer
    /// it again once the server has answered more.
    Wait,
}

/// What a client's statement name stands for on the server.
enum Target {
    /// The client's statement, prepared on the server.
    Known(Statement),
    /// A name the client does not have: the server name given cannot exist either, so the server
    /// reports it missing.
    Unknown(Arc<str>),
    /// Nothing yet: a Parse sluice injected for the statement in an earlier request is
    /// unanswered, and if it failed the statement must be prepared again.
    Wait,
}

/// Everything a client message may touch.
pub struct Statements<'a> {
    /// The client's statements.
    pub client: &'a mut ClientStatements,
    /// The server connection's statements.
    pub server: &'a mut ServerStatements,
    /// The server connection's owed responses.
    pub queue: &'a mut ResponseQueue,
    /// Pooler-wide names.
    pub registry: &'a StatementRegistry,
    /// The next message may run in a failed transaction (the last ReadyForQuery said so, or
    /// earlier requests are unanswered): sluice must not answer a Parse for the server.
    pub may_have_failed: bool,
}

fn cstr_end(body: &[u8], from: usize, what: &'static str) -> Result<usize, ProtocolError> {
    body.get(from..)
        .and_then(|rest| rest.iter().position(|&b| b == 0))
        .map(|i| from + i)
        .ok_or(ProtocolError::Malformed { what })
}

fn name_str<'b>(bytes: &'b [u8], what: &'static str) -> Result<&'b str, ProtocolError> {
    std::str::from_utf8(bytes).map_err(|_| ProtocolError::Malformed { what })
}

fn put_message(out: &mut BytesMut, tag: u8, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum::<usize>() + 4;
    out.put_u8(tag);
    out.put_u32(len as u32);
    for p in parts {
        out.put_slice(p);
    }
}

impl Statements<'_> {
    /// Handles one client message (tag and body); rewritten bytes go to `out`.
    ///
    /// # Errors
    /// A Parse, Bind, Describe or Close body that is malformed.
    pub fn client_message(&mut self, tag: u8, body: &[u8], out: &mut BytesMut) -> Result<Rewrite, ProtocolError> {
        if self.queue.skipping && tag != b'S' {
            // The server skips it after the error, as it would without sluice: nothing is owed,
            // nothing is prepared and the client's names stay as they were.
            return Ok(Rewrite::AsIs);
        }
        match tag {
            b'P' => self.parse(body, out),
            b'B' => self.bind(body, out),
            b'D' | b'C' => self.describe_or_close(tag, body, out),
            b'E' => {
                self.queue.push(Expect::Pass { until: EXECUTE_DONE, sync: false });
                Ok(Rewrite::AsIs)
            }
            b'S' => {
                self.queue.skipping = false;
                self.queue.push(Expect::Pass { until: READY, sync: true });
                Ok(Rewrite::AsIs)
            }
            b'Q' | b'F' => {
                self.queue.push(Expect::Pass { until: READY, sync: false });
                Ok(Rewrite::AsIs)
            }
            _ => Ok(Rewrite::AsIs),
        }
    }

    /// Makes sure `stmt` is prepared on the server, injecting a Parse (and an eviction) if not.
    fn ensure_prepared(&mut self, stmt: &Statement, out: &mut BytesMut) {
        if self.server.touch(&stmt.server_name) {
            return;
        }
        self.prepare(stmt, true, out);
    }

    fn prepare(&mut self, stmt: &Statement, swallow: bool, out: &mut BytesMut) {
        if self.server.take_stale(&stmt.server_name) {
            put_message(out, b'C', &[b"S", stmt.server_name.as_bytes(), b"\0"]);
            self.queue.push(Expect::EvictClose);
        }
        if let Some(old) = self.server.insert(stmt.server_name.clone()) {
            put_message(out, b'C', &[b"S", old.as_bytes(), b"\0"]);
            self.queue.push(Expect::EvictClose);
        }
        put_message(out, b'P', &[stmt.server_name.as_bytes(), b"\0", &stmt.spec]);
        self.queue.push(Expect::Parse { name: stmt.server_name.clone(), swallow });
    }

    /// Has the server parse `stmt`'s text under a throwaway name and drop it again: it answers
    /// ParseComplete, or refuses the text as it would refuse the client's Parse.
    fn probe(&mut self, stmt: &Statement, out: &mut BytesMut) {
        put_message(out, b'P', &[PROBE_NAME.as_bytes(), b"\0", &stmt.spec]);
        self.queue.push(Expect::Parse { name: Arc::from(PROBE_NAME), swallow: false });
        put_message(out, b'C', &[b"S", PROBE_NAME.as_bytes(), b"\0"]);
        self.queue.push(Expect::EvictClose);
    }

    fn parse(&mut self, body: &[u8], out: &mut BytesMut) -> Result<Rewrite, ProtocolError> {
        let end = cstr_end(body, 0, "Parse")?;
        if end == 0 {
            self.queue.push(Expect::Pass { until: PARSE_DONE, sync: false });
            return Ok(Rewrite::AsIs);
        }
        let name = name_str(&body[..end], "Parse")?.to_owned();
        let spec = Bytes::copy_from_slice(&body[end + 1..]);
        let stmt = Statement { server_name: self.registry.name_for(&spec), spec };
        if self.queue.awaits_earlier(&stmt.server_name, true) {
            return Ok(Rewrite::Wait);
        }
        if !self.server.touch(&stmt.server_name) {
            self.prepare(&stmt, false, out);
        } else if self.may_have_failed {
            self.probe(&stmt, out);
        } else {
            self.queue.push(Expect::Synthetic(b'1'));
        }
        self.client.by_name.insert(name, stmt);
        Ok(Rewrite::Replaced)
    }

    fn bind(&mut self, body: &[u8], out: &mut BytesMut) -> Result<Rewrite, ProtocolError> {
        let portal_end = cstr_end(body, 0, "Bind")?;
        let stmt_end = cstr_end(body, portal_end + 1, "Bind")?;
        let name = &body[portal_end + 1..stmt_end];
        if name.is_empty() {
            self.queue.push(Expect::Pass { until: BIND_DONE, sync: false });
            return Ok(Rewrite::AsIs);
        }
        let target = self.resolve(name, out)?;
        let Some(server_name) = self.owe(target, BIND_DONE) else { return Ok(Rewrite::Wait) };
        put_message(out, b'B', &[&body[..=portal_end], server_name.as_bytes(), b"\0", &body[stmt_end + 1..]]);
        Ok(Rewrite::Replaced)
    }

    fn describe_or_close(&mut self, tag: u8, body: &[u8], out: &mut BytesMut) -> Result<Rewrite, ProtocolError> {
        let what = if tag == b'D' { "Describe" } else { "Close" };
        let kind = *body.first().ok_or(ProtocolError::Malformed { what })?;
        let end = cstr_end(body, 1, what)?;
        let name = &body[1..end];
        if kind != b'S' || name.is_empty() {
            let until = if tag == b'D' { DESCRIBE_DONE } else { CLOSE_DONE };
            self.queue.push(Expect::Pass { until, sync: false });
            return Ok(Rewrite::AsIs);
        }
        if tag == b'C' {
            // Server statements are shared; only the client's name goes away.
            self.client.by_name.remove(name_str(name, what)?);
            self.queue.push(Expect::Synthetic(b'3'));
            return Ok(Rewrite::Replaced);
        }
        let target = self.resolve(name, out)?;
        let Some(server_name) = self.owe(target, DESCRIBE_DONE) else { return Ok(Rewrite::Wait) };
        put_message(out, b'D', &[b"S", server_name.as_bytes(), b"\0"]);
        Ok(Rewrite::Replaced)
    }

    /// Queues the response owed to a Bind or Describe of `target`, which ends at a message with
    /// one of the `until` tags; returns the server name to send, or `None` to wait.
    fn owe(&mut self, target: Target, until: &'static [u8]) -> Option<Arc<str>> {
        match target {
            Target::Wait => None,
            Target::Unknown(server_name) => {
                self.queue.push(Expect::Pass { until, sync: false });
                Some(server_name)
            }
            Target::Known(stmt) => {
                let server_name = stmt.server_name.clone();
                self.queue.push(Expect::Uses { until, stmt });
                Some(server_name)
            }
        }
    }

    /// What a client statement name stands for, preparing the statement on this server if
    /// needed.
    fn resolve(&mut self, name: &[u8], out: &mut BytesMut) -> Result<Target, ProtocolError> {
        let name = name_str(name, "statement name")?;
        match self.client.by_name.get(name).cloned() {
            Some(stmt) if self.queue.awaits_earlier(&stmt.server_name, false) => Ok(Target::Wait),
            Some(stmt) => {
                self.ensure_prepared(&stmt, out);
                Ok(Target::Known(stmt))
            }
            None => Ok(Target::Unknown(Arc::from(format!("{SERVER_PREFIX}unknown_{name}")))),
        }
    }
}

#[cfg(test)]
mod tests;
