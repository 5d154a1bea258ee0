//! Helpers shared by the end-to-end tests: one local Postgres cluster (primary + streaming
//! replica) per test binary, and fresh databases so tests can run in parallel.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use sluice::cluster::{Cluster, ClusterOptions, PgBinaries};

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// The cluster shared by every test of this test binary (a primary and a streaming replica),
/// started on first use. It is never dropped: its servers stop and its directory is deleted by
/// the watchdogs when the test process exits.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        let bins = PgBinaries::locate().unwrap_or_else(|e| panic!("{e}"));
        let opts = ClusterOptions {
            replica: true,
            ..ClusterOptions::default()
        };
        Cluster::start(&bins, &opts).unwrap_or_else(|e| panic!("starting the test cluster: {e}"))
    })
}

/// Creates a new, empty database on the shared cluster's primary and returns its name, which is
/// `prefix` (lowercased, non-alphanumerics replaced by `_`) followed by a unique suffix. Waits
/// until the replica has it too.
pub fn unique_db(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let prefix: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let name = format!(
        "{prefix}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let cluster = cluster();
    cluster
        .primary
        .psql("postgres", &format!("CREATE DATABASE \"{name}\""))
        .unwrap_or_else(|e| panic!("creating database {name}: {e}"));
    cluster
        .wait_replica_caught_up()
        .unwrap_or_else(|e| panic!("waiting for the replica to get database {name}: {e}"));
    name
}

/// A running sluice in front of the shared cluster's primary, on a free port.
pub struct Proxy {
    /// The running pooler.
    pub sluice: sluice::app::Sluice,
    /// Its address.
    pub addr: std::net::SocketAddr,
    /// The database clients use.
    pub db: String,
}

/// Configuration text for a sluice serving `db` from `primary` on a free port. `sections` is TOML
/// merged over the base (`[server]`, `[databases.<db>]`), so it may hold any table, including
/// `[server]` or `[databases.<db>]` keys, without repeating a table; `db_extra` holds extra keys for
/// the database table.
pub fn config_text(primary: std::net::SocketAddr, db: &str, sections: &str, db_extra: &str) -> String {
    let base = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nclient_login_timeout = \"2s\"\n\n\
         [databases.{db}]\nprimary = \"{primary}\"\n{db_extra}\n"
    );
    let mut config: toml::Table = base.parse().unwrap_or_else(|e| panic!("{e}\n{base}"));
    let extra: toml::Table = sections.parse().unwrap_or_else(|e| panic!("extra TOML: {e}\n{sections}"));
    merge(&mut config, extra);
    config.to_string()
}

/// Merges `extra` into `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Table, extra: toml::Table) {
    for (k, v) in extra {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(e)) => merge(b, e),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Starts sluice for `db` on the shared cluster's primary; `extra_toml` is merged over the base
/// configuration (see [`config_text`]), e.g. `"[pool]\nsize = 5"`.
pub async fn start_sluice(db: &str, extra_toml: &str) -> sluice::app::Sluice {
    start_proxy(db, extra_toml).await.sluice
}

/// Starts sluice for `db` on the shared cluster with extra configuration tables.
pub async fn start_proxy(db: &str, sections: &str) -> Proxy {
    start_proxy_for(cluster().primary.addr(), db, sections, "").await
}

/// Starts sluice for `db` on the given primary.
pub async fn start_proxy_for(primary: std::net::SocketAddr, db: &str, sections: &str, db_extra: &str) -> Proxy {
    let text = config_text(primary, db, sections, db_extra);
    let config = sluice::config::Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let sluice = sluice::app::Sluice::start(config).await.expect("sluice starts");
    let addr = sluice.local_addrs()[0];
    Proxy { sluice, addr, db: db.to_owned() }
}

/// Connects to sluice at `addr` as `postgres` with tokio-postgres; the connection task is spawned.
pub async fn connect(addr: std::net::SocketAddr, db: &str) -> tokio_postgres::Client {
    connect_as(addr, db, "postgres", "").await.unwrap_or_else(|e| panic!("connect to {db} through {addr}: {e}"))
}

/// Connects with tokio-postgres with extra connection-string options (`password=...`,
/// `application_name=...`, `options='-c ...'`).
pub async fn connect_as(
    addr: std::net::SocketAddr,
    db: &str,
    user: &str,
    extra: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let conn_str = format!("host={} port={} user={user} dbname={db} {extra}", addr.ip(), addr.port());
    let (client, conn) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

impl Proxy {
    /// A tokio-postgres connection string for this proxy.
    pub fn conn_str(&self, user: &str, extra: &str) -> String {
        format!("host=127.0.0.1 port={} user={user} dbname={} {extra}", self.addr.port(), self.db)
    }

    /// Connects with tokio-postgres as `postgres`.
    pub async fn connect(&self) -> tokio_postgres::Client {
        self.connect_with("postgres", "").await.expect("connect through sluice")
    }

    /// Connects with tokio-postgres with extra connection-string options.
    pub async fn connect_with(&self, user: &str, extra: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        connect_as(self.addr, &self.db, user, extra).await
    }
}

/// Runs a SQL query on the primary directly (as superuser, over the Unix socket).
pub fn on_primary(sql: &str) -> String {
    cluster().primary.psql("postgres", sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Number of backends connected to `db` in the given state ('' for any).
pub fn backends(db: &str, state: &str) -> usize {
    let filter = if state.is_empty() { String::new() } else { format!(" and state = '{state}'") };
    on_primary(&format!(
        "select count(*) from pg_stat_activity where datname = '{db}' and backend_type = 'client backend'{filter}"
    ))
    .parse()
    .unwrap_or(0)
}

/// Polls `check` every 20 ms until it holds or `limit` passes; returns whether it held.
pub async fn eventually(limit: std::time::Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The SQLSTATE of a tokio-postgres error, if the server (or sluice) sent one.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_owned()).unwrap_or_else(|| format!("no sqlstate: {e}"))
}

/// Path of a Postgres client tool (psql, pgbench).
pub fn pg_tool(name: &str) -> std::path::PathBuf {
    PgBinaries::locate().unwrap_or_else(|e| panic!("{e}")).tool(name)
}

/// One row of `pg_stat_activity` on the shared primary.
#[derive(Debug, Clone)]
pub struct Activity {
    /// The backend's process id.
    pub pid: i32,
    /// `active`, `idle`, `idle in transaction`, ...
    pub state: String,
    /// The backend's application_name.
    pub application_name: String,
    /// The last query (text up to the first line break).
    pub query: String,
}

/// The client backends connected to `db` on the shared primary (the sessions sluice opened),
/// excluding the backend asking.
pub fn server_activity(db: &str) -> Vec<Activity> {
    let out = on_primary(&format!(
        "select pid, coalesce(state, ''), application_name, regexp_replace(query, '[\\n\\r|]', ' ', 'g') \
         from pg_stat_activity where datname = '{db}' and backend_type = 'client backend' \
         and pid <> pg_backend_pid() order by pid"
    ));
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.splitn(4, '|').collect();
            Activity {
                pid: f[0].parse().unwrap_or_else(|_| panic!("pg_stat_activity row {l:?}")),
                state: f.get(1).unwrap_or(&"").to_string(),
                application_name: f.get(2).unwrap_or(&"").to_string(),
                query: f.get(3).unwrap_or(&"").to_string(),
            }
        })
        .collect()
}

/// A command for a Postgres client tool (`psql`, `pgbench`) pointed at sluice at `addr` as
/// `postgres`, with the libpq environment cleared so nothing from the caller leaks in.
fn pg_command(tool: &str, addr: std::net::SocketAddr) -> std::process::Command {
    let mut c = std::process::Command::new(pg_tool(tool));
    for var in ["PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD", "PGSERVICE", "PGOPTIONS", "PGSSLMODE"] {
        c.env_remove(var);
    }
    c.env("PGCONNECT_TIMEOUT", "10");
    c.args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string(), "-U", "postgres"]);
    c
}

/// `psql -X -A -t -v ON_ERROR_STOP=1 -d <db> <args>` through sluice at `addr`, not yet run.
pub fn psql(addr: std::net::SocketAddr, db: &str, args: &[&str]) -> std::process::Command {
    let mut c = pg_command("psql", addr);
    c.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", db]).args(args);
    c
}

/// `pgbench <args> <db>` through sluice at `addr`, not yet run.
pub fn pgbench(addr: std::net::SocketAddr, db: &str, args: &[&str]) -> std::process::Command {
    let mut c = pg_command("pgbench", addr);
    c.args(args).arg(db);
    c
}

/// Runs `cmd` to the end and returns stdout and stderr together; panics with both when it fails.
pub fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{text}", out.status);
    text
}

/// The value of a setting as the client's session sees it ('' when unset).
pub async fn setting(c: &tokio_postgres::Client, name: &str) -> String {
    c.query_typed(&format!("select current_setting('{name}', true)"), &[]).await.unwrap()[0]
        .get::<_, Option<String>>(0)
        .unwrap_or_default()
}
