//! Session settings a client changes with SET and RESET, in simple queries (alone or mixed
//! with other statements) and in extended-protocol statements, so that they follow the client
//! to whatever server connection it lands on in transaction mode. Pure:
//! - [`read`]: what a request does to settings, read from its leading keywords;
//! - [`extended`]: which statement each Execute runs, from the Parse and Bind before it;
//! - [`SettingTracker`]: decides from the server's responses which changes took effect (not a
//!   failed one, not one rolled back with its transaction or to a savepoint before it, never
//!   SET LOCAL).

pub mod extended;
pub mod read;

pub use extended::ExtendedRequests;
pub use read::{read_query, read_statement, QuerySettings};

use super::params::ParamSet;
use read::{change, statements};
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
    /// `SAVEPOINT name`.
    Savepoint {
        /// The savepoint name (folded to lower case unless quoted).
        name: String,
    },
    /// `RELEASE [SAVEPOINT] name`.
    Release {
        /// The savepoint name.
        name: String,
    },
    /// `ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] name`.
    RollbackTo {
        /// The savepoint name.
        name: String,
    },
    /// `SET LOCAL`: it ends with its transaction, so there is nothing to carry.
    Local,
    /// `BEGIN` / `START TRANSACTION`.
    Begin,
    /// `COMMIT` / `END`: the open block's changes hold.
    Commit,
    /// `ROLLBACK` / `ABORT`, `PREPARE TRANSACTION`, or a commit or rollback `AND CHAIN`.
    Abort,
    /// A statement that changes no setting.
    Other,
    /// A SET, RESET or DEALLOCATE sluice cannot read.
    Unreadable,
}

impl SettingChange {
    /// Whether it changes what the session carries from server to server.
    pub fn changes_session(&self) -> bool {
        matches!(
            self,
            SettingChange::Set { .. }
                | SettingChange::Reset { .. }
                | SettingChange::ResetAll
                | SettingChange::DiscardAll
                | SettingChange::DeallocateAll
                | SettingChange::Deallocate { .. }
        )
    }

    /// Whether a request with it needs the tracker (settings, or savepoints that decide which
    /// settings hold).
    pub fn is_tracked(&self) -> bool {
        self.changes_session()
            || matches!(self, SettingChange::Savepoint { .. } | SettingChange::Release { .. } | SettingChange::RollbackTo { .. })
    }
}


/// A tracked query waiting for its ReadyForQuery.
#[derive(Debug)]
struct Pending {
    /// The ReadyForQuery (by sequence number) that ends the query.
    ready_seq: u64,
    /// What each statement of the query (as sent) does.
    changes: Vec<SettingChange>,
    /// Per statement: sluice added it (its CommandComplete never reaches the tracker).
    internal: Vec<bool>,
    /// Statements known to have completed.
    completed: usize,
    failed: bool,
}

impl Pending {
    /// A client statement completed, and with it the statements sluice added after it.
    fn complete_one(&mut self) {
        if self.completed < self.changes.len() {
            self.completed += 1;
            while self.internal.get(self.completed).copied().unwrap_or(false) {
                self.completed += 1;
            }
        }
    }
}

/// Where a savepoint level of a transaction block begins.
#[derive(Debug, PartialEq, Eq)]
enum Mark {
    /// The block itself.
    Begin,
    /// A savepoint sluice saw created.
    Savepoint(String),
    /// A savepoint created by a statement sluice does not parse (its name is unknown).
    Unseen,
}

/// The changes made at one savepoint level of the open transaction block.
#[derive(Debug)]
struct Level {
    mark: Mark,
    changes: Vec<SettingChange>,
}

/// Changes that now hold for the session.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Settled {
    /// In the order they were made.
    pub changes: Vec<SettingChange>,
    /// The transaction they were made in also undid work to a savepoint sluice could not
    /// follow: some of them may not hold after all.
    pub unsure: bool,
}

/// Decides which tracked SET / RESET statements took effect.
///
/// Inside a transaction block it keeps the changes per savepoint level: ROLLBACK TO drops the
/// ones made since the savepoint, RELEASE merges them into the level below, and only a COMMIT
/// makes them hold. A block that ends otherwise (ROLLBACK, a failed COMMIT) holds nothing.
#[derive(Debug, Default)]
pub struct SettingTracker {
    pending: VecDeque<Pending>,
    /// The open transaction block's levels, outermost first; empty when no block holds
    /// anything to track.
    levels: Vec<Level>,
    /// A ROLLBACK TO sluice could not place happened in the open block.
    unsure: bool,
    /// Changes that took effect, delivered at the next ReadyForQuery.
    done: Settled,
    /// The client's extended-protocol statements and portals that change settings.
    pub extended: ExtendedRequests,
}

impl SettingTracker {
    /// Whether anything is waiting on server responses.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.levels.is_empty() && self.done.changes.is_empty()
    }

    /// A query of SET / RESET statements went to the server; its ReadyForQuery will be the
    /// `ready_seq`-th. `changes` has one entry per statement as sent; `internal` (empty, or as
    /// long) marks the statements sluice added.
    pub fn query_sent(&mut self, ready_seq: u64, changes: Vec<SettingChange>, internal: Vec<bool>) {
        self.pending.push_back(Pending { ready_seq, changes, internal, completed: 0, failed: false });
    }

    /// An extended-protocol Execute that ends at the `ready_seq`-th ReadyForQuery ran a
    /// statement that does `change`, after `before` other Executes ending there. Returns why the
    /// client must be pinned when that cannot be followed.
    pub fn execute_sent(&mut self, ready_seq: u64, before: usize, change: SettingChange) -> Option<&'static str> {
        if change == SettingChange::Unreadable {
            return Some(read::UNREADABLE_SET);
        }
        if let Some(p) = self.pending.back_mut().filter(|p| p.ready_seq == ready_seq) {
            if matches!(change, SettingChange::Begin | SettingChange::Abort)
                && p.changes.iter().any(SettingChange::changes_session)
            {
                return Some(read::SET_WITH_TRANSACTION_CONTROL);
            }
            p.changes.push(change);
        } else if change.is_tracked() {
            let mut changes = vec![SettingChange::Other; before];
            changes.push(change);
            self.pending.push_back(Pending { ready_seq, changes, internal: Vec::new(), completed: 0, failed: false });
        }
        None
    }

    /// Whether CommandComplete bodies are needed (to tell COMMIT from ROLLBACK, and to see
    /// savepoints that sluice does not track).
    pub fn wants_command_tags(&self) -> bool {
        !self.levels.is_empty()
    }

    /// An ErrorResponse arrived before the `ready_seq`-th ReadyForQuery.
    pub fn error(&mut self, ready_seq: u64) {
        if let Some(p) = self.pending.iter_mut().find(|p| p.ready_seq == ready_seq) {
            p.failed = true;
        }
    }

    /// A CommandComplete arrived before the `ready_seq`-th ReadyForQuery (its tag text, or
    /// nothing when [`SettingTracker::wants_command_tags`] said no).
    pub fn command_complete(&mut self, ready_seq: u64, tag: &[u8]) {
        if let Some(p) = self.pending.iter_mut().find(|p| p.ready_seq == ready_seq) {
            p.complete_one();
            return;
        }
        if self.levels.is_empty() {
            return;
        }
        // A statement sluice does not track, inside a block that holds changes.
        if tag.starts_with(b"COMMIT") {
            // COMMIT (AND CHAIN): the block's changes hold. A failed block's COMMIT says ROLLBACK.
            for level in self.levels.drain(..) {
                self.done.changes.extend(level.changes);
            }
            self.done.unsure |= std::mem::take(&mut self.unsure);
        } else if tag.starts_with(b"SAVEPOINT") {
            self.levels.push(Level { mark: Mark::Unseen, changes: Vec::new() });
        } else if tag.starts_with(b"ROLLBACK") {
            // The whole block (the ReadyForQuery says Idle, and everything is dropped), or back
            // to some savepoint: which one is not known.
            self.unsure = true;
        }
    }

    /// The `ready_seq`-th ReadyForQuery arrived with `status` ('I', 'T', 'E'); returns the changes
    /// that now hold for the session.
    pub fn ready(&mut self, ready_seq: u64, status: u8) -> Settled {
        while self.pending.front().is_some_and(|p| p.ready_seq <= ready_seq) {
            let Some(p) = self.pending.pop_front() else { break };
            if p.ready_seq == ready_seq {
                self.settle(p, status != b'I');
            }
        }
        if status == b'I' && !self.levels.is_empty() {
            // The block ended without a COMMIT: rolled back.
            self.levels.clear();
            self.unsure = false;
        }
        std::mem::take(&mut self.done)
    }

    /// Accounts for the statements of a query that ran (inside a block when `in_block`).
    fn settle(&mut self, p: Pending, in_block: bool) {
        // After an error, only the statements before it ran; outside a block the implicit
        // transaction of the query undid them too, except what is not transactional, or what a
        // COMMIT in the same request made hold before the error.
        let ran = if p.failed { p.completed } else { p.changes.len() };
        let committed = p.changes[..ran].iter().rposition(|c| *c == SettingChange::Commit).map_or(0, |i| i + 1);
        for (i, c) in p.changes.into_iter().take(ran).enumerate() {
            match c {
                SettingChange::Deallocate { .. } | SettingChange::DeallocateAll => self.done.changes.push(c),
                SettingChange::Commit => {
                    for level in self.levels.drain(..) {
                        self.done.changes.extend(level.changes);
                    }
                    self.done.unsure |= std::mem::take(&mut self.unsure);
                }
                SettingChange::Abort => {
                    self.levels.clear();
                    self.unsure = false;
                }
                c if !c.is_tracked() => {}
                c if i < committed => self.in_block(c),
                _ if !in_block => {
                    if !p.failed {
                        self.done.changes.push(c);
                    }
                }
                c => self.in_block(c),
            }
        }
    }

    /// A statement that took effect inside the open block.
    fn in_block(&mut self, c: SettingChange) {
        if self.levels.is_empty() {
            self.levels.push(Level { mark: Mark::Begin, changes: Vec::new() });
        }
        match c {
            SettingChange::Savepoint { name } => {
                self.levels.push(Level { mark: Mark::Savepoint(name), changes: Vec::new() });
            }
            SettingChange::Release { name } => {
                // Not found: a savepoint sluice did not see; releasing undoes nothing either way.
                if let Some(i) = self.find(&name).filter(|&i| i > 0) {
                    let above = self.levels.split_off(i);
                    let below = &mut self.levels[i - 1].changes;
                    for level in above {
                        below.extend(level.changes);
                    }
                }
            }
            SettingChange::RollbackTo { name } => match self.find(&name) {
                Some(i) => {
                    self.levels.truncate(i + 1);
                    self.levels[i].changes.clear();
                }
                None => self.unsure = true,
            },
            c if c.changes_session() => {
                if let Some(level) = self.levels.last_mut() {
                    level.changes.push(c);
                }
            }
            _ => {}
        }
    }

    /// The level of the latest savepoint called `name`; a savepoint sluice did not see on the
    /// way may be the one meant, which makes the block unsure.
    fn find(&mut self, name: &str) -> Option<usize> {
        for (i, level) in self.levels.iter().enumerate().rev() {
            match &level.mark {
                Mark::Savepoint(n) if n == name => return Some(i),
                Mark::Unseen => self.unsure = true,
                _ => {}
            }
        }
        None
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
/// `changes` (those of `sql`, as [`read_query`] gave them) reset something the client set at
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
/// server connection (started without the client's startup parameters) does not have. When the
/// changes are unsure, the server's values of every setting either side has are marked unknown,
/// so that the next checkout sets them again whoever gets the connection.
pub fn apply(settled: Settled, client: &mut ParamSet, server: &mut ParamSet, startup: &ParamSet) -> StatementEffects {
    let mut effects = StatementEffects::default();
    let mut unknown: Vec<String> = Vec::new();
    if settled.unsure {
        unknown.extend(server.iter().map(|(k, _)| k.to_owned()));
    }
    for change in settled.changes {
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
                if settled.unsure {
                    unknown.push(name);
                }
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
            SettingChange::Savepoint { .. }
            | SettingChange::Release { .. }
            | SettingChange::RollbackTo { .. }
            | SettingChange::Local
            | SettingChange::Begin
            | SettingChange::Commit
            | SettingChange::Abort
            | SettingChange::Other
            | SettingChange::Unreadable => {}
        }
    }
    if settled.unsure {
        unknown.extend(client.iter().map(|(k, _)| k.to_owned()));
        for name in unknown.iter().filter(|k| !ParamSet::is_tracked(k)) {
            server.mark_unknown(name);
        }
    }
    effects
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The changes of a query sluice follows, `None` otherwise.
    fn parse_query(sql: &str) -> Option<Vec<SettingChange>> {
        match read_query(sql) {
            QuerySettings::Changes(c) => Some(c),
            _ => None,
        }
    }

    fn set(name: &str, value: &str) -> SettingChange {
        SettingChange::Set { name: name.into(), value: value.into() }
    }

    fn reset(name: &str) -> SettingChange {
        SettingChange::Reset { name: name.into() }
    }

    fn sure(changes: Vec<SettingChange>) -> Settled {
        Settled { changes, unsure: false }
    }

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
        assert!(rewrite_resets("RESET work_mem", &[reset("work_mem")], &startup, false).is_none());
        let out = rewrite_resets("reset all -- all of it", &[SettingChange::ResetAll], &startup, false).unwrap();
        assert_eq!(out.sql, "reset all -- all of it\n;SET TimeZone TO E'Asia/Tokyo';");
        assert_eq!(out.internal, [false, true]);
        // SET ... TO DEFAULT keeps its own form (and so its command tag).
        let out = rewrite_resets("set timezone to default", &[reset("timezone")], &startup, false).unwrap();
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
        apply(sure(vec![set("search_path", "s2"), set("work_mem", "'8MB'")]), &mut client, &mut server, &startup);
        assert_eq!(client.get("work_mem"), Some("'8MB'"));
        assert_eq!(server.diff_sql(&client), None);
        apply(sure(vec![reset("search_path")]), &mut client, &mut server, &startup);
        assert_eq!(client.get("search_path"), Some("s1"));
        assert_eq!(server.get("search_path"), None);
        assert!(server.diff_sql(&client).is_some(), "the startup value is set again on the server");
        apply(sure(vec![SettingChange::ResetAll]), &mut client, &mut server, &startup);
        assert_eq!(client.get("work_mem"), None);
        assert_eq!(client.get("search_path"), Some("s1"));
    }

    #[test]
    fn unsure_changes_leave_the_server_values_to_be_set_again() {
        let startup = ParamSet::default();
        let (mut client, mut server) = (ParamSet::default(), ParamSet::default());
        server.set_sql("statement_timeout", "'5s'");
        client.set_sql("statement_timeout", "'5s'");
        apply(Settled { changes: vec![set("work_mem", "'8MB'")], unsure: true }, &mut client, &mut server, &startup);
        assert_eq!(client.get("work_mem"), Some("'8MB'"));
        let sql = server.diff_sql(&client).unwrap();
        assert!(sql.contains("work_mem") && sql.contains("statement_timeout"), "{sql}");
        let sql = server.diff_sql(&ParamSet::default()).unwrap();
        assert_eq!(sql, "RESET statement_timeout;RESET work_mem;", "another client gets neither");
    }

    #[test]
    fn set_and_reset_statements_parse() {
        assert_eq!(parse_query("SET search_path TO a, b"), Some(vec![set("search_path", "a, b")]));
        assert_eq!(parse_query("set statement_timeout = '5s';"), Some(vec![set("statement_timeout", "'5s'")]));
        assert_eq!(parse_query("SET SESSION myapp.tenant = 'x;y'"), Some(vec![set("myapp.tenant", "'x;y'")]));
        assert_eq!(parse_query("SET TIME ZONE 'UTC'"), Some(vec![set("timezone", "'UTC'")]));
        assert_eq!(parse_query("RESET search_path"), Some(vec![reset("search_path")]));
        assert_eq!(parse_query("SET work_mem TO DEFAULT"), Some(vec![reset("work_mem")]));
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
    fn savepoint_statements_parse() {
        let sp = |name: &str| SettingChange::Savepoint { name: name.into() };
        let release = |name: &str| SettingChange::Release { name: name.into() };
        let back = |name: &str| SettingChange::RollbackTo { name: name.into() };
        assert_eq!(parse_query("SAVEPOINT Sp1"), Some(vec![sp("sp1")]));
        assert_eq!(parse_query("savepoint \"Sp \"\"1\""), Some(vec![sp("Sp \"1")]));
        assert_eq!(parse_query("RELEASE SAVEPOINT a"), Some(vec![release("a")]));
        assert_eq!(parse_query("release a"), Some(vec![release("a")]));
        assert_eq!(parse_query("release savepoint"), Some(vec![release("savepoint")]));
        assert_eq!(parse_query("ROLLBACK TO SAVEPOINT a"), Some(vec![back("a")]));
        assert_eq!(parse_query("rollback work to b"), Some(vec![back("b")]));
        assert_eq!(parse_query("ROLLBACK TRANSACTION TO SAVEPOINT c; SET x = 1"), Some(vec![back("c"), set("x", "1")]));
        for q in ["ROLLBACK", "rollback work", "ROLLBACK AND CHAIN", "SAVEPOINT", "SAVEPOINT a b", "RELEASE 1a"] {
            assert_eq!(parse_query(q), None, "{q}");
        }
    }

    #[test]
    fn anything_else_is_not_tracked() {
        for q in [
            "SELECT 1",
            "SET LOCAL work_mem = '1MB'",
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
    fn sets_mixed_with_other_statements_are_followed() {
        let other = SettingChange::Other;
        assert_eq!(parse_query("SET search_path TO a; SELECT 1"), Some(vec![set("search_path", "a"), other.clone()]));
        assert_eq!(parse_query("select ';'; set x.y = 2;"), Some(vec![other.clone(), set("x.y", "2")]));
        assert_eq!(
            parse_query("BEGIN; SET a = 1; COMMIT"),
            Some(vec![SettingChange::Begin, set("a", "1"), SettingChange::Commit])
        );
        assert_eq!(read_query("SELECT 1; SELECT 2"), QuerySettings::Untouched);
        assert_eq!(read_query("SELECT $$a;b$$"), QuerySettings::Untouched);
        assert_eq!(read_query("UPDATE t SET a = 1; DELETE FROM t"), QuerySettings::Untouched);
    }

    #[test]
    fn sets_sluice_cannot_follow_pin_the_client() {
        for q in ["SET x = $$weird$$", "SET \"Odd\" = 1", "SELECT $$a$$; SET x = 1", "RESET \"x\"", "SET x"] {
            assert_eq!(read_query(q), QuerySettings::Pin(read::UNREADABLE_SET), "{q}");
        }
        for q in ["SET a = 1; ROLLBACK", "SET a = 1; BEGIN", "RESET a; COMMIT AND CHAIN", "SET a = 1; PREPARE TRANSACTION 'x'"] {
            assert_eq!(read_query(q), QuerySettings::Pin(read::SET_WITH_TRANSACTION_CONTROL), "{q}");
        }
        assert!(matches!(read_query("ROLLBACK; SET a = 1"), QuerySettings::Changes(_)));
    }

    #[test]
    fn a_commit_in_the_same_request_makes_the_block_hold() {
        let mut t = SettingTracker::default();
        assert_eq!(run(&mut t, 1, "SET a = 1", b'T').changes, vec![]);
        assert_eq!(run(&mut t, 2, "SET b = 2; COMMIT", b'I').changes, vec![set("a", "1"), set("b", "2")]);
        // A failure after the COMMIT does not undo what it committed.
        let changes = parse_query("SET c = 3; COMMIT; SET d = 4; SELECT 1/0").unwrap();
        t.query_sent(3, changes, vec![]);
        for _ in 0..3 {
            t.command_complete(3, b"");
        }
        t.error(3);
        assert_eq!(t.ready(3, b'I').changes, vec![set("c", "3")]);
    }

    #[test]
    fn a_rollback_before_a_set_in_the_same_request_drops_the_block() {
        let mut t = SettingTracker::default();
        assert_eq!(run(&mut t, 1, "SET a = 1", b'T').changes, vec![]);
        assert_eq!(run(&mut t, 2, "ROLLBACK; SET b = 2; COMMIT", b'I').changes, vec![set("b", "2")]);
    }

    #[test]
    fn extended_executes_are_counted_so_that_an_error_drops_only_what_did_not_run() {
        let mut t = SettingTracker::default();
        // BEGIN, SELECT, SET a, SAVEPOINT s, SELECT (fails), SET b; then ROLLBACK TO s, COMMIT.
        let sp = SettingChange::Savepoint { name: "s".into() };
        for (i, c) in [SettingChange::Begin, SettingChange::Other, set("a", "1"), sp, SettingChange::Other, set("b", "2")]
            .into_iter()
            .enumerate()
        {
            assert_eq!(t.execute_sent(1, i, c), None);
        }
        for _ in 0..4 {
            t.command_complete(1, b"");
        }
        t.error(1);
        assert!(t.ready(1, b'E').changes.is_empty());
        assert!(run(&mut t, 2, "ROLLBACK TO s", b'T').changes.is_empty());
        assert_eq!(other(&mut t, 3, b"COMMIT", b'I').changes, vec![set("a", "1")]);
        // A ROLLBACK after a SET in one run cannot be followed.
        assert_eq!(t.execute_sent(3, 0, set("c", "3")), None);
        assert_eq!(t.execute_sent(3, 1, SettingChange::Abort), Some(read::SET_WITH_TRANSACTION_CONTROL));
        assert_eq!(t.execute_sent(4, 0, SettingChange::Unreadable), Some(read::UNREADABLE_SET));
    }

    /// Sends `sql` as query `seq` and answers it with CommandCompletes and a ReadyForQuery with
    /// `status`, all statements succeeding.
    fn run(t: &mut SettingTracker, seq: u64, sql: &str, status: u8) -> Settled {
        let changes = parse_query(sql).unwrap();
        let n = changes.len();
        t.query_sent(seq, changes, vec![]);
        for _ in 0..n {
            t.command_complete(seq, b"");
        }
        t.ready(seq, status)
    }

    /// An untracked statement answered with `tag` and a ReadyForQuery with `status`.
    fn other(t: &mut SettingTracker, seq: u64, tag: &[u8], status: u8) -> Settled {
        if !t.is_idle() {
            t.command_complete(seq, if t.wants_command_tags() { tag } else { b"" });
            return t.ready(seq, status);
        }
        Settled::default()
    }

    #[test]
    fn an_autocommit_set_holds_at_its_ready_for_query() {
        let mut t = SettingTracker::default();
        assert_eq!(run(&mut t, 1, "set a = 1", b'I'), sure(vec![set("a", "1")]));
        assert!(t.is_idle());
    }

    #[test]
    fn a_failed_set_does_not_hold() {
        let mut t = SettingTracker::default();
        t.query_sent(1, vec![set("a", "1")], vec![]);
        t.error(1);
        assert!(t.ready(1, b'I').changes.is_empty());
        // Nor does one before it in the same query: the query's implicit transaction is undone.
        t.query_sent(2, vec![set("a", "1"), set("b", "2")], vec![]);
        t.command_complete(2, b"");
        t.error(2);
        assert!(t.ready(2, b'I').changes.is_empty());
    }

    #[test]
    fn a_set_inside_a_transaction_holds_only_if_it_commits() {
        let mut t = SettingTracker::default();
        assert!(run(&mut t, 2, "set a = 1", b'T').changes.is_empty());
        assert!(t.wants_command_tags());
        assert_eq!(other(&mut t, 3, b"COMMIT\0", b'I'), sure(vec![set("a", "1")]));

        run(&mut t, 5, "set b = 2", b'T');
        assert!(other(&mut t, 6, b"ROLLBACK\0", b'I').changes.is_empty());

        run(&mut t, 8, "set c = 3", b'T');
        other(&mut t, 9, b"SELECT 1\0", b'E');
        assert!(other(&mut t, 10, b"ROLLBACK\0", b'I').changes.is_empty(), "COMMIT of a failed block says ROLLBACK");
        assert!(t.is_idle());
    }

    #[test]
    fn a_set_undone_by_rollback_to_savepoint_does_not_hold() {
        let mut t = SettingTracker::default();
        run(&mut t, 1, "savepoint sp", b'T');
        run(&mut t, 2, "set a = 1", b'T');
        run(&mut t, 3, "rollback to savepoint sp", b'T');
        run(&mut t, 4, "set b = 2", b'T');
        assert_eq!(other(&mut t, 5, b"COMMIT\0", b'I'), sure(vec![set("b", "2")]));
    }

    #[test]
    fn a_set_before_a_savepoint_survives_recovery_from_an_error() {
        let mut t = SettingTracker::default();
        run(&mut t, 1, "set a = 1", b'T');
        run(&mut t, 2, "savepoint sp", b'T');
        run(&mut t, 3, "set b = 2", b'T');
        other(&mut t, 4, b"", b'E');
        run(&mut t, 5, "rollback to sp", b'T');
        assert_eq!(other(&mut t, 6, b"COMMIT\0", b'I'), sure(vec![set("a", "1")]));
    }

    #[test]
    fn released_savepoints_merge_into_the_level_below() {
        let mut t = SettingTracker::default();
        run(&mut t, 1, "savepoint a", b'T');
        run(&mut t, 2, "savepoint b; set x = 1; savepoint c; set y = 2", b'T');
        run(&mut t, 3, "release b", b'T');
        run(&mut t, 4, "set z = 3", b'T');
        run(&mut t, 5, "rollback to savepoint a", b'T');
        assert!(other(&mut t, 6, b"COMMIT\0", b'I').changes.is_empty());

        run(&mut t, 7, "savepoint a", b'T');
        run(&mut t, 8, "set x = 1; savepoint a; set y = 2", b'T');
        run(&mut t, 9, "rollback to a", b'T');
        run(&mut t, 10, "release a", b'T');
        assert_eq!(other(&mut t, 11, b"COMMIT\0", b'I'), sure(vec![set("x", "1")]), "the latest `a` is meant");
    }

    #[test]
    fn the_statements_before_an_error_in_a_block_count() {
        let mut t = SettingTracker::default();
        t.query_sent(1, parse_query("set a = 1; savepoint s; set b = 2; set c = x").unwrap(), vec![]);
        for _ in 0..3 {
            t.command_complete(1, b"");
        }
        t.error(1);
        t.ready(1, b'E');
        run(&mut t, 2, "rollback to s", b'T');
        assert_eq!(other(&mut t, 3, b"COMMIT\0", b'I'), sure(vec![set("a", "1")]));
    }

    #[test]
    fn the_statements_sluice_added_complete_with_the_one_before_them() {
        let mut t = SettingTracker::default();
        let changes = vec![reset("a"), set("a", "'x'"), reset("b"), set("b", "'y'")];
        t.query_sent(1, changes, vec![false, true, false, true]);
        t.command_complete(1, b"");
        t.error(1);
        t.ready(1, b'E');
        run(&mut t, 2, "set c = 1", b'T');
        assert_eq!(t.levels[0].changes, [reset("a"), set("a", "'x'"), set("c", "1")]);
    }

    #[test]
    fn a_rollback_to_a_savepoint_sluice_did_not_see_makes_the_block_unsure() {
        let mut t = SettingTracker::default();
        run(&mut t, 1, "set a = 1", b'T');
        other(&mut t, 2, b"SAVEPOINT\0", b'T');
        run(&mut t, 3, "set b = 2", b'T');
        other(&mut t, 4, b"ROLLBACK\0", b'T');
        let settled = other(&mut t, 5, b"COMMIT\0", b'I');
        assert!(settled.unsure);
        assert_eq!(settled.changes, [set("a", "1"), set("b", "2")]);

        run(&mut t, 6, "set a = 1", b'T');
        run(&mut t, 7, "rollback to nowhere_seen", b'T');
        assert!(other(&mut t, 8, b"COMMIT\0", b'I').unsure);

        run(&mut t, 9, "set a = 1", b'T');
        other(&mut t, 10, b"ROLLBACK\0", b'T');
        assert_eq!(other(&mut t, 11, b"ROLLBACK\0", b'I'), Settled::default(), "a rolled-back block is sure");
        assert!(t.is_idle());
    }

    #[test]
    fn deallocate_holds_even_when_its_transaction_rolls_back() {
        let mut t = SettingTracker::default();
        let done = run(&mut t, 1, "deallocate s1; set a = 1", b'T');
        assert_eq!(done.changes, [SettingChange::Deallocate { name: "s1".into() }]);
        assert!(other(&mut t, 2, b"ROLLBACK\0", b'I').changes.is_empty());
    }
}
