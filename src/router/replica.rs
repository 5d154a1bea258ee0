//! The shared, lock-free status of each replica, and the choice of a replica for a read.
//!
//! One [`ReplicaStatus`] per replica server of a database, shared through an `Arc` by its
//! monitor task (the only writer of the health fields), the sessions (which check replicas out
//! with [`ReplicaSet::pick`]) and the admin console and metrics (which read it). Every field is
//! an atomic with relaxed ordering: each is meaningful on its own, and a reader may see one
//! poll's state with the previous poll's lag.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use super::lag::{Lag, Lsn, ReplicaState};

/// What is known of one replica server.
#[derive(Debug)]
pub struct ReplicaStatus {
    address: String,
    state: AtomicU8,
    lag_bytes: AtomicU64,
    lag_micros: AtomicU64,
    replay_lsn: AtomicU64,
    outstanding: AtomicUsize,
    reads_routed: AtomicU64,
    polls: AtomicU64,
}

impl ReplicaStatus {
    /// A replica at `address` (`host:port`), not polled yet: [`ReplicaState::Unknown`], replay
    /// position zero.
    pub fn new(address: impl Into<String>) -> Self {
        ReplicaStatus {
            address: address.into(),
            state: AtomicU8::new(ReplicaState::Unknown as u8),
            lag_bytes: AtomicU64::new(0),
            lag_micros: AtomicU64::new(0),
            replay_lsn: AtomicU64::new(0),
            outstanding: AtomicUsize::new(0),
            reads_routed: AtomicU64::new(0),
            polls: AtomicU64::new(0),
        }
    }

    /// The server's `host:port`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The current state; only [`ReplicaState::Healthy`] replicas serve reads.
    pub fn state(&self) -> ReplicaState {
        ReplicaState::from_u8(self.state.load(Relaxed))
    }

    /// Sets the state (the monitor task does this after each poll).
    pub fn set_state(&self, state: ReplicaState) {
        self.state.store(state as u8, Relaxed);
    }

    /// The lag measured by the last poll that could measure it (zero before any).
    pub fn lag(&self) -> Lag {
        Lag { bytes: self.lag_bytes.load(Relaxed), seconds: self.lag_micros.load(Relaxed) as f64 / 1e6 }
    }

    /// Records a measured lag (the time to the microsecond).
    pub fn set_lag(&self, lag: Lag) {
        self.lag_bytes.store(lag.bytes, Relaxed);
        self.lag_micros.store((lag.seconds * 1e6) as u64, Relaxed);
    }

    /// The newest replay position seen by a poll: the replica has at least everything the
    /// primary committed up to here. Zero before the first successful poll.
    pub fn replay_lsn(&self) -> Lsn {
        Lsn(self.replay_lsn.load(Relaxed))
    }

    /// Raises the replay position to `lsn` if it is newer; it never goes back.
    ///
    /// Only ever call this with a position read from the replica itself
    /// (`pg_last_wal_replay_lsn()`): read-your-writes relies on it.
    pub fn raise_replay_lsn(&self, lsn: Lsn) {
        self.replay_lsn.fetch_max(lsn.0, Relaxed);
    }

    /// Transactions currently running on this replica (checked out and not yet released).
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Relaxed)
    }

    /// Reads routed to this replica since sluice started.
    pub fn reads_routed(&self) -> u64 {
        self.reads_routed.load(Relaxed)
    }

    /// Polls of this replica completed so far, successful or not.
    pub fn polls(&self) -> u64 {
        self.polls.load(Relaxed)
    }

    /// Counts a completed poll (the monitor task does this once the poll's results are stored).
    pub fn count_poll(&self) {
        self.polls.fetch_add(1, Relaxed);
    }

    /// Counts a read routed here and one more outstanding transaction, until the returned guard
    /// is dropped. [`ReplicaSet::pick`] calls this; call it directly only to route to a
    /// replica chosen otherwise.
    pub fn checkout(self: &Arc<Self>) -> ReplicaLoad {
        self.outstanding.fetch_add(1, Relaxed);
        self.reads_routed.fetch_add(1, Relaxed);
        ReplicaLoad { status: Arc::clone(self) }
    }
}

/// One transaction running on a replica: counted in its
/// [`outstanding`](ReplicaStatus::outstanding) until dropped. Keep it for as long as the
/// transaction holds the replica's server connection.
#[derive(Debug)]
#[must_use = "the replica counts the transaction only while this guard lives"]
pub struct ReplicaLoad {
    status: Arc<ReplicaStatus>,
}

impl ReplicaLoad {
    /// The replica carrying the transaction.
    pub fn status(&self) -> &Arc<ReplicaStatus> {
        &self.status
    }
}

impl Drop for ReplicaLoad {
    fn drop(&mut self) {
        self.status.outstanding.fetch_sub(1, Relaxed);
    }
}

/// Primary polls remembered to turn commit marks into WAL positions.
const RECENT_POLLS: usize = 32;

/// A commit, marked by the number of primary polls that had started when it was reported: any
/// poll started later read a WAL position at or past it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct CommitMark(pub u64);

/// The replicas of one database, and the WAL positions reads must wait for.
///
/// # Commit positions without a round trip
///
/// A read-your-writes read may go to a replica only once the replica has replayed the
/// client's commit. sluice does not ask the primary where each commit is. It marks the commit
/// with the count of primary polls started so far ([`mark_commit`](Self::mark_commit)); the
/// first monitor poll that *starts* after the commit reads `pg_current_wal_insert_lsn()` at or
/// past the commit record, and a replica that has replayed that far has the commit
/// ([`lsn_after`](Self::lsn_after)). Until such a poll is done, the read runs on the primary.
#[derive(Debug)]
pub struct ReplicaSet {
    replicas: Vec<Arc<ReplicaStatus>>,
    primary_lsn: AtomicU64,
    /// Primary polls started.
    polls_started: AtomicU64,
    /// Recent finished primary polls: (poll number, position), oldest first.
    recent_polls: arc_swap::ArcSwap<Vec<(u64, Lsn)>>,
    /// Newest commit made through sluice on this database (`read_your_writes = global`).
    last_commit: AtomicU64,
    /// Where the next [`pick`](Self::pick) starts looking, so ties rotate.
    next: AtomicUsize,
}

impl ReplicaSet {
    /// A set of the replicas at `addresses` (`host:port`), all Unknown.
    pub fn new<S: Into<String>>(addresses: impl IntoIterator<Item = S>) -> Self {
        Self::from_statuses(addresses.into_iter().map(|a| Arc::new(ReplicaStatus::new(a))).collect())
    }

    /// A set of existing statuses (to keep them across a reload).
    pub fn from_statuses(replicas: Vec<Arc<ReplicaStatus>>) -> Self {
        ReplicaSet {
            replicas,
            primary_lsn: AtomicU64::new(0),
            polls_started: AtomicU64::new(0),
            recent_polls: arc_swap::ArcSwap::from_pointee(Vec::new()),
            last_commit: AtomicU64::new(0),
            next: AtomicUsize::new(0),
        }
    }

    /// The replicas, in configuration order (the index [`pick`](Self::pick) returns).
    pub fn replicas(&self) -> &[Arc<ReplicaStatus>] {
        &self.replicas
    }

    /// The newest `pg_current_wal_lsn()` the monitors read from the primary (zero before any).
    /// It never goes back, even if the primary is replaced by one with an older position.
    pub fn primary_lsn(&self) -> Lsn {
        Lsn(self.primary_lsn.load(Relaxed))
    }

    /// Records a position read from the primary.
    pub fn note_primary_lsn(&self, lsn: Lsn) {
        self.primary_lsn.fetch_max(lsn.0, Relaxed);
    }

    /// A primary poll is about to be sent: its number, for [`finish_primary_poll`].
    ///
    /// [`finish_primary_poll`]: Self::finish_primary_poll
    pub fn start_primary_poll(&self) -> u64 {
        self.polls_started.fetch_add(1, Relaxed) + 1
    }

    /// Poll number `poll` read `lsn` from the primary.
    pub fn finish_primary_poll(&self, poll: u64, lsn: Lsn) {
        self.note_primary_lsn(lsn);
        self.recent_polls.rcu(|recent| {
            let mut next: Vec<(u64, Lsn)> = recent.iter().copied().filter(|&(n, _)| n != poll).collect();
            let at = next.partition_point(|&(n, _)| n < poll);
            next.insert(at, (poll, lsn));
            if next.len() > RECENT_POLLS {
                next.remove(0);
            }
            next
        });
    }

    /// Marks a commit that has just been reported (before its client hears of it).
    pub fn mark_commit(&self) -> CommitMark {
        CommitMark(self.polls_started.load(Relaxed))
    }

    /// A WAL position at or past the commit marked `mark`: what the first finished poll that
    /// started after it read. `None` while no such poll has finished.
    pub fn lsn_after(&self, mark: CommitMark) -> Option<Lsn> {
        let recent = self.recent_polls.load();
        recent.iter().find(|&&(n, _)| n > mark.0).map(|&(_, lsn)| lsn)
    }

    /// The newest commit made through sluice on this database (`read_your_writes = global`).
    pub fn last_commit(&self) -> CommitMark {
        CommitMark(self.last_commit.load(Relaxed))
    }

    /// Records a commit made through sluice (keeps the newest).
    pub fn note_commit(&self, mark: CommitMark) {
        self.last_commit.fetch_max(mark.0, Relaxed);
    }

    /// Chooses a replica for a read that must see everything up to `min_lsn`
    /// ([`Lsn::ZERO`] for any): among the Healthy replicas whose replay position is at least
    /// `min_lsn`, the one with the fewest outstanding transactions, ties rotating from one call
    /// to the next. Returns its index in [`replicas`](Self::replicas) and the guard counting
    /// the read, or `None` if no replica qualifies.
    ///
    /// One pass over the replicas, without locks or allocation. The choice is a snapshot:
    /// concurrent picks may choose the same replica.
    pub fn pick(&self, min_lsn: Lsn) -> Option<(usize, ReplicaLoad)> {
        let n = self.replicas.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Relaxed) % n;
        let mut best: Option<(usize, usize)> = None;
        for i in (start..n).chain(0..start) {
            let r = &self.replicas[i];
            if r.state() != ReplicaState::Healthy || r.replay_lsn() < min_lsn {
                continue;
            }
            let load = r.outstanding();
            if best.is_none_or(|(_, least)| load < least) {
                best = Some((i, load));
            }
        }
        best.map(|(i, _)| (i, self.replicas[i].checkout()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy_set(n: usize) -> ReplicaSet {
        let set = ReplicaSet::new((0..n).map(|i| format!("replica{i}:5432")));
        for r in set.replicas() {
            r.set_state(ReplicaState::Healthy);
        }
        set
    }

    #[test]
    fn new_status_is_unknown_and_unused() {
        let s = ReplicaStatus::new("db1:5432");
        assert_eq!(s.address(), "db1:5432");
        assert_eq!(s.state(), ReplicaState::Unknown);
        assert_eq!(s.replay_lsn(), Lsn::ZERO);
        assert_eq!((s.outstanding(), s.reads_routed(), s.polls()), (0, 0, 0));
        assert_eq!(ReplicaSet::new(["db1:5432"]).pick(Lsn::ZERO).map(|p| p.0), None);
    }

    #[test]
    fn replay_lsn_never_goes_back() {
        let s = ReplicaStatus::new("r:1");
        s.raise_replay_lsn(Lsn(100));
        s.raise_replay_lsn(Lsn(50));
        assert_eq!(s.replay_lsn(), Lsn(100));
        s.raise_replay_lsn(Lsn(150));
        assert_eq!(s.replay_lsn(), Lsn(150));
    }

    #[test]
    fn lag_round_trips_to_the_microsecond() {
        let s = ReplicaStatus::new("r:1");
        s.set_lag(Lag { bytes: 4096, seconds: 1.25 });
        assert_eq!(s.lag(), Lag { bytes: 4096, seconds: 1.25 });
    }

    #[test]
    fn load_guard_counts_outstanding_until_dropped() {
        let s = Arc::new(ReplicaStatus::new("r:1"));
        let a = s.checkout();
        let b = s.checkout();
        assert_eq!(s.outstanding(), 2);
        drop(a);
        assert_eq!(s.outstanding(), 1);
        assert!(Arc::ptr_eq(b.status(), &s));
        drop(b);
        assert_eq!((s.outstanding(), s.reads_routed()), (0, 2));
    }

    #[test]
    fn pick_skips_replicas_that_are_not_healthy() {
        let set = healthy_set(4);
        set.replicas()[0].set_state(ReplicaState::Lagging);
        set.replicas()[1].set_state(ReplicaState::Down);
        set.replicas()[3].set_state(ReplicaState::Unknown);
        for _ in 0..8 {
            assert_eq!(set.pick(Lsn::ZERO).map(|p| p.0), Some(2));
        }
        set.replicas()[2].set_state(ReplicaState::Lagging);
        assert!(set.pick(Lsn::ZERO).is_none());
    }

    #[test]
    fn pick_honours_the_minimum_replay_position() {
        let set = healthy_set(3);
        for (r, lsn) in set.replicas().iter().zip([100, 300, 200]) {
            r.raise_replay_lsn(Lsn(lsn));
        }
        for _ in 0..6 {
            assert_eq!(set.pick(Lsn(250)).map(|p| p.0), Some(1));
            assert_eq!(set.pick(Lsn(300)).map(|p| p.0), Some(1));
        }
        assert!(set.pick(Lsn(301)).is_none());
        let mut all: Vec<usize> = (0..3).filter_map(|_| set.pick(Lsn(100)).map(|p| p.0)).collect();
        all.sort();
        assert_eq!(all, [0, 1, 2]);
    }

    #[test]
    fn pick_prefers_the_least_loaded_replica() {
        let set = healthy_set(3);
        let _busy = [set.replicas()[0].checkout(), set.replicas()[0].checkout(), set.replicas()[2].checkout()];
        let (i, load) = set.pick(Lsn::ZERO).unwrap();
        assert_eq!(i, 1);
        assert_eq!(set.replicas()[1].outstanding(), 1);
        // Now 1 and 2 carry one each, 0 carries two.
        let (j, _load2) = set.pick(Lsn::ZERO).unwrap();
        assert!(j == 1 || j == 2, "{j}");
        drop(load);
    }

    #[test]
    fn pick_rotates_among_equally_loaded_replicas() {
        let set = healthy_set(3);
        let mut seen = [0; 3];
        for _ in 0..30 {
            let (i, _load) = set.pick(Lsn::ZERO).unwrap();
            seen[i] += 1;
        }
        assert_eq!(seen, [10, 10, 10]);
        assert_eq!(set.replicas().iter().map(|r| r.reads_routed()).sum::<u64>(), 30);
    }

    #[test]
    fn commit_and_primary_positions_keep_the_newest() {
        let set = ReplicaSet::new(Vec::<String>::new());
        set.note_commit(CommitMark(10));
        set.note_commit(CommitMark(5));
        set.note_primary_lsn(Lsn(20));
        set.note_primary_lsn(Lsn(7));
        assert_eq!((set.last_commit(), set.primary_lsn()), (CommitMark(10), Lsn(20)));
        assert!(set.pick(Lsn::ZERO).is_none());
    }

    #[test]
    fn a_commit_is_placed_by_the_first_primary_poll_that_started_after_it() {
        let set = ReplicaSet::new(Vec::<String>::new());
        let before = set.start_primary_poll();
        let mark = set.mark_commit();
        assert_eq!(set.lsn_after(mark), None, "no poll started after the commit");
        let first = set.start_primary_poll();
        let second = set.start_primary_poll();
        set.finish_primary_poll(before, Lsn(100));
        assert_eq!(set.lsn_after(mark), None, "a poll that started before the commit does not count");
        set.finish_primary_poll(second, Lsn(300));
        assert_eq!(set.lsn_after(mark), Some(Lsn(300)));
        set.finish_primary_poll(first, Lsn(200));
        assert_eq!(set.lsn_after(mark), Some(Lsn(200)), "the earliest poll after the commit");
        assert_eq!(set.primary_lsn(), Lsn(300));
    }

    #[test]
    fn old_marks_use_the_oldest_poll_remembered() {
        let set = ReplicaSet::new(Vec::<String>::new());
        let mark = set.mark_commit();
        for i in 1..=(RECENT_POLLS as u64 + 10) {
            let n = set.start_primary_poll();
            set.finish_primary_poll(n, Lsn(i * 10));
        }
        assert_eq!(set.lsn_after(mark), Some(Lsn(110)));
    }
}
