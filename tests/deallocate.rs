//! End-to-end: DEALLOCATE and DISCARD ALL in transaction mode. In a binary of its own, because
//! tokio-postgres numbers its statements (s0, s1, ...) across the whole process and this test
//! names one.

mod common;

use common::*;


#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_and_discard_all_behave_as_on_postgres_without_breaking_other_clients() {
    let db = unique_db("deallocate");
    let proxy = start_proxy(&db, "[pool]\nsize = 1").await;
    let c = proxy.connect_with("postgres", "options='-c search_path=pg_catalog'").await.unwrap();
    let other = proxy.connect().await;
    let mine = c.prepare("select 41 + $1::int").await.unwrap();
    let theirs = other.prepare("select 41 + $1::int").await.unwrap();
    assert_eq!(c.query_one(&mine, &[&1i32]).await.unwrap().get::<_, i32>(0), 42);
    // tokio-postgres named the statement s0 (its first), as Postgres would see it directly.
    c.batch_execute("DEALLOCATE s0").await.unwrap();
    let e = c.query_one(&mine, &[&1i32]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "26000", "the client's statement is gone");
    assert_eq!(other.query_one(&theirs, &[&2i32]).await.unwrap().get::<_, i32>(0), 43, "others' are not");
    let again = c.prepare("select 41 + $1::int").await.unwrap();
    assert_eq!(c.query_one(&again, &[&3i32]).await.unwrap().get::<_, i32>(0), 44);

    c.batch_execute("SET statement_timeout = '9s'").await.unwrap();
    c.batch_execute("DEALLOCATE ALL").await.unwrap();
    assert_eq!(sqlstate(&c.query_one(&again, &[&3i32]).await.unwrap_err()), "26000");
    assert_eq!(other.query_one(&theirs, &[&4i32]).await.unwrap().get::<_, i32>(0), 45);

    c.batch_execute("DISCARD ALL").await.unwrap();
    assert_eq!(setting(&c, "statement_timeout").await, "0");
    assert_eq!(setting(&c, "search_path").await, "pg_catalog", "back to the startup value");
    let fresh = c.prepare("select 41 + $1::int").await.unwrap();
    assert_eq!(c.query_one(&fresh, &[&5i32]).await.unwrap().get::<_, i32>(0), 46);
    assert_eq!(other.query_one(&theirs, &[&6i32]).await.unwrap().get::<_, i32>(0), 47);
}
