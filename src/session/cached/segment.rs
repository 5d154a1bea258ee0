//! Which buffered request the cache may answer: a simple Query, or one extended-protocol
//! segment `[Parse] Bind [Describe] Execute Sync` that runs one statement once, whole.
//!
//! Pure: reads the client's buffer, decides nothing about the statement itself (that is the
//! classifier's and [`crate::cache::decide`]'s work).

use crate::protocol::frame::peek_header;
use crate::session::prepared::ClientStatements;

/// A request whose answer may come from the cache.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Request<'a> {
    /// Its length in the buffer.
    pub len: usize,
    /// The statement's query text.
    pub text: &'a [u8],
    /// What the statement is keyed by: the text (simple), or the Parse body after the name,
    /// with the parameter types (extended).
    pub spec: &'a [u8],
    /// The Bind body past the portal and statement names (extended only).
    pub bind: Option<&'a [u8]>,
    /// The messages, in order (extended only; empty for a Query).
    pub shape: Shape,
}

/// What the buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Judged<'a> {
    /// A whole request the cache may answer.
    Cacheable(Request<'a>),
    /// The start of what may be one: read more.
    Partial,
    /// Anything else.
    Not,
}

/// Messages in a cacheable extended segment, at most: Parse, Bind, Describe, Execute, Sync.
const MAX_MESSAGES: usize = 5;

/// Judges the request at the start of `buf`; `statements` names the client's prepared
/// statements.
pub(crate) fn judge<'a>(buf: &'a [u8], max_message: u32, statements: &'a ClientStatements) -> Judged<'a> {
    let mut pos = 0;
    let mut shape = Shape::default();
    let mut parsed: Option<&[u8]> = None;
    let mut bound: Option<(&[u8], &[u8])> = None; // (spec, parameters)
    let mut statement: &[u8] = &[];
    for _ in 0..MAX_MESSAGES {
        let header = match peek_header(&buf[pos..], max_message) {
            Ok(Some(h)) if buf.len() - pos >= h.total() => h,
            Ok(_) => return Judged::Partial,
            Err(_) => return Judged::Not,
        };
        let body = &buf[pos + 5..pos + header.total()];
        pos += header.total();
        let last = shape.last();
        match header.tag {
            b'Q' if pos == header.total() => {
                let Some((text, b"")) = cstr(body) else { return Judged::Not };
                return Judged::Cacheable(Request { len: pos, text, spec: text, bind: None, shape });
            }
            b'P' if last.is_none() => {
                let Some((b"", spec)) = cstr(body) else { return Judged::Not };
                parsed = Some(spec);
            }
            b'B' if matches!(last, None | Some(b'P')) => {
                let Some((b"", rest)) = cstr(body) else { return Judged::Not };
                let Some((name, parameters)) = cstr(rest) else { return Judged::Not };
                let spec = match parsed {
                    Some(spec) if name.is_empty() => spec,
                    None if !name.is_empty() => match statements.query_spec(name) {
                        Some(spec) => spec,
                        None => return Judged::Not,
                    },
                    _ => return Judged::Not,
                };
                statement = name;
                bound = Some((spec, parameters));
            }
            b'D' if last == Some(b'B') => {
                let target = match body.split_first() {
                    Some((b'P', b"\0")) => b'P',
                    Some((b'S', name)) if name.strip_suffix(b"\0") == Some(statement) => b'S',
                    _ => return Judged::Not,
                };
                shape.push(b'D');
                shape.push(target);
                continue;
            }
            b'E' if matches!(last, Some(b'B' | b'P' | b'S')) && bound.is_some() && !shape.contains(b'E') => {
                // The unnamed portal, every row.
                if body != b"\0\0\0\0\0" {
                    return Judged::Not;
                }
            }
            b'S' if last == Some(b'E') => {
                let Some((spec, parameters)) = bound else { return Judged::Not };
                shape.push(b'S');
                let text = spec.split(|&b| b == 0).next().unwrap_or(spec);
                return Judged::Cacheable(Request { len: pos, text, spec, bind: Some(parameters), shape });
            }
            _ => return Judged::Not,
        }
        shape.push(header.tag);
    }
    Judged::Not
}

/// Splits a NUL-terminated string off the front of `b`: (the string, what follows).
fn cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = b.iter().position(|&c| c == 0)?;
    Some((&b[..end], &b[end + 1..]))
}

/// The frontend messages of an extended segment in order, each Describe followed by its
/// target byte (`PBDPES`, `BES`); part of the cache key, since ParseComplete, BindComplete and
/// the Describe answers are part of the response. Inline, at most 8 tags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Shape {
    tags: [u8; 8],
    len: u8,
}

impl Shape {
    /// Appends a tag (ignored past 8).
    fn push(&mut self, tag: u8) {
        if let Some(slot) = self.tags.get_mut(usize::from(self.len)) {
            *slot = tag;
            self.len += 1;
        }
    }

    /// The tags.
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.tags[..usize::from(self.len)]
    }

    fn last(&self) -> Option<u8> {
        self.as_slice().last().copied()
    }

    fn contains(&self, tag: u8) -> bool {
        self.as_slice().contains(&tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn message(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
        out.put_u8(tag);
        out.put_u32(body.len() as u32 + 4);
        out.put_slice(body);
    }

    fn segment(parts: &[(u8, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (tag, body) in parts {
            message(&mut out, *tag, body);
        }
        out
    }

    const PARSE: &[u8] = b"\0select v from t where k = $1\0\0\x01\0\0\0\x17";
    const BIND: &[u8] = b"\0\0\0\x01\0\x01\0\x01\0\0\0\x0142\0\x01\0\0";
    const EXECUTE: &[u8] = b"\0\0\0\0\0";

    #[test]
    fn a_simple_query_is_cacheable_whole() {
        let none = ClientStatements::default();
        let buf = segment(&[(b'Q', b"select 1\0"), (b'Q', b"select 2\0")]);
        let Judged::Cacheable(r) = judge(&buf, 1 << 20, &none) else { panic!("not cacheable") };
        assert_eq!((r.len, r.text, r.spec, r.bind), (14, &b"select 1"[..], &b"select 1"[..], None));
        assert_eq!(judge(&buf[..10], 1 << 20, &none), Judged::Partial);
    }

    #[test]
    fn an_unnamed_parse_bind_describe_execute_sync_is_cacheable() {
        let none = ClientStatements::default();
        let buf = segment(&[(b'P', PARSE), (b'B', BIND), (b'D', b"P\0"), (b'E', EXECUTE), (b'S', b"")]);
        let Judged::Cacheable(r) = judge(&buf, 1 << 20, &none) else { panic!("not cacheable") };
        assert_eq!(r.len, buf.len());
        assert_eq!(r.text, b"select v from t where k = $1");
        assert_eq!(r.spec, &PARSE[1..]);
        assert_eq!(r.bind, Some(&BIND[2..]));
        assert_eq!(r.shape.as_slice(), b"PBDPES");
        assert_eq!(judge(&buf[..buf.len() - 1], 1 << 20, &none), Judged::Partial);
    }

    #[test]
    fn segments_that_do_more_than_run_one_statement_once_are_not() {
        let none = ClientStatements::default();
        for parts in [
            &[(b'P', b"s1\0select 1\0\0\0" as &[u8]), (b'B', b"\0s1\0\0\0\0\0\0\0"), (b'E', EXECUTE), (b'S', b"")][..],
            &[(b'P', PARSE), (b'B', BIND), (b'E', b"\0\0\0\0\x05"), (b'S', b"")],
            &[(b'P', PARSE), (b'B', BIND), (b'E', EXECUTE), (b'E', EXECUTE), (b'S', b"")],
            &[(b'P', PARSE), (b'B', BIND), (b'E', EXECUTE), (b'H', b"")],
            &[(b'P', PARSE), (b'S', b"")],
            &[(b'B', BIND), (b'E', EXECUTE), (b'S', b"")],
            &[(b'P', PARSE), (b'B', b"p1\0\0\0\0\0\0\0\0"), (b'E', b"p1\0\0\0\0\0"), (b'S', b"")],
            &[(b'P', PARSE), (b'D', b"S\0"), (b'B', BIND), (b'E', EXECUTE), (b'S', b"")],
            &[(b'F', b"")],
        ] {
            assert_eq!(judge(&segment(parts), 1 << 20, &none), Judged::Not, "{parts:?}");
        }
    }
}
