//! SHOW CLIENTS: one row per connected client, with PgBouncer's columns. What sluice fills:
//! `type` (`C`), `user`, `database`, `state` (`active`: running a transaction on a server
//! connection; `waiting`: waiting for one, or for RESUME; `idle`), `addr`/`port`,
//! `local_addr`/`local_port`, `connect_time`, `request_time` (when the state last changed),
//! `wait`/`wait_us` (how long a waiting client has waited), `ptr` (sluice's client number, in
//! hex), `application_name` (at login) and `id`. Empty or 0: `replication`, `close_needed`,
//! `link`, `remote_pid`, `tls` (no TLS yet), `prepared_statements`.
//!
//! SHOW SERVERS needs one row per server connection, and the pools keep no registry of them
//! (only counts: see SHOW POOLS). Rather than invent rows, it answers 0A000 naming the counts
//! it can give.

use super::Show;
use crate::admin::result::{int, text, Column, Row};
use crate::admin::AdminError;
use crate::app::{ClientEntry, ClientState, Shared};
use std::time::SystemTime;

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string().replace('T', " ").replace('Z', " UTC")
}

fn client_row(c: &ClientEntry, now: SystemTime) -> Row {
    let (state, since) = c.state();
    let waited = if state == ClientState::Waiting { now.duration_since(since).unwrap_or_default() } else { Default::default() };
    let addr = |a: Option<std::net::SocketAddr>| (a.map(|a| a.ip().to_string()).unwrap_or_default(), a.map_or(0, |a| a.port()));
    let (peer, peer_port) = addr(c.peer);
    let (local, local_port) = addr(c.local);
    Row::new()
        .text("C")
        .text(c.user.clone())
        .text(c.database.clone())
        .text("")
        .text(state.name())
        .text(peer)
        .num(peer_port)
        .text(local)
        .num(local_port)
        .text(time(c.connected))
        .text(time(since))
        .num(waited.as_secs())
        .num(waited.subsec_micros())
        .num(0)
        .text(format!("{:x}", c.id))
        .text("")
        .num(0)
        .text("")
        .text(c.application_name.clone())
        .num(0)
        .num(c.id)
}

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
        let now = SystemTime::now();
        Ok(ctx.clients_registry.all().iter().map(|c| client_row(c, now)).collect())
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
