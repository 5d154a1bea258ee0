//! Read/write routing: decides, without IO, where a transaction runs.
//!
//! - [`classify`]: what a statement does (read, read-only transaction, anything else), parsed
//!   once per distinct query text with a real SQL parser and cached;
//! - [`hint`]: `/* sluice:... */` comments that override the classification or steer the cache;
//! - [`lag`]: how far behind the primary a replica is (pure: samples in, lag and health out);
//! - [`replica`]: the shared, lock-free status of each replica and the choice among them;
//! - [`monitor`]: the one IO part, a task per replica that polls the primary and the replica.

// pub mod classify; (the statement classifier is not in yet)
// pub mod hint; (nor are routing hints)
pub mod lag;
pub mod monitor;
pub mod replica;

/// Where a transaction runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// The primary: writes, and reads that cannot go elsewhere.
    Primary,
    /// A streaming replica.
    Replica,
}
