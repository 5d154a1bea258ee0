//! `cargo bench --bench result_cache [-- --quick | --duration SECS]`
//!
//! The result cache end to end. Starts a Postgres primary (sluice's own `sluice::cluster`),
//! loads a table `t (k int primary key, v int)` of [`ROWS`] rows and runs release builds of
//! sluice side by side, all in transaction mode with a pool of 20: one with the cache off, one
//! with `[cache] enabled = true, ttl = "60s"`, and, for the memory check, one with the cache on
//! and `max_memory = "4MB"`. Then pgbench `-c 16 -j 2 -n` runs custom scripts against the
//! cache-off sluice, the cache-on sluice and the primary directly, alternately (off, on,
//! direct, off, on, direct), with the simple protocol and with `-M prepared`:
//!
//! - hot primary-key read: `select v from t where k = :k`, 100 distinct `:k`;
//! - hot dashboard read: `select count(*), sum(v), max(v) from t where k between :lo and :hi`,
//!   a range of 2,001 rows, 100 distinct ranges;
//! - hot primary-key read through a sluice with `backend = "redis"` (a redis-server of the
//!   benchmark's own, no persistence, default `redis_timeout`), a fourth target of that
//!   scenario only: every hit is a round trip to Redis;
//! - memory bound (cache-on, 4MB sluice only): `select v, repeat('x', 500) from t where k = :k`
//!   over a million distinct keys, sampling `sluice_cache_bytes` and the process's RSS.
//!
//! Hits and misses come from sluice's own `/metrics` (`sluice_cache_hits_total`,
//! `sluice_cache_misses_total`, `sluice_cache_bytes`, `sluice_transactions_total{route="cache"}`)
//! scraped before and after each run. Before measuring, a few answers through the cache are
//! compared with the primary's (miss, hit, and after a write through sluice).
//!
//! Prints a markdown table (direct / cache off / cache on tps, ratios, hit ratio, p99, errors),
//! per-run details, a table of the hot primary-key read by backend (memory / redis / direct) and
//! the targets: dashboard cache-on ≥ 5× direct, primary-key read cache-on ≥ 1.3× direct,
//! primary-key read through Redis ≥ 1.5× direct, cache bytes within `max_memory`.
//!
//! Needs the Postgres server binaries (pgbench and psql included) and redis-server. Every process started here is
//! killed when the benchmark ends, also on a panic; the Postgres server also dies with this
//! process (see `sluice::cluster`). All ports are free ports picked at start.
//!
//! The benchmark only runs when cargo passes `--bench` (that is, under `cargo bench`); a plain
//! `cargo test --all-targets` builds it and runs nothing.

mod support;

use sluice::cluster::{Cluster, ClusterOptions, PgBinaries};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;
use support::*;

/// Server connections per pool.
const POOL: usize = 20;
/// pgbench clients.
const CLIENTS: u32 = 16;
/// The database name clients use on sluice (mapped to `postgres` on the server).
const DB: &str = "bench";
/// Runs per target and scenario (alternating off, on, direct).
const REPEATS: usize = 2;
/// Rows of `t` (k = 0 .. ROWS-1); the memory check draws its keys from all of them.
const ROWS: u64 = 1_000_000;
/// Entry lifetime of the cache-on sluice: longer than any one run.
const TTL: &str = "60s";
/// `max_memory` of the memory-check sluice.
const SMALL_MEMORY: &str = "4MB";
const SMALL_MEMORY_BYTES: u64 = 4 << 20;
/// Seconds per run when neither `--duration` nor `--quick` is given.
const DEFAULT_SECS: u64 = 10;

const PK_SQL: &str = "\\set k random(0, 99)\n\
                      select v from t where k = :k;\n";
const DASH_SQL: &str = "\\set k random(0, 99)\n\
                        \\set lo :k * 1000\n\
                        \\set hi :lo + 2000\n\
                        select count(*), sum(v), max(v) from t where k between :lo and :hi;\n";
const WIDE_SQL: &str = "\\set k random(0, 999999)\n\
                        select v, repeat('x', 500) from t where k = :k;\n";

fn main() {
    bench_main("result_cache", run);
}

/// Where a run's pgbench connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Off,
    On,
    Redis,
    Direct,
}

impl Target {
    fn label(self) -> &'static str {
        match self {
            Target::Off => "cache off",
            Target::On => "cache on",
            Target::Redis => "cache on (redis)",
            Target::Direct => "direct",
        }
    }
}

/// A running sluice with its metrics port.
struct Sluice {
    proc: Proc,
    metrics_port: u16,
}

/// Starts the release build of sluice in front of `primary` (transaction mode, pool [`POOL`],
/// trust), with the cache off (`cache = None`) or on with that `max_memory`, in memory or (with
/// `redis`, a port) in Redis.
fn start_sluice(
    dir: &Path,
    primary: u16,
    name: &'static str,
    tag: &str,
    cache: Option<&str>,
    redis: Option<u16>,
) -> Result<Sluice> {
    let port = free_port()?;
    let metrics_port = free_port()?;
    let file = dir.join(format!("sluice-{tag}.toml"));
    let log = dir.join(format!("sluice-{tag}.log"));
    let cache_section = match cache {
        Some(max_memory) => {
            let backend = match redis {
                Some(port) => format!("backend = \"redis\"\nredis_url = \"redis://127.0.0.1:{port}\"\n"),
                None => String::new(),
            };
            format!("[cache]\nenabled = true\nttl = \"{TTL}\"\nmax_memory = \"{max_memory}\"\n{backend}")
        }
        None => "[cache]\nenabled = false\n".to_string(),
    };
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n\n\
         [pool]\nmode = \"transaction\"\nsize = {POOL}\n\n\
         [databases.{DB}]\nprimary = \"127.0.0.1:{primary}\"\ndbname = \"postgres\"\n\n\
         {cache_section}"
    );
    let proc = spawn_sluice(name, port, &file, &log, &text)?;
    // The metrics endpoint starts after the client listener: wait for it too.
    wait_metrics(metrics_port)?;
    Ok(Sluice { proc, metrics_port })
}

/// The value of the sample of metric `name` whose labels contain every one of `labels`
/// (`key="value"` strings).
fn metric(text: &str, name: &str, labels: &[&str]) -> Result<u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
                && labels.iter().all(|want| l.contains(want))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .ok_or_else(|| format!("no {name}{{{}}} in /metrics", labels.join(",")))
}

/// The cache's counters (and the transactions it answered) at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    hits: u64,
    misses: u64,
    bytes: u64,
    cache_tx: u64,
    primary_tx: u64,
}

impl Counters {
    fn read(s: &Sluice) -> Result<Counters> {
        let text = scrape(s.metrics_port)?;
        let db = format!("database=\"{DB}\"");
        Ok(Counters {
            hits: metric(&text, "sluice_cache_hits_total", &[])?,
            misses: metric(&text, "sluice_cache_misses_total", &[])?,
            bytes: metric(&text, "sluice_cache_bytes", &[])?,
            cache_tx: metric(&text, "sluice_transactions_total", &[&db, "route=\"cache\""])?,
            primary_tx: metric(&text, "sluice_transactions_total", &[&db, "route=\"primary\""])?,
        })
    }

    /// Growth since `before` (bytes: the value now).
    fn since(self, before: Counters) -> Counters {
        Counters {
            hits: self.hits.saturating_sub(before.hits),
            misses: self.misses.saturating_sub(before.misses),
            bytes: self.bytes,
            cache_tx: self.cache_tx.saturating_sub(before.cache_tx),
            primary_tx: self.primary_tx.saturating_sub(before.primary_tx),
        }
    }

    fn hit_ratio(self) -> Option<f64> {
        let total = self.hits + self.misses;
        (total > 0).then(|| self.hits as f64 / total as f64)
    }
}

/// A redis-server without persistence on a free port, killed with the benchmark.
fn start_redis(dir: &Path) -> Result<Proc> {
    let port = free_port()?;
    let log = dir.join("redis.log");
    let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let mut cmd = Command::new("redis-server");
    let child = die_with_parent(&mut cmd)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting redis-server (is it installed?): {e}"))?;
    Proc { name: "redis-server", port, child, log }.wait_listening()
}

/// Waits until a sluice's Redis backend is up (`sluice_cache_backend_up 1`), at most 20 s.
fn wait_backend_up(s: &Sluice) -> Result<()> {
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if scrape(s.metrics_port).and_then(|t| metric(&t, "sluice_cache_backend_up", &[])).is_ok_and(|v| v == 1) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("the redis cache backend never came up".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `psql -X -A -t -q` over TCP (through a pooler or straight to Postgres), one statement.
fn psql_tcp(bins: &PgBinaries, port: u16, db: &str, sql: &str) -> Result<String> {
    let out = Command::new(bins.tool("psql"))
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres"])
        .args(["-p", &port.to_string(), "-d", db, "-c", sql])
        .env_remove("PGPASSWORD")
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("psql: {e}"))?;
    if !out.status.success() {
        return Err(format!("psql -p {port} -c {sql:?}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Answers through the cache-on sluice must equal the primary's: first read (a miss), the
/// same read again (a hit, checked in the counters), and after an UPDATE through sluice (the
/// entry dropped at commit). Returns a one-line summary.
fn check_results(bins: &PgBinaries, primary: u16, on: &Sluice) -> Result<String> {
    let dash = |k: u64| {
        format!("select count(*), sum(v), max(v) from t where k between {} and {}", k * 1000, k * 1000 + 2000)
    };
    let pk = |k: u64| format!("select v from t where k = {k}");
    let before = Counters::read(on)?;
    let mut compared = 0;
    for k in [0, 7, 42, 99] {
        for sql in [dash(k), pk(k)] {
            let want = psql_tcp(bins, primary, "postgres", &sql)?;
            for attempt in ["first", "second"] {
                let got = psql_tcp(bins, on.proc.port, DB, &sql)?;
                if got != want {
                    return Err(format!("wrong result through the cache ({attempt} read of {sql:?}): {got:?}, primary says {want:?}"));
                }
                compared += 1;
            }
        }
    }
    let mid = Counters::read(on)?.since(before);
    if mid.hits < 8 {
        return Err(format!("expected 8 hits from 8 repeated reads through the cache, counted {mid:?}"));
    }
    // A write through sluice drops the entries over t at commit.
    let row = 42 * 1000 + 5;
    let mut after_write = 0;
    for delta in ["+ 1", "- 1"] {
        psql_tcp(bins, on.proc.port, DB, &format!("update t set v = v {delta} where k = {row}"))?;
        for sql in [dash(42), pk(row)] {
            let want = psql_tcp(bins, primary, "postgres", &sql)?;
            for _ in 0..2 {
                let got = psql_tcp(bins, on.proc.port, DB, &sql)?;
                if got != want {
                    return Err(format!("stale result through the cache after `update ... v {delta}`: {sql:?} gave {got:?}, primary says {want:?}"));
                }
                after_write += 1;
            }
        }
    }
    let all = Counters::read(on)?.since(before);
    Ok(format!(
        "{} answers through the cache-on sluice equal the primary's ({compared} before and {after_write} after \
         UPDATEs through sluice); cache hits {}, misses {}",
        compared + after_write,
        all.hits,
        all.misses
    ))
}

/// One measured run.
struct Run {
    target: Target,
    o: Outcome,
    /// Cache counters over the run (cache-on runs).
    cache: Option<Counters>,
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = v.collect();
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn write_script(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(path)
}

/// What the memory check saw.
struct MemoryRun {
    o: Outcome,
    cache: Counters,
    max_bytes: u64,
    samples: usize,
    rss_before: Option<u64>,
    rss_max: Option<u64>,
    rss_after: Option<u64>,
}

fn run(secs: u64) -> Result<()> {
    let started = Instant::now();
    // bench_main's default is 15 s per run; this benchmark's is 10 s.
    let args: Vec<String> = std::env::args().collect();
    let secs = if args.iter().any(|a| a == "--duration" || a == "--quick") { secs } else { DEFAULT_SECS };
    catch_signals();
    raise_fd_limit();
    let load_start = loadavg();
    let bins = PgBinaries::locate().map_err(|e| e.to_string())?;
    eprintln!("starting a Postgres primary, loading t ({ROWS} rows) ...");
    let opts = ClusterOptions {
        settings: vec![("shared_buffers".into(), "256MB".into())],
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(&bins, &opts).map_err(|e| e.to_string())?;
    let pport = cluster.primary.port();
    cluster
        .primary
        .psql(
            "postgres",
            &format!(
                "create table t (k int primary key, v int);\n\
                 insert into t select g, (random() * 1000000)::int from generate_series(0, {}) g;\n\
                 vacuum analyze t;",
                ROWS - 1
            ),
        )
        .map_err(|e| e.to_string())?;

    let work = tempfile::Builder::new()
        .prefix("sluice-bench-")
        .tempdir_in("/tmp")
        .map_err(|e| format!("temp dir: {e}"))?;
    let wdir = work.path();
    std::fs::set_permissions(wdir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).ok();
    let pk_f = write_script(wdir, "pk.sql", PK_SQL)?.display().to_string();
    let dash_f = write_script(wdir, "dash.sql", DASH_SQL)?.display().to_string();
    let wide_f = write_script(wdir, "wide.sql", WIDE_SQL)?.display().to_string();

    let redis = start_redis(wdir)?;
    let mut off = start_sluice(wdir, pport, "sluice (cache off)", "off", None, None)?;
    let mut on = start_sluice(wdir, pport, "sluice (cache on)", "on", Some("256MB"), None)?;
    let mut small = start_sluice(wdir, pport, "sluice (cache on, 4MB)", "small", Some(SMALL_MEMORY), None)?;
    let mut remote = start_sluice(wdir, pport, "sluice (cache on, redis)", "redis", Some("256MB"), Some(redis.port))?;
    wait_backend_up(&remote)?;

    eprintln!("checking answers through the cache against the primary ...");
    let check = check_results(&bins, pport, &on)?;
    let check_redis = check_results(&bins, pport, &remote)?;

    let clients = CLIENTS.to_string();
    let common: Vec<&str> = vec!["-n", "-c", &clients];
    let scenarios: [(&str, &str); 2] = [("hot dashboard read", &dash_f), ("hot primary-key read", &pk_f)];
    let protocols: [(&str, &[&str]); 2] = [("simple", &[]), ("prepared", &["-M", "prepared"])];
    let args_of = |script: &str, proto: &[&str]| -> Vec<String> {
        common.iter().copied().chain(proto.iter().copied()).chain(["-f", script]).map(str::to_owned).collect()
    };
    // The Redis backend runs in the hot primary-key scenario only.
    let targets_of = |name: &str| -> &'static [Target] {
        if name == "hot primary-key read" {
            &[Target::Off, Target::On, Target::Redis, Target::Direct]
        } else {
            &[Target::Off, Target::On, Target::Direct]
        }
    };

    // Warm-up, not reported: Postgres' buffers, the pools' server connections, the cache's
    // entries (100 per scenario and protocol) and sluice's classification caches.
    let warm = secs.clamp(2, 3);
    for (name, script) in &scenarios {
        for (proto, pargs) in &protocols {
            let args = args_of(script, pargs);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            for &target in targets_of(name) {
                check_interrupted()?;
                eprintln!("warm-up: {warm} s {name} ({proto}), {} ...", target.label());
                let (port, db) = match target {
                    Target::Off => (off.proc.port, DB),
                    Target::On => (on.proc.port, DB),
                    Target::Redis => (remote.proc.port, DB),
                    Target::Direct => (pport, "postgres"),
                };
                pgbench(&bins, port, db, &args, warm, wdir, None, &mut || {})?;
            }
        }
    }

    let mut results: Vec<(&str, &str, Vec<Run>)> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    for (name, script) in &scenarios {
        for (proto, pargs) in &protocols {
            let args = args_of(script, pargs);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut runs = Vec::new();
            for rep in 0..REPEATS {
                for &target in targets_of(name) {
                    check_interrupted()?;
                    for s in [&mut off, &mut on, &mut remote] {
                        if !s.proc.is_running() {
                            return Err(format!("{} died:\n{}", s.proc.name, tail(&s.proc.log, 20)));
                        }
                    }
                    eprintln!("{name} ({proto}), {}, run {} of {REPEATS} ({secs} s) ...", target.label(), rep + 1);
                    let (o, cache) = match target {
                        Target::Direct => (pgbench(&bins, pport, "postgres", &args, secs, wdir, None, &mut || {})?, None),
                        Target::Off => (pgbench(&bins, off.proc.port, DB, &args, secs, wdir, Some(&off.proc), &mut || {})?, None),
                        Target::On | Target::Redis => {
                            let s = if target == Target::On { &on } else { &remote };
                            let before = Counters::read(s)?;
                            let o = pgbench(&bins, s.proc.port, DB, &args, secs, wdir, Some(&s.proc), &mut || {})?;
                            (o, Some(Counters::read(s)?.since(before)))
                        }
                    };
                    if let Some(e) = &o.first_error {
                        notes.push(format!("{name} ({proto}), {}: {e}", target.label()));
                    }
                    runs.push(Run { target, o, cache });
                }
            }
            results.push((name, proto, runs));
        }
    }

    // Memory bound: many distinct keys into a 4MB cache.
    eprintln!("memory check: warm-up of the 4MB cache sluice ...");
    {
        let args = args_of(&pk_f, &[]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        pgbench(&bins, small.proc.port, DB, &args, 2, wdir, None, &mut || {})?;
    }
    let mut memory_runs = Vec::new();
    {
        let args = args_of(&wide_f, &[]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        for rep in 0..REPEATS {
            check_interrupted()?;
            if !small.proc.is_running() {
                return Err(format!("{} died:\n{}", small.proc.name, tail(&small.proc.log, 20)));
            }
            eprintln!("memory check: {} distinct keys, max_memory {SMALL_MEMORY}, run {} of {REPEATS} ({secs} s) ...", ROWS, rep + 1);
            let rss_before = small.proc.rss_kib();
            let before = Counters::read(&small)?;
            let mut max_bytes = before.bytes;
            let mut rss_max = rss_before;
            let mut samples = 0;
            let mut sample_err = None;
            let (metrics_port, pid_proc) = (small.metrics_port, &small.proc);
            let o = pgbench(&bins, small.proc.port, DB, &args, secs, wdir, Some(&small.proc), &mut || {
                match scrape(metrics_port).and_then(|t| metric(&t, "sluice_cache_bytes", &[])) {
                    Ok(b) => {
                        max_bytes = max_bytes.max(b);
                        samples += 1;
                    }
                    Err(e) => {
                        sample_err.get_or_insert(e);
                    }
                }
                rss_max = rss_max.max(pid_proc.rss_kib());
            })?;
            if let Some(e) = sample_err {
                notes.push(format!("memory check: sampling /metrics failed: {e}"));
            }
            let after = Counters::read(&small)?;
            max_bytes = max_bytes.max(after.bytes);
            if let Some(e) = &o.first_error {
                notes.push(format!("memory check: {e}"));
            }
            memory_runs.push(MemoryRun {
                o,
                cache: after.since(before),
                max_bytes,
                samples,
                rss_before,
                rss_max,
                rss_after: small.proc.rss_kib(),
            });
        }
    }
    let show_cache = psql_tcp(&bins, small.proc.port, "sluice", "SHOW CACHE").unwrap_or_else(|e| format!("({e})"));
    let on_rss = on.proc.rss_kib();
    let elapsed = started.elapsed();
    let load_end = loadavg();

    println!("## Result cache: cache on vs cache off vs direct\n");
    println!("Machine: {}", machine());
    println!("Software: {}; sluice {} (release build)", version(&bins.tool("postgres")), env!("CARGO_PKG_VERSION"));
    println!(
        "Setup: everything on this one machine (pgbench, Postgres and sluice share the cores); pgbench -c {CLIENTS} -j 2 -n, \
         custom scripts, {secs} s per run, runs alternating cache off / cache on / direct, {REPEATS} runs each; \
         table t (k int primary key, v int), {ROWS} rows; sluice in transaction mode, pool size {POOL}; \
         cache on: ttl {TTL}, max_memory 256MB; direct = pgbench straight to the primary. \
         Load average {load_start} at start, {load_end} at the end.\n"
    );
    println!("Result check: {check}; through the Redis backend: {check_redis}.\n");
    println!("| scenario | protocol | direct tps | cache off tps | cache on tps | on/direct | on/off | hit ratio (on) | p99 ms (on) | errors (direct/off/on) |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut verdict_ratios: Vec<(String, f64)> = Vec::new();
    let mut total_errors = 0;
    for (name, proto, runs) in &results {
        let tps = |t: Target| mean(runs.iter().filter(|r| r.target == t).map(|r| r.o.tps));
        let errs = |t: Target| runs.iter().filter(|r| r.target == t).map(|r| r.o.errors).sum::<u64>();
        let (d, f, n) = (tps(Target::Direct), tps(Target::Off), tps(Target::On));
        let c = runs.iter().filter(|r| r.target == Target::On).filter_map(|r| r.cache).fold(Counters::default(), |a, c| Counters {
            hits: a.hits + c.hits,
            misses: a.misses + c.misses,
            ..a
        });
        let p99 = runs
            .iter()
            .filter(|r| r.target == Target::On)
            .map(|r| format!("{:.2}", r.o.p99_ms))
            .collect::<Vec<_>>()
            .join(", ");
        total_errors += errs(Target::Direct) + errs(Target::Off) + errs(Target::On);
        println!(
            "| {name} | {proto} | {d:.0} | {f:.0} | {n:.0} | {:.2} | {:.2} | {} | {p99} | {}/{}/{} |",
            ratio(n, d),
            ratio(n, f),
            c.hit_ratio().map(|h| format!("{:.2} %", h * 100.0)).unwrap_or_else(|| "-".into()),
            errs(Target::Direct),
            errs(Target::Off),
            errs(Target::On),
        );
        verdict_ratios.push((format!("{name} ({proto})"), ratio(n, d)));
    }

    println!(
        "\n### Hot primary-key read by cache backend\n\nThe same runs: `select v from t where k = :k`, 100 distinct keys, \
         every read after the warm-up a hit; memory = the cache-on sluice above, redis = `backend = \"redis\"` (a \
         local redis-server, one round trip per hit), direct = pgbench straight to the primary.\n"
    );
    println!("| protocol | backend | tps | × direct | hit ratio | p99 ms | errors |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    let mut redis_ratios: Vec<(String, f64)> = Vec::new();
    for (name, proto, runs) in results.iter().filter(|(name, _, _)| *name == "hot primary-key read") {
        let tps = |t: Target| mean(runs.iter().filter(|r| r.target == t).map(|r| r.o.tps));
        let d = tps(Target::Direct);
        for (label, t) in [("memory", Target::On), ("redis", Target::Redis), ("direct", Target::Direct), ("cache off", Target::Off)] {
            let of = || runs.iter().filter(move |r| r.target == t);
            let c = of().filter_map(|r| r.cache).fold(Counters::default(), |a, c| Counters {
                hits: a.hits + c.hits,
                misses: a.misses + c.misses,
                ..a
            });
            let p99 = of().map(|r| format!("{:.2}", r.o.p99_ms)).collect::<Vec<_>>().join(", ");
            println!(
                "| {proto} | {label} | {:.0} | {:.2} | {} | {p99} | {} |",
                tps(t),
                ratio(tps(t), d),
                c.hit_ratio().map(|h| format!("{:.2} %", h * 100.0)).unwrap_or_else(|| "-".into()),
                of().map(|r| r.o.errors).sum::<u64>(),
            );
        }
        total_errors += runs.iter().filter(|r| r.target == Target::Redis).map(|r| r.o.errors).sum::<u64>();
        redis_ratios.push((format!("{name} ({proto})"), ratio(tps(Target::Redis), d)));
    }
    let backend_errors = scrape(remote.metrics_port)
        .and_then(|t| metric(&t, "sluice_errors_total", &["kind=\"cache_backend\""]))
        .map(|n| n.to_string())
        .unwrap_or_else(|e| format!("({e})"));
    println!("\nRedis backend failures or timeouts during the benchmark (`sluice_errors_total{{kind=\"cache_backend\"}}`): {backend_errors}.");

    println!(
        "\nPer run (in the order run): tps, p99, errors, sluice CPU per 1000 transactions; for cache on, \
         hits / misses and transactions answered from the cache (`sluice_transactions_total{{route=\"cache\"}}`) \
         and run on the primary, from `/metrics` before and after the run:\n"
    );
    for (name, proto, runs) in &results {
        for r in runs {
            let mut line = format!(
                "- {name} ({proto}), {}: {:.0} tps, p99 {:.2} ms, {} errors",
                r.target.label(),
                r.o.tps,
                r.o.p99_ms,
                r.o.errors
            );
            if r.target != Target::Direct {
                line.push_str(&format!(", sluice CPU {} ms / 1000 tx", fmt_opt(r.o.cpu_ms_per_1000, 1)));
            }
            if let Some(c) = r.cache {
                line.push_str(&format!(
                    "; hits {}, misses {} (hit ratio {}), cache tx {} of {} pgbench tx, primary tx {}",
                    c.hits,
                    c.misses,
                    c.hit_ratio().map(|h| format!("{:.3} %", h * 100.0)).unwrap_or_else(|| "-".into()),
                    c.cache_tx,
                    r.o.txns,
                    c.primary_tx
                ));
            }
            println!("{line}");
        }
    }

    println!(
        "\nMemory bound: `select v, repeat('x', 500) from t where k = :k`, k random over {ROWS} keys, through a \
         sluice with max_memory {SMALL_MEMORY} ({SMALL_MEMORY_BYTES} bytes), pgbench -c {CLIENTS} -j 2, {secs} s per run; \
         `sluice_cache_bytes` sampled every 200 ms during the run (each scrape lets the store finish its pending \
         evictions first), RSS from /proc/PID/status:\n"
    );
    let mut memory_ok = true;
    for (i, m) in memory_runs.iter().enumerate() {
        memory_ok &= m.max_bytes <= SMALL_MEMORY_BYTES && m.samples > 0;
        println!(
            "- run {}: {:.0} tps, {} errors, hits {}, misses {} (hit ratio {}); sluice_cache_bytes max {} over {} samples, \
             {} at the end; RSS {} KiB before, {} KiB max, {} KiB after",
            i + 1,
            m.o.tps,
            m.o.errors,
            m.cache.hits,
            m.cache.misses,
            m.cache.hit_ratio().map(|h| format!("{:.2} %", h * 100.0)).unwrap_or_else(|| "-".into()),
            m.max_bytes,
            m.samples,
            m.cache.bytes,
            fmt_opt(m.rss_before.map(|v| v as f64), 0),
            fmt_opt(m.rss_max.map(|v| v as f64), 0),
            fmt_opt(m.rss_after.map(|v| v as f64), 0),
        );
        total_errors += m.o.errors;
    }
    println!("- SHOW CACHE afterwards (entries|bytes|hits|misses|hit_ratio|invalidations): {show_cache}");
    println!("- RSS of the cache-on (256MB) sluice at the end: {} KiB", fmt_opt(on_rss.map(|v| v as f64), 0));

    println!();
    for (label, r) in &verdict_ratios {
        let (want, what) = if label.starts_with("hot dashboard") { (5.0, "5") } else { (1.3, "1.3") };
        println!(
            "Target, cache-on tps ≥ {what} × direct, {label}: {r:.2} — {}.",
            if *r >= want { "met" } else { "NOT met" }
        );
    }
    for (label, r) in &redis_ratios {
        println!(
            "Target, Redis-backend cache-on tps ≥ 1.5 × direct, {label}: {r:.2} — {}.",
            if *r >= 1.5 { "met" } else { "NOT met" }
        );
    }
    let max_seen = memory_runs.iter().map(|m| m.max_bytes).max().unwrap_or(0);
    println!(
        "Target, sluice_cache_bytes ≤ max_memory ({SMALL_MEMORY_BYTES}) under {ROWS} distinct keys: at most {max_seen} seen — {}.",
        if memory_ok { "met" } else { "NOT met" }
    );
    println!(
        "Errors: {total_errors} in all runs{}.",
        if total_errors == 0 { "" } else { " (see below)" }
    );
    if !notes.is_empty() {
        println!("\nErrors reported by pgbench (first line per run):");
        for n in &notes {
            println!("- {n}");
        }
    }
    println!("\n(benchmark took {:.0} s)", elapsed.as_secs_f64());
    drop(small);
    drop(remote);
    drop(redis);
    drop(on);
    drop(off);
    drop(cluster);
    Ok(())
}
