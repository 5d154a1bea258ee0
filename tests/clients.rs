//! End-to-end: real client programs (psql, pgbench) and the sluice command line.

mod common;

use common::*;
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_runs_queries_and_scripts_through_sluice() {
    let db = unique_db("psql");
    let proxy = start_proxy(&db, "[pool]\nsize = 2").await;
    let addr = proxy.addr;
    let out = tokio::task::spawn_blocking(move || {
        let psql = |args: &[&str]| psql(addr, &db, args);
        let one = run(&mut psql(&["-c", "select 1 + 1"]));
        let script = "create table t (id int);\nbegin;\ninsert into t select generate_series(1, 10);\ncommit;\n\
                      select count(*) from t;\n\\copy t from stdin\n11\n12\n\\.\nselect count(*) from t;\n";
        let file = std::env::temp_dir().join(format!("sluice-psql-{}.sql", std::process::id()));
        std::fs::write(&file, script).unwrap();
        let many = run(&mut psql(&["-f", file.to_str().unwrap()]));
        let _ = std::fs::remove_file(file);
        (one, many)
    })
    .await
    .unwrap();
    assert_eq!(out.0.trim(), "2");
    let lines: Vec<&str> = out.1.lines().filter(|l| !l.is_empty()).collect();
    assert!(lines.contains(&"10") && lines.contains(&"12"), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_runs_simple_extended_and_prepared_protocol_without_failures() {
    let db = unique_db("pgbench");
    let proxy = start_proxy(&db, "[pool]\nsize = 4").await;
    let addr = proxy.addr;
    tokio::task::spawn_blocking(move || {
        let pgbench = |args: &[&str]| pgbench(addr, &db, args);
        run(&mut pgbench(&["-i", "-q", "-s", "1"]));
        for mode in ["simple", "extended", "prepared"] {
            // pgbench prepares with blocking calls on its thread; with clients sharing a thread
            // that thread could wait for a server connection held by its own other clients'
            // open transactions. One thread per client keeps the test about sluice.
            let out = run(&mut pgbench(&["-c", "8", "-j", "8", "-t", "200", "-M", mode]));
            assert!(out.contains("number of failed transactions: 0"), "{mode}: {out}");
            assert!(out.contains("number of transactions actually processed: 1600/1600"), "{mode}: {out}");
        }
        let out = run(&mut pgbench(&["-c", "4", "-j", "2", "-t", "50", "-C", "-S"]));
        assert!(out.contains("actually processed: 200/200"), "{out}");
    })
    .await
    .unwrap();
}

#[test]
fn check_config_accepts_good_files_and_names_the_bad_key() {
    let sluice = env!("CARGO_BIN_EXE_sluice");
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[databases.app]\nprimary = \"127.0.0.1:5432\"\n").unwrap();
    let out = Command::new(sluice).arg("check-config").arg(&good).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    for (text, key) in [
        ("[pool]\nsize = 0\n", "pool.size"),
        ("[pool]\nsizee = 3\n", "sizee"),
        ("[server]\nlisten = \"nowhere\"\n", "server.listen"),
        ("[databases.app]\nprimary = \"127.0.0.1\"\n", "databases.app.primary"),
    ] {
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, text).unwrap();
        let out = Command::new(sluice).arg("check-config").arg(&bad).output().unwrap();
        assert!(!out.status.success());
        let msg = String::from_utf8_lossy(&out.stderr);
        assert!(msg.contains(key), "{key} not named in: {msg}");
    }
    let root = env!("CARGO_MANIFEST_DIR");
    for example in ["config/sluice.toml", "config/minimal.toml"] {
        let out = Command::new(sluice).arg("check-config").arg(format!("{root}/{example}")).output().unwrap();
        assert!(out.status.success(), "{example}: {out:?}");
    }
}

#[test]
fn sluice_run_serves_clients_and_stops_on_sigterm() {
    let db = unique_db("binary");
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let file = dir.path().join("sluice.toml");
    std::fs::write(
        &file,
        format!("[server]\nlisten = \"127.0.0.1:{port}\"\n[databases.{db}]\nprimary = \"{}\"\n", cluster().primary.addr()),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice")).args(["run", "-c"]).arg(&file).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "sluice did not start listening");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = run(Command::new(pg_tool("psql")).args(["-X", "-A", "-t", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-d", &db, "-c", "select 42"]));
    assert_eq!(out.trim(), "42");
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
