//! The hot path: bytes move between a client and its server connection in both directions at
//! once, straight out of each side's read buffer, without copying or re-encoding. Only message
//! headers are looked at, plus the bodies of ReadyForQuery and ParameterStatus from the server.
//! The relay ends when the server is back at an idle transaction boundary (transaction mode),
//! when either side goes away, or when the client sits idle in a transaction too long.

use super::cached::SessionCache;
use super::client::ClientConn;
use super::params::ParamSet;
use super::prepared::{ResponseQueue, Rewrite, ServerStatements, StatementRegistry, Statements};
use super::replay::Replay;
use super::pinning;
use super::route::{Gate, RouteWatch};
use crate::protocol::backend::TransactionStatus;
use super::setting::{self, QuerySettings, SettingChange, SettingTracker};
use super::state::{ClientAction, TransactionTracker};
use crate::protocol::backend;
use crate::protocol::frame::{Flow, Inspect, Want};
use crate::protocol::ProtocolError;
use crate::server::ServerConnection;
use bytes::{Buf, BufMut, BytesMut};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::AsyncWrite;
use tokio::time::{Instant, Sleep};
use tokio_util::io::poll_read_buf;

/// Why a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// The server is idle and may go back to the pool.
    Released,
    /// The client sent Terminate.
    Terminated,
    /// The client closed its socket or failed.
    ClientGone,
    /// The client sent bytes that cannot be framed.
    ClientProtocol(ProtocolError),
    /// The server closed or failed.
    ServerGone,
    /// The server sent bytes that cannot be framed.
    ServerProtocol(ProtocolError),
    /// The client stayed idle inside a transaction past the timeout.
    IdleInTransaction,
    /// A replica failed an autocommit read before answering any of it: the read can run
    /// elsewhere (the [`RouteWatch`] holds it).
    ReplicaFailed,
    /// A write transaction just ended on the primary: its ReadyForQuery waits at the front of
    /// the server's buffer (see [`take_held_ready`]) until the commit position is learned, or
    /// the cache has bumped its tables in a shared backend.
    CommitHeld,
}

/// Client messages larger than this are not copied into the rewrite buffer; the relay flushes
/// and passes them through in place instead.
const COPY_LIMIT: u32 = 64 * 1024;

struct ClientSide<'a> {
    tracker: &'a mut TransactionTracker,
    /// Statement rewriting (transaction mode only).
    statements: Option<Statements<'a>>,
    /// SET / RESET tracking (transaction mode only).
    settings: Option<&'a mut SettingTracker>,
    /// The client's startup parameters (what RESET returns to).
    startup: &'a ParamSet,
    /// Rewritten (and, after the first rewrite, all following) messages for the server.
    out: &'a mut BytesMut,
    copying: bool,
    copied: usize,
    terminated: bool,
    error: Option<ProtocolError>,
    /// A connection-bound feature the client just used.
    pin: Option<&'static str>,
    /// Read/write routing, when on.
    watch: Option<&'a mut RouteWatch>,
    /// Stopped at a message that waits for the server's answers to earlier ones.
    waiting: bool,
    /// The result cache, which notes what this session writes.
    cache: Option<&'a mut SessionCache>,
    /// Requests kept to run again after a stale statement (transaction mode).
    replay: Option<&'a mut Replay>,
}

impl Inspect for ClientSide<'_> {
    fn wants(&self, tag: u8, len: u32) -> Want {
        if self.watch.as_ref().is_some_and(|w| w.wants_body(tag)) {
            Want::Body
        } else if self.cache.is_some() && SessionCache::wants_client_body(tag) && len <= COPY_LIMIT {
            Want::Body
        } else if self.copying {
            if len > COPY_LIMIT {
                Want::Stop
            } else {
                Want::Body
            }
        } else if self.statements.is_some() && matches!(tag, b'P' | b'B' | b'D' | b'C') {
            Want::Body
        } else if tag == b'E'
            && (self.settings.as_ref().is_some_and(|s| s.extended.wants_execute())
                || self.replay.as_ref().is_some_and(|r| r.wants_body(tag)))
        {
            Want::Body
        } else if tag == b'Q' && self.settings.is_some() && len <= COPY_LIMIT {
            Want::Body
        } else {
            Want::Header
        }
    }

    fn message(&mut self, tag: u8, body: &[u8]) -> Flow {
        if !crate::protocol::frontend::is_session_message(tag) {
            // Not the protocol. Forwarded, it would make the server end its connection while
            // nothing waits for an answer, and the client would hang.
            self.error = Some(ProtocolError::Unexpected(tag));
            return Flow::StopBefore;
        }
        let Some(watch) = self.watch.as_deref_mut() else { return self.forward(tag, body) };
        if watch.on_replica() {
            // One segment at a time: the relay looks at the next before it goes.
            let flow = self.forward(tag, body);
            return if flow == Flow::Continue && matches!(tag, b'Q' | b'S') { Flow::StopAfter } else { flow };
        }
        if !self.tracker.client_copying() {
            watch.message(tag, body, self.statements.as_ref().map(|s| &*s.client));
        }
        self.forward(tag, body)
    }
}

impl ClientSide<'_> {
    /// Follows SET / RESET run through the extended protocol: what each Parse's statement does
    /// is carried through its Bind to the Execute that runs it.
    fn extended_settings(&mut self, tag: u8, body: &[u8]) {
        let Some(settings) = self.settings.as_deref_mut() else { return };
        match tag {
            b'P' => {
                if settings.extended.parse(body) == SettingChange::Unreadable {
                    self.pin = Some(setting::read::UNREADABLE_SET);
                }
            }
            b'B' => settings.extended.bind(body),
            b'C' => settings.extended.close(body),
            _ => {
                let ready_seq = self.tracker.asked() + u64::from(self.tracker.unsynced());
                let (mut change, before) = settings.extended.execute(body, ready_seq);
                match change {
                    SettingChange::DiscardAll | SettingChange::DeallocateAll => {
                        settings.extended.forget_all();
                        if let Some(st) = self.statements.as_mut() {
                            st.client.clear();
                        }
                    }
                    // The client's name means nothing on the server: the server refuses it.
                    SettingChange::Deallocate { .. } => change = SettingChange::Other,
                    _ => {}
                }
                self.pin = settings.execute_sent(ready_seq, before, change);
            }
        }
    }

    fn forward(&mut self, tag: u8, body: &[u8]) -> Flow {
        let request_start = self.replay.is_some()
            && !self.tracker.unsynced()
            && self.tracker.pending() == 0
            && self.tracker.status() == TransactionStatus::Idle;
        let flow = self.forward_message(tag, body);
        if let Some(replay) = self.replay.as_deref_mut() {
            if flow == Flow::Continue {
                let ready_seq = self.tracker.asked() + u64::from(self.tracker.unsynced());
                replay.client_message(tag, body, request_start, ready_seq);
            }
        }
        flow
    }

    fn forward_message(&mut self, tag: u8, body: &[u8]) -> Flow {
        let action = self.tracker.client_message(tag);
        if action == ClientAction::Terminate {
            self.terminated = true;
            return Flow::StopBefore;
        }
        if let Some(cache) = self.cache.as_deref_mut() {
            let ready_seq = self.tracker.asked() + u64::from(self.tracker.unsynced());
            cache.client_message(tag, body, ready_seq, self.statements.as_ref().map(|s| &*s.client));
        }
        if self.settings.is_some() && self.pin.is_none() {
            let text = match tag {
                b'Q' => body,
                // Parse: the statement name, then the query text.
                b'P' => body.iter().position(|&b| b == 0).map_or(&[][..], |i| &body[i + 1..]),
                _ => &[],
            };
            if !text.is_empty() {
                self.pin = pinning::pinning_feature(text);
            }
        }
        if self.pin.is_none() && matches!(tag, b'P' | b'B' | b'C' | b'E') {
            self.extended_settings(tag, body);
        }
        let mut replaced_query = false;
        let mut internal = Vec::new();
        if tag == b'Q' && !body.is_empty() && self.pin.is_none() {
            if let Some(settings) = self.settings.as_mut() {
                let text = body.strip_suffix(&[0]).and_then(|b| std::str::from_utf8(b).ok()).unwrap_or("");
                let mut changes = match setting::read_query(text) {
                    QuerySettings::Untouched => None,
                    QuerySettings::Changes(changes) => Some(changes),
                    QuerySettings::Pin(reason) => {
                        self.pin = Some(reason);
                        None
                    }
                };
                if let Some(mut changes) = changes.take() {
                    let mut renamed = false;
                    if let Some(st) = self.statements.as_mut() {
                        for c in changes.iter_mut() {
                            match c {
                                SettingChange::Deallocate { name } => {
                                    // The client's name means nothing on the server.
                                    if let Some(server_name) = st.client.forget(name) {
                                        *name = server_name.to_string();
                                        renamed = true;
                                    }
                                }
                                SettingChange::DeallocateAll | SettingChange::DiscardAll => st.client.clear(),
                                _ => {}
                            }
                        }
                    }
                    if let Some(rewritten) = setting::rewrite_resets(text, &changes, self.startup, renamed) {
                        let sql = rewritten.sql;
                        self.out.put_u8(b'Q');
                        self.out.put_u32(sql.len() as u32 + 5);
                        self.out.put_slice(sql.as_bytes());
                        self.out.put_u8(0);
                        self.copying = true;
                        replaced_query = true;
                        changes = rewritten.changes;
                        internal = rewritten.internal;
                    }
                    settings.query_sent(self.tracker.asked(), changes, internal.clone());
                }
            }
        }
        let Some(st) = self.statements.as_mut() else {
            if replaced_query {
                self.copied += 5 + body.len();
            }
            return Flow::Continue;
        };
        let before = self.out.len();
        st.may_have_failed = self.tracker.pending() > 0 || self.tracker.status() == TransactionStatus::Failed;
        let rewrite = if action == ClientAction::ForwardIgnored {
            Ok(Rewrite::AsIs)
        } else if replaced_query {
            st.queue.rewritten_query(&internal);
            Ok(Rewrite::AsIs)
        } else {
            st.client_message(tag, body, self.out)
        };
        match rewrite {
            Ok(Rewrite::Replaced) => self.copying = true,
            Ok(Rewrite::Wait) => {
                // Offered again once the server has answered more.
                self.out.truncate(before);
                self.waiting = true;
                return Flow::StopBefore;
            }
            Ok(Rewrite::AsIs) if replaced_query => {}
            Ok(Rewrite::AsIs) if self.copying => {
                self.out.put_u8(tag);
                self.out.put_u32(body.len() as u32 + 4);
                self.out.put_slice(body);
            }
            Ok(Rewrite::AsIs) => return Flow::Continue,
            Err(e) => {
                self.out.truncate(before);
                self.error = Some(e);
                return Flow::StopBefore;
            }
        }
        self.copied += 5 + body.len();
        Flow::Continue
    }
}

struct ServerSide<'a> {
    tracker: &'a mut TransactionTracker,
    server_params: &'a mut ParamSet,
    client_params: &'a mut ParamSet,
    responses: &'a mut ResponseQueue,
    statements: &'a mut ServerStatements,
    settings: Option<&'a mut SettingTracker>,
    startup: &'a ParamSet,
    /// Pooler-wide statement names (transaction mode).
    registry: Option<&'a StatementRegistry>,
    release: bool,
    /// Hold the ReadyForQuery that ends a write transaction.
    hold_commit: bool,
    /// Hold a ReadyForQuery the cache must bump a shared backend for first.
    hold_for_cache: bool,
    /// Stop after each ReadyForQuery (a replica's answers go out one segment at a time).
    stop_at_ready: bool,
    /// The scan ended with a ReadyForQuery.
    ready_seen: bool,
    /// It arrived.
    commit_held: bool,
    /// The result cache: bumps committed writes, gathers a fill.
    cache: Option<&'a mut SessionCache>,
    /// The request in flight may run again if a stale statement fails it.
    retry_armed: bool,
    /// It did: the scan stopped before the ErrorResponse.
    retry: bool,
}

impl<'a> ServerSide<'a> {
    /// An inspector that only accounts for what it sees: it holds nothing back, stops nowhere
    /// and retries nothing.
    fn accounting(
        client: &'a mut ClientConn,
        server: &'a mut ServerConnection,
        opts: RelayOptions,
        cache: Option<&'a mut SessionCache>,
    ) -> Self {
        ServerSide {
            tracker: &mut server.tracker,
            server_params: &mut server.params,
            client_params: &mut client.params,
            responses: &mut server.responses,
            statements: &mut server.statements,
            settings: opts.release_at_idle.then_some(&mut client.settings),
            startup: &client.startup,
            registry: None,
            release: false,
            hold_commit: false,
            hold_for_cache: false,
            commit_held: false,
            stop_at_ready: false,
            ready_seen: false,
            cache,
            retry_armed: false,
            retry: false,
        }
    }
}

impl Inspect for ServerSide<'_> {
    fn wants(&self, tag: u8, len: u32) -> Want {
        if self.responses.swallows(tag) {
            Want::Stop
        } else if matches!(tag, b'Z' | b'S') || tag == b'E' && self.responses.wants_error_fields() {
            Want::Body
        } else if tag == b'C' && self.settings.as_ref().is_some_and(|s| s.wants_command_tags()) {
            Want::Body
        } else if self.cache.as_deref().is_some_and(|c| c.wants_server_body(tag, len)) {
            Want::Body
        } else {
            Want::Header
        }
    }

    fn message(&mut self, tag: u8, body: &[u8]) -> Flow {
        if self.retry_armed && tag == b'E' && self.responses.stale_statement_retries(body) {
            self.retry = true;
            return Flow::StopBefore;
        }
        let routing_hold = self.hold_commit
            && tag == b'Z'
            && body.first() == Some(&b'I')
            && self.tracker.pending() == 1
            && !self.tracker.unsynced();
        let cache_hold = self.hold_for_cache
            && tag == b'Z'
            && self.cache.as_deref().is_some_and(|c| c.holds_ready(body, self.tracker.answered() + 1));
        if routing_hold || cache_hold {
            self.commit_held = true;
            return Flow::StopBefore;
        }
        if let Some(settings) = self.settings.as_mut().filter(|s| !s.is_idle()) {
            match tag {
                b'E' => settings.error(self.tracker.answered() + 1),
                // Each Execute ends with one of these (or an error).
                b'C' | b'I' | b's' => settings.command_complete(self.tracker.answered() + 1, body),
                b'Z' => {
                    let status = body.first().copied().unwrap_or(b'I');
                    let settled = settings.ready(self.tracker.answered() + 1, status);
                    let effects = setting::apply(settled, self.client_params, self.server_params, self.startup);
                    if effects.forget_all {
                        self.statements.clear();
                    }
                    for name in &effects.forget {
                        self.statements.remove(name);
                    }
                }
                _ => {}
            }
        }
        if tag == b'S' {
            if let Some((k, v)) = backend::parse_parameter_status(body) {
                if ParamSet::is_tracked(k) {
                    self.server_params.set(k, v);
                    self.client_params.set(k, v);
                }
            }
            return Flow::Continue;
        }
        if let Some(cache) = self.cache.as_deref_mut() {
            // Before the client sees a commit's ReadyForQuery: its tables are bumped first.
            cache.server_message(tag, body, self.tracker.answered() + 1);
        }
        let idle = self.tracker.server_message(tag, body);
        if tag == b'E' && !body.is_empty() {
            self.responses.error_fields(body, self.statements, self.registry);
        }
        self.responses.on_server_message(tag, self.statements);
        if tag == b'Z' && self.stop_at_ready {
            self.ready_seen = true;
            return Flow::StopAfter;
        }
        if matches!(tag, b'G' | b'W') {
            self.responses.copy_started(self.tracker.ignored_at_copy_start());
        }
        if self.responses.synthetic_due() || (idle && self.release) {
            Flow::StopAfter
        } else {
            Flow::Continue
        }
    }
}

/// Takes the ReadyForQuery a [`RelayEnd::CommitHeld`] left at the front of the server's
/// buffer, accounts for it as the relay would have, and returns its bytes for the client.
pub fn take_held_ready(
    client: &mut ClientConn,
    server: &mut ServerConnection,
    opts: RelayOptions,
    cache: Option<&mut SessionCache>,
) -> bytes::Bytes {
    let Ok(Some(h)) = crate::protocol::frame::peek_header(&server.buf, u32::MAX >> 1) else { return bytes::Bytes::new() };
    let ready = server.buf.split_to(h.total()).freeze();
    ServerSide::accounting(client, server, opts, cache).message(h.tag, &ready[5..]);
    ready
}

/// How far a replica has answered a read that could still run elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplicaAnswer {
    /// Its answer is not complete yet: wait for more.
    Pending,
    /// It said FATAL (or PANIC) before the answer was complete.
    Failed,
    /// It answered (ReadyForQuery or an error), or the answer is too long to hold back.
    Decided,
}

/// A replica's answer held back from the client, at most; a longer one goes out as it comes
/// and can no longer be retried.
const MAX_HELD_ANSWER: usize = 64 * 1024;

impl ReplicaAnswer {
    fn of(buf: &[u8]) -> Self {
        let mut pos = 0;
        loop {
            if pos > MAX_HELD_ANSWER {
                return ReplicaAnswer::Decided;
            }
            let Ok(Some(h)) = crate::protocol::frame::peek_header(&buf[pos..], u32::MAX >> 1) else {
                return ReplicaAnswer::Pending;
            };
            if h.total() > MAX_HELD_ANSWER {
                return ReplicaAnswer::Decided;
            }
            if buf.len() - pos < h.total() {
                return ReplicaAnswer::Pending;
            }
            match h.tag {
                b'E' if backend::is_fatal(&buf[pos + 5..pos + h.total()]) => return ReplicaAnswer::Failed,
                b'E' | b'Z' => return ReplicaAnswer::Decided,
                _ => pos += h.total(),
            }
        }
    }
}

/// Relay options fixed for a session.
#[derive(Debug, Clone, Copy)]
pub struct RelayOptions {
    /// Return the server at idle boundaries (transaction mode).
    pub release_at_idle: bool,
    /// Disconnect a client idle inside a transaction this long.
    pub idle_transaction_timeout: Option<Duration>,
}

/// Relays until one of the [`RelayEnd`] conditions; `timer` is the session's reusable timer.
/// With `registry`, named prepared statements are rewritten to pooler-wide names.
pub async fn relay(
    client: &mut ClientConn,
    server: &mut ServerConnection,
    opts: RelayOptions,
    registry: Option<&StatementRegistry>,
    timer: &mut Pin<Box<Sleep>>,
    watch: Option<&mut RouteWatch>,
    cache: Option<&mut SessionCache>,
) -> RelayEnd {
    let answered_before = server.tracker.answered();
    let mut r = Relay {
        client,
        server,
        s_fwd: 0,
        opts,
        registry,
        timer,
        armed: false,
        watch,
        waiting: false,
        cache,
        answered_before,
        retrying: false,
    };
    let mut end = poll_fn(|cx| r.poll(cx)).await;
    if matches!(end, RelayEnd::ServerGone | RelayEnd::ServerProtocol(_)) {
        // A replica lost while its read can still run elsewhere, or between reads with nothing
        // of the next one sent: the client need not know.
        let between = r.client.fwd == 0 && r.client.to_server.is_empty() && r.server.tracker.is_idle();
        if r.watch.as_ref().is_some_and(|w| w.on_replica() && (w.can_retry() || between)) {
            end = RelayEnd::ReplicaFailed;
        }
    }
    let (client, server) = (r.client, r.server);
    match end {
        // The relay goes on after the commit position is learned: nothing is dropped.
        RelayEnd::CommitHeld => return end,
        RelayEnd::ClientGone | RelayEnd::ClientProtocol(_) | RelayEnd::IdleInTransaction => {
            // Bytes scanned but not written, or a message cut short, leave the server unsure.
            server.mid_client_message =
                client.fwd > 0 || !client.to_server.is_empty() || !client.scanner.at_boundary();
            // Server bytes scanned for the client but not written belong to nobody now; left in
            // the buffer, they would be scanned twice when the connection is drained.
            server.buf.advance(r.s_fwd);
        }
        RelayEnd::ServerGone | RelayEnd::ServerProtocol(_) | RelayEnd::ReplicaFailed => server.mark_broken(),
        RelayEnd::Released | RelayEnd::Terminated => {
            if r.s_fwd == 0 && !server.buf.is_empty() && server.tracker.is_idle() {
                // Only asynchronous messages (notices) can follow an idle ReadyForQuery; they
                // belong to nobody now.
                server.buf.clear();
            }
        }
    }
    // Whatever was not forwarded is dropped: the session is ending or the server is idle.
    client.buf.advance(client.fwd + client.skip);
    client.fwd = 0;
    client.skip = 0;
    client.to_server.clear();
    client.to_client.clear();
    end
}

struct Relay<'a> {
    client: &'a mut ClientConn,
    server: &'a mut ServerConnection,
    /// Bytes at the front of the server's buffer that are scanned and due to the client.
    s_fwd: usize,
    opts: RelayOptions,
    registry: Option<&'a StatementRegistry>,
    timer: &'a mut Pin<Box<Sleep>>,
    armed: bool,
    watch: Option<&'a mut RouteWatch>,
    /// The client's next message waits for the server to answer more (see [`Rewrite::Wait`]).
    waiting: bool,
    cache: Option<&'a mut SessionCache>,
    /// ReadyForQuery messages the server had sent when this relay began.
    answered_before: u64,
    /// A stale statement failed the request in flight, which runs again (see [`Replay`]).
    retrying: bool,
}

const READ_RESERVE: usize = 8192;

/// Responses owed to a client past which its next messages wait (a client pipelining more
/// without a Sync or Flush in between is not served further until the server answers).
const MAX_OWED: usize = 1 << 16;

/// Most bytes reserved ahead of what has arrived for a message held whole: a length field alone
/// (up to max_message_size) must not reserve memory the peer never sends.
const HELD_RESERVE: usize = 1 << 20;

fn make_room(buf: &mut bytes::BytesMut, wanted: usize) {
    if wanted > buf.len() {
        buf.reserve((wanted - buf.len()).min(HELD_RESERVE));
    }
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_RESERVE);
    }
}

/// Writes as much of `bytes` as the socket takes now; `None` when the peer is gone.
fn poll_send<W: AsyncWrite + Unpin>(w: &mut W, cx: &mut Context<'_>, bytes: &[u8]) -> Option<usize> {
    match Pin::new(w).poll_write(cx, bytes) {
        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => None,
        Poll::Ready(Ok(n)) => Some(n),
        Poll::Pending => Some(0),
    }
}

/// Whether everything written has left the stream's own buffers (at once for plaintext);
/// `None` when the peer is gone.
fn poll_flushed<W: AsyncWrite + Unpin>(w: &mut W, cx: &mut Context<'_>) -> Option<bool> {
    match Pin::new(w).poll_flush(cx) {
        Poll::Ready(Ok(())) => Some(true),
        Poll::Ready(Err(_)) => None,
        Poll::Pending => Some(false),
    }
}

impl Relay<'_> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<RelayEnd> {
        loop {
            let mut progress = false;
            let c = &mut *self.client;
            let s = &mut *self.server;

            // Client to server: in-place bytes first, then the skipped (copied) ones, then the
            // rewritten ones.
            if c.fwd > 0 {
                let Some(n) = poll_send(&mut s.stream, cx, &c.buf[..c.fwd]) else {
                    return Poll::Ready(RelayEnd::ServerGone);
                };
                c.buf.advance(n);
                c.fwd -= n;
                progress |= n > 0;
            }
            if c.fwd == 0 && c.skip > 0 {
                c.buf.advance(c.skip);
                c.skip = 0;
            }
            if c.fwd == 0 && !c.to_server.is_empty() {
                let Some(n) = poll_send(&mut s.stream, cx, &c.to_server) else {
                    return Poll::Ready(RelayEnd::ServerGone);
                };
                c.to_server.advance(n);
                progress |= n > 0;
            }
            // Server to client: forwarded bytes, then sluice's own responses.
            if self.s_fwd > 0 {
                let Some(n) = poll_send(&mut c.stream, cx, &s.buf[..self.s_fwd]) else {
                    return Poll::Ready(RelayEnd::ClientGone);
                };
                s.buf.advance(n);
                self.s_fwd -= n;
                progress |= n > 0;
            }
            // sluice's own replies wait, like the server's, while a replica's answer is held.
            let holding = self.watch.as_ref().is_some_and(|w| w.on_replica() && w.can_retry())
                && ReplicaAnswer::of(&s.buf) != ReplicaAnswer::Decided;
            if self.s_fwd == 0 && c.to_client.is_empty() && s.responses.synthetic_due() && !holding {
                s.responses.take_synthetic(&mut c.to_client);
                if let Some(w) = self.watch.as_deref_mut() {
                    w.answered();
                }
            }
            if self.s_fwd == 0 && !c.to_client.is_empty() {
                let Some(n) = poll_send(&mut c.stream, cx, &c.to_client) else {
                    return Poll::Ready(RelayEnd::ClientGone);
                };
                c.to_client.advance(n);
                progress |= n > 0;
            }

            // Done means flushed too: a TLS stream may hold written records until then.
            let to_server_done = c.fwd == 0 && c.to_server.is_empty() && {
                let Some(flushed) = poll_flushed(&mut s.stream, cx) else {
                    return Poll::Ready(RelayEnd::ServerGone);
                };
                flushed
            };
            let to_client_done = self.s_fwd == 0 && c.to_client.is_empty() && {
                let Some(flushed) = poll_flushed(&mut c.stream, cx) else {
                    return Poll::Ready(RelayEnd::ClientGone);
                };
                flushed
            };
            let server_idle = s.tracker.is_idle() && s.responses.is_empty();
            if to_server_done && c.terminated {
                return Poll::Ready(RelayEnd::Terminated);
            }
            let rerouting = self.watch.as_ref().is_some_and(|w| w.reroute);
            // Release only when no whole header is waiting: a buffered message starts the next
            // transaction on this checkout (unless it must run elsewhere).
            // With the cache on, also with the next request buffered: it may be a hit.
            if to_server_done
                && to_client_done
                && (c.buf.len() < 5 || rerouting || (self.cache.is_some() && s.tracker.answered() > self.answered_before))
                && server_idle
                && self.opts.release_at_idle
                && !c.pinned
                && c.scanner.at_boundary()
            {
                return Poll::Ready(RelayEnd::Released);
            }

            // Client to server: scan what is buffered, read more only when all of it is sent.
            let mut gate = Gate::Open;
            if let Some(w) = self.watch.as_deref_mut().filter(|w| w.on_replica()) {
                if to_server_done && !rerouting && c.buf.len() >= 5 && c.scanner.at_boundary() && !s.tracker.unsynced() {
                    gate = w.gate(
                        &c.buf,
                        c.scanner.max_len(),
                        Some(&c.statements),
                        s.tracker.pending() > 0,
                        s.tracker.status() != TransactionStatus::Idle,
                    );
                    if gate == Gate::Reroute {
                        progress = true;
                    }
                }
            }
            if gate == Gate::ReadClient {
                make_room(&mut c.buf, READ_RESERVE);
                match poll_read_buf(Pin::new(&mut c.stream), cx, &mut c.buf) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(RelayEnd::ClientGone),
                    Poll::Ready(Ok(_)) => progress = true,
                    Poll::Pending => {}
                }
            }
            // A client that does not take what sluice answers itself is not read either, as
            // Postgres stops reading a client it cannot write to; nor one owed too much.
            let owes_enough = !c.to_client.is_empty() || s.responses.len() >= MAX_OWED;
            if to_server_done
                && !c.terminated
                && !rerouting
                && gate == Gate::Open
                && !self.waiting
                && !self.retrying
                && !owes_enough
            {
                let statements = self.registry.map(|registry| Statements {
                    client: &mut c.statements,
                    server: &mut s.statements,
                    queue: &mut s.responses,
                    registry,
                    may_have_failed: false,
                });
                let mut insp = ClientSide {
                    tracker: &mut s.tracker,
                    statements,
                    settings: self.opts.release_at_idle.then_some(&mut c.settings),
                    startup: &c.startup,
                    out: &mut c.to_server,
                    copying: false,
                    copied: 0,
                    terminated: false,
                    error: None,
                    pin: None,
                    watch: self.watch.as_deref_mut(),
                    waiting: false,
                    cache: self.cache.as_deref_mut(),
                    replay: self.registry.is_some().then_some(&mut c.replay),
                };
                let scanned = match c.scanner.scan(&c.buf, &mut insp) {
                    Ok(x) => x,
                    Err(e) => return Poll::Ready(RelayEnd::ClientProtocol(e)),
                };
                if let Some(e) = insp.error {
                    return Poll::Ready(RelayEnd::ClientProtocol(e));
                }
                c.terminated = insp.terminated;
                self.waiting = insp.waiting;
                if let Some(feature) = insp.pin.filter(|_| !c.pinned) {
                    tracing::debug!(feature, "client pinned to its server connection");
                    c.pinned = true;
                }
                c.fwd = scanned.consumed - insp.copied;
                c.skip = insp.copied;
                if scanned.consumed > 0 || scanned.stopped {
                    progress = true;
                } else {
                    make_room(&mut c.buf, scanned.wanted);
                    match poll_read_buf(Pin::new(&mut c.stream), cx, &mut c.buf) {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(RelayEnd::ClientGone),
                        Poll::Ready(Ok(_)) => {
                            self.armed = false;
                            progress = true;
                        }
                        Poll::Pending => {}
                    }
                }
            }

            // Server to client, unless the server is parked at an idle boundary or sluice's own
            // responses are still going out.
            let parked = server_idle && self.opts.release_at_idle && !c.pinned;
            let mut answer = ReplicaAnswer::Decided;
            if to_client_done && !parked && self.watch.as_ref().is_some_and(|w| w.on_replica() && w.can_retry()) {
                // Nothing of this read reaches the client until the replica has answered more
                // than acknowledgements: if it fails first, the read can run on the primary.
                answer = ReplicaAnswer::of(&s.buf);
                match answer {
                    ReplicaAnswer::Failed => return Poll::Ready(RelayEnd::ReplicaFailed),
                    ReplicaAnswer::Pending => {
                        make_room(&mut s.buf, 0);
                        match poll_read_buf(Pin::new(&mut s.stream), cx, &mut s.buf) {
                            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(RelayEnd::ServerGone),
                            Poll::Ready(Ok(_)) => progress = true,
                            Poll::Pending => {}
                        }
                    }
                    ReplicaAnswer::Decided => {}
                }
            }
            if self.retrying {
                // Nothing else moves until the failed attempt's answer is dropped.
                if to_client_done {
                    match self.retry_stale_statement(cx) {
                        Ok(true) => continue,
                        Ok(false) => {}
                        Err(end) => return end,
                    }
                }
                if !progress {
                    return self.poll_idle_timer(cx);
                }
                continue;
            }
            let retry_armed = self.registry.is_some()
                && !self.watch.as_ref().is_some_and(|w| w.on_replica())
                && s.tracker.pending() == 1
                && c.replay.holds(s.tracker.answered() + 1)
                && to_server_done
                && c.scanner.at_boundary()
                && !self.waiting;
            if to_client_done && !parked && !s.responses.synthetic_due() && answer == ReplicaAnswer::Decided {
                let mut insp = ServerSide {
                    tracker: &mut s.tracker,
                    server_params: &mut s.params,
                    client_params: &mut c.params,
                    responses: &mut s.responses,
                    statements: &mut s.statements,
                    settings: self.opts.release_at_idle.then_some(&mut c.settings),
                    startup: &c.startup,
                    registry: self.registry,
                    release: self.opts.release_at_idle,
                    hold_commit: self.watch.as_ref().is_some_and(|w| w.holds_commit()),
                    hold_for_cache: true,
                    commit_held: false,
                    stop_at_ready: self.watch.as_ref().is_some_and(|w| w.on_replica()),
                    ready_seen: false,
                    cache: self.cache.as_deref_mut(),
                    retry_armed,
                    retry: false,
                };
                let scanned = match s.scanner.scan(&s.buf, &mut insp) {
                    Ok(x) => x,
                    Err(e) => return Poll::Ready(RelayEnd::ServerProtocol(e)),
                };
                if insp.retry {
                    self.retrying = true;
                }
                if insp.commit_held && scanned.consumed == 0 {
                    return Poll::Ready(RelayEnd::CommitHeld);
                }
                let insp_ready_seen = insp.ready_seen;
                if let Some(w) = self.watch.as_deref_mut() {
                    if insp_ready_seen {
                        w.segment_answered();
                    } else if scanned.consumed > 0 {
                        w.answered();
                    }
                }
                self.s_fwd = scanned.consumed;
                if scanned.consumed > 0 || scanned.stopped {
                    progress = true;
                    self.waiting = false;
                    if scanned.consumed == 0 && s.responses.swallows(s.buf[0]) {
                        // The reply to a message sluice sent itself; it stops here.
                        if let Some(h) = crate::protocol::frame::peek_header(&s.buf, u32::MAX >> 1).ok().flatten() {
                            if s.buf.len() >= h.total() {
                                s.responses.on_server_message(h.tag, &mut s.statements);
                                s.tracker.server_message(h.tag, &[]);
                                s.buf.advance(h.total());
                            } else {
                                match self.read_server(cx, h.total()) {
                                    Ok(p) => progress = p,
                                    Err(end) => return end,
                                }
                            }
                        }
                    }
                } else {
                    match self.read_server(cx, scanned.wanted) {
                        Ok(p) => progress |= p,
                        Err(end) => return end,
                    }
                }
            }

            if !progress {
                return self.poll_idle_timer(cx);
            }
        }
    }

    /// Drops the failed attempt's answer (its ErrorResponse up to its ReadyForQuery) once it
    /// is all here, after every tracker has seen it, and offers the request again.
    fn retry_stale_statement(&mut self, cx: &mut Context<'_>) -> Result<bool, Poll<RelayEnd>> {
        let max = self.server.scanner.max_len();
        let mut end = 0;
        loop {
            let header = match crate::protocol::frame::peek_header(&self.server.buf[end..], max) {
                Ok(h) => h,
                Err(e) => return Err(Poll::Ready(RelayEnd::ServerProtocol(e))),
            };
            match header {
                Some(h) if self.server.buf.len() - end >= h.total() => {
                    end += h.total();
                    if h.tag == b'Z' {
                        break;
                    }
                }
                Some(h) => return self.read_server(cx, end + h.total()),
                None => return self.read_server(cx, end + 5),
            }
        }
        let answer = self.server.buf.split_to(end);
        let mut insp = ServerSide::accounting(self.client, self.server, self.opts, self.cache.as_deref_mut());
        let mut pos = 0;
        while let Ok(Some(h)) = crate::protocol::frame::peek_header(&answer[pos..], max) {
            insp.message(h.tag, &answer[pos + 5..pos + h.total()]);
            pos += h.total();
        }
        tracing::debug!("request failed on a stale prepared statement; running it again");
        let c = &mut *self.client;
        c.replay.take_into(&mut c.buf);
        self.retrying = false;
        Ok(true)
    }

    /// Reads from the server; `Err` carries the end of the relay when it is gone.
    fn read_server(&mut self, cx: &mut Context<'_>, wanted: usize) -> Result<bool, Poll<RelayEnd>> {
        let s = &mut *self.server;
        make_room(&mut s.buf, wanted);
        match poll_read_buf(Pin::new(&mut s.stream), cx, &mut s.buf) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Err(Poll::Ready(RelayEnd::ServerGone)),
            Poll::Ready(Ok(_)) => Ok(true),
            Poll::Pending => Ok(false),
        }
    }

    fn poll_idle_timer(&mut self, cx: &mut Context<'_>) -> Poll<RelayEnd> {
        let Some(limit) = self.opts.idle_transaction_timeout else { return Poll::Pending };
        let waiting_on_client = self.client.fwd == 0
            && self.client.to_server.is_empty()
            && self.s_fwd == 0
            && self.client.to_client.is_empty()
            && self.server.tracker.is_idle_in_transaction();
        if !waiting_on_client {
            self.armed = false;
            return Poll::Pending;
        }
        if !self.armed {
            self.timer.as_mut().reset(Instant::now() + limit);
            self.armed = true;
        }
        ready!(self.timer.as_mut().poll(cx));
        Poll::Ready(RelayEnd::IdleInTransaction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_message_reserves_room_as_its_bytes_arrive_not_as_its_length_field_says() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[b'P', 0x3f, 0xff, 0xff, 0xff]);
        make_room(&mut buf, 1 << 30);
        assert!(buf.capacity() <= HELD_RESERVE + READ_RESERVE + 5, "{}", buf.capacity());
        make_room(&mut buf, 100);
        assert!(buf.capacity() - buf.len() >= 1024);
    }
}
