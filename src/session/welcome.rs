//! From an accepted socket to a logged-in [`Session`]: startup, database lookup,
//! authentication, the pool, the client's session parameters, and the welcome messages.

use super::cached::SessionCache;
use super::login::{self, Opening};
use super::params::ParamSet;
use super::route::SessionRouting;
use super::{Session, SessionError, ServerPool};
use crate::app::Shared;
use crate::protocol::backend::{self, TransactionStatus};
use bytes::BytesMut;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// What a login opened.
pub(super) enum Opened {
    /// A client session on a database.
    Client(Session),
    /// The admin console, for this authenticated user (nothing sent after authentication).
    Admin(String),
}

/// Runs the login phase; `None` when the connection was a cancel request.
pub(super) async fn login(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    ctx: &Arc<Shared>,
) -> Result<Option<Opened>, SessionError> {
    let startup = match login::read_opening(stream, buf).await? {
        Opening::Cancel { pid, secret } => {
            ctx.cancels.cancel(pid, secret).await;
            return Ok(None);
        }
        Opening::Session(p) => p,
    };
    let mut out = BytesMut::with_capacity(1024);
    let unsupported: Vec<&str> =
        startup.params.iter().map(|(k, _)| k.as_str()).filter(|k| k.starts_with("_pq_.")).collect();
    if startup.minor_version > 0 || !unsupported.is_empty() {
        backend::negotiate_protocol_version(&mut out, &unsupported);
        stream.write_all(&out).await?;
        out.clear();
    }
    if crate::admin::is_admin_database(&startup.database) {
        let users = ctx.users.load_full();
        login::authenticate(stream, buf, users.method, &startup.user, users.get(&startup.user)).await?;
        return Ok(Some(Opened::Admin(startup.user)));
    }
    let config = ctx.config.load_full();
    let db = config
        .databases
        .get(&startup.database)
        .ok_or_else(|| SessionError::UnknownDatabase(startup.database.clone()))?;
    let users = ctx.users.load_full();
    let secret = users.get(&startup.user);
    login::authenticate(stream, buf, users.method, &startup.user, secret).await?;
    let requested = login::requested_params(&startup)?;

    let server_user = db.user.clone().unwrap_or_else(|| startup.user.clone());
    let password = match &db.user {
        Some(_) => db.password.clone(),
        None => db.password.clone().or_else(|| secret.and_then(|s| s.plain()).map(str::to_owned)),
    };
    let routing = (config.pool.mode == crate::config::PoolMode::Transaction).then(|| {
        SessionRouting::new(startup.database.clone(), server_user.clone(), password.clone(), ctx)
    });
    let metrics = ctx.metrics.session(&startup.database, &server_user);
    let pool = ctx.pools.get_or_create(&config, &startup.database, db, &server_user, password);
    let params = session_params(&pool, &requested).await?;

    let cache = ctx.cache.as_ref().map(|handle| {
        let server_database = crate::cache::logical::server_database_key(
            &db.primary,
            db.dbname.as_deref().unwrap_or(&startup.database),
        );
        let classifier = ctx.routing.load().classifier.clone();
        let identity = [startup.database.as_str(), server_user.as_str(), startup.user.as_str()];
        SessionCache::new(handle.clone(), classifier, &server_database, identity, &params)
    });

    backend::auth_ok(&mut out);
    let welcome = pool.connector().welcome().unwrap_or_default();
    for (k, v) in &welcome.reported {
        backend::parameter_status(&mut out, k, params.get(k).unwrap_or(v));
    }
    let (pid, secret_key, cancel) = ctx.cancels.register();
    backend::backend_key_data(&mut out, pid, secret_key);
    backend::ready_for_query(&mut out, TransactionStatus::Idle);
    stream.write_all(&out).await?;
    Ok(Some(Opened::Client(Session {
        client: params,
        pool,
        cancel,
        mode: config.pool.mode,
        idle_transaction_timeout: config.pool.idle_transaction_timeout.non_zero(),
        routing,
        metrics,
        cache,
        database: startup.database.clone(),
        user: startup.user.clone(),
    })))
}

/// The parameter set a client runs with: the server's defaults with the client's startup
/// settings applied, as the server normalizes them. A server connection is used to learn (and
/// validate) the values only the first time a given combination is seen.
async fn session_params(pool: &ServerPool, requested: &[(String, String)]) -> Result<ParamSet, SessionError> {
    let connector = pool.connector();
    if let Some(welcome) = connector.welcome() {
        let as_default = requested.iter().all(|(k, v)| welcome.params.get(k) == Some(v.as_str()));
        if as_default {
            return Ok(welcome.params.clone());
        }
        if let Some(known) = connector.normalized(requested) {
            return Ok(known);
        }
    }
    let mut server = pool.checkout().await?;
    let mut target = server.baseline.clone();
    for (k, v) in requested {
        target.set(k, v);
    }
    // A value the server rejects fails this login only; the connection stays clean.
    server.apply_params(&target).await?;
    let params = server.params().clone();
    connector.remember_normalized(requested, &params);
    Ok(params)
}
