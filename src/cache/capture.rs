//! The bytes of a response, gathered while the relay forwards them, so that a miss can be
//! stored without delaying the client. Bounded by `cache.max_result_bytes`: past it the
//! capture stops copying and the response is relayed uncached.
//!
//! What to push: the backend messages that answer the request, exactly as sent to the client,
//! up to and not including its ReadyForQuery (which the session sends itself, with the status
//! of its own transaction). For a simple Query: RowDescription, DataRows and CommandComplete
//! (several sets for several statements, EmptyQueryResponse for an empty one); for an
//! extended segment, also ParseComplete, BindComplete, ParameterDescription, NoData,
//! PortalSuspended. Abandon the capture on an ErrorResponse, and on any asynchronous message
//! in between (NoticeResponse, ParameterStatus, NotificationResponse): they are not part of
//! the result.

use bytes::{Bytes, BytesMut};

/// A response being gathered.
#[derive(Debug)]
pub struct Capture {
    buf: BytesMut,
    max: usize,
    abandoned: bool,
}

impl Capture {
    /// An empty capture of at most `max` bytes (nothing is allocated before the first push).
    pub fn new(max: usize) -> Self {
        Self { buf: BytesMut::new(), max, abandoned: false }
    }

    /// Appends one whole message (tag, length, body). Returns whether the capture goes on:
    /// `false` once it is abandoned or would exceed its bound (its memory is then released).
    pub fn push(&mut self, message: &[u8]) -> bool {
        if self.abandoned {
            return false;
        }
        if self.buf.len() + message.len() > self.max {
            self.abandon();
            return false;
        }
        self.buf.extend_from_slice(message);
        true
    }

    /// Appends one message given as its tag and body (see [`push`](Self::push)).
    pub fn push_message(&mut self, tag: u8, body: &[u8]) -> bool {
        if self.abandoned {
            return false;
        }
        if self.buf.len() + 5 + body.len() > self.max {
            self.abandon();
            return false;
        }
        self.buf.extend_from_slice(&[tag]);
        self.buf.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        self.buf.extend_from_slice(body);
        true
    }

    /// Bytes gathered so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing was gathered.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Gives up: the response will not be stored.
    pub fn abandon(&mut self) {
        self.abandoned = true;
        self.buf = BytesMut::new();
    }

    /// Whether it was abandoned.
    pub fn is_abandoned(&self) -> bool {
        self.abandoned
    }

    /// The whole response, unless the capture was abandoned.
    pub fn finish(self) -> Option<Bytes> {
        (!self.abandoned).then(|| self.buf.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_gathered_in_order() {
        let mut c = Capture::new(64);
        assert!(c.push(b"T\0\0\0\x04"));
        assert!(c.push(b"C\0\0\0\x04"));
        assert_eq!(c.finish().as_deref(), Some(&b"T\0\0\0\x04C\0\0\0\x04"[..]));
    }

    #[test]
    fn a_response_over_the_bound_is_given_up_and_its_memory_released() {
        let mut c = Capture::new(8);
        assert!(c.push(b"D\0\0\0\x04"));
        assert!(!c.push(b"D\0\0\0\x04"));
        assert!(c.is_abandoned());
        assert!(!c.push(b"C"));
        assert_eq!(c.finish(), None);
    }

    #[test]
    fn an_abandoned_capture_stores_nothing() {
        let mut c = Capture::new(64);
        c.push(b"T\0\0\0\x04");
        c.abandon();
        assert_eq!(c.finish(), None);
    }
}
