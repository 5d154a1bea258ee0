//! End-to-end: the wire protocol through sluice in transaction mode — pipelining, portals, COPY,
//! extended messages without Sync, startup requests, large messages, and clients that leave in
//! the middle of something.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::types::Type;

/// A hand-driven protocol connection, for what tokio-postgres cannot be made to send.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn query(sql: &str) -> Vec<u8> {
    message(b'Q', &cstr(sql))
}

fn parse(sql: &str) -> Vec<u8> {
    let mut body = cstr("");
    body.extend(cstr(sql));
    body.extend_from_slice(&0u16.to_be_bytes());
    message(b'P', &body)
}

fn bind() -> Vec<u8> {
    // Unnamed portal and statement, no parameters, default result formats.
    message(b'B', &[0, 0, 0, 0, 0, 0, 0, 0])
}

fn execute() -> Vec<u8> {
    message(b'E', &[0, 0, 0, 0, 0])
}

const SYNC: [u8; 5] = [b'S', 0, 0, 0, 4];
const FLUSH: [u8; 5] = [b'H', 0, 0, 0, 4];

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw { s: TcpStream::connect(addr).await.unwrap(), buf: Vec::new() }
    }

    /// Connects and logs in as `postgres` to `db`, reading up to the first ReadyForQuery.
    async fn login(addr: SocketAddr, db: &str) -> Raw {
        let mut r = Raw::connect(addr).await;
        r.send_startup(db).await;
        r.until(b'Z').await;
        r
    }

    async fn send_startup(&mut self, db: &str) {
        let mut body = 196608u32.to_be_bytes().to_vec();
        for kv in ["user", "postgres", "database", db] {
            body.extend(cstr(kv));
        }
        body.push(0);
        let mut m = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        m.extend(body);
        self.send(&m).await;
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    /// The next byte (for SSL/GSSENC answers), within 5 s.
    async fn byte(&mut self) -> u8 {
        if self.buf.is_empty() {
            let mut b = [0u8; 1];
            let n = tokio::time::timeout(Duration::from_secs(5), self.s.read(&mut b)).await.expect("no hang").unwrap();
            assert_eq!(n, 1, "closed");
            return b[0];
        }
        self.buf.remove(0)
    }

    /// The next whole message, within 5 s; `None` when sluice closed the connection.
    async fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() > len {
                    let m: Vec<u8> = self.buf.drain(..=len).collect();
                    return Some((m[0], m[5..].to_vec()));
                }
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout(Duration::from_secs(5), self.s.read(&mut chunk))
                .await
                .expect("sluice answers within 5 s")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Messages up to and including the first with `tag`; panics on an ErrorResponse unless
    /// waiting for one.
    async fn until(&mut self, tag: u8) -> Vec<(u8, Vec<u8>)> {
        let mut seen = Vec::new();
        loop {
            let m = self.recv().await.unwrap_or_else(|| panic!("closed while waiting for {:?}: {seen:?}", tag as char));
            if m.0 == b'E' && tag != b'E' {
                panic!("error: {}", String::from_utf8_lossy(&m.1));
            }
            let done = m.0 == tag;
            seen.push(m);
            if done {
                return seen;
            }
        }
    }
}

fn tags(msgs: &[(u8, Vec<u8>)]) -> String {
    msgs.iter().map(|m| m.0 as char).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_queries_of_several_clients_each_get_their_own_answers() {
    let db = unique_db("pipeline");
    let sluice = start_sluice(&db, "[pool]\nsize = 2").await;
    let addr = sluice.local_addrs()[0];
    let mut tasks = vec![];
    for client in 0..6i32 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let c = connect(addr, &db).await;
            for round in 0..10i32 {
                // tokio-postgres sends these back to back, each with its own Sync, before reading.
                let queries = (0..8i32).map(|i| {
                    let v = client * 1000 + round * 10 + i;
                    let c = &c;
                    async move {
                        if i == 5 {
                            // One failing request in the middle of the pipeline.
                            let e = c.query_typed("select 1 / ($1::int - $1::int)", &[(&v, Type::INT4)]).await.unwrap_err();
                            assert_eq!(sqlstate(&e), "22012");
                            return;
                        }
                        let rows = c.query_typed("select $1::int, pg_backend_pid()", &[(&v, Type::INT4)]).await.unwrap();
                        assert_eq!(rows[0].get::<_, i32>(0), v, "client {client} got another request's answer");
                    }
                });
                futures_util::future::join_all(queries).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(backends(&db, "") <= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_is_read_in_chunks_inside_a_transaction_while_others_wait() {
    let db = unique_db("portal");
    let sluice = start_sluice(&db, "[pool]\nsize = 1").await;
    let addr = sluice.local_addrs()[0];
    let mut c = connect(addr, &db).await;
    let other = connect(addr, &db).await;
    let tx = c.transaction().await.unwrap();
    let stmt = tx.prepare_typed("select g from generate_series(1, 95) g", &[]).await.unwrap();
    let portal = tx.bind(&stmt, &[]).await.unwrap();
    let waiting = tokio::spawn(async move { other.query_typed("select 42", &[]).await.map(|r| r[0].get::<_, i32>(0)) });
    let mut seen = 0;
    loop {
        let rows = tx.query_portal(&portal, 10).await.unwrap();
        for r in &rows {
            seen += 1;
            assert_eq!(r.get::<_, i32>(0), seen);
        }
        if rows.len() < 10 {
            break;
        }
        assert!(!waiting.is_finished(), "another client got the server in the middle of a transaction");
    }
    assert_eq!(seen, 95);
    tx.commit().await.unwrap();
    assert_eq!(waiting.await.unwrap().unwrap(), 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_pass_through_and_an_aborted_copy_leaves_the_session_usable() {
    let db = unique_db("copy");
    let sluice = start_sluice(&db, "[pool]\nsize = 1").await;
    let c = connect(sluice.local_addrs()[0], &db).await;
    c.batch_execute("create table t (id int, v text)").await.unwrap();
    let sink = c.copy_in("copy t from stdin").await.unwrap();
    futures_util::pin_mut!(sink);
    for chunk in 0..20 {
        let data: String = (0..1000).map(|i| format!("{}\tv{}\n", chunk * 1000 + i, i)).collect();
        sink.send(bytes::Bytes::from(data)).await.unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 20000);
    let out = c.copy_out("copy (select * from t order by id) to stdout").await.unwrap();
    futures_util::pin_mut!(out);
    let mut text = Vec::new();
    while let Some(chunk) = out.next().await {
        text.extend_from_slice(&chunk.unwrap());
    }
    let text = String::from_utf8(text).unwrap();
    assert_eq!(text.lines().count(), 20000);
    assert_eq!(text.lines().last(), Some("19999\tv999"));

    // A COPY the client gives up on (CopyFail) fails on the server and nothing is kept.
    {
        let sink = c.copy_in::<_, bytes::Bytes>("copy t from stdin").await.unwrap();
        futures_util::pin_mut!(sink);
        sink.send(bytes::Bytes::from_static(b"1\tlost\n")).await.unwrap();
    }
    let n: i64 = c.query_typed("select count(*) from t", &[]).await.unwrap()[0].get(0);
    assert_eq!(n, 20000);
    // Bad COPY data is the server's error, and the session goes on.
    let sink = c.copy_in("copy t from stdin").await.unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"not a number\tx\n")).await.unwrap();
    let e = sink.finish().await.unwrap_err();
    assert_eq!(sqlstate(&e), "22P02");
    let n: i64 = c.query_typed("select count(*) from t", &[]).await.unwrap()[0].get(0);
    assert_eq!(n, 20000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_messages_flushed_without_sync_keep_the_server_until_the_sync() {
    let db = unique_db("no_sync");
    let sluice = start_sluice(&db, "[pool]\nsize = 1").await;
    let addr = sluice.local_addrs()[0];
    let mut raw = Raw::login(addr, &db).await;
    let mut m = parse("select 7");
    m.extend(bind());
    m.extend(execute());
    m.extend(FLUSH);
    raw.send(&m).await;
    let got = raw.until(b'C').await;
    assert_eq!(tags(&got), "12DC", "ParseComplete, BindComplete, DataRow, CommandComplete");
    // The server is still this client's: another client waits.
    let other = connect(addr, &db).await;
    let waiting = tokio::spawn(async move { other.simple_query("select 1").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the server was handed to another client before the Sync");
    raw.send(&SYNC).await;
    let got = raw.until(b'Z').await;
    assert_eq!(got.last().unwrap().1, b"I");
    tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("the waiter is served after the Sync").unwrap().unwrap();
    // The raw session goes on with a simple query.
    raw.send(&query("select 8")).await;
    assert_eq!(tags(&raw.until(b'Z').await), "TDCZ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_and_gssenc_requests_are_answered_n_and_startup_goes_on() {
    let db = unique_db("ssl_request");
    let sluice = start_sluice(&db, "").await;
    let mut raw = Raw::connect(sluice.local_addrs()[0]).await;
    raw.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]).await; // GSSENCRequest
    assert_eq!(raw.byte().await, b'N');
    raw.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await; // SSLRequest
    assert_eq!(raw.byte().await, b'N');
    raw.send_startup(&db).await;
    let got = raw.until(b'Z').await;
    assert_eq!(got[0].0, b'R', "{got:?}");
    assert!(got.iter().any(|m| m.0 == b'K'), "BackendKeyData: {}", tags(&got));
    raw.send(&query("select 1")).await;
    assert_eq!(tags(&raw.until(b'Z').await), "TDCZ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_database_is_refused_with_3d000() {
    let db = unique_db("known");
    let sluice = start_sluice(&db, "").await;
    let e = connect_as(sluice.local_addrs()[0], "not_configured", "postgres", "").await.unwrap_err();
    assert_eq!(sqlstate(&e), "3D000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_inside_a_transaction_rolls_it_back() {
    let db = unique_db("terminate");
    let sluice = start_sluice(&db, "[pool]\nsize = 1").await;
    let addr = sluice.local_addrs()[0];
    let setup = connect(addr, &db).await;
    setup.batch_execute("create table t (id int primary key, v int); insert into t values (1, 0)").await.unwrap();
    let c = connect(addr, &db).await;
    c.batch_execute("begin; update t set v = 1 where id = 1; insert into t values (2, 2)").await.unwrap();
    drop(c); // tokio-postgres sends Terminate and closes
    let row: (i64, i32) = {
        let r = &setup.query_typed("select count(*), max(v) from t", &[]).await.unwrap()[0];
        (r.get(0), r.get(1))
    };
    assert_eq!(row, (1, 0), "the terminated client's transaction was rolled back");
    assert!(eventually(Duration::from_secs(5), || backends(&db, "idle in transaction") == 0).await);
}

/// Logs in raw, sends `bytes`, optionally waits for a message with `wait_tag`, then closes.
async fn leave_after(addr: SocketAddr, db: &str, bytes: &[u8], wait_tag: Option<u8>) {
    let mut raw = Raw::login(addr, db).await;
    raw.send(bytes).await;
    if let Some(tag) = wait_tag {
        raw.until(tag).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_query_mid_copy_or_before_sync_gives_its_server_back_clean() {
    let db = unique_db("leavers");
    let sluice = start_sluice(&db, "[pool]\nsize = 1\nquery_wait_timeout = \"8s\"").await;
    let addr = sluice.local_addrs()[0];
    let c = connect(addr, &db).await;
    c.batch_execute("create table t (id int)").await.unwrap();
    // Mid-query (outside a transaction): the query is cancelled, not waited for.
    let mut raw = Raw::login(addr, &db).await;
    raw.send(&query("select pg_sleep(30)")).await;
    assert!(eventually(Duration::from_secs(5), || backends(&db, "active") == 1).await);
    drop(raw);
    let start = Instant::now();
    c.simple_query("select 1").await.unwrap();
    assert!(start.elapsed() < Duration::from_secs(6), "waited {:?} for the abandoned query", start.elapsed());
    // Mid-COPY: the copy is ended and its rows dropped.
    leave_after(addr, &db, &[query("copy t from stdin"), message(b'd', b"1\n")].concat(), Some(b'G')).await;
    // Inside an explicit transaction after an insert.
    leave_after(addr, &db, &query("begin; insert into t values (2)"), Some(b'Z')).await;
    // Half a message.
    leave_after(addr, &db, &query("insert into t values (4)")[..10], None).await;
    let left: Vec<i32> =
        c.query_typed("select id from t order by id", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(left, Vec::<i32>::new(), "rows of clients that left before committing were kept");
    assert!(
        eventually(Duration::from_secs(5), || {
            server_activity(&db).iter().all(|a| a.state == "idle")
        })
        .await,
        "{:?}",
        server_activity(&db)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_larger_than_the_buffers_stream_through_both_ways() {
    let db = unique_db("large");
    let sluice = start_sluice(&db, "").await;
    let c = connect(sluice.local_addrs()[0], &db).await;
    let big = "y".repeat(12 << 20);
    let n: i32 = c.query_typed("select length($1::text)", &[(&big, Type::TEXT)]).await.unwrap()[0].get(0);
    assert_eq!(n, 12 << 20);
    let rows = c.simple_query(&format!("select length('{big}')")).await.unwrap();
    let tokio_postgres::SimpleQueryMessage::Row(r) = &rows[1] else { panic!("{rows:?}") };
    assert_eq!(r.get(0), Some((12 << 20).to_string().as_str()));
    let s: String = c.query_typed("select repeat('z', 20000000)", &[]).await.unwrap()[0].get(0);
    assert_eq!(s.len(), 20_000_000);
    let v: i32 = c.query_typed("select 5", &[]).await.unwrap()[0].get(0);
    assert_eq!(v, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_before_its_sync_has_the_implicit_transaction_rolled_back_like_postgres_does() {
    let db = unique_db("unsynced");
    let sluice = start_sluice(&db, "[pool]\nsize = 1").await;
    let addr = sluice.local_addrs()[0];
    let c = connect(addr, &db).await;
    c.batch_execute("create table t (id int)").await.unwrap();
    let unsynced = |id: i32| [parse(&format!("insert into t values ({id})")), bind(), execute(), FLUSH.to_vec()].concat();
    // Directly against Postgres: the insert ran (CommandComplete) but was never synced, so it is
    // not committed when the client goes away.
    leave_after(cluster().primary.addr(), &db, &unsynced(1), Some(b'C')).await;
    assert!(eventually(Duration::from_secs(5), || backends(&db, "") == 1).await);
    // The same through sluice.
    leave_after(addr, &db, &unsynced(2), Some(b'C')).await;
    let ids: Vec<i32> =
        c.query_typed("select id from t order by id", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, Vec::<i32>::new(), "Postgres keeps none; through sluice these were committed");
}

/// Reads what arrives within `quiet` of silence (at most 5 s in all) and returns the tags.
async fn drain_tags(raw: &mut Raw, quiet: Duration) -> String {
    let mut out = String::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match tokio::time::timeout(quiet, raw.recv()).await {
            Ok(Some(m)) => out.push(m.0 as char),
            Ok(None) | Err(_) => break,
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_sent_during_copy_in_is_ignored_as_postgres_ignores_it() {
    // tokio-postgres's copy_in sends Bind, Execute, Sync, then the data, CopyDone and another
    // Sync; Postgres ignores the Sync that arrives in copy-in mode and answers one ReadyForQuery.
    // Every later answer must stay in step (a Close of the statement, then a query).
    let db = unique_db("copy_sync");
    let sluice = start_sluice(&db, "[pool]\nsize = 1").await;
    on_primary(&format!("\\c {db}\ncreate table t (id int)"));
    let mut seen = vec![];
    for addr in [cluster().primary.addr(), sluice.local_addrs()[0]] {
        let mut raw = Raw::login(addr, &db).await;
        // A named statement, as tokio-postgres prepares it.
        let mut body = cstr("s0");
        body.extend(cstr("copy t from stdin"));
        body.extend_from_slice(&0u16.to_be_bytes());
        let mut m = message(b'P', &body);
        m.extend(message(b'D', &[b"S".as_slice(), &cstr("s0")].concat()));
        m.extend(SYNC);
        raw.send(&m).await;
        let mut tags_seen = tags(&raw.until(b'Z').await);
        let mut m = message(b'B', &[cstr(""), cstr("s0"), vec![0, 0, 0, 0, 0, 0]].concat());
        m.extend(execute());
        m.extend(SYNC);
        raw.send(&m).await;
        tags_seen += &tags(&raw.until(b'G').await);
        raw.send(&[message(b'd', b"1\n"), message(b'c', b""), SYNC.to_vec()].concat()).await;
        tags_seen += &drain_tags(&mut raw, Duration::from_millis(300)).await;
        // Then the statement is closed, as tokio-postgres does when it drops it.
        raw.send(&[message(b'C', &[b"S".as_slice(), &cstr("s0")].concat()), SYNC.to_vec()].concat()).await;
        tags_seen += &drain_tags(&mut raw, Duration::from_millis(300)).await;
        raw.send(&query("select 1")).await;
        tags_seen += &drain_tags(&mut raw, Duration::from_millis(300)).await;
        seen.push(tags_seen);
    }
    assert_eq!(seen[0], "1tnZ2GCZ3ZTDCZ", "Postgres itself");
    assert_eq!(seen[1], seen[0], "through sluice");
}

/// Messages up to and including the next ReadyForQuery, errors included.
async fn answer(raw: &mut Raw) -> Vec<(u8, Vec<u8>)> {
    let mut seen = Vec::new();
    loop {
        let m = raw.recv().await.expect("sluice answers");
        let done = m.0 == b'Z';
        seen.push(m);
        if done {
            return seen;
        }
    }
}

/// A Bind of the named statement `name` to the unnamed portal, then (as libpq sends for a
/// prepared query) a Describe of the portal, an Execute and a Sync.
fn run_prepared_like_libpq(name: &str) -> Vec<u8> {
    let mut body = cstr("");
    body.extend(cstr(name));
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut m = message(b'B', &body);
    m.extend(message(b'D', b"P\0"));
    m.extend(execute());
    m.extend_from_slice(&SYNC);
    m
}

/// The number of fields in the RowDescription among `msgs`.
fn described_fields(msgs: &[(u8, Vec<u8>)]) -> Option<u16> {
    msgs.iter().find(|m| m.0 == b'T').map(|m| u16::from_be_bytes([m.1[0], m.1[1]]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_described_request_failed_by_a_statement_gone_stale_runs_again_with_its_new_columns() {
    let db = unique_db("stale_retry");
    let proxy = start_proxy(&db, "[pool]\nsize = 1").await;
    let mut raw = Raw::login(proxy.addr, &db).await;
    raw.send(&query("create table widened (a text); insert into widened values ('1')")).await;
    raw.until(b'Z').await;
    let mut prepare = message(b'P', &[cstr("s1"), cstr("select * from widened"), vec![0, 0]].concat());
    prepare.extend_from_slice(&SYNC);
    raw.send(&prepare).await;
    raw.until(b'Z').await;
    raw.send(&run_prepared_like_libpq("s1")).await;
    assert_eq!(tags(&answer(&mut raw).await), "2TDCZ");
    // The table changes behind sluice's back.
    let direct = connect(cluster().primary.addr(), &db).await;
    direct.batch_execute("alter table widened add column b text default 'x'").await.unwrap();
    // sluice prepares the statement again and runs the request again: the client reads the new
    // description and the rows of the new shape, and never sees the error.
    raw.send(&run_prepared_like_libpq("s1")).await;
    let again = answer(&mut raw).await;
    assert_eq!(tags(&again), "2TDCZ", "{again:?}");
    assert_eq!(described_fields(&again), Some(2));
    assert_eq!(*again.last().unwrap(), (b'Z', b"I".to_vec()));
    // Inside a transaction the error reaches the client, as from Postgres.
    direct.batch_execute("alter table widened add column c text default 'y'").await.unwrap();
    raw.send(&query("begin")).await;
    raw.until(b'Z').await;
    raw.send(&run_prepared_like_libpq("s1")).await;
    let failed = answer(&mut raw).await;
    assert_eq!(tags(&failed), "EZ");
    assert!(String::from_utf8_lossy(&failed[0].1).contains("0A000"), "{failed:?}");
    raw.send(&query("rollback")).await;
    raw.until(b'Z').await;
    raw.send(&run_prepared_like_libpq("s1")).await;
    assert_eq!(described_fields(&answer(&mut raw).await), Some(3));
    // So does it for a request without a Describe of the portal (rows would be misread).
    direct.batch_execute("alter table widened add column d text default 'z'").await.unwrap();
    let mut bare = message(b'B', &[cstr(""), cstr("s1"), vec![0, 0, 0, 0, 0, 0]].concat());
    bare.extend(execute());
    bare.extend_from_slice(&SYNC);
    raw.send(&bare).await;
    assert_eq!(tags(&answer(&mut raw).await), "EZ");
    // After which the statement runs with all four columns, and the server connection is clean.
    raw.send(&run_prepared_like_libpq("s1")).await;
    let last = answer(&mut raw).await;
    assert_eq!(tags(&last), "2TDCZ", "{last:?}");
    assert_eq!(described_fields(&last), Some(4));
}
