//! `sluice advise`: asks a running sluice's admin console for SHOW ADVICE and prints it.

use crate::config::Config;

/// Connects to the admin console of the sluice `config` describes (its first listen address,
/// as its first admin user, with that user's `[[auth.users]]` password if it has a plain one)
/// and returns SHOW ADVICE as text for a terminal.
///
/// # Errors
/// A message when sluice cannot be reached or refuses the console.
pub async fn advise(config: &Config) -> Result<String, String> {
    let addr = *config.listen_addrs().first().ok_or("server.listen has no address")?;
    let user = config.server.admin_users.first().ok_or("server.admin_users is empty")?;
    let password = config
        .auth
        .users
        .iter()
        .find(|u| &u.name == user)
        .map(|u| u.password.clone())
        .filter(|p| !p.starts_with("md5") && !p.starts_with("SCRAM-SHA-256$"));
    let mut pg = tokio_postgres::Config::new();
    pg.host(addr.ip().to_string()).port(addr.port()).user(user).dbname("sluice");
    if let Some(p) = password {
        pg.password(p);
    }
    // With TLS toward clients on, ask for it (sluice may require it); the certificate is not
    // checked: this is sluice's own configuration speaking to its own listener.
    let tls = match config.tls.client_mode.as_str() {
        "disable" => None,
        _ => Some(crate::tls::ServerTls::prefer().map_err(|e| e.to_string())?),
    };
    let client = match tls.as_ref().and_then(|t| crate::tls::postgres_tls(t, &mut pg)) {
        Some(tls) => crate::server::open_client(&pg, tls).await,
        None => crate::server::open_client(&pg, tokio_postgres::NoTls).await,
    }
    .map_err(|e| format!("cannot reach sluice at {addr}: {e}"))?;
    let messages = client.simple_query("SHOW ADVICE").await.map_err(|e| format!("SHOW ADVICE: {e}"))?;
    let mut out = String::new();
    for m in messages {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            let v = |name: &str| r.get(name).unwrap_or("").to_owned();
            out.push_str(&format!(
                "{}: pool_size {} -> recommended {}\n  {} transactions/s, {} ms on a server connection each, {} connections busy, \
                 {} ms waited per transaction, up to {} clients waiting (last {} s; server CPUs: {})\n  {}\n",
                v("database"),
                v("pool_size"),
                v("recommended_pool_size"),
                v("transactions_per_second"),
                v("server_ms_per_transaction"),
                v("busy_connections"),
                v("wait_ms_per_transaction"),
                v("max_waiting_clients"),
                v("window_seconds"),
                r.get("server_cpus").unwrap_or("unknown"),
                v("reason"),
            ));
        }
    }
    Ok(out)
}
