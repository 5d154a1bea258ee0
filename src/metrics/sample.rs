//! Copies sluice's state into the Prometheus registry just before each scrape: pool sizes and
//! queues, replica lag, the cache's counters, and the per-database counters sessions keep.
//! Nothing here runs on a session's path.

use super::cache::cache_report;
use super::names;
use super::record::Route;
use crate::app::Shared;
use metrics::{Key, Label, Recorder};
use metrics_exporter_prometheus::PrometheusRecorder;
use std::collections::BTreeMap;

/// One pool group's numbers, summed over its servers.
#[derive(Default)]
struct Group {
    active: usize,
    waiting: usize,
    idle: usize,
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    Key::from_parts(name, labels.iter().map(|(k, v)| Label::new(*k, v.to_string())).collect::<Vec<_>>())
}

fn gauge(rec: &PrometheusRecorder, name: &'static str, labels: &[(&'static str, &str)], value: f64) {
    rec.register_gauge(&key(name, labels), &super::METADATA).set(value);
}

fn counter(rec: &PrometheusRecorder, name: &'static str, labels: &[(&'static str, &str)], value: u64) {
    rec.register_counter(&key(name, labels), &super::METADATA).absolute(value);
}

/// Brings every sampled metric up to date.
pub(super) fn sample(ctx: &Shared, rec: &PrometheusRecorder) {
    pools(ctx, rec);
    replicas(ctx, rec);
    counters(ctx, rec);
    cache(ctx, rec);
}

/// `sluice_clients` and `sluice_servers`.
fn pools(ctx: &Shared, rec: &PrometheusRecorder) {
    let config = ctx.config.load();
    let mut servers: BTreeMap<(String, String, &'static str), Group> = BTreeMap::new();
    let mut clients: BTreeMap<(String, String), Group> = BTreeMap::new();
    for (k, pool) in ctx.pools.all() {
        let s = pool.state();
        let primary = config.databases.get(&k.database).is_none_or(|d| d.primary == k.server);
        let role = if primary { "primary" } else { "replica" };
        let g = servers.entry((k.database.clone(), k.user.clone(), role)).or_default();
        g.active += s.active;
        g.idle += s.idle;
        let c = clients.entry((k.database, k.user)).or_default();
        c.active += s.active;
        c.waiting += s.waiting;
    }
    for ((db, user), connected) in ctx.metrics.connected() {
        let c = clients.entry((db, user)).or_default();
        c.idle = connected.saturating_sub(c.active + c.waiting);
    }
    for ((db, user, role), g) in &servers {
        for (state, n) in [("active", g.active), ("idle", g.idle)] {
            let labels = [("database", db.as_str()), ("user", user.as_str()), ("role", *role), ("state", state)];
            gauge(rec, names::SERVERS, &labels, n as f64);
        }
    }
    for ((db, user), c) in &clients {
        for (state, n) in [("active", c.active), ("waiting", c.waiting), ("idle", c.idle)] {
            gauge(
                rec,
                names::CLIENTS,
                &[("database", db.as_str()), ("user", user.as_str()), ("state", state)],
                n as f64,
            );
        }
    }
}

/// `sluice_replica_lag_*`; a server that is a replica of several databases shows its largest lag.
fn replicas(ctx: &Shared, rec: &PrometheusRecorder) {
    let table = ctx.routing.load();
    let mut lag: BTreeMap<&str, (u64, f64)> = BTreeMap::new();
    for db in table.databases.values() {
        for r in db.set.replicas() {
            let l = r.lag();
            let e = lag.entry(r.address()).or_insert((0, 0.0));
            *e = (e.0.max(l.bytes), e.1.max(l.seconds));
        }
    }
    for (replica, (bytes, seconds)) in lag {
        gauge(rec, names::REPLICA_LAG_BYTES, &[("replica", replica)], bytes as f64);
        gauge(rec, names::REPLICA_LAG_SECONDS, &[("replica", replica)], seconds);
    }
}

/// `sluice_transactions_total`, `sluice_queries_total`, `sluice_errors_total`.
fn counters(ctx: &Shared, rec: &PrometheusRecorder) {
    // Configured databases show zeros before their first client.
    for name in ctx.config.load().databases.keys() {
        ctx.metrics.database(name);
    }
    for (db, c) in ctx.metrics.databases() {
        for route in Route::ALL {
            let labels = [("database", db.as_str()), ("route", route.as_str())];
            counter(rec, names::TRANSACTIONS, &labels, c.transactions(route));
            counter(rec, names::QUERIES, &labels, c.queries(route));
        }
    }
    for (kind, n) in ctx.metrics.errors() {
        counter(rec, names::ERRORS, &[("kind", kind.as_str())], n);
    }
}

/// `sluice_cache_*`.
fn cache(ctx: &Shared, rec: &PrometheusRecorder) {
    let s = cache_report(ctx).stats();
    counter(rec, names::CACHE_HITS, &[], s.hits);
    counter(rec, names::CACHE_MISSES, &[], s.misses);
    counter(rec, names::CACHE_INVALIDATIONS, &[], s.invalidations);
    gauge(rec, names::CACHE_BYTES, &[], s.bytes as f64);
    if let Some(b) = s.backend {
        gauge(rec, names::CACHE_BACKEND_UP, &[], if b.up { 1.0 } else { 0.0 });
        counter(rec, names::ERRORS, &[("kind", "cache_backend")], b.errors);
    }
}
