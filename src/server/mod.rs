//! A connection from sluice to a Postgres server: opening it (with TLS as `tls.server_mode`
//! asks) and logging in (trust, cleartext, MD5 or SCRAM-SHA-256, whatever the server asks),
//! applying a client's session parameters, and resetting it to a clean state before it goes
//! back to the pool.

mod connector;
mod login;
pub mod registry;
mod reset;

pub use connector::{Credentials, PgConnector, ServerTarget, Welcome};

use crate::protocol::frame::{Flow, Inspect, Scanner, Want};
use crate::protocol::{backend, ProtocolError};
use crate::session::params::ParamSet;
use crate::session::prepared::{ResponseQueue, ServerStatements};
use crate::session::state::TransactionTracker;
use bytes::{Buf, BufMut, BytesMut};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Errors on a server connection.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The TCP connection could not be made.
    #[error("cannot connect to server {addr}: {source}")]
    Connect {
        /// host:port
        addr: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// Reading or writing failed.
    #[error("server connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The server closed the connection.
    #[error("server closed the connection unexpectedly")]
    Closed,
    /// The server sent an ErrorResponse.
    #[error("{message}")]
    Refused {
        /// ERROR or FATAL.
        severity: String,
        /// SQLSTATE.
        code: String,
        /// Message text.
        message: String,
    },
    /// The server wants a password and none is configured for this user.
    #[error("server requires a password for user \"{0}\" and none is configured")]
    NoPassword(String),
    /// The server's authentication exchange could not be completed.
    #[error("server authentication failed: {0}")]
    Auth(String),
    /// The server sent bytes that are not the protocol.
    #[error("server protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// TLS toward the server could not be had as `tls.server_mode` asks.
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
}

impl ServerError {
    /// The SQLSTATE a client is told when this error reaches it.
    pub fn sqlstate(&self) -> backend::SqlState {
        match self {
            ServerError::Refused { code, .. } => {
                backend::SqlState::from_code(code).unwrap_or(backend::SqlState::CONNECTION_FAILURE)
            }
            ServerError::NoPassword(_) | ServerError::Auth(_) => backend::SqlState::INVALID_AUTHORIZATION,
            _ => backend::SqlState::CONNECTION_FAILURE,
        }
    }
}

/// The key a server connection was given in BackendKeyData.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BackendKey {
    /// Backend process id.
    pub pid: u32,
    /// Secret key.
    pub secret: u32,
}

/// One logged-in connection to a Postgres server.
pub struct ServerConnection {
    pub(crate) stream: crate::tls::Stream,
    /// Bytes read from the server and not yet forwarded.
    pub(crate) buf: BytesMut,
    /// Framing state of the server-to-client direction.
    pub(crate) scanner: Scanner,
    /// Requests in flight and transaction status.
    pub(crate) tracker: TransactionTracker,
    /// Session parameters currently in effect on the server.
    pub(crate) params: ParamSet,
    /// A client message was only partly forwarded, so the server is mid-message.
    pub(crate) mid_client_message: bool,
    /// The connection failed and must not be reused.
    pub(crate) broken: bool,
    /// Session state was changed by a session-mode client: run DISCARD ALL before reuse.
    pub(crate) needs_discard: bool,
    /// The parameters as they were right after login (what DISCARD ALL returns to).
    pub(crate) baseline: ParamSet,
    /// Named statements prepared here under pooler-wide names.
    pub(crate) statements: ServerStatements,
    /// Responses still owed to the client, where sluice adds or removes some.
    pub(crate) responses: ResponseQueue,
    key: BackendKey,
    addr: SocketAddr,
    /// Its entry in SHOW SERVERS, when the connector keeps a registry.
    pub(crate) entry: Option<registry::ServerHandle>,
}

impl std::fmt::Debug for ServerConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConnection").field("addr", &self.addr).field("pid", &self.key.pid).finish()
    }
}

struct Drain<'a>(&'a mut TransactionTracker, &'a mut ParamSet);

impl Inspect for Drain<'_> {
    fn wants(&self, tag: u8, _len: u32) -> Want {
        if matches!(tag, b'Z' | b'S') {
            Want::Body
        } else {
            Want::Header
        }
    }
    fn message(&mut self, tag: u8, body: &[u8]) -> Flow {
        if tag == b'S' {
            if let Some((k, v)) = backend::parse_parameter_status(body) {
                if ParamSet::is_tracked(k) {
                    self.1.set(k, v);
                }
            }
        }
        if self.0.server_message(tag, body) {
            Flow::StopAfter
        } else {
            Flow::Continue
        }
    }
}

impl ServerConnection {
    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's BackendKeyData.
    pub fn key(&self) -> BackendKey {
        self.key
    }

    /// Session parameters in effect on the server.
    pub fn params(&self) -> &ParamSet {
        &self.params
    }

    /// Marks the connection as unusable.
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }

    /// Sends a simple Query with sluice's own SQL and reads its results up to ReadyForQuery,
    /// keeping the parameter set in step. Returns the first ErrorResponse, if any, as `Refused`.
    ///
    /// # Errors
    /// [`ServerError`] on IO failure or a server error.
    pub async fn run_internal(&mut self, sql: &str) -> Result<(), ServerError> {
        self.run_internal_scalar(sql).await.map(|_| ())
    }

    /// Like [`ServerConnection::run_internal`], returning the first column of the first row
    /// as text (`None` for no row or NULL).
    ///
    /// # Errors
    /// [`ServerError`] on IO failure or a server error.
    pub async fn run_internal_scalar(&mut self, sql: &str) -> Result<Option<String>, ServerError> {
        let mut out = BytesMut::with_capacity(sql.len() + 6);
        out.put_u8(b'Q');
        out.put_u32((sql.len() + 5) as u32);
        out.put_slice(sql.as_bytes());
        out.put_u8(0);
        self.tracker.client_message(b'Q');
        self.write(&out).await?;
        Ok(self.first_row().await?.and_then(|row| backend::first_column(&row)))
    }

    /// Runs sluice's own parameterized query (text parameters) through the extended protocol;
    /// returns the first row's columns as text (`None` for NULL), or `None` for no row.
    ///
    /// # Errors
    /// [`ServerError`] on IO failure or a server error.
    pub async fn run_internal_row(&mut self, sql: &str, params: &[&str]) -> Result<Option<Vec<Option<String>>>, ServerError> {
        let mut out = BytesMut::with_capacity(sql.len() + 64);
        let mut message = |tag: u8, body: &[&[u8]]| {
            out.put_u8(tag);
            out.put_u32(body.iter().map(|b| b.len()).sum::<usize>() as u32 + 4);
            body.iter().for_each(|b| out.put_slice(b));
        };
        message(b'P', &[b"\0", sql.as_bytes(), b"\0\0\0"]);
        let mut bind = BytesMut::new();
        bind.put_slice(b"\0\0\0\0");
        bind.put_u16(params.len() as u16);
        for p in params {
            bind.put_i32(p.len() as i32);
            bind.put_slice(p.as_bytes());
        }
        bind.put_u16(0);
        message(b'B', &[&bind]);
        message(b'E', &[b"\0\0\0\0\0"]);
        message(b'S', &[]);
        for tag in [b'P', b'B', b'E', b'S'] {
            self.tracker.client_message(tag);
        }
        self.write(&out).await?;
        Ok(self.first_row().await?.map(|row| backend::data_row_columns(&row).unwrap_or_default()))
    }

    /// Reads the results of an internal request up to its ReadyForQuery; returns the first
    /// DataRow's body.
    async fn first_row(&mut self) -> Result<Option<bytes::Bytes>, ServerError> {
        let mut error = None;
        let mut value = None;
        loop {
            let (tag, body) = self.read_whole_message().await?;
            match tag {
                b'D' if value.is_none() => value = Some(body.clone()),
                b'E' => {
                    let (severity, code, message) = backend::parse_error_fields(&body);
                    error.get_or_insert(ServerError::Refused { severity, code, message });
                }
                b'S' => {
                    if let Some((k, v)) = backend::parse_parameter_status(&body) {
                        if ParamSet::is_tracked(k) {
                            self.params.set(k, v);
                        }
                    }
                }
                _ => {}
            }
            if self.tracker.server_message(tag, &body) || (tag == b'Z' && self.tracker.pending() == 0) {
                break;
            }
        }
        error.map_or(Ok(value), Err)
    }

    /// Makes the server's session parameters equal to `target`, if they differ.
    ///
    /// # Errors
    /// [`ServerError::Refused`] when the server rejects a value.
    pub async fn apply_params(&mut self, target: &ParamSet) -> Result<(), ServerError> {
        let Some(sql) = self.params.diff_sql(target) else { return Ok(()) };
        self.run_internal(&sql).await?;
        // Reported settings were updated from ParameterStatus as the server normalized them;
        // the others (search_path, ...) produce none, so record them as sent.
        let now = target.with_reported_from(&self.params);
        self.params = now;
        Ok(())
    }

    pub(crate) async fn write(&mut self, bytes: &[u8]) -> Result<(), ServerError> {
        self.stream.send(bytes).await.map_err(|e| {
            self.broken = true;
            ServerError::Io(e)
        })
    }

    /// Reads one whole message (off the relay path: login, internal queries, reset).
    pub(crate) async fn read_whole_message(&mut self) -> Result<(u8, bytes::Bytes), ServerError> {
        loop {
            if let Some(h) = crate::protocol::frame::peek_header(&self.buf, u32::MAX >> 1)? {
                if self.buf.len() >= h.total() {
                    let mut msg = self.buf.split_to(h.total());
                    msg.advance(5);
                    return Ok((h.tag, msg.freeze()));
                }
                self.buf.reserve(h.total() - self.buf.len());
            }
            self.fill().await?;
        }
    }

    /// Reads and discards everything up to the ReadyForQuery that makes the connection idle or
    /// leaves nothing pending, keeping the scanner in step with partly forwarded messages.
    pub(crate) async fn drain_to_ready(&mut self) -> Result<(), ServerError> {
        loop {
            let scanned = self.scanner.scan(&self.buf, &mut Drain(&mut self.tracker, &mut self.params))?;
            self.buf.advance(scanned.consumed);
            if scanned.stopped || self.tracker.pending() == 0 {
                return Ok(());
            }
            if scanned.wanted > self.buf.len() {
                self.buf.reserve(scanned.wanted - self.buf.len());
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> Result<(), ServerError> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(8192);
        }
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) => {
                self.broken = true;
                Err(ServerError::Closed)
            }
            Ok(_) => Ok(()),
            Err(e) => {
                self.broken = true;
                Err(ServerError::Io(e))
            }
        }
    }
}

impl crate::pool::Poolable for ServerConnection {
    fn is_clean(&self) -> bool {
        !self.broken && !self.mid_client_message && !self.needs_discard && self.tracker.is_idle()
    }

    fn is_alive(&mut self) -> bool {
        if self.broken || !self.buf.is_empty() {
            return false;
        }
        // On TLS too, any bytes at all from an idle server (an error, close_notify) end it.
        let Some(tcp) = self.stream.tcp() else { return false };
        // The reactor marks the socket readable when bytes or EOF arrive; while it has not, the
        // connection is quiet and no system call is needed to know it.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if tcp.poll_read_ready(&mut cx).is_pending() {
            return true;
        }
        let mut probe = [0u8; 1];
        matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    async fn reset(&mut self) -> bool {
        reset::reset(self).await
    }

    fn checked_in(&mut self) {
        if let Some(e) = &self.entry {
            e.release();
        }
    }
}

impl Drop for ServerConnection {
    fn drop(&mut self) {
        if !self.broken && !self.mid_client_message {
            // Best effort, without waiting: tell the server we are leaving.
            self.stream.try_send_last(&[b'X', 0, 0, 0, 4]);
        }
    }
}

/// Opens a logical replication connection (`replication=database`) to `target` and logs in:
/// it takes replication commands and simple-protocol SQL. The role needs REPLICATION.
///
/// # Errors
/// [`ServerError`] when the server cannot be reached or refuses the login.
pub async fn connect_replication(
    target: &ServerTarget,
    tls: Option<&crate::tls::ServerTls>,
) -> Result<ServerConnection, ServerError> {
    login::connect_with(target, tls, &[("replication", "database"), ("application_name", "sluice_logical")])
        .await
        .map(|(conn, _)| conn)
}

/// Opens a tokio-postgres client for sluice's own use (replica probes, `sluice advise`) with
/// `tls`; the connection task ends when the client is dropped or the server goes away.
///
/// # Errors
/// Whatever tokio-postgres reports for the connection or login.
pub async fn open_client<T>(config: &tokio_postgres::Config, tls: T) -> Result<tokio_postgres::Client, tokio_postgres::Error>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = config.connect(tls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Sends a CancelRequest for `key` to the server at `addr` on a new connection.
///
/// # Errors
/// The IO error if the server cannot be reached.
pub async fn send_cancel(addr: SocketAddr, key: BackendKey) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    let mut msg = [0u8; 16];
    msg[..4].copy_from_slice(&16u32.to_be_bytes());
    msg[4..8].copy_from_slice(&crate::protocol::startup::CANCEL_REQUEST.to_be_bytes());
    msg[8..12].copy_from_slice(&key.pid.to_be_bytes());
    msg[12..].copy_from_slice(&key.secret.to_be_bytes());
    s.write_all(&msg).await?;
    // The server closes the connection when it has processed the request.
    let mut sink = [0u8; 16];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut sink)).await;
    Ok(())
}
