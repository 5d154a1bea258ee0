//! Which relations a read may be cached over. Invalidation follows the relations statements
//! name, so a read is cached only over ordinary tables, partitioned tables and materialized
//! views: not over a view (a write to its base tables names the tables, not the view) nor a
//! foreign table (its data changes elsewhere). The classifier cannot tell them apart, so the
//! server's catalog is asked, once per name and `search_path`, and the answers are kept until
//! a write that may have changed any object (DDL on something other than a table) moves the
//! database's epoch.

use dashmap::DashMap;

/// Names remembered at most per database; when full, the map starts over.
const MAX_KNOWN: usize = 100_000;

/// A database's relations as far as the cache is concerned.
#[derive(Debug, Default)]
pub struct RelationKinds {
    /// `search_path` NUL name → (epoch when learned, cacheable).
    known: DashMap<Box<str>, (u64, bool)>,
}

fn key_into(k: &mut String, search_path: &str, name: &str) {
    k.clear();
    k.push_str(search_path);
    k.push('\0');
    k.push_str(name);
}

fn key(search_path: &str, name: &str) -> String {
    let mut k = String::with_capacity(search_path.len() + 1 + name.len());
    key_into(&mut k, search_path, name);
    k
}

impl RelationKinds {
    /// Whether a read over `name` (as the classifier names relations) may be cached, if known
    /// at `epoch`.
    /// Asked on every cacheable read: the key is built in a buffer reused per thread.
    pub fn verdict(&self, search_path: &str, name: &str, epoch: u64) -> Option<bool> {
        thread_local! {
            static KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        KEY.with(|k| {
            let mut k = k.borrow_mut();
            key_into(&mut k, search_path, name);
            let found = self.known.get(k.as_str())?;
            (found.0 == epoch).then_some(found.1)
        })
    }

    /// Remembers what the catalog said about `name`: its `relkind`, or `None` when no
    /// relation has that name (a CTE's name, or a table that does not exist: the read fails
    /// or reads no relation).
    pub fn learn(&self, search_path: &str, name: &str, epoch: u64, relkind: Option<u8>) -> bool {
        if self.known.len() >= MAX_KNOWN {
            self.known.clear();
        }
        let cacheable = matches!(relkind, None | Some(b'r' | b'p' | b'm'));
        self.known.insert(key(search_path, name).into(), (epoch, cacheable));
        cacheable
    }
}

/// A query that returns, in one text value, the `relkind` of each of `names` in order (`-` for
/// no relation), resolved with the session's `search_path`. `None` when a name cannot be
/// written as a relation name safely.
pub fn relkind_query<S: AsRef<str>>(names: &[S]) -> Option<String> {
    let mut array = String::new();
    for (i, name) in names.iter().enumerate() {
        let name = name.as_ref();
        if name.is_empty() || name.contains(['"', '\0']) {
            return None;
        }
        if i > 0 {
            array.push(',');
        }
        array.push('\'');
        for (j, part) in name.split('.').enumerate() {
            if j > 0 {
                array.push('.');
            }
            array.push('"');
            array.push_str(&part.replace('\'', "''"));
            array.push('"');
        }
        array.push('\'');
    }
    Some(format!(
        "SELECT pg_catalog.string_agg(coalesce(c.relkind::text, '-'), '' ORDER BY n.ord) \
         FROM pg_catalog.unnest(ARRAY[{array}]::text[]) WITH ORDINALITY AS n(name, ord) \
         LEFT JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass(n.name)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_and_materialized_views_are_cacheable_views_and_foreign_tables_are_not() {
        let k = RelationKinds::default();
        assert!(k.learn("public", "t", 0, Some(b'r')));
        assert!(k.learn("public", "p", 0, Some(b'p')));
        assert!(k.learn("public", "m", 0, Some(b'm')));
        assert!(!k.learn("public", "v", 0, Some(b'v')));
        assert!(!k.learn("public", "f", 0, Some(b'f')));
        assert!(k.learn("public", "cte", 0, None));
        assert_eq!(k.verdict("public", "v", 0), Some(false));
        assert_eq!(k.verdict("public", "t", 0), Some(true));
    }

    #[test]
    fn answers_hold_for_one_search_path_and_one_epoch() {
        let k = RelationKinds::default();
        k.learn("a", "t", 3, Some(b'r'));
        assert_eq!(k.verdict("b", "t", 3), None);
        assert_eq!(k.verdict("a", "t", 4), None);
    }

    #[test]
    fn names_are_quoted_part_by_part() {
        let q = relkind_query(&["t", "s.Odd Name", "it's"]).unwrap();
        assert!(q.contains(r#"ARRAY['"t"','"s"."Odd Name"','"it''s"']"#), "{q}");
        assert_eq!(relkind_query(&["bad\"name"]), None);
    }
}
