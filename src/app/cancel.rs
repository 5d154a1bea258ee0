//! Cancel keys. Each client gets sluice's own BackendKeyData; while one of its queries runs,
//! its slot names the server connection and that server's key, so a CancelRequest reaches the
//! right backend and nothing else.

use crate::server::{send_cancel, BackendKey};
use dashmap::DashMap;
use rand::RngCore;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// Where a client's current query runs, if anywhere.
#[derive(Debug, Default)]
pub struct CancelSlot {
    target: Mutex<Option<(SocketAddr, BackendKey)>>,
}

impl CancelSlot {
    /// Sets or clears the server the client is on.
    pub fn set(&self, target: Option<(SocketAddr, BackendKey)>) {
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = target;
    }

    fn get(&self) -> Option<(SocketAddr, BackendKey)> {
        *self.target.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// All clients' cancel keys.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    slots: DashMap<(u32, u32), Arc<CancelSlot>>,
    next_pid: AtomicU32,
}

/// Removes a client's key when its session ends.
pub struct CancelRegistration {
    registry: Arc<CancelRegistry>,
    key: (u32, u32),
    /// The slot the session updates.
    pub slot: Arc<CancelSlot>,
}

impl Drop for CancelRegistration {
    fn drop(&mut self) {
        self.registry.slots.remove(&self.key);
    }
}

impl CancelRegistry {
    /// Issues a new key for a client.
    pub fn register(self: &Arc<Self>) -> (u32, u32, CancelRegistration) {
        let slot = Arc::new(CancelSlot::default());
        loop {
            let pid = self.next_pid.fetch_add(1, Ordering::Relaxed) % 0x7fff_fff0 + 1;
            let secret = rand::thread_rng().next_u32();
            if let dashmap::mapref::entry::Entry::Vacant(v) = self.slots.entry((pid, secret)) {
                v.insert(slot.clone());
                let reg = CancelRegistration { registry: self.clone(), key: (pid, secret), slot };
                return (pid, secret, reg);
            }
        }
    }

    /// Forwards a cancel to the server running the client's query, if any.
    pub async fn cancel(&self, pid: u32, secret: u32) {
        let target = self.slots.get(&(pid, secret)).and_then(|s| s.get());
        match target {
            Some((addr, key)) => {
                if let Err(e) = send_cancel(addr, key).await {
                    tracing::debug!(error = %e, "cancel could not be forwarded");
                }
            }
            None => tracing::debug!(pid, "cancel request for no running query"),
        }
    }

    /// Registered clients.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether none are registered.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}
