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

use sluice::cluster::{Cluster, ClusterOptions, PgBinaries};
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

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

type Result<T, E = String> = std::result::Result<T, E>;

/// Set by SIGINT / SIGTERM / SIGHUP; the waiting loops then stop with an error, so that every
/// process and directory is cleaned up by the ordinary drops.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t) };
    }
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

/// A child process (PgBouncer or sluice) that is killed when dropped.
struct Proc {
    name: &'static str,
    port: u16,
    child: Child,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Waits until something accepts TCP connections on `self.port`; fails if the process exits
    /// or nothing listens within 20 s.
    fn wait_listening(mut self) -> Result<Proc> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(self);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("{} exited ({status}):\n{}", self.name, tail(&self.log, 20)));
            }
            if Instant::now() > deadline {
                return Err(format!("{} is not listening on {}:\n{}", self.name, self.port, tail(&self.log, 20)));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// utime + stime of the whole process (all threads), in clock ticks.
    fn cpu_ticks(&self) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // Fields after "(comm) ": state is field 3, utime 14, stime 15.
        let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    }

    /// VmRSS in KiB.
    fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// The last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// uid and gid of the `postgres` OS user.
fn postgres_ids() -> Option<(u32, u32)> {
    let name = std::ffi::CString::new("postgres").ok()?;
    // SAFETY: getpwnam returns null or a pointer to static storage, read at once.
    unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        (!pw.is_null()).then(|| ((*pw).pw_uid, (*pw).pw_gid))
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn chown(path: &Path, uid: u32, gid: u32) {
    if let Ok(p) = std::ffi::CString::new(path.to_string_lossy().as_bytes()) {
        // SAFETY: p is a valid NUL-terminated path.
        unsafe { libc::chown(p.as_ptr(), uid, gid) };
    }
}

/// Raises RLIMIT_NOFILE (inherited by every child) to 65536 if allowed, else to the hard limit.
fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain struct in and out.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        let want = libc::rlimit { rlim_cur: 65536, rlim_max: lim.rlim_max.max(65536) };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

/// Makes the child die (SIGKILL) when this process does, even if it is killed before it can
/// clean up. Set after any uid change (std runs `pre_exec` hooks last), so it survives that.
fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: the hook only calls prctl, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

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
    std::fs::write(&file, text).map_err(|e| format!("writing {}: {e}", file.display()))?;
    let out = File::create(&log).map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    // Cargo builds the binary (release profile under `cargo bench`) before this benchmark.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    let child = die_with_parent(&mut cmd)
        .args(["run", "-c"])
        .arg(&file)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", env!("CARGO_BIN_EXE_sluice")))?;
    Proc { name: "sluice", port, child, log }.wait_listening()
}

/// What one pgbench run measured.
#[derive(Default, Clone)]
struct Outcome {
    tps: f64,
    avg_ms: f64,
    p99_ms: f64,
    /// Failed transactions plus aborted clients (plus 1 if pgbench failed and said neither).
    errors: u64,
    txns: u64,
    cpu_ms_per_1000: Option<f64>,
    /// The first error line pgbench printed, if any.
    first_error: Option<String>,
}

/// Runs pgbench for `secs` seconds with `-j 2` and per-transaction logs; `during` is called about
/// every 200 ms while it runs.
#[allow(clippy::too_many_arguments)]
fn pgbench(
    bins: &PgBinaries,
    port: u16,
    db: &str,
    args: &[&str],
    secs: u64,
    work: &Path,
    pooler: Option<&Proc>,
    during: &mut dyn FnMut(),
) -> Result<Outcome> {
    let logdir = work.join("pgbench-logs");
    let _ = std::fs::remove_dir_all(&logdir);
    std::fs::create_dir_all(&logdir).map_err(|e| e.to_string())?;
    let out_path = work.join("pgbench.out");
    let out = File::create(&out_path).map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let before = pooler.and_then(Proc::cpu_ticks);
    let mut cmd = Command::new(bins.tool("pgbench"));
    let mut child = die_with_parent(&mut cmd)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-j", "2"])
        .args(["-T", &secs.to_string(), "-l", "--log-prefix"])
        .arg(logdir.join("tx"))
        .args(args)
        .arg(db)
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("starting pgbench: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(secs + 120);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() > deadline || INTERRUPTED.load(Ordering::SeqCst) {
            let _ = child.kill();
            let _ = child.wait();
            check_interrupted()?;
            return Err(format!("pgbench {} hung (killed after {} s)", args.join(" "), secs + 120));
        }
        during();
        std::thread::sleep(Duration::from_millis(200));
    };
    let after = pooler.and_then(Proc::cpu_ticks);
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    let find = |key: &str| text.lines().find(|l| l.trim_start().starts_with(key));
    let mut o = Outcome {
        tps: find("tps =").and_then(|l| l.split_whitespace().nth(2)?.parse().ok()).unwrap_or(0.0),
        txns: find("number of transactions actually processed")
            .and_then(|l| l.rsplit(' ').next()?.split('/').next()?.parse().ok())
            .unwrap_or(0),
        ..Outcome::default()
    };
    let failed: u64 = find("number of failed transactions")
        .and_then(|l| l.split(':').nth(1)?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let aborted = text.lines().filter(|l| l.contains(" aborted")).count() as u64;
    o.errors = failed + aborted;
    if !status.success() && o.errors == 0 {
        o.errors = 1;
    }
    o.first_error = text
        .lines()
        .find(|l| l.contains("error") || l.contains("FATAL") || l.contains("ERROR"))
        .map(|l| l.chars().take(300).collect());
    if o.first_error.is_none() && !status.success() {
        o.first_error = Some(format!("pgbench exited with {status}"));
    }
    if o.txns == 0 {
        // Counted as an error: nothing was measured (e.g. connecting took the whole duration).
        o.errors = o.errors.max(1);
        let connect = find("initial connection time").map(str::trim).unwrap_or("no summary");
        o.first_error.get_or_insert_with(|| format!("no transaction completed ({connect})"));
    }
    // Per-transaction log lines: client_id transaction_no time(us) script_no epoch epoch_us.
    let mut lat: Vec<u64> = Vec::with_capacity(o.txns as usize);
    for entry in std::fs::read_dir(&logdir).into_iter().flatten().flatten() {
        let mut s = String::new();
        if File::open(entry.path()).and_then(|mut f| f.read_to_string(&mut s)).is_ok() {
            lat.extend(s.lines().filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok()));
        }
    }
    if !lat.is_empty() {
        lat.sort_unstable();
        o.avg_ms = lat.iter().sum::<u64>() as f64 / lat.len() as f64 / 1000.0;
        let rank = (lat.len() * 99).div_ceil(100).max(1) - 1;
        o.p99_ms = lat[rank] as f64 / 1000.0;
    }
    if let (Some(b), Some(a)) = (before, after) {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        if o.txns > 0 {
            o.cpu_ms_per_1000 = Some(a.saturating_sub(b) as f64 * 1000.0 / hz / (o.txns as f64 / 1000.0));
        }
    }
    let _ = std::fs::remove_dir_all(&logdir);
    Ok(o)
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

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| Some(l.split(':').nth(1)?.trim().to_owned())))
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next()?.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    format!("{cores} cores ({cpu}), {} GiB RAM, Linux {}", mem_kib >> 20, kernel.trim())
}

fn version(program: &Path) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(str::to_owned))
        .unwrap_or_default()
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "-".into())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs bench targets without `--bench`: do nothing then.
        println!("compare: benchmark skipped (run it with `cargo bench --bench compare`)");
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let secs: u64 = match args.iter().position(|a| a == "--duration") {
        Some(i) => match args.get(i + 1).and_then(|v| v.parse().ok()) {
            Some(s) if s > 0 => s,
            _ => {
                eprintln!("--duration needs a number of seconds");
                std::process::exit(2);
            }
        },
        None if quick => 3,
        None => 15,
    };
    if let Err(e) = run(secs) {
        eprintln!("compare: {e}");
        std::process::exit(1);
    }
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
