//! Plumbing shared by the pgbench benchmarks (`compare`, `routing`): child processes that are
//! killed on drop (and die with this process), free ports, signal handling, running pgbench and
//! reading its summary and per-transaction logs, and the machine / version lines of a report.
//!
//! Each benchmark includes it with `mod support;`; not every benchmark uses every item.
#![allow(dead_code)]

use sluice::cluster::PgBinaries;
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub type Result<T, E = String> = std::result::Result<T, E>;

/// Set by SIGINT / SIGTERM / SIGHUP; the waiting loops then stop with an error, so that every
/// process and directory is cleaned up by the ordinary drops.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t) };
    }
}

pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

/// A child process (a pooler) that is killed when dropped.
pub struct Proc {
    pub name: &'static str,
    pub port: u16,
    pub child: Child,
    pub log: PathBuf,
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
    pub fn wait_listening(mut self) -> Result<Proc> {
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
    pub fn cpu_ticks(&self) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // Fields after "(comm) ": state is field 3, utime 14, stime 15.
        let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    }

    /// VmRSS in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// uid and gid of the `postgres` OS user.
pub fn postgres_ids() -> Option<(u32, u32)> {
    let name = std::ffi::CString::new("postgres").ok()?;
    // SAFETY: getpwnam returns null or a pointer to static storage, read at once.
    unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        (!pw.is_null()).then(|| ((*pw).pw_uid, (*pw).pw_gid))
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn chown(path: &Path, uid: u32, gid: u32) {
    if let Ok(p) = std::ffi::CString::new(path.to_string_lossy().as_bytes()) {
        // SAFETY: p is a valid NUL-terminated path.
        unsafe { libc::chown(p.as_ptr(), uid, gid) };
    }
}

/// Raises RLIMIT_NOFILE (inherited by every child) to 65536 if allowed, else to the hard limit.
pub fn raise_fd_limit() -> u64 {
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
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: the hook only calls prctl, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

/// What one pgbench run measured.
#[derive(Default, Clone)]
pub struct Outcome {
    pub tps: f64,
    pub avg_ms: f64,
    pub p99_ms: f64,
    /// Failed transactions plus aborted clients (plus 1 if pgbench failed and said neither).
    pub errors: u64,
    pub txns: u64,
    pub cpu_ms_per_1000: Option<f64>,
    /// The first error line pgbench printed, if any.
    pub first_error: Option<String>,
    /// Completed transactions per script (`-f a.sql -f b.sql`: index 0 and 1), from the
    /// per-transaction logs.
    pub per_script: Vec<u64>,
}

/// Runs pgbench for `secs` seconds with `-j 2` and per-transaction logs; `during` is called about
/// every 200 ms while it runs.
#[allow(clippy::too_many_arguments)]
pub fn pgbench(
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
            for line in s.lines() {
                let mut fields = line.split_whitespace();
                let Some(us) = fields.nth(2).and_then(|t| t.parse::<u64>().ok()) else {
                    continue; // "failed" or "skipped"
                };
                lat.push(us);
                if let Some(k) = fields.next().and_then(|k| k.parse::<usize>().ok()) {
                    if o.per_script.len() <= k {
                        o.per_script.resize(k + 1, 0);
                    }
                    o.per_script[k] += 1;
                }
            }
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

/// Writes `text` to `file` and starts the release build of sluice on it (Cargo builds the binary
/// before the benchmark), logging to `log` at `warn`; returns once it listens on `port`.
pub fn spawn_sluice(name: &'static str, port: u16, file: &Path, log: &Path, text: &str) -> Result<Proc> {
    std::fs::write(file, text).map_err(|e| format!("writing {}: {e}", file.display()))?;
    let out = File::create(log).map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    let child = die_with_parent(&mut cmd)
        .args(["run", "-c"])
        .arg(file)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", env!("CARGO_BIN_EXE_sluice")))?;
    Proc { name, port, child, log: log.to_path_buf() }.wait_listening()
}

/// Waits until sluice's metrics endpoint accepts connections on `port` (it starts after the
/// client listener), at most 20 s.
pub fn wait_metrics(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("sluice's metrics endpoint is not listening on {port}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// `GET /metrics` over a plain TCP connection; the body is the Prometheus text format.
pub fn scrape(port: u16) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("metrics connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("metrics request: {e}"))?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| format!("metrics response: {e}"))?;
    if !text.starts_with("HTTP/1.1 200") && !text.starts_with("HTTP/1.0 200") {
        return Err(format!("metrics: {}", text.lines().next().unwrap_or("empty response")));
    }
    Ok(text)
}

pub fn machine() -> String {
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

pub fn version(program: &Path) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(str::to_owned))
        .unwrap_or_default()
}

pub fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "-".into())
}


/// The benchmark's entry point: runs only under `cargo bench` (cargo passes `--bench`; a plain
/// `cargo test --all-targets` runs bench targets without it), reads `--quick` (3 s runs) and
/// `--duration SECS`, and exits non-zero when `run` fails.
pub fn bench_main(name: &str, run: fn(u64) -> Result<()>) {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("{name}: benchmark skipped (run it with `cargo bench --bench {name}`)");
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
        eprintln!("{name}: {e}");
        std::process::exit(1);
    }
}
