//! Framing of the replication connection's bytes, without IO and within a memory bound.
//!
//! Invalidation needs only the start of most messages (a row change names its relation in its
//! first bytes; its tuple may be a detoasted value of any size). So a message longer than the
//! limit is handed out as its first [`HEAD`] bytes, marked as cut, and the rest is skipped as it
//! arrives: the buffer never holds more than the limit plus one read.

use crate::protocol::frame::peek_header;
use crate::protocol::ProtocolError;
use bytes::{Buf, Bytes, BytesMut};

/// Bytes of a message's body kept when the whole is over the limit: enough for the CopyData
/// kind, the XLogData header and a pgoutput change's tag and relation id.
pub const HEAD: usize = 64;

/// One message from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Its tag.
    pub tag: u8,
    /// Its body, or only the first [`HEAD`] bytes of it when `cut`.
    pub body: Bytes,
    /// Whether the body was longer than the limit and is only its head.
    pub cut: bool,
}

/// Splits the bytes read from the server into [`Frame`]s.
#[derive(Debug)]
pub struct Framer {
    buf: BytesMut,
    /// Bytes of a cut message still to be discarded as they arrive.
    skip: usize,
    max: usize,
}

impl Framer {
    /// A framer holding whole messages of at most `max` bytes (at least [`HEAD`] + 5).
    pub fn new(max: usize) -> Self {
        Self { buf: BytesMut::with_capacity(8192), skip: 0, max: max.max(HEAD + 5) }
    }

    /// Bytes already read past the login (they belong to the stream).
    pub fn with_leftover(mut self, bytes: &[u8]) -> Self {
        self.buf.extend_from_slice(bytes);
        self
    }

    /// The buffer to read into.
    pub fn buffer(&mut self) -> &mut BytesMut {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(8192);
        }
        &mut self.buf
    }

    /// The next message, or `None` until more bytes are read.
    ///
    /// # Errors
    /// A length field below 4 (not the protocol).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProtocolError> {
        if self.skip > 0 {
            let n = self.skip.min(self.buf.len());
            self.buf.advance(n);
            self.skip -= n;
            if self.skip > 0 {
                return Ok(None);
            }
        }
        let Some(h) = peek_header(&self.buf, u32::MAX)? else { return Ok(None) };
        let total = h.total();
        if total <= self.max {
            if self.buf.len() < total {
                self.buf.reserve(total - self.buf.len());
                return Ok(None);
            }
            let mut msg = self.buf.split_to(total);
            msg.advance(5);
            return Ok(Some(Frame { tag: h.tag, body: msg.freeze(), cut: false }));
        }
        if self.buf.len() < 5 + HEAD {
            return Ok(None);
        }
        let mut head = self.buf.split_to(5 + HEAD);
        head.advance(5);
        self.skip = total - 5 - HEAD;
        Ok(Some(Frame { tag: h.tag, body: head.freeze(), cut: true }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    /// Feeds `bytes` in pieces of `step` and collects every frame.
    fn frames(max: usize, bytes: &[u8], step: usize) -> Vec<Frame> {
        let mut f = Framer::new(max);
        let mut out = Vec::new();
        for chunk in bytes.chunks(step) {
            f.buffer().extend_from_slice(chunk);
            while let Some(frame) = f.next_frame().unwrap() {
                out.push(frame);
            }
        }
        assert!(f.buf.is_empty() && f.skip == 0);
        out
    }

    #[test]
    fn whole_messages_in_any_split() {
        let mut bytes = msg(b'd', b"kabc");
        bytes.extend(msg(b'd', &[7u8; 100]));
        bytes.extend(msg(b'c', b""));
        for step in [1, 2, 5, 7, 1000] {
            let got = frames(1024, &bytes, step);
            assert_eq!(got.len(), 3, "step {step}");
            assert_eq!(&got[0].body[..], b"kabc");
            assert_eq!(got[1].body.len(), 100);
            assert!(!got[1].cut);
            assert_eq!((got[2].tag, got[2].body.len()), (b'c', 0));
        }
    }

    #[test]
    fn a_message_over_the_limit_is_cut_to_its_head_and_skipped() {
        let big: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut bytes = msg(b'd', &big);
        bytes.extend(msg(b'd', b"after"));
        for step in [1, 3, 64, 4096, 20_000] {
            let got = frames(200, &bytes, step);
            assert_eq!(got.len(), 2, "step {step}");
            assert!(got[0].cut);
            assert_eq!(&got[0].body[..], &big[..HEAD]);
            assert_eq!((&got[1].body[..], got[1].cut), (&b"after"[..], false));
        }
    }

    #[test]
    fn a_short_length_is_an_error() {
        let mut f = Framer::new(1024);
        f.buffer().extend_from_slice(&[b'd', 0, 0, 0, 3]);
        assert!(f.next_frame().is_err());
    }
}
