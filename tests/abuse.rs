//! End-to-end: everything that comes off a socket is untrusted. Garbage, stalls, floods, lies
//! about lengths, clients that never read and guessed passwords each get a clear ErrorResponse
//! (or a closed connection) and never cost other clients anything: no hang, no unbounded memory,
//! no server connection left behind. Each test ends by checking that a normal client still works.
//!
//! Observations (SQLSTATE, time to close, memory) are printed with `--nocapture`.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Tests that measure this process's memory run alone; the others share.
static MEMORY: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn query(sql: &str) -> Vec<u8> {
    message(b'Q', &cstr(sql))
}

const SYNC: [u8; 5] = [b'S', 0, 0, 0, 4];

fn startup_packet(user: &str, db: &str) -> Vec<u8> {
    let mut body = 196608u32.to_be_bytes().to_vec();
    for kv in ["user", user, "database", db] {
        body.extend(cstr(kv));
    }
    body.push(0);
    let mut m = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    m.extend(body);
    m
}

fn ssl_request() -> Vec<u8> {
    [8u32.to_be_bytes(), 80_877_103u32.to_be_bytes()].concat()
}

fn cancel_request(pid: u32, secret: u32) -> Vec<u8> {
    [16u32.to_be_bytes(), 80_877_102u32.to_be_bytes(), pid.to_be_bytes(), secret.to_be_bytes()].concat()
}

/// Deterministic pseudo-random bytes (xorshift), so a failure can be replayed.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The fields of an ErrorResponse body.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PgError {
    severity: String,
    code: String,
    message: String,
}

fn error_fields(body: &[u8]) -> PgError {
    let mut e = PgError { severity: String::new(), code: String::new(), message: String::new() };
    for field in body.split(|&b| b == 0).filter(|f| !f.is_empty()) {
        let value = String::from_utf8_lossy(&field[1..]).into_owned();
        match field[0] {
            b'V' => e.severity = value,
            b'S' if e.severity.is_empty() => e.severity = value,
            b'C' => e.code = value,
            b'M' => e.message = value,
            _ => {}
        }
    }
    e
}

/// Splits bytes from sluice into messages; a trailing partial message is dropped.
fn messages(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 5 {
        let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        if bytes.len() < len + 1 {
            break;
        }
        out.push((bytes[0], bytes[5..len + 1].to_vec()));
        bytes = &bytes[len + 1..];
    }
    out
}

/// What sluice did with a connection after the test's last bytes: what it sent, whether it
/// closed, and how long that took.
#[derive(Debug)]
struct Outcome {
    bytes: Vec<u8>,
    closed: bool,
    after: Duration,
}

impl Outcome {
    /// The first ErrorResponse sluice sent.
    fn error(&self) -> Option<PgError> {
        messages(&self.bytes).into_iter().find(|m| m.0 == b'E').map(|m| error_fields(&m.1))
    }

    /// The SQLSTATE of a FATAL error after which the connection was closed; panics otherwise.
    fn fatal(&self, what: &str) -> String {
        assert!(self.closed, "{what}: sluice did not close the connection within the limit ({self:?})");
        let e = self.error().unwrap_or_else(|| panic!("{what}: no ErrorResponse ({self:?})"));
        assert_eq!(e.severity, "FATAL", "{what}: {e:?}");
        println!("{what}: FATAL {} \"{}\", closed after {:?}", e.code, e.message, self.after);
        e.code
    }
}

/// Reads everything sluice sends until it closes the connection or `limit` passes.
async fn outcome(s: &mut TcpStream, limit: Duration) -> Outcome {
    let start = Instant::now();
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let left = limit.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Outcome { bytes, closed: true, after: start.elapsed() },
            Ok(Ok(n)) => bytes.extend_from_slice(&chunk[..n]),
            Err(_) => return Outcome { bytes, closed: false, after: start.elapsed() },
        }
    }
}

/// Connects, sends `bytes`, and reports what sluice did within `limit`.
async fn send_and_watch(addr: SocketAddr, bytes: &[u8], limit: Duration) -> Outcome {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    outcome(&mut s, limit).await
}

/// A logged-in protocol connection driven by hand.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
    /// BackendKeyData.
    key: (u32, u32),
}

impl Raw {
    async fn login(addr: SocketAddr, db: &str) -> Raw {
        let mut r = Raw { s: TcpStream::connect(addr).await.unwrap(), buf: Vec::new(), key: (0, 0) };
        r.s.write_all(&startup_packet("postgres", db)).await.unwrap();
        for (tag, body) in r.until(b'Z').await {
            if tag == b'K' {
                r.key = (u32::from_be_bytes(body[..4].try_into().unwrap()), u32::from_be_bytes(body[4..8].try_into().unwrap()));
            }
        }
        r
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    /// The next message, within 10 s; `None` when sluice closed the connection.
    async fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some(m) = messages(&self.buf).into_iter().next() {
                self.buf.drain(..m.1.len() + 5);
                return Some(m);
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout(Duration::from_secs(10), self.s.read(&mut chunk))
                .await
                .expect("sluice answers within 10 s")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Messages up to and including the first with `tag`.
    async fn until(&mut self, tag: u8) -> Vec<(u8, Vec<u8>)> {
        let mut seen = Vec::new();
        loop {
            let m = self.recv().await.unwrap_or_else(|| panic!("closed while waiting for {:?}: {seen:?}", tag as char));
            let done = m.0 == tag;
            seen.push(m);
            if done {
                return seen;
            }
        }
    }

    /// What sluice does after the bytes sent so far (buffered bytes included).
    async fn outcome(mut self, limit: Duration) -> Outcome {
        let mut o = outcome(&mut self.s, limit).await;
        let mut bytes = std::mem::take(&mut self.buf);
        bytes.extend(o.bytes);
        o.bytes = bytes;
        o
    }
}

/// Checks that a fresh client still gets answers.
async fn a_normal_client_works(proxy: &Proxy) {
    let c = proxy.connect().await;
    let row = c.query_one("select 41 + 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
}

/// Waits until no server connection of `db` is busy or left inside a transaction.
async fn servers_settle(db: &str) {
    let settled = eventually(Duration::from_secs(10), || {
        server_activity(db).iter().all(|a| a.state == "idle")
    })
    .await;
    assert!(settled, "a server connection was left busy: {:?}", server_activity(db));
}

/// Memory of this process (sluice runs in it) from /proc: (resident, virtual) in bytes.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmRSS:"), field("VmSize:"))
}

const MB: u64 = 1 << 20;

/// Raises the soft limit on open files to the hard limit (the test holds thousands of sockets).
fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

// ---------------------------------------------------------------------------------------------
// Before login

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_a_startup_packet_gets_a_fatal_error_and_a_closed_connection() {
    let _shared = MEMORY.read().await;
    let db = unique_db("garbage");
    let proxy = start_proxy(&db, "[server]\nclient_login_timeout = \"500ms\"").await;
    let limit = Duration::from_secs(5);
    let o = send_and_watch(proxy.addr, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", limit).await;
    assert_eq!(o.fatal("HTTP request line"), "54000");
    let o = send_and_watch(proxy.addr, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", limit).await;
    assert_eq!(o.fatal("TLS ClientHello without SSLRequest"), "54000");
    for len in [0u32, 4, 7] {
        let o = send_and_watch(proxy.addr, &[len.to_be_bytes(), 196608u32.to_be_bytes()].concat(), limit).await;
        assert_eq!(o.fatal(&format!("startup length {len}")), "08P01");
    }
    for len in [10_001u32, 1 << 20, 0x7fff_ffff, u32::MAX] {
        let o = send_and_watch(proxy.addr, &len.to_be_bytes(), limit).await;
        assert_eq!(o.fatal(&format!("startup length {len}")), "54000");
    }
    let o = send_and_watch(proxy.addr, &[0, 0, 0, 8, 0, 2, 0, 0], limit).await;
    assert_eq!(o.fatal("protocol 2.0"), "0A000");
    // Random bytes: refused at once, or (when they happen to start with a plausible length)
    // closed at client_login_timeout; an error either way, never a hang.
    for seed in 0..40 {
        let bytes = noise(seed, 16 + (seed as usize * 37) % 300);
        let o = send_and_watch(proxy.addr, &bytes, limit).await;
        assert!(o.closed, "seed {seed}: not closed ({o:?})");
        let e = o.error().unwrap_or_else(|| panic!("seed {seed}: no error ({o:?})"));
        assert!(["08P01", "54000", "0A000"].contains(&e.code.as_str()), "seed {seed}: {e:?}");
    }
    let shared = proxy.sluice.shared().clone();
    assert!(eventually(Duration::from_secs(2), || shared.client_count() == 0).await);
    a_normal_client_works(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_startup_packet_that_announces_more_than_it_sends_is_closed_at_client_login_timeout() {
    let _shared = MEMORY.read().await;
    let db = unique_db("announces");
    let proxy = start_proxy(&db, "[server]\nclient_login_timeout = \"500ms\"").await;
    let mut packet = 10_000u32.to_be_bytes().to_vec();
    packet.extend(196608u32.to_be_bytes());
    packet.extend(cstr("user"));
    let o = send_and_watch(proxy.addr, &packet, Duration::from_secs(5)).await;
    assert_eq!(o.fatal("startup packet of 10000 bytes announced, 17 sent"), "08P01");
    assert!(o.after >= Duration::from_millis(400) && o.after < Duration::from_secs(3), "{:?}", o.after);
    a_normal_client_works(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_pipelined_after_an_ssl_request_is_refused_before_any_answer() {
    let _shared = MEMORY.read().await;
    let db = unique_db("ssl_pipelined");
    let proxy = start_proxy(&db, "").await;
    let mut bytes = ssl_request();
    bytes.extend(startup_packet("postgres", &db));
    let o = send_and_watch(proxy.addr, &bytes, Duration::from_secs(5)).await;
    assert_eq!(o.bytes.first(), Some(&b'E'), "no 'N' or 'S' before the error: {o:?}");
    assert_eq!(o.fatal("SSLRequest + StartupMessage in one packet"), "08P01");
    // The same with only a few stray bytes.
    let o = send_and_watch(proxy.addr, &[ssl_request(), b"\x16\x03".to_vec()].concat(), Duration::from_secs(5)).await;
    assert_eq!(o.fatal("SSLRequest + 2 bytes"), "08P01");
    a_normal_client_works(&proxy).await;
}

// ---------------------------------------------------------------------------------------------
// Stalled clients and client slots

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_startup_loses_its_slot_after_client_login_timeout() {
    let _shared = MEMORY.read().await;
    let db = unique_db("slots");
    let proxy = start_proxy(&db, "[server]\nmax_client_conn = 5\nclient_login_timeout = \"2s\"").await;
    let shared = proxy.sluice.shared().clone();
    let startup = startup_packet("postgres", &db);
    let mut stalled = Vec::new();
    let filled = Instant::now();
    for i in 0..5 {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        match i % 3 {
            0 => {}                                                       // nothing at all
            1 => s.write_all(&startup[..startup.len() / 2]).await.unwrap(), // half a startup packet
            _ => s.write_all(&startup[..3]).await.unwrap(),                 // not even a length
        }
        stalled.push(s);
    }
    assert!(eventually(Duration::from_secs(1), || shared.client_count() == 5).await, "{}", shared.client_count());
    // Every slot is taken: the next client is told so at once.
    let o = send_and_watch(proxy.addr, &startup, Duration::from_secs(1)).await;
    assert!(filled.elapsed() < Duration::from_secs(2), "the slots were not full long enough to test: {:?}", filled.elapsed());
    assert_eq!(o.fatal("a sixth client while five stall"), "53300");
    // Each stalled client is told why and closed at client_login_timeout.
    for (i, s) in stalled.iter_mut().enumerate() {
        let o = outcome(s, Duration::from_secs(6)).await;
        assert_eq!(o.fatal(&format!("stalled client {i}")), "08P01");
    }
    println!("slots freed {:?} after they were filled (client_login_timeout 2s)", filled.elapsed());
    assert!(filled.elapsed() < Duration::from_secs(5));
    assert!(eventually(Duration::from_secs(2), || shared.client_count() == 0).await);
    a_normal_client_works(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_half_open_connections_do_not_disturb_twenty_working_clients_or_grow_memory() {
    let _alone = MEMORY.write().await;
    let limit = raise_fd_limit();
    assert!(limit >= 2400, "RLIMIT_NOFILE {limit} is too low for 1000 connections (both ends in this process)");
    let db = unique_db("half_open");
    let proxy = start_proxy(&db, "[server]\nclient_login_timeout = \"60s\"\n[pool]\nsize = 10").await;
    let shared = proxy.sluice.shared().clone();
    let workers: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..20 {
            v.push(proxy.connect().await);
        }
        v
    };
    for c in &workers {
        c.simple_query("select 1").await.unwrap();
    }
    let (rss_before, _) = memory();
    let startup = startup_packet("postgres", &db);
    let mut half_open = Vec::new();
    for i in 0..1000 {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        if i % 2 == 1 {
            s.write_all(&startup[..startup.len() / 2]).await.unwrap();
        }
        half_open.push(s);
    }
    assert!(
        eventually(Duration::from_secs(10), || shared.client_count() == 1020).await,
        "clients: {}",
        shared.client_count()
    );
    // The working clients run while the thousand wait.
    let started = Instant::now();
    let runs = workers.into_iter().enumerate().map(|(i, c)| {
        tokio::spawn(async move {
            for n in 0..50i32 {
                let row = c.query_one("select $1::int + $2::int", &[&n, &(i as i32)]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), n + i as i32);
            }
            c
        })
    });
    let workers = futures_util::future::join_all(runs).await;
    let workers: Vec<_> = workers.into_iter().map(|r| r.expect("a working client failed")).collect();
    let (rss_during, _) = memory();
    println!(
        "1000 half-open connections: 20 x 50 queries in {:?}; RSS {} MB -> {} MB",
        started.elapsed(),
        rss_before / MB,
        rss_during / MB
    );
    assert!(rss_during < rss_before + 100 * MB, "RSS grew from {} MB to {} MB", rss_before / MB, rss_during / MB);
    assert_eq!(shared.client_count(), 1020);
    drop(half_open);
    assert!(
        eventually(Duration::from_secs(10), || shared.client_count() == 20).await,
        "half-open connections still counted: {}",
        shared.client_count()
    );
    for c in &workers {
        c.simple_query("select 1").await.unwrap();
    }
    drop(workers);
    assert!(eventually(Duration::from_secs(5), || shared.client_count() == 0).await);
    a_normal_client_works(&proxy).await;
    servers_settle(&db).await;
}

// ---------------------------------------------------------------------------------------------
// After login

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_longer_than_max_message_size_gets_54000_and_its_server_connection_is_cleaned() {
    let _shared = MEMORY.read().await;
    let db = unique_db("too_long");
    let proxy = start_proxy(&db, "[server]\nmax_message_size = \"1MB\"\n[pool]\nsize = 2").await;
    // Announced only.
    let mut raw = Raw::login(proxy.addr, &db).await;
    raw.send(&[b'Q', 0, 0x20, 0, 0]).await;
    assert_eq!(raw.outcome(Duration::from_secs(5)).await.fatal("Query announcing 2 MB"), "54000");
    // Really sent, inside an open transaction: the server connection is rolled back.
    let mut raw = Raw::login(proxy.addr, &db).await;
    raw.send(&query("begin; create table mine (x int)")).await;
    raw.until(b'Z').await;
    assert!(eventually(Duration::from_secs(5), || backends(&db, "idle in transaction") == 1).await);
    let big = query(&format!("select '{}'", "x".repeat(2 << 20)));
    let _ = raw.s.write_all(&big).await; // sluice may close before taking it all
    assert_eq!(raw.outcome(Duration::from_secs(5)).await.fatal("2 MB Query in a transaction"), "54000");
    servers_settle(&db).await;
    let c = proxy.connect().await;
    let e = c.simple_query("select * from mine").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42P01", "the transaction of the refused client was committed");
    // Every other message kind is bounded the same way.
    for tag in [b'P', b'B', b'D', b'E', b'd', b'F'] {
        let mut raw = Raw::login(proxy.addr, &db).await;
        raw.send(&[tag, 0x7f, 0xff, 0xff, 0xff]).await;
        assert_eq!(raw.outcome(Duration::from_secs(5)).await.fatal(&format!("{:?} announcing 2 GB", tag as char)), "54000");
    }
    servers_settle(&db).await;
    a_normal_client_works(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_announced_but_not_sent_reserves_no_memory_for_it() {
    let _alone = MEMORY.write().await;
    let db = unique_db("announced");
    let proxy = start_proxy(&db, "[server]\nmax_message_size = \"1GB\"\n[pool]\nsize = 12").await;
    let mut raws = Vec::new();
    for _ in 0..10 {
        raws.push(Raw::login(proxy.addr, &db).await);
    }
    let mut consoles = Vec::new();
    for _ in 0..5 {
        consoles.push(Raw::login(proxy.addr, "sluice").await);
    }
    let (_, virtual_before) = memory();
    // Parse is a message sluice holds whole (to share prepared statements), the console holds
    // every message whole: each announces 1 GB.
    for raw in &mut raws {
        raw.send(&[b'P', 0x3f, 0xff, 0xff, 0xf0, 0, b's']).await;
    }
    for console in &mut consoles {
        console.send(&[b'Q', 0x3f, 0xff, 0xff, 0xf0, b'S']).await;
    }
    assert!(eventually(Duration::from_secs(5), || backends(&db, "") >= 10).await);
    // Give the sessions time to take their server connection and look at the header.
    let settle = Instant::now();
    let mut grown = 0;
    while settle.elapsed() < Duration::from_millis(500) {
        grown = grown.max(memory().1.saturating_sub(virtual_before));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("15 clients announcing 1 GB each: virtual memory grew {} MB", grown / MB);
    assert!(grown < 2048 * MB, "virtual memory grew {} MB", grown / MB);
    drop((raws, consoles));
    servers_settle(&db).await;
    a_normal_client_works(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_message_type_ends_the_session_with_08p01() {
    let _shared = MEMORY.read().await;
    let db = unique_db("unknown_tag");
    let proxy = start_proxy(&db, "[pool]\nsize = 1").await;
    for tag in [b'z', 0u8, b'p', b'K'] {
        let mut raw = Raw::login(proxy.addr, &db).await;
        raw.send(&message(tag, b"whatever")).await;
        let o = raw.outcome(Duration::from_secs(5)).await;
        assert_eq!(o.fatal(&format!("message type {tag:#04x}")), "08P01");
    }
    servers_settle(&db).await;
    a_normal_client_works(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_to_a_statement_that_does_not_exist_gets_26000_and_the_session_goes_on() {
    let _shared = MEMORY.read().await;
    let db = unique_db("bind_missing");
    let proxy = start_proxy(&db, "[pool]\nsize = 1").await;
    let mut raw = Raw::login(proxy.addr, &db).await;
    let mut bind = cstr("");
    bind.extend(cstr("never_prepared"));
    bind.extend([0, 0, 0, 0, 0, 0]);
    raw.send(&[message(b'B', &bind), message(b'E', &[0, 0, 0, 0, 0]), SYNC.to_vec()].concat()).await;
    let got = raw.until(b'Z').await;
    let e = got.iter().find(|m| m.0 == b'E').map(|m| error_fields(&m.1)).expect("an error");
    println!("Bind of a missing statement: {} {} \"{}\"", e.severity, e.code, e.message);
    assert_eq!((e.severity.as_str(), e.code.as_str()), ("ERROR", "26000"), "{e:?}");
    raw.send(&query("select 1")).await;
    let got = raw.until(b'Z').await;
    assert!(got.iter().any(|m| m.0 == b'D') && !got.iter().any(|m| m.0 == b'E'), "{got:?}");
    servers_settle(&db).await;
    a_normal_client_works(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_results_holds_bounded_memory_and_its_server_comes_back_clean() {
    let _alone = MEMORY.write().await;
    let db = unique_db("never_reads");
    let proxy = start_proxy(&db, "[pool]\nsize = 3").await;
    let others: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(proxy.connect().await);
        }
        v
    };
    let (rss_before, _) = memory();
    let mut raw = Raw::login(proxy.addr, &db).await;
    // 200 MB of rows, in a transaction so that leaving must roll something back.
    raw.send(&query("begin; create temp table t (x int); select repeat('x', 1000000) from generate_series(1, 200)")).await;
    let stuck_pid = || {
        on_primary(&format!(
            "select pid from pg_stat_activity where datname = '{db}' and wait_event = 'ClientWrite'"
        ))
    };
    let stuck = eventually(Duration::from_secs(20), || !stuck_pid().is_empty()).await;
    assert!(stuck, "the server never blocked on writing: {:?}", server_activity(&db));
    let pid: i32 = stuck_pid().parse().unwrap();
    // Everyone else carries on meanwhile.
    for round in 0..10 {
        for c in &others {
            let row = c.query_one("select $1::int", &[&round]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), round);
        }
    }
    let (rss_during, _) = memory();
    println!("a client not reading 200 MB: RSS {} MB -> {} MB", rss_before / MB, rss_during / MB);
    assert!(rss_during < rss_before + 100 * MB, "RSS grew from {} MB to {} MB", rss_before / MB, rss_during / MB);
    let left = Instant::now();
    drop(raw);
    // The query is cancelled, the rest of its rows drained and the transaction rolled back: the
    // same server connection is idle again, well within the 5 s a reset may take.
    let back = eventually(Duration::from_secs(3), || {
        server_activity(&db).iter().any(|a| a.pid == pid && a.state == "idle")
    })
    .await;
    assert!(back, "server connection {pid} not reset in time: {:?}", server_activity(&db));
    println!("its server connection was idle again {:?} after it left", left.elapsed());
    servers_settle(&db).await;
    for c in &others {
        c.simple_query("select 1").await.unwrap();
    }
    a_normal_client_works(&proxy).await;
}

// ---------------------------------------------------------------------------------------------
// Authentication

/// The salt and iteration count sluice offers `user` in a SCRAM exchange (server-first-message
/// without the nonce).
async fn scram_salt(addr: SocketAddr, db: &str, user: &str) -> String {
    let mut r = Raw { s: TcpStream::connect(addr).await.unwrap(), buf: Vec::new(), key: (0, 0) };
    r.send(&startup_packet(user, db)).await;
    let (tag, body) = r.recv().await.expect("an authentication request");
    assert_eq!((tag, &body[..4]), (b'R', &10u32.to_be_bytes()[..]), "AuthenticationSASL");
    let first = b"n,,n=,r=abcdefghijkl";
    let mut initial = cstr("SCRAM-SHA-256");
    initial.extend((first.len() as u32).to_be_bytes());
    initial.extend(first);
    r.send(&message(b'p', &initial)).await;
    let (tag, body) = r.recv().await.expect("server-first-message");
    assert_eq!((tag, &body[..4]), (b'R', &11u32.to_be_bytes()[..]), "AuthenticationSASLContinue");
    let text = String::from_utf8(body[4..].to_vec()).unwrap();
    text.split(',').filter(|a| !a.starts_with("r=")).collect::<Vec<_>>().join(",")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_offers_an_unknown_user_a_salt_as_stable_as_a_real_one() {
    let _shared = MEMORY.read().await;
    let db = unique_db("scram_salt");
    let sections = "[auth]\nmethod = \"scram-sha-256\"\n[[auth.users]]\nname = \"postgres\"\npassword = \"secret\"\n";
    let proxy = start_proxy(&db, sections).await;
    let known = [scram_salt(proxy.addr, &db, "postgres").await, scram_salt(proxy.addr, &db, "postgres").await];
    let unknown = [scram_salt(proxy.addr, &db, "nobody").await, scram_salt(proxy.addr, &db, "nobody").await];
    println!("SCRAM salts: known {known:?}, unknown {unknown:?}");
    assert_eq!(known[0], known[1]);
    assert_eq!(unknown[0], unknown[1], "a fresh salt at every attempt gives an unknown user away");
    assert_ne!(known[0], unknown[0]);
    let iterations = |s: &str| s.split(',').find(|a| a.starts_with("i=")).map(str::to_owned);
    assert_eq!(iterations(&known[0]), iterations(&unknown[0]));
    let c = proxy.connect_with("postgres", "password=secret").await.unwrap();
    c.simple_query("select 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_and_an_unknown_user_get_the_same_28p01_so_users_cannot_be_enumerated() {
    let _shared = MEMORY.read().await;
    // (Cleartext `password` is refused without TLS before any user is looked at; tests/tls.rs.)
    for method in ["md5", "scram-sha-256"] {
        let db = unique_db("enumeration");
        let sections = format!(
            "[auth]\nmethod = \"{method}\"\n[[auth.users]]\nname = \"postgres\"\npassword = \"secret\"\n"
        );
        let proxy = start_proxy(&db, &sections).await;
        // What sluice asks for first, for a known and an unknown user, is the same request.
        let mut asks = Vec::new();
        for user in ["postgres", "nobody"] {
            let mut s = TcpStream::connect(proxy.addr).await.unwrap();
            s.write_all(&startup_packet(user, &db)).await.unwrap();
            let mut head = [0u8; 9];
            s.read_exact(&mut head).await.unwrap();
            asks.push(head);
        }
        assert_eq!(asks[0][0], b'R');
        assert_eq!(asks[0], asks[1], "{method}: the authentication request tells users apart");
        let wrong = proxy.connect_with("postgres", "password=wrong").await.unwrap_err();
        let unknown = proxy.connect_with("nobody", "password=wrong").await.unwrap_err();
        let (wrong, unknown) = (wrong.as_db_error().unwrap(), unknown.as_db_error().unwrap());
        println!("{method}: wrong password: {} \"{}\"; unknown user: {} \"{}\"", wrong.code().code(), wrong.message(), unknown.code().code(), unknown.message());
        assert_eq!(wrong.code().code(), "28P01");
        assert_eq!(unknown.code().code(), "28P01");
        assert_eq!(wrong.severity(), unknown.severity());
        // The same text, but for the user name the client gave (as Postgres words it).
        assert_eq!(wrong.message().replace("postgres", "USER"), unknown.message().replace("nobody", "USER"), "{method}");
        assert_eq!(wrong.detail(), unknown.detail());
        assert_eq!(wrong.hint(), unknown.hint());
        let c = proxy.connect_with("postgres", "password=secret").await.unwrap();
        c.simple_query("select 1").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_console_refuses_users_not_in_admin_users_even_with_the_right_password() {
    let _shared = MEMORY.read().await;
    let db = unique_db("admin_refused");
    let sections = "[server]\nadmin_users = [\"postgres\"]\n[auth]\nmethod = \"md5\"\n\
                    [[auth.users]]\nname = \"postgres\"\npassword = \"secret\"\n\
                    [[auth.users]]\nname = \"app\"\npassword = \"apppw\"\n";
    let proxy = start_proxy(&db, sections).await;
    for console in ["sluice", "pgbouncer"] {
        let e = connect_as(proxy.addr, console, "app", "password=apppw").await.expect_err("a non-admin is refused");
        println!("admin console as app: {} \"{}\"", sqlstate(&e), e.as_db_error().map(|d| d.message()).unwrap_or(""));
        assert_eq!(sqlstate(&e), "42501");
        let e = connect_as(proxy.addr, console, "app", "password=wrong").await.unwrap_err();
        assert_eq!(sqlstate(&e), "28P01");
        let e = connect_as(proxy.addr, console, "postgres", "password=wrong").await.unwrap_err();
        assert_eq!(sqlstate(&e), "28P01");
    }
    let admin = connect_as(proxy.addr, "sluice", "postgres", "password=secret").await.unwrap();
    admin.simple_query("SHOW POOLS").await.unwrap();
    let c = proxy.connect_with("postgres", "password=secret").await.unwrap();
    c.simple_query("select 1").await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Cancel requests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_cancel_requests_with_wrong_keys_does_not_disturb_running_queries() {
    let _shared = MEMORY.read().await;
    let db = unique_db("cancel_flood");
    let proxy = start_proxy(&db, "[pool]\nsize = 5").await;
    let victim = Raw::login(proxy.addr, &db).await;
    let (pid, secret) = victim.key;
    drop(victim);
    let flooding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut running = Vec::new();
    for _ in 0..4 {
        let c = proxy.connect().await;
        let flooding = flooding.clone();
        running.push(tokio::spawn(async move {
            let mut queries = 0;
            while flooding.load(std::sync::atomic::Ordering::Relaxed) || queries < 2 {
                c.simple_query("select pg_sleep(0.05)").await?;
                queries += 1;
            }
            Ok::<_, tokio_postgres::Error>(queries)
        }));
    }
    let raw = Raw::login(proxy.addr, &db).await;
    let (own_pid, own_secret) = raw.key;
    let mut raw = raw;
    raw.send(&query("select pg_sleep(1)")).await;
    // Wrong keys: random ones, the right pids with wrong secrets, and the key of a client gone.
    let started = Instant::now();
    let mut sent = 0;
    let flood = noise(7, 4 * 8 * 300);
    for (i, k) in flood.chunks(8).enumerate() {
        let guess_pid = if i % 2 == 0 { u32::from_be_bytes(k[..4].try_into().unwrap()) } else { own_pid.wrapping_add(i as u32 % 8).wrapping_sub(4) };
        let guess_secret = u32::from_be_bytes(k[4..].try_into().unwrap());
        if (guess_pid, guess_secret) == (own_pid, own_secret) {
            continue;
        }
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(&cancel_request(guess_pid, guess_secret)).await.unwrap();
        let o = outcome(&mut s, Duration::from_secs(5)).await;
        assert!(o.closed && o.bytes.is_empty(), "a cancel request is answered by closing: {o:?}");
        sent += 1;
    }
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&cancel_request(pid, secret)).await.unwrap();
    assert!(outcome(&mut s, Duration::from_secs(5)).await.closed);
    flooding.store(false, std::sync::atomic::Ordering::Relaxed);
    let got = raw.until(b'Z').await;
    assert!(!got.iter().any(|m| m.0 == b'E'), "the query was cancelled: {got:?}");
    let mut queries = 0;
    for r in running {
        queries += r.await.unwrap().expect("a running query was disturbed");
    }
    println!("{sent} wrong cancel requests in {:?}; {queries} queries ran undisturbed meanwhile", started.elapsed());
    // The right key still cancels.
    raw.send(&query("select pg_sleep(30)")).await;
    assert!(eventually(Duration::from_secs(5), || backends(&db, "active") == 1).await);
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&cancel_request(own_pid, own_secret)).await.unwrap();
    let got = raw.until(b'Z').await;
    let e = got.iter().find(|m| m.0 == b'E').map(|m| error_fields(&m.1)).expect("cancelled");
    assert_eq!(e.code, "57014");
    servers_settle(&db).await;
    a_normal_client_works(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_flooding_requests_sluice_answers_itself_without_reading_is_held_back() {
    let _alone = MEMORY.write().await;
    let db = unique_db("synthetic_flood");
    let proxy = start_proxy(&db, "[pool]\nsize = 2").await;
    let mut raw = Raw::login(proxy.addr, &db).await;
    let mut parse = cstr("s");
    parse.extend(cstr("select 1"));
    parse.extend([0, 0]);
    raw.send(&[message(b'P', &parse), SYNC.to_vec()].concat()).await;
    raw.until(b'Z').await;
    let (rss_before, _) = memory();
    // Closing a client's name of a shared statement is answered by sluice alone: 8 bytes in,
    // a CloseComplete owed. 32 MB of them, never reading, never syncing.
    let close = message(b'C', b"Ss\0");
    let chunk: Vec<u8> = close.iter().copied().cycle().take(close.len() * 8192).collect();
    let Raw { s, .. } = raw;
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let mut sent = 0usize;
        while sent < 32 << 20 {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
        (sent, wr)
    });
    let finished = tokio::time::timeout(Duration::from_secs(3), async {
        while !writer.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let (rss_during, _) = memory();
    println!(
        "Close flood without reading: writer {}; RSS {} MB -> {} MB",
        if finished.is_ok() { "sent all 32 MB" } else { "held back" },
        rss_before / MB,
        rss_during / MB
    );
    assert!(rss_during < rss_before + 100 * MB, "RSS grew from {} MB to {} MB", rss_before / MB, rss_during / MB);
    writer.abort();
    let mut sink = vec![0u8; 1 << 16];
    let _ = tokio::time::timeout(Duration::from_millis(10), rd.read(&mut sink)).await;
    drop(rd);
    servers_settle(&db).await;
    a_normal_client_works(&proxy).await;
}
