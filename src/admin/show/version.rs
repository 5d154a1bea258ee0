//! SHOW VERSION: one row, column `version`, as PgBouncer.

use super::Show;
use crate::admin::result::{text, Column, Row};
use crate::admin::AdminError;
use crate::app::Shared;

/// SHOW VERSION
pub struct Version;

impl Show for Version {
    const COLUMNS: &'static [Column] = &[text("version")];

    fn rows(_: &Shared) -> Result<Vec<Row>, AdminError> {
        Ok(vec![Row::new().text(concat!("sluice ", env!("CARGO_PKG_VERSION")))])
    }
}
