//! Client login: the startup-phase request, encryption negotiation (TLS as `tls.client_mode`
//! allows; GSSAPI encryption is declined), cancel requests, choosing the database,
//! authenticating the client (SCRAM-SHA-256-PLUS over TLS), and the welcome (AuthenticationOk,
//! ParameterStatus, BackendKeyData, ReadyForQuery).

use super::params::{self, ParamSet};
use super::SessionError;
use crate::auth::{self, scram::ClientKeys, scram::ScramServer, AuthError, Secret};
use crate::config::AuthMethod;
use crate::protocol::backend;
use crate::protocol::frame::peek_header;
use crate::protocol::frontend;
use crate::protocol::startup::{self, StartupParams, StartupRequest};
use crate::protocol::ProtocolError;
use bytes::{Buf, BytesMut};
use rand::RngCore;
use crate::tls::{ClientMode, ClientTls, Stream};
use tokio::io::AsyncReadExt;

/// What the client asked for in the startup phase.
pub enum Opening {
    /// A session, with its startup parameters.
    Session(StartupParams),
    /// A cancel request (the connection closes after it).
    Cancel {
        /// pid from BackendKeyData
        pid: u32,
        /// secret from BackendKeyData
        secret: u32,
    },
}

/// Reads startup-phase requests until a StartupMessage or CancelRequest. SSLRequest is
/// answered 'S' and the TLS handshake run when `tls` has an acceptor, 'N' otherwise;
/// GSSENCRequest is always answered 'N'.
///
/// # Errors
/// [`SessionError`] for bad input, a failed handshake, a plaintext StartupMessage under
/// `client_mode = "require"`, or a closed socket.
pub async fn read_opening(stream: &mut Stream, buf: &mut BytesMut, tls: &ClientTls) -> Result<Opening, SessionError> {
    loop {
        let Some((req, used)) = startup::decode(buf)? else {
            if stream.read_buf(buf).await? == 0 {
                return Err(SessionError::ClientGone);
            }
            continue;
        };
        buf.advance(used);
        match req {
            StartupRequest::Ssl | StartupRequest::GssEnc => {
                if !buf.is_empty() {
                    // Bytes sent before our answer can never be trusted as part of a handshake,
                    // nor taken as protected data after it.
                    return Err(ProtocolError::Malformed { what: "data after encryption request" }.into());
                }
                if stream.is_tls() {
                    return Err(ProtocolError::Malformed { what: "encryption request on an encrypted connection" }.into());
                }
                match tls.acceptor() {
                    Some(acceptor) if matches!(req, StartupRequest::Ssl) => {
                        stream.send(b"S").await?;
                        stream.accept(acceptor, tls.end_point().cloned()).await?;
                    }
                    _ => stream.send(b"N").await?,
                }
            }
            StartupRequest::Cancel { pid, secret } => return Ok(Opening::Cancel { pid, secret }),
            StartupRequest::Startup(_) if tls.mode == ClientMode::Require && !stream.is_tls() => {
                return Err(SessionError::TlsRequired("TLS required"));
            }
            StartupRequest::Startup(p) => return Ok(Opening::Session(p)),
        }
    }
}

/// Reads one tagged message during login (bounded by the startup size limit).
async fn read_message(stream: &mut Stream, buf: &mut BytesMut) -> Result<(u8, bytes::Bytes), SessionError> {
    loop {
        if let Some(h) = peek_header(buf, startup::MAX_STARTUP_LEN)? {
            if buf.len() >= h.total() {
                let mut m = buf.split_to(h.total());
                m.advance(5);
                return Ok((h.tag, m.freeze()));
            }
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(SessionError::ClientGone);
        }
    }
}

async fn expect_password(stream: &mut Stream, buf: &mut BytesMut) -> Result<bytes::Bytes, SessionError> {
    match read_message(stream, buf).await? {
        (b'p', body) => Ok(body),
        (tag, _) => Err(ProtocolError::Unexpected(tag).into()),
    }
}

/// Authenticates the client with the configured method. When the client proved itself with
/// SCRAM against stored SCRAM keys (no password stored), returns the keys its proof revealed,
/// with which sluice can log in to the server in its name.
///
/// # Errors
/// [`SessionError::Auth`] when the password is wrong or the user unknown.
pub async fn authenticate(
    stream: &mut Stream,
    buf: &mut BytesMut,
    method: AuthMethod,
    user: &str,
    secret: Option<&Secret>,
) -> Result<Option<ClientKeys>, SessionError> {
    let failed = || SessionError::Auth(AuthError::Failed(user.to_owned()));
    let mut out = BytesMut::new();
    match method {
        AuthMethod::Trust => return Ok(None),
        AuthMethod::Password if !stream.is_tls() => {
            return Err(SessionError::TlsRequired("cleartext password authentication requires TLS"));
        }
        AuthMethod::Password => {
            backend::auth_cleartext(&mut out);
            stream.send(&out).await?;
            let body = expect_password(stream, buf).await?;
            let answer = frontend::parse_password(&body)?;
            auth::check_cleartext(user, secret.ok_or_else(failed)?, answer)?;
        }
        AuthMethod::Md5 if !matches!(secret, Some(Secret::Scram(_))) => {
            let mut salt = [0u8; 4];
            rand::thread_rng().fill_bytes(&mut salt);
            backend::auth_md5(&mut out, salt);
            stream.send(&out).await?;
            let body = expect_password(stream, buf).await?;
            let answer = frontend::parse_password(&body)?;
            auth::check_md5(user, secret.ok_or_else(failed)?, salt, answer)?;
        }
        // SCRAM, and MD5 for a user whose only secret is SCRAM (as Postgres does).
        AuthMethod::Md5 | AuthMethod::ScramSha256 => {
            // An unknown user, or one whose secret cannot answer SCRAM (MD5), goes through the
            // same exchange with made-up keys and fails like a wrong password: nothing tells
            // which users exist or how their secrets are stored.
            let usable = secret.and_then(|s| s.scram());
            if secret.is_some() && usable.is_none() {
                tracing::debug!(user, "the user's stored secret cannot be used with SCRAM");
            }
            let keys = usable.cloned().unwrap_or_else(|| auth::scram::ScramSecret::decoy(user));
            // On TLS, SCRAM-SHA-256-PLUS binds the login to this connection's certificate.
            let binding = stream.end_point();
            backend::auth_sasl(&mut out, binding.is_some());
            stream.send(&out).await?;
            let body = expect_password(stream, buf).await?;
            let initial = frontend::parse_sasl_initial(&body)?;
            let (server, first) = ScramServer::start(user, keys, initial.mechanism, initial.data, binding.as_deref())?;
            out.clear();
            backend::auth_sasl_continue(&mut out, first.as_bytes());
            stream.send(&out).await?;
            let body = expect_password(stream, buf).await?;
            let (fin, keys) = server.finish_keys(&body)?;
            if usable.is_none() {
                return Err(failed());
            }
            out.clear();
            backend::auth_sasl_final(&mut out, fin.as_bytes());
            stream.send(&out).await?;
            return Ok(matches!(secret, Some(Secret::Scram(_))).then_some(keys));
        }
    }
    Ok(None)
}

/// The session settings a client asked for at startup: its parameters plus `-c key=value`
/// pairs from `options`.
///
/// # Errors
/// [`SessionError::Startup`] for a parameter name that cannot be a setting.
pub fn requested_params(p: &StartupParams) -> Result<Vec<(String, String)>, SessionError> {
    let mut out = Vec::new();
    for (k, v) in &p.params {
        if k == "options" {
            out.extend(parse_options(v)?);
        } else if ParamSet::is_setting(k) {
            out.push((k.clone(), v.clone()));
        }
    }
    for (k, _) in &out {
        if !params::valid_name(k) {
            return Err(SessionError::Startup(format!("invalid startup parameter name \"{k}\"")));
        }
    }
    Ok(out)
}

/// Splits libpq's `options` ("-c a=b --c=d") into pairs; backslash escapes a space.
fn parse_options(text: &str) -> Result<Vec<(String, String)>, SessionError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let pair = if w == "-c" {
            it.next().ok_or_else(|| SessionError::Startup("options: -c without a setting".into()))?
        } else if let Some(rest) = w.strip_prefix("--").or_else(|| w.strip_prefix("-c")) {
            rest.to_owned()
        } else {
            return Err(SessionError::Startup(format!("options: unsupported switch \"{w}\"")));
        };
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| SessionError::Startup(format!("options: \"{pair}\" is not name=value")))?;
        out.push((k.replace('-', "_"), v.to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_become_settings() {
        let v = parse_options("-c search_path=a,b --statement-timeout=5s -cwork_mem=64MB").unwrap();
        assert_eq!(
            v,
            vec![
                ("search_path".into(), "a,b".into()),
                ("statement_timeout".into(), "5s".into()),
                ("work_mem".into(), "64MB".into())
            ]
        );
        assert_eq!(parse_options("-c application_name=a\\ b").unwrap()[0].1, "a b");
        assert!(parse_options("-x").is_err());
        assert!(parse_options("-c").is_err());
    }

    #[test]
    fn requested_params_skip_protocol_keys_and_refuse_bad_names() {
        let p = StartupParams {
            params: vec![("application_name".into(), "x".into()), ("replication".into(), "false".into())],
            user: "u".into(),
            database: "d".into(),
            minor_version: 0,
        };
        assert_eq!(requested_params(&p).unwrap(), vec![("application_name".into(), "x".into())]);
        let bad = StartupParams { params: vec![("a;b".into(), "x".into())], ..p.clone() };
        assert!(requested_params(&bad).is_err());
    }
}
