//! Read/write routing against a real primary and streaming replica: reads go to the replica
//! while it is within the lag limits, writes to the primary, and a client never reads older data
//! than read-your-writes promises.
//!
//! Tests that pause replay or stop the replica get a cluster of their own, so they never disturb
//! each other. Which server answered is told by `pg_is_in_recovery()`, listed as a read-only
//! function in the configuration.

mod common;

use common::{config_text, eventually};
use sluice::cluster::{Cluster, ClusterOptions, PgBinaries};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DB: &str = "app";

/// A primary and replica for one test, with database `app` and table `t (id int, v int)`.
fn own_cluster() -> Cluster {
    let bins = PgBinaries::locate().unwrap_or_else(|e| panic!("{e}"));
    let opts = ClusterOptions { replica: true, ..ClusterOptions::default() };
    let cluster = Cluster::start(&bins, &opts).unwrap_or_else(|e| panic!("starting a cluster: {e}"));
    cluster.primary.psql("postgres", &format!("CREATE DATABASE {DB}")).expect("create database");
    cluster.primary.psql(DB, "CREATE TABLE t (id int primary key, v int)").expect("create table");
    cluster.wait_replica_caught_up().expect("replica catches up");
    cluster
}

fn replica(cluster: &Cluster) -> &sluice::cluster::PgInstance {
    cluster.replica.as_ref().expect("the cluster has a replica")
}

/// Starts sluice in front of `cluster` with read/write splitting; `routing` adds `[routing]`
/// keys.
async fn start_router(cluster: &Cluster, routing: &str) -> sluice::app::Sluice {
    let sections = format!(
        "[pool]\nsize = 4\n\n[routing]\nread_write_split = true\nlag_check_interval = \"20ms\"\n\
         read_only_functions = [\"pg_is_in_recovery\"]\n{routing}"
    );
    let db_extra = format!("replicas = [\"{}\"]", replica(cluster).addr());
    let text = config_text(cluster.primary.addr(), DB, &sections, &db_extra);
    let config = sluice::config::Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    sluice::app::Sluice::start(config).await.expect("sluice starts")
}

async fn connect(sluice: &sluice::app::Sluice) -> tokio_postgres::Client {
    common::connect(sluice.local_addrs()[0], DB).await
}

/// Whether a simple autocommit read through `client` was answered by the replica.
async fn read_on_replica(client: &tokio_postgres::Client) -> bool {
    let rows = client.simple_query("SELECT pg_is_in_recovery()").await.expect("read");
    first_value(&rows).as_deref() == Some("t")
}

/// The first column of the first row of a simple query's answer.
fn first_value(messages: &[tokio_postgres::SimpleQueryMessage]) -> Option<String> {
    messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    })
}

async fn count(client: &tokio_postgres::Client) -> i64 {
    client.query_one("SELECT count(*) FROM t", &[]).await.expect("count").get(0)
}

/// Polls until reads through `client` land where `on_replica` says, or fails after 20 s.
async fn wait_reads_on(client: &tokio_postgres::Client, on_replica: bool, what: &str) {
    let start = Instant::now();
    while read_on_replica(client).await != on_replica {
        assert!(start.elapsed() < Duration::from_secs(20), "{what}: reads did not move in 20 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Resumes replay when dropped, so a failed assertion never leaves the replica paused.
struct PausedReplay<'a>(&'a sluice::cluster::PgInstance);

impl<'a> PausedReplay<'a> {
    fn pause(replica: &'a sluice::cluster::PgInstance) -> Self {
        replica.psql("postgres", "SELECT pg_wal_replay_pause()").expect("pause replay");
        PausedReplay(replica)
    }
}

impl Drop for PausedReplay<'_> {
    fn drop(&mut self) {
        let _ = self.0.psql("postgres", "SELECT pg_wal_replay_resume()");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_the_replica_and_writes_to_the_primary() {
    let cluster = own_cluster();
    // Without read-your-writes, so that reads after this test's writes may use the replica.
    let sluice = start_router(&cluster, "read_your_writes = \"off\"").await;
    let c = connect(&sluice).await;
    wait_reads_on(&c, true, "a healthy replica").await;
    // Writes, explicit transactions and unlisted functions stay on the primary.
    c.batch_execute("INSERT INTO t VALUES (1, 1)").await.unwrap();
    let tx = c.simple_query("BEGIN; SELECT pg_is_in_recovery(); COMMIT").await.unwrap();
    assert_eq!(first_value(&tx).as_deref(), Some("f"), "a read-write transaction runs on the primary");
    let hinted = c.simple_query("/* sluice:primary */ SELECT pg_is_in_recovery()").await.unwrap();
    assert_eq!(first_value(&hinted).as_deref(), Some("f"), "the primary hint wins");
    // A read-only transaction goes to the replica as a whole.
    let ro = c.simple_query("BEGIN READ ONLY; SELECT pg_is_in_recovery(); COMMIT").await.unwrap();
    assert_eq!(first_value(&ro).as_deref(), Some("t"), "BEGIN READ ONLY runs on the replica");
    c.batch_execute("BEGIN READ ONLY").await.unwrap();
    assert!(read_on_replica(&c).await, "inside a read-only transaction");
    let err = c.batch_execute("INSERT INTO t VALUES (3, 3)").await.unwrap_err();
    assert_eq!(common::sqlstate(&err), "25006", "a write in a read-only transaction fails as on Postgres");
    c.batch_execute("ROLLBACK").await.unwrap();
    // Prepared statements (tokio-postgres prepares every query) are routed by their text.
    let on_replica: bool = c.query_one("SELECT pg_is_in_recovery()", &[]).await.unwrap().get(0);
    assert!(on_replica, "a prepared read runs on the replica");
    let n: i64 = c.query_one("INSERT INTO t VALUES (2, 2) RETURNING (SELECT count(*) FROM t)", &[]).await.unwrap().get(0);
    assert_eq!(n, 1, "a prepared write runs on the primary");
    // Counted per route, and per replica.
    let counters = sluice.shared().metrics.database(DB);
    use sluice::metrics::Route;
    assert!(counters.transactions(Route::Replica) >= 4, "replica transactions are counted");
    assert!(counters.transactions(Route::Primary) >= 4, "primary transactions are counted");
    assert!(counters.queries(Route::Replica) >= counters.transactions(Route::Replica));
    let table = sluice.shared().routing.load_full();
    let replicas = table.databases[DB].set.replicas();
    assert!(replicas[0].reads_routed() >= 4);
    sluice.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_read_then_write_never_sends_the_write_to_the_replica() {
    let cluster = own_cluster();
    let sluice = start_router(&cluster, "read_your_writes = \"off\"").await;
    let c = connect(&sluice).await;
    wait_reads_on(&c, true, "a healthy replica").await;
    for i in 0..50 {
        // tokio-postgres pipelines these: both requests are in flight at once.
        let id: i32 = 100 + i;
        let params: [(&(dyn tokio_postgres::types::ToSql + Sync), tokio_postgres::types::Type); 1] =
            [(&id, tokio_postgres::types::Type::INT4)];
        let read = c.query_typed("SELECT pg_is_in_recovery()", &[]);
        let write = c.query_typed("INSERT INTO t VALUES ($1, 0)", &params);
        let (r, w) = tokio::join!(read, write);
        r.expect("the read succeeds");
        w.expect("the write reaches the primary");
    }
    let on_primary: i64 = c.query_one("/* sluice:primary */ SELECT count(*) FROM t", &[]).await.unwrap().get(0);
    assert_eq!(on_primary, 50);
    sluice.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_paused_moves_reads_to_the_primary_once_lag_passes_the_limit_and_back_after_resume() {
    let cluster = own_cluster();
    let sluice = start_router(&cluster, "max_replica_lag = \"300ms\"\nmax_replica_lag_bytes = 4096\nread_your_writes = \"off\"").await;
    let c = connect(&sluice).await;
    wait_reads_on(&c, true, "a healthy replica").await;
    {
        let _paused = PausedReplay::pause(replica(&cluster));
        cluster
            .primary
            .psql(DB, "INSERT INTO t SELECT g, g FROM generate_series(1, 2000) g")
            .expect("write on the primary");
        wait_reads_on(&c, false, "replay paused with writes").await;
        assert_eq!(count(&c).await, 2000, "reads on the primary see the writes");
    }
    wait_reads_on(&c, true, "replay resumed").await;
    cluster.wait_replica_caught_up().expect("replica catches up");
    assert_eq!(count(&c).await, 2000, "the replica is back and caught up");
    sluice.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reads_own_write_while_replica_replay_is_paused() {
    let cluster = own_cluster();
    // Lag limits so loose that the paused replica stays healthy: only read-your-writes decides.
    let sluice = start_router(&cluster, "max_replica_lag = \"1h\"\nmax_replica_lag_bytes = \"1GB\"\nread_your_writes = \"session\"").await;
    let writer = connect(&sluice).await;
    let other = connect(&sluice).await;
    wait_reads_on(&writer, true, "a healthy replica").await;
    wait_reads_on(&other, true, "a healthy replica").await;
    let _paused = PausedReplay::pause(replica(&cluster));
    for i in 1..=20 {
        writer.execute("INSERT INTO t VALUES ($1, 0)", &[&i]).await.unwrap();
        assert_eq!(count(&writer).await, i64::from(i), "the writer sees its own write at once");
    }
    // Session mode promises nothing across clients: the other one still reads the replica.
    assert!(read_on_replica(&other).await);
    assert_eq!(count(&other).await, 0, "the paused replica has not replayed the writes");
    sluice.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_read_your_writes_holds_across_connections_while_replay_is_paused() {
    let cluster = own_cluster();
    let sluice = start_router(&cluster, "max_replica_lag = \"1h\"\nmax_replica_lag_bytes = \"1GB\"\nread_your_writes = \"global\"").await;
    let writer = connect(&sluice).await;
    let reader = connect(&sluice).await;
    wait_reads_on(&reader, true, "a healthy replica").await;
    {
        let _paused = PausedReplay::pause(replica(&cluster));
        for i in 1..=20 {
            writer.execute("INSERT INTO t VALUES ($1, 0)", &[&i]).await.unwrap();
            assert_eq!(count(&reader).await, i64::from(i), "another connection sees the write at once");
        }
        assert!(!read_on_replica(&reader).await, "reads wait for the replica on the primary");
    }
    wait_reads_on(&reader, true, "replay resumed past the writes").await;
    assert_eq!(count(&reader).await, 20);
    sluice.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_stopped_mid_run_reads_fall_back_without_errors_and_return_when_it_is_back() {
    let mut cluster = own_cluster();
    let sluice = start_router(&cluster, "read_your_writes = \"off\"").await;
    let c = connect(&sluice).await;
    wait_reads_on(&c, true, "a healthy replica").await;
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let client = connect(&sluice).await;
        let (stop, reads) = (stop.clone(), reads.clone());
        readers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                client.query_one("SELECT count(*) FROM t", &[]).await.expect("no read fails while the replica goes away");
                reads.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    let before = reads.load(Ordering::Relaxed);
    assert!(eventually(Duration::from_secs(10), || reads.load(Ordering::Relaxed) > before + 20).await);
    cluster.replica.as_mut().unwrap().stop();
    wait_reads_on(&c, false, "replica stopped").await;
    let during = reads.load(Ordering::Relaxed);
    assert!(eventually(Duration::from_secs(10), || reads.load(Ordering::Relaxed) > during + 20).await, "reads go on");
    cluster.replica.as_mut().unwrap().start().expect("replica restarts");
    wait_reads_on(&c, true, "replica back").await;
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.expect("reader");
    }
    sluice.shutdown(Duration::ZERO).await;
}

/// Many writers and readers for a bounded time while replay is paused and resumed under them:
/// a client never reads a value older than its own last committed write (session), nor, in
/// global mode, older than any write committed before its read began.
async fn consistency_check(mode: &str) {
    const WRITERS: usize = 6;
    const READERS: usize = 6;
    const RUN: Duration = Duration::from_secs(4);
    let cluster = own_cluster();
    cluster
        .primary
        .psql(DB, &format!("CREATE TABLE counters (id int primary key, v bigint); INSERT INTO counters SELECT g, 0 FROM generate_series(0, {WRITERS} - 1) g"))
        .expect("counters");
    cluster.wait_replica_caught_up().expect("replica catches up");
    let sluice = start_router(&cluster, &format!("max_replica_lag = \"10s\"\nmax_replica_lag_bytes = \"1GB\"\nread_your_writes = \"{mode}\"")).await;
    let committed: Arc<Vec<AtomicU64>> = Arc::new((0..WRITERS).map(|_| AtomicU64::new(0)).collect());
    let replica_reads = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + RUN;
    let global = mode == "global";
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let c = connect(&sluice).await;
        let (committed, replica_reads) = (committed.clone(), replica_reads.clone());
        // In global mode the writers stop a second early: with any write in flight, global
        // reads rightly stay on the primary; the quiet end lets replicas catch up and serve.
        let stop_writing = if global { deadline - Duration::from_secs(1) } else { deadline };
        tasks.push(tokio::spawn(async move {
            let id = w as i32;
            while Instant::now() < stop_writing {
                let v: i64 = c.query_one("UPDATE counters SET v = v + 1 WHERE id = $1 RETURNING v", &[&id]).await.unwrap().get(0);
                committed[w].fetch_max(v as u64, Ordering::SeqCst);
                // Its own write, at once.
                let row = c.query_one("SELECT v, pg_is_in_recovery() FROM counters WHERE id = $1", &[&id]).await.unwrap();
                let (seen, on_replica): (i64, bool) = (row.get(0), row.get(1));
                assert!(seen >= v, "writer {w} wrote {v} and then read {seen} (on replica: {on_replica})");
                replica_reads.fetch_add(u64::from(on_replica), Ordering::Relaxed);
                if global {
                    // Pauses between writes, so that replicas catch up with every commit now and
                    // then and global reads have a chance to use them.
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
            }
        }));
    }
    for r in 0..READERS {
        let c = connect(&sluice).await;
        let (committed, replica_reads) = (committed.clone(), replica_reads.clone());
        tasks.push(tokio::spawn(async move {
            let mut k = r;
            while Instant::now() < deadline {
                let w = k % WRITERS;
                k += 1;
                let floor = committed[w].load(Ordering::SeqCst);
                let row = c.query_one("SELECT v, pg_is_in_recovery() FROM counters WHERE id = $1", &[&(w as i32)]).await.unwrap();
                let (seen, on_replica): (i64, bool) = (row.get(0), row.get(1));
                replica_reads.fetch_add(u64::from(on_replica), Ordering::Relaxed);
                if global {
                    assert!(seen as u64 >= floor, "reader {r} saw {seen} for writer {w} after {floor} was committed (on replica: {on_replica})");
                }
            }
        }));
    }
    // Replay stops and starts under the clients.
    let replica = replica(&cluster);
    while Instant::now() < deadline {
        let paused = PausedReplay::pause(replica);
        tokio::time::sleep(Duration::from_millis(150)).await;
        drop(paused);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    for t in tasks {
        t.await.expect("no client saw stale data");
    }
    assert!(replica_reads.load(Ordering::Relaxed) > 0, "some reads ran on the replica");
    sluice.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_reads_older_than_its_own_writes_under_session_read_your_writes() {
    consistency_check("session").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_misses_a_write_committed_before_it_began_under_global_read_your_writes() {
    consistency_check("global").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_routing_on_and_off_by_reload_moves_reads_of_connected_clients() {
    let cluster = own_cluster();
    let sluice = start_router(&cluster, "").await;
    let c = connect(&sluice).await;
    wait_reads_on(&c, true, "routing on").await;
    let config_with = |split: bool| {
        let sections = format!(
            "[pool]\nsize = 4\n\n[routing]\nread_write_split = {split}\nlag_check_interval = \"20ms\"\n\
             read_only_functions = [\"pg_is_in_recovery\"]\n"
        );
        let db_extra = format!("replicas = [\"{}\"]", replica(&cluster).addr());
        let mut text = config_text(cluster.primary.addr(), DB, &sections, &db_extra);
        // Keep listening where the clients are.
        text = text.replace("127.0.0.1:0", &sluice.local_addrs()[0].to_string());
        sluice::config::Config::from_toml(&text).unwrap()
    };
    sluice.reload(config_with(false)).expect("reload");
    wait_reads_on(&c, false, "routing turned off").await;
    sluice.reload(config_with(true)).expect("reload");
    wait_reads_on(&c, true, "routing turned on again").await;
    sluice.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_fallback_error_reads_fail_cleanly_while_no_replica_is_healthy_and_writes_go_on() {
    let mut cluster = own_cluster();
    let sluice = start_router(&cluster, "replica_fallback = \"error\"\nread_your_writes = \"off\"").await;
    let c = connect(&sluice).await;
    wait_replica_reads_without_fallback(&c).await;
    cluster.replica.as_mut().unwrap().stop();
    let start = Instant::now();
    let err = loop {
        match c.simple_query("SELECT pg_is_in_recovery()").await {
            Err(e) => break e,
            Ok(_) => {
                assert!(start.elapsed() < Duration::from_secs(20), "reads kept succeeding with the replica down");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    assert_eq!(common::sqlstate(&err), "57P03", "{err}");
    // The session goes on: writes, and reads pinned to the primary by hint.
    c.batch_execute("INSERT INTO t VALUES (7, 7)").await.expect("writes still work");
    let rows = c.simple_query("/* sluice:primary */ SELECT count(*) FROM t").await.unwrap();
    assert_eq!(first_value(&rows).as_deref(), Some("1"));
    cluster.replica.as_mut().unwrap().start().expect("replica restarts");
    wait_replica_reads_without_fallback(&c).await;
    sluice.shutdown(Duration::ZERO).await;
}

/// With `replica_fallback = "error"`: polls until reads succeed on the replica; until then they
/// may only fail with 57P03, never run on the primary.
async fn wait_replica_reads_without_fallback(c: &tokio_postgres::Client) {
    let start = Instant::now();
    loop {
        match c.simple_query("SELECT pg_is_in_recovery()").await {
            Ok(rows) if first_value(&rows).as_deref() == Some("t") => return,
            Ok(rows) => panic!("a read ran on the primary: {:?}", first_value(&rows)),
            Err(e) => assert_eq!(common::sqlstate(&e), "57P03", "{e}"),
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no replica read succeeded in 20 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_that_change_the_pool_size_and_the_replica_list_under_load_cost_clients_no_errors() {
    let cluster = own_cluster();
    let sluice = start_router(&cluster, "read_your_writes = \"off\"").await;
    let addr = sluice.local_addrs()[0];
    let config = |size: usize, with_replica: bool| {
        let sections = format!(
            "[pool]\nsize = {size}\n\n[routing]\nread_write_split = true\nlag_check_interval = \"20ms\"\n\
             read_your_writes = \"off\"\nread_only_functions = [\"pg_is_in_recovery\"]\n"
        );
        let replicas = if with_replica { format!("\"{}\"", replica(&cluster).addr()) } else { String::new() };
        let text = config_text(cluster.primary.addr(), DB, &sections, &format!("replicas = [{replicas}]"));
        sluice::config::Config::from_toml(&text.replace("127.0.0.1:0", &addr.to_string())).unwrap()
    };
    // Clients write and read without pause for the whole test; any error fails it.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (stop, done, c) = (stop.clone(), done.clone(), connect(&sluice).await);
        tasks.push(tokio::spawn(async move {
            let mut n = 0i32;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = i * 1_000_000 + n;
                c.execute("INSERT INTO t VALUES ($1, $2)", &[&id, &n]).await.expect("a write failed during a reload");
                c.simple_query("SELECT pg_is_in_recovery(), count(*) FROM t").await.expect("a read failed during a reload");
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let watcher = connect(&sluice).await;
    wait_reads_on(&watcher, true, "the replica configured").await;
    let progress = |min: u64| {
        let done = done.clone();
        move || done.load(Ordering::Relaxed) >= min
    };
    for (size, with_replica) in [(2, false), (6, true), (3, false), (4, true)] {
        let before = done.load(Ordering::Relaxed);
        sluice.reload(config(size, with_replica)).expect("a valid reload is applied");
        wait_reads_on(&watcher, with_replica, &format!("replicas {with_replica}, pool {size}")).await;
        assert!(eventually(Duration::from_secs(20), progress(before + 20)).await, "clients went on");
    }
    // A reload that does not validate is refused, and the running configuration stays.
    let mut bad = config(4, true);
    bad.pool.size = 0;
    assert!(sluice.reload(bad).is_err(), "pool.size = 0 is refused");
    assert_eq!(sluice.shared().config.load().pool.size, 4);
    let before = done.load(Ordering::Relaxed);
    assert!(eventually(Duration::from_secs(20), progress(before + 20)).await, "clients went on after the refusal");
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("no client saw an error");
    }
    sluice.shutdown(Duration::ZERO).await;
}
