//! One monitoring connection to a server: opened on demand and kept between polls, every
//! connection attempt and query bounded by a timeout, and the two queries the monitor runs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::timeout;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage, SimpleQueryRow};

use super::{MonitorError, MonitorSettings, MonitorTarget};
use crate::router::lag::Lsn;

/// `application_name` of the monitor's connections, as seen in `pg_stat_activity`.
const APPLICATION_NAME: &str = "sluice-monitor";

/// What a replica reports of its replay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Replay {
    /// `pg_last_wal_replay_lsn()`.
    pub lsn: Lsn,
    /// `pg_last_xact_replay_timestamp()`.
    pub timestamp: Option<SystemTime>,
}

/// A connection to one server, reopened after any failure.
pub(super) struct Probe {
    address: String,
    dbname: String,
    user: String,
    password: Option<String>,
    client: Option<Client>,
}

impl Probe {
    /// A probe of the server at `address`, logging in as the target says.
    pub fn new(address: &str, target: &MonitorTarget) -> Self {
        Probe {
            address: address.to_string(),
            dbname: target.dbname.clone(),
            user: target.user.clone(),
            password: target.password.clone(),
            client: None,
        }
    }

    /// The primary's `pg_current_wal_insert_lsn()`: everything committed, even not yet flushed.
    pub async fn current_wal_lsn(&mut self, s: &MonitorSettings) -> Result<Lsn, MonitorError> {
        let row = self.row("SELECT pg_current_wal_insert_lsn()", s).await?;
        self.lsn(row.get(0), "pg_current_wal_insert_lsn()")
    }

    /// The replica's replay position and last replayed commit time.
    ///
    /// # Errors
    /// Besides connection and query failures, [`MonitorError::NotInRecovery`] when the server
    /// is not a replica (any more).
    pub async fn replay(&mut self, s: &MonitorSettings) -> Result<Replay, MonitorError> {
        let row = self
            .row(
                "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn(), \
                 extract(epoch FROM pg_last_xact_replay_timestamp())",
                s,
            )
            .await?;
        if row.get(0) != Some("t") {
            return Err(MonitorError::NotInRecovery { address: self.address.clone() });
        }
        let lsn = self.lsn(row.get(1), "pg_last_wal_replay_lsn()")?;
        let timestamp = match row.get(2) {
            None => None,
            Some(text) => {
                Some(epoch_to_time(text).ok_or_else(|| self.bad_value("pg_last_xact_replay_timestamp()", text))?)
            }
        };
        Ok(Replay { lsn, timestamp })
    }

    fn lsn(&self, value: Option<&str>, what: &'static str) -> Result<Lsn, MonitorError> {
        let text = value.unwrap_or("NULL");
        Lsn::parse(text).map_err(|_| self.bad_value(what, text))
    }

    fn bad_value(&self, what: &'static str, value: &str) -> MonitorError {
        MonitorError::BadValue { address: self.address.clone(), what, value: value.to_string() }
    }

    /// The single row `sql` returns. A failed or timed-out query closes the connection: it may
    /// still be running, and the next poll starts afresh.
    async fn row(&mut self, sql: &str, s: &MonitorSettings) -> Result<SimpleQueryRow, MonitorError> {
        let client = self.client(s).await?;
        let result = timeout(s.query_timeout, client.simple_query(sql)).await;
        let messages = match result {
            Ok(Ok(messages)) => messages,
            Ok(Err(source)) => {
                self.client = None;
                return Err(MonitorError::Query { address: self.address.clone(), source });
            }
            Err(_) => {
                self.client = None;
                return Err(MonitorError::QueryTimeout { address: self.address.clone(), timeout: s.query_timeout });
            }
        };
        messages
            .into_iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(row),
                _ => None,
            })
            .ok_or_else(|| self.bad_value("a row", "nothing"))
    }

    /// The open connection, opening one if there is none or it was closed.
    async fn client(&mut self, s: &MonitorSettings) -> Result<&Client, MonitorError> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        if self.client.is_none() {
            self.client = Some(self.connect(s).await?);
        }
        Ok(self.client.as_ref().unwrap_or_else(|| unreachable!("just set")))
    }

    async fn connect(&self, s: &MonitorSettings) -> Result<Client, MonitorError> {
        let connect_timeout = s.connect_timeout;
        let (host, port) =
            split_address(&self.address).ok_or_else(|| MonitorError::BadAddress { address: self.address.clone() })?;
        let mut config = tokio_postgres::Config::new();
        config
            .host(host)
            .port(port)
            .dbname(&self.dbname)
            .user(&self.user)
            .application_name(APPLICATION_NAME)
            .connect_timeout(connect_timeout);
        if let Some(password) = &self.password {
            config.password(password);
        }
        let opened = match s.tls.as_ref().and_then(|t| crate::tls::postgres_tls(t, &mut config)) {
            Some(tls) => timeout(connect_timeout, crate::server::open_client(&config, tls)).await,
            None => timeout(connect_timeout, crate::server::open_client(&config, NoTls)).await,
        };
        match opened {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(source)) => Err(MonitorError::Connect { address: self.address.clone(), source }),
            Err(_) => Err(MonitorError::ConnectTimeout { address: self.address.clone(), timeout: connect_timeout }),
        }
    }
}


/// `host:port` (or `[v6]:port`) split in two.
fn split_address(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    (!host.is_empty()).then_some(())?;
    Some((host, port.parse().ok()?))
}

/// Seconds since the Unix epoch, as `extract(epoch FROM ...)` prints them, as a time.
fn epoch_to_time(text: &str) -> Option<SystemTime> {
    let secs: f64 = text.parse().ok()?;
    UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(secs).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split_into_host_and_port() {
        assert_eq!(split_address("db1:5432"), Some(("db1", 5432)));
        assert_eq!(split_address("127.0.0.1:6000"), Some(("127.0.0.1", 6000)));
        assert_eq!(split_address("[::1]:5433"), Some(("::1", 5433)));
        assert_eq!(split_address(":5432"), None);
        assert_eq!(split_address("db1"), None);
        assert_eq!(split_address("db1:x"), None);
    }

    #[test]
    fn epoch_seconds_become_times() {
        let t = epoch_to_time("1700000000.250000").unwrap();
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap(), Duration::from_millis(1_700_000_000_250));
        assert_eq!(epoch_to_time("-5"), None);
        assert_eq!(epoch_to_time("soon"), None);
    }
}
