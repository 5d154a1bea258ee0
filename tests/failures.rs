//! End-to-end: what sluice does when servers fail and clients misbehave.

mod common;

use common::*;
use std::io::{Read, Write};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_backend_killed_mid_query_errors_only_its_client_and_the_pool_recovers() {
    let db = unique_db("terminated");
    let proxy = start_proxy(&db, "[pool]\nsize = 2").await;
    let victim = proxy.connect().await;
    let bystander = proxy.connect().await;
    let slow = tokio::spawn(async move { victim.simple_query("select pg_sleep(30)").await.map(|_| ()) });
    assert!(eventually(Duration::from_secs(5), || backends(&db, "active") == 1).await);
    let killed = on_primary(&format!(
        "select count(pg_terminate_backend(pid)) from pg_stat_activity where datname = '{db}' and query like '%pg_sleep(30)%' and pid <> pg_backend_pid()"
    ));
    assert_eq!(killed, "1");
    let err = tokio::time::timeout(Duration::from_secs(10), slow).await.expect("no hang").unwrap().unwrap_err();
    assert!(err.code().is_some() || err.is_closed(), "{err}");
    // Everyone else carries on, and new clients get fresh server connections.
    for _ in 0..5 {
        bystander.simple_query("select 1").await.unwrap();
        proxy.connect().await.simple_query("select 1").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_server_connections_killed_behind_sluice_are_not_reused() {
    let db = unique_db("killed_idle");
    let proxy = start_proxy(&db, "[pool]\nsize = 3").await;
    let c = proxy.connect().await;
    c.simple_query("select 1").await.unwrap();
    on_primary(&format!(
        "select pg_terminate_backend(pid) from pg_stat_activity where datname = '{db}' and pid <> pg_backend_pid()"
    ));
    assert!(eventually(Duration::from_secs(5), || backends(&db, "") == 0).await);
    for _ in 0..5 {
        c.simple_query("select 1").await.expect("a dead idle connection was handed out");
    }
}

fn raw_startup(port: u16, db: &str) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
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
    s.write_all(&msg).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.ends_with(&[b'Z', 0, 0, 0, 5, b'I']) {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed during login");
        seen.extend_from_slice(&buf[..n]);
    }
    s
}

/// Sends `bytes` and returns the SQLSTATE of the FATAL error sluice answers with, after which the
/// connection must be closed.
fn fatal_after(mut s: std::net::TcpStream, bytes: &[u8]) -> String {
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("sluice closes the connection (no hang)");
    assert_eq!(out.first(), Some(&b'E'), "an ErrorResponse: {out:?}");
    let body = &out[5..];
    let text = String::from_utf8_lossy(body);
    assert!(text.contains("FATAL"), "{text}");
    let at = body.windows(2).position(|w| w[0] == 0 && w[1] == b'C').map(|i| i + 2).unwrap();
    String::from_utf8_lossy(&body[at..at + 5]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_a_fatal_error_and_leaks_nothing() {
    let db = unique_db("malformed");
    let proxy = start_proxy(&db, "").await;
    let port = proxy.addr.port();
    let d = db.clone();
    tokio::task::spawn_blocking(move || {
        let connect = || {
            let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s
        };
        assert_eq!(fatal_after(connect(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), "54000");
        assert_eq!(fatal_after(connect(), &[0, 0, 0, 4]), "08P01");
        assert_eq!(fatal_after(connect(), &[0, 0, 0, 8, 0, 2, 0, 0]), "0A000");
        assert_eq!(fatal_after(connect(), &[0, 0, 0, 8, 0x12, 0x34, 0x56, 0x78]), "0A000");
        // After login: a length below 4, and one above max_message_size.
        assert_eq!(fatal_after(raw_startup(port, &d), &[b'Q', 0, 0, 0, 2]), "08P01");
        assert_eq!(fatal_after(raw_startup(port, &d), &[b'Q', 0x7f, 0xff, 0xff, 0xff]), "54000");
        // Truncated messages, then the client goes away.
        let mut s = connect();
        s.write_all(&[0, 0, 0, 40, 0, 3]).unwrap();
        drop(s);
        let mut s = raw_startup(port, &d);
        s.write_all(&[b'Q', 0, 0, 0, 100, b's', b'e']).unwrap();
        drop(s);
        // A client in the middle of a query message when it disconnects.
        let mut s = raw_startup(port, &d);
        s.write_all(b"Q\0\0\0\x20select pg_sleep(0.2)").unwrap();
        drop(s);
    })
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || backends(&db, "active") + backends(&db, "idle in transaction") == 0)
            .await,
        "a server connection was left busy"
    );
    let c = proxy.connect().await;
    c.simple_query("select 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_login_loses_its_slot() {
    let db = unique_db("stalled");
    let proxy = start_proxy(&db, "").await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut s, &[0, 0, 0, 30, 0, 3]).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(6), tokio::io::AsyncReadExt::read_to_end(&mut s, &mut out)).await;
    assert!(read.is_ok(), "client_login_timeout (2s in tests) did not close the connection");
    let shared = proxy.sluice.shared().clone();
    assert!(eventually(Duration::from_secs(2), || shared.client_count() == 0).await);
}
