//! `sluice demo`: a local primary and streaming replica from the system's Postgres binaries,
//! in a temporary directory, with sluice in front. Everything is removed on Ctrl-C.

use crate::app::Sluice;
use crate::cluster::{Cluster, ClusterError, ClusterOptions, PgBinaries};
use crate::config::Config;
use std::time::Duration;

/// Errors of the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Postgres could not be found or started.
    #[error("{0}")]
    Cluster(#[from] ClusterError),
    /// sluice could not start.
    #[error("{0}")]
    App(#[from] crate::app::AppError),
    /// The demo configuration was rejected.
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// The runtime or signal handling failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The configuration the demo runs with.
pub fn demo_config(port: u16, cluster: &Cluster) -> Result<Config, crate::config::ConfigError> {
    let replicas = cluster
        .replica
        .as_ref()
        .map(|r| format!("replicas = [\"{}\"]\n", r.addr()))
        .unwrap_or_default();
    let split = if replicas.is_empty() { "" } else { "[routing]\nread_write_split = true\n\n" };
    Config::from_toml(&format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n\n[pool]\nsize = 20\n\n{split}\
         [databases.app]\nprimary = \"{}\"\n{replicas}",
        cluster.primary.addr()
    ))
}

/// Runs the demo until Ctrl-C or SIGTERM.
///
/// # Errors
/// [`DemoError`] when Postgres is missing or anything fails to start.
pub fn run(port: u16) -> Result<(), DemoError> {
    let bins = PgBinaries::locate()?;
    println!("sluice demo: Postgres binaries in {}", bins.bindir.display());
    println!("starting a primary and a streaming replica in a temporary directory...");
    let cluster = Cluster::start(&bins, &ClusterOptions { replica: true, ..Default::default() })?;
    cluster.primary.psql("postgres", "CREATE DATABASE app")?;
    cluster.wait_replica_caught_up()?;
    let config = demo_config(port, &cluster)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let sluice = Sluice::start(config).await?;
        let replica = cluster.replica.as_ref().map(|r| r.addr().to_string()).unwrap_or_default();
        println!(
            "\nprimary  127.0.0.1:{}\nreplica  {replica}\nsluice   127.0.0.1:{port}  (database \"app\", user \"postgres\", no password)\n\n\
             Try:\n  psql -h 127.0.0.1 -p {port} -U postgres app\n  \
             pgbench -i -h 127.0.0.1 -p {port} -U postgres app\n  \
             pgbench -h 127.0.0.1 -p {port} -U postgres -c 16 -j 2 -T 10 -S app\n  \
             psql -h 127.0.0.1 -p {port} -U postgres sluice -c 'SHOW REPLICAS'\n\n\
             Press Ctrl-C to stop and remove everything.",
            cluster.primary.port()
        );
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        println!("\nstopping...");
        sluice.shutdown(Duration::from_secs(2)).await;
        Ok::<_, DemoError>(())
    })?;
    drop(rt);
    drop(cluster);
    println!("demo cleaned up");
    Ok(())
}
