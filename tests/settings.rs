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

/// The value of a setting as the client sees it, asked through the extended protocol.
async fn current(c: &tokio_postgres::Client, name: &str) -> String {
    c.query_typed("select current_setting($1, true)", &[(&name, tokio_postgres::types::Type::TEXT)]).await.unwrap()[0]
        .get::<_, Option<String>>(0)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sets_sent_through_the_extended_protocol_follow_the_client_and_never_reach_other_clients() {
    let db = unique_db("set_extended");
    let proxy = start_proxy(&db, "[pool]\nsize = 2").await;
    let a = proxy.connect().await;
    let others: Vec<_> = futures_util::future::join_all((0..3).map(|_| proxy.connect())).await;
    let default_path = current(&others[0], "search_path").await;
    // A named statement (prepare, bind, execute, close) and the unnamed one.
    a.execute("SET search_path TO pg_catalog, public", &[]).await.unwrap();
    a.query_typed("SET myapp.tenant = 'acme'", &[]).await.unwrap();
    a.query_typed("SET statement_timeout = '150ms'", &[]).await.unwrap();
    for round in 0..6 {
        let busy: Vec<_> = others.iter().map(|o| o.batch_execute("select pg_sleep(0.01)")).collect();
        futures_util::future::join_all(busy).await.into_iter().for_each(|r| r.unwrap());
        assert_eq!(current(&a, "search_path").await, "pg_catalog, public", "round {round}");
        assert_eq!(current(&a, "myapp.tenant").await, "acme", "round {round}");
        for o in &others {
            assert_eq!(current(o, "search_path").await, default_path, "round {round}: another client");
            assert_eq!(current(o, "myapp.tenant").await, "", "round {round}: another client");
        }
    }
    // The timeout holds for the client wherever it runs, and for no one else.
    let err = a.query_typed("select pg_sleep(2)", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "57014");
    for o in &others {
        o.query_typed("select pg_sleep(0.3)", &[]).await.unwrap();
    }
    // RESET through the extended protocol, and a SET that fails, which does not hold.
    a.query_typed("RESET statement_timeout", &[]).await.unwrap();
    a.query_typed("select pg_sleep(0.3)", &[]).await.unwrap();
    assert!(a.query_typed("SET work_mem = 'lots'", &[]).await.is_err());
    for _ in 0..4 {
        assert_ne!(current(&a, "work_mem").await, "lots");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_mixed_with_other_statements_in_one_query_is_followed_like_postgres() {
    let db = unique_db("set_mixed");
    let proxy = start_proxy(&db, "[pool]\nsize = 2").await;
    let direct = connect_as(cluster().primary.addr(), &db, "postgres", "").await.unwrap();
    let pooled = proxy.connect().await;
    let others: Vec<_> = futures_util::future::join_all((0..3).map(|_| proxy.connect())).await;
    let steps = [
        "select 1; set myapp.a = 'one'; select 2",
        "begin; set myapp.b = 'two'; commit; select 3",
        "begin; set myapp.c = 'three'; rollback",
        "set myapp.d = 'four'; rollback",
        "rollback; set myapp.e = 'five'",
    ];
    for step in steps {
        for c in [&direct, &pooled] {
            c.batch_execute(step).await.unwrap();
        }
        let busy: Vec<_> = others.iter().map(|o| o.batch_execute("select pg_sleep(0.01)")).collect();
        futures_util::future::join_all(busy).await.into_iter().for_each(|r| r.unwrap());
        for name in ["myapp.a", "myapp.b", "myapp.c", "myapp.d", "myapp.e"] {
            assert_eq!(current(&pooled, name).await, current(&direct, name).await, "{name} after {step}");
        }
    }
    for o in &others {
        for name in ["myapp.a", "myapp.b", "myapp.e"] {
            assert_eq!(current(o, name).await, "", "{name} must not reach another client");
        }
    }
}
