//! Pool-size advice from live statistics, for SHOW ADVICE and `sluice advise`.
//!
//! Little's law: the server connections busy on average are the arrival rate of transactions
//! times the time each holds a connection (L = λ·W). A pool about a third larger than L keeps
//! connections about 75 % busy, with room for bursts. When the pool is nearly always busy and
//! clients wait, L is capped by the pool itself and says nothing of demand: the pool is raised,
//! but not past about eight connections per server core, since beyond that more connections only
//! add contention and Postgres slows down for everyone. (Eight, not the two per core of the usual
//! rule of thumb: in transaction mode a connection is also held while the client sends the
//! transaction's next statement and while the commit is flushed, so only part of each held
//! connection's time is CPU. The death-spiral benchmark's pool sweep shows the peak there.)
//!
//! [`advise`] is pure: samples of counters in, advice out. [`Samples`] keeps the last minute of
//! them per database; the app's maintenance task adds one every few seconds.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How far back advice looks.
pub const WINDOW: Duration = Duration::from_secs(60);

/// The recent samples of every database.
#[derive(Debug, Default)]
pub struct Samples {
    /// Touched every few seconds by one task and by SHOW ADVICE: never on the relay.
    by_database: Mutex<HashMap<String, VecDeque<Sample>>>,
}

impl Samples {
    /// Adds a sample of `database`, forgetting those older than [`WINDOW`].
    pub fn record(&self, database: &str, sample: Sample) {
        let mut all = self.by_database.lock().unwrap_or_else(|e| e.into_inner());
        let list = all.entry(database.to_owned()).or_default();
        list.push_back(sample);
        while list.front().is_some_and(|s| sample.at.saturating_duration_since(s.at) > WINDOW) {
            list.pop_front();
        }
    }

    /// The oldest sample of `database` in the window and the largest waiting count seen.
    pub fn oldest(&self, database: &str) -> Option<(Sample, usize)> {
        let all = self.by_database.lock().unwrap_or_else(|e| e.into_inner());
        let list = all.get(database)?;
        Some((*list.front()?, list.iter().map(|s| s.waiting).max().unwrap_or(0)))
    }
}

/// Counters of one database at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// When.
    pub at: Instant,
    /// Transactions run on servers (primary and replicas).
    pub transactions: u64,
    /// Microseconds server connections were held by sessions.
    pub busy_micros: u64,
    /// Microseconds clients waited for a server connection.
    pub wait_micros: u64,
    /// Server connections handed out.
    pub checkouts: u64,
    /// Clients waiting for a server connection at that moment.
    pub waiting: usize,
}

/// What the statistics say about a pool's size.
#[derive(Debug, Clone, PartialEq)]
pub struct Advice {
    /// The size to use.
    pub recommended: usize,
    /// Transactions per second (λ).
    pub arrival_rate: f64,
    /// Milliseconds a transaction holds a server connection (W).
    pub hold_ms: f64,
    /// Server connections busy on average (L = λ·W).
    pub busy: f64,
    /// Milliseconds a checkout waited on average.
    pub wait_ms: f64,
    /// Seconds the samples span.
    pub window_secs: f64,
    /// Why, in a sentence or two.
    pub reason: String,
}

/// Connections per server CPU beyond which more only add contention.
const PER_CPU: usize = 8;

/// Advice for a pool of `pool_size` from the samples `first` and `last` (the largest waiting
/// count seen in between is `peak_waiting`), for a server with `cpus` CPUs if known.
pub fn advise(first: &Sample, last: &Sample, peak_waiting: usize, pool_size: usize, cpus: Option<usize>) -> Advice {
    let window_secs = last.at.saturating_duration_since(first.at).as_secs_f64();
    let transactions = last.transactions.saturating_sub(first.transactions);
    let checkouts = last.checkouts.saturating_sub(first.checkouts);
    let mut advice = Advice {
        recommended: pool_size,
        arrival_rate: 0.0,
        hold_ms: 0.0,
        busy: 0.0,
        wait_ms: 0.0,
        window_secs,
        reason: String::new(),
    };
    if window_secs < 1.0 || transactions == 0 {
        advice.reason = format!(
            "no transactions in the last {window_secs:.0} s: nothing to go on, keep {pool_size} (ask again under load)"
        );
        return advice;
    }
    let busy_micros = last.busy_micros.saturating_sub(first.busy_micros) as f64;
    advice.arrival_rate = transactions as f64 / window_secs;
    advice.hold_ms = busy_micros / transactions as f64 / 1000.0;
    advice.busy = busy_micros / 1e6 / window_secs;
    advice.wait_ms = last.wait_micros.saturating_sub(first.wait_micros) as f64 / checkouts.max(1) as f64 / 1000.0;
    let utilization = advice.busy / pool_size.max(1) as f64;
    let cap = cpus.map(|c| (c * PER_CPU).max(2));
    let needed = ((advice.busy / 0.75).ceil() as usize + 1).max(2);
    let little = format!(
        "{:.0} transactions/s × {:.2} ms each on a server connection = {:.1} connections busy on average (Little's law)",
        advice.arrival_rate, advice.hold_ms, advice.busy
    );
    let saturated = utilization >= 0.85 && (advice.wait_ms >= 1.0 || peak_waiting > 0);
    if saturated {
        let wanted = needed.max(pool_size + pool_size.div_ceil(2));
        match cap {
            Some(cap) if pool_size >= cap => {
                advice.recommended = cap;
                advice.reason = format!(
                    "{little}; the pool is {:.0} % busy and clients waited {:.1} ms per transaction, but the server \
                     has {} CPUs: past about {cap} connections Postgres only slows down. Keep {cap}: the wait is the \
                     server's limit, and max_wait_clients bounds the queue",
                    utilization * 100.0,
                    advice.wait_ms,
                    cpus.unwrap_or_default()
                );
            }
            _ => {
                advice.recommended = cap.map_or(wanted, |cap| wanted.min(cap));
                advice.reason = format!(
                    "{little}; the pool is {:.0} % busy and clients waited {:.1} ms per transaction: the pool caps \
                     the load, so demand is higher than it shows. Try {}{}",
                    utilization * 100.0,
                    advice.wait_ms,
                    advice.recommended,
                    cpus.map_or_else(
                        || " (the server's CPU count is unknown: watch its CPU as you raise it)".to_owned(),
                        |c| format!(" (at most {} for {c} CPUs)", c * PER_CPU)
                    )
                );
            }
        }
        return advice;
    }
    advice.recommended = cap.map_or(needed, |cap| needed.min(cap));
    let verdict = if advice.recommended < pool_size {
        format!("the pool of {pool_size} is larger than the load needs")
    } else if advice.recommended > pool_size {
        format!("the pool of {pool_size} runs close to full")
    } else {
        "the pool is the right size".to_owned()
    };
    advice.reason = format!(
        "{little}; {} keeps them about 75 % busy with room for bursts: {verdict}",
        advice.recommended
    );
    advice
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn samples(secs: u64, transactions: u64, busy_ms: u64, wait_ms: u64) -> (Sample, Sample) {
        let at = Instant::now();
        let first = Sample { at, transactions: 0, busy_micros: 0, wait_micros: 0, checkouts: 0, waiting: 0 };
        let last = Sample {
            at: at + Duration::from_secs(secs),
            transactions,
            busy_micros: busy_ms * 1000,
            wait_micros: wait_ms * 1000,
            checkouts: transactions,
            waiting: 0,
        };
        (first, last)
    }

    #[test]
    fn an_idle_pool_keeps_its_size() {
        let (a, b) = samples(60, 0, 0, 0);
        let advice = advise(&a, &b, 0, 20, Some(8));
        assert_eq!(advice.recommended, 20);
        assert!(advice.reason.contains("no transactions"), "{}", advice.reason);
    }

    #[test]
    fn a_lightly_used_pool_is_sized_by_littles_law() {
        // 1000 tx/s × 2 ms = 2 connections busy: 2 / 0.75 → 3, + 1.
        let (a, b) = samples(10, 10_000, 20_000, 0);
        let advice = advise(&a, &b, 0, 20, Some(8));
        assert!((advice.busy - 2.0).abs() < 1e-9 && (advice.hold_ms - 2.0).abs() < 1e-9);
        assert_eq!(advice.recommended, 4);
        assert!(advice.reason.contains("larger than the load needs"), "{}", advice.reason);
    }

    #[test]
    fn a_saturated_pool_grows_up_to_what_the_cpus_can_run() {
        // 10 connections busy all the time, clients waiting 5 ms each.
        let (a, b) = samples(10, 50_000, 100_000, 250_000);
        let grow = advise(&a, &b, 30, 10, Some(8));
        assert_eq!(grow.recommended, 15);
        assert!(grow.reason.contains("demand is higher"), "{}", grow.reason);
        let unknown = advise(&a, &b, 30, 10, None);
        assert_eq!(unknown.recommended, 15);
        assert!(unknown.reason.contains("CPU count is unknown"), "{}", unknown.reason);
        let capped = advise(&a, &b, 30, 10, Some(1));
        assert_eq!(capped.recommended, 8);
        assert!(capped.reason.contains("only slows down"), "{}", capped.reason);
    }
}
