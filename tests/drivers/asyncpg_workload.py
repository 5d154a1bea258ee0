"""asyncpg workload for tests/drivers.rs: many concurrent clients using named prepared statements
(asyncpg prepares everything and uses Describe statement), executemany pipelines, transactions,
COPY, errors and cancels.

Usage: asyncpg_workload.py HOST PORT DBNAME [CLIENTS]

Exits 0 when every check passed; any failed check raises, printing the traceback, and exits 1.
"""

import asyncio
import csv
import io
import sys
import time
import traceback

import asyncpg
from asyncpg import exceptions as exc

HOST, PORT, DBNAME = sys.argv[1], int(sys.argv[2]), sys.argv[3]
CLIENTS = int(sys.argv[4]) if len(sys.argv) > 4 else 100
ROUNDS = 1  # full rounds every client does (then cheap queries while the cancel checks still run)
PER_ROUND = 5  # rows each client inserts per round
COPY_ROWS = 40  # rows each client copies per round
TIMEOUT_MARKER = "select pg_sleep(10) /* asyncpg timeout cancel */"
TASK_MARKER = "select pg_sleep(10) /* asyncpg task cancel */"

progress = 0  # steps finished by the workers, to see that they go on during a cancel
cancels_done = asyncio.Event()


class Rollback(Exception):
    pass


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def log(msg):
    print(f"[asyncpg {time.monotonic() - T0:7.2f}s] {msg}", flush=True)


async def connect():
    return await asyncpg.connect(host=HOST, port=PORT, user="postgres", database=DBNAME, timeout=20)


async def setup():
    c = await connect()
    try:
        await c.execute(
            "drop table if exists items, acct, log, copy_t;"
            "create table items (id int primary key, client int not null, n int not null, v text);"
            "create table acct (client int primary key, balance bigint not null);"
            "create table log (client int not null, round int not null, k int not null);"
            "create table copy_t (client int not null, i int not null, s text, f float8)"
        )
    finally:
        await c.close()


async def prepared_work(c, client, r):
    global progress
    arith = await c.prepare("select $1::int * $2::int as product, $3::text || '-' || $4::text as label")
    check([a.name for a in arith.get_attributes()] == ["product", "label"], "described columns")
    check([t.name for t in arith.get_parameters()] == ["int4", "int4", "text", "text"], "described parameters")
    insert = await c.prepare("insert into items (id, client, n, v) values ($1, $2, $3, $4) returning id, v")
    for i in range(PER_ROUND):
        rid = client * 10000 + r * 100 + i
        if client % 2:  # another order of first use on odd clients
            row = await insert.fetchrow(rid, client, i, f"v{client}/{r}/{i}")
            check(tuple(row) == (rid, f"v{client}/{r}/{i}"), f"client {client}: insert returning {row}")
            row = await arith.fetchrow(client, i, "c", str(r))
            check(tuple(row) == (client * i, f"c-{r}"), f"client {client}: arithmetic {row}")
        else:
            row = await arith.fetchrow(client, i, "c", str(r))
            check(tuple(row) == (client * i, f"c-{r}"), f"client {client}: arithmetic {row}")
            row = await insert.fetchrow(rid, client, i, f"v{client}/{r}/{i}")
            check(tuple(row) == (rid, f"v{client}/{r}/{i}"), f"client {client}: insert returning {row}")
        n = await c.fetchval("update items set n = n + $1 where id = $2 returning n", client, rid)
        check(n == i + client, f"client {client}: update returning {n}")
        progress += 1
    rows = await c.fetch("select id, n from items where client = $1 and id >= $2 order by id", client, client * 10000 + r * 100)
    check(
        [tuple(x) for x in rows] == [(client * 10000 + r * 100 + i, i + client) for i in range(PER_ROUND)],
        f"client {client}: fetched items {rows}",
    )
    v = await c.fetchval("select $1::text is null and $2::bigint * 2 = $3::bigint", None, 2**40 + client, 2 * (2**40 + client))
    check(v is True, "typed parameters")
    # The statement prepared before is used in a transaction (on whatever server that is).
    async with c.transaction():
        check(await arith.fetchval(3, client, "t", "x") == 3 * client, "prepared statement inside a transaction")
    # Cursors need a transaction; fetch in chunks.
    async with c.transaction():
        cur = await c.cursor("select g from generate_series(1, $1::int) g", 25 + client % 3)
        got = []
        while chunk := await cur.fetch(10):
            got.extend(x[0] for x in chunk)
        check(got == list(range(1, 26 + client % 3)), f"client {client}: cursor rows")


async def pipelined_work(c, client, r):
    global progress
    await c.executemany("insert into log (client, round, k) values ($1, $2, $3)", [(client, r, k) for k in range(5)])
    check(await c.fetchval("select count(*) from log where client = $1 and round = $2", client, r) == 5, "executemany rows")
    # executemany is atomic: an error on the second row leaves none of them.
    try:
        await c.executemany(
            "insert into log (client, round, k) values ($1, $2, 1000 / $3::int)", [(client, r, 10), (client, r, 0), (client, r, 5)]
        )
        raise AssertionError("executemany with 1/0 did not fail")
    except exc.DivisionByZeroError:
        pass
    check(await c.fetchval("select count(*) from log where client = $1 and round = $2", client, r) == 5, "failed executemany left no rows")
    progress += 1


async def transaction_work(c, client, r):
    global progress
    async with c.transaction():
        await c.execute("insert into acct (client, balance) values ($1, 0) on conflict (client) do nothing", client)
        await c.execute("update acct set balance = balance + 10 where client = $1", client)
        b = await c.fetchval("select balance from acct where client = $1", client)
        check(b == (r + 1) * 10, f"client {client}: reads its own uncommitted update ({b})")
    try:
        async with c.transaction():
            await c.execute("update acct set balance = balance + 1000 where client = $1", client)
            b = await c.fetchval("select balance from acct where client = $1", client)
            check(b == (r + 1) * 10 + 1000, f"client {client}: sees update before rollback ({b})")
            raise Rollback()
    except Rollback:
        pass
    b = await c.fetchval("select balance from acct where client = $1", client)
    check(b == (r + 1) * 10, f"client {client}: rolled back update is gone ({b})")
    # A failing savepoint inside a transaction that commits.
    async with c.transaction():
        await c.execute("insert into log (client, round, k) values ($1, $2, 200)", client, r)
        try:
            async with c.transaction():
                await c.execute("insert into log (client, round, k) values ($1, $2, 201)", client, r)
                await c.fetchval("select 1 / $1::int", 0)
            raise AssertionError("1/0 in a savepoint did not fail")
        except exc.DivisionByZeroError:
            pass
        ks = await c.fetchval("select array_agg(k order by k) from log where client = $1 and round = $2 and k >= 200", client, r)
        check(ks == [200], f"client {client}: savepoint rolled back only its row ({ks})")
    # An error in a transaction block: failed until it ends.
    tx = c.transaction()
    await tx.start()
    await c.execute("update acct set balance = balance + 1 where client = $1", client)
    try:
        await c.fetchval("select 1 / $1::int", 0)
        raise AssertionError("1/0 did not fail")
    except exc.DivisionByZeroError:
        pass
    try:
        await c.fetchval("select $1::int", 1)
        raise AssertionError("statement in a failed transaction did not fail")
    except exc.InFailedSQLTransactionError:
        pass
    await tx.rollback()
    check(not c.is_in_transaction(), "not in a transaction after rollback")
    progress += 1


async def copy_work(c, client, r):
    global progress
    base = r * 1000
    records = [(client, base + i, None if i % 7 == 0 else f"row {i}, \"q\" \t\\ é\nx", i / 4) for i in range(COPY_ROWS)]
    status = await c.copy_records_to_table("copy_t", records=records, columns=["client", "i", "s", "f"])
    check(status == f"COPY {COPY_ROWS}", f"client {client}: copy_records_to_table status {status}")
    buf = io.BytesIO()
    status = await c.copy_from_query(
        "select i, s, f from copy_t where client = $1 and i >= $2 order by i", client, base, output=buf, format="csv"
    )
    check(status == f"COPY {COPY_ROWS}", f"client {client}: copy_from_query status {status}")
    got = [
        (int(i), None if s == "" else s, float(f))
        for i, s, f in csv.reader(io.StringIO(buf.getvalue().decode(), newline=""))
    ]
    check(got == [(i, s, f) for _, i, s, f in records], f"client {client}: copy_from_query rows {got[:2]}")
    # Streamed to a coroutine in text format.
    chunks = []

    async def sink(data):
        chunks.append(data)

    await c.copy_from_query("select i from copy_t where client = $1 order by i", client, output=sink)
    lines = b"".join(chunks).decode().split("\n")
    check(lines[-1] == "" and len(lines) == (r + 1) * COPY_ROWS + 1, f"client {client}: copy to coroutine {len(lines)} lines")
    # A COPY the server rejects (a NULL into a NOT NULL column), then the connection goes on.
    try:
        await c.copy_records_to_table("copy_t", records=[(client, 1, "x", 0.0), (None, 2, "y", 0.0)], columns=["client", "i", "s", "f"])
        raise AssertionError("COPY of a NULL into a NOT NULL column did not fail")
    except exc.NotNullViolationError:
        pass
    n = await c.fetchval("select count(*) from copy_t where client = $1", client)
    check(n == (r + 1) * COPY_ROWS, f"client {client}: copy_t count {n}")
    progress += 1


async def error_work(c, client, r):
    global progress
    for divisor in (1, 0, 2):
        try:
            v = await c.fetchval("select 10 / $1::int", divisor)
            check(divisor != 0 and v == 10 // divisor, f"division by {divisor} gave {v}")
        except exc.DivisionByZeroError:
            check(divisor == 0, f"unexpected division by zero for {divisor}")
    try:
        await c.fetch(f"select * from no_such_table_{client}")
        raise AssertionError("missing table did not fail")
    except exc.UndefinedTableError:
        pass
    try:
        await c.execute("selec broken syntax")
        raise AssertionError("syntax error did not fail")
    except exc.PostgresSyntaxError:
        pass
    check(await c.fetchval("select $1::int", client) == client, f"client {client}: works after errors")
    progress += 1


async def keep_busy(c, client):
    """Cheap queries until the cancel checks are done, so they always run among working clients."""
    global progress
    k = 0
    while not cancels_done.is_set():
        check(await c.fetchval("select $1::int + $2::int", client, k) == client + k, f"client {client}: filler query")
        k += 1
        progress += 1
        await asyncio.sleep(0.05)


async def settings_work(c, client, r):
    """A SET run as a prepared statement follows the client from server to server."""
    global progress
    if r > 0:
        got = await c.fetchval("select current_setting('myapp.client', true)")
        check(got == f"{client}-{r - 1}", f"client {client}: setting of round {r - 1} kept, got {got}")
    await c.fetch(f"set myapp.client = '{client}-{r}'")
    check(await c.fetchval("select current_setting('myapp.client')") == f"{client}-{r}", f"client {client}: setting of round {r}")
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


async def wait_active(mon, text, limit=60):
    """Waits until a server runs `text` (seen in pg_stat_activity)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        n = await mon.fetchval(
            "select count(*) from pg_stat_activity where state = 'active' and query = $1 and datname = current_database() and pid <> pg_backend_pid()", text
        )
        if n == 1:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{text!r} never ran")


async def others_keep_working():
    before = progress
    deadline = time.monotonic() + 20
    while progress == before:
        check(time.monotonic() < deadline, "other clients made no progress while pg_sleep ran")
        await asyncio.sleep(0.02)


async def timeout_cancel(mon):
    """fetchval(timeout=...) makes asyncpg send a CancelRequest when the timeout passes. Inside a
    transaction block, so the statement runs at once (the server is already the client's) and its
    cancellation shows: the block is failed afterwards."""
    c = await connect()
    try:
        tx = c.transaction()
        await tx.start()
        check(await c.fetchval("select $1::int", 1) == 1, "select in the transaction")
        start = time.monotonic()
        query = asyncio.create_task(c.fetchval(TIMEOUT_MARKER, timeout=3))

        async def watch():
            await wait_active(mon, TIMEOUT_MARKER, limit=3)
            await others_keep_working()

        watcher = asyncio.create_task(watch())
        try:
            await query
            raise AssertionError("pg_sleep(10) did not time out")
        except asyncio.TimeoutError:
            pass
        timed_out = time.monotonic()
        await watcher  # it ran on the server, and the others went on meanwhile
        check(timed_out - start < 5, f"timeout after {timed_out - start:.1f}s")
        # The server got the cancel: the statement failed (the block is failed) and it did not
        # take the rest of the 10 s.
        try:
            await c.fetchval("select 2")
            raise AssertionError("the timed-out statement was not cancelled on the server")
        except exc.InFailedSQLTransactionError:
            pass
        ended = time.monotonic()
        log(f"timeout cancel: statement done {ended - timed_out:.3f}s after the timeout")
        check(ended - timed_out < 5, f"cancelled statement ended {ended - timed_out:.1f}s after the timeout")
        await tx.rollback()
        check(await c.fetchval("select $1::int", 7) == 7, "connection works after the cancel")
    finally:
        await c.close()


async def task_cancel(mon):
    """Cancelling the asyncio task running a query makes asyncpg send a CancelRequest."""
    c = await connect()
    try:
        query = asyncio.create_task(c.fetchval(TASK_MARKER))
        await wait_active(mon, TASK_MARKER)
        await others_keep_working()
        sent = time.monotonic()
        query.cancel()
        try:
            await query
            raise AssertionError("pg_sleep(10) was not cancelled")
        except asyncio.CancelledError:
            pass
        # The next query waits for the cancelled one to end on the server.
        check(await c.fetchval("select $1::int", 8) == 8, "connection works after the cancel")
        ended = time.monotonic()
        log(f"task cancel: next query done {ended - sent:.3f}s after the cancel")
        check(ended - sent < 5, f"cancelled query ended {ended - sent:.1f}s after the cancel")
        n = await mon.fetchval("select count(*) from pg_stat_activity where query = $1 and state = 'active' and datname = current_database()", TASK_MARKER)
        check(n == 0, "pg_sleep still running after the cancel")
    finally:
        await c.close()


async def cancels():
    mons = [await connect(), await connect()]  # one each: an asyncpg connection runs one query at a time
    try:
        await asyncio.gather(timeout_cancel(mons[0]), task_cancel(mons[1]))
    finally:
        cancels_done.set()
        for m in mons:
            await m.close()


async def verify(rounds_done):
    c = await connect()
    try:
        total = sum(rounds_done)
        check(all(n == ROUNDS for n in rounds_done), f"rounds done: {rounds_done}")
        row = await c.fetchrow("select count(*), count(distinct client), sum(n) from items")
        exp_sum = sum(rounds_done[k] * (sum(range(PER_ROUND)) + PER_ROUND * k) for k in range(CLIENTS))
        check(tuple(row) == (total * PER_ROUND, CLIENTS, exp_sum), f"items totals {row}")
        rows = await c.fetch("select client, balance from acct order by client")
        check([tuple(x) for x in rows] == [(k, rounds_done[k] * 10) for k in range(CLIENTS)], "acct balances")
        check(await c.fetchval("select count(*) from log where k < 100") == total * 5, "log rows")
        check(await c.fetchval("select count(*) from log where k = 200") == total, "savepoint outer rows")
        check(await c.fetchval("select count(*) from log where k not in (0, 1, 2, 3, 4, 200)") == 0, "rolled back rows")
        check(await c.fetchval("select count(*) from copy_t") == total * COPY_ROWS, "copy_t rows")
        return total
    finally:
        await c.close()


async def main():
    await setup()
    rounds_done = [0] * CLIENTS
    results = await asyncio.gather(cancels(), *(worker(i, rounds_done) for i in range(CLIENTS)), return_exceptions=True)
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
