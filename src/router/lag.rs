//! How far behind the primary a replica is, and whether it is fit to serve reads.
//!
//! Pure: the monitor task ([`super::monitor`]) feeds in what it read from the servers and the
//! time, and gets back a [`Lag`] and a [`ReplicaState`]. Nothing here does IO or reads a clock.
//!
//! # Lag in bytes
//! `pg_current_wal_lsn()` on the primary minus `pg_last_wal_replay_lsn()` on the replica, zero
//! when the replica is at or beyond the primary's position.
//!
//! # Lag in seconds
//! The staleness of what the replica shows: how long ago the primary first moved beyond the
//! replica's replay position. [`LagTracker`] keeps a short history of the primary's positions,
//! each with the first time it was seen, and answers `now − (first time the primary was seen
//! beyond the replay position)`.
//! - A replica that has replayed everything the primary had is 0 s behind, however old its last
//!   commit: an idle primary does not make its replicas look stale.
//! - When the history holds an older position at or below the replay position (the normal case
//!   once the monitor has run for a poll), the answer is exact to within one poll interval, and
//!   never above the truth: the primary moved on somewhere between the two polls.
//! - Otherwise (the first polls, or after a gap longer than the history) the history only gives a
//!   lower bound. Then `now − pg_last_xact_replay_timestamp()` is used when it is larger: the
//!   commit time of the last transaction replayed, an upper bound (the primary wrote the
//!   missing WAL after that commit), taken only when nothing better is known.
//!
//! # Health
//! [`ReplicaHealth`] turns lags and failed polls into a [`ReplicaState`], with hysteresis
//! between Healthy and Lagging and exponential backoff while Down; see its docs.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime};

/// A position in the write-ahead log (`pg_lsn`), written by Postgres as two hexadecimal
/// numbers, the high and low 32 bits: `16/B374D848`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The start of the log: before everything.
    pub const ZERO: Lsn = Lsn(0);

    /// Parses Postgres' text form, `16/B374D848` (1 to 8 hex digits on each side).
    ///
    /// # Errors
    /// [`ParseLsnError`] when the text is not of that form.
    pub fn parse(text: &str) -> Result<Lsn, ParseLsnError> {
        let half = |s: &str| {
            let ok = (1..=8).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit());
            ok.then(|| u32::from_str_radix(s, 16).ok()).flatten()
        };
        let (hi, lo) = text.split_once('/').ok_or_else(|| ParseLsnError::new(text))?;
        match (half(hi), half(lo)) {
            (Some(hi), Some(lo)) => Ok(Lsn((u64::from(hi) << 32) | u64::from(lo))),
            _ => Err(ParseLsnError::new(text)),
        }
    }

    /// How many bytes of WAL lie from `earlier` to `self` (zero if `earlier` is not before).
    pub fn bytes_after(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = ParseLsnError;
    fn from_str(s: &str) -> Result<Lsn, ParseLsnError> {
        Lsn::parse(s)
    }
}

/// Text that is not a WAL position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a WAL position (two hexadecimal numbers, like 16/B374D848)")]
pub struct ParseLsnError {
    /// The text (at most 64 bytes of it).
    pub text: String,
}

impl ParseLsnError {
    fn new(text: &str) -> Self {
        let end = text.char_indices().nth(64).map_or(text.len(), |(i, _)| i);
        ParseLsnError { text: text[..end].to_string() }
    }
}

/// How far behind the primary a replica is.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Lag {
    /// WAL bytes the primary has written that the replica has not replayed.
    pub bytes: u64,
    /// How long ago the primary first moved beyond what the replica has replayed (see the
    /// [module docs](self)).
    pub seconds: f64,
}

impl Lag {
    /// Not behind at all.
    pub const ZERO: Lag = Lag { bytes: 0, seconds: 0.0 };

    /// The time lag as a [`Duration`].
    pub fn duration(&self) -> Duration {
        Duration::try_from_secs_f64(self.seconds).unwrap_or(Duration::ZERO)
    }
}

/// One poll of a primary and one of its replicas.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// The primary's `pg_current_wal_lsn()`, read before the replica was queried.
    pub primary: Lsn,
    /// The replica's `pg_last_wal_replay_lsn()`.
    pub replay: Lsn,
    /// The replica's `pg_last_xact_replay_timestamp()`: commit time of the last transaction it
    /// replayed (`None` when it has replayed none since it started).
    pub replay_timestamp: Option<SystemTime>,
    /// When the primary's position was read.
    pub at: Instant,
    /// The same moment on the wall clock, to compare with `replay_timestamp`.
    pub wall: SystemTime,
}

/// How many primary positions [`LagTracker`] remembers (at a poll every 100 ms, 100 s of
/// continuous writing while a replica replays nothing).
const HISTORY: usize = 1024;

/// A position of the primary and when it was first seen.
#[derive(Debug, Clone, Copy)]
struct Seen {
    lsn: Lsn,
    at: Instant,
}

/// Computes a replica's [`Lag`] from successive [`Sample`]s (see the [module docs](self)).
///
/// Memory is bounded: the history holds at most 1024 positions, allocated once, and
/// positions the replica has replayed are dropped (all but the newest, which brackets the next
/// answer).
#[derive(Debug, Clone)]
pub struct LagTracker {
    history: VecDeque<Seen>,
}

impl Default for LagTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl LagTracker {
    /// A tracker that has seen nothing yet.
    pub fn new() -> Self {
        LagTracker { history: VecDeque::with_capacity(HISTORY) }
    }

    /// Records the primary's position at `at`, read without a replica sample (the replica was
    /// not polled or did not answer), so that later answers stay precise.
    ///
    /// A position below the newest one means the primary is another server (failover, restore):
    /// the history is restarted.
    pub fn note_primary(&mut self, lsn: Lsn, at: Instant) {
        match self.history.back() {
            Some(last) if lsn == last.lsn => {}
            Some(last) if lsn < last.lsn => {
                self.history.clear();
                self.history.push_back(Seen { lsn, at });
            }
            _ => {
                if self.history.len() == HISTORY {
                    self.history.pop_front();
                }
                self.history.push_back(Seen { lsn, at });
            }
        }
    }

    /// The replica's lag according to `sample`, which is also recorded.
    pub fn observe(&mut self, sample: &Sample) -> Lag {
        self.note_primary(sample.primary, sample.at);
        if sample.replay >= sample.primary {
            self.forget_replayed(sample.replay);
            return Lag::ZERO;
        }
        // The newest entry is `sample.primary`, beyond the replay position, so `first` is an
        // index into the history.
        let first = self.history.partition_point(|s| s.lsn <= sample.replay);
        let since = sample.at.saturating_duration_since(self.history[first].at);
        let bracketed = first > 0;
        let seconds = match sample.replay_timestamp {
            Some(ts) if !bracketed => since.max(sample.wall.duration_since(ts).unwrap_or_default()),
            _ => since,
        };
        self.forget_replayed(sample.replay);
        Lag { bytes: sample.primary.bytes_after(sample.replay), seconds: seconds.as_secs_f64() }
    }

    /// Drops the positions at or below `replay` except the newest of them.
    fn forget_replayed(&mut self, replay: Lsn) {
        while self.history.len() >= 2 && self.history[1].lsn <= replay {
            self.history.pop_front();
        }
    }
}

/// What the router knows of a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReplicaState {
    /// Not judged yet (no successful poll since sluice started), or reachable but with a lag
    /// that cannot be measured because the primary is unreachable. Not used for reads.
    Unknown = 0,
    /// Reachable, in recovery and within the lag limits: serves reads.
    Healthy = 1,
    /// Reachable but too far behind. Not used for reads.
    Lagging = 2,
    /// Unreachable, failing its polls, or no longer a replica (promoted). Not used for reads.
    Down = 3,
}

impl ReplicaState {
    /// Lowercase name, as shown by the admin console and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaState::Unknown => "unknown",
            ReplicaState::Healthy => "healthy",
            ReplicaState::Lagging => "lagging",
            ReplicaState::Down => "down",
        }
    }

    /// The state stored as `byte` by `self as u8`; anything else is `Unknown`.
    pub fn from_u8(byte: u8) -> ReplicaState {
        match byte {
            1 => ReplicaState::Healthy,
            2 => ReplicaState::Lagging,
            3 => ReplicaState::Down,
            _ => ReplicaState::Unknown,
        }
    }
}

impl fmt::Display for ReplicaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How far behind a replica may be and still serve reads (`routing.max_replica_lag` and
/// `routing.max_replica_lag_bytes`). A zero limit is no limit on that measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LagLimits {
    /// Most time behind.
    pub max_lag: Duration,
    /// Most WAL bytes behind.
    pub max_lag_bytes: u64,
}

impl LagLimits {
    /// Whether `lag` is over either limit.
    pub fn exceeded_by(&self, lag: Lag) -> bool {
        let bytes = self.max_lag_bytes > 0 && lag.bytes > self.max_lag_bytes;
        let time = !self.max_lag.is_zero() && lag.seconds > self.max_lag.as_secs_f64();
        bytes || time
    }

    /// Whether `lag` is at or under half of both limits: far enough back for a lagging replica
    /// to serve reads again.
    pub fn recovered_by(&self, lag: Lag) -> bool {
        let bytes = self.max_lag_bytes == 0 || lag.bytes <= self.max_lag_bytes / 2;
        let time = self.max_lag.is_zero() || lag.seconds <= self.max_lag.as_secs_f64() / 2.0;
        bytes && time
    }
}

/// The longest wait between attempts to reach a server that is down.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Exponential backoff: `first`, then doubling after each further failure, up to `max` (but
/// never below `first`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Wait after the first failure (the poll interval).
    pub first: Duration,
    /// Longest wait.
    pub max: Duration,
}

impl Backoff {
    /// Backoff starting at the poll interval, up to [`MAX_BACKOFF`].
    pub fn from_interval(interval: Duration) -> Self {
        Backoff { first: interval, max: MAX_BACKOFF }
    }

    /// The wait after `failures` consecutive failures (at least 1).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        let delay = self.first.saturating_mul(1 << doublings);
        delay.min(self.max.max(self.first))
    }
}

/// Consecutive failures to reach a server, and when to try again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retry {
    failures: u32,
    next_attempt: Option<Instant>,
}

impl Retry {
    /// Records a failure at `now`: the next attempt is due after the backoff delay.
    pub fn fail(&mut self, now: Instant, backoff: Backoff) {
        self.failures = self.failures.saturating_add(1);
        self.next_attempt = Some(now + backoff.delay(self.failures));
    }

    /// Records a success: attempts are due at every poll again.
    pub fn succeed(&mut self) {
        *self = Retry::default();
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// When the next attempt is due, if the last one failed.
    pub fn next_attempt(&self) -> Option<Instant> {
        self.next_attempt
    }

    /// Whether an attempt is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.next_attempt.is_none_or(|t| now >= t)
    }
}

/// A change of [`ReplicaState`], returned so the caller can log it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: ReplicaState,
    /// The state after.
    pub to: ReplicaState,
}

/// The state machine of one replica's health.
///
/// - It starts [`Unknown`](ReplicaState::Unknown).
/// - A measured lag: a Healthy replica becomes Lagging when its lag is over either limit
///   ([`LagLimits::exceeded_by`]); a Lagging one becomes Healthy again only when both lags are
///   back at or under half their limits ([`LagLimits::recovered_by`]), so a lag hovering near a
///   limit does not flap. From Unknown or Down it is Lagging if over a limit, else Healthy.
/// - A failed poll (unreachable, timeout, not in recovery): Down at once, and the next attempt
///   waits an exponential [`Backoff`] ([`next_attempt`](Self::next_attempt)). The first
///   successful poll ends the backoff and judges the lag as above.
/// - A successful poll whose lag cannot be measured (the primary is unreachable): Unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaHealth {
    state: ReplicaState,
    retry: Retry,
}

impl Default for ReplicaHealth {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplicaHealth {
    /// A replica not polled yet: Unknown, due for a poll.
    pub fn new() -> Self {
        ReplicaHealth { state: ReplicaState::Unknown, retry: Retry::default() }
    }

    /// The current state.
    pub fn state(&self) -> ReplicaState {
        self.state
    }

    /// Consecutive failed polls.
    pub fn failures(&self) -> u32 {
        self.retry.failures()
    }

    /// When the next poll is due while Down (`None`: at the next regular poll).
    pub fn next_attempt(&self) -> Option<Instant> {
        self.retry.next_attempt()
    }

    /// Whether a poll is due at `now` (false while Down and backing off).
    pub fn due(&self, now: Instant) -> bool {
        self.retry.due(now)
    }

    /// A successful poll measured `lag`.
    pub fn on_lag(&mut self, lag: Lag, limits: LagLimits) -> Option<Transition> {
        self.retry.succeed();
        let next = match self.state {
            ReplicaState::Lagging if !limits.recovered_by(lag) => ReplicaState::Lagging,
            ReplicaState::Lagging => ReplicaState::Healthy,
            _ if limits.exceeded_by(lag) => ReplicaState::Lagging,
            _ => ReplicaState::Healthy,
        };
        self.enter(next)
    }

    /// A successful poll of the replica, but its lag cannot be known (no primary position).
    pub fn on_lag_unknown(&mut self) -> Option<Transition> {
        self.retry.succeed();
        self.enter(ReplicaState::Unknown)
    }

    /// A poll failed at `now`.
    pub fn on_failure(&mut self, now: Instant, backoff: Backoff) -> Option<Transition> {
        self.retry.fail(now, backoff);
        self.enter(ReplicaState::Down)
    }

    fn enter(&mut self, next: ReplicaState) -> Option<Transition> {
        let from = std::mem::replace(&mut self.state, next);
        (from != next).then_some(Transition { from, to: next })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn lsn_parses_and_displays_postgres_text() {
        let lsn = Lsn::parse("16/B374D848").unwrap();
        assert_eq!(lsn, Lsn(0x16_B374_D848));
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn::ZERO);
        assert_eq!(Lsn::ZERO.to_string(), "0/0");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
        assert_eq!(Lsn::parse("ffffffff/ffffffff").unwrap(), Lsn(u64::MAX));
        assert_eq!(Lsn::parse("0/3000148").unwrap(), Lsn(0x300_0148));
    }

    #[test]
    fn lsn_rejects_malformed_text() {
        for bad in ["", "0", "/0", "0/", "1/2/3", "g/0", "0/-1", "+1/0", "123456789/0", " 0/0", "0/0 "] {
            assert!(Lsn::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lsn_orders_by_position_and_subtracts_saturating() {
        assert!(Lsn::parse("1/0").unwrap() > Lsn::parse("0/FFFFFFFF").unwrap());
        assert_eq!(Lsn(100).bytes_after(Lsn(40)), 60);
        assert_eq!(Lsn(40).bytes_after(Lsn(100)), 0);
    }

    /// A sample `after` since `t0`.
    fn sample(t0: Instant, after: Duration, primary: u64, replay: u64, ts: Option<SystemTime>) -> Sample {
        Sample {
            primary: Lsn(primary),
            replay: Lsn(replay),
            replay_timestamp: ts,
            at: t0 + after,
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000) + after,
        }
    }

    fn wall(after: Duration) -> Option<SystemTime> {
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000) + after)
    }

    #[test]
    fn caught_up_replica_has_no_lag_however_old_its_last_commit() {
        let t0 = Instant::now();
        let mut t = LagTracker::new();
        let ancient = Some(SystemTime::UNIX_EPOCH);
        for i in 0..10 {
            let lag = t.observe(&sample(t0, i * 100 * MS, 500, 500, ancient));
            assert_eq!(lag, Lag::ZERO);
        }
        // Replayed beyond the primary's sample (the primary is read first).
        assert_eq!(t.observe(&sample(t0, 2000 * MS, 500, 600, ancient)), Lag::ZERO);
    }

    #[test]
    fn time_lag_counts_from_when_the_primary_first_moved_beyond_the_replica() {
        let t0 = Instant::now();
        let mut t = LagTracker::new();
        assert_eq!(t.observe(&sample(t0, Duration::ZERO, 100, 100, wall(Duration::ZERO))), Lag::ZERO);
        // The primary stays idle for a long time, then writes; the replica is paused at 100.
        let lag = t.observe(&sample(t0, 60_000 * MS, 200, 100, wall(Duration::ZERO)));
        assert_eq!(lag.bytes, 100);
        assert_eq!(lag.seconds, 0.0, "first seen beyond just now, not 60 s ago");
        t.note_primary(Lsn(300), t0 + 60_100 * MS);
        let lag = t.observe(&sample(t0, 60_500 * MS, 400, 100, wall(Duration::ZERO)));
        assert_eq!(lag.bytes, 300);
        assert!((lag.seconds - 0.5).abs() < 1e-9, "{lag:?}");
        // The replica replays up to 250: the first position beyond it is 300, seen at 60.1 s.
        let lag = t.observe(&sample(t0, 61_000 * MS, 400, 250, wall(Duration::ZERO)));
        assert_eq!(lag.bytes, 150);
        assert!((lag.seconds - 0.9).abs() < 1e-9, "{lag:?}");
        // It catches up.
        assert_eq!(t.observe(&sample(t0, 61_100 * MS, 400, 400, None)), Lag::ZERO);
    }

    #[test]
    fn without_a_bracketing_position_the_replay_timestamp_bounds_the_lag() {
        let t0 = Instant::now();
        let mut t = LagTracker::new();
        // First sample ever, the replica is behind and its last replayed commit is 30 s old.
        let lag = t.observe(&sample(t0, 30_000 * MS, 900, 100, wall(Duration::ZERO)));
        assert_eq!(lag.bytes, 800);
        assert!((lag.seconds - 30.0).abs() < 1e-9, "{lag:?}");
        // No commit replayed since the replica started: only the history's lower bound.
        let mut t = LagTracker::new();
        let lag = t.observe(&sample(t0, Duration::ZERO, 900, 100, None));
        assert_eq!(lag.seconds, 0.0);
        let lag = t.observe(&sample(t0, 200 * MS, 900, 100, None));
        assert!((lag.seconds - 0.2).abs() < 1e-9);
        // A replay timestamp in the future (clock skew) counts as none.
        let lag = t.observe(&sample(t0, 300 * MS, 900, 100, wall(Duration::from_secs(50))));
        assert!((lag.seconds - 0.3).abs() < 1e-9);
    }

    #[test]
    fn once_bracketed_the_history_wins_over_an_old_commit_timestamp() {
        let t0 = Instant::now();
        let mut t = LagTracker::new();
        t.observe(&sample(t0, Duration::ZERO, 100, 100, wall(Duration::ZERO)));
        let lag = t.observe(&sample(t0, 10_000 * MS, 150, 120, wall(Duration::ZERO)));
        assert_eq!(lag.seconds, 0.0);
        assert_eq!(lag.bytes, 30);
    }

    #[test]
    fn a_primary_that_went_back_restarts_the_history() {
        let t0 = Instant::now();
        let mut t = LagTracker::new();
        t.observe(&sample(t0, Duration::ZERO, 1000, 1000, None));
        t.observe(&sample(t0, 100 * MS, 2000, 1000, None));
        // A new primary at 500; the replica follows it at 400.
        let lag = t.observe(&sample(t0, 5000 * MS, 500, 400, None));
        assert_eq!(lag.bytes, 100);
        assert_eq!(lag.seconds, 0.0);
    }

    #[test]
    fn history_stays_bounded() {
        let t0 = Instant::now();
        let mut t = LagTracker::new();
        for i in 0..(3 * HISTORY as u64) {
            t.observe(&sample(t0, Duration::from_millis(i), 1000 + i, 1, None));
        }
        assert_eq!(t.history.len(), HISTORY);
        t.observe(&sample(t0, Duration::from_secs(10), 10_000, 10_000, None));
        assert_eq!(t.history.len(), 1);
    }

    const LIMITS: LagLimits = LagLimits { max_lag: Duration::from_secs(1), max_lag_bytes: 1000 };

    fn lag(bytes: u64, seconds: f64) -> Lag {
        Lag { bytes, seconds }
    }

    #[test]
    fn limits_have_hysteresis_and_zero_means_none() {
        assert!(!LIMITS.exceeded_by(lag(1000, 1.0)));
        assert!(LIMITS.exceeded_by(lag(1001, 0.0)));
        assert!(LIMITS.exceeded_by(lag(0, 1.01)));
        assert!(LIMITS.recovered_by(lag(500, 0.5)));
        assert!(!LIMITS.recovered_by(lag(501, 0.0)));
        assert!(!LIMITS.recovered_by(lag(0, 0.51)));
        let none = LagLimits { max_lag: Duration::ZERO, max_lag_bytes: 0 };
        assert!(!none.exceeded_by(lag(u64::MAX, 1e9)));
        assert!(none.recovered_by(lag(u64::MAX, 1e9)));
    }

    #[test]
    fn first_poll_judges_unknown_replica_on_the_limits() {
        let mut h = ReplicaHealth::new();
        assert_eq!(h.state(), ReplicaState::Unknown);
        assert!(h.due(Instant::now()));
        let t = h.on_lag(lag(900, 0.9), LIMITS);
        assert_eq!(t, Some(Transition { from: ReplicaState::Unknown, to: ReplicaState::Healthy }));
        let mut h = ReplicaHealth::new();
        h.on_lag(lag(1001, 0.0), LIMITS);
        assert_eq!(h.state(), ReplicaState::Lagging);
    }

    #[test]
    fn healthy_goes_lagging_over_either_limit() {
        for over in [lag(1001, 0.0), lag(0, 1.5)] {
            let mut h = ReplicaHealth::new();
            h.on_lag(Lag::ZERO, LIMITS);
            assert_eq!(h.on_lag(lag(1000, 1.0), LIMITS), None, "at the limit is within it");
            let t = h.on_lag(over, LIMITS);
            assert_eq!(t, Some(Transition { from: ReplicaState::Healthy, to: ReplicaState::Lagging }));
        }
    }

    #[test]
    fn lagging_returns_to_healthy_only_under_half_of_both_limits() {
        let mut h = ReplicaHealth::new();
        h.on_lag(lag(5000, 0.0), LIMITS);
        assert_eq!(h.state(), ReplicaState::Lagging);
        assert_eq!(h.on_lag(lag(900, 0.1), LIMITS), None, "under the limit but not under half");
        assert_eq!(h.on_lag(lag(100, 0.6), LIMITS), None);
        assert_eq!(h.state(), ReplicaState::Lagging);
        let t = h.on_lag(lag(500, 0.5), LIMITS);
        assert_eq!(t, Some(Transition { from: ReplicaState::Lagging, to: ReplicaState::Healthy }));
        assert_eq!(h.on_lag(lag(900, 0.9), LIMITS), None, "no flapping back");
    }

    #[test]
    fn failures_go_down_with_exponential_backoff() {
        let backoff = Backoff::from_interval(Duration::from_millis(100));
        let now = Instant::now();
        let mut h = ReplicaHealth::new();
        h.on_lag(Lag::ZERO, LIMITS);
        let t = h.on_failure(now, backoff);
        assert_eq!(t, Some(Transition { from: ReplicaState::Healthy, to: ReplicaState::Down }));
        assert_eq!(h.next_attempt(), Some(now + 100 * MS));
        assert!(!h.due(now + 99 * MS));
        assert!(h.due(now + 100 * MS));
        let mut delays = vec![];
        for _ in 0..8 {
            assert_eq!(h.on_failure(now, backoff), None);
            delays.push(h.next_attempt().unwrap() - now);
        }
        let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(h.failures(), 9);
        assert_eq!(h.state(), ReplicaState::Down);
    }

    #[test]
    fn backoff_never_goes_below_the_interval() {
        let slow = Backoff::from_interval(Duration::from_secs(10));
        assert_eq!(slow.delay(1), Duration::from_secs(10));
        assert_eq!(slow.delay(5), Duration::from_secs(10));
        assert_eq!(Backoff::from_interval(MS).delay(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn down_comes_back_through_a_successful_poll_judged_on_lag() {
        let backoff = Backoff::from_interval(Duration::from_millis(100));
        let now = Instant::now();
        let mut h = ReplicaHealth::new();
        h.on_failure(now, backoff);
        h.on_failure(now, backoff);
        let t = h.on_lag(lag(2000, 0.0), LIMITS);
        assert_eq!(t, Some(Transition { from: ReplicaState::Down, to: ReplicaState::Lagging }));
        assert_eq!(h.next_attempt(), None);
        assert_eq!(h.failures(), 0);
        h.on_failure(now, backoff);
        let t = h.on_lag(lag(900, 0.0), LIMITS);
        assert_eq!(t, Some(Transition { from: ReplicaState::Down, to: ReplicaState::Healthy }));
    }

    #[test]
    fn unmeasurable_lag_is_unknown() {
        let mut h = ReplicaHealth::new();
        h.on_lag(Lag::ZERO, LIMITS);
        let t = h.on_lag_unknown();
        assert_eq!(t, Some(Transition { from: ReplicaState::Healthy, to: ReplicaState::Unknown }));
        h.on_lag(Lag::ZERO, LIMITS);
        assert_eq!(h.state(), ReplicaState::Healthy);
    }

    #[test]
    fn state_round_trips_through_its_byte() {
        for s in [ReplicaState::Unknown, ReplicaState::Healthy, ReplicaState::Lagging, ReplicaState::Down] {
            assert_eq!(ReplicaState::from_u8(s as u8), s);
        }
        assert_eq!(ReplicaState::from_u8(200), ReplicaState::Unknown);
    }
}
