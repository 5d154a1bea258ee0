//! Cache keys: everything a response depends on, besides the data.
//!
//! - the session ([`SessionKey`]): the database, the server login user *and* the client's user
//!   (row-level security and grants differ by role), and every session setting that can change
//!   a result: `search_path`, `TimeZone`, `DateStyle`, `IntervalStyle`, `client_encoding`,
//!   `extra_float_digits`, `bytea_output`, `lc_monetary`, `lc_numeric`, `lc_time`,
//!   `standard_conforming_strings`, `role`, custom `app.*` settings read by policies... The
//!   settings are taken whole, minus a short list known not to change results
//!   ([`IGNORED_SETTINGS`]), so that an unforeseen one errs towards a miss. Hashed once, when
//!   the session's settings change.
//! - the request ([`Request`]): the statement text; for the extended protocol also the bound
//!   parameter values and formats and the result formats (the Bind body past its names), and
//!   the *shape* of the segment (which messages the client sent), since ParseComplete,
//!   BindComplete and the Describe answers are part of the response.
//!
//! A lookup hashes the session's precomputed hash and the request's bytes into 128 bits,
//! without allocating; the entry keeps the parts whole, and a hit is verified against them.

use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

/// Session settings that never change what a read returns: left out of [`SessionKey`] so that
/// sessions differing only in them share entries. Compared in lowercase; names starting with
/// one of [`IGNORED_PREFIXES`] are left out too.
pub const IGNORED_SETTINGS: &[&str] = &[
    "application_name",
    "client_min_messages",
    "default_transaction_deferrable",
    "default_transaction_isolation",
    "default_transaction_read_only",
    "effective_cache_size",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
    "jit",
    "lock_timeout",
    "maintenance_work_mem",
    "statement_timeout",
    "work_mem",
];

/// Prefixes of settings that only tune plans or logging (see [`IGNORED_SETTINGS`]).
pub const IGNORED_PREFIXES: &[&str] = &["enable_", "log_", "tcp_", "parallel_", "max_parallel_"];

/// Whether a setting (any case) is left out of the session key.
pub fn is_ignored_setting(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    IGNORED_SETTINGS.contains(&lower.as_str()) || IGNORED_PREFIXES.iter().any(|p| lower.starts_with(p))
}

/// Random keys of the 128-bit hash, chosen once per cache: a client cannot aim collisions at
/// another's entries.
#[derive(Debug, Clone, Default)]
pub struct KeySeed {
    high: RandomState,
    low: RandomState,
}

impl KeySeed {
    /// Two independent 64-bit SipHashes of the same length-prefixed parts.
    fn hash(&self, parts: &[&[u8]]) -> u128 {
        let (mut h, mut l) = (self.high.build_hasher(), self.low.build_hasher());
        for part in parts {
            h.write_usize(part.len());
            h.write(part);
            l.write_usize(part.len());
            l.write(part);
        }
        (u128::from(h.finish()) << 64) | u128::from(l.finish())
    }
}

/// What about a session can change the response to a statement, encoded and hashed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionKey {
    hash: u128,
    /// The encoded parts, shared by the session and its entries.
    parts: Arc<[u8]>,
}

impl SessionKey {
    /// The key of a session of `database` logged in to the server as `server_user` on behalf of
    /// `client_user`, with `settings` (name, value): every startup parameter and every SET that
    /// took effect, as the client gave them. Names are compared in any case; a later value of
    /// the same name wins; [ignored](is_ignored_setting) settings are dropped.
    pub fn new<'a>(
        seed: &KeySeed,
        database: &str,
        server_user: &str,
        client_user: &str,
        settings: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        let settings: BTreeMap<String, &str> = settings
            .into_iter()
            .filter(|(name, _)| !is_ignored_setting(name))
            .map(|(name, value)| (name.to_ascii_lowercase(), value))
            .collect();
        let mut parts = Vec::new();
        let mut put = |b: &[u8]| {
            parts.extend_from_slice(&(b.len() as u32).to_le_bytes());
            parts.extend_from_slice(b);
        };
        put(database.as_bytes());
        put(server_user.as_bytes());
        put(client_user.as_bytes());
        for (name, value) in &settings {
            put(name.as_bytes());
            put(value.as_bytes());
        }
        let hash = seed.hash(&[&parts]);
        Self { hash, parts: parts.into() }
    }

    /// Its 128-bit hash.
    pub fn hash(&self) -> u128 {
        self.hash
    }

    pub(super) fn parts(&self) -> &Arc<[u8]> {
        &self.parts
    }
}

/// A request whose response may be cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// A simple-protocol Query.
    Simple {
        /// Its text.
        text: &'a [u8],
    },
    /// An extended-protocol segment up to its Sync. Only a segment with one Bind and one
    /// Execute without a row limit (`max_rows` = 0) is cacheable: a limited Execute answers
    /// with part of the rows and PortalSuspended, and the key does not hold the limit.
    Extended {
        /// The prepared statement's text.
        text: &'a [u8],
        /// The Bind body past the portal and statement names: parameter formats, values and
        /// result formats ([`bind_parameters`]).
        bind: &'a [u8],
        /// The frontend tags of the segment in order, each Describe followed by its target
        /// byte (`S` or `P`): `b"PBDPES"`, `b"BES"`.
        shape: &'a [u8],
    },
}

impl<'a> Request<'a> {
    pub(super) fn parts(&self) -> (&'a [u8], &'a [u8], &'a [u8], &'static [u8]) {
        match *self {
            Request::Simple { text } => (text, &[], &[], b"Q"),
            Request::Extended { text, bind, shape } => (text, bind, shape, b"X"),
        }
    }
}

/// The key of one lookup: borrowed parts and their hash.
#[derive(Debug, Clone, Copy)]
pub struct CacheKey<'a> {
    hash: u128,
    session: &'a SessionKey,
    request: Request<'a>,
}

impl<'a> CacheKey<'a> {
    /// The key of `request` in `session`. Hashes the request's bytes once; no allocation.
    pub fn new(seed: &KeySeed, session: &'a SessionKey, request: Request<'a>) -> Self {
        let (text, bind, shape, kind) = request.parts();
        let hash = seed.hash(&[&session.hash.to_le_bytes(), kind, shape, bind, text]);
        Self { hash, session, request }
    }

    /// Its 128-bit hash.
    pub fn hash(&self) -> u128 {
        self.hash
    }

    /// Bytes it takes once stored (its session's parts are shared, not counted).
    pub(super) fn stored_len(&self) -> usize {
        let (text, bind, shape, _) = self.request.parts();
        text.len() + bind.len() + shape.len()
    }

    /// The parts, owned, to keep in an entry.
    pub(super) fn to_owned_key(self) -> OwnedKey {
        let (text, bind, shape, kind) = self.request.parts();
        OwnedKey {
            session: self.session.parts.clone(),
            kind: kind[0],
            text: text.into(),
            bind: bind.into(),
            shape: shape.into(),
        }
    }
}

/// A key's parts, as an entry keeps them to verify a hit.
#[derive(Debug)]
pub(super) struct OwnedKey {
    session: Arc<[u8]>,
    kind: u8,
    text: Box<[u8]>,
    bind: Box<[u8]>,
    shape: Box<[u8]>,
}

impl OwnedKey {
    /// Whether `key` has exactly these parts (not only the same hash).
    pub(super) fn matches(&self, key: &CacheKey<'_>) -> bool {
        let (text, bind, shape, kind) = key.request.parts();
        let session = key.session.parts();
        (Arc::ptr_eq(&self.session, session) || *self.session == **session)
            && self.kind == kind[0]
            && *self.text == *text
            && *self.bind == *bind
            && *self.shape == *shape
    }
}

/// The part of a Bind body (after the tag and length) that the response depends on: past the
/// portal and statement names, from the parameter format codes to the end. `None` if the
/// names are not terminated.
pub fn bind_parameters(body: &[u8]) -> Option<&[u8]> {
    let portal_end = body.iter().position(|&b| b == 0)?;
    let rest = &body[portal_end + 1..];
    let statement_end = rest.iter().position(|&b| b == 0)?;
    Some(&rest[statement_end + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(seed: &KeySeed, server_user: &str, client_user: &str, settings: &[(&str, &str)]) -> SessionKey {
        SessionKey::new(seed, "app", server_user, client_user, settings.iter().copied())
    }

    #[test]
    fn settings_are_compared_in_any_case_and_any_order() {
        let seed = KeySeed::default();
        let a = session(&seed, "app", "alice", &[("TimeZone", "UTC"), ("search_path", "public")]);
        let b = session(&seed, "app", "alice", &[("search_path", "public"), ("timezone", "UTC")]);
        assert_eq!(a, b);
    }

    #[test]
    fn ignored_settings_do_not_split_sessions() {
        let seed = KeySeed::default();
        let a = session(&seed, "app", "alice", &[("application_name", "web"), ("enable_seqscan", "off")]);
        let b = session(&seed, "app", "alice", &[("application_name", "worker")]);
        assert_eq!(a, b);
        assert!(!is_ignored_setting("search_path"));
        assert!(!is_ignored_setting("app.tenant"));
    }

    #[test]
    fn result_settings_split_sessions() {
        let seed = KeySeed::default();
        let base = session(&seed, "app", "alice", &[]);
        for (name, value) in [
            ("TimeZone", "Europe/Paris"),
            ("DateStyle", "SQL, DMY"),
            ("IntervalStyle", "iso_8601"),
            ("client_encoding", "LATIN1"),
            ("extra_float_digits", "0"),
            ("bytea_output", "escape"),
            ("lc_monetary", "fr_FR"),
            ("standard_conforming_strings", "off"),
            ("app.tenant", "42"),
        ] {
            assert_ne!(base, session(&seed, "app", "alice", &[(name, value)]), "{name}");
        }
    }

    #[test]
    fn parts_cannot_run_into_each_other() {
        let seed = KeySeed::default();
        let a = SessionKey::new(&seed, "ab", "c", "d", []);
        let b = SessionKey::new(&seed, "a", "bc", "d", []);
        assert_ne!(a, b);
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn a_key_matches_only_its_own_parts() {
        let seed = KeySeed::default();
        let s = session(&seed, "app", "alice", &[]);
        let simple = CacheKey::new(&seed, &s, Request::Simple { text: b"select 1" });
        let stored = simple.to_owned_key();
        assert!(stored.matches(&CacheKey::new(&seed, &s, Request::Simple { text: b"select 1" })));
        assert!(!stored.matches(&CacheKey::new(&seed, &s, Request::Simple { text: b"select 2" })));
        let extended = Request::Extended { text: b"select 1", bind: b"\0\0\0\0\0\0", shape: b"BES" };
        assert!(!stored.matches(&CacheKey::new(&seed, &s, extended)));
        let other = session(&seed, "app", "bob", &[]);
        assert!(!stored.matches(&CacheKey::new(&seed, &other, Request::Simple { text: b"select 1" })));
    }

    #[test]
    fn bind_parameters_skip_the_portal_and_statement_names() {
        assert_eq!(bind_parameters(b"p1\0s1\0\0\0\0\0\0\0"), Some(&b"\0\0\0\0\0\0"[..]));
        assert_eq!(bind_parameters(b"\0\0\0\x01\0\x01"), Some(&b"\0\x01\0\x01"[..]));
        assert_eq!(bind_parameters(b"unterminated"), None);
    }
}
