//! Which statement an extended-protocol Execute runs, as far as settings are concerned. A
//! Parse names a statement and gives its text; a Bind ties a portal to a statement; an Execute
//! runs a portal. What each statement does to settings is read once, at its Parse, and carried
//! to the portals bound to it. Only statements that matter are remembered, so a client that
//! never sends a SET through the extended protocol costs nothing here.

use super::read::read_statement;
use super::SettingChange;
use std::collections::HashMap;

/// Portals that run a setting statement, remembered at most (a driver binds one at a time).
const MAX_PORTALS: usize = 16;

/// A client's extended-protocol statements and portals that change settings.
#[derive(Debug, Default)]
pub struct ExtendedRequests {
    /// What the unnamed statement does.
    unnamed: Option<SettingChange>,
    /// Named statements that do something other than [`SettingChange::Other`].
    named: HashMap<Box<[u8]>, SettingChange>,
    /// Portals bound to such statements.
    portals: Vec<(Box<[u8]>, SettingChange)>,
    /// The ReadyForQuery the current run of Executes ends at, and how many were sent so far.
    segment: (u64, usize),
}

/// The NUL-terminated string at the start of `body`, and what follows it.
fn cstr(body: &[u8]) -> (&[u8], &[u8]) {
    match body.iter().position(|&b| b == 0) {
        Some(i) => (&body[..i], &body[i + 1..]),
        None => (body, &[]),
    }
}

impl ExtendedRequests {
    /// A Parse: reads what its statement does (returned, so that an unreadable SET can pin the
    /// client at once).
    pub fn parse(&mut self, body: &[u8]) -> SettingChange {
        let (name, rest) = cstr(body);
        let (text, _) = cstr(rest);
        let change = read_statement(std::str::from_utf8(text).unwrap_or(""));
        if name.is_empty() {
            self.unnamed = (change != SettingChange::Other).then(|| change.clone());
        } else if change != SettingChange::Other {
            self.named.insert(name.into(), change.clone());
        } else if !self.named.is_empty() {
            self.named.remove(name);
        }
        change
    }

    /// A Bind: the portal runs what its statement does.
    pub fn bind(&mut self, body: &[u8]) {
        let (portal, rest) = cstr(body);
        let (statement, _) = cstr(rest);
        let change = if statement.is_empty() { self.unnamed.as_ref() } else { self.named.get(statement) };
        if !self.portals.is_empty() {
            self.portals.retain(|(p, _)| &**p != portal);
        }
        if let Some(change) = change {
            if self.portals.len() == MAX_PORTALS {
                self.portals.remove(0);
            }
            self.portals.push((portal.into(), change.clone()));
        }
    }

    /// A Close of a statement or portal.
    pub fn close(&mut self, body: &[u8]) {
        let Some((&kind, rest)) = body.split_first() else { return };
        let (name, _) = cstr(rest);
        match kind {
            b'S' if name.is_empty() => self.unnamed = None,
            b'S' if !self.named.is_empty() => {
                self.named.remove(name);
            }
            b'P' if !self.portals.is_empty() => self.portals.retain(|(p, _)| &**p != name),
            _ => {}
        }
    }

    /// Whether an Execute's body is needed (to tell its portal).
    pub fn wants_execute(&self) -> bool {
        !self.portals.is_empty()
    }

    /// An Execute (its body, or nothing when [`Self::wants_execute`] said no) that ends at
    /// the `ready_seq`-th ReadyForQuery: what it runs, and how many Executes were sent before
    /// it in the same run.
    pub fn execute(&mut self, body: &[u8], ready_seq: u64) -> (SettingChange, usize) {
        if self.segment.0 != ready_seq {
            self.segment = (ready_seq, 0);
        }
        let before = self.segment.1;
        self.segment.1 += 1;
        if self.portals.is_empty() {
            return (SettingChange::Other, before);
        }
        let (portal, _) = cstr(body);
        let change = self.portals.iter().find(|(p, _)| &**p == portal).map(|(_, c)| c.clone());
        (change.unwrap_or(SettingChange::Other), before)
    }

    /// Every statement and portal is gone (DISCARD ALL, DEALLOCATE ALL).
    pub fn forget_all(&mut self) {
        self.unnamed = None;
        self.named.clear();
        self.portals.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(parts: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for p in parts {
            v.extend_from_slice(p);
            v.push(0);
        }
        v
    }

    fn set(name: &str, value: &str) -> SettingChange {
        SettingChange::Set { name: name.into(), value: value.into() }
    }

    #[test]
    fn an_unnamed_set_is_carried_from_parse_through_bind_to_execute() {
        let mut x = ExtendedRequests::default();
        assert_eq!(x.parse(&msg(&[b"", b"SET search_path TO app"])), set("search_path", "app"));
        x.bind(&msg(&[b"", b""]));
        assert!(x.wants_execute());
        assert_eq!(x.execute(&msg(&[b""]), 7), (set("search_path", "app"), 0));
        // A later statement replaces it.
        x.parse(&msg(&[b"", b"SELECT 1"]));
        x.bind(&msg(&[b"", b""]));
        assert!(!x.wants_execute());
        assert_eq!(x.execute(&[], 7), (SettingChange::Other, 1));
        assert_eq!(x.execute(&[], 8), (SettingChange::Other, 0), "a new run counts afresh");
    }

    #[test]
    fn named_statements_and_portals_keep_their_changes_until_closed() {
        let mut x = ExtendedRequests::default();
        x.parse(&msg(&[b"s1", b"set statement_timeout = 5"]));
        x.parse(&msg(&[b"s2", b"select 1"]));
        x.bind(&msg(&[b"p1", b"s1"]));
        x.bind(&msg(&[b"p2", b"s2"]));
        assert_eq!(x.execute(&msg(&[b"p2"]), 1).0, SettingChange::Other);
        assert_eq!(x.execute(&msg(&[b"p1"]), 1).0, set("statement_timeout", "5"));
        x.close(&msg(&[b"Pp1"]));
        assert_eq!(x.execute(&msg(&[b"p1"]), 1).0, SettingChange::Other);
        x.close(&msg(&[b"Ss1"]));
        x.bind(&msg(&[b"p1", b"s1"]));
        assert_eq!(x.execute(&msg(&[b"p1"]), 1).0, SettingChange::Other);
    }

    #[test]
    fn transaction_control_and_unreadable_sets_are_told_apart() {
        let mut x = ExtendedRequests::default();
        assert_eq!(x.parse(&msg(&[b"", b"ROLLBACK"])), SettingChange::Abort);
        assert_eq!(x.parse(&msg(&[b"", b"commit"])), SettingChange::Commit);
        assert_eq!(x.parse(&msg(&[b"", b"BEGIN ISOLATION LEVEL SERIALIZABLE"])), SettingChange::Begin);
        assert_eq!(x.parse(&msg(&[b"", b"SET \"odd name\" = 1"])), SettingChange::Unreadable);
        assert_eq!(x.parse(&msg(&[b"", b"SET x = $$y$$"])), SettingChange::Unreadable);
        assert_eq!(x.parse(&msg(&[b"", b"SET TRANSACTION READ ONLY"])), SettingChange::Other);
        assert_eq!(x.parse(&msg(&[b"", b"UPDATE t SET a = 1"])), SettingChange::Other);
        assert_eq!(x.parse(&msg(&[b"", b"SELECT $1::int"])), SettingChange::Other);
    }

    #[test]
    fn malformed_bodies_are_read_as_nothing() {
        let mut x = ExtendedRequests::default();
        assert_eq!(x.parse(&[]), SettingChange::Other);
        assert_eq!(x.parse(&[0xff, 0xfe]), SettingChange::Other);
        x.bind(&[]);
        x.close(&[]);
        assert_eq!(x.execute(&[], 1).0, SettingChange::Other);
    }
}
