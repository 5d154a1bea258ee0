//! Helpers shared by the end-to-end tests: one local Postgres cluster (primary + streaming
//! replica) per test binary, and fresh databases so tests can run in parallel.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use sluice::cluster::{Cluster, ClusterOptions, PgBinaries};

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// The cluster shared by every test of this test binary (a primary and a streaming replica),
/// started on first use. It is never dropped: its servers stop and its directory is deleted by
/// the watchdogs when the test process exits.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        let bins = PgBinaries::locate().unwrap_or_else(|e| panic!("{e}"));
        let opts = ClusterOptions {
            replica: true,
            ..ClusterOptions::default()
        };
        Cluster::start(&bins, &opts).unwrap_or_else(|e| panic!("starting the test cluster: {e}"))
    })
}

/// Creates a new, empty database on the shared cluster's primary and returns its name, which is
/// `prefix` (lowercased, non-alphanumerics replaced by `_`) followed by a unique suffix. Waits
/// until the replica has it too.
pub fn unique_db(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let prefix: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let name = format!(
        "{prefix}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let cluster = cluster();
    cluster
        .primary
        .psql("postgres", &format!("CREATE DATABASE \"{name}\""))
        .unwrap_or_else(|e| panic!("creating database {name}: {e}"));
    cluster
        .wait_replica_caught_up()
        .unwrap_or_else(|e| panic!("waiting for the replica to get database {name}: {e}"));
    name
}
