//! End-to-end: COPY through sluice in transaction mode — a GiB each way streamed without being
//! buffered (the test process, sluice included, stays within a bounded memory growth), binary,
//! CSV and text round trips byte-identical to Postgres directly, and errors mid-copy or a
//! client's CopyFail that leave the pool's one server connection clean for the next client.
//!
//! The GiB test uses an UNLOGGED table on the shared cluster and drops it at the end; it scales
//! down (and says so) when the cluster's file system has no room, and `SLUICE_COPY_BYTES` sets
//! the size.

mod common;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// The tests of this binary run one at a time, so that the memory one measures is its own.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A field of /proc/self/status in KiB (VmRSS, VmHWM).
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

/// Watches this process's memory while a test runs: the peak resident set (VmHWM, reset to the
/// current RSS at the start when the kernel allows it) and the largest RSS sampled every 20 ms.
struct MemoryWatch {
    base_kib: u64,
    hwm_reset: bool,
    max_sampled: Arc<AtomicU64>,
    running: Arc<AtomicBool>,
    sampler: Option<std::thread::JoinHandle<()>>,
}

impl MemoryWatch {
    fn start() -> MemoryWatch {
        // Writing 5 to clear_refs resets VmHWM to the current RSS (Linux 4.0 and later).
        let hwm_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
        let base_kib = status_kib("VmRSS");
        let (max_sampled, running) = (Arc::new(AtomicU64::new(base_kib)), Arc::new(AtomicBool::new(true)));
        let sampler = {
            let (max_sampled, running) = (max_sampled.clone(), running.clone());
            std::thread::spawn(move || {
                while running.load(Ordering::Relaxed) {
                    max_sampled.fetch_max(status_kib("VmRSS"), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        MemoryWatch { base_kib, hwm_reset, max_sampled, running, sampler: Some(sampler) }
    }

    /// Growth of the peak resident set since the start, in MiB.
    fn growth_mib(&self) -> u64 {
        let peak = if self.hwm_reset { status_kib("VmHWM") } else { 0 };
        let peak = peak.max(self.max_sampled.load(Ordering::Relaxed));
        peak.saturating_sub(self.base_kib) / 1024
    }
}

impl Drop for MemoryWatch {
    fn drop(&mut self) {
        self.running.store(false, Ordering::Relaxed);
        if let Some(s) = self.sampler.take() {
            let _ = s.join();
        }
    }
}

/// Free bytes on the file system holding `path`.
fn free_bytes(path: &std::path::Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a statvfs to fill.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    assert_eq!(rc, 0, "statvfs {}", path.display());
    st.f_bavail as u64 * st.f_frsize as u64
}

/// The session's server backend and whether sluice's pool connections to `db` are all idle
/// (none in a transaction, none in a COPY).
async fn pool_is_clean(db: &str) -> bool {
    eventually(Duration::from_secs(5), || {
        let a = server_activity(db);
        !a.is_empty() && a.iter().all(|a| a.state == "idle")
    })
    .await
}

async fn backend_pid(c: &Client) -> i32 {
    c.query_typed("select pg_backend_pid()", &[]).await.unwrap()[0].get(0)
}

async fn count(c: &Client, table: &str) -> i64 {
    c.query_typed(&format!("select count(*) from {table}"), &[]).await.unwrap()[0].get(0)
}

/// All of a COPY TO STDOUT.
async fn copy_out_all(c: &Client, sql: &str) -> Vec<u8> {
    let stream = c.copy_out(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    futures_util::pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

/// COPY FROM STDIN of `data` in chunks of `chunk` bytes (cut anywhere, not at row ends).
async fn copy_in_all(c: &Client, sql: &str, data: &[u8], chunk: usize) -> u64 {
    let sink = c.copy_in(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    futures_util::pin_mut!(sink);
    for part in data.chunks(chunk) {
        sink.send(Bytes::copy_from_slice(part)).await.unwrap();
    }
    sink.finish().await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

const PAYLOAD_LEN: usize = 1000;

/// The text COPY line of row `id`: the id, a tab, 1000 payload bytes that start with the id in
/// hex (so rows differ), a newline.
fn push_row(buf: &mut Vec<u8>, id: u64, filler: &[u8]) {
    use std::io::Write;
    write!(buf, "{id}\t{:016x}", id.wrapping_mul(0x9e37_79b9_7f4a_7c15)).unwrap();
    let payload_start = buf.len() - 16;
    buf.extend_from_slice(&filler[..PAYLOAD_LEN - 16]);
    debug_assert_eq!(buf.len() - payload_start, PAYLOAD_LEN);
    buf.push(b'\n');
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gibibyte_copies_in_and_out_through_sluice_without_being_buffered() {
    let _serial = SERIAL.lock().await;
    let wanted: u64 = std::env::var("SLUICE_COPY_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(1 << 30);
    // The table takes about 1.1x its COPY text on disk; keep 2x that plus 1 GiB free.
    let free = free_bytes(cluster().dir());
    let room = free.saturating_sub(1 << 30) / 2;
    let target = if room < wanted {
        println!(
            "only {} MiB free under {}: copying {} MiB instead of {} MiB",
            free >> 20,
            cluster().dir().display(),
            room >> 20,
            wanted >> 20
        );
        room
    } else {
        wanted
    };
    assert!(target >= 64 << 20, "no room for even 64 MiB of COPY data ({} MiB free)", free >> 20);

    let db = unique_db("copy_gib");
    let proxy = start_proxy(&db, "[pool]\nsize = 1").await;
    let c = proxy.connect().await;
    c.batch_execute("create unlogged table big (id bigint not null, payload text not null)").await.unwrap();

    // COPY FROM STDIN, generated 1 MiB at a time.
    let filler: Vec<u8> = (0..PAYLOAD_LEN).map(|i| b'a' + (i % 26) as u8).collect();
    let mem = MemoryWatch::start();
    let start = Instant::now();
    let (mut sent, mut rows, mut id_sum) = (0u64, 0u64, 0u128);
    {
        let sink = c.copy_in::<_, Bytes>("copy big (id, payload) from stdin").await.unwrap();
        futures_util::pin_mut!(sink);
        let mut buf = Vec::with_capacity((1 << 20) + 2 * PAYLOAD_LEN);
        while sent < target {
            while buf.len() < 1 << 20 && sent + (buf.len() as u64) < target {
                rows += 1;
                id_sum += u128::from(rows);
                push_row(&mut buf, rows, &filler);
            }
            sent += buf.len() as u64;
            sink.send(Bytes::from(std::mem::replace(&mut buf, Vec::with_capacity((1 << 20) + 2 * PAYLOAD_LEN))))
                .await
                .unwrap();
        }
        assert_eq!(sink.finish().await.unwrap(), rows);
    }
    let copy_in_time = start.elapsed();
    let in_growth = mem.growth_mib();
    println!(
        "COPY FROM STDIN: {} MiB ({rows} rows) in {copy_in_time:.1?} ({:.0} MiB/s); peak memory growth {in_growth} MiB",
        sent >> 20,
        (sent >> 20) as f64 / copy_in_time.as_secs_f64()
    );
    drop(mem);
    assert!(in_growth < 200, "memory grew by {in_growth} MiB while {} MiB went through COPY FROM STDIN", sent >> 20);

    let r =
        &c.query_typed("select count(*), sum(id)::text, sum(length(payload))::bigint from big", &[]).await.unwrap()[0];
    assert_eq!(r.get::<_, i64>(0) as u64, rows);
    assert_eq!(r.get::<_, String>(1), id_sum.to_string());
    assert_eq!(r.get::<_, i64>(2) as u64, rows * PAYLOAD_LEN as u64);

    // COPY TO STDOUT of all of it, read with pauses, so that a relay that kept reading from the
    // server while the client does not would fill memory during them. The first pause lasts 3 s
    // (at this machine's rate, hundreds of MiB for a relay that buffers), and in it the server
    // must be blocked writing to sluice (wait_event ClientWrite), still at its end: backpressure
    // reaches Postgres.
    let mem = MemoryWatch::start();
    let start = Instant::now();
    let (mut received, mut messages, mut next_pause) = (0u64, 0u64, 64u64 << 20);
    let mut blocked_after = None;
    let client_write = || {
        on_primary(&format!(
            "select count(*) from pg_stat_activity where datname = '{db}' and wait_event = 'ClientWrite'"
        )) == "1"
    };
    {
        let stream = c.copy_out("copy big to stdout").await.unwrap();
        futures_util::pin_mut!(stream);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            // Postgres sends one CopyData per row; spot-check some of them whole.
            messages += 1;
            assert_eq!(chunk.last(), Some(&b'\n'));
            if messages % 100_003 == 1 {
                let id: u64 = std::str::from_utf8(&chunk[..chunk.iter().position(|b| *b == b'\t').unwrap()])
                    .unwrap()
                    .parse()
                    .unwrap();
                let mut expected = Vec::new();
                push_row(&mut expected, id, &filler);
                assert_eq!(&chunk[..], &expected[..], "row {id}");
            }
            received += chunk.len() as u64;
            if received >= next_pause && blocked_after.is_none() {
                let paused = Instant::now();
                let blocked = eventually(Duration::from_secs(10), client_write).await;
                assert!(blocked, "Postgres kept sending while the client did not read: sluice buffers COPY TO STDOUT");
                blocked_after = Some(paused.elapsed());
                tokio::time::sleep(Duration::from_secs(3).saturating_sub(paused.elapsed())).await;
                assert!(client_write(), "Postgres is no longer blocked after 3 s of a client not reading");
                next_pause += 128 << 20;
            } else if received >= next_pause {
                next_pause += 128 << 20;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    let copy_out_time = start.elapsed();
    let out_growth = mem.growth_mib();
    println!(
        "COPY TO STDOUT: {} MiB ({messages} rows) in {copy_out_time:.1?} ({:.0} MiB/s, with a 3 s pause, then 300 ms ones every 128 MiB); \
         peak memory growth {out_growth} MiB; Postgres blocked on ClientWrite {:.1?} into the first pause",
        received >> 20,
        (received >> 20) as f64 / copy_out_time.as_secs_f64(),
        blocked_after.unwrap_or_default()
    );
    drop(mem);
    assert_eq!(received, sent, "bytes out of COPY TO STDOUT");
    assert_eq!(messages, rows);
    assert!(
        out_growth < 200,
        "memory grew by {out_growth} MiB while {} MiB went through COPY TO STDOUT",
        received >> 20
    );

    c.batch_execute("drop table big").await.unwrap();
    assert_eq!(c.query_typed("select 1", &[]).await.unwrap()[0].get::<_, i32>(0), 1);
    assert!(pool_is_clean(&db).await, "{:?}", server_activity(&db));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_csv_and_text_copies_are_byte_identical_to_postgres_and_round_trip() {
    let _serial = SERIAL.lock().await;
    let db = unique_db("copy_formats");
    let proxy = start_proxy(&db, "[pool]\nsize = 2").await;
    let direct = connect(cluster().primary.addr(), &db).await;
    let pooled = proxy.connect().await;
    // About 12 MB of awkward values: quotes, commas, tabs, newlines, backslashes, non-ASCII,
    // empty strings and NULLs, bytea, jsonb, arrays, numerics, timestamps.
    direct
        .batch_execute(
            "create table src (id int primary key, t text, n numeric, ts timestamptz, b bytea, j jsonb, \
             arr int[], f float8, maybe text); \
             insert into src select g, \
               case g % 7 when 0 then '' when 1 then 'comma, \"quote\" and ''single''' \
                 when 2 then E'tab\\there\\nnewline\\\\backslash' when 3 then 'ünïcødé ✓ ' || repeat('é', g % 50) \
                 when 4 then E'\\r\\n' when 5 then 'NULL' else repeat('x', 200 + g % 300) end, \
               (g * 1.25)::numeric / 7, timestamptz '2024-01-01 00:00:00+00' + g * interval '37 seconds', \
               decode(md5(g::text) || md5((g * 3)::text), 'hex'), \
               jsonb_build_object('g', g, 's', 'a\"b', 'l', jsonb_build_array(g, null, true)), \
               array[g, -g, g % 13], g / 3.0e0, case when g % 3 = 0 then null else g::text end \
             from generate_series(1, 40000) g",
        )
        .await
        .unwrap();
    for (name, options) in [("binary", "(format binary)"), ("csv", "(format csv, header)"), ("text", "")] {
        let out_sql = format!("copy (select * from src order by id) to stdout {options}");
        let from_postgres = copy_out_all(&direct, &out_sql).await;
        let through_sluice = copy_out_all(&pooled, &out_sql).await;
        assert!(from_postgres.len() >= 10_000_000, "{name}: only {} bytes", from_postgres.len());
        assert!(from_postgres == through_sluice, "{name}: COPY TO STDOUT through sluice differs from Postgres'");
        // Back in through sluice, in chunks that cut rows anywhere, then out again directly.
        let table = format!("dst_{name}");
        pooled.batch_execute(&format!("create table {table} (like src)")).await.unwrap();
        let n = copy_in_all(&pooled, &format!("copy {table} from stdin {options}"), &through_sluice, 65_521).await;
        assert_eq!(n, 40000, "{name}");
        let round_trip =
            copy_out_all(&direct, &format!("copy (select * from {table} order by id) to stdout {options}")).await;
        assert!(round_trip == from_postgres, "{name}: the round trip through sluice changed the data");
        println!("{name}: {} bytes identical", from_postgres.len());
    }
    assert!(pool_is_clean(&db).await, "{:?}", server_activity(&db));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_mid_copy_and_copy_fail_leave_the_server_connection_clean_for_everyone() {
    let _serial = SERIAL.lock().await;
    let db = unique_db("copy_errors");
    let proxy = start_proxy(&db, "[pool]\nsize = 1\nquery_wait_timeout = \"10s\"").await;
    let c = proxy.connect().await;
    let other = proxy.connect().await;
    c.batch_execute("create table t (id int primary key check (id < 50000), payload text)").await.unwrap();
    let pid = backend_pid(&c).await;
    let rows = |from: i32, to: i32| -> Bytes {
        Bytes::from((from..to).map(|i| format!("{i}\t{}\n", "p".repeat(100))).collect::<String>())
    };
    // Every check below also proves the one server connection was reused, not replaced.
    let check_clean = |what: &'static str| {
        let (c, other, db) = (&c, &other, &db);
        async move {
            assert_eq!(c.query_typed("select 1", &[]).await.unwrap()[0].get::<_, i32>(0), 1, "{what}");
            assert_eq!(count(other, "t").await, 0, "{what}: rows of a failed COPY were kept");
            c.batch_execute("begin").await.unwrap();
            c.batch_execute("insert into t values (-1, 'probe')").await.unwrap();
            assert_eq!(count(c, "t").await, 1, "{what}");
            c.batch_execute("rollback").await.unwrap();
            assert_eq!(backend_pid(other).await, pid, "{what}: the server connection was replaced");
            assert!(pool_is_clean(db).await, "{what}: {:?}", server_activity(db));
            assert_eq!(server_activity(db).len(), 1, "{what}");
        }
    };

    // A row failing the CHECK constraint halfway through 10 MB: the client sends on, the server
    // skips the rest, and finish() gets the error.
    {
        let sink = c.copy_in::<_, Bytes>("copy t from stdin").await.unwrap();
        futures_util::pin_mut!(sink);
        for from in (0..100_000).step_by(5000) {
            sink.send(rows(from, from + 5000)).await.unwrap();
        }
        let e = sink.finish().await.unwrap_err();
        assert_eq!(sqlstate(&e), "23514", "{e}");
    }
    check_clean("after a CHECK violation mid-copy").await;

    // Bad data in the very first row, then megabytes more.
    {
        let sink = c.copy_in::<_, Bytes>("copy t from stdin").await.unwrap();
        futures_util::pin_mut!(sink);
        sink.send(Bytes::from_static(b"not a number\tx\n")).await.unwrap();
        for from in (0..40_000).step_by(5000) {
            sink.send(rows(from, from + 5000)).await.unwrap();
        }
        assert_eq!(sqlstate(&sink.finish().await.unwrap_err()), "22P02");
    }
    check_clean("after bad data in the first row").await;

    // The client gives up halfway (the sink is dropped: CopyFail), while another client waits
    // for the server connection.
    let waiting = {
        let sink = c.copy_in::<_, Bytes>("copy t from stdin").await.unwrap();
        let mut sink = Box::pin(sink);
        for from in (0..30_000).step_by(5000) {
            sink.send(rows(from, from + 5000)).await.unwrap();
        }
        let other = proxy.connect().await;
        let waiting = tokio::spawn(async move { count(&other, "t").await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "another client got the server connection in the middle of a COPY");
        drop(sink);
        waiting
    };
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("served after the CopyFail").unwrap(),
        0
    );
    check_clean("after CopyFail").await;

    // CopyFail inside a transaction fails the transaction, as on Postgres.
    c.batch_execute("begin; insert into t values (7, 'kept until rollback')").await.unwrap();
    {
        let sink = c.copy_in::<_, Bytes>("copy t from stdin").await.unwrap();
        let mut sink = Box::pin(sink);
        sink.send(rows(100, 5000)).await.unwrap();
        drop(sink);
    }
    let e = c.query_typed("select 1", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "25P02");
    c.batch_execute("rollback").await.unwrap();
    check_clean("after CopyFail inside a transaction").await;

    // A successful COPY, then a COPY TO STDOUT the client stops reading early.
    let sink = c.copy_in::<_, Bytes>("copy t from stdin").await.unwrap();
    futures_util::pin_mut!(sink);
    for from in (0..40_000).step_by(5000) {
        sink.send(rows(from, from + 5000)).await.unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 40_000);
    {
        let stream = c.copy_out("copy (select t.*, g from t, generate_series(1, 5) g) to stdout").await.unwrap();
        futures_util::pin_mut!(stream);
        for _ in 0..10 {
            stream.next().await.unwrap().unwrap();
        }
    }
    assert_eq!(count(&other, "t").await, 40_000);
    c.batch_execute("truncate t").await.unwrap();
    check_clean("after an abandoned COPY TO STDOUT").await;
}
