//! The admin console: the virtual database `sluice` (alias `pgbouncer`) for the users in
//! `server.admin_users`, answering PgBouncer-style commands over the simple query protocol.
//!
//! - [`console`]: the connection after authentication: welcome, then one command string at a
//!   time;
//! - [`parse`]: reading commands (pure);
//! - [`show`]: the SHOW commands, one file each behind the [`show::Show`] trait;
//! - [`control`]: RELOAD, SHUTDOWN, SET, CACHE CLEAR, PAUSE, RESUME and KILL;
//! - [`remote`]: `sluice advise`, the console's client side;
//! - [`settings`]: the configuration keys SHOW CONFIG lists and SET changes;
//! - [`result`]: RowDescription, DataRow and CommandComplete.
//!
//! The session hands a connection over after the client authenticated (see [`serve`]); the
//! console checks `server.admin_users` itself and sends the rest of the login.

pub mod console;
pub mod control;
pub mod parse;
pub mod remote;
pub mod result;
pub mod settings;
pub mod show;

pub use console::serve;

use crate::protocol::backend::SqlState;
use crate::protocol::ProtocolError;

/// Database names that open the admin console.
pub const ADMIN_DATABASES: [&str; 2] = ["sluice", "pgbouncer"];

/// Whether a client asking for `database` wants the admin console.
pub fn is_admin_database(database: &str) -> bool {
    ADMIN_DATABASES.contains(&database)
}

/// Why a command failed or the console closed; each maps to the SQLSTATE the client is told.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Socket IO failed.
    #[error("admin connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The client closed the connection.
    #[error("client closed the connection")]
    ClientGone,
    /// The client sent something that is not the protocol.
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    /// The user is not in `server.admin_users`.
    #[error("permission denied: \"{0}\" is not an admin user (server.admin_users)")]
    NotAdmin(String),
    /// A command the console does not know, or with wrong arguments.
    #[error("invalid admin command: {0:?}; SHOW HELP lists the commands")]
    Syntax(String),
    /// A known command sluice cannot run yet.
    #[error("{0}")]
    NotImplemented(String),
    /// A message of the extended query protocol.
    #[error("the admin console speaks the simple query protocol only")]
    ExtendedProtocol,
    /// A database that is not configured.
    #[error("no such database: {0}")]
    UnknownDatabase(String),
    /// SET of a key that does not exist.
    #[error("unrecognized configuration parameter \"{0}\"; SHOW CONFIG lists them")]
    UnknownSetting(String),
    /// SET of a key only a restart changes.
    #[error("parameter \"{0}\" cannot be changed without restarting sluice")]
    NotChangeable(String),
    /// SET with a value the key does not take, or one the configuration refuses as a whole.
    #[error("invalid value for parameter \"{key}\": {reason}")]
    InvalidValue {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// RELOAD could not read or apply the configuration; the running one stays.
    #[error("reload refused, keeping the running configuration: {0}")]
    Reload(String),
    /// sluice is shutting down.
    #[error("sluice is shutting down")]
    Shutdown,
}

impl AdminError {
    /// The SQLSTATE the client is told.
    pub fn sqlstate(&self) -> SqlState {
        match self {
            AdminError::Protocol(e) => e.sqlstate(),
            AdminError::NotAdmin(_) => SqlState(*b"42501"),
            AdminError::Syntax(_) => SqlState(*b"42601"),
            AdminError::NotImplemented(_) | AdminError::ExtendedProtocol => SqlState::FEATURE_NOT_SUPPORTED,
            AdminError::UnknownDatabase(_) => SqlState::INVALID_CATALOG_NAME,
            AdminError::UnknownSetting(_) => SqlState(*b"42704"),
            AdminError::NotChangeable(_) => SqlState(*b"55P02"),
            AdminError::InvalidValue { .. } => SqlState(*b"22023"),
            AdminError::Reload(_) => SqlState(*b"F0000"),
            AdminError::Shutdown => SqlState::ADMIN_SHUTDOWN,
            AdminError::Io(_) | AdminError::ClientGone => SqlState::CONNECTION_FAILURE,
        }
    }

    /// Whether the console closes after telling the client (FATAL) rather than going on.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            AdminError::Io(_)
                | AdminError::ClientGone
                | AdminError::Protocol(_)
                | AdminError::NotAdmin(_)
                | AdminError::Shutdown
        )
    }
}
