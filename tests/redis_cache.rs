//! The result cache with `backend = "redis"`: several sluice instances sharing one Redis (each
//! test starts its own `redis-server` on a free port) in front of real Postgres.
//!
//! - a write through one instance is seen through the other's cache at once;
//! - the freshness checker of `tests/cache.rs` (no read older than a finished commit) with
//!   writers and readers spread over two instances;
//! - Redis killed under load: no client errors, reads bypass the cache; restarted on the same
//!   port: the cache is used again and nothing stale is served.

mod common;

use common::*;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage, Statement};

// ---------------------------------------------------------------------------------------------
// A redis-server of the test's own
// ---------------------------------------------------------------------------------------------

/// A `redis-server` without persistence on a local port, killed when dropped.
struct Redis {
    child: Option<Child>,
    port: u16,
}

impl Redis {
    /// Starts one on a free port and waits until it answers PING.
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        Redis::start_on(port)
    }

    /// Starts one on `port` (again, after [`kill`](Self::kill)) and waits until it answers PING.
    fn start_on(port: u16) -> Redis {
        let bin = redis_server();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut child = Command::new(&bin)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
            while Instant::now() < deadline {
                if ping(port) {
                    return Redis { child: Some(child), port };
                }
                if child.try_wait().ok().flatten().is_some() {
                    break; // the port was not free yet (a killed server's socket): start again
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(Instant::now() < deadline, "redis-server on port {port} never answered PING");
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server at once (no shutdown, nothing saved).
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty).
    fn restart(&mut self) {
        self.kill();
        let fresh = Redis::start_on(self.port);
        self.child = fresh.take();
    }

    /// Stops (`true`) or resumes the server process, which keeps its data: a Redis that does
    /// not answer.
    fn freeze(&self, stop: bool) {
        let pid = self.child.as_ref().expect("running").id() as i32;
        // SAFETY: signals the child this test started.
        let rc = unsafe { libc::kill(pid, if stop { libc::SIGSTOP } else { libc::SIGCONT }) };
        assert_eq!(rc, 0, "signal redis-server");
    }

    fn take(mut self) -> Option<Child> {
        self.child.take()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.freeze(false);
        }
        self.kill();
    }
}

/// The redis-server binary (installed by `.ci/run` on a fresh machine).
fn redis_server() -> std::path::PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([std::path::PathBuf::from("/usr/bin"), std::path::PathBuf::from("/usr/local/bin")])
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file());
    found.expect("redis-server is not installed (apt-get install redis-server)")
}

/// Whether a Redis answers PING on `port`.
fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

// ---------------------------------------------------------------------------------------------
// Two sluice instances sharing it
// ---------------------------------------------------------------------------------------------

fn cache_section(redis: &Redis) -> String {
    format!(
        "[pool]\nsize = 8\n\n[cache]\nenabled = true\nmode = \"all\"\nttl = \"30s\"\nbackend = \"redis\"\n\
         redis_url = \"{}\"\nredis_timeout = \"500ms\"",
        redis.url()
    )
}

/// Two sluice instances for `db` sharing `redis`, each using it (its probe has connected).
async fn two_instances(db: &str, redis: &Redis) -> [Proxy; 2] {
    let a = start_proxy(db, &cache_section(redis)).await;
    let b = start_proxy(db, &cache_section(redis)).await;
    for p in [&a, &b] {
        wait_backend(p, true).await;
    }
    [a, b]
}

fn remote(p: &Proxy) -> &Arc<sluice::cache::RemoteCache> {
    p.sluice.shared().cache.as_ref().and_then(|c| c.remote()).expect("the redis backend")
}

/// Polls until the instance's Redis backend is up (or down); panics after 20 s.
async fn wait_backend(p: &Proxy, up: bool) {
    let held = eventually(Duration::from_secs(20), || remote(p).is_up() == up).await;
    assert!(held, "the redis backend of {} never became {}", p.addr, if up { "up" } else { "down" });
}

fn hits(p: &Proxy) -> u64 {
    use sluice::metrics::CacheReport;
    p.sluice.shared().cache.as_ref().map(|c| c.stats().hits).unwrap_or(0)
}

async fn stop(proxies: [Proxy; 2]) {
    for p in proxies {
        p.sluice.shutdown(Duration::ZERO).await;
    }
}

async fn simple_scalar<T: std::str::FromStr>(c: &Client, sql: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    let rows = c.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let row = rows
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"));
    row.get(0).unwrap_or_else(|| panic!("{sql}: NULL")).parse().unwrap_or_else(|e| panic!("{sql}: {e:?}"))
}

/// Reads `sql` through `c` until the instance answers it from the cache (hits rise); returns
/// the value.
async fn until_cached(p: &Proxy, c: &Client, sql: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let before = hits(p);
        let v: i64 = simple_scalar(c, sql).await;
        if hits(p) > before {
            return v;
        }
        assert!(Instant::now() < deadline, "{sql} through {} never became a hit", p.addr);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Instance B has the old row cached (a change made around sluice is not seen through it); a
/// write through instance A is seen through B at once, and B's fill is then a hit through A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_instance_is_seen_through_the_others_cache_at_once() {
    let redis = Redis::start();
    let db = unique_db("redis_shared");
    let direct = connect(cluster().primary.addr(), &db).await;
    direct.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v bigint); INSERT INTO t VALUES (1, 10)").await.unwrap();
    let [a, b] = two_instances(&db, &redis).await;
    let (ca, cb) = (a.connect().await, b.connect().await);
    const READ: &str = "SELECT v FROM t WHERE id = 1";

    assert_eq!(until_cached(&b, &cb, READ).await, 10);
    direct.batch_execute("UPDATE t SET v = 11 WHERE id = 1").await.unwrap();
    assert_eq!(simple_scalar::<i64>(&cb, READ).await, 10, "B answers from the cache (the premise)");

    ca.batch_execute("UPDATE t SET v = 12 WHERE id = 1").await.unwrap();
    assert_eq!(simple_scalar::<i64>(&cb, READ).await, 12, "B at once after A's commit");
    // Also the extended protocol, and through A itself.
    let row = cb.query_one("SELECT v FROM t WHERE id = $1", &[&1i32]).await.unwrap();
    assert_eq!(row.get::<_, i64>(0), 12);
    assert_eq!(simple_scalar::<i64>(&ca, READ).await, 12);

    // The entry is shared: filled through B, a hit through A.
    assert_eq!(until_cached(&b, &cb, READ).await, 12);
    let before = hits(&a);
    assert_eq!(simple_scalar::<i64>(&ca, READ).await, 12);
    assert!(hits(&a) > before, "B's fill answered A's read");

    // A transaction block through A invalidates at its COMMIT; a rollback does not.
    ca.batch_execute("BEGIN; UPDATE t SET v = 13 WHERE id = 1; ROLLBACK").await.unwrap();
    assert_eq!(until_cached(&b, &cb, READ).await, 12);
    ca.batch_execute("BEGIN; UPDATE t SET v = 14 WHERE id = 1; COMMIT").await.unwrap();
    assert_eq!(simple_scalar::<i64>(&cb, READ).await, 14);
    stop([a, b]).await;
}

/// Counter tables, one per key: key 0 is written flat out by two writers, the others ever more
/// rarely (as in `tests/cache.rs`).
const PACE_MS: [u64; 4] = [0, 5, 25, 100];
const KEYS: usize = PACE_MS.len();
const READERS: usize = 6;

fn counters_sql() -> String {
    (0..KEYS).map(|k| format!("CREATE TABLE counter_{k} (v bigint NOT NULL); INSERT INTO counter_{k} VALUES (0);\n")).collect()
}

/// What a load run did.
#[derive(Debug, Default)]
struct Load {
    writes: u64,
    reads: u64,
    hits: u64,
}

/// `v` of counter `k` in one of four ways (`how` % 4): simple, prepared, unnamed, and unnamed
/// with `WHERE v >= $1` bound to the floor (no row when stale).
async fn read_counter(c: &Client, prepared: &Statement, k: usize, how: u64, floor: i64) -> i64 {
    let sql = format!("SELECT v FROM counter_{k}");
    match how % 4 {
        0 => simple_scalar(c, &sql).await,
        1 => c.query_one(prepared, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}")).get(0),
        2 => c.query_typed(&sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}"))[0].get(0),
        _ => {
            let sql = format!("{sql} WHERE v >= $1");
            let p: (&(dyn ToSql + Sync), Type) = (&floor, Type::INT8);
            let rows = c.query_typed(&sql, &[p]).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
            rows.first().map(|r| r.get(0)).unwrap_or(-1)
        }
    }
}

/// The freshness checker over two instances: writers increment the counters through one
/// instance and read their own write back through the other; readers, spread over both, note
/// the newest committed value before each read and check they read at least that. Runs `run`
/// long; `counted` is bumped at each write (for the caller's own polling). Panics on a stale
/// read or a client error.
async fn freshness_across(proxies: &[Proxy; 2], db: &str, run: Duration, writes: Arc<AtomicU64>) -> Load {
    let committed: Arc<Vec<AtomicI64>> = Arc::new((0..KEYS).map(|_| AtomicI64::new(0)).collect());
    let reads = Arc::new(AtomicU64::new(0));
    let addrs: Vec<SocketAddr> = proxies.iter().map(|p| p.addr).collect();
    let hits_before: u64 = proxies.iter().map(hits).sum();
    let deadline = Instant::now() + run;
    let mut tasks = Vec::new();
    let mut n = 0;
    for k in 0..KEYS {
        for w in 0..if k == 0 { 2 } else { 1 } {
            n += 1;
            let writer = connect(addrs[n % 2], db).await;
            let reader = connect(addrs[(n + 1) % 2], db).await;
            let (committed, writes) = (committed.clone(), writes.clone());
            tasks.push(tokio::spawn(async move {
                let update_sql = format!("UPDATE counter_{k} SET v = v + 1 RETURNING v");
                let update = writer.prepare(&update_sql).await.unwrap();
                let read = reader.prepare(&format!("SELECT v FROM counter_{k}")).await.unwrap();
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let v: i64 = if i % 2 == 0 {
                        simple_scalar(&writer, &update_sql).await
                    } else {
                        writer.query_one(&update, &[]).await.unwrap_or_else(|e| panic!("{update_sql}: {e}")).get(0)
                    };
                    committed[k].fetch_max(v, Ordering::SeqCst);
                    writes.fetch_add(1, Ordering::Relaxed);
                    // Its own write, at once, through the other instance's cache.
                    let seen = read_counter(&reader, &read, k, i, v).await;
                    assert!(seen >= v, "writer {w} of counter {k} committed {v} and then read {seen} through the other instance");
                    i += 1;
                    if PACE_MS[k] > 0 {
                        tokio::time::sleep(Duration::from_millis(PACE_MS[k])).await;
                    }
                }
            }));
        }
    }
    for r in 0..READERS {
        let c = connect(addrs[r % 2], db).await;
        let (committed, reads) = (committed.clone(), reads.clone());
        tasks.push(tokio::spawn(async move {
            let mut prepared = Vec::new();
            for k in 0..KEYS {
                prepared.push(c.prepare(&format!("SELECT v FROM counter_{k}")).await.unwrap());
            }
            let mut i = r as u64;
            while Instant::now() < deadline {
                let k = (i as usize) % KEYS;
                let floor = committed[k].load(Ordering::SeqCst);
                let how = i / KEYS as u64;
                let seen = read_counter(&c, &prepared[k], k, how, floor).await;
                assert!(seen >= floor, "reader {r} read {seen} from counter {k} (form {}) after {floor} was committed", how % 4);
                reads.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    let mut failures = Vec::new();
    for t in tasks {
        if let Err(e) = t.await {
            failures.push(e.to_string());
        }
    }
    assert!(failures.is_empty(), "clients failed (see the panics above): {failures:?}");
    let hits_after: u64 = proxies.iter().map(hits).sum();
    let load = Load { writes: writes.load(Ordering::Relaxed), reads: reads.load(Ordering::Relaxed), hits: hits_after - hits_before };
    eprintln!("freshness across two instances: {load:?}");
    load
}

/// The freshness checker with writers and readers spread over two instances sharing Redis: no
/// read, through either, returns a value older than a commit that finished (through either)
/// before it began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_two_instances_no_read_is_older_than_a_finished_commit() {
    let redis = Redis::start();
    let db = unique_db("redis_freshness");
    cluster().primary.psql(&db, &counters_sql()).expect("counters");
    let proxies = two_instances(&db, &redis).await;
    let load = freshness_across(&proxies, &db, Duration::from_secs(6), Arc::new(AtomicU64::new(0))).await;
    assert!(load.writes >= 100 && load.reads >= 100, "too little done to mean anything: {load:?}");
    assert!(load.hits >= 10, "the cache answered (almost) nothing: {load:?}");
    stop(proxies).await;
}

/// Redis killed while clients read and write through both instances: no client errors and no
/// stale reads (the checker runs throughout), each instance notices and bypasses the cache;
/// Redis restarted on the same port: both use it again (hits rise) and serve fresh data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_then_restarted_serves_nothing_stale() {
    let mut redis = Redis::start();
    let db = unique_db("redis_outage");
    cluster().primary.psql(&db, &counters_sql()).expect("counters");
    let proxies = Arc::new(two_instances(&db, &redis).await);
    let writes = Arc::new(AtomicU64::new(0));
    let load = {
        let (proxies, db, writes) = (proxies.clone(), db.clone(), writes.clone());
        tokio::spawn(async move { freshness_across(&proxies, &db, Duration::from_secs(10), writes).await })
    };

    // Under load with the cache in use, kill Redis.
    let cached = eventually(Duration::from_secs(20), || proxies.iter().all(|p| hits(p) > 20)).await;
    assert!(cached, "both instances answered from the cache before the outage");
    redis.kill();
    for p in proxies.iter() {
        wait_backend(p, false).await;
    }
    // Writes go on during the outage (they cannot be recorded in Redis).
    let at_kill = writes.load(Ordering::Relaxed);
    let wrote = eventually(Duration::from_secs(20), || writes.load(Ordering::Relaxed) > at_kill + 50).await;
    assert!(wrote, "writes went on while Redis was down");
    redis.restart();
    for p in proxies.iter() {
        wait_backend(p, true).await;
    }
    let load = load.await.expect("the load ran without a client error or a stale read");
    assert!(load.writes >= 100 && load.reads >= 100, "too little done to mean anything: {load:?}");
    for p in proxies.iter() {
        assert!(remote(p).errors() > 0, "the outage was counted");
    }

    // Fresh data through both, answered from the cache again (hits rise).
    let direct = connect(cluster().primary.addr(), &db).await;
    for k in 0..KEYS {
        let sql = format!("SELECT v FROM counter_{k}");
        let truth: i64 = simple_scalar(&direct, &sql).await;
        for p in proxies.iter() {
            let c = p.connect().await;
            assert_eq!(until_cached(p, &c, &sql).await, truth, "counter {k} through {}", p.addr);
        }
    }
    let proxies = Arc::try_unwrap(proxies).unwrap_or_else(|_| panic!("the load still holds the proxies"));
    stop(proxies).await;
}

/// Redis stops answering (it keeps its data): a write through A while A finds it down cannot be
/// recorded there. Once Redis answers again, A bumps the epoch before it uses the cache, so the
/// entry filled before the outage is served by neither instance, though B never saw the outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_from_before_an_outage_are_never_served_after_it() {
    let redis = Redis::start();
    let db = unique_db("redis_frozen");
    let direct = connect(cluster().primary.addr(), &db).await;
    direct.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v bigint); INSERT INTO t VALUES (1, 10)").await.unwrap();
    let [a, b] = two_instances(&db, &redis).await;
    let (ca, cb) = (a.connect().await, b.connect().await);
    const READ: &str = "SELECT v FROM t WHERE id = 1";
    assert_eq!(until_cached(&b, &cb, READ).await, 10);

    redis.freeze(true);
    // A finds out (its lookup times out) and bypasses the cache; B has not tried.
    assert_eq!(simple_scalar::<i64>(&ca, READ).await, 10);
    wait_backend(&a, false).await;
    assert!(remote(&b).is_up());
    ca.batch_execute("UPDATE t SET v = 11 WHERE id = 1").await.expect("a write while Redis hangs");
    assert_eq!(simple_scalar::<i64>(&ca, READ).await, 11, "A reads from Postgres meanwhile");
    redis.freeze(false);
    wait_backend(&a, true).await;

    assert_eq!(simple_scalar::<i64>(&cb, READ).await, 11, "B must not serve the entry from before the outage");
    assert_eq!(simple_scalar::<i64>(&ca, READ).await, 11);
    assert_eq!(until_cached(&b, &cb, READ).await, 11);
    stop([a, b]).await;
}

/// An instance started while Redis is down serves from Postgres, and uses the cache once Redis
/// is up; the metrics say which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_started_without_redis_bypasses_the_cache_until_it_is_up() {
    let mut redis = Redis::start();
    redis.kill();
    let db = unique_db("redis_late");
    let direct = connect(cluster().primary.addr(), &db).await;
    direct.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v bigint); INSERT INTO t VALUES (1, 10)").await.unwrap();
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let sections = format!("[server]\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n\n{}", cache_section(&redis));
    let p = start_proxy(&db, &sections).await;
    let c = p.connect().await;
    for _ in 0..3 {
        assert_eq!(simple_scalar::<i64>(&c, "SELECT v FROM t WHERE id = 1").await, 10);
    }
    assert_eq!(hits(&p), 0);
    let body = scrape(metrics_port);
    assert!(body.contains("sluice_cache_backend_up 0"), "{body}");
    redis.restart();
    wait_backend(&p, true).await;
    assert_eq!(until_cached(&p, &c, "SELECT v FROM t WHERE id = 1").await, 10);
    let body = scrape(metrics_port);
    assert!(body.contains("sluice_cache_backend_up 1"), "{body}");
    assert!(body.contains("sluice_errors_total{kind=\"cache_backend\"}"), "{body}");
    p.sluice.shutdown(Duration::ZERO).await;
}

/// `GET /metrics` on a local port: the body.
fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()
}
