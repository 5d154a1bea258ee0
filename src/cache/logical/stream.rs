//! The IO task of one server database: log in with `replication=database`, make sure the
//! publication exists, create a temporary slot, stream pgoutput, invalidate at each commit and
//! confirm positions; on any failure, keep the database's cache suspended and start over with
//! backoff.

use super::decode::{format_lsn, pg_now, standby_status_update, DecodeError, Lsn};
use super::framer::Framer;
use super::tracker::{Event, Invalidation, StreamTracker};
use crate::cache::CacheHandle;
use crate::protocol::{backend, ProtocolError};
use crate::server::{connect_replication, ServerConnection, ServerError, ServerTarget};
use bytes::{BufMut, BytesMut};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

/// Errors of a replication connection; each ends it, and the task starts over.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Connecting, logging in or a command failed.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The walsender sent bytes that are not the protocol.
    #[error("replication protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// A replication message could not be decoded.
    #[error("replication stream: {0}")]
    Decode(#[from] DecodeError),
    /// Reading or writing the socket failed.
    #[error("replication connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// A step took longer than the connect timeout.
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// The server ended the stream or closed the connection.
    #[error("the server ended the replication stream")]
    Ended,
    /// Creating the publication `FOR ALL TABLES` would make UPDATE and DELETE fail on these
    /// tables, which have no replica identity (no primary key): sluice does not create it.
    #[error(
        "not creating publication \"{publication}\" FOR ALL TABLES: UPDATE and DELETE would then fail on \
         tables without a replica identity ({tables}); give them a primary key (or REPLICA IDENTITY FULL), \
         or create the publication yourself"
    )]
    NoReplicaIdentity {
        /// The publication.
        publication: String,
        /// Some of the tables.
        tables: String,
    },
    /// A message that has no place at this point.
    #[error("unexpected message {:?} on the replication connection", char::from(*.0))]
    Unexpected(u8),
}

/// What one stream follows and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamTarget {
    /// The generations key of the server database (`primary/dbname`).
    pub key: String,
    /// Login: the primary, the database, the role (needs REPLICATION).
    pub server: ServerTarget,
    /// Publication streamed (created `FOR ALL TABLES` if missing).
    pub publication: String,
    /// Temporary slot name.
    pub slot: String,
    /// How often the position is confirmed.
    pub status_interval: Duration,
    /// Bound on connecting and on each setup command.
    pub connect_timeout: Duration,
}

/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// First wait after a failure.
const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// Follows `target` until `stop`: the database's cache is suspended whenever the stream is not
/// streaming (it must already be when this is called), and resumed once it is.
pub async fn run(target: StreamTarget, cache: Arc<CacheHandle>, tls: super::Tls, stop: CancellationToken) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let mut streaming_since = None;
        let result = tokio::select! {
            r = session(&target, &cache, &tls, &mut streaming_since) => r,
            _ = stop.cancelled() => return,
        };
        if stop.is_cancelled() {
            return;
        }
        let Err(e) = result else { return };
        cache.suspend(&target.key);
        cache.invalidate_all(&target.key).await;
        if let Some(since) = streaming_since {
            tracing::warn!(
                database = %target.key, slot = %target.slot, error = %e,
                "logical replication stream lost: changes may have been missed, so the cache of this \
                 database is flushed and bypassed until the stream is back"
            );
            if Instant::now().duration_since(since) > MAX_BACKOFF {
                backoff = MIN_BACKOFF;
            }
        } else {
            tracing::warn!(
                database = %target.key, slot = %target.slot, error = %e, retry_in = ?backoff,
                "cannot start the logical replication stream; the cache of this database is bypassed meanwhile"
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection: setup, then streaming until an error. `streaming_since` is set once the
/// cache was resumed.
async fn session(
    target: &StreamTarget,
    cache: &CacheHandle,
    tls: &super::Tls,
    streaming_since: &mut Option<Instant>,
) -> Result<(), StreamError> {
    let limit = target.connect_timeout;
    let tls = tls.load_full();
    let connect = async { Ok(connect_replication(&target.server, Some(&tls.server)).await?) };
    let mut conn = timed(limit, "connecting for replication", connect).await?;
    timed(limit, "checking the publication", ensure_publication(&mut conn, &target.publication)).await?;
    let create = format!("CREATE_REPLICATION_SLOT \"{}\" TEMPORARY LOGICAL pgoutput NOEXPORT_SNAPSHOT", target.slot);
    timed(limit, "creating the slot", async { Ok(conn.run_internal(&create).await?) }).await?;
    let start = format!(
        "START_REPLICATION SLOT \"{}\" LOGICAL 0/0 (proto_version '1', publication_names '\"{}\"')",
        target.slot, target.publication
    );
    let mut out = BytesMut::new();
    query(&mut out, &start);
    conn.write(&out).await?;
    timed(limit, "starting replication", wait_copy_both(&mut conn)).await?;
    // Every commit from here on is streamed; what committed before is dropped by resuming.
    cache.resume(&target.key).await;
    *streaming_since = Some(Instant::now());
    tracing::info!(database = %target.key, slot = %target.slot, publication = %target.publication, "logical replication stream started");
    stream(&mut conn, target, cache).await
}

async fn timed<T>(
    limit: Duration,
    what: &'static str,
    f: impl std::future::Future<Output = Result<T, StreamError>>,
) -> Result<T, StreamError> {
    tokio::time::timeout(limit, f).await.map_err(|_| StreamError::Timeout(what))?
}

/// Up to five tables a publication `FOR ALL TABLES` would include whose UPDATEs and DELETEs it
/// would make fail (no replica identity), or NULL.
const WITHOUT_IDENTITY: &str = "SELECT string_agg(name, ', ') FROM (\
     SELECT format('%I.%I', n.nspname, c.relname) AS name FROM pg_catalog.pg_class c \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind = 'r' AND c.relpersistence = 'p' \
     AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%' \
     AND (c.relreplident = 'n' \
       OR (c.relreplident = 'd' AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)) \
       OR (c.relreplident = 'i' AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisreplident))) \
     ORDER BY 1 LIMIT 5) s";

/// Creates the publication `FOR ALL TABLES` unless one of that name exists (used as it is).
async fn ensure_publication(conn: &mut ServerConnection, name: &str) -> Result<(), StreamError> {
    let exists = conn
        .run_internal_scalar(&format!("SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = '{name}'"))
        .await?;
    if exists.is_some() {
        return Ok(());
    }
    if let Some(tables) = conn.run_internal_scalar(WITHOUT_IDENTITY).await? {
        return Err(StreamError::NoReplicaIdentity { publication: name.to_owned(), tables });
    }
    match conn.run_internal(&format!("CREATE PUBLICATION \"{name}\" FOR ALL TABLES")).await {
        Ok(()) => {
            tracing::info!(publication = name, "created publication FOR ALL TABLES");
            Ok(())
        }
        // Another sluice created it meanwhile.
        Err(ServerError::Refused { code, .. }) if code == "42710" => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn query(out: &mut BytesMut, sql: &str) {
    out.put_u8(b'Q');
    out.put_u32((sql.len() + 5) as u32);
    out.put_slice(sql.as_bytes());
    out.put_u8(0);
}

async fn wait_copy_both(conn: &mut ServerConnection) -> Result<(), StreamError> {
    loop {
        let (tag, body) = conn.read_whole_message().await?;
        match tag {
            b'W' => return Ok(()),
            b'E' => {
                let (severity, code, message) = backend::parse_error_fields(&body);
                return Err(ServerError::Refused { severity, code, message }.into());
            }
            b'N' | b'S' => {}
            other => return Err(StreamError::Unexpected(other)),
        }
    }
}

/// Reads the stream, invalidating at each commit and confirming positions, until an error.
async fn stream(conn: &mut ServerConnection, target: &StreamTarget, cache: &CacheHandle) -> Result<(), StreamError> {
    let mut framer = Framer::new(1 << 20).with_leftover(&std::mem::take(&mut conn.buf));
    let mut tracker = StreamTracker::new();
    let mut tick = tokio::time::interval(target.status_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut out = BytesMut::with_capacity(64);
    let mut confirmed: Lsn = 0;
    loop {
        let mut reply = false;
        while let Some(frame) = framer.next_frame()? {
            match frame.tag {
                b'd' => match tracker.copy_data(&frame.body, frame.cut)? {
                    Event::None => {}
                    Event::ReplyRequested => reply = true,
                    Event::Commit(Invalidation::All) => cache.invalidate_all(&target.key).await,
                    Event::Commit(Invalidation::Tables(tables)) if tables.is_empty() => {}
                    Event::Commit(Invalidation::Tables(tables)) => {
                        let names: Vec<&str> = tables.iter().map(|t| &**t).collect();
                        cache.invalidate_tables(&target.key, &names).await;
                    }
                },
                b'E' => {
                    let (severity, code, message) = backend::parse_error_fields(&frame.body);
                    return Err(ServerError::Refused { severity, code, message }.into());
                }
                b'c' => return Err(StreamError::Ended),
                b'N' | b'S' => {}
                other => return Err(StreamError::Unexpected(other)),
            }
        }
        if reply {
            confirm(conn, &mut out, tracker.flushed(), &mut confirmed).await?;
        }
        tokio::select! {
            read = conn.stream.read_buf(framer.buffer()) => {
                if read? == 0 {
                    return Err(StreamError::Ended);
                }
            }
            _ = tick.tick() => confirm(conn, &mut out, tracker.flushed(), &mut confirmed).await?,
        }
    }
}

/// Sends a standby status update confirming `flushed` (also a sign of life when it did not
/// move).
async fn confirm(conn: &mut ServerConnection, out: &mut BytesMut, flushed: Lsn, confirmed: &mut Lsn) -> Result<(), StreamError> {
    out.clear();
    standby_status_update(out, flushed, pg_now());
    conn.write(out).await?;
    if flushed != *confirmed {
        tracing::trace!(flushed = %format_lsn(flushed), "confirmed replication position");
        *confirmed = flushed;
    }
    Ok(())
}
