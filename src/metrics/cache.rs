//! What the result cache reports about itself, read by SHOW CACHE and the `sluice_cache_*`
//! metrics. The cache does not exist yet: [`NoCache`] reports zeros until it implements
//! [`CacheReport`] and [`cache_report`] returns it.

use crate::app::Shared;

/// The cache's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CacheStats {
    /// Entries held.
    pub entries: u64,
    /// Bytes held.
    pub bytes: u64,
    /// Reads answered from the cache since start.
    pub hits: u64,
    /// Cacheable reads the cache could not answer since start.
    pub misses: u64,
    /// Entries invalidated by writes since start.
    pub invalidations: u64,
}

impl CacheStats {
    /// hits / (hits + misses); zero before any cacheable read.
    pub fn hit_ratio(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

/// A result cache as the admin console and the metrics see it.
pub trait CacheReport: Send + Sync {
    /// Its counters now.
    fn stats(&self) -> CacheStats;
    /// Drops every entry (`CACHE CLEAR`); returns how many were dropped.
    fn clear(&self) -> u64;
}

/// Stands in for the cache until there is one: empty, never hit.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoCache;

impl CacheReport for NoCache {
    fn stats(&self) -> CacheStats {
        CacheStats::default()
    }
    fn clear(&self) -> u64 {
        0
    }
}

/// The running cache's report. The one place to change when the cache is added to [`Shared`].
pub fn cache_report(_ctx: &Shared) -> &dyn CacheReport {
    &NoCache
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_ratio_is_zero_without_reads() {
        assert_eq!(CacheStats::default().hit_ratio(), 0.0);
        let s = CacheStats { hits: 3, misses: 1, ..CacheStats::default() };
        assert_eq!(s.hit_ratio(), 0.75);
        assert_eq!(NoCache.stats(), CacheStats::default());
        assert_eq!(NoCache.clear(), 0);
    }
}
