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

/// Configuration text for a sluice serving `db` from `primary`. `sections` holds extra TOML
/// tables (`[pool]`, `[auth]`, ...); `db_extra` extra keys for the database table.
pub fn config_text(primary: std::net::SocketAddr, db: &str, sections: &str, db_extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nclient_login_timeout = \"2s\"\n\n{sections}\n\n\
         [databases.{db}]\nprimary = \"{primary}\"\n{db_extra}\n"
    )
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
        let (client, conn) = tokio_postgres::connect(&self.conn_str(user, extra), tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
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
