//! `cargo bench --bench compare [-- --quick | --duration SECS]`
//!
//! Starts a Postgres primary (sluice's own `sluice::cluster`), PgBouncer (transaction mode, pool
//! 20) and the release build of sluice (transaction mode, pool 20), runs pgbench against direct
//! Postgres, PgBouncer and sluice in one run and prints a markdown table: tps, average and p99
//! latency, errors, pooler CPU time per 1000 transactions, and sluice / PgBouncer tps. Then the
//! two targets: 2000 clients on a pool of 20 through sluice (no errors, at most 20 server
//! connections), and resident memory per idle, logged-in client connection.
//!
//! Needs the Postgres server binaries (pgbench included) and, for its columns, `pgbouncer`
//! (Debian: `apt-get install postgresql pgbouncer`). As root, Postgres and PgBouncer run as the
//! `postgres` OS user. Every process started here is killed when the benchmark ends, also on a
//! panic; the Postgres servers also die with this process (see `sluice::cluster`).
//!
//! The benchmark only runs when cargo passes `--bench` (that is, under `cargo bench`); a plain
//! `cargo test --all-targets` builds it and runs nothing.

mod support;

use sluice::cluster::{Cluster, ClusterOptions, PgBinaries};
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::*;

/// Server connections per pool, for PgBouncer and sluice alike.
const POOL: usize = 20;
/// `max_connections` of the Postgres server, so that direct `-c 500` fits.
const MAX_CONNECTIONS: usize = 600;
/// Postgres' default `superuser_reserved_connections`.
const RESERVED: usize = 3;
/// `max_client_conn` of both poolers.
const MAX_CLIENT_CONN: usize = 6000;
/// Clients of the first target check.
const MANY_CLIENTS: usize = 2000;
/// Idle connections of the second target check.
const IDLE_CLIENTS: usize = 5000;
/// pgbench scale factor.
const SCALE: u32 = 10;
/// The database name clients use on the poolers (mapped to `postgres` on the server).
const DB: &str = "bench";

fn pgbouncer_binary() -> Option<PathBuf> {
    ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer", "/usr/local/bin/pgbouncer"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Starts PgBouncer in `dir` (transaction mode, pool [`POOL`], trust), as `postgres` when root.
fn start_pgbouncer(bin: &Path, dir: &Path, primary_port: u16) -> Result<Proc> {
    let port = free_port()?;
    let ini = dir.join("pgbouncer.ini");
    let users = dir.join("userlist.txt");
    let log = dir.join("pgbouncer.log");
    // listen_backlog matches tokio's (sluice's) 1024; per-connection logging is off, as in sluice.
    let text = format!(
        "[databases]\n{DB} = host=127.0.0.1 port={primary_port} dbname=postgres\n\n[pgbouncer]\n\
         listen_addr = 127.0.0.1\nlisten_port = {port}\nlisten_backlog = 1024\nunix_socket_dir =\n\
         auth_type = trust\nauth_file = {}\npool_mode = transaction\ndefault_pool_size = {POOL}\n\
         min_pool_size = 0\nreserve_pool_size = 0\nmax_client_conn = {MAX_CLIENT_CONN}\n\
         max_db_connections = 0\nlog_connections = 0\nlog_disconnections = 0\nlogfile = {}\n",
        users.display(),
        log.display()
    );
    std::fs::write(&ini, text).map_err(|e| format!("writing {}: {e}", ini.display()))?;
    std::fs::write(&users, "\"postgres\" \"\"\n").map_err(|e| format!("writing {}: {e}", users.display()))?;
    let stderr = File::create(dir.join("pgbouncer.stderr")).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(bin);
    cmd.arg(&ini).stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
    if is_root() {
        // PgBouncer refuses to run as root.
        let (uid, gid) = postgres_ids().ok_or("running as root, but there is no `postgres` OS user for PgBouncer")?;
        for p in [dir, ini.as_path(), users.as_path()] {
            chown(p, uid, gid);
        }
        cmd.uid(uid).gid(gid);
    }
    let child = die_with_parent(&mut cmd).spawn().map_err(|e| format!("starting {}: {e}", bin.display()))?;
    Proc { name: "pgbouncer", port, child, log }.wait_listening()
}

/// Starts the release build of sluice (transaction mode, pool [`POOL`], trust).
fn start_sluice(dir: &Path, primary_port: u16, tag: &str) -> Result<Proc> {
    let port = free_port()?;
    let file = dir.join(format!("sluice-{tag}.toml"));
    let log = dir.join(format!("sluice-{tag}.log"));
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nmax_client_conn = {MAX_CLIENT_CONN}\n\n\
         [pool]\nmode = \"transaction\"\nsize = {POOL}\n\n\
         [databases.{DB}]\nprimary = \"127.0.0.1:{primary_port}\"\ndbname = \"postgres\"\n"
    );
    spawn_sluice("sluice", port, &file, &log, &text)
}

/// Opens `n` client connections, each sending a StartupMessage (user postgres, database `db`);
/// returns those that reached ReadyForQuery. They stay idle until dropped.
fn idle_clients(port: u16, db: &str, n: usize) -> (Vec<TcpStream>, Option<String>) {
    let mut body = 196608u32.to_be_bytes().to_vec();
    for (k, v) in [("user", "postgres"), ("database", db), ("application_name", "idle")] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    msg.extend(body);
    let mut problem = None;
    let mut socks = Vec::with_capacity(n);
    for _ in 0..n {
        if INTERRUPTED.load(Ordering::SeqCst) {
            break;
        }
        match TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| s.write_all(&msg).map(|_| s)) {
            Ok(s) => socks.push(s),
            Err(e) => {
                problem = Some(format!("connect #{}: {e}", socks.len() + 1));
                break;
            }
        }
    }
    let mut ready = Vec::with_capacity(socks.len());
    for mut s in socks {
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let ok = loop {
            if seen.ends_with(&[b'Z', 0, 0, 0, 5, b'I']) {
                break true;
            }
            match s.read(&mut buf) {
                Ok(0) => break false,
                Ok(k) => seen.extend_from_slice(&buf[..k]),
                Err(e) => {
                    problem.get_or_insert_with(|| format!("login: {e}"));
                    break false;
                }
            }
        };
        if ok {
            ready.push(s);
        } else if problem.is_none() {
            let text: String = String::from_utf8_lossy(&seen).chars().filter(|c| !c.is_control()).take(200).collect();
            problem = Some(format!("login did not reach ReadyForQuery: {text}"));
        }
    }
    (ready, problem)
}

/// Resident memory per idle connection: RSS after one warm-up login, then after `n` idle logins.
fn idle_memory(p: &Proc, n: usize) -> String {
    let (warm, _) = idle_clients(p.port, DB, 1);
    std::thread::sleep(Duration::from_millis(300));
    let before = p.rss_kib().unwrap_or(0);
    let (socks, problem) = idle_clients(p.port, DB, n);
    std::thread::sleep(Duration::from_millis(500));
    let after = p.rss_kib().unwrap_or(0);
    let per = after.saturating_sub(before) as f64 / socks.len().max(1) as f64;
    let mut line = format!(
        "{}: {} of {n} logged in, RSS {before} KiB -> {after} KiB, **{per:.1} KiB per idle connection**",
        p.name,
        socks.len()
    );
    if let Some(problem) = problem {
        line.push_str(&format!(" (first problem: {problem})"));
    }
    drop(socks);
    drop(warm);
    line
}

fn main() {
    bench_main("compare", run);
}

fn run(secs: u64) -> Result<()> {
    catch_signals();
    let nofile = raise_fd_limit();
    if nofile < (MAX_CLIENT_CONN + 1000) as u64 {
        eprintln!("warning: only {nofile} open files allowed; the large-client runs may fail");
    }
    let bins = PgBinaries::locate().map_err(|e| e.to_string())?;
    eprintln!("starting Postgres (max_connections {MAX_CONNECTIONS}) and pgbench -i -s {SCALE} ...");
    let opts = ClusterOptions {
        replica: false,
        max_connections: MAX_CONNECTIONS as u32,
        settings: vec![("shared_buffers".into(), "256MB".into())],
    };
    let cluster = Cluster::start(&bins, &opts).map_err(|e| e.to_string())?;
    let pport = cluster.primary.port();
    let init = Command::new(bins.tool("pgbench"))
        .args(["-i", "-q", "-s", &SCALE.to_string(), "-h", "127.0.0.1", "-p", &pport.to_string()])
        .args(["-U", "postgres", "postgres"])
        .output()
        .map_err(|e| format!("pgbench -i: {e}"))?;
    if !init.status.success() {
        return Err(format!("pgbench -i failed: {}", String::from_utf8_lossy(&init.stderr)));
    }

    let work = tempfile::Builder::new()
        .prefix("sluice-bench-")
        .tempdir_in("/tmp")
        .map_err(|e| format!("temp dir: {e}"))?;
    let wdir = work.path();
    std::fs::set_permissions(wdir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).ok();
    let bouncer_bin = pgbouncer_binary();
    let mut bouncer = match &bouncer_bin {
        Some(bin) => Some(start_pgbouncer(bin, wdir, pport)?),
        None => {
            eprintln!("PgBouncer not found (apt-get install pgbouncer): its rows are n/a");
            None
        }
    };
    let mut sluice = start_sluice(wdir, pport, "main")?;

    let mut notes: Vec<String> = Vec::new();
    println!("## sluice vs PgBouncer vs direct Postgres\n");
    println!("Machine: {}", machine());
    println!(
        "Software: {}; {}; sluice {} (release build)",
        version(&bins.tool("postgres")),
        bouncer_bin.as_deref().map(version).unwrap_or_else(|| "PgBouncer not installed".into()),
        env!("CARGO_PKG_VERSION"),
    );
    println!(
        "Setup: everything on this one machine; pgbench -j 2, {secs} s per run (at least 6 s with 500 clients), scale {SCALE}, simple \
         protocol unless -M says otherwise; Postgres max_connections {MAX_CONNECTIONS}; PgBouncer and sluice in transaction mode, \
         pool size {POOL}, max_client_conn {MAX_CLIENT_CONN}, trust authentication.\n"
    );
    println!("| scenario | target | tps | avg ms | p99 ms | errors | pooler CPU ms / 1000 tx | sluice / PgBouncer tps |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    let scenarios: [(&str, &[&str], usize); 6] = [
        ("select-only -c 16", &["-S", "-c", "16"], 16),
        ("TPC-B -c 16", &["-c", "16"], 16),
        ("select-only -c 500", &["-S", "-c", "500"], 500),
        ("TPC-B -c 500", &["-c", "500"], 500),
        ("select-only -C -c 16 (connect per tx)", &["-S", "-C", "-c", "16"], 16),
        // Named prepared statements in transaction mode (PgBouncer before 1.21 cannot).
        ("select-only -M prepared -c 16", &["-S", "-M", "prepared", "-c", "16"], 16),
    ];
    for (name, a, clients) in scenarios {
        check_interrupted()?;
        let mut run_one = |target: &str, port: u16, db: &str, p: Option<&Proc>| -> Result<Outcome> {
            eprintln!("pgbench {} against {target} ...", a.join(" "));
            // Opening 500 Postgres backends takes seconds on a small machine, and pgbench's -T
            // includes connecting: give those runs at least 6 s.
            let secs = if clients > 100 { secs.max(6) } else { secs };
            let o = pgbench(&bins, port, db, a, secs, wdir, p, &mut || {})?;
            if let Some(e) = &o.first_error {
                notes.push(format!("{name}, {target}: {e}"));
            }
            Ok(o)
        };
        let direct = if clients + RESERVED <= MAX_CONNECTIONS {
            Some(run_one("direct", pport, "postgres", None)?)
        } else {
            None
        };
        let b = match bouncer.as_mut() {
            Some(p) => {
                if !p.is_running() {
                    return Err(format!("PgBouncer died:\n{}", tail(&p.log, 20)));
                }
                Some(run_one("pgbouncer", p.port, DB, Some(p))?)
            }
            None => None,
        };
        if !sluice.is_running() {
            return Err(format!("sluice died:\n{}", tail(&sluice.log, 20)));
        }
        let s = run_one("sluice", sluice.port, DB, Some(&sluice))?;
        let ratio = b.as_ref().filter(|b| b.tps > 0.0).map(|b| s.tps / b.tps);
        for (target, o) in [("direct", direct), ("PgBouncer", b), ("sluice", Some(s))] {
            match o {
                Some(o) => println!(
                    "| {name} | {target} | {:.0} | {:.2} | {:.2} | {} | {} | {} |",
                    o.tps,
                    o.avg_ms,
                    o.p99_ms,
                    o.errors,
                    fmt_opt(o.cpu_ms_per_1000, 1),
                    if target == "sluice" { fmt_opt(ratio, 2) } else { String::new() },
                ),
                None => println!("| {name} | {target} | n/a | n/a | n/a | n/a | n/a | |"),
            }
        }
    }

    // Idle-connection memory of PgBouncer (fresh process) for comparison, then PgBouncer goes
    // away so that the server connection count below is sluice's alone.
    let mut memory_lines = Vec::new();
    if let (Some(bin), Some(old)) = (&bouncer_bin, bouncer.take()) {
        drop(old);
        eprintln!("{IDLE_CLIENTS} idle connections to a fresh PgBouncer ...");
        let fresh = start_pgbouncer(bin, wdir, pport)?;
        memory_lines.push(idle_memory(&fresh, IDLE_CLIENTS));
    }

    // Target 1: 2000 concurrent clients on a pool of 20.
    check_interrupted()?;
    let many_secs = secs.clamp(6, 10);
    eprintln!("pgbench -S -c {MANY_CLIENTS} against sluice ...");
    let count_sql = "select count(*) from pg_stat_activity where backend_type = 'client backend' \
                     and datname = 'postgres' and pid <> pg_backend_pid()";
    let mut max_servers = 0usize;
    let mut last_sample = Instant::now() - Duration::from_secs(1);
    let many = pgbench(
        &bins,
        sluice.port,
        DB,
        &["-S", "-c", &MANY_CLIENTS.to_string()],
        many_secs,
        wdir,
        Some(&sluice),
        &mut || {
            if last_sample.elapsed() >= Duration::from_millis(500) {
                last_sample = Instant::now();
                if let Ok(n) = cluster.primary.psql("postgres", count_sql) {
                    max_servers = max_servers.max(n.trim().parse().unwrap_or(0));
                }
            }
        },
    )?;
    if let Some(e) = &many.first_error {
        notes.push(format!("{MANY_CLIENTS} clients, sluice: {e}"));
    }
    let verdict = if many.errors == 0 && many.txns > 0 && max_servers <= POOL { "met" } else { "NOT met" };
    println!(
        "\nTarget, {MANY_CLIENTS} concurrent clients on pool {POOL} through sluice (pgbench -S -c {MANY_CLIENTS} \
         -j 2, {many_secs} s): {:.0} tps, avg {:.2} ms, p99 {:.2} ms, {} transactions, **{} errors**, at most \
         {max_servers} server connections seen — {verdict}.",
        many.tps, many.avg_ms, many.p99_ms, many.txns, many.errors
    );

    // Target 2: idle connections, on a fresh sluice so earlier runs' memory does not hide growth.
    check_interrupted()?;
    drop(sluice);
    eprintln!("{IDLE_CLIENTS} idle connections to a fresh sluice ...");
    let fresh = start_sluice(wdir, pport, "idle")?;
    memory_lines.insert(0, idle_memory(&fresh, IDLE_CLIENTS));
    println!(
        "Target, {IDLE_CLIENTS} idle client connections (logged in, then idle; fresh processes, RSS from \
         /proc/PID/status after one warm-up connection vs after {IDLE_CLIENTS} more):"
    );
    for l in &memory_lines {
        println!("- {l}");
    }
    drop(fresh);

    if !notes.is_empty() {
        println!("\nErrors reported by pgbench (first line per run):");
        for n in &notes {
            println!("- {n}");
        }
    }
    drop(cluster);
    Ok(())
}
