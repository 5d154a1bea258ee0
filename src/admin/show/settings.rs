//! SHOW CONFIG: every configuration key (see [`crate::admin::settings`]) with PgBouncer's
//! columns `key`, `value`, `default`, `changeable` (yes when SET or RELOAD changes it on a
//! running sluice).

use super::Show;
use crate::admin::result::{text, Column, Row};
use crate::admin::settings::all;
use crate::admin::AdminError;
use crate::app::Shared;

/// SHOW CONFIG
pub struct Config;

impl Show for Config {
    const COLUMNS: &'static [Column] = &[text("key"), text("value"), text("default"), text("changeable")];

    fn rows(ctx: &Shared) -> Result<Vec<Row>, AdminError> {
        let config = ctx.config.load();
        let defaults = crate::config::Config::default();
        Ok(all()
            .iter()
            .map(|s| {
                Row::new().text(s.key).text((s.get)(&config)).text((s.get)(&defaults)).text(if s.changeable() {
                    "yes"
                } else {
                    "no"
                })
            })
            .collect())
    }
}
