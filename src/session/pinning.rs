//! Features whose state lives in one server connection and cannot follow a client to another:
//! LISTEN, session-level advisory locks, cursors WITH HOLD, temporary tables, SQL PREPARE, and a
//! role or setting changed in ways sluice does not track (SET ROLE, SET SESSION AUTHORIZATION,
//! `set_config()`): left on a shared connection they would apply to the next client. In
//! transaction mode a client that uses one is pinned to its server connection for the rest of
//! its session (which then ends with DISCARD ALL), so it is never silently wrong. Pure and cheap:
//! a case-insensitive scan of the statement text, no allocation.

/// What pins a client, by the text that reveals it.
const PINNING: &[(&[u8], &str)] = &[
    (b"listen", "LISTEN"),
    (b"pg_advisory_lock", "session advisory locks"),
    (b"pg_try_advisory_lock", "session advisory locks"),
    (b"with hold", "cursors WITH HOLD"),
    (b"temp ", "temporary tables"),
    (b"temporary ", "temporary tables"),
    (b"prepare ", "PREPARE"),
    (b"set role", "SET ROLE"),
    (b"session authorization", "SET SESSION AUTHORIZATION"),
    (b"set_config", "set_config()"),
];

/// Whether every `set_config(` in `sql` sets, by a literal name, a setting that cannot change
/// what anyone's queries return (`jit`, `work_mem`, planner switches...): drivers such as
/// asyncpg turn `jit` off and on around their catalog queries, which must not pin them.
fn harmless_set_configs(sql: &[u8]) -> bool {
    let mut rest = sql;
    while let Some(at) = find_ci(rest, b"set_config") {
        rest = &rest[at + b"set_config".len()..];
        let args = rest.trim_ascii_start();
        let Some(args) = args.strip_prefix(b"(") else { continue };
        let args = args.trim_ascii_start();
        let Some(quoted) = args.strip_prefix(b"'") else { return false };
        let Some(end) = quoted.iter().position(|&b| b == b'\'') else { return false };
        let name = String::from_utf8_lossy(&quoted[..end]);
        if !crate::cache::key::is_ignored_setting(&name) {
            return false;
        }
    }
    true
}

fn find_ci(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w.iter().zip(needle).all(|(a, b)| a.to_ascii_lowercase() == *b))
}

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.len() >= needle.len()
        && hay.windows(needle.len()).any(|w| w.iter().zip(needle).all(|(a, b)| a.to_ascii_lowercase() == *b))
}

/// The feature a statement uses that ties the session to its server connection, if any. It errs
/// on the side of pinning (a word inside a string literal counts).
pub fn pinning_feature(sql: &[u8]) -> Option<&'static str> {
    PINNING.iter().find(|(pat, _)| contains_ci(sql, pat)).and_then(|(pat, feature)| {
        // "temp " and "prepare " only count as the statements that create such state.
        let creates = match *pat {
            b"temp " | b"temporary " => contains_ci(sql, b"create"),
            b"prepare " => sql.iter().position(|b| !b.is_ascii_whitespace()).is_some_and(|i| contains_ci(&sql[i..(i + 8).min(sql.len())], b"prepare ")),
            b"listen" => contains_ci(sql, b"listen ") || sql.trim_ascii().eq_ignore_ascii_case(b"listen"),
            b"set_config" => !harmless_set_configs(sql),
            _ => true,
        };
        creates.then_some(*feature)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_bound_features_are_recognized() {
        assert_eq!(pinning_feature(b"LISTEN jobs"), Some("LISTEN"));
        assert_eq!(pinning_feature(b"select pg_advisory_lock(1)"), Some("session advisory locks"));
        assert_eq!(pinning_feature(b"SELECT PG_TRY_ADVISORY_LOCK(1)"), Some("session advisory locks"));
        assert_eq!(pinning_feature(b"declare c cursor WITH HOLD for select 1"), Some("cursors WITH HOLD"));
        assert_eq!(pinning_feature(b"CREATE TEMP TABLE t (x int)"), Some("temporary tables"));
        assert_eq!(pinning_feature(b"create temporary table t as select 1"), Some("temporary tables"));
        assert_eq!(pinning_feature(b"  PREPARE q AS select 1"), Some("PREPARE"));
        assert_eq!(pinning_feature(b"SET ROLE bob"), Some("SET ROLE"));
        assert_eq!(pinning_feature(b"set session authorization bob"), Some("SET SESSION AUTHORIZATION"));
        assert_eq!(pinning_feature(b"SELECT set_config('app.tenant', '7', false)"), Some("set_config()"));
        assert_eq!(pinning_feature(b"select set_config($1, $2, false)"), Some("set_config()"));
        assert_eq!(
            pinning_feature(b"SELECT set_config('jit', 'off', false), set_config('role', 'bob', false)"),
            Some("set_config()")
        );
    }

    #[test]
    fn ordinary_statements_do_not_pin() {
        for q in [
            &b"SELECT abalance FROM pgbench_accounts WHERE aid = 1"[..],
            b"select pg_advisory_xact_lock(1)",
            b"SELECT current_setting('jit') AS cur, set_config('jit', 'off', false) AS new",
            b"SELECT set_config('jit', $1, false)",
            b"UPDATE t SET temperature = 1",
            b"insert into listeners values (1)",
            b"select 'prepare me'",
            b"",
        ] {
            assert_eq!(pinning_feature(q), None, "{}", String::from_utf8_lossy(q));
        }
    }
}
