//! The client side of a session: its socket, its read buffer and framing state, and the
//! session parameters that follow it from server to server.

use super::params::ParamSet;
use super::prepared::ClientStatements;
use super::replay::Replay;
use super::setting::SettingTracker;
use crate::protocol::backend::{self, Severity, SqlState, TransactionStatus};
use crate::protocol::frame::Scanner;
use bytes::BytesMut;
use crate::tls::Stream;

/// Buffer capacity a client starts with and returns to when idle.
pub const CLIENT_BUF: usize = 4096;

/// One client connection after login.
pub struct ClientConn {
    pub(crate) stream: Stream,
    /// Bytes read from the client; the first `fwd` of them are scanned and due to the server.
    pub(crate) buf: BytesMut,
    pub(crate) fwd: usize,
    pub(crate) scanner: Scanner,
    /// Bytes after the first `fwd` that were copied into `to_server` and are dropped once the
    /// first `fwd` are sent.
    pub(crate) skip: usize,
    /// Rewritten messages due to the server, after the first `fwd` bytes of `buf`.
    pub(crate) to_server: BytesMut,
    /// sluice's own responses due to the client.
    pub(crate) to_client: BytesMut,
    /// The client's named prepared statements.
    pub(crate) statements: ClientStatements,
    /// SET / RESET statements waiting for the server's verdict.
    pub(crate) settings: SettingTracker,
    /// The last request, kept while a stale statement may make it run again.
    pub(crate) replay: Replay,
    /// The parameters the client logged in with (what RESET returns to).
    pub(crate) startup: ParamSet,
    /// The client used a feature bound to its server connection and keeps that connection.
    pub(crate) pinned: bool,
    /// The client sent Terminate.
    pub(crate) terminated: bool,
    /// The parameters this client's session runs with.
    pub(crate) params: ParamSet,
}

impl ClientConn {
    /// Wraps a socket that has finished login; `leftover` holds bytes read past the login.
    pub fn new(stream: Stream, leftover: BytesMut, max_message_size: u32, params: ParamSet) -> Self {
        let mut buf = BytesMut::with_capacity(CLIENT_BUF.max(leftover.len()));
        buf.extend_from_slice(&leftover);
        Self {
            stream,
            buf,
            fwd: 0,
            skip: 0,
            to_server: BytesMut::new(),
            to_client: BytesMut::new(),
            statements: ClientStatements::default(),
            settings: SettingTracker::default(),
            replay: Replay::default(),
            startup: params.clone(),
            scanner: Scanner::new(max_message_size),
            pinned: false,
            terminated: false,
            params,
        }
    }

    /// Writes sluice's own bytes to the client and flushes them.
    ///
    /// # Errors
    /// The IO error.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.send(bytes).await
    }

    /// Sends an ErrorResponse, followed by ReadyForQuery when the severity is ERROR.
    ///
    /// # Errors
    /// The IO error.
    pub async fn send_error(&mut self, severity: Severity, code: SqlState, message: &str) -> std::io::Result<()> {
        let mut out = BytesMut::with_capacity(128);
        backend::error_response(&mut out, severity, code, message);
        if severity == Severity::Error {
            backend::ready_for_query(&mut out, TransactionStatus::Idle);
        }
        self.send(&out).await
    }

    /// The largest message accepted from this client.
    pub fn scanner_max(&self) -> u32 {
        self.scanner.max_len()
    }

    /// Gives back memory a large message left behind, once the buffer is empty.
    pub fn shrink_if_idle(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 4 * CLIENT_BUF {
            self.buf = BytesMut::with_capacity(CLIENT_BUF);
        }
    }
}
