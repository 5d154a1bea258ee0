//! The transaction state of one server connection, driven by the message tags that cross it.
//! Pure: no IO, no time. The relay feeds it every message header in both directions; it says
//! when the connection is back at a transaction boundary and may be returned to the pool.

use crate::protocol::backend::TransactionStatus;

/// What the relay should do with a client message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAction {
    /// Send it to the server.
    Forward,
    /// Terminate: end the session without sending it to the server (the server stays pooled).
    Terminate,
}

/// Tracks in-flight requests and the transaction status of a server connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionTracker {
    /// ReadyForQuery messages still expected (one per Query, Sync and FunctionCall sent).
    pending: u32,
    /// The status of the last ReadyForQuery.
    status: TransactionStatus,
    /// Extended-protocol messages sent since the last Sync.
    unsynced: bool,
    /// The server asked for COPY data (CopyInResponse / CopyBothResponse) and has not finished.
    copy_in: bool,
    /// The server is sending COPY data.
    copy_out: bool,
}

impl Default for TransactionTracker {
    fn default() -> Self {
        Self { pending: 0, status: TransactionStatus::Idle, unsynced: false, copy_in: false, copy_out: false }
    }
}

impl TransactionTracker {
    /// Notes a message from the client, by tag.
    pub fn client_message(&mut self, tag: u8) -> ClientAction {
        match tag {
            b'Q' | b'F' => self.pending += 1,
            b'S' => {
                self.pending += 1;
                self.unsynced = false;
            }
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => self.unsynced = true,
            b'X' => return ClientAction::Terminate,
            _ => {}
        }
        ClientAction::Forward
    }

    /// Notes a message from the server, by tag; `body` is needed only for ReadyForQuery.
    /// Returns `true` when this message brought the connection back to an idle boundary.
    pub fn server_message(&mut self, tag: u8, body: &[u8]) -> bool {
        match tag {
            b'Z' => {
                self.pending = self.pending.saturating_sub(1);
                if let Some(s) = body.first().copied().and_then(TransactionStatus::from_byte) {
                    self.status = s;
                }
                self.copy_in = false;
                self.copy_out = false;
                return self.is_idle();
            }
            b'G' | b'W' => self.copy_in = true,
            b'H' => self.copy_out = true,
            b'c' => self.copy_out = false,
            b'C' | b'E' if self.copy_in => self.copy_in = false,
            _ => {}
        }
        false
    }

    /// Nothing in flight and no transaction open: the connection may serve another client.
    pub fn is_idle(&self) -> bool {
        self.pending == 0 && self.status == TransactionStatus::Idle && !self.unsynced && !self.copy_in
    }

    /// Nothing in flight but a transaction (or failed transaction) is open: the client owns the
    /// connection until it ends the transaction.
    pub fn is_idle_in_transaction(&self) -> bool {
        self.pending == 0 && !self.unsynced && !self.copy_in && self.status != TransactionStatus::Idle
    }

    /// ReadyForQuery messages still expected.
    pub fn pending(&self) -> u32 {
        self.pending
    }

    /// Status of the last ReadyForQuery.
    pub fn status(&self) -> TransactionStatus {
        self.status
    }

    /// Extended-protocol messages were sent without a Sync.
    pub fn unsynced(&self) -> bool {
        self.unsynced
    }

    /// The server is waiting for COPY data.
    pub fn in_copy_in(&self) -> bool {
        self.copy_in
    }

    /// The server is streaming COPY data out.
    pub fn in_copy_out(&self) -> bool {
        self.copy_out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_client(t: &mut TransactionTracker, tags: &[u8]) {
        for &tag in tags {
            t.client_message(tag);
        }
    }

    #[test]
    fn simple_query_outside_a_transaction_returns_to_idle() {
        let mut t = TransactionTracker::default();
        feed_client(&mut t, b"Q");
        assert!(!t.is_idle());
        assert!(!t.server_message(b'T', &[]));
        assert!(!t.server_message(b'D', &[]));
        assert!(!t.server_message(b'C', &[]));
        assert!(t.server_message(b'Z', b"I"));
    }

    #[test]
    fn begin_holds_the_connection_until_commit() {
        let mut t = TransactionTracker::default();
        feed_client(&mut t, b"Q");
        assert!(!t.server_message(b'Z', b"T"));
        assert!(t.is_idle_in_transaction());
        feed_client(&mut t, b"Q");
        assert!(!t.server_message(b'Z', b"E"), "failed transaction still open");
        feed_client(&mut t, b"Q");
        assert!(t.server_message(b'Z', b"I"));
    }

    #[test]
    fn pipelined_queries_wait_for_the_last_ready_for_query() {
        let mut t = TransactionTracker::default();
        feed_client(&mut t, b"QQQ");
        assert!(!t.server_message(b'Z', b"I"));
        assert!(!t.server_message(b'Z', b"I"));
        assert!(t.server_message(b'Z', b"I"));
    }

    #[test]
    fn extended_protocol_without_sync_is_not_idle() {
        let mut t = TransactionTracker::default();
        feed_client(&mut t, b"PBDEH");
        assert!(!t.is_idle());
        assert!(t.unsynced());
        feed_client(&mut t, b"S");
        assert!(!t.unsynced());
        assert!(t.server_message(b'Z', b"I"));
    }

    #[test]
    fn several_syncs_in_flight_each_need_their_ready_for_query() {
        let mut t = TransactionTracker::default();
        feed_client(&mut t, b"PBESPBES");
        assert_eq!(t.pending(), 2);
        assert!(!t.server_message(b'E', &[]), "error skips to the next Sync");
        assert!(!t.server_message(b'Z', b"I"));
        assert!(t.server_message(b'Z', b"I"));
    }

    #[test]
    fn copy_in_is_open_until_the_server_completes_it() {
        let mut t = TransactionTracker::default();
        feed_client(&mut t, b"Q");
        t.server_message(b'G', &[]);
        assert!(t.in_copy_in());
        feed_client(&mut t, b"ddc");
        t.server_message(b'C', &[]);
        assert!(!t.in_copy_in());
        assert!(t.server_message(b'Z', b"I"));
    }

    #[test]
    fn terminate_is_not_forwarded() {
        let mut t = TransactionTracker::default();
        assert_eq!(t.client_message(b'X'), ClientAction::Terminate);
        assert!(t.is_idle());
    }

    #[test]
    fn unexpected_ready_for_query_does_not_underflow() {
        let mut t = TransactionTracker::default();
        assert!(t.server_message(b'Z', b"I"));
        assert_eq!(t.pending(), 0);
    }
}
