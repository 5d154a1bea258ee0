//! SHOW CLIENTS and SHOW SERVERS need one row per connection, and sluice keeps no registry of
//! client or server connections yet (only counts: see SHOW POOLS). Rather than invent rows,
//! both answer 0A000 naming the counts they can give.

use super::Show;
use crate::admin::result::{int, text, Column, Row};
use crate::admin::AdminError;
use crate::app::Shared;

/// PgBouncer's columns for SHOW CLIENTS and SHOW SERVERS, for when the registry exists.
pub const SOCKET_COLUMNS: &[Column] = &[
    text("type"),
    text("user"),
    text("database"),
    text("replication"),
    text("state"),
    text("addr"),
    int("port"),
    text("local_addr"),
    int("local_port"),
    text("connect_time"),
    text("request_time"),
    int("wait"),
    int("wait_us"),
    int("close_needed"),
    text("ptr"),
    text("link"),
    int("remote_pid"),
    text("tls"),
    text("application_name"),
    int("prepared_statements"),
    int("id"),
];

/// SHOW CLIENTS
pub struct Clients;

impl Show for Clients {
    const COLUMNS: &'static [Column] = SOCKET_COLUMNS;

    fn rows(ctx: &Shared) -> Result<Vec<Row>, AdminError> {
        Err(AdminError::NotImplemented(format!(
            "SHOW CLIENTS is not implemented yet: sluice keeps no per-client registry \
             ({} clients connected; SHOW POOLS has them per pool)",
            ctx.client_count()
        )))
    }
}

/// SHOW SERVERS
pub struct Servers;

impl Show for Servers {
    const COLUMNS: &'static [Column] = SOCKET_COLUMNS;

    fn rows(ctx: &Shared) -> Result<Vec<Row>, AdminError> {
        let open: usize = ctx.pools.all().iter().map(|(_, p)| p.state()).map(|s| s.active + s.idle).sum();
        Err(AdminError::NotImplemented(format!(
            "SHOW SERVERS is not implemented yet: the pools keep no per-connection registry \
             ({open} server connections; SHOW POOLS has them per pool)"
        )))
    }
}
