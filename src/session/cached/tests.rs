//! The session side of the cache with scripted messages: no sockets, no Postgres.

use super::*;
use crate::cache::CacheSettings;
use bytes::BufMut;

fn session() -> SessionCache {
    let handle = Arc::new(CacheHandle::new(CacheSettings { ttl: Duration::from_secs(60), ..CacheSettings::default() }));
    session_of(&handle)
}

/// Another session of the same user and database on `handle`.
fn session_of(handle: &Arc<CacheHandle>) -> SessionCache {
    let classifier = Arc::new(Classifier::new(&[]));
    SessionCache::new(handle.clone(), classifier, "127.0.0.1:5432/app", ["app", "u", "u"], &ParamSet::default())
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.put_u8(tag);
    out.put_u32(body.len() as u32 + 4);
    out.put_slice(body);
    out
}

fn query(sql: &str) -> Vec<u8> {
    message(b'Q', format!("{sql}\0").as_bytes())
}

/// Looks up `request`; a miss's relations are answered as ordinary tables.
fn lookup(s: &mut SessionCache, request: &[u8]) -> Lookup {
    let found = s.lookup(request, 1 << 20, &ClientStatements::default(), &ParamSet::default(), false);
    if let Some(sql) = s.relations_query() {
        let n = sql.matches("\"'").count();
        s.relations_checked(Some(&"r".repeat(n)));
    }
    found
}

/// The server answers one row and CommandComplete, then ReadyForQuery `I`.
fn answer_row(s: &mut SessionCache, seq: u64, value: &[u8]) {
    let mut row = vec![0, 1];
    row.put_u32(value.len() as u32);
    row.put_slice(value);
    s.server_message(b'T', b"\0\x01v\0\0\0\0\0\0\x01\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0", seq);
    s.server_message(b'D', &row, seq);
    s.server_message(b'C', b"SELECT 1\0", seq);
    s.server_message(b'Z', b"I", seq);
}

/// A simple query sent as request number `seq`, answered with `tags`, then ReadyForQuery.
fn run(s: &mut SessionCache, seq: u64, sql: &str, tags: &[&str], status: u8) {
    s.client_message(b'Q', format!("{sql}\0").as_bytes(), seq, None);
    for tag in tags {
        s.server_message(b'C', format!("{tag}\0").as_bytes(), seq);
    }
    s.server_message(b'Z', &[status], seq);
}

const READ: &str = "SELECT v FROM t WHERE k = 1";

#[test]
fn a_miss_is_stored_at_its_ready_for_query_and_then_answered_whole() {
    let mut s = session();
    assert!(matches!(lookup(&mut s, &query(READ)), Lookup::Fill));
    answer_row(&mut s, 1, b"10");
    let Lookup::Hit { response, len } = lookup(&mut s, &query(READ)) else { panic!("not a hit") };
    assert_eq!(len, query(READ).len());
    assert_eq!(response[0], b'T');
    assert!(response.ends_with(&message(b'Z', b"I")), "ReadyForQuery is part of the answer");
    assert!(matches!(lookup(&mut s, &query("SELECT v FROM t WHERE k = 2")), Lookup::Fill), "another text");
}

#[test]
fn a_committed_write_drops_entries_of_its_table_and_only_those() {
    let mut s = session();
    for (i, sql) in [READ, "SELECT w FROM u"].iter().enumerate() {
        assert!(matches!(lookup(&mut s, &query(sql)), Lookup::Fill));
        answer_row(&mut s, i as u64 + 1, b"10");
    }
    run(&mut s, 3, "UPDATE t SET v = 11 WHERE k = 1", &["UPDATE 1"], b'I');
    assert!(matches!(lookup(&mut s, &query(READ)), Lookup::Fill));
    assert!(matches!(lookup(&mut s, &query("SELECT w FROM u")), Lookup::Hit { .. }));
}

#[test]
fn a_rolled_back_transaction_keeps_entries() {
    let mut s = session();
    assert!(matches!(lookup(&mut s, &query(READ)), Lookup::Fill));
    answer_row(&mut s, 1, b"10");
    run(&mut s, 2, "BEGIN; UPDATE t SET v = 0; ROLLBACK", &["BEGIN", "UPDATE 1", "ROLLBACK"], b'I');
    assert!(matches!(lookup(&mut s, &query(READ)), Lookup::Hit { .. }));
}

#[test]
fn a_write_is_bumped_when_its_transaction_commits_not_before() {
    let mut writer = session();
    let mut reader = session_of(&writer.handle);
    run(&mut writer, 1, "BEGIN", &["BEGIN"], b'T');
    run(&mut writer, 2, "UPDATE t SET v = 0", &["UPDATE 1"], b'T');
    // Another session's fill while the write is not committed yet.
    assert!(matches!(lookup(&mut reader, &query(READ)), Lookup::Fill));
    answer_row(&mut reader, 1, b"10");
    assert!(matches!(lookup(&mut reader, &query(READ)), Lookup::Hit { .. }));
    run(&mut writer, 3, "COMMIT", &["COMMIT"], b'I');
    assert!(matches!(lookup(&mut reader, &query(READ)), Lookup::Fill));
}

#[test]
fn the_unnamed_statement_is_noted_when_it_runs_not_when_it_is_parsed() {
    let mut s = session();
    assert!(matches!(lookup(&mut s, &query(READ)), Lookup::Fill));
    answer_row(&mut s, 1, b"10");
    // Parse and Describe, answered; nothing ran.
    s.client_message(b'P', b"\0UPDATE t SET v = $1\0\0\0", 2, None);
    s.server_message(b'Z', b"I", 2);
    assert!(matches!(lookup(&mut s, &query(READ)), Lookup::Hit { .. }));
    // Bind and Execute: this runs it.
    s.client_message(b'B', b"\0\0\0\0\0\x01\0\0\0\x0111\0\0", 3, None);
    s.server_message(b'C', b"UPDATE 1\0", 3);
    s.server_message(b'Z', b"I", 3);
    assert!(matches!(lookup(&mut s, &query(READ)), Lookup::Fill));
}

#[test]
fn errors_and_unknown_outcomes_are_not_stored_and_unread_writes_drop_everything() {
    let mut s = session();
    assert!(matches!(lookup(&mut s, &query(READ)), Lookup::Fill));
    s.server_message(b'E', b"SERROR\0C42P01\0Mno\0\0", 1);
    s.server_message(b'Z', b"I", 1);
    assert!(matches!(lookup(&mut s, &query(READ)), Lookup::Fill), "an error is not stored");
    answer_row(&mut s, 2, b"10");
    // A Query too large for the relay to read: it may have written anything.
    s.client_message(b'Q', b"", 3, None);
    s.server_message(b'Z', b"I", 3);
    assert!(matches!(lookup(&mut s, &query(READ)), Lookup::Fill));
    answer_row(&mut s, 4, b"10");
    // A write cut off by a lost server connection counts as committed.
    s.client_message(b'Q', b"DELETE FROM t\0", 5, None);
    s.writes_unknown();
    assert!(matches!(lookup(&mut s, &query(READ)), Lookup::Fill));
}

#[test]
fn uncacheable_reads_bypass_the_cache() {
    let mut s = session();
    for sql in ["SELECT now()", "UPDATE t SET v = 1", "SELECT * FROM pg_class", "SHOW search_path", "SELECT 1; BEGIN"] {
        assert!(matches!(lookup(&mut s, &query(sql)), Lookup::Bypass), "{sql}");
    }
    assert!(matches!(lookup(&mut s, &query(READ)[..7]), Lookup::ReadMore));
}

#[test]
fn reads_over_views_are_not_cached_once_the_catalog_says_so() {
    let mut s = session();
    let read = query("SELECT * FROM v");
    assert!(matches!(s.lookup(&read, 1 << 20, &ClientStatements::default(), &ParamSet::default(), false), Lookup::Fill));
    let sql = s.relations_query().expect("v is not known yet");
    assert!(sql.contains("to_regclass"), "{sql}");
    s.relations_checked(Some("v"));
    answer_row(&mut s, 1, b"10");
    assert!(matches!(lookup(&mut s, &read), Lookup::Bypass), "known to be a view: not even looked up");
    // A catalog that could not be asked stores nothing either.
    assert!(matches!(s.lookup(&query("SELECT * FROM w"), 1 << 20, &ClientStatements::default(), &ParamSet::default(), false), Lookup::Fill));
    s.relations_checked(None);
    answer_row(&mut s, 2, b"10");
    assert!(matches!(s.lookup(&query("SELECT * FROM w"), 1 << 20, &ClientStatements::default(), &ParamSet::default(), false), Lookup::Fill));
}
