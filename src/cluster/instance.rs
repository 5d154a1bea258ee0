//! One running Postgres server (`postgres -D dir`) under a watchdog, and the OS user it runs as.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{ClusterError, PgBinaries};

/// How long a server may take to start (including crash recovery) before we give up.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fast shutdown may take before we escalate to an immediate shutdown.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between two polls of a condition.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// How many lines of the server log an error message carries.
const LOG_TAIL_LINES: usize = 40;
/// Name of the file, in the data directory, that holds the `port` setting.
pub(crate) const PORT_CONF: &str = "sluice_port.conf";
/// Lines always placed first in `pg_hba.conf` by [`PgInstance::set_hba`], so that sluice's own
/// control connections (psql over the Unix socket) and the replica keep working.
const HBA_HEADER: &str = "\
# Written by sluice::cluster. The first lines keep the control connections working.
local   all             postgres                                trust
local   replication     all                                     trust
host    replication     all             127.0.0.1/32            trust
";

/// The watchdog wrapper, run as `sh -c WATCHDOG sh POSTGRES DATADIR FLAG LOG` with stdin a pipe
/// whose write end only the owning process holds.
///
/// It starts `postgres -D DATADIR` in the background and a watcher that reads one line from the
/// pipe. A line (written by [`PgInstance::stop`]) means "stop": the watcher sends SIGINT (fast
/// shutdown). End of file means the owning process is gone (it exited or was killed): the watcher
/// records that in FLAG and sends SIGINT; once postgres has exited, the wrapper deletes the data
/// directory, the log and the flag, and removes their parent directory if it is then empty. If
/// postgres exits on its own the watcher is killed and the wrapper exits with postgres's status.
const WATCHDOG: &str = r#"
pg_bin=$1 data=$2 flag=$3 log=$4
exec 3<&0 </dev/null
"$pg_bin" -D "$data" 3<&- &
pg=$!
{ if read _line <&3; then :; else : >"$flag"; fi; kill -INT "$pg" 2>/dev/null; } &
watcher=$!
exec 3<&-
wait "$pg"
status=$?
kill "$watcher" 2>/dev/null
if [ -e "$flag" ]; then
    rm -rf -- "$data" "$log" "$flag"
    rmdir -- "${data%/*}" 2>/dev/null
fi
exit "$status"
"#;

/// The OS identity Postgres programs run as: the `postgres` user when we are root (Postgres
/// refuses to run as root), the current user otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunAs {
    /// `(uid, gid)` to switch to, or `None` to run as the current user.
    ids: Option<(u32, u32)>,
}

impl RunAs {
    /// `postgres` (looked up in the password database) if the effective uid is 0, else ourselves.
    pub(crate) fn detect() -> Result<Self, ClusterError> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(RunAs { ids: None });
        }
        lookup_user("postgres").map(|ids| RunAs { ids: Some(ids) })
    }

    /// Makes `cmd` run as this identity.
    pub(crate) fn apply(&self, cmd: &mut Command) {
        if let Some((uid, gid)) = self.ids {
            cmd.uid(uid).gid(gid);
        }
    }

    /// Gives `path` to this identity (no-op when running as ourselves).
    pub(crate) fn chown(&self, path: &Path) -> Result<(), ClusterError> {
        if let Some((uid, gid)) = self.ids {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(|e| ClusterError::io(format!("chown {}", path.display()), e))?;
        }
        Ok(())
    }

    /// Whether programs switch to another user (i.e. we are root).
    pub(crate) fn switches_user(&self) -> bool {
        self.ids.is_some()
    }
}

/// `(uid, gid)` of the OS user `name`.
fn lookup_user(name: &str) -> Result<(u32, u32), ClusterError> {
    let not_found = || ClusterError::UserNotFound(name.to_string());
    let cname = CString::new(name).map_err(|_| not_found())?;
    let mut buf_len = 16 * 1024;
    loop {
        let mut buf: Vec<libc::c_char> = vec![0; buf_len];
        // SAFETY: an all-zero passwd (null pointers, zero ids) is a valid value to be overwritten.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the duration of the call and `buf_len` is the length
        // of `buf`; getpwnam_r only writes into `pwd`, `buf` and `result`.
        let rc = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf_len < 1024 * 1024 {
            buf_len *= 4;
            continue;
        }
        if rc != 0 || result.is_null() {
            return Err(not_found());
        }
        return Ok((pwd.pw_uid, pwd.pw_gid));
    }
}

/// A port on 127.0.0.1 that was free a moment ago (bind port 0, read it, release it).
pub(crate) fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| ClusterError::io("binding 127.0.0.1:0 to find a free port", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| ClusterError::io("reading the address of a bound socket", e))?
        .port();
    Ok(port)
}

/// Removes environment variables that would redirect libpq clients elsewhere.
pub(crate) fn scrub_libpq_env(cmd: &mut Command) {
    for var in [
        "PGHOST",
        "PGHOSTADDR",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGOPTIONS",
        "PGSERVICE",
        "PGSERVICEFILE",
        "PGPASSWORD",
        "PGPASSFILE",
        "PGSSLMODE",
        "PGTARGETSESSIONATTRS",
        "PGAPPNAME",
    ] {
        cmd.env_remove(var);
    }
}

/// Runs `cmd` to completion, returning its stdout, or an error carrying its stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<String, ClusterError> {
    let command = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ClusterError::io(format!("running {command}"), e))?;
    if !out.status.success() {
        return Err(ClusterError::CommandFailed {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Writes `contents` to `path` (replacing it) and gives the file to `run_as`.
pub(crate) fn write_file(run_as: &RunAs, path: &Path, contents: &str) -> Result<(), ClusterError> {
    std::fs::write(path, contents)
        .map_err(|e| ClusterError::io(format!("writing {}", path.display()), e))?;
    run_as.chown(path)
}

/// The last `lines` lines of the file at `path` (or a note saying why it can't be read).
pub(crate) fn file_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(could not read {}: {e})", path.display()),
    }
}

/// Why one launch attempt failed.
enum LaunchError {
    /// Postgres could not bind its port (somebody took it); try another one.
    PortTaken,
    /// Anything else.
    Other(ClusterError),
}

impl From<ClusterError> for LaunchError {
    fn from(e: ClusterError) -> Self {
        LaunchError::Other(e)
    }
}

/// The watchdog wrapper of a running server and the pipe that keeps it alive.
#[derive(Debug)]
struct Running {
    /// The `sh` wrapper; it exits once postgres has exited.
    wrapper: Child,
    /// Write end of the wrapper's stdin. Writing a line means "stop"; closing it without a line
    /// (our process died) means "stop and delete the data directory".
    pipe: ChildStdin,
}

/// One Postgres server started from a data directory, as a child of this process.
///
/// The server runs under a watchdog (see [`stop`](Self::stop) and the module docs) so that it
/// dies with this process even if the `PgInstance` is never dropped.
#[derive(Debug)]
pub struct PgInstance {
    name: String,
    bins: PgBinaries,
    run_as: RunAs,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_path: PathBuf,
    port: u16,
    running: Option<Running>,
}

impl PgInstance {
    /// A stopped instance for an existing data directory. `socket_dir` must be the directory
    /// named by `unix_socket_directories` in its configuration.
    pub(crate) fn new(
        name: &str,
        bins: &PgBinaries,
        run_as: RunAs,
        data_dir: PathBuf,
        socket_dir: PathBuf,
        log_path: PathBuf,
    ) -> Self {
        PgInstance {
            name: name.to_string(),
            bins: bins.clone(),
            run_as,
            data_dir,
            socket_dir,
            log_path,
            port: 0,
            running: None,
        }
    }

    /// A short name for messages: `"primary"` or `"replica"`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The TCP port the server listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    /// The data directory (`PGDATA`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The directory holding the server's Unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The file receiving the server's stdout and stderr (its log).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        file_tail(&self.log_path, lines)
    }

    /// Path of `pg_hba.conf`. After changing it call [`reload`](Self::reload), or use
    /// [`set_hba`](Self::set_hba) which does both.
    pub fn hba_path(&self) -> PathBuf {
        self.data_dir.join("pg_hba.conf")
    }

    /// A libpq connection string for superuser `postgres` over TCP, e.g. for `tokio_postgres`.
    pub fn conn_str(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db}",
            self.port
        )
    }

    /// Whether the server process is (still) running.
    pub fn is_running(&mut self) -> bool {
        match self.running.as_mut() {
            Some(r) => matches!(r.wrapper.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The postmaster's pid, from `postmaster.pid`, if the server is running.
    pub fn pid(&self) -> Option<i32> {
        self.running.as_ref()?;
        self.read_pid_file()?.first()?.trim().parse().ok()
    }

    /// Runs `sql` with `psql -X -A -t -q -v ON_ERROR_STOP=1` as superuser `postgres` against
    /// database `db` (over the Unix socket, so rewriting the TCP lines of `pg_hba.conf` does not
    /// affect it) and returns its trimmed stdout. Statements are sent one by one (as by `psql -f`),
    /// so `CREATE DATABASE` may be combined with other statements. On failure the error carries
    /// psql's stderr.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, ClusterError> {
        let mut cmd = Command::new(self.bins.tool("psql"));
        cmd.args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-U",
            "postgres",
        ])
        .arg("-h")
        .arg(&self.socket_dir)
        .arg("-p")
        .arg(self.port.to_string())
        .arg("-d")
        .arg(db)
        .args(["-f", "-"])
        .env("PGCONNECT_TIMEOUT", "10")
        .current_dir(&self.socket_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        scrub_libpq_env(&mut cmd);
        let sql_error = |stderr: String| ClusterError::Sql {
            instance: self.name.clone(),
            db: db.to_string(),
            sql: sql.to_string(),
            stderr,
        };
        let mut child = cmd
            .spawn()
            .map_err(|e| ClusterError::io(format!("running {cmd:?}"), e))?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| sql_error("psql's stdin was not captured".to_string()))?;
        let script = format!("{sql}\n");
        // Feed the SQL from another thread so a large script cannot deadlock against a large
        // result. A write error means psql exited early; its stderr will say why.
        let writer = thread::spawn(move || {
            let _ = stdin.write_all(script.as_bytes());
        });
        let out = child
            .wait_with_output()
            .map_err(|e| ClusterError::io("waiting for psql", e))?;
        let _ = writer.join();
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(sql_error(format!("{} ({})", stderr, out.status)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Asks the server to reread its configuration files (`pg_ctl reload`) and waits until new
    /// connections see the result (`pg_conf_load_time()` changes, checked over the Unix socket).
    pub fn reload(&self) -> Result<(), ClusterError> {
        let before = self.psql("postgres", "select pg_conf_load_time()")?;
        let mut cmd = Command::new(self.bins.tool("pg_ctl"));
        cmd.arg("reload")
            .arg("-s")
            .arg("-D")
            .arg(&self.data_dir)
            .current_dir(&self.socket_dir);
        self.run_as.apply(&mut cmd);
        run(&mut cmd)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.psql("postgres", "select pg_conf_load_time()")? != before {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout {
                    waited: Duration::from_secs(30),
                    what: format!("{} to reload its configuration", self.name),
                });
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Replaces `pg_hba.conf` by a few fixed lines that keep sluice's own control connections
    /// (superuser `postgres` over the Unix socket, and replication from 127.0.0.1) trusted,
    /// followed by `rules`, then [`reload`](Self::reload)s. `rules` are ordinary `pg_hba.conf`
    /// lines, e.g. `"host all all 127.0.0.1/32 scram-sha-256"`.
    pub fn set_hba(&self, rules: &str) -> Result<(), ClusterError> {
        write_file(
            &self.run_as,
            &self.hba_path(),
            &format!("{HBA_HEADER}{rules}\n"),
        )?;
        self.reload()
    }

    /// Stops the server with a fast shutdown (SIGINT: sessions are disconnected) and waits for
    /// it to exit, escalating to an immediate shutdown and then SIGKILL if that takes over a
    /// minute. Does nothing if it is not running.
    pub fn stop(&mut self) {
        let Some(mut running) = self.running.take() else {
            return;
        };
        // A line on the pipe tells the watchdog to shut postgres down (keeping the data).
        let _ = running.pipe.write_all(b"stop\n");
        drop(running.pipe);
        if wait_timeout(&mut running.wrapper, STOP_TIMEOUT).is_some() {
            return;
        }
        if let Some(pid) = self
            .read_pid_file()
            .and_then(|l| l.first()?.trim().parse::<i32>().ok())
        {
            // SAFETY: kill has no memory-safety preconditions; pid comes from postmaster.pid.
            unsafe { libc::kill(pid, libc::SIGQUIT) };
        }
        if wait_timeout(&mut running.wrapper, Duration::from_secs(10)).is_some() {
            return;
        }
        let _ = running.wrapper.kill();
        let _ = running.wrapper.wait();
    }

    /// Starts the server again after [`stop`](Self::stop), on the same port, and waits until it
    /// accepts connections. Does nothing if it is running.
    pub fn start(&mut self) -> Result<(), ClusterError> {
        if self.is_running() {
            return Ok(());
        }
        // Reap a wrapper whose server died on its own.
        if let Some(mut old) = self.running.take() {
            let _ = old.wrapper.wait();
        }
        match self.launch() {
            Ok(()) => Ok(()),
            Err(LaunchError::PortTaken) => Err(ClusterError::StartFailed {
                instance: self.name.clone(),
                reason: format!("port {} is taken by another process", self.port),
                log: self.log_path.clone(),
                log_tail: self.log_tail(LOG_TAIL_LINES),
            }),
            Err(LaunchError::Other(e)) => Err(e),
        }
    }

    /// First start: picks a free port, retrying with another one if postgres can't bind it.
    pub(crate) fn start_on_free_port(&mut self) -> Result<(), ClusterError> {
        const ATTEMPTS: usize = 5;
        for _ in 0..ATTEMPTS {
            self.set_port(free_port()?)?;
            match self.launch() {
                Ok(()) => return Ok(()),
                Err(LaunchError::PortTaken) => continue,
                Err(LaunchError::Other(e)) => return Err(e),
            }
        }
        Err(ClusterError::StartFailed {
            instance: self.name.clone(),
            reason: format!("could not bind a free port in {ATTEMPTS} attempts"),
            log: self.log_path.clone(),
            log_tail: self.log_tail(LOG_TAIL_LINES),
        })
    }

    /// Records `port` in the instance and in the data directory's `sluice_port.conf`.
    pub(crate) fn set_port(&mut self, port: u16) -> Result<(), ClusterError> {
        let path = self.data_dir.join(PORT_CONF);
        write_file(&self.run_as, &path, &format!("port = {port}\n"))?;
        self.port = port;
        Ok(())
    }

    /// Starts the watchdog wrapper and waits until the server accepts TCP connections.
    fn launch(&mut self) -> Result<(), LaunchError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| ClusterError::io(format!("opening {}", self.log_path.display()), e))?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let log_err = log
            .try_clone()
            .map_err(|e| ClusterError::io("duplicating the log file handle", e))?;
        let flag = self.data_dir.with_extension("orphaned");
        // The flag is only ever created by a watchdog whose owner died; clear any leftover.
        let _ = std::fs::remove_file(&flag);
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(WATCHDOG)
            .arg("sh")
            .arg(self.bins.tool("postgres"))
            .arg(&self.data_dir)
            .arg(&flag)
            .arg(&self.log_path)
            .current_dir(&self.socket_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            // Own process group: a Ctrl-C in the terminal reaches us, not the wrapper, so the
            // wrapper sees the pipe close and cleans up.
            .process_group(0);
        self.run_as.apply(&mut cmd);
        let mut wrapper = cmd
            .spawn()
            .map_err(|e| ClusterError::io(format!("starting postgres for {}", self.name), e))?;
        let Some(pipe) = wrapper.stdin.take() else {
            let _ = wrapper.kill();
            let _ = wrapper.wait();
            return Err(self
                .start_failed("the watchdog pipe was not created")
                .into());
        };
        self.running = Some(Running { wrapper, pipe });

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let exited = match self.running.as_mut().map(|r| r.wrapper.try_wait()) {
                Some(Ok(None)) => None,
                Some(Ok(Some(status))) => Some(status.to_string()),
                Some(Err(e)) => Some(format!("could not wait for it: {e}")),
                None => Some("it is not running".to_string()),
            };
            if let Some(status) = exited {
                self.running = None;
                let new_log = read_from(&self.log_path, log_start);
                if new_log.contains("could not bind") || new_log.contains("Address already in use")
                {
                    return Err(LaunchError::PortTaken);
                }
                return Err(self
                    .start_failed(&format!("postgres exited ({status})"))
                    .into());
            }
            if self.pid_file_says_ready() && self.pg_isready() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(self
                    .start_failed(&format!("not ready after {}s", START_TIMEOUT.as_secs()))
                    .into());
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// A [`ClusterError::StartFailed`] with `reason` and the log tail.
    fn start_failed(&self, reason: &str) -> ClusterError {
        ClusterError::StartFailed {
            instance: self.name.clone(),
            reason: reason.to_string(),
            log: self.log_path.clone(),
            log_tail: self.log_tail(LOG_TAIL_LINES),
        }
    }

    /// The lines of `postmaster.pid`, if it exists.
    fn read_pid_file(&self) -> Option<Vec<String>> {
        let text = std::fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        Some(text.lines().map(str::to_string).collect())
    }

    /// Whether `postmaster.pid` names our port and says the server accepts connections.
    fn pid_file_says_ready(&self) -> bool {
        let Some(lines) = self.read_pid_file() else {
            return false;
        };
        // Line 4 is the port, line 8 the postmaster status ("ready" once it accepts connections,
        // including read-only connections on a hot standby).
        lines.get(3).map(|l| l.trim()) == Some(self.port.to_string().as_str())
            && lines.get(7).map(|l| l.trim()) == Some("ready")
    }

    /// `pg_isready` against 127.0.0.1:port.
    fn pg_isready(&self) -> bool {
        let mut cmd = Command::new(self.bins.tool("pg_isready"));
        cmd.args([
            "-q",
            "-t",
            "5",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-p",
        ])
        .arg(self.port.to_string())
        .current_dir(&self.socket_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        scrub_libpq_env(&mut cmd);
        matches!(cmd.status(), Ok(s) if s.success())
    }
}

impl Drop for PgInstance {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits up to `timeout` for `child` to exit; `Some` once it has (or can't be waited for).
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return Some(()),
            Ok(None) => {}
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// The contents of the file at `path` from byte `offset` on (empty if unreadable).
fn read_from(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        if file.seek(SeekFrom::Start(offset)).is_ok() {
            let mut bytes = Vec::new();
            if file.read_to_end(&mut bytes).is_ok() {
                text = String::from_utf8_lossy(&bytes).into_owned();
            }
        }
    }
    text
}
