//! The replication stream's bytes, without IO: the CopyData wrappers of the walsender
//! (XLogData `w`, primary keepalive `k`; the standby status update `r` sluice answers with)
//! and the pgoutput messages inside XLogData (protocol version 1).
//!
//! Only what invalidation needs is read: relation ids and names, transaction boundaries and
//! positions. Tuple data is skipped unread. Every read is bounds-checked: a short or malformed
//! message is a [`DecodeError`], never a panic, and nothing is allocated from a length field.

use bytes::{BufMut, BytesMut};

/// Errors decoding the stream.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// A message ended before a field it must have.
    #[error("truncated {what} message")]
    Truncated {
        /// The message being read.
        what: &'static str,
    },
    /// A string field is not NUL-terminated UTF-8.
    #[error("malformed string in {what} message")]
    BadString {
        /// The message being read.
        what: &'static str,
    },
    /// A CopyData message of a kind the walsender does not send.
    #[error("unknown replication message {:?}", char::from(*.0))]
    UnknownCopyData(u8),
    /// An empty CopyData or XLogData payload.
    #[error("empty replication message")]
    Empty,
}

/// A WAL position.
pub type Lsn = u64;

/// Formats a WAL position the way Postgres prints it (`16/B374D848`).
pub fn format_lsn(lsn: Lsn) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// A CopyData message from the walsender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyData<'a> {
    /// `w`: WAL data, here one pgoutput message.
    XLogData {
        /// Where the data starts in the WAL.
        start: Lsn,
        /// The server's current end of WAL.
        wal_end: Lsn,
        /// The pgoutput message.
        data: &'a [u8],
    },
    /// `k`: the server is alive.
    Keepalive {
        /// The server's current end of WAL.
        wal_end: Lsn,
        /// Whether the server wants a status update at once (or it may end the connection).
        reply_requested: bool,
    },
}

/// A pgoutput message (protocol version 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pgoutput<'a> {
    /// `B`: a transaction begins.
    Begin {
        /// The commit's WAL position.
        final_lsn: Lsn,
        /// Transaction id.
        xid: u32,
    },
    /// `C`: the transaction committed.
    Commit {
        /// The commit record's position.
        commit_lsn: Lsn,
        /// The position just after it: what may be confirmed as flushed once it is applied.
        end_lsn: Lsn,
    },
    /// `R`: what a relation id names (sent before its first change in the stream, and again
    /// after its definition changed).
    Relation {
        /// The relation's OID.
        id: u32,
        /// Its schema (empty for `pg_catalog`).
        namespace: &'a str,
        /// Its name, as in the catalog.
        name: &'a str,
    },
    /// `I`, `U` or `D`: a row of a relation changed.
    Change {
        /// `I`, `U` or `D`.
        kind: u8,
        /// The relation's OID.
        relation: u32,
    },
    /// `T`: relations were truncated.
    Truncate {
        /// Their OIDs, four bytes each (see [`Pgoutput::truncated`]).
        relations: &'a [u8],
    },
    /// Anything else (`O` origin, `Y` type, `M` message): nothing to invalidate.
    Other(u8),
}

impl Pgoutput<'_> {
    /// The relation OIDs of a [`Pgoutput::Truncate`] (none for other messages).
    pub fn truncated(&self) -> impl Iterator<Item = u32> + '_ {
        let rels: &[u8] = match self {
            Pgoutput::Truncate { relations } => relations,
            _ => &[],
        };
        rels.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }
}

/// A cursor over a message body.
struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated { what: self.what });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn cstr(&mut self) -> Result<&'a str, DecodeError> {
        let end = self.buf.iter().position(|&b| b == 0).ok_or(DecodeError::BadString { what: self.what })?;
        let s = std::str::from_utf8(&self.buf[..end]).map_err(|_| DecodeError::BadString { what: self.what })?;
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }
}

/// Decodes the body of a CopyData message (`d`) of the replication stream.
///
/// # Errors
/// [`DecodeError`] for a short body or an unknown kind.
pub fn parse_copy_data(body: &[u8]) -> Result<CopyData<'_>, DecodeError> {
    let (&kind, rest) = body.split_first().ok_or(DecodeError::Empty)?;
    match kind {
        b'w' => {
            let mut r = Reader { buf: rest, what: "XLogData" };
            let start = r.u64()?;
            let wal_end = r.u64()?;
            let _sent_at = r.u64()?;
            Ok(CopyData::XLogData { start, wal_end, data: r.buf })
        }
        b'k' => {
            let mut r = Reader { buf: rest, what: "keepalive" };
            let wal_end = r.u64()?;
            let _sent_at = r.u64()?;
            let reply_requested = r.u8()? != 0;
            Ok(CopyData::Keepalive { wal_end, reply_requested })
        }
        other => Err(DecodeError::UnknownCopyData(other)),
    }
}

/// Decodes one pgoutput message (the data of an XLogData).
///
/// # Errors
/// [`DecodeError`] for a short or malformed message.
pub fn parse_pgoutput(data: &[u8]) -> Result<Pgoutput<'_>, DecodeError> {
    let (&tag, rest) = data.split_first().ok_or(DecodeError::Empty)?;
    match tag {
        b'B' => {
            let mut r = Reader { buf: rest, what: "Begin" };
            let final_lsn = r.u64()?;
            let _committed_at = r.u64()?;
            let xid = r.u32()?;
            Ok(Pgoutput::Begin { final_lsn, xid })
        }
        b'C' => {
            let mut r = Reader { buf: rest, what: "Commit" };
            let _flags = r.u8()?;
            let commit_lsn = r.u64()?;
            let end_lsn = r.u64()?;
            let _committed_at = r.u64()?;
            Ok(Pgoutput::Commit { commit_lsn, end_lsn })
        }
        b'R' => {
            let mut r = Reader { buf: rest, what: "Relation" };
            let id = r.u32()?;
            let namespace = r.cstr()?;
            let name = r.cstr()?;
            // Replica identity and columns follow; not needed.
            let _identity = r.u8()?;
            let _columns = r.u16()?;
            Ok(Pgoutput::Relation { id, namespace, name })
        }
        b'I' | b'U' | b'D' => {
            let what = match tag {
                b'I' => "Insert",
                b'U' => "Update",
                _ => "Delete",
            };
            let relation = Reader { buf: rest, what }.u32()?;
            Ok(Pgoutput::Change { kind: tag, relation })
        }
        b'T' => {
            let mut r = Reader { buf: rest, what: "Truncate" };
            let count = r.u32()? as usize;
            let _options = r.u8()?;
            // Checked against what is there before anything is read: no allocation at all.
            let relations = r.take(count.checked_mul(4).ok_or(DecodeError::Truncated { what: "Truncate" })?)?;
            Ok(Pgoutput::Truncate { relations })
        }
        other => Ok(Pgoutput::Other(other)),
    }
}

/// Microseconds since 2000-01-01 00:00 UTC, the replication protocol's clock.
pub fn pg_now() -> i64 {
    const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;
    let since_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (since_unix.as_micros() as i64).saturating_sub((PG_EPOCH_UNIX_SECS * 1_000_000) as i64)
}

/// Appends a CopyData holding a standby status update (`r`): everything up to `flushed` has
/// been received, written, flushed and applied; `now` as from [`pg_now`].
pub fn standby_status_update(out: &mut BytesMut, flushed: Lsn, now: i64) {
    out.put_u8(b'd');
    out.put_u32(4 + 1 + 8 * 4 + 1);
    out.put_u8(b'r');
    out.put_u64(flushed);
    out.put_u64(flushed);
    out.put_u64(flushed);
    out.put_i64(now);
    out.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xlog(start: u64, data: &[u8]) -> Vec<u8> {
        let mut v = vec![b'w'];
        v.extend_from_slice(&start.to_be_bytes());
        v.extend_from_slice(&(start + 100).to_be_bytes());
        v.extend_from_slice(&7u64.to_be_bytes());
        v.extend_from_slice(data);
        v
    }

    /// A Relation message as pgoutput writes it: id, namespace, name, identity, columns.
    pub(crate) fn relation(id: u32, ns: &str, name: &str) -> Vec<u8> {
        let mut v = vec![b'R'];
        v.extend_from_slice(&id.to_be_bytes());
        v.extend_from_slice(ns.as_bytes());
        v.push(0);
        v.extend_from_slice(name.as_bytes());
        v.push(0);
        v.push(b'd');
        v.extend_from_slice(&1u16.to_be_bytes());
        // One column: flags, name, type oid, typmod.
        v.push(1);
        v.extend_from_slice(b"id\0");
        v.extend_from_slice(&23u32.to_be_bytes());
        v.extend_from_slice(&(-1i32).to_be_bytes());
        v
    }

    #[test]
    fn xlogdata_and_keepalive() {
        let rel = relation(16384, "public", "t");
        let w = xlog(0x1_0000_0010, &rel);
        match parse_copy_data(&w).unwrap() {
            CopyData::XLogData { start, wal_end, data } => {
                assert_eq!((start, wal_end), (0x1_0000_0010, 0x1_0000_0074));
                assert_eq!(data, &rel[..]);
            }
            other => panic!("{other:?}"),
        }
        let mut k = vec![b'k'];
        k.extend_from_slice(&0x2Au64.to_be_bytes());
        k.extend_from_slice(&0u64.to_be_bytes());
        k.push(1);
        assert_eq!(parse_copy_data(&k).unwrap(), CopyData::Keepalive { wal_end: 0x2A, reply_requested: true });
        k[17] = 0;
        assert_eq!(parse_copy_data(&k).unwrap(), CopyData::Keepalive { wal_end: 0x2A, reply_requested: false });
    }

    #[test]
    fn pgoutput_messages() {
        let rel = relation(16384, "public", "T");
        assert_eq!(
            parse_pgoutput(&rel).unwrap(),
            Pgoutput::Relation { id: 16384, namespace: "public", name: "T" }
        );
        let mut b = vec![b'B'];
        b.extend_from_slice(&0x500u64.to_be_bytes());
        b.extend_from_slice(&0u64.to_be_bytes());
        b.extend_from_slice(&742u32.to_be_bytes());
        assert_eq!(parse_pgoutput(&b).unwrap(), Pgoutput::Begin { final_lsn: 0x500, xid: 742 });
        let mut c = vec![b'C', 0];
        c.extend_from_slice(&0x500u64.to_be_bytes());
        c.extend_from_slice(&0x530u64.to_be_bytes());
        c.extend_from_slice(&0u64.to_be_bytes());
        assert_eq!(parse_pgoutput(&c).unwrap(), Pgoutput::Commit { commit_lsn: 0x500, end_lsn: 0x530 });
        for kind in [b'I', b'U', b'D'] {
            let mut m = vec![kind];
            m.extend_from_slice(&16384u32.to_be_bytes());
            m.extend_from_slice(b"N\0\x01t\0\0\0\x011");
            assert_eq!(parse_pgoutput(&m).unwrap(), Pgoutput::Change { kind, relation: 16384 });
        }
        let mut t = vec![b'T'];
        t.extend_from_slice(&2u32.to_be_bytes());
        t.push(0);
        t.extend_from_slice(&16384u32.to_be_bytes());
        t.extend_from_slice(&16390u32.to_be_bytes());
        let m = parse_pgoutput(&t).unwrap();
        assert_eq!(m.truncated().collect::<Vec<_>>(), [16384, 16390]);
        assert_eq!(parse_pgoutput(b"O\0\0\0\0\0\0\0\x01x\0").unwrap(), Pgoutput::Other(b'O'));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let rel = relation(1, "public", "t");
        let mut c = vec![b'C', 0];
        c.extend_from_slice(&[0u8; 24]);
        let mut t = vec![b'T'];
        t.extend_from_slice(&3u32.to_be_bytes());
        t.push(0);
        t.extend_from_slice(&[0u8; 12]);
        for msg in [&rel[..], &c[..], &t[..]] {
            parse_pgoutput(msg).unwrap();
            for cut in 0..msg.len() {
                let _ = parse_pgoutput(&msg[..cut]);
            }
        }
        // The Relation's strings end before the identity byte.
        assert!(parse_pgoutput(&rel[..15]).is_err());
        assert_eq!(parse_pgoutput(&c[..10]), Err(DecodeError::Truncated { what: "Commit" }));
        assert!(parse_pgoutput(&t[..t.len() - 1]).is_err());
        // A count far beyond the message is refused without reading or allocating.
        let mut huge = vec![b'T'];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        huge.push(0);
        assert!(parse_pgoutput(&huge).is_err());
        assert_eq!(parse_copy_data(b""), Err(DecodeError::Empty));
        assert_eq!(parse_copy_data(b"x"), Err(DecodeError::UnknownCopyData(b'x')));
        assert!(parse_copy_data(b"w\0\0").is_err());
        assert!(parse_copy_data(b"k\0\0\0\0\0\0\0\0").is_err());
        assert!(parse_pgoutput(b"R\0\0\0\x01pub\xfflic\0t\0d\0\0").is_err(), "not UTF-8");
    }

    #[test]
    fn status_update_layout() {
        let mut out = BytesMut::new();
        standby_status_update(&mut out, 0x1_0000_0020, 5);
        assert_eq!(out.len(), 1 + 4 + 34);
        assert_eq!(&out[..6], &[b'd', 0, 0, 0, 38, b'r']);
        assert_eq!(&out[6..14], &0x1_0000_0020u64.to_be_bytes());
        assert_eq!(&out[30..38], &5i64.to_be_bytes());
        assert_eq!(out[38], 0);
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
    }
}
