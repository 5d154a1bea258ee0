//! The metric names and labels sluice exports (fixed by `shared/interface.md`), with their help
//! texts.

/// `sluice_clients{database,user,state}`: connected clients; state = active | waiting | idle.
pub const CLIENTS: &str = "sluice_clients";
/// `sluice_servers{database,user,role,state}`: server connections; role = primary | replica,
/// state = active | idle.
pub const SERVERS: &str = "sluice_servers";
/// `sluice_transactions_total{database,route}`: route = primary | replica | cache.
pub const TRANSACTIONS: &str = "sluice_transactions_total";
/// `sluice_queries_total{database,route}`
pub const QUERIES: &str = "sluice_queries_total";
/// `sluice_client_wait_seconds`: histogram of time waiting for a server connection.
pub const CLIENT_WAIT: &str = "sluice_client_wait_seconds";
/// `sluice_replica_lag_bytes{replica}`
pub const REPLICA_LAG_BYTES: &str = "sluice_replica_lag_bytes";
/// `sluice_replica_lag_seconds{replica}`
pub const REPLICA_LAG_SECONDS: &str = "sluice_replica_lag_seconds";
/// `sluice_cache_hits_total`
pub const CACHE_HITS: &str = "sluice_cache_hits_total";
/// `sluice_cache_misses_total`
pub const CACHE_MISSES: &str = "sluice_cache_misses_total";
/// `sluice_cache_invalidations_total`
pub const CACHE_INVALIDATIONS: &str = "sluice_cache_invalidations_total";
/// `sluice_cache_bytes`
pub const CACHE_BYTES: &str = "sluice_cache_bytes";
/// `sluice_cache_backend_up`: 1 while the shared cache backend (Redis) is used, 0 while reads
/// bypass it (only with `backend = "redis"`).
pub const CACHE_BACKEND_UP: &str = "sluice_cache_backend_up";
/// `sluice_errors_total{kind}`
pub const ERRORS: &str = "sluice_errors_total";

/// Every name with its help text, for the `# HELP` lines.
pub const HELP: &[(&str, &str)] = &[
    (
        CLIENTS,
        "Connected clients by pool and state (active: holding a server connection, waiting: queued for one, idle)",
    ),
    (SERVERS, "Server connections by pool, role and state"),
    (TRANSACTIONS, "Transactions run, by where they ran"),
    (QUERIES, "Queries run, by where they ran"),
    (CLIENT_WAIT, "Time clients waited for a server connection, in seconds"),
    (REPLICA_LAG_BYTES, "WAL bytes a replica has not replayed yet"),
    (REPLICA_LAG_SECONDS, "How stale a replica's data is, in seconds"),
    (CACHE_HITS, "Reads answered from the result cache"),
    (CACHE_MISSES, "Cacheable reads the cache could not answer"),
    (CACHE_INVALIDATIONS, "Cache entries invalidated by writes"),
    (CACHE_BYTES, "Bytes held by the result cache"),
    (CACHE_BACKEND_UP, "Whether the shared cache backend (Redis) is reachable and used"),
    (ERRORS, "Errors by kind"),
];

/// Bucket bounds of [`CLIENT_WAIT`], in seconds.
pub const WAIT_BUCKETS: &[f64] = &[0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0];
