//! The running pooler: listeners, the shared state sessions use (configuration, users, pools,
//! cancel keys), background pool maintenance, reload and shutdown.

mod cancel;
mod clients;
mod gates;
mod limits;
mod pools;
mod replicas;

pub use cancel::{CancelRegistration, CancelRegistry, CancelSlot};
pub use clients::{ClientEntry, ClientHandle, ClientRegistry, ClientState, NewClient};
pub use gates::DatabaseGates;
pub use limits::{ClientLimits, ClientSlot, LimitError, PendingLogin, PendingLogins};
pub use pools::{settings_for, PoolKey, PoolRegistry};
pub use replicas::{DatabaseReplicas, ReplicaRegistry, RoutingTable};

use crate::auth::{AuthError, UserStore};
use crate::config::{Config, ConfigError};
use crate::metrics::{Metrics, MetricsError, MetricsHandle};
use crate::protocol::backend::{self, Severity, SqlState};
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Errors starting or reloading sluice.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The IO error.
        source: std::io::Error,
    },
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The users could not be loaded.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The metrics endpoint could not be started.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// A certificate, key or CA file could not be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Reads the configuration again for a reload (set by `main`: the file sluice started from).
pub type ConfigSource = Box<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// State every session shares.
pub struct Shared {
    /// The live configuration; a reload swaps it whole.
    pub config: ArcSwap<Config>,
    /// The users clients log in as.
    pub users: ArcSwap<UserStore>,
    /// TLS toward clients and servers; a reload swaps it whole (new handshakes use the new
    /// certificate, connected clients keep theirs).
    pub tls: Arc<ArcSwap<crate::tls::TlsSettings>>,
    /// The server pools.
    pub pools: PoolRegistry,
    /// Read/write routing: replicas, their monitors, the classifier.
    pub routing: ReplicaRegistry,
    /// Cancel keys.
    pub cancels: Arc<CancelRegistry>,
    /// Pooler-wide names of prepared statements.
    pub statements: Arc<crate::session::prepared::StatementRegistry>,
    /// Cancelled when sluice shuts down: idle sessions end, busy ones end after their
    /// transaction.
    pub shutdown: CancellationToken,
    /// What sessions count, and the Prometheus registry when metrics are exported.
    pub metrics: Metrics,
    /// Where RELOAD on the admin console reads the configuration from.
    pub reload_source: OnceLock<ConfigSource>,
    /// PAUSE / RESUME / KILL per database.
    pub gates: DatabaseGates,
    /// The connected clients (SHOW CLIENTS).
    pub clients_registry: ClientRegistry,
    /// Recent samples of each database's counters (SHOW ADVICE).
    pub samples: crate::metrics::advice::Samples,
    /// The result cache, when `cache.enabled` was set at start.
    pub cache: Option<Arc<crate::cache::CacheHandle>>,
    /// Secrets looked up with `auth_query`.
    pub auth_query: crate::auth::query::AuthQuery,
    /// Logged-in clients per user and database.
    pub limits: ClientLimits,
    /// Connections still logging in.
    pub pending_logins: PendingLogins,
    /// The logical replication streams invalidating the cache (`invalidation_source =
    /// "logical"`).
    pub logical: crate::cache::logical::LogicalStreams,
    clients: AtomicUsize,
}

impl Shared {
    /// Connected clients.
    pub fn client_count(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    /// Applies a new configuration without dropping clients. An invalid one is refused and
    /// the old one stays.
    ///
    /// # Errors
    /// [`AppError`] naming what is wrong.
    pub fn apply_config(&self, config: Config) -> Result<(), AppError> {
        config.validate()?;
        let users = UserStore::from_config(&config)?;
        let tls = crate::tls::TlsSettings::from_config(&config)?;
        self.pools.reconfigure(&config);
        self.tls.store(Arc::new(tls));
        self.config.store(Arc::new(config));
        self.routing.reconfigure(&self.config.load(), &users);
        self.auth_query.clear();
        self.reconfigure_cache();
        self.logical.sync(&self.config.load(), &users, self.cache.as_ref(), &self.tls);
        self.users.store(users);
        tracing::info!("configuration reloaded");
        Ok(())
    }
}

impl Shared {
    /// Applies a reloaded `[cache]`: new settings start an empty store. Turning the cache on
    /// or off takes a restart (a cache turned on mid-run would not have seen the writes of
    /// transactions already open).
    fn reconfigure_cache(&self) {
        let config = self.config.load();
        if config.cache.enabled != self.cache.is_some() {
            tracing::warn!(
                enabled = config.cache.enabled,
                "cache.enabled changes take effect at the next start; the cache stays as it was"
            );
        }
        let Some(cache) = &self.cache else { return };
        if (config.cache.backend == "redis") != cache.remote().is_some() {
            tracing::warn!(backend = %config.cache.backend, "cache.backend changes take effect at the next start");
        }
        match crate::cache::CacheSettings::from_config(&config.cache) {
            Ok(settings) => {
                if cache.reconfigure(settings) {
                    tracing::info!("result cache settings changed: the cache starts empty");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cache settings not applied"),
        }
    }
}

/// The result cache `config` asks for, if any.
fn result_cache(config: &Config) -> Result<Option<Arc<crate::cache::CacheHandle>>, AppError> {
    if !config.cache.enabled {
        return Ok(None);
    }
    let settings = crate::cache::CacheSettings::from_config(&config.cache)
        .map_err(|e| AppError::Config(ConfigError::Invalid { key: "cache".into(), reason: e.to_string() }))?;
    if config.cache.backend == "redis" {
        let remote = crate::cache::RemoteCache::start(&config.cache.redis_url, config.cache.redis_timeout.0)
            .map_err(|e| AppError::Config(ConfigError::Invalid { key: "cache.redis_url".into(), reason: e.to_string() }))?;
        return Ok(Some(Arc::new(crate::cache::CacheHandle::with_remote(settings, remote))));
    }
    Ok(Some(Arc::new(crate::cache::CacheHandle::new(settings))))
}

/// A running sluice.
pub struct Sluice {
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
    sessions: TaskTracker,
    stop_accepting: CancellationToken,
    metrics: Option<MetricsHandle>,
}

impl Sluice {
    /// Binds the listeners and starts serving. Must run inside a tokio runtime.
    ///
    /// # Errors
    /// [`AppError`] when a listener cannot be bound or the users cannot be loaded.
    pub async fn start(config: Config) -> Result<Sluice, AppError> {
        config.validate()?;
        let users = UserStore::from_config(&config)?;
        let tls = Arc::new(ArcSwap::from_pointee(crate::tls::TlsSettings::from_config(&config)?));
        let mut listeners = Vec::new();
        for addr in config.listen_addrs() {
            let l = TcpListener::bind(addr).await.map_err(|source| AppError::Bind { addr, source })?;
            listeners.push(l);
        }
        let addrs = listeners.iter().filter_map(|l| l.local_addr().ok()).collect();
        let routing = ReplicaRegistry::new(&config, &users);
        let cache = result_cache(&config)?;
        let auth_query =
            crate::auth::query::AuthQuery::new(config.auth.auth_query_cache.map_or(Duration::from_secs(10), |d| d.0));
        let metrics_addr = config.server.metrics_listen.as_deref().and_then(|a| a.parse::<SocketAddr>().ok());
        let metrics = if metrics_addr.is_some() { Metrics::exported() } else { Metrics::new() };
        let shared = Arc::new(Shared {
            config: ArcSwap::from_pointee(config),
            users: ArcSwap::new(users),
            pools: PoolRegistry::new(tls.clone()),
            tls,
            routing,
            cancels: Arc::new(CancelRegistry::default()),
            statements: Arc::default(),
            shutdown: CancellationToken::new(),
            metrics,
            reload_source: OnceLock::new(),
            gates: DatabaseGates::default(),
            clients_registry: ClientRegistry::default(),
            samples: Default::default(),
            auth_query,
            limits: ClientLimits::default(),
            pending_logins: PendingLogins::default(),
            cache,
            logical: Default::default(),
            clients: AtomicUsize::new(0),
        });
        // Before any session can start: a database followed by a stream is suspended until it
        // streams.
        shared.logical.sync(&shared.config.load(), &shared.users.load(), shared.cache.as_ref(), &shared.tls);
        let metrics = metrics_addr.map(|a| crate::metrics::install(a, shared.clone())).transpose()?;
        let sluice = Sluice {
            shared,
            addrs,
            sessions: TaskTracker::new(),
            stop_accepting: CancellationToken::new(),
            metrics,
        };
        for l in listeners {
            tokio::spawn(accept_loop(l, sluice.shared.clone(), sluice.sessions.clone(), sluice.stop_accepting.clone()));
        }
        tokio::spawn(maintain_pools(sluice.shared.clone()));
        Ok(sluice)
    }

    /// The bound addresses (useful with port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The metrics endpoint's bound address, when `server.metrics_listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(MetricsHandle::local_addr)
    }

    /// The shared state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Applies a new configuration without dropping clients. An invalid one is refused and
    /// the old one stays.
    ///
    /// # Errors
    /// [`AppError`] naming what is wrong.
    pub fn reload(&self, config: Config) -> Result<(), AppError> {
        self.shared.apply_config(config)
    }

    /// Shuts down: stops accepting, ends idle sessions at once and busy ones when their
    /// transaction ends, waiting at most `grace` (zero = close at once).
    pub async fn shutdown(&self, grace: Duration) {
        self.stop_accepting.cancel();
        self.shared.shutdown.cancel();
        self.sessions.close();
        if !grace.is_zero() && tokio::time::timeout(grace, self.sessions.wait()).await.is_err() {
            tracing::warn!(remaining = self.sessions.len(), "shutdown timeout: closing sessions still running");
        }
        self.shared.pools.close_all();
        self.shared.routing.stop();
        self.shared.logical.stop();
    }

    /// Resolves when every session has ended after [`Sluice::shutdown`].
    pub async fn wait(&self) {
        self.sessions.wait().await;
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, sessions: TaskTracker, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.cancelled() => return,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let max = shared.config.load().server.max_client_conn;
        if shared.clients.fetch_add(1, Ordering::AcqRel) >= max {
            shared.clients.fetch_sub(1, Ordering::AcqRel);
            tokio::spawn(refuse_full(stream));
            continue;
        }
        let shared = shared.clone();
        sessions.spawn(async move {
            let counted = ClientCount(shared.clone());
            crate::session::serve(stream, shared).await;
            drop(counted);
        });
    }
}

struct ClientCount(Arc<Shared>);

impl Drop for ClientCount {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn refuse_full(mut stream: TcpStream) {
    let mut out = bytes::BytesMut::new();
    backend::error_response(&mut out, Severity::Fatal, SqlState::TOO_MANY_CONNECTIONS, "no more connections allowed (max_client_conn)");
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&out)).await;
}

async fn maintain_pools(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u64.. {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.shutdown.cancelled() => return,
        }
        for (_, pool) in shared.pools.all() {
            pool.maintain().await;
        }
        if n % 5 == 0 {
            for database in shared.config.load().databases.keys() {
                shared.samples.record(database, shared.sample(database));
            }
        }
    }
}

impl Shared {
    /// The counters of `database` now, for pool-size advice.
    pub fn sample(&self, database: &str) -> crate::metrics::advice::Sample {
        use crate::metrics::Route;
        use std::sync::atomic::Ordering::Relaxed;
        let counters = self.metrics.database(database);
        let mut sample = crate::metrics::advice::Sample {
            at: std::time::Instant::now(),
            transactions: counters.transactions(Route::Primary) + counters.transactions(Route::Replica),
            busy_micros: counters.busy_micros(),
            wait_micros: 0,
            checkouts: 0,
            waiting: 0,
        };
        for (key, pool) in self.pools.all() {
            if key.database == database {
                sample.wait_micros += pool.stats().wait_micros.load(Relaxed);
                sample.checkouts += pool.stats().checkouts.load(Relaxed);
                sample.waiting += pool.state().waiting;
            }
        }
        sample
    }
}
