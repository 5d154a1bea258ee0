//! Prometheus metrics: what sessions count, and the scrape endpoint at `server.metrics_listen`.
//!
//! - [`record`]: the hot path. [`Metrics`] lives in [`Shared`]; a session takes its
//!   [`SessionMetrics`] once at login ([`Metrics::session`]) and counts each transaction and
//!   query with one atomic add, and each checkout wait into the `sluice_client_wait_seconds`
//!   histogram. No label is looked up per query.
//! - [`sample`]: at each scrape, pool sizes, replica lag, the cache's and the sessions' counters
//!   are copied into the Prometheus registry (gauges are sampled, not recorded).
//! - [`http`]: `GET /metrics`.
//! - [`cache`]: what the result cache reports (zeros until it exists).
//! - [`names`]: the metric names of `shared/interface.md`;
//! - [`advice`]: pool-size advice from samples of the counters (SHOW ADVICE).
//!
//! Each sluice has its own registry (no process-wide recorder), so several can run in one
//! process, as the tests do.

pub mod advice;
pub mod cache;
mod http;
pub mod names;
pub mod record;
mod sample;

pub use cache::{cache_report, CacheReport, CacheStats, NoCache};
pub use record::{ClientTally, DatabaseCounters, ErrorKind, Metrics, Route, SessionMetrics};

use crate::app::Shared;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The metadata handed to the registry (the Prometheus exporter ignores it).
pub(crate) static METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// How often histograms are drained when nobody scrapes.
const UPKEEP: Duration = Duration::from_secs(5);

/// Errors starting the exporter.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address could not be bound.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The IO error.
        source: std::io::Error,
    },
    /// [`Shared::metrics`] was built with [`Metrics::new`], which keeps no registry.
    #[error("metrics are not exported: build Shared::metrics with Metrics::exported()")]
    NotExported,
}

/// The running exporter. Its tasks end when sluice shuts down or on [`MetricsHandle::stop`];
/// dropping the handle leaves them running.
#[derive(Debug)]
pub struct MetricsHandle {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl MetricsHandle {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving scrapes.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// Serves `GET /metrics` on `addr` from `ctx`'s registry until `ctx.shutdown`. Must run inside
/// a tokio runtime.
///
/// # Errors
/// [`MetricsError::Bind`] when the address cannot be bound; [`MetricsError::NotExported`] when
/// `ctx.metrics` keeps no registry.
pub fn install(addr: SocketAddr, ctx: Arc<Shared>) -> Result<MetricsHandle, MetricsError> {
    let handle = ctx.metrics.recorder().ok_or(MetricsError::NotExported)?.handle();
    let bind = |source| MetricsError::Bind { addr, source };
    let std_listener = std::net::TcpListener::bind(addr).map_err(bind)?;
    std_listener.set_nonblocking(true).map_err(bind)?;
    let listener = tokio::net::TcpListener::from_std(std_listener).map_err(bind)?;
    let local = listener.local_addr().map_err(bind)?;
    let stop = ctx.shutdown.child_token();
    tokio::spawn(http::serve(listener, ctx, stop.clone()));
    let upkeep_stop = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => handle.run_upkeep(),
                _ = upkeep_stop.cancelled() => return,
            }
        }
    });
    tracing::info!(addr = %local, "metrics listening");
    Ok(MetricsHandle { addr: local, stop })
}
