//! What sessions record, on the hot path: counters per database held as plain atomics, handed
//! out once per login, so counting a query or a transaction is one atomic add with no label
//! lookup. The exporter copies them into Prometheus when it is scraped, and SHOW STATS reads
//! the same atomics.

use super::names;
use dashmap::DashMap;
use metrics::Histogram;
use metrics_exporter_prometheus::PrometheusRecorder;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// Where a transaction or query ran (the `route` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The primary.
    Primary = 0,
    /// A replica.
    Replica = 1,
    /// Answered from the result cache.
    Cache = 2,
}

impl Route {
    /// Every route, in label order.
    pub const ALL: [Route; 3] = [Route::Primary, Route::Replica, Route::Cache];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Primary => "primary",
            Route::Replica => "replica",
            Route::Cache => "cache",
        }
    }
}

/// What went wrong (the `kind` label of `sluice_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A client broke the protocol.
    ClientProtocol,
    /// A client failed authentication.
    Auth,
    /// A client did not finish login in time.
    LoginTimeout,
    /// No server connection became free within `query_wait_timeout`.
    PoolTimeout,
    /// Too many clients were already waiting (`max_wait_clients`).
    PoolFull,
    /// A server connection could not be opened.
    ServerConnect,
    /// A server connection failed under a client.
    ServerLost,
    /// A read found no healthy replica with `replica_fallback = "error"`.
    NoReplica,
    /// A client idled in a transaction past `idle_transaction_timeout`.
    IdleInTransaction,
    /// A client was refused because `max_client_conn` was reached.
    TooManyClients,
}

impl ErrorKind {
    /// Every kind, in index order.
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::ClientProtocol,
        ErrorKind::Auth,
        ErrorKind::LoginTimeout,
        ErrorKind::PoolTimeout,
        ErrorKind::PoolFull,
        ErrorKind::ServerConnect,
        ErrorKind::ServerLost,
        ErrorKind::NoReplica,
        ErrorKind::IdleInTransaction,
        ErrorKind::TooManyClients,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::ClientProtocol => "client_protocol",
            ErrorKind::Auth => "auth",
            ErrorKind::LoginTimeout => "login_timeout",
            ErrorKind::PoolTimeout => "pool_timeout",
            ErrorKind::PoolFull => "pool_full",
            ErrorKind::ServerConnect => "server_connect",
            ErrorKind::ServerLost => "server_lost",
            ErrorKind::NoReplica => "no_replica",
            ErrorKind::IdleInTransaction => "idle_in_transaction",
            ErrorKind::TooManyClients => "too_many_clients",
        }
    }
}

/// Counters of one database since sluice started.
#[derive(Debug, Default)]
pub struct DatabaseCounters {
    transactions: [AtomicU64; 3],
    queries: [AtomicU64; 3],
    logins: AtomicU64,
    /// Microseconds sessions held server connections.
    busy_micros: AtomicU64,
}

impl DatabaseCounters {
    /// Counts a finished transaction.
    pub fn transaction(&self, route: Route) {
        self.transactions[route as usize].fetch_add(1, Relaxed);
    }

    /// Counts a finished query.
    pub fn query(&self, route: Route) {
        self.queries[route as usize].fetch_add(1, Relaxed);
    }

    /// Transactions run on `route`.
    pub fn transactions(&self, route: Route) -> u64 {
        self.transactions[route as usize].load(Relaxed)
    }

    /// Queries run on `route`.
    pub fn queries(&self, route: Route) -> u64 {
        self.queries[route as usize].load(Relaxed)
    }

    /// Microseconds sessions held server connections.
    pub fn busy_micros(&self) -> u64 {
        self.busy_micros.load(Relaxed)
    }

    /// Client logins.
    pub fn logins(&self) -> u64 {
        self.logins.load(Relaxed)
    }
}

/// Counts one connected client of a (database, user) pool until dropped.
#[derive(Debug)]
#[must_use = "the client is counted only while this guard lives"]
pub struct ClientTally(Arc<AtomicUsize>);

impl Drop for ClientTally {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// The handles one session records through, taken once at login.
#[derive(Debug)]
pub struct SessionMetrics {
    database: Arc<DatabaseCounters>,
    wait: Histogram,
    _tally: ClientTally,
}

impl SessionMetrics {
    /// Counts a finished transaction (one atomic add).
    pub fn transaction(&self, route: Route) {
        self.database.transaction(route);
    }

    /// Counts a finished query (one atomic add).
    pub fn query(&self, route: Route) {
        self.database.query(route);
    }

    /// Counts `n` finished queries (one atomic add).
    pub fn queries(&self, route: Route, n: u64) {
        self.database.queries[route as usize].fetch_add(n, Relaxed);
    }

    /// Records how long a transaction held its server connection (one atomic add).
    pub fn held(&self, held: Duration) {
        self.database.busy_micros.fetch_add(held.as_micros() as u64, Relaxed);
    }

    /// Records how long a checkout waited for a server connection (zero when one was free).
    pub fn waited(&self, wait: Duration) {
        self.wait.record(wait.as_secs_f64());
    }
}

/// Everything sessions count, shared by the whole process; built once at start.
pub struct Metrics {
    recorder: Option<PrometheusRecorder>,
    databases: DashMap<String, Arc<DatabaseCounters>>,
    clients: DashMap<(String, String), Arc<AtomicUsize>>,
    errors: [AtomicU64; ErrorKind::ALL.len()],
    wait: Histogram,
}

impl Metrics {
    /// Counters only: no Prometheus registry (nothing is exported; the histogram is not kept).
    pub fn new() -> Self {
        Self::build(None)
    }

    /// Counters plus a Prometheus registry for [`super::install`] to serve.
    pub fn exported() -> Self {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(names::CLIENT_WAIT.into()),
                names::WAIT_BUCKETS,
            )
            .expect("the bucket list is not empty")
            // Gauges of pools and replicas that went away disappear at the next scrape.
            .idle_timeout(metrics_util::MetricKindMask::GAUGE, Some(Duration::from_secs(1)))
            .build_recorder();
        Self::build(Some(recorder))
    }

    fn build(recorder: Option<PrometheusRecorder>) -> Self {
        let wait = match &recorder {
            Some(r) => {
                use metrics::Recorder;
                for (name, help) in names::HELP {
                    let (name, help) = (metrics::KeyName::from(*name), metrics::SharedString::from(*help));
                    if name.as_str() == names::CLIENT_WAIT {
                        r.describe_histogram(name, Some(metrics::Unit::Seconds), help);
                    } else {
                        r.describe_gauge(name, None, help);
                    }
                }
                r.register_histogram(&metrics::Key::from_name(names::CLIENT_WAIT), &super::METADATA)
            }
            None => Histogram::noop(),
        };
        Self { recorder, databases: DashMap::new(), clients: DashMap::new(), errors: Default::default(), wait }
    }

    /// The Prometheus registry, when exported.
    pub(super) fn recorder(&self) -> Option<&PrometheusRecorder> {
        self.recorder.as_ref()
    }

    /// The counters of `database`, created on first use.
    pub fn database(&self, database: &str) -> Arc<DatabaseCounters> {
        if let Some(d) = self.databases.get(database) {
            return d.clone();
        }
        self.databases.entry(database.to_owned()).or_default().clone()
    }

    /// Every database's counters, sorted by name.
    pub fn databases(&self) -> Vec<(String, Arc<DatabaseCounters>)> {
        let mut all: Vec<_> = self.databases.iter().map(|e| (e.key().clone(), e.value().clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Called once per login: counts the login and the connected client of the pool
    /// (`database`, `user` = the role sluice logs in to the servers as) until the returned
    /// handles are dropped.
    pub fn session(&self, database: &str, user: &str) -> SessionMetrics {
        let counters = self.database(database);
        counters.logins.fetch_add(1, Relaxed);
        let count = self.clients.entry((database.to_owned(), user.to_owned())).or_default().clone();
        count.fetch_add(1, Relaxed);
        SessionMetrics { database: counters, wait: self.wait.clone(), _tally: ClientTally(count) }
    }

    /// Connected clients per (database, user), sorted.
    pub fn connected(&self) -> Vec<((String, String), usize)> {
        let mut all: Vec<_> = self.clients.iter().map(|e| (e.key().clone(), e.value().load(Relaxed))).collect();
        all.sort();
        all
    }

    /// Counts an error.
    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind as usize].fetch_add(1, Relaxed);
    }

    /// Errors counted so far, by kind.
    pub fn errors(&self) -> impl Iterator<Item = (ErrorKind, u64)> + '_ {
        ErrorKind::ALL.iter().map(|k| (*k, self.errors[*k as usize].load(Relaxed)))
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_handles_count_into_the_database() {
        let m = Metrics::new();
        let a = m.session("app", "u");
        let b = m.session("app", "u");
        a.transaction(Route::Replica);
        b.transaction(Route::Primary);
        b.query(Route::Primary);
        b.query(Route::Primary);
        a.waited(Duration::from_millis(3));
        let app = m.database("app");
        assert_eq!((app.transactions(Route::Replica), app.transactions(Route::Primary)), (1, 1));
        assert_eq!((app.queries(Route::Primary), app.queries(Route::Cache), app.logins()), (2, 0, 2));
        assert_eq!(m.connected(), [(("app".to_owned(), "u".to_owned()), 2)]);
        drop(a);
        assert_eq!(m.connected()[0].1, 1);
        drop(b);
        assert_eq!(m.connected()[0].1, 0);
        assert_eq!(app.logins(), 2);
    }

    #[test]
    fn errors_count_by_kind() {
        let m = Metrics::new();
        m.error(ErrorKind::PoolTimeout);
        m.error(ErrorKind::PoolTimeout);
        m.error(ErrorKind::Auth);
        let counts: Vec<(&str, u64)> = m.errors().filter(|(_, n)| *n > 0).map(|(k, n)| (k.as_str(), n)).collect();
        assert_eq!(counts, [("auth", 1), ("pool_timeout", 2)]);
        for (i, k) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
    }
}
