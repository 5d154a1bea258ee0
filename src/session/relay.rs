//! The hot path: bytes move between a client and its server connection in both directions at
//! once, straight out of each side's read buffer, without copying or re-encoding. Only message
//! headers are looked at, plus the bodies of ReadyForQuery and ParameterStatus from the server.
//! The relay ends when the server is back at an idle transaction boundary (transaction mode),
//! when either side goes away, or when the client sits idle in a transaction too long.

use super::client::ClientConn;
use super::params::ParamSet;
use super::state::{ClientAction, TransactionTracker};
use crate::protocol::backend;
use crate::protocol::frame::{Flow, Inspect};
use crate::protocol::ProtocolError;
use crate::server::ServerConnection;
use bytes::Buf;
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
}

struct ClientSide<'a> {
    tracker: &'a mut TransactionTracker,
}

impl Inspect for ClientSide<'_> {
    fn needs_body(&self, _tag: u8) -> bool {
        false
    }
    fn message(&mut self, tag: u8, _body: &[u8]) -> Flow {
        match self.tracker.client_message(tag) {
            ClientAction::Forward => Flow::Continue,
            ClientAction::Terminate => Flow::StopBefore,
        }
    }
}

struct ServerSide<'a> {
    tracker: &'a mut TransactionTracker,
    server_params: &'a mut ParamSet,
    client_params: &'a mut ParamSet,
    release: bool,
}

impl Inspect for ServerSide<'_> {
    fn needs_body(&self, tag: u8) -> bool {
        matches!(tag, b'Z' | b'S')
    }
    fn message(&mut self, tag: u8, body: &[u8]) -> Flow {
        if tag == b'S' {
            if let Some((k, v)) = backend::parse_parameter_status(body) {
                if ParamSet::is_tracked(k) {
                    self.server_params.set(k, v);
                    self.client_params.set(k, v);
                }
            }
            return Flow::Continue;
        }
        if self.tracker.server_message(tag, body) && self.release {
            Flow::StopAfter
        } else {
            Flow::Continue
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
pub async fn relay(
    client: &mut ClientConn,
    server: &mut ServerConnection,
    opts: RelayOptions,
    timer: &mut Pin<Box<Sleep>>,
) -> RelayEnd {
    let mut r = Relay { client, server, s_fwd: 0, opts, timer, armed: false };
    let end = poll_fn(|cx| r.poll(cx)).await;
    let (client, server) = (r.client, r.server);
    match end {
        RelayEnd::ClientGone | RelayEnd::ClientProtocol(_) | RelayEnd::IdleInTransaction => {
            // Bytes scanned but not written, or a message cut short, leave the server unsure.
            server.mid_client_message = client.fwd > 0 || !client.scanner.at_boundary();
        }
        RelayEnd::ServerGone | RelayEnd::ServerProtocol(_) => server.mark_broken(),
        RelayEnd::Released | RelayEnd::Terminated => {
            if r.s_fwd == 0 && !server.buf.is_empty() && server.tracker.is_idle() {
                // Only asynchronous messages (notices) can follow an idle ReadyForQuery; they
                // belong to nobody now.
                server.buf.clear();
            }
        }
    }
    if client.fwd > 0 {
        // Not forwarded: the session is ending.
        client.buf.advance(client.fwd);
        client.fwd = 0;
    }
    end
}

struct Relay<'a> {
    client: &'a mut ClientConn,
    server: &'a mut ServerConnection,
    /// Bytes at the front of the server's buffer that are scanned and due to the client.
    s_fwd: usize,
    opts: RelayOptions,
    timer: &'a mut Pin<Box<Sleep>>,
    armed: bool,
}

const READ_RESERVE: usize = 8192;

fn make_room(buf: &mut bytes::BytesMut, wanted: usize) {
    if wanted > buf.len() {
        buf.reserve(wanted - buf.len());
    }
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_RESERVE);
    }
}

impl Relay<'_> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<RelayEnd> {
        loop {
            let mut progress = false;
            let c = &mut *self.client;
            let s = &mut *self.server;

            if c.fwd > 0 {
                match Pin::new(&mut s.stream).poll_write(cx, &c.buf[..c.fwd]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(RelayEnd::ServerGone),
                    Poll::Ready(Ok(n)) => {
                        c.buf.advance(n);
                        c.fwd -= n;
                        progress = true;
                    }
                    Poll::Pending => {}
                }
            }
            if self.s_fwd > 0 {
                match Pin::new(&mut c.stream).poll_write(cx, &s.buf[..self.s_fwd]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(RelayEnd::ClientGone),
                    Poll::Ready(Ok(n)) => {
                        s.buf.advance(n);
                        self.s_fwd -= n;
                        progress = true;
                    }
                    Poll::Pending => {}
                }
            }

            let server_idle = s.tracker.is_idle();
            if c.fwd == 0 && c.terminated {
                return Poll::Ready(RelayEnd::Terminated);
            }
            // Release only when no whole header is waiting: a buffered message starts the next
            // transaction on this checkout.
            if c.fwd == 0
                && c.buf.len() < 5
                && self.s_fwd == 0
                && server_idle
                && self.opts.release_at_idle
                && c.scanner.at_boundary()
            {
                return Poll::Ready(RelayEnd::Released);
            }

            // Client to server: scan what is buffered, read more only when all of it is sent.
            if c.fwd == 0 && !c.terminated {
                let scanned = match c.scanner.scan(&c.buf, &mut ClientSide { tracker: &mut s.tracker }) {
                    Ok(x) => x,
                    Err(e) => return Poll::Ready(RelayEnd::ClientProtocol(e)),
                };
                c.fwd = scanned.consumed;
                c.terminated = scanned.stopped;
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

            // Server to client, unless the server is parked at an idle boundary.
            if self.s_fwd == 0 && !(server_idle && self.opts.release_at_idle) {
                let mut insp = ServerSide {
                    tracker: &mut s.tracker,
                    server_params: &mut s.params,
                    client_params: &mut c.params,
                    release: self.opts.release_at_idle,
                };
                let scanned = match s.scanner.scan(&s.buf, &mut insp) {
                    Ok(x) => x,
                    Err(e) => return Poll::Ready(RelayEnd::ServerProtocol(e)),
                };
                self.s_fwd = scanned.consumed;
                if scanned.consumed > 0 || scanned.stopped {
                    progress = true;
                } else {
                    make_room(&mut s.buf, scanned.wanted);
                    match poll_read_buf(Pin::new(&mut s.stream), cx, &mut s.buf) {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(RelayEnd::ServerGone),
                        Poll::Ready(Ok(_)) => progress = true,
                        Poll::Pending => {}
                    }
                }
            }

            if !progress {
                return self.poll_idle_timer(cx);
            }
        }
    }

    fn poll_idle_timer(&mut self, cx: &mut Context<'_>) -> Poll<RelayEnd> {
        let Some(limit) = self.opts.idle_transaction_timeout else { return Poll::Pending };
        let waiting_on_client =
            self.client.fwd == 0 && self.s_fwd == 0 && self.server.tracker.is_idle_in_transaction();
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
