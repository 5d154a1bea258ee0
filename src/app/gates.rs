//! PAUSE, RESUME and KILL: a gate per database that sessions pass before they take a server
//! connection, and a token per database that ends all of its sessions at once.
//!
//! The gate costs an atomic load per transaction while nothing is paused. Waiting sessions
//! hold no server connection and see no error: RESUME lets them through.

use dashmap::DashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The gates of every database, plus one for all of them.
#[derive(Debug)]
pub struct DatabaseGates {
    /// Some gate is closed: sessions must look.
    any_closed: AtomicBool,
    /// PAUSE without a database.
    all: watch::Sender<bool>,
    databases: DashMap<String, Arc<Gate>>,
}

/// One database's gate.
#[derive(Debug)]
struct Gate {
    closed: watch::Sender<bool>,
    /// Cancelled by KILL; replaced by a fresh one for the sessions that come after.
    kill: Mutex<CancellationToken>,
}

impl Default for DatabaseGates {
    fn default() -> Self {
        Self { any_closed: AtomicBool::new(false), all: watch::Sender::new(false), databases: DashMap::new() }
    }
}

impl DatabaseGates {
    fn gate(&self, database: &str) -> Arc<Gate> {
        if let Some(g) = self.databases.get(database) {
            return g.clone();
        }
        self.databases
            .entry(database.to_owned())
            .or_insert_with(|| {
                Arc::new(Gate { closed: watch::Sender::new(false), kill: Mutex::new(CancellationToken::new()) })
            })
            .clone()
    }

    /// The token a new session of `database` ends on when the database is killed.
    pub fn kill_token(&self, database: &str) -> CancellationToken {
        self.gate(database).kill.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Closes the gate of `database`, or of all databases.
    pub fn pause(&self, database: Option<&str>) {
        match database {
            Some(db) => {
                self.gate(db).closed.send_replace(true);
            }
            None => {
                self.all.send_replace(true);
            }
        }
        self.any_closed.store(true, Ordering::Release);
    }

    /// Opens the gate of `database`, or every gate; returns whether it was closed.
    pub fn resume(&self, database: Option<&str>) -> bool {
        let was = match database {
            Some(db) => self.gate(db).closed.send_replace(false) || *self.all.borrow(),
            None => {
                let mut was = self.all.send_replace(false);
                for g in self.databases.iter() {
                    was |= g.closed.send_replace(false);
                }
                was
            }
        };
        let still = *self.all.borrow() || self.databases.iter().any(|g| *g.closed.borrow());
        self.any_closed.store(still, Ordering::Release);
        was
    }

    /// Whether `database` (or every database) is paused.
    pub fn is_paused(&self, database: &str) -> bool {
        *self.all.borrow() || self.databases.get(database).is_some_and(|g| *g.closed.borrow())
    }

    /// Pauses `database` and ends every session of it.
    pub fn kill(&self, database: &str) {
        self.pause(Some(database));
        let gate = self.gate(database);
        let old = std::mem::take(&mut *gate.kill.lock().unwrap_or_else(|e| e.into_inner()));
        old.cancel();
    }

    /// Returns once `database` may take server connections.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn wait_open(&self, database: &str) {
        if !self.any_closed.load(Ordering::Acquire) {
            return;
        }
        let mut all = self.all.subscribe();
        let mut mine = self.gate(database).closed.subscribe();
        loop {
            if !*all.borrow_and_update() && !*mine.borrow_and_update() {
                return;
            }
            tokio::select! {
                r = all.changed() => if r.is_err() { return },
                r = mine.changed() => if r.is_err() { return },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn an_open_gate_lets_sessions_through_at_once() {
        let gates = DatabaseGates::default();
        gates.wait_open("app").await;
        gates.pause(Some("other"));
        gates.wait_open("app").await;
        assert!(!gates.is_paused("app") && gates.is_paused("other"));
    }

    #[tokio::test]
    async fn a_paused_database_holds_sessions_until_resumed() {
        let gates = Arc::new(DatabaseGates::default());
        gates.pause(Some("app"));
        let waiting = tokio::spawn({
            let gates = gates.clone();
            async move { gates.wait_open("app").await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert!(gates.resume(Some("app")));
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("resumed").expect("no panic");
        assert!(!gates.resume(Some("app")), "not paused any more");
    }

    #[tokio::test]
    async fn pause_without_a_database_holds_every_database() {
        let gates = Arc::new(DatabaseGates::default());
        gates.pause(None);
        assert!(gates.is_paused("a") && gates.is_paused("b"));
        let waiting = tokio::spawn({
            let gates = gates.clone();
            async move { gates.wait_open("b").await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        gates.resume(None);
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("resumed").expect("no panic");
    }

    #[test]
    fn kill_ends_current_sessions_and_pauses_the_database() {
        let gates = DatabaseGates::default();
        let before = gates.kill_token("app");
        let other = gates.kill_token("other");
        gates.kill("app");
        assert!(before.is_cancelled() && !other.is_cancelled());
        assert!(gates.is_paused("app"));
        assert!(!gates.kill_token("app").is_cancelled(), "sessions after the kill get a fresh token");
    }
}
