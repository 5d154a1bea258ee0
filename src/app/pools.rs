//! The pools, one per (database, server user, server address), created when a client first
//! needs one and reconfigured in place on reload.

use crate::config::{Config, DatabaseSection};
use crate::pool::{Pool, PoolSettings};
use crate::server::{Credentials, PgConnector, ServerTarget};
use dashmap::DashMap;
use std::time::Duration;

/// Identifies a pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolKey {
    /// The database name clients use.
    pub database: String,
    /// The role sluice logs in as.
    pub user: String,
    /// The server, host:port.
    pub server: String,
}

/// Pool settings for a database from the configuration.
pub fn settings_for(config: &Config, db: &DatabaseSection) -> PoolSettings {
    let p = &config.pool;
    PoolSettings {
        size: db.pool_size.unwrap_or(p.size),
        min_size: p.min_size,
        max_waiting: p.max_wait_clients,
        wait_timeout: p.query_wait_timeout.non_zero(),
        connect_timeout: p.server_connect_timeout.0,
        idle_timeout: p.server_idle_timeout.non_zero(),
        lifetime: p.server_lifetime.non_zero(),
        reset_timeout: Duration::from_secs(5),
        max_logins: p.max_concurrent_logins,
    }
}

/// All pools.
#[derive(Default)]
pub struct PoolRegistry {
    pools: DashMap<PoolKey, Pool<PgConnector>>,
    /// Every open server connection of every pool (SHOW SERVERS).
    pub servers: std::sync::Arc<crate::server::registry::ServerRegistry>,
    /// The live TLS settings server connections are opened with.
    tls: std::sync::Arc<arc_swap::ArcSwap<crate::tls::TlsSettings>>,
}

impl PoolRegistry {
    /// An empty registry whose pools open server connections with the live `tls` settings.
    pub fn new(tls: std::sync::Arc<arc_swap::ArcSwap<crate::tls::TlsSettings>>) -> Self {
        PoolRegistry { tls, ..Default::default() }
    }

    /// The pool for a database and server login on the database's primary, created on first use.
    pub fn get_or_create(
        &self,
        config: &Config,
        database: &str,
        db: &DatabaseSection,
        user: &str,
        credentials: Credentials,
    ) -> Pool<PgConnector> {
        self.get_or_create_on(config, database, db, &db.primary, user, credentials)
    }

    /// The pool for a database and server login on one of its servers (the primary or a
    /// replica), created on first use.
    pub fn get_or_create_on(
        &self,
        config: &Config,
        database: &str,
        db: &DatabaseSection,
        server: &str,
        user: &str,
        credentials: Credentials,
    ) -> Pool<PgConnector> {
        let key = PoolKey { database: database.to_owned(), user: user.to_owned(), server: server.to_owned() };
        if let Some(p) = self.pools.get(&key) {
            return p.clone();
        }
        self.pools
            .entry(key)
            .or_insert_with(|| {
                let target = ServerTarget {
                    addr: server.to_owned(),
                    user: user.to_owned(),
                    database: db.dbname.clone().unwrap_or_else(|| database.to_owned()),
                    password: credentials.password,
                    scram: credentials.scram,
                    md5: credentials.md5,
                    max_message_size: config.server.max_message_size.0.min(u32::MAX as u64 >> 1) as u32,
                    max_prepared_statements: config.pool.max_prepared_statements,
                };
                let connector = PgConnector::new(target).listed_in(self.servers.clone()).with_tls(self.tls.clone());
                Pool::new(connector, settings_for(config, db))
            })
            .clone()
    }

    /// Every pool with its key.
    pub fn all(&self) -> Vec<(PoolKey, Pool<PgConnector>)> {
        self.pools.iter().map(|e| (e.key().clone(), e.value().clone())).collect()
    }

    /// Applies a new configuration: pools of removed or moved databases are closed, the rest get
    /// the new settings.
    pub fn reconfigure(&self, config: &Config) {
        self.pools.retain(|key, pool| match config.databases.get(&key.database) {
            Some(db) if db.primary == key.server || db.replicas.contains(&key.server) => {
                pool.reconfigure(settings_for(config, db));
                true
            }
            _ => {
                pool.close();
                false
            }
        });
    }

    /// Closes every pool.
    pub fn close_all(&self) {
        for e in self.pools.iter() {
            e.value().close();
        }
    }
}
