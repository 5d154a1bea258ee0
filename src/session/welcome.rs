//! From an accepted socket to a logged-in [`Session`]: startup, database lookup,
//! authentication, the pool, the client's session parameters, and the welcome messages.

use super::cached::SessionCache;
use super::login::{self, Opening};
use super::params::ParamSet;
use super::route::SessionRouting;
use super::{Session, SessionError, ServerPool};
use crate::app::Shared;
use crate::protocol::backend::{self, TransactionStatus};
use crate::auth::{Secret, UserStore};
use crate::config::{AuthMethod, Config, DatabaseSection};
use crate::server::{Credentials, ServerTarget};
use bytes::BytesMut;
use std::sync::Arc;
use crate::tls::Stream;

/// The client's stored secret: from the auth file or `[[auth.users]]`, else from
/// `auth_query` on the database's primary (not needed for trust).
async fn stored_secret(
    ctx: &Shared,
    config: &Config,
    database: &str,
    db: &DatabaseSection,
    users: &UserStore,
    user: &str,
) -> Result<Option<Arc<Secret>>, SessionError> {
    if let Some(s) = users.get(user) {
        return Ok(Some(s.clone()));
    }
    let Some(query) = config.auth.auth_query.as_deref().filter(|_| users.method != AuthMethod::Trust) else {
        return Ok(None);
    };
    let auth_user = config.own_user(db, config.auth.auth_user.as_ref());
    let own = users.get(&auth_user);
    let password = own.and_then(|s| s.plain()).map(str::to_owned).or_else(|| db.password.clone());
    let target = ServerTarget {
        addr: db.primary.clone(),
        user: auth_user,
        database: db.dbname.clone().unwrap_or_else(|| database.to_owned()),
        md5: own.and_then(|s| s.md5()).map(str::to_owned).filter(|_| password.is_none()),
        password,
        scram: None,
        max_message_size: 1 << 20,
        max_prepared_statements: 0,
    };
    Ok(ctx.auth_query.secret(&target, &ctx.tls, query, user).await?)
}

/// What a login opened.
pub(super) enum Opened {
    /// A client session on a database.
    Client(Session),
    /// The admin console, for this authenticated user (nothing sent after authentication).
    Admin(String),
}

/// Runs the login phase; `None` when the connection was a cancel request.
pub(super) async fn login(
    stream: &mut Stream,
    buf: &mut BytesMut,
    ctx: &Arc<Shared>,
) -> Result<Option<Opened>, SessionError> {
    let tls = ctx.tls.load_full();
    let startup = match login::read_opening(stream, buf, &tls.client).await? {
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
        stream.send(&out).await?;
        out.clear();
    }
    if crate::admin::is_admin_database(&startup.database) {
        let users = ctx.users.load_full();
        login::authenticate(stream, buf, users.method, &startup.user, users.get(&startup.user).map(|s| &**s)).await?;
        return Ok(Some(Opened::Admin(startup.user)));
    }
    let config = ctx.config.load_full();
    let db = config
        .databases
        .get(&startup.database)
        .ok_or_else(|| SessionError::UnknownDatabase(startup.database.clone()))?;
    let users = ctx.users.load_full();
    let secret = stored_secret(ctx, &config, &startup.database, db, &users, &startup.user).await?;
    let keys = login::authenticate(stream, buf, users.method, &startup.user, secret.as_deref()).await?;
    let requested = login::requested_params(&startup)?;
    let per_database = db.max_client_conn.unwrap_or(config.server.max_client_conn_per_database);
    let slot = ctx.limits.admit(&startup.database, &startup.user, per_database, config.server.max_client_conn_per_user)?;

    let server_user = db.user.clone().unwrap_or_else(|| startup.user.clone());
    let credentials = match &db.user {
        Some(_) => Credentials { password: db.password.clone(), ..Credentials::default() },
        None => {
            let password = db.password.clone().or_else(|| secret.as_ref().and_then(|s| s.plain()).map(str::to_owned));
            match password {
                Some(p) => Credentials { password: Some(p), ..Credentials::default() },
                // No password to log in with: the client's own SCRAM keys, or a stored MD5 secret.
                None => Credentials {
                    password: None,
                    scram: keys,
                    md5: secret.as_ref().and_then(|s| s.md5()).map(str::to_owned),
                },
            }
        }
    };
    let routing = (config.pool.mode == crate::config::PoolMode::Transaction).then(|| {
        SessionRouting::new(startup.database.clone(), server_user.clone(), credentials.clone(), ctx)
    });
    let metrics = ctx.metrics.session(&startup.database, &server_user);
    let pool = ctx.pools.get_or_create(&config, &startup.database, db, &server_user, credentials);
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
    stream.send(&out).await?;
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
        slot,
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
