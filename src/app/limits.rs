//! Limits on clients beyond `max_client_conn`: how many may be logged in per user and per
//! database, and how many may be in the middle of logging in at once. A connection that never
//! finishes its login holds a pending slot only until `client_login_timeout`; when the pending
//! slots are all taken, a new connection takes the slot of the one that has waited longest, so
//! a flood of half-open connections pushes out its own oldest members rather than the clients
//! that log in promptly.

use dashmap::DashMap;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// Why a client was turned away.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// `max_client_conn_per_user`.
    #[error("too many connections for role \"{0}\" (max_client_conn_per_user)")]
    User(String),
    /// `max_client_conn_per_database` or the database's `max_client_conn`.
    #[error("too many connections for database \"{0}\" (max_client_conn_per_database)")]
    Database(String),
    /// Pushed out by newer logins (`max_pending_logins`).
    #[error("too many logins in progress (max_pending_logins)")]
    PendingLogins,
}

/// Logged-in clients per user and per database.
#[derive(Debug, Default)]
pub struct ClientLimits {
    users: Arc<DashMap<String, usize>>,
    databases: Arc<DashMap<String, usize>>,
}

/// A client's place under the limits, given back when it is dropped.
#[derive(Debug)]
pub struct ClientSlot {
    users: Arc<DashMap<String, usize>>,
    databases: Arc<DashMap<String, usize>>,
    user: String,
    database: String,
}

/// Takes one from `map[key]` if below `limit` (0 = no limit).
fn take(map: &DashMap<String, usize>, key: &str, limit: usize) -> bool {
    let mut n = map.entry(key.to_owned()).or_insert(0);
    if limit > 0 && *n >= limit {
        return false;
    }
    *n += 1;
    true
}

fn give_back(map: &DashMap<String, usize>, key: &str) {
    map.remove_if_mut(key, |_, n| {
        *n = n.saturating_sub(1);
        *n == 0
    });
}

impl ClientLimits {
    /// Admits a client of `user` on `database` under the limits (0 = none).
    ///
    /// # Errors
    /// [`LimitError`] naming the limit reached.
    pub fn admit(&self, database: &str, user: &str, per_database: usize, per_user: usize) -> Result<ClientSlot, LimitError> {
        if !take(&self.databases, database, per_database) {
            return Err(LimitError::Database(database.to_owned()));
        }
        if !take(&self.users, user, per_user) {
            give_back(&self.databases, database);
            return Err(LimitError::User(user.to_owned()));
        }
        Ok(ClientSlot {
            users: self.users.clone(),
            databases: self.databases.clone(),
            user: user.to_owned(),
            database: database.to_owned(),
        })
    }

    /// Logged-in clients of a database.
    pub fn database_clients(&self, database: &str) -> usize {
        self.databases.get(database).map_or(0, |n| *n)
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        give_back(&self.users, &self.user);
        give_back(&self.databases, &self.database);
    }
}

/// Connections in the middle of logging in.
#[derive(Debug, Default)]
pub struct PendingLogins {
    next: AtomicU64,
    waiting: Arc<Mutex<BTreeMap<u64, CancellationToken>>>,
}

/// One login in progress; cancelled when newer logins push it out.
#[derive(Debug)]
pub struct PendingLogin {
    id: u64,
    /// Cancelled when this login lost its slot.
    pub pushed_out: CancellationToken,
    waiting: Arc<Mutex<BTreeMap<u64, CancellationToken>>>,
}

impl PendingLogins {
    /// A new login; when `cap` (0 = none) logins are already pending, the oldest is pushed out.
    pub fn enter(&self, cap: usize) -> PendingLogin {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        while cap > 0 && waiting.len() >= cap {
            match waiting.pop_first() {
                Some((_, oldest)) => oldest.cancel(),
                None => break,
            }
        }
        waiting.insert(id, token.clone());
        PendingLogin { id, pushed_out: token, waiting: self.waiting.clone() }
    }

    /// Logins in progress.
    pub fn len(&self) -> usize {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for PendingLogin {
    fn drop(&mut self) {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_user_and_per_database_limits_admit_up_to_their_count_and_free_on_drop() {
        let limits = ClientLimits::default();
        let a = limits.admit("db", "app", 3, 2).unwrap();
        let b = limits.admit("db", "app", 3, 2).unwrap();
        assert_eq!(limits.admit("db", "app", 3, 2).unwrap_err(), LimitError::User("app".into()));
        // The refused login did not keep its database place.
        let c = limits.admit("db", "other", 3, 2).unwrap();
        assert_eq!(limits.admit("db", "third", 3, 2).unwrap_err(), LimitError::Database("db".into()));
        drop(a);
        let _d = limits.admit("db", "app", 3, 2).unwrap();
        drop((b, c));
        assert_eq!(limits.database_clients("db"), 1);
        // No limits.
        let many: Vec<_> = (0..100).map(|_| limits.admit("x", "y", 0, 0).unwrap()).collect();
        assert_eq!(limits.database_clients("x"), 100);
        drop(many);
        assert_eq!(limits.database_clients("x"), 0);
        assert!(limits.databases.get("x").is_none(), "no empty entries left behind");
    }

    #[test]
    fn the_oldest_pending_login_is_pushed_out_when_the_cap_is_reached() {
        let pending = PendingLogins::default();
        let first = pending.enter(2);
        let second = pending.enter(2);
        assert!(!first.pushed_out.is_cancelled());
        let third = pending.enter(2);
        assert!(first.pushed_out.is_cancelled());
        assert!(!second.pushed_out.is_cancelled() && !third.pushed_out.is_cancelled());
        drop(first);
        assert_eq!(pending.len(), 2);
        drop((second, third));
        assert!(pending.is_empty());
        let unlimited: Vec<_> = (0..50).map(|_| pending.enter(0)).collect();
        assert!(unlimited.iter().all(|p| !p.pushed_out.is_cancelled()));
    }
}
