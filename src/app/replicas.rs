//! The routing table: for each database that splits reads, its replicas' shared status and the
//! monitors keeping it current, plus the statement classifier and the routing settings.
//! Rebuilt on reload; a database whose servers and monitor login did not change keeps its
//! status and monitors.

use crate::auth::UserStore;
use crate::config::{Config, PoolMode, ReadYourWrites};
use crate::router::classify::Classifier;
use crate::router::monitor::{spawn_monitor, MonitorSettings, MonitorTarget};
use crate::router::replica::ReplicaSet;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// One database's replicas.
pub struct DatabaseReplicas {
    /// Their status, in configuration order.
    pub set: Arc<ReplicaSet>,
    /// What the monitors poll, one per replica.
    targets: Vec<MonitorTarget>,
    stop: CancellationToken,
}

impl Drop for DatabaseReplicas {
    fn drop(&mut self) {
        // The monitors end with the last reference: a reload that replaced this entry, or
        // shutdown.
        self.stop.cancel();
    }
}

/// Routing as the configuration says, swapped whole on reload.
pub struct RoutingTable {
    /// Databases that split reads (transaction mode, `read_write_split`, replicas configured).
    pub databases: HashMap<String, Arc<DatabaseReplicas>>,
    /// Classifies statements (cached by text).
    pub classifier: Arc<Classifier>,
    /// `routing.read_your_writes`.
    pub read_your_writes: ReadYourWrites,
    /// `routing.replica_fallback = "primary"`.
    pub fallback_to_primary: bool,
    read_only_functions: Vec<String>,
}

/// The live routing table and the monitor settings the monitors read before each poll.
pub struct ReplicaRegistry {
    table: ArcSwap<RoutingTable>,
    settings: Arc<ArcSwap<MonitorSettings>>,
}

impl ReplicaRegistry {
    /// Builds the table for `config` and starts the monitors. Must run inside a tokio runtime.
    pub fn new(config: &Config, users: &UserStore) -> Self {
        let settings = Arc::new(ArcSwap::from_pointee(monitor_settings(config)));
        let table = build(config, users, None, &settings);
        Self { table: ArcSwap::from_pointee(table), settings }
    }

    /// The current table.
    pub fn load(&self) -> arc_swap::Guard<Arc<RoutingTable>> {
        self.table.load()
    }

    /// The current table, as an owned handle.
    pub fn load_full(&self) -> Arc<RoutingTable> {
        self.table.load_full()
    }

    /// Applies a new configuration: monitors of unchanged databases keep running.
    pub fn reconfigure(&self, config: &Config, users: &UserStore) {
        self.settings.store(Arc::new(monitor_settings(config)));
        let old = self.table.load_full();
        self.table.store(Arc::new(build(config, users, Some(&old), &self.settings)));
    }

    /// Stops every monitor.
    pub fn stop(&self) {
        for db in self.table.load().databases.values() {
            db.stop.cancel();
        }
    }
}

fn monitor_settings(config: &Config) -> MonitorSettings {
    let mut settings = MonitorSettings::from_config(&config.routing, config.pool.server_connect_timeout.0);
    // Validation already loaded these files; should they have gone since, monitors go plaintext.
    settings.tls = match crate::tls::TlsSettings::from_config(config) {
        Ok(tls) => Some(tls.server),
        Err(e) => {
            tracing::warn!(error = %e, "replica monitors connect without TLS");
            None
        }
    };
    settings
}

fn build(
    config: &Config,
    users: &UserStore,
    old: Option<&RoutingTable>,
    settings: &Arc<ArcSwap<MonitorSettings>>,
) -> RoutingTable {
    let r = &config.routing;
    let classifier = match old {
        Some(t) if t.read_only_functions == r.read_only_functions => t.classifier.clone(),
        _ => Arc::new(Classifier::new(&r.read_only_functions)),
    };
    let mut databases = HashMap::new();
    if r.read_write_split && config.pool.mode == PoolMode::Transaction {
        for (name, db) in &config.databases {
            if db.replicas.is_empty() {
                continue;
            }
            let user = config.own_user(db, r.monitor_user.as_ref());
            let password = r
                .monitor_password
                .clone()
                .or_else(|| db.password.clone())
                .or_else(|| users.get(&user).and_then(|s| s.plain()).map(str::to_owned));
            let targets: Vec<MonitorTarget> = db
                .replicas
                .iter()
                .map(|replica| MonitorTarget {
                    primary: db.primary.clone(),
                    replica: replica.clone(),
                    dbname: db.dbname.clone().unwrap_or_else(|| name.clone()),
                    user: user.clone(),
                    password: password.clone(),
                })
                .collect();
            let kept = old.and_then(|t| t.databases.get(name)).filter(|d| d.targets == targets);
            let entry = match kept {
                Some(d) => d.clone(),
                None => Arc::new(start(targets, settings)),
            };
            databases.insert(name.clone(), entry);
        }
    }
    RoutingTable {
        databases,
        classifier,
        read_your_writes: r.read_your_writes(),
        fallback_to_primary: r.falls_back_to_primary(),
        read_only_functions: r.read_only_functions.clone(),
    }
}

fn start(targets: Vec<MonitorTarget>, settings: &Arc<ArcSwap<MonitorSettings>>) -> DatabaseReplicas {
    let set = Arc::new(ReplicaSet::new(targets.iter().map(|t| t.replica.clone())));
    let stop = CancellationToken::new();
    for (target, status) in targets.iter().zip(set.replicas()) {
        let settings = settings.clone();
        spawn_monitor(target.clone(), status.clone(), set.clone(), move || (**settings.load()).clone(), stop.clone());
    }
    DatabaseReplicas { set, targets, stop }
}
