//! `cargo bench --bench death_spiral [-- --quick | --duration SECS]`
//!
//! The connection death spiral, measured: pgbench's TPC-B-like transactions against a Postgres
//! primary (`max_connections = 100`, `pgbench -i -s 10`) with a rising number of clients,
//! straight to Postgres (up to what max_connections allows) and through sluice (transaction
//! mode, a pool of 20), recording tps and p99 latency for each. Then the pool-size sweep: 1000
//! clients through sluice with pools from 2 to 90 connections (changed live with the admin
//! console's `SET pool.size`), and what SHOW ADVICE recommends after a run with the default pool.
//!
//! Prints markdown tables and writes two SVG plots, `docs/death-spiral.svg` and
//! `docs/pool-sweep.svg` (the text needs DejaVu Sans from the system; without it the plots are
//! skipped and the benchmark says so).
//!
//! Needs the Postgres server binaries (pgbench included). Every process started here is killed
//! when the benchmark ends; all ports are free ports picked at start.

mod support;

use plotters::prelude::*;
use sluice::cluster::{Cluster, ClusterOptions, PgBinaries};
use std::path::Path;
use std::process::Command;
use std::time::Instant;
use support::*;

/// pgbench scale factor.
const SCALE: u32 = 10;
/// The server's connection limit.
const MAX_CONNECTIONS: u32 = 100;
/// sluice's pool for the client-count series.
const POOL: usize = 20;
/// Client counts straight to Postgres (below max_connections, with room for psql).
const DIRECT_CLIENTS: &[u32] = &[10, 25, 50, 90];
/// Client counts through sluice.
const SLUICE_CLIENTS: &[u32] = &[10, 25, 50, 90, 200, 500, 1000, 2000];
/// Clients during the pool-size sweep.
const SWEEP_CLIENTS: u32 = 1000;
/// Pool sizes swept (at most what max_connections leaves).
const SWEEP_POOLS: &[usize] = &[2, 4, 8, 16, 32, 64, 90];
/// The database name clients use on sluice (mapped to `postgres` on the server).
const DB: &str = "bench";

fn main() {
    bench_main("death_spiral", run);
}

/// One point of a series.
#[derive(Debug, Clone, Copy)]
struct Point {
    x: f64,
    tps: f64,
    p99_ms: f64,
    errors: u64,
}

fn start_sluice(dir: &Path, primary: u16, pool: usize, tag: &str) -> Result<Proc> {
    let port = free_port()?;
    let file = dir.join(format!("sluice-{tag}.toml"));
    let log = dir.join(format!("sluice-{tag}.log"));
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nmax_client_conn = 10000\n\n\
         [pool]\nmode = \"transaction\"\nsize = {pool}\nquery_wait_timeout = \"120s\"\n\n\
         [databases.{DB}]\nprimary = \"127.0.0.1:{primary}\"\ndbname = \"postgres\"\n"
    );
    spawn_sluice("sluice", port, &file, &log, &text)
}

/// Runs one admin-console command on the sluice at `port` with psql; returns its output.
fn admin(bins: &PgBinaries, port: u16, sql: &str) -> Result<String> {
    let out = Command::new(bins.tool("psql"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-X", "-A", "-t", "-F", "|", "-c", sql, "sluice"])
        .output()
        .map_err(|e| format!("psql: {e}"))?;
    if !out.status.success() {
        return Err(format!("{sql}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn measure(bins: &PgBinaries, port: u16, db: &str, clients: u32, secs: u64, work: &Path, label: &str) -> Result<Point> {
    check_interrupted()?;
    eprintln!("{label}: {clients} clients ({secs} s) ...");
    let c = clients.to_string();
    let j = clients.min(2).to_string();
    let args = ["-n", "-c", &c, "-j", &j];
    let o = pgbench(bins, port, db, &args, secs, work, None, &mut || {})?;
    if let Some(e) = &o.first_error {
        eprintln!("  {label}, {clients} clients: {e}");
    }
    Ok(Point { x: f64::from(clients), tps: o.tps, p99_ms: o.p99_ms, errors: o.errors })
}

fn run(secs: u64) -> Result<()> {
    let started = Instant::now();
    catch_signals();
    let fds = raise_fd_limit();
    if fds < 2 * u64::from(*SLUICE_CLIENTS.last().unwrap_or(&0)) + 200 {
        return Err(format!("the open-files limit is {fds}; 2000 clients through sluice need about 4200"));
    }
    let bins = PgBinaries::locate().map_err(|e| e.to_string())?;
    eprintln!("starting a Postgres primary (max_connections = {MAX_CONNECTIONS}), pgbench -i -s {SCALE} ...");
    let opts = ClusterOptions {
        max_connections: MAX_CONNECTIONS,
        settings: vec![("shared_buffers".into(), "256MB".into())],
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(&bins, &opts).map_err(|e| e.to_string())?;
    let pport = cluster.primary.port();
    let init = Command::new(bins.tool("pgbench"))
        .args(["-i", "-q", "-s", &SCALE.to_string(), "-h", "127.0.0.1", "-p", &pport.to_string(), "-U", "postgres", "postgres"])
        .output()
        .map_err(|e| format!("pgbench -i: {e}"))?;
    if !init.status.success() {
        return Err(format!("pgbench -i failed: {}", String::from_utf8_lossy(&init.stderr)));
    }
    let work = tempfile::Builder::new().prefix("sluice-spiral-").tempdir_in("/tmp").map_err(|e| e.to_string())?;
    let wdir = work.path();
    std::fs::set_permissions(wdir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).ok();

    // Straight to Postgres first, with no pooler holding connections.
    let mut direct = Vec::new();
    for &n in DIRECT_CLIENTS {
        direct.push(measure(&bins, pport, "postgres", n, secs, wdir, "direct")?);
    }

    let sluice = start_sluice(wdir, pport, POOL, "series")?;
    let mut through = Vec::new();
    for &n in SLUICE_CLIENTS {
        through.push(measure(&bins, sluice.port, DB, n, secs, wdir, "sluice")?);
    }

    // The sweep, on the same sluice: pool sizes changed live.
    let mut sweep = Vec::new();
    for &pool in SWEEP_POOLS {
        admin(&bins, sluice.port, &format!("SET pool.size = {pool}"))?;
        let mut p = measure(&bins, sluice.port, DB, SWEEP_CLIENTS, secs, wdir, &format!("sluice, pool {pool}"))?;
        p.x = pool as f64;
        sweep.push(p);
    }
    drop(sluice);

    // SHOW ADVICE after a run of the sweep's load with the default pool, on a fresh sluice so
    // that its last minute holds only that run.
    let fresh = start_sluice(wdir, pport, POOL, "advice")?;
    let at_default = measure(&bins, fresh.port, DB, SWEEP_CLIENTS, secs.max(10), wdir, "sluice for SHOW ADVICE")?;
    let advice = admin(&bins, fresh.port, "SHOW ADVICE")?;
    drop(fresh);
    let fields: Vec<&str> = advice.lines().next().unwrap_or("").split('|').collect();
    let recommended: Option<usize> = fields.get(2).and_then(|v| v.trim().parse().ok());
    let reason = fields.last().copied().unwrap_or("").trim().to_owned();

    let elapsed = started.elapsed();
    let peak = sweep.iter().copied().fold(None::<Point>, |best, p| match best {
        Some(b) if b.tps >= p.tps => Some(b),
        _ => Some(p),
    });

    println!("## The connection death spiral\n");
    println!("Machine: {}", machine());
    println!("Software: {}; sluice {} (release build)", version(&bins.tool("postgres")), env!("CARGO_PKG_VERSION"));
    println!(
        "Setup: pgbench TPC-B-like (builtin), scale {SCALE}, -j 2, {secs} s per point, everything on this machine; \
         Postgres max_connections = {MAX_CONNECTIONS}; sluice in transaction mode, pool {POOL}.\n"
    );
    println!("| clients | direct tps | direct p99 ms | sluice tps | sluice p99 ms | errors (direct / sluice) |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for s in &through {
        let d = direct.iter().find(|d| d.x == s.x);
        println!(
            "| {} | {} | {} | {:.0} | {:.1} | {} / {} |",
            s.x,
            d.map_or("-".into(), |d| format!("{:.0}", d.tps)),
            d.map_or("-".into(), |d| format!("{:.1}", d.p99_ms)),
            s.tps,
            s.p99_ms,
            d.map_or("-".into(), |d| d.errors.to_string()),
            s.errors
        );
    }
    println!("\nDirect runs stop at {} clients: Postgres refuses connections past max_connections = {MAX_CONNECTIONS}.\n", DIRECT_CLIENTS.last().unwrap_or(&0));
    println!("### Pool-size sweep, {SWEEP_CLIENTS} clients through sluice\n");
    println!("| pool size | tps | p99 ms | errors |");
    println!("|---:|---:|---:|---:|");
    for p in &sweep {
        println!("| {} | {:.0} | {:.1} | {} |", p.x, p.tps, p.p99_ms, p.errors);
    }
    if let Some(p) = peak {
        println!("\nThroughput peaks at a pool of {} ({:.0} tps).", p.x, p.tps);
    }
    println!(
        "SHOW ADVICE after {secs} s at the default pool of {POOL} ({:.0} tps): recommended pool size {}. Its reason: \"{reason}\"",
        at_default.tps,
        recommended.map_or("-".into(), |r| r.to_string())
    );

    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    match plots(&docs, &direct, &through, &sweep, recommended) {
        Ok(()) => println!("\nPlots: docs/death-spiral.svg, docs/pool-sweep.svg"),
        Err(e) => println!("\nNo plots: {e}"),
    }
    println!("\n(benchmark took {} s)", elapsed.as_secs());
    Ok(())
}

/// Registers DejaVu Sans as plotters' sans-serif font.
fn load_font() -> Result<()> {
    let path = ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans.ttf"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or("DejaVu Sans is not installed (fonts-dejavu-core)")?;
    let bytes: &'static [u8] = Box::leak(std::fs::read(path).map_err(|e| e.to_string())?.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).map_err(|_| "the font does not load".to_owned())
}

fn plots(docs: &Path, direct: &[Point], through: &[Point], sweep: &[Point], advice: Option<usize>) -> Result<()> {
    load_font()?;
    std::fs::create_dir_all(docs).map_err(|e| e.to_string())?;
    let e = |e: &dyn std::fmt::Display| e.to_string();

    let path = docs.join("death-spiral.svg");
    let root = SVGBackend::new(&path, (900, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let (left, right) = root.split_horizontally(450);
    let max_x = through.iter().map(|p| p.x).fold(10.0, f64::max);
    for (area, title, value, y_label) in [
        (&left, "Throughput", (|p: &Point| p.tps) as fn(&Point) -> f64, "transactions/s"),
        (&right, "Latency, 99th percentile", |p: &Point| p.p99_ms, "ms"),
    ] {
        let max_y = through.iter().chain(direct).map(value).fold(1.0, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((5.0..max_x * 1.3).log_scale(), 0.0..max_y)
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .x_desc("clients")
            .y_desc(y_label)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .draw()
            .map_err(|x| e(&x))?;
        for (series, name, color) in [(direct, "direct to Postgres", RED), (through, "through sluice (pool 20)", BLUE)] {
            chart
                .draw_series(LineSeries::new(series.iter().map(|p| (p.x, value(p))), color.stroke_width(2)))
                .map_err(|x| e(&x))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
            chart.draw_series(series.iter().map(|p| Circle::new((p.x, value(p)), 3, color.filled()))).map_err(|x| e(&x))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|x| e(&x))?;
    }
    root.present().map_err(|x| e(&x))?;

    let path = docs.join("pool-sweep.svg");
    let root = SVGBackend::new(&path, (600, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let max_y = sweep.iter().map(|p| p.tps).fold(1.0, f64::max) * 1.15;
    let max_x = sweep.iter().map(|p| p.x).fold(2.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{SWEEP_CLIENTS} clients: throughput by pool size"), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((1.5..max_x * 1.3).log_scale(), 0.0..max_y)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("server connections in the pool")
        .y_desc("transactions/s")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(|x| e(&x))?;
    chart
        .draw_series(LineSeries::new(sweep.iter().map(|p| (p.x, p.tps)), BLUE.stroke_width(2)))
        .map_err(|x| e(&x))?
        .label("through sluice")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE.stroke_width(2)));
    chart.draw_series(sweep.iter().map(|p| Circle::new((p.x, p.tps), 3, BLUE.filled()))).map_err(|x| e(&x))?;
    if let Some(a) = advice {
        let a = a as f64;
        chart
            .draw_series(LineSeries::new([(a, 0.0), (a, max_y)], GREEN.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label(format!("SHOW ADVICE: {a}"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], GREEN.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}
