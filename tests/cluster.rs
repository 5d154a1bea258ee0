//! The local Postgres cluster used by the end-to-end tests and the demo: a primary and a
//! streaming replica start, replicate, and the primary survives a stop and a start.

mod common;

use sluice::cluster::{Cluster, ClusterOptions, PgBinaries};

#[test]
fn primary_and_streaming_replica_start_and_replicate() {
    let bins = PgBinaries::locate().unwrap_or_else(|e| panic!("{e}"));
    let opts = ClusterOptions {
        replica: true,
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::start(&bins, &opts).unwrap_or_else(|e| panic!("{e}"));
    let dir = cluster.dir().to_path_buf();
    assert_ne!(cluster.primary.port(), 0);
    let replica = cluster.replica.as_ref().expect("a replica was requested");
    assert_ne!(replica.port(), cluster.primary.port());
    assert_eq!(
        replica
            .psql("postgres", "select pg_is_in_recovery()")
            .unwrap(),
        "t"
    );
    assert_eq!(
        cluster
            .primary
            .psql("postgres", "select pg_is_in_recovery()")
            .unwrap(),
        "f"
    );

    cluster
        .primary
        .psql(
            "postgres",
            "create table t (id int primary key, v text); insert into t values (1, 'one')",
        )
        .unwrap();
    cluster.wait_replica_caught_up().unwrap();
    let replica = cluster.replica.as_ref().expect("a replica was requested");
    assert_eq!(
        replica
            .psql("postgres", "select v from t where id = 1")
            .unwrap(),
        "one"
    );
    let err = replica
        .psql("postgres", "insert into t values (2, 'two')")
        .unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");

    // Postgres goes away and comes back on the same port.
    let port = cluster.primary.port();
    cluster.primary.stop();
    cluster.primary.stop(); // idempotent
    assert!(!cluster.primary.is_running());
    assert!(std::net::TcpStream::connect(cluster.primary.addr()).is_err());
    assert!(cluster.primary.psql("postgres", "select 1").is_err());
    cluster.primary.start().unwrap();
    assert_eq!(cluster.primary.port(), port);
    assert!(std::net::TcpStream::connect(cluster.primary.addr()).is_ok());
    assert_eq!(
        cluster
            .primary
            .psql("postgres", "select v from t where id = 1")
            .unwrap(),
        "one"
    );

    // The replica reconnects and keeps streaming.
    cluster
        .primary
        .psql("postgres", "insert into t values (3, 'three')")
        .unwrap();
    cluster.wait_replica_caught_up().unwrap();
    let replica = cluster.replica.as_ref().expect("a replica was requested");
    assert_eq!(
        replica.psql("postgres", "select count(*) from t").unwrap(),
        "2"
    );

    drop(cluster);
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

#[test]
fn hba_can_be_rewritten_and_reloaded() {
    let cluster = common::cluster();
    let db = common::unique_db("HBA test");
    assert!(cluster
        .replica
        .as_ref()
        .unwrap()
        .psql(&db, "select 1")
        .is_ok());
    let primary = &cluster.primary;
    primary
        .psql(&db, "create role alice login password 'secret'")
        .unwrap();
    let connects = |user: &str| {
        let mut cmd = std::process::Command::new(PgBinaries::locate().unwrap().tool("psql"));
        cmd.args(["-X", "-w", "-h", "127.0.0.1", "-p"])
            .arg(primary.port().to_string())
            .args(["-U", user, "-d", &db, "-c", "select 1"])
            .env_remove("PGPASSWORD")
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(connects("alice"));
    primary
        .set_hba("host all all 127.0.0.1/32 scram-sha-256")
        .unwrap();
    assert!(!connects("alice"), "password should now be required");
    // Control connections still work.
    assert_eq!(primary.psql(&db, "select 1").unwrap(), "1");
    primary.set_hba("host all all 127.0.0.1/32 trust").unwrap();
    assert!(connects("alice"));
}
