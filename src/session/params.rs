//! Session parameters that must follow a client from one server connection to the next:
//! startup parameters (application_name, client_encoding, DateStyle, TimeZone, search_path, …)
//! and reported parameters the client changed with SET. Each side keeps a [`ParamSet`]; when a
//! client lands on a server whose set differs, [`ParamSet::diff_sql`] gives the statements that
//! make them agree. The hash makes the common "already equal" check O(1).

use std::hash::{Hash, Hasher};

/// Reported parameters a client can change, which therefore travel with the client.
pub const TRACKED_REPORTED: &[&str] = &[
    "application_name",
    "client_encoding",
    "datestyle",
    "intervalstyle",
    "timezone",
    "standard_conforming_strings",
    "default_transaction_read_only",
];

/// The value of a parameter marked unknown: no SQL text or startup value contains a NUL.
const UNKNOWN: &str = "\0";

/// Startup keys that are not session settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "replication", "options"];

/// One parameter: the key lowercased for comparison, the name as Postgres reports it, the value.
#[derive(Debug, Clone)]
struct Param {
    key: String,
    name: String,
    value: String,
    /// `value` is SQL text (from a client's SET) rather than a plain string.
    raw: bool,
}

// Two parameters are the same setting whatever case the name was written in.
impl PartialEq for Param {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key && self.value == other.value && self.raw == other.raw
    }
}

impl Eq for Param {}

impl Hash for Param {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key.hash(state);
        self.value.hash(state);
        self.raw.hash(state);
    }
}

/// A set of session parameters, ordered by key, with a hash of the whole set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParamSet {
    /// Shared until changed: every client of a pool starts from the same set, so a clone is a
    /// reference count.
    params: std::sync::Arc<Vec<Param>>,
    hash: u64,
}

/// Orders a lowercase key against a name in any case, without allocating.
fn cmp_key(key: &str, name: &str) -> std::cmp::Ordering {
    key.bytes().cmp(name.bytes().map(|b| b.to_ascii_lowercase()))
}

/// Whether a parameter name is safe to put in a SET statement.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        && !name.as_bytes()[0].is_ascii_digit()
}

impl ParamSet {
    /// Whether a reported parameter travels with clients.
    pub fn is_tracked(name: &str) -> bool {
        TRACKED_REPORTED.iter().any(|k| k.eq_ignore_ascii_case(name))
    }

    /// Whether a startup key is a session setting sluice should carry.
    pub fn is_setting(name: &str) -> bool {
        !NOT_SETTINGS.iter().any(|k| k.eq_ignore_ascii_case(name)) && !name.starts_with("_pq_.")
    }

    /// Sets a parameter; returns whether anything changed.
    pub fn set(&mut self, name: &str, value: &str) -> bool {
        self.put(name, value, false)
    }

    /// Sets a parameter to a value written in SQL (as a client's SET statement had it).
    pub fn set_sql(&mut self, name: &str, sql_value: &str) -> bool {
        self.put(name, sql_value, true)
    }

    fn put(&mut self, name: &str, value: &str, raw: bool) -> bool {
        match self.params.binary_search_by(|p| cmp_key(&p.key, name)) {
            Ok(i) if self.params[i].value == value && self.params[i].raw == raw => return false,
            Ok(i) => {
                let p = &mut std::sync::Arc::make_mut(&mut self.params)[i];
                p.value = value.to_owned();
                p.name = name.to_owned();
                p.raw = raw;
            }
            Err(i) => std::sync::Arc::make_mut(&mut self.params).insert(
                i,
                Param { key: name.to_ascii_lowercase(), name: name.to_owned(), value: value.to_owned(), raw },
            ),
        }
        self.rehash();
        true
    }

    /// Removes a parameter; returns whether it was there.
    pub fn remove(&mut self, name: &str) -> bool {
        match self.params.binary_search_by(|p| cmp_key(&p.key, name)) {
            Ok(i) => {
                std::sync::Arc::make_mut(&mut self.params).remove(i);
                self.rehash();
                true
            }
            Err(_) => false,
        }
    }

    /// This set, with the tracked reported parameters taken from `reported` (the values a server
    /// normalized them to).
    pub fn with_reported_from(&self, reported: &ParamSet) -> ParamSet {
        let mut out = self.clone();
        for p in reported.params.iter().filter(|p| Self::is_tracked(&p.key)) {
            if out.get(&p.key).is_some() {
                out.put(&p.name, &p.value, false);
            }
        }
        out
    }

    /// Marks a parameter's value as unknown: it then differs from any value a client can have,
    /// so [`ParamSet::diff_sql`] towards any target sets (or resets) it again. For a server's set,
    /// never a target.
    pub fn mark_unknown(&mut self, name: &str) {
        self.put(name, UNKNOWN, true);
    }

    /// Removes every parameter that is not a tracked reported one.
    pub fn retain_reported(&mut self) {
        if self.params.iter().any(|p| !Self::is_tracked(&p.key)) {
            std::sync::Arc::make_mut(&mut self.params).retain(|p| Self::is_tracked(&p.key));
            self.rehash();
        }
    }

    /// A parameter's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params.binary_search_by(|p| cmp_key(&p.key, name)).ok().map(|i| self.params[i].value.as_str())
    }

    /// (name, value) pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params.iter().map(|p| (p.name.as_str(), p.value.as_str()))
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.params.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// The hash of the whole set; equal sets have equal hashes.
    pub fn fingerprint(&self) -> u64 {
        self.hash
    }

    fn rehash(&mut self) {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.params.hash(&mut h);
        self.hash = h.finish();
    }

    /// The statements that turn a server whose parameters are `self` into one with `target`'s;
    /// `None` when the two already agree.
    pub fn diff_sql(&self, target: &ParamSet) -> Option<String> {
        if std::sync::Arc::ptr_eq(&self.params, &target.params)
            || (self.hash == target.hash && self.params == target.params)
        {
            return None;
        }
        let mut sql = String::new();
        for p in target.params.iter() {
            let same = self
                .params
                .binary_search_by(|q| q.key.cmp(&p.key))
                .is_ok_and(|i| self.params[i] == *p);
            if !same {
                sql.push_str("SET ");
                sql.push_str(&p.key);
                sql.push_str(" TO ");
                if p.raw {
                    sql.push_str(&p.value);
                } else {
                    push_literal(&mut sql, &p.value);
                }
                sql.push(';');
            }
        }
        for p in self.params.iter() {
            if target.get(&p.key).is_none() {
                sql.push_str("RESET ");
                sql.push_str(&p.key);
                sql.push(';');
            }
        }
        (!sql.is_empty()).then_some(sql)
    }
}

/// Appends `value` as an E'' string literal, correct whatever standard_conforming_strings is.
pub(crate) fn push_literal(sql: &mut String, value: &str) {
    sql.push_str("E'");
    for c in value.chars() {
        match c {
            '\'' => sql.push_str("''"),
            '\\' => sql.push_str("\\\\"),
            '\0' => {}
            c => sql.push(c),
        }
    }
    sql.push('\'');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pairs: &[(&str, &str)]) -> ParamSet {
        let mut s = ParamSet::default();
        for (k, v) in pairs {
            s.set(k, v);
        }
        s
    }

    #[test]
    fn equal_sets_need_no_statements() {
        let a = set(&[("TimeZone", "UTC"), ("application_name", "x")]);
        let b = set(&[("application_name", "x"), ("timezone", "UTC")]);
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.diff_sql(&b), None);
    }

    #[test]
    fn differing_and_missing_values_become_set_and_reset() {
        let server = set(&[("TimeZone", "UTC"), ("search_path", "a")]);
        let client = set(&[("TimeZone", "Europe/Paris")]);
        let sql = server.diff_sql(&client).unwrap();
        assert_eq!(sql, "SET timezone TO E'Europe/Paris';RESET search_path;");
    }

    #[test]
    fn values_are_quoted_safely() {
        let sql = ParamSet::default().diff_sql(&set(&[("application_name", "a'b\\c")])).unwrap();
        assert_eq!(sql, "SET application_name TO E'a''b\\\\c';");
    }

    #[test]
    fn keys_compare_case_insensitively() {
        let mut s = set(&[("DateStyle", "ISO, MDY")]);
        assert_eq!(s.get("datestyle"), Some("ISO, MDY"));
        assert!(!s.set("datestyle", "ISO, MDY"));
        assert!(s.set("DateStyle", "ISO, DMY"));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn values_from_set_statements_are_replayed_as_written() {
        let mut client = ParamSet::default();
        client.set_sql("search_path", "a, \"B\"");
        assert_eq!(ParamSet::default().diff_sql(&client).unwrap(), "SET search_path TO a, \"B\";");
        let mut server = client.clone();
        assert_eq!(server.diff_sql(&client), None);
        server.remove("search_path");
        assert!(server.diff_sql(&client).is_some());
        client.retain_reported();
        assert!(client.is_empty());
    }

    #[test]
    fn a_value_marked_unknown_is_set_again_for_any_target() {
        let mut server = set(&[("work_mem", "8MB")]);
        server.mark_unknown("work_mem");
        server.mark_unknown("statement_timeout");
        let client = set(&[("work_mem", "8MB")]);
        assert_eq!(server.diff_sql(&client).unwrap(), "SET work_mem TO E'8MB';RESET statement_timeout;");
        assert!(server.diff_sql(&server.clone()).is_none(), "only ever compared, never a target");
    }

    #[test]
    fn unsafe_names_are_refused() {
        assert!(valid_name("search_path"));
        assert!(valid_name("myapp.tenant"));
        assert!(!valid_name("x; DROP TABLE t"));
        assert!(!valid_name(""));
        assert!(!valid_name("1abc"));
    }
}
