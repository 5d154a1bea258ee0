//! The one IO part of routing: a task per replica that polls the primary and the replica and
//! publishes the replica's lag and state in its [`ReplicaStatus`].
//!
//! # A poll
//! Every `lag_check_interval` the task:
//! 1. reads `pg_current_wal_insert_lsn()` on the primary (everything committed, flushed or
//!    not), first, so that the replica's position read next can only be newer than the
//!    primary's (lag is never under-reported because of the order), and records it in the
//!    [`ReplicaSet`];
//! 2. reads `pg_is_in_recovery()`, `pg_last_wal_replay_lsn()` and
//!    `pg_last_xact_replay_timestamp()` on the replica, raises the status' replay position
//!    (only ever from this value), computes the lag ([`LagTracker`]) and the state
//!    ([`ReplicaHealth`]).
//!
//! Connections stay open between polls and are reopened after any failure. Each connection
//! attempt is bounded by [`MonitorSettings::connect_timeout`] and each query by
//! [`MonitorSettings::query_timeout`]; a query that times out closes its connection. While a
//! query hangs (at most `query_timeout`), the replica keeps its last state.
//!
//! # Failures
//! - The replica fails (unreachable, timeout, error): Down at once; the next attempts back off
//!   exponentially from the poll interval up to [`MAX_BACKOFF`](crate::router::lag::MAX_BACKOFF).
//! - The replica is not in recovery (promoted): Down the same way, logged as such; it is never
//!   used as a replica while it answers so.
//! - The primary fails: its lag cannot be known, so a replica that answers becomes
//!   [`Unknown`](ReplicaState::Unknown) (no reads) with its replay position still raised and its
//!   last measured lag kept. The primary is retried with the same backoff, and the replica is
//!   judged on its lag again at the first poll that reads both.
//!
//! State changes are logged (info when a replica becomes Healthy, warn otherwise); individual
//! polls only at debug level.

mod probe;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::lag::{Backoff, LagLimits, LagTracker, Lsn, ReplicaHealth, ReplicaState, Retry, Sample, Transition};
use super::replica::{ReplicaSet, ReplicaStatus};
use crate::config::RoutingSection;
use probe::{Probe, Replay};

/// The shortest poll interval (a zero `lag_check_interval` is raised to it).
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// The shortest query timeout [`MonitorSettings::from_config`] chooses.
pub const MIN_QUERY_TIMEOUT: Duration = Duration::from_secs(1);

/// Which servers to poll and how to log in to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorTarget {
    /// The primary's `host:port`.
    pub primary: String,
    /// The replica's `host:port`.
    pub replica: String,
    /// The database to connect to on both.
    pub dbname: String,
    /// The user to log in as (any user can run the monitor's queries).
    pub user: String,
    /// Its password, if the servers ask for one.
    pub password: Option<String>,
}

/// How a monitor polls; read again before every poll, so a reload takes effect at the next.
#[derive(Debug, Clone)]
pub struct MonitorSettings {
    /// Time between polls (`routing.lag_check_interval`), and the first backoff delay.
    pub interval: Duration,
    /// When a replica is too far behind.
    pub limits: LagLimits,
    /// Bound on opening a connection (including login).
    pub connect_timeout: Duration,
    /// Bound on one query.
    pub query_timeout: Duration,
    /// TLS toward the servers as `tls.server_mode` asks (`None`: plaintext).
    pub tls: Option<crate::tls::ServerTls>,
}

impl MonitorSettings {
    /// Settings from `[routing]`: the interval (at least [`MIN_INTERVAL`]) and lag limits
    /// from there, connections bounded by `connect_timeout` (`pool.server_connect_timeout`),
    /// queries by the interval but at least [`MIN_QUERY_TIMEOUT`].
    pub fn from_config(routing: &RoutingSection, connect_timeout: Duration) -> Self {
        let interval = routing.lag_check_interval.0.max(MIN_INTERVAL);
        MonitorSettings {
            interval,
            limits: LagLimits { max_lag: routing.max_replica_lag.0, max_lag_bytes: routing.max_replica_lag_bytes.0 },
            connect_timeout,
            query_timeout: interval.max(MIN_QUERY_TIMEOUT),
            tls: None,
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::from_interval(self.interval.max(MIN_INTERVAL))
    }
}

/// Why a poll failed.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// The configured address is not `host:port`.
    #[error("{address:?} is not host:port")]
    BadAddress {
        /// The address.
        address: String,
    },
    /// Connecting or logging in failed.
    #[error("connecting to {address}: {source}")]
    Connect {
        /// The server.
        address: String,
        /// What the driver reported.
        #[source]
        source: tokio_postgres::Error,
    },
    /// Connecting took longer than the connect timeout.
    #[error("connecting to {address}: no answer within {timeout:?}")]
    ConnectTimeout {
        /// The server.
        address: String,
        /// The timeout.
        timeout: Duration,
    },
    /// A query failed.
    #[error("polling {address}: {source}")]
    Query {
        /// The server.
        address: String,
        /// What the driver reported.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A query took longer than the query timeout.
    #[error("polling {address}: no answer within {timeout:?}")]
    QueryTimeout {
        /// The server.
        address: String,
        /// The timeout.
        timeout: Duration,
    },
    /// A query returned something unexpected.
    #[error("polling {address}: unexpected {value:?} for {what}")]
    BadValue {
        /// The server.
        address: String,
        /// Which value.
        what: &'static str,
        /// What came back.
        value: String,
    },
    /// The replica is not in recovery: it was promoted, or is not a replica at all.
    #[error("{address} is not in recovery (promoted?), so it is not used as a replica")]
    NotInRecovery {
        /// The server.
        address: String,
    },
}

/// Spawns [`run_monitor`] on the current Tokio runtime.
///
/// # Panics
/// Outside a Tokio runtime.
pub fn spawn_monitor(
    target: MonitorTarget,
    status: Arc<ReplicaStatus>,
    set: Arc<ReplicaSet>,
    settings: impl Fn() -> MonitorSettings + Send + 'static,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(run_monitor(target, status, set, settings, shutdown))
}

/// Polls `target` every interval until `shutdown` is cancelled, publishing the replica's
/// state, lag and replay position in `status` and the primary's position in `set`.
/// `settings` is called before every poll (e.g. `move || settings_from(&config.load())`).
///
/// # Cancel safety
/// Cancelling `shutdown` ends it at once, even in the middle of a poll; dropping the future does
/// the same. The connections close as they are dropped.
pub async fn run_monitor(
    target: MonitorTarget,
    status: Arc<ReplicaStatus>,
    set: Arc<ReplicaSet>,
    settings: impl Fn() -> MonitorSettings + Send + 'static,
    shutdown: CancellationToken,
) {
    info!(replica = %target.replica, primary = %target.primary, "monitoring replica");
    let mut monitor = Monitor::new(&target, status, set);
    let mut next = tokio::time::Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(next) => {}
        }
        let started = tokio::time::Instant::now();
        let s = settings();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = monitor.poll(&s) => {}
        }
        next = started + s.interval.max(MIN_INTERVAL);
    }
    debug!(replica = %target.replica, "replica monitor stopped");
}

/// What one monitor task keeps between polls.
struct Monitor {
    primary: Probe,
    replica: Probe,
    primary_address: String,
    status: Arc<ReplicaStatus>,
    set: Arc<ReplicaSet>,
    tracker: LagTracker,
    health: ReplicaHealth,
    primary_retry: Retry,
}

/// The primary's position and when it was read.
#[derive(Debug, Clone, Copy)]
struct PrimaryRead {
    lsn: Lsn,
    at: Instant,
    wall: SystemTime,
}

impl Monitor {
    fn new(target: &MonitorTarget, status: Arc<ReplicaStatus>, set: Arc<ReplicaSet>) -> Self {
        Monitor {
            primary: Probe::new(&target.primary, target),
            replica: Probe::new(&target.replica, target),
            primary_address: target.primary.clone(),
            status,
            set,
            tracker: LagTracker::new(),
            health: ReplicaHealth::new(),
            primary_retry: Retry::default(),
        }
    }

    /// One poll: the primary (unless backing off), then the replica (unless backing off).
    async fn poll(&mut self, s: &MonitorSettings) {
        let primary = self.poll_primary(s).await;
        if !self.health.due(Instant::now()) {
            return;
        }
        let change = match self.replica.replay(s).await {
            Ok(replay) => self.judge(replay, primary, s.limits),
            Err(e) => {
                let change = self.health.on_failure(Instant::now(), s.backoff());
                self.status.set_state(self.health.state());
                let error = chain(&e);
                if change.is_some() {
                    warn!(replica = %self.status.address(), %error, "replica down");
                } else {
                    let retry_in = self.health.next_attempt().map(|t| t.saturating_duration_since(Instant::now()));
                    debug!(replica = %self.status.address(), %error, ?retry_in, "replica still down");
                }
                None
            }
        };
        self.status.count_poll();
        if let Some(t) = change {
            self.log(t);
        }
    }

    /// Reads the primary's position, if it is not backing off.
    async fn poll_primary(&mut self, s: &MonitorSettings) -> Option<PrimaryRead> {
        if !self.primary_retry.due(Instant::now()) {
            return None;
        }
        // Numbered before it is sent: commits marked before this number are covered by it.
        let poll = self.set.start_primary_poll();
        match self.primary.current_wal_lsn(s).await {
            Ok(lsn) => {
                let read = PrimaryRead { lsn, at: Instant::now(), wall: SystemTime::now() };
                if self.primary_retry.failures() > 0 {
                    info!(primary = %self.primary_address, replica = %self.status.address(), "primary reachable again");
                }
                self.primary_retry.succeed();
                self.set.finish_primary_poll(poll, lsn);
                self.tracker.note_primary(lsn, read.at);
                Some(read)
            }
            Err(e) => {
                self.primary_retry.fail(Instant::now(), s.backoff());
                let error = chain(&e);
                if self.primary_retry.failures() == 1 {
                    warn!(primary = %self.primary_address, replica = %self.status.address(), %error,
                        "cannot read the primary's WAL position; the replica's lag is unknown");
                } else {
                    debug!(primary = %self.primary_address, %error, "primary still unreachable");
                }
                None
            }
        }
    }

    /// Stores a successful replica poll and judges the replica.
    fn judge(&mut self, replay: Replay, primary: Option<PrimaryRead>, limits: LagLimits) -> Option<Transition> {
        self.status.raise_replay_lsn(replay.lsn);
        let change = match primary {
            Some(p) => {
                let lag = self.tracker.observe(&Sample {
                    primary: p.lsn,
                    replay: replay.lsn,
                    replay_timestamp: replay.timestamp,
                    at: p.at,
                    wall: p.wall,
                });
                self.status.set_lag(lag);
                self.health.on_lag(lag, limits)
            }
            None => self.health.on_lag_unknown(),
        };
        self.status.set_state(self.health.state());
        change
    }

    /// Logs a change of state (Down is logged where its cause is known).
    fn log(&self, t: Transition) {
        let replica = self.status.address();
        let lag = self.status.lag();
        let from = t.from.as_str();
        match t.to {
            ReplicaState::Healthy => {
                info!(%replica, from, lag_bytes = lag.bytes, lag_seconds = lag.seconds, "replica healthy")
            }
            ReplicaState::Lagging => {
                warn!(%replica, from, lag_bytes = lag.bytes, lag_seconds = lag.seconds, "replica lagging")
            }
            ReplicaState::Unknown => warn!(%replica, from, "replica lag unknown (primary unreachable)"),
            ReplicaState::Down => warn!(%replica, from, "replica down"),
        }
    }
}

/// `e` and its sources, joined by `: ` (the driver's own message alone is often vague).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}
