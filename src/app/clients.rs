//! The connected clients, for SHOW CLIENTS: an entry per session, registered after login and
//! removed when the session ends. A session changes its entry's state with one atomic store
//! per transition (waiting for a server connection, running, idle).

use dashmap::DashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::SystemTime;

/// What a client is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    /// Between transactions, holding no server connection.
    Idle = 0,
    /// Waiting for a server connection (or for RESUME).
    Waiting = 1,
    /// Running a transaction on a server connection.
    Active = 2,
}

impl ClientState {
    /// The name SHOW CLIENTS and the metrics use.
    pub fn name(self) -> &'static str {
        match self {
            ClientState::Idle => "idle",
            ClientState::Waiting => "waiting",
            ClientState::Active => "active",
        }
    }
}

/// One connected client.
#[derive(Debug)]
pub struct ClientEntry {
    /// Its number, unique in this process.
    pub id: u64,
    /// The database it connected to.
    pub database: String,
    /// The user it logged in as.
    pub user: String,
    /// Its address.
    pub peer: Option<SocketAddr>,
    /// The address it connected to.
    pub local: Option<SocketAddr>,
    /// Its `application_name` at login.
    pub application_name: String,
    /// When it logged in.
    pub connected: SystemTime,
    state: AtomicU8,
    /// Microseconds since the Unix epoch when the state last changed.
    since: AtomicU64,
}

fn now_micros() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

impl ClientEntry {
    /// Records a state change.
    pub fn set(&self, state: ClientState) {
        if self.state.swap(state as u8, Relaxed) != state as u8 {
            self.since.store(now_micros(), Relaxed);
        }
    }

    /// The state now, and since when.
    pub fn state(&self) -> (ClientState, SystemTime) {
        let state = match self.state.load(Relaxed) {
            1 => ClientState::Waiting,
            2 => ClientState::Active,
            _ => ClientState::Idle,
        };
        let since = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(self.since.load(Relaxed));
        (state, since)
    }
}

/// Every connected client.
#[derive(Debug, Default)]
pub struct ClientRegistry {
    next: AtomicU64,
    clients: Arc<DashMap<u64, Arc<ClientEntry>>>,
}

/// A session's entry; dropping it removes the entry.
#[derive(Debug)]
pub struct ClientHandle {
    entry: Arc<ClientEntry>,
    clients: Arc<DashMap<u64, Arc<ClientEntry>>>,
}

impl std::ops::Deref for ClientHandle {
    type Target = ClientEntry;
    fn deref(&self) -> &ClientEntry {
        &self.entry
    }
}

impl Drop for ClientHandle {
    fn drop(&mut self) {
        self.clients.remove(&self.entry.id);
    }
}

/// Who a new client is, for [`ClientRegistry::register`].
#[derive(Debug)]
pub struct NewClient {
    /// The database it connected to.
    pub database: String,
    /// The user it logged in as.
    pub user: String,
    /// Its address.
    pub peer: Option<SocketAddr>,
    /// The address it connected to.
    pub local: Option<SocketAddr>,
    /// Its `application_name`.
    pub application_name: String,
}

impl ClientRegistry {
    /// Adds a logged-in client (idle).
    pub fn register(&self, c: NewClient) -> ClientHandle {
        let id = self.next.fetch_add(1, Relaxed) + 1;
        let entry = Arc::new(ClientEntry {
            id,
            database: c.database,
            user: c.user,
            peer: c.peer,
            local: c.local,
            application_name: c.application_name,
            connected: SystemTime::now(),
            state: AtomicU8::new(ClientState::Idle as u8),
            since: AtomicU64::new(now_micros()),
        });
        self.clients.insert(id, entry.clone());
        ClientHandle { entry, clients: self.clients.clone() }
    }

    /// The clients now, by id.
    pub fn all(&self) -> Vec<Arc<ClientEntry>> {
        let mut all: Vec<Arc<ClientEntry>> = self.clients.iter().map(|e| e.value().clone()).collect();
        all.sort_by_key(|c| c.id);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(db: &str) -> NewClient {
        NewClient { database: db.into(), user: "u".into(), peer: None, local: None, application_name: String::new() }
    }

    #[test]
    fn entries_live_as_long_as_their_session() {
        let registry = ClientRegistry::default();
        let a = registry.register(client("a"));
        let b = registry.register(client("b"));
        assert_eq!(registry.all().iter().map(|c| c.database.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        drop(a);
        assert_eq!(registry.all().len(), 1);
        b.set(ClientState::Waiting);
        assert_eq!(b.state().0, ClientState::Waiting);
        b.set(ClientState::Active);
        assert_eq!(registry.all()[0].state().0, ClientState::Active);
    }
}
