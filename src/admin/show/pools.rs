//! SHOW POOLS: one row per pool. sluice keeps a pool per (database, user, server), so two
//! columns follow PgBouncer's: `server` (host:port) and `role` (primary | replica).
//!
//! What the columns hold:
//! - `cl_active`: clients holding one of the pool's connections (a client idle between
//!   transactions holds none and is not counted per pool);
//! - `cl_waiting`: clients queued for a connection;
//! - `sv_active`: connections handed out, being opened or being reset; `sv_idle`: ready ones;
//! - `pool_mode`: the mode in effect;
//! - 0: the cancel-request columns, `sv_used`, `sv_tested`, `sv_login`, `maxwait`,
//!   `maxwait_us` (the pool does not time its oldest waiter); NULL: `load_balance_hosts`.

use super::Show;
use crate::admin::result::{int, text, Column, Row};
use crate::admin::AdminError;
use crate::app::Shared;
use crate::config::PoolMode;

/// SHOW POOLS
pub struct Pools;

/// The pool mode as PgBouncer writes it.
pub(super) fn mode_name(mode: PoolMode) -> &'static str {
    match mode {
        PoolMode::Transaction => "transaction",
        PoolMode::Session => "session",
    }
}

impl Show for Pools {
    const COLUMNS: &'static [Column] = &[
        text("database"),
        text("user"),
        int("cl_active"),
        int("cl_waiting"),
        int("cl_active_cancel_req"),
        int("cl_waiting_cancel_req"),
        int("sv_active"),
        int("sv_active_cancel"),
        int("sv_being_canceled"),
        int("sv_idle"),
        int("sv_used"),
        int("sv_tested"),
        int("sv_login"),
        int("maxwait"),
        int("maxwait_us"),
        text("pool_mode"),
        text("load_balance_hosts"),
        text("server"),
        text("role"),
    ];

    fn rows(ctx: &Shared) -> Result<Vec<Row>, AdminError> {
        let config = ctx.config.load();
        let mode = mode_name(config.pool.mode);
        let mut pools = ctx.pools.all();
        pools.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(pools
            .into_iter()
            .map(|(key, pool)| {
                let s = pool.state();
                let primary = config.databases.get(&key.database).is_none_or(|d| d.primary == key.server);
                Row::new()
                    .text(key.database)
                    .text(key.user)
                    .num(s.active)
                    .num(s.waiting)
                    .num(0)
                    .num(0)
                    .num(s.active)
                    .num(0)
                    .num(0)
                    .num(s.idle)
                    .num(0)
                    .num(0)
                    .num(0)
                    .num(0)
                    .num(0)
                    .text(mode)
                    .null()
                    .text(key.server)
                    .text(if primary { "primary" } else { "replica" })
            })
            .collect())
    }
}
