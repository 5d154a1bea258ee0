//! Logical invalidation end to end, against real Postgres (`cache.invalidation_source =
//! "logical"`): writes made straight on the primary, around sluice, are seen through the cache
//! within 100 ms; rolled-back transactions invalidate nothing; a lost stream flushes the cache
//! and reconnects; the slot's confirmed position advances; the temporary slot goes with sluice.
//!
//! Each test has its own database, sluice and slot. Waiting is polling, never sleeping.

mod common;

use common::*;
use sluice::metrics::cache::{CacheReport, CacheStats};
use std::time::{Duration, Instant};
use tokio_postgres::{Client, SimpleQueryMessage};

/// The bound on commit → first read through sluice that sees the change.
const BOUND: Duration = Duration::from_millis(100);

/// A test's database with `t (id int primary key, v int)` = (1, 10), (2, 20), (3, 30) and
/// `u (id int primary key, v int)` = (1, 100); a sluice with logical invalidation, streaming; a client
/// through it and a connection straight to the primary.
struct Setup {
    proxy: Proxy,
    direct: Client,
    client: Client,
    slot: String,
    key: String,
}

const TABLES: &str = "SET synchronous_commit = on; \
     CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 10), (2, 20), (3, 30); \
     CREATE TABLE u (id int PRIMARY KEY, v int); INSERT INTO u VALUES (1, 100)";

impl Setup {
    async fn new(prefix: &str, extra: &str) -> Setup {
        let s = Self::starting(prefix, TABLES, extra).await;
        s.wait_streaming(None).await;
        s
    }

    /// The database with `tables` (SQL), and sluice started, without waiting for the stream.
    async fn starting(prefix: &str, tables: &str, extra: &str) -> Setup {
        let db = unique_db(prefix);
        let direct = connect(cluster().primary.addr(), &db).await;
        direct.batch_execute(tables).await.expect("create tables");
        let slot = format!("sl_{db}");
        let sections = format!(
            "[cache]\nenabled = true\nmode = \"all\"\nttl = \"60s\"\ninvalidation_source = \"logical\"\n\
             logical_slot = \"{slot}\"\n{extra}"
        );
        let proxy = start_proxy(&db, &sections).await;
        let key = format!("{}/{db}", cluster().primary.addr());
        let client = proxy.connect().await;
        Setup { proxy, direct, client, slot, key }
    }

    fn cache(&self) -> &sluice::cache::CacheHandle {
        self.proxy.sluice.shared().cache.as_deref().expect("cache on")
    }

    fn stats(&self) -> CacheStats {
        self.cache().stats()
    }

    fn suspended(&self) -> bool {
        self.cache().generations.database(&self.key).is_suspended()
    }

    /// The walsender serving the slot, if it is active.
    fn walsender(&self) -> Option<i32> {
        on_primary(&format!("select active_pid from pg_replication_slots where slot_name = '{}' and active", self.slot))
            .parse()
            .ok()
    }

    /// Waits until the stream runs (on a walsender other than `not`) and the cache serves.
    async fn wait_streaming(&self, not: Option<i32>) {
        let ok = eventually(Duration::from_secs(20), || {
            !self.suspended() && self.walsender().is_some_and(|pid| Some(pid) != not)
        })
        .await;
        assert!(ok, "the stream did not start (slot {}, suspended {})", self.slot, self.suspended());
    }

    async fn around(&self, sql: &str) {
        self.direct.batch_execute(sql).await.unwrap_or_else(|e| panic!("directly on the primary: {sql}: {e}"));
    }

    /// Reads through sluice until the answer is cached: a second read is a hit.
    async fn fill(&self, sql: &str) -> Vec<String> {
        let first = rows(&self.client, sql).await;
        let hits = self.stats().hits;
        let again = rows(&self.client, sql).await;
        assert_eq!(first, again);
        assert_eq!(self.stats().hits, hits + 1, "{sql}: the second read was not a hit");
        first
    }

    /// Runs `write` straight on the primary, then reads `sql` through sluice until it returns
    /// `expected`; returns the time from the commit's acknowledgement to that read's answer.
    async fn seen_after(&self, write: &str, sql: &str, expected: &[&str]) -> Duration {
        self.around(write).await;
        let committed = Instant::now();
        loop {
            let got = rows(&self.client, sql).await;
            let elapsed = committed.elapsed();
            if got == expected {
                return elapsed;
            }
            assert!(elapsed < Duration::from_secs(10), "{write}: after {elapsed:?}, {sql} still gives {got:?}");
        }
    }

    async fn stop(self) {
        self.proxy.sluice.shutdown(Duration::ZERO).await;
    }
}

/// The first column of every row of a simple query (NULL as "NULL").
async fn rows(c: &Client, sql: &str) -> Vec<String> {
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_owned()),
            _ => None,
        })
        .collect()
}

const READ_1: &str = "SELECT v FROM t WHERE id = 1";

#[tokio::test]
async fn a_direct_update_is_seen_within_the_bound() {
    let s = Setup::new("li_update", "").await;
    assert_eq!(s.fill(READ_1).await, ["10"]);
    let took = s.seen_after("UPDATE t SET v = 11 WHERE id = 1", READ_1, &["11"]).await;
    assert!(took < BOUND, "direct UPDATE seen after {took:?}");
    // Qualified names and other statements: an INSERT into public.t invalidates reads of t.
    let count = "SELECT count(*) FROM t";
    assert_eq!(s.fill(count).await, ["3"]);
    let took = s.seen_after("INSERT INTO public.t VALUES (4, 40)", count, &["4"]).await;
    assert!(took < BOUND, "direct INSERT seen after {took:?}");
    // Writes through sluice still invalidate at once (proxy invalidation stays on).
    assert_eq!(s.fill(READ_1).await, ["11"]);
    s.client.simple_query("UPDATE t SET v = 12 WHERE id = 1").await.unwrap();
    assert_eq!(rows(&s.client, READ_1).await, ["12"]);
    s.stop().await;
}

#[tokio::test]
async fn direct_delete_and_truncate_are_seen_within_the_bound() {
    let s = Setup::new("li_delete", "").await;
    let read_2 = "SELECT v FROM t WHERE id = 2";
    assert_eq!(s.fill(read_2).await, ["20"]);
    let took = s.seen_after("DELETE FROM t WHERE id = 2", read_2, &[]).await;
    assert!(took < BOUND, "direct DELETE seen after {took:?}");
    let count = "SELECT count(*) FROM t";
    assert_eq!(s.fill(count).await, ["2"]);
    let took = s.seen_after("TRUNCATE t", count, &["0"]).await;
    assert!(took < BOUND, "direct TRUNCATE seen after {took:?}");
    s.stop().await;
}

#[tokio::test]
async fn a_rolled_back_transaction_invalidates_nothing() {
    let s = Setup::new("li_rollback", "").await;
    assert_eq!(s.fill(READ_1).await, ["10"]);
    let read_u = "SELECT v FROM u WHERE id = 1";
    assert_eq!(s.fill(read_u).await, ["100"]);
    s.around("BEGIN; UPDATE t SET v = 99 WHERE id = 1; ROLLBACK").await;
    // A later commit to another table, seen through the stream: everything before it was
    // decoded too.
    s.seen_after("UPDATE u SET v = 101", read_u, &["101"]).await;
    let before = s.stats();
    assert_eq!(rows(&s.client, READ_1).await, ["10"]);
    let after = s.stats();
    assert_eq!((after.hits, after.misses), (before.hits + 1, before.misses), "t's entry is still served");
    s.stop().await;
}

#[tokio::test]
async fn a_killed_stream_flushes_the_cache_and_reconnects() {
    let s = Setup::new("li_kill", "").await;
    assert_eq!(s.fill(READ_1).await, ["10"]);
    let pid = s.walsender().expect("an active walsender");
    on_primary(&format!("select pg_terminate_backend({pid})"));
    // While the stream is down, nothing is served from the cache.
    assert!(eventually(Duration::from_secs(5), || s.suspended()).await, "the cache was not suspended");
    s.around("UPDATE t SET v = 12 WHERE id = 1").await;
    s.wait_streaming(Some(pid)).await;
    let misses = s.stats().misses;
    assert_eq!(rows(&s.client, READ_1).await, ["12"], "the entry from before the loss was flushed");
    assert_eq!(s.stats().misses, misses + 1);
    // And the new stream invalidates within the bound again.
    assert_eq!(s.fill(READ_1).await, ["12"]);
    let took = s.seen_after("UPDATE t SET v = 13 WHERE id = 1", READ_1, &["13"]).await;
    assert!(took < BOUND, "direct UPDATE after reconnecting seen after {took:?}");
    s.stop().await;
}

#[tokio::test]
async fn the_confirmed_position_advances_and_the_slot_goes_with_sluice() {
    let s = Setup::new("li_confirm", "logical_status_interval = \"100ms\"\n").await;
    let slot_lsn = |what: &str| on_primary(&format!("select {what} from pg_replication_slots where slot_name = '{}'", s.slot));
    let start = slot_lsn("confirmed_flush_lsn");
    assert!(!start.is_empty(), "the slot has a confirmed position");
    s.around("UPDATE t SET v = v + 1").await;
    let end = on_primary("select pg_current_wal_lsn()");
    let moved = eventually(Duration::from_secs(10), || slot_lsn(&format!("confirmed_flush_lsn >= '{end}'")) == "t").await;
    assert!(moved, "confirmed_flush_lsn stayed at {} (start {start}, wanted {end})", slot_lsn("confirmed_flush_lsn"));
    let slot = s.slot.clone();
    s.stop().await;
    let gone = eventually(Duration::from_secs(10), || {
        on_primary(&format!("select count(*) from pg_replication_slots where slot_name = '{slot}'")) == "0"
    })
    .await;
    assert!(gone, "the temporary slot outlived sluice");
}

#[tokio::test]
async fn no_publication_is_created_over_tables_without_replica_identity() {
    let tables = format!("{TABLES}; CREATE TABLE nopk (v int); INSERT INTO nopk VALUES (1)");
    let s = Setup::starting("li_nopk", &tables, "").await;
    // Not streaming: every read goes to the server.
    let before = s.stats();
    rows(&s.client, READ_1).await;
    rows(&s.client, READ_1).await;
    assert_eq!(s.stats().hits, before.hits, "served from the cache while no stream runs");
    assert!(s.suspended());
    let db = &s.proxy.db;
    let publications = || cluster().primary.psql(db, "select count(*) from pg_publication").unwrap();
    assert_eq!(publications(), "0", "a publication FOR ALL TABLES would break UPDATE on nopk");
    s.around("UPDATE nopk SET v = 2").await;
    // The operator's own publication is used as it is.
    s.around("CREATE PUBLICATION sluice FOR TABLE t").await;
    s.wait_streaming(None).await;
    assert_eq!(s.fill(READ_1).await, ["10"]);
    let took = s.seen_after("UPDATE t SET v = 11 WHERE id = 1", READ_1, &["11"]).await;
    assert!(took < BOUND, "direct UPDATE seen after {took:?}");
    s.around("UPDATE nopk SET v = 3").await;
    s.stop().await;
}
