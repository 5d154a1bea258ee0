//! `cargo bench --bench routing [-- --quick | --duration SECS]`
//!
//! What read/write routing costs. Starts a Postgres primary with a streaming replica (sluice's
//! own `sluice::cluster`), loads `pgbench -i -s 10` and runs two release builds of sluice side by
//! side, both in transaction mode with a pool of 20 and the replica configured: one with
//! `routing.read_write_split = false`, one with `true` (read-your-writes `session`, lag polled
//! every 100 ms). Then, for each scenario, pgbench `-c 16 -j 2` runs against them alternately
//! (off, on, off, on):
//!
//! - A, read-only: `SELECT abalance FROM pgbench_accounts WHERE aid = :aid`;
//! - B, read-heavy with writes: that read at weight 9, an `UPDATE ... WHERE aid = :aid` at 1;
//! - A2, A with `-M prepared`: A and B use the simple protocol, where every query text is new
//!   (the aid is a literal) and has to be parsed to be routed; A2 sends one text, classified once.
//!
//! Where transactions ran comes from sluice's own `sluice_transactions_total{database,route}`
//! (scraped from `/metrics` before and after each run) and is cross-checked with the replica's
//! `pg_stat_database.xact_commit`. Prints a markdown table (tps, p99, errors, share of
//! transactions per route, on/off tps ratio), per-run details and the two targets.
//!
//! Needs the Postgres server binaries (pgbench included). Every process started here is killed
//! when the benchmark ends, also on a panic; the Postgres servers also die with this process (see
//! `sluice::cluster`). All ports are free ports picked at start.
//!
//! The benchmark only runs when cargo passes `--bench` (that is, under `cargo bench`); a plain
//! `cargo test --all-targets` builds it and runs nothing.

mod support;

use sluice::cluster::{Cluster, ClusterOptions, PgBinaries};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

/// Server connections per pool (per server).
const POOL: usize = 20;
/// pgbench scale factor.
const SCALE: u32 = 10;
/// pgbench clients.
const CLIENTS: u32 = 16;
/// The database name clients use on sluice (mapped to `postgres` on the servers).
const DB: &str = "bench";
/// Runs per routing setting and scenario (alternating off, on, off, on).
const REPEATS: usize = 2;
/// Wait after each run before reading the replica's `pg_stat_database`: an idle Postgres
/// backend flushes its pending statistics only 10 s after it went idle (PGSTAT_IDLE_INTERVAL),
/// and sluice's pooled server connections stay open and idle.
const STATS_SETTLE: Duration = Duration::from_secs(11);

const READ_SQL: &str = "\\set aid random(1, 100000 * :scale)\n\
                        SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n";
const WRITE_SQL: &str = "\\set aid random(1, 100000 * :scale)\n\
                         UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;\n";

fn main() {
    bench_main("routing", run);
}

/// A running sluice with its metrics port.
struct Sluice {
    proc: Proc,
    metrics_port: u16,
    split: bool,
}

impl Sluice {
    fn label(&self) -> &'static str {
        if self.split {
            "on"
        } else {
            "off"
        }
    }
}

/// Starts the release build of sluice in front of `primary` and `replica` (transaction mode,
/// pool [`POOL`], trust), with read/write routing on or off.
fn start_sluice(dir: &Path, primary: u16, replica: u16, split: bool) -> Result<Sluice> {
    let port = free_port()?;
    let metrics_port = free_port()?;
    let tag = if split { "on" } else { "off" };
    let file = dir.join(format!("sluice-{tag}.toml"));
    let log = dir.join(format!("sluice-{tag}.log"));
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n\n\
         [pool]\nmode = \"transaction\"\nsize = {POOL}\n\n\
         [databases.{DB}]\nprimary = \"127.0.0.1:{primary}\"\nreplicas = [\"127.0.0.1:{replica}\"]\n\
         dbname = \"postgres\"\n\n\
         [routing]\nread_write_split = {split}\nread_your_writes = \"session\"\nlag_check_interval = \"100ms\"\n"
    );
    let proc = spawn_sluice(if split { "sluice (routing on)" } else { "sluice (routing off)" }, port, &file, &log, &text)?;
    // The metrics endpoint starts after the client listener: wait for it too.
    wait_metrics(metrics_port)?;
    Ok(Sluice { proc, metrics_port, split })
}

/// Transactions per route so far, from `sluice_transactions_total{database="bench",route=..}`.
#[derive(Debug, Clone, Copy, Default)]
struct Routes {
    primary: u64,
    replica: u64,
}

impl Routes {
    fn since(self, before: Routes) -> Routes {
        Routes {
            primary: self.primary.saturating_sub(before.primary),
            replica: self.replica.saturating_sub(before.replica),
        }
    }

    fn add(self, o: Routes) -> Routes {
        Routes { primary: self.primary + o.primary, replica: self.replica + o.replica }
    }

    fn total(self) -> u64 {
        self.primary + self.replica
    }
}

fn routes(s: &Sluice) -> Result<Routes> {
    let text = scrape(s.metrics_port)?;
    let count = |route: &str| -> Result<u64> {
        let want_route = format!("route=\"{route}\"");
        let want_db = format!("database=\"{DB}\"");
        text.lines()
            .find(|l| l.starts_with("sluice_transactions_total{") && l.contains(&want_db) && l.contains(&want_route))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .ok_or_else(|| format!("no sluice_transactions_total for {want_db}, {want_route} in /metrics"))
    };
    Ok(Routes { primary: count("primary")?, replica: count("replica")? })
}

/// `xact_commit` of database `postgres` on the replica.
fn replica_commits(cluster: &Cluster) -> Result<u64> {
    let replica = cluster.replica.as_ref().ok_or("no replica")?;
    let out = replica
        .psql("postgres", "select xact_commit from pg_stat_database where datname = 'postgres'")
        .map_err(|e| e.to_string())?;
    out.trim().parse().map_err(|e| format!("xact_commit {out:?}: {e}"))
}

/// One measured run.
struct Run {
    split: bool,
    o: Outcome,
    routes: Routes,
    /// Replica `xact_commit` growth over the run (and the settle time after it), minus the
    /// background rate.
    replica_commits: i64,
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = v.collect();
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.1} %", part as f64 * 100.0 / whole as f64)
    }
}

fn run(secs: u64) -> Result<()> {
    let started = Instant::now();
    catch_signals();
    raise_fd_limit();
    let bins = PgBinaries::locate().map_err(|e| e.to_string())?;
    eprintln!("starting a Postgres primary and streaming replica, pgbench -i -s {SCALE} ...");
    let opts = ClusterOptions {
        replica: true,
        settings: vec![("shared_buffers".into(), "256MB".into())],
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(&bins, &opts).map_err(|e| e.to_string())?;
    let pport = cluster.primary.port();
    let rport = cluster.replica.as_ref().ok_or("the cluster has no replica")?.port();
    let init = Command::new(bins.tool("pgbench"))
        .args(["-i", "-q", "-s", &SCALE.to_string(), "-h", "127.0.0.1", "-p", &pport.to_string()])
        .args(["-U", "postgres", "postgres"])
        .output()
        .map_err(|e| format!("pgbench -i: {e}"))?;
    if !init.status.success() {
        return Err(format!("pgbench -i failed: {}", String::from_utf8_lossy(&init.stderr)));
    }
    cluster.wait_replica_caught_up().map_err(|e| e.to_string())?;

    let work = tempfile::Builder::new()
        .prefix("sluice-bench-")
        .tempdir_in("/tmp")
        .map_err(|e| format!("temp dir: {e}"))?;
    let wdir = work.path();
    std::fs::set_permissions(wdir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).ok();
    let read_sql = wdir.join("read.sql");
    let write_sql = wdir.join("write.sql");
    std::fs::write(&read_sql, READ_SQL).map_err(|e| format!("writing {}: {e}", read_sql.display()))?;
    std::fs::write(&write_sql, WRITE_SQL).map_err(|e| format!("writing {}: {e}", write_sql.display()))?;
    let read_f = read_sql.display().to_string();
    let read_w = format!("{}@9", read_sql.display());
    let write_w = format!("{}@1", write_sql.display());

    let mut off = start_sluice(wdir, pport, rport, false)?;
    let mut on = start_sluice(wdir, pport, rport, true)?;

    // -n: no vacuum first (it would count as primary transactions); -s: `:scale` of custom
    // scripts is 1 unless given.
    let clients = CLIENTS.to_string();
    let scale = SCALE.to_string();
    let common: Vec<&str> = vec!["-n", "-s", &scale, "-c", &clients];
    // A and B use the simple protocol, so every query text is new (the aid is a literal) and is
    // parsed to be classified. A2 is A with bind parameters: one text, classified once.
    let scenarios: [(&str, Vec<&str>); 3] = [
        ("A: read-only", [common.clone(), vec!["-f", &read_f]].concat()),
        ("B: 90 % reads, 10 % writes", [common.clone(), vec!["-f", &read_w, "-f", &write_w]].concat()),
        ("A2: read-only, -M prepared", [common.clone(), vec!["-M", "prepared", "-f", &read_f]].concat()),
    ];

    // Warm-up, not reported: both servers' caches, the replica monitor's first polls. It runs
    // A2's prepared read, so that sluice classifies that text before A's literals fill its
    // classification cache (which does not evict).
    let warm = secs.clamp(2, 5);
    for s in [&off, &on] {
        check_interrupted()?;
        eprintln!("warm-up: {warm} s read-only (-M prepared) through routing {} ...", s.label());
        pgbench(&bins, s.proc.port, DB, &scenarios[2].1, warm, wdir, None, &mut || {})?;
    }

    // Background growth of the replica's xact_commit (sluice's lag monitors, psql itself).
    check_interrupted()?;
    eprintln!("measuring the replica's background commit rate ({} s) ...", STATS_SETTLE.as_secs());
    std::thread::sleep(STATS_SETTLE);
    let bg_start = (replica_commits(&cluster)?, Instant::now());
    std::thread::sleep(STATS_SETTLE);
    let bg_rate = replica_commits(&cluster)?.saturating_sub(bg_start.0) as f64 / bg_start.1.elapsed().as_secs_f64();

    let mut results: Vec<(&str, Vec<Run>)> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    for (name, args) in &scenarios {
        let mut runs = Vec::new();
        for i in 0..2 * REPEATS {
            check_interrupted()?;
            let s: &mut Sluice = if i % 2 == 0 { &mut off } else { &mut on };
            if !s.proc.is_running() {
                return Err(format!("{} died:\n{}", s.proc.name, tail(&s.proc.log, 20)));
            }
            cluster.wait_replica_caught_up().map_err(|e| e.to_string())?;
            eprintln!("{name}, routing {}, run {} of {REPEATS} ({secs} s) ...", s.label(), i / 2 + 1);
            let commits_before = (replica_commits(&cluster)?, Instant::now());
            let before = routes(s)?;
            let o = pgbench(&bins, s.proc.port, DB, args, secs, wdir, Some(&s.proc), &mut || {})?;
            let after = routes(s)?;
            std::thread::sleep(STATS_SETTLE);
            let commits = replica_commits(&cluster)?.saturating_sub(commits_before.0) as f64;
            let background = bg_rate * commits_before.1.elapsed().as_secs_f64();
            if let Some(e) = &o.first_error {
                notes.push(format!("{name}, routing {}: {e}", s.label()));
            }
            runs.push(Run {
                split: s.split,
                o,
                routes: after.since(before),
                replica_commits: (commits - background).round() as i64,
            });
        }
        results.push((name, runs));
    }
    let elapsed = started.elapsed();

    println!("## Read/write routing: overhead and where the reads go\n");
    println!("Machine: {}", machine());
    println!(
        "Software: {}; sluice {} (release build)",
        version(&bins.tool("postgres")),
        env!("CARGO_PKG_VERSION")
    );
    println!(
        "Setup: everything on this one machine (pgbench, primary, streaming replica and sluice share the cores); \
         pgbench -c {CLIENTS} -j 2 -n, simple protocol unless -M says otherwise, scale {SCALE}, {secs} s per run, runs alternating \
         off/on/off/on; sluice in transaction mode, pool size {POOL}, replica configured in both, \
         routing.read_write_split off vs on (read_your_writes = session, lag_check_interval = 100ms).\n"
    );
    println!("| scenario | routing | tps (mean of runs) | p99 ms | errors | share on primary | share on replica | on/off tps ratio |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    let mut ratios = Vec::new();
    let mut a_primary_share_on = None;
    for (name, runs) in &results {
        let tps_of = |split: bool| mean(runs.iter().filter(|r| r.split == split).map(|r| r.o.tps));
        let ratio = if tps_of(false) > 0.0 { tps_of(true) / tps_of(false) } else { 0.0 };
        ratios.push((*name, ratio));
        for split in [false, true] {
            let mine: Vec<&Run> = runs.iter().filter(|r| r.split == split).collect();
            let each = mine.iter().map(|r| format!("{:.0}", r.o.tps)).collect::<Vec<_>>().join(", ");
            let p99 = mine.iter().map(|r| format!("{:.2}", r.o.p99_ms)).collect::<Vec<_>>().join(", ");
            let errors: u64 = mine.iter().map(|r| r.o.errors).sum();
            let routes = mine.iter().fold(Routes::default(), |acc, r| acc.add(r.routes));
            if split && name.starts_with("A:") && routes.total() > 0 {
                a_primary_share_on = Some(routes.primary as f64 / routes.total() as f64);
            }
            println!(
                "| {name} | {} | {:.0} ({each}) | {p99} | {errors} | {} | {} | {} |",
                if split { "on" } else { "off" },
                tps_of(split),
                pct(routes.primary, routes.total()),
                pct(routes.replica, routes.total()),
                if split { format!("{ratio:.2}") } else { String::new() },
            );
        }
    }

    println!("\nPer run (in the order run): tps, p99, sluice CPU per 1000 transactions, transactions per route from \
              `/metrics`, and the replica's `pg_stat_database.xact_commit` growth minus its background \
              ({bg_rate:.1}/s from the lag monitors):\n");
    for (name, runs) in &results {
        for r in runs {
            let mut line = format!(
                "- {name}, routing {}: {:.0} tps, p99 {:.2} ms, {} errors, sluice CPU {} ms / 1000 tx; \
                 primary {}, replica {} (replica xact_commit +{})",
                if r.split { "on" } else { "off" },
                r.o.tps,
                r.o.p99_ms,
                r.o.errors,
                fmt_opt(r.o.cpu_ms_per_1000, 1),
                r.routes.primary,
                r.routes.replica,
                r.replica_commits,
            );
            if let [reads, writes] = r.o.per_script[..] {
                // Writes always run on the primary; what else ran there was reads.
                let reads_on_primary = r.routes.primary.saturating_sub(writes);
                line.push_str(&format!(
                    "; pgbench: {reads} reads, {writes} writes, so {} of reads on the primary",
                    pct(reads_on_primary.min(reads), reads)
                ));
            }
            println!("{line}");
        }
    }

    let share = a_primary_share_on.unwrap_or(1.0);
    println!(
        "\nTarget, primary's share of reads with routing on in A ≈ 0: {:.2} % — {}.",
        share * 100.0,
        if share < 0.01 { "met" } else { "NOT met" }
    );
    for (name, ratio) in &ratios {
        println!(
            "Target, routing-on tps ≥ 0.95 × routing-off, {name}: {ratio:.2} — {}.",
            if *ratio >= 0.95 { "met" } else { "NOT met" }
        );
    }
    if !notes.is_empty() {
        println!("\nErrors reported by pgbench (first line per run):");
        for n in &notes {
            println!("- {n}");
        }
    }
    println!("\n(benchmark took {:.0} s)", elapsed.as_secs_f64());
    drop(on);
    drop(off);
    drop(cluster);
    Ok(())
}
