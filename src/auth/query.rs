//! Users looked up on the server (as PgBouncer's `auth_query`): for a user in neither the auth
//! file nor `[[auth.users]]`, sluice runs a query on the database's primary as `auth_user` and
//! reads the user's stored secret from its last column (`md5...` or `SCRAM-SHA-256$...`, as
//! `pg_shadow.passwd` holds them). Answers, including "no such user", are kept for a short
//! while, and few lookups run at once, so a flood of logins cannot turn into a flood of server
//! queries.

use super::Secret;
use crate::pool::Connect;
use crate::server::{PgConnector, ServerError, ServerTarget};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Lookups running at once, at most.
const MAX_CONCURRENT_LOOKUPS: usize = 8;

/// Secrets kept at most.
const MAX_CACHED: u64 = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LookupKey {
    server: String,
    dbname: String,
    user: String,
}

/// Looked-up secrets, kept for a short while.
pub struct AuthQuery {
    cache: moka::sync::Cache<LookupKey, Option<Arc<Secret>>>,
    lookups: Semaphore,
}

impl std::fmt::Debug for AuthQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthQuery").field("cached", &self.cache.entry_count()).finish()
    }
}

impl AuthQuery {
    /// Answers are kept for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            cache: moka::sync::Cache::builder().max_capacity(MAX_CACHED).time_to_live(ttl.max(Duration::from_millis(1))).build(),
            lookups: Semaphore::new(MAX_CONCURRENT_LOOKUPS),
        }
    }

    /// The stored secret of `user`, from `query` (with the user name as `$1`) run on `target`
    /// (the database's primary, logged in as `auth_user`, with the live `tls` settings); `None`
    /// when the query returns no row or a NULL secret.
    ///
    /// # Errors
    /// [`ServerError`] when the server cannot be reached or refuses the query.
    pub async fn secret(
        &self,
        target: &ServerTarget,
        tls: &Arc<arc_swap::ArcSwap<crate::tls::TlsSettings>>,
        query: &str,
        user: &str,
    ) -> Result<Option<Arc<Secret>>, ServerError> {
        let key = LookupKey { server: target.addr.clone(), dbname: target.database.clone(), user: user.to_owned() };
        if let Some(known) = self.cache.get(&key) {
            return Ok(known);
        }
        let _permit = self.lookups.acquire().await.map_err(|_| ServerError::Auth("auth_query is shutting down".into()))?;
        // Another login may have looked the user up while this one waited.
        if let Some(known) = self.cache.get(&key) {
            return Ok(known);
        }
        let mut conn = PgConnector::new(target.clone()).with_tls(tls.clone()).connect().await?;
        let row = conn.run_internal_row(query, &[user]).await?;
        let secret = row.and_then(|columns| columns.into_iter().last().flatten()).map(|text| Arc::new(Secret::parse(&text)));
        self.cache.insert(key, secret.clone());
        Ok(secret)
    }

    /// Forgets every answer (RELOAD).
    pub fn clear(&self) {
        self.cache.invalidate_all();
    }
}
