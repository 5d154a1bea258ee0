//! `cargo bench --bench compare [-- --quick | --duration SECS]`
//!
//! Starts a Postgres primary (sluice's own test cluster code), PgBouncer (transaction mode, pool
//! 20) and sluice (transaction mode, pool 20), then runs pgbench against direct Postgres,
//! PgBouncer and sluice in one run and prints a table: tps, average and p99 latency, errors,
//! pooler CPU time per 1000 transactions, and sluice / PgBouncer. Then the targets: 2000 clients
//! on a pool of 20, and resident memory per idle client connection.

use sluice::cluster::{Cluster, ClusterOptions, PgBinaries};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const POOL: usize = 20;

struct Pooler {
    name: &'static str,
    port: u16,
    child: Option<Child>,
}

impl Drop for Pooler {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Pooler {
    fn cpu_ticks(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    }

    fn rss_kib(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn postgres_ids() -> Option<(u32, u32)> {
    let name = std::ffi::CString::new("postgres").ok()?;
    // SAFETY: getpwnam returns a pointer to static storage or null; read at once.
    unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        (!pw.is_null()).then(|| ((*pw).pw_uid, (*pw).pw_gid))
    }
}

fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain struct in and out.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn start_pgbouncer(dir: &Path, primary_port: u16) -> Option<Pooler> {
    let bin = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"].into_iter().map(PathBuf::from).find(|p| p.exists())?;
    let port = free_port();
    let ini = dir.join("pgbouncer.ini");
    std::fs::write(
        &ini,
        format!(
            "[databases]\nbench = host=127.0.0.1 port={primary_port} dbname=postgres\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\nauth_type = trust\n\
             auth_file = {}\npool_mode = transaction\ndefault_pool_size = {POOL}\nmax_client_conn = 6000\n\
             max_db_connections = 0\nlogfile = {}\n",
            dir.join("userlist.txt").display(),
            dir.join("pgbouncer.log").display()
        ),
    )
    .ok()?;
    std::fs::write(dir.join("userlist.txt"), "\"postgres\" \"\"\n").ok()?;
    let mut cmd = Command::new(bin);
    cmd.arg(&ini).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let (uid, gid) = postgres_ids()?;
        for f in ["pgbouncer.ini", "userlist.txt"] {
            let p = std::ffi::CString::new(dir.join(f).to_string_lossy().as_bytes()).ok()?;
            // SAFETY: valid C string path.
            unsafe { libc::chown(p.as_ptr(), uid, gid) };
        }
        let d = std::ffi::CString::new(dir.to_string_lossy().as_bytes()).ok()?;
        // SAFETY: valid C string path.
        unsafe { libc::chown(d.as_ptr(), uid, gid) };
        cmd.uid(uid).gid(gid);
    }
    let child = cmd.spawn().ok()?;
    wait_port(port);
    Some(Pooler { name: "pgbouncer", port, child: Some(child) })
}

fn start_sluice(dir: &Path, primary_port: u16) -> Pooler {
    let port = free_port();
    let file = dir.join("sluice.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nmax_client_conn = 6000\n[pool]\nsize = {POOL}\n\
             [databases.bench]\nprimary = \"127.0.0.1:{primary_port}\"\ndbname = \"postgres\"\n"
        ),
    )
    .expect("write sluice.toml");
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "-c"])
        .arg(&file)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start sluice");
    wait_port(port);
    Pooler { name: "sluice", port, child: Some(child) }
}

#[derive(Default, Clone)]
struct Outcome {
    tps: f64,
    avg_ms: f64,
    p99_ms: f64,
    errors: u64,
    txns: u64,
    cpu_ms_per_1000: Option<f64>,
}

fn pgbench(bins: &PgBinaries, port: u16, db: &str, args: &[&str], secs: u64, logdir: &Path, pooler: Option<&Pooler>) -> Outcome {
    let _ = std::fs::remove_dir_all(logdir);
    std::fs::create_dir_all(logdir).expect("log dir");
    let prefix = logdir.join("tx");
    let before = pooler.and_then(Pooler::cpu_ticks);
    let out = Command::new(bins.tool("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-j", "2", "-T", &secs.to_string()])
        .args(["-l", "--log-prefix"])
        .arg(&prefix)
        .args(args)
        .arg(db)
        .output()
        .expect("pgbench runs");
    let after = pooler.and_then(Pooler::cpu_ticks);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let find = |key: &str| -> Option<&str> { text.lines().find(|l| l.trim_start().starts_with(key)) };
    let mut o = Outcome::default();
    o.tps = find("tps =").and_then(|l| l.split_whitespace().nth(2)).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    o.txns = find("number of transactions actually processed")
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    o.errors = find("number of failed transactions")
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if !out.status.success() {
        o.errors += text.lines().filter(|l| l.contains("error") || l.contains("FATAL")).count().max(1) as u64;
    }
    let mut lat: Vec<u64> = Vec::new();
    for entry in std::fs::read_dir(logdir).into_iter().flatten().flatten() {
        let mut s = String::new();
        if std::fs::File::open(entry.path()).and_then(|mut f| f.read_to_string(&mut s)).is_ok() {
            lat.extend(s.lines().filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok()));
        }
    }
    if !lat.is_empty() {
        lat.sort_unstable();
        o.avg_ms = lat.iter().sum::<u64>() as f64 / lat.len() as f64 / 1000.0;
        o.p99_ms = lat[(lat.len() * 99 / 100).min(lat.len() - 1)] as f64 / 1000.0;
    }
    if let (Some(b), Some(a)) = (before, after) {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        if o.txns > 0 {
            o.cpu_ms_per_1000 = Some((a - b) as f64 * 1000.0 / hz / (o.txns as f64 / 1000.0));
        }
    }
    o
}

/// Opens `n` client connections that complete login and stay idle; returns them.
fn idle_clients(port: u16, db: &str, n: usize) -> Vec<TcpStream> {
    let mut body = 196608u32.to_be_bytes().to_vec();
    for (k, v) in [("user", "postgres"), ("database", db)] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    msg.extend(body);
    let mut socks = Vec::with_capacity(n);
    for _ in 0..n {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { break };
        if s.write_all(&msg).is_err() {
            break;
        }
        socks.push(s);
    }
    for s in &mut socks {
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        let mut seen = Vec::new();
        let mut buf = [0u8; 2048];
        while !seen.ends_with(&[b'Z', 0, 0, 0, 5, b'I']) {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => seen.extend_from_slice(&buf[..k]),
            }
        }
    }
    socks
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned()))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<u64>().ok()))
        .unwrap_or(0);
    format!("{cores} cores ({cpu}), {} GiB RAM, Linux {}", mem / (1 << 20), kernel.trim())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let secs: u64 = args
        .iter()
        .position(|a| a == "--duration")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 3 } else { 15 });
    raise_fd_limit();
    let bins = PgBinaries::locate().unwrap_or_else(|e| panic!("{e}"));
    let opts = ClusterOptions {
        replica: false,
        max_connections: 600,
        settings: vec![("shared_buffers".into(), "256MB".into())],
    };
    let cluster = Cluster::start(&bins, &opts).unwrap_or_else(|e| panic!("{e}"));
    let pport = cluster.primary.port();
    let scale = if quick { "2" } else { "10" };
    let init = Command::new(bins.tool("pgbench"))
        .args(["-i", "-q", "-s", scale, "-h", "127.0.0.1", "-p", &pport.to_string(), "-U", "postgres", "postgres"])
        .output()
        .expect("pgbench -i");
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));

    let work = tempfile::Builder::new().prefix("sluice-bench-").tempdir_in("/tmp").expect("temp dir");
    std::fs::set_permissions(work.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).ok();
    let bouncer = start_pgbouncer(work.path(), pport);
    let sluice = start_sluice(work.path(), pport);
    if bouncer.is_none() {
        eprintln!("PgBouncer not found (apt-get install pgbouncer): its columns are empty");
    }
    let logdir = work.path().join("logs");

    println!("## sluice benchmark\n\nMachine: {}\n", machine());
    println!("pgbench -j 2, {secs} s per cell, scale {scale}; PgBouncer and sluice in transaction mode with pool size {POOL}; all on one machine.\n");
    println!("| scenario | target | tps | avg ms | p99 ms | errors | pooler CPU ms / 1000 tx |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    let scenarios: [(&str, &[&str], usize); 5] = [
        ("-S -c 16", &["-S", "-c", "16"], 16),
        ("TPC-B -c 16", &["-c", "16"], 16),
        ("-S -c 500", &["-S", "-c", "500"], 500),
        ("TPC-B -c 500", &["-c", "500"], 500),
        ("-S -C -c 16", &["-S", "-C", "-c", "16"], 16),
    ];
    let mut ratios = Vec::new();
    for (name, a, clients) in scenarios {
        let mut row = |target: &str, o: Option<Outcome>| match o {
            Some(o) => {
                let cpu = o.cpu_ms_per_1000.map(|c| format!("{c:.1}")).unwrap_or_else(|| "-".into());
                println!(
                    "| {name} | {target} | {:.0} | {:.2} | {:.2} | {} | {cpu} |",
                    o.tps, o.avg_ms, o.p99_ms, o.errors
                );
            }
            None => println!("| {name} | {target} | n/a | | | | |"),
        };
        let direct = (clients < 580).then(|| pgbench(&bins, pport, "postgres", a, secs, &logdir, None));
        row("direct", direct);
        let b = bouncer.as_ref().map(|p| pgbench(&bins, p.port, "bench", a, secs, &logdir, Some(p)));
        row("pgbouncer", b.clone());
        let s = pgbench(&bins, sluice.port, "bench", a, secs, &logdir, Some(&sluice));
        row("sluice", Some(s.clone()));
        if let Some(b) = b {
            let cpu = match (s.cpu_ms_per_1000, b.cpu_ms_per_1000) {
                (Some(x), Some(y)) if y > 0.0 => format!("{:.2}", x / y),
                _ => "-".into(),
            };
            ratios.push(format!("| {name} | {:.2} | {cpu} |", s.tps / b.tps.max(1e-9)));
        }
    }
    if !ratios.is_empty() {
        println!("\n| scenario | sluice / PgBouncer tps | sluice / PgBouncer CPU per tx |\n|---|---:|---:|");
        for r in ratios {
            println!("{r}");
        }
    }

    let many = pgbench(&bins, sluice.port, "bench", &["-S", "-c", "2000"], secs.min(10), &logdir, Some(&sluice));
    println!(
        "\nTarget, 2000 concurrent clients on pool {POOL} through sluice: {:.0} tps, {} transactions, {} errors.",
        many.tps, many.txns, many.errors
    );
    let before = sluice.rss_kib().unwrap_or(0);
    let n = 5000;
    let socks = idle_clients(sluice.port, "bench", n);
    std::thread::sleep(Duration::from_millis(300));
    let after = sluice.rss_kib().unwrap_or(0);
    println!(
        "Target, {} idle client connections: sluice resident memory {before} KiB -> {after} KiB, {:.1} KiB per connection.",
        socks.len(),
        after.saturating_sub(before) as f64 / socks.len().max(1) as f64
    );
    drop(socks);
    drop(bouncer);
    drop(sluice);
    drop(cluster);
}
