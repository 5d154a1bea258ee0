//! The result cache end to end, against real Postgres: repeated reads are answered from sluice's
//! memory, and every write made *through sluice* is seen by the very next read, for every client,
//! in the simple and the extended protocol.
//!
//! How a test tells a cached answer from a fresh one without relying on timing: writes made
//! straight on the primary (around sluice) are not seen by the cache until the entry's TTL, which
//! is long here (30 s). So a test reads through sluice (a fill), changes the rows directly on the
//! primary, and reads again: the *old* answer proves the read was served from the cache, the new
//! one that it reached the server. A write through sluice must then make the next read return the
//! primary's current rows at once.
//!
//! Each test has a database (or a whole cluster) and a sluice of its own, so they run in parallel.
//! The concurrency checkers at the end run writers and readers for a few seconds and check that no
//! read returns a value older than one whose commit had finished before the read began, without
//! routing and with read/write splitting to a streaming replica.

mod common;

use common::*;
use futures_util::SinkExt;
use sluice::cluster::{Cluster, ClusterOptions, PgBinaries, PgInstance};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage, Statement};

/// The cache on for every eligible read, with a TTL far longer than any test step.
const CACHE_ALL: &str = "[cache]\nenabled = true\nmode = \"all\"\nttl = \"30s\"";

/// The read most tests use, with its parameter.
const READ_V: &str = "SELECT v FROM t WHERE id = $1";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A test's database on the shared cluster, with table `t (id int primary key, v int)` holding
/// `(1, 10), (2, 20), (3, 30)`, a sluice in front of it, and a connection straight to the primary
/// (around sluice) for changes the cache cannot see.
struct Setup {
    proxy: Proxy,
    direct: Client,
    db: String,
}

impl Setup {
    async fn new(prefix: &str, sections: &str) -> Setup {
        let db = unique_db(prefix);
        let direct = connect(cluster().primary.addr(), &db).await;
        direct
            .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 10), (2, 20), (3, 30)")
            .await
            .expect("create table t");
        let proxy = start_proxy(&db, sections).await;
        Setup { proxy, direct, db }
    }

    /// A new client connection through sluice, as `postgres`.
    async fn client(&self) -> Client {
        self.proxy.connect().await
    }

    /// A connection to sluice's admin console.
    async fn admin(&self) -> Client {
        connect(self.proxy.addr, "sluice").await
    }

    /// Runs `sql` on the primary, around sluice.
    async fn around(&self, sql: &str) {
        self.direct.batch_execute(sql).await.unwrap_or_else(|e| panic!("directly on the primary: {sql}: {e}"));
    }

    async fn stop(self) {
        self.proxy.sluice.shutdown(Duration::ZERO).await;
    }
}

/// A simple query's answer: column names and rows, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    columns: Vec<String>,
    rows: Vec<Vec<Option<String>>>,
}

/// Runs `sql` as a simple Query (one statement) and returns its answer; panics on an error.
async fn answer(c: &Client, sql: &str) -> Answer {
    try_answer(c, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn try_answer(c: &Client, sql: &str) -> Result<Answer, tokio_postgres::Error> {
    let mut out = Answer { columns: Vec::new(), rows: Vec::new() };
    for m in c.simple_query(sql).await? {
        match m {
            SimpleQueryMessage::RowDescription(cols) => out.columns = cols.iter().map(|c| c.name().to_owned()).collect(),
            SimpleQueryMessage::Row(r) => out.rows.push((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect()),
            _ => {}
        }
    }
    Ok(out)
}

/// The first column of every row of a simple query, as text (NULL as "NULL").
async fn column(c: &Client, sql: &str) -> Vec<String> {
    answer(c, sql).await.rows.into_iter().map(|r| r[0].clone().unwrap_or_else(|| "NULL".into())).collect()
}

/// The first column of the only row of a simple query, parsed.
async fn simple_scalar<T: std::str::FromStr>(c: &Client, sql: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    let rows = answer(c, sql).await.rows;
    assert_eq!(rows.len(), 1, "{sql}: expected one row, got {rows:?}");
    rows[0][0].as_deref().unwrap_or_else(|| panic!("{sql}: NULL")).parse().unwrap()
}

/// The ways a client reads: the simple protocol, and three extended-protocol forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// A simple Query with the parameter written into the text.
    Simple,
    /// `[Parse] Bind Describe Execute Sync` of the unnamed statement (`query_typed`).
    Unnamed,
    /// `Bind Execute Sync` of a named statement prepared once and reused.
    Prepared,
    /// A named statement prepared anew for every execution (tokio-postgres `query` with text),
    /// then closed: see [`settle`].
    Reprepared,
}

const FORMS: [Form; 4] = [Form::Simple, Form::Unnamed, Form::Prepared, Form::Reprepared];
const EXTENDED: [Form; 3] = [Form::Unnamed, Form::Prepared, Form::Reprepared];

/// A client that reads `SELECT v FROM t WHERE id = $1` in any [`Form`].
struct Reader {
    c: Client,
    prepared: Statement,
}

impl Reader {
    async fn new(c: Client) -> Reader {
        let prepared = c.prepare(READ_V).await.expect("prepare the read");
        Reader { c, prepared }
    }

    /// `v` of row `id`, read in `form`.
    async fn read(&self, form: Form, id: i32) -> i32 {
        match form {
            Form::Simple => simple_scalar(&self.c, &READ_V.replace("$1", &id.to_string())).await,
            Form::Unnamed => {
                let rows = self.c.query_typed(READ_V, &[p(&id, Type::INT4)]).await;
                rows.unwrap_or_else(|e| panic!("{form:?} read of {id}: {e}"))[0].get(0)
            }
            Form::Prepared => {
                self.c.query_one(&self.prepared, &[&id]).await.unwrap_or_else(|e| panic!("{form:?} read of {id}: {e}")).get(0)
            }
            Form::Reprepared => {
                let v = self.c.query_one(READ_V, &[&id]).await.unwrap_or_else(|e| panic!("{form:?} read of {id}: {e}")).get(0);
                settle(&self.c).await;
                v
            }
        }
    }
}

/// Waits until everything `c` has sent is answered. tokio-postgres closes a statement it
/// prepared for one `query(&str)` when the statement is dropped, sending Close and Sync without
/// waiting; a request sent right after is pipelined behind them, and sluice relays pipelined
/// requests without a cache lookup (a lost hit, never a stale one; see README "Where misses
/// run"). A read that bypasses the cache, answered after the Close, makes sure the next request
/// is looked up, so the tests can tell hits from misses.
async fn settle(c: &Client) {
    c.simple_query("/* sluice:nocache */ SELECT 1").await.expect("a round trip");
}

/// A typed parameter for `query_typed`.
fn p<T: ToSql + Sync>(value: &T, ty: Type) -> (&(dyn ToSql + Sync), Type) {
    (value, ty)
}

/// The admin console's `SHOW CACHE` counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct CacheCounters {
    entries: u64,
    bytes: u64,
    hits: u64,
    misses: u64,
    hit_ratio: f64,
    invalidations: u64,
}

/// Runs `SHOW CACHE` on an admin console connection.
async fn show_cache(admin: &Client) -> CacheCounters {
    let a = answer(admin, "SHOW CACHE").await;
    assert_eq!(a.columns, ["entries", "bytes", "hits", "misses", "hit_ratio", "invalidations"], "SHOW CACHE columns");
    assert_eq!(a.rows.len(), 1, "SHOW CACHE has one row: {a:?}");
    let cell = |name: &str| -> String {
        let i = a.columns.iter().position(|c| c == name).unwrap();
        a.rows[0][i].clone().unwrap_or_else(|| panic!("SHOW CACHE: {name} is NULL"))
    };
    let int = |name: &str| -> u64 { cell(name).parse().unwrap_or_else(|e| panic!("SHOW CACHE {name} = {:?}: {e}", cell(name))) };
    CacheCounters {
        entries: int("entries"),
        bytes: int("bytes"),
        hits: int("hits"),
        misses: int("misses"),
        hit_ratio: cell("hit_ratio").parse().unwrap_or_else(|e| panic!("hit_ratio {:?}: {e}", cell("hit_ratio"))),
        invalidations: int("invalidations"),
    }
}

/// Polls the async `check` every 20 ms until it holds or `limit` passes; returns whether it held.
async fn eventually_async<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `SHOW CACHE` until `check` holds (the entry count of the store is eventually
/// consistent), or panics after 10 s with the last counters.
async fn wait_cache(admin: &Client, what: &str, check: impl Fn(&CacheCounters) -> bool) -> CacheCounters {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = show_cache(admin).await;
        if check(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: SHOW CACHE never got there: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET /metrics` on `addr`: the body.
fn scrape(addr: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// The value of the series `series` (name and labels, exactly as exposed) in a scrape.
fn metric(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

// ---------------------------------------------------------------------------------------------
// Reads and writes through sluice
// ---------------------------------------------------------------------------------------------

/// A simple-protocol read is answered from the cache (a change made around sluice is not seen),
/// and the first read after an UPDATE through sluice returns the new value; the cache then fills
/// again. The key is the exact text: another spelling is another entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simple_read_is_answered_from_the_cache_until_a_write_through_sluice() {
    let s = Setup::new("cache_simple", CACHE_ALL).await;
    let c = s.client().await;
    let read = "SELECT v FROM t WHERE id = 1";
    assert_eq!(simple_scalar::<i32>(&c, read).await, 10, "the first read fills");
    s.around("UPDATE t SET v = 11 WHERE id = 1").await;
    assert_eq!(simple_scalar::<i32>(&c, read).await, 10, "the repeated read is answered from the cache");
    assert_eq!(
        simple_scalar::<i32>(&c, "select v from t where id = 1").await,
        11,
        "another text is another entry, read from the server"
    );

    c.batch_execute("UPDATE t SET v = 12 WHERE id = 1").await.unwrap();
    assert_eq!(simple_scalar::<i32>(&c, read).await, 12, "the read after a write through sluice sees it at once");

    // The cache fills again after the invalidation.
    s.around("UPDATE t SET v = 13 WHERE id = 1").await;
    assert_eq!(simple_scalar::<i32>(&c, read).await, 12, "cached again after the write");
    let admin = s.admin().await;
    let stats = show_cache(&admin).await;
    assert!(stats.hits >= 2, "{stats:?}");
    s.stop().await;
}

/// Extended-protocol reads with a parameter (the unnamed statement, a statement prepared once,
/// and one prepared for every execution) are answered from the cache; each parameter value is an
/// entry of its own; an UPDATE through sluice, itself sent with the extended protocol, makes every
/// read of the table fresh at once, whichever row it changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extended_read_with_parameters_is_answered_from_the_cache_until_a_write_through_sluice() {
    let s = Setup::new("cache_extended", CACHE_ALL).await;
    let r = Reader::new(s.client().await).await;
    for form in EXTENDED {
        for id in [1, 2] {
            assert_eq!(r.read(form, id).await, id * 10, "{form:?} fill of {id}");
        }
    }
    s.around("UPDATE t SET v = v + 1").await;
    for form in EXTENDED {
        for id in [1, 2] {
            assert_eq!(r.read(form, id).await, id * 10, "{form:?} read of {id} is answered from the cache");
        }
        // Never read before: its own entry, so the server's current value, not another id's.
        assert_eq!(r.read(form, 3).await, 31, "{form:?}: parameter values are part of the key");
    }

    // A write through sluice with the extended protocol, to row 1 only.
    let n = r.c.execute("UPDATE t SET v = $1 WHERE id = $2", &[&100i32, &1i32]).await.unwrap();
    assert_eq!(n, 1);
    for form in FORMS {
        assert_eq!(r.read(form, 1).await, 100, "{form:?}: the written row is fresh at once");
        assert_eq!(r.read(form, 2).await, 21, "{form:?}: every entry over the table is dropped");
    }
    s.stop().await;
}

/// A write through sluice by one client is seen at once by another client whose reads were
/// cached (both protocols), and by a client that connects afterwards. Clients of the same user
/// share entries: the second client's first read is a hit on the first client's fill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_client_sees_a_write_through_sluice_at_once() {
    let s = Setup::new("cache_other_client", CACHE_ALL).await;
    let a = Reader::new(s.client().await).await;
    let b = Reader::new(s.client().await).await;
    for form in FORMS {
        assert_eq!(a.read(form, 1).await, 10, "{form:?} fill by a");
    }
    s.around("UPDATE t SET v = 11 WHERE id = 1").await;
    for form in FORMS {
        assert_eq!(b.read(form, 1).await, 10, "{form:?}: b is answered from a's entry");
    }

    // b writes (simple protocol): a's next reads see it.
    b.c.batch_execute("UPDATE t SET v = 12 WHERE id = 1").await.unwrap();
    for form in FORMS {
        assert_eq!(a.read(form, 1).await, 12, "{form:?}: a sees b's simple-protocol write at once");
    }

    // Cached again; b writes with the extended protocol.
    for form in FORMS {
        assert_eq!(a.read(form, 2).await, 20, "{form:?} fill of row 2");
    }
    s.around("UPDATE t SET v = 21 WHERE id = 2").await;
    assert_eq!(a.read(Form::Simple, 2).await, 20, "row 2 is cached");
    b.c.execute("UPDATE t SET v = $1 WHERE id = $2", &[&22i32, &2i32]).await.unwrap();
    for form in FORMS {
        assert_eq!(a.read(form, 2).await, 22, "{form:?}: a sees b's extended-protocol write at once");
    }
    let late = Reader::new(s.client().await).await;
    for form in FORMS {
        assert_eq!(late.read(form, 2).await, 22, "{form:?}: a client that connects later");
    }
    s.stop().await;
}

/// A write rolled back (by ROLLBACK, by the driver's transaction API, after an error in the
/// block, or in one query string with its BEGIN) invalidates nothing: the cached answer is still
/// served. A committed transaction then invalidates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_write_keeps_entries() {
    let s = Setup::new("cache_rollback", CACHE_ALL).await;
    let mut r = Reader::new(s.client().await).await;
    let admin = s.admin().await;
    for form in FORMS {
        assert_eq!(r.read(form, 1).await, 10, "{form:?} fill");
    }
    // From here on the primary says 11, the entries 10: a 10 can only come from the cache.
    s.around("UPDATE t SET v = 11 WHERE id = 1").await;
    let hits_before = show_cache(&admin).await.hits;

    r.c.batch_execute("BEGIN").await.unwrap();
    r.c.batch_execute("UPDATE t SET v = 99 WHERE id = 1").await.unwrap();
    r.c.batch_execute("ROLLBACK").await.unwrap();
    for form in FORMS {
        assert_eq!(r.read(form, 1).await, 10, "{form:?}: still cached after BEGIN; UPDATE; ROLLBACK");
    }

    {
        let tx = r.c.transaction().await.unwrap();
        tx.execute("UPDATE t SET v = $1 WHERE id = $2", &[&98i32, &1i32]).await.unwrap();
        tx.rollback().await.unwrap();
    }
    for form in FORMS {
        assert_eq!(r.read(form, 1).await, 10, "{form:?}: still cached after an extended-protocol write rolled back");
    }

    r.c.batch_execute("BEGIN").await.unwrap();
    r.c.batch_execute("UPDATE t SET v = 97 WHERE id = 1").await.unwrap();
    let e = r.c.batch_execute("SELECT 1 / 0").await.unwrap_err();
    assert_eq!(sqlstate(&e), "22012");
    r.c.batch_execute("ROLLBACK").await.unwrap();
    for form in FORMS {
        assert_eq!(r.read(form, 1).await, 10, "{form:?}: still cached after a failed transaction rolled back");
    }

    r.c.batch_execute("BEGIN; UPDATE t SET v = 96 WHERE id = 1; ROLLBACK").await.unwrap();
    for form in FORMS {
        assert_eq!(r.read(form, 1).await, 10, "{form:?}: still cached after BEGIN; UPDATE; ROLLBACK in one query");
    }
    let hits_after = show_cache(&admin).await.hits;
    assert!(hits_after >= hits_before + 16, "every read after a rollback was a hit: {hits_before} -> {hits_after}");

    // A committed transaction does invalidate.
    r.c.batch_execute("BEGIN").await.unwrap();
    r.c.batch_execute("UPDATE t SET v = 50 WHERE id = 1").await.unwrap();
    r.c.batch_execute("COMMIT").await.unwrap();
    for form in FORMS {
        assert_eq!(r.read(form, 1).await, 50, "{form:?}: after COMMIT");
    }
    {
        let tx = r.c.transaction().await.unwrap();
        tx.execute("UPDATE t SET v = $1 WHERE id = $2", &[&51i32, &1i32]).await.unwrap();
        tx.commit().await.unwrap();
    }
    for form in FORMS {
        assert_eq!(r.read(form, 1).await, 51, "{form:?}: after the driver's commit");
    }
    s.stop().await;
}

/// Reads inside a transaction block never come from the cache: they see the server's current
/// rows and the transaction's own uncommitted writes; after COMMIT, autocommit reads see them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_inside_a_transaction_see_its_own_writes_not_the_cache() {
    let s = Setup::new("cache_in_tx", CACHE_ALL).await;
    let r = Reader::new(s.client().await).await;
    for form in FORMS {
        assert_eq!(r.read(form, 1).await, 10, "{form:?} fill");
    }
    s.around("UPDATE t SET v = 11 WHERE id = 1").await;
    assert_eq!(r.read(Form::Simple, 1).await, 10, "cached outside the transaction");

    r.c.batch_execute("BEGIN").await.unwrap();
    for form in FORMS {
        assert_eq!(r.read(form, 1).await, 11, "{form:?}: a read in a transaction goes to the server");
    }
    r.c.batch_execute("UPDATE t SET v = 12 WHERE id = 1").await.unwrap();
    for form in FORMS {
        assert_eq!(r.read(form, 1).await, 12, "{form:?}: the transaction sees its own write");
    }
    // Another client, outside the transaction, still has the (older) committed state cached or
    // reads the server's committed 11: never the uncommitted 12.
    let other = Reader::new(s.client().await).await;
    let seen = other.read(Form::Simple, 1).await;
    assert!(seen == 10 || seen == 11, "another client saw {seen} before the commit");
    r.c.batch_execute("COMMIT").await.unwrap();
    for form in FORMS {
        assert_eq!(other.read(form, 1).await, 12, "{form:?}: after COMMIT, everyone sees the write");
    }
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// What the key holds: users, roles, settings
// ---------------------------------------------------------------------------------------------

/// Two roles reading the same text from a table under row-level security (a policy on
/// `current_user`) each see only their own rows, whoever filled the cache first; a role without
/// the privilege is refused even though the text is cached; and a superuser (who bypasses the
/// policy) sees all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_never_share_entries() {
    let s = Setup::new("cache_roles", CACHE_ALL).await;
    let (alice, bob, carol) = (format!("{}_alice", s.db), format!("{}_bob", s.db), format!("{}_carol", s.db));
    s.around(&format!(
        "CREATE ROLE {alice} LOGIN; CREATE ROLE {bob} LOGIN; CREATE ROLE {carol} LOGIN;
         CREATE TABLE notes (owner name NOT NULL, body text NOT NULL);
         INSERT INTO notes VALUES ('{alice}', 'a1'), ('{alice}', 'a2'), ('{bob}', 'b1');
         ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
         CREATE POLICY own_rows ON notes USING (owner = current_user);
         GRANT SELECT, UPDATE ON notes TO {alice}, {bob};"
    ))
    .await;
    let read = "SELECT body FROM notes ORDER BY body";
    let as_alice = s.proxy.connect_with(&alice, "").await.expect("alice connects through sluice");
    let as_bob = s.proxy.connect_with(&bob, "").await.expect("bob connects through sluice");
    let as_carol = s.proxy.connect_with(&carol, "").await.expect("carol connects through sluice");
    let as_postgres = s.client().await;

    let bodies = |rows: Vec<tokio_postgres::Row>| rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>();
    for round in 0..2 {
        assert_eq!(column(&as_alice, read).await, ["a1", "a2"], "alice, round {round}");
        assert_eq!(column(&as_bob, read).await, ["b1"], "bob, round {round}");
        assert_eq!(bodies(as_alice.query_typed(read, &[]).await.unwrap()), ["a1", "a2"], "alice, extended, round {round}");
        assert_eq!(bodies(as_bob.query_typed(read, &[]).await.unwrap()), ["b1"], "bob, extended, round {round}");
        let e = as_carol.simple_query(read).await.expect_err("carol has no privilege on notes");
        assert_eq!(sqlstate(&e), "42501", "{e}");
        let e = as_carol.query_typed(read, &[]).await.expect_err("carol has no privilege on notes");
        assert_eq!(sqlstate(&e), "42501", "{e}");
        assert_eq!(column(&as_postgres, read).await, ["a1", "a2", "b1"], "the superuser bypasses the policy");
    }

    // The reads above were cached per user: a row added around sluice is not seen yet...
    s.around(&format!("INSERT INTO notes VALUES ('{alice}', 'a3'), ('{bob}', 'b2')")).await;
    assert_eq!(column(&as_alice, read).await, ["a1", "a2"], "alice's own entry");
    assert_eq!(column(&as_bob, read).await, ["b1"], "bob's own entry");
    let admin = s.admin().await;
    assert!(show_cache(&admin).await.hits >= 4, "{:?}", show_cache(&admin).await);

    // ...and bob's write through sluice drops every user's entries over the table.
    as_bob.batch_execute("UPDATE notes SET body = 'b1x' WHERE body = 'b1'").await.unwrap();
    assert_eq!(column(&as_alice, read).await, ["a1", "a2", "a3"], "alice after bob's write");
    assert_eq!(column(&as_bob, read).await, ["b1x", "b2"], "bob after his write");
    assert_eq!(column(&as_postgres, read).await, ["a1", "a2", "a3", "b1x", "b2"]);

    drop((as_alice, as_bob, as_carol, as_postgres));
    s.proxy.sluice.shutdown(Duration::ZERO).await;
    // The roles are the cluster's, not the database's: drop them (sessions may still be ending).
    s.around(&format!("DROP TABLE notes; DROP ROLE {alice}, {bob}, {carol}")).await;
}

/// A role taken with `SET ROLE` (or given at startup with `-c role=...`) is part of the key: a
/// superuser who filled the cache and then sets a role under row-level security sees that
/// role's rows only, and all of them again after `RESET ROLE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_role_is_part_of_the_key() {
    let s = Setup::new("cache_set_role", CACHE_ALL).await;
    let bob = format!("{}_bob", s.db);
    s.around(&format!(
        "CREATE ROLE {bob} LOGIN;
         CREATE TABLE notes (owner name NOT NULL, body text NOT NULL);
         INSERT INTO notes VALUES ('someone', 'a1'), ('{bob}', 'b1');
         ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
         CREATE POLICY own_rows ON notes USING (owner = current_user);
         GRANT SELECT ON notes TO {bob};"
    ))
    .await;
    let read = "SELECT body FROM notes ORDER BY body";
    let c = s.client().await;
    for round in 0..2 {
        assert_eq!(column(&c, read).await, ["a1", "b1"], "the superuser, round {round}");
    }
    let at_startup = s.proxy.connect_with("postgres", &format!("options='-c role={bob}'")).await.unwrap();
    assert_eq!(column(&at_startup, read).await, ["b1"], "a role given at startup");

    c.batch_execute(&format!("SET ROLE {bob}")).await.unwrap();
    assert_eq!(column(&c, "SELECT current_user").await, [bob.as_str()], "the role is set");
    assert_eq!(column(&c, &format!("/* sluice:nocache */ {read}")).await, ["b1"], "from the server, bob's rows");
    assert_eq!(column(&c, read).await, ["b1"], "after SET ROLE, the same text must not be the superuser's entry");
    let v: Vec<String> = c.query_typed(read, &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(v, ["b1"], "extended protocol, after SET ROLE");
    c.batch_execute("RESET ROLE").await.unwrap();
    assert_eq!(column(&c, read).await, ["a1", "b1"], "after RESET ROLE");

    drop((c, at_startup));
    s.proxy.sluice.shutdown(Duration::ZERO).await;
    s.around(&format!("DROP TABLE notes; DROP ROLE {bob}")).await;
}

/// A custom setting read by a row-level-security policy (`current_setting('app.tenant')`) splits
/// entries: two sessions of the same user with different tenants read the same text and each get
/// their own tenant's rows, and a session that changes its tenant gets the other rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_setting_read_by_a_row_level_security_policy_splits_entries() {
    let s = Setup::new("cache_tenant", CACHE_ALL).await;
    let user = format!("{}_app", s.db);
    s.around(&format!(
        "CREATE ROLE {user} LOGIN;
         CREATE TABLE items (tenant text NOT NULL, name text NOT NULL);
         INSERT INTO items VALUES ('x', 'x-item'), ('y', 'y-item');
         ALTER TABLE items ENABLE ROW LEVEL SECURITY;
         CREATE POLICY by_tenant ON items USING (tenant = current_setting('app.tenant', true));
         GRANT SELECT ON items TO {user};"
    ))
    .await;
    let read = "SELECT name FROM items ORDER BY name";
    let x = s.proxy.connect_with(&user, "").await.unwrap();
    let y = s.proxy.connect_with(&user, "options='-c app.tenant=y'").await.unwrap();
    x.batch_execute("SET app.tenant = 'x'").await.unwrap();
    for round in 0..2 {
        assert_eq!(column(&x, read).await, ["x-item"], "tenant x, round {round}");
        assert_eq!(column(&y, read).await, ["y-item"], "tenant y, round {round}");
    }
    x.batch_execute("SET app.tenant = 'y'").await.unwrap();
    assert_eq!(column(&x, read).await, ["y-item"], "x switched to tenant y");
    x.batch_execute("RESET app.tenant").await.unwrap();
    assert!(column(&x, read).await.is_empty(), "no tenant, no rows");

    drop((x, y));
    s.proxy.sluice.shutdown(Duration::ZERO).await;
    s.around(&format!("DROP TABLE items; DROP ROLE {user}")).await;
}

/// The same text under different `search_path`s reads different tables, and gets different
/// answers, whether the path was SET or given at startup; a client that changes its path gets
/// the other answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_path_is_part_of_the_key() {
    let s = Setup::new("cache_search_path", CACHE_ALL).await;
    s.around(
        "CREATE SCHEMA s1; CREATE SCHEMA s2;
         CREATE TABLE s1.t (v text); INSERT INTO s1.t VALUES ('one');
         CREATE TABLE s2.t (v text); INSERT INTO s2.t VALUES ('two');",
    )
    .await;
    let read = "SELECT v FROM t";
    let v_of = |rows: Vec<tokio_postgres::Row>| rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>();
    let a = s.client().await;
    let b = s.client().await;
    a.batch_execute("SET search_path = s1").await.unwrap();
    b.batch_execute("SET search_path = s2").await.unwrap();
    for round in 0..2 {
        assert_eq!(column(&a, read).await, ["one"], "a (s1), round {round}");
        assert_eq!(column(&b, read).await, ["two"], "b (s2), round {round}");
        assert_eq!(v_of(a.query_typed(read, &[]).await.unwrap()), ["one"], "a (s1), extended, round {round}");
        assert_eq!(v_of(b.query_typed(read, &[]).await.unwrap()), ["two"], "b (s2), extended, round {round}");
    }
    // Those were cached: a change around sluice is not seen.
    s.around("UPDATE s1.t SET v = 'uno'; UPDATE s2.t SET v = 'dos'").await;
    assert_eq!(column(&a, read).await, ["one"], "a's entry");
    assert_eq!(column(&b, read).await, ["two"], "b's entry");

    // A path given at startup.
    let c = s.proxy.connect_with("postgres", "options='-c search_path=s2'").await.unwrap();
    let seen = column(&c, read).await;
    assert!(seen == ["two"] || seen == ["dos"], "a client starting with s2 read s2's table: {seen:?}");
    // A client that changes its path.
    a.batch_execute("SET search_path = s2").await.unwrap();
    let seen = column(&a, read).await;
    assert!(seen == ["two"] || seen == ["dos"], "a after SET search_path = s2 read s2's table: {seen:?}");

    // A write through sluice to one schema's t: both are fresh afterwards (tables are matched by
    // bare name, so this may drop the other schema's entries too; it must never leave them stale
    // where they changed).
    b.batch_execute("UPDATE t SET v = 'zwei'").await.unwrap();
    assert_eq!(column(&b, read).await, ["zwei"]);
    a.batch_execute("SET search_path = s1").await.unwrap();
    let seen = column(&a, read).await;
    assert!(seen == ["one"] || seen == ["uno"], "s1's table: {seen:?}");
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Which writes invalidate
// ---------------------------------------------------------------------------------------------

/// Reads of `t` used to check invalidation: every column of every row (simple protocol), and a
/// count and sum (extended protocol).
const READ_ALL: &str = "SELECT * FROM t ORDER BY id";
const READ_SUM: &str = "SELECT count(*)::int, coalesce(sum(v), 0)::int FROM t";

/// Both reads of `t` through `c`.
async fn read_t(c: &Client) -> (Answer, (i32, i32)) {
    let all = answer(c, READ_ALL).await;
    let row = c.query_typed(READ_SUM, &[]).await.unwrap_or_else(|e| panic!("{READ_SUM}: {e}"));
    (all, (row[0].get(0), row[0].get(1)))
}

/// Reads `t` through `c` (filling the cache), checks that the answers are the primary's, then
/// changes `t` around sluice (a canary row 0) and checks the reads are answered from the cache.
async fn fill_and_prove_cached(s: &Setup, c: &Client, before: &str) {
    let filled = read_t(c).await;
    assert_eq!(filled, read_t(&s.direct).await, "before {before}: a read through sluice matches the primary");
    s.around("INSERT INTO t (id, v) VALUES (0, 0) ON CONFLICT (id) DO UPDATE SET v = t.v + 1").await;
    assert_eq!(read_t(c).await, filled, "before {before}: the reads are answered from the cache");
}

/// After a write through sluice: reads of `t` through `c` are the primary's current answers.
async fn assert_fresh(s: &Setup, c: &Client, after: &str) -> (Answer, (i32, i32)) {
    let through = read_t(c).await;
    assert_eq!(through, read_t(&s.direct).await, "after {after}: reads through sluice see the primary's rows at once");
    through
}

/// MERGE (simple and extended protocol), TRUNCATE, COPY FROM STDIN and DDL (ALTER TABLE ADD
/// COLUMN, DROP TABLE, CREATE TABLE) through sluice each make the next read of the table fresh,
/// for the client that wrote and for another one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_truncate_copy_and_ddl_invalidate() {
    let s = Setup::new("cache_merge_ddl", CACHE_ALL).await;
    let w = s.client().await;
    let r = s.client().await;

    fill_and_prove_cached(&s, &r, "MERGE").await;
    w.batch_execute(
        "MERGE INTO t USING (VALUES (1, 100), (7, 700)) AS src(id, v) ON t.id = src.id \
         WHEN MATCHED THEN UPDATE SET v = src.v WHEN NOT MATCHED THEN INSERT (id, v) VALUES (src.id, src.v)",
    )
    .await
    .unwrap();
    let (_, (count, sum)) = assert_fresh(&s, &r, "MERGE").await;
    assert_eq!((count, sum), (5, 100 + 20 + 30 + 700), "MERGE updated one row and inserted one");
    assert_fresh(&s, &w, "MERGE (the writer)").await;

    fill_and_prove_cached(&s, &r, "an extended-protocol MERGE").await;
    w.execute(
        "MERGE INTO t USING (SELECT $1::int AS id, $2::int AS v) AS src ON t.id = src.id \
         WHEN MATCHED THEN DELETE WHEN NOT MATCHED THEN INSERT (id, v) VALUES (src.id, src.v)",
        &[&7i32, &0i32],
    )
    .await
    .unwrap();
    let (_, (count, _)) = assert_fresh(&s, &r, "an extended-protocol MERGE").await;
    assert_eq!(count, 4, "the MERGE deleted row 7");

    fill_and_prove_cached(&s, &r, "TRUNCATE").await;
    w.batch_execute("TRUNCATE t").await.unwrap();
    assert_eq!(assert_fresh(&s, &r, "TRUNCATE").await.1, (0, 0));

    fill_and_prove_cached(&s, &r, "COPY FROM STDIN").await;
    {
        let sink = w.copy_in::<_, bytes::Bytes>("COPY t (id, v) FROM STDIN").await.unwrap();
        futures_util::pin_mut!(sink);
        sink.send(bytes::Bytes::from_static(b"1\t10\n2\t20\n3\t30\n")).await.unwrap();
        assert_eq!(sink.finish().await.unwrap(), 3);
    }
    let (_, (count, _)) = assert_fresh(&s, &r, "COPY FROM STDIN").await;
    assert_eq!(count, 4, "three copied rows and the canary");

    fill_and_prove_cached(&s, &r, "ALTER TABLE ADD COLUMN").await;
    w.batch_execute("ALTER TABLE t ADD COLUMN w int NOT NULL DEFAULT 7").await.unwrap();
    let (all, _) = assert_fresh(&s, &r, "ALTER TABLE ADD COLUMN").await;
    assert_eq!(all.columns, ["id", "v", "w"], "SELECT * shows the new column");

    fill_and_prove_cached(&s, &r, "DROP TABLE").await;
    w.batch_execute("DROP TABLE t").await.unwrap();
    let e = r.simple_query(READ_ALL).await.expect_err("the table is gone");
    assert_eq!(sqlstate(&e), "42P01", "{e}");
    let e = r.query_typed(READ_SUM, &[]).await.expect_err("the table is gone");
    assert_eq!(sqlstate(&e), "42P01", "{e}");

    w.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v int, note text)").await.unwrap();
    w.batch_execute("INSERT INTO t VALUES (5, 50, 'new')").await.unwrap();
    let (all, sums) = assert_fresh(&s, &r, "DROP and CREATE TABLE").await;
    assert_eq!(all.columns, ["id", "v", "note"]);
    assert_eq!(sums, (1, 50));
    fill_and_prove_cached(&s, &r, "the end").await;
    s.stop().await;
}

/// INSERT (extended protocol), DELETE, UPDATE through a schema-qualified alias, a writable CTE,
/// a call of a function that writes, a procedure (CALL) and a DO block through sluice each make
/// the next read of the table fresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_deletes_writable_ctes_functions_procedures_and_do_blocks_invalidate() {
    let s = Setup::new("cache_other_writes", CACHE_ALL).await;
    s.around(
        "CREATE FUNCTION bump_t() RETURNS void LANGUAGE plpgsql AS $$ BEGIN UPDATE t SET v = v + 1000 WHERE id = 1; END $$;
         CREATE PROCEDURE bump_p() LANGUAGE sql AS $$ UPDATE t SET v = v + 100 WHERE id = 1 $$;",
    )
    .await;
    let w = s.client().await;
    let r = s.client().await;

    let steps: &[(&str, &str)] = &[
        ("DELETE", "DELETE FROM t WHERE id = 3"),
        ("UPDATE through a qualified alias", "UPDATE public.t AS x SET v = x.v + 5 WHERE x.id = 2"),
        ("a writable CTE", "WITH d AS (DELETE FROM t WHERE id = 2 RETURNING id) SELECT count(*) FROM d"),
        ("a function that writes", "SELECT bump_t()"),
        ("CALL", "CALL bump_p()"),
        ("a DO block", "DO $$ BEGIN UPDATE t SET v = v + 10 WHERE id = 1; END $$"),
    ];
    fill_and_prove_cached(&s, &r, "INSERT").await;
    w.execute("INSERT INTO t (id, v) VALUES ($1, $2)", &[&4i32, &40i32]).await.unwrap();
    assert_fresh(&s, &r, "INSERT").await;
    for (what, sql) in steps {
        fill_and_prove_cached(&s, &r, what).await;
        w.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_fresh(&s, &r, what).await;
    }
    // The same writes, sent with the extended protocol.
    let extended: &[(&str, &str)] = &[
        ("an extended-protocol writable CTE", "WITH u AS (UPDATE t SET v = v + 1 RETURNING id) SELECT count(*) FROM u"),
        ("an extended-protocol function call", "SELECT bump_t()"),
    ];
    for (what, sql) in extended {
        fill_and_prove_cached(&s, &r, what).await;
        w.query_typed(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_fresh(&s, &r, what).await;
    }
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// What is cached: hints, volatile reads, catalogs, views
// ---------------------------------------------------------------------------------------------

/// In `mode = "hint"` only reads carrying `/* sluice:cache */` (anywhere in the text) are cached,
/// in both protocols; a write through sluice still invalidates them; and a hint's own `ttl=` bounds
/// how long a change made around sluice stays unseen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hint_mode_caches_only_hinted_reads() {
    let s = Setup::new("cache_hint_mode", "[cache]\nenabled = true\nmode = \"hint\"\nttl = \"1h\"").await;
    let c = s.client().await;
    let plain = "SELECT v FROM t WHERE id = 1";
    let hinted = "/* sluice:cache */ SELECT v FROM t WHERE id = 1";
    let hinted_inside = "SELECT v FROM t /* sluice:cache */ WHERE id = 1";
    let hinted_param = "/* sluice:cache */ SELECT v FROM t WHERE id = $1";
    let extended = |sql: &'static str| {
        let c = &c;
        async move {
            let v = c.query_one(sql, &[&1i32]).await.unwrap_or_else(|e| panic!("{sql}: {e}")).get::<_, i32>(0);
            settle(c).await;
            v
        }
    };
    for sql in [plain, hinted, hinted_inside] {
        assert_eq!(simple_scalar::<i32>(&c, sql).await, 10, "{sql}");
    }
    assert_eq!(extended("SELECT v FROM t WHERE id = $1").await, 10);
    assert_eq!(extended(hinted_param).await, 10);

    s.around("UPDATE t SET v = 11 WHERE id = 1").await;
    assert_eq!(simple_scalar::<i32>(&c, plain).await, 11, "an unhinted read is not cached");
    assert_eq!(extended("SELECT v FROM t WHERE id = $1").await, 11, "nor an unhinted extended one");
    assert_eq!(simple_scalar::<i32>(&c, hinted).await, 10, "a hinted read is cached");
    assert_eq!(simple_scalar::<i32>(&c, hinted_inside).await, 10, "a hint anywhere in the text");
    assert_eq!(extended(hinted_param).await, 10, "a hinted extended-protocol read is cached");

    c.batch_execute("UPDATE t SET v = 12 WHERE id = 1").await.unwrap();
    assert_eq!(simple_scalar::<i32>(&c, hinted).await, 12, "a write through sluice invalidates hinted entries");
    assert_eq!(extended(hinted_param).await, 12);

    // A hint's own TTL: far shorter than the configured hour.
    let short = "/* sluice:cache ttl=2s */ SELECT v FROM t WHERE id = 2";
    assert_eq!(simple_scalar::<i32>(&c, short).await, 20);
    s.around("UPDATE t SET v = 21 WHERE id = 2").await;
    assert_eq!(simple_scalar::<i32>(&c, short).await, 20, "cached within its TTL");
    let c = &c;
    let expired = eventually_async(Duration::from_secs(20), move || async move { simple_scalar::<i32>(c, short).await == 21 }).await;
    assert!(expired, "the hinted entry expired after its own TTL (2 s), not the configured hour");
    s.stop().await;
}

/// `/* sluice:nocache */` reads always reach the server, in both protocols, even in `mode = "all"`,
/// and never count as hits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nocache_hint_bypasses() {
    let s = Setup::new("cache_nocache", CACHE_ALL).await;
    let c = s.client().await;
    let admin = s.admin().await;
    let simple = "/* sluice:nocache */ SELECT v FROM t WHERE id = 1";
    let extended = "SELECT v FROM t WHERE id = $1 /* sluice:nocache */";
    for i in 0..3 {
        let expected = 10 + i;
        assert_eq!(simple_scalar::<i32>(&c, simple).await, expected, "simple, round {i}");
        let v: i32 = c.query_one(extended, &[&1i32]).await.unwrap().get(0);
        assert_eq!(v, expected, "extended, round {i}");
        let v: i32 = c.query_typed(extended, &[p(&1i32, Type::INT4)]).await.unwrap()[0].get(0);
        assert_eq!(v, expected, "unnamed extended, round {i}");
        s.around("UPDATE t SET v = v + 1 WHERE id = 1").await;
    }
    let stats = show_cache(&admin).await;
    assert_eq!((stats.hits, stats.entries), (0, 0), "nocache reads neither hit nor fill: {stats:?}");
    // The same read without the hint is cached: the hint made the difference.
    let plain = "SELECT v FROM t WHERE id = 1";
    assert_eq!(simple_scalar::<i32>(&c, plain).await, 13);
    s.around("UPDATE t SET v = v + 1 WHERE id = 1").await;
    assert_eq!(simple_scalar::<i32>(&c, plain).await, 13, "without the hint, cached");
    assert_eq!(simple_scalar::<i32>(&c, simple).await, 14, "with it, not");
    s.stop().await;
}

/// Reads whose answer is not fixed by their tables are never cached: clock and random functions,
/// sequences, the session's user and settings, relative-time literals, in both protocols. Each is read, `t` is changed around sluice, and the next read must see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volatile_reads_are_not_cached() {
    let s = Setup::new("cache_volatile", CACHE_ALL).await;
    s.around("CREATE SEQUENCE seq").await;
    let c = s.client().await;
    let admin = s.admin().await;
    let reads = [
        "SELECT v, now() FROM t WHERE id = 1",
        "SELECT v, current_timestamp FROM t WHERE id = 1",
        "SELECT v, clock_timestamp() FROM t WHERE id = 1",
        "SELECT v, random() FROM t WHERE id = 1",
        "SELECT v, nextval('seq') FROM t WHERE id = 1",
        "SELECT v, current_user FROM t WHERE id = 1",
        "SELECT v, current_setting('TimeZone') FROM t WHERE id = 1",
        "SELECT v, 'now'::timestamptz FROM t WHERE id = 1",
        "SELECT v FROM t WHERE id = 1 AND 'today'::date > '2000-01-01'",
    ];
    for sql in reads {
        let before: i32 = answer(&c, sql).await.rows[0][0].as_deref().unwrap().parse().unwrap();
        s.around("UPDATE t SET v = v + 1 WHERE id = 1").await;
        let after: i32 = answer(&c, sql).await.rows[0][0].as_deref().unwrap().parse().unwrap();
        assert_eq!(after, before + 1, "{sql} was answered from the cache");
        let typed = c.query_typed(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        s.around("UPDATE t SET v = v + 1 WHERE id = 1").await;
        let again = c.query_typed(sql, &[]).await.unwrap();
        assert_eq!(again[0].get::<_, i32>(0), typed[0].get::<_, i32>(0) + 1, "extended {sql} was answered from the cache");
    }
    // Without tables: successive answers differ.
    let t1 = column(&c, "SELECT now()").await;
    let t2 = column(&c, "SELECT now()").await;
    assert_ne!(t1, t2, "now() answered twice alike");
    let r1 = column(&c, "SELECT random()").await;
    let r2 = column(&c, "SELECT random()").await;
    assert_ne!(r1, r2, "random() answered twice alike");
    let n1: i64 = c.query_one("SELECT nextval('seq')", &[]).await.unwrap().get(0);
    let n2: i64 = c.query_one("SELECT nextval('seq')", &[]).await.unwrap().get(0);
    assert!(n2 > n1, "nextval() answered from the cache: {n1}, {n2}");

    let stats = show_cache(&admin).await;
    assert_eq!(stats.hits, 0, "no volatile read was a hit: {stats:?}");
    s.stop().await;
}

/// A text parameter meaning "now" (or "today"...) makes a read's answer depend on the clock,
/// whatever format the driver sends it in: tokio-postgres sends every parameter in binary
/// format, where a `text` value is its bytes as they are. Such reads are not cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_parameter_meaning_now_is_not_cached() {
    let s = Setup::new("cache_now_param", CACHE_ALL).await;
    let c = s.client().await;
    for (sql, value) in [
        ("SELECT v, $1::text::timestamptz AS at FROM t WHERE id = 1", "now"),
        ("SELECT v FROM t WHERE id = 1 AND $1::text::date > '2000-01-01'", "today"),
    ] {
        let first: i32 = c.query_typed(sql, &[p(&value, Type::TEXT)]).await.unwrap()[0].get(0);
        s.around("UPDATE t SET v = v + 1 WHERE id = 1").await;
        let second: i32 = c.query_typed(sql, &[p(&value, Type::TEXT)]).await.unwrap()[0].get(0);
        assert_eq!(second, first + 1, "{sql} bound to '{value}' (binary format) was answered from the cache");
    }
    s.stop().await;
}

/// Row-locking reads (FOR UPDATE / FOR SHARE), reads through a view, and reads of system
/// catalogs are never cached: a change made around sluice is seen by the next read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_locks_views_and_system_catalogs_are_not_cached() {
    let s = Setup::new("cache_not_cached", CACHE_ALL).await;
    s.around("CREATE VIEW tv AS SELECT id, v FROM t").await;
    let c = s.client().await;
    for sql in [
        "SELECT v FROM t WHERE id = 1 FOR UPDATE",
        "SELECT v FROM t WHERE id = 1 FOR SHARE",
        "SELECT v FROM tv WHERE id = 1",
    ] {
        let before: i32 = simple_scalar(&c, sql).await;
        s.around("UPDATE t SET v = v + 1 WHERE id = 1").await;
        assert_eq!(simple_scalar::<i32>(&c, sql).await, before + 1, "{sql} was answered from the cache");
        let typed: i32 = c.query_typed(sql, &[]).await.unwrap()[0].get(0);
        s.around("UPDATE t SET v = v + 1 WHERE id = 1").await;
        let again: i32 = c.query_typed(sql, &[]).await.unwrap()[0].get(0);
        assert_eq!(again, typed + 1, "extended {sql} was answered from the cache");
    }
    for sql in [
        "SELECT count(*) FROM pg_class WHERE relname LIKE 'made_around%'",
        "SELECT count(*) FROM pg_catalog.pg_tables WHERE tablename LIKE 'made_around%'",
        "SELECT count(*) FROM information_schema.tables WHERE table_name LIKE 'made_around%'",
    ] {
        let before: i64 = simple_scalar(&c, sql).await;
        s.around(&format!("CREATE TABLE made_around_{before}_{} (x int)", sql.len())).await;
        let after: i64 = simple_scalar(&c, sql).await;
        assert_eq!(after, before + 1, "{sql} was answered from the cache");
    }
    s.stop().await;
}

/// Changes made around sluice are seen once the entry's TTL has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_around_sluice_are_seen_after_the_ttl() {
    let s = Setup::new("cache_ttl", "[cache]\nenabled = true\nttl = \"2s\"").await;
    let r = Reader::new(s.client().await).await;
    for form in FORMS {
        assert_eq!(r.read(form, 1).await, 10, "{form:?} fill");
    }
    s.around("UPDATE t SET v = 11 WHERE id = 1").await;
    assert_eq!(r.read(Form::Simple, 1).await, 10, "within the TTL, the cached answer");
    for form in FORMS {
        let r = &r;
        let seen = eventually_async(Duration::from_secs(20), move || async move { r.read(form, 1).await == 11 }).await;
        assert!(seen, "{form:?}: the change around sluice was never seen after the 2 s TTL");
    }
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The admin console and metrics
// ---------------------------------------------------------------------------------------------

/// `SHOW CACHE` counts entries, bytes, hits, misses, their ratio and invalidations; the metrics
/// endpoint has the same counters and `sluice_transactions_total{route="cache"}`; `CACHE CLEAR`
/// empties the store, so the next read goes to the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_show_cache_and_cache_clear() {
    let sections = format!("[server]\nmetrics_listen = \"127.0.0.1:0\"\n\n{CACHE_ALL}");
    let s = Setup::new("cache_admin", &sections).await;
    let admin = s.admin().await;
    let empty = show_cache(&admin).await;
    assert_eq!((empty.entries, empty.hits, empty.misses), (0, 0, 0), "{empty:?}");

    let r = Reader::new(s.client().await).await;
    for id in 1..=3 {
        assert_eq!(r.read(Form::Simple, id).await, id * 10);
    }
    let filled = wait_cache(&admin, "three fills", |s| s.entries >= 3).await;
    assert!(filled.bytes > 0 && filled.misses >= 3, "{filled:?}");
    for id in 1..=3 {
        assert_eq!(r.read(Form::Simple, id).await, id * 10);
    }
    let hit = show_cache(&admin).await;
    assert!(hit.hits >= 3, "three hits: {hit:?}");
    let ratio = hit.hits as f64 / (hit.hits + hit.misses) as f64;
    assert!((hit.hit_ratio - ratio).abs() < 0.01, "hit_ratio {} vs {ratio}: {hit:?}", hit.hit_ratio);

    // The metrics endpoint tells the same.
    let metrics = s.proxy.sluice.metrics_addr().expect("metrics are served");
    let body = tokio::task::spawn_blocking(move || scrape(metrics)).await.unwrap();
    let value = |series: &str| metric(&body, series).unwrap_or_else(|| panic!("no {series} in\n{body}"));
    assert!(value("sluice_cache_hits_total") >= 3.0, "{body}");
    assert!(value("sluice_cache_misses_total") >= 3.0, "{body}");
    assert!(value("sluice_cache_bytes") > 0.0, "{body}");
    value("sluice_cache_invalidations_total");
    let cache_route = format!("sluice_transactions_total{{database=\"{}\",route=\"cache\"}}", s.db);
    assert!(value(&cache_route) >= 3.0, "hits are counted as transactions on the cache route:\n{body}");

    // CACHE CLEAR: entries gone, the next read reaches the server.
    s.around("UPDATE t SET v = 11 WHERE id = 1").await;
    assert_eq!(r.read(Form::Simple, 1).await, 10, "cached before CACHE CLEAR");
    admin.simple_query("CACHE CLEAR").await.expect("CACHE CLEAR");
    wait_cache(&admin, "CACHE CLEAR", |s| s.entries == 0 && s.bytes == 0).await;
    let misses = show_cache(&admin).await.misses;
    assert_eq!(r.read(Form::Simple, 1).await, 11, "after CACHE CLEAR the read goes to the server");
    assert!(show_cache(&admin).await.misses > misses, "and counts as a miss");

    // Invalidations are counted.
    assert_eq!(r.read(Form::Simple, 2).await, 20);
    assert_eq!(r.read(Form::Simple, 2).await, 20);
    let before = show_cache(&admin).await.invalidations;
    r.c.batch_execute("UPDATE t SET v = 22 WHERE id = 2").await.unwrap();
    assert_eq!(r.read(Form::Simple, 2).await, 22);
    let after = show_cache(&admin).await;
    assert!(after.invalidations > before, "a write over cached entries counts invalidations: {before} -> {after:?}");
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Concurrency: no read older than a finished commit
// ---------------------------------------------------------------------------------------------

/// Counter tables, one per key: key 0 is written flat out by two writers, the others ever more
/// rarely (pause in ms between a writer's writes), so that some reads race commits and others
/// are hits.
const PACE_MS: [u64; 4] = [0, 5, 25, 100];
const KEYS: usize = PACE_MS.len();
const READERS: usize = 5;
const RUN: Duration = Duration::from_secs(6);

fn counters_sql() -> String {
    (0..KEYS).map(|k| format!("CREATE TABLE counter_{k} (v bigint NOT NULL); INSERT INTO counter_{k} VALUES (0);\n")).collect()
}

/// Resumes replay when dropped, so a failed assertion never leaves the replica paused.
struct PausedReplay<'a>(&'a PgInstance);

impl<'a> PausedReplay<'a> {
    fn pause(replica: &'a PgInstance) -> Self {
        replica.psql("postgres", "SELECT pg_wal_replay_pause()").expect("pause replay");
        PausedReplay(replica)
    }
}

impl Drop for PausedReplay<'_> {
    fn drop(&mut self) {
        let _ = self.0.psql("postgres", "SELECT pg_wal_replay_resume()");
    }
}

/// What a load run did.
#[derive(Debug)]
struct Load {
    writes: u64,
    reads: u64,
    hits: u64,
}

/// `v` of counter `k` read through `c` in one of four ways (`how` % 4): simple, a prepared
/// statement, the unnamed statement, and the unnamed statement with a parameter
/// (`WHERE v >= $1`, bound to the value the reader must at least see, so it returns no row when
/// the read is stale).
async fn read_counter(c: &Client, prepared: &Statement, k: usize, how: u64, floor: i64) -> i64 {
    let sql = format!("SELECT v FROM counter_{k}");
    match how % 4 {
        0 => simple_scalar(c, &sql).await,
        1 => c.query_one(prepared, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}")).get(0),
        2 => c.query_typed(&sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}"))[0].get(0),
        _ => {
            let sql = format!("{sql} WHERE v >= $1");
            let rows = c.query_typed(&sql, &[p(&floor, Type::INT8)]).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
            rows.first().map(|r| r.get(0)).unwrap_or(-1)
        }
    }
}

/// Writers increment the counters through sluice at `addr` and record, once each commit has
/// returned, the value it committed (the newest per key); readers through sluice note that
/// newest value before each read and check the value read is at least that. Every read is
/// eligible for the cache; with `nocache_checked`, every fifth read also bypasses it
/// (`/* sluice:nocache */`, so it is routed as usual) and is checked the same way (for global
/// read-your-writes), else such reads run unchecked (they may use a lagging replica). With
/// `replica`, its replay is paused and resumed under the clients. Returns what was done; panics
/// (naming reader, key and values) on a stale read.
async fn freshness_under_load(addr: SocketAddr, db: &str, nocache_checked: bool, replica: Option<&PgInstance>) -> Load {
    let committed: Arc<Vec<AtomicI64>> = Arc::new((0..KEYS).map(|_| AtomicI64::new(0)).collect());
    let reads = Arc::new(AtomicU64::new(0));
    let writes = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + RUN;
    let mut tasks = Vec::new();
    for k in 0..KEYS {
        for w in 0..if k == 0 { 2 } else { 1 } {
            let c = connect(addr, db).await;
            let (committed, writes) = (committed.clone(), writes.clone());
            tasks.push(tokio::spawn(async move {
                let update_sql = format!("UPDATE counter_{k} SET v = v + 1 RETURNING v");
                let update = c.prepare(&update_sql).await.unwrap();
                let read = c.prepare(&format!("SELECT v FROM counter_{k}")).await.unwrap();
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let v: i64 = if i % 2 == 0 {
                        simple_scalar(&c, &update_sql).await
                    } else {
                        c.query_one(&update, &[]).await.unwrap_or_else(|e| panic!("{update_sql}: {e}")).get(0)
                    };
                    committed[k].fetch_max(v, Ordering::SeqCst);
                    writes.fetch_add(1, Ordering::Relaxed);
                    // Its own write, at once, through the cache.
                    let seen = read_counter(&c, &read, k, i, v).await;
                    assert!(seen >= v, "writer {w} of counter {k} committed {v} and then read {seen}");
                    i += 1;
                    if PACE_MS[k] > 0 {
                        tokio::time::sleep(Duration::from_millis(PACE_MS[k])).await;
                    }
                }
            }));
        }
    }
    for r in 0..READERS {
        let c = connect(addr, db).await;
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
                if i % 5 == 4 {
                    let floor = committed[k].load(Ordering::SeqCst);
                    let seen: i64 = simple_scalar(&c, &format!("/* sluice:nocache */ SELECT v FROM counter_{k}")).await;
                    if nocache_checked {
                        assert!(seen >= floor, "reader {r} read {seen} from counter {k} bypassing the cache after {floor} was committed");
                    }
                }
                reads.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    if let Some(replica) = replica {
        while Instant::now() < deadline {
            let paused = PausedReplay::pause(replica);
            tokio::time::sleep(Duration::from_millis(150)).await;
            drop(paused);
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
    let mut failures = Vec::new();
    for t in tasks {
        if let Err(e) = t.await {
            failures.push(e.to_string());
        }
    }
    assert!(failures.is_empty(), "clients failed (see the panics above): {failures:?}");
    let admin = connect(addr, "sluice").await;
    let hits = show_cache(&admin).await.hits;
    let load = Load { writes: writes.load(Ordering::Relaxed), reads: reads.load(Ordering::Relaxed), hits };
    eprintln!("freshness under load: {load:?}");
    load
}

/// The load run's results are not vacuous: many writes and reads, and some reads were hits.
fn assert_not_vacuous(load: &Load) {
    assert!(load.writes >= 100, "too few writes to mean anything: {load:?}");
    assert!(load.reads >= 100, "too few reads to mean anything: {load:?}");
    assert!(load.hits >= 10, "the cache answered (almost) nothing: {load:?}");
}

/// Writers incrementing counters and readers with the cache on, for a few seconds, against the
/// primary alone: no read returns a value older than the newest one whose commit had finished
/// before the read began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_readers_never_see_a_value_older_than_a_finished_commit() {
    let db = unique_db("cache_concurrent");
    cluster().primary.psql(&db, &counters_sql()).expect("counters");
    let proxy = start_proxy(&db, &format!("[pool]\nsize = 8\n\n{CACHE_ALL}")).await;
    let load = freshness_under_load(proxy.addr, &db, true, None).await;
    assert_not_vacuous(&load);
    proxy.sluice.shutdown(Duration::ZERO).await;
}

const ROUTED_DB: &str = "app";

/// A primary and streaming replica of the test's own (its replay is paused under it), with
/// database `app` holding the counters and `t (id int primary key, v int)` with `(1, 0)`.
fn own_cluster() -> Cluster {
    let bins = PgBinaries::locate().unwrap_or_else(|e| panic!("{e}"));
    let opts = ClusterOptions { replica: true, ..ClusterOptions::default() };
    let cluster = Cluster::start(&bins, &opts).unwrap_or_else(|e| panic!("starting a cluster: {e}"));
    cluster.primary.psql("postgres", &format!("CREATE DATABASE {ROUTED_DB}")).expect("create database");
    let tables = format!("{}CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 0);", counters_sql());
    cluster.primary.psql(ROUTED_DB, &tables).expect("create tables");
    cluster.wait_replica_caught_up().expect("replica catches up");
    cluster
}

/// Sluice with the cache on and reads split to the replica; replicas stay healthy however long
/// replay is paused, so only read-your-writes (`ryw`) keeps reads off a lagging replica.
async fn start_router_with_cache(cluster: &Cluster, ryw: &str) -> sluice::app::Sluice {
    let sections = format!(
        "[pool]\nsize = 8\n\n[routing]\nread_write_split = true\nlag_check_interval = \"20ms\"\n\
         max_replica_lag = \"1h\"\nmax_replica_lag_bytes = \"1GB\"\nread_your_writes = \"{ryw}\"\n\
         read_only_functions = [\"pg_is_in_recovery\"]\n\n{CACHE_ALL}"
    );
    let replica = cluster.replica.as_ref().expect("a replica").addr();
    let text = config_text(cluster.primary.addr(), ROUTED_DB, &sections, &format!("replicas = [\"{replica}\"]"));
    let config = sluice::config::Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    sluice::app::Sluice::start(config).await.expect("sluice starts")
}

/// Polls until a read that bypasses the cache runs on the replica (the replica is healthy and
/// routed to), or fails after 20 s.
async fn wait_replica_reads(c: &Client) {
    let on_replica = eventually_async(Duration::from_secs(20), move || async move {
        column(c, "/* sluice:nocache */ SELECT pg_is_in_recovery()").await == ["t"]
    })
    .await;
    assert!(on_replica, "reads never went to the replica");
}

/// The concurrency checker with read/write splitting on, a streaming replica whose replay is
/// paused and resumed under the clients, and global read-your-writes: no read, cached or not,
/// returns a value older than a commit that finished before it began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_router_and_global_read_your_writes_no_read_is_older_than_a_finished_commit() {
    let cluster = own_cluster();
    let sluice = start_router_with_cache(&cluster, "global").await;
    let addr = sluice.local_addrs()[0];
    wait_replica_reads(&connect(addr, ROUTED_DB).await).await;
    let load = freshness_under_load(addr, ROUTED_DB, true, cluster.replica.as_ref()).await;
    assert_not_vacuous(&load);
    sluice.shutdown(Duration::ZERO).await;
}

/// The concurrency checker with read/write splitting on, a streaming replica whose replay is
/// paused and resumed under the clients, and read-your-writes off: reads that bypass the cache
/// may see the lagging replica, but reads eligible for the cache never return a value older than
/// a commit that finished before they began (misses are filled from the primary, and nothing
/// older than a commit through sluice is ever stored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_router_and_read_your_writes_off_no_cached_read_is_older_than_a_finished_commit() {
    let cluster = own_cluster();
    let sluice = start_router_with_cache(&cluster, "off").await;
    let addr = sluice.local_addrs()[0];
    wait_replica_reads(&connect(addr, ROUTED_DB).await).await;
    let load = freshness_under_load(addr, ROUTED_DB, false, cluster.replica.as_ref()).await;
    assert_not_vacuous(&load);
    use sluice::metrics::Route;
    let routed = sluice.shared().metrics.database(ROUTED_DB).transactions(Route::Replica);
    assert!(routed > 0, "reads bypassing the cache used the replica");
    sluice.shutdown(Duration::ZERO).await;
}

/// With the replica's replay paused (so it serves an old state) and read-your-writes off, a
/// write through sluice is seen by every cacheable read at once, while a read that bypasses the
/// cache still gets the replica's old value; and what the cache then stores is the new value:
/// a change made around sluice afterwards is not seen (a hit), and the hit is not the old value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replay_paused_cached_reads_are_never_older_than_a_commit_through_sluice() {
    let cluster = own_cluster();
    let replica = cluster.replica.as_ref().expect("a replica");
    let sluice = start_router_with_cache(&cluster, "off").await;
    let addr = sluice.local_addrs()[0];
    let writer = connect(addr, ROUTED_DB).await;
    let reader = Reader::new(connect(addr, ROUTED_DB).await).await;
    wait_replica_reads(&reader.c).await;
    for form in FORMS {
        assert_eq!(reader.read(form, 1).await, 0, "{form:?} fill before the write");
    }
    let admin = connect(addr, "sluice").await;
    {
        let _paused = PausedReplay::pause(replica);
        writer.batch_execute("UPDATE t SET v = 1 WHERE id = 1").await.unwrap();
        let stale = column(&reader.c, "/* sluice:nocache */ SELECT v FROM t WHERE id = 1").await;
        assert_eq!(stale, ["0"], "a read bypassing the cache reads the paused replica (the test's premise)");
        for round in 0..3 {
            for form in FORMS {
                let hits = show_cache(&admin).await.hits;
                let v = reader.read(form, 1).await;
                let hit = show_cache(&admin).await.hits > hits;
                assert_eq!(v, 1, "{form:?}, round {round}: a cacheable read returned {v} after 1 was committed (hit: {hit})");
            }
        }
        // What is stored now is the committed value: a change around sluice is not seen.
        let direct = connect(cluster.primary.addr(), ROUTED_DB).await;
        direct.batch_execute("UPDATE t SET v = 100 WHERE id = 1").await.unwrap();
        let hits = show_cache(&admin).await.hits;
        for form in FORMS {
            assert_eq!(reader.read(form, 1).await, 1, "{form:?}: the stored answer is the committed one");
        }
        assert!(show_cache(&admin).await.hits >= hits + 4, "those reads were hits");
        writer.batch_execute("UPDATE t SET v = v + 1 WHERE id = 1").await.unwrap();
        for form in FORMS {
            assert_eq!(reader.read(form, 1).await, 101, "{form:?}: after the second write through sluice");
        }
    }
    sluice.shutdown(Duration::ZERO).await;
}
