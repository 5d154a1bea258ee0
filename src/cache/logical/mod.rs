//! Invalidation from the primary's logical replication stream (`cache.invalidation_source =
//! "logical"`): writes that never pass through sluice (migrations, cron jobs, psql straight to
//! the primary) invalidate the cache too. Writes through sluice keep invalidating as before;
//! the stream adds to them.
//!
//! This module owns, per server database (the generations key `primary/dbname`, shared by
//! every `[databases]` entry that names it):
//!
//! - [`decode`]: the walsender's CopyData wrappers and pgoutput messages, sans-IO;
//! - [`framer`]: the connection's bytes split into messages within a memory bound;
//! - [`tracker`]: the tables each transaction changed, reported at its commit, and the
//!   position to confirm;
//! - [`stream`]: the IO task: login with `replication=database`, publication, temporary slot,
//!   `START_REPLICATION`, invalidation through [`CacheHandle::invalidate_tables`] and
//!   [`CacheHandle::invalidate_all`], standby status updates, reconnection with backoff;
//! - [`LogicalStreams`]: which streams run, started and stopped as the configuration says.
//!
//! # When the stream is down
//!
//! Changes may then be committed that nothing reports, so the database's cache is suspended
//! ([`CacheHandle::suspend`]): nothing is served or stored from the moment sluice starts, or
//! the stream is lost, until the stream is streaming again. Resuming flushes the database
//! (every entry read before is dropped): a new temporary slot streams only what commits after
//! it was created, and anything in between is covered by the flush.
//!
//! # Temporary slots
//!
//! Each stream creates a `TEMPORARY` slot, dropped by the server when the connection ends: a
//! sluice that dies leaves no slot holding WAL back on the primary. The cost is that changes
//! committed while the stream is down cannot be replayed later, hence the flush on reconnect.
//! Each sluice instance needs its own slot (a slot has one consumer): the default name is
//! `sluice_<host>_<pid>_<hash of the server database>`, unique per process and database.

pub mod decode;
pub mod framer;
pub mod stream;
pub mod tracker;

/// The live TLS settings (toward servers, for the replication connections).
pub type Tls = Arc<arc_swap::ArcSwap<crate::tls::TlsSettings>>;

use crate::auth::UserStore;
use crate::cache::CacheHandle;
use crate::config::Config;
use crate::server::ServerTarget;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use stream::StreamTarget;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The generations key of a server database: which primary, which database on it. Sessions
/// and streams must use the same key.
pub fn server_database_key(primary: &str, dbname: &str) -> String {
    format!("{primary}/{dbname}")
}

struct Running {
    target: StreamTarget,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The replication streams of a running sluice, one per server database.
#[derive(Default)]
pub struct LogicalStreams {
    running: Mutex<HashMap<String, Running>>,
}

impl LogicalStreams {
    /// Starts the streams `config` asks for and stops the others. A database whose stream
    /// starts is suspended before this returns, so no session can be served from it before
    /// the stream is up; a database whose stream stops is resumed (proxy invalidation only)
    /// once the stream has ended. Must run inside a tokio runtime.
    /// Replication connections use the live `tls.server_mode` settings in `tls`.
    pub fn sync(&self, config: &Config, users: &UserStore, cache: Option<&Arc<CacheHandle>>, tls: &Tls) {
        let wanted = match cache {
            Some(_) if config.cache.invalidation_source == "logical" => targets(config, users),
            _ => Vec::new(),
        };
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let keep: Vec<&str> = wanted.iter().map(|t| t.key.as_str()).collect();
        let gone: Vec<String> = running.keys().filter(|k| !keep.contains(&k.as_str())).cloned().collect();
        for key in gone {
            let Some(r) = running.remove(&key) else { continue };
            r.stop.cancel();
            if let Some(cache) = cache.cloned() {
                tokio::spawn(async move {
                    let _ = r.task.await;
                    cache.resume(&key).await;
                    tracing::info!(database = %key, "logical invalidation stopped");
                });
            }
        }
        let Some(cache) = cache else { return };
        for target in wanted {
            if running.get(&target.key).is_some_and(|r| r.target == target) {
                continue;
            }
            let previous = running.remove(&target.key);
            cache.suspend(&target.key);
            let stop = CancellationToken::new();
            let task = {
                let (target, cache, stop, tls) = (target.clone(), cache.clone(), stop.clone(), tls.clone());
                tokio::spawn(async move {
                    if let Some(p) = previous {
                        p.stop.cancel();
                        let _ = p.task.await;
                    }
                    stream::run(target, cache, tls, stop).await;
                })
            };
            running.insert(target.key.clone(), Running { target, stop, task });
        }
    }

    /// Stops every stream (at shutdown): the connections close and their slots go.
    pub fn stop(&self) {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.values().for_each(|r| r.stop.cancel());
    }

    /// Server databases with a stream.
    pub fn keys(&self) -> Vec<String> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.keys().cloned().collect()
    }
}

/// One stream per distinct server database of `config`, in configuration order.
fn targets(config: &Config, users: &UserStore) -> Vec<StreamTarget> {
    let c = &config.cache;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut out: Vec<StreamTarget> = Vec::new();
    for (name, db) in &config.databases {
        let dbname = db.dbname.clone().unwrap_or_else(|| name.clone());
        let key = server_database_key(&db.primary, &dbname);
        if out.iter().any(|t| t.key == key) {
            continue;
        }
        let user = config.own_user(db, c.logical_user.as_ref());
        let password = c
            .logical_password
            .clone()
            .or_else(|| db.password.clone())
            .or_else(|| users.get(&user).and_then(|s| s.plain()).map(str::to_owned));
        let slot = match &c.logical_slot {
            Some(base) if out.is_empty() => base.clone(),
            Some(base) => format!("{base}_{}", out.len() + 1),
            None => default_slot(host.trim(), std::process::id(), &key),
        };
        let md5 = users.get(&user).and_then(|s| s.md5()).map(str::to_owned).filter(|_| password.is_none());
        out.push(StreamTarget {
            key,
            server: ServerTarget {
                addr: db.primary.clone(),
                user,
                database: dbname,
                md5,
                password,
                scram: None,
                max_message_size: 1 << 20,
                max_prepared_statements: 0,
            },
            publication: c.logical_publication.clone(),
            slot,
            status_interval: c.logical_status_interval.0,
            connect_timeout: config.pool.server_connect_timeout.0,
        });
    }
    out
}

/// `sluice_<host>_<pid>_<hash of the server database>`: unique per process and database on a
/// primary shared by several hosts, within the 63 bytes of a slot name.
fn default_slot(host: &str, pid: u32, key: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    let db = h.finish() as u32;
    let host: String = host
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
        .take(30)
        .collect();
    if host.is_empty() {
        format!("sluice_{pid}_{db:08x}")
    } else {
        format!("sluice_{host}_{pid}_{db:08x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_are_valid_identifiers() {
        let a = default_slot("db-1.Example.com", 42, "127.0.0.1:5432/app");
        assert!(a.starts_with("sluice_db_1_example_com_42_"), "{a}");
        assert_ne!(a, default_slot("db-1.Example.com", 42, "127.0.0.1:5432/other"));
        assert!(default_slot("", 7, "k").starts_with("sluice_7_"));
        let long = default_slot(&"h".repeat(200), u32::MAX, "k");
        assert!(long.len() <= 63 && long.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{long}");
    }

    #[test]
    fn one_stream_per_server_database() {
        let config = Config::from_toml(
            "[cache]\nenabled = true\ninvalidation_source = \"logical\"\nlogical_slot = \"s\"\n\
             [databases.a]\nprimary = \"127.0.0.1:5432\"\ndbname = \"app\"\n\
             [databases.b]\nprimary = \"127.0.0.1:5432\"\ndbname = \"app\"\n\
             [databases.c]\nprimary = \"127.0.0.1:5432\"\n",
        )
        .unwrap();
        let users = UserStore::from_config(&config).unwrap();
        let t = targets(&config, &users);
        let keys: Vec<_> = t.iter().map(|t| (t.key.as_str(), t.slot.as_str())).collect();
        assert_eq!(keys, [("127.0.0.1:5432/app", "s"), ("127.0.0.1:5432/c", "s_2")]);
        assert_eq!(t[0].server.user, "postgres");
    }
}
