//! The cache as the process shares it: the store, replaced whole when `[cache]` is reloaded
//! with other settings, and the generations, which live as long as the process (a write must
//! invalidate whatever store is current, including one created after it began). With
//! `backend = "redis"` entries and generations live in Redis ([`RemoteCache`]); the local store
//! then only holds the settings and key seed, and the local generations still follow this
//! instance's writes (the relation kinds learned are keyed by them).

use super::relations::RelationKinds;
use super::remote::RemoteCache;
use super::{CacheSettings, Generations, ResultCache};
use dashmap::DashMap;
use crate::metrics::cache::{CacheReport, CacheStats};
use arc_swap::ArcSwap;
use std::sync::Arc;

/// The result cache of a running sluice.
#[derive(Debug)]
pub struct CacheHandle {
    store: ArcSwap<ResultCache>,
    /// Per-table generations, by server database.
    pub generations: Generations,
    /// What kind each relation is, by server database.
    relations: DashMap<Box<str>, Arc<RelationKinds>>,
    /// The shared backend, with `backend = "redis"`.
    remote: Option<Arc<RemoteCache>>,
}

impl CacheHandle {
    /// An empty cache with `settings`.
    pub fn new(settings: CacheSettings) -> Self {
        Self {
            store: ArcSwap::from_pointee(ResultCache::new(settings)),
            generations: Generations::default(),
            relations: DashMap::new(),
            remote: None,
        }
    }

    /// A cache with `settings` whose entries and generations live in `remote`.
    pub fn with_remote(settings: CacheSettings, remote: Arc<RemoteCache>) -> Self {
        Self { remote: Some(remote), ..Self::new(settings) }
    }

    /// The shared backend, if entries live in Redis.
    pub fn remote(&self) -> Option<&Arc<RemoteCache>> {
        self.remote.as_ref()
    }

    /// Writes to `tables` of the server database `database` (the generations key,
    /// `primary/dbname`) committed, learned from outside the sessions: entries that read them
    /// stop being served, in this process and, with the Redis backend, in every instance
    /// sharing it. Names may be qualified; they count by their bare relation name, as writes
    /// through sluice do.
    pub async fn invalidate_tables(&self, database: &str, tables: &[&str]) {
        self.generations.database(database).bump(tables);
        if let Some(remote) = &self.remote {
            remote.bump(database, tables, false).await;
        }
    }

    /// Any table of the server database `database` may have changed: none of its entries is
    /// served any more.
    pub async fn invalidate_all(&self, database: &str) {
        self.generations.database(database).bump_all();
        if let Some(remote) = &self.remote {
            remote.bump::<&str>(database, &[], true).await;
        }
    }

    /// The relation kinds of a server database.
    pub fn relations(&self, database: &str) -> Arc<RelationKinds> {
        if let Some(r) = self.relations.get(database) {
            return r.clone();
        }
        self.relations.entry(database.into()).or_default().clone()
    }

    /// The current store.
    pub fn store(&self) -> arc_swap::Guard<Arc<ResultCache>> {
        self.store.load()
    }

    /// Changes to `database` may go unreported for a while (the stream that reports them is
    /// down): nothing of it is served or stored until [`resume`](Self::resume).
    pub fn suspend(&self, database: &str) {
        self.generations.database(database).suspend();
    }

    /// Changes to `database` are reported again: everything from before is dropped
    /// ([`invalidate_all`](Self::invalidate_all)) and the cache serves it again.
    pub async fn resume(&self, database: &str) {
        self.invalidate_all(database).await;
        self.generations.database(database).resume();
    }

    /// Takes new settings: an empty store replaces the current one if they differ. Returns
    /// whether it did.
    pub fn reconfigure(&self, settings: CacheSettings) -> bool {
        if *self.store.load().settings() == settings {
            return false;
        }
        self.store.store(Arc::new(ResultCache::new(settings)));
        true
    }
}

impl CacheReport for CacheHandle {
    fn stats(&self) -> CacheStats {
        let mut stats = self.store.load().stats();
        if let Some(remote) = &self.remote {
            let (hits, misses, invalidations) = remote.counters();
            stats.hits += hits;
            stats.misses += misses;
            stats.invalidations += invalidations;
            stats.backend = Some(crate::metrics::cache::BackendStats { up: remote.is_up(), errors: remote.errors() });
        }
        stats
    }

    fn clear(&self) -> u64 {
        if let Some(remote) = &self.remote {
            // Every instance's entries: the epoch they were stored under is passed.
            let remote = remote.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { remote.bump_epoch().await });
            }
        }
        self.store.load().clear()
    }
}
