//! The Redis backend (`[cache] backend = "redis"`): entries and generation counters kept in one
//! Redis shared by every sluice instance pointed at it, so that a commit through any instance
//! invalidates entries for all of them.
//!
//! # Keys
//!
//! - `sluice:epoch`: one counter for everything; bumped when an instance comes back after losing
//!   Redis (writes it made meanwhile could not be recorded) and by `CACHE CLEAR`;
//! - `sluice:g:<database>\0*`: a database's counter for writes to unknown tables;
//! - `sluice:g:<database>\0t:<bare name>`: a table's counter (bare names, as [`super::generations`]);
//! - `sluice:e:<sha-256 of the key's parts>`: an entry, with the counters' values its read began
//!   under, then the response; it expires after its TTL.
//!
//! # Counters never repeat a value
//!
//! A counter that does not exist (never used, expired after [`COUNTER_TTL`], evicted, or lost
//! with a restarted Redis) is created with a fresh random value rather than zero, and a bump
//! increments it. So an entry stored under a counter's old value never matches its new one:
//! losing keys can only cost hits, whatever Redis's eviction policy or persistence.
//!
//! # One round trip per lookup
//!
//! A lookup reads the entry (if any) and the current values of the epoch, the database counter
//! and its tables' counters with one MGET; only when a counter does not exist yet does it run a
//! script that creates the missing ones and returns the same. A hit is an entry whose values equal
//! the current ones; on a miss the values are the snapshot its fill is stored under. A fill is
//! stored by another script only if the counters still have the snapshot's values (a commit
//! bumped since would make it stale), and a lookup rechecks them anyway.
//!
//! # Outages
//!
//! Any failure or timeout marks the backend down: lookups bypass the cache, fills are not
//! stored, bumps are skipped (and counted as lost), one warning is logged. A probe task pings
//! Redis until it answers, then bumps the epoch — every entry stored before is ignored from then
//! on, since writes during the outage could not bump their tables — and only then marks the
//! backend up. A bump skipped while the probe is finishing makes it bump the epoch again before
//! anything is served (see [`State`]).

use super::generations::bare_relation;
use super::key::{Request, SessionKey};
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sha2::{Digest, Sha256};
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How long an unused counter lives (a bump keeps its expiry; an expired counter comes back
/// with a fresh value, which only costs hits).
pub const COUNTER_TTL: Duration = Duration::from_secs(24 * 3600);

/// Pause between probes while Redis is unreachable.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// Prefix of every key.
const PREFIX: &str = "sluice:";

/// Version byte of a stored entry's layout.
const ENTRY_VERSION: u8 = 1;

/// Returns the entry (or "") and each counter's value, creating missing counters with the fresh
/// value given for them. KEYS: entry, counters...; ARGV: fresh values, TTL of counters (ms).
const LOOKUP: &str = r"
local out = {redis.call('GET', KEYS[1]) or ''}
for i = 2, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if not v then
    v = ARGV[i - 1]
    redis.call('SET', KEYS[i], v, 'PX', ARGV[#KEYS])
  end
  out[i] = v
end
return out
";

/// Stores an entry if every counter still has the value given. KEYS: entry, counters...;
/// ARGV: the entry, its TTL (ms), then the expected values.
const STORE: &str = r"
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) ~= ARGV[i + 1] then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

/// Increments each counter, or creates it with the fresh value given. KEYS: counters; ARGV:
/// fresh values, TTL of created counters (ms).
const BUMP: &str = r"
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('INCR', KEYS[i])
  else
    redis.call('SET', KEYS[i], ARGV[i], 'PX', ARGV[#KEYS + 1])
  end
end
return #KEYS
";

/// What can go wrong talking to Redis. None of it reaches a client: the cache is bypassed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// Redis refused or failed the operation, or the connection is gone.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No answer within `cache.redis_timeout`.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// The backend is down; nothing was sent.
    #[error("the redis cache backend is down")]
    Down,
    /// Redis answered something the scripts never return.
    #[error("unexpected answer from redis")]
    Unexpected,
}

/// Where an entry lives in Redis: the SHA-256 of everything its response depends on. Unlike
/// the in-memory key it has no per-process seed (every instance must find the same entry), and
/// being collision-resistant it needs no copy of the parts to verify a hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteKey([u8; 32]);

impl RemoteKey {
    /// The key of `request` in `session`.
    pub fn new(session: &SessionKey, request: Request<'_>) -> Self {
        let (text, bind, shape, kind) = request.parts();
        let mut h = Sha256::new();
        for part in [&session.parts()[..], kind, shape, bind, text] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        Self(h.finalize().into())
    }

    fn redis_key(&self) -> Vec<u8> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut k = Vec::with_capacity(PREFIX.len() + 2 + 64);
        k.extend_from_slice(PREFIX.as_bytes());
        k.extend_from_slice(b"e:");
        for b in self.0 {
            k.push(HEX[usize::from(b >> 4)]);
            k.push(HEX[usize::from(b & 15)]);
        }
        k
    }
}

/// The counters a read depends on, and their values when it began.
#[derive(Debug, Clone)]
pub struct RemoteSnapshot {
    /// Counter keys: the epoch, the database's, then one per table.
    counters: Arc<[Vec<u8>]>,
    /// Their values (decimal, as Redis keeps them).
    values: Vec<Vec<u8>>,
}

/// What a lookup found.
#[derive(Debug)]
pub enum Found {
    /// A current entry: its response.
    Hit(Bytes),
    /// None (or a stale one): fill under this snapshot.
    Miss(RemoteSnapshot),
}

/// Up/down and bumps lost while down, in one word so that the probe can mark the backend up
/// only if no bump was skipped since it bumped the epoch: bit 0 is "up", the rest counts bumps
/// skipped (or failed).
#[derive(Debug)]
struct State(AtomicU64);

const UP: u64 = 1;
const LOST: u64 = 2;

impl State {
    fn is_up(&self) -> bool {
        self.0.load(Acquire) & UP != 0
    }

    /// Marks it down (a bump failed or was skipped, or anything else failed); returns whether
    /// it was up.
    fn down(&self, lost_bump: bool) -> bool {
        let add = if lost_bump { LOST } else { 0 };
        let mut cur = self.0.load(Acquire);
        loop {
            let next = (cur & !UP).wrapping_add(add);
            match self.0.compare_exchange_weak(cur, next, AcqRel, Acquire) {
                Ok(_) => return cur & UP != 0,
                Err(actual) => cur = actual,
            }
        }
    }
}

/// The Redis backend of a running sluice, shared by its sessions.
pub struct RemoteCache {
    client: redis::Client,
    conn: arc_swap::ArcSwap<ConnectionManager>,
    timeout: Duration,
    state: State,
    probing: AtomicBool,
    lookup: redis::Script,
    store: redis::Script,
    bump: redis::Script,
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
    errors: AtomicU64,
}

impl std::fmt::Debug for RemoteCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteCache").field("up", &self.state.is_up()).field("timeout", &self.timeout).finish()
    }
}

impl RemoteCache {
    /// A backend for the Redis at `url`, each operation bounded by `timeout`. It starts down
    /// and a probe connects it (bumping the epoch first: writes this instance made before it
    /// restarted may never have been recorded). Call from within the tokio runtime.
    ///
    /// # Errors
    ///
    /// [`RemoteError::Redis`] if `url` is not a Redis URL.
    pub fn start(url: &str, timeout: Duration) -> Result<Arc<Self>, RemoteError> {
        let client = redis::Client::open(url)?;
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_config(timeout))?;
        let me = Arc::new(Self {
            client,
            conn: arc_swap::ArcSwap::from_pointee(conn),
            timeout,
            state: State(AtomicU64::new(LOST)),
            probing: AtomicBool::new(false),
            lookup: redis::Script::new(LOOKUP),
            store: redis::Script::new(STORE),
            bump: redis::Script::new(BUMP),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        });
        me.start_probe();
        Ok(me)
    }

    /// Whether lookups may use Redis now.
    pub fn is_up(&self) -> bool {
        self.state.is_up()
    }

    /// Operations that failed or timed out since start.
    pub fn errors(&self) -> u64 {
        self.errors.load(Relaxed)
    }

    /// (hits, misses, invalidations) since start.
    pub fn counters(&self) -> (u64, u64, u64) {
        (self.hits.load(Relaxed), self.misses.load(Relaxed), self.invalidations.load(Relaxed))
    }

    /// The entry for `key` of a read of `tables` in `database`, if current; else the snapshot
    /// to fill it under. One round trip.
    ///
    /// # Errors
    ///
    /// Any failure (the backend is then marked down): the caller bypasses the cache.
    pub async fn lookup<S: AsRef<str>>(
        self: &Arc<Self>,
        database: &str,
        key: &RemoteKey,
        tables: &[S],
    ) -> Result<Found, RemoteError> {
        if !self.is_up() {
            return Err(RemoteError::Down);
        }
        let counters: Arc<[Vec<u8>]> = counter_keys(database, tables).into();
        let entry_key = key.redis_key();
        let mut conn = self.connection();
        // Plain reads first (no script runs on a hit); a missing counter needs the script.
        let mut get = redis::cmd("MGET");
        get.arg(entry_key.as_slice());
        for c in counters.iter() {
            get.arg(c.as_slice());
        }
        let read: Vec<Option<Vec<u8>>> = self.bounded(get.query_async(&mut conn)).await?;
        let answer: Vec<Vec<u8>> = if read.len() == counters.len() + 1 && read[1..].iter().all(Option::is_some) {
            read.into_iter().map(Option::unwrap_or_default).collect()
        } else {
            let mut inv = self.lookup.key(entry_key);
            for c in counters.iter() {
                inv.key(c.as_slice());
            }
            for _ in counters.iter() {
                inv.arg(fresh());
            }
            inv.arg(COUNTER_TTL.as_millis() as u64);
            self.bounded(async { inv.invoke_async(&mut conn).await }).await?
        };
        let Some((entry, values)) = answer.split_first() else { return self.failed(RemoteError::Unexpected) };
        if values.len() != counters.len() {
            return self.failed(RemoteError::Unexpected);
        }
        if !entry.is_empty() {
            if let Some(response) = current_response(entry, values) {
                self.hits.fetch_add(1, Relaxed);
                return Ok(Found::Hit(Bytes::copy_from_slice(response)));
            }
            self.invalidations.fetch_add(1, Relaxed);
        }
        self.misses.fetch_add(1, Relaxed);
        Ok(Found::Miss(RemoteSnapshot { counters, values: values.to_vec() }))
    }

    /// Stores `response` for `key` under `snapshot`, for `ttl`, if no counter of the snapshot
    /// changed since. Returns whether it was stored.
    ///
    /// # Errors
    ///
    /// Any failure (the backend is then marked down).
    pub async fn store(
        self: &Arc<Self>,
        key: &RemoteKey,
        snapshot: &RemoteSnapshot,
        response: &[u8],
        ttl: Duration,
    ) -> Result<bool, RemoteError> {
        if !self.is_up() {
            return Err(RemoteError::Down);
        }
        let mut entry = Vec::with_capacity(16 + snapshot.values.iter().map(|v| v.len() + 1).sum::<usize>() + response.len());
        entry.push(ENTRY_VERSION);
        entry.extend_from_slice(&(snapshot.values.len() as u32).to_le_bytes());
        for v in &snapshot.values {
            entry.push(v.len() as u8);
            entry.extend_from_slice(v);
        }
        entry.extend_from_slice(response);
        let mut inv = self.store.key(key.redis_key());
        for c in snapshot.counters.iter() {
            inv.key(c.as_slice());
        }
        inv.arg(entry).arg(ttl.as_millis().max(1) as u64);
        for v in &snapshot.values {
            inv.arg(v.as_slice());
        }
        let mut conn = self.connection();
        let stored: i64 = self.bounded(async { inv.invoke_async(&mut conn).await }).await?;
        Ok(stored == 1)
    }

    /// A commit wrote `tables` of `database` (`everything`: tables it cannot name): their
    /// counters are bumped, so that no instance serves an entry that read them. Never fails:
    /// a bump that cannot be made marks the backend down, and the epoch is bumped before it is
    /// used again.
    pub async fn bump<S: AsRef<str>>(self: &Arc<Self>, database: &str, tables: &[S], everything: bool) {
        let mut keys = Vec::with_capacity(tables.len() + 1);
        if everything {
            keys.push(database_key(database));
        } else {
            keys.extend(tables.iter().map(|t| table_key(database, bare_relation(t.as_ref()))));
        }
        self.bump_keys(keys).await;
    }

    /// Every entry of every database stops being served (`CACHE CLEAR`).
    pub async fn bump_epoch(self: &Arc<Self>) {
        self.bump_keys(vec![epoch_key()]).await;
    }

    async fn bump_keys(self: &Arc<Self>, keys: Vec<Vec<u8>>) {
        if keys.is_empty() {
            return;
        }
        if !self.is_up() {
            // Recorded as lost, atomically with "down": the probe bumps the epoch after it.
            self.mark_down(true, None);
            return;
        }
        if let Err(e) = self.send_bump(&keys).await {
            self.mark_down(true, Some(&e));
        }
    }

    async fn send_bump(&self, keys: &[Vec<u8>]) -> Result<(), RemoteError> {
        let mut inv = self.bump.prepare_invoke();
        for k in keys {
            inv.key(k.as_slice());
        }
        for _ in keys {
            inv.arg(fresh());
        }
        inv.arg(COUNTER_TTL.as_millis() as u64);
        let mut conn = self.connection();
        let fut = async { inv.invoke_async::<i64>(&mut conn).await };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(RemoteError::Timeout(self.timeout)),
        }
    }

    fn connection(&self) -> ConnectionManager {
        (**self.conn.load()).clone()
    }

    /// Runs `op` within the timeout; a failure marks the backend down.
    async fn bounded<T>(
        self: &Arc<Self>,
        op: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RemoteError> {
        match tokio::time::timeout(self.timeout, op).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => self.failed(e.into()),
            Err(_) => self.failed(RemoteError::Timeout(self.timeout)),
        }
    }

    fn failed<T>(self: &Arc<Self>, e: RemoteError) -> Result<T, RemoteError> {
        self.mark_down(false, Some(&e));
        Err(e)
    }

    /// Marks the backend down; the first to do so logs it and starts the probe.
    fn mark_down(self: &Arc<Self>, lost_bump: bool, error: Option<&RemoteError>) {
        if error.is_some() {
            self.errors.fetch_add(1, Relaxed);
        }
        if self.state.down(lost_bump) {
            match error {
                Some(e) => tracing::warn!(error = %e, "redis cache backend unreachable: reads bypass the cache until it is back"),
                None => tracing::warn!("redis cache backend down: reads bypass the cache until it is back"),
            }
            self.start_probe();
        }
    }

    fn start_probe(self: &Arc<Self>) {
        if self.probing.swap(true, AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(probe(weak));
    }

    /// One recovery attempt: a new connection, then the epoch bumped after every skipped
    /// bump. Returns whether the backend is up.
    async fn recover(&self) -> bool {
        let connect = self.client.get_connection_manager_with_config(manager_config(self.timeout));
        let conn = match tokio::time::timeout(self.timeout.max(Duration::from_millis(200)), connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "redis cache backend still unreachable");
                return false;
            }
            Err(_) => return false,
        };
        self.conn.store(Arc::new(conn));
        loop {
            let seen = self.state.0.load(Acquire);
            if seen & UP != 0 {
                return true;
            }
            if let Err(e) = self.send_bump(&[epoch_key()]).await {
                tracing::debug!(error = %e, "redis cache backend: epoch not bumped yet");
                return false;
            }
            // Up only if no bump was skipped since `seen`: those would postdate the epoch bump.
            if self.state.0.compare_exchange(seen, seen | UP, AcqRel, Acquire).is_ok() {
                tracing::info!("redis cache backend reachable: the cache is used again (entries from before are ignored)");
                return true;
            }
        }
    }
}

/// Probes until the backend is up (or dropped).
async fn probe(weak: Weak<RemoteCache>) {
    let mut first = true;
    loop {
        if !first {
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
        first = false;
        let Some(me) = weak.upgrade() else { return };
        if me.recover().await {
            me.probing.store(false, std::sync::atomic::Ordering::Release);
            // Marked down again before the flag was cleared: that caller did not start a probe.
            if me.state.is_up() || me.probing.swap(true, AcqRel) {
                return;
            }
        }
    }
}

fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_response_timeout(Some(timeout))
        .set_connection_timeout(Some(timeout.max(Duration::from_millis(200))))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
}

/// A fresh value for a counter being created: random, far from overflow.
fn fresh() -> u64 {
    rand::random::<u64>() >> 4
}

fn epoch_key() -> Vec<u8> {
    format!("{PREFIX}epoch").into_bytes()
}

fn database_key(database: &str) -> Vec<u8> {
    format!("{PREFIX}g:{database}\0*").into_bytes()
}

fn table_key(database: &str, bare: &str) -> Vec<u8> {
    format!("{PREFIX}g:{database}\0t:{bare}").into_bytes()
}

/// The counters a read of `tables` depends on: epoch, database, tables.
fn counter_keys<S: AsRef<str>>(database: &str, tables: &[S]) -> Vec<Vec<u8>> {
    let mut keys = Vec::with_capacity(tables.len() + 2);
    keys.push(epoch_key());
    keys.push(database_key(database));
    keys.extend(tables.iter().map(|t| table_key(database, bare_relation(t.as_ref()))));
    keys
}

/// The response in a stored entry, if the values it was stored under are `current`.
fn current_response<'a>(entry: &'a [u8], current: &[Vec<u8>]) -> Option<&'a [u8]> {
    let (&version, rest) = entry.split_first()?;
    if version != ENTRY_VERSION || rest.len() < 4 {
        return None;
    }
    let (n, mut rest) = rest.split_at(4);
    let n = u32::from_le_bytes(n.try_into().ok()?) as usize;
    if n != current.len() {
        return None;
    }
    for want in current {
        let (&len, tail) = rest.split_first()?;
        let len = usize::from(len);
        if tail.len() < len || tail[..len] != want[..] {
            return None;
        }
        rest = &tail[len..];
    }
    Some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::key::KeySeed;

    fn entry(values: &[&str], response: &[u8]) -> Vec<u8> {
        let mut e = vec![ENTRY_VERSION];
        e.extend_from_slice(&(values.len() as u32).to_le_bytes());
        for v in values {
            e.push(v.len() as u8);
            e.extend_from_slice(v.as_bytes());
        }
        e.extend_from_slice(response);
        e
    }

    fn vals(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn an_entry_is_served_only_under_the_values_it_was_stored_with() {
        let e = entry(&["7", "1", "42"], b"response");
        assert_eq!(current_response(&e, &vals(&["7", "1", "42"])), Some(&b"response"[..]));
        assert_eq!(current_response(&e, &vals(&["8", "1", "42"])), None, "epoch bumped");
        assert_eq!(current_response(&e, &vals(&["7", "1", "43"])), None, "table bumped");
        assert_eq!(current_response(&e, &vals(&["7", "1"])), None, "other tables");
        assert_eq!(current_response(b"", &vals(&["7"])), None);
        assert_eq!(current_response(&e[..8], &vals(&["7", "1", "42"])), None, "cut short");
    }

    #[test]
    fn remote_keys_do_not_depend_on_the_process_and_keep_parts_apart() {
        let (a, b) = (KeySeed::default(), KeySeed::default());
        let sa = SessionKey::new(&a, "app", "u", "u", []);
        let sb = SessionKey::new(&b, "app", "u", "u", []);
        let q = Request::Simple { text: b"select 1" };
        assert_eq!(RemoteKey::new(&sa, q), RemoteKey::new(&sb, q));
        assert_ne!(RemoteKey::new(&sa, q), RemoteKey::new(&sa, Request::Simple { text: b"select 2" }));
        let other = SessionKey::new(&a, "app", "v", "u", []);
        assert_ne!(RemoteKey::new(&sa, q), RemoteKey::new(&other, q));
        assert!(RemoteKey::new(&sa, q).redis_key().starts_with(b"sluice:e:"));
    }

    #[test]
    fn counters_are_keyed_by_database_and_bare_name() {
        let keys = counter_keys("app", &["public.t", "u"]);
        assert_eq!(keys[0], b"sluice:epoch");
        assert_eq!(keys[1], b"sluice:g:app\0*");
        assert_eq!(keys[2], b"sluice:g:app\0t:t");
        assert_eq!(keys[3], b"sluice:g:app\0t:u");
    }

    #[test]
    fn a_bump_skipped_while_down_keeps_the_backend_down_until_recounted() {
        let s = State(AtomicU64::new(UP));
        assert!(s.down(false));
        let seen = s.0.load(Acquire);
        assert!(!s.down(true), "already down");
        assert!(s.0.compare_exchange(seen, seen | UP, AcqRel, Acquire).is_err(), "a skipped bump voids the probe's round");
        let seen = s.0.load(Acquire);
        assert!(s.0.compare_exchange(seen, seen | UP, AcqRel, Acquire).is_ok());
        assert!(s.is_up());
    }
}
