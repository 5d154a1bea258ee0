//! Running a request again when the server refused it only because a shared prepared statement
//! went stale on that connection ("cached plan must not change result type", SQLSTATE 0A000,
//! after DDL changed a table under the statement).
//!
//! A client of Postgres would prepare the statement again and retry; as sluice shares statements
//! between clients, it does that itself where it is safe: when the request is the only one in
//! flight, began outside any transaction, and consists of the Bind that failed followed only by
//! Describe, Execute and its Sync, with a Describe of the portal before any Execute (as libpq
//! sends for every prepared query), so that the client reads the rows by their new description.
//! Nothing of such a request ran (the Bind is refused before any Execute), so running it again
//! cannot do anything twice. A client that runs a statement by the description it got when it
//! prepared it gets the error, as from Postgres: rows of another shape would be misread. The request's messages, as the
//! client sent them, are kept here (in a buffer reused from request to request) until the next
//! request starts; the retry offers them to the relay again as if the client had sent them,
//! after sluice closed and prepared the statement anew. The failed attempt's ErrorResponse and
//! ReadyForQuery never reach the client. A request is run again at most once.

use bytes::{BufMut, BytesMut};

/// Requests larger than this are not kept (the error reaches the client).
const MAX_REPLAY: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not keeping this request.
    Off,
    /// Keeping the messages of a request that began with a Bind (its portal is described).
    Recording(bool),
    /// A whole request is kept; it ends at this ReadyForQuery.
    Complete(u64),
    /// The request being scanned now is the retry: it is not kept again.
    Retried,
}

/// The last request's messages, kept while it may need to run again.
#[derive(Debug)]
pub struct Replay {
    buf: BytesMut,
    state: State,
}

impl Default for Replay {
    fn default() -> Self {
        Self { buf: BytesMut::new(), state: State::Off }
    }
}

impl Replay {
    /// Whether the body of a client message with this tag is needed.
    pub fn wants_body(&self, tag: u8) -> bool {
        matches!(self.state, State::Recording(_)) && tag == b'E'
    }

    /// A client message (its body, when wanted). `request_start`: it starts a request while
    /// no other is in flight and no transaction is open; `ready_seq`: the ReadyForQuery its
    /// request ends at.
    pub fn client_message(&mut self, tag: u8, body: &[u8], request_start: bool, ready_seq: u64) {
        if request_start {
            if self.state == State::Retried {
                self.state = State::Off;
                return;
            }
            self.state = State::Off;
            if tag != b'B' || !binds_named_statement(body) {
                return;
            }
            self.buf.clear();
            self.state = State::Recording(false);
        }
        let State::Recording(described) = self.state else { return };
        let keep = match tag {
            b'B' | b'S' => true,
            b'D' => {
                self.state = State::Recording(described || body.first() == Some(&b'P'));
                true
            }
            b'E' => described,
            _ => false,
        };
        if !keep || self.buf.len() + 5 + body.len() > MAX_REPLAY {
            self.state = State::Off;
            return;
        }
        self.buf.put_u8(tag);
        self.buf.put_u32(body.len() as u32 + 4);
        self.buf.put_slice(body);
        if tag == b'S' {
            self.state = State::Complete(ready_seq);
        }
    }

    /// Whether the request ending at the `ready_seq`-th ReadyForQuery is kept whole.
    pub fn holds(&self, ready_seq: u64) -> bool {
        self.state == State::Complete(ready_seq)
    }

    /// Takes the kept request to run it again, put in front of `pending` (client bytes not
    /// scanned yet).
    pub fn take_into(&mut self, pending: &mut BytesMut) {
        let mut again = BytesMut::with_capacity(self.buf.len() + pending.len());
        again.extend_from_slice(&self.buf);
        again.extend_from_slice(pending);
        *pending = again;
        self.buf.clear();
        self.state = State::Retried;
    }
}

/// Whether a Bind body names a statement (the unnamed one is the client's own to re-send).
fn binds_named_statement(body: &[u8]) -> bool {
    let Some(portal_end) = body.iter().position(|&b| b == 0) else { return false };
    body.get(portal_end + 1).is_some_and(|&b| b != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(stmt: &[u8]) -> Vec<u8> {
        [b"\0".as_slice(), stmt, b"\0\0\0\0\0\0\0"].concat()
    }

    fn feed(r: &mut Replay, msgs: &[(u8, Vec<u8>)], seq: u64) {
        for (i, (tag, body)) in msgs.iter().enumerate() {
            r.client_message(*tag, body, i == 0, seq);
        }
    }

    #[test]
    fn a_request_of_a_named_bind_execute_and_sync_is_kept_and_given_back_once() {
        let mut r = Replay::default();
        let describe = (b'D', b"P\0".to_vec());
        let execute = (b'E', b"\0\0\0\0\0".to_vec());
        feed(&mut r, &[(b'B', bind(b"s1")), describe.clone(), execute.clone(), (b'S', vec![])], 3);
        assert!(r.holds(3));
        assert!(!r.holds(4));
        let mut pending = BytesMut::from(&b"Q\0\0\0\x05\0"[..]);
        r.take_into(&mut pending);
        assert_eq!(&pending[..1], b"B");
        assert!(pending.ends_with(b"S\0\0\0\x04Q\0\0\0\x05\0"));
        // The retry itself is not kept again.
        feed(&mut r, &[(b'B', bind(b"s1")), describe.clone(), execute.clone(), (b'S', vec![])], 4);
        assert!(!r.holds(4));
        feed(&mut r, &[(b'B', bind(b"s1")), describe.clone(), execute.clone(), (b'S', vec![])], 5);
        assert!(r.holds(5));
        // Without a Describe of the portal the client would read new rows by an old description.
        feed(&mut r, &[(b'B', bind(b"s1")), execute.clone(), (b'S', vec![])], 6);
        assert!(!r.holds(6));
        feed(&mut r, &[(b'B', bind(b"s1")), (b'D', b"Ss1\0".to_vec()), execute, (b'S', vec![])], 7);
        assert!(!r.holds(7));
    }

    #[test]
    fn other_requests_are_not_kept() {
        let mut r = Replay::default();
        // The unnamed statement, a Parse first, a Query, a Flush inside.
        feed(&mut r, &[(b'B', bind(b"")), (b'E', vec![0, 0, 0, 0, 0]), (b'S', vec![])], 1);
        assert!(!r.holds(1));
        feed(&mut r, &[(b'P', b"s\0select 1\0\0\0".to_vec()), (b'B', bind(b"s")), (b'S', vec![])], 2);
        assert!(!r.holds(2));
        feed(&mut r, &[(b'B', bind(b"s")), (b'H', vec![]), (b'E', vec![0, 0, 0, 0, 0]), (b'S', vec![])], 3);
        assert!(!r.holds(3));
        // Too large.
        let big = [b"\0s\0".as_slice(), &vec![b'x'; MAX_REPLAY]].concat();
        feed(&mut r, &[(b'B', big), (b'S', vec![])], 4);
        assert!(!r.holds(4));
        // Not the start of a request (something was in flight).
        r.client_message(b'B', &bind(b"s"), false, 5);
        r.client_message(b'S', &[], false, 5);
        assert!(!r.holds(5));
        // Malformed binds.
        feed(&mut r, &[(b'B', b"no terminator".to_vec()), (b'S', vec![])], 6);
        assert!(!r.holds(6));
    }
}
