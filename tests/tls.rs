//! End-to-end: TLS toward clients (psql and tokio-postgres with sslmode require and
//! verify-full, client_mode = "require", certificate reload, SCRAM-SHA-256-PLUS, cleartext
//! passwords) and toward servers (a Postgres with ssl = on behind sluice, verify-full and
//! verify-ca, require against a plaintext Postgres). Certificates are made here with rcgen.

mod common;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use sluice::cluster::{Cluster, ClusterOptions, PgBinaries, PgInstance};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A CA and a server certificate it signed for "localhost" and 127.0.0.1, as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    /// The CA certificate.
    ca: PathBuf,
    /// The server certificate.
    cert: PathBuf,
    /// The server's private key.
    key: PathBuf,
}

/// Makes a CA and a server certificate for "localhost" and 127.0.0.1 and writes `ca.crt`,
/// `server.crt`, `server.key` into a new temporary directory.
fn make_pki(ca_name: &str) -> Pki {
    pki_for(ca_name, &["localhost", "127.0.0.1"])
}

/// Like [`pki`], with a server certificate for `names`.
fn pki_for(ca_name: &str, names: &[&str]) -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki {
        ca: dir.path().join("ca.crt"),
        cert: dir.path().join("server.crt"),
        key: dir.path().join("server.key"),
        dir,
    };
    issue(ca_name, names, &pki.ca, &pki.cert, &pki.key);
    pki
}

/// Writes a fresh CA to `ca` and a server certificate for `names` and its key, signed by that
/// CA, to `cert` and `key`.
fn issue(ca_name: &str, names: &[&str], ca: &Path, cert: &Path, key: &Path) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, ca_name);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, "localhost");
    let server_cert = params.signed_by(&server_key, &ca_cert, &ca_key).unwrap();
    std::fs::write(ca, ca_cert.pem()).unwrap();
    std::fs::write(cert, server_cert.pem()).unwrap();
    std::fs::write(key, server_key.serialize_pem()).unwrap();
}

/// A `[tls]` table for sluice's client side.
fn client_tls(pki: &Pki, mode: &str) -> String {
    format!(
        "[tls]\nclient_mode = \"{mode}\"\ncert = {:?}\nkey = {:?}\n",
        pki.cert.display().to_string(),
        pki.key.display().to_string()
    )
}

/// An error's text with the server's message, which `Display` leaves out.
fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => format!("{e:?}"),
    }
}

/// Runs a command off the runtime's workers and returns its status and output.
async fn output(mut cmd: std::process::Command) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    })
    .await
    .unwrap()
}

/// psql through sluice with libpq's TLS settings in `env`.
fn psql_tls(addr: std::net::SocketAddr, db: &str, env: &[(&str, &str)], sql: &str) -> std::process::Command {
    let mut cmd = psql(addr, db, &["-c", sql]);
    for var in ["PGSSLROOTCERT", "PGCHANNELBINDING", "PGSSLCERT", "PGSSLKEY"] {
        cmd.env_remove(var);
    }
    // No ~/.postgresql/root.crt or client certificate of the machine's may take part.
    cmd.env("HOME", "/nonexistent");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// A rustls client configuration trusting `ca`.
fn rustls_client(ca: &Path) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for cert in rustls_pemfile_certs(&pem) {
        roots.add(cert).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem).collect::<Result<_, _>>().unwrap()
}

/// Connects with tokio-postgres over TLS, trusting `ca`.
async fn connect_tls(
    addr: std::net::SocketAddr,
    db: &str,
    ca: &Path,
    extra: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(rustls_client(ca));
    let conn_str = format!("host=127.0.0.1 port={} user=postgres dbname={db} sslmode=require {extra}", addr.port());
    let (client, conn) = tokio_postgres::connect(&conn_str, tls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_gets_tls_with_sslmode_require_and_verify_full() {
    let pki = make_pki("sluice test CA");
    let db = unique_db("tls_psql");
    let proxy = start_proxy(&db, &client_tls(&pki, "prefer")).await;
    let (ok, out) = output(psql_tls(proxy.addr, &db, &[("PGSSLMODE", "require")], "\\conninfo")).await;
    assert!(ok && out.contains("SSL connection"), "{out}");
    let ca = pki.ca.display().to_string();
    let verify = [("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", ca.as_str())];
    let (ok, out) = output(psql_tls(proxy.addr, &db, &verify, "\\conninfo")).await;
    assert!(ok && out.contains("SSL connection"), "{out}");
    let (ok, out) = output(psql_tls(proxy.addr, &db, &verify, "select 40 + 2")).await;
    assert!(ok && out.trim() == "42", "{out}");
    // Another CA's root does not verify sluice's certificate.
    let other = make_pki("another CA");
    let other_ca = other.ca.display().to_string();
    let wrong = [("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", other_ca.as_str())];
    let (ok, out) = output(psql_tls(proxy.addr, &db, &wrong, "select 1")).await;
    assert!(!ok && out.contains("certificate verify failed"), "{out}");
    // Plaintext is still served under "prefer".
    let (ok, out) = output(psql_tls(proxy.addr, &db, &[("PGSSLMODE", "disable")], "select 1")).await;
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mode_require_refuses_plaintext_clients_with_28000() {
    let pki = make_pki("sluice test CA");
    let db = unique_db("tls_require");
    let proxy = start_proxy(&db, &client_tls(&pki, "require")).await;
    let e = proxy.connect_with("postgres", "").await.unwrap_err();
    assert_eq!(sqlstate(&e), "28000", "{}", error_text(&e));
    assert!(error_text(&e).contains("TLS required"), "{}", error_text(&e));
    let (ok, out) = output(psql_tls(proxy.addr, &db, &[("PGSSLMODE", "disable")], "select 1")).await;
    assert!(!ok && out.contains("TLS required"), "{out}");
    // Over TLS the same client gets in.
    let c = connect_tls(proxy.addr, &db, &pki.ca, "").await.expect("TLS client is served");
    let row = c.query_one("select 1::int4", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    // TLS 1.2, the oldest version sluice speaks, is served too.
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile_certs(&std::fs::read(&pki.ca).unwrap()) {
        roots.add(cert).unwrap();
    }
    let tls12 = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn_str = format!("host=127.0.0.1 port={} user=postgres dbname={db} sslmode=require", proxy.addr.port());
    let (c, conn) = tokio_postgres::connect(&conn_str, tokio_postgres_rustls::MakeRustlsConnect::new(tls12)).await.expect("TLS 1.2");
    tokio::spawn(conn);
    c.simple_query("select 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_sent_with_the_ssl_request_is_refused() {
    let pki = make_pki("sluice test CA");
    let db = unique_db("tls_injection");
    let proxy = start_proxy(&db, &client_tls(&pki, "prefer")).await;
    let ssl_request = [0u8, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let mut startup = 196608u32.to_be_bytes().to_vec();
    for (k, v) in [("user", "postgres"), ("database", db.as_str())] {
        startup.extend_from_slice(k.as_bytes());
        startup.push(0);
        startup.extend_from_slice(v.as_bytes());
        startup.push(0);
    }
    startup.push(0);
    let mut packet = ssl_request.to_vec();
    packet.extend(((startup.len() + 4) as u32).to_be_bytes());
    packet.extend(startup);
    let addr = proxy.addr;
    let out = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // SSLRequest and a plaintext StartupMessage in one write: the StartupMessage must
        // never be taken as sent under TLS.
        s.write_all(&packet).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).expect("sluice closes the connection (no hang)");
        out
    })
    .await
    .unwrap();
    assert_eq!(out.first(), Some(&b'E'), "an ErrorResponse, not 'S': {out:?}");
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("08P01") && text.contains("data after encryption request"), "{text}");
    // The same SSLRequest alone is answered 'S'.
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&ssl_request).unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        b[0]
    })
    .await
    .unwrap();
    assert_eq!(answer, b'S');
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_passwords_are_asked_only_over_tls() {
    let pki = make_pki("sluice test CA");
    let db = unique_db("tls_cleartext");
    let sections = format!(
        "{}[auth]\nmethod = \"password\"\n[[auth.users]]\nname = \"postgres\"\npassword = \"secret\"\n",
        client_tls(&pki, "prefer")
    );
    let proxy = start_proxy(&db, &sections).await;
    let e = proxy.connect_with("postgres", "password=secret").await.unwrap_err();
    assert_eq!(sqlstate(&e), "28000", "{}", error_text(&e));
    assert!(error_text(&e).contains("requires TLS"), "{}", error_text(&e));
    let c = connect_tls(proxy.addr, &db, &pki.ca, "password=secret").await.expect("cleartext over TLS");
    c.simple_query("select 1").await.unwrap();
    let e = connect_tls(proxy.addr, &db, &pki.ca, "password=wrong").await.unwrap_err();
    assert_eq!(sqlstate(&e), "28P01", "{}", error_text(&e));
    let env = [("PGSSLMODE", "require"), ("PGPASSWORD", "secret")];
    let (ok, out) = output(psql_tls(proxy.addr, &db, &env, "select 1")).await;
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha_256_plus_binds_psql_and_tokio_postgres_logins_to_the_certificate() {
    let pki = make_pki("sluice test CA");
    let db = unique_db("tls_scram_plus");
    let scram = postgres_protocol::password::scram_sha_256(b"secret");
    let sections = format!(
        "{}[auth]\nmethod = \"scram-sha-256\"\n[[auth.users]]\nname = \"postgres\"\npassword = \"{scram}\"\n",
        client_tls(&pki, "prefer")
    );
    let proxy = start_proxy(&db, &sections).await;
    let env = [("PGSSLMODE", "require"), ("PGCHANNELBINDING", "require"), ("PGPASSWORD", "secret")];
    let (ok, out) = output(psql_tls(proxy.addr, &db, &env, "select 'bound'")).await;
    assert!(ok && out.contains("bound"), "{out}");
    let env = [("PGSSLMODE", "require"), ("PGCHANNELBINDING", "require"), ("PGPASSWORD", "wrong")];
    let (ok, out) = output(psql_tls(proxy.addr, &db, &env, "select 1")).await;
    assert!(!ok && out.contains("password authentication failed"), "{out}");
    // Without TLS there is nothing to bind to: libpq refuses, plain SCRAM still works.
    let env = [("PGSSLMODE", "disable"), ("PGCHANNELBINDING", "require"), ("PGPASSWORD", "secret")];
    let (ok, out) = output(psql_tls(proxy.addr, &db, &env, "select 1")).await;
    assert!(!ok && out.contains("channel binding"), "{out}");
    proxy.connect_with("postgres", "password=secret").await.expect("plain SCRAM without TLS");
    // tokio-postgres binds too.
    let c = connect_tls(proxy.addr, &db, &pki.ca, "password=secret channel_binding=require").await.expect("SCRAM-PLUS");
    c.simple_query("select 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_the_certificate_while_connected_tls_clients_keep_working() {
    let first = make_pki("first CA");
    let db = unique_db("tls_reload");
    let text = config_text(cluster().primary.addr(), &db, &client_tls(&first, "prefer"), "");
    let config = sluice::config::Config::from_toml(&text).unwrap();
    let sluice = sluice::app::Sluice::start(config).await.unwrap();
    let addr = sluice.local_addrs()[0];
    let before = connect_tls(addr, &db, &first.ca, "").await.expect("TLS with the first certificate");
    before.simple_query("select 1").await.unwrap();

    // Renew in place: new files at the same paths, then RELOAD.
    let second_ca = first.dir.path().join("second-ca.crt");
    issue("second CA", &["localhost", "127.0.0.1"], &second_ca, &first.cert, &first.key);
    sluice.reload(sluice::config::Config::from_toml(&text).unwrap()).expect("reload");

    // The client connected before the reload goes on with its session.
    let row = before.query_one("select 7::int4", &[]).await.expect("connected client keeps working");
    assert_eq!(row.get::<_, i32>(0), 7);
    // New handshakes see the new certificate.
    connect_tls(addr, &db, &second_ca, "").await.expect("new certificate served").simple_query("select 1").await.unwrap();
    assert!(connect_tls(addr, &db, &first.ca, "").await.is_err(), "the old certificate is gone");
    let ca = second_ca.display().to_string();
    let env = [("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", ca.as_str())];
    let (ok, out) = output(psql_tls(addr, &db, &env, "select 1")).await;
    assert!(ok, "{out}");

    // SET on the admin console changes the mode for new connections (the console client
    // itself, connected before, stays).
    let console = connect_tls(addr, "sluice", &second_ca, "").await.expect("console over TLS");
    connect_as(addr, &db, "postgres", "").await.expect("plaintext under prefer");
    console.simple_query("SET tls.client_mode = 'require'").await.expect("SET tls.client_mode");
    let e = connect_as(addr, &db, "postgres", "").await.unwrap_err();
    assert_eq!(sqlstate(&e), "28000", "{}", error_text(&e));
    let e = console.simple_query("SET tls.server_mode = 'verify-full'").await.unwrap_err();
    assert!(error_text(&e).contains("tls.server_ca"), "{}", error_text(&e));

    // A reload with an unreadable key is refused and the running certificate stays.
    std::fs::write(&first.key, "not a key").unwrap();
    assert!(sluice.reload(sluice::config::Config { ..sluice.shared().config.load().as_ref().clone() }).is_err());
    connect_tls(addr, &db, &second_ca, "").await.expect("still served").simple_query("select 1").await.unwrap();
    sluice.shutdown(Duration::ZERO).await;
}

/// A Postgres of its own with `ssl = on` and a certificate signed by `pki`'s CA.
fn tls_postgres(pki: &Pki) -> Cluster {
    let bins = PgBinaries::locate().unwrap_or_else(|e| panic!("{e}"));
    let cluster = Cluster::start(&bins, &ClusterOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    enable_ssl(&cluster.primary, pki);
    cluster
}

/// Installs `pki`'s server certificate on `pg` and turns `ssl` on.
fn enable_ssl(pg: &PgInstance, pki: &Pki) {
    install_server_cert(pg, pki);
    pg.psql("postgres", "alter system set ssl_cert_file = 'server.crt'").unwrap();
    pg.psql("postgres", "alter system set ssl_key_file = 'server.key'").unwrap();
    pg.psql("postgres", "alter system set ssl = on").unwrap();
    pg.reload().unwrap();
    assert_eq!(pg.psql("postgres", "show ssl").unwrap().trim(), "on", "{}", pg.log_tail(20));
}

/// Copies `pki`'s server certificate and key into `pg`'s data directory (owned by the
/// server's OS user, the key 0600) and reloads it.
fn install_server_cert(pg: &PgInstance, pki: &Pki) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let data = pg.data_dir();
    let owner = std::fs::metadata(data).unwrap();
    for (from, name) in [(&pki.cert, "server.crt"), (&pki.key, "server.key")] {
        let to = data.join(name);
        std::fs::copy(from, &to).unwrap();
        std::os::unix::fs::chown(&to, Some(owner.uid()), Some(owner.gid())).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    pg.reload().unwrap();
}

/// Whether sluice's server connection (the backend running the query) is on TLS.
async fn server_side_ssl(c: &tokio_postgres::Client) -> bool {
    let row = c.query_one("select ssl from pg_stat_ssl where pid = pg_backend_pid()", &[]).await.unwrap();
    row.get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_verifies_a_tls_postgres_with_verify_full_and_verify_ca() {
    let pki = make_pki("postgres CA");
    let pg = tls_postgres(&pki);
    let ca = pki.ca.display().to_string();
    for mode in ["verify-full", "verify-ca", "require", "prefer"] {
        let sections = format!("[tls]\nserver_mode = \"{mode}\"\nserver_ca = {ca:?}\n");
        let proxy = start_proxy_for(pg.primary.addr(), "postgres", &sections, "").await;
        let c = proxy.connect().await;
        assert!(server_side_ssl(&c).await, "{mode}: the server connection is on TLS");
        proxy.sluice.shutdown(Duration::ZERO).await;
    }
    // TLS on both sides at once: large results, a large COPY in, many small round trips.
    let client = make_pki("client-side CA");
    let sections = format!("{}server_mode = \"verify-full\"\nserver_ca = {ca:?}\n", client_tls(&client, "require"));
    let proxy = start_proxy_for(pg.primary.addr(), "postgres", &sections, "").await;
    let c = connect_tls(proxy.addr, "postgres", &client.ca, "").await.expect("TLS client");
    assert!(server_side_ssl(&c).await);
    let rows = c.query("select repeat('x', 100) from generate_series(1, 50000)", &[]).await.unwrap();
    assert_eq!(rows.len(), 50000);
    c.simple_query("create table if not exists tls_copy (t text)").await.unwrap();
    let sink = c.copy_in("copy tls_copy from stdin").await.unwrap();
    let line = bytes::Bytes::from(format!("{}\n", "y".repeat(1000)));
    let chunks = futures_util::stream::iter((0..5000).map(|_| Ok::<_, tokio_postgres::Error>(line.clone())));
    futures_util::pin_mut!(sink);
    futures_util::SinkExt::send_all(&mut sink, &mut Box::pin(chunks)).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 5000);
    for i in 0..200i32 {
        let row = c.query_one("select $1::int4", &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i);
    }
    proxy.sluice.shutdown(Duration::ZERO).await;
    // A CA that did not sign the server's certificate fails verification, and the client is told.
    let other = make_pki("another CA");
    for mode in ["verify-full", "verify-ca"] {
        let sections = format!("[tls]\nserver_mode = \"{mode}\"\nserver_ca = {:?}\n", other.ca.display().to_string());
        let proxy = start_proxy_for(pg.primary.addr(), "postgres", &sections, "").await;
        let e = proxy.connect_with("postgres", "").await.unwrap_err();
        assert!(error_text(&e).contains("TLS handshake failed"), "{mode}: {}", error_text(&e));
        proxy.sluice.shutdown(Duration::ZERO).await;
    }
    // verify-full checks the host name, verify-ca does not: a certificate for another name.
    let renamed = pki_for("renamed CA", &["db.internal"]);
    install_server_cert(&pg.primary, &renamed);
    let renamed_ca = renamed.ca.display().to_string();
    for (mode, ok) in [("verify-full", false), ("verify-ca", true)] {
        let sections = format!("[tls]\nserver_mode = \"{mode}\"\nserver_ca = {renamed_ca:?}\n");
        let proxy = start_proxy_for(pg.primary.addr(), "postgres", &sections, "").await;
        let r = proxy.connect_with("postgres", "").await;
        match r {
            Ok(c) => assert!(ok && server_side_ssl(&c).await, "{mode} logged in"),
            Err(e) => assert!(!ok && error_text(&e).contains("not valid for name"), "{mode}: {}", error_text(&e)),
        }
        proxy.sluice.shutdown(Duration::ZERO).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_mode_require_against_plaintext_postgres_fails_the_login_clearly() {
    let db = unique_db("tls_server_require");
    let proxy = start_proxy(&db, "[tls]\nserver_mode = \"require\"\n").await;
    let e = proxy.connect_with("postgres", "").await.unwrap_err();
    assert!(error_text(&e).contains("does not accept TLS"), "{}", error_text(&e));
    assert_eq!(sqlstate(&e), "08006", "{}", error_text(&e));
    // The default, prefer, falls back to plaintext.
    let proxy = start_proxy(&db, "").await;
    let c = proxy.connect().await;
    assert!(!server_side_ssl(&c).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_reach_a_replica_when_both_servers_take_only_tls() {
    let pki = make_pki("postgres CA");
    let bins = PgBinaries::locate().unwrap_or_else(|e| panic!("{e}"));
    let cluster = Cluster::start(&bins, &ClusterOptions { replica: true, ..ClusterOptions::default() })
        .unwrap_or_else(|e| panic!("{e}"));
    let replica = cluster.replica.as_ref().expect("a replica");
    for pg in [&cluster.primary, replica] {
        enable_ssl(pg, &pki);
        // Plaintext logins over TCP are refused: the replica monitor must use TLS too.
        pg.set_hba("hostssl all all 127.0.0.1/32 trust").unwrap();
    }
    let sections = format!(
        "[tls]\nserver_mode = \"verify-full\"\nserver_ca = {:?}\n[routing]\nread_write_split = true\nread_your_writes = \"off\"\n",
        pki.ca.display().to_string()
    );
    let db_extra = format!("replicas = [\"{}\"]", replica.addr());
    let proxy = start_proxy_for(cluster.primary.addr(), "postgres", &sections, &db_extra).await;
    let c = proxy.connect().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let rows = c.simple_query("select pg_is_in_recovery()").await.expect("read");
        let on_replica = rows.iter().any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("t")));
        if on_replica {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "reads never reached the replica (monitor without TLS?)");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.sluice.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_advise_reaches_a_console_that_requires_tls() {
    let pki = make_pki("sluice test CA");
    let db = unique_db("tls_advise");
    let sections = client_tls(&pki, "require");
    let proxy = start_proxy(&db, &sections).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    let text = config_text(cluster().primary.addr(), &db, &sections, "").replace("127.0.0.1:0", &proxy.addr.to_string());
    std::fs::write(&file, text).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice")).args(["advise", "-c"]).arg(&file).output().unwrap()
    })
    .await
    .unwrap();
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{all}");
    assert!(all.contains(&format!("{db}: pool_size")), "{all}");
}
