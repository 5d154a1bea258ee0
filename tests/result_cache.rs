//! The result cache end to end, on real Postgres: what is cached, and that no read through
//! sluice ever sees data older than a write committed through sluice before it began.
//!
//! A read is shown to come from the cache by changing its row straight on the primary
//! (around sluice, which the cache cannot see): a cached answer still has the old value. A
//! write through sluice must be seen at once.

mod common;

use common::*;
use sluice::cluster::{Cluster, ClusterOptions, PgBinaries};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::SimpleQueryMessage;

const CACHE: &str = "[pool]\nsize = 4\n\n[cache]\nenabled = true\nttl = \"60s\"\n";

/// A database with table `t (k int primary key, v int)` holding (1, 10) and (2, 20), and sluice
/// in front of it with the cache on (`extra` merged over the configuration).
async fn setup(name: &str, extra: &str) -> (Proxy, tokio_postgres::Client) {
    let db = unique_db(name);
    on_db(&db, "CREATE TABLE t (k int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 10), (2, 20)");
    let sections = if extra.contains("[cache]") { format!("[pool]\nsize = 4\n{extra}") } else { format!("{CACHE}{extra}") };
    let proxy = start_proxy(&db, &sections).await;
    let client = proxy.connect().await;
    (proxy, client)
}

/// Runs SQL straight on the primary, around sluice.
fn on_db(db: &str, sql: &str) -> String {
    cluster().primary.psql(db, sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The first column of the first row of a simple query.
async fn first(c: &tokio_postgres::Client, sql: &str) -> String {
    let rows = c.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_owned()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

/// `v` of key `k`, through the extended protocol with a parameter.
async fn value(c: &tokio_postgres::Client, k: i32) -> i32 {
    c.query_one("SELECT v FROM t WHERE k = $1", &[&k]).await.expect("read").get(0)
}

/// SHOW CACHE as (column, value) pairs.
async fn show_cache(addr: std::net::SocketAddr) -> Vec<(String, String)> {
    let admin = connect(addr, "sluice").await;
    let msgs = admin.simple_query("SHOW CACHE").await.expect("SHOW CACHE");
    let mut out = Vec::new();
    for m in msgs {
        if let SimpleQueryMessage::Row(r) = m {
            for (i, col) in r.columns().iter().enumerate() {
                out.push((col.name().to_owned(), r.get(i).unwrap_or("").to_owned()));
            }
        }
    }
    out
}

fn stat(stats: &[(String, String)], name: &str) -> u64 {
    stats.iter().find(|(k, _)| k == name).and_then(|(_, v)| v.parse().ok()).unwrap_or_else(|| panic!("{name} in {stats:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_is_answered_from_the_cache_until_a_write_through_sluice() {
    let (proxy, c) = setup("cache_basic", "").await;
    let other = proxy.connect().await;
    let read = "SELECT v FROM t WHERE k = 1";
    assert_eq!(first(&c, read).await, "10");
    on_db(&proxy.db, "UPDATE t SET v = 11 WHERE k = 1");
    assert_eq!(first(&c, read).await, "10", "the second read is the cached answer");
    assert_eq!(first(&other, read).await, "10", "another client of the same user shares it");

    // A write through sluice is seen at once, by the writer and by everyone else.
    c.execute("UPDATE t SET v = 12 WHERE k = 1", &[]).await.unwrap();
    assert_eq!(first(&c, read).await, "12");
    assert_eq!(first(&other, read).await, "12");

    // The extended protocol, with parameters: each value its own entry.
    assert_eq!((value(&c, 1).await, value(&c, 2).await), (12, 20));
    on_db(&proxy.db, "UPDATE t SET v = 21 WHERE k = 2");
    assert_eq!((value(&c, 1).await, value(&c, 2).await), (12, 20), "cached per parameter value");
    other.execute("UPDATE t SET v = $1 WHERE k = $2", &[&22, &2]).await.unwrap();
    assert_eq!(value(&c, 2).await, 22, "an extended-protocol write from another client invalidates");

    let stats = show_cache(proxy.addr).await;
    assert!(stat(&stats, "hits") >= 3 && stat(&stats, "entries") >= 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_write_keeps_entries_and_a_committed_one_drops_them() {
    let (proxy, c) = setup("cache_rollback", "").await;
    let read = "SELECT v FROM t WHERE k = 1";
    assert_eq!(first(&c, read).await, "10");
    on_db(&proxy.db, "UPDATE t SET v = 11 WHERE k = 1");
    c.batch_execute("BEGIN; UPDATE t SET v = 99 WHERE k = 1; ROLLBACK").await.unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("DELETE FROM t WHERE k = 2").await.unwrap();
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(first(&c, read).await, "10", "rolled-back writes invalidate nothing");
    c.batch_execute("BEGIN; UPDATE t SET v = v + 1 WHERE k = 2; COMMIT").await.unwrap();
    assert_eq!(first(&c, read).await, "11", "a committed write to the table drops its entries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_never_see_each_others_cached_rows() {
    let db = unique_db("cache_roles");
    let (alice, bob) = (format!("{db}_alice"), format!("{db}_bob"));
    on_db(
        &db,
        &format!(
            "CREATE ROLE {alice} LOGIN; CREATE ROLE {bob} LOGIN; \
             CREATE TABLE docs (owner text, body text); \
             INSERT INTO docs VALUES ('{alice}', 'alice''s'), ('{bob}', 'bob''s'); \
             ALTER TABLE docs ENABLE ROW LEVEL SECURITY; \
             CREATE POLICY own ON docs USING (owner = current_user); \
             GRANT SELECT ON docs TO {alice}, {bob}"
        ),
    );
    let proxy = start_proxy(&db, CACHE).await;
    let a = proxy.connect_with(&alice, "").await.unwrap();
    let b = proxy.connect_with(&bob, "").await.unwrap();
    let read = "SELECT string_agg(body, ',') FROM docs";
    for _ in 0..2 {
        assert_eq!(first(&a, read).await, "alice's");
        assert_eq!(first(&b, read).await, "bob's");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_path_is_part_of_the_key() {
    let db = unique_db("cache_search_path");
    on_db(&db, "CREATE SCHEMA a; CREATE SCHEMA b; CREATE TABLE a.t (v text); CREATE TABLE b.t (v text); INSERT INTO a.t VALUES ('a'); INSERT INTO b.t VALUES ('b')");
    let proxy = start_proxy(&db, CACHE).await;
    let in_a = proxy.connect_with("postgres", "options='-c search_path=a'").await.unwrap();
    let in_b = proxy.connect().await;
    in_b.batch_execute("SET search_path = b").await.unwrap();
    for _ in 0..2 {
        assert_eq!(first(&in_a, "SELECT v FROM t").await, "a");
        assert_eq!(first(&in_b, "SELECT v FROM t").await, "b");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_truncate_copy_and_ddl_through_sluice_invalidate() {
    let (proxy, c) = setup("cache_writes", "").await;
    let count = "SELECT count(*), coalesce(sum(v), 0) FROM t";
    // Each round: fill, change around sluice (proving the next read is cached), then write
    // through sluice, whose effect must show at once.
    let rounds: [(&str, &str); 4] = [
        ("MERGE INTO t USING (VALUES (3, 30)) s(k, v) ON t.k = s.k WHEN NOT MATCHED THEN INSERT VALUES (s.k, s.v)", "3"),
        ("TRUNCATE t", "0"),
        ("ALTER TABLE t ADD COLUMN w int", "0"),
        ("DROP TABLE t; CREATE TABLE t (k int PRIMARY KEY, v int); INSERT INTO t VALUES (7, 7)", "1"),
    ];
    for (i, (write, expected)) in rounds.iter().enumerate() {
        let before = first(&c, count).await;
        on_db(&proxy.db, &format!("INSERT INTO t (k, v) VALUES ({}, 1)", 100 + i));
        assert_eq!(first(&c, count).await, before, "round {i}: cached before the write");
        c.batch_execute(write).await.unwrap();
        on_db(&proxy.db, &format!("DELETE FROM t WHERE k = {}", 100 + i));
        assert_eq!(first(&c, count).await.split(',').next(), Some(*expected), "after {write}");
    }
    // COPY FROM STDIN through sluice.
    let before = first(&c, count).await;
    let sink = c.copy_in("COPY t (k, v) FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    futures_util::SinkExt::send(&mut sink, bytes::Bytes::from_static(b"8\t8\n9\t9\n")).await.unwrap();
    sink.finish().await.unwrap();
    assert_ne!(first(&c, count).await, before, "COPY FROM invalidates");
    assert_eq!(first(&c, count).await, "3", "{before}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_views_and_volatile_reads() {
    let (proxy, c) = setup("cache_hints", "\n[cache]\nenabled = true\nttl = \"60s\"\nmode = \"hint\"\n").await;
    on_db(&proxy.db, "CREATE VIEW tv AS SELECT * FROM t");
    let plain = "SELECT v FROM t WHERE k = 1";
    let hinted = "/* sluice:cache ttl=30s */ SELECT v FROM t WHERE k = 1";
    let view = "/* sluice:cache */ SELECT v FROM tv WHERE k = 1";
    let volatile = "/* sluice:cache */ SELECT v, random() < 2 FROM t WHERE k = 1";
    for sql in [plain, hinted, view, volatile] {
        assert_eq!(first(&c, sql).await, "10");
    }
    on_db(&proxy.db, "UPDATE t SET v = 11 WHERE k = 1");
    assert_eq!(first(&c, plain).await, "11", "mode = hint: an unhinted read is not cached");
    assert_eq!(first(&c, hinted).await, "10", "a hinted read is");
    assert_eq!(first(&c, view).await, "11", "a read over a view is not cached");
    assert_eq!(first(&c, volatile).await, "11", "a read calling random() is not cached");
    assert_eq!(first(&c, "/* sluice:nocache */ SELECT v FROM t WHERE k = 1").await, "11");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_clear_empties_the_cache_and_metrics_count_cache_transactions() {
    let (proxy, c) = setup("cache_clear", "\n[server]\nmetrics_listen = \"127.0.0.1:0\"\n").await;
    let read = "SELECT v FROM t WHERE k = 1";
    assert_eq!(first(&c, read).await, "10");
    assert_eq!(first(&c, read).await, "10");
    on_db(&proxy.db, "UPDATE t SET v = 11 WHERE k = 1");
    assert_eq!(first(&c, read).await, "10");
    let admin = connect(proxy.addr, "sluice").await;
    admin.simple_query("CACHE CLEAR").await.expect("CACHE CLEAR");
    assert_eq!(stat(&show_cache(proxy.addr).await, "entries"), 0);
    assert_eq!(first(&c, read).await, "11", "nothing cached after CACHE CLEAR");

    let metrics_addr = proxy.sluice.metrics_addr().expect("metrics endpoint");
    let body = http_metrics(metrics_addr);
    let cache_tx = body
        .lines()
        .find(|l| l.starts_with("sluice_transactions_total{") && l.contains("route=\"cache\""))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(cache_tx >= 2.0, "route=cache transactions: {cache_tx}\n{body}");
    assert!(body.contains("sluice_cache_hits_total"), "{body}");
}

fn http_metrics(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("metrics connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

/// Writers increment counters through sluice; readers read them through sluice with the cache
/// on. Each writer publishes the value it committed once its commit has returned; a reader
/// notes the newest published value of a key before its read begins, and the read must not be
/// older. Returns (reads, hits).
async fn check_freshness(addr: std::net::SocketAddr, db: &str, secs: u64) -> (u64, u64) {
    const KEYS: i32 = 4;
    let newest: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..2 {
        let (newest, stop, c) = (newest.clone(), stop.clone(), connect(addr, db).await);
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let k = i % KEYS;
                i += 1;
                let row = c.query_one("UPDATE counters SET v = v + 1 WHERE k = $1 RETURNING v", &[&k]).await.expect("write");
                let v: i64 = row.get(0);
                newest[k as usize].fetch_max(v as u64, Ordering::SeqCst);
                // Room for reads to hit between writes.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    for r in 0..4 {
        let (newest, stop, reads, c) = (newest.clone(), stop.clone(), reads.clone(), connect(addr, db).await);
        tasks.push(tokio::spawn(async move {
            let mut i = r;
            while !stop.load(Ordering::Relaxed) {
                let k = i % KEYS;
                i += 1;
                let floor = newest[k as usize].load(Ordering::SeqCst);
                let v: i64 = if i % 2 == 0 {
                    c.query_one("SELECT v FROM counters WHERE k = $1", &[&k]).await.expect("read").get(0)
                } else {
                    first(&c, &format!("SELECT v FROM counters WHERE k = {k}")).await.parse().unwrap()
                };
                assert!(v as u64 >= floor, "key {k}: read {v} after {floor} was committed");
                reads.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("no reader or writer failed");
    }
    let hits = stat(&show_cache(addr).await, "hits");
    (reads.load(Ordering::Relaxed), hits)
}

const COUNTERS: &str = "CREATE TABLE counters (k int PRIMARY KEY, v bigint); INSERT INTO counters SELECT g, 0 FROM generate_series(0, 3) g";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_is_older_than_a_write_committed_before_it_began() {
    let db = unique_db("cache_fresh");
    on_db(&db, COUNTERS);
    let proxy = start_proxy(&db, CACHE).await;
    let (reads, hits) = check_freshness(proxy.addr, &db, 4).await;
    assert!(reads > 200 && hits > 20, "not a real check: {reads} reads, {hits} hits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_is_stale_with_the_router_and_a_replica_either() {
    let bins = PgBinaries::locate().unwrap_or_else(|e| panic!("{e}"));
    let cluster = Cluster::start(&bins, &ClusterOptions { replica: true, ..ClusterOptions::default() })
        .unwrap_or_else(|e| panic!("starting a cluster: {e}"));
    cluster.primary.psql("postgres", "CREATE DATABASE app").expect("create database");
    cluster.primary.psql("app", COUNTERS).expect("create table");
    cluster.wait_replica_caught_up().expect("replica catches up");
    let replica = cluster.replica.as_ref().expect("a replica").addr();
    // With `off`, every read here is cacheable, so only the cache decides what is fresh; with
    // `global`, replicas must keep the same promise.
    for ryw in ["off", "global"] {
        let sections = format!(
            "{CACHE}\n[routing]\nread_write_split = true\nlag_check_interval = \"20ms\"\nread_your_writes = \"{ryw}\"\n"
        );
        let text = config_text(cluster.primary.addr(), "app", &sections, &format!("replicas = [\"{replica}\"]"));
        let config = sluice::config::Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let sluice = sluice::app::Sluice::start(config).await.expect("sluice starts");
        let (reads, hits) = check_freshness(sluice.local_addrs()[0], "app", 3).await;
        assert!(reads > 100 && hits > 10, "read_your_writes = {ryw}: not a real check: {reads} reads, {hits} hits");
        sluice.shutdown(Duration::from_secs(2)).await;
    }
}
