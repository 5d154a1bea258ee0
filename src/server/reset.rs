//! Bringing a server connection back to a clean state after its client left abruptly: end a
//! COPY, fail and Sync unsynced extended messages (so their implicit transaction rolls back),
//! cancel and drain a running query, roll back an open transaction, and DISCARD ALL after a
//! session-mode client.

use super::{send_cancel, ServerConnection};
use bytes::{BufMut, BytesMut};

/// Resets `conn`; `false` means it must be closed.
pub(super) async fn reset(conn: &mut ServerConnection) -> bool {
    if conn.broken || conn.mid_client_message {
        return false;
    }
    match steps(conn).await {
        Ok(()) => conn.tracker.is_idle() && !conn.broken,
        Err(e) => {
            tracing::debug!(error = %e, "server connection could not be reset; closing it");
            false
        }
    }
}

async fn steps(conn: &mut ServerConnection) -> Result<(), super::ServerError> {
    // A query of the client's may still be running: stop it, and wait until the server has the
    // cancel, so that it cannot land on whatever runs here next. A COPY is ended by CopyFail.
    if conn.tracker.pending() > 0 && !conn.tracker.in_copy_in() {
        let _ = send_cancel(conn.addr(), conn.key()).await;
    }
    let mut out = BytesMut::new();
    if conn.tracker.in_copy_in() {
        let reason = b"client disconnected\0";
        out.put_u8(b'f');
        out.put_u32((reason.len() + 4) as u32);
        out.put_slice(reason);
        conn.tracker.client_message(b'f');
    }
    if conn.tracker.unsynced() {
        if !conn.tracker.in_copy_in() {
            // Work the client executed but never synced must not be committed by our Sync, as
            // Postgres would not commit it when the client goes away: fail the implicit
            // transaction first with a Parse that cannot succeed.
            let bad = b"\0sluice: client left before Sync\0\0\0";
            out.put_u8(b'P');
            out.put_u32((bad.len() + 4) as u32);
            out.put_slice(bad);
            conn.tracker.client_message(b'P');
        }
        out.put_slice(&[b'S', 0, 0, 0, 4]);
        conn.tracker.client_message(b'S');
    }
    if !out.is_empty() {
        conn.write(&out).await?;
    }
    while conn.tracker.pending() > 0 {
        conn.drain_to_ready().await?;
    }
    if !conn.tracker.is_idle() {
        conn.run_internal("ROLLBACK").await?;
    }
    if !conn.responses.is_empty() {
        // The client left mid-exchange: which statements got prepared is no longer certain.
        conn.responses.clear();
        conn.statements.clear();
        conn.run_internal("DEALLOCATE ALL").await?;
    }
    if conn.needs_discard {
        conn.run_internal("DISCARD ALL").await?;
        conn.needs_discard = false;
        conn.params = conn.baseline.clone();
        conn.statements.clear();
    }
    Ok(())
}
