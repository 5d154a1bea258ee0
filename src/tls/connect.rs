//! Opening TLS toward a Postgres server: SSLRequest, one byte of answer, then the handshake.

use super::{ServerMode, ServerTls, Stream, TlsError};
use crate::protocol::startup::SSL_REQUEST;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Negotiates TLS on a fresh connection to the server at `addr` (host:port) as `tls.mode`
/// asks: `disable` sends nothing; `prefer` falls back to plaintext when the server answers 'N';
/// the other modes fail then. Exactly one byte is read before the handshake, so nothing the
/// server sent in plaintext can be taken as part of the TLS session.
///
/// # Errors
/// [`TlsError::ServerRefused`], [`TlsError::BadAnswer`], [`TlsError::Handshake`] (which
/// includes a certificate that does not verify), or the IO error.
pub async fn connect(mut tcp: TcpStream, tls: &ServerTls, addr: &str) -> Result<Stream, TlsError> {
    let Some(config) = tls.config() else { return Ok(Stream::plain(tcp)) };
    let mut request = [0u8; 8];
    request[..4].copy_from_slice(&8u32.to_be_bytes());
    request[4..].copy_from_slice(&SSL_REQUEST.to_be_bytes());
    tcp.write_all(&request).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => {}
        b'N' if tls.mode == ServerMode::Prefer => return Ok(Stream::plain(tcp)),
        b'N' => return Err(TlsError::ServerRefused { addr: addr.to_owned(), mode: tls.mode.name() }),
        other => return Err(TlsError::BadAnswer(other)),
    }
    let name = server_name(addr, tls.mode)?;
    Stream::connect(&TlsConnector::from(config.clone()), name, tcp).await
}

/// The name the server's certificate must carry: its host, a DNS name or an IP address. Modes
/// that do not check the name accept any host.
fn server_name(addr: &str, mode: ServerMode) -> Result<ServerName<'static>, TlsError> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    match ServerName::try_from(host.to_owned()) {
        Ok(name) => Ok(name),
        Err(_) if mode != ServerMode::VerifyFull => Ok(ServerName::from(std::net::Ipv4Addr::UNSPECIFIED)),
        Err(_) => Err(TlsError::ServerName(host.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_come_from_the_host() {
        assert_eq!(server_name("db.example.com:5432", ServerMode::VerifyFull).unwrap().to_str(), "db.example.com");
        assert_eq!(server_name("127.0.0.1:5432", ServerMode::VerifyFull).unwrap().to_str(), "127.0.0.1");
        assert_eq!(server_name("[::1]:5432", ServerMode::VerifyFull).unwrap().to_str(), "::1");
        assert!(server_name("bad name:5432", ServerMode::VerifyFull).is_err());
        assert!(server_name("bad name:5432", ServerMode::Require).is_ok());
    }

    #[tokio::test]
    async fn prefer_falls_back_and_require_fails_on_n() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut req = [0u8; 8];
                s.read_exact(&mut req).await.unwrap();
                assert_eq!(&req[4..], &SSL_REQUEST.to_be_bytes());
                s.write_all(b"N").await.unwrap();
            }
        });
        let mut config = crate::config::Config::default();
        config.tls.server_mode = "prefer".into();
        let prefer = super::super::TlsSettings::from_config(&config).unwrap().server;
        let tcp = TcpStream::connect(addr).await.unwrap();
        assert!(!connect(tcp, &prefer, &addr.to_string()).await.unwrap().is_tls());
        config.tls.server_mode = "require".into();
        let require = super::super::TlsSettings::from_config(&config).unwrap().server;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let e = connect(tcp, &require, &addr.to_string()).await.err().unwrap();
        assert!(matches!(e, TlsError::ServerRefused { .. }), "{e}");
        server.await.unwrap();
    }
}
