//! The configuration: the TOML file described in `shared/interface.md`, parsed with serde and
//! validated as a whole. A reload builds a new [`Config`] and swaps it in; nothing here is
//! mutable once built.

mod units;

pub use units::{ByteSize, ConfigDuration};

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Errors from reading or validating a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The TOML did not parse or a key is unknown or has the wrong type.
    #[error("{0}")]
    Parse(#[from] toml::de::Error),
    /// A key has a value that is not allowed.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid {
        /// The dotted key, e.g. `pool.size`.
        key: String,
        /// Why.
        reason: String,
    },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), reason: reason.into() }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`: listeners and client limits.
    #[serde(default)]
    pub server: ServerSection,
    /// `[tls]`: TLS toward clients and servers.
    #[serde(default)]
    pub tls: TlsSection,
    /// `[auth]`: how clients authenticate.
    #[serde(default)]
    pub auth: AuthSection,
    /// `[pool]`: pool sizes and timeouts.
    #[serde(default)]
    pub pool: PoolSection,
    /// `[databases.NAME]`: the databases clients may connect to.
    #[serde(default)]
    pub databases: BTreeMap<String, DatabaseSection>,
    /// `[routing]`: read/write splitting.
    #[serde(default)]
    pub routing: RoutingSection,
    /// `[cache]`: the result cache.
    #[serde(default)]
    pub cache: CacheSection,
    /// The directory relative paths (auth_file, certificates) are resolved against.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// One address or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Listen {
    /// `listen = "127.0.0.1:6432"`
    One(String),
    /// `listen = ["127.0.0.1:6432", "[::1]:6432"]`
    Many(Vec<String>),
}

impl Listen {
    /// The addresses as written.
    pub fn addresses(&self) -> Vec<&str> {
        match self {
            Listen::One(a) => vec![a.as_str()],
            Listen::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Client-facing addresses.
    pub listen: Listen,
    /// Runtime worker threads; 0 = one per core.
    pub workers: usize,
    /// Most client connections at once.
    pub max_client_conn: usize,
    /// Users allowed on the admin console.
    pub admin_users: Vec<String>,
    /// Address for Prometheus metrics.
    pub metrics_listen: Option<String>,
    /// Time a client has to finish startup and authentication.
    pub client_login_timeout: ConfigDuration,
    /// Largest protocol message accepted from a client or server.
    pub max_message_size: ByteSize,
    /// On SIGTERM, how long running transactions may take to finish.
    pub shutdown_timeout: ConfigDuration,
    /// Most logged-in clients per user (0 = no limit).
    pub max_client_conn_per_user: usize,
    /// Most logged-in clients per database (0 = no limit; `[databases.x] max_client_conn`
    /// overrides it).
    pub max_client_conn_per_database: usize,
    /// Most connections in the middle of logging in; beyond it the one waiting longest is
    /// dropped (0 = no limit).
    pub max_pending_logins: usize,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: Listen::One("127.0.0.1:6432".into()),
            workers: 0,
            max_client_conn: 10000,
            admin_users: vec!["postgres".into()],
            metrics_listen: None,
            client_login_timeout: ConfigDuration(std::time::Duration::from_secs(10)),
            max_message_size: ByteSize(64 << 20),
            shutdown_timeout: ConfigDuration(std::time::Duration::from_secs(30)),
            max_client_conn_per_user: 0,
            max_client_conn_per_database: 0,
            max_pending_logins: 1024,
        }
    }
}

/// `[tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// disable | allow | prefer | require
    pub client_mode: String,
    /// PEM certificate.
    pub cert: Option<PathBuf>,
    /// PEM key.
    pub key: Option<PathBuf>,
    /// disable | prefer | require | verify-ca | verify-full
    pub server_mode: String,
    /// CA for verifying servers.
    pub server_ca: Option<PathBuf>,
}

impl Default for TlsSection {
    fn default() -> Self {
        Self {
            client_mode: "disable".into(),
            cert: None,
            key: None,
            server_mode: "prefer".into(),
            server_ca: None,
        }
    }
}

/// How clients authenticate to sluice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum AuthMethod {
    /// No password.
    #[default]
    #[serde(rename = "trust")]
    Trust,
    /// Cleartext password.
    #[serde(rename = "password")]
    Password,
    /// MD5 challenge.
    #[serde(rename = "md5")]
    Md5,
    /// SCRAM-SHA-256.
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// The client-side method.
    pub method: AuthMethod,
    /// PgBouncer-style userlist file.
    pub auth_file: Option<PathBuf>,
    /// Inline users.
    pub users: Vec<UserEntry>,
    /// Query that returns a user's stored secret in its last column, with the user name as
    /// `$1` (PgBouncer's auth_query), for users in neither the auth file nor `users`.
    pub auth_query: Option<String>,
    /// The login that runs `auth_query` (its password from `users`, the auth file or the
    /// database's `password`); default: the database's `user`, else the first admin user.
    pub auth_user: Option<String>,
    /// How long an `auth_query` answer is kept (default 10s).
    pub auth_query_cache: Option<ConfigDuration>,
}

/// `[[auth.users]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    /// Login name.
    pub name: String,
    /// Plain password, `md5...` or `SCRAM-SHA-256$...`.
    pub password: String,
}

/// Pool mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// A server connection per transaction.
    #[default]
    Transaction,
    /// A server connection per client session.
    Session,
}

/// `[pool]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSection {
    /// transaction | session
    pub mode: PoolMode,
    /// Server connections per (database, user, server).
    pub size: usize,
    /// Connections kept open even when idle.
    pub min_size: usize,
    /// 0 = unbounded queue; else reject beyond it at once.
    pub max_wait_clients: usize,
    /// Longest wait for a server connection.
    pub query_wait_timeout: ConfigDuration,
    /// Longest time to connect and log in to a server.
    pub server_connect_timeout: ConfigDuration,
    /// Idle server connections are closed after this.
    pub server_idle_timeout: ConfigDuration,
    /// Server connections are closed after this age, when idle.
    pub server_lifetime: ConfigDuration,
    /// A client idle inside a transaction longer than this is disconnected; 0 = off.
    pub idle_transaction_timeout: ConfigDuration,
    /// Prepared statements kept per server connection.
    pub max_prepared_statements: usize,
    /// Server logins in flight per pool, at most (taken when the pool is created).
    pub max_concurrent_logins: usize,
}

impl Default for PoolSection {
    fn default() -> Self {
        use std::time::Duration;
        Self {
            mode: PoolMode::Transaction,
            size: 20,
            min_size: 0,
            max_wait_clients: 0,
            query_wait_timeout: ConfigDuration(Duration::from_secs(30)),
            server_connect_timeout: ConfigDuration(Duration::from_secs(5)),
            server_idle_timeout: ConfigDuration(Duration::from_secs(600)),
            server_lifetime: ConfigDuration(Duration::from_secs(3600)),
            idle_transaction_timeout: ConfigDuration(Duration::ZERO),
            max_prepared_statements: 200,
            max_concurrent_logins: 8,
        }
    }
}

/// `[databases.NAME]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSection {
    /// Primary address, host:port.
    pub primary: String,
    /// Replica addresses.
    #[serde(default)]
    pub replicas: Vec<String>,
    /// Name on the servers; defaults to the table key.
    pub dbname: Option<String>,
    /// Fixed server login.
    pub user: Option<String>,
    /// Password for the server login.
    pub password: Option<String>,
    /// Override of pool.size.
    pub pool_size: Option<usize>,
    /// Most logged-in clients of this database (overrides `server.max_client_conn_per_database`).
    pub max_client_conn: Option<usize>,
}

/// `[routing]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingSection {
    /// Send reads to replicas.
    pub read_write_split: bool,
    /// Most time a replica may be behind.
    pub max_replica_lag: ConfigDuration,
    /// Most WAL bytes a replica may be behind.
    pub max_replica_lag_bytes: ByteSize,
    /// off | session | global
    pub read_your_writes: String,
    /// primary | error
    pub replica_fallback: String,
    /// How often replica lag is polled.
    pub lag_check_interval: ConfigDuration,
    /// User functions safe on replicas.
    pub read_only_functions: Vec<String>,
    /// The role the replica monitor logs in as (default: the database's `user`, else the first
    /// of `server.admin_users`).
    pub monitor_user: Option<String>,
    /// Its password (default: the database's `password`, else the user's from `[auth]`).
    pub monitor_password: Option<String>,
}

/// `routing.read_your_writes`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadYourWrites {
    /// Reads may see a replica's older state.
    Off,
    /// A client's reads see its own committed writes.
    Session,
    /// Reads see every write committed through sluice on the database before they began.
    Global,
}

impl RoutingSection {
    /// `read_your_writes` as validated.
    pub fn read_your_writes(&self) -> ReadYourWrites {
        match self.read_your_writes.as_str() {
            "off" => ReadYourWrites::Off,
            "global" => ReadYourWrites::Global,
            _ => ReadYourWrites::Session,
        }
    }

    /// `replica_fallback = "primary"`: reads go to the primary when no replica is healthy.
    pub fn falls_back_to_primary(&self) -> bool {
        self.replica_fallback != "error"
    }
}

impl Default for RoutingSection {
    fn default() -> Self {
        use std::time::Duration;
        Self {
            read_write_split: false,
            max_replica_lag: ConfigDuration(Duration::from_secs(1)),
            max_replica_lag_bytes: ByteSize(16 << 20),
            read_your_writes: "session".into(),
            replica_fallback: "primary".into(),
            lag_check_interval: ConfigDuration(Duration::from_millis(100)),
            read_only_functions: vec![],
            monitor_user: None,
            monitor_password: None,
        }
    }
}

/// `[cache]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSection {
    /// Cache on or off.
    pub enabled: bool,
    /// all | hint
    pub mode: String,
    /// Default entry lifetime.
    pub ttl: ConfigDuration,
    /// Memory bound.
    pub max_memory: ByteSize,
    /// Largest cached result.
    pub max_result_bytes: ByteSize,
    /// memory | redis
    pub backend: String,
    /// Redis address.
    pub redis_url: String,
    /// How long a Redis operation may take before the cache is bypassed (backend = "redis").
    pub redis_timeout: ConfigDuration,
    /// proxy | logical
    pub invalidation_source: String,
    /// With `logical`: the publication streamed (created `FOR ALL TABLES` if missing; an
    /// existing one is used as it is).
    pub logical_publication: String,
    /// With `logical`: the temporary replication slot's name (default
    /// `sluice_<host>_<pid>_<hash of the server database>`; when set and there are several
    /// server databases, `_2`, `_3`... are appended for the second and later). Each sluice
    /// instance needs its own.
    pub logical_slot: Option<String>,
    /// With `logical`: the role the stream logs in as (needs REPLICATION; default: the
    /// database's `user`, else the first of `server.admin_users`).
    pub logical_user: Option<String>,
    /// Its password (default: the database's `password`, else the user's from `[auth]`).
    pub logical_password: Option<String>,
    /// With `logical`: how often the stream confirms its position to the primary.
    pub logical_status_interval: ConfigDuration,
}

impl Default for CacheSection {
    fn default() -> Self {
        Self {
            enabled: false,
            mode: "all".into(),
            ttl: ConfigDuration(std::time::Duration::from_secs(5)),
            max_memory: ByteSize(256 << 20),
            max_result_bytes: ByteSize(1 << 20),
            backend: "memory".into(),
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_timeout: ConfigDuration(std::time::Duration::from_millis(50)),
            invalidation_source: "proxy".into(),
            logical_publication: "sluice".into(),
            logical_slot: None,
            logical_user: None,
            logical_password: None,
            logical_status_interval: ConfigDuration(std::time::Duration::from_secs(1)),
        }
    }
}

fn one_of(key: &str, value: &str, allowed: &[&str]) -> Result<(), ConfigError> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(invalid(key, format!("{value:?} is not one of {}", allowed.join(" | "))))
    }
}

fn check_addr(key: &str, addr: &str) -> Result<(), ConfigError> {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(invalid(key, format!("{addr:?} is not host:port"))),
    }
}

impl Config {
    /// Reads and validates a configuration file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, the TOML error or the bad key.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let mut config: Config = toml::from_str(&text)?;
        config.base_dir = path.parent().map(Path::to_owned).unwrap_or_default();
        config.validate()?;
        Ok(config)
    }

    /// Parses and validates TOML text (relative paths resolve against the current directory).
    ///
    /// # Errors
    /// [`ConfigError`] naming the TOML error or the bad key.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// The role sluice logs in as for its own connections to `db`'s servers (replica monitor,
    /// auth_query, the replication stream): `explicit` when set, else the database's `user`,
    /// else the first admin user, else `postgres`.
    pub fn own_user(&self, db: &DatabaseSection, explicit: Option<&String>) -> String {
        explicit
            .or(db.user.as_ref())
            .or(self.server.admin_users.first())
            .cloned()
            .unwrap_or_else(|| "postgres".to_owned())
    }

    /// Resolves a path from the file against the configuration's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.base_dir.join(p)
        }
    }

    /// Checks every value that serde cannot.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let addrs = self.server.listen.addresses();
        if addrs.is_empty() {
            return Err(invalid("server.listen", "needs at least one address"));
        }
        for a in addrs {
            a.parse::<SocketAddr>()
                .map_err(|_| invalid("server.listen", format!("{a:?} is not ip:port")))?;
        }
        if let Some(m) = &self.server.metrics_listen {
            m.parse::<SocketAddr>()
                .map_err(|_| invalid("server.metrics_listen", format!("{m:?} is not ip:port")))?;
        }
        if self.server.max_client_conn == 0 {
            return Err(invalid("server.max_client_conn", "must be at least 1"));
        }
        if self.server.max_message_size.0 < 1024 || self.server.max_message_size.0 > (1 << 30) {
            return Err(invalid("server.max_message_size", "must be between 1kB and 1GB"));
        }
        one_of("tls.client_mode", &self.tls.client_mode, &["disable", "allow", "prefer", "require"])?;
        one_of(
            "tls.server_mode",
            &self.tls.server_mode,
            &["disable", "prefer", "require", "verify-ca", "verify-full"],
        )?;
        if self.tls.client_mode != "disable" && (self.tls.cert.is_none() || self.tls.key.is_none()) {
            return Err(invalid("tls.cert", "tls.client_mode needs tls.cert and tls.key"));
        }
        if matches!(self.tls.server_mode.as_str(), "verify-ca" | "verify-full") && self.tls.server_ca.is_none() {
            return Err(invalid("tls.server_ca", format!("tls.server_mode = {:?} needs tls.server_ca", self.tls.server_mode)));
        }
        // The files must load, so that check-config and RELOAD catch a bad certificate.
        crate::tls::TlsSettings::from_config(self).map_err(|e| invalid("tls", e.to_string()))?;
        if let Some(f) = &self.auth.auth_file {
            let path = self.resolve(f);
            crate::auth::userlist::parse_file(&path).map_err(|e| invalid("auth.auth_file", e.to_string()))?;
        }
        for (i, u) in self.auth.users.iter().enumerate() {
            if u.name.is_empty() {
                return Err(invalid(format!("auth.users[{i}].name"), "is empty"));
            }
        }
        if self.pool.size == 0 {
            return Err(invalid("pool.size", "must be at least 1"));
        }
        if self.pool.min_size > self.pool.size {
            return Err(invalid("pool.min_size", "is larger than pool.size"));
        }
        if self.pool.server_connect_timeout.0.is_zero() {
            return Err(invalid("pool.server_connect_timeout", "must be above zero"));
        }
        for (name, db) in &self.databases {
            let key = |k: &str| format!("databases.{name}.{k}");
            if name.is_empty() || name.contains('\0') {
                return Err(invalid("databases", "a database name is empty"));
            }
            check_addr(&key("primary"), &db.primary)?;
            for r in &db.replicas {
                check_addr(&key("replicas"), r)?;
            }
            if db.pool_size == Some(0) {
                return Err(invalid(key("pool_size"), "must be at least 1"));
            }
            if db.password.is_some() && db.user.is_none() {
                return Err(invalid(key("password"), "needs databases.NAME.user"));
            }
        }
        if self.pool.max_concurrent_logins == 0 {
            return Err(invalid("pool.max_concurrent_logins", "must be at least 1"));
        }
        one_of("routing.read_your_writes", &self.routing.read_your_writes, &["off", "session", "global"])?;
        one_of("routing.replica_fallback", &self.routing.replica_fallback, &["primary", "error"])?;
        one_of("cache.mode", &self.cache.mode, &["all", "hint"])?;
        one_of("cache.backend", &self.cache.backend, &["memory", "redis"])?;
        one_of("cache.invalidation_source", &self.cache.invalidation_source, &["proxy", "logical"])?;
        if self.cache.enabled && self.cache.backend == "redis" {
            if let Err(e) = redis::Client::open(self.cache.redis_url.as_str()) {
                return Err(invalid("cache.redis_url", e.to_string()));
            }
            if self.cache.redis_timeout.0.is_zero() {
                return Err(invalid("cache.redis_timeout", "must be above zero"));
            }
        }
        if self.cache.invalidation_source == "logical" {
            let ident = |v: &str| {
                !v.is_empty() && v.len() < 64 && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            };
            if !ident(&self.cache.logical_publication) {
                return Err(invalid("cache.logical_publication", "must be 1-63 of [a-z0-9_]"));
            }
            // Room for the `_<n>` suffix added per server database.
            if self.cache.logical_slot.as_deref().is_some_and(|s| !ident(s) || s.len() > 56) {
                return Err(invalid("cache.logical_slot", "must be 1-56 of [a-z0-9_]"));
            }
            if self.cache.logical_status_interval.0.is_zero() {
                return Err(invalid("cache.logical_status_interval", "must be above zero"));
            }
        }
        Ok(())
    }

    /// The listen addresses, parsed (validated by [`Config::validate`]).
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.server.listen.addresses().iter().filter_map(|a| a.parse().ok()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::from_toml("[databases.app]\nprimary = \"127.0.0.1:5432\"\n").unwrap();
        assert_eq!(c.pool.size, 20);
        assert_eq!(c.pool.mode, PoolMode::Transaction);
        assert_eq!(c.listen_addrs()[0].port(), 6432);
        assert_eq!(c.databases["app"].primary, "127.0.0.1:5432");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("[pool]\nsizee = 3\n").unwrap_err().to_string();
        assert!(err.contains("sizee"), "{err}");
    }

    #[test]
    fn bad_value_is_named() {
        let err = Config::from_toml("[pool]\nsize = 0\n").unwrap_err().to_string();
        assert!(err.contains("pool.size"), "{err}");
        let err = Config::from_toml("[pool]\nquery_wait_timeout = \"5 parsecs\"\n").unwrap_err().to_string();
        assert!(err.contains("query_wait_timeout"), "{err}");
        let err = Config::from_toml("[databases.x]\nprimary = \"nope\"\n").unwrap_err().to_string();
        assert!(err.contains("databases.x.primary"), "{err}");
    }

    #[test]
    fn logical_invalidation_keys() {
        let c = Config::from_toml("[cache]\nenabled = true\ninvalidation_source = \"logical\"\n").unwrap();
        assert_eq!(c.cache.logical_publication, "sluice");
        let err = Config::from_toml("[cache]\ninvalidation_source = \"logical\"\nlogical_slot = \"Bad-Name\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cache.logical_slot"), "{err}");
    }

    #[test]
    fn the_redis_backend_is_accepted_and_its_keys_checked() {
        let base = "[databases.app]\nprimary = \"127.0.0.1:5432\"\n[cache]\nenabled = true\nbackend = \"redis\"\n";
        let c = Config::from_toml(&format!("{base}redis_url = \"redis://10.0.0.1:6380\"\nredis_timeout = \"20ms\"\n")).unwrap();
        assert_eq!(c.cache.redis_timeout.0, std::time::Duration::from_millis(20));
        assert_eq!(Config::from_toml(base).unwrap().cache.redis_timeout.0, std::time::Duration::from_millis(50));
        let err = Config::from_toml(&format!("{base}redis_url = \"http://nope\"\n")).unwrap_err().to_string();
        assert!(err.contains("cache.redis_url"), "{err}");
        let err = Config::from_toml(&format!("{base}redis_timeout = \"0s\"\n")).unwrap_err().to_string();
        assert!(err.contains("cache.redis_timeout"), "{err}");
    }

    #[test]
    fn several_listen_addresses() {
        let c = Config::from_toml("[server]\nlisten = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n").unwrap();
        assert_eq!(c.listen_addrs().len(), 2);
    }
}
