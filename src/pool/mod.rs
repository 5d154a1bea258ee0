//! A pool of connections that knows nothing about Postgres.
//!
//! A [`Pool`] is generic over a [`Connect`]or that opens connections and a [`Poolable`]
//! connection type that can say whether it is clean, probe itself for liveness, and reset itself.
//! Waiters are served in FIFO order (a fair semaphore holds one permit per allowed connection);
//! [`Pool::checkout`] returns a [`Checkout`] guard whose `Drop` puts a clean connection back,
//! resets a dirty one in the background (still counted against the pool size), or closes it.
//!
//! Invariant: connections held by guards plus idle connections never exceed the pool size.

mod guard;
mod settings;

pub use guard::Checkout;
pub use settings::PoolSettings;

use arc_swap::ArcSwap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Opens new connections for a pool.
pub trait Connect: Send + Sync + 'static {
    /// The connection type.
    type Conn: Poolable;
    /// Why a connection could not be opened.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Opens one connection.
    fn connect(&self) -> impl Future<Output = Result<Self::Conn, Self::Error>> + Send;
}

/// What the pool needs to know about a connection.
pub trait Poolable: Send + 'static {
    /// Whether the connection can be handed to the next user as it is.
    fn is_clean(&self) -> bool;
    /// A cheap check, without waiting, that the peer has not closed the connection or sent
    /// something unexpected while it sat idle.
    fn is_alive(&mut self) -> bool;
    /// Brings a dirty connection back to a clean state; `false` means it must be closed.
    fn reset(&mut self) -> impl Future<Output = bool> + Send;
    /// It is back in the idle list.
    fn checked_in(&mut self) {}
}

/// Errors from [`Pool::checkout`].
#[derive(Debug, thiserror::Error)]
pub enum PoolError<E: std::error::Error + 'static> {
    /// No connection became free within the wait timeout.
    #[error("no server connection became free within {0:?}")]
    WaitTimeout(Duration),
    /// Too many clients are already waiting.
    #[error("too many clients waiting for a server connection ({0})")]
    TooManyWaiting(usize),
    /// Opening a connection failed.
    #[error(transparent)]
    Connect(E),
    /// Opening a connection took longer than the connect timeout.
    #[error("connecting to the server timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// The pool is closed (its database was removed or sluice is shutting down).
    #[error("the pool is closed")]
    Closed,
}

pub(crate) struct Idle<T> {
    conn: T,
    created: Instant,
    idle_since: Instant,
}

/// Counters a pool keeps about itself.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Connections opened.
    pub connects: AtomicU64,
    /// Connections that failed to open.
    pub connect_errors: AtomicU64,
    /// Checkouts served.
    pub checkouts: AtomicU64,
    /// Total time spent waiting for a checkout, in microseconds.
    pub wait_micros: AtomicU64,
    /// Longest single wait, in microseconds.
    pub max_wait_micros: AtomicU64,
    /// Connections closed because they were broken, expired or could not be reset.
    pub closed: AtomicU64,
}

pub(crate) struct Inner<C: Connect> {
    connector: C,
    settings: ArcSwap<PoolSettings>,
    idle: Mutex<Vec<Idle<C::Conn>>>,
    permits: Arc<Semaphore>,
    /// The size the permits currently add up to.
    size: AtomicUsize,
    waiting: AtomicUsize,
    resetting: AtomicUsize,
    closed: AtomicBool,
    stats: PoolStats,
    /// Logins in flight, at most `max_logins` (fixed at creation).
    logins: Semaphore,
    /// When the next login may be tried, after failures in a row.
    backoff: Mutex<LoginBackoff>,
}

/// Failed logins in a row and when the next may be tried.
#[derive(Debug, Default)]
struct LoginBackoff {
    failures: u32,
    retry_at: Option<tokio::time::Instant>,
}

impl LoginBackoff {
    fn fail(&mut self, now: tokio::time::Instant) {
        self.failures = self.failures.saturating_add(1);
        let wait = settings::LOGIN_BACKOFF_START
            .saturating_mul(1 << (self.failures - 1).min(16))
            .min(settings::LOGIN_BACKOFF_MAX);
        self.retry_at = Some(now + wait);
    }

    fn succeed(&mut self) {
        *self = LoginBackoff::default();
    }
}

/// A pool of connections; cheap to clone.
pub struct Pool<C: Connect> {
    inner: Arc<Inner<C>>,
}

impl<C: Connect> Clone for Pool<C> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

/// A snapshot of a pool's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolState {
    /// The configured size.
    pub size: usize,
    /// Connections handed out (or being opened or reset).
    pub active: usize,
    /// Connections sitting idle.
    pub idle: usize,
    /// Clients waiting for a connection.
    pub waiting: usize,
}

impl<C: Connect> Pool<C> {
    /// A new, empty pool.
    pub fn new(connector: C, settings: PoolSettings) -> Self {
        let size = settings.size;
        let settings_max_logins = settings.max_logins.max(1);
        Self {
            inner: Arc::new(Inner {
                connector,
                settings: ArcSwap::from_pointee(settings),
                idle: Mutex::new(Vec::new()),
                permits: Arc::new(Semaphore::new(size)),
                size: AtomicUsize::new(size),
                waiting: AtomicUsize::new(0),
                resetting: AtomicUsize::new(0),
                closed: AtomicBool::new(false),
                stats: PoolStats::default(),
                logins: Semaphore::new(settings_max_logins),
                backoff: Mutex::new(LoginBackoff::default()),
            }),
        }
    }

    /// The connector.
    pub fn connector(&self) -> &C {
        &self.inner.connector
    }

    /// The current settings.
    pub fn settings(&self) -> Arc<PoolSettings> {
        self.inner.settings.load_full()
    }

    /// Counters.
    pub fn stats(&self) -> &PoolStats {
        &self.inner.stats
    }

    /// A snapshot of sizes and queue length.
    pub fn state(&self) -> PoolState {
        let size = self.inner.size.load(Ordering::Relaxed);
        let idle = self.inner.lock_idle().len();
        let free = self.inner.permits.available_permits();
        PoolState {
            size,
            active: size.saturating_sub(free),
            idle,
            waiting: self.inner.waiting.load(Ordering::Relaxed),
        }
    }

    /// Takes a connection: an idle one that passes its probe, or a new one.
    ///
    /// # Errors
    /// [`PoolError`]: the queue is full, the wait timed out, or a new connection failed.
    ///
    /// # Cancel safety
    /// Cancel safe: a cancelled checkout leaves the queue and holds nothing.
    pub async fn checkout(&self) -> Result<Checkout<C>, PoolError<C::Error>> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(PoolError::Closed);
        }
        let settings = inner.settings.load();
        let permit = match inner.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let waiting = inner.waiting.load(Ordering::Relaxed);
                if settings.max_waiting > 0 && waiting >= settings.max_waiting {
                    return Err(PoolError::TooManyWaiting(waiting));
                }
                let start = Instant::now();
                let _queued = WaitingGuard::enter(&inner.waiting);
                let acquire = inner.permits.clone().acquire_owned();
                let permit = match settings.wait_timeout {
                    Some(t) => tokio::time::timeout(t, acquire).await.map_err(|_| PoolError::WaitTimeout(t))?,
                    None => acquire.await,
                }
                .map_err(|_| PoolError::Closed)?;
                let waited = start.elapsed().as_micros() as u64;
                inner.stats.wait_micros.fetch_add(waited, Ordering::Relaxed);
                inner.stats.max_wait_micros.fetch_max(waited, Ordering::Relaxed);
                permit
            }
        };
        inner.stats.checkouts.fetch_add(1, Ordering::Relaxed);
        while let Some(mut idle) = inner.pop_idle() {
            if settings.expired(idle.created, idle.idle_since) || !idle.conn.is_alive() {
                inner.stats.closed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            return Ok(Checkout::new(idle.conn, idle.created, permit, inner.clone()));
        }
        let conn = inner.open(&settings).await?;
        Ok(Checkout::new(conn, Instant::now(), permit, inner.clone()))
    }

    /// Replaces the settings; a new size takes effect as connections come back.
    pub fn reconfigure(&self, settings: PoolSettings) {
        let new = settings.size;
        self.inner.settings.store(Arc::new(settings));
        let old = self.inner.size.swap(new, Ordering::AcqRel);
        if new > old {
            self.inner.permits.add_permits(new - old);
        } else if new < old {
            let permits = self.inner.permits.clone();
            let shrink = (old - new) as u32;
            tokio::spawn(async move {
                if let Ok(p) = permits.acquire_many_owned(shrink).await {
                    p.forget();
                }
            });
        }
    }

    /// Closes idle connections past their idle timeout or lifetime, then opens connections up
    /// to `min_size`. Call it periodically.
    pub async fn maintain(&self) {
        let inner = &self.inner;
        let settings = inner.settings.load_full();
        let expired: Vec<Idle<C::Conn>> = {
            let mut idle = inner.lock_idle();
            let (keep, drop): (Vec<_>, Vec<_>) =
                idle.drain(..).partition(|i| !settings.expired(i.created, i.idle_since));
            *idle = keep;
            drop
        };
        inner.stats.closed.fetch_add(expired.len() as u64, Ordering::Relaxed);
        drop(expired);
        while !inner.closed.load(Ordering::Acquire) {
            let st = self.state();
            if st.idle + st.active >= settings.min_size || st.waiting > 0 {
                break;
            }
            let Ok(permit) = inner.permits.clone().try_acquire_owned() else { break };
            match inner.open(&settings).await {
                Ok(conn) => drop(Checkout::new(conn, Instant::now(), permit, inner.clone())),
                Err(_) => break,
            }
        }
    }

    /// Closes the idle connections (checked-out ones come back as usual); returns how many.
    pub fn close_idle(&self) -> usize {
        let idle = std::mem::take(&mut *self.inner.lock_idle());
        self.inner.stats.closed.fetch_add(idle.len() as u64, Ordering::Relaxed);
        idle.len()
    }

    /// Closes the pool: idle connections are dropped, waiters and later checkouts fail.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.permits.close();
        self.inner.logins.close();
        self.inner.lock_idle().clear();
    }

    /// Connections being reset in the background.
    pub fn resetting(&self) -> usize {
        self.inner.resetting.load(Ordering::Relaxed)
    }
}

impl<C: Connect> Inner<C> {
    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle<C::Conn>>> {
        // A panic while holding this lock cannot leave the Vec inconsistent; keep going.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pop_idle(&self) -> Option<Idle<C::Conn>> {
        // LIFO: the most recently used connection is warmest, and the rest can age out.
        self.lock_idle().pop()
    }

    /// Opens a connection: at most `max_logins` at once, and after failed logins not before
    /// the backoff has passed (so a server refusing connections, full or recovering, is not
    /// hammered by every waiting client).
    async fn open(&self, settings: &PoolSettings) -> Result<C::Conn, PoolError<C::Error>> {
        let _login = self.logins.acquire().await.map_err(|_| PoolError::Closed)?;
        let retry_at = self.lock_backoff().retry_at;
        if let Some(at) = retry_at {
            tokio::time::sleep_until(at).await;
        }
        let t = settings.connect_timeout;
        let result = match tokio::time::timeout(t, self.connector.connect()).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(PoolError::Connect(e)),
            Err(_) => Err(PoolError::ConnectTimeout(t)),
        };
        let mut backoff = self.lock_backoff();
        match &result {
            Ok(_) => {
                backoff.succeed();
                self.stats.connects.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                backoff.fail(tokio::time::Instant::now());
                self.stats.connect_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    fn lock_backoff(&self) -> std::sync::MutexGuard<'_, LoginBackoff> {
        self.backoff.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn checkin(&self, mut conn: C::Conn, created: Instant) {
        conn.checked_in();
        let settings = self.settings.load();
        let now = Instant::now();
        if self.closed.load(Ordering::Acquire) || settings.expired_at(now, created, now) {
            self.stats.closed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.lock_idle().push(Idle { conn, created, idle_since: now });
    }
}

struct WaitingGuard<'a>(&'a AtomicUsize);

impl<'a> WaitingGuard<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
