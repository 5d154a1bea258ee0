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
