//! Whether a read may be answered from, and stored in, the cache; and for how long.
//!
//! A read is cacheable when all of these hold:
//! - it is classified [`Read`](StatementClass::Read) (autocommit SELECT-like reads, calling
//!   only replica-safe functions) and names no unknown write;
//! - it runs outside a transaction block: inside one it must see the transaction's own writes;
//! - the session holds no state of its own on its server connection (a pinned session: it may
//!   have temporary tables, which shadow tables of the same name for it alone and cannot be
//!   told apart by name; see [`ReadContext::session_bound`]);
//! - it does not say `/* sluice:nocache */`, and in `hint` mode it says `/* sluice:cache */`;
//! - it reads no system catalog (`pg_*`, `information_schema.*`: changed by DDL and by the
//!   server itself, not by writes sluice sees) and no table qualified by `pg_temp`;
//! - its text passes [`volatility::check_text`] (no clock, random, session or user-function
//!   calls, no relative-time literals, nothing but queries);
//! - for the extended protocol, no text-format parameter denotes a relative time
//!   ([`check_bind`]).
//!
//! The TTL is the hint's, else `cache.ttl`; a TTL of zero caches nothing.

use super::volatility;
use super::CacheMode;
use super::CacheSettings;
use crate::router::classify::{Classification, StatementClass};
use crate::router::hint::CacheHint;
use std::time::Duration;

/// Why a read is not cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bypass {
    /// Not an autocommit read (a write, a read-only transaction, session state).
    NotARead,
    /// It may write what cannot be named.
    WritesUnknown,
    /// It runs inside a transaction block.
    InTransaction,
    /// The session is pinned to its server connection (temporary tables, cursors...).
    SessionBound,
    /// `/* sluice:nocache */`.
    NoCacheHint,
    /// `cache.mode = "hint"` and no `/* sluice:cache */`.
    NotHinted,
    /// A statement other than a query (`SHOW`, `EXPLAIN`).
    NotASelect,
    /// It reads a system catalog.
    SystemCatalog,
    /// It names a temporary table.
    TemporaryTable,
    /// It calls something whose value the tables and the key do not fix: the clock, random,
    /// the session, a user function.
    VolatileCall,
    /// A literal or parameter such as `'now'` or `'today'`.
    RelativeTime,
    /// A Bind whose parameters cannot be read.
    MalformedBind,
    /// A TTL of zero.
    ZeroTtl,
}

/// What is known about a read when it is about to be sent.
#[derive(Debug, Clone, Copy)]
pub struct ReadContext<'a> {
    /// Its classification.
    pub classification: &'a Classification,
    /// Its text (the Query's, or the prepared statement's).
    pub text: &'a str,
    /// A transaction block is open (the last ReadyForQuery said `T` or `E`).
    pub in_transaction: bool,
    /// The session is pinned to its server connection, or (in session pooling) has created a
    /// temporary table.
    pub session_bound: bool,
}

/// The decision for one read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Look it up; on a miss, store its response for `ttl`.
    Cache {
        /// Lifetime of the entry.
        ttl: Duration,
    },
    /// Relay it without the cache.
    Bypass(Bypass),
}

/// Decides whether the read described by `ctx` is cacheable under `settings`.
pub fn decide(ctx: &ReadContext<'_>, settings: &CacheSettings) -> Verdict {
    match check(ctx, settings) {
        Ok(ttl) => Verdict::Cache { ttl },
        Err(why) => Verdict::Bypass(why),
    }
}

fn check(ctx: &ReadContext<'_>, settings: &CacheSettings) -> Result<Duration, Bypass> {
    let c = ctx.classification;
    let hinted_ttl = match (c.hints.cache, settings.mode) {
        (Some(CacheHint::NoCache), _) => return Err(Bypass::NoCacheHint),
        (Some(CacheHint::Cache { ttl }), _) => ttl,
        (None, CacheMode::Hint) => return Err(Bypass::NotHinted),
        (None, CacheMode::All) => None,
    };
    if c.class != StatementClass::Read {
        return Err(Bypass::NotARead);
    }
    if c.writes_unknown {
        return Err(Bypass::WritesUnknown);
    }
    if ctx.in_transaction {
        return Err(Bypass::InTransaction);
    }
    if ctx.session_bound {
        return Err(Bypass::SessionBound);
    }
    if let Some(why) = c.tables.iter().find_map(|t| table_bypass(t)) {
        return Err(why);
    }
    volatility::check_text(ctx.text)?;
    let ttl = hinted_ttl.unwrap_or(settings.ttl);
    if ttl.is_zero() {
        return Err(Bypass::ZeroTtl);
    }
    Ok(ttl)
}

/// Why reading `table` (as the classifier names it) prevents caching, if it does.
fn table_bypass(table: &str) -> Option<Bypass> {
    let mut parts = table.split('.');
    let bare = parts.next_back().unwrap_or(table);
    let schemas = || table.split('.').rev().skip(1);
    if schemas().any(|s| s.starts_with("pg_temp")) {
        return Some(Bypass::TemporaryTable);
    }
    let catalog_schema = schemas().any(|s| matches!(s, "pg_catalog" | "information_schema" | "pg_toast"));
    (catalog_schema || bare.starts_with("pg_")).then_some(Bypass::SystemCatalog)
}

/// Checks the parameters of a Bind (as [`bind_parameters`](super::key::bind_parameters)
/// returns them): no value may denote a relative time (`'today'` bound to a date parameter),
/// in text format or in binary (a binary `text` value is the same bytes, and may be cast).
///
/// # Errors
///
/// [`Bypass::RelativeTime`] for such a value; [`Bypass::MalformedBind`] if the parameters
/// cannot be read.
pub fn check_bind(params: &[u8]) -> Result<(), Bypass> {
    let mut r = Reader(params);
    let n_formats = r.i16()?;
    r.take(2 * n_formats)?;
    let n_values = r.i16()?;
    if n_formats > 1 && n_formats != n_values {
        return Err(Bypass::MalformedBind);
    }
    for _ in 0..n_values {
        let len = i32::from_be_bytes(r.take(4)?.try_into().map_err(|_| Bypass::MalformedBind)?);
        if len < 0 {
            continue;
        }
        let value = r.take(len as usize)?;
        // A binary-format `text` value is the same bytes as a text-format one; for other binary
        // types a match is a lost hit at worst.
        if volatility::mentions_relative_time(value) {
            return Err(Bypass::RelativeTime);
        }
    }
    Ok(())
}

/// Reads big-endian fields, failing with [`Bypass::MalformedBind`] past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Bypass> {
        if self.0.len() < n {
            return Err(Bypass::MalformedBind);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn i16(&mut self) -> Result<usize, Bypass> {
        let b = self.take(2)?;
        usize::try_from(i16::from_be_bytes([b[0], b[1]])).map_err(|_| Bypass::MalformedBind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::classify::Classifier;

    fn settings(mode: CacheMode) -> CacheSettings {
        CacheSettings { mode, ..CacheSettings::default() }
    }

    fn verdict(sql: &str, mode: CacheMode) -> Verdict {
        let c = Classifier::new(&[]).classify(sql);
        decide(
            &ReadContext { classification: &c, text: sql, in_transaction: false, session_bound: false },
            &settings(mode),
        )
    }

    const TTL: Duration = Duration::from_secs(5);

    #[test]
    fn a_plain_autocommit_select_is_cached_for_the_configured_ttl() {
        assert_eq!(verdict("SELECT id, name FROM users WHERE id = 1", CacheMode::All), Verdict::Cache { ttl: TTL });
    }

    #[test]
    fn the_hint_gives_its_own_ttl_and_nocache_always_bypasses() {
        let sql = "/* sluice:cache ttl=250ms */ SELECT * FROM t";
        assert_eq!(verdict(sql, CacheMode::All), Verdict::Cache { ttl: Duration::from_millis(250) });
        assert_eq!(verdict(sql, CacheMode::Hint), Verdict::Cache { ttl: Duration::from_millis(250) });
        assert_eq!(
            verdict("/* sluice:nocache */ SELECT * FROM t", CacheMode::All),
            Verdict::Bypass(Bypass::NoCacheHint)
        );
        assert_eq!(
            verdict("/* sluice:cache ttl=0s */ SELECT * FROM t", CacheMode::All),
            Verdict::Bypass(Bypass::ZeroTtl)
        );
    }

    #[test]
    fn hint_mode_caches_only_hinted_reads() {
        assert_eq!(verdict("SELECT * FROM t", CacheMode::Hint), Verdict::Bypass(Bypass::NotHinted));
        assert_eq!(verdict("/* sluice:cache */ SELECT * FROM t", CacheMode::Hint), Verdict::Cache { ttl: TTL });
    }

    #[test]
    fn writes_and_transactions_are_not_cached() {
        assert_eq!(verdict("UPDATE t SET x = 1", CacheMode::All), Verdict::Bypass(Bypass::NotARead));
        assert_eq!(verdict("SELECT * FROM t FOR UPDATE", CacheMode::All), Verdict::Bypass(Bypass::NotARead));
        assert_eq!(verdict("BEGIN READ ONLY", CacheMode::All), Verdict::Bypass(Bypass::NotARead));
        let c = Classifier::new(&[]).classify("SELECT 1");
        let in_tx = ReadContext { classification: &c, text: "SELECT 1", in_transaction: true, session_bound: false };
        assert_eq!(decide(&in_tx, &settings(CacheMode::All)), Verdict::Bypass(Bypass::InTransaction));
        let pinned = ReadContext { in_transaction: false, session_bound: true, ..in_tx };
        assert_eq!(decide(&pinned, &settings(CacheMode::All)), Verdict::Bypass(Bypass::SessionBound));
    }

    #[test]
    fn system_catalogs_and_temporary_tables_are_not_cached() {
        assert_eq!(verdict("SELECT * FROM pg_class", CacheMode::All), Verdict::Bypass(Bypass::SystemCatalog));
        assert_eq!(
            verdict("SELECT * FROM pg_catalog.pg_namespace", CacheMode::All),
            Verdict::Bypass(Bypass::SystemCatalog)
        );
        assert_eq!(
            verdict("SELECT * FROM information_schema.tables", CacheMode::All),
            Verdict::Bypass(Bypass::SystemCatalog)
        );
        assert_eq!(table_bypass("pg_temp.t"), Some(Bypass::TemporaryTable));
        assert_eq!(table_bypass("pg_temp_3.t"), Some(Bypass::TemporaryTable));
        assert_eq!(table_bypass("public.t"), None);
    }

    #[test]
    fn volatile_calls_are_not_cached() {
        assert_eq!(verdict("SELECT * FROM t WHERE at > now()", CacheMode::All), Verdict::Bypass(Bypass::VolatileCall));
        assert_eq!(verdict("SHOW TimeZone", CacheMode::All), Verdict::Bypass(Bypass::NotASelect));
    }

    fn bind(formats: &[i16], values: &[Option<&[u8]>]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(formats.len() as i16).to_be_bytes());
        formats.iter().for_each(|f| b.extend_from_slice(&f.to_be_bytes()));
        b.extend_from_slice(&(values.len() as i16).to_be_bytes());
        for v in values {
            match v {
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v);
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        b.extend_from_slice(&0i16.to_be_bytes());
        b
    }

    #[test]
    fn text_parameters_denoting_a_relative_time_are_not_cached() {
        assert_eq!(check_bind(&bind(&[], &[Some(b"42"), None])), Ok(()));
        assert_eq!(check_bind(&bind(&[], &[Some(b"today")])), Err(Bypass::RelativeTime));
        assert_eq!(check_bind(&bind(&[0], &[Some(b"1"), Some(b"now")])), Err(Bypass::RelativeTime));
        assert_eq!(
            check_bind(&bind(&[1, 0], &[Some(b"now"), Some(b"x")])),
            Err(Bypass::RelativeTime),
            "a binary text value is the same bytes"
        );
        assert_eq!(check_bind(&bind(&[1, 1], &[Some(b"\0\0\0\x07"), Some(b"x")])), Ok(()), "binary data");
        assert_eq!(check_bind(b"\0\x01"), Err(Bypass::MalformedBind));
    }
}
