//! `cargo bench --bench logical_invalidation [-- --quick]`
//!
//! How long a write made straight on the primary, around sluice, goes on being served stale
//! from the cache with `cache.invalidation_source = "logical"`. Starts a Postgres primary
//! (`sluice::cluster`, `wal_level = logical`) with a table `t (id int primary key, v int)` and a
//! sluice in this process with the cache on (TTL 60 s) and logical invalidation. Then, for each
//! of 200 writes (50 with `--quick`):
//!
//! 1. reads `SELECT v FROM t WHERE id = 1` through sluice until a read is a hit (cached);
//! 2. runs `UPDATE t SET v = <n> WHERE id = 1` on a direct connection (`synchronous_commit =
//!    on`, as in production; with it off the walsender waits for the WAL writer);
//! 3. reads through sluice in a tight loop until the answer is `<n>`.
//!
//! The delay is measured from the UPDATE's acknowledgement (the commit) to the first read
//! answering the new value, and also from sending the UPDATE (an upper bound that includes the
//! commit's round trip). Prints median, p90, p99 and max of both.
//!
//! Needs the Postgres server binaries. The server dies with this process (`sluice::cluster`).

mod support;

use sluice::cluster::{Cluster, ClusterOptions, PgBinaries};
use sluice::metrics::cache::CacheReport;
use std::time::{Duration, Instant};
use support::*;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

fn main() {
    bench_main("logical_invalidation", run);
}

fn run(secs: u64) -> Result<()> {
    catch_signals();
    let writes = if secs <= 3 { 50 } else { 200 };
    let bins = PgBinaries::locate().map_err(|e| e.to_string())?;
    let cluster = Cluster::start(&bins, &ClusterOptions::default()).map_err(|e| e.to_string())?;
    cluster
        .primary
        .psql("postgres", "CREATE DATABASE bench")
        .map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(measure(&cluster, writes))
}

async fn connect(addr: std::net::SocketAddr, db: &str) -> Result<Client> {
    let conn_str = format!("host={} port={} user=postgres dbname={db}", addr.ip(), addr.port());
    let (client, conn) = tokio_postgres::connect(&conn_str, NoTls).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

async fn value(c: &Client, sql: &str) -> Result<Option<String>> {
    let msgs = c.simple_query(sql).await.map_err(|e| e.to_string())?;
    Ok(msgs.into_iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    }))
}

async fn measure(cluster: &Cluster, writes: usize) -> Result<()> {
    let primary = cluster.primary.addr();
    let direct = connect(primary, "bench").await?;
    direct
        .batch_execute("SET synchronous_commit = on; CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 0)")
        .await
        .map_err(|e| e.to_string())?;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[databases.bench]\nprimary = \"{primary}\"\n\
         [cache]\nenabled = true\nttl = \"60s\"\ninvalidation_source = \"logical\"\nlogical_slot = \"sluice_bench\"\n"
    );
    let config = sluice::config::Config::from_toml(&text).map_err(|e| e.to_string())?;
    let sluice = sluice::app::Sluice::start(config).await.map_err(|e| e.to_string())?;
    let cache = sluice.shared().cache.clone().ok_or("cache off")?;
    let key = format!("{primary}/bench");
    let deadline = Instant::now() + Duration::from_secs(30);
    while cache.generations.database(&key).is_suspended() {
        check_interrupted()?;
        if Instant::now() > deadline {
            return Err("the replication stream did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let client = connect(sluice.local_addrs()[0], "bench").await?;
    const READ: &str = "SELECT v FROM t WHERE id = 1";
    let (mut from_commit, mut from_send) = (Vec::new(), Vec::new());
    let mut polls = 0u64;
    for n in 1..=writes {
        check_interrupted()?;
        // Cached: a read that is a hit.
        loop {
            let hits = cache.stats().hits;
            value(&client, READ).await?;
            if cache.stats().hits > hits {
                break;
            }
        }
        let sent = Instant::now();
        direct
            .batch_execute(&format!("UPDATE t SET v = {n} WHERE id = 1"))
            .await
            .map_err(|e| e.to_string())?;
        let committed = Instant::now();
        let want = n.to_string();
        loop {
            polls += 1;
            if value(&client, READ).await?.as_deref() == Some(want.as_str()) {
                break;
            }
            if committed.elapsed() > Duration::from_secs(10) {
                return Err(format!("write {n} not seen after 10 s"));
            }
        }
        let seen = Instant::now();
        from_commit.push(seen - committed);
        from_send.push(seen - sent);
    }
    sluice.shutdown(Duration::ZERO).await;
    println!("# logical invalidation delay, {writes} direct writes ({polls} reads polled)");
    println!("{}", machine());
    println!("| measured from | median | p90 | p99 | max |");
    println!("|---|---|---|---|---|");
    for (name, mut v) in [("commit acknowledged", from_commit), ("UPDATE sent", from_send)] {
        v.sort();
        let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        println!(
            "| {name} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
            ms(q(0.5)),
            ms(q(0.9)),
            ms(q(0.99)),
            ms(v[v.len() - 1])
        );
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
