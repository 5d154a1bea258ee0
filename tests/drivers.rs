//! End-to-end: real Python drivers (psycopg 3, asyncpg) through sluice in transaction mode, 100
//! concurrent clients on a pool of 4: server-side prepared statements, pipelines, transactions,
//! COPY, errors and cancels. The workloads are `tests/drivers/*.py`; each checks every result
//! itself and exits non-zero on the first wrong one.
//!
//! The drivers are installed from PyPI into a virtualenv under the target directory
//! (`target/driver-venv`) on first use; when that fails (no `python3`, no index), the tests fail.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The pinned driver versions.
const REQUIREMENTS: [&str; 2] = ["psycopg[binary]==3.3.9", "asyncpg==0.32.0"];
/// The check that the venv holds exactly those versions.
const VERSION_CHECK: &str =
    "import psycopg, asyncpg; assert (psycopg.__version__, asyncpg.__version__) == ('3.3.9', '0.32.0')";
/// Longest a workload may run before it counts as hung.
const SCRIPT_LIMIT: Duration = Duration::from_secs(120);
/// Concurrent clients of each workload.
const CLIENTS: usize = 100;

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// Runs `cmd` and returns whether it succeeded and its output (stdout and stderr).
fn output_of(cmd: &mut std::process::Command) -> (bool, String) {
    match cmd.output() {
        Ok(out) => (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        ),
        Err(e) => (false, format!("could not run {cmd:?}: {e}")),
    }
}

/// The venv's python with the drivers installed; made (once per test binary) when missing.
fn venv_python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let venv = target_dir().join("driver-venv");
        let python = venv.join("bin").join("python");
        if python.exists() && output_of(std::process::Command::new(&python).args(["-c", VERSION_CHECK])).0 {
            return python;
        }
        std::fs::create_dir_all(target_dir()).expect("create the target directory");
        let (ok, out) = output_of(std::process::Command::new("python3").args(["-m", "venv", "--clear"]).arg(&venv));
        assert!(ok, "creating the Python virtualenv {} with `python3 -m venv` failed:\n{out}", venv.display());
        let (ok, out) = output_of(
            std::process::Command::new(&python)
                .args(["-m", "pip", "install", "-q", "--disable-pip-version-check", "--timeout", "30"])
                .args(REQUIREMENTS),
        );
        assert!(
            ok,
            "pip could not install {REQUIREMENTS:?} into {} (is the package index, PyPI, reachable from this \
             machine? these tests need it):\n{out}",
            venv.display()
        );
        let (ok, out) = output_of(std::process::Command::new(&python).args(["-c", VERSION_CHECK]));
        assert!(ok, "the drivers installed into {} are not the pinned versions:\n{out}", venv.display());
        python
    })
}

/// Runs `tests/drivers/<script>` against `port`/`db` with [`CLIENTS`] clients; panics with its
/// output when it fails or hangs, returns the output otherwise.
async fn run_workload(script: &str, port: u16, db: &str) -> String {
    let python = tokio::task::spawn_blocking(venv_python).await.expect("venv setup");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("drivers").join(script);
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(&path).args(["127.0.0.1", &port.to_string(), db, &CLIENTS.to_string()]);
    for var in ["PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD", "PGSERVICE", "PGOPTIONS", "PGSSLMODE", "PGAPPNAME"] {
        cmd.env_remove(var);
    }
    cmd.env("PYTHONUNBUFFERED", "1").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("running {script}: {e}"));
    // Read the output as it comes, so that a hang still shows how far the script got.
    let (stdout, stderr) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
    let readers = [
        collect(child.stdout.take().map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>), stdout.clone()),
        collect(child.stderr.take().map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>), stderr.clone()),
    ];
    let status = match tokio::time::timeout(SCRIPT_LIMIT, child.wait()).await {
        Ok(status) => status.unwrap_or_else(|e| panic!("running {script}: {e}")),
        Err(_) => {
            let _ = child.kill().await;
            let shown = |b: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&b.lock().unwrap()).into_owned();
            panic!(
                "{script} against port {port} did not finish within {SCRIPT_LIMIT:?}\n--- stdout\n{}--- stderr\n{}",
                shown(&stdout),
                shown(&stderr)
            );
        }
    };
    for r in readers {
        let _ = r.await;
    }
    let out = std::process::Output {
        status,
        stdout: std::mem::take(&mut *stdout.lock().unwrap()),
        stderr: std::mem::take(&mut *stderr.lock().unwrap()),
    };
    let text = format!(
        "--- stdout\n{}--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{script} against port {port} (db {db}) failed ({}):\n{text}", out.status);
    println!("{script} against port {port}: passed in {:.1?}\n{text}", start.elapsed());
    text
}

/// Copies what `pipe` gives into `into` until it ends.
fn collect(
    pipe: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>,
    into: Arc<Mutex<Vec<u8>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(mut pipe) = pipe else { return };
        let mut chunk = [0u8; 4096];
        while let Ok(n) = tokio::io::AsyncReadExt::read(&mut pipe, &mut chunk).await {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    })
}

/// Sets its flag when dropped, also when the test panics, so the watcher thread ends (a runtime
/// waits for its blocking tasks when it shuts down).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Runs the workload through a sluice with a pool of 4, watching that the server never sees more
/// than 4 connections for the database.
async fn through_sluice(script: &str, prefix: &str) {
    let db = unique_db(prefix);
    // A wait far longer than any legitimate one here, so a leaked server connection fails fast.
    let proxy = start_proxy(&db, "[pool]\nsize = 4\nquery_wait_timeout = \"15s\"").await;
    let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
    let watch = {
        let (db, stop) = (db.clone(), stop.0.clone());
        tokio::task::spawn_blocking(move || {
            let mut most = 0;
            while !stop.load(Ordering::Relaxed) {
                most = most.max(backends(&db, ""));
                std::thread::sleep(Duration::from_millis(50));
            }
            most
        })
    };
    let result = run_workload(script, proxy.addr.port(), &db).await;
    drop(stop);
    let most = watch.await.unwrap();
    assert!(most <= 4, "the server saw {most} connections to {db} for a pool of 4");
    assert!(result.contains(&format!("OK: {CLIENTS} clients")), "{script} did not report its clients:\n{result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_prepared_pipelines_transactions_copy_errors_and_cancels() {
    through_sluice("psycopg_workload.py", "drivers_psycopg").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_prepared_executemany_transactions_copy_errors_and_cancels() {
    through_sluice("asyncpg_workload.py", "drivers_asyncpg").await;
}

/// The control: the same workloads straight against Postgres pass, so a failure through sluice is
/// sluice's. One after the other, to stay within the server's max_connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workloads_pass_directly_against_postgres() {
    let port = cluster().primary.port();
    for (script, prefix) in [("psycopg_workload.py", "drivers_direct_psycopg"), ("asyncpg_workload.py", "drivers_direct_asyncpg")] {
        let db = unique_db(prefix);
        run_workload(script, port, &db).await;
    }
}
