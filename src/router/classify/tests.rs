use super::*;
use crate::router::hint::{CacheHint, RouteHint};
use proptest::prelude::*;

use StatementClass::{BeginReadOnly, Read, Write};

fn classifier() -> Classifier {
    Classifier::new(&["app.safe_fn".to_owned(), "Report".to_owned()])
}

fn assert_table(cases: &[(&str, StatementClass)]) {
    let k = classifier();
    for (sql, want) in cases {
        assert_eq!(k.classify(sql).class, *want, "{sql}");
    }
}

/// (text, its tables, writes_unknown) for each case.
fn assert_tables(cases: &[(&str, &[&str], bool)]) {
    let k = classifier();
    for (sql, tables, unknown) in cases {
        let c = k.classify(sql);
        let got: Vec<&str> = c.tables.iter().map(|t| &**t).collect();
        assert_eq!((&got[..], c.writes_unknown), (*tables, *unknown), "{sql}");
    }
}

#[test]
fn plain_reads_may_run_on_a_replica() {
    assert_table(&[
        ("SELECT 1", Read),
        ("sElEcT a, b FrOm public.t JOIN u ON t.id = u.id ORDER BY 1 LIMIT 5", Read),
        ("SELECT (SELECT max(id) FROM t) AS m, EXISTS (SELECT 1 FROM u)", Read),
        ("SELECT 1 UNION ALL SELECT 2 EXCEPT SELECT 3", Read),
        ("SELECT * FROM t, LATERAL (SELECT * FROM u WHERE u.a = t.a) s", Read),
        ("SELECT DISTINCT ON (a) a FROM t ORDER BY a, b DESC NULLS LAST", Read),
        ("VALUES (1), (2)", Read),
        ("TABLE t", Read),
        ("TABLE ONLY public.t", Read),
        ("SHOW search_path", Read),
        ("SHOW ALL", Read),
        ("SHOW TRANSACTION ISOLATION LEVEL", Read),
        ("", Read),
        (" ;; -- just a comment\n", Read),
    ]);
}

#[test]
fn postgres_expressions_are_understood() {
    assert_table(&[
        ("SELECT 'x'::regclass, ARRAY[1,2], j -> 'a', j ->> 'a', j @> '{}' FROM t", Read),
        ("SELECT interval '1 day', now() AT TIME ZONE 'utc', CURRENT_DATE - 1, CURRENT_TIMESTAMP, current_user", Read),
        ("SELECT 1 WHERE 'a' ILIKE 'b' AND 'a' ~* 'b' AND 1 IS DISTINCT FROM 2", Read),
        ("SELECT extract(year FROM now()), substring('abc' FROM 1 FOR 2), trim(both 'x' FROM 'y')", Read),
        ("SELECT count(*) FILTER (WHERE x > 1), string_agg(x, ',' ORDER BY x) FROM t", Read),
        ("SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x), row_number() OVER w FROM t WINDOW w AS (ORDER BY x)", Read),
        ("SELECT e'\\n', E'a\\'b', U&'d\\0061t', $tag$ body $tag$", Read),
        ("SELECT ARRAY(SELECT 1), ROW(1, 2), CAST(1 AS text), coalesce(a, 0), nullif(a, 0), greatest(a, b), least(a, b) FROM t", Read),
        ("SELECT * FROM unnest(ARRAY[1]) WITH ORDINALITY", Read),
    ]);
}

#[test]
fn prepared_statement_texts_with_parameters_parse() {
    assert_table(&[
        ("select * from t where id = $1", Read),
        ("SELECT * FROM t WHERE a = ANY($1) AND b = $2::text LIMIT $3 OFFSET $4", Read),
        ("INSERT INTO t (a, b) VALUES ($1, $2) RETURNING id", Write),
        ("UPDATE t SET v = $1 WHERE id = $2", Write),
    ]);
}

#[test]
fn row_locks_and_select_into_go_to_the_primary() {
    assert_table(&[
        ("SELECT * FROM t FOR UPDATE", Write),
        ("SELECT * FROM t FOR SHARE", Write),
        ("SELECT * FROM t FOR NO KEY UPDATE", Write),
        ("SELECT * FROM t FOR KEY SHARE", Write),
        ("SELECT * FROM t FOR UPDATE OF t SKIP LOCKED", Write),
        ("SELECT * FROM (SELECT * FROM t FOR UPDATE) s", Write),
        ("SELECT * INTO newt FROM t", Write),
        ("SELECT 1 INTO TEMP x", Write),
    ]);
}

#[test]
fn writes_ddl_and_commands_go_to_the_primary() {
    assert_table(&[
        ("INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET v = excluded.v", Write),
        ("UPDATE t SET v = u.v FROM u WHERE t.id = u.id", Write),
        ("DELETE FROM t USING u WHERE t.id = u.id", Write),
        ("MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN UPDATE SET v = u.v", Write),
        ("TRUNCATE t", Write),
        ("CREATE TABLE x (a int)", Write),
        ("COPY t FROM STDIN", Write),
        ("COPY t TO STDOUT", Write),
        ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", Write),
        ("CALL proc()", Write),
        ("DO $$ BEGIN END $$", Write),
        ("VACUUM ANALYZE t", Write),
        ("LISTEN x", Write),
        ("PREPARE s AS SELECT 1", Write),
        ("EXECUTE s", Write),
    ]);
}

#[test]
fn explain_is_a_read_only_when_what_it_explains_is() {
    assert_table(&[
        ("EXPLAIN SELECT * FROM t", Read),
        ("EXPLAIN ANALYZE SELECT * FROM t", Read),
        ("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT 1", Read),
        ("EXPLAIN INSERT INTO t VALUES (1)", Write),
        ("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", Write),
        ("EXPLAIN (ANALYZE) DELETE FROM t", Write),
        ("EXPLAIN SELECT * FROM t FOR UPDATE", Write),
    ]);
}

#[test]
fn read_only_ctes_are_reads_and_writable_ctes_are_writes() {
    assert_table(&[
        ("WITH a AS (SELECT * FROM t) SELECT * FROM a", Read),
        ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r", Read),
        ("WITH a AS MATERIALIZED (SELECT 1) SELECT * FROM a", Read),
        ("WITH a AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM a", Write),
        ("WITH a AS (DELETE FROM t RETURNING *) SELECT count(*) FROM a", Write),
        ("WITH a AS (SELECT 1), b AS (UPDATE t SET v = 1 RETURNING *) SELECT * FROM a", Write),
        ("WITH a AS (SELECT * FROM t FOR UPDATE) SELECT * FROM a", Write),
    ]);
}

#[test]
fn functions_must_be_known_read_only() {
    assert_table(&[
        ("SELECT count(*), max(v), now(), lower(s), to_char(now(), 'YYYY') FROM t", Read),
        ("SELECT * FROM generate_series(1, 10) g", Read),
        ("SELECT pg_catalog.lower('A'), pg_catalog.pg_last_wal_replay_lsn()", Read),
        ("SELECT current_setting('x'), pg_sleep(0), version()", Read),
        ("SELECT coalesce(v, 0) FROM t WHERE upper(s) = 'A' GROUP BY 1 HAVING sum(v) > 0 ORDER BY abs(v)", Read),
        ("SELECT nextval('s')", Write),
        ("SELECT currval('s')", Write),
        ("SELECT setval('s', 1)", Write),
        ("SELECT pg_advisory_lock(1)", Write),
        ("SELECT set_config('a.b', 'c', false)", Write),
        ("SELECT txid_current()", Write),
        ("SELECT pg_current_wal_lsn()", Write),
        ("SELECT my_func(1)", Write),
        ("SELECT * FROM my_srf(1) AS f(a int)", Write),
        ("SELECT \"Lower\"('A')", Write),
        ("SELECT app.lower('A')", Write),
        ("SELECT * FROM t WHERE id IN (SELECT nextval('s'))", Write),
        ("SELECT * FROM t ORDER BY my_func(a)", Write),
        ("SELECT * FROM t JOIN u ON my_func(t.a) = u.a", Write),
        ("SELECT count(*) OVER (PARTITION BY my_func(a)) FROM t", Write),
    ]);
}

#[test]
fn configured_functions_match_with_or_without_a_schema() {
    assert_table(&[
        ("SELECT app.safe_fn(1)", Read),
        ("SELECT APP.SAFE_FN(1)", Read),
        ("SELECT safe_fn(1)", Read),
        ("SELECT other.safe_fn(1)", Write),
        ("SELECT report()", Read),
        ("SELECT reporting.report()", Read),
        ("SELECT * FROM app.safe_fn(2)", Read),
    ]);
    let k = Classifier::new(&["nextval".to_owned()]);
    assert_eq!(k.classify("SELECT nextval('s')").class, Write, "nextval is never read-only");
}

#[test]
fn transactions_read_only_or_not() {
    assert_table(&[
        ("BEGIN READ ONLY", BeginReadOnly),
        ("begin transaction read only", BeginReadOnly),
        ("START TRANSACTION READ ONLY", BeginReadOnly),
        ("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY", BeginReadOnly),
        ("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE", BeginReadOnly),
        ("START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY", BeginReadOnly),
        ("BEGIN READ ONLY; SELECT 1", BeginReadOnly),
        ("BEGIN READ ONLY; SELECT 1; SELECT 2; COMMIT", BeginReadOnly),
        ("BEGIN READ ONLY; INSERT INTO t VALUES (1)", Write),
        ("BEGIN READ ONLY; SELECT nextval('s')", Write),
        ("BEGIN READ ONLY, READ WRITE", Write),
        ("BEGIN", Write),
        ("BEGIN READ WRITE", Write),
        ("BEGIN ISOLATION LEVEL SERIALIZABLE", Write),
        ("START TRANSACTION", Write),
        ("COMMIT", Write),
        ("ROLLBACK", Write),
        ("SELECT 1; BEGIN READ ONLY", Write),
    ]);
}

#[test]
fn multi_statement_queries_are_reads_only_if_every_statement_is() {
    assert_table(&[
        ("SELECT 1; SELECT 2", Read),
        ("SELECT 1;; SELECT 2;", Read),
        ("SELECT ';'; SELECT 2", Read),
        ("SELECT 1; INSERT INTO t VALUES (1)", Write),
        ("SET search_path = x; SELECT 1", Write),
        ("SELECT 1; selec 2", Write),
    ]);
}

#[test]
fn session_state_goes_to_the_primary_without_unknown_writes() {
    assert_table(&[
        ("SET statement_timeout = 0", Write),
        ("SET LOCAL search_path TO a, b", Write),
        ("RESET ALL", Write),
        ("DISCARD ALL", Write),
        ("DEALLOCATE ALL", Write),
    ]);
    assert_tables(&[
        ("SET statement_timeout = 0", &[], false),
        ("RESET ALL", &[], false),
        ("LOCK t", &[], false),
        ("SELECT * FROM t FOR UPDATE", &[], false),
        ("BEGIN; COMMIT", &[], false),
        ("EXPLAIN INSERT INTO t VALUES (1)", &[], false),
        ("COPY t TO STDOUT", &[], false),
    ]);
}

#[test]
fn text_that_does_not_parse_is_an_unknown_write() {
    assert_table(&[("selec 1", Write), ("SELECT 'unterminated", Write), ("SELECT (", Write), ("\u{fffd}", Write)]);
    assert_tables(&[
        ("selec 1", &[], true),
        ("SELECT 1; INSERT INTO t VALUES (1); bogus", &[], true),
        ("REFRESH MATERIALIZED VIEW mv", &[], true),
    ]);
}

#[test]
fn comments_do_not_change_the_class() {
    assert_table(&[
        ("-- leading\nSELECT 1 -- trailing", Read),
        ("/* a /* nested */ comment */ SELECT 1", Read),
        ("SELECT /* ; INSERT INTO t VALUES (1) */ 1", Read),
        ("SELECT 1 -- ; DELETE FROM t", Read),
    ]);
}

#[test]
fn hints_are_reported_but_not_applied() {
    let k = classifier();
    let c = k.classify("/* sluice:primary */ SELECT 1 -- trailing");
    assert_eq!((c.class, c.hints.route), (Read, Some(RouteHint::Primary)));
    let c = k.classify("INSERT /* sluice:replica */ INTO t VALUES (1)");
    assert_eq!((c.class, c.hints.route), (Write, Some(RouteHint::Replica)));
    let c = k.classify("SELECT '/* sluice:replica */' FROM t /* sluice:cache ttl=5s */");
    assert_eq!(c.hints.route, None);
    assert_eq!(c.hints.cache, Some(CacheHint::Cache { ttl: Some(std::time::Duration::from_secs(5)) }));
    let c = k.classify("selec /* sluice:replica */ 1");
    assert_eq!((c.class, c.hints.route), (Write, Some(RouteHint::Replica)));
}

#[test]
fn reads_report_the_relations_they_read() {
    assert_tables(&[
        (
            "SELECT * FROM Public.T JOIN u ON true WHERE x IN (SELECT y FROM \"Mixed\")",
            &["Mixed", "public.t", "u"],
            false,
        ),
        ("TABLE t", &["t"], false),
        ("SELECT * FROM ONLY parent p JOIN ONLY q ON true FETCH FIRST 1 ROWS ONLY", &["parent", "q"], false),
        ("SELECT * FROM generate_series(1, 3) g, t", &["t"], false),
        ("WITH a AS (SELECT * FROM t) SELECT * FROM a", &["a", "t"], false),
        ("BEGIN READ ONLY; SELECT * FROM t", &["t"], false),
        ("SELECT 1", &[], false),
    ]);
}

#[test]
fn writes_report_the_tables_they_write() {
    assert_tables(&[
        ("INSERT INTO s.t SELECT * FROM u", &["s.t"], false),
        ("UPDATE accounts SET v = 1 FROM u WHERE u.id = accounts.id", &["accounts"], false),
        ("UPDATE ONLY parent SET v = 1", &["parent"], false),
        ("DELETE FROM ONLY parent", &["parent"], false),
        ("DELETE FROM t USING u WHERE t.id = u.id", &["t"], false),
        ("MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE", &["t"], false),
        ("TRUNCATE a, b", &["a", "b"], false),
        ("TRUNCATE a CASCADE", &["a"], true),
        ("COPY t (a, b) FROM STDIN WITH (FORMAT csv)", &["t"], false),
        ("SELECT * INTO newt FROM t", &["newt"], false),
        ("WITH d AS (DELETE FROM t RETURNING *) INSERT INTO archive SELECT * FROM d", &["archive", "t"], false),
        ("EXPLAIN ANALYZE UPDATE t SET v = 1", &["t"], false),
        ("SELECT 1; UPDATE t SET v = 1; SELECT 2", &["t"], false),
    ]);
}

#[test]
fn ddl_reports_its_table_or_an_unknown_write() {
    assert_tables(&[
        ("CREATE TABLE x (a int)", &["x"], false),
        ("CREATE TABLE x AS SELECT * FROM t", &["x"], false),
        ("ALTER TABLE accounts ADD COLUMN z int", &["accounts"], false),
        ("DROP TABLE a, b", &["a", "b"], false),
        ("CREATE INDEX i ON t (a)", &["t"], false),
        ("DROP TABLE a CASCADE", &["a"], true),
        ("CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql", &[], true),
        ("DROP SCHEMA s", &[], true),
        ("CALL proc()", &[], true),
        ("DO $$ BEGIN DELETE FROM t; END $$", &[], true),
        ("SELECT my_func()", &[], true),
        ("EXECUTE s", &[], true),
    ]);
}

#[test]
fn a_repeated_text_is_answered_from_the_cache() {
    let k = classifier();
    let a = k.classify("SELECT 42");
    let b = k.classify("SELECT 42");
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(k.cached(), 1);
    assert!(!Arc::ptr_eq(&a, &k.classify("select 42")), "the key is the exact text");
}

#[test]
fn a_statement_repeated_with_other_values_is_answered_from_the_cache() {
    let k = classifier();
    let a = k.classify("SELECT v FROM t WHERE k = 1 AND s = 'a'");
    let b = k.classify("SELECT v FROM t WHERE k = 20 AND s = 'bc'");
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(k.cached(), 1);
    assert_eq!(k.classify("UPDATE t SET v = 2 WHERE k = 3").class, Write);
    assert_eq!(k.classify("SELECT v FROM t WHERE k = 4 FOR UPDATE").class, Write);
    assert_eq!(k.classify("SELECT v FROM u WHERE k = 5").tables[..], [Box::from("u")]);
}

#[test]
fn a_full_cache_is_emptied_and_refilled() {
    let k = Classifier::new(&[]);
    for i in 0..CACHE_CAPACITY {
        k.classify(&format!("SELECT c{i}"));
    }
    assert_eq!(k.cached(), CACHE_CAPACITY);
    k.classify("SELECT 'one more'");
    assert_eq!(k.cached(), 1);
}

proptest! {
    #[test]
    fn classify_never_panics_on_arbitrary_text(s in "\\PC{0,200}") {
        let _ = Classifier::new(&[]).classify(&s);
    }

    #[test]
    fn classify_never_panics_on_sql_like_tokens(s in "((SELECT|FROM|WHERE|TABLE|BEGIN|READ|ONLY|FOR|KEY|NO|UPDATE|SHARE|DEFERRABLE|NOT|COPY|STDIN|INSERT|INTO|WITH|AS|EXPLAIN|ANALYZE|\\(|\\)|,|;|\\$1|'x'|\\$\\$|t|1|\\*|/\\*|\\*/|--) ){0,30}") {
        let _ = Classifier::new(&[]).classify(&s);
    }

    #[test]
    fn classify_never_panics_on_mutated_sql(
        base in prop::sample::select(vec![
            "SELECT * FROM t WHERE id = $1 FOR NO KEY UPDATE",
            "WITH a AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM a",
            "BEGIN READ ONLY DEFERRABLE; SELECT /* sluice:replica */ 'x''y', $$z$$; COMMIT",
            "COPY t (a) FROM STDIN; TABLE u; EXPLAIN (ANALYZE) DELETE FROM t",
        ]),
        edits in prop::collection::vec((0usize..90, "[()';$*/\\\\\\-a-z \u{e9}]{0,5}", 0usize..4), 1..4),
    ) {
        let mut s = base.to_owned();
        for (at, junk, cut) in edits {
            let at = at.min(s.len());
            if s.is_char_boundary(at) && s.is_char_boundary((at + cut).min(s.len())) {
                s.replace_range(at..(at + cut).min(s.len()), &junk);
            }
        }
        let _ = Classifier::new(&[]).classify(&s);
    }

    /// A text answered from the entry of a text of the same shape gets what parsing it would.
    #[test]
    fn texts_of_one_shape_classify_alike(
        base in prop::sample::select(vec![
            "SELECT * FROM t WHERE id = 1 AND name = 'a1' FOR SHARE",
            "SELECT 2.5e3, E'x\\'3', interval '4 days' FROM t5 WHERE a = $1 LIMIT 6",
            "BEGIN READ ONLY; SELECT /* sluice:cache ttl=7 */ count(*) FROM t WHERE k BETWEEN 8 AND 9; COMMIT",
            "INSERT INTO t VALUES (1, 'x'), (2, 'y') RETURNING 3",
            "WITH w AS (SELECT 1 AS one) SELECT one, 'two' FROM w",
        ]),
        edits in prop::collection::vec((0usize..90, "[()';$*/\\\\\\-a-z0-9E. ]{0,5}", 0usize..4), 0..3),
    ) {
        let mut s = base.to_owned();
        for (at, junk, cut) in edits {
            let at = at.min(s.len());
            s.replace_range(at..(at + cut).min(s.len()), &junk);
        }
        let other_values: String = s.chars().map(|c| match c.to_digit(10) {
            Some(d) => char::from_digit((d + 7) % 10, 10).unwrap(),
            None => c,
        }).collect();
        let k = Classifier::new(&[]);
        k.classify(&other_values);
        prop_assert_eq!(&*k.classify(&s), &k.classify_uncached(&s), "{}", s);
    }
}

#[test]
fn texts_too_costly_to_parse_are_unknown_writes() {
    let nest = |n: usize| format!("SELECT {}1{}", "abs(".repeat(n), ")".repeat(n));
    assert_eq!(classifier().classify(&nest(8)).class, Read);
    assert_tables(&[(&nest(30), &[], true)]);
    let values = format!("{}1{}", "SELECT * FROM (VALUES (".repeat(12), ")) v".repeat(12));
    assert_tables(&[(&values, &[], true)]);
}

#[test]
fn deep_syntax_trees_do_not_overflow_the_stack() {
    let k = classifier();
    for n in [1_000usize, 20_000] {
        assert_eq!(k.classify(&format!("SELECT {}1", "1+".repeat(n))).class, Read);
        assert_eq!(k.classify(&format!("SELECT 1 WHERE {}true", "true AND ".repeat(n))).class, Read);
        assert_eq!(k.classify(&format!("SELECT {}1", "1 UNION SELECT ".repeat(n))).class, Read);
        assert_eq!(k.classify(&format!("SELECT j{}", "->'a'".repeat(n))).class, Read);
    }
    let nested = |open: &str, close: &str| format!("SELECT * FROM {}t{}", open.repeat(60), close.repeat(60));
    assert_eq!(k.classify(&nested("(SELECT * FROM ", ") s")).class, Write, "past sqlparser's depth limit");
    assert_eq!(k.classify(&format!("SELECT {}true", "NOT ".repeat(60))).class, Write);
    assert_eq!(k.classify(&format!("SELECT {}1{}", "(".repeat(45), ")".repeat(45))).class, Read);
    assert_eq!(k.classify(&format!("SELECT {}true", "NOT ".repeat(45))).class, Read);
}
