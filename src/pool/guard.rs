//! The checkout guard: it derefs to the connection and, on drop, returns it to the pool.

use super::{Connect, Inner, Poolable};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::OwnedSemaphorePermit;

/// A connection taken from a [`super::Pool`]. Dropping it checks the connection back in: clean
/// ones go to the idle list, dirty ones are reset in a background task that keeps the pool slot
/// until it is done, and ones that cannot be reset are closed.
pub struct Checkout<C: Connect> {
    conn: Option<C::Conn>,
    created: Instant,
    permit: Option<OwnedSemaphorePermit>,
    pool: Arc<Inner<C>>,
}

impl<C: Connect> Checkout<C> {
    pub(crate) fn new(conn: C::Conn, created: Instant, permit: OwnedSemaphorePermit, pool: Arc<Inner<C>>) -> Self {
        Self { conn: Some(conn), created, permit: Some(permit), pool }
    }

    /// Closes the connection instead of returning it (it is broken or in an unknown state).
    pub fn discard(mut self) {
        if self.conn.take().is_some() {
            self.pool.stats.closed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// When the connection was opened.
    pub fn created(&self) -> Instant {
        self.created
    }
}

impl<C: Connect> Deref for Checkout<C> {
    type Target = C::Conn;
    fn deref(&self) -> &C::Conn {
        // `conn` is only taken in discard() and drop(), which consume the guard.
        self.conn.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl<C: Connect> DerefMut for Checkout<C> {
    fn deref_mut(&mut self) -> &mut C::Conn {
        self.conn.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl<C: Connect> Drop for Checkout<C> {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else { return };
        let permit = self.permit.take();
        if conn.is_clean() {
            self.pool.checkin(conn, self.created);
            drop(permit);
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.pool.stats.closed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let pool = self.pool.clone();
        let created = self.created;
        pool.resetting.fetch_add(1, Ordering::Relaxed);
        rt.spawn(async move {
            let timeout = pool.settings.load().reset_timeout;
            let ok = matches!(tokio::time::timeout(timeout, conn.reset()).await, Ok(true));
            if ok && conn.is_clean() {
                pool.checkin(conn, created);
            } else {
                pool.stats.closed.fetch_add(1, Ordering::Relaxed);
                drop(conn);
            }
            pool.resetting.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}
