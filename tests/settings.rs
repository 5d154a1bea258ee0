//! End-to-end: session settings in transaction mode — what a client sets, undoes or resets is
//! what it sees on every server connection, as it would be on its own Postgres session.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_undone_by_rollback_or_set_local_does_not_stick_to_the_client() {
    let db = unique_db("set_rollback");
    let proxy = start_proxy(&db, "[pool]\nsize = 2").await;
    let c = proxy.connect_with("postgres", "application_name=orig").await.unwrap();
    let others: Vec<_> = futures_util::future::join_all((0..3).map(|_| proxy.connect())).await;
    c.batch_execute("begin; set application_name = 'rolled_back'; rollback").await.unwrap();
    c.batch_execute("begin; set local application_name = 'local_only'; commit").await.unwrap();
    for round in 0..6 {
        // Other clients take the server connections in between.
        let held: Vec<_> = others.iter().map(|o| o.batch_execute("select pg_sleep(0.01)")).collect();
        futures_util::future::join_all(held).await.into_iter().for_each(|r| r.unwrap());
        let v: String = c.query_typed("select current_setting('application_name')", &[]).await.unwrap()[0].get(0);
        assert_eq!(v, "orig", "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_returns_a_setting_to_the_clients_own_startup_value_like_postgres_does() {
    let db = unique_db("reset");
    let proxy = start_proxy(&db, "[pool]\nsize = 2").await;
    let extra = "application_name=orig options='-c TimeZone=Asia/Tokyo'";
    // What Postgres does for a client connected to it directly.
    let direct = connect_as(cluster().primary.addr(), &db, "postgres", extra).await.unwrap();
    // The same through sluice.
    let pooled = proxy.connect_with("postgres", extra).await.unwrap();
    for c in [&direct, &pooled] {
        c.batch_execute("set application_name = 'changed'; set timezone = 'UTC'").await.unwrap();
        c.batch_execute("reset application_name; reset timezone").await.unwrap();
    }
    let q = "select current_setting('application_name'), current_setting('TimeZone')";
    let d = &direct.query_typed(q, &[]).await.unwrap()[0];
    let expected: (String, String) = (d.get(0), d.get(1));
    assert_eq!(expected, ("orig".to_owned(), "Asia/Tokyo".to_owned()));
    let p = &pooled.query_typed(q, &[]).await.unwrap()[0];
    assert_eq!((p.get::<_, String>(0), p.get::<_, String>(1)), expected, "after RESET through sluice");
}
