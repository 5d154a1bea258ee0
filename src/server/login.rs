//! Opening a TCP connection to a server and logging in: StartupMessage, then whatever
//! authentication the server asks for, then ParameterStatus and BackendKeyData up to the first
//! ReadyForQuery.

use super::{BackendKey, ServerConnection, ServerError, ServerTarget, Welcome};
use crate::protocol::frame::Scanner;
use crate::protocol::backend;
use crate::session::params::ParamSet;
use crate::session::prepared::{ResponseQueue, ServerStatements};
use crate::session::state::TransactionTracker;
use bytes::{Buf, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use crate::auth::scram::ScramClient;
use tokio::net::TcpStream;

async fn open(addr: &str) -> Result<TcpStream, ServerError> {
    let err = |source| ServerError::Connect { addr: addr.to_owned(), source };
    let stream = TcpStream::connect(addr).await.map_err(err)?;
    stream.set_nodelay(true).map_err(err)?;
    let sock = socket2::SockRef::from(&stream);
    let keepalive = socket2::TcpKeepalive::new().with_time(std::time::Duration::from_secs(60));
    let _ = sock.set_tcp_keepalive(&keepalive);
    Ok(stream)
}

/// Connects, negotiates TLS as `tls` asks (plaintext without it) and logs in.
pub(super) async fn connect(
    target: &ServerTarget,
    tls: Option<&crate::tls::ServerTls>,
) -> Result<(ServerConnection, Welcome), ServerError> {
    connect_with(target, tls, &[]).await
}

/// Like [`connect`], with `extra` startup parameters (e.g. `replication=database`).
pub(super) async fn connect_with(
    target: &ServerTarget,
    tls: Option<&crate::tls::ServerTls>,
    extra: &[(&str, &str)],
) -> Result<(ServerConnection, Welcome), ServerError> {
    let tcp = open(&target.addr).await?;
    let stream = match tls {
        Some(tls) => crate::tls::connect(tcp, tls, &target.addr).await?,
        None => crate::tls::Stream::plain(tcp),
    };
    let addr = stream.peer_addr()?;
    let mut conn = ServerConnection {
        stream,
        buf: BytesMut::with_capacity(8192),
        scanner: Scanner::new(u32::MAX >> 1),
        tracker: TransactionTracker::default(),
        params: ParamSet::default(),
        mid_client_message: false,
        broken: false,
        needs_discard: false,
        baseline: ParamSet::default(),
        statements: ServerStatements::new(target.max_prepared_statements),
        responses: ResponseQueue::default(),
        key: BackendKey::default(),
        addr,
        entry: None,
    };
    let mut out = BytesMut::new();
    let params = [("user", target.user.as_str()), ("database", target.database.as_str())];
    frontend::startup_message(params.iter().chain(extra).copied(), &mut out)?;
    conn.write(&out).await?;
    authenticate(&mut conn, target).await?;
    let mut welcome = Welcome::default();
    loop {
        let (tag, body) = conn.read_whole_message().await?;
        match tag {
            b'S' => {
                if let Some((k, v)) = backend::parse_parameter_status(&body) {
                    if ParamSet::is_tracked(k) {
                        welcome.params.set(k, v);
                    }
                    welcome.reported.push((k.to_owned(), v.to_owned()));
                }
            }
            b'K' if body.len() == 8 => {
                let mut b = &body[..];
                conn.key = BackendKey { pid: b.get_u32(), secret: b.get_u32() };
            }
            b'Z' => break,
            b'E' => return Err(refused(&body)),
            b'N' => {}
            other => return Err(crate::protocol::ProtocolError::Unexpected(other).into()),
        }
    }
    conn.params = welcome.params.clone();
    conn.baseline = welcome.params.clone();
    Ok((conn, welcome))
}

fn refused(body: &[u8]) -> ServerError {
    let (severity, code, message) = backend::parse_error_fields(body);
    ServerError::Refused { severity, code, message }
}

fn password<'a>(target: &'a ServerTarget) -> Result<&'a str, ServerError> {
    target.password.as_deref().ok_or_else(|| ServerError::NoPassword(target.user.clone()))
}

/// sluice's side of a SCRAM exchange with a server: from a password, or from a client's keys.
enum Scram {
    Password(ScramSha256),
    Keys(ScramClient),
}

fn scram_error(e: impl std::fmt::Display) -> ServerError {
    ServerError::Auth(format!("SCRAM: {e}"))
}

async fn authenticate(conn: &mut ServerConnection, target: &ServerTarget) -> Result<(), ServerError> {
    let mut scram: Option<Scram> = None;
    loop {
        let (tag, body) = conn.read_whole_message().await?;
        match tag {
            b'E' => return Err(refused(&body)),
            b'v' | b'N' => continue,
            b'R' => {}
            other => return Err(crate::protocol::ProtocolError::Unexpected(other).into()),
        }
        if body.len() < 4 {
            return Err(crate::protocol::ProtocolError::Malformed { what: "Authentication" }.into());
        }
        let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        let data = &body[4..];
        let mut out = BytesMut::new();
        match code {
            0 => return Ok(()),
            3 => frontend::password_message(password(target)?.as_bytes(), &mut out)?,
            5 => {
                let salt: [u8; 4] = data
                    .try_into()
                    .map_err(|_| crate::protocol::ProtocolError::Malformed { what: "AuthenticationMD5Password" })?;
                let hash = match (&target.password, &target.md5) {
                    (None, Some(stored)) => crate::auth::md5_answer(stored, salt),
                    _ => postgres_protocol::authentication::md5_hash(
                        target.user.as_bytes(),
                        password(target)?.as_bytes(),
                        salt,
                    ),
                };
                frontend::password_message(hash.as_bytes(), &mut out)?;
            }
            10 => {
                let offers_scram = data.split(|&b| b == 0).any(|m| m == SCRAM_SHA_256.as_bytes());
                if !offers_scram {
                    return Err(ServerError::Auth("server offers no SASL mechanism sluice supports".into()));
                }
                if let (None, Some(keys)) = (&target.password, &target.scram) {
                    let (s, first) = ScramClient::start(keys.clone());
                    frontend::sasl_initial_response(SCRAM_SHA_256, first.as_bytes(), &mut out)?;
                    scram = Some(Scram::Keys(s));
                } else {
                    let s = ScramSha256::new(password(target)?.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut out)?;
                    scram = Some(Scram::Password(s));
                }
            }
            11 => match scram.as_mut().ok_or_else(|| ServerError::Auth("unexpected SASLContinue".into()))? {
                Scram::Password(s) => {
                    s.update(data).map_err(scram_error)?;
                    frontend::sasl_response(s.message(), &mut out)?;
                }
                Scram::Keys(s) => {
                    let fin = s.update(data).map_err(scram_error)?;
                    frontend::sasl_response(fin.as_bytes(), &mut out)?;
                }
            },
            12 => {
                match scram.take().ok_or_else(|| ServerError::Auth("unexpected SASLFinal".into()))? {
                    Scram::Password(mut s) => s.finish(data).map_err(scram_error)?,
                    Scram::Keys(s) => s.finish(data).map_err(scram_error)?,
                }
                continue;
            }
            other => return Err(ServerError::Auth(format!("unsupported authentication request {other}"))),
        }
        conn.write(&out).await?;
    }
}
