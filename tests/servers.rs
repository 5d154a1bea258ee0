//! End-to-end: client authentication, sluice's own login to password-protected servers, and a
//! Postgres that goes away and comes back (each with its own cluster where it changes the server).

mod common;

use common::*;
use sluice::cluster::{Cluster, ClusterOptions, PgBinaries};
use std::time::Duration;

fn own_cluster() -> Cluster {
    let bins = PgBinaries::locate().unwrap_or_else(|e| panic!("{e}"));
    Cluster::start(&bins, &ClusterOptions::default()).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_log_in_with_md5_and_scram_and_wrong_passwords_get_28p01() {
    // Cleartext passwords ("password") need TLS: tests/tls.rs covers them.
    for method in ["md5", "scram-sha-256"] {
        let db = unique_db("client_auth");
        let scram = postgres_protocol::password::scram_sha_256(b"stored");
        let sections = format!(
            "[auth]\nmethod = \"{method}\"\n[[auth.users]]\nname = \"postgres\"\npassword = \"secret\"\n\
             [[auth.users]]\nname = \"scrammy\"\npassword = \"{scram}\"\n"
        );
        let proxy = start_proxy(&db, &sections).await;
        let c = proxy.connect_with("postgres", "password=secret").await.unwrap_or_else(|e| panic!("{method}: {e}"));
        c.simple_query("select 1").await.unwrap();
        let e = proxy.connect_with("postgres", "password=wrong").await.unwrap_err();
        assert_eq!(sqlstate(&e), "28P01", "{method}");
        let e = proxy.connect_with("nobody", "password=secret").await.unwrap_err();
        assert_eq!(sqlstate(&e), "28P01", "{method}: unknown users look like wrong passwords");
        // A user whose only secret is SCRAM logs in under md5 too (sluice asks for SCRAM).
        if method != "password" {
            let e = proxy.connect_with("scrammy", "password=stored").await;
            // The server has no role "scrammy"; getting past sluice's authentication is the point.
            if let Err(e) = e {
                assert_ne!(sqlstate(&e), "28P01", "{method}: {e}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_logs_in_to_scram_and_md5_servers_with_configured_passwords() {
    let cluster = own_cluster();
    let p = &cluster.primary;
    p.psql("postgres", "set password_encryption = 'scram-sha-256'; create role s login password 'spw'; create database app owner s")
        .unwrap();
    p.psql("postgres", "set password_encryption = 'md5'; create role m login password 'mpw'").unwrap();
    p.set_hba("host all s 127.0.0.1/32 scram-sha-256\nhost all m 127.0.0.1/32 md5\n").unwrap();
    for (user, pw) in [("s", "spw"), ("m", "mpw")] {
        let proxy = start_proxy_for(p.addr(), "app", "", &format!("user = \"{user}\"\npassword = \"{pw}\"")).await;
        let c = proxy.connect().await;
        let rows = c.simple_query("select current_user").await.unwrap();
        let tokio_postgres::SimpleQueryMessage::Row(r) = &rows[1] else { panic!("{rows:?}") };
        assert_eq!(r.get(0), Some(user));
    }
    // A wrong server password reaches the client as the server's error.
    let proxy = start_proxy_for(p.addr(), "app", "", "user = \"s\"\npassword = \"nope\"").await;
    let e = proxy.connect_with("postgres", "").await.unwrap_err();
    assert_eq!(sqlstate(&e), "28P01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_postgres_goes_away_and_comes_back_the_pool_reconnects() {
    let mut cluster = own_cluster();
    let proxy = start_proxy_for(cluster.primary.addr(), "postgres", "[pool]\nsize = 3\nquery_wait_timeout = \"2s\"\nserver_connect_timeout = \"1s\"", "").await;
    let idle = proxy.connect().await;
    idle.simple_query("select 1").await.unwrap();
    let c = proxy.connect().await;
    c.batch_execute("begin").await.unwrap();
    cluster.primary.stop();
    // The client inside a transaction loses it; the idle client gets an error it can retry.
    assert!(c.simple_query("select 1").await.is_err());
    let e = idle.simple_query("select 1").await.unwrap_err();
    assert!(e.code().is_some(), "an ErrorResponse, not a dropped connection: {e}");
    cluster.primary.start().unwrap();
    let mut ok = false;
    for _ in 0..50 {
        if idle.simple_query("select 1").await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "the same client session works again once Postgres is back");
    proxy.connect().await.simple_query("select 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pgbouncer_userlist_authenticates_clients_with_plain_md5_and_scram_secrets() {
    let db = unique_db("userlist");
    let dir = tempfile::tempdir().unwrap();
    let md5 = postgres_protocol::password::md5(b"md5pw", "hashed");
    let scram = postgres_protocol::password::scram_sha_256(b"scrampw");
    let file = dir.path().join("userlist.txt");
    std::fs::write(&file, format!("\"postgres\" \"plainpw\"\n\"hashed\" \"{md5}\"\n\"scrammy\" \"{scram}\"\n")).unwrap();
    for method in ["md5", "scram-sha-256"] {
        let sections = format!("[auth]\nmethod = \"{method}\"\nauth_file = \"{}\"\n", file.display());
        let proxy = start_proxy(&db, &sections).await;
        proxy.connect_with("postgres", "password=plainpw").await.unwrap().simple_query("select 1").await.unwrap();
        let e = proxy.connect_with("postgres", "password=md5pw").await.unwrap_err();
        assert_eq!(sqlstate(&e), "28P01", "{method}");
        // Past sluice's authentication the server refuses these roles (they do not exist there):
        // any error but 28P01 means sluice accepted the password.
        for (user, pw) in [("hashed", "md5pw"), ("scrammy", "scrampw")] {
            if method == "scram-sha-256" && user == "hashed" {
                // An md5 secret cannot answer SCRAM.
                continue;
            }
            match proxy.connect_with(user, &format!("password={pw}")).await {
                Ok(c) => drop(c),
                Err(e) => assert_ne!(sqlstate(&e), "28P01", "{method} {user}: {e}"),
            }
            let e = proxy.connect_with(user, "password=wrong").await.unwrap_err();
            assert_eq!(sqlstate(&e), "28P01", "{method} {user}");
        }
    }
}

/// `select current_user` through a client.
async fn current_user(c: &tokio_postgres::Client) -> String {
    let rows = c.simple_query("select current_user").await.unwrap();
    let tokio_postgres::SimpleQueryMessage::Row(r) = &rows[1] else { panic!("{rows:?}") };
    r.get(0).unwrap().to_owned()
}

/// A cluster with a SCRAM role `s` (password `spw`) owning database `app`, an MD5 role `m`
/// (password `mpw`), both required to log in with their method over TCP, and `postgres`
/// trusted over TCP (sluice's `auth_user`).
fn password_cluster() -> Cluster {
    let cluster = own_cluster();
    let p = &cluster.primary;
    p.psql("postgres", "set password_encryption = 'scram-sha-256'; create role s login password 'spw'; create database app owner s")
        .unwrap();
    p.psql("postgres", "set password_encryption = 'md5'; create role m login password 'mpw'").unwrap();
    // The lookup login of the README's example: no superuser, only a function that reads pg_shadow.
    p.psql(
        "app",
        "create role sluice_auth login; \
         create function public.sluice_lookup(u text, out usename name, out passwd text) returns record \
           language sql security definer as $$ select usename, passwd from pg_catalog.pg_shadow where usename = u $$; \
         revoke all on function public.sluice_lookup(text) from public; \
         grant execute on function public.sluice_lookup(text) to sluice_auth",
    )
    .unwrap();
    p.set_hba(
        "host all postgres 127.0.0.1/32 trust\nhost all sluice_auth 127.0.0.1/32 trust\n\
         host all s 127.0.0.1/32 scram-sha-256\nhost all m 127.0.0.1/32 md5\n",
    )
    .unwrap();
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_query_reads_secrets_from_the_server_and_sluice_logs_in_with_them_without_any_stored_password() {
    let cluster = password_cluster();
    let query = "SELECT usename, passwd FROM public.sluice_lookup($1)";
    for method in ["scram-sha-256", "md5"] {
        let sections = format!("[auth]\nmethod = \"{method}\"\nauth_query = \"{query}\"\nauth_user = \"sluice_auth\"\n");
        let proxy = start_proxy_for(cluster.primary.addr(), "app", &sections, "").await;
        // s has a SCRAM secret: sluice logs in to the server with the keys from the client's proof.
        let s = proxy.connect_with("s", "password=spw").await.unwrap_or_else(|e| panic!("{method}: {e}"));
        assert_eq!(current_user(&s).await, "s");
        // m has an MD5 secret: it answers the server's MD5 challenge (only under md5 for clients).
        if method == "md5" {
            let m = proxy.connect_with("m", "password=mpw").await.unwrap_or_else(|e| panic!("{method}: {e}"));
            assert_eq!(current_user(&m).await, "m");
        }
        for (user, pw) in [("s", "wrong"), ("m", "wrong"), ("nobody", "spw")] {
            let started = std::time::Instant::now();
            let e = proxy.connect_with(user, &format!("password={pw}")).await.unwrap_err();
            assert_eq!(sqlstate(&e), "28P01", "{method} {user}");
            assert_eq!(e.as_db_error().unwrap().message(), format!("password authentication failed for user \"{user}\""));
            assert!(started.elapsed() >= Duration::from_millis(200), "a failed login is answered after a delay");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scram_secret_copied_into_the_auth_file_lets_clients_through_to_a_scram_server() {
    let cluster = password_cluster();
    let secret = cluster.primary.psql("postgres", "select rolpassword from pg_authid where rolname = 's'").unwrap();
    let secret = secret.trim();
    assert!(secret.starts_with("SCRAM-SHA-256$"), "{secret}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("userlist.txt");
    std::fs::write(&file, format!("\"s\" \"{secret}\"\n")).unwrap();
    let sections = format!("[auth]\nmethod = \"scram-sha-256\"\nauth_file = \"{}\"\n", file.display());
    let proxy = start_proxy_for(cluster.primary.addr(), "app", &sections, "").await;
    let clients: Vec<_> = futures_util::future::join_all((0..3).map(|_| proxy.connect_with("s", "password=spw"))).await;
    for c in clients {
        assert_eq!(current_user(&c.unwrap()).await, "s");
    }
    assert_eq!(sqlstate(&proxy.connect_with("s", "password=nope").await.unwrap_err()), "28P01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_beyond_the_per_user_and_per_database_limits_get_53300_and_their_places_come_back() {
    let db = unique_db("client_limits");
    let proxy = start_proxy(&db, "[server]\nmax_client_conn_per_user = 2\n").await;
    let a = proxy.connect().await;
    let b = proxy.connect().await;
    let e = proxy.connect_with("postgres", "").await.unwrap_err();
    assert_eq!(sqlstate(&e), "53300");
    assert!(e.as_db_error().unwrap().message().contains("max_client_conn_per_user"), "{e}");
    drop(a);
    let mut back = None;
    for _ in 0..100 {
        if let Ok(c) = proxy.connect_with("postgres", "").await {
            back = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    back.expect("the place of a client that left comes back").simple_query("select 1").await.unwrap();
    drop(b);
    let db2 = unique_db("client_limits_db");
    let proxy = start_proxy(&db2, &format!("[databases.{db2}]\nmax_client_conn = 1\n")).await;
    let _only = proxy.connect().await;
    let e = proxy.connect_with("postgres", "").await.unwrap_err();
    assert_eq!(sqlstate(&e), "53300");
    assert!(e.as_db_error().unwrap().message().contains("database"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_half_open_connections_pushes_out_its_own_oldest_and_normal_clients_still_log_in() {
    use tokio::io::AsyncReadExt;
    let db = unique_db("pending_logins");
    let proxy = start_proxy(&db, "[server]\nmax_pending_logins = 50\nclient_login_timeout = \"60s\"\n").await;
    let mut flood = Vec::new();
    for _ in 0..300 {
        flood.push(tokio::net::TcpStream::connect(proxy.addr).await.unwrap());
    }
    // Normal clients log in promptly: each pushes out the longest-waiting half-open connection.
    for _ in 0..10 {
        let c = proxy.connect().await;
        c.simple_query("select 1").await.unwrap();
    }
    // The oldest half-open connection was told why and closed, long before its login timeout.
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), flood[0].read_to_end(&mut answer)).await.unwrap().unwrap();
    assert_eq!(answer.first(), Some(&b'E'), "{answer:?}");
    assert!(String::from_utf8_lossy(&answer).contains("53300"), "{answer:?}");
    assert!(proxy.sluice.shared().pending_logins.len() <= 50);
}
