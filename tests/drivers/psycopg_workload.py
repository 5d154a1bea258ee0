"""psycopg 3 workload for tests/drivers.rs: many concurrent clients doing server-side prepared
statements (prepare_threshold=0), pipelines, transactions, COPY, errors and cancels.

Usage: psycopg_workload.py HOST PORT DBNAME [CLIENTS]

Exits 0 when every check passed; any failed check raises, printing the traceback, and exits 1.
"""

import asyncio
import logging
import sys
import threading
import time
import traceback

import psycopg
from psycopg import errors

HOST, PORT, DBNAME = sys.argv[1], int(sys.argv[2]), sys.argv[3]
CLIENTS = int(sys.argv[4]) if len(sys.argv) > 4 else 100
ROUNDS = 1  # full rounds every client does (then cheap queries while the cancel checks still run)
PER_ROUND = 6  # rows each client inserts per round
COPY_ROWS = 40  # rows each client copies in per round (text format; as many in binary format)
CONNINFO = f"host={HOST} port={PORT} dbname={DBNAME} user=postgres connect_timeout=20"
# psycopg logs a warning for the pipeline that the 1/0 aborts on purpose.
logging.getLogger("psycopg").setLevel(logging.ERROR)
ASYNC_MARKER = "select pg_sleep(10) /* psycopg async cancel */"
THREAD_MARKER = "select pg_sleep(10) /* psycopg thread cancel */"

progress = 0  # statements finished by the workers, to see that they go on during a cancel
cancels_done = asyncio.Event()


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def log(msg):
    print(f"[psycopg {time.monotonic() - T0:7.2f}s] {msg}", flush=True)


async def connect():
    return await psycopg.AsyncConnection.connect(CONNINFO, autocommit=True, prepare_threshold=0)


async def setup():
    async with await connect() as c:
        for stmt in (
            "drop table if exists items, acct, log, copy_t, copy_b",
            "create table items (id int primary key, client int not null, n int not null, v text)",
            "create table acct (client int primary key, balance bigint not null)",
            "create table log (client int not null, round int not null, k int not null)",
            "create table copy_t (client int not null, i int not null, s text)",
            "create table copy_b (client int not null, i int not null, f float8, b bytea)",
        ):
            await c.execute(stmt)


async def prepared_work(c, client, r):
    """Parameterized SELECT/INSERT/UPDATE, prepared on first use. Odd clients run the statements
    in another order, so the same statement names (_pg3_N) mean other texts on other clients."""
    global progress

    async def arith(i):
        cur = await c.execute("select %s::int * %s::int, %s::text || '-' || %s::text", (client, i, "c", r))
        check(await cur.fetchone() == (client * i, f"c-{r}"), f"client {client}: arithmetic row")

    async def insert(i):
        rid = client * 10000 + r * 100 + i
        cur = await c.execute(
            "insert into items (id, client, n, v) values (%s, %s, %s, %s) returning id, v",
            (rid, client, i, f"v{client}/{r}/{i}"),
        )
        check(await cur.fetchone() == (rid, f"v{client}/{r}/{i}"), f"client {client}: insert returning")
        cur = await c.execute("update items set n = n + %s where id = %s returning n", (client, rid))
        check(await cur.fetchone() == (i + client,), f"client {client}: update returning")

    for i in range(PER_ROUND):
        if client % 2:
            await insert(i)
            await arith(i)
        else:
            await arith(i)
            await insert(i)
        progress += 1
    cur = await c.execute("select count(*), coalesce(sum(n), 0) from items where client = %s", (client,))
    rows = (r + 1) * PER_ROUND
    check(
        await cur.fetchone() == (rows, (r + 1) * sum(range(PER_ROUND)) + rows * client),
        f"client {client}: items count/sum after round {r}",
    )
    # A NULL, a bigint and a float through a prepared statement.
    cur = await c.execute("select %s::text, %s::bigint * 2, %s::float8 / 4", (None, 2**40 + client, 1.0 * client))
    check(await cur.fetchone() == (None, 2 * (2**40 + client), client / 4), f"client {client}: typed params")
    check(c.prepare_threshold == 0, "prepare_threshold stays 0")


async def pipelined_work(c, client, r):
    global progress
    async with c.pipeline():
        for k in range(5):
            await c.execute("insert into log (client, round, k) values (%s, %s, %s)", (client, r, k))
        cnt = await c.execute("select count(*) from log where client = %s and round = %s", (client, r))
        two = await c.execute("select %s::int + 1, %s::text", (client, "p"))
    check(await cnt.fetchone() == (5,), f"client {client}: pipelined inserts visible")
    check(await two.fetchone() == (client + 1, "p"), f"client {client}: pipelined select")
    # An error in the middle of a pipeline: everything up to the sync is one implicit transaction,
    # so the insert before the error is rolled back and the statements after it are skipped.
    try:
        async with c.pipeline():
            await c.execute("insert into log (client, round, k) values (%s, %s, %s)", (client, r, 100))
            await c.execute("select 1 / %s::int", (0,))
            await c.execute("insert into log (client, round, k) values (%s, %s, %s)", (client, r, 101))
        raise AssertionError(f"client {client}: pipeline with 1/0 did not fail")
    except errors.DivisionByZero:
        pass
    cur = await c.execute("select count(*) from log where client = %s and round = %s", (client, r))
    check(await cur.fetchone() == (5,), f"client {client}: failed pipeline left no rows")
    progress += 1


async def transaction_work(c, client, r):
    global progress
    async with c.transaction():
        await c.execute(
            "insert into acct (client, balance) values (%s, 0) on conflict (client) do nothing", (client,)
        )
        await c.execute("update acct set balance = balance + %s where client = %s", (10, client))
        cur = await c.execute("select balance from acct where client = %s", (client,))
        check(await cur.fetchone() == ((r + 1) * 10,), f"client {client}: reads its own uncommitted update")
    # Rolled back: seen inside, gone after.
    async with c.transaction():
        await c.execute("update acct set balance = balance + %s where client = %s", (1000, client))
        cur = await c.execute("select balance from acct where client = %s", (client,))
        check(await cur.fetchone() == ((r + 1) * 10 + 1000,), f"client {client}: sees update before rollback")
        raise psycopg.Rollback()
    cur = await c.execute("select balance from acct where client = %s", (client,))
    check(await cur.fetchone() == ((r + 1) * 10,), f"client {client}: rolled back update is gone")
    # A failing savepoint inside a transaction that commits.
    async with c.transaction():
        await c.execute("insert into log (client, round, k) values (%s, %s, %s)", (client, r, 200))
        try:
            async with c.transaction():
                await c.execute("insert into log (client, round, k) values (%s, %s, %s)", (client, r, 201))
                await c.execute("select 1 / %s::int", (0,))
            raise AssertionError("1/0 in a savepoint did not fail")
        except errors.DivisionByZero:
            pass
        cur = await c.execute("select array_agg(k order by k) from log where client = %s and round = %s and k >= 200", (client, r))
        check(await cur.fetchone() == ([200],), f"client {client}: savepoint rolled back only its row")
    # An error inside a transaction block: the block is failed until it ends.
    try:
        async with c.transaction():
            await c.execute("update acct set balance = balance + 1 where client = %s", (client,))
            try:
                await c.execute("select 1 / %s::int", (0,))
                raise AssertionError("1/0 did not fail")
            except errors.DivisionByZero:
                pass
            await c.execute("select 1")
        raise AssertionError("statement in a failed transaction did not fail")
    except errors.InFailedSqlTransaction:
        pass
    check(c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE, f"client {client}: idle after rollback")
    progress += 1


async def copy_work(c, client, r):
    global progress
    base = r * 1000
    expected = [(base + i, f"row {i}\ttab \\ backslash\nnewline é") if i % 7 else (base + i, None) for i in range(COPY_ROWS)]
    cur = c.cursor()
    async with cur.copy("COPY copy_t (client, i, s) FROM STDIN") as cp:
        for i, s in expected:
            await cp.write_row((client, i, s))
    check(cur.rowcount == COPY_ROWS, f"client {client}: COPY FROM rowcount {cur.rowcount}")
    got = []
    async with cur.copy(
        "COPY (select i, s from copy_t where client = {} and i >= {} order by i) TO STDOUT".format(client, base)
    ) as cp:
        cp.set_types(["int4", "text"])
        async for row in cp.rows():
            got.append(row)
    check(got == expected, f"client {client}: COPY TO STDOUT returned {got[:3]}... expected {expected[:3]}...")
    # Binary COPY both ways.
    brows = [(client, base + i, i / 3, bytes([i % 256, 0, 255]) * (i % 5)) for i in range(COPY_ROWS)]
    async with cur.copy("COPY copy_b (client, i, f, b) FROM STDIN (FORMAT BINARY)") as cp:
        cp.set_types(["int4", "int4", "float8", "bytea"])
        for row in brows:
            await cp.write_row(row)
    got = []
    async with cur.copy(
        "COPY (select client, i, f, b from copy_b where client = {} and i >= {} order by i) TO STDOUT (FORMAT BINARY)".format(client, base)
    ) as cp:
        cp.set_types(["int4", "int4", "float8", "bytea"])
        async for row in cp.rows():
            got.append(row)
    check(got == brows, f"client {client}: binary COPY round trip")
    # A COPY that fails on the server (bad data), then the connection goes on.
    try:
        async with cur.copy("COPY copy_t (client, i, s) FROM STDIN") as cp:
            await cp.write(f"{client}\tnot-a-number\tx\n")
        raise AssertionError("bad COPY data did not fail")
    except errors.InvalidTextRepresentation:
        pass
    cur2 = await c.execute("select count(*) from copy_t where client = %s", (client,))
    check(await cur2.fetchone() == ((r + 1) * COPY_ROWS,), f"client {client}: copy_t count")
    progress += 1


async def error_work(c, client, r):
    global progress
    for divisor in (1, 0, 2):
        try:
            cur = await c.execute("select 10 / %s::int", (divisor,))
            check(divisor != 0, "1/0 did not fail")
            check(await cur.fetchone() == (10 // divisor,), "division result")
        except errors.DivisionByZero:
            check(divisor == 0, f"unexpected division by zero for {divisor}")
    try:
        await c.execute("select * from no_such_table_%s" % client)
        raise AssertionError("missing table did not fail")
    except errors.UndefinedTable:
        pass
    try:
        await c.execute("selec broken syntax")
        raise AssertionError("syntax error did not fail")
    except errors.SyntaxError:
        pass
    cur = await c.execute("select %s::int", (client,))
    check(await cur.fetchone() == (client,), f"client {client}: works after errors")
    progress += 1


async def keep_busy(c, client):
    """Cheap queries until the cancel checks are done, so they always run among working clients."""
    global progress
    k = 0
    while not cancels_done.is_set():
        cur = await c.execute("select %s::int + %s::int", (client, k))
        check(await cur.fetchone() == (client + k,), f"client {client}: filler query")
        k += 1
        progress += 1
        await asyncio.sleep(0.05)


async def settings_work(c, client, r):
    """A SET sent through the extended protocol follows the client from server to server."""
    global progress
    if r > 0:
        cur = await c.execute("select current_setting('myapp.client', true)")
        got = (await cur.fetchone())[0]
        check(got == f"{client}-{r - 1}", f"client {client}: setting of round {r - 1} kept, got {got}")
    await c.execute(f"set myapp.client = '{client}-{r}'")
    cur = await c.execute("select current_setting('myapp.client')")
    check((await cur.fetchone())[0] == f"{client}-{r}", f"client {client}: setting of round {r}")
    progress += 1


async def worker(client, rounds_done):
    c = await connect()
    try:
        for r in range(ROUNDS):
            await settings_work(c, client, r)
            await prepared_work(c, client, r)
            await pipelined_work(c, client, r)
            await transaction_work(c, client, r)
            await copy_work(c, client, r)
            await error_work(c, client, r)
            rounds_done[client] = r + 1
        await keep_busy(c, client)
    finally:
        await c.close()


async def wait_active(mon, text):
    """Waits until a server runs `text` (seen in pg_stat_activity)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        cur = await mon.execute(
            "select count(*) from pg_stat_activity where state = 'active' and query = %s and datname = current_database() and pid <> pg_backend_pid()",
            (text,),
        )
        if (await cur.fetchone())[0] == 1:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{text!r} never ran")


async def others_keep_working():
    before = progress
    deadline = time.monotonic() + 20
    while progress == before:
        check(time.monotonic() < deadline, "other clients made no progress while pg_sleep ran")
        await asyncio.sleep(0.02)


async def async_cancel(mon):
    c = await connect()
    start = time.monotonic()
    task = asyncio.create_task(c.execute(ASYNC_MARKER))
    await wait_active(mon, ASYNC_MARKER)
    await others_keep_working()
    sent = time.monotonic()
    await c.cancel_safe(timeout=5)
    try:
        await task
        raise AssertionError("pg_sleep(10) was not cancelled")
    except errors.QueryCanceled:
        pass
    ended = time.monotonic()
    log(f"async cancel_safe: canceled {ended - sent:.3f}s after the cancel, {ended - start:.3f}s after start")
    check(ended - sent < 5, f"cancel took {ended - sent:.1f}s")
    cur = await c.execute("select %s::int", (7,))
    check(await cur.fetchone() == (7,), "connection works after cancel")
    await c.close()


async def thread_cancel(mon):
    """A sync connection runs pg_sleep in a thread; conn.cancel() (PQcancel) from this thread."""
    c = psycopg.connect(CONNINFO, autocommit=True, prepare_threshold=0)
    outcome = {}

    def run():
        start = time.monotonic()
        try:
            c.execute(THREAD_MARKER)
            outcome["error"] = "not cancelled"
        except errors.QueryCanceled:
            outcome["ended"] = time.monotonic()
        except Exception as e:  # noqa: BLE001 - reported below
            outcome["error"] = repr(e)
        outcome["start"] = start

    t = threading.Thread(target=run)
    t.start()
    await wait_active(mon, THREAD_MARKER)
    await others_keep_working()
    sent = time.monotonic()
    c.cancel()
    await asyncio.to_thread(t.join, 15)
    check(not t.is_alive(), "thread with the cancelled query did not finish")
    check("error" not in outcome, f"thread query: {outcome.get('error')}")
    log(f"thread cancel: canceled {outcome['ended'] - sent:.3f}s after the cancel")
    check(outcome["ended"] - sent < 5, f"cancel took {outcome['ended'] - sent:.1f}s")
    check(c.execute("select %s::int", (8,)).fetchone() == (8,), "sync connection works after cancel")
    c.close()


async def cancels():
    try:
        async with await connect() as mon:
            await asyncio.gather(async_cancel(mon), thread_cancel(mon))
    finally:
        cancels_done.set()


async def verify(rounds_done):
    async with await connect() as c:
        total_rounds = sum(rounds_done)
        check(all(n == ROUNDS for n in rounds_done), f"rounds done: {rounds_done}")
        cur = await c.execute("select count(*), count(distinct client) from items")
        check(await cur.fetchone() == (total_rounds * PER_ROUND, CLIENTS), "items totals")
        cur = await c.execute("select client, balance from acct order by client")
        check(await cur.fetchall() == [(i, rounds_done[i] * 10) for i in range(CLIENTS)], "acct balances")
        cur = await c.execute("select count(*) from log where k < 100")
        check(await cur.fetchone() == (total_rounds * 5,), "log rows")
        cur = await c.execute("select count(*) from log where k = 200")
        check(await cur.fetchone() == (total_rounds,), "savepoint outer rows")
        cur = await c.execute("select count(*) from log where k in (100, 101, 201)")
        check(await cur.fetchone() == (0,), "rolled back rows")
        cur = await c.execute("select count(*) from copy_t")
        check(await cur.fetchone() == (total_rounds * COPY_ROWS,), "copy_t rows")
        cur = await c.execute("select count(*) from copy_b")
        check(await cur.fetchone() == (total_rounds * COPY_ROWS,), "copy_b rows")
        return total_rounds


async def main():
    await setup()
    rounds_done = [0] * CLIENTS
    results = await asyncio.gather(
        cancels(), *(worker(i, rounds_done) for i in range(CLIENTS)), return_exceptions=True
    )
    failed = [(i, e) for i, e in enumerate(results) if isinstance(e, BaseException)]
    for i, e in failed[:5]:
        who = "cancels" if i == 0 else f"client {i - 1}"
        print(f"--- {who} failed:", file=sys.stderr)
        traceback.print_exception(e, file=sys.stderr)
    check(not failed, f"{len(failed)} of {len(results)} tasks failed")
    total = await verify(rounds_done)
    log(f"OK: {CLIENTS} clients, {total} rounds, {progress} steps")


T0 = time.monotonic()
if __name__ == "__main__":
    asyncio.run(main())
