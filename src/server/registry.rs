//! The open server connections, for SHOW SERVERS: an entry per connection, registered when its
//! login succeeds and removed when it is closed. Sessions mark the entry active (with the
//! client it serves) when they check the connection out, and idle when they give it back.

use dashmap::DashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// One open server connection.
#[derive(Debug)]
pub struct ServerEntry {
    /// Its number, unique in this process.
    pub id: u64,
    /// The role it logged in as.
    pub user: String,
    /// The database on the server.
    pub database: String,
    /// The server's address.
    pub server: SocketAddr,
    /// sluice's end of it.
    pub local: Option<SocketAddr>,
    /// The backend's process id.
    pub pid: u32,
    /// When it logged in.
    pub connected: SystemTime,
    /// The client it serves (its SHOW CLIENTS id), 0 while idle.
    client: AtomicU64,
    /// Microseconds since the Unix epoch when it was last checked out or returned.
    since: AtomicU64,
}

fn now_micros() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

impl ServerEntry {
    /// Checked out by the client numbered `client`.
    pub fn serve(&self, client: u64) {
        self.client.store(client, Relaxed);
        self.since.store(now_micros(), Relaxed);
    }

    /// Back in the pool.
    pub fn release(&self) {
        if self.client.swap(0, Relaxed) != 0 {
            self.since.store(now_micros(), Relaxed);
        }
    }

    /// The client it serves (`None` while idle), and since when.
    pub fn state(&self) -> (Option<u64>, SystemTime) {
        let client = self.client.load(Relaxed);
        let since = SystemTime::UNIX_EPOCH + Duration::from_micros(self.since.load(Relaxed));
        ((client != 0).then_some(client), since)
    }
}

/// Every open server connection.
#[derive(Debug, Default)]
pub struct ServerRegistry {
    next: AtomicU64,
    servers: Arc<DashMap<u64, Arc<ServerEntry>>>,
}

/// A connection's entry; dropping it (with the connection) removes the entry.
#[derive(Debug)]
pub struct ServerHandle {
    entry: Arc<ServerEntry>,
    servers: Arc<DashMap<u64, Arc<ServerEntry>>>,
}

impl std::ops::Deref for ServerHandle {
    type Target = ServerEntry;
    fn deref(&self) -> &ServerEntry {
        &self.entry
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.servers.remove(&self.entry.id);
    }
}

impl ServerRegistry {
    /// Adds a connection that just logged in.
    pub fn register(&self, user: &str, database: &str, server: SocketAddr, local: Option<SocketAddr>, pid: u32) -> ServerHandle {
        let id = self.next.fetch_add(1, Relaxed) + 1;
        let entry = Arc::new(ServerEntry {
            id,
            user: user.to_owned(),
            database: database.to_owned(),
            server,
            local,
            pid,
            connected: SystemTime::now(),
            client: AtomicU64::new(0),
            since: AtomicU64::new(now_micros()),
        });
        self.servers.insert(id, entry.clone());
        ServerHandle { entry, servers: self.servers.clone() }
    }

    /// The connections now, by id.
    pub fn all(&self) -> Vec<Arc<ServerEntry>> {
        let mut all: Vec<Arc<ServerEntry>> = self.servers.iter().map(|e| e.value().clone()).collect();
        all.sort_by_key(|s| s.id);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_follow_their_connections() {
        let registry = ServerRegistry::default();
        let addr: SocketAddr = "127.0.0.1:5432".parse().unwrap();
        let a = registry.register("app", "db", addr, None, 11);
        let b = registry.register("app", "db", addr, None, 12);
        a.serve(7);
        assert_eq!(registry.all()[0].state().0, Some(7));
        a.release();
        assert_eq!(registry.all()[0].state().0, None);
        drop(a);
        assert_eq!(registry.all().iter().map(|s| s.pid).collect::<Vec<_>>(), [12]);
        drop(b);
        assert!(registry.all().is_empty());
    }
}
