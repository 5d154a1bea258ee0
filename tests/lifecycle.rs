//! End-to-end: sluice's own lifecycle and limits — session mode, max_client_conn, reload,
//! graceful shutdown, server_lifetime, and a real client process killed mid-transaction.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

async fn pid(c: &tokio_postgres::Client) -> i32 {
    c.query_typed("select pg_backend_pid()", &[]).await.unwrap()[0].get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_keeps_one_server_per_client_and_discards_its_state_afterwards() {
    let db = unique_db("session_mode");
    let sluice = start_sluice(&db, "[pool]\nmode = \"session\"\nsize = 1\nquery_wait_timeout = \"300ms\"").await;
    let addr = sluice.local_addrs()[0];
    let a = connect(addr, &db).await;
    let first = pid(&a).await;
    a.batch_execute(
        "create temp table scratch (x int); set statement_timeout = '1234ms'; prepare p as select 1; \
         select pg_advisory_lock(42)",
    )
    .await
    .unwrap();
    for _ in 0..3 {
        assert_eq!(pid(&a).await, first, "a session-mode client changed server connections");
    }
    // The only server connection is a's for as long as a is connected.
    let b = connect(addr, &db).await;
    let e = b.simple_query("select 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), "57014");
    drop(a);
    let row = b
        .query_typed(
            "select pg_backend_pid(), to_regclass('pg_temp.scratch') is null, current_setting('statement_timeout'), \
             (select count(*) from pg_prepared_statements), (select count(*) from pg_locks where locktype = 'advisory')",
            &[],
        )
        .await
        .unwrap();
    let r = &row[0];
    assert_eq!(r.get::<_, i32>(0), first, "the server connection was reused");
    assert!(r.get::<_, bool>(1), "the previous session's temp table is visible");
    assert_eq!(r.get::<_, String>(2), "0", "the previous session's SET leaked");
    assert_eq!(r.get::<_, i64>(3), 0, "the previous session's prepared statement leaked");
    assert_eq!(r.get::<_, i64>(4), 0, "the previous session's advisory lock is still held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_beyond_max_client_conn_are_refused_with_53300() {
    let db = unique_db("max_client");
    let sluice = start_sluice(&db, "[server]\nmax_client_conn = 2").await;
    let addr = sluice.local_addrs()[0];
    let a = connect(addr, &db).await;
    let _b = connect(addr, &db).await;
    let e = connect_as(addr, &db, "postgres", "").await.unwrap_err();
    assert_eq!(sqlstate(&e), "53300");
    drop(a);
    let shared = sluice.shared().clone();
    assert!(eventually(Duration::from_secs(5), || shared.client_count() == 1).await);
    connect(addr, &db).await.simple_query("select 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_new_pool_settings_without_dropping_clients() {
    let db = unique_db("reload");
    let base = "[pool]\nsize = 1\nquery_wait_timeout = \"10s\"";
    let sluice = start_sluice(&db, base).await;
    let addr = sluice.local_addrs()[0];
    let holder = connect(addr, &db).await;
    holder.batch_execute("begin; select 1").await.unwrap();
    let waiter = connect(addr, &db).await;
    let waiting = tokio::spawn(async move {
        let r = waiter.simple_query("select 2").await.map(|_| ());
        (r, waiter)
    });
    assert!(eventually(Duration::from_secs(5), || sluice.shared().pools.all()[0].1.state().waiting == 1).await);
    // An invalid configuration is refused and the running one stays.
    let bad: sluice::config::Config =
        toml::from_str(&config_text(cluster().primary.addr(), &db, "[pool]\nsize = 0", "")).unwrap();
    let e = sluice.reload(bad).unwrap_err().to_string();
    assert!(e.contains("pool.size"), "{e}");
    assert_eq!(sluice.shared().pools.all()[0].1.state().waiting, 1);
    // A larger pool serves the waiter while the holder keeps its transaction open.
    let bigger = config_text(cluster().primary.addr(), &db, "[pool]\nsize = 2\nquery_wait_timeout = \"10s\"", "");
    sluice.reload(sluice::config::Config::from_toml(&bigger).unwrap()).unwrap();
    let start = Instant::now();
    let (r, waiter) = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("served after reload").unwrap();
    r.unwrap();
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
    assert_eq!(backends(&db, ""), 2);
    holder.batch_execute("commit").await.unwrap();
    waiter.simple_query("select 3").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_running_transaction_finish_and_closes_idle_clients() {
    let db = unique_db("shutdown");
    let sluice = std::sync::Arc::new(start_sluice(&db, "").await);
    let addr = sluice.local_addrs()[0];
    let busy = connect(addr, &db).await;
    busy.batch_execute("create table t (id int); begin; insert into t values (1)").await.unwrap();
    let idle = connect(addr, &db).await;
    idle.simple_query("select 1").await.unwrap();
    let stopping = {
        let sluice = sluice.clone();
        tokio::spawn(async move { sluice.shutdown(Duration::from_secs(10)).await })
    };
    assert!(eventually(Duration::from_secs(5), || idle.is_closed()).await, "the idle client was not closed");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "still accepting during shutdown");
    // The transaction in progress may go on and commit.
    busy.batch_execute("insert into t values (2)").await.unwrap();
    busy.batch_execute("commit").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), stopping).await.expect("shutdown ends when the transaction does").unwrap();
    assert!(eventually(Duration::from_secs(5), || busy.is_closed()).await);
    assert_eq!(on_primary(&format!("\\c {db}\nselect count(*) from t")), "2");
    assert!(eventually(Duration::from_secs(5), || backends(&db, "") == 0).await, "server connections left open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_connections_older_than_server_lifetime_are_replaced() {
    let db = unique_db("lifetime");
    let sluice = start_sluice(&db, "[pool]\nserver_lifetime = \"1s\"").await;
    let c = connect(sluice.local_addrs()[0], &db).await;
    let first = pid(&c).await;
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        if pid(&c).await != first {
            break;
        }
        assert!(Instant::now() < deadline, "server connection {first} outlived server_lifetime");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(eventually(Duration::from_secs(5), || backends(&db, "") == 1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_psql_killed_mid_transaction_leaves_no_lock_behind() {
    let db = unique_db("killed_psql");
    let sluice = start_sluice(&db, "[pool]\nsize = 2").await;
    let addr = sluice.local_addrs()[0];
    let c = connect(addr, &db).await;
    c.batch_execute("create table t (id int primary key, v int); insert into t values (1, 0)").await.unwrap();
    let d = db.clone();
    tokio::task::spawn_blocking(move || {
        let mut child = psql(addr, &d, &[]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"begin;\nupdate t set v = 1 where id = 1;\nselect 'locked';\n").unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while line.trim() != "locked" {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "psql ended early");
        }
        child.kill().unwrap();
        child.wait().unwrap();
    })
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || backends(&db, "idle in transaction") == 0).await,
        "a transaction was left open: {:?}",
        server_activity(&db)
    );
    c.batch_execute("set lock_timeout = '2s'; update t set v = 2 where id = 1").await.unwrap();
    let v: i32 = c.query_typed("select v from t where id = 1", &[]).await.unwrap()[0].get(0);
    assert_eq!(v, 2);
}
