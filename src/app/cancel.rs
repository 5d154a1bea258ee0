//! Cancel keys. Each client gets sluice's own BackendKeyData; while one of its queries runs,
//! its slot names the server connection and that server's key, so a CancelRequest reaches the
//! right backend. A session does not give its server connection back while a cancel for it is
//! still being delivered, so a late cancel cannot land on the next client's query there.

use crate::server::{send_cancel, BackendKey};
use dashmap::DashMap;
use rand::RngCore;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

#[derive(Debug, Default)]
struct SlotState {
    target: Option<(SocketAddr, BackendKey)>,
    /// Cancels being delivered to `target`.
    in_flight: u32,
}

/// Where a client's current query runs, if anywhere.
#[derive(Debug, Default)]
pub struct CancelSlot {
    state: Mutex<SlotState>,
    delivered: Notify,
}

impl CancelSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the server the client is on.
    pub fn set(&self, target: (SocketAddr, BackendKey)) {
        self.lock().target = Some(target);
    }

    /// Clears the server the client was on, after any cancel for it has been delivered.
    pub async fn clear(&self) {
        loop {
            let delivered = self.delivered.notified();
            tokio::pin!(delivered);
            delivered.as_mut().enable();
            {
                let mut st = self.lock();
                if st.in_flight == 0 {
                    st.target = None;
                    return;
                }
            }
            delivered.await;
        }
    }

    fn begin_cancel(&self) -> Option<(SocketAddr, BackendKey)> {
        let mut st = self.lock();
        let target = st.target?;
        st.in_flight += 1;
        Some(target)
    }

    fn end_cancel(&self) {
        let mut st = self.lock();
        st.in_flight = st.in_flight.saturating_sub(1);
        if st.in_flight == 0 {
            self.delivered.notify_waiters();
        }
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
        let Some(slot) = self.slots.get(&(pid, secret)).map(|s| s.clone()) else {
            tracing::debug!(pid, "cancel request with an unknown key");
            return;
        };
        match slot.begin_cancel() {
            Some((addr, key)) => {
                if let Err(e) = send_cancel(addr, key).await {
                    tracing::debug!(error = %e, "cancel could not be forwarded");
                }
                slot.end_cancel();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn the_server_is_not_given_back_while_a_cancel_for_it_is_in_flight() {
        let slot = Arc::new(CancelSlot::default());
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        slot.set((addr, BackendKey { pid: 1, secret: 2 }));
        assert!(slot.begin_cancel().is_some());
        let s2 = slot.clone();
        let clearing = tokio::spawn(async move { s2.clear().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!clearing.is_finished(), "clear must wait for the cancel");
        slot.end_cancel();
        tokio::time::timeout(Duration::from_secs(1), clearing).await.unwrap().unwrap();
        assert!(slot.begin_cancel().is_none(), "no target after clear");
    }

    #[tokio::test]
    async fn keys_are_unique_and_removed_with_the_session() {
        let reg = Arc::new(CancelRegistry::default());
        let (p1, s1, r1) = reg.register();
        let (p2, s2, _r2) = reg.register();
        assert_ne!((p1, s1), (p2, s2));
        assert_eq!(reg.len(), 2);
        drop(r1);
        assert_eq!(reg.len(), 1);
        reg.cancel(p1, s1).await; // unknown now: nothing happens
    }
}
