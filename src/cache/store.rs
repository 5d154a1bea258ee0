//! The store: responses by key, in a moka cache (TinyLFU admission and eviction) bounded by
//! weight in bytes, each entry with its own expiry. An entry keeps its key's parts (to verify a
//! hit), the response, and the [`GenSnapshot`] taken when its read began; it is served only
//! while that snapshot is current and its TTL has not run out.
//!
//! Invalidation is lazy: a bump touches no entry. A stale entry is removed when a lookup finds
//! it (and counted as an invalidation), or evicted by TTL or memory pressure if none does.

use super::key::{CacheKey, KeySeed, OwnedKey, Request, SessionKey};
use super::{CacheSettings, Error, GenSnapshot};
use crate::metrics::cache::{CacheReport, CacheStats};
use bytes::Bytes;
use moka::ops::compute::Op;
use moka::sync::Cache;
use moka::Expiry;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes counted for an entry besides its response and key: the entry, its `Arc`, moka's
/// bookkeeping.
pub const ENTRY_OVERHEAD: usize = 256;

/// Bytes counted per table an entry watches (a counter reference and the value seen).
pub const PER_TABLE: usize = 24;

/// One stored response.
#[derive(Debug)]
struct Entry {
    key: OwnedKey,
    response: Bytes,
    snapshot: GenSnapshot,
    expires_at: Instant,
    ttl: Duration,
    weight: u32,
}

/// Each entry lives for its own TTL, from its insertion; an update starts it again.
struct PerEntryTtl;

impl Expiry<u128, Arc<Entry>> for PerEntryTtl {
    fn expire_after_create(&self, _: &u128, entry: &Arc<Entry>, _: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }

    fn expire_after_update(&self, _: &u128, entry: &Arc<Entry>, _: Instant, _: Option<Duration>) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// Keys are already 128-bit SipHashes: moka's map uses them as they are.
#[derive(Debug, Clone, Copy, Default)]
struct PassThrough;

impl BuildHasher for PassThrough {
    type Hasher = PassThroughHasher;
    fn build_hasher(&self) -> PassThroughHasher {
        PassThroughHasher(0)
    }
}

/// Folds the key's two halves; any other input is mixed in byte by byte (not used by keys).
struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u128(&mut self, v: u128) {
        self.0 ^= (v as u64) ^ ((v >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The result cache of a process: shared by every session (`&self` everywhere).
pub struct ResultCache {
    entries: Cache<u128, Arc<Entry>, PassThrough>,
    seed: KeySeed,
    settings: CacheSettings,
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
}

impl std::fmt::Debug for ResultCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultCache").field("settings", &self.settings).field("stats", &self.counters()).finish()
    }
}

impl ResultCache {
    /// An empty cache bounded by `settings.max_memory` bytes.
    pub fn new(settings: CacheSettings) -> Self {
        let entries = Cache::builder()
            .max_capacity(settings.max_memory)
            .weigher(|_: &u128, e: &Arc<Entry>| e.weight)
            .expire_after(PerEntryTtl)
            .build_with_hasher(PassThrough);
        Self {
            entries,
            seed: KeySeed::default(),
            settings,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
        }
    }

    /// Its settings.
    pub fn settings(&self) -> &CacheSettings {
        &self.settings
    }

    /// The key of a session (see [`SessionKey::new`]); compute it at login and again whenever
    /// a setting changes.
    pub fn session_key<'a>(
        &self,
        database: &str,
        server_user: &str,
        client_user: &str,
        settings: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> SessionKey {
        SessionKey::new(&self.seed, database, server_user, client_user, settings)
    }

    /// The key of `request` in `session`: one hash of the request's bytes, no allocation.
    pub fn key<'a>(&self, session: &'a SessionKey, request: Request<'a>) -> CacheKey<'a> {
        CacheKey::new(&self.seed, session, request)
    }

    /// The stored response to `key`, if there is one with exactly this key, alive at `now`,
    /// whose tables were not written since its read began. Counts a hit or a miss; a stale
    /// entry found is removed and counted as an invalidation.
    pub fn get(&self, key: &CacheKey<'_>, now: Instant) -> Option<Bytes> {
        let found = self.entries.get(&key.hash()).filter(|e| e.key.matches(key) && now < e.expires_at);
        match found {
            Some(e) if e.snapshot.is_current() => {
                self.hits.fetch_add(1, Relaxed);
                Some(e.response.clone())
            }
            Some(stale) => {
                self.discard(key.hash(), &stale);
                self.misses.fetch_add(1, Relaxed);
                None
            }
            None => {
                self.misses.fetch_add(1, Relaxed);
                None
            }
        }
    }

    /// Stores `response` to `key`, read under `snapshot` (taken before the read was sent), for
    /// `ttl` from `now`.
    ///
    /// # Errors
    ///
    /// Nothing is stored, and the caller just goes on, when:
    /// - [`Error::StaleSnapshot`]: a commit bumped one of the read's tables since the snapshot
    ///   (the read raced it and may predate it);
    /// - [`Error::TooLarge`]: the response is over `max_result_bytes`;
    /// - [`Error::ZeroTtl`]: `ttl` is zero.
    pub fn insert(
        &self,
        key: &CacheKey<'_>,
        snapshot: GenSnapshot,
        response: Bytes,
        ttl: Duration,
        now: Instant,
    ) -> Result<(), Error> {
        if ttl.is_zero() {
            return Err(Error::ZeroTtl);
        }
        if response.len() > self.settings.max_result_bytes {
            return Err(Error::TooLarge { bytes: response.len(), max: self.settings.max_result_bytes });
        }
        if !snapshot.is_current() {
            return Err(Error::StaleSnapshot);
        }
        let weight = ENTRY_OVERHEAD + key.stored_len() + response.len() + PER_TABLE * snapshot.tables();
        let entry = Entry {
            key: key.to_owned_key(),
            response,
            snapshot,
            expires_at: now + ttl,
            ttl,
            weight: u32::try_from(weight).unwrap_or(u32::MAX),
        };
        self.entries.insert(key.hash(), Arc::new(entry));
        Ok(())
    }

    /// Drops every entry; returns how many there were.
    pub fn clear(&self) -> u64 {
        self.entries.run_pending_tasks();
        let n = self.entries.entry_count();
        self.entries.invalidate_all();
        self.entries.run_pending_tasks();
        n
    }

    /// Its counters now (entries and bytes after moka's pending maintenance has run).
    pub fn stats(&self) -> CacheStats {
        self.entries.run_pending_tasks();
        self.counters()
    }

    fn counters(&self) -> CacheStats {
        CacheStats {
            entries: self.entries.entry_count(),
            bytes: self.entries.weighted_size(),
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            invalidations: self.invalidations.load(Relaxed),
            backend: None,
        }
    }

    /// Removes `stale` if it is still the entry under `hash` (a fresh fill may have replaced it).
    fn discard(&self, hash: u128, stale: &Arc<Entry>) {
        let mut removed = false;
        self.entries.entry(hash).and_compute_with(|current| match current {
            Some(e) if Arc::ptr_eq(e.value(), stale) => {
                removed = true;
                Op::Remove
            }
            _ => Op::Nop,
        });
        if removed {
            self.invalidations.fetch_add(1, Relaxed);
        }
    }
}

impl CacheReport for ResultCache {
    fn stats(&self) -> CacheStats {
        ResultCache::stats(self)
    }

    fn clear(&self) -> u64 {
        ResultCache::clear(self)
    }
}
