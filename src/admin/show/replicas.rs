//! SHOW REPLICAS: one row per replica server of each database, in configuration order.
//!
//! Replicas of databases that split reads have a monitor: their state (healthy | lagging |
//! down | unknown), lag, replay position, transactions running there now (`outstanding`) and
//! reads routed there since start. Replicas of databases that do not split reads (no
//! `read_write_split`, or session pooling) are listed with state `off` and NULL for what only
//! a monitor measures.

use super::Show;
use crate::admin::result::{float, int, text, Column, Row};
use crate::admin::AdminError;
use crate::app::Shared;

/// SHOW REPLICAS
pub struct Replicas;

impl Show for Replicas {
    const COLUMNS: &'static [Column] = &[
        text("database"),
        text("replica"),
        text("state"),
        int("lag_bytes"),
        float("lag_seconds"),
        text("replay_lsn"),
        int("outstanding"),
        int("reads_routed"),
    ];

    fn rows(ctx: &Shared) -> Result<Vec<Row>, AdminError> {
        let config = ctx.config.load();
        let table = ctx.routing.load();
        let mut rows = Vec::new();
        for (name, db) in &config.databases {
            match table.databases.get(name) {
                Some(monitored) => {
                    for r in monitored.set.replicas() {
                        let lag = r.lag();
                        rows.push(
                            Row::new()
                                .text(name.clone())
                                .text(r.address())
                                .text(r.state().as_str())
                                .num(lag.bytes)
                                .num(format!("{:.6}", lag.seconds))
                                .text(r.replay_lsn().to_string())
                                .num(r.outstanding())
                                .num(r.reads_routed()),
                        );
                    }
                }
                None => {
                    for replica in &db.replicas {
                        rows.push(
                            Row::new()
                                .text(name.clone())
                                .text(replica.clone())
                                .text("off")
                                .null()
                                .null()
                                .null()
                                .num(0)
                                .num(0),
                        );
                    }
                }
            }
        }
        Ok(rows)
    }
}
