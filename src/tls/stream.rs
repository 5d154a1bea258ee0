//! [`Stream`]: one socket of sluice's, plaintext or TLS, as the session, the relay and server
//! connections use it.

use super::TlsError;
use std::io::{IoSlice, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

/// A client or server connection, plaintext or TLS.
///
/// Writes to a TLS stream may stay in its buffer until flushed: whoever writes and then waits
/// for an answer flushes first ([`Stream::send`] does both).
pub struct Stream(Inner);

enum Inner {
    Plain(TcpStream),
    /// A client's connection that sluice accepted TLS on, with the binding data of the
    /// certificate it was shown.
    Accepted(Box<server::TlsStream<TcpStream>>, Option<Arc<[u8]>>),
    /// A connection to a server that sluice opened TLS on.
    Connected(Box<client::TlsStream<TcpStream>>),
    /// The socket was taken for a handshake that did not finish: nothing more can be sent.
    Detached,
}

fn detached() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotConnected, "connection lost during the TLS handshake")
}

impl Stream {
    /// A plaintext connection.
    pub fn plain(tcp: TcpStream) -> Stream {
        Stream(Inner::Plain(tcp))
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self.0, Inner::Accepted(..) | Inner::Connected(_))
    }

    /// The `tls-server-end-point` binding data of the certificate this client was shown, when
    /// it is on TLS and the certificate has one.
    pub fn end_point(&self) -> Option<Arc<[u8]>> {
        match &self.0 {
            Inner::Accepted(_, binding) => binding.clone(),
            _ => None,
        }
    }

    /// The TCP socket underneath.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match &self.0 {
            Inner::Plain(s) => Some(s),
            Inner::Accepted(s, _) => Some(s.get_ref().0),
            Inner::Connected(s) => Some(s.get_ref().0),
            Inner::Detached => None,
        }
    }

    /// The peer's address.
    ///
    /// # Errors
    /// The IO error, or `NotConnected` after a failed handshake.
    pub fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp().ok_or_else(detached)?.peer_addr()
    }

    /// The local address.
    ///
    /// # Errors
    /// The IO error, or `NotConnected` after a failed handshake.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp().ok_or_else(detached)?.local_addr()
    }

    /// Writes all of `bytes` and flushes them to the socket.
    ///
    /// # Errors
    /// The IO error.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write_all(bytes).await?;
        self.flush().await
    }

    /// Runs the server side of a TLS handshake on a plaintext client connection. On failure
    /// the connection is left unusable.
    ///
    /// # Errors
    /// [`TlsError::AlreadyEncrypted`] on a TLS connection; [`TlsError::Handshake`].
    ///
    /// # Cancel safety
    /// Not cancel safe: a cancelled handshake leaves the connection unusable.
    pub async fn accept(&mut self, acceptor: &TlsAcceptor, end_point: Option<Arc<[u8]>>) -> Result<(), TlsError> {
        let tcp = match std::mem::replace(&mut self.0, Inner::Detached) {
            Inner::Plain(tcp) => tcp,
            other => {
                self.0 = other;
                return Err(TlsError::AlreadyEncrypted);
            }
        };
        let tls = acceptor.accept(tcp).await.map_err(TlsError::Handshake)?;
        self.0 = Inner::Accepted(Box::new(tls), end_point);
        Ok(())
    }

    /// Runs the client side of a TLS handshake toward a server.
    ///
    /// # Errors
    /// [`TlsError::Handshake`], which includes a certificate that does not verify.
    pub async fn connect(
        connector: &TlsConnector,
        name: rustls::pki_types::ServerName<'static>,
        tcp: TcpStream,
    ) -> Result<Stream, TlsError> {
        let tls = connector.connect(name, tcp).await.map_err(TlsError::Handshake)?;
        Ok(Stream(Inner::Connected(Box::new(tls))))
    }

    /// Best effort, without waiting: sends `bytes` (a Terminate) and, on TLS, close_notify,
    /// as far as the socket takes them now.
    pub fn try_send_last(&mut self, bytes: &[u8]) {
        match &mut self.0 {
            Inner::Plain(s) => {
                let _ = s.try_write(bytes);
            }
            Inner::Connected(s) => {
                let (tcp, conn) = s.get_mut();
                finish_tls(tcp, conn, bytes);
            }
            Inner::Accepted(s, _) => {
                let (tcp, conn) = s.get_mut();
                finish_tls(tcp, conn, bytes);
            }
            Inner::Detached => {}
        }
    }
}

/// Queues `bytes` and close_notify on a TLS connection and writes what the socket takes now.
fn finish_tls<D>(tcp: &TcpStream, conn: &mut rustls::ConnectionCommon<D>, bytes: &[u8]) {
    struct NowOrNever<'a>(&'a TcpStream);
    impl Write for NowOrNever<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.try_write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    if conn.writer().write_all(bytes).is_err() {
        return;
    }
    conn.send_close_notify();
    let mut out = NowOrNever(tcp);
    while conn.wants_write() {
        if !matches!(conn.write_tls(&mut out), Ok(n) if n > 0) {
            return;
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().0 {
            Inner::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Accepted(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Inner::Connected(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Inner::Detached => Poll::Ready(Err(detached())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().0 {
            Inner::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Inner::Accepted(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Inner::Connected(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Inner::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().0 {
            Inner::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Inner::Accepted(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Inner::Connected(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Inner::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.0 {
            Inner::Plain(s) => s.is_write_vectored(),
            Inner::Accepted(s, _) => s.is_write_vectored(),
            Inner::Connected(s) => s.is_write_vectored(),
            Inner::Detached => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().0 {
            // Plaintext writes go straight to the socket: nothing to flush.
            Inner::Plain(_) => Poll::Ready(Ok(())),
            Inner::Accepted(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
            Inner::Connected(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Inner::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().0 {
            Inner::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Inner::Accepted(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Inner::Connected(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Inner::Detached => Poll::Ready(Ok(())),
        }
    }
}
