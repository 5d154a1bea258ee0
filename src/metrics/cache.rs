//! What the result cache reports about itself, read by SHOW CACHE and the `sluice_cache_*`
//! metrics. With the cache off, [`NoCache`] reports zeros.

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
    /// The shared backend's state, with `backend = "redis"`.
    pub backend: Option<BackendStats>,
}

/// The state of a shared cache backend (Redis).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// Whether the cache uses it now (else reads bypass the cache).
    pub up: bool,
    /// Operations that failed or timed out since start.
    pub errors: u64,
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

/// Stands in for the cache when it is off: empty, never hit.
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

/// The running cache's report.
pub fn cache_report(ctx: &Shared) -> &dyn CacheReport {
    match &ctx.cache {
        Some(cache) => &**cache,
        None => &NoCache,
    }
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
