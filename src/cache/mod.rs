//! The result cache: whole responses to eligible autocommit reads, kept for a TTL and never
//! served once a write through sluice may have changed them. Decides and stores without IO;
//! the session captures responses and reports commits.
//!
//! - [`settings`]: `[cache]` turned into typed settings ([`CacheSettings`], [`CacheMode`]);
//! - [`eligibility`]: whether a classified read may be cached, and for how long;
//! - [`key`]: what a response depends on (database, roles, session settings, statement text,
//!   bound parameters), hashed to 128 bits and kept whole in the entry to verify a hit;
//! - [`generations`]: per-table generation counters; invalidation bumps a counter per table
//!   written, so its cost grows with the tables a transaction wrote, never with the entries;
//! - [`writes`]: [`WriteSet`], the tables a transaction wrote, bumped at its commit and
//!   forgotten at its rollback;
//! - [`capture`]: the bytes of a response, gathered while they are relayed, within a size cap;
//! - [`handle`]: [`CacheHandle`], the store and generations as the process shares them;
//! - [`logical`]: invalidation from the primary's logical replication stream, for writes that
//!   do not pass through sluice (`invalidation_source = "logical"`);
//! - [`remote`]: [`RemoteCache`], the Redis backend: entries and generations shared by every
//!   instance pointed at one Redis, bypassed while it is unreachable;
//! - [`relations`]: which relations reads may be cached over (tables, not views), learned
//!   from the server's catalog;
//! - [`store`]: [`ResultCache`], the bounded store (moka, TinyLFU, weighed in bytes, an expiry
//!   per entry) that checks generations before it serves;
//! - [`volatility`]: what in a statement's text makes its result depend on more than its
//!   tables (clock, random, session, user functions), read lexically.
//!
//! # How a read and a write meet
//!
//! A read takes a [`GenSnapshot`] of its tables' generations *before* it is sent to a server,
//! and its response is stored with that snapshot. A commit bumps the generations of the tables
//! it wrote *after* the server reported it (its ReadyForQuery) and before the client hears of
//! it. So an entry is served only while none of its tables was bumped since its read began; a
//! read that began before a commit and finished after it is refused at store time (or, if the
//! commit lands during the store itself, stored but never served).
//!
//! # Fills from replicas
//!
//! A read that ran on a replica may return rows older than a commit already bumped: stored
//! under the current generations, they would be served to everyone, the writer included. So a
//! replica's response may be stored only if that replica had replayed every commit bumped
//! before the snapshot: its replay position, read after the snapshot was taken, at or past the
//! database's last commit position. For that position to cover every bump, bump once more
//! when a commit's position is learned (a second bump is cheap, and invalidates whatever was
//! filled from a replica in between). Responses from the primary need no such check.
//!
//! # What this cannot see
//!
//! Invalidation follows writes *through sluice* to the tables their statements name. Writes
//! made elsewhere (other clients of the database, cron jobs, logical replication), and rows
//! changed indirectly (triggers, rules, `ON DELETE CASCADE`, a view over a written table, a
//! partition written by its own name while the parent is read) are bounded only by the TTL,
//! unless the integrator declares them with [`DatabaseGenerations::add_dependent`].
//!
//! With `invalidation_source = "logical"` ([`logical`]), the primary's replication stream
//! reports every row change, wherever it came from, by the table it changed: writes made
//! elsewhere, triggers, rules and cascades are then seen too (a view, or a parent read while
//! its partition is written, still is not: the stream names the table, and the leaf
//! partition).

pub mod capture;
pub mod eligibility;
mod error;
pub mod generations;
pub mod handle;
pub mod key;
pub mod logical;
pub mod relations;
pub mod remote;
pub mod settings;
pub mod store;
#[cfg(test)]
mod tests;
pub mod volatility;
pub mod writes;

pub use capture::Capture;
pub use eligibility::{check_bind, decide, Bypass, ReadContext, Verdict};
pub use error::Error;
pub use generations::{DatabaseGenerations, GenSnapshot, Generations};
pub use handle::CacheHandle;
pub use key::{bind_parameters, CacheKey, Request, SessionKey};
pub use settings::{CacheMode, CacheSettings};
pub use store::ResultCache;
pub use remote::{RemoteCache, RemoteKey};
pub use writes::{BumpSink, WriteSet};
