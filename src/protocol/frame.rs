//! Message framing: every message after startup is a tag byte and a big-endian i32 length that
//! counts itself but not the tag. The [`Scanner`] walks a buffer in place and reports each
//! message's tag to an [`Inspect`]or; only tags the inspector asks for are held until whole, every
//! other message is passed through as its bytes arrive, however large.

use super::ProtocolError;

/// The header of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The type byte.
    pub tag: u8,
    /// The length field: the body length plus 4.
    pub len: u32,
}

impl Header {
    /// Bytes the whole message takes, tag included.
    pub fn total(&self) -> usize {
        1 + self.len as usize
    }
}

/// Reads the header at the start of `buf`, or `None` if fewer than 5 bytes are there.
///
/// # Errors
/// A length below 4, or above `max`: checked before anything is reserved for the body.
pub fn peek_header(buf: &[u8], max: u32) -> Result<Option<Header>, ProtocolError> {
    let Some(h) = buf.get(..5) else { return Ok(None) };
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
    if len < 4 {
        return Err(ProtocolError::LengthTooShort(len));
    }
    if len > max {
        return Err(ProtocolError::TooLarge { len: len.into(), max: max.into() });
    }
    Ok(Some(Header { tag: h[0], len }))
}

/// What the inspector wants done after seeing a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep scanning.
    Continue,
    /// Stop after this message: the bytes up to and including it are to be acted on first.
    StopAfter,
    /// Stop before this message: it is not consumed.
    StopBefore,
}

/// What an inspector needs of a message, decided from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Only the tag: the message may pass through as its bytes arrive.
    Header,
    /// The whole message: the scanner waits until it is buffered.
    Body,
    /// Stop before this message without looking at it.
    Stop,
}

/// Looks at messages as the [`Scanner`] finds them.
pub trait Inspect {
    /// What is needed of a message with this tag and length field.
    fn wants(&self, tag: u8, len: u32) -> Want;
    /// Called once per message; `body` is empty unless [`Inspect::wants`] said [`Want::Body`].
    fn message(&mut self, tag: u8, body: &[u8]) -> Flow;
}

/// The result of one [`Scanner::scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scanned {
    /// Bytes from the start of the slice that may be forwarded now.
    pub consumed: usize,
    /// Whether the inspector stopped the scan.
    pub stopped: bool,
    /// Bytes the scanner needs buffered to make progress on a held message (0 if none).
    pub wanted: usize,
}

/// A streaming scanner over one direction of a connection.
#[derive(Debug, Clone)]
pub struct Scanner {
    /// Bytes of a passed-through message that have not arrived yet.
    remaining: usize,
    max_len: u32,
}

impl Scanner {
    /// A scanner that rejects messages whose length field exceeds `max_len`.
    pub fn new(max_len: u32) -> Self {
        Self { remaining: 0, max_len }
    }

    /// The largest length field accepted.
    pub fn max_len(&self) -> u32 {
        self.max_len
    }

    /// Whether the scanner is between messages (no message partly passed through).
    pub fn at_boundary(&self) -> bool {
        self.remaining == 0
    }

    /// Walks `buf`, which starts at the first byte not yet scanned.
    ///
    /// # Errors
    /// A bad length field; the connection cannot be framed after that.
    pub fn scan(&mut self, buf: &[u8], insp: &mut impl Inspect) -> Result<Scanned, ProtocolError> {
        let mut pos = 0;
        if self.remaining > 0 {
            let n = self.remaining.min(buf.len());
            self.remaining -= n;
            pos = n;
            if self.remaining > 0 {
                return Ok(Scanned { consumed: pos, stopped: false, wanted: 0 });
            }
        }
        loop {
            let Some(h) = peek_header(&buf[pos..], self.max_len)? else {
                return Ok(Scanned { consumed: pos, stopped: false, wanted: 5 });
            };
            let total = h.total();
            let avail = buf.len() - pos;
            let want = insp.wants(h.tag, h.len);
            if want == Want::Stop {
                return Ok(Scanned { consumed: pos, stopped: true, wanted: 0 });
            }
            if want == Want::Body {
                if avail < total {
                    return Ok(Scanned { consumed: pos, stopped: false, wanted: total });
                }
                match insp.message(h.tag, &buf[pos + 5..pos + total]) {
                    Flow::Continue => pos += total,
                    Flow::StopAfter => {
                        return Ok(Scanned { consumed: pos + total, stopped: true, wanted: 0 })
                    }
                    Flow::StopBefore => return Ok(Scanned { consumed: pos, stopped: true, wanted: 0 }),
                }
            } else {
                let flow = insp.message(h.tag, &[]);
                if flow == Flow::StopBefore {
                    return Ok(Scanned { consumed: pos, stopped: true, wanted: 0 });
                }
                let n = total.min(avail);
                pos += n;
                self.remaining = total - n;
                if flow == Flow::StopAfter || self.remaining > 0 {
                    return Ok(Scanned { consumed: pos, stopped: flow == Flow::StopAfter, wanted: 0 });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Record {
        seen: Vec<(u8, Vec<u8>)>,
        stop_on: Option<(u8, Flow)>,
    }

    impl Inspect for Record {
        fn wants(&self, tag: u8, _len: u32) -> Want {
            if tag == b'Z' {
                Want::Body
            } else {
                Want::Header
            }
        }
        fn message(&mut self, tag: u8, body: &[u8]) -> Flow {
            self.seen.push((tag, body.to_vec()));
            match self.stop_on {
                Some((t, f)) if t == tag => f,
                _ => Flow::Continue,
            }
        }
    }

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn length_below_four_is_rejected() {
        let mut s = Scanner::new(1 << 20);
        let err = s.scan(&[b'Q', 0, 0, 0, 3], &mut Record::default()).unwrap_err();
        assert_eq!(err, ProtocolError::LengthTooShort(3));
    }

    #[test]
    fn length_above_max_is_rejected_before_buffering() {
        let mut s = Scanner::new(1000);
        let err = s.scan(&[b'Q', 0x7f, 0xff, 0xff, 0xff], &mut Record::default()).unwrap_err();
        assert!(matches!(err, ProtocolError::TooLarge { .. }));
    }

    #[test]
    fn large_uninspected_message_streams_through_in_pieces() {
        let mut s = Scanner::new(1 << 20);
        let m = msg(b'D', &[7u8; 100]);
        let mut r = Record::default();
        let a = s.scan(&m[..30], &mut r).unwrap();
        assert_eq!(a.consumed, 30);
        assert!(!s.at_boundary());
        let b = s.scan(&m[30..], &mut r).unwrap();
        assert_eq!(b.consumed, m.len() - 30);
        assert!(s.at_boundary());
        assert_eq!(r.seen.len(), 1);
    }

    #[test]
    fn inspected_message_waits_until_whole_even_when_split_at_every_byte() {
        let mut stream = msg(b'C', b"SELECT 1\0");
        stream.extend(msg(b'Z', b"I"));
        let mut s = Scanner::new(1 << 20);
        let mut r = Record::default();
        let mut buffered: Vec<u8> = vec![];
        let mut forwarded = 0;
        for &byte in &stream {
            buffered.push(byte);
            let out = s.scan(&buffered, &mut r).unwrap();
            forwarded += out.consumed;
            buffered.drain(..out.consumed);
        }
        assert_eq!(forwarded, stream.len());
        assert_eq!(r.seen, vec![(b'C', vec![]), (b'Z', b"I".to_vec())]);
    }

    #[test]
    fn stop_before_leaves_the_message_unconsumed() {
        let mut stream = msg(b'Q', b"x\0");
        stream.extend(msg(b'X', b""));
        let mut s = Scanner::new(1 << 20);
        let mut r = Record { stop_on: Some((b'X', Flow::StopBefore)), ..Default::default() };
        let out = s.scan(&stream, &mut r).unwrap();
        assert_eq!(out.consumed, 7);
        assert!(out.stopped);
    }

    #[test]
    fn stop_after_ends_the_scan_at_that_message() {
        let mut stream = msg(b'Z', b"I");
        stream.extend(msg(b'N', b"later"));
        let mut s = Scanner::new(1 << 20);
        let mut r = Record { stop_on: Some((b'Z', Flow::StopAfter)), ..Default::default() };
        let out = s.scan(&stream, &mut r).unwrap();
        assert_eq!(out.consumed, 6);
        assert!(out.stopped);
    }

    use proptest::collection::vec;
    use proptest::prelude::*;

    /// Scans `stream` arriving in pieces of the given sizes, keeping unconsumed bytes buffered as
    /// a session does; returns the bytes forwarded and the most ever buffered.
    fn feed(s: &mut Scanner, r: &mut Record, stream: &[u8], pieces: &[usize]) -> Result<(usize, usize), ProtocolError> {
        let mut buffered: Vec<u8> = vec![];
        let (mut forwarded, mut most, mut at) = (0, 0, 0);
        let mut sizes = pieces.iter().cycle();
        while at < stream.len() {
            let n = (*sizes.next().unwrap_or(&1)).clamp(1, stream.len() - at);
            buffered.extend_from_slice(&stream[at..at + n]);
            at += n;
            most = most.max(buffered.len());
            loop {
                let out = s.scan(&buffered, r)?;
                assert!(out.consumed <= buffered.len());
                forwarded += out.consumed;
                buffered.drain(..out.consumed);
                if out.consumed == 0 || buffered.is_empty() {
                    break;
                }
            }
        }
        Ok((forwarded, most))
    }

    fn messages() -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
        vec((prop_oneof![Just(b'Z'), Just(b'D'), Just(b'C'), any::<u8>()], vec(any::<u8>(), 0..300)), 0..12)
    }

    proptest! {
        #[test]
        fn any_header_with_a_length_out_of_bounds_is_refused_before_its_body(tag in any::<u8>(), len in any::<u32>(), max in 4u32..1 << 20) {
            let mut h = vec![tag];
            h.extend(len.to_be_bytes());
            match peek_header(&h, max) {
                Ok(Some(header)) => prop_assert!((4..=max).contains(&header.len) && header.total() == len as usize + 1),
                Ok(None) => prop_assert!(false, "five bytes are a whole header"),
                Err(ProtocolError::LengthTooShort(l)) => prop_assert!(l < 4 && l == len),
                Err(ProtocolError::TooLarge { len: l, max: m }) => prop_assert!(l > m && l == u64::from(len)),
                Err(e) => prop_assert!(false, "{e}"),
            }
            for cut in 0..5 {
                prop_assert_eq!(peek_header(&h[..cut], max), Ok(None));
            }
        }

        #[test]
        fn valid_streams_in_any_pieces_are_forwarded_whole_and_held_messages_bounded(msgs in messages(), pieces in vec(1usize..64, 1..8)) {
            let stream: Vec<u8> = msgs.iter().flat_map(|(t, b)| msg(*t, b)).collect();
            let mut s = Scanner::new(1024);
            let mut r = Record::default();
            let (forwarded, most) = feed(&mut s, &mut r, &stream, &pieces).unwrap();
            prop_assert_eq!(forwarded, stream.len());
            prop_assert!(s.at_boundary());
            let seen: Vec<u8> = r.seen.iter().map(|(t, _)| *t).collect();
            let sent: Vec<u8> = msgs.iter().map(|(t, _)| *t).collect();
            prop_assert_eq!(seen, sent);
            for ((t, body), (_, sb)) in msgs.iter().zip(&r.seen) {
                if *t == b'Z' {
                    prop_assert_eq!(body, sb);
                }
            }
            // Only a held message (at most max_len + 1 bytes) and one piece are ever buffered.
            prop_assert!(most <= 1024 + 1 + 64);
        }

        #[test]
        fn a_huge_length_field_is_refused_however_the_stream_is_cut(msgs in messages(), len in 4097u32.., tag in any::<u8>(), pieces in vec(1usize..16, 1..4)) {
            let mut stream: Vec<u8> = msgs.iter().flat_map(|(t, b)| msg(*t, b)).collect();
            stream.push(tag);
            stream.extend(len.to_be_bytes());
            let mut s = Scanner::new(4096);
            let err = feed(&mut s, &mut Record::default(), &stream, &pieces).unwrap_err();
            prop_assert!(matches!(err, ProtocolError::TooLarge { .. }), "{:?}", err);
        }

        #[test]
        fn mutated_streams_never_panic_or_overrun(msgs in messages(), at in any::<proptest::sample::Index>(), byte in any::<u8>(), pieces in vec(1usize..64, 1..4)) {
            let mut stream: Vec<u8> = msgs.iter().flat_map(|(t, b)| msg(*t, b)).collect();
            if !stream.is_empty() {
                let at = at.index(stream.len());
                stream[at] = byte;
            }
            let mut s = Scanner::new(1024);
            if let Ok((forwarded, _)) = feed(&mut s, &mut Record::default(), &stream, &pieces) {
                prop_assert!(forwarded <= stream.len());
            }
        }

        #[test]
        fn scanning_arbitrary_bytes_never_panics_and_never_overruns(data in proptest::collection::vec(0u8..=255, 0..512), cut in 0usize..512) {
            let mut s = Scanner::new(4096);
            let mut r = Record::default();
            let cut = cut.min(data.len());
            if let Ok(a) = s.scan(&data[..cut], &mut r) {
                proptest::prop_assert!(a.consumed <= cut);
                let rest = &data[a.consumed..];
                if let Ok(b) = s.scan(rest, &mut r) {
                    proptest::prop_assert!(b.consumed <= rest.len());
                }
            }
        }
    }
}
