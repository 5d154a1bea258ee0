//! Read/write routing: decides, without IO, where a transaction runs.
//!
//! - [`classify`]: what a statement does (read, read-only transaction, anything else), parsed
//!   once per distinct query text with a real SQL parser and cached;
//! - [`hint`]: `/* sluice:... */` comments that override the classification or steer the cache;
//! - [`lag`]: how far behind the primary a replica is (pure: samples in, lag and health out);
//! - [`replica`]: the shared, lock-free status of each replica and the choice among them;
//! - [`monitor`]: the one IO part, a task per replica that polls the primary and the replica.

pub mod classify;
pub mod hint;
pub mod lag;
pub mod monitor;
pub mod replica;

/// Where a transaction runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// The primary: writes, and reads that cannot go elsewhere.
    Primary,
    /// A streaming replica.
    Replica,
}

use classify::{Classification, StatementClass};
use hint::RouteHint;

/// Where a request may run, from its classification and hints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// Only the primary.
    Primary,
    /// A replica, for this autocommit statement only.
    ReplicaStatement,
    /// A replica, for the whole transaction it opens (BEGIN READ ONLY, or a replica hint on a
    /// statement that is not a plain read).
    ReplicaTransaction,
}

/// Decides where a classified request may run; hints override the classification.
pub fn wanted(c: &Classification) -> Wanted {
    match (c.hints.route, c.class) {
        (Some(RouteHint::Primary), _) => Wanted::Primary,
        (Some(RouteHint::Replica), StatementClass::Read) | (None, StatementClass::Read) => Wanted::ReplicaStatement,
        (Some(RouteHint::Replica), _) | (None, StatementClass::BeginReadOnly) => Wanted::ReplicaTransaction,
        (None, StatementClass::Write) => Wanted::Primary,
    }
}

/// The query text a request message carries: a Query's text, a Parse's statement text, or,
/// for a Bind of a named statement, that statement's text (looked up with `named`). `None` for
/// other messages and for unnamed Binds (their Parse was routed).
pub fn request_text<'a>(tag: u8, body: &'a [u8], named: impl FnOnce(&[u8]) -> Option<&'a [u8]>) -> Option<&'a [u8]> {
    let cstr = |from: usize| -> Option<(usize, &'a [u8])> {
        let rest = body.get(from..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        Some((from + end + 1, &rest[..end]))
    };
    match tag {
        b'Q' => cstr(0).map(|(_, text)| text),
        b'P' => cstr(0).and_then(|(next, _)| cstr(next)).map(|(_, text)| text),
        b'B' => {
            let (next, _portal) = cstr(0)?;
            let (_, name) = cstr(next)?;
            if name.is_empty() {
                None
            } else {
                named(name)
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_text_reads_query_parse_and_named_bind() {
        assert_eq!(request_text(b'Q', b"select 1\0", |_| None), Some(&b"select 1"[..]));
        assert_eq!(request_text(b'P', b"s1\0select 2\0\0\0", |_| None), Some(&b"select 2"[..]));
        let stored = b"select 3".to_vec();
        assert_eq!(request_text(b'B', b"\0s1\0\0\0", |n| (n == b"s1").then_some(&stored[..])), Some(&b"select 3"[..]));
        assert_eq!(request_text(b'B', b"\0\0\0\0", |_| panic!("unnamed")), None);
        assert_eq!(request_text(b'Q', b"no terminator", |_| None), None);
        assert_eq!(request_text(b'E', b"\0\0\0\0\0", |_| None), None);
    }
}
