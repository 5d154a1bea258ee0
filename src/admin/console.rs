//! One admin connection after authentication: the rest of the login, then a loop that answers
//! simple Query messages until Terminate. Extended-protocol messages are refused with one error
//! per batch (up to its Sync), as the server does after an error.

use super::parse::{self, Command};
use super::result::{empty_query, Reply};
use super::{control, show, AdminError};
use crate::app::Shared;
use crate::protocol::backend::{self, Severity, TransactionStatus};
use crate::protocol::frame::peek_header;
use crate::protocol::{read_cstr, ProtocolError};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use crate::tls::Stream;
use tokio_util::sync::CancellationToken;

/// Serves the admin console to a client that has authenticated as `user` (nothing has been
/// sent after the authentication exchange). Refuses users not in `server.admin_users` with
/// FATAL 42501; otherwise sends AuthenticationOk, ParameterStatus, BackendKeyData and
/// ReadyForQuery, then answers commands until the client terminates or sluice shuts down.
/// `buf` holds any bytes already read past the login.
///
/// Everything the client must be told, including a FATAL error, has been sent when this
/// returns; the caller only closes the socket.
///
/// # Errors
/// [`AdminError`] for why the console closed: the user is not an admin, the client broke the
/// protocol or went away, or sluice is shutting down.
pub async fn serve(stream: &mut Stream, buf: &mut BytesMut, ctx: Arc<Shared>, user: &str) -> Result<(), AdminError> {
    let result = run(stream, buf, &ctx, user).await;
    if let Err(e) = &result {
        if !matches!(e, AdminError::Io(_) | AdminError::ClientGone) {
            let mut out = BytesMut::new();
            backend::error_response(&mut out, Severity::Fatal, e.sqlstate(), &e.to_string());
            let _ = stream.send(&out).await;
        }
    }
    result
}

async fn run(stream: &mut Stream, buf: &mut BytesMut, ctx: &Arc<Shared>, user: &str) -> Result<(), AdminError> {
    let config = ctx.config.load_full();
    if !config.server.admin_users.iter().any(|u| u == user) {
        return Err(AdminError::NotAdmin(user.to_owned()));
    }
    let max = config.server.max_message_size.0.min(u32::MAX as u64 >> 1) as u32;
    drop(config);
    // A key like any client's; a cancel for it finds no query to cancel.
    let (pid, secret, _registration) = ctx.cancels.register();
    let mut out = BytesMut::with_capacity(1024);
    welcome(&mut out, pid, secret);
    stream.send(&out).await?;
    let mut failed_batch = false;
    loop {
        let (tag, body) = next_message(stream, buf, max, &ctx.shutdown).await?;
        out.clear();
        match tag {
            b'Q' => {
                failed_batch = false;
                let text = read_cstr(&body, &mut 0, "Query")?.to_owned();
                answer(&text, ctx, &mut out).await?;
                backend::ready_for_query(&mut out, TransactionStatus::Idle);
            }
            b'X' => return Ok(()),
            b'S' => {
                failed_batch = false;
                backend::ready_for_query(&mut out, TransactionStatus::Idle);
            }
            b'F' => {
                error(&mut out, &AdminError::ExtendedProtocol);
                backend::ready_for_query(&mut out, TransactionStatus::Idle);
            }
            b'P' | b'B' | b'D' | b'E' | b'C' => {
                if !failed_batch {
                    failed_batch = true;
                    error(&mut out, &AdminError::ExtendedProtocol);
                }
            }
            // Flush, and COPY data outside a COPY: nothing to answer.
            b'H' | b'd' | b'c' | b'f' => {}
            other => return Err(ProtocolError::Unexpected(other).into()),
        }
        if !out.is_empty() {
            stream.send(&out).await?;
        }
        if ctx.shutdown.is_cancelled() {
            // This console asked for the shutdown (or raced it): its answer is the last word.
            return Ok(());
        }
    }
}

/// The login's closing messages: AuthenticationOk, the parameters clients such as psql read,
/// BackendKeyData and ReadyForQuery.
fn welcome(out: &mut BytesMut, pid: u32, secret: u32) {
    backend::auth_ok(out);
    let version = format!("{}/sluice", env!("CARGO_PKG_VERSION"));
    for (k, v) in [
        ("server_version", version.as_str()),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", ""),
    ] {
        backend::parameter_status(out, k, v);
    }
    backend::backend_key_data(out, pid, secret);
    backend::ready_for_query(out, TransactionStatus::Idle);
}

fn error(out: &mut BytesMut, e: &AdminError) {
    backend::error_response(out, Severity::Error, e.sqlstate(), &e.to_string());
}

/// Runs the commands of one query string in order; the first that fails is reported and the
/// rest are skipped, as the server does. Only a fatal error is returned.
async fn answer(text: &str, ctx: &Arc<Shared>, out: &mut BytesMut) -> Result<(), AdminError> {
    let commands = parse::split(text);
    if commands.is_empty() {
        empty_query(out);
        return Ok(());
    }
    for command in commands {
        match execute(command, ctx).await {
            Ok(reply) => reply.encode(out),
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, command, "admin command failed");
                error(out, &e);
                break;
            }
        }
    }
    Ok(())
}

async fn execute(text: &str, ctx: &Arc<Shared>) -> Result<Reply, AdminError> {
    match parse::parse(text)? {
        Command::Show(what) => show::show(what, ctx).map(Reply::Rows),
        Command::Reload => control::reload(ctx),
        Command::Shutdown => Ok(control::shutdown(ctx)),
        Command::Set { key, value } => control::set(ctx, &key, &value),
        Command::CacheClear => Ok(control::cache_clear(ctx)),
        Command::Pause(db) => control::pause(ctx, db.as_deref()).await,
        Command::Resume(db) => control::resume(ctx, db.as_deref()),
        Command::Kill(db) => control::kill(ctx, &db),
    }
}

/// Waits for the client's next whole message and takes it out of `buf`: (tag, body).
///
/// # Cancel safety
/// Cancel safe: bytes read stay in `buf`.
async fn next_message(
    stream: &mut Stream,
    buf: &mut BytesMut,
    max: u32,
    shutdown: &CancellationToken,
) -> Result<(u8, Bytes), AdminError> {
    loop {
        if let Some(h) = peek_header(buf, max)? {
            if buf.len() >= h.total() {
                let msg = buf.split_to(h.total()).freeze();
                return Ok((h.tag, msg.slice(5..)));
            }
            // Room as the bytes arrive: a length field alone does not reserve memory.
            buf.reserve((h.total() - buf.len()).min(1 << 20));
        } else {
            buf.reserve(512);
        }
        let read = tokio::select! {
            r = stream.read_buf(buf) => r?,
            _ = shutdown.cancelled() => return Err(AdminError::Shutdown),
        };
        if read == 0 {
            return Err(AdminError::ClientGone);
        }
    }
}
