//! The configuration keys the console shows (SHOW CONFIG) and changes (SET): each key's
//! current text, its default, and, for keys a running sluice applies, how to set it on a copy of
//! the configuration. Names are the dotted keys of the TOML file (`pool.size`).

use crate::config::{AuthMethod, ByteSize, Config, ConfigDuration, Listen, PoolMode};
use std::path::PathBuf;

/// Sets a key on a configuration from the text of a SET command; `Err` says why the text is not
/// a value for it.
type Setter = fn(&mut Config, &str) -> Result<(), String>;

/// One configuration key.
pub struct Setting {
    /// The dotted key.
    pub key: &'static str,
    /// Its value as text.
    pub get: fn(&Config) -> String,
    /// How SET changes it; `None` for keys only a restart changes.
    pub set: Option<Setter>,
}

impl Setting {
    /// Whether a running sluice applies a new value (on SET or RELOAD).
    pub fn changeable(&self) -> bool {
        self.set.is_some()
    }
}

fn number<T: std::str::FromStr>(v: &str) -> Result<T, String> {
    v.trim().parse().map_err(|_| format!("{v:?} is not a whole number"))
}

fn boolean(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "1" => Ok(true),
        "false" | "off" | "no" | "0" => Ok(false),
        _ => Err(format!("{v:?} is not a boolean")),
    }
}

fn list(v: &str) -> Vec<String> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

fn text_of_listen(l: &Listen) -> String {
    l.addresses().join(",")
}

fn text_of_method(m: AuthMethod) -> String {
    match m {
        AuthMethod::Trust => "trust",
        AuthMethod::Password => "password",
        AuthMethod::Md5 => "md5",
        AuthMethod::ScramSha256 => "scram-sha-256",
    }
    .to_owned()
}

fn method(v: &str) -> Result<AuthMethod, String> {
    match v.trim() {
        "trust" => Ok(AuthMethod::Trust),
        "password" => Ok(AuthMethod::Password),
        "md5" => Ok(AuthMethod::Md5),
        "scram-sha-256" => Ok(AuthMethod::ScramSha256),
        _ => Err(format!("{v:?} is not one of trust | password | md5 | scram-sha-256")),
    }
}

fn mode(v: &str) -> Result<PoolMode, String> {
    match v.trim() {
        "transaction" => Ok(PoolMode::Transaction),
        "session" => Ok(PoolMode::Session),
        _ => Err(format!("{v:?} is not one of transaction | session")),
    }
}

fn text_of_mode(m: PoolMode) -> String {
    match m {
        PoolMode::Transaction => "transaction",
        PoolMode::Session => "session",
    }
    .to_owned()
}

/// A key read with `Display` and set with `$parse`.
macro_rules! live {
    ($sec:ident . $field:ident, $parse:expr) => {
        Setting {
            key: concat!(stringify!($sec), ".", stringify!($field)),
            get: |c| c.$sec.$field.to_string(),
            set: Some(|c, v| {
                c.$sec.$field = ($parse)(v)?;
                Ok(())
            }),
        }
    };
    ($sec:ident . $field:ident, $get:expr, $parse:expr) => {
        Setting {
            key: concat!(stringify!($sec), ".", stringify!($field)),
            get: |c| ($get)(&c.$sec.$field),
            set: Some(|c, v| {
                c.$sec.$field = ($parse)(v)?;
                Ok(())
            }),
        }
    };
}

/// A key only a restart changes.
macro_rules! fixed {
    ($sec:ident . $field:ident, $get:expr) => {
        Setting { key: concat!(stringify!($sec), ".", stringify!($field)), get: |c| ($get)(&c.$sec.$field), set: None }
    };
}

fn dur(v: &str) -> Result<ConfigDuration, String> {
    ConfigDuration::parse(v)
}

fn size(v: &str) -> Result<ByteSize, String> {
    ByteSize::parse(v)
}

fn string(v: &str) -> Result<String, String> {
    Ok(v.trim().to_owned())
}

fn strings(v: &[String]) -> String {
    v.join(",")
}

fn opt_text<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map(ToString::to_string).unwrap_or_default()
}

fn opt_path(v: &Option<PathBuf>) -> String {
    v.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
}

fn cleared(v: &str) -> Option<String> {
    let v = v.trim();
    (!v.is_empty()).then(|| v.to_owned())
}

/// Every key, in the order of the configuration file.
pub fn all() -> &'static [Setting] {
    ALL
}

const ALL: &[Setting] = &[
    fixed!(server.listen, text_of_listen),
    fixed!(server.workers, ToString::to_string),
    live!(server.max_client_conn, number),
    live!(server.admin_users, strings, |v| Ok::<_, String>(list(v))),
    fixed!(server.metrics_listen, opt_text),
    live!(server.client_login_timeout, dur),
    live!(server.max_message_size, size),
    live!(server.shutdown_timeout, dur),
    // TLS settings apply to new connections at once (the certificate files are read again).
    live!(tls.client_mode, ToString::to_string, string),
    live!(tls.cert, opt_path, |v| Ok::<_, String>(cleared(v).map(PathBuf::from))),
    live!(tls.key, opt_path, |v| Ok::<_, String>(cleared(v).map(PathBuf::from))),
    live!(tls.server_mode, ToString::to_string, string),
    live!(tls.server_ca, opt_path, |v| Ok::<_, String>(cleared(v).map(PathBuf::from))),
    live!(auth.method, |m: &AuthMethod| text_of_method(*m), method),
    live!(auth.auth_file, opt_path, |v| Ok::<_, String>(cleared(v).map(PathBuf::from))),
    live!(pool.mode, |m: &PoolMode| text_of_mode(*m), mode),
    live!(pool.size, number),
    live!(pool.min_size, number),
    live!(pool.max_wait_clients, number),
    live!(pool.query_wait_timeout, dur),
    live!(pool.server_connect_timeout, dur),
    live!(pool.server_idle_timeout, dur),
    live!(pool.server_lifetime, dur),
    live!(pool.idle_transaction_timeout, dur),
    live!(pool.max_prepared_statements, number),
    fixed!(pool.max_concurrent_logins, ToString::to_string),
    live!(routing.read_write_split, boolean),
    live!(routing.max_replica_lag, dur),
    live!(routing.max_replica_lag_bytes, size),
    live!(routing.read_your_writes, string),
    live!(routing.replica_fallback, string),
    live!(routing.lag_check_interval, dur),
    live!(routing.read_only_functions, strings, |v| Ok::<_, String>(list(v))),
    live!(routing.monitor_user, opt_text, |v| Ok::<_, String>(cleared(v))),
    fixed!(cache.enabled, ToString::to_string),
    fixed!(cache.mode, ToString::to_string),
    fixed!(cache.ttl, ToString::to_string),
    fixed!(cache.max_memory, ToString::to_string),
    fixed!(cache.max_result_bytes, ToString::to_string),
    fixed!(cache.backend, ToString::to_string),
    fixed!(cache.redis_url, ToString::to_string),
    fixed!(cache.invalidation_source, ToString::to_string),
    fixed!(cache.logical_publication, ToString::to_string),
    fixed!(cache.logical_slot, opt_text),
    fixed!(cache.logical_user, opt_text),
    fixed!(cache.logical_status_interval, ToString::to_string),
];

/// The setting named `key` (dotted, case-insensitive).
pub fn find(key: &str) -> Option<&'static Setting> {
    all().iter().find(|s| s.key.eq_ignore_ascii_case(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_dotted() {
        let mut keys: Vec<&str> = all().iter().map(|s| s.key).collect();
        assert!(keys.iter().all(|k| k.contains('.')));
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), all().len());
    }

    #[test]
    fn every_value_reads_back_through_its_setter() {
        let defaults = Config::default();
        for s in all() {
            let Some(set) = s.set else { continue };
            let mut c = Config::default();
            set(&mut c, &(s.get)(&defaults)).unwrap_or_else(|e| panic!("{}: {e}", s.key));
            assert_eq!((s.get)(&c), (s.get)(&defaults), "{}", s.key);
        }
    }

    #[test]
    fn set_parses_units_and_rejects_nonsense() {
        let mut c = Config::default();
        let set = |key: &str| find(key).and_then(|s| s.set).unwrap();
        set("pool.size")(&mut c, "35").unwrap();
        set("POOL.QUERY_WAIT_TIMEOUT")(&mut c, "250ms").unwrap();
        set("routing.max_replica_lag_bytes")(&mut c, "8MB").unwrap();
        set("routing.read_write_split")(&mut c, "on").unwrap();
        set("server.admin_users")(&mut c, "postgres, ops").unwrap();
        assert_eq!(c.pool.size, 35);
        assert_eq!(c.pool.query_wait_timeout.0, std::time::Duration::from_millis(250));
        assert_eq!(c.routing.max_replica_lag_bytes.0, 8 << 20);
        assert!(c.routing.read_write_split);
        assert_eq!(c.server.admin_users, ["postgres", "ops"]);
        assert!(set("pool.size")(&mut c, "lots").is_err());
        assert!(set("pool.mode")(&mut c, "statement").is_err());
        assert!(find("server.listen").unwrap().set.is_none());
        assert!(find("no.such").is_none());
    }
}
