//! Reading what a request does to session settings, without a full SQL parser: statements are
//! split on semicolons outside quotes and comments, and each is read by its leading keywords.
//! Text sluice cannot read with certainty (dollar quoting, a SET it cannot parse, a SET mixed
//! with statements that start or abort a transaction) asks for the client to be pinned.

use super::SettingChange;

/// What one request (a simple query, or one extended-protocol statement) does to the session's
/// settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuerySettings {
    /// Nothing sluice follows.
    Untouched,
    /// One entry per statement, in order.
    Changes(Vec<SettingChange>),
    /// It changes settings in a way sluice cannot follow across server connections: the
    /// client keeps its connection (the reason names the feature).
    Pin(&'static str),
}

/// Why a client is pinned for a SET sluice cannot read.
pub const UNREADABLE_SET: &str = "a SET or RESET statement sluice cannot read";
/// Why a client is pinned for a SET mixed with transaction control in one request.
pub const SET_WITH_TRANSACTION_CONTROL: &str = "SET followed by BEGIN or ROLLBACK in one request";

/// Splits SQL into statements on semicolons outside quotes and comments; `None` for text it
/// does not fully understand (dollar quoting, unterminated quotes).
pub(super) fn statements(sql: &str) -> Option<Vec<&str>> {
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
    (super::super::params::valid_name(name)).then(|| (name.to_ascii_lowercase(), s[end..].trim_start()))
}

/// A savepoint name, alone: an identifier, folded to lower case unless quoted.
fn savepoint_name(s: &str) -> Option<String> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            if c != '"' {
                name.push(c);
            } else if rest[i + 1..].starts_with('"') {
                name.push('"');
                chars.next();
            } else {
                return (!name.is_empty() && rest[i + 1..].trim().is_empty()).then_some(name);
            }
        }
        return None;
    }
    let plain = s.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '$')
        && s.starts_with(|c: char| c.is_alphabetic() || c == '_');
    plain.then(|| s.to_ascii_lowercase())
}

/// `rest` after an optional `SAVEPOINT` keyword (which may also be the name itself).
fn after_savepoint_keyword(rest: &str) -> &str {
    keyword(rest, "SAVEPOINT").filter(|r| !r.is_empty()).unwrap_or(rest)
}

/// Reads one statement; `None` for anything that is not a SET, RESET or savepoint statement
/// sluice understands.
pub(super) fn change(stmt: &str) -> Option<SettingChange> {
    if let Some(rest) = keyword(stmt, "SAVEPOINT") {
        return savepoint_name(rest).map(|name| SettingChange::Savepoint { name });
    }
    if let Some(rest) = keyword(stmt, "RELEASE") {
        return savepoint_name(after_savepoint_keyword(rest)).map(|name| SettingChange::Release { name });
    }
    if let Some(mut rest) = keyword(stmt, "ROLLBACK") {
        if let Some(r) = keyword(rest, "WORK").or_else(|| keyword(rest, "TRANSACTION")) {
            rest = r;
        }
        let rest = after_savepoint_keyword(keyword(rest, "TO")?);
        return savepoint_name(rest).map(|name| SettingChange::RollbackTo { name });
    }
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


/// Whether a statement's first keyword makes it one sluice must read to follow the session's
/// settings.
fn is_setting_statement(stmt: &str) -> bool {
    ["SET", "RESET", "DISCARD", "DEALLOCATE", "SAVEPOINT", "RELEASE", "ROLLBACK"]
        .iter()
        .any(|k| keyword(stmt, k).is_some())
}

/// What one statement (already stripped of leading comments) does.
fn statement(stmt: &str) -> SettingChange {
    if let Some(c) = change(stmt) {
        return c;
    }
    let chained = |rest: &str| {
        let rest = keyword(rest, "WORK").or_else(|| keyword(rest, "TRANSACTION")).unwrap_or(rest);
        keyword(rest, "AND").and_then(|r| keyword(r, "CHAIN")).is_some()
    };
    if let Some(rest) = keyword(stmt, "COMMIT").or_else(|| keyword(stmt, "END")) {
        if keyword(rest, "PREPARED").is_some() {
            return SettingChange::Other;
        }
        return if chained(rest) { SettingChange::Abort } else { SettingChange::Commit };
    }
    if keyword(stmt, "ROLLBACK").is_some_and(|r| keyword(r, "PREPARED").is_none()) || keyword(stmt, "ABORT").is_some() {
        return SettingChange::Abort;
    }
    if keyword(stmt, "PREPARE").is_some_and(|r| keyword(r, "TRANSACTION").is_some()) {
        return SettingChange::Abort;
    }
    if keyword(stmt, "BEGIN").is_some() || keyword(stmt, "START").is_some_and(|r| keyword(r, "TRANSACTION").is_some()) {
        return SettingChange::Begin;
    }
    if let Some(rest) = keyword(stmt, "SET") {
        // Forms that are not session settings: transaction-scoped, or pinned elsewhere.
        let rest = keyword(rest, "SESSION").unwrap_or(rest);
        let elsewhere = ["TRANSACTION", "CONSTRAINTS", "ROLE", "AUTHORIZATION", "CHARACTERISTICS", "LOCAL"];
        if elsewhere.iter().any(|k| keyword(rest, k).is_some()) {
            return SettingChange::Other;
        }
        return SettingChange::Unreadable;
    }
    if keyword(stmt, "RESET").is_some() || keyword(stmt, "DEALLOCATE").is_some() {
        return SettingChange::Unreadable;
    }
    SettingChange::Other
}

/// Whether a request made of `changes` can be followed; the reason to pin otherwise.
fn verdict(changes: Vec<SettingChange>) -> QuerySettings {
    let mut changed = false;
    for c in &changes {
        match c {
            SettingChange::Unreadable => return QuerySettings::Pin(UNREADABLE_SET),
            SettingChange::Begin | SettingChange::Abort if changed => {
                return QuerySettings::Pin(SET_WITH_TRANSACTION_CONTROL);
            }
            c if c.changes_session() => changed = true,
            _ => {}
        }
    }
    if changes.iter().any(SettingChange::is_tracked) {
        QuerySettings::Changes(changes)
    } else {
        QuerySettings::Untouched
    }
}

/// Whether `sql` may hold more than one statement: a semicolon with something after it.
fn several_statements(sql: &str) -> bool {
    sql.find(';').is_some_and(|i| !strip(&sql[i + 1..]).trim_start_matches(';').trim().is_empty())
}

/// Whether text sluice cannot split has a statement that starts with a setting keyword, read
/// crudely (a false alarm only pins a client).
fn may_hide_a_setting(sql: &str) -> bool {
    is_setting_statement(strip(sql)) || sql.split(';').skip(1).any(|s| is_setting_statement(strip(s)))
}

/// What a simple query does to session settings.
pub fn read_query(sql: &str) -> QuerySettings {
    if !several_statements(sql) {
        let head = strip(sql);
        if !is_setting_statement(head) {
            return QuerySettings::Untouched;
        }
    }
    match statements(sql) {
        Some(stmts) => verdict(stmts.into_iter().map(statement).collect()),
        None if may_hide_a_setting(sql) => QuerySettings::Pin(UNREADABLE_SET),
        None => QuerySettings::Untouched,
    }
}

/// What one extended-protocol statement (the text of a Parse) does.
pub fn read_statement(sql: &str) -> SettingChange {
    let head = strip(sql);
    if !is_setting_statement(head) && !is_transaction_control(head) {
        return SettingChange::Other;
    }
    match statements(sql).as_deref() {
        Some([one]) => statement(one),
        Some(_) => SettingChange::Other,
        None if is_setting_statement(head) => SettingChange::Unreadable,
        None => SettingChange::Other,
    }
}

/// Whether a statement starts or ends a transaction block.
fn is_transaction_control(stmt: &str) -> bool {
    ["BEGIN", "START", "COMMIT", "END", "ABORT", "PREPARE"].iter().any(|k| keyword(stmt, k).is_some())
}
