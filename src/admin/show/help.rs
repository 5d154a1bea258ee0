//! SHOW HELP: the commands the console knows, one per row.

use super::Show;
use crate::admin::result::{text, Column, Row};
use crate::admin::AdminError;
use crate::app::Shared;

/// SHOW HELP
pub struct Help;

const COMMANDS: &[(&str, &str)] = &[
    ("SHOW POOLS", "server pools: clients and server connections per (database, user, server)"),
    ("SHOW STATS", "per-database totals"),
    ("SHOW CLIENTS", "client connections (not available yet)"),
    ("SHOW SERVERS", "server connections (not available yet)"),
    ("SHOW DATABASES", "configured databases"),
    ("SHOW CONFIG", "configuration keys, values, defaults, and whether SET can change them"),
    ("SHOW VERSION", "sluice's version"),
    ("SHOW REPLICAS", "replica state, lag and reads routed"),
    ("SHOW CACHE", "result cache counters"),
    ("SHOW ADVICE", "pool-size recommendation (not available yet)"),
    ("RELOAD", "read the configuration file again and apply it"),
    ("SET key = value", "change one configuration key until the next RELOAD"),
    ("SHUTDOWN", "stop sluice after running transactions finish"),
    ("PAUSE [db] | RESUME [db] | KILL db", "not available yet"),
    ("CACHE CLEAR", "drop every cached result"),
];

impl Show for Help {
    const COLUMNS: &'static [Column] = &[text("command"), text("description")];

    fn rows(_: &Shared) -> Result<Vec<Row>, AdminError> {
        Ok(COMMANDS.iter().map(|(c, d)| Row::new().text(*c).text(*d)).collect())
    }
}
