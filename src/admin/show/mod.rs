//! The SHOW commands: one file each, behind [`Show`]. Where PgBouncer has the command, the
//! columns are PgBouncer's, in its order; values sluice does not track are 0 (or NULL where
//! PgBouncer shows NULL), as each file says.

mod advice;
mod cache;
mod connections;
mod databases;
mod help;
mod pools;
mod replicas;
mod settings;
mod stats;
mod version;

use super::parse::ShowWhat;
use super::result::{Column, ResultSet, Row};
use super::AdminError;
use crate::app::Shared;

/// A SHOW command: fixed columns, rows read from the shared state.
pub trait Show {
    /// The columns, in order.
    const COLUMNS: &'static [Column];

    /// The rows now.
    ///
    /// # Errors
    /// [`AdminError`] when the command cannot be answered.
    fn rows(ctx: &Shared) -> Result<Vec<Row>, AdminError>;

    /// The whole result.
    ///
    /// # Errors
    /// As [`Show::rows`].
    fn result(ctx: &Shared) -> Result<ResultSet, AdminError> {
        Ok(ResultSet::show(Self::COLUMNS, Self::rows(ctx)?))
    }
}

/// Answers `SHOW what`.
///
/// # Errors
/// [`AdminError::NotImplemented`] for SHOW SERVERS, which needs state sluice does not keep yet.
pub fn show(what: ShowWhat, ctx: &Shared) -> Result<ResultSet, AdminError> {
    match what {
        ShowWhat::Pools => pools::Pools::result(ctx),
        ShowWhat::Stats => stats::Stats::result(ctx),
        ShowWhat::Clients => connections::Clients::result(ctx),
        ShowWhat::Servers => connections::Servers::result(ctx),
        ShowWhat::Databases => databases::Databases::result(ctx),
        ShowWhat::Config => settings::Config::result(ctx),
        ShowWhat::Version => version::Version::result(ctx),
        ShowWhat::Replicas => replicas::Replicas::result(ctx),
        ShowWhat::Cache => cache::Cache::result(ctx),
        ShowWhat::Help => help::Help::result(ctx),
        ShowWhat::Advice => advice::Advice::result(ctx),
    }
}

/// Splits `host:port` (the form the configuration checks) into its parts.
fn host_port(addr: &str) -> (&str, &str) {
    addr.rsplit_once(':').unwrap_or((addr, ""))
}
