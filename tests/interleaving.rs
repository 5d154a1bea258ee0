//! End-to-end: randomized workloads of many clients, interleaved over a transaction-mode pool of
//! 3, give operation by operation the results the same workloads give on Postgres directly.
//!
//! Each client works only on its own schema (`c<i>`, reached through its startup search_path)
//! and on a shared read-only table, so its results do not depend on how the clients interleave.
//! Every client gets a script from a seeded RNG (print: "interleaving seed"; rerun one with
//! `SLUICE_TEST_SEED=<seed>`): autocommit and explicit-transaction statements over the simple
//! protocol, unnamed extended queries, one-shot and long-lived named prepared statements (whose
//! texts are the same for every client, so sluice shares them between clients whose search_paths
//! differ), multi-statement simple queries, SET/RESET of reported and unreported and custom
//! settings followed by reads of them, SET LOCAL, savepoints, errors inside and outside
//! transactions, pipelines, COPY in (finished, failing, aborted with CopyFail) and COPY out in
//! text, CSV and binary. The scripts run once through sluice, all clients at once, and once
//! directly against a second database set up identically, and every recorded result (rows as
//! text, row counts, copied bytes, or SQLSTATE and message) must be equal.
//!
//! Environment: `SLUICE_TEST_SEED` (the seed), `SLUICE_TEST_CLIENTS` (24), `SLUICE_TEST_OPS`
//! (40 steps per client, a transaction counting as one), `SLUICE_TEST_CONTEXT` (steps shown
//! before a difference, 3). The tests at the end of this file are the bugs it found, each reduced
//! to a minimal repro.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage, Statement};

/// A parameter value.
#[derive(Clone, Debug)]
enum P {
    Int(i32),
    Text(Option<String>),
}

impl P {
    fn sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            P::Int(v) => v,
            P::Text(v) => v,
        }
    }

    fn ty(&self) -> Type {
        match self {
            P::Int(_) => Type::INT4,
            P::Text(_) => Type::TEXT,
        }
    }
}

/// The long-lived named prepared statements, the same text for every client (each client prepares
/// them all when it connects, and again one at a time after an `Unprepare(k)`).
const PREPARED: &[&str] = &[
    "select id::text, v, n::text from t where id = $1::int",
    "insert into t (id, v) values ($1::int, $2::text)",
    "select count(*)::text, coalesce(sum(n), 0)::text, string_agg(id::text, ',' order by id) from t",
    "select label from public.ref where k = $1::int",
    "select ($1::int / $2::int)::text",
    "update t set n = n + $2::int where id = $1::int returning n::text",
    "select current_setting('application_name'), current_setting('myapp.x', true), \
     timestamptz '2024-03-05 13:14:15+00'::text",
];

/// One step of a client's script.
#[derive(Clone, Debug)]
enum Op {
    /// A simple-protocol query (possibly several statements).
    Simple(String),
    /// An unnamed extended-protocol query (`query_typed`).
    Typed(String, Vec<P>),
    /// A one-shot named statement: prepared, executed, closed (`client.query(&str, ..)`).
    Named(String, Vec<P>),
    /// Executes the client's long-lived statement `PREPARED[k]`.
    Prepared(usize, Vec<P>),
    /// Drops (closes) the client's statement `k` and prepares it again.
    Unprepare(usize),
    /// Typed and Prepared steps sent back to back before any answer is read.
    Pipeline(Vec<Op>),
    /// COPY FROM STDIN of these chunks; `abort` drops the sink instead of finishing (CopyFail).
    CopyIn { sql: String, chunks: Vec<String>, abort: bool },
    /// COPY TO STDOUT.
    CopyOut(String),
}

fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Generates one client's script.
struct Gen {
    rng: StdRng,
    me: usize,
    ops: Vec<Op>,
}

impl Gen {
    fn id(&mut self) -> i32 {
        self.rng.gen_range(1..=40)
    }

    fn pick<T: Clone>(&mut self, from: &[T]) -> T {
        from[self.rng.gen_range(0..from.len())].clone()
    }

    /// A label, with quotes and non-ASCII now and then (no tabs, newlines or backslashes, so it
    /// can go in COPY text as is).
    fn label(&mut self) -> String {
        let base = self.pick(&["a", "b b", "it's", "ünï", "", "x,y", "\"q\"", "NULL"]);
        format!("{base}{}", self.rng.gen_range(0..5))
    }

    fn write(&mut self) -> Op {
        let id = self.id();
        let l = self.label();
        let delta = self.rng.gen_range(-3..=5);
        match self.rng.gen_range(0..9) {
            0 => Op::Simple(format!("insert into t (id, v) values ({id}, {})", lit(&l))),
            1 => Op::Typed("insert into t (id, v) values ($1, $2)".into(), vec![P::Int(id), P::Text(Some(l))]),
            2 => Op::Prepared(1, vec![P::Int(id), P::Text(if l.is_empty() { None } else { Some(l) })]),
            3 => Op::Named(
                "insert into t (id, v) values ($1, $2) returning id::text, v".into(),
                vec![P::Int(id), P::Text(Some(l))],
            ),
            4 => Op::Typed(
                "update t set n = n + $2 where id = $1 returning n::text".into(),
                vec![P::Int(id), P::Int(delta)],
            ),
            5 => Op::Prepared(5, vec![P::Int(id), P::Int(delta)]),
            6 => Op::Simple(format!("update t set v = {} where id % 3 = {}", lit(&l), id % 3)),
            7 => Op::Typed("delete from t where id = $1 returning id::text, v".into(), vec![P::Int(id)]),
            _ => Op::Simple(format!("insert into log (msg) values ({}) returning seq, msg", lit(&l))),
        }
    }

    fn read(&mut self) -> Op {
        let (a, b) = (self.id(), self.id());
        match self.rng.gen_range(0..8) {
            0 => Op::Simple(format!("select id, v, n from t where id between {a} and {b} order by id")),
            1 => Op::Typed(
                "select id::text, v, n::text from t where id between $1 and $2 order by id".into(),
                vec![P::Int(a.min(b)), P::Int(a.max(b))],
            ),
            2 => Op::Prepared(0, vec![P::Int(a)]),
            3 => Op::Prepared(2, vec![]),
            4 => Op::Prepared(3, vec![P::Int(self.rng.gen_range(0..120))]),
            5 => {
                let l = self.label();
                Op::Named("select count(*)::text from t where v = $1".into(), vec![P::Text(Some(l))])
            }
            6 => Op::Typed("select seq::text, msg from log order by seq desc limit 3".into(), vec![]),
            _ => Op::Prepared(4, vec![P::Int(a), P::Int(self.rng.gen_range(0..3))]),
        }
    }

    fn error(&mut self) -> Op {
        let id = self.id();
        match self.rng.gen_range(0..7) {
            0 => Op::Simple("select 1/0".into()),
            1 => Op::Typed("select (1 / $1::int)::text".into(), vec![P::Int(0)]),
            2 => Op::Prepared(4, vec![P::Int(id), P::Int(0)]),
            3 => Op::Simple(format!("insert into t (id, v) values ({id}, 'dup'), ({id}, 'dup')")),
            4 => Op::Simple("select * from no_such_table".into()),
            5 => Op::Typed("update t set n = -1 where id = $1".into(), vec![P::Int(id)]),
            _ => Op::Named("select 'abc'::int::text".into(), vec![]),
        }
    }

    fn settings_read(&mut self) -> Op {
        const ALL: &str = "select current_setting('application_name'), current_setting('search_path'), \
             current_setting('statement_timeout'), current_setting('work_mem'), \
             current_setting('myapp.x', true), current_setting('DateStyle'), current_setting('TimeZone'), \
             current_setting('IntervalStyle'), timestamptz '2024-03-05 13:14:15+00'::text, \
             date '2024-03-05'::text, interval '1 day 02:03:04'::text";
        match self.rng.gen_range(0..6) {
            0 => Op::Simple(ALL.into()),
            1 => Op::Typed(ALL.into(), vec![]),
            2 => Op::Prepared(6, vec![]),
            3 => {
                let name = self.pick(&[
                    "application_name",
                    "search_path",
                    "statement_timeout",
                    "myapp.x",
                    "datestyle",
                    "timezone",
                ]);
                Op::Simple(format!("show {name}"))
            }
            4 => Op::Named("select current_setting('myapp.x', true), current_setting('work_mem')".into(), vec![]),
            _ => Op::Typed("select current_setting('search_path'), (select count(*) from t)::text".into(), vec![]),
        }
    }

    /// A session-level SET/RESET, alone in a simple query (the form sluice tracks).
    fn set(&mut self) -> Op {
        let me = self.me;
        let r = self.rng.gen_range(0..100);
        let sql = match self.rng.gen_range(0..16) {
            0 => format!("set application_name = 'app{me}_{r}'"),
            1 => format!("set session application_name to 'sess{me}_{r}'"),
            2 => format!("set search_path = c{me}, public"),
            3 => format!("set statement_timeout = '{}s'", 10 + r),
            4 => format!("set work_mem = '{}MB'", 1 + r),
            5 => format!("set myapp.x = 'v{me}_{r}'"),
            6 => "set myapp.x to 'it''s'".into(),
            7 => format!("set datestyle = {}", self.pick(&["'SQL, DMY'", "'ISO, MDY'", "'German'", "'Postgres, YMD'"])),
            8 => format!("set time zone {}", self.pick(&["'Asia/Tokyo'", "'UTC'", "'America/New_York'", "default"])),
            9 => format!("set timezone = {}", self.pick(&["'Europe/Paris'", "'Australia/Adelaide'"])),
            10 => format!(
                "set intervalstyle = {}",
                self.pick(&["'postgres_verbose'", "'iso_8601'", "'sql_standard'", "'postgres'"])
            ),
            11 => format!(
                "set {} to default",
                self.pick(&["statement_timeout", "work_mem", "datestyle", "application_name"])
            ),
            12..=14 => format!(
                "reset {}",
                self.pick(&[
                    "application_name",
                    "search_path",
                    "statement_timeout",
                    "work_mem",
                    "myapp.x",
                    "datestyle",
                    "timezone",
                    "intervalstyle"
                ])
            ),
            _ => {
                // RESET ALL, after which sluice sets the client's startup parameters again.
                if r < 30 {
                    "reset all".into()
                } else {
                    format!("set application_name = 'late{me}_{r}'")
                }
            }
        };
        Op::Simple(sql)
    }

    /// A SET LOCAL (inside a transaction), over either protocol.
    fn set_local(&mut self) -> Op {
        let r = self.rng.gen_range(0..100);
        let sql = match self.rng.gen_range(0..5) {
            0 => format!("set local application_name = 'local{r}'"),
            1 => format!("set local myapp.x = 'local{r}'"),
            2 => "set local timezone = 'Pacific/Auckland'".into(),
            3 => "set local datestyle = 'SQL, MDY'".into(),
            _ => return Op::Typed(format!("select set_config('myapp.x', 'cfg{r}', true)"), vec![]),
        };
        if self.rng.gen_bool(0.5) {
            Op::Simple(sql)
        } else {
            Op::Typed(sql, vec![])
        }
    }

    fn pipeline(&mut self) -> Op {
        let n = self.rng.gen_range(2..=6);
        let mut steps: Vec<Op> = Vec::new();
        while steps.len() < n {
            let op = match self.rng.gen_range(0..10) {
                0..=3 => self.write(),
                4..=7 => self.read(),
                8 => self.error(),
                _ => self.settings_read(),
            };
            if matches!(op, Op::Typed(..) | Op::Prepared(..)) {
                steps.push(op);
            }
        }
        Op::Pipeline(steps)
    }

    fn copy_in(&mut self) -> Op {
        let rows = self.rng.gen_range(1..=6);
        let csv = self.rng.gen_bool(0.3);
        let mut chunks = Vec::new();
        for _ in 0..self.rng.gen_range(1..=3) {
            let mut chunk = String::new();
            for _ in 0..rows {
                let id = self.rng.gen_range(41..=200);
                let l = self.label().replace('"', "");
                if self.rng.gen_ratio(1, 25) {
                    chunk.push_str("oops\tbad\n"); // 22P02 (or a CSV field count error)
                } else if csv {
                    chunk.push_str(&format!("{id},\"{l}\"\n"));
                } else {
                    chunk.push_str(&format!("{id}\t{l}\n"));
                }
            }
            chunks.push(chunk);
        }
        let sql = if csv { "copy t (id, v) from stdin with (format csv)" } else { "copy t (id, v) from stdin" };
        Op::CopyIn { sql: sql.into(), chunks, abort: self.rng.gen_ratio(1, 5) }
    }

    fn copy_out(&mut self) -> Op {
        let q = "select id, v, n, timestamptz '2024-03-05 13:14:15+00' + id * interval '1 hour' from t order by id";
        let fmt = self.pick(&["", " with (format csv, header)", " with (format binary)"]);
        Op::CopyOut(format!("copy ({q}) to stdout{fmt}"))
    }

    fn multi(&mut self) -> Op {
        let mut parts = Vec::new();
        // A query that opens a transaction block and fails leaves the block open and failed for
        // the steps after it; keep those blocks to parts that cannot fail.
        let block = self.rng.gen_ratio(1, 6);
        for _ in 0..self.rng.gen_range(2..=4) {
            let (id, l) = (self.id(), self.label());
            let kind = if block { self.rng.gen_range(1..4) } else { self.rng.gen_range(0..6) };
            parts.push(match kind {
                0 => format!("insert into t (id, v) values ({id}, {})", lit(&l)),
                1 => format!("update t set n = n + 1 where id <= {id}"),
                2 => format!("select id, v, n from t where id >= {id} order by id limit 4"),
                3 => format!("insert into log (msg) values ({}) returning seq", lit(&l)),
                4 if self.rng.gen_ratio(1, 3) => "select 1/0".into(),
                _ => "select count(*), max(id) from t".into(),
            });
        }
        if block {
            parts.insert(0, "begin".into());
            parts.push(self.pick(&["commit", "rollback"]).into());
        }
        Op::Simple(parts.join("; "))
    }

    fn transaction(&mut self) {
        let begin = match self.rng.gen_range(0..5) {
            0 => Op::Typed("begin".into(), vec![]),
            1 => Op::Simple("start transaction isolation level repeatable read".into()),
            2 => Op::Simple("begin read write".into()),
            _ => Op::Simple("begin".into()),
        };
        self.ops.push(begin);
        for _ in 0..self.rng.gen_range(2..=6) {
            match self.rng.gen_range(0..100) {
                0..=29 => {
                    let op = self.write();
                    self.ops.push(op)
                }
                30..=44 => {
                    let op = self.read();
                    self.ops.push(op)
                }
                45..=54 => {
                    let op = self.set_local();
                    self.ops.push(op);
                    let op = self.settings_read();
                    self.ops.push(op);
                }
                55..=62 => {
                    // A session SET inside the transaction: holds if committed, not if rolled back.
                    let op = self.set();
                    self.ops.push(op);
                    let op = self.settings_read();
                    self.ops.push(op);
                }
                63..=70 => {
                    let op = self.error();
                    self.ops.push(op)
                }
                71..=80 => {
                    self.ops.push(Op::Simple("savepoint sp".into()));
                    for _ in 0..self.rng.gen_range(1..=2) {
                        // Session SETs made after the savepoint are undone by ROLLBACK TO it, those
                        // made before it are kept.
                        let op = match self.rng.gen_range(0..4) {
                            0 => self.error(),
                            1 => self.set(),
                            2 => self.set_local(),
                            _ => self.write(),
                        };
                        self.ops.push(op);
                    }
                    let end = self.pick(&["rollback to savepoint sp", "release savepoint sp"]);
                    self.ops.push(Op::Simple(end.into()));
                    let op = self.settings_read();
                    self.ops.push(op);
                }
                81..=89 => {
                    let op = self.pipeline();
                    self.ops.push(op)
                }
                90..=94 => {
                    let op = self.copy_in();
                    self.ops.push(op)
                }
                _ => {
                    let op = self.copy_out();
                    self.ops.push(op)
                }
            }
        }
        let end = match self.rng.gen_range(0..10) {
            0 => Op::Typed("commit".into(), vec![]),
            1 => Op::Typed("rollback".into(), vec![]),
            2 => Op::Simple("end".into()),
            3..=5 => Op::Simple("rollback".into()),
            _ => Op::Simple("commit".into()),
        };
        self.ops.push(end);
    }

    fn script(seed: u64, me: usize, len: usize) -> Vec<Op> {
        let rng = StdRng::seed_from_u64(seed ^ (me as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut g = Gen { rng, me, ops: Vec::new() };
        for _ in 0..len {
            match g.rng.gen_range(0..100) {
                0..=13 => {
                    let op = g.write();
                    g.ops.push(op)
                }
                14..=23 => {
                    let op = g.read();
                    g.ops.push(op)
                }
                24..=39 => g.transaction(),
                40..=51 => {
                    let op = g.set();
                    g.ops.push(op);
                    if g.rng.gen_bool(0.6) {
                        let op = g.settings_read();
                        g.ops.push(op);
                    }
                }
                52..=59 => {
                    let op = g.settings_read();
                    g.ops.push(op)
                }
                60..=67 => {
                    let op = g.multi();
                    g.ops.push(op)
                }
                68..=75 => {
                    let op = g.error();
                    g.ops.push(op)
                }
                76..=83 => {
                    let op = g.pipeline();
                    g.ops.push(op)
                }
                84..=88 => {
                    let op = g.copy_in();
                    g.ops.push(op)
                }
                89..=92 => {
                    let op = g.copy_out();
                    g.ops.push(op)
                }
                93..=95 => {
                    let k = g.rng.gen_range(0..PREPARED.len());
                    g.ops.push(Op::Unprepare(k))
                }
                96..=97 => {
                    // A search_path without the client's schema: its tables are not found, its
                    // prepared statements are re-analyzed and fail, until the path is back.
                    g.ops.push(Op::Simple("set search_path = public".into()));
                    let op = g.read();
                    g.ops.push(op);
                    g.ops.push(Op::Prepared(0, vec![P::Int(1)]));
                    g.ops.push(Op::Simple(if g.rng.gen_bool(0.5) {
                        "reset search_path".into()
                    } else {
                        format!("set search_path = c{me}")
                    }));
                }
                _ => g.ops.push(Op::Simple("select pg_sleep(0.002)".into())),
            }
        }
        // Everything the client's session and tables ended up with.
        g.ops.push(Op::Simple("rollback".into())); // a no-op (with a warning) unless a COPY abort left one
        g.ops.push(Op::Typed("select id::text, v, n::text from t order by id".into(), vec![]));
        g.ops.push(Op::Typed("select seq::text, msg from log order by seq".into(), vec![]));
        g.ops.push(Op::Typed(
            "select current_setting('application_name'), current_setting('search_path'), \
             current_setting('statement_timeout'), current_setting('work_mem'), current_setting('myapp.x', true), \
             current_setting('DateStyle'), current_setting('TimeZone'), current_setting('IntervalStyle')"
                .into(),
            vec![],
        ));
        g.ops
    }
}

/// Startup options of client `me` (some start with a custom setting or a DateStyle/TimeZone).
fn startup(me: usize) -> String {
    let mut opts = format!("-c search_path=c{me}");
    if me.is_multiple_of(3) {
        opts += &format!(" -c myapp.x=init{me}");
    }
    if me % 4 == 1 {
        opts += " -c DateStyle=SQL,DMY";
    }
    if me % 5 == 2 {
        opts += " -c TimeZone=Asia/Kolkata";
    }
    format!("application_name=cli{me} options='{opts}'")
}

fn fmt_err(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("ERROR {} {}", db.code().code(), db.message()),
        None => format!("CLIENT ERROR {e}"),
    }
}

fn fmt_rows(rows: &[tokio_postgres::Row]) -> String {
    let mut out = String::from("rows");
    for r in rows {
        out.push_str(" [");
        for i in 0..r.len() {
            match r.try_get::<_, Option<String>>(i) {
                Ok(Some(v)) => out.push_str(&format!("{v:?},")),
                Ok(None) => out.push_str("NULL,"),
                Err(e) => out.push_str(&format!("<{e}>,")),
            }
        }
        out.push(']');
    }
    out
}

async fn simple(c: &Client, sql: &str) -> String {
    match c.simple_query(sql).await {
        Err(e) => fmt_err(&e),
        Ok(msgs) => {
            let mut out = String::new();
            for m in msgs {
                match m {
                    SimpleQueryMessage::Row(r) => {
                        out.push_str(" [");
                        for i in 0..r.len() {
                            out.push_str(&format!("{:?},", r.get(i)));
                        }
                        out.push(']');
                    }
                    SimpleQueryMessage::CommandComplete(n) => out.push_str(&format!(" complete {n};")),
                    _ => {}
                }
            }
            out
        }
    }
}

/// Runs a single (non-pipeline, non-COPY) step; `stmt` is the prepared statement for `Prepared`.
async fn single(c: &Client, op: &Op, stmt: Option<Result<Statement, String>>) -> String {
    match op {
        Op::Simple(sql) => simple(c, sql).await,
        Op::Typed(sql, ps) => {
            let params: Vec<(&(dyn ToSql + Sync), Type)> = ps.iter().map(|p| (p.sql(), p.ty())).collect();
            match c.query_typed(sql, &params).await {
                Ok(rows) => fmt_rows(&rows),
                Err(e) => fmt_err(&e),
            }
        }
        Op::Named(sql, ps) => {
            let params: Vec<&(dyn ToSql + Sync)> = ps.iter().map(|p| p.sql()).collect();
            match c.query(sql.as_str(), &params).await {
                Ok(rows) => fmt_rows(&rows),
                Err(e) => fmt_err(&e),
            }
        }
        Op::Prepared(_, ps) => {
            let stmt = match stmt.expect("a prepared statement") {
                Ok(s) => s,
                Err(e) => return format!("prepare: {e}"),
            };
            let params: Vec<&(dyn ToSql + Sync)> = ps.iter().map(|p| p.sql()).collect();
            if stmt.columns().is_empty() {
                match c.execute(&stmt, &params).await {
                    Ok(n) => format!("count {n}"),
                    Err(e) => fmt_err(&e),
                }
            } else {
                match c.query(&stmt, &params).await {
                    Ok(rows) => fmt_rows(&rows),
                    Err(e) => fmt_err(&e),
                }
            }
        }
        other => unreachable!("not a single step: {other:?}"),
    }
}

/// The client's statement `k`, prepared now if it is not yet (a failure is recorded, not kept).
async fn statement(c: &Client, prepared: &mut HashMap<usize, Statement>, k: usize) -> Result<Statement, String> {
    if let Some(s) = prepared.get(&k) {
        return Ok(s.clone());
    }
    match c.prepare(PREPARED[k]).await {
        Ok(s) => {
            prepared.insert(k, s.clone());
            Ok(s)
        }
        Err(e) => Err(fmt_err(&e)),
    }
}

/// Runs one step and returns what it produced.
async fn run(c: &Client, prepared: &mut HashMap<usize, Statement>, op: &Op) -> String {
    match op {
        Op::Prepared(k, _) => {
            let stmt = statement(c, prepared, *k).await;
            single(c, op, Some(stmt)).await
        }
        Op::Unprepare(k) => {
            prepared.remove(k); // the last reference: tokio-postgres sends Close
            match statement(c, prepared, *k).await {
                Ok(_) => "prepared again".into(),
                Err(e) => format!("prepare: {e}"),
            }
        }
        Op::Pipeline(steps) => {
            let mut stmts = Vec::new();
            for s in steps {
                stmts.push(match s {
                    Op::Prepared(k, _) => Some(statement(c, prepared, *k).await),
                    _ => None,
                });
            }
            // join_all polls in order, so the requests go out in this order before any answer.
            let futs = steps.iter().zip(stmts).map(|(s, st)| single(c, s, st));
            futures_util::future::join_all(futs).await.join(" | ")
        }
        Op::CopyIn { sql, chunks, abort } => {
            let sink = match c.copy_in::<_, bytes::Bytes>(sql.as_str()).await {
                Ok(s) => s,
                Err(e) => return fmt_err(&e),
            };
            let mut sink = Box::pin(sink);
            for chunk in chunks {
                if let Err(e) = sink.send(bytes::Bytes::from(chunk.clone())).await {
                    return format!("send: {}", fmt_err(&e));
                }
            }
            if *abort {
                drop(sink); // CopyFail
                "aborted".into()
            } else {
                match sink.as_mut().finish().await {
                    Ok(n) => format!("copied {n}"),
                    Err(e) => fmt_err(&e),
                }
            }
        }
        Op::CopyOut(sql) => match c.copy_out(sql.as_str()).await {
            Err(e) => fmt_err(&e),
            Ok(stream) => {
                let mut stream = Box::pin(stream);
                let mut bytes = Vec::new();
                while let Some(chunk) = stream.next().await {
                    match chunk {
                        Ok(b) => bytes.extend_from_slice(&b),
                        Err(e) => return format!("{} after {}", fmt_err(&e), bytes.escape_ascii()),
                    }
                }
                bytes.escape_ascii().to_string()
            }
        },
        _ => single(c, op, None).await,
    }
}

/// Runs every client's script at once against `addr`/`db` and returns each one's results.
async fn run_all(addr: SocketAddr, db: &str, scripts: &Arc<Vec<Vec<Op>>>) -> Vec<Vec<String>> {
    let mut tasks = Vec::new();
    for me in 0..scripts.len() {
        let (scripts, db) = (scripts.clone(), db.to_owned());
        tasks.push(tokio::spawn(async move {
            let c = connect_as(addr, &db, "postgres", &startup(me))
                .await
                .unwrap_or_else(|e| panic!("client {me} connecting to {addr}: {e}"));
            let mut prepared = HashMap::new();
            let mut out = Vec::new();
            for k in 0..PREPARED.len() {
                if let Err(e) = statement(&c, &mut prepared, k).await {
                    out.push(format!("preparing {k}: {e}"));
                }
            }
            for op in &scripts[me] {
                let r = tokio::time::timeout(Duration::from_secs(20), run(&c, &mut prepared, op))
                    .await
                    .unwrap_or_else(|_| format!("TIMED OUT after 20 s (client {me}, step {})", out.len()));
                let stuck = r.starts_with("TIMED OUT");
                out.push(r);
                if stuck {
                    break;
                }
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.push(t.await.expect("client task"));
    }
    all
}

/// Creates the clients' schemas and the shared read-only table in `db`, directly. The custom
/// setting `myapp.x` gets a database default so that it exists in every session: a placeholder
/// that one client's SET creates on a server connection cannot be removed from it again, so a
/// client that never set it would read '' through sluice where its own session reads NULL.
async fn set_up(db: &str, clients: usize) {
    let c = connect(cluster().primary.addr(), db).await;
    let mut sql = format!("alter database {db} set myapp.x = 'dbdefault';");
    sql += &String::from(
        "create table public.ref (k int primary key, label text not null); \
         insert into public.ref select g, 'ref-' || g || repeat('é', g % 4) from generate_series(0, 99) g;",
    );
    for i in 0..clients {
        sql += &format!(
            "create schema c{i}; \
             create table c{i}.t (id int primary key, v text, n int not null default 0 check (n >= 0)); \
             create table c{i}.log (seq serial primary key, msg text);"
        );
    }
    c.batch_execute(&sql).await.unwrap();
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_clients_get_the_results_they_get_on_postgres_directly() {
    let seed: u64 = match std::env::var("SLUICE_TEST_SEED") {
        Ok(s) => s.trim().parse().expect("SLUICE_TEST_SEED is a u64"),
        Err(_) => rand::random(),
    };
    let clients = env_usize("SLUICE_TEST_CLIENTS", 24);
    let ops = env_usize("SLUICE_TEST_OPS", 40);
    println!("interleaving seed: {seed} ({clients} clients x {ops} operations; rerun with SLUICE_TEST_SEED={seed})");
    let scripts: Arc<Vec<Vec<Op>>> = Arc::new((0..clients).map(|me| Gen::script(seed, me, ops)).collect());

    let pooled_db = unique_db("interleave_pooled");
    let direct_db = unique_db("interleave_direct");
    set_up(&pooled_db, clients).await;
    set_up(&direct_db, clients).await;
    let proxy = start_proxy(&pooled_db, "[pool]\nsize = 3\nmode = \"transaction\"").await;

    // Watch the server side while the clients run: never more than 3 connections.
    let running = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (running, db) = (running.clone(), pooled_db.clone());
        tokio::task::spawn_blocking(move || {
            let mut most = 0;
            while running.load(Ordering::Relaxed) {
                most = most.max(backends(&db, ""));
                std::thread::sleep(Duration::from_millis(50));
            }
            most
        })
    };
    let start = Instant::now();
    let pooled = run_all(proxy.addr, &pooled_db, &scripts).await;
    let pooled_time = start.elapsed();
    running.store(false, Ordering::Relaxed);
    let most = watcher.await.unwrap();

    let start = Instant::now();
    let direct = run_all(cluster().primary.addr(), &direct_db, &scripts).await;
    println!(
        "{} steps per run; through sluice {pooled_time:?}, directly {:?}; at most {most} server connections",
        scripts.iter().map(Vec::len).sum::<usize>(),
        start.elapsed()
    );

    let mut diffs = Vec::new();
    for me in 0..clients {
        let (p, d) = (&pooled[me], &direct[me]);
        if let Some(step) = (0..p.len().max(d.len())).find(|&i| p.get(i) != d.get(i)) {
            let context: Vec<String> = (step.saturating_sub(env_usize("SLUICE_TEST_CONTEXT", 3))..step)
                .map(|i| format!("    step {i}: {:?}\n      -> {}", scripts[me][i], d[i]))
                .collect();
            diffs.push(format!(
                "client {me} ({}), first difference at step {step} of {}:\n  previous steps:\n{}\n  step: {:?}\n  \
                 direct: {}\n  sluice: {}",
                startup(me),
                scripts[me].len(),
                context.join("\n"),
                scripts[me].get(step),
                d.get(step).map(String::as_str).unwrap_or("<none>"),
                p.get(step).map(String::as_str).unwrap_or("<none>"),
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "seed {seed}: {} of {clients} clients saw something other than on Postgres directly \
         (rerun with SLUICE_TEST_SEED={seed}):\n{}",
        diffs.len(),
        diffs.join("\n\n")
    );
    assert!(most <= 3, "seed {seed}: the server saw {most} connections for a pool of 3");
    // Nothing is left in a transaction on the pool's connections.
    assert!(
        eventually(Duration::from_secs(5), || server_activity(&pooled_db).iter().all(|a| a.state == "idle")).await,
        "seed {seed}: {:?}",
        server_activity(&pooled_db)
    );
}

// The sluice bugs the randomized test found, each reduced to a minimal repro.

/// A hand-driven protocol connection, for tags tokio-postgres does not show.
struct Raw {
    s: tokio::net::TcpStream,
    buf: Vec<u8>,
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn query(sql: &str) -> Vec<u8> {
    message(b'Q', &cstr(sql))
}

/// Parse of a statement without parameter types, then Sync.
fn parse_sync(name: &str, sql: &str) -> Vec<u8> {
    let mut body = cstr(name);
    body.extend(cstr(sql));
    body.extend_from_slice(&0u16.to_be_bytes());
    [message(b'P', &body), vec![b'S', 0, 0, 0, 4]].concat()
}

impl Raw {
    /// Logs in as `postgres` to `db` with extra startup parameters, up to the first ReadyForQuery.
    async fn login(addr: SocketAddr, db: &str, params: &[(&str, &str)]) -> Raw {
        use tokio::io::AsyncWriteExt;
        let mut r = Raw { s: tokio::net::TcpStream::connect(addr).await.unwrap(), buf: Vec::new() };
        let mut body = 196608u32.to_be_bytes().to_vec();
        for (k, v) in [("user", "postgres"), ("database", db)].iter().chain(params) {
            body.extend(cstr(k));
            body.extend(cstr(v));
        }
        body.push(0);
        let mut m = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        m.extend(body);
        r.s.write_all(&m).await.unwrap();
        r.exchange(&[]).await;
        r
    }

    /// Sends `bytes` and returns the answer up to ReadyForQuery as tags, CommandComplete with
    /// its tag and ErrorResponse with its SQLSTATE: e.g. `C(RESET) Z`.
    async fn exchange(&mut self, bytes: &[u8]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.s.write_all(bytes).await.unwrap();
        let mut out = Vec::new();
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() > len {
                    let m: Vec<u8> = self.buf.drain(..=len).collect();
                    let body = &m[5..];
                    out.push(match m[0] {
                        b'C' => format!("C({})", String::from_utf8_lossy(&body[..body.len() - 1])),
                        b'E' => {
                            let code = body.split(|b| *b == 0).find(|f| f.first() == Some(&b'C')).unwrap_or(b"C?");
                            format!("E({})", String::from_utf8_lossy(&code[1..]))
                        }
                        b'Z' => {
                            return {
                                out.push("Z".into());
                                out.join(" ")
                            }
                        }
                        t => (t as char).to_string(),
                    });
                    continue;
                }
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout(Duration::from_secs(5), self.s.read(&mut chunk))
                .await
                .unwrap_or_else(|_| panic!("no ReadyForQuery within 5 s; so far {out:?}"))
                .unwrap();
            assert!(n > 0, "connection closed; so far {out:?}");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_is_answered_with_one_reset_command_complete_as_postgres_answers_it() {
    let db = unique_db("reset_tags");
    let proxy = start_proxy(&db, "[pool]\nsize = 1").await;
    let startup = [("application_name", "orig"), ("DateStyle", "SQL, DMY")];
    let mut seen = Vec::new();
    for addr in [cluster().primary.addr(), proxy.addr] {
        let mut c = Raw::login(addr, &db, &startup).await;
        seen.push([
            c.exchange(&query("set application_name = 'x'")).await,
            c.exchange(&query("reset all")).await,
            c.exchange(&query("reset application_name")).await,
            c.exchange(&query("show application_name")).await,
        ]);
    }
    assert_eq!(seen[0], ["C(SET) S Z", "C(RESET) S Z", "C(RESET) Z", "T D C(SHOW) Z"], "Postgres itself");
    // sluice sets the startup values again after a RESET with statements of its own; their
    // CommandCompletes (once one per startup parameter after RESET ALL, and RESET answered as
    // "C(SET)") must not reach the client.
    assert_eq!(seen[1], seen[0], "through sluice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parse_in_a_failed_transaction_is_refused_as_postgres_refuses_it() {
    let db = unique_db("parse_failed_tx");
    let proxy = start_proxy(&db, "[pool]\nsize = 1").await;
    let mut seen = Vec::new();
    for addr in [cluster().primary.addr(), proxy.addr] {
        let mut c = Raw::login(addr, &db, &[]).await;
        seen.push([
            // Prepared once and closed: sluice keeps it on the server connection.
            c.exchange(&parse_sync("s0", "select 1")).await,
            c.exchange(&[message(b'C', &[b"S".as_slice(), &cstr("s0")].concat()), vec![b'S', 0, 0, 0, 4]].concat())
                .await,
            c.exchange(&query("begin")).await,
            c.exchange(&query("select 1/0")).await,
            // The same text again, inside the failed transaction.
            c.exchange(&parse_sync("s1", "select 1")).await,
            c.exchange(&query("rollback")).await,
        ]);
    }
    assert_eq!(seen[0], ["1 Z", "3 Z", "C(BEGIN) Z", "E(22012) Z", "E(25P02) Z", "C(ROLLBACK) Z"], "Postgres itself");
    // sluice once answered the fifth itself, "1 Z", as the server connection has the statement.
    // With tokio-postgres, whose copy_in prepares its statement, that turned a COPY in a failed
    // transaction into a started copy whose Bind failed, and the client's next query got
    // "unexpected message from server".
    assert_eq!(seen[1], seen[0], "through sluice");
}

/// Runs `steps` for client `a`, then a query on the same (only) server connection for client
/// `b`, then reads `setting` as each sees it; returns (a's value, b's value).
async fn setting_after(proxy: &Proxy, steps: &str, setting: &str) -> (String, String) {
    let a = proxy.connect().await;
    let b = proxy.connect().await;
    for step in steps.split(';') {
        let _ = a.simple_query(step).await; // each statement on its own, as a driver sends them
    }
    let from_b = common::setting(&b, setting).await;
    let from_a = common::setting(&a, setting).await;
    (from_a, from_b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_undone_by_rollback_to_savepoint_does_not_stick_to_the_client() {
    let db = unique_db("set_savepoint");
    let proxy = start_proxy(&db, "[pool]\nsize = 1").await;
    let (a, b) = setting_after(
        &proxy,
        "begin; savepoint sp; set work_mem = '21MB'; rollback to savepoint sp; commit",
        "work_mem",
    )
    .await;
    // On Postgres the SET is undone with its savepoint: both see the default.
    assert_eq!(b, "4MB", "the other client");
    assert_eq!(a, "4MB", "the client whose SET was rolled back (sluice once kept 21MB)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_in_a_transaction_that_recovered_at_a_savepoint_holds_for_its_client_only() {
    let db = unique_db("set_recovered");
    let proxy = start_proxy(&db, "[pool]\nsize = 1").await;
    let (a, b) = setting_after(
        &proxy,
        "begin; set statement_timeout = '103s'; savepoint sp; select 1/0; rollback to savepoint sp; commit",
        "statement_timeout",
    )
    .await;
    // On Postgres the transaction commits and the SET holds for its session only.
    assert_eq!(b, "0", "the other client must not see it (sluice once leaked 103s)");
    assert_eq!(a, "103s", "the client that set it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_used_twice_in_a_pipeline_of_a_failed_transaction_gets_25p02_both_times() {
    let db = unique_db("pipeline_failed_tx");
    // One prepared statement per server connection, so preparing `a` evicts `b` from the
    // server and sluice prepares `b` again lazily at its next use.
    let proxy = start_proxy(&db, "[pool]\nsize = 1\nmax_prepared_statements = 1").await;
    let mut seen = Vec::new();
    for c in [connect(cluster().primary.addr(), &db).await, proxy.connect().await] {
        let b = c.prepare("select ($1::int + 1)::text").await.unwrap();
        let a = c.prepare("select (1 / $1::int)::text").await.unwrap();
        c.batch_execute("begin").await.unwrap();
        let run = |s: &Statement, v: i32| {
            let (c, s) = (&c, s.clone());
            async move {
                match c.query(&s, &[&v]).await {
                    Ok(r) => fmt_rows(&r),
                    Err(e) => fmt_err(&e),
                }
            }
        };
        // Sent back to back: Bind a / Execute / Sync, then twice the same for b.
        let mut answers = futures_util::future::join_all([run(&a, 0), run(&b, 1), run(&b, 2)]).await;
        c.batch_execute("rollback").await.unwrap();
        answers.push(run(&b, 3).await);
        seen.push(answers);
    }
    let aborted = "ERROR 25P02 current transaction is aborted, commands ignored until end of transaction block";
    assert_eq!(seen[0], ["ERROR 22012 division by zero", aborted, aborted, "rows [\"4\",]"], "Postgres itself");
    // sluice once answered the third with
    // ERROR 26000 prepared statement "sluice_0" does not exist: the second use of b in the pipeline
    // went as a Bind alone, as if the Parse sluice sent before the first one had succeeded.
    assert_eq!(seen[1], seen[0], "through sluice");
}

// A table changed under a shared prepared statement (not generated by the workload above: its
// tables keep their columns).

/// Executes `s`, showing how many columns its client expects.
async fn run_counted(c: &Client, s: &Statement) -> String {
    match c.query(s, &[]).await {
        Ok(rows) => format!("{} columns: {}", s.columns().len(), fmt_rows(&rows)),
        Err(e) => fmt_err(&e),
    }
}

/// Runs, as client `c` and then `d` (prepared before the change too), a `select *` statement
/// before and after a column is added to its table, and again after each prepares it afresh.
async fn result_type_change(c: &Client, d: &Client) -> Vec<String> {
    let sql = "select * from widened order by 1";
    c.batch_execute("create table widened (a text); insert into widened values ($$1$$)").await.unwrap();
    let mut seen = Vec::new();
    let (sc, sd) = (c.prepare(sql).await.unwrap(), d.prepare(sql).await.unwrap());
    seen.push(run_counted(c, &sc).await);
    seen.push(run_counted(d, &sd).await);
    c.batch_execute("alter table widened add column b text default 'x'").await.unwrap();
    seen.push(run_counted(c, &sc).await);
    for client in [c, d] {
        match client.prepare(sql).await {
            Ok(s) => seen.push(run_counted(client, &s).await),
            Err(e) => seen.push(format!("prepare: {}", fmt_err(&e))),
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_whose_result_type_changed_is_prepared_again_by_the_next_parse() {
    let db = unique_db("result_type_change");
    let proxy = start_proxy(&db, "[pool]\nsize = 1").await;
    let direct = (connect(cluster().primary.addr(), &db).await, connect(cluster().primary.addr(), &db).await);
    let expected = result_type_change(&direct.0, &direct.1).await;
    let changed = "ERROR 0A000 cached plan must not change result type";
    assert_eq!(
        expected,
        [
            "1 columns: rows [\"1\",]",
            "1 columns: rows [\"1\",]",
            changed,
            "2 columns: rows [\"1\",\"x\",]",
            "2 columns: rows [\"1\",\"x\",]"
        ],
        "Postgres itself"
    );
    direct.0.batch_execute("drop table widened").await.unwrap();
    // Through sluice both clients share one statement on the one server connection.
    let (c, d) = (proxy.connect().await, proxy.connect().await);
    assert_eq!(result_type_change(&c, &d).await, expected, "through sluice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_whose_result_type_changed_is_parsed_anew_on_every_server_connection() {
    let db = unique_db("result_type_two");
    let proxy = start_proxy(&db, "[pool]\nsize = 2").await;
    let sql = "select * from widened order by 1";
    let mut seen = Vec::new();
    for (c, d) in [
        (connect(cluster().primary.addr(), &db).await, connect(cluster().primary.addr(), &db).await),
        (proxy.connect().await, proxy.connect().await),
    ] {
        c.batch_execute("create table widened (a text); insert into widened values ('1')").await.unwrap();
        let (sc, sd) = (c.prepare(sql).await.unwrap(), d.prepare(sql).await.unwrap());
        // Each in a transaction, so that through sluice each uses its own server connection,
        // and the statement is prepared on both.
        c.batch_execute("begin").await.unwrap();
        d.batch_execute("begin").await.unwrap();
        let mut answers = vec![run_counted(&c, &sc).await, run_counted(&d, &sd).await];
        c.batch_execute("commit").await.unwrap();
        d.batch_execute("commit").await.unwrap();
        connect(cluster().primary.addr(), &db)
            .await
            .batch_execute("alter table widened add column b text default 'x'")
            .await
            .unwrap();
        // c's transaction keeps one connection, where its statement fails; d prepares the text
        // afresh on the other one, where the old plan is still prepared.
        c.batch_execute("begin").await.unwrap();
        answers.push(run_counted(&c, &sc).await);
        answers.push(match d.prepare(sql).await {
            Ok(s) => run_counted(&d, &s).await,
            Err(e) => format!("prepare: {}", fmt_err(&e)),
        });
        c.batch_execute("rollback").await.unwrap();
        answers.push(run_counted(&c, &c.prepare(sql).await.unwrap()).await);
        c.batch_execute("drop table widened").await.unwrap();
        seen.push(answers);
    }
    let (one, two) = ("1 columns: rows [\"1\",]", "2 columns: rows [\"1\",\"x\",]");
    let changed = "ERROR 0A000 cached plan must not change result type";
    assert_eq!(seen[0], [one, one, changed, two, two], "Postgres itself");
    assert_eq!(seen[1], seen[0], "through sluice");
}
