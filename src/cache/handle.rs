//! The cache as the process shares it: the store, replaced whole when `[cache]` is reloaded
//! with other settings, and the generations, which live as long as the process (a write must
//! invalidate whatever store is current, including one created after it began).

use super::relations::RelationKinds;
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
}

impl CacheHandle {
    /// An empty cache with `settings`.
    pub fn new(settings: CacheSettings) -> Self {
        Self {
            store: ArcSwap::from_pointee(ResultCache::new(settings)),
            generations: Generations::default(),
            relations: DashMap::new(),
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

    /// Writes committed outside sluice changed `tables` of the server database `database`
    /// (the generations key, `primary/dbname`): entries that read one of them stop being
    /// served. Names may be qualified; they count by their bare relation name, as writes
    /// through sluice do.
    pub fn invalidate_tables(&self, database: &str, tables: &[&str]) {
        self.generations.database(database).bump(tables);
    }

    /// Anything in the server database `database` may have changed: none of its entries is
    /// served any more.
    pub fn invalidate_all(&self, database: &str) {
        self.generations.database(database).bump_all();
    }

    /// Changes to `database` may go unreported for a while (the stream that reports them is
    /// down): nothing of it is served or stored until [`resume`](Self::resume).
    pub fn suspend(&self, database: &str) {
        self.generations.database(database).suspend();
    }

    /// Changes to `database` are reported again: everything from before is dropped
    /// ([`invalidate_all`](Self::invalidate_all)) and the cache serves it again.
    pub fn resume(&self, database: &str) {
        self.invalidate_all(database);
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
        self.store.load().stats()
    }

    fn clear(&self) -> u64 {
        self.store.load().clear()
    }
}
