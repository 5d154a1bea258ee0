//! Pool settings, derived from `[pool]` and the database's overrides.

use std::time::{Duration, Instant};

/// How a pool behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    /// Most connections.
    pub size: usize,
    /// Connections kept open even when idle.
    pub min_size: usize,
    /// Most clients waiting; 0 = unbounded.
    pub max_waiting: usize,
    /// Longest wait for a connection; `None` = forever.
    pub wait_timeout: Option<Duration>,
    /// Longest time to open a connection.
    pub connect_timeout: Duration,
    /// Idle connections older than this are closed.
    pub idle_timeout: Option<Duration>,
    /// Connections older than this are closed when they come back.
    pub lifetime: Option<Duration>,
    /// Longest time a dirty connection may take to reset before it is closed.
    pub reset_timeout: Duration,
    /// Connections being opened at once, at most: a burst of clients does not become a burst
    /// of logins on a server that may be struggling already.
    pub max_logins: usize,
}

/// The first wait after a failed login; it doubles with each failure in a row.
pub const LOGIN_BACKOFF_START: Duration = Duration::from_millis(50);

/// The longest wait between logins after failures.
pub const LOGIN_BACKOFF_MAX: Duration = Duration::from_secs(5);

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            size: 20,
            min_size: 0,
            max_waiting: 0,
            wait_timeout: Some(Duration::from_secs(30)),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Some(Duration::from_secs(600)),
            lifetime: Some(Duration::from_secs(3600)),
            reset_timeout: Duration::from_secs(5),
            max_logins: 8,
        }
    }
}

impl PoolSettings {
    /// Whether a connection created at `created` and idle since `idle_since` should be closed.
    pub fn expired(&self, created: Instant, idle_since: Instant) -> bool {
        self.expired_at(Instant::now(), created, idle_since)
    }

    /// [`PoolSettings::expired`] with the current time given.
    pub fn expired_at(&self, now: Instant, created: Instant, idle_since: Instant) -> bool {
        self.lifetime.is_some_and(|l| now.duration_since(created) >= l)
            || self.idle_timeout.is_some_and(|t| now.duration_since(idle_since) >= t)
    }
}
