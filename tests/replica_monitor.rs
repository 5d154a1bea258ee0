//! End-to-end: the replica monitor against real Postgres servers. It measures lag, marks a
//! replica Lagging, Down or Unknown and back, and `ReplicaSet::pick` follows what it publishes.
//!
//! The shared cluster (`common::cluster()`) is kept idle: only tests that do not write use it.
//! Tests that write use a second shared cluster; tests that pause replay or stop a server each
//! start a cluster of their own.

mod common;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sluice::cluster::{Cluster, ClusterOptions, PgBinaries, PgInstance};
use sluice::router::lag::{Lag, LagLimits, Lsn, ReplicaState};
use sluice::router::monitor::{spawn_monitor, MonitorSettings, MonitorTarget};
use sluice::router::replica::{ReplicaSet, ReplicaStatus};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long any condition may take to come true.
const LIMIT: Duration = Duration::from_secs(30);

/// A new cluster with a streaming replica, for this test alone.
fn own_cluster() -> Cluster {
    let bins = PgBinaries::locate().unwrap_or_else(|e| panic!("{e}"));
    let opts = ClusterOptions { replica: true, ..ClusterOptions::default() };
    Cluster::start(&bins, &opts).unwrap_or_else(|e| panic!("starting a cluster: {e}"))
}

/// A second shared cluster, for the tests that write (keeping `common::cluster()` idle).
fn busy_cluster() -> &'static Cluster {
    static BUSY: OnceLock<Cluster> = OnceLock::new();
    BUSY.get_or_init(own_cluster)
}

fn replica(cluster: &Cluster) -> &PgInstance {
    cluster.replica.as_ref().expect("the cluster has a replica")
}

/// Runs SQL with psql on `server`, letting the runtime move other tasks off this thread.
fn sql(server: &PgInstance, text: &str) -> String {
    tokio::task::block_in_place(|| server.psql("postgres", text)).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// A `host:port` nothing listens on.
fn closed_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr.to_string()
}

fn settings(interval_ms: u64, max_lag_ms: u64, max_lag_bytes: u64) -> MonitorSettings {
    MonitorSettings {
        interval: Duration::from_millis(interval_ms),
        limits: LagLimits { max_lag: Duration::from_millis(max_lag_ms), max_lag_bytes },
        connect_timeout: Duration::from_secs(5),
        query_timeout: Duration::from_secs(5),
        tls: None,
    }
}

/// Monitor tasks over one replica set, stopped when dropped.
struct Monitored {
    set: Arc<ReplicaSet>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Monitored {
    /// Monitors each of `replicas` (`host:port`) of `primary` with `s`.
    fn start(primary: &str, replicas: &[String], s: MonitorSettings) -> Self {
        let set = Arc::new(ReplicaSet::new(replicas.iter().cloned()));
        let shutdown = CancellationToken::new();
        let tasks = set
            .replicas()
            .iter()
            .map(|status| {
                let target = MonitorTarget {
                    primary: primary.to_string(),
                    replica: status.address().to_string(),
                    dbname: "postgres".into(),
                    user: "postgres".into(),
                    password: None,
                };
                let s = s.clone();
                spawn_monitor(target, status.clone(), set.clone(), move || s.clone(), shutdown.clone())
            })
            .collect();
        Monitored { set, shutdown, tasks }
    }

    /// Monitors the replica of `cluster`.
    fn cluster(cluster: &Cluster, s: MonitorSettings) -> Self {
        Self::start(&cluster.primary.addr().to_string(), &[replica(cluster).addr().to_string()], s)
    }

    fn status(&self) -> &Arc<ReplicaStatus> {
        &self.set.replicas()[0]
    }

    /// Waits until the first replica is in `state` and `also` holds.
    async fn wait_state(&self, state: ReplicaState, also: impl Fn(&ReplicaStatus) -> bool) {
        let s = self.status();
        wait_for(&format!("{} to be {state}", s.address()), || s.state() == state && also(s)).await;
    }
}

impl Drop for Monitored {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Polls `check` every 5 ms until it holds; panics after [`LIMIT`].
async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out after {LIMIT:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Replay paused on a replica until dropped, so a failed assertion cannot leave it paused.
struct ReplayPaused<'a>(&'a PgInstance);

impl<'a> ReplayPaused<'a> {
    fn new(replica: &'a PgInstance) -> Self {
        sql(replica, "select pg_wal_replay_pause()");
        ReplayPaused(replica)
    }
}

impl Drop for ReplayPaused<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.psql("postgres", "select pg_wal_replay_resume()") {
            eprintln!("resuming replay: {e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_replica_reports_zero_lag_when_primary_is_idle() {
    let cluster = common::cluster();
    let replica = replica(cluster);
    // A commit for the replica to replay, so it has a last-commit time, then no more writes.
    sql(&cluster.primary, &format!("create table idle_{} ()", std::process::id()));
    tokio::task::block_in_place(|| cluster.wait_replica_caught_up()).unwrap();
    // Far below how old the replica's last commit will get.
    let m = Monitored::cluster(cluster, settings(20, 100, 16 << 20));
    m.wait_state(ReplicaState::Healthy, |s| s.lag().bytes == 0).await;

    wait_for("the replica's last commit to be 300 ms old", || {
        sql(replica, "select now() - pg_last_xact_replay_timestamp() > interval '300 ms'") == "t"
    })
    .await;
    let status = m.status();
    let polls = status.polls();
    wait_for("ten more polls", || {
        assert_eq!(status.state(), ReplicaState::Healthy, "lag {:?}", status.lag());
        assert!(status.lag().seconds < 0.1, "{:?}", status.lag());
        status.polls() >= polls + 10
    })
    .await;
    m.wait_state(ReplicaState::Healthy, |s| {
        s.lag() == Lag::ZERO && m.set.primary_lsn() > Lsn::ZERO && s.replay_lsn() >= m.set.primary_lsn()
    })
    .await;

    // Shutdown ends the task promptly.
    let mut m = m;
    m.shutdown.cancel();
    for task in m.tasks.drain(..) {
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("monitor stops").unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_pause_makes_replica_lagging_and_resume_brings_it_back() {
    let cluster = own_cluster();
    let replica = replica(&cluster);
    let m = Monitored::cluster(&cluster, settings(20, 200, 1024));
    m.wait_state(ReplicaState::Healthy, |_| true).await;
    sql(&cluster.primary, "create table pause_t (v text)");

    let paused = ReplayPaused::new(replica);
    let replay_at_pause = m.status().replay_lsn();
    let mut writes = 0;
    wait_for("the paused replica to be lagging", || {
        sql(&cluster.primary, "insert into pause_t select repeat('x', 100) from generate_series(1, 50)");
        writes += 1;
        m.status().state() == ReplicaState::Lagging
    })
    .await;
    assert!(m.status().lag().bytes > 1024, "{:?} after {writes} writes", m.status().lag());
    assert!(m.set.pick(Lsn::ZERO).is_none(), "a lagging replica serves no reads");
    // The primary is idle again, but the replica is behind: its time lag grows.
    m.wait_state(ReplicaState::Lagging, |s| s.lag().seconds > 0.2).await;
    assert!(m.status().replay_lsn() >= replay_at_pause);

    drop(paused);
    m.wait_state(ReplicaState::Healthy, |s| s.lag().bytes == 0 && s.replay_lsn() >= m.set.primary_lsn()).await;
    assert_eq!(m.set.pick(Lsn::ZERO).map(|p| p.0), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_replica_goes_down_and_returns_when_restarted() {
    let mut cluster = own_cluster();
    let m = Monitored::cluster(&cluster, settings(20, 1000, 16 << 20));
    m.wait_state(ReplicaState::Healthy, |s| s.replay_lsn() > Lsn::ZERO).await;
    let replay_before = m.status().replay_lsn();

    tokio::task::block_in_place(|| cluster.replica.as_mut().unwrap().stop());
    m.wait_state(ReplicaState::Down, |_| true).await;
    assert!(m.set.pick(Lsn::ZERO).is_none());
    assert_eq!(m.status().replay_lsn(), replay_before, "kept while down, not reset");
    // Retries back off: the attempts after the first failure wait 20, 40, 80 and 160 ms (the
    // first failure may or may not be counted yet).
    let (polls, since) = (m.status().polls(), Instant::now());
    wait_for("five more attempts", || m.status().polls() >= polls + 5).await;
    assert!(since.elapsed() >= Duration::from_millis(250), "retried after {:?}", since.elapsed());
    assert_eq!(m.status().state(), ReplicaState::Down);

    sql(&cluster.primary, "create table after_stop (v int); insert into after_stop values (1)");
    tokio::task::block_in_place(|| cluster.replica.as_mut().unwrap().start()).unwrap();
    m.wait_state(ReplicaState::Healthy, |s| s.lag().bytes == 0).await;
    assert!(m.status().replay_lsn() > replay_before);
    assert_eq!(m.set.pick(Lsn::ZERO).map(|p| p.0), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_lsn_never_decreases_and_never_runs_ahead_of_the_replica() {
    let cluster = busy_cluster();
    let replica = replica(cluster);
    let m = Monitored::cluster(cluster, settings(10, 1000, 16 << 20));
    m.wait_state(ReplicaState::Healthy, |_| true).await;
    sql(&cluster.primary, "create table if not exists grow (v text)");

    let status = m.status().clone();
    let stop = CancellationToken::new();
    let watcher = tokio::spawn({
        let stop = stop.clone();
        async move {
            let (mut last, mut changes) = (status.replay_lsn(), 0);
            while !stop.is_cancelled() {
                let now = status.replay_lsn();
                assert!(now >= last, "replay_lsn went back from {last} to {now}");
                changes += usize::from(now > last);
                last = now;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            changes
        }
    });
    for _ in 0..30 {
        sql(&cluster.primary, "insert into grow select repeat('y', 200) from generate_series(1, 20)");
        let published = m.status().replay_lsn();
        let actual: Lsn = sql(replica, "select pg_last_wal_replay_lsn()").parse().unwrap();
        assert!(published <= actual, "published {published} is ahead of the replica's {actual}");
    }
    let target: Lsn = sql(&cluster.primary, "select pg_current_wal_lsn()").parse().unwrap();
    m.wait_state(ReplicaState::Healthy, |s| s.replay_lsn() >= target).await;
    stop.cancel();
    let changes = watcher.await.expect("replay_lsn only grows");
    assert!(changes > 1, "the replay position was seen moving ({changes} times)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pick_skips_replicas_that_are_not_healthy_and_honours_min_lsn() {
    let cluster = busy_cluster();
    let real = replica(cluster).addr().to_string();
    let m =
        Monitored::start(&cluster.primary.addr().to_string(), &[closed_address(), real], settings(20, 1000, 16 << 20));
    let (dead, live) = (&m.set.replicas()[0], &m.set.replicas()[1]);
    wait_for("one replica down and one healthy", || {
        dead.state() == ReplicaState::Down && live.state() == ReplicaState::Healthy
    })
    .await;
    for _ in 0..10 {
        let (i, load) = m.set.pick(Lsn::ZERO).expect("the healthy replica");
        assert_eq!(i, 1);
        assert_eq!(live.outstanding(), 1);
        drop(load);
    }
    assert_eq!(live.outstanding(), 0);
    assert_eq!((live.reads_routed(), dead.reads_routed()), (10, 0));

    sql(&cluster.primary, "create table if not exists picked (v int); insert into picked values (1)");
    let written: Lsn = sql(&cluster.primary, "select pg_current_wal_lsn()").parse().unwrap();
    assert!(m.set.pick(Lsn(u64::MAX)).is_none(), "no replica has replayed everything ever");
    wait_for("a replica that has replayed the write", || match m.set.pick(written) {
        Some((i, _)) => {
            assert_eq!(i, 1);
            assert!(live.replay_lsn() >= written);
            true
        }
        None => false,
    })
    .await;
    assert_eq!(dead.replay_lsn(), Lsn::ZERO, "never polled successfully, never guessed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_primary_makes_replica_lag_unknown() {
    let cluster = common::cluster();
    let m = Monitored::start(&closed_address(), &[replica(cluster).addr().to_string()], settings(20, 1000, 16 << 20));
    m.wait_state(ReplicaState::Unknown, |s| s.replay_lsn() > Lsn::ZERO && s.polls() >= 3).await;
    assert!(m.set.pick(Lsn::ZERO).is_none(), "lag unknown: no reads");
    assert_eq!(m.set.primary_lsn(), Lsn::ZERO);
}
