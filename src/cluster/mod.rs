//! Local Postgres clusters for `sluice demo`, the tests and the benchmarks.
//!
//! This module owns everything about running throwaway Postgres servers on this machine:
//! - finding the Postgres binaries ([`PgBinaries::locate`]);
//! - `initdb` into a fresh temporary directory, with settings tuned for speed (no fsync);
//! - starting a primary and, optionally, a streaming replica (`pg_basebackup -R`) on free ports
//!   of 127.0.0.1 ([`Cluster::start`]), and polling until they accept connections;
//! - small conveniences for tests: running SQL through `psql` ([`PgInstance::psql`]), rewriting
//!   `pg_hba.conf` and reloading, stopping and restarting a server, waiting for the replica to
//!   catch up;
//! - cleanup.
//!
//! It is plain blocking code built on `std::process`.
//!
//! When running as root, every Postgres program runs as the `postgres` OS user (Postgres refuses
//! to run as root) and the temporary directory, created under `/tmp`, belongs to that user.
//!
//! # Cleanup
//!
//! Dropping a [`Cluster`] stops its servers (fast shutdown) and deletes its directory. Servers
//! also die with the process that started them even when nothing is dropped (a `Cluster` in a
//! `static`, a killed test): each `postgres` runs under a small `sh` watchdog whose stdin is a
//! pipe whose write end only the owning process holds (it is close-on-exec, so no other child
//! inherits it). When that process exits the pipe reaches end of file; the watchdog then does a
//! fast shutdown of its server, waits for it and deletes the server's data directory and log
//! (and the temporary directory once it is empty).

mod binaries;
mod instance;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

pub use binaries::{PgBinaries, BINDIR_ENV};
pub use instance::PgInstance;

use instance::{run, scrub_libpq_env, write_file, RunAs, POLL_INTERVAL, PORT_CONF, START_TIMEOUT};

/// How long [`Cluster::wait_replica_caught_up`] waits.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// Everything that can go wrong while running a local cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No usable Postgres installation was found.
    #[error(
        "Postgres server binaries not found: {0}. Install Postgres (e.g. `apt-get install \
         postgresql`) or set SLUICE_PG_BINDIR to the directory holding `initdb` and `postgres`"
    )]
    BinariesNotFound(String),
    /// Running as root, but the OS user Postgres should run as does not exist.
    #[error(
        "OS user `{0}` not found; Postgres refuses to run as root, so it is run as that user \
         (installing the postgresql package creates it)"
    )]
    UserNotFound(String),
    /// A filesystem or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A helper program (`initdb`, `pg_basebackup`, `pg_ctl`, ...) exited unsuccessfully.
    #[error("{command} failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its standard error.
        stderr: String,
    },
    /// A server did not come up.
    #[error("{instance} did not start: {reason}\n--- tail of {} ---\n{log_tail}", log.display())]
    StartFailed {
        /// Which server (`primary`, `replica`).
        instance: String,
        /// What happened.
        reason: String,
        /// The server log file.
        log: PathBuf,
        /// The last lines of the server log.
        log_tail: String,
    },
    /// `psql` failed to run some SQL.
    #[error("SQL failed on {instance} (database {db}): {stderr}\nSQL: {sql}")]
    Sql {
        /// Which server (`primary`, `replica`).
        instance: String,
        /// The database.
        db: String,
        /// The SQL.
        sql: String,
        /// psql's standard error.
        stderr: String,
    },
    /// A condition did not become true in time.
    #[error("timed out after {}s waiting for {what}", waited.as_secs())]
    Timeout {
        /// How long we waited.
        waited: Duration,
        /// What we waited for.
        what: String,
    },
}

impl ClusterError {
    /// An [`Io`](ClusterError::Io) error with `context`.
    fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ClusterError::Io {
            context: context.into(),
            source,
        }
    }
}

/// How to set up a [`Cluster`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterOptions {
    /// Also start a streaming replica of the primary.
    pub replica: bool,
    /// `max_connections` of each server (default 200).
    pub max_connections: u32,
    /// Extra `postgresql.conf` settings as `(name, value)`, written after (so overriding) the
    /// defaults, e.g. `("wal_level", "logical")`. Values are single-quoted for you unless they
    /// already start with a quote.
    pub settings: Vec<(String, String)>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            replica: false,
            max_connections: 200,
            settings: Vec::new(),
        }
    }
}

/// A primary and an optional streaming replica, in one temporary directory.
///
/// Layout of the directory: `primary/` and `replica/` (data directories), `primary.log` and
/// `replica.log` (server logs), and the servers' Unix sockets.
#[derive(Debug)]
pub struct Cluster {
    /// The primary (read-write) server.
    pub primary: PgInstance,
    /// The streaming replica (hot standby), if [`ClusterOptions::replica`] was set.
    pub replica: Option<PgInstance>,
    /// The temporary directory holding everything; deleted on drop.
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Creates a temporary directory, `initdb`s a primary into it and starts it on a free port
    /// of 127.0.0.1, then, if `opts.replica`, clones it with `pg_basebackup` and starts the
    /// clone as a streaming replica. Returns once every server accepts connections.
    pub fn start(bins: &PgBinaries, opts: &ClusterOptions) -> Result<Cluster, ClusterError> {
        let run_as = RunAs::detect()?;
        let dir = make_temp_dir(&run_as)?;
        let root = dir.path().to_path_buf();

        let primary_dir = root.join("primary");
        initdb(bins, &run_as, &root, &primary_dir)?;
        write_file(
            &run_as,
            &primary_dir.join("postgresql.conf"),
            &postgresql_conf(&primary_dir, &root, opts)?,
        )?;
        write_file(&run_as, &primary_dir.join("pg_hba.conf"), DEFAULT_HBA)?;
        let mut primary = PgInstance::new(
            "primary",
            bins,
            run_as,
            primary_dir,
            root.clone(),
            root.join("primary.log"),
        );
        primary.start_on_free_port()?;

        let replica = if opts.replica {
            let replica_dir = root.join("replica");
            let mut cmd = Command::new(bins.tool("pg_basebackup"));
            cmd.args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
                .arg(primary.port().to_string())
                .arg("-D")
                .arg(&replica_dir)
                .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"])
                .current_dir(&root);
            scrub_libpq_env(&mut cmd);
            run_as.apply(&mut cmd);
            run(&mut cmd)?;
            let mut replica = PgInstance::new(
                "replica",
                bins,
                run_as,
                replica_dir,
                root.clone(),
                root.join("replica.log"),
            );
            replica.start_on_free_port()?;
            poll(START_TIMEOUT, "the replica to be in recovery", || {
                Ok(replica.psql("postgres", "select pg_is_in_recovery()")? == "t")
            })?;
            Some(replica)
        } else {
            None
        };

        Ok(Cluster {
            primary,
            replica,
            dir,
        })
    }

    /// The temporary directory holding the data directories, logs and sockets.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Blocks until the replica has replayed everything the primary had committed when this was
    /// called (polling, for up to a minute). Returns at once if there is no replica.
    pub fn wait_replica_caught_up(&self) -> Result<(), ClusterError> {
        let Some(replica) = &self.replica else {
            return Ok(());
        };
        // The servers run with synchronous_commit=off, so recent commits may not be written out
        // yet. A transaction that writes WAL (here a tiny logical-decoding message) and commits
        // synchronously flushes all WAL up to its commit record; after it, the write position
        // covers everything committed so far.
        let out = self.primary.psql(
            "postgres",
            "set synchronous_commit = on; \
             select pg_logical_emit_message(true, 'sluice.cluster', 'catch-up'); \
             select pg_current_wal_lsn();",
        )?;
        let lsn = out.lines().last().unwrap_or_default().trim().to_string();
        let check = format!("select pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn");
        poll(
            CATCH_UP_TIMEOUT,
            &format!("the replica to replay the primary's WAL up to {lsn}"),
            || Ok(replica.psql("postgres", &check)? == "t"),
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(replica) = self.replica.as_mut() {
            replica.stop();
        }
        self.primary.stop();
        // The TempDir field then deletes the directory.
    }
}

/// `pg_hba.conf` of a new cluster: trust everything local.
const DEFAULT_HBA: &str = "\
# Written by sluice::cluster: trust every local connection.
local   all             all                                     trust
local   replication     all                                     trust
host    all             all             127.0.0.1/32            trust
host    replication     all             127.0.0.1/32            trust
";

/// A fresh temporary directory the server's OS user owns. As root it is under `/tmp` (which
/// that user can traverse) and given to `postgres`.
fn make_temp_dir(run_as: &RunAs) -> Result<tempfile::TempDir, ClusterError> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("sluice-pg-");
    let dir = if run_as.switches_user() {
        builder.tempdir_in("/tmp")
    } else {
        builder.tempdir()
    }
    .map_err(|e| ClusterError::io("creating a temporary directory", e))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .map_err(|e| ClusterError::io(format!("chmod {}", dir.path().display()), e))?;
    run_as.chown(dir.path())?;
    Ok(dir)
}

/// Runs `initdb` for `data_dir`.
fn initdb(
    bins: &PgBinaries,
    run_as: &RunAs,
    cwd: &Path,
    data_dir: &Path,
) -> Result<(), ClusterError> {
    let mut cmd = Command::new(bins.tool("initdb"));
    cmd.arg("-D")
        .arg(data_dir)
        .args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ])
        .current_dir(cwd);
    run_as.apply(&mut cmd);
    run(&mut cmd).map(|_| ())
}

/// `data_dir`'s `postgresql.conf` with sluice's settings appended.
fn postgresql_conf(
    data_dir: &Path,
    socket_dir: &Path,
    opts: &ClusterOptions,
) -> Result<String, ClusterError> {
    let path = data_dir.join("postgresql.conf");
    let mut conf = std::fs::read_to_string(&path)
        .map_err(|e| ClusterError::io(format!("reading {}", path.display()), e))?;
    let socket_dir = socket_dir.to_string_lossy();
    let mut settings: Vec<(String, String)> = vec![
        ("listen_addresses".into(), "127.0.0.1".into()),
        ("unix_socket_directories".into(), socket_dir.into_owned()),
        ("fsync".into(), "off".into()),
        ("synchronous_commit".into(), "off".into()),
        ("full_page_writes".into(), "off".into()),
        ("max_connections".into(), opts.max_connections.to_string()),
        // Logical is a superset of replica: the streaming replica works as before, and sluice's
        // logical invalidation (`cache.invalidation_source = "logical"`) can stream too.
        ("wal_level".into(), "logical".into()),
        // Headroom: the replica takes one sender; each sluice with logical invalidation takes
        // a sender and a (temporary) slot per database, and tests run several at once.
        ("max_wal_senders".into(), "30".into()),
        ("max_replication_slots".into(), "30".into()),
        ("wal_keep_size".into(), "256MB".into()),
        ("hot_standby".into(), "on".into()),
        // A replica whose primary restarted reconnects quickly (default 5s).
        ("wal_retrieve_retry_interval".into(), "100ms".into()),
        ("shared_buffers".into(), "128MB".into()),
    ];
    settings.extend(opts.settings.iter().cloned());
    conf.push_str("\n# Added by sluice::cluster\n");
    for (name, value) in &settings {
        conf.push_str(&format!("{name} = {}\n", quote_setting(value)));
    }
    // Last, so it wins; rewritten whenever the port changes (and for the replica).
    conf.push_str(&format!("include '{PORT_CONF}'\n"));
    Ok(conf)
}

/// `value` single-quoted for `postgresql.conf`, unless it already is.
fn quote_setting(value: &str) -> String {
    if value.starts_with('\'') {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\'', "''"))
    }
}

/// Calls `check` every [`POLL_INTERVAL`] until it returns `Ok(true)`, for up to `timeout`.
/// Errors from `check` are retried too; the last one is reported on timeout.
fn poll(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<bool, ClusterError>,
) -> Result<(), ClusterError> {
    let deadline = Instant::now() + timeout;
    loop {
        let last_error = match check() {
            Ok(true) => return Ok(()),
            Ok(false) => None,
            Err(e) => Some(e),
        };
        if Instant::now() >= deadline {
            let what = match last_error {
                Some(e) => format!("{what} (last error: {e})"),
                None => what.to_string(),
            };
            return Err(ClusterError::Timeout {
                waited: timeout,
                what,
            });
        }
        thread::sleep(POLL_INTERVAL);
    }
}
