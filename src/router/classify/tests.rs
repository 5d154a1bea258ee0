use super::*;
use crate::router::hint::RouteHint;
use proptest::prelude::*;

fn class_of(sql: &str) -> StatementClass {
    Classifier::new(&["app.safe_fn".to_owned(), "report".to_owned()]).classify(sql).class
}

fn assert_table(cases: &[(&str, StatementClass)]) {
    for (sql, want) in cases {
        assert_eq!(class_of(sql), *want, "{sql}");
    }
}

use StatementClass::{BeginReadOnly, Read, Write};

#[test]
fn plain_reads_may_run_on_a_replica() {
    assert_table(&[
        ("SELECT 1", Read),
        ("select * from t where id = $1", Read),
        ("sElEcT a, b FrOm public.t JOIN u ON t.id = u.id ORDER BY 1 LIMIT 5", Read),
        ("VALUES (1), (2)", Read),
        ("TABLE t", Read),
        ("SHOW search_path", Read),
        ("EXPLAIN SELECT * FROM t", Read),
        ("SELECT count(*), max(v), now() FROM t", Read),
        ("SELECT * FROM generate_series(1, 10) g", Read),
        ("SELECT 1 UNION ALL SELECT 2", Read),
        ("SELECT (SELECT max(id) FROM t) AS m", Read),
        ("", Read),
    ]);
}

#[test]
fn row_locks_select_into_and_writes_go_to_the_primary() {
    assert_table(&[
        ("SELECT * FROM t FOR UPDATE", Write),
        ("SELECT * FROM t FOR SHARE", Write),
        ("SELECT * FROM (SELECT * FROM t FOR UPDATE) s", Write),
        ("SELECT * INTO newt FROM t", Write),
        ("INSERT INTO t VALUES (1)", Write),
        ("UPDATE t SET v = 1", Write),
        ("DELETE FROM t", Write),
        ("TRUNCATE t", Write),
        ("CREATE TABLE x (a int)", Write),
        ("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", Write),
        ("COPY t FROM STDIN", Write),
        ("LOCK TABLE t", Write),
    ]);
}

#[test]
fn read_only_ctes_are_reads_and_writable_ctes_are_writes() {
    assert_table(&[
        ("WITH a AS (SELECT * FROM t) SELECT * FROM a", Read),
        ("WITH a AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM a", Write),
        ("WITH a AS (DELETE FROM t RETURNING *) SELECT count(*) FROM a", Write),
    ]);
}

#[test]
fn functions_must_be_known_read_only() {
    assert_table(&[
        ("SELECT nextval('s')", Write),
        ("SELECT setval('s', 1)", Write),
        ("SELECT pg_advisory_lock(1)", Write),
        ("SELECT set_config('a.b', 'c', false)", Write),
        ("SELECT my_func(1)", Write),
        ("SELECT * FROM my_srf(1)", Write),
        ("SELECT app.safe_fn(1)", Read),
        ("SELECT report()", Read),
        ("SELECT other.report()", Write),
        ("SELECT pg_catalog.lower('A')", Read),
        ("SELECT coalesce(v, 0), lower(s) FROM t WHERE upper(s) = 'A'", Read),
        ("SELECT * FROM t WHERE id IN (SELECT nextval('s'))", Write),
    ]);
}

#[test]
fn transactions_read_only_or_not() {
    assert_table(&[
        ("BEGIN READ ONLY", BeginReadOnly),
        ("START TRANSACTION READ ONLY", BeginReadOnly),
        ("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY", BeginReadOnly),
        ("BEGIN READ ONLY; SELECT 1; COMMIT", BeginReadOnly),
        ("BEGIN READ ONLY; INSERT INTO t VALUES (1)", Write),
        ("BEGIN", Write),
        ("BEGIN READ WRITE", Write),
        ("START TRANSACTION", Write),
        ("COMMIT", Write),
        ("SELECT 1; BEGIN READ ONLY", Write),
    ]);
}

#[test]
fn multi_statement_queries_are_reads_only_if_every_statement_is() {
    assert_table(&[
        ("SELECT 1; SELECT 2", Read),
        ("SELECT 1;; SELECT 2;", Read),
        ("SELECT 1; INSERT INTO t VALUES (1)", Write),
        ("SET search_path = x; SELECT 1", Write),
    ]);
}

#[test]
fn session_state_and_unparsable_text_go_to_the_primary() {
    assert_table(&[
        ("SET statement_timeout = 0", Write),
        ("RESET ALL", Write),
        ("DISCARD ALL", Write),
        ("LISTEN x", Write),
        ("selec 1", Write),
        ("DO $$ BEGIN END $$", Write),
    ]);
    let c = Classifier::new(&[]).classify("selec 1");
    assert!(c.writes_unknown, "a failed parse may have written anything");
}

#[test]
fn comments_and_hints_are_reported_but_not_applied() {
    let k = Classifier::new(&[]);
    let c = k.classify("/* sluice:primary */ SELECT 1 -- trailing");
    assert_eq!(c.class, Read);
    assert_eq!(c.hints.route, Some(RouteHint::Primary));
    let c = k.classify("INSERT /* sluice:replica */ INTO t VALUES (1)");
    assert_eq!(c.class, Write);
    assert_eq!(c.hints.route, Some(RouteHint::Replica));
}

#[test]
fn tables_are_collected_lowercase_as_written() {
    let k = Classifier::new(&[]);
    let c = k.classify("SELECT * FROM Public.T JOIN u ON true WHERE x IN (SELECT y FROM \"Mixed\")");
    assert_eq!(&*c.tables, &["Mixed".into(), "public.t".into(), "u".into()][..]);
    let c = k.classify("UPDATE accounts SET v = 1");
    assert_eq!(&*c.tables, &["accounts".into()][..]);
    assert!(!c.writes_unknown);
    assert!(k.classify("ALTER TABLE accounts ADD COLUMN z int").writes_unknown);
}

#[test]
fn a_repeated_text_is_answered_from_the_cache() {
    let k = Classifier::new(&[]);
    let a = k.classify("SELECT 42");
    let b = k.classify("SELECT 42");
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(k.cached(), 1);
}

proptest! {
    #[test]
    fn classify_never_panics_on_arbitrary_text(s in ".{0,200}") {
        let _ = Classifier::new(&[]).classify(&s);
    }

    #[test]
    fn classify_never_panics_on_mutated_sql(
        base in prop::sample::select(vec![
            "SELECT * FROM t WHERE id = $1 FOR UPDATE",
            "WITH a AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM a",
            "BEGIN READ ONLY; SELECT /* sluice:replica */ 'x''y', $$z$$",
        ]),
        at in 0usize..60,
        junk in "[()';$*/\\-a-z ]{0,5}",
    ) {
        let mut s = base.to_owned();
        let at = at.min(s.len());
        if s.is_char_boundary(at) {
            s.insert_str(at, &junk);
        }
        let _ = Classifier::new(&[]).classify(&s);
    }
}
