//! SHOW DATABASES: one row per configured database with PgBouncer's columns. `host` and `port`
//! are the primary's (SHOW REPLICAS lists the replicas).
//!
//! What sluice fills: `database` (the name on the servers), `force_user` (the database's fixed
//! `user`, else NULL), `pool_size`, `min_pool_size`, `server_lifetime` (seconds), `pool_mode`
//! (the mode in effect), `current_connections` (server connections open in its pools) and
//! `current_client_connections` (connected clients, as the sessions count them).
//! `max_client_connections` is the database's client limit (0 = none).
//! `paused` is 1 while PAUSE or KILL holds the database. 0: `reserve_pool_size`,
//! `max_connections` (no such limit) and `disabled`; NULL: `load_balance_hosts`.

use super::pools::mode_name;
use super::{host_port, Show};
use crate::admin::result::{int, text, Column, Row};
use crate::admin::AdminError;
use crate::app::Shared;

/// SHOW DATABASES
pub struct Databases;

impl Show for Databases {
    const COLUMNS: &'static [Column] = &[
        text("name"),
        text("host"),
        int("port"),
        text("database"),
        text("force_user"),
        int("pool_size"),
        int("min_pool_size"),
        int("reserve_pool_size"),
        int("server_lifetime"),
        text("pool_mode"),
        text("load_balance_hosts"),
        int("max_connections"),
        int("current_connections"),
        int("max_client_connections"),
        int("current_client_connections"),
        int("paused"),
        int("disabled"),
    ];

    fn rows(ctx: &Shared) -> Result<Vec<Row>, AdminError> {
        let config = ctx.config.load();
        let pools = ctx.pools.all();
        let clients = ctx.metrics.connected();
        Ok(config
            .databases
            .iter()
            .map(|(name, db)| {
                let (host, port) = host_port(&db.primary);
                let servers: usize = pools
                    .iter()
                    .filter(|(k, _)| &k.database == name)
                    .map(|(_, p)| p.state())
                    .map(|s| s.active + s.idle)
                    .sum();
                let connected: usize = clients.iter().filter(|((d, _), _)| d == name).map(|(_, n)| n).sum();
                Row::new()
                    .text(name.clone())
                    .text(host)
                    .text(port)
                    .text(db.dbname.clone().unwrap_or_else(|| name.clone()))
                    .opt(db.user.clone())
                    .num(db.pool_size.unwrap_or(config.pool.size))
                    .num(config.pool.min_size)
                    .num(0)
                    .num(config.pool.server_lifetime.0.as_secs())
                    .text(mode_name(config.pool.mode))
                    .null()
                    .num(0)
                    .num(servers)
                    .num(db.max_client_conn.unwrap_or(config.server.max_client_conn_per_database))
                    .num(connected)
                    .num(u8::from(ctx.gates.is_paused(name)))
                    .num(0)
            })
            .collect())
    }
}
