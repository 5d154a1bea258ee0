//! One client's session: login, then a short loop that waits for the client's next message,
//! checks out a server connection, brings the server's session parameters in line with the
//! client's, and relays until the transaction ends (transaction mode) or the client leaves.
//!
//! - [`state`]: the pure transaction state machine;
//! - [`cached`]: the result cache: answering reads, gathering fills, bumping writes;
//! - [`params`]: session parameters that follow the client;
//! - [`relay`]: the zero-copy relay;
//! - [`replay`]: running a request again when a shared prepared statement went stale;
//! - [`login`]: startup and client authentication;
//! - [`client`]: the client connection.

pub mod cached;
pub mod client;
pub mod login;
pub mod params;
pub mod pinning;
pub mod prepared;
pub mod relay;
pub mod replay;
pub mod route;
pub mod setting;
pub mod state;
mod welcome;

use crate::app::{CancelRegistration, ClientState, Shared};
use crate::auth::AuthError;
use crate::config::PoolMode;
use crate::pool::PoolError;
use crate::protocol::backend::{Severity, SqlState};
use crate::protocol::frame::{peek_header, Flow, Inspect, Scanner, Want};
use crate::protocol::ProtocolError;
use crate::server::{PgConnector, ServerError};
use client::ClientConn;
use relay::{RelayEnd, RelayOptions};
use route::{Placement, RouteWatch, Segment, SessionRouting};
use crate::metrics::{Route as MetricsRoute, SessionMetrics};
use crate::router::replica::ReplicaLoad;
use crate::router::Wanted;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// A pool of server connections as sessions use it.
pub type ServerPool = crate::pool::Pool<PgConnector>;

/// Why a session could not go on; each maps to what the client is told.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Socket IO failed.
    #[error("client connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The client closed its connection.
    #[error("client closed the connection")]
    ClientGone,
    /// The client sent something that is not the protocol.
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    /// Authentication failed.
    #[error("{0}")]
    Auth(#[from] AuthError),
    /// The client must use TLS for what it asked (`client_mode = "require"`, a cleartext
    /// password).
    #[error("{0}")]
    TlsRequired(&'static str),
    /// The TLS handshake with the client failed.
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    /// A bad startup parameter.
    #[error("{0}")]
    Startup(String),
    /// No `[databases.NAME]` entry.
    #[error("no such database: {0}")]
    UnknownDatabase(String),
    /// A server connection could not be had or failed.
    #[error("{0}")]
    Server(#[from] ServerError),
    /// The pool could not serve a connection.
    #[error("{0}")]
    Pool(#[from] PoolError<ServerError>),
    /// Startup and authentication took too long.
    #[error("client_login_timeout: login not completed in time")]
    LoginTimeout,
    /// sluice is shutting down.
    #[error("sluice is shutting down")]
    Shutdown,
    /// The database was killed from the admin console.
    #[error("terminated by the admin console (KILL)")]
    Killed,
    /// The client stayed idle inside a transaction too long.
    #[error("terminating connection due to idle-in-transaction timeout")]
    IdleInTransaction,
    /// The server went away under a running transaction.
    #[error("server connection lost")]
    ServerLost,
    /// A read found no healthy replica and `replica_fallback = "error"`.
    #[error("no healthy replica for this read (replica_fallback = \"error\")")]
    NoReplica,
    /// A client limit was reached.
    #[error("{0}")]
    Limit(#[from] crate::app::LimitError),
}

impl SessionError {
    /// The SQLSTATE the client is told.
    pub fn sqlstate(&self) -> SqlState {
        match self {
            SessionError::Protocol(e) => e.sqlstate(),
            SessionError::Auth(AuthError::Failed(_)) => SqlState::INVALID_PASSWORD,
            SessionError::Auth(_) | SessionError::TlsRequired(_) => SqlState::INVALID_AUTHORIZATION,
            SessionError::Tls(_) => SqlState::PROTOCOL_VIOLATION,
            SessionError::Startup(_) => SqlState::PROTOCOL_VIOLATION,
            SessionError::UnknownDatabase(_) => SqlState::INVALID_CATALOG_NAME,
            SessionError::Server(e) => e.sqlstate(),
            SessionError::Pool(PoolError::WaitTimeout(_)) => SqlState::QUERY_CANCELED,
            SessionError::Pool(PoolError::TooManyWaiting(_)) | SessionError::Limit(_) => SqlState::TOO_MANY_CONNECTIONS,
            SessionError::Pool(PoolError::Connect(e)) => e.sqlstate(),
            SessionError::Pool(_) | SessionError::NoReplica => SqlState::CANNOT_CONNECT_NOW,
            SessionError::LoginTimeout => SqlState::PROTOCOL_VIOLATION,
            SessionError::Shutdown | SessionError::Killed => SqlState::ADMIN_SHUTDOWN,
            SessionError::IdleInTransaction => SqlState::IDLE_IN_TRANSACTION_TIMEOUT,
            SessionError::Io(_) | SessionError::ClientGone | SessionError::ServerLost => SqlState::CONNECTION_FAILURE,
        }
    }
}

/// What ends a session that is waiting: sluice shutting down, or its database killed.
///
/// Both are the session's own child tokens: waiting on them locks only the session's own
/// waiter list, never one shared with every other session.
struct Stops {
    shutdown: CancellationToken,
    kill: CancellationToken,
}

impl Stops {
    fn new(ctx: &Shared, database: &str) -> Self {
        Stops { shutdown: ctx.shutdown.child_token(), kill: ctx.gates.kill_token(database).child_token() }
    }

    /// Runs `f` unless a stop comes first. `f` is polled first: when it is ready at once (a
    /// free server connection, bytes already sent), the stops are not waited on at all.
    async fn until<T>(&self, f: impl std::future::Future<Output = T>) -> Result<T, SessionError> {
        tokio::select! {
            biased;
            r = f => Ok(r),
            _ = self.kill.cancelled() => Err(SessionError::Killed),
            _ = self.shutdown.cancelled() => Err(SessionError::Shutdown),
        }
    }
}

/// Reads more from the client into its buffer; ends the session on EOF, shutdown or KILL.
async fn read_client(client: &mut ClientConn, stops: &Stops) -> Result<(), SessionError> {
    if client.buf.capacity() - client.buf.len() < 512 {
        client.buf.reserve(client::CLIENT_BUF);
    }
    let read = stops.until(tokio::io::AsyncReadExt::read_buf(&mut client.stream, &mut client.buf)).await??;
    if read == 0 {
        return Err(SessionError::ClientGone);
    }
    Ok(())
}

/// Serves one accepted client connection to the end.
pub async fn serve(tcp: TcpStream, ctx: Arc<Shared>) {
    let _ = tcp.set_nodelay(true);
    let mut stream = crate::tls::Stream::plain(tcp);
    let (login_timeout, max_pending) = {
        let config = ctx.config.load();
        (config.server.client_login_timeout.0, config.server.max_pending_logins)
    };
    let mut buf = bytes::BytesMut::with_capacity(512);
    let pending = ctx.pending_logins.enter(max_pending);
    let opened = tokio::select! {
        // Boxed: the login's state (TLS handshake, authentication) is gone once it is done.
        opened = tokio::time::timeout(login_timeout, Box::pin(welcome::login(&mut stream, &mut buf, &ctx))) => opened,
        _ = pending.pushed_out.cancelled() => {
            return refuse(&mut stream, crate::app::LimitError::PendingLogins.into()).await;
        }
    };
    drop(pending);
    let session = match opened {
        Ok(Ok(Some(welcome::Opened::Client(s)))) => s,
        Ok(Ok(Some(welcome::Opened::Admin(user)))) => {
            let _ = Box::pin(crate::admin::serve(&mut stream, &mut buf, ctx, &user)).await;
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Err(e)) => return refuse(&mut stream, e).await,
        Err(_) => return refuse(&mut stream, SessionError::LoginTimeout).await,
    };
    let Session { client, pool, cancel, mode, idle_transaction_timeout, routing, metrics, cache, database, user, slot } =
        session;
    let entry = ctx.clients_registry.register(crate::app::NewClient {
        database: database.clone(),
        user,
        peer: stream.peer_addr().ok(),
        local: stream.local_addr().ok(),
        application_name: client.get("application_name").unwrap_or_default().to_owned(),
    });
    let client = ClientConn::new(stream, buf, session_max(&ctx), client);
    let stops = Stops::new(&ctx, &database);
    let mut run = Running { client, pool, cancel, ctx, routing, metrics, cache, database, stops, entry, _slot: slot };
    let opts = RelayOptions { release_at_idle: mode == PoolMode::Transaction, idle_transaction_timeout };
    let result = run.run(opts).await;
    if let Some(cache) = run.cache.as_mut() {
        cache.writes_unknown();
        if let Some(flush) = cache.flush_bumps() {
            flush.await;
        }
    }
    if let Err(e) = result {
        if !matches!(e, SessionError::ClientGone | SessionError::Io(_)) {
            let _ = run.client.send_error(Severity::Fatal, e.sqlstate(), &e.to_string()).await;
        }
    }
}

fn session_max(ctx: &Shared) -> u32 {
    ctx.config.load().server.max_message_size.0.min(u32::MAX as u64 >> 1) as u32
}

/// How long a client that gave a wrong password waits for its answer: guessing passwords
/// gets slow, and a known user fails exactly like an unknown one.
const AUTH_FAILURE_DELAY: Duration = Duration::from_millis(250);

async fn refuse(stream: &mut crate::tls::Stream, e: SessionError) {
    if matches!(e, SessionError::ClientGone | SessionError::Io(_)) {
        return;
    }
    if matches!(e, SessionError::Auth(AuthError::Failed(_))) {
        tokio::time::sleep(AUTH_FAILURE_DELAY).await;
    }
    tracing::debug!(error = %e, "client refused");
    let mut out = bytes::BytesMut::new();
    crate::protocol::backend::error_response(&mut out, Severity::Fatal, e.sqlstate(), &e.to_string());
    let _ = stream.send(&out).await;
}

/// A logged-in client ready to run.
pub(crate) struct Session {
    client: params::ParamSet,
    pool: ServerPool,
    cancel: CancelRegistration,
    mode: PoolMode,
    idle_transaction_timeout: Option<Duration>,
    /// Read/write routing (transaction mode).
    routing: Option<SessionRouting>,
    /// What this session counts.
    metrics: SessionMetrics,
    /// The result cache, when it is on.
    cache: Option<cached::SessionCache>,
    /// The database the client connected to.
    database: String,
    /// The user the client logged in as.
    user: String,
    /// Its place under the per-user and per-database limits.
    slot: crate::app::ClientSlot,
}

struct Running {
    client: ClientConn,
    pool: ServerPool,
    cancel: CancelRegistration,
    ctx: Arc<Shared>,
    routing: Option<SessionRouting>,
    metrics: SessionMetrics,
    cache: Option<cached::SessionCache>,
    database: String,
    stops: Stops,
    /// This client in SHOW CLIENTS.
    entry: crate::app::ClientHandle,
    /// Its place under the per-user and per-database limits, given back when it leaves.
    _slot: crate::app::ClientSlot,
}

/// What the cache did with the client's next request.
enum CacheStep {
    /// Answered it.
    Answered,
    /// It is a miss to fill: run it on the primary.
    Fill,
    /// Not the cache's: route it as usual.
    Pass,
}

/// A server connection checked out for a transaction, and how it was routed.
struct Held {
    server: crate::pool::Checkout<PgConnector>,
    watch: Option<RouteWatch>,
    /// Counts the transaction on its replica while held.
    replica: Option<ReplicaLoad>,
    /// ReadyForQuery messages the server had sent before this checkout's first request.
    answered_before: u64,
    /// When it was checked out.
    since: std::time::Instant,
}

impl Held {
    fn new(server: crate::pool::Checkout<PgConnector>, watch: Option<RouteWatch>, replica: Option<ReplicaLoad>) -> Self {
        let answered_before = server.tracker.answered();
        Held { server, watch, replica, answered_before, since: std::time::Instant::now() }
    }

    /// Counts the checkout's transaction and requests.
    fn record(&self, metrics: &SessionMetrics) {
        let route = if self.replica.is_some() { MetricsRoute::Replica } else { MetricsRoute::Primary };
        metrics.transaction(route);
        metrics.queries(route, self.server.tracker.answered().saturating_sub(self.answered_before));
        metrics.held(self.since.elapsed());
    }
}

/// Stops a scan after the message that ends a request (Query, Sync, FunctionCall).
struct RequestEnd;

impl Inspect for RequestEnd {
    fn wants(&self, _: u8, _: u32) -> Want {
        Want::Header
    }
    fn message(&mut self, tag: u8, _: &[u8]) -> Flow {
        if matches!(tag, b'Q' | b'S' | b'F') {
            Flow::StopAfter
        } else {
            Flow::Continue
        }
    }
}

impl Running {
    async fn run(&mut self, opts: RelayOptions) -> Result<(), SessionError> {
        let mut timer = Box::pin(tokio::time::sleep(Duration::ZERO));
        let mut held: Option<Held> = None;
        loop {
            if held.is_none() {
                self.wait_for_message().await?;
                if self.client.buf[0] == b'X' {
                    return Ok(());
                }
                let step = if opts.release_at_idle { self.consult_cache().await? } else { CacheStep::Pass };
                let placed = match step {
                    CacheStep::Answered => continue,
                    CacheStep::Fill => Ok(self.on_primary()),
                    CacheStep::Pass => self.place().await,
                };
                let placement = match placed {
                    Ok(p) => p,
                    Err(e) => {
                        self.reject_request(&e).await?;
                        continue;
                    }
                };
                let (pool, replica) = match placement.replica {
                    Some((pool, load)) => (pool, Some(load)),
                    None => (self.pool.clone(), None),
                };
                let started = std::time::Instant::now();
                // PAUSE holds new transactions here, with no server connection taken.
                self.entry.set(ClientState::Waiting);
                self.stops.until(self.ctx.gates.wait_open(&self.database)).await?;
                let checkout = self.stops.until(pool.checkout()).await?;
                self.metrics.waited(started.elapsed());
                self.entry.set(if checkout.is_ok() { ClientState::Active } else { ClientState::Idle });
                let mut server = match checkout {
                    Ok(s) => s,
                    Err(e) if replica.is_some() => {
                        // The replica cannot be had right now: the primary can serve the read.
                        tracing::debug!(error = %e, "replica checkout failed; reading from the primary");
                        let watch = self.routing.as_ref().and_then(SessionRouting::primary_watch);
                        held = self.checkout_primary(watch).await?;
                        continue;
                    }
                    Err(e) => {
                        if let Some(cache) = self.cache.as_mut() {
                            cache.drop_fill();
                        }
                        self.reject_request(&SessionError::Pool(e)).await?;
                        continue;
                    }
                };
                if let Err(e) = server.apply_params(&self.client.params).await {
                    server.discard();
                    if replica.is_none() {
                        return Err(e.into());
                    }
                    tracing::debug!(error = %e, "replica connection failed; reading from the primary");
                    let watch = self.routing.as_ref().and_then(SessionRouting::primary_watch);
                    held = self.checkout_primary(watch).await?;
                    continue;
                }
                if let Some(cache) = self.cache.as_mut() {
                    if let Some(sql) = cache.relations_query() {
                        // Views and foreign tables are not cached: the catalog says which these are.
                        let kinds = server.run_internal_scalar(&sql).await;
                        if let Err(e) = &kinds {
                            tracing::debug!(error = %e, "relation kinds unknown; the read is not cached");
                        }
                        cache.relations_checked(kinds.ok().flatten().as_deref());
                    }
                }
                held = Some(Held::new(server, placement.watch, replica));
            }
            let Some(h) = held.as_mut() else { continue };
            let server = &mut h.server;
            if let Some(e) = &server.entry {
                e.serve(self.entry.id);
            }
            self.cancel.slot.set((server.addr(), server.key()));
            let registry = opts.release_at_idle.then_some(&*self.ctx.statements);
            let relayed = relay::relay(
                &mut self.client,
                server,
                opts,
                registry,
                &mut timer,
                h.watch.as_mut(),
                self.cache.as_mut(),
            );
            let end = tokio::select! {
                biased;
                end = relayed => end,
                _ = self.stops.kill.cancelled() => {
                    // Whatever the server was doing, its connection goes.
                    if let Some(h) = held.take() {
                        h.server.discard();
                    }
                    return Err(SessionError::Killed);
                }
            };
            self.cancel.slot.clear().await;
            if let Some(cache) = self.cache.as_mut() {
                cache.drop_fill();
                if matches!(end, RelayEnd::ServerGone | RelayEnd::ServerProtocol(_)) {
                    cache.writes_unknown();
                }
                if !matches!(end, RelayEnd::CommitHeld) {
                    if let Some(flush) = cache.flush_bumps() {
                        flush.await;
                    }
                }
            }
            if self.client.pinned {
                // Temporary tables, LISTEN, advisory locks...: gone before anyone else uses it.
                server.needs_discard = true;
            }
            match end {
                RelayEnd::CommitHeld => {
                    // The commit is marked before the client learns of it, so that no read can
                    // begin after the commit and be sent to a replica that has not replayed it.
                    let routing_hold = h.watch.as_ref().is_some_and(RouteWatch::holds_commit);
                    let ready = relay::take_held_ready(&mut self.client, &mut h.server, opts, self.cache.as_mut());
                    if routing_hold {
                        if let Some(routing) = self.routing.as_mut() {
                            routing.committed();
                        }
                    }
                    if routing_hold {
                        h.answered_before += 1;
                    }
                    if let Some(w) = h.watch.as_mut() {
                        w.wrote = false;
                    }
                    // Every instance sharing the cache learns of the commit before the client.
                    if let Some(cache) = self.cache.as_mut() {
                        if let Some(flush) = cache.flush_bumps() {
                            flush.await;
                        }
                    }
                    self.client.send(&ready).await?;
                }
                RelayEnd::Released => {
                    h.record(&self.metrics);
                    held = None;
                    self.entry.set(ClientState::Idle);
                    if self.ctx.shutdown.is_cancelled() {
                        return Err(SessionError::Shutdown);
                    }
                }
                RelayEnd::Terminated | RelayEnd::ClientGone => {
                    if !opts.release_at_idle {
                        server.needs_discard = true;
                    }
                    h.record(&self.metrics);
                    return Ok(());
                }
                RelayEnd::ClientProtocol(e) => return Err(e.into()),
                RelayEnd::IdleInTransaction => return Err(SessionError::IdleInTransaction),
                RelayEnd::ReplicaFailed => {
                    // The replica failed before answering a read: run it on the primary. Or it
                    // went away between reads: route the next one afresh.
                    let retry = h.watch.as_mut().and_then(RouteWatch::take_retry);
                    if let Some(h) = held.take() {
                        tracing::debug!(replica = %h.server.addr(), "replica connection failed; reads go elsewhere");
                        h.server.discard();
                    }
                    let Some(segment) = retry else { continue };
                    let mut buf = bytes::BytesMut::with_capacity(segment.len() + self.client.buf.len());
                    buf.extend_from_slice(&segment);
                    buf.extend_from_slice(&self.client.buf);
                    self.client.buf = buf;
                    let watch = self.routing.as_ref().and_then(SessionRouting::primary_watch);
                    held = self.checkout_primary(watch).await?;
                }
                RelayEnd::ServerGone | RelayEnd::ServerProtocol(_) => {
                    if let Some(h) = held.take() {
                        h.server.discard();
                    }
                    return Err(SessionError::ServerLost);
                }
            }
        }
    }

    /// Answers the buffered request from the cache if it can; tells whether it is a miss to
    /// fill. Outside transactions only (transaction mode, no server connection held).
    async fn consult_cache(&mut self) -> Result<CacheStep, SessionError> {
        let Some(cache) = self.cache.as_mut() else { return Ok(CacheStep::Pass) };
        cache.use_classifier(&self.ctx.routing.load().classifier);
        let max = self.client.scanner_max();
        loop {
            let c = &mut self.client;
            match cache.lookup(&c.buf, max, &c.statements, &c.params, c.pinned) {
                cached::Lookup::Hit { response, len } => {
                    bytes::Buf::advance(&mut c.buf, len);
                    c.send(&response).await?;
                    self.metrics.transaction(MetricsRoute::Cache);
                    self.metrics.queries(MetricsRoute::Cache, 1);
                    return Ok(CacheStep::Answered);
                }
                cached::Lookup::Fill => return Ok(CacheStep::Fill),
                cached::Lookup::Bypass => return Ok(CacheStep::Pass),
                cached::Lookup::ReadMore => read_client(c, &self.stops).await?,
                cached::Lookup::Remote => {
                    // Boxed: an idle session's task does not carry the backend's future.
                    return match Box::pin(cache.remote_lookup(&c.buf, max, &c.statements)).await {
                        cached::Lookup::Hit { response, len } => {
                            bytes::Buf::advance(&mut c.buf, len);
                            c.send(&response).await?;
                            self.metrics.transaction(MetricsRoute::Cache);
                            self.metrics.queries(MetricsRoute::Cache, 1);
                            Ok(CacheStep::Answered)
                        }
                        cached::Lookup::Fill => Ok(CacheStep::Fill),
                        _ => Ok(CacheStep::Pass),
                    };
                }
            }
        }
    }

    /// The primary, for a read whose answer will fill the cache.
    fn on_primary(&self) -> Placement {
        Placement { replica: None, watch: self.routing.as_ref().and_then(SessionRouting::primary_watch) }
    }

    /// Decides where the buffered request runs (transaction mode with read/write splitting).
    async fn place(&mut self) -> Result<Placement, SessionError> {
        let unrouted = Placement { replica: None, watch: None };
        let Some(routing) = self.routing.as_mut() else { return Ok(unrouted) };
        if !routing.active(&self.ctx) {
            return Ok(unrouted);
        }
        let max = self.client.scanner_max();
        let (wanted, len) = loop {
            let classifier = routing.classifier().clone();
            match Segment::judge(&self.client.buf, max, &classifier, Some(&self.client.statements)) {
                Segment::Whole { wanted, len } => break (wanted, len),
                Segment::Unfinished => break (Wanted::Primary, 0),
                Segment::Partial => read_client(&mut self.client, &self.stops).await?,
            }
        };
        routing.place(wanted, len).map_err(|_| SessionError::NoReplica)
    }

    /// Checks out a primary connection for a read whose replica failed.
    async fn checkout_primary(&mut self, watch: Option<RouteWatch>) -> Result<Option<Held>, SessionError> {
        let started = std::time::Instant::now();
        self.entry.set(ClientState::Waiting);
        self.stops.until(self.ctx.gates.wait_open(&self.database)).await?;
        let checkout = self.stops.until(self.pool.checkout()).await?;
        self.metrics.waited(started.elapsed());
        self.entry.set(if checkout.is_ok() { ClientState::Active } else { ClientState::Idle });
        match checkout {
            Ok(mut server) => {
                if let Err(e) = server.apply_params(&self.client.params).await {
                    server.discard();
                    return Err(e.into());
                }
                Ok(Some(Held::new(server, watch, None)))
            }
            Err(e) => {
                self.reject_request(&SessionError::Pool(e)).await?;
                Ok(None)
            }
        }
    }

    /// Waits until a whole message header from the client is buffered.
    async fn wait_for_message(&mut self) -> Result<(), SessionError> {
        let max = self.client.scanner_max();
        loop {
            if peek_header(&self.client.buf, max)?.is_some() {
                return Ok(());
            }
            self.client.shrink_if_idle();
            read_client(&mut self.client, &self.stops).await?;
        }
    }

    /// Answers the client's pending request with an error, as Postgres would: the error at once,
    /// the request's messages discarded through its Query or Sync, then ReadyForQuery.
    async fn reject_request(&mut self, e: &SessionError) -> Result<(), SessionError> {
        tracing::debug!(error = %e, "request rejected");
        let mut out = bytes::BytesMut::new();
        crate::protocol::backend::error_response(&mut out, Severity::Error, e.sqlstate(), &e.to_string());
        self.client.send(&out).await?;
        let mut scanner = Scanner::new(self.client.scanner_max());
        loop {
            let scanned = scanner.scan(&self.client.buf, &mut RequestEnd)?;
            bytes::Buf::advance(&mut self.client.buf, scanned.consumed);
            if scanned.stopped {
                out.clear();
                crate::protocol::backend::ready_for_query(
                    &mut out,
                    crate::protocol::backend::TransactionStatus::Idle,
                );
                self.client.send(&out).await?;
                return Ok(());
            }
            if self.client.buf.capacity() - self.client.buf.len() < 512 {
                self.client.buf.reserve(client::CLIENT_BUF);
            }
            if tokio::io::AsyncReadExt::read_buf(&mut self.client.stream, &mut self.client.buf).await? == 0 {
                return Err(SessionError::ClientGone);
            }
        }
    }
}
