//! End-to-end: clients through sluice in transaction mode against a real Postgres.

mod common;

use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::types::Type;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_queries_return_what_postgres_returns() {
    let db = unique_db("queries");
    let proxy = start_proxy(&db, "").await;
    let c = proxy.connect().await;
    c.batch_execute("create table t (id int primary key, v text); insert into t values (1, 'one'), (2, null)")
        .await
        .unwrap();
    let rows = c.simple_query("select id, v from t order by id").await.unwrap();
    let data_rows = rows.iter().filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))).count();
    assert_eq!(data_rows, 2);
    // Unnamed statements: Parse, Bind, Describe, Execute, Sync in one go.
    let rows = c.query_typed("select id, v from t where id >= $1 order by id", &[(&1i32, Type::INT4)]).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get::<_, Option<&str>>(1), Some("one"));
    assert_eq!(rows[1].get::<_, Option<&str>>(1), None);
    let big = c.query_typed("select g, repeat('x', 100) from generate_series(1, 100000) g", &[]).await.unwrap();
    assert_eq!(big.len(), 100000);
    assert_eq!(big[99999].get::<_, i32>(0), 100000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_pass_through_and_the_session_goes_on() {
    let db = unique_db("errors");
    let proxy = start_proxy(&db, "").await;
    let c = proxy.connect().await;
    let e = c.simple_query("select * from no_such_table").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42P01");
    let e = c.query_typed("select 1/0", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "22012");
    let v: i32 = c.query_typed("select 7", &[]).await.unwrap()[0].get(0);
    assert_eq!(v, 7);
    // A failed transaction block stays failed until the client ends it.
    c.batch_execute("begin").await.unwrap();
    assert!(c.batch_execute("select 1/0").await.is_err());
    let e = c.batch_execute("select 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), "25P02");
    c.batch_execute("rollback").await.unwrap();
    let v: i32 = c.query_typed("select 8", &[]).await.unwrap()[0].get(0);
    assert_eq!(v, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_of_many_interleaving_clients_stay_apart() {
    let db = unique_db("interleave");
    let proxy = Arc::new(start_proxy(&db, "[pool]\nsize = 3").await);
    proxy.connect().await.batch_execute("create table t (client int, n int)").await.unwrap();
    let mut tasks = vec![];
    for client in 0..20i32 {
        let proxy = proxy.clone();
        tasks.push(tokio::spawn(async move {
            let c = proxy.connect().await;
            for n in 0..20i32 {
                c.batch_execute("begin").await.unwrap();
                c.query_typed("insert into t values ($1, $2)", &[(&client, Type::INT4), (&n, Type::INT4)]).await.unwrap();
                let mine: i64 = c
                    .query_typed("select count(*) from t where client = $1", &[(&client, Type::INT4)])
                    .await
                    .unwrap()[0]
                    .get(0);
                assert_eq!(mine, i64::from(n) + 1, "client {client} sees its own uncommitted row");
                if n % 5 == 4 {
                    c.batch_execute("rollback").await.unwrap();
                    c.query_typed("insert into t values ($1, $2)", &[(&client, Type::INT4), (&n, Type::INT4)]).await.unwrap();
                } else {
                    c.batch_execute("commit").await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let c = proxy.connect().await;
    let per_client = c.query_typed("select client, count(*) from t group by client", &[]).await.unwrap();
    assert_eq!(per_client.len(), 20);
    for row in per_client {
        assert_eq!(row.get::<_, i64>(1), 20);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_share_a_pool_of_five() {
    let db = unique_db("two_hundred");
    let proxy = Arc::new(start_proxy(&db, "[pool]\nsize = 5").await);
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = vec![];
    for _ in 0..200 {
        let (proxy, done) = (proxy.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let c = proxy.connect().await;
            for _ in 0..3 {
                c.simple_query("select pg_sleep(0.005)").await.unwrap();
            }
            done.fetch_add(1, Ordering::Relaxed);
        }));
    }
    let watch_db = db.clone();
    let most = tokio::task::spawn_blocking(move || {
        let mut most = 0;
        for _ in 0..20 {
            most = most.max(backends(&watch_db, ""));
        }
        most
    });
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(done.load(Ordering::Relaxed), 200);
    let most = most.await.unwrap();
    assert!(most <= 5, "the server saw {most} connections for a pool of 5");
    assert!(backends(&db, "") <= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_waiting_past_query_wait_timeout_gets_an_error_and_can_retry() {
    let db = unique_db("wait_timeout");
    let proxy = start_proxy(&db, "[pool]\nsize = 1\nquery_wait_timeout = \"300ms\"").await;
    let holder = proxy.connect().await;
    holder.batch_execute("begin; select 1").await.unwrap();
    let waiter = proxy.connect().await;
    let start = std::time::Instant::now();
    let e = waiter.simple_query("select 2").await.unwrap_err();
    assert_eq!(sqlstate(&e), "57014");
    assert!(start.elapsed() >= Duration::from_millis(250), "waited {:?}", start.elapsed());
    // Extended protocol is answered the same way.
    let e = waiter.query_typed("select $1::int", &[(&3i32, Type::INT4)]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "57014");
    holder.batch_execute("commit").await.unwrap();
    let v: i32 = waiter.query_typed("select $1::int", &[(&4i32, Type::INT4)]).await.unwrap()[0].get(0);
    assert_eq!(v, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_beyond_max_wait_clients_are_rejected_at_once() {
    let db = unique_db("max_wait");
    let proxy = Arc::new(start_proxy(&db, "[pool]\nsize = 1\nmax_wait_clients = 1\nquery_wait_timeout = \"10s\"").await);
    let holder = proxy.connect().await;
    holder.batch_execute("begin; select 1").await.unwrap();
    let queued = {
        let proxy = proxy.clone();
        tokio::spawn(async move { proxy.connect().await.simple_query("select 1").await.map(|_| ()) })
    };
    let pool = proxy.sluice.shared().pools.all();
    let pool = pool[0].1.clone();
    assert!(eventually(Duration::from_secs(5), || pool.state().waiting == 1).await);
    let third = proxy.connect().await;
    let start = std::time::Instant::now();
    let e = third.simple_query("select 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), "53300");
    assert!(start.elapsed() < Duration::from_secs(2));
    holder.batch_execute("commit").await.unwrap();
    queued.await.unwrap().unwrap();
    third.simple_query("select 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_mid_transaction_leaves_no_transaction_open() {
    let db = unique_db("killed_client");
    let proxy = start_proxy(&db, "[pool]\nsize = 2").await;
    let setup = proxy.connect().await;
    setup.batch_execute("create table t (id int primary key, v int); insert into t values (1, 0)").await.unwrap();
    {
        let (client, conn) =
            tokio_postgres::connect(&proxy.conn_str("postgres", ""), tokio_postgres::NoTls).await.unwrap();
        let task = tokio::spawn(conn);
        client.batch_execute("begin; update t set v = 1 where id = 1").await.unwrap();
        assert_eq!(backends(&db, "idle in transaction"), 1);
        task.abort(); // the socket closes without Terminate
    }
    assert!(
        eventually(Duration::from_secs(10), || backends(&db, "idle in transaction") == 0).await,
        "a transaction was left open on the server"
    );
    // The row lock is gone: another client updates the row at once.
    let other = proxy.connect().await;
    other.batch_execute("set lock_timeout = '2s'").await.unwrap();
    other.batch_execute("update t set v = 2 where id = 1").await.unwrap();
    let v: i32 = other.query_typed("select v from t where id = 1", &[]).await.unwrap()[0].get(0);
    assert_eq!(v, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_idle_in_a_transaction_past_the_timeout_is_disconnected_and_rolled_back() {
    let db = unique_db("idle_txn");
    let proxy = start_proxy(&db, "[pool]\nidle_transaction_timeout = \"300ms\"").await;
    let setup = proxy.connect().await;
    setup.batch_execute("create table t (id int)").await.unwrap();
    let c = proxy.connect().await;
    c.batch_execute("begin; insert into t values (1)").await.unwrap();
    assert!(eventually(Duration::from_secs(5), || c.is_closed()).await, "client not disconnected");
    let n: i64 = setup.query_typed("select count(*) from t", &[]).await.unwrap()[0].get(0);
    assert_eq!(n, 0, "the idle transaction was rolled back");
    assert!(eventually(Duration::from_secs(5), || backends(&db, "idle in transaction") == 0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_parameters_follow_each_client_and_do_not_leak() {
    let db = unique_db("params");
    let proxy = Arc::new(start_proxy(&db, "[pool]\nsize = 2").await);
    on_primary(&format!("\\c {db}\ncreate schema s1; create schema s2;"));
    let mut tasks = vec![];
    for i in 0..6 {
        let proxy = proxy.clone();
        tasks.push(tokio::spawn(async move {
            let (app, tz, schema) = (format!("client{i}"), ["UTC", "Europe/Paris", "Asia/Tokyo"][i % 3], ["s1", "s2"][i % 2]);
            let extra = format!("application_name={app} options='-c TimeZone={tz} -c search_path={schema}'");
            let c = proxy.connect_with("postgres", &extra).await.unwrap();
            for round in 0..15 {
                let rows = c
                    .query_typed(
                        "select current_setting('application_name'), current_setting('TimeZone'), current_setting('search_path')",
                        &[],
                    )
                    .await
                    .unwrap();
                let row = &rows[0];
                let expected_app = if round >= 5 { format!("changed{i}") } else { app.clone() };
                assert_eq!(row.get::<_, String>(0), expected_app);
                assert_eq!(row.get::<_, String>(1), tz);
                assert_eq!(row.get::<_, String>(2), schema);
                if round == 4 {
                    c.batch_execute(&format!("set application_name = 'changed{i}'")).await.unwrap();
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let plain = proxy.connect().await;
    let rows = plain.query_typed("select current_setting('application_name'), current_setting('search_path')", &[]).await.unwrap();
    let row = &rows[0];
    assert_eq!(row.get::<_, String>(0), "");
    assert_eq!(row.get::<_, String>(1), "\"$user\", public");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_startup_setting_is_refused_like_postgres_refuses_it() {
    let db = unique_db("bad_setting");
    let proxy = start_proxy(&db, "").await;
    let e = proxy.connect_with("postgres", "options='-c TimeZone=Mars/Olympus'").await.unwrap_err();
    assert_eq!(sqlstate(&e), "22023");
    proxy.connect().await.simple_query("select 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_query_of_that_client_only() {
    let db = unique_db("cancel");
    let proxy = start_proxy(&db, "[pool]\nsize = 2").await;
    let c = proxy.connect().await;
    let other = proxy.connect().await;
    let token = c.cancel_token();
    let slow = tokio::spawn(async move {
        let r = c.simple_query("select pg_sleep(20)").await;
        (r.map(|_| ()), c)
    });
    assert!(eventually(Duration::from_secs(5), || backends(&db, "active") >= 1).await);
    let other_slow = tokio::spawn(async move { other.simple_query("select pg_sleep(0.5), 1").await.map(|_| ()) });
    let start = std::time::Instant::now();
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let (r, c) = slow.await.unwrap();
    assert_eq!(sqlstate(&r.unwrap_err()), "57014");
    assert!(start.elapsed() < Duration::from_secs(5));
    other_slow.await.unwrap().expect("the other client's query was not cancelled");
    c.simple_query("select 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_size_opens_connections_and_idle_ones_close_after_the_idle_timeout() {
    let db = unique_db("upkeep");
    let proxy = start_proxy(&db, "[pool]\nmin_size = 2\nsize = 4").await;
    proxy.connect().await.simple_query("select 1").await.unwrap();
    assert!(eventually(Duration::from_secs(5), || backends(&db, "") == 2).await, "min_size not reached");
    drop(proxy);

    let db = unique_db("idle_close");
    let proxy = start_proxy(&db, "[pool]\nserver_idle_timeout = \"1s\"").await;
    let c = proxy.connect().await;
    c.simple_query("select 1").await.unwrap();
    assert_eq!(backends(&db, ""), 1);
    assert!(eventually(Duration::from_secs(6), || backends(&db, "") == 0).await, "idle connection kept");
    c.simple_query("select 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_prepared_statements_follow_clients_across_server_connections() {
    let db = unique_db("prepared");
    let proxy = Arc::new(start_proxy(&db, "[pool]\nsize = 2\nmax_prepared_statements = 3").await);
    proxy.connect().await.batch_execute("create table t (client int, n int)").await.unwrap();
    let mut tasks = vec![];
    for client in 0..30i32 {
        let proxy = proxy.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = proxy.connect().await;
            // tokio-postgres prepares every statement under a name (s0, s1, ...): the same names
            // with different texts in every client.
            let insert = c.prepare("insert into t values ($1, $2)").await.unwrap();
            let count = c.prepare("select count(*) from t where client = $1").await.unwrap();
            let own = c.prepare(&format!("select $1::int + {client}")).await.unwrap();
            for n in 0..10i32 {
                c.execute(&insert, &[&client, &n]).await.unwrap();
                let v: i32 = c.query_one(&own, &[&n]).await.unwrap().get(0);
                assert_eq!(v, n + client);
                let k: i64 = c.query_one(&count, &[&client]).await.unwrap().get(0);
                assert_eq!(k, i64::from(n) + 1);
                // Statements prepared on the fly by query() with parameters.
                let rows = c.query("select client, n from t where client = $1 and n = $2", &[&client, &n]).await.unwrap();
                assert_eq!(rows.len(), 1);
            }
            // Inside a transaction, and after closing a statement.
            let tx = c.transaction().await.unwrap();
            tx.execute(&insert, &[&client, &100]).await.unwrap();
            tx.rollback().await.unwrap();
            drop(own);
            let k: i64 = c.query_one(&count, &[&client]).await.unwrap().get(0);
            assert_eq!(k, 10);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(backends(&db, "") <= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_in_a_pipeline_of_prepared_statements_skips_to_sync_as_postgres_does() {
    let db = unique_db("pipeline_error");
    let proxy = start_proxy(&db, "[pool]\nsize = 1").await;
    let c = proxy.connect().await;
    let ok = c.prepare("select $1::int").await.unwrap();
    let fails = c.prepare("select 1 / $1::int").await.unwrap();
    // tokio-postgres pipelines these when polled together.
    let (a, b, d) = tokio::join!(c.query_one(&ok, &[&1i32]), c.query_one(&fails, &[&0i32]), c.query_one(&ok, &[&3i32]));
    assert_eq!(a.unwrap().get::<_, i32>(0), 1);
    assert_eq!(sqlstate(&b.unwrap_err()), "22012");
    assert_eq!(d.unwrap().get::<_, i32>(0), 3);
    let other = proxy.connect().await;
    let again = other.prepare("select $1::int").await.unwrap();
    assert_eq!(other.query_one(&again, &[&5i32]).await.unwrap().get::<_, i32>(0), 5);
}


#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_and_reset_follow_the_client_in_transaction_mode_and_stay_its_own() {
    let db = unique_db("set_tracking");
    let proxy = Arc::new(start_proxy(&db, "[pool]\nsize = 2").await);
    on_primary(&format!("\\c {db}\ncreate schema s1; create schema s2;"));
    let mut tasks = vec![];
    for i in 0..8 {
        let proxy = proxy.clone();
        tasks.push(tokio::spawn(async move {
            let c = proxy.connect_with("postgres", "options='-c search_path=s1'").await.unwrap();
            let timeout = format!("{}s", 10 + i);
            c.batch_execute(&format!("SET statement_timeout = '{timeout}'; SET myapp.tenant TO 't{i}'")).await.unwrap();
            if i % 2 == 0 {
                c.batch_execute("SET search_path TO s2").await.unwrap();
            }
            for _ in 0..10 {
                assert_eq!(setting(&c, "statement_timeout").await, timeout);
                assert_eq!(setting(&c, "myapp.tenant").await, format!("t{i}"));
                let path = if i % 2 == 0 { "s2" } else { "s1" };
                assert_eq!(setting(&c, "search_path").await, path);
                tokio::task::yield_now().await;
            }
            // Rolled back with its transaction: does not hold.
            c.batch_execute("BEGIN").await.unwrap();
            c.batch_execute("SET work_mem = '7MB'").await.unwrap();
            c.batch_execute("ROLLBACK").await.unwrap();
            // Committed with its transaction: holds.
            c.batch_execute("BEGIN").await.unwrap();
            c.batch_execute("SET lock_timeout = '3s'").await.unwrap();
            c.batch_execute("COMMIT").await.unwrap();
            // A failing SET does not hold.
            assert!(c.batch_execute("SET work_mem = 'lots'").await.is_err());
            for _ in 0..5 {
                assert_ne!(setting(&c, "work_mem").await, "7MB");
                assert_eq!(setting(&c, "lock_timeout").await, "3s");
                tokio::task::yield_now().await;
            }
            // SET LOCAL stays in its transaction.
            c.batch_execute("BEGIN; SET LOCAL statement_timeout = '1min'; COMMIT").await.unwrap();
            assert_eq!(setting(&c, "statement_timeout").await, timeout);
            // RESET goes back to the startup value, RESET ALL to the session defaults.
            c.batch_execute("RESET search_path").await.unwrap();
            for _ in 0..5 {
                assert_eq!(setting(&c, "search_path").await, "s1");
            }
            c.batch_execute("RESET ALL").await.unwrap();
            for _ in 0..5 {
                assert_eq!(setting(&c, "myapp.tenant").await, "");
                assert_eq!(setting(&c, "statement_timeout").await, "0");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let fresh = proxy.connect().await;
    assert_eq!(setting(&fresh, "statement_timeout").await, "0");
    assert_eq!(setting(&fresh, "myapp.tenant").await, "");
    assert_eq!(setting(&fresh, "search_path").await, "\"$user\", public");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_bound_features_pin_the_client_and_are_discarded_after_it() {
    let db = unique_db("pinning");
    let proxy = start_proxy(&db, "[pool]\nsize = 2").await;
    let c = proxy.connect().await;
    c.batch_execute("CREATE TEMP TABLE scratch (x int); INSERT INTO scratch VALUES (1)").await.unwrap();
    c.batch_execute("select pg_advisory_lock(42)").await.unwrap();
    let others: Vec<_> = futures_util::future::join_all((0..4).map(|_| proxy.connect())).await;
    for _ in 0..5 {
        for o in &others {
            o.simple_query("select 1").await.unwrap();
        }
        // The temporary table is still there: the client kept its server connection.
        let n: i64 = c.query_typed("select count(*) from scratch", &[]).await.unwrap()[0].get(0);
        assert_eq!(n, 1);
    }
    drop(c);
    // After the pinned client leaves, its connection is discarded clean: no lock, no table.
    assert!(eventually(Duration::from_secs(5), || on_primary(&format!(
        "select count(*) from pg_locks l join pg_database d on d.oid = l.database where l.locktype = 'advisory' and d.datname = '{db}'"
    )) == "0").await, "advisory lock still held");
    for o in &others {
        let e = o.query_typed("select count(*) from scratch", &[]).await.unwrap_err();
        assert_eq!(sqlstate(&e), "42P01");
        assert!(o.query_typed("select pg_try_advisory_xact_lock(42)", &[]).await.unwrap()[0].get::<_, bool>(0));
    }
}
