"""The service on a big ledger against the same service on an empty one, in one run.

    python -m bench.big_ledger                                    # 5,000,000 transfers
    python -m bench.big_ledger --transfers 200000 --wallets 5000  # a quick look

A ledger in use for years holds millions of transfers; the queries the service runs for
one user must cost what they cost on a new ledger, and the exports and ``ledger verify``
must not need memory that grows with it. On the PostgreSQL server of
``TOKENBANK_BENCH_DATABASE_URL`` (else ``TOKENBANK_TEST_DATABASE_URL``, else
postgresql://postgres@127.0.0.1:5432/test) it makes scratch databases, all dropped at the
end:

* **big**: migrated, then ``--transfers`` transfers over ``--wallets`` wallets loaded with
  COPY (``bench/big_ledger_sql.py``: purchases and bonuses, grants that expire, spends,
  holds posted, voided, expired and pending, refunds, the expiry sweep; one heavy wallet
  with over a fifth of all transfers), checked (foreign keys, ``ledger verify``), vacuumed and
  analysed;
* **empty**: migrated, with a few wallets made through the service's own functions (one
  with two pages of history);
* **fifth**: the big one at a fifth of the size, for ``ledger verify`` only (skipped with
  ``--no-fifth``).

It measures, on both, interleaved so drift falls on both, p50 and p99 over ``--repeats``
rounds of: a spend and a balance read as the API's routes run them (``ledger.try_spend``
and ``ledger.balance_async`` on the event loop's autocommit connection); the first page of
a wallet's history and a deep one (``ledger.history``; page 500 of the heavy wallet, page 2
on the empty ledger); and, through the real app in process with a signed-in browser, the
user's transactions page (``/history``) and an admin's user search (``/admin?q=``). Then
``EXPLAIN (ANALYZE, BUFFERS)`` of every statement each of those sent on the big ledger,
recorded as the service sent it, with a warning for each sequential scan of a big table;
``tokenbank ledger verify`` as a subprocess on each ledger (time, peak RSS, temporary
files PostgreSQL wrote); and both CSV exports of the heavy wallet (the API's and the
pages') downloaded from ``tokenbank serve`` while its RSS is sampled every 10 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg
import sqlalchemy as sa
from fastapi.testclient import TestClient

from bench.big_ledger_sql import (
    check_references,
    email_of,
    load,
    user_id_of,
    vacuum,
)
from bench.http import BIN, free_port
from bench.ledger import postgres_database
from tokenbank import apikeys, identity, ledger, migrations, users
from tokenbank.apikeys import Scope
from tokenbank.config import Settings
from tokenbank.db import Database, connect
from tokenbank.ledger import TransferKind
from tokenbank.web.app import create_app
from tokenbank.web.browser import SESSION_COOKIE

SECRET_KEY = "bench-" + "k" * 40
PAGE_SIZE = 50
DEEP_PAGE = 500
SPENDERS = 20
#: Tables whose size grows with the ledger: a sequential scan of one is a finding.
BIG_TABLES = ("accounts", "users", "transfers", "entries", "buckets", "draws", "holds")
TARGET_RATIO = 1.2
TARGET_FIRST_BYTE_MS = 200
TARGET_RSS_GROWTH_MB = 50
TARGET_VERIFY_MB = 500


# --- the two ledgers ---------------------------------------------------------------------


@contextmanager
def sibling_database(url: str, suffix: str) -> Iterator[str]:
    """Another scratch database on the server of ``url``, named after it, dropped at the end
    (``postgres_database`` makes one per process)."""
    parsed = sa.make_url(url)
    name = f"{parsed.database}_{suffix}"
    admin = parsed.render_as_string(False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield parsed.set(database=name).render_as_string(False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Ledger:
    """One ledger under test and what the operations need to run on it."""

    name: str
    url: str
    db: Database
    spenders: list[str]  # wallets a spend and a balance read go to, in turn
    reader: str  # the wallet whose history is read, and who signs in to the pages
    deep_cursor: int  # ``before`` of the deep page
    deep_page: int
    admin_query: str
    user_cookie: str = ""
    admin_cookie: str = ""
    api_key: str = ""
    turn: int = 0
    #: Statements the service sent while ``recording`` was set: (SQL, parameters).
    sent: list[tuple[str, Any]] = field(default_factory=list)
    recording: bool = False

    def next_spender(self) -> str:
        self.turn += 1
        return self.spenders[self.turn % len(self.spenders)]


def record_statements(target: Ledger) -> None:
    """Keep what the service sends through SQLAlchemy on the ledger's engines while
    ``recording`` is set (the pages' reads, the history); the event loop's statements are
    recorded by ``RecordingConnection``."""

    def before(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if target.recording:
            target.sent.append((statement, parameters))

    for engine in (target.db.engine, target.db.read_engine):
        sa.event.listen(engine, "before_cursor_execute", before)


class RecordingConnection:
    """An asyncio psycopg connection that notes each statement sent through it; the spend
    and balance send theirs on the driver, where SQLAlchemy's events do not see them."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], sent: list[tuple[str, Any]]) -> None:
        self.conn = conn
        self.sent = sent

    async def execute(self, query: Any, params: Any = None, **options: Any) -> Any:
        self.sent.append((str(query), params))
        return await self.conn.execute(query, params, **options)


def sign_in(db: Database, user_id: str) -> str:
    """A browser session's cookie value, as signing in leaves it."""
    with db.transaction() as conn:
        return identity.open_session(conn, user_id=user_id, via="password", ttl=timedelta(days=1))


def finish_setup(target: Ledger, admin_id: str) -> None:
    """The admin, the browser sessions and an API key, made through the service."""
    with target.db.transaction() as conn:
        users.create_user(conn, user_id=admin_id, email=f"{admin_id}@example.com")
        identity.set_admin(conn, user_id=admin_id, admin=True)
        _, target.api_key = apikeys.create_key(conn, name="bench", scopes=[Scope.READ])
    target.user_cookie = sign_in(target.db, target.reader)
    target.admin_cookie = sign_in(target.db, admin_id)
    record_statements(target)


def empty_ledger(url: str) -> Ledger:
    """A new ledger: a few wallets with plenty of tokens, one with two pages of history."""
    db = connect(url, pool_size=4)
    migrations.upgrade(db)
    spenders = [user_id_of(n) for n in range(1, SPENDERS + 1)]
    reader = user_id_of(0)
    with db.transaction() as conn:
        for n, user in enumerate([reader, *spenders]):
            users.create_user(conn, user_id=user, email=email_of(n))
            ledger.credit(
                conn,
                user_id=user,
                amount=10**9,
                kind=TransferKind.PURCHASE,
                idempotency_key=f"seed-purchase-{n}",
            )
    for n in range(2 * PAGE_SIZE + 10):
        with db.autocommit(wallet=reader) as conn:
            ledger.spend(conn, user_id=reader, amount=1 + n % 40, idempotency_key=f"seed-{n}")
    target = Ledger(
        name="empty",
        url=url,
        db=db,
        spenders=spenders,
        reader=reader,
        deep_cursor=nth_entry(db, reader, PAGE_SIZE),
        deep_page=2,
        admin_query=admin_query(SPENDERS // 2),
    )
    finish_setup(target, "operator")
    return target


def big_ledger(url: str, *, transfers: int, wallets: int) -> Ledger:
    db = connect(url, pool_size=4)
    with db.read() as conn:  # wallets with tokens to spend, other than the heavy one
        spenders = list(
            conn.execute(
                sa.text(
                    "SELECT user_id FROM accounts WHERE kind = 'wallet' AND user_id <> :heavy"
                    " AND balance - held >= 100000 ORDER BY md5(user_id) LIMIT :n"
                ),
                {"heavy": user_id_of(0), "n": SPENDERS},
            ).scalars()
        )
    deep = min(DEEP_PAGE, max(2, transfers // 5 // PAGE_SIZE))
    target = Ledger(
        name="big",
        url=url,
        db=db,
        spenders=spenders,
        reader=user_id_of(0),
        deep_cursor=nth_entry(db, user_id_of(0), (deep - 1) * PAGE_SIZE),
        deep_page=deep,
        admin_query=admin_query(wallets // 2),
    )
    finish_setup(target, "operator")
    return target


def admin_query(n: int) -> str:
    """What an operator types to find a user: the start of their address."""
    address = email_of(n) or email_of(n + 1)
    assert address is not None
    return address.split("@")[0]


def nth_entry(db: Database, user_id: str, n: int) -> int:
    """The id of the wallet's ``n``-th newest history line: ``before`` of the next page."""
    with db.read() as conn:
        found = conn.execute(
            sa.text(
                "SELECT e.id FROM entries e JOIN accounts a ON a.id = e.account_id"
                " WHERE a.user_id = :u ORDER BY e.id DESC OFFSET :n LIMIT 1"
            ),
            {"u": user_id, "n": n - 1},
        ).scalar_one()
    return int(found)


# --- the operations ----------------------------------------------------------------------

Operation = Callable[[Ledger], None]


class Operations:
    """What the service runs for one request, each as its route runs it."""

    def __init__(self, ledgers: list[Ledger]) -> None:
        self.loop = asyncio.Runner()
        self.clients: dict[str, TestClient] = {}
        for each in ledgers:
            self.loop.run(each.db.open_async())
            settings = Settings(
                database_url=each.url,
                secret_key=SECRET_KEY,
                public_url="http://127.0.0.1:8000",
                log_level="warning",
            )
            client = TestClient(create_app(settings, db=each.db), base_url="http://127.0.0.1:8000")
            client.__enter__()
            self.clients[each.name] = client

    def close(self) -> None:
        for client in self.clients.values():
            client.__exit__(None, None, None)
        self.loop.close()

    def table(self) -> dict[str, Operation]:
        return {
            "spend": self.spend,
            "balance": self.balance,
            "history, first page": self.first_page,
            "history, deep page": self.deep_page,
            "transactions page": self.transactions_page,
            "admin user search": self.admin_search,
        }

    def on_loop(self, target: Ledger, work: Callable[[Any], Awaitable[Any]]) -> Any:
        async def run() -> Any:
            async with target.db.async_autocommit() as conn:
                if target.recording:
                    return await work(RecordingConnection(conn, target.sent))
                return await work(conn)

        return self.loop.run(run())

    def spend(self, target: Ledger) -> None:
        """``POST /api/v1/users/{id}/spend``: one statement on the event loop's connection;
        the ledger's long way in a thread when it does not apply."""
        user, key = target.next_spender(), uuid.uuid4().hex

        async def spend(conn: Any) -> Any:
            return await ledger.try_spend(conn, user_id=user, amount=1, idempotency_key=key)

        if self.on_loop(target, spend) is None:
            with target.db.autocommit(wallet=user) as conn:
                ledger.spend(conn, user_id=user, amount=1, idempotency_key=key)

    def balance(self, target: Ledger) -> None:
        """``GET /api/v1/users/{id}/balance``."""
        user = target.next_spender()

        async def read(conn: Any) -> Any:
            return await ledger.balance_async(conn, user_id=user)

        self.on_loop(target, read)

    def first_page(self, target: Ledger) -> None:
        """``GET /api/v1/users/{id}/history``."""
        with target.db.read() as conn:
            page = ledger.history(conn, user_id=target.reader, limit=PAGE_SIZE)
        assert len(page.items) == PAGE_SIZE

    def deep_page(self, target: Ledger) -> None:
        """``GET /api/v1/users/{id}/history?cursor=...``, the cursor of a deep page."""
        with target.db.read() as conn:
            page = ledger.history(
                conn, user_id=target.reader, limit=PAGE_SIZE, before=target.deep_cursor
            )
        assert page.items

    def transactions_page(self, target: Ledger) -> None:
        """The signed-in user's ``/history`` page, rendered."""
        answer = self.clients[target.name].get(
            "/history", headers={"Cookie": f"{SESSION_COOKIE}={target.user_cookie}"}
        )
        assert answer.status_code == 200, answer.status_code

    def admin_search(self, target: Ledger) -> None:
        """An admin's ``/admin?q=`` user search, rendered."""
        answer = self.clients[target.name].get(
            "/admin",
            params={"q": target.admin_query},
            headers={"Cookie": f"{SESSION_COOKIE}={target.admin_cookie}"},
        )
        assert answer.status_code == 200, answer.status_code
        assert target.admin_query in answer.text


@dataclass(frozen=True)
class Timing:
    operation: str
    empty: list[float]
    big: list[float]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def measure(ops: Operations, empty: Ledger, big: Ledger, repeats: int) -> list[Timing]:
    """Each operation ``repeats`` times on each ledger, the two alternating (which goes
    first alternates too), after a warm-up."""
    clock = time.perf_counter
    table = ops.table()
    times: dict[str, dict[str, list[float]]] = {name: {"empty": [], "big": []} for name in table}
    for round_ in range(repeats + 10):
        order = (empty, big) if round_ % 2 else (big, empty)
        for name, operation in table.items():
            for target in order:
                start = clock()
                operation(target)
                if round_ >= 10:
                    times[name][target.name].append(clock() - start)
    return [Timing(name, t["empty"], t["big"]) for name, t in times.items()]


def print_timings(timings: list[Timing]) -> list[str]:
    print(
        f"{'operation':<22} {'empty p50':>10} {'big p50':>10} {'big/empty':>10}"
        f" {'empty p99':>10} {'big p99':>10} {'p99 ratio':>10}"
    )
    missed = []
    for t in timings:
        e50, b50 = percentile(t.empty, 0.5), percentile(t.big, 0.5)
        e99, b99 = percentile(t.empty, 0.99), percentile(t.big, 0.99)
        ratio = b50 / e50
        mark = "" if ratio <= TARGET_RATIO else "  <- over target"
        if mark:
            missed.append(f"{t.operation}: big/empty p50 {ratio:.2f}x")
        print(
            f"{t.operation:<22} {e50:>8.2f}ms {b50:>8.2f}ms {ratio:>9.2f}x"
            f" {e99:>8.2f}ms {b99:>8.2f}ms {b99 / e99:>9.2f}x{mark}"
        )
    return missed


# --- plans -------------------------------------------------------------------------------


def record(ops: Operations, target: Ledger) -> dict[str, list[tuple[str, Any]]]:
    """What each operation sends, recorded from one run of it."""
    sent: dict[str, list[tuple[str, Any]]] = {}
    for name, operation in ops.table().items():
        target.sent = []
        target.recording = True
        try:
            operation(target)
        finally:
            target.recording = False
        sent[name] = target.sent
    return sent


def explain(url: str, sent: dict[str, list[tuple[str, Any]]]) -> list[str]:
    """Print ``EXPLAIN (ANALYZE, BUFFERS)`` of each statement (in a transaction rolled back:
    a spend's plan spends); return the sequential scans of big tables found."""
    scans = []
    with psycopg.connect(url) as conn:
        for name, statements in sent.items():
            print(f"\n=== {name}: {len(statements)} statements ===")
            for n, (sql, params) in enumerate(statements, 1):
                head = " ".join(sql.split())
                if not head.upper().startswith(("SELECT", "WITH", "INSERT", "UPDATE", "DELETE")):
                    continue
                print(f"\n--- {name} #{n}: {head[:300]}{' ...' if len(head) > 300 else ''}")
                values = params
                if isinstance(params, dict) and "key" in params:  # a spend: a new key
                    values = {**params, "key": uuid.uuid4().hex}
                with conn.transaction(force_rollback=True):
                    rows = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", values).fetchall()
                for (line,) in rows:
                    print(f"    {line}")
                    for table in BIG_TABLES:
                        if f"Seq Scan on {table} " in f"{line} ":
                            scans.append(f"{name} #{n}: Seq Scan on {table}")
    return scans


# --- ledger verify -----------------------------------------------------------------------


@dataclass(frozen=True)
class Verified:
    ledger: str
    transfers: int
    seconds: float
    peak_rss_mb: float
    server_temp_mb: float
    ok: bool
    output: str


def temp_bytes(url: str) -> int:
    name = sa.make_url(url).database
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        row = conn.execute(
            "SELECT temp_bytes FROM pg_stat_database WHERE datname = %s", (name,)
        ).fetchone()
    return int(row[0]) if row else 0


def verify(name: str, url: str) -> Verified:
    """``tokenbank ledger verify`` in a process of its own: wall time and peak RSS.

    The peak is the process's own ``VmHWM``, read every 10 ms until it ends: the rusage
    ``wait4`` gives counts the memory of this process at the fork, which Linux carries
    over to the child's maximum across the exec."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM transfers").fetchone()
        transfers = int(row[0]) if row else 0
    before = temp_bytes(url)
    with tempfile.TemporaryFile() as output:
        env = {**os.environ, "TOKENBANK_DATABASE_URL": url}
        start = time.perf_counter()
        process = subprocess.Popen(
            [str(BIN / "tokenbank"), "ledger", "verify"], env=env, stdout=output, stderr=output
        )
        peak = 0.0
        while process.poll() is None:
            peak = max(peak, proc_status_mb(process.pid, "VmHWM:"))
            time.sleep(0.01)
        seconds = time.perf_counter() - start
        output.seek(0)
        said = output.read().decode()
    time.sleep(0.6)  # statistics reach pg_stat_database within a second
    return Verified(
        ledger=name,
        transfers=transfers,
        seconds=seconds,
        peak_rss_mb=peak,
        server_temp_mb=(temp_bytes(url) - before) / 1e6,
        ok=process.returncode == 0,
        output=said.strip().splitlines()[-1] if said.strip() else "",
    )


def print_verified(results: list[Verified]) -> list[str]:
    print(
        f"{'ledger':<8} {'transfers':>11} {'seconds':>8} {'peak RSS':>10}"
        f" {'PG temp files':>14}  result"
    )
    for r in results:
        print(
            f"{r.ledger:<8} {r.transfers:>11,} {r.seconds:>8.1f} {r.peak_rss_mb:>7.0f} MB"
            f" {r.server_temp_mb:>11.0f} MB  {r.output}"
        )
    sized = sorted((r for r in results if r.transfers > 1000), key=lambda r: r.transfers)
    missed = [f"verify on {r.ledger}: failed" for r in results if not r.ok]
    if len(sized) >= 2:
        small, large = sized[0], sized[-1]
        growth = (large.seconds / small.seconds) / (large.transfers / small.transfers)
        print(
            f"{large.ledger}/{small.ledger}: {large.transfers / small.transfers:.1f}x the"
            f" transfers, {large.seconds / small.seconds:.1f}x the time"
            f" ({growth:.2f} of linear), {large.peak_rss_mb / small.peak_rss_mb:.2f}x the RSS"
        )
    missed += [
        f"verify on {r.ledger}: peak RSS {r.peak_rss_mb:.0f} MB"
        for r in results
        if r.peak_rss_mb > TARGET_VERIFY_MB
    ]
    return missed


# --- exports -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Export:
    name: str
    first_byte_ms: float
    seconds: float
    lines: int
    megabytes: float
    rss_before_mb: float
    rss_peak_mb: float


def proc_status_mb(pid: int, field: str) -> float:
    """A memory figure of a running process (``VmRSS:``, ``VmHWM:``), 0 once it has ended."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
    except OSError:  # it has just ended
        pass
    return 0.0


def rss_mb(pid: int) -> float:
    return proc_status_mb(pid, "VmRSS:")


@contextmanager
def serving(url: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """``tokenbank serve``, one worker, on ``url``; the process, for its RSS."""
    env = {**os.environ, "TOKENBANK_DATABASE_URL": url, "TOKENBANK_SECRET_KEY": SECRET_KEY}
    process = subprocess.Popen(
        [str(BIN / "tokenbank"), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                probe = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                probe.request("GET", "/docs")
                probe.getresponse().read()
                probe.close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    said = process.stderr.read().decode() if process.stderr else ""
                    raise RuntimeError(f"the service did not start: {said}") from None
                time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)


def download(name: str, port: int, pid: int, path: str, headers: dict[str, str]) -> Export:
    """One export read to its end while the server's RSS is sampled every 10 ms."""
    peak = [rss_mb(pid)]
    before = peak[0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peak[0] = max(peak[0], rss_mb(pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        start = time.perf_counter()
        conn.request("GET", path, headers=headers)
        answer = conn.getresponse()
        if answer.status != 200:
            raise RuntimeError(f"{path}: {answer.status} {answer.read()[:300]!r}")
        first = answer.read1(65536)
        first_byte = time.perf_counter() - start
        size, lines = len(first), first.count(b"\n")
        while block := answer.read1(1 << 20):
            size += len(block)
            lines += block.count(b"\n")
        seconds = time.perf_counter() - start
        conn.close()
    finally:
        done.set()
        sampler.join()
    return Export(name, first_byte * 1000, seconds, lines, size / 1e6, before, peak[0])


def exports(big: Ledger) -> list[Export]:
    port = free_port()
    results = []
    with serving(big.url, port) as server:
        api = {"Authorization": f"Bearer {big.api_key}"}
        pages = {"Cookie": f"{SESSION_COOKIE}={big.user_cookie}"}
        for name, path, headers in (
            ("API history.csv", f"/api/v1/users/{big.reader}/history.csv", api),
            ("pages history.csv", "/history.csv", pages),
        ):
            # A first small request of each kind, so start-up allocations are not counted.
            warm = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            warm.request("GET", path.removesuffix(".csv"), headers=headers)
            warm.getresponse().read()
            warm.close()
            results.append(download(name, port, server.pid, path, headers))
    return results


def print_exports(results: list[Export]) -> list[str]:
    print(
        f"{'export':<18} {'first byte':>11} {'total':>8} {'lines':>11} {'size':>9}"
        f" {'RSS before':>11} {'RSS peak':>9} {'growth':>8}"
    )
    missed = []
    for r in results:
        growth = r.rss_peak_mb - r.rss_before_mb
        print(
            f"{r.name:<18} {r.first_byte_ms:>8.0f} ms {r.seconds:>6.1f} s {r.lines:>11,}"
            f" {r.megabytes:>6.0f} MB {r.rss_before_mb:>8.0f} MB {r.rss_peak_mb:>6.0f} MB"
            f" {growth:>5.0f} MB"
        )
        if r.first_byte_ms > TARGET_FIRST_BYTE_MS:
            missed.append(f"{r.name}: first byte after {r.first_byte_ms:.0f} ms")
        if growth > TARGET_RSS_GROWTH_MB:
            missed.append(f"{r.name}: RSS grew {growth:.0f} MB")
    return missed


# --- the run -----------------------------------------------------------------------------


def build(url: str, *, transfers: int, wallets: int) -> None:
    """Migrate, load, check the references, vacuum and analyse; print how long each took."""
    db = connect(url, pool_size=2)
    migrations.upgrade(db)
    db.dispose()
    loaded = load(url, transfers=transfers, wallets=wallets)
    rows = ", ".join(f"{n:,} {name}" for name, n in loaded.rows.items())
    print(
        f"  loaded {loaded.transfers:,} transfers over {loaded.wallets:,} wallets in"
        f" {loaded.seconds:.0f} s ({loaded.megabytes:,.0f} MB of COPY text): {rows}",
        flush=True,
    )
    started = time.perf_counter()
    dangling = check_references(url)
    print(
        f"  foreign keys checked in {time.perf_counter() - started:.0f} s: {dangling or 'all hold'}"
    )
    if dangling:
        raise RuntimeError(f"the load broke foreign keys: {dangling}")
    print(f"  VACUUM (ANALYZE) in {vacuum(url):.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transfers", type=int, default=5_000_000)
    parser.add_argument("--wallets", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=200, help="timed rounds per operation")
    parser.add_argument("--no-fifth", action="store_true", help="verify the big ledger only")
    parser.add_argument("--no-plans", action="store_true", help="skip the EXPLAIN output")
    args = parser.parse_args()
    missed: list[str] = []
    verified: list[Verified] = []
    with postgres_database() as url:
        if not args.no_fifth:
            with sibling_database(url, "fifth") as fifth:
                print(f"fifth: {args.transfers // 5:,} transfers, {args.wallets // 5:,} wallets")
                build(fifth, transfers=args.transfers // 5, wallets=max(2, args.wallets // 5))
                verified.append(verify("fifth", fifth))
        print(f"big: {args.transfers:,} transfers, {args.wallets:,} wallets", flush=True)
        started = time.perf_counter()
        build(url, transfers=args.transfers, wallets=args.wallets)
        print(f"  big ledger ready in {time.perf_counter() - started:.0f} s", flush=True)
        with sibling_database(url, "empty") as empty_url:
            empty = empty_ledger(empty_url)
            big = big_ledger(url, transfers=args.transfers, wallets=args.wallets)
            ops = Operations([empty, big])
            try:
                print(
                    f"\n{args.repeats} rounds, empty and big interleaved; deep page: page"
                    f" {big.deep_page} of {big.reader} (big), page {empty.deep_page} (empty)"
                )
                missed += print_timings(measure(ops, empty, big, args.repeats))
                sent = record(ops, big)
            finally:
                ops.close()
            for each in (empty, big):
                each.db.dispose()
            print("\nledger verify (tokenbank ledger verify, one process each)")
            verified += [verify("empty", empty_url), verify("big", url)]
            missed += print_verified(verified)
        print(f"\nexports of {big.reader}'s history from tokenbank serve (one worker)")
        missed += print_exports(exports(big))
        if not args.no_plans:
            print("\nEXPLAIN (ANALYZE, BUFFERS) on the big ledger, each statement as sent")
            scans = explain(url, sent)
            print("\nsequential scans of big tables:", "; ".join(scans) if scans else "none")
            missed += scans
    print("\nmissed targets:" if missed else "\nall targets met")
    for line in missed:
        print(f"  - {line}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
