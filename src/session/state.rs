//! The transaction state of one server connection, driven by the message tags that cross it.
//! Pure: no IO, no time. The relay feeds it every message header in both directions; it says
//! when the connection is back at a transaction boundary and may be returned to the pool.

use crate::protocol::backend::TransactionStatus;
use std::collections::VecDeque;

/// What the relay should do with a client message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAction {
    /// Send it to the server.
    Forward,
    /// Terminate: end the session without sending it to the server (the server stays pooled).
    Terminate,
    /// Send it, but the server ignores it (Sync or Flush during COPY FROM STDIN): no response.
    ForwardIgnored,
}

/// A CopyDone or CopyFail the client sent before the server started the copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EarlyCopyEnd {
    /// The ReadyForQuery (by sequence number) that ends the command the copy belongs to.
    segment: u64,
    /// Syncs sent between that command and the copy's end.
    syncs_before: u32,
}

/// Early copy ends remembered at most; a client sending more without a server copy is broken.
const MAX_EARLY_COPY_ENDS: usize = 16;

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
    /// ReadyForQuery messages asked for so far (sequence number of the latest).
    asked: u64,
    /// ReadyForQuery messages received so far.
    answered: u64,
    /// Syncs sent since the last Execute or Query (the server ignores them if that started a
    /// COPY FROM STDIN).
    syncs_since_start: u32,
    /// The server is in COPY FROM STDIN and the client has not sent CopyDone or CopyFail yet.
    client_copying: bool,
    /// Copies the client ended (CopyDone or CopyFail) before the server said it began one, each
    /// with the Syncs sent between its Execute and its end: some drivers send a whole COPY
    /// FROM STDIN without waiting for CopyInResponse.
    early_copy_ends: VecDeque<EarlyCopyEnd>,
    /// Syncs the server ignored when the latest COPY FROM STDIN began.
    ignored_at_copy_start: u32,
}

impl Default for TransactionTracker {
    fn default() -> Self {
        Self {
            pending: 0,
            status: TransactionStatus::Idle,
            unsynced: false,
            copy_in: false,
            copy_out: false,
            asked: 0,
            answered: 0,
            syncs_since_start: 0,
            client_copying: false,
            early_copy_ends: VecDeque::new(),
            ignored_at_copy_start: 0,
        }
    }
}

impl TransactionTracker {
    /// Notes a message from the client, by tag.
    pub fn client_message(&mut self, tag: u8) -> ClientAction {
        if self.client_copying {
            match tag {
                b'S' | b'H' => return ClientAction::ForwardIgnored,
                b'c' | b'f' => self.client_copying = false,
                _ => {}
            }
        } else if matches!(tag, b'c' | b'f') && self.pending_copy_end_possible() {
            // The copy's end ahead of its start: remember which Syncs the server will ignore.
            if self.early_copy_ends.len() == MAX_EARLY_COPY_ENDS {
                self.early_copy_ends.pop_front();
            }
            let segment = if self.unsynced { self.asked + 1 } else { self.asked };
            self.early_copy_ends.push_back(EarlyCopyEnd { segment, syncs_before: self.syncs_since_start });
            self.syncs_since_start = 0;
        }
        match tag {
            b'Q' => {
                // A simple query ends any unsynced extended-protocol work, as a Sync would.
                self.pending += 1;
                self.asked += 1;
                self.syncs_since_start = 0;
                self.unsynced = false;
            }
            b'F' => {
                self.pending += 1;
                self.asked += 1;
                self.syncs_since_start = 0;
            }
            b'S' => {
                self.pending += 1;
                self.asked += 1;
                self.syncs_since_start += 1;
                self.unsynced = false;
            }
            b'E' => {
                self.unsynced = true;
                self.syncs_since_start = 0;
            }
            b'P' | b'B' | b'D' | b'C' | b'H' => self.unsynced = true,
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
                self.answered += 1;
                if let Some(s) = body.first().copied().and_then(TransactionStatus::from_byte) {
                    self.status = s;
                }
                self.copy_in = false;
                self.copy_out = false;
                if self.pending == 0 {
                    // Every command is answered: an early copy end left over belonged to a
                    // COPY that failed before it began.
                    self.early_copy_ends.clear();
                }
                return self.is_idle();
            }
            b'G' | b'W' => {
                self.copy_in = true;
                // Syncs sent after the Execute that started the copy, and before the client
                // ended it, are ignored by the server.
                // The copy belongs to the ReadyForQuery segment the server is in now; early ends
                // of earlier segments were for copies that failed before they began.
                let segment = self.answered + 1;
                while self.early_copy_ends.front().is_some_and(|e| e.segment < segment) {
                    self.early_copy_ends.pop_front();
                }
                let early = self.early_copy_ends.front().filter(|e| e.segment == segment).copied();
                let ignored = match early {
                    Some(end) => {
                        self.early_copy_ends.pop_front();
                        end.syncs_before
                    }
                    None => {
                        self.client_copying = true;
                        std::mem::take(&mut self.syncs_since_start)
                    }
                };
                self.pending = self.pending.saturating_sub(ignored);
                self.asked -= u64::from(ignored).min(self.asked);
                self.unsynced |= ignored > 0 && self.client_copying;
                self.ignored_at_copy_start = ignored;
            }
            b'H' => self.copy_out = true,
            b'c' => self.copy_out = false,
            b'C' | b'E' if self.copy_in => self.copy_in = false,
            _ => {}
        }
        false
    }

    /// Whether a CopyDone/CopyFail from the client, now, can end a COPY the server has not
    /// started yet: a command is in flight.
    fn pending_copy_end_possible(&self) -> bool {
        self.pending > 0 || self.unsynced
    }

    /// Syncs the server ignored when the latest COPY FROM STDIN began (and that therefore get no
    /// ReadyForQuery).
    pub fn ignored_at_copy_start(&self) -> u32 {
        self.ignored_at_copy_start
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

    /// Syncs the server will ignore because a COPY FROM STDIN began before them (reported once,
    /// when the copy begins; see [`TransactionTracker::server_message`]).
    pub fn client_copying(&self) -> bool {
        self.client_copying
    }

    /// Sequence number of the latest ReadyForQuery asked for.
    pub fn asked(&self) -> u64 {
        self.asked
    }

    /// Sequence number of the latest ReadyForQuery received.
    pub fn answered(&self) -> u64 {
        self.answered
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
    fn a_sync_sent_before_copy_in_began_is_ignored_like_the_server_ignores_it() {
        let mut t = TransactionTracker::default();
        feed_client(&mut t, b"BES");
        assert_eq!(t.pending(), 1);
        t.server_message(b'2', &[]);
        t.server_message(b'G', &[]);
        assert_eq!(t.pending(), 0, "the Sync arrived in copy-in mode");
        assert_eq!(t.client_message(b'd'), ClientAction::Forward);
        assert_eq!(t.client_message(b'S'), ClientAction::ForwardIgnored);
        assert_eq!(t.client_message(b'c'), ClientAction::Forward);
        assert_eq!(t.client_message(b'S'), ClientAction::Forward);
        t.server_message(b'C', &[]);
        assert!(t.server_message(b'Z', b"I"));
    }

    #[test]
    fn a_copy_sent_whole_before_copy_in_response_releases_at_its_ready_for_query() {
        let mut t = TransactionTracker::default();
        feed_client(&mut t, b"BEddcS");
        assert_eq!(t.pending(), 1);
        t.server_message(b'2', &[]);
        t.server_message(b'G', &[]);
        assert!(!t.client_copying(), "the client already ended the copy");
        assert_eq!(t.pending(), 1, "the Sync after CopyDone is answered");
        t.server_message(b'C', &[]);
        assert!(t.server_message(b'Z', b"I"));
    }

    #[test]
    fn an_early_copy_end_counts_only_the_syncs_before_it_as_ignored() {
        let mut t = TransactionTracker::default();
        feed_client(&mut t, b"BESdcS");
        assert_eq!(t.pending(), 2);
        t.server_message(b'2', &[]);
        t.server_message(b'G', &[]);
        assert_eq!(t.pending(), 1);
        assert_eq!(t.ignored_at_copy_start(), 1);
        t.server_message(b'C', &[]);
        assert!(t.server_message(b'Z', b"I"));
    }

    #[test]
    fn an_early_copy_end_for_a_copy_that_failed_is_forgotten() {
        let mut t = TransactionTracker::default();
        feed_client(&mut t, b"QdcQ");
        t.server_message(b'E', &[]);
        assert!(!t.server_message(b'Z', b"I"));
        t.server_message(b'G', &[]);
        assert!(t.client_copying(), "the second COPY is a normal one");
        t.client_message(b'c');
        t.server_message(b'C', &[]);
        assert!(t.server_message(b'Z', b"I"));
    }

    #[test]
    fn an_early_copy_end_survives_an_error_in_an_earlier_query() {
        let mut t = TransactionTracker::default();
        feed_client(&mut t, b"QQdc");
        t.server_message(b'E', &[]);
        assert!(!t.server_message(b'Z', b"I"));
        t.server_message(b'G', &[]);
        assert!(!t.client_copying());
        t.server_message(b'C', &[]);
        assert!(t.server_message(b'Z', b"I"));
    }

    #[test]
    fn a_simple_query_ends_unsynced_extended_work() {
        let mut t = TransactionTracker::default();
        feed_client(&mut t, b"PDH");
        assert!(t.unsynced());
        feed_client(&mut t, b"Q");
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
