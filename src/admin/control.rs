//! The commands that change something: RELOAD, SET, SHUTDOWN, CACHE CLEAR, PAUSE, RESUME and
//! KILL.

use super::result::Reply;
use super::settings;
use super::AdminError;
use crate::app::Shared;
use crate::metrics::cache_report;

/// RELOAD: reads the configuration again through the source `main` registered
/// ([`Shared::reload_source`]) and applies it as SIGHUP does. Without a source (sluice started
/// from a configuration built in code) the running configuration is applied again, which
/// re-reads `auth.auth_file`.
///
/// # Errors
/// [`AdminError::Reload`] when the file cannot be read or is invalid; nothing changes then.
pub fn reload(ctx: &Shared) -> Result<Reply, AdminError> {
    let (config, notice) = match ctx.reload_source.get() {
        Some(load) => (load().map_err(AdminError::Reload)?, None),
        None => (
            (**ctx.config.load()).clone(),
            Some("sluice was not started from a file: the running configuration was applied again".to_owned()),
        ),
    };
    ctx.apply_config(config).map_err(|e| AdminError::Reload(e.to_string()))?;
    Ok(Reply::Done { tag: "RELOAD", notice })
}

/// SET key = value: applies a copy of the running configuration with one key changed, as a
/// reload would. The change lasts until the next RELOAD.
///
/// # Errors
/// [`AdminError::UnknownSetting`], [`AdminError::NotChangeable`], or
/// [`AdminError::InvalidValue`] when the value does not parse or the configuration refuses it.
pub fn set(ctx: &Shared, key: &str, value: &str) -> Result<Reply, AdminError> {
    let setting = settings::find(key).ok_or_else(|| AdminError::UnknownSetting(key.to_owned()))?;
    let set = setting.set.ok_or_else(|| AdminError::NotChangeable(setting.key.to_owned()))?;
    let invalid = |reason: String| AdminError::InvalidValue { key: setting.key.to_owned(), reason };
    let mut config = (**ctx.config.load()).clone();
    set(&mut config, value).map_err(invalid)?;
    ctx.apply_config(config).map_err(|e| invalid(e.to_string()))?;
    tracing::info!(key = setting.key, value, "configuration changed from the admin console");
    Ok(Reply::done("SET"))
}

/// SHUTDOWN: stops sluice as SIGTERM does: idle sessions end at once, busy ones after their
/// transaction. This console's own connection ends after the reply.
pub fn shutdown(ctx: &Shared) -> Reply {
    tracing::info!("SHUTDOWN from the admin console");
    ctx.shutdown.cancel();
    Reply::done("SHUTDOWN")
}

/// CACHE CLEAR: drops every cached result.
pub fn cache_clear(ctx: &Shared) -> Reply {
    let dropped = cache_report(ctx).clear();
    let notice = if ctx.config.load().cache.enabled {
        format!("{dropped} cache entries dropped")
    } else {
        "the result cache is off (cache.enabled = false): nothing to clear".to_owned()
    };
    Reply::Done { tag: "CACHE CLEAR", notice: Some(notice) }
}

fn known(ctx: &Shared, db: &str) -> Result<(), AdminError> {
    if ctx.config.load().databases.contains_key(db) {
        Ok(())
    } else {
        Err(AdminError::UnknownDatabase(db.to_owned()))
    }
}

/// The pools serving `db` (every pool without one).
fn pools_of(ctx: &Shared, db: Option<&str>) -> Vec<crate::session::ServerPool> {
    ctx.pools.all().into_iter().filter(|(key, _)| db.is_none_or(|d| key.database == d)).map(|(_, p)| p).collect()
}

/// PAUSE [db]: new transactions of `db` (of every database without one) wait, with no error,
/// until RESUME; this returns once the transactions running now have finished and handed their
/// server connections back, and after closing the idle ones, so that Postgres can be restarted
/// or failed over underneath.
///
/// # Errors
/// [`AdminError::UnknownDatabase`].
pub async fn pause(ctx: &Shared, db: Option<&str>) -> Result<Reply, AdminError> {
    db.map_or(Ok(()), |d| known(ctx, d))?;
    ctx.gates.pause(db);
    tracing::info!(database = db.unwrap_or("(all)"), "PAUSE: waiting for running transactions");
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(10));
    loop {
        let pools = pools_of(ctx, db);
        if pools.iter().all(|p| p.state().active == 0) {
            let closed: usize = pools.iter().map(|p| p.close_idle()).sum();
            tracing::info!(database = db.unwrap_or("(all)"), closed, "paused");
            return Ok(Reply::done("PAUSE"));
        }
        tick.tick().await;
    }
}

/// RESUME [db]: lets the transactions PAUSE (or KILL) held go on.
///
/// # Errors
/// [`AdminError::UnknownDatabase`].
pub fn resume(ctx: &Shared, db: Option<&str>) -> Result<Reply, AdminError> {
    db.map_or(Ok(()), |d| known(ctx, d))?;
    let notice = (!ctx.gates.resume(db)).then(|| "nothing was paused".to_owned());
    tracing::info!(database = db.unwrap_or("(all)"), "RESUME");
    Ok(Reply::Done { tag: "RESUME", notice })
}

/// KILL db: ends every client session of `db` at once (running transactions are cut off
/// and their server connections closed) and pauses it: new clients wait for RESUME.
///
/// # Errors
/// [`AdminError::UnknownDatabase`].
pub fn kill(ctx: &Shared, db: &str) -> Result<Reply, AdminError> {
    known(ctx, db)?;
    ctx.gates.kill(db);
    let closed: usize = pools_of(ctx, Some(db)).iter().map(|p| p.close_idle()).sum();
    tracing::info!(database = db, closed, "KILL");
    Ok(Reply::done("KILL"))
}
