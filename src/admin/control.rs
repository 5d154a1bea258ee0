//! The commands that change something: RELOAD, SET, SHUTDOWN, CACHE CLEAR; and PAUSE, RESUME
//! and KILL, which sessions do not support yet and are refused with 0A000.

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

fn needs_sessions(command: &str) -> AdminError {
    AdminError::NotImplemented(format!(
        "{command} is not implemented yet: sessions do not yet check a per-database gate before \
         taking a server connection"
    ))
}

/// PAUSE [db]: refused until sessions check a pause gate before checkout.
///
/// # Errors
/// [`AdminError::UnknownDatabase`] or [`AdminError::NotImplemented`].
pub fn pause(ctx: &Shared, db: Option<&str>) -> Result<Reply, AdminError> {
    db.map_or(Ok(()), |d| known(ctx, d))?;
    Err(needs_sessions("PAUSE"))
}

/// RESUME [db]: refused like PAUSE.
///
/// # Errors
/// [`AdminError::UnknownDatabase`] or [`AdminError::NotImplemented`].
pub fn resume(ctx: &Shared, db: Option<&str>) -> Result<Reply, AdminError> {
    db.map_or(Ok(()), |d| known(ctx, d))?;
    Err(needs_sessions("RESUME"))
}

/// KILL db: refused until sessions can be ended per database.
///
/// # Errors
/// [`AdminError::UnknownDatabase`] or [`AdminError::NotImplemented`].
pub fn kill(ctx: &Shared, db: &str) -> Result<Reply, AdminError> {
    known(ctx, db)?;
    Err(AdminError::NotImplemented("KILL is not implemented yet: sessions cannot yet be ended per database".to_owned()))
}
