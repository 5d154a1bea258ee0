//! The cache's promises, end to end without sockets: keys, generations, the write set and the
//! store together, as a session would drive them.

use super::key::Request;
use super::*;
use crate::router::classify::{Classification, Classifier};
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TTL: Duration = Duration::from_secs(60);

fn cache() -> ResultCache {
    ResultCache::new(CacheSettings::default())
}

fn session(cache: &ResultCache) -> SessionKey {
    cache.session_key("app", "app", "alice", [("search_path", "public"), ("TimeZone", "UTC")])
}

fn simple(sql: &str) -> Request<'_> {
    Request::Simple { text: sql.as_bytes() }
}

fn classify(sql: &str) -> Arc<Classification> {
    Classifier::new(&[]).classify(sql)
}

/// A read as the session runs it: look up, else snapshot, "run", store.
fn read(cache: &ResultCache, db: &Arc<DatabaseGenerations>, s: &SessionKey, sql: &str, rows: &'static [u8]) -> Bytes {
    let key = cache.key(s, simple(sql));
    let now = Instant::now();
    if let Some(hit) = cache.get(&key, now) {
        return hit;
    }
    let snapshot = db.snapshot(&classify(sql).tables);
    let response = Bytes::from_static(rows);
    let _ = cache.insert(&key, snapshot, response.clone(), TTL, now);
    response
}

/// A write as the session runs it: sent, completed with `tag`, ReadyForQuery `I`.
fn write(ws: &mut WriteSet, db: &DatabaseGenerations, seq: u64, sql: &str, tag: &[u8]) {
    ws.sent(seq, &classify(sql));
    ws.command_complete(tag);
    ws.ready(seq, b'I', db);
}

#[test]
fn a_hit_returns_the_stored_bytes_and_is_counted() {
    let (cache, db) = (cache(), Generations::default().database("app"));
    let s = session(&cache);
    assert_eq!(read(&cache, &db, &s, "SELECT * FROM t", b"v1"), &b"v1"[..]);
    assert_eq!(read(&cache, &db, &s, "SELECT * FROM t", b"v2"), &b"v1"[..]);
    let stats = cache.stats();
    assert_eq!((stats.entries, stats.hits, stats.misses), (1, 1, 1));
    assert_eq!(stats.hit_ratio(), 0.5);
}

#[test]
fn a_stale_entry_is_never_served_after_a_bump() {
    let (cache, db) = (cache(), Generations::default().database("app"));
    let s = session(&cache);
    read(&cache, &db, &s, "SELECT * FROM public.t", b"old");
    let mut ws = WriteSet::new();
    write(&mut ws, &db, 1, "UPDATE t SET x = 1", b"UPDATE 1");
    assert_eq!(cache.get(&cache.key(&s, simple("SELECT * FROM public.t")), Instant::now()), None);
    assert_eq!(cache.stats().invalidations, 1);
    assert_eq!(read(&cache, &db, &s, "SELECT * FROM public.t", b"new"), &b"new"[..]);
    assert_eq!(read(&cache, &db, &s, "SELECT * FROM public.t", b"newer"), &b"new"[..]);
}

#[test]
fn a_write_to_another_table_leaves_entries_served() {
    let (cache, db) = (cache(), Generations::default().database("app"));
    let s = session(&cache);
    read(&cache, &db, &s, "SELECT * FROM t", b"t");
    let mut ws = WriteSet::new();
    write(&mut ws, &db, 1, "INSERT INTO u VALUES (1)", b"INSERT 0 1");
    assert_eq!(read(&cache, &db, &s, "SELECT * FROM t", b"again"), &b"t"[..]);
}

#[test]
fn a_fill_that_raced_a_commit_is_not_stored() {
    let (cache, db) = (cache(), Generations::default().database("app"));
    let s = session(&cache);
    let key = cache.key(&s, simple("SELECT * FROM t"));
    // The read begins...
    let snapshot = db.snapshot(&classify("SELECT * FROM t").tables);
    // ...a commit of t is reported while it runs...
    let mut ws = WriteSet::new();
    write(&mut ws, &db, 1, "DELETE FROM t", b"DELETE 3");
    // ...and its response, which may predate the commit, arrives after.
    let refused = cache.insert(&key, snapshot, Bytes::from_static(b"maybe old"), TTL, Instant::now());
    assert_eq!(refused, Err(Error::StaleSnapshot));
    assert_eq!(cache.get(&key, Instant::now()), None);
}

#[test]
fn a_fill_stored_just_before_a_commit_lands_is_never_served() {
    let (cache, db) = (cache(), Generations::default().database("app"));
    let s = session(&cache);
    let key = cache.key(&s, simple("SELECT * FROM t"));
    let snapshot = db.snapshot(&["t"]);
    cache.insert(&key, snapshot, Bytes::from_static(b"old"), TTL, Instant::now()).unwrap();
    db.bump(&["t"]);
    assert_eq!(cache.get(&key, Instant::now()), None);
}

#[test]
fn a_rolled_back_transaction_invalidates_nothing() {
    let (cache, db) = (cache(), Generations::default().database("app"));
    let s = session(&cache);
    read(&cache, &db, &s, "SELECT * FROM t", b"kept");
    let mut ws = WriteSet::new();
    ws.sent(1, &classify("BEGIN"));
    ws.command_complete(b"BEGIN");
    ws.ready(1, b'T', &db);
    ws.sent(2, &classify("UPDATE t SET x = 2"));
    ws.command_complete(b"UPDATE 5");
    ws.ready(2, b'T', &db);
    ws.sent(3, &classify("ROLLBACK"));
    ws.command_complete(b"ROLLBACK");
    assert!(!ws.ready(3, b'I', &db));
    assert!(ws.is_empty());
    assert_eq!(db.commit_seq(), 0);
    assert_eq!(read(&cache, &db, &s, "SELECT * FROM t", b"other"), &b"kept"[..]);
}

#[test]
fn a_failed_transaction_ended_by_commit_invalidates_nothing() {
    let db = Generations::default().database("app");
    let mut ws = WriteSet::new();
    ws.sent(1, &classify("UPDATE t SET x = 1"));
    ws.ready(1, b'E', &db);
    ws.sent(2, &classify("COMMIT"));
    ws.command_complete(b"ROLLBACK");
    assert!(!ws.ready(2, b'I', &db));
    assert_eq!(db.commit_seq(), 0);
}

#[test]
fn a_committed_block_invalidates_at_its_ready_for_query_not_before() {
    let db = Generations::default().database("app");
    let before = db.snapshot(&["t"]);
    let mut ws = WriteSet::new();
    ws.sent(1, &classify("UPDATE t SET x = 1"));
    ws.command_complete(b"UPDATE 1");
    ws.ready(1, b'T', &db);
    assert!(before.is_current(), "uncommitted writes invalidate nothing");
    ws.sent(2, &classify("COMMIT"));
    ws.command_complete(b"COMMIT");
    assert!(ws.ready(2, b'I', &db));
    assert!(!before.is_current());
}

#[test]
fn commit_then_rollback_in_one_query_still_invalidates_the_committed_tables() {
    let db = Generations::default().database("app");
    let snap = db.snapshot(&["a"]);
    let mut ws = WriteSet::new();
    ws.sent(1, &classify("BEGIN; UPDATE a SET x = 1; COMMIT; BEGIN; UPDATE b SET x = 1; ROLLBACK"));
    for tag in [&b"BEGIN"[..], b"UPDATE 1", b"COMMIT", b"BEGIN", b"UPDATE 1", b"ROLLBACK"] {
        ws.command_complete(tag);
    }
    assert!(ws.ready(1, b'I', &db));
    assert!(!snap.is_current());
}

#[test]
fn an_autocommit_write_after_a_rollback_in_one_query_invalidates() {
    let db = Generations::default().database("app");
    let snap = db.snapshot(&["b"]);
    let mut ws = WriteSet::new();
    ws.sent(1, &classify("BEGIN; UPDATE a SET x = 1; ROLLBACK; UPDATE b SET x = 1"));
    for tag in [&b"BEGIN"[..], b"UPDATE 1", b"ROLLBACK", b"UPDATE 1"] {
        ws.command_complete(tag);
    }
    assert!(ws.ready(1, b'I', &db));
    assert!(!snap.is_current());
}

#[test]
fn a_pipelined_write_is_not_dropped_with_an_earlier_rollback() {
    let db = Generations::default().database("app");
    let snap = db.snapshot(&["b"]);
    let mut ws = WriteSet::new();
    ws.sent(1, &classify("BEGIN; UPDATE a SET x = 1; ROLLBACK"));
    ws.sent(2, &classify("UPDATE b SET x = 1"));
    for tag in [&b"BEGIN"[..], b"UPDATE 1", b"ROLLBACK"] {
        ws.command_complete(tag);
    }
    assert!(!ws.ready(1, b'I', &db));
    assert!(snap.is_current(), "b is not committed yet");
    ws.command_complete(b"UPDATE 1");
    assert!(ws.ready(2, b'I', &db));
    assert!(!snap.is_current());
}

#[test]
fn commit_and_chain_invalidates_at_once_and_again_at_the_end() {
    let db = Generations::default().database("app");
    let snap = db.snapshot(&["t"]);
    let mut ws = WriteSet::new();
    ws.sent(1, &classify("UPDATE t SET x = 1"));
    ws.ready(1, b'T', &db);
    ws.sent(2, &classify("COMMIT AND CHAIN"));
    ws.command_complete(b"COMMIT");
    assert!(ws.ready(2, b'T', &db));
    assert!(!snap.is_current());
    let after_chain = db.snapshot(&["t"]);
    ws.sent(3, &classify("ROLLBACK"));
    ws.command_complete(b"ROLLBACK");
    ws.ready(3, b'I', &db);
    assert!(after_chain.is_current(), "the chained transaction wrote nothing and rolled back");
}

#[test]
fn a_failed_implicit_transaction_invalidates_anyway() {
    let db = Generations::default().database("app");
    let snap = db.snapshot(&["t"]);
    let mut ws = WriteSet::new();
    ws.sent(1, &classify("UPDATE t SET x = 1/0"));
    assert!(ws.ready(1, b'I', &db), "an error's outcome is taken as a commit: over-invalidating is safe");
    assert!(!snap.is_current());
}

#[test]
fn a_lost_connection_with_writes_pending_invalidates_them() {
    let db = Generations::default().database("app");
    let snap = db.snapshot(&["t"]);
    let mut ws = WriteSet::new();
    ws.sent(1, &classify("UPDATE t SET x = 1"));
    assert!(ws.commit(&db));
    assert!(!snap.is_current());
    assert!(ws.is_empty());
}

#[test]
fn reads_and_writes_of_no_table_leave_the_write_set_empty() {
    use crate::router::classify::StatementClass;
    use crate::router::hint::Hints;
    let no_table = |class| {
        Arc::new(Classification { class, hints: Hints::default(), tables: Box::new([]), writes_unknown: false })
    };
    let mut ws = WriteSet::new();
    ws.sent(1, &classify("SELECT * FROM t"));
    ws.sent(1, &no_table(StatementClass::Write));
    ws.sent(1, &no_table(StatementClass::BeginReadOnly));
    assert!(ws.is_empty());
}

#[test]
fn a_write_with_unknown_targets_invalidates_the_whole_database() {
    let (cache, db) = (cache(), Generations::default().database("app"));
    let s = session(&cache);
    read(&cache, &db, &s, "SELECT * FROM t", b"t");
    read(&cache, &db, &s, "SELECT 1", b"one");
    let mut ws = WriteSet::new();
    write(&mut ws, &db, 1, "DO $$ BEGIN PERFORM 1; END $$", b"DO");
    assert_eq!(cache.get(&cache.key(&s, simple("SELECT * FROM t")), Instant::now()), None);
    assert_eq!(cache.get(&cache.key(&s, simple("SELECT 1")), Instant::now()), None);
}

#[test]
fn bump_all_invalidates_every_table() {
    let (cache, db) = (cache(), Generations::default().database("app"));
    let s = session(&cache);
    let queries = ["SELECT * FROM a", "SELECT * FROM b JOIN c USING (id)", "SELECT 1"];
    for q in queries {
        read(&cache, &db, &s, q, b"cached");
    }
    db.bump_all();
    for q in queries {
        assert_eq!(cache.get(&cache.key(&s, simple(q)), Instant::now()), None, "{q}");
    }
}

#[test]
fn writes_in_one_database_leave_another_databases_entries_served() {
    let (cache, gens) = (cache(), Generations::default());
    let (app, other) = (gens.database("app"), gens.database("other"));
    let s = session(&cache);
    read(&cache, &app, &s, "SELECT * FROM t", b"app t");
    other.bump(&["t"]);
    other.bump_all();
    assert_eq!(read(&cache, &app, &s, "SELECT * FROM t", b"x"), &b"app t"[..]);
}

#[test]
fn two_roles_never_share_a_key() {
    let (cache, db) = (cache(), Generations::default().database("app"));
    let alice = cache.session_key("app", "app", "alice", []);
    let bob = cache.session_key("app", "app", "bob", []);
    let as_other_login = cache.session_key("app", "reporting", "alice", []);
    read(&cache, &db, &alice, "SELECT * FROM t", b"alice's rows");
    assert_eq!(read(&cache, &db, &bob, "SELECT * FROM t", b"bob's rows"), &b"bob's rows"[..]);
    assert_eq!(read(&cache, &db, &as_other_login, "SELECT * FROM t", b"reporting"), &b"reporting"[..]);
    assert_ne!(cache.key(&alice, simple("q")).hash(), cache.key(&bob, simple("q")).hash());
}

#[test]
fn two_search_paths_never_share_a_key() {
    let (cache, db) = (cache(), Generations::default().database("app"));
    let public = cache.session_key("app", "app", "alice", [("search_path", "public")]);
    let tenant = cache.session_key("app", "app", "alice", [("search_path", "tenant_7, public")]);
    read(&cache, &db, &public, "SELECT * FROM t", b"public.t");
    assert_eq!(read(&cache, &db, &tenant, "SELECT * FROM t", b"tenant_7.t"), &b"tenant_7.t"[..]);
}

#[test]
fn result_settings_and_databases_never_share_a_key() {
    let cache = cache();
    let base = cache.session_key("app", "app", "alice", [("TimeZone", "UTC")]);
    for other in [
        cache.session_key("app", "app", "alice", [("TimeZone", "Asia/Tokyo")]),
        cache.session_key("app", "app", "alice", [("TimeZone", "UTC"), ("DateStyle", "German")]),
        cache.session_key("app2", "app", "alice", [("TimeZone", "UTC")]),
    ] {
        assert_ne!(cache.key(&base, simple("SELECT 1")).hash(), cache.key(&other, simple("SELECT 1")).hash());
    }
}

#[test]
fn bound_parameters_formats_and_shapes_never_share_a_key() {
    let (cache, db) = (cache(), Generations::default().database("app"));
    let s = session(&cache);
    let text = b"SELECT * FROM t WHERE id = $1";
    let request = |bind: &'static [u8], shape: &'static [u8]| Request::Extended { text, bind, shape };
    let one = request(b"\0\0\0\x01\0\0\0\x011\0\0", b"BES");
    let two = request(b"\0\0\0\x01\0\0\0\x012\0\0", b"BES");
    let binary_results = request(b"\0\0\0\x01\0\0\0\x011\0\x01\0\x01", b"BES");
    let with_describe = request(b"\0\0\0\x01\0\0\0\x011\0\0", b"BDPES");
    let snapshot = db.snapshot(&["t"]);
    cache.insert(&cache.key(&s, one), snapshot, Bytes::from_static(b"row 1"), TTL, Instant::now()).unwrap();
    assert_eq!(cache.get(&cache.key(&s, one), Instant::now()).as_deref(), Some(&b"row 1"[..]));
    for other in [two, binary_results, with_describe, simple("SELECT * FROM t WHERE id = $1")] {
        assert_eq!(cache.get(&cache.key(&s, other), Instant::now()), None, "{other:?}");
    }
}

#[test]
fn an_entry_is_not_served_past_its_ttl() {
    let (cache, db) = (cache(), Generations::default().database("app"));
    let s = session(&cache);
    let key = cache.key(&s, simple("SELECT * FROM t"));
    let now = Instant::now();
    cache.insert(&key, db.snapshot(&["t"]), Bytes::from_static(b"x"), Duration::from_secs(10), now).unwrap();
    assert!(cache.get(&key, now + Duration::from_secs(9)).is_some());
    assert_eq!(cache.get(&key, now + Duration::from_secs(10)), None);
}

#[test]
fn an_expired_entry_is_removed_from_memory() {
    let (cache, db) = (cache(), Generations::default().database("app"));
    let s = session(&cache);
    let key = cache.key(&s, simple("SELECT * FROM t"));
    cache
        .insert(&key, db.snapshot(&["t"]), Bytes::from_static(b"x"), Duration::from_millis(20), Instant::now())
        .unwrap();
    assert_eq!(cache.stats().entries, 1);
    // moka's timer wheel has a resolution of about a second.
    let deadline = Instant::now() + Duration::from_secs(5);
    while cache.stats().entries > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let stats = cache.stats();
    assert_eq!((stats.entries, stats.bytes), (0, 0));
}

#[test]
fn a_refill_gets_a_fresh_ttl() {
    let (cache, db) = (cache(), Generations::default().database("app"));
    let s = session(&cache);
    let key = cache.key(&s, simple("SELECT * FROM t"));
    let t0 = Instant::now();
    cache.insert(&key, db.snapshot(&["t"]), Bytes::from_static(b"1"), Duration::from_secs(10), t0).unwrap();
    let t1 = t0 + Duration::from_secs(8);
    cache.insert(&key, db.snapshot(&["t"]), Bytes::from_static(b"2"), Duration::from_secs(10), t1).unwrap();
    assert_eq!(cache.get(&key, t0 + Duration::from_secs(12)).as_deref(), Some(&b"2"[..]));
}

#[test]
fn a_response_over_max_result_bytes_is_not_stored() {
    let cache = ResultCache::new(CacheSettings { max_result_bytes: 4, ..CacheSettings::default() });
    let db = Generations::default().database("app");
    let s = session(&cache);
    let key = cache.key(&s, simple("SELECT * FROM t"));
    let refused = cache.insert(&key, db.snapshot(&["t"]), Bytes::from_static(b"12345"), TTL, Instant::now());
    assert_eq!(refused, Err(Error::TooLarge { bytes: 5, max: 4 }));
    assert_eq!(cache.stats().entries, 0);
}

#[test]
fn memory_stays_within_max_memory_under_many_distinct_keys() {
    let max_memory = 256 * 1024;
    let cache = ResultCache::new(CacheSettings { max_memory, ..CacheSettings::default() });
    let db = Generations::default().database("app");
    let s = session(&cache);
    let response = Bytes::from(vec![b'r'; 1000]);
    for i in 0..5_000 {
        let sql = format!("SELECT * FROM t WHERE id = {i}");
        let key = cache.key(&s, simple(&sql));
        cache.insert(&key, db.snapshot(&["t"]), response.clone(), TTL, Instant::now()).unwrap();
    }
    let stats = cache.stats();
    assert!(stats.bytes <= max_memory, "{} bytes held, bound {max_memory}", stats.bytes);
    assert!(stats.entries > 0 && stats.entries < 5_000);
    assert!(stats.bytes >= stats.entries * 1000, "an entry weighs at least its response");
}

#[test]
fn clear_drops_every_entry_and_says_how_many() {
    let (cache, db) = (cache(), Generations::default().database("app"));
    let s = session(&cache);
    for q in ["SELECT 1", "SELECT 2", "SELECT * FROM t"] {
        read(&cache, &db, &s, q, b"x");
    }
    assert_eq!(cache.clear(), 3);
    assert_eq!(cache.stats().entries, 0);
    assert_eq!(cache.get(&cache.key(&s, simple("SELECT 1")), Instant::now()), None);
}

#[test]
fn the_cache_reports_itself_to_show_cache() {
    use crate::metrics::cache::CacheReport;
    let (cache, db) = (cache(), Generations::default().database("app"));
    let s = session(&cache);
    read(&cache, &db, &s, "SELECT 1", b"one");
    read(&cache, &db, &s, "SELECT 1", b"one");
    let report: &dyn CacheReport = &cache;
    let stats = report.stats();
    assert_eq!((stats.entries, stats.hits, stats.misses), (1, 1, 1));
    assert!(stats.bytes > 0);
    assert_eq!(report.clear(), 1);
}

/// Writers commit new values of one table while readers go through the cache: no reader is
/// ever served a value older than the last commit whose bump finished before its lookup.
#[test]
fn concurrent_readers_never_see_a_value_older_than_a_finished_commit() {
    let cache = Arc::new(cache());
    let db = Generations::default().database("app");
    let table = Arc::new(AtomicU64::new(0));
    let bumped = Arc::new(AtomicU64::new(0));
    let s = Arc::new(session(&cache));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (cache, db, table, bumped, s) = (cache.clone(), db.clone(), table.clone(), bumped.clone(), s.clone());
            std::thread::spawn(move || {
                for _ in 0..20_000 {
                    let floor = bumped.load(SeqCst);
                    let key = cache.key(&s, simple("SELECT v FROM t"));
                    let seen = match cache.get(&key, Instant::now()) {
                        Some(b) => u64::from_le_bytes(b[..].try_into().unwrap()),
                        None => {
                            let snapshot = db.snapshot(&["t"]);
                            let v = table.load(SeqCst);
                            let _ = cache.insert(
                                &key,
                                snapshot,
                                Bytes::copy_from_slice(&v.to_le_bytes()),
                                TTL,
                                Instant::now(),
                            );
                            v
                        }
                    };
                    assert!(seen >= floor, "served {seen} after commit {floor} was bumped");
                }
            })
        })
        .collect();
    let mut ws = WriteSet::new();
    let update = classify("UPDATE t SET v = v + 1");
    for seq in 1..=2_000u64 {
        table.store(seq, SeqCst);
        ws.sent(seq, &update);
        ws.command_complete(b"UPDATE 1");
        ws.ready(seq, b'I', &db);
        bumped.store(seq, SeqCst);
    }
    for r in readers {
        r.join().unwrap();
    }
}

/// `would_bump` answers what `ready` is about to do, for the ReadyForQuery the relay holds
/// while a shared backend is bumped.
#[test]
fn would_bump_foretells_ready() {
    let db = Generations::default().database("app");
    let mut ws = WriteSet::new();
    assert!(!ws.would_bump(1, b'I'), "nothing written");
    ws.sent(1, &classify("UPDATE t SET x = 1"));
    ws.command_complete(b"UPDATE 1");
    assert!(!ws.would_bump(0, b'I'), "an earlier ReadyForQuery");
    assert!(ws.would_bump(1, b'I'), "an autocommit write");
    assert!(ws.ready(1, b'I', &db));
    assert!(!ws.would_bump(2, b'I'));

    ws.sent(2, &classify("BEGIN"));
    ws.command_complete(b"BEGIN");
    assert!(!ws.would_bump(2, b'T'));
    ws.ready(2, b'T', &db);
    ws.sent(3, &classify("UPDATE t SET x = 2"));
    ws.command_complete(b"UPDATE 1");
    assert!(!ws.would_bump(3, b'T'), "still open");
    ws.ready(3, b'T', &db);
    ws.sent(4, &classify("ROLLBACK"));
    ws.command_complete(b"ROLLBACK");
    assert!(!ws.would_bump(4, b'I'), "rolled back");
    assert!(!ws.ready(4, b'I', &db));

    ws.sent(5, &classify("BEGIN"));
    ws.ready(5, b'T', &db);
    ws.sent(6, &classify("UPDATE t SET x = 3"));
    ws.ready(6, b'T', &db);
    ws.sent(7, &classify("COMMIT AND CHAIN"));
    ws.command_complete(b"COMMIT");
    assert!(ws.would_bump(7, b'T'), "committed and chained");
    assert!(ws.ready(7, b'T', &db));
}

/// A sink sees the tables a commit wrote, or that it may have written anything.
#[test]
fn a_sink_receives_what_a_commit_wrote() {
    #[derive(Default)]
    struct Noted(Vec<String>, bool);
    impl BumpSink for Noted {
        fn bump(&mut self, tables: &[Box<str>]) {
            self.0.extend(tables.iter().map(|t| t.to_string()));
        }
        fn bump_all(&mut self) {
            self.1 = true;
        }
    }
    let mut ws = WriteSet::new();
    let mut noted = Noted::default();
    ws.sent(1, &classify("UPDATE public.t SET x = 1"));
    ws.command_complete(b"UPDATE 1");
    assert!(ws.ready_into(1, b'I', &mut noted));
    assert_eq!(noted.0, ["public.t"]);
    ws.sent(2, &classify("DO $$ BEGIN END $$"));
    assert!(ws.commit_into(&mut noted));
    assert!(noted.1, "a write to anything");
}
