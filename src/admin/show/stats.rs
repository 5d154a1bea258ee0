//! SHOW STATS: one row per database with PgBouncer's columns.
//!
//! What sluice fills:
//! - `total_server_assignment_count`: checkouts from the database's pools;
//! - `total_xact_count`, `total_query_count`: counted by the sessions, every route included;
//! - `total_wait_time`: microseconds clients waited for a server connection;
//! - `total_client_login_count`: client logins.
//!
//! 0: bytes received and sent, transaction and query time, parse and bind counts (sluice does
//! not time or inspect those), and every `avg_*` column (there is no `stats_period` sampler).

use super::Show;
use crate::admin::result::{int, text, Column, Row};
use crate::admin::AdminError;
use crate::app::Shared;
use crate::metrics::Route;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;

/// SHOW STATS
pub struct Stats;

/// Columns after `total_client_login_count`, all averages.
const AVERAGES: usize = 12;

impl Show for Stats {
    const COLUMNS: &'static [Column] = &[
        text("database"),
        int("total_server_assignment_count"),
        int("total_xact_count"),
        int("total_query_count"),
        int("total_received"),
        int("total_sent"),
        int("total_xact_time"),
        int("total_query_time"),
        int("total_wait_time"),
        int("total_client_parse_count"),
        int("total_server_parse_count"),
        int("total_bind_count"),
        int("total_client_login_count"),
        int("avg_server_assignment_count"),
        int("avg_xact_count"),
        int("avg_query_count"),
        int("avg_recv"),
        int("avg_sent"),
        int("avg_xact_time"),
        int("avg_query_time"),
        int("avg_wait_time"),
        int("avg_client_parse_count"),
        int("avg_server_parse_count"),
        int("avg_bind_count"),
        int("avg_client_login_count"),
    ];

    fn rows(ctx: &Shared) -> Result<Vec<Row>, AdminError> {
        // (checkouts, wait µs) per database, over all its pools.
        let mut pools: BTreeMap<String, (u64, u64)> =
            ctx.config.load().databases.keys().map(|d| (d.clone(), (0, 0))).collect();
        for (key, pool) in ctx.pools.all() {
            let e = pools.entry(key.database).or_default();
            e.0 += pool.stats().checkouts.load(Relaxed);
            e.1 += pool.stats().wait_micros.load(Relaxed);
        }
        Ok(pools
            .into_iter()
            .map(|(db, (checkouts, wait))| {
                let c = ctx.metrics.database(&db);
                let xacts: u64 = Route::ALL.iter().map(|r| c.transactions(*r)).sum();
                let queries: u64 = Route::ALL.iter().map(|r| c.queries(*r)).sum();
                let mut row = Row::new().text(db).num(checkouts).num(xacts).num(queries);
                for _ in 0..4 {
                    row = row.num(0); // received, sent, xact time, query time
                }
                row = row.num(wait);
                for _ in 0..3 {
                    row = row.num(0); // parse and bind counts
                }
                row = row.num(c.logins());
                for _ in 0..AVERAGES {
                    row = row.num(0);
                }
                row
            })
            .collect())
    }
}
