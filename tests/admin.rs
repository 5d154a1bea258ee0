//! The admin console (virtual database `sluice`) and the Prometheus endpoint, end to end:
//! SHOW commands answer with PgBouncer's column names, non-admins are refused, bad commands
//! leave the connection usable, RELOAD / SET / SHUTDOWN act on the running sluice, and
//! `GET /metrics` carries the interface's metric names.

mod common;

use common::*;
use std::io::{Read, Write};
use std::time::Duration;
use tokio_postgres::SimpleQueryMessage;

/// Runs one admin command: (column names, rows as text).
async fn admin_query(c: &tokio_postgres::Client, sql: &str) -> (Vec<String>, Vec<Vec<Option<String>>>) {
    let msgs = c.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut columns = Vec::new();
    let mut rows = Vec::new();
    for m in msgs {
        match m {
            SimpleQueryMessage::RowDescription(cols) => columns = cols.iter().map(|c| c.name().to_owned()).collect(),
            SimpleQueryMessage::Row(r) => rows.push((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect()),
            _ => {}
        }
    }
    (columns, rows)
}

/// The value of `column` in `row` of a result.
fn cell<'a>(columns: &[String], row: &'a [Option<String>], column: &str) -> Option<&'a str> {
    let i = columns.iter().position(|c| c == column).unwrap_or_else(|| panic!("no column {column} in {columns:?}"));
    row[i].as_deref()
}

async fn admin(addr: std::net::SocketAddr) -> tokio_postgres::Client {
    connect(addr, "sluice").await
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_commands_answer_with_pgbouncer_columns() {
    let db = unique_db("admin_show");
    let proxy = start_proxy(&db, "[pool]\nsize = 3").await;
    // A client makes the database's pool exist.
    let app = proxy.connect().await;
    app.simple_query("select 1").await.unwrap();
    let c = admin(proxy.addr).await;

    // The connection goes back to the pool just after the client has its answer.
    let mut idle_seen = false;
    for _ in 0..250 {
        let (cols, rows) = admin_query(&c, "SHOW POOLS").await;
        idle_seen = rows
            .iter()
            .any(|r| cell(&cols, r, "database") == Some(db.as_str()) && cell(&cols, r, "sv_idle") == Some("1"));
        if idle_seen {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(idle_seen, "the pool never showed its idle connection");
    let (cols, rows) = admin_query(&c, "SHOW POOLS").await;
    assert_eq!(
        cols[..17],
        names(&[
            "database",
            "user",
            "cl_active",
            "cl_waiting",
            "cl_active_cancel_req",
            "cl_waiting_cancel_req",
            "sv_active",
            "sv_active_cancel",
            "sv_being_canceled",
            "sv_idle",
            "sv_used",
            "sv_tested",
            "sv_login",
            "maxwait",
            "maxwait_us",
            "pool_mode",
            "load_balance_hosts",
        ])[..]
    );
    let pool = rows.iter().find(|r| cell(&cols, r, "database") == Some(db.as_str())).expect("the database's pool");
    assert_eq!(cell(&cols, pool, "user"), Some("postgres"));
    assert_eq!(cell(&cols, pool, "sv_idle"), Some("1"));
    assert_eq!(cell(&cols, pool, "pool_mode"), Some("transaction"));
    assert_eq!(cell(&cols, pool, "role"), Some("primary"));

    let (cols, rows) = admin_query(&c, "show stats;").await;
    assert_eq!(cols.len(), 25);
    assert_eq!(
        cols[..4],
        names(&["database", "total_server_assignment_count", "total_xact_count", "total_query_count"])[..]
    );
    assert_eq!(cols[24], "avg_client_login_count");
    let stats = rows.iter().find(|r| cell(&cols, r, "database") == Some(db.as_str())).expect("stats row");
    let assigned: u64 = cell(&cols, stats, "total_server_assignment_count").unwrap().parse().unwrap();
    assert!(assigned >= 1, "{stats:?}");

    let (cols, rows) = admin_query(&c, "SHOW DATABASES").await;
    assert_eq!(
        cols,
        names(&[
            "name",
            "host",
            "port",
            "database",
            "force_user",
            "pool_size",
            "min_pool_size",
            "reserve_pool_size",
            "server_lifetime",
            "pool_mode",
            "load_balance_hosts",
            "max_connections",
            "current_connections",
            "max_client_connections",
            "current_client_connections",
            "paused",
            "disabled",
        ])
    );
    assert_eq!(rows.len(), 1);
    let primary = cluster().primary.addr();
    assert_eq!(cell(&cols, &rows[0], "name"), Some(db.as_str()));
    assert_eq!(cell(&cols, &rows[0], "port"), Some(primary.port().to_string().as_str()));
    assert_eq!(cell(&cols, &rows[0], "pool_size"), Some("3"));
    assert_eq!(cell(&cols, &rows[0], "current_connections"), Some("1"));

    let (cols, rows) = admin_query(&c, "SHOW CLIENTS").await;
    assert_eq!(cols[..5], names(&["type", "user", "database", "replication", "state"])[..]);
    assert!(cols.contains(&"application_name".to_owned()) && cols.contains(&"connect_time".to_owned()));
    let client = rows.iter().find(|r| cell(&cols, r, "database") == Some(db.as_str())).expect("the app client");
    assert_eq!((cell(&cols, client, "type"), cell(&cols, client, "user")), (Some("C"), Some("postgres")));
    assert_eq!(cell(&cols, client, "state"), Some("idle"));
    assert_eq!(cell(&cols, client, "addr"), Some("127.0.0.1"));
    assert!(cell(&cols, client, "connect_time").is_some_and(|t| t.ends_with(" UTC")), "{client:?}");

    let (cols, rows) = admin_query(&c, "SHOW SERVERS").await;
    assert_eq!(cols[..5], names(&["type", "user", "database", "replication", "state"])[..]);
    let server = rows.iter().find(|r| cell(&cols, r, "database") == Some(db.as_str())).expect("the pool's connection");
    assert_eq!((cell(&cols, server, "type"), cell(&cols, server, "state")), (Some("S"), Some("idle")));
    assert_eq!(cell(&cols, server, "port"), Some(cluster().primary.addr().port().to_string().as_str()));
    let pid: u32 = cell(&cols, server, "remote_pid").unwrap().parse().unwrap();
    assert!(pid > 0, "{server:?}");

    let (cols, rows) = admin_query(&c, "SHOW CONFIG").await;
    assert_eq!(cols, names(&["key", "value", "default", "changeable"]));
    let size = rows.iter().find(|r| cell(&cols, r, "key") == Some("pool.size")).expect("pool.size");
    assert_eq!((cell(&cols, size, "value"), cell(&cols, size, "default")), (Some("3"), Some("20")));
    assert_eq!(cell(&cols, size, "changeable"), Some("yes"));
    let listen = rows.iter().find(|r| cell(&cols, r, "key") == Some("server.listen")).expect("server.listen");
    assert_eq!(cell(&cols, listen, "changeable"), Some("no"));

    let (cols, rows) = admin_query(&c, "Show Version").await;
    assert_eq!(cols, ["version"]);
    assert!(rows[0][0].as_deref().unwrap().starts_with("sluice "), "{rows:?}");

    let (cols, rows) = admin_query(&c, "SHOW CACHE").await;
    assert_eq!(cols, names(&["entries", "bytes", "hits", "misses", "hit_ratio", "invalidations"]));
    assert_eq!(rows.len(), 1);
    assert_eq!(cell(&cols, &rows[0], "hits"), Some("0"));

    // Several commands in one query string each answer.
    let msgs = c.simple_query("SHOW VERSION; SHOW CACHE").await.unwrap();
    let completes = msgs.iter().filter(|m| matches!(m, SimpleQueryMessage::CommandComplete(_))).count();
    assert_eq!(completes, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_replicas_reports_each_replica() {
    let db = unique_db("admin_replicas");
    let replica = cluster().replica.as_ref().expect("replica").addr();
    let sections = "[routing]\nread_write_split = true\nlag_check_interval = \"20ms\"";
    let proxy = start_proxy_for(cluster().primary.addr(), &db, sections, &format!("replicas = [\"{replica}\"]")).await;
    let c = admin(proxy.addr).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (cols, rows) = admin_query(&c, "SHOW REPLICAS").await;
        assert_eq!(
            cols,
            names(&[
                "database",
                "replica",
                "state",
                "lag_bytes",
                "lag_seconds",
                "replay_lsn",
                "outstanding",
                "reads_routed"
            ])
        );
        assert_eq!(rows.len(), 1);
        assert_eq!(cell(&cols, &rows[0], "database"), Some(db.as_str()));
        assert_eq!(cell(&cols, &rows[0], "replica"), Some(replica.to_string().as_str()));
        if cell(&cols, &rows[0], "state") == Some("healthy") {
            assert_ne!(cell(&cols, &rows[0], "replay_lsn"), Some("0/0"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "replica never healthy: {rows:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Without read/write splitting the replica is listed, off.
    let plain = start_proxy_for(cluster().primary.addr(), &db, "", &format!("replicas = [\"{replica}\"]")).await;
    let (cols, rows) = admin_query(&admin(plain.addr).await, "SHOW REPLICAS").await;
    assert_eq!((cell(&cols, &rows[0], "state"), cell(&cols, &rows[0], "lag_bytes")), (Some("off"), None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admin_users_get_in_and_errors_leave_the_console_usable() {
    let db = unique_db("admin_access");
    let proxy = start_proxy(&db, "[server]\nadmin_users = [\"postgres\"]").await;

    let e = connect_as(proxy.addr, "sluice", "app", "").await.expect_err("a non-admin is refused");
    assert_eq!(sqlstate(&e), "42501", "{e}");
    let e = connect_as(proxy.addr, "pgbouncer", "app", "").await.expect_err("the alias too");
    assert_eq!(sqlstate(&e), "42501", "{e}");

    let c = connect(proxy.addr, "pgbouncer").await;
    let e = c.simple_query("SHOW NONSENSE").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42601");
    assert!(e.to_string().contains("SHOW NONSENSE") || format!("{e:?}").contains("SHOW NONSENSE"), "{e:?}");
    let e = c.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42601");
    // The extended protocol is refused, and the connection goes on.
    let e = c.query("SHOW POOLS", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "0A000");
    let e = c.simple_query("PAUSE nosuchdb").await.unwrap_err();
    assert_eq!(sqlstate(&e), "3D000");
    let e = c.simple_query("KILL nosuchdb").await.unwrap_err();
    assert_eq!(sqlstate(&e), "3D000");
    // After an error, the rest of the query string is skipped.
    let e = c.simple_query("SHOW NOPE; SHUTDOWN").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42601");
    assert!(!proxy.sluice.shared().shutdown.is_cancelled());
    let (cols, _) = admin_query(&c, "SHOW VERSION").await;
    assert_eq!(cols, ["version"]);
    let empty = c.simple_query("").await.unwrap();
    assert!(!empty.iter().any(|m| matches!(m, SimpleQueryMessage::Row(_))), "{empty:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_and_reload_change_the_running_configuration() {
    let db = unique_db("admin_reload");
    let proxy = start_proxy(&db, "[pool]\nsize = 4").await;
    let c = admin(proxy.addr).await;
    let shared = proxy.sluice.shared().clone();

    c.simple_query("SET pool.size = 9").await.unwrap();
    assert_eq!(shared.config.load().pool.size, 9);
    c.simple_query("set pool.query_wait_timeout to '250ms'").await.unwrap();
    assert_eq!(shared.config.load().pool.query_wait_timeout.0, Duration::from_millis(250));
    for (sql, code) in [
        ("SET server.listen = '127.0.0.1:1'", "55P02"),
        ("SET no.such = 1", "42704"),
        ("SET pool.size = 0", "22023"),
        ("SET pool.size = many", "22023"),
    ] {
        let e = c.simple_query(sql).await.unwrap_err();
        assert_eq!(sqlstate(&e), code, "{sql}: {e:?}");
    }
    assert_eq!(shared.config.load().pool.size, 9);

    // Without a file, RELOAD applies the running configuration again.
    c.simple_query("RELOAD").await.unwrap();
    assert_eq!(shared.config.load().pool.size, 9);

    // With a source, RELOAD reads it; a bad one is refused and nothing changes.
    let good = config_text(cluster().primary.addr(), &db, "[pool]\nsize = 6", "");
    let source = std::sync::Arc::new(std::sync::Mutex::new(good));
    let read = source.clone();
    let _ = shared
        .reload_source
        .set(Box::new(move || sluice::config::Config::from_toml(&read.lock().unwrap()).map_err(|e| e.to_string())));
    c.simple_query("reload;").await.unwrap();
    assert_eq!(shared.config.load().pool.size, 6);
    *source.lock().unwrap() = config_text(cluster().primary.addr(), &db, "[pool]\nsize = 0", "");
    let e = c.simple_query("RELOAD").await.unwrap_err();
    assert_eq!(sqlstate(&e), "F0000", "{e:?}");
    assert_eq!(shared.config.load().pool.size, 6);
    let (cols, rows) = admin_query(&c, "SHOW CONFIG").await;
    let size = rows.iter().find(|r| cell(&cols, r, "key") == Some("pool.size")).unwrap();
    assert_eq!(cell(&cols, size, "value"), Some("6"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_sluice() {
    let db = unique_db("admin_shutdown");
    let proxy = start_proxy(&db, "").await;
    let app = proxy.connect().await;
    app.simple_query("select 1").await.unwrap();
    let c = admin(proxy.addr).await;
    c.simple_query("SHUTDOWN").await.unwrap();
    assert!(proxy.sluice.shared().shutdown.is_cancelled());
    // Idle sessions, this console included, end.
    let ended = async {
        while !(app.is_closed() && c.is_closed()) {
            let _ = app.simple_query("select 1").await;
            let _ = c.simple_query("SHOW VERSION").await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), ended).await.expect("sessions end after SHUTDOWN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_talks_to_the_console() {
    let db = unique_db("admin_psql");
    let proxy = start_proxy(&db, "").await;
    let addr = proxy.addr;
    let out = tokio::task::spawn_blocking(move || {
        run(&mut psql(
            addr,
            "sluice",
            &["-P", "tuples_only=off", "-c", "SHOW POOLS", "-c", "SHOW VERSION", "-c", "show config"],
        ))
    })
    .await
    .unwrap();
    assert!(out.contains("database|user|cl_active|cl_waiting"), "{out}");
    assert!(out.contains("version\nsluice "), "{out}");
    assert!(out.contains("pool.size|20|20|yes"), "{out}");
}

/// `GET path` on `addr`: (status line, body).
fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    (head.lines().next().unwrap_or_default().to_owned(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_serves_the_interface_names() {
    let db = unique_db("admin_metrics");
    let replica = cluster().replica.as_ref().expect("replica").addr();
    let sections = "[server]\nmetrics_listen = \"127.0.0.1:0\"\n\n[routing]\nread_write_split = true\nlag_check_interval = \"20ms\"";
    let proxy = start_proxy_for(cluster().primary.addr(), &db, sections, &format!("replicas = [\"{replica}\"]")).await;
    let metrics = proxy.sluice.metrics_addr().expect("metrics are served");
    let app = proxy.connect().await;
    app.simple_query("select 1").await.unwrap();

    let idle_server =
        format!("sluice_servers{{database=\"{db}\",user=\"postgres\",role=\"primary\",state=\"idle\"}} 1");
    let mut scrape = (String::new(), String::new());
    for _ in 0..100 {
        scrape = tokio::task::spawn_blocking(move || http_get(metrics, "/metrics")).await.unwrap();
        if scrape.1.contains(&idle_server) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = scrape;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(body.contains(&idle_server), "{body}");
    for name in [
        "sluice_transactions_total",
        "sluice_queries_total",
        "sluice_clients",
        "sluice_servers",
        "sluice_replica_lag_bytes",
        "sluice_replica_lag_seconds",
        "sluice_cache_hits_total",
        "sluice_cache_misses_total",
        "sluice_cache_invalidations_total",
        "sluice_cache_bytes",
        "sluice_errors_total",
    ] {
        assert!(body.contains(&format!("\n{name}")) || body.starts_with(name), "{name} missing:\n{body}");
    }
    assert!(body.contains(&format!("sluice_transactions_total{{database=\"{db}\",route=\"replica\"}}")), "{body}");
    assert!(body.contains(&format!("sluice_replica_lag_bytes{{replica=\"{replica}\"}}")), "{body}");

    let (status, _) = tokio::task::spawn_blocking(move || http_get(metrics, "/")).await.unwrap();
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

/// Whether `f` is still pending after the other side had a fair chance to act (a negative check:
/// it gives the future a short while to finish and reports that it did not).
async fn still_pending<F: std::future::Future + Unpin>(f: &mut F) -> bool {
    tokio::time::timeout(Duration::from_millis(300), f).await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_waits_for_running_transactions_and_holds_new_ones_until_resume() {
    let db = unique_db("admin_pause");
    let proxy = start_proxy(&db, "[pool]\nsize = 2").await;
    let busy = proxy.connect().await;
    busy.batch_execute("CREATE TABLE t (v int)").await.unwrap();
    busy.batch_execute("BEGIN; INSERT INTO t VALUES (1)").await.unwrap();
    let console = admin(proxy.addr).await;

    let (cols, rows) = admin_query(&console, "SHOW SERVERS").await;
    let active = rows.iter().find(|r| cell(&cols, r, "state") == Some("active")).expect("the busy client's server");
    let link = cell(&cols, active, "link").unwrap().to_owned();
    let (ccols, crows) = admin_query(&console, "SHOW CLIENTS").await;
    let busy_client = crows.iter().find(|r| cell(&ccols, r, "ptr") == Some(link.as_str())).expect("linked client");
    assert_eq!(cell(&ccols, busy_client, "state"), Some("active"));

    // PAUSE returns only once the open transaction has ended.
    let mut pause = Box::pin(console.simple_query("PAUSE"));
    assert!(still_pending(&mut pause).await, "PAUSE returned while a transaction was running");
    busy.batch_execute("COMMIT").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), pause).await.expect("PAUSE finishes").expect("PAUSE succeeds");
    assert_eq!(backends(&db, ""), 0, "PAUSE closes the idle server connections");

    let (cols, rows) = admin_query(&admin(proxy.addr).await, "SHOW DATABASES").await;
    assert_eq!(cell(&cols, &rows[0], "paused"), Some("1"));

    // A new transaction waits, without an error, until RESUME.
    let waiter = proxy.connect().await;
    let mut read = Box::pin(waiter.simple_query("SELECT count(*) FROM t"));
    assert!(still_pending(&mut read).await, "a transaction ran while paused");
    let console2 = admin(proxy.addr).await;
    let (cols, rows) = admin_query(&console2, "SHOW CLIENTS").await;
    assert!(rows.iter().any(|r| cell(&cols, r, "state") == Some("waiting")), "{rows:?}");
    console2.simple_query("RESUME").await.expect("RESUME");
    let rows = tokio::time::timeout(Duration::from_secs(10), read).await.expect("resumed").expect("no error");
    let count = rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(count.as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_ends_the_sessions_of_a_database_and_holds_new_ones_until_resume() {
    let db = unique_db("admin_kill");
    let proxy = start_proxy(&db, "[pool]\nsize = 2").await;
    let victim = proxy.connect().await;
    victim.batch_execute("CREATE TABLE t (v int)").await.unwrap();
    victim.batch_execute("BEGIN; INSERT INTO t VALUES (1)").await.unwrap();
    let console = admin(proxy.addr).await;
    console.simple_query(&format!("KILL {db}")).await.expect("KILL");
    let err = victim.simple_query("SELECT 1").await.expect_err("the killed session is gone");
    assert!(err.is_closed() || err.code().is_some_and(|c| c.code() == "57P01"), "{err}");
    // Its transaction did not commit.
    assert!(eventually(Duration::from_secs(10), || backends(&db, "idle in transaction") == 0).await);
    assert_eq!(on_primary_db(&db, "SELECT count(*) FROM t").trim(), "0");

    // A new client waits for RESUME.
    let next = proxy.connect().await;
    let mut read = Box::pin(next.simple_query("SELECT 1"));
    assert!(still_pending(&mut read).await, "a killed database took a transaction before RESUME");
    console.simple_query(&format!("RESUME {db}")).await.expect("RESUME");
    tokio::time::timeout(Duration::from_secs(10), read).await.expect("resumed").expect("no error");
}

fn on_primary_db(db: &str, sql: &str) -> String {
    cluster().primary.psql(db, sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_advice_and_sluice_advise_size_the_pool_from_live_statistics() {
    let db = unique_db("admin_advice");
    let proxy = start_proxy(&db, "[pool]\nsize = 7").await;
    let app = proxy.connect().await;
    let console = admin(proxy.addr).await;
    // Under load for a while: the advice needs at least a second of transactions.
    let mut advice = None;
    for _ in 0..200 {
        for _ in 0..20 {
            app.simple_query("SELECT pg_sleep(0.001)").await.unwrap();
        }
        let (cols, rows) = admin_query(&console, "SHOW ADVICE").await;
        let row = rows.iter().find(|r| cell(&cols, r, "database") == Some(db.as_str())).expect("a row per database").clone();
        let rate: f64 = cell(&cols, &row, "transactions_per_second").unwrap().parse().unwrap();
        if rate > 0.0 {
            advice = Some((cols, row));
            break;
        }
    }
    let (cols, row) = advice.expect("SHOW ADVICE saw the transactions");
    assert_eq!(cell(&cols, &row, "pool_size"), Some("7"));
    let recommended: usize = cell(&cols, &row, "recommended_pool_size").unwrap().parse().unwrap();
    // One client running one transaction at a time: about one connection busy.
    assert!((2..7).contains(&recommended), "{row:?}");
    let hold: f64 = cell(&cols, &row, "server_ms_per_transaction").unwrap().parse().unwrap();
    assert!(hold >= 1.0, "each transaction sleeps 1 ms on its connection: {row:?}");
    assert!(cell(&cols, &row, "reason").is_some_and(|r| r.contains("Little's law")), "{row:?}");

    // The same advice from the command line, reading the running instance.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    let text = config_text(cluster().primary.addr(), &db, "", "").replace("127.0.0.1:0", &proxy.addr.to_string());
    std::fs::write(&file, text).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice")).args(["advise", "-c"]).arg(&file).output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("{db}: pool_size 7 -> recommended")), "{stdout}");
    assert!(stdout.contains("Little's law"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_around_a_postgres_restart_cost_clients_no_errors() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let bins = sluice::cluster::PgBinaries::locate().unwrap_or_else(|e| panic!("{e}"));
    let mut cluster = sluice::cluster::Cluster::start(&bins, &sluice::cluster::ClusterOptions::default())
        .unwrap_or_else(|e| panic!("starting a cluster: {e}"));
    cluster.primary.psql("postgres", "CREATE DATABASE app").expect("create database");
    cluster.primary.psql("app", "CREATE TABLE t (id serial PRIMARY KEY, v int)").expect("create table");
    let text = config_text(cluster.primary.addr(), "app", "[pool]\nsize = 4", "");
    let sluice = sluice::app::Sluice::start(sluice::config::Config::from_toml(&text).unwrap()).await.expect("sluice starts");
    let addr = sluice.local_addrs()[0];

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for i in 0..6 {
        let (stop, done, c) = (stop.clone(), done.clone(), connect(addr, "app").await);
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                c.execute("INSERT INTO t (v) VALUES ($1)", &[&i]).await.expect("no client error across the restart");
                c.query_one("SELECT count(*) FROM t", &[]).await.expect("no client error across the restart");
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    assert!(eventually(Duration::from_secs(20), || done.load(Ordering::Relaxed) >= 50).await);
    let console = admin(addr).await;
    console.simple_query("PAUSE app").await.expect("PAUSE");
    let before = done.load(Ordering::Relaxed);
    tokio::task::block_in_place(|| {
        cluster.primary.stop();
        cluster.primary.start().expect("Postgres restarts");
    });
    assert_eq!(done.load(Ordering::Relaxed), before, "nothing ran while paused");
    console.simple_query("RESUME app").await.expect("RESUME");
    assert!(eventually(Duration::from_secs(20), || done.load(Ordering::Relaxed) >= before + 50).await, "clients went on");
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("every client ran without an error");
    }
    sluice.shutdown(Duration::from_secs(2)).await;
}
