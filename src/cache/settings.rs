//! `[cache]` as the cache uses it: parsed once, typed, with the sizes in bytes.

use super::Error;
use crate::config::CacheSection;
use std::time::Duration;

/// Which reads are cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// Every eligible read, unless it says `/* sluice:nocache */`.
    All,
    /// Only eligible reads that say `/* sluice:cache */`.
    Hint,
}

/// The settings of the result cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    /// Which reads are cached.
    pub mode: CacheMode,
    /// Lifetime of an entry whose hint gives none.
    pub ttl: Duration,
    /// Bound of the store, in bytes (responses, keys and bookkeeping).
    pub max_memory: u64,
    /// Largest response stored, in bytes.
    pub max_result_bytes: usize,
}

impl CacheSettings {
    /// The settings of `[cache]` (whether it is enabled, and its backend, are the caller's).
    ///
    /// # Errors
    ///
    /// [`Error::UnknownMode`] when `mode` is neither `all` nor `hint`.
    pub fn from_config(section: &CacheSection) -> Result<Self, Error> {
        let mode = match section.mode.as_str() {
            "all" => CacheMode::All,
            "hint" => CacheMode::Hint,
            other => return Err(Error::UnknownMode { mode: other.to_owned() }),
        };
        Ok(Self {
            mode,
            ttl: section.ttl.0,
            max_memory: section.max_memory.0,
            max_result_bytes: usize::try_from(section.max_result_bytes.0).unwrap_or(usize::MAX),
        })
    }
}

impl Default for CacheSettings {
    /// The defaults of `[cache]`.
    fn default() -> Self {
        Self::from_config(&CacheSection::default()).unwrap_or(Self {
            mode: CacheMode::All,
            ttl: Duration::from_secs(5),
            max_memory: 256 << 20,
            max_result_bytes: 1 << 20,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_of_the_section_become_typed_settings() {
        let s = CacheSettings::default();
        assert_eq!(s.mode, CacheMode::All);
        assert_eq!(s.ttl, Duration::from_secs(5));
        assert_eq!(s.max_memory, 256 << 20);
        assert_eq!(s.max_result_bytes, 1 << 20);
    }

    #[test]
    fn an_unknown_mode_is_an_error_naming_it() {
        let section = CacheSection { mode: "sometimes".into(), ..CacheSection::default() };
        assert_eq!(CacheSettings::from_config(&section), Err(Error::UnknownMode { mode: "sometimes".into() }));
        let hint = CacheSection { mode: "hint".into(), ..CacheSection::default() };
        assert_eq!(CacheSettings::from_config(&hint).map(|s| s.mode), Ok(CacheMode::Hint));
    }
}
