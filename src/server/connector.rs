//! Where and as whom sluice logs in, and the [`crate::pool::Connect`] implementation that opens
//! server connections for a pool.

use super::{login, ServerConnection, ServerError};
use crate::session::params::ParamSet;
use arc_swap::ArcSwapOption;
use dashmap::DashMap;
use std::sync::Arc;

/// Where and as whom to log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTarget {
    /// host:port
    pub addr: String,
    /// Login role.
    pub user: String,
    /// Database on the server.
    pub database: String,
    /// Password, if the server asks for one.
    pub password: Option<String>,
    /// Without a password: SCRAM keys recovered from a client's login, for a server that
    /// stores the same SCRAM secret.
    pub scram: Option<crate::auth::scram::ClientKeys>,
    /// Without a password: a stored MD5 secret (`md5` + hex), which answers an MD5 challenge.
    pub md5: Option<String>,
    /// Largest message accepted from the server during login and internal queries.
    pub max_message_size: u32,
    /// Named statements kept prepared per connection.
    pub max_prepared_statements: usize,
}

/// What sluice logs in to a server with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// A password (cleartext, MD5 or SCRAM, whatever the server asks for).
    pub password: Option<String>,
    /// SCRAM keys recovered from a client's login (see [`ServerTarget::scram`]).
    pub scram: Option<crate::auth::scram::ClientKeys>,
    /// A stored MD5 secret (see [`ServerTarget::md5`]).
    pub md5: Option<String>,
}

/// What a server said about itself at login: every ParameterStatus, and the tracked subset.
#[derive(Debug, Clone, Default)]
pub struct Welcome {
    /// All ParameterStatus pairs in the order received.
    pub reported: Vec<(String, String)>,
    /// The tracked subset, as a set.
    pub params: ParamSet,
}

/// Opens [`ServerConnection`]s to one target and remembers the latest [`Welcome`].
#[derive(Debug)]
pub struct PgConnector {
    target: ServerTarget,
    welcome: ArcSwapOption<Welcome>,
    /// Startup settings already seen, with the values the server normalized them to.
    normalized: DashMap<Vec<(String, String)>, ParamSet>,
    /// Where its connections are listed (SHOW SERVERS).
    registry: Option<Arc<super::registry::ServerRegistry>>,
    /// The live TLS settings (none: plaintext).
    tls: Option<Arc<arc_swap::ArcSwap<crate::tls::TlsSettings>>>,
}

/// Distinct startup-setting combinations remembered per connector.
const MAX_NORMALIZED: usize = 1024;

impl PgConnector {
    /// A connector for `target`.
    pub fn new(target: ServerTarget) -> Self {
        Self { target, welcome: ArcSwapOption::empty(), normalized: DashMap::new(), registry: None, tls: None }
    }

    /// Opens its connections with the TLS settings in `tls` as they are at each connect.
    pub fn with_tls(mut self, tls: Arc<arc_swap::ArcSwap<crate::tls::TlsSettings>>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Lists the connections it opens in `registry`.
    pub fn listed_in(mut self, registry: Arc<super::registry::ServerRegistry>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// The target.
    pub fn target(&self) -> &ServerTarget {
        &self.target
    }

    /// What the last server connection reported at login, if any has been opened.
    pub fn welcome(&self) -> Option<Arc<Welcome>> {
        self.welcome.load_full()
    }

    /// The parameter set a client with these startup settings was given before.
    pub fn normalized(&self, requested: &[(String, String)]) -> Option<ParamSet> {
        self.normalized.get(requested).map(|e| e.value().clone())
    }

    /// Remembers the parameter set for these startup settings (bounded).
    pub fn remember_normalized(&self, requested: &[(String, String)], params: &ParamSet) {
        if self.normalized.len() < MAX_NORMALIZED {
            self.normalized.insert(requested.to_vec(), params.clone());
        }
    }
}

impl crate::pool::Connect for PgConnector {
    type Conn = ServerConnection;
    type Error = ServerError;

    async fn connect(&self) -> Result<ServerConnection, ServerError> {
        let tls = self.tls.as_ref().map(|t| t.load_full());
        // Boxed: sessions await checkouts that may connect, and their tasks should not carry a
        // TLS handshake's state all their life.
        let (mut conn, welcome) = Box::pin(login::connect(&self.target, tls.as_ref().map(|t| &t.server))).await?;
        self.welcome.store(Some(Arc::new(welcome)));
        if let Some(registry) = &self.registry {
            let local = conn.stream.local_addr().ok();
            conn.entry = Some(registry.register(&self.target.user, &self.target.database, conn.addr(), local, conn.key().pid));
        }
        Ok(conn)
    }
}
