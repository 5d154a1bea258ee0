//! Session settings a client changes with SET and RESET in simple-protocol queries, so that
//! they follow the client to whatever server connection it lands on in transaction mode. Pure:
//! a small parser for queries made only of SET / RESET statements, and a tracker that decides,
//! from the server's responses, which of them took effect (not a failed one, not one rolled back
//! with its transaction, never SET LOCAL).

use super::params::ParamSet;
use std::collections::VecDeque;

/// One statement that changes a session setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingChange {
    /// `SET name TO value` (value kept as SQL text).
    Set {
        /// Lowercased setting name.
        name: String,
        /// The value as written, SQL syntax.
        value: String,
    },
    /// `RESET name` or `SET name TO DEFAULT`.
    Reset {
        /// Lowercased setting name.
        name: String,
    },
    /// `RESET ALL`.
    ResetAll,
    /// `DISCARD ALL`: settings back to the session defaults and every prepared statement gone.
    DiscardAll,
    /// `DEALLOCATE ALL`.
    DeallocateAll,
    /// `DEALLOCATE name` (after rewriting: the server-side name).
    Deallocate {
        /// The statement name.
        name: String,
    },
    /// `SET LOCAL`: it ends with its transaction, so there is nothing to carry.
    Local,
}

/// Splits SQL into statements on semicolons outside quotes and comments; `None` for text it
/// does not fully understand (dollar quoting, unterminated quotes).
fn statements(sql: &str) -> Option<Vec<&str>> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < b.len() {
        match b[i] {
            b'\'' | b'"' => {
                let q = b[i];
                i += 1;
                loop {
                    if i >= b.len() {
                        return None;
                    }
                    if b[i] == q {
                        if i + 1 < b.len() && b[i + 1] == q {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
            }
            b'$' => return None,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let end = sql[i + 2..].find("*/")?;
                i += end + 3;
            }
            b';' => {
                out.push(&sql[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(&sql[start..]);
    Some(out.into_iter().map(strip).filter(|s| !s.is_empty()).collect())
}

/// Trims whitespace and leading comments.
fn strip(mut s: &str) -> &str {
    loop {
        s = s.trim();
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(rest) = s.strip_prefix("/*") {
            s = rest.split_once("*/").map_or("", |(_, r)| r);
        } else {
            return s;
        }
    }
}

fn keyword<'a>(s: &'a str, kw: &str) -> Option<&'a str> {
    let head = s.get(..kw.len())?;
    let rest = &s[kw.len()..];
    (head.eq_ignore_ascii_case(kw) && rest.chars().next().is_none_or(|c| c.is_whitespace()))
        .then(|| rest.trim_start())
}

fn setting_name(s: &str) -> Option<(String, &str)> {
    let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.')).unwrap_or(s.len());
    let name = &s[..end];
    (super::params::valid_name(name)).then(|| (name.to_ascii_lowercase(), s[end..].trim_start()))
}

/// Reads one statement; `None` for anything that is not a SET or RESET sluice understands.
fn change(stmt: &str) -> Option<SettingChange> {
    if let Some(rest) = keyword(stmt, "DISCARD") {
        return keyword(rest, "ALL").is_some_and(str::is_empty).then_some(SettingChange::DiscardAll);
    }
    if let Some(mut rest) = keyword(stmt, "DEALLOCATE") {
        if let Some(r) = keyword(rest, "PREPARE") {
            rest = r;
        }
        if keyword(rest, "ALL").is_some_and(str::is_empty) {
            return Some(SettingChange::DeallocateAll);
        }
        let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$')).unwrap_or(rest.len());
        return (end > 0 && rest[end..].trim().is_empty())
            .then(|| SettingChange::Deallocate { name: rest[..end].to_owned() });
    }
    if let Some(rest) = keyword(stmt, "RESET") {
        if keyword(rest, "ALL").is_some_and(str::is_empty) {
            return Some(SettingChange::ResetAll);
        }
        let (name, tail) = setting_name(rest)?;
        return tail.is_empty().then_some(SettingChange::Reset { name });
    }
    let mut rest = keyword(stmt, "SET")?;
    if keyword(rest, "LOCAL").is_some() {
        return Some(SettingChange::Local);
    }
    if let Some(r) = keyword(rest, "SESSION") {
        if keyword(r, "AUTHORIZATION").is_some() || keyword(r, "CHARACTERISTICS").is_some() {
            return None;
        }
        rest = r;
    }
    if keyword(rest, "TRANSACTION").is_some() || keyword(rest, "ROLE").is_some() || keyword(rest, "CONSTRAINTS").is_some() {
        return None;
    }
    let (name, value) = if let Some(v) = keyword(rest, "TIME").and_then(|r| keyword(r, "ZONE")) {
        ("timezone".to_owned(), v)
    } else {
        let (name, tail) = setting_name(rest)?;
        let value = keyword(tail, "TO").or_else(|| tail.strip_prefix('='))?;
        (name, value.trim())
    };
    if value.is_empty() {
        return None;
    }
    if value.eq_ignore_ascii_case("DEFAULT") || value.eq_ignore_ascii_case("LOCAL") && name == "timezone" {
        return Some(SettingChange::Reset { name });
    }
    Some(SettingChange::Set { name, value: value.to_owned() })
}

/// What each statement of a simple query does, if it consists only of SET / RESET statements,
/// one entry per statement; `None` for any other query, or one that changes nothing (only SET
/// LOCAL).
pub fn parse_query(sql: &str) -> Option<Vec<SettingChange>> {
    let head = strip(sql);
    if ["SET", "RESET", "DISCARD", "DEALLOCATE"].iter().all(|k| keyword(head, k).is_none()) {
        return None;
    }
    let out = statements(sql)?.into_iter().map(change).collect::<Option<Vec<_>>>()?;
    out.iter().any(|c| *c != SettingChange::Local).then_some(out)
}

#[derive(Debug)]
struct Pending {
    /// The ReadyForQuery (by sequence number) that ends the query.
    ready_seq: u64,
    changes: Vec<SettingChange>,
    failed: bool,
}

/// Decides which tracked SET / RESET statements took effect.
#[derive(Debug, Default)]
pub struct SettingTracker {
    pending: VecDeque<Pending>,
    /// Changes made inside a still-open transaction block.
    in_block: Vec<SettingChange>,
    /// The block's last CommandComplete was COMMIT.
    committed: bool,
}

impl SettingTracker {
    /// Whether anything is waiting on server responses.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.in_block.is_empty()
    }

    /// A query of SET / RESET statements went to the server; its ReadyForQuery will be the
    /// `ready_seq`-th.
    pub fn query_sent(&mut self, ready_seq: u64, changes: Vec<SettingChange>) {
        self.pending.push_back(Pending { ready_seq, changes, failed: false });
    }

    /// Whether CommandComplete bodies are needed (to tell COMMIT from ROLLBACK).
    pub fn wants_command_tags(&self) -> bool {
        !self.in_block.is_empty()
    }

    /// An ErrorResponse arrived before the `ready_seq`-th ReadyForQuery.
    pub fn error(&mut self, ready_seq: u64) {
        if let Some(p) = self.pending.iter_mut().find(|p| p.ready_seq == ready_seq) {
            p.failed = true;
        }
    }

    /// A CommandComplete arrived (its tag text).
    pub fn command_complete(&mut self, tag: &[u8]) {
        self.committed = tag.starts_with(b"COMMIT");
    }

    /// The `ready_seq`-th ReadyForQuery arrived with `status` ('I', 'T', 'E'); returns the changes
    /// that now hold for the session.
    pub fn ready(&mut self, ready_seq: u64, status: u8) -> Vec<SettingChange> {
        let mut done = Vec::new();
        while self.pending.front().is_some_and(|p| p.ready_seq <= ready_seq) {
            if let Some(p) = self.pending.pop_front() {
                if !p.failed && p.ready_seq == ready_seq {
                    match status {
                        b'I' => done.extend(p.changes),
                        b'T' => self.in_block.extend(p.changes),
                        _ => {}
                    }
                }
            }
        }
        if status == b'I' && !self.in_block.is_empty() {
            let block = std::mem::take(&mut self.in_block);
            if self.committed {
                done.extend(block);
            }
        } else if status == b'E' {
            self.in_block.clear();
        }
        done
    }
}

/// A simple query as sluice sends it in place of the client's.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rewritten {
    /// The query text.
    pub sql: String,
    /// What each of its statements does, in order.
    pub changes: Vec<SettingChange>,
    /// Per statement: sluice added it, and its CommandComplete is not the client's.
    pub internal: Vec<bool>,
}

impl Rewritten {
    fn push(&mut self, stmt: &str, change: SettingChange, internal: bool) {
        self.sql.push_str(stmt);
        if stmt.contains("--") {
            // A comment running to the end of the statement must not swallow the semicolon.
            self.sql.push('\n');
        }
        self.sql.push(';');
        self.changes.push(change);
        self.internal.push(internal);
    }

    fn set_startup(&mut self, name: &str, value: &str) {
        let mut literal = String::new();
        super::params::push_literal(&mut literal, value);
        let stmt = format!("SET {name} TO {literal}");
        self.push(&stmt, SettingChange::Set { name: name.to_ascii_lowercase(), value: literal }, true);
    }
}

/// A RESET returns a setting to the value the session started with, which for a client of
/// sluice includes its startup parameters, unknown to the server connection it runs on. When
/// `changes` (those of `sql`, as [`parse_query`] gave them) reset something the client set at
/// startup, returns the query to send instead: the client's statements as written, each RESET
/// followed by statements of sluice's own that set the startup values again.
/// With `force`, the query is rendered even when no RESET needs it (a DEALLOCATE was renamed).
pub fn rewrite_resets(sql: &str, changes: &[SettingChange], startup: &ParamSet, force: bool) -> Option<Rewritten> {
    let affected = changes.iter().any(|c| match c {
        SettingChange::Reset { name } => startup.get(name).is_some(),
        SettingChange::ResetAll => !startup.is_empty(),
        _ => false,
    });
    if !affected && !force {
        return None;
    }
    let stmts = statements(sql)?;
    if stmts.len() != changes.len() {
        return None;
    }
    let mut out = Rewritten::default();
    for (stmt, c) in stmts.into_iter().zip(changes) {
        match c {
            SettingChange::Deallocate { name } if change(stmt).as_ref() != Some(c) => {
                out.push(&format!("DEALLOCATE {name}"), c.clone(), false);
            }
            _ => out.push(stmt, c.clone(), false),
        }
        match c {
            SettingChange::Reset { name } => {
                if let Some(v) = startup.get(name) {
                    out.set_startup(name, v);
                }
            }
            SettingChange::ResetAll => {
                for (k, v) in startup.iter() {
                    out.set_startup(k, v);
                }
            }
            _ => {}
        }
    }
    Some(out)
}

/// What the server's statements and the client's need after changes took effect.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StatementEffects {
    /// Every prepared statement on the server connection is gone (and the client's too).
    pub forget_all: bool,
    /// These server-side statements are gone.
    pub forget: Vec<String>,
}

/// Applies changes that took effect to the client's settings and to those of the server
/// connection they were made on. A RESET returns the client to its startup value, which the
/// server connection (started without the client's startup parameters) does not have.
pub fn apply(
    changes: Vec<SettingChange>,
    client: &mut ParamSet,
    server: &mut ParamSet,
    startup: &ParamSet,
) -> StatementEffects {
    let mut effects = StatementEffects::default();
    for change in changes {
        match change {
            // Reported settings arrive as ParameterStatus and are kept from there.
            SettingChange::Set { name, .. } | SettingChange::Reset { name } if ParamSet::is_tracked(&name) => {}
            SettingChange::Set { name, value } => {
                client.set_sql(&name, &value);
                server.set_sql(&name, &value);
            }
            SettingChange::Reset { name } => {
                server.remove(&name);
                match startup.get(&name) {
                    Some(v) => client.set(&name, v),
                    None => client.remove(&name),
                };
            }
            SettingChange::ResetAll => {
                server.retain_reported();
                client.retain_reported();
                for (k, v) in startup.iter().filter(|(k, _)| !ParamSet::is_tracked(k)) {
                    client.set(k, v);
                }
            }
            SettingChange::DiscardAll => {
                // The server is back at its defaults; the client at its startup values, which
                // the next checkout sets again.
                server.retain_reported();
                *client = startup.clone();
                effects.forget_all = true;
            }
            SettingChange::DeallocateAll => effects.forget_all = true,
            SettingChange::Deallocate { name } => effects.forget.push(name),
            SettingChange::Local => {}
        }
    }
    effects
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resets_of_startup_settings_are_followed_by_sets_of_the_startup_values() {
        let mut startup = ParamSet::default();
        startup.set("TimeZone", "Asia/Tokyo");
        let sql = "RESET timezone; set local work_mem = '1MB'; RESET work_mem";
        let changes = parse_query(sql).unwrap();
        let out = rewrite_resets(sql, &changes, &startup, false).unwrap();
        assert_eq!(out.sql, "RESET timezone;SET timezone TO E'Asia/Tokyo';set local work_mem = '1MB';RESET work_mem;");
        assert_eq!(out.internal, [false, true, false, false]);
        assert_eq!(parse_query(&out.sql).unwrap(), out.changes);
        assert!(rewrite_resets("RESET work_mem", &[SettingChange::Reset { name: "work_mem".into() }], &startup, false).is_none());
        let out = rewrite_resets("reset all -- all of it", &[SettingChange::ResetAll], &startup, false).unwrap();
        assert_eq!(out.sql, "reset all -- all of it\n;SET TimeZone TO E'Asia/Tokyo';");
        assert_eq!(out.internal, [false, true]);
        // SET ... TO DEFAULT keeps its own form (and so its command tag).
        let out = rewrite_resets("set timezone to default", &[SettingChange::Reset { name: "timezone".into() }], &startup, false).unwrap();
        assert_eq!(out.sql, "set timezone to default;SET timezone TO E'Asia/Tokyo';");
    }

    #[test]
    fn a_renamed_deallocate_is_rendered_with_the_server_name() {
        let changes = [SettingChange::Deallocate { name: "sluice_4".into() }, SettingChange::Local];
        let out = rewrite_resets("DEALLOCATE s1; SET LOCAL a = 1", &changes, &ParamSet::default(), true).unwrap();
        assert_eq!(out.sql, "DEALLOCATE sluice_4;SET LOCAL a = 1;");
        assert_eq!(out.internal, [false, false]);
    }

    #[test]
    fn reset_returns_the_client_to_its_startup_value() {
        let mut startup = ParamSet::default();
        startup.set("search_path", "s1");
        let (mut client, mut server) = (startup.clone(), ParamSet::default());
        server.set("search_path", "s1");
        apply(vec![set("search_path", "s2"), set("work_mem", "'8MB'")], &mut client, &mut server, &startup);
        assert_eq!(client.get("work_mem"), Some("'8MB'"));
        assert_eq!(server.diff_sql(&client), None);
        apply(vec![SettingChange::Reset { name: "search_path".into() }], &mut client, &mut server, &startup);
        assert_eq!(client.get("search_path"), Some("s1"));
        assert_eq!(server.get("search_path"), None);
        assert!(server.diff_sql(&client).is_some(), "the startup value is set again on the server");
        apply(vec![SettingChange::ResetAll], &mut client, &mut server, &startup);
        assert_eq!(client.get("work_mem"), None);
        assert_eq!(client.get("search_path"), Some("s1"));
    }

    fn set(name: &str, value: &str) -> SettingChange {
        SettingChange::Set { name: name.into(), value: value.into() }
    }

    #[test]
    fn set_and_reset_statements_parse() {
        assert_eq!(parse_query("SET search_path TO a, b"), Some(vec![set("search_path", "a, b")]));
        assert_eq!(parse_query("set statement_timeout = '5s';"), Some(vec![set("statement_timeout", "'5s'")]));
        assert_eq!(parse_query("SET SESSION myapp.tenant = 'x;y'"), Some(vec![set("myapp.tenant", "'x;y'")]));
        assert_eq!(parse_query("SET TIME ZONE 'UTC'"), Some(vec![set("timezone", "'UTC'")]));
        assert_eq!(parse_query("RESET search_path"), Some(vec![SettingChange::Reset { name: "search_path".into() }]));
        assert_eq!(parse_query("SET work_mem TO DEFAULT"), Some(vec![SettingChange::Reset { name: "work_mem".into() }]));
        assert_eq!(parse_query(" reset all ; "), Some(vec![SettingChange::ResetAll]));
        assert_eq!(
            parse_query("SET a.b = 1; SET c = 'two'"),
            Some(vec![set("a.b", "1"), set("c", "'two'")])
        );
        assert_eq!(parse_query("SET LOCAL a = 1; SET c = 2"), Some(vec![SettingChange::Local, set("c", "2")]));
        assert_eq!(parse_query("DISCARD ALL"), Some(vec![SettingChange::DiscardAll]));
        assert_eq!(parse_query("deallocate prepare all"), Some(vec![SettingChange::DeallocateAll]));
        assert_eq!(parse_query("DEALLOCATE s1"), Some(vec![SettingChange::Deallocate { name: "s1".into() }]));
        assert_eq!(parse_query("DISCARD TEMP"), None);
    }

    #[test]
    fn anything_else_is_not_tracked() {
        for q in [
            "SELECT 1",
            "SET LOCAL work_mem = '1MB'",
            "SET search_path TO a; SELECT 1",
            "SET ROLE admin",
            "SET SESSION AUTHORIZATION bob",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET x = $$weird$$",
            "SET x = 'unterminated",
            "SET x",
            "settle",
        ] {
            assert_eq!(parse_query(q), None, "{q}");
        }
    }

    #[test]
    fn an_autocommit_set_holds_at_its_ready_for_query() {
        let mut t = SettingTracker::default();
        t.query_sent(1, vec![set("a", "1")]);
        assert_eq!(t.ready(1, b'I'), vec![set("a", "1")]);
        assert!(t.is_idle());
    }

    #[test]
    fn a_failed_set_does_not_hold() {
        let mut t = SettingTracker::default();
        t.query_sent(1, vec![set("a", "1")]);
        t.error(1);
        assert!(t.ready(1, b'I').is_empty());
    }

    #[test]
    fn a_set_inside_a_transaction_holds_only_if_it_commits() {
        let mut t = SettingTracker::default();
        t.query_sent(2, vec![set("a", "1")]);
        assert!(t.ready(2, b'T').is_empty());
        assert!(t.wants_command_tags());
        t.command_complete(b"COMMIT\0");
        assert_eq!(t.ready(3, b'I'), vec![set("a", "1")]);

        t.query_sent(5, vec![set("b", "2")]);
        t.ready(5, b'T');
        t.command_complete(b"ROLLBACK\0");
        assert!(t.ready(6, b'I').is_empty());

        t.query_sent(8, vec![set("c", "3")]);
        t.ready(8, b'T');
        t.ready(9, b'E');
        t.command_complete(b"ROLLBACK\0");
        assert!(t.ready(10, b'I').is_empty());
        assert!(t.is_idle());
    }
}
