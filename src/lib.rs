//! sluice: a Postgres connection pooler and read/write router.
//!
//! The crate is laid out one module per concern:
//! - [`protocol`]: sans-IO framing and the few messages sluice builds or inspects;
//! - [`auth`]: client authentication (trust, cleartext, md5, SCRAM) and sluice's own login to servers;
//! - [`pool`]: a generic pool of connections that knows nothing about Postgres;
//! - [`server`]: a connection from sluice to a Postgres server;
//! - [`tls`]: TLS toward clients and servers: the stream type, certificates, channel binding;
//! - [`session`]: one client's session: a short relay loop plus a pure transaction state machine;
//! - [`router`]: read/write routing: where a transaction runs, replica lag and the choice of a replica;
//! - [`cache`]: the result cache: eligibility, keys, per-table generations and the bounded store;
//! - [`config`]: the TOML configuration and its validation;
//! - [`admin`]: the admin console (virtual database `sluice`);
//! - [`metrics`]: Prometheus metrics and what sessions count;
//! - [`app`]: the listener, the pools registry and shutdown;
//! - [`cluster`]: local Postgres clusters for `sluice demo`, the tests and the benchmarks.
#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod cache;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod metrics;
pub mod pool;
pub mod protocol;
pub mod router;
pub mod server;
pub mod session;
pub mod tls;
