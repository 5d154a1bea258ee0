//! What can go wrong in the cache: a configuration it cannot use, and the reasons a response
//! is not stored. None of them is the client's concern: a response that is not stored is
//! simply relayed.

/// The cache's errors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// `cache.mode` is neither `all` nor `hint`.
    #[error("cache.mode must be \"all\" or \"hint\", not {mode:?}")]
    UnknownMode {
        /// The value configured.
        mode: String,
    },
    /// A write to one of the read's tables committed after its snapshot was taken: the
    /// response may predate it.
    #[error("a write to a table of this read committed after the read began")]
    StaleSnapshot,
    /// The response is larger than `cache.max_result_bytes`.
    #[error("response of {bytes} bytes is over cache.max_result_bytes ({max})")]
    TooLarge {
        /// Its size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The entry would expire at once (a TTL of zero).
    #[error("a TTL of zero caches nothing")]
    ZeroTtl,
}
