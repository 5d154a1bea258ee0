//! The result cache inside a session.
//!
//! - Before a request is sent anywhere, [`SessionCache::lookup`] judges it (a whole simple
//!   Query, or a whole `[Parse] Bind [Describe] Execute Sync` segment; see [`segment`]),
//!   classifies it and asks [`crate::cache::decide`] whether it may be cached. A hit is
//!   written to the client as stored, ReadyForQuery included: no server is checked out. A
//!   miss takes a snapshot of its tables' generations and becomes a [`Fill`], which runs on
//!   the primary.
//! - While the relay forwards the fill's answer, [`SessionCache::server_message`] gathers it
//!   and stores it at its ReadyForQuery, if it is a complete, error-free result.
//! - Every request this session sends is noted in its [`WriteSet`] (the relay calls
//!   [`SessionCache::client_message`]); at each ReadyForQuery, before the client sees it, the
//!   tables of committed writes are bumped. Rolled-back writes bump nothing; a write whose
//!   outcome is unknown when the session ends is taken as committed.
//!
//! With the Redis backend ([`crate::cache::RemoteCache`]) the same steps go over the network:
//! [`SessionCache::lookup`] answers [`Lookup::Remote`] and the session awaits
//! [`SessionCache::remote_lookup`] (one round trip: the entry and the current generations);
//! a fill is stored by a task of its own; and a ReadyForQuery that ends a write transaction is
//! held by the relay ([`SessionCache::holds_ready`]) until [`SessionCache::flush_bumps`] has
//! bumped the tables in Redis. The in-memory path is unchanged.
//!
//! Fills run on the primary even when reads are routed to replicas: an answer from the
//! primary, read after the snapshot, is never older than a commit sluice has bumped, while a
//! replica's may be. Hits take nothing from either.

mod segment;
#[cfg(test)]
mod tests;

use crate::cache::relations::{relkind_query, RelationKinds};
use crate::cache::{check_bind, decide, CacheHandle, Capture, DatabaseGenerations, GenSnapshot, ReadContext};
use crate::cache::remote::{Found, RemoteSnapshot};
use crate::cache::{BumpSink, RemoteCache, RemoteKey};
use crate::cache::{Request as KeyRequest, ResultCache, SessionKey, Verdict, WriteSet};
use crate::router::classify::{Classification, Classifier, StatementClass};
use crate::router::request_text;
use crate::session::params::ParamSet;
use crate::session::prepared::ClientStatements;
use bytes::Bytes;
use segment::{Judged, Shape};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the cache made of the client's next request.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// Answered: send `response` and drop the request's `len` bytes.
    Hit {
        /// The stored answer, ReadyForQuery included.
        response: Bytes,
        /// The request's length in the client's buffer.
        len: usize,
    },
    /// Not stored: run it on the primary; its answer will be stored.
    Fill,
    /// Not for the cache: route and run it as usual.
    Bypass,
    /// Only part of the request is buffered: read more and look again.
    ReadMore,
    /// Ask the shared backend: await [`SessionCache::remote_lookup`].
    Remote,
}

/// A lookup waiting for the shared backend's answer.
struct Pending {
    key: RemoteKey,
    classification: Arc<Classification>,
    len: usize,
    ttl: Duration,
    unresolved: Option<Unresolved>,
}

/// Tables this session's commits wrote, to bump in the shared backend before the client hears
/// of the commit.
#[derive(Debug, Default)]
struct Bumps {
    tables: Vec<Box<str>>,
    everything: bool,
}

/// Bumps the process's generations and notes the tables for the shared backend.
struct Collect<'a> {
    local: &'a DatabaseGenerations,
    bumps: &'a mut Bumps,
}

impl BumpSink for Collect<'_> {
    fn bump(&mut self, tables: &[Box<str>]) {
        self.local.bump(tables);
        self.bumps.tables.extend(tables.iter().cloned());
    }

    fn bump_all(&mut self) {
        self.local.bump_all();
        self.bumps.everything = true;
    }
}

/// One session's view of the cache.
pub struct SessionCache {
    handle: Arc<CacheHandle>,
    generations: Arc<DatabaseGenerations>,
    relations: Arc<RelationKinds>,
    classifier: Arc<Classifier>,
    database: String,
    server_user: String,
    client_user: String,
    /// The session's key, and the fingerprint of the parameters it was made from.
    key: SessionKey,
    key_params: u64,
    /// Writes not yet known to be committed or rolled back.
    writes: WriteSet,
    /// The miss whose answer is being gathered.
    fill: Option<Fill>,
    /// What a request that cannot be read is taken for: a write to anything.
    unknown_write: Arc<Classification>,
    /// The classification of the unnamed statement, from its Parse.
    unnamed: Option<Arc<Classification>>,
    /// The shared backend, with `backend = "redis"`.
    remote: Option<Arc<RemoteCache>>,
    /// The server database, as the shared backend keys its generations.
    server_database: Box<str>,
    /// A lookup for the shared backend to answer.
    pending: Option<Pending>,
    /// Commits not yet bumped in the shared backend.
    bumps: Bumps,
}

impl SessionCache {
    /// The cache for a client of `database` (the server database `server_database`, which
    /// keys the generations), logged in as `client_user`, running as `server_user`.
    pub(crate) fn new(
        handle: Arc<CacheHandle>,
        classifier: Arc<Classifier>,
        server_database: &str,
        identity: [&str; 3],
        params: &ParamSet,
    ) -> Self {
        let [database, server_user, client_user] = identity.map(str::to_owned);
        let generations = handle.generations.database(server_database);
        let relations = handle.relations(server_database);
        let key = handle.store().session_key(&database, &server_user, &client_user, params.iter());
        let unknown_write = Arc::new(Classification {
            class: StatementClass::Write,
            hints: Default::default(),
            tables: Box::new([]),
            writes_unknown: true,
        });
        Self {
            generations,
            relations,
            classifier,
            database,
            server_user,
            client_user,
            key,
            key_params: params.fingerprint(),
            writes: WriteSet::new(),
            fill: None,
            unknown_write,
            unnamed: None,
            remote: handle.remote().cloned(),
            server_database: server_database.into(),
            pending: None,
            bumps: Bumps::default(),
            handle,
        }
    }

    /// Uses `classifier` from now on (the routing table was reloaded).
    pub(crate) fn use_classifier(&mut self, classifier: &Arc<Classifier>) {
        if !Arc::ptr_eq(&self.classifier, classifier) {
            self.classifier = classifier.clone();
        }
    }

    /// Looks up the request at the start of `buf`, outside any transaction, for a session
    /// with `params` (`pinned`: bound to a server connection, which may hold temporary tables).
    pub(crate) fn lookup(
        &mut self,
        buf: &[u8],
        max_message: u32,
        statements: &ClientStatements,
        params: &ParamSet,
        pinned: bool,
    ) -> Lookup {
        let request = match segment::judge(buf, max_message, statements) {
            Judged::Cacheable(r) => r,
            Judged::Partial => return Lookup::ReadMore,
            Judged::Not => return Lookup::Bypass,
        };
        let Ok(text) = std::str::from_utf8(request.text) else { return Lookup::Bypass };
        let classification = self.classifier.classify(text);
        let store = self.handle.store();
        let ctx = ReadContext { classification: &classification, text, in_transaction: false, session_bound: pinned };
        let Verdict::Cache { ttl } = decide(&ctx, store.settings()) else { return Lookup::Bypass };
        if request.bind.is_some_and(|b| check_bind(b).is_err()) {
            return Lookup::Bypass;
        }
        // Views and foreign tables are not cached; names not seen yet are checked on the server.
        let search_path = params.get("search_path").unwrap_or("");
        let epoch = self.generations.everything_seq();
        let mut unresolved = Vec::new();
        for table in classification.tables.iter() {
            match self.relations.verdict(search_path, table, epoch) {
                Some(true) => {}
                Some(false) => return Lookup::Bypass,
                None => unresolved.push(table.clone()),
            }
        }
        if params.fingerprint() != self.key_params {
            self.key = store.session_key(&self.database, &self.server_user, &self.client_user, params.iter());
            self.key_params = params.fingerprint();
        }
        let key_request = key_request(&request);
        if let Some(remote) = &self.remote {
            // Down, or this database's change stream is (logical invalidation): bypass.
            if !remote.is_up() || self.generations.is_suspended() {
                return Lookup::Bypass;
            }
            let key = RemoteKey::new(&self.key, key_request);
            let unresolved = (!unresolved.is_empty())
                .then(|| Unresolved { search_path: search_path.into(), epoch, names: unresolved });
            self.pending = Some(Pending { key, classification, len: request.len, ttl, unresolved });
            return Lookup::Remote;
        }
        let key = store.key(&self.key, key_request);
        if let Some(response) = store.get(&key, Instant::now()) {
            return Lookup::Hit { response, len: request.len };
        }
        // Taken before the read is sent: a commit bumped after this makes the fill stale.
        let snapshot = FillSnapshot::Local(self.generations.snapshot(&classification.tables));
        let mut fill = Fill::new(arc_swap::Guard::into_inner(store), &self.key, &request, snapshot, ttl);
        if !unresolved.is_empty() {
            fill.unresolved = Some(Unresolved { search_path: search_path.into(), epoch, names: unresolved });
        }
        self.fill = Some(fill);
        Lookup::Fill
    }

    /// Answers the lookup [`lookup`](Self::lookup) left for the shared backend: a hit, a fill
    /// (under the generations read in the same round trip, before the read is sent), or a
    /// bypass when the backend fails or is down. `buf`, `max_message` and `statements` are
    /// what `lookup` was given (the request is still at the start of `buf`).
    ///
    /// # Cancel safety
    ///
    /// Dropped, it leaves no lookup pending and no fill.
    pub(crate) async fn remote_lookup(&mut self, buf: &[u8], max_message: u32, statements: &ClientStatements) -> Lookup {
        self.fill = None;
        let (Some(p), Some(remote)) = (self.pending.take(), self.remote.clone()) else { return Lookup::Bypass };
        match remote.lookup(&self.server_database, &p.key, &p.classification.tables).await {
            Ok(Found::Hit(response)) => Lookup::Hit { response, len: p.len },
            Ok(Found::Miss(snapshot)) => {
                // The fill is built only now: a hit needs none.
                let Judged::Cacheable(request) = segment::judge(buf, max_message, statements) else { return Lookup::Bypass };
                let snapshot = FillSnapshot::Remote { backend: remote, key: p.key, snapshot };
                let store = arc_swap::Guard::into_inner(self.handle.store());
                let mut fill = Fill::new(store, &self.key, &request, snapshot, p.ttl);
                fill.unresolved = p.unresolved;
                self.fill = Some(fill);
                Lookup::Fill
            }
            Err(e) => {
                tracing::trace!(error = %e, "cache backend lookup failed; the read bypasses the cache");
                Lookup::Bypass
            }
        }
    }

    /// Whether the relay must hold this ReadyForQuery (`body`, numbered `ready_seq`) until
    /// [`flush_bumps`](Self::flush_bumps): it ends a write transaction, and the shared backend
    /// must learn of it before the client does.
    pub(crate) fn holds_ready(&self, body: &[u8], ready_seq: u64) -> bool {
        self.remote.is_some() && self.writes.would_bump(ready_seq, body.first().copied().unwrap_or(b'I'))
    }

    /// Bumps in the shared backend what this session's commits wrote since the last call, if
    /// anything: the work to await (boxed, so that a session's task does not carry the
    /// backend's future while it is idle). Never fails: a backend that cannot be reached is
    /// marked down, and everything stored before is ignored once it is back.
    pub(crate) fn flush_bumps(&mut self) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>> {
        if self.bumps.tables.is_empty() && !self.bumps.everything {
            return None;
        }
        let bumps = std::mem::take(&mut self.bumps);
        let (remote, database) = (self.remote.as_ref()?, &self.server_database);
        Some(Box::pin(async move { remote.bump(database, &bumps.tables, bumps.everything).await }))
    }

    /// The catalog query to run before the fill is sent, when its relations are not all known.
    pub(crate) fn relations_query(&self) -> Option<String> {
        let unresolved = self.fill.as_ref()?.unresolved.as_ref()?;
        Some(relkind_query(&unresolved.names).unwrap_or_default())
    }

    /// The catalog's answer to [`relations_query`](Self::relations_query) (`None` if it
    /// failed): the kinds are remembered, and the fill given up unless all are cacheable.
    pub(crate) fn relations_checked(&mut self, kinds: Option<&str>) {
        let Some(fill) = self.fill.as_mut() else { return };
        let Some(u) = fill.unresolved.take() else { return };
        let kinds = kinds.map(str::as_bytes).filter(|k| k.len() == u.names.len());
        let Some(kinds) = kinds else {
            self.fill = None;
            return;
        };
        let mut all = true;
        for (name, &kind) in u.names.iter().zip(kinds) {
            all &= self.relations.learn(&u.search_path, name, u.epoch, (kind != b'-').then_some(kind));
        }
        if !all {
            self.fill = None;
        }
    }

    /// Forgets a fill that will not run (its request was refused before reaching a server).
    pub(crate) fn drop_fill(&mut self) {
        self.fill = None;
    }

    /// Whether the relay needs the body of a client message (to see what it writes).
    pub(crate) fn wants_client_body(tag: u8) -> bool {
        matches!(tag, b'Q' | b'P' | b'B')
    }

    /// A client message went to the server; `ready_seq` numbers the ReadyForQuery that will
    /// answer it. `body` is empty if the relay did not read it (too large): a Query, Parse or
    /// Bind unread is taken for a write to anything. A statement is noted when it runs (Query,
    /// Bind), not when it is parsed; the unnamed statement's classification is kept from its
    /// Parse to its Binds.
    pub(crate) fn client_message(&mut self, tag: u8, body: &[u8], ready_seq: u64, statements: Option<&ClientStatements>) {
        let classification = match tag {
            b'Q' | b'B' if body.is_empty() => self.unknown_write.clone(),
            b'P' if body.is_empty() => {
                self.unnamed = Some(self.unknown_write.clone());
                return;
            }
            b'P' => {
                if body.first() == Some(&0) {
                    self.unnamed = Some(self.classify(request_text(tag, body, |_| None)));
                }
                return;
            }
            b'Q' => self.classify(request_text(tag, body, |_| None)),
            b'B' => {
                let named = |name: &[u8]| statements.and_then(|s| s.query_text(name));
                match request_text(tag, body, named) {
                    Some(text) => self.classify(Some(text)),
                    None if unnamed_bind(body) => self.unnamed.clone().unwrap_or_else(|| self.unknown_write.clone()),
                    None => self.unknown_write.clone(),
                }
            }
            // A function call may write anything.
            b'F' => self.unknown_write.clone(),
            _ => return,
        };
        self.writes.sent(ready_seq, &classification);
    }

    /// The classification of a request's text; text that cannot be read is a write to
    /// anything.
    fn classify(&self, text: Option<&[u8]>) -> Arc<Classification> {
        match text {
            Some(text) => self.classifier.classify(std::str::from_utf8(text).unwrap_or("\u{fffd}")),
            None => self.unknown_write.clone(),
        }
    }

    /// Whether the relay needs the body of a server message.
    pub(crate) fn wants_server_body(&self, tag: u8, len: u32) -> bool {
        (tag == b'C' && self.writes.wants_command_tags())
            || self.fill.as_ref().is_some_and(|f| f.wants_body(tag, len))
    }

    /// A server message is about to be relayed; `ready_seq` numbers the ReadyForQuery it is
    /// or precedes. At a ReadyForQuery, committed writes are bumped, and a fill that is
    /// complete is stored.
    pub(crate) fn server_message(&mut self, tag: u8, body: &[u8], ready_seq: u64) {
        if tag == b'C' && self.writes.wants_command_tags() {
            self.writes.command_complete(body);
        }
        if tag == b'Z' {
            let status = body.first().copied().unwrap_or(b'I');
            let bumped = match self.remote {
                None => self.writes.ready(ready_seq, status, &self.generations),
                Some(_) => {
                    let mut sink = Collect { local: &self.generations, bumps: &mut self.bumps };
                    self.writes.ready_into(ready_seq, status, &mut sink)
                }
            };
            if bumped {
                tracing::trace!("a commit invalidated cached reads");
            }
        }
        if let Some(fill) = self.fill.as_mut() {
            if fill.server_message(tag, body) {
                if let Some(fill) = self.fill.take() {
                    fill.store(body.first().copied());
                }
            }
        }
    }

    /// The session ends, or its server connection was lost: writes whose outcome is unknown
    /// are taken as committed (with the shared backend, call [`flush_bumps`](Self::flush_bumps)
    /// next).
    pub(crate) fn writes_unknown(&mut self) {
        self.fill = None;
        self.pending = None;
        if !self.writes.is_empty() {
            if self.remote.is_some() {
                let mut sink = Collect { local: &self.generations, bumps: &mut self.bumps };
                self.writes.commit_into(&mut sink);
            } else {
                self.writes.commit(&self.generations);
            }
        }
    }
}

/// Whether a Bind body names the unnamed statement.
fn unnamed_bind(body: &[u8]) -> bool {
    let portal_end = body.iter().position(|&b| b == 0);
    portal_end.is_some_and(|i| body.get(i + 1) == Some(&0))
}

fn key_request<'a>(r: &'a segment::Request<'_>) -> KeyRequest<'a> {
    match r.bind {
        None => KeyRequest::Simple { text: r.spec },
        Some(bind) => KeyRequest::Extended { text: r.spec, bind, shape: r.shape.as_slice() },
    }
}

/// Relations of a fill whose kind is not known yet.
struct Unresolved {
    search_path: Box<str>,
    epoch: u64,
    names: Vec<Box<str>>,
}

/// The generations a fill's read began under.
enum FillSnapshot {
    /// This process's.
    Local(GenSnapshot),
    /// The shared backend's, with the entry's key there.
    Remote { backend: Arc<RemoteCache>, key: RemoteKey, snapshot: RemoteSnapshot },
}

/// A miss being answered by the primary, gathered to be stored.
pub(crate) struct Fill {
    /// Relations to look up in the catalog before the read is sent.
    unresolved: Option<Unresolved>,
    store: Arc<ResultCache>,
    session: SessionKey,
    spec: Box<[u8]>,
    bind: Option<Box<[u8]>>,
    shape: Shape,
    snapshot: FillSnapshot,
    ttl: Duration,
    /// The answer as the client sees it: ParseComplete and BindComplete (which sluice may
    /// answer itself, so they are written here rather than captured), then the server's
    /// messages.
    capture: Capture,
    /// ParameterDescription and RowDescription/NoData answers expected (extended) and seen.
    expected_descriptions: (u8, u8),
    seen_descriptions: (u8, u8),
    /// The last result message was CommandComplete or EmptyQueryResponse.
    complete: bool,
}

impl Fill {
    fn new(store: Arc<ResultCache>, session: &SessionKey, r: &segment::Request<'_>, snapshot: FillSnapshot, ttl: Duration) -> Self {
        let mut capture = Capture::new(store.settings().max_result_bytes);
        let shape = r.shape;
        let tags = shape.as_slice();
        if tags.contains(&b'P') {
            capture.push_message(b'1', &[]);
        }
        if tags.contains(&b'B') {
            capture.push_message(b'2', &[]);
        }
        let describes = tags.windows(2).find(|w| w[0] == b'D').map(|w| w[1]);
        let expected_descriptions = match describes {
            Some(b'S') => (1, 1),
            Some(_) => (0, 1),
            None => (0, 0),
        };
        Self {
            unresolved: None,
            store,
            session: session.clone(),
            spec: r.spec.into(),
            bind: r.bind.map(Into::into),
            shape,
            snapshot,
            ttl,
            capture,
            expected_descriptions,
            seen_descriptions: (0, 0),
            complete: false,
        }
    }

    fn extended(&self) -> bool {
        self.bind.is_some()
    }

    fn wants_body(&self, tag: u8, len: u32) -> bool {
        matches!(tag, b'T' | b'D' | b'C' | b't')
            && !self.capture.is_abandoned()
            && self.capture.len() + 1 + len as usize <= self.store.settings().max_result_bytes
    }

    /// Takes one server message; `true` at the ReadyForQuery that ends the answer.
    fn server_message(&mut self, tag: u8, body: &[u8]) -> bool {
        let extended = self.extended();
        let keep = match tag {
            b'Z' => return true,
            // sluice's own acknowledgements are in the capture already.
            b'1' | b'2' | b'3' => return false,
            // Without its body, a message is over the size bound.
            b'T' | b'D' | b'C' | b't' if body.is_empty() => false,
            b't' if extended => {
                self.seen_descriptions.0 += 1;
                true
            }
            b'n' if extended => {
                self.seen_descriptions.1 += 1;
                true
            }
            b'T' => {
                if extended {
                    self.seen_descriptions.1 += 1;
                }
                true
            }
            b'D' => true,
            b'C' | b'I' => {
                self.complete = true;
                true
            }
            // Errors, notices, COPY, PortalSuspended...: not a result to keep.
            _ => false,
        };
        if keep && tag != b'C' && tag != b'I' {
            self.complete = false;
        }
        if !keep || !self.capture.push_message(tag, body) {
            self.capture.abandon();
        }
        false
    }

    /// Stores the answer if it is whole and the session is back outside a transaction.
    fn store(mut self, status: Option<u8>) {
        let whole = status == Some(b'I')
            && self.unresolved.is_none()
            && self.complete
            && (!self.extended() || self.seen_descriptions == self.expected_descriptions);
        if !whole || !self.capture.push_message(b'Z', b"I") {
            return;
        }
        let Some(response) = self.capture.finish() else { return };
        let snapshot = match self.snapshot {
            FillSnapshot::Local(s) => s,
            FillSnapshot::Remote { backend, key, snapshot } => {
                if self.ttl.is_zero() || response.len() > self.store.settings().max_result_bytes {
                    return;
                }
                // Checked against the generations in Redis when stored: a commit bumped since the
                // snapshot keeps it out. Nobody waits for it.
                let ttl = self.ttl;
                tokio::spawn(async move {
                    match backend.store(&key, &snapshot, &response, ttl).await {
                        Ok(true) => {}
                        Ok(false) => tracing::trace!("answer not cached: a write committed after the read began"),
                        Err(e) => tracing::trace!(error = %e, "answer not cached"),
                    }
                });
                return;
            }
        };
        let request = match &self.bind {
            None => KeyRequest::Simple { text: &self.spec },
            Some(bind) => KeyRequest::Extended { text: &self.spec, bind, shape: self.shape.as_slice() },
        };
        let key = self.store.key(&self.session, request);
        if let Err(e) = self.store.insert(&key, snapshot, response, self.ttl, Instant::now()) {
            tracing::trace!(error = %e, "answer not cached");
        }
    }
}
