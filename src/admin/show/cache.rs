//! SHOW CACHE: one row of the result cache's counters (zeros until the cache exists; see
//! [`crate::metrics::cache`]).

use super::Show;
use crate::admin::result::{float, int, Column, Row};
use crate::admin::AdminError;
use crate::app::Shared;
use crate::metrics::cache_report;

/// SHOW CACHE
pub struct Cache;

impl Show for Cache {
    const COLUMNS: &'static [Column] =
        &[int("entries"), int("bytes"), int("hits"), int("misses"), float("hit_ratio"), int("invalidations")];

    fn rows(ctx: &Shared) -> Result<Vec<Row>, AdminError> {
        let s = cache_report(ctx).stats();
        Ok(vec![Row::new()
            .num(s.entries)
            .num(s.bytes)
            .num(s.hits)
            .num(s.misses)
            .num(format!("{:.4}", s.hit_ratio()))
            .num(s.invalidations)])
    }
}
