//! SHOW CLIENTS: one row per connected client, with PgBouncer's columns. What sluice fills:
//! `type` (`C`), `user`, `database`, `state` (`active`: running a transaction on a server
//! connection; `waiting`: waiting for one, or for RESUME; `idle`), `addr`/`port`,
//! `local_addr`/`local_port`, `connect_time`, `request_time` (when the state last changed),
//! `wait`/`wait_us` (how long a waiting client has waited), `ptr` (sluice's client number, in
//! hex), `application_name` (at login) and `id`. Empty or 0: `replication`, `close_needed`,
//! `link`, `remote_pid`, `tls` (no TLS yet), `prepared_statements`.
//!
//! SHOW SERVERS: one row per open server connection (primaries and replicas). What sluice
//! fills: `type` (`S`), `user` (the login role), `database` (the name on the server), `state`
//! (`active`: checked out by a client, `idle`: in its pool), `addr`/`port` (the server),
//! `local_addr`/`local_port`, `connect_time`, `request_time` (last checkout or return), `ptr`
//! (sluice's connection number, in hex), `link` (the `ptr` of the client it serves),
//! `remote_pid` (the backend's process id) and `id`. Empty or 0: `replication`, `wait`,
//! `wait_us`, `close_needed`, `tls`, `application_name`, `prepared_statements`.

use super::Show;
use crate::admin::result::{int, text, Column, Row};
use crate::admin::AdminError;
use crate::app::{ClientEntry, ClientState, Shared};
use crate::server::registry::ServerEntry;
use std::time::SystemTime;

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string().replace('T', " ").replace('Z', " UTC")
}

fn server_row(s: &ServerEntry) -> Row {
    let (client, since) = s.state();
    let (local, local_port) = s.local.map_or((String::new(), 0), |a| (a.ip().to_string(), a.port()));
    Row::new()
        .text("S")
        .text(s.user.clone())
        .text(s.database.clone())
        .text("")
        .text(if client.is_some() { "active" } else { "idle" })
        .text(s.server.ip().to_string())
        .num(s.server.port())
        .text(local)
        .num(local_port)
        .text(time(s.connected))
        .text(time(since))
        .num(0)
        .num(0)
        .num(0)
        .text(format!("{:x}", s.id))
        .text(client.map(|c| format!("{c:x}")).unwrap_or_default())
        .num(s.pid)
        .text("")
        .text("")
        .num(0)
        .num(s.id)
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

/// PgBouncer's columns for SHOW CLIENTS and SHOW SERVERS.
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
        Ok(ctx.pools.servers.all().iter().map(|s| server_row(s)).collect())
    }

}
