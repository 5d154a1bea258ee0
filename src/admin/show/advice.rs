//! SHOW ADVICE: per database, the pool size the last minute's statistics call for, and why
//! (see [`crate::metrics::advice`]). The server's CPU count is known when the primary runs on
//! this host (a loopback address); otherwise the advice says it is unknown.

use super::{host_port, Show};
use crate::admin::result::{int, text, Column, Row};
use crate::admin::AdminError;
use crate::app::Shared;
use crate::metrics::advice::advise;

/// SHOW ADVICE
pub struct Advice;

/// The CPUs of the server at `host`, when it is this machine.
fn server_cpus(host: &str) -> Option<usize> {
    let local = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    local.then(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

impl Show for Advice {
    const COLUMNS: &'static [Column] = &[
        text("database"),
        int("pool_size"),
        int("recommended_pool_size"),
        text("transactions_per_second"),
        text("server_ms_per_transaction"),
        text("busy_connections"),
        text("wait_ms_per_transaction"),
        int("max_waiting_clients"),
        int("window_seconds"),
        int("server_cpus"),
        text("reason"),
    ];

    fn rows(ctx: &Shared) -> Result<Vec<Row>, AdminError> {
        let config = ctx.config.load();
        Ok(config
            .databases
            .iter()
            .map(|(name, db)| {
                let now = ctx.sample(name);
                let (first, peak) = ctx.samples.oldest(name).unwrap_or((now, 0));
                let size = db.pool_size.unwrap_or(config.pool.size);
                let cpus = server_cpus(host_port(&db.primary).0);
                let a = advise(&first, &now, peak.max(now.waiting), size, cpus);
                Row::new()
                    .text(name.clone())
                    .num(size)
                    .num(a.recommended)
                    .text(format!("{:.1}", a.arrival_rate))
                    .text(format!("{:.3}", a.hold_ms))
                    .text(format!("{:.2}", a.busy))
                    .text(format!("{:.3}", a.wait_ms))
                    .num(peak.max(now.waiting))
                    .num(a.window_secs.round() as u64)
                    .opt(cpus.map(|c| c.to_string()))
                    .text(a.reason)
            })
            .collect())
    }
}
