"""Ledger spend throughput, in process, against bare-driver baselines measured in the same run.

    make bench                      # or: python -m bench.ledger --seconds 3 [--only sqlite]

For SQLite (a temporary file) and PostgreSQL (``TOKENBANK_BENCH_DATABASE_URL``, else
``TOKENBANK_TEST_DATABASE_URL``, else postgresql://postgres@127.0.0.1:5432/test; a scratch
database is created there and dropped afterwards), with 1, 4 and 16 worker threads, on one
hot wallet and spread over 10,000 wallets, it measures spends per second of:

* tokenbank: ``with db.autocommit() as conn: ledger.spend(conn, ...)``, the unit of work
  for one ledger operation (on SQLite the same as ``db.transaction()``);
* (a) the bare driver (sqlite3 / psycopg) sending exactly the SQL a tokenbank spend sends:
  on PostgreSQL the one spend statement (``postings.POSTGRES_SPEND``, compiled by the same
  dialect), autocommitted; on SQLite the six statements of ``postings.spend_serialised``
  (read the wallet's live buckets in the order of use, update the wallet if the key is
  new, record the transfer and its entries, take from the bucket and record the draw),
  their text and the order of their values traced from a real spend at start-up, in
  ``BEGIN IMMEDIATE`` ... ``COMMIT`` under an in-process writer lock, as tokenbank runs
  them;
* (b) the minimal spend: a conditional ``UPDATE ... RETURNING`` plus one insert with a
  unique key into two bare tables (one autocommit statement on PostgreSQL).

It prints each point with the ratios tokenbank/(a) and tokenbank/(b), then the lowest
tokenbank/(a) and each backend's hot-wallet throughput at 16 workers over 4 workers.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect

from tokenbank import ledger, migrations
from tokenbank.columns import utcnow
from tokenbank.config import Settings
from tokenbank.db import Database, connect, driver_datetime
from tokenbank.ledger import SystemAccount, TransferKind
from tokenbank.ledger.postings import POSTGRES_SPEND

WALLETS = 10_000
WORKERS = (1, 4, 16)
ROUNDS = 3
SEED_TOKENS = 10**11

Spend = Callable[[str, str], None]  # (user_id, idempotency_key)
SpendFactory = Callable[[int], Spend]  # the spend function of worker n


@dataclass(frozen=True)
class Point:
    backend: str
    wallets: str
    workers: int
    tokenbank: float
    exact_sql: float
    minimal: float


def users_for(wallets: str) -> list[str]:
    return ["u0"] if wallets == "hot" else [f"u{n}" for n in range(WALLETS)]


def measure(make: SpendFactory, *, workers: int, users: list[str], seconds: float) -> float:
    """Spends per second of ``workers`` threads running flat out for ``seconds``."""
    spends = [make(n) for n in range(workers)]
    counts = [0] * workers
    start = threading.Barrier(workers + 1)
    stop = threading.Event()
    prefix = uuid.uuid4().hex[:8]

    def work(n: int) -> None:
        spend, rng = spends[n], random.Random(n)
        start.wait()
        done = 0
        while not stop.is_set():
            spend(rng.choice(users), f"{prefix}-{n}-{done}")
            done += 1
        counts[n] = done

    threads = [threading.Thread(target=work, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - began)


def seed(db: Database) -> None:
    with db.transaction() as conn:
        for user in users_for("spread"):
            ledger.open_wallet(conn, user_id=user)
            ledger.credit(
                conn,
                user_id=user,
                amount=SEED_TOKENS,
                kind=TransferKind.GRANT,
                idempotency_key=f"seed-{user}",
            )


def tokenbank_spend(db: Database) -> SpendFactory:
    def make(_: int) -> Spend:
        def spend(user_id: str, key: str) -> None:
            with db.autocommit(wallet=user_id) as conn:
                ledger.spend(conn, user_id=user_id, amount=1, idempotency_key=key)

        return spend

    return make


def spend_params(dialect: str, user_id: str, key: str) -> dict[str, Any]:
    """The values tokenbank binds for a spend of 1 token (ledger.transfers.transfer_params)."""
    now = utcnow()
    stamp: Any = now.strftime("%Y-%m-%d %H:%M:%S.%f") if dialect == "sqlite" else now
    return {
        "amount": 1,
        "user_id": user_id,
        "key": key,
        "kind": "spend",
        "system_id": int(SystemAccount.CONSUMPTION),
        "description": None,
        "metadata": None,
        "feature": None,
        "quantity": None,
        "event_at": stamp,
        "now": stamp,
    }


# --- SQLite --------------------------------------------------------------------------------


def sqlite_connection(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=30000", "foreign_keys=ON"):
        conn.execute(f"PRAGMA {pragma}")
    return conn


#: What each statement of a SQLite spend starts with, in the order tokenbank sends them
#: (``postings.spend_serialised`` on a wallet whose live buckets suffice).
SQLITE_SPEND_STEPS = (
    "BEGIN IMMEDIATE",
    "SELECT k.id, k.remaining - k.held, k.expires_at IS NOT NULL",  # live buckets, in order
    "UPDATE accounts SET balance = balance -",  # the wallet, if the key is new
    "INSERT INTO transfers",
    "INSERT INTO entries",
    "UPDATE buckets SET remaining = remaining -",  # each bucket drawn on...
    "INSERT INTO draws",  # ... and its draw
)


@dataclass(frozen=True)
class SqliteSpend:
    """The text of each statement of a SQLite spend, as tokenbank sends it to the driver."""

    live_buckets: str
    update_wallet: str
    insert_transfer: str
    insert_entries: str
    take_from: str
    draw_on: str


class TracedSqlite(sqlite3.Connection):
    """A sqlite3 connection that records what is executed on it (``db.Statement`` runs
    straight on the driver, where SQLAlchemy's events do not see it)."""

    sent: list[tuple[str, Any]] | None = None

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        if self.sent is not None:
            self.sent.append((sql, parameters))
        return super().execute(sql, parameters)


def sqlite_spend_statements(url: str, user_id: str) -> SqliteSpend:
    """The statements a tokenbank spend sends on SQLite, traced from a real one.

    The benchmark fails here, rather than measure something else, when the ledger sends
    other statements than ``SQLITE_SPEND_STEPS``, or binds other values, or in another
    order, than ``sqlite_exact`` does.
    """
    db = connect(url, pool_size=1)

    def traced(_dialect: Any, _record: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        kwargs["factory"] = TracedSqlite

    sent: list[tuple[str, Any]] = []

    def record(*args: Any) -> None:
        sent.append((args[2], args[3]))  # (conn, cursor, statement, parameters, ...)

    sa.event.listen(db.engine, "do_connect", traced)
    with db.transaction(wallet=user_id) as conn:  # a first spend opens the connection
        ledger.spend(conn, user_id=user_id, amount=1, idempotency_key=uuid.uuid4().hex)
        driver = conn.connection.driver_connection
        assert isinstance(driver, TracedSqlite)
    sa.event.listen(db.engine, "before_cursor_execute", record)  # any Core statement too
    key, now, amount = uuid.uuid4().hex, utcnow(), 3
    driver.sent = sent
    try:
        with db.transaction(wallet=user_id) as conn:
            receipt = ledger.spend(
                conn, user_id=user_id, amount=amount, idempotency_key=key, now=now
            )
    finally:
        driver.sent = None
    with db.read() as conn:
        ((wallet,),) = conn.execute(
            sa.text("SELECT id FROM accounts WHERE user_id = :u"), {"u": user_id}
        ).all()
        ((bucket,),) = conn.execute(
            sa.text("SELECT bucket_id FROM draws WHERE transfer_id = :t"),
            {"t": receipt.transfer_id},
        ).all()
    db.dispose()

    stamp, consumption, transfer = (
        driver_datetime("sqlite", now),
        int(SystemAccount.CONSUMPTION),
        receipt.transfer_id,
    )
    expected_values = [
        (),
        (stamp, user_id),
        (amount, amount, user_id, amount, key),
        (key, wallet, consumption, amount, None, None, None, None, stamp, stamp),
        (transfer, wallet, amount, receipt.balance, stamp, transfer, consumption, amount, stamp),
        (amount, bucket),
        (bucket, transfer, amount),
    ]
    steps = [" ".join(sql.split()) for sql, _ in sent]
    if (
        len(steps) != len(SQLITE_SPEND_STEPS)
        or not all(
            step.startswith(start) for step, start in zip(steps, SQLITE_SPEND_STEPS, strict=True)
        )
        or [tuple(values) for _, values in sent] != expected_values
    ):
        raise RuntimeError(
            "a SQLite spend sends other statements or values now:\n"
            + "\n".join(f"{sql} {values!r}" for sql, values in sent)
        )
    return SqliteSpend(*(sql for sql, _ in sent[1:]))


def sqlite_exact(path: Path, statements: SqliteSpend) -> SpendFactory:
    """BEGIN IMMEDIATE, tokenbank's spend statements with its values, COMMIT, under a writer
    lock (``postings.spend_serialised`` on a wallet whose live buckets suffice)."""
    lock = threading.Lock()
    s = statements
    consumption = int(SystemAccount.CONSUMPTION)
    conns: dict[int, sqlite3.Connection] = {}

    def make(n: int) -> Spend:
        conn = conns[n] if n in conns else conns.setdefault(n, sqlite_connection(path))

        def spend(user_id: str, key: str) -> None:
            now = driver_datetime("sqlite", utcnow())
            with lock:
                conn.execute("BEGIN IMMEDIATE")
                live = conn.execute(s.live_buckets, (now, user_id)).fetchall()
                assert not any(due for _, _, due in live) and sum(n for _, n, _ in live) >= 1
                ((wallet, balance),) = conn.execute(
                    s.update_wallet, (1, 1, user_id, 1, key)
                ).fetchall()
                # key, debit, credit, amount, description, metadata, feature, quantity,
                # event_at, created_at
                transfer = (key, wallet, consumption, 1, None, None, None, None, now, now)
                ((transfer_id,),) = conn.execute(s.insert_transfer, transfer).fetchall()
                conn.execute(
                    s.insert_entries,
                    (transfer_id, wallet, 1, balance, now, transfer_id, consumption, 1, now),
                ).fetchall()
                left = 1
                for bucket_id, in_bucket, _ in live:
                    take = min(in_bucket, left)
                    left -= take
                    conn.execute(s.take_from, (take, bucket_id)).fetchall()
                    conn.execute(s.draw_on, (bucket_id, transfer_id, take)).fetchall()
                    if left == 0:
                        break
                conn.execute("COMMIT")

        return spend

    return make


MINIMAL_ACCOUNTS = (
    "CREATE TABLE bench_accounts (id TEXT PRIMARY KEY, balance BIGINT NOT NULL"
    " CHECK (balance >= 0))"
)
MINIMAL_ENTRIES = (
    "CREATE TABLE bench_entries (id {serial} PRIMARY KEY, account_id TEXT NOT NULL,"
    " amount BIGINT NOT NULL, idempotency_key TEXT NOT NULL UNIQUE, created_at {ts} NOT NULL)"
)


def sqlite_minimal(path: Path) -> SpendFactory:
    setup = sqlite_connection(path)
    setup.execute(MINIMAL_ACCOUNTS)
    setup.execute(MINIMAL_ENTRIES.format(serial="INTEGER", ts="TEXT"))
    setup.executemany(
        "INSERT INTO bench_accounts VALUES (?, ?)",
        [(u, SEED_TOKENS) for u in users_for("spread")],
    )
    setup.close()
    lock = threading.Lock()
    conns: dict[int, sqlite3.Connection] = {}

    def make(n: int) -> Spend:
        conn = conns[n] if n in conns else conns.setdefault(n, sqlite_connection(path))

        def spend(user_id: str, key: str) -> None:
            with lock:
                conn.execute("BEGIN IMMEDIATE")
                row = conn.execute(
                    "UPDATE bench_accounts SET balance = balance - 1"
                    " WHERE id = ? AND balance >= 1 RETURNING balance",
                    (user_id,),
                ).fetchone()
                assert row is not None
                conn.execute(
                    "INSERT INTO bench_entries (account_id, amount, idempotency_key, created_at)"
                    " VALUES (?, -1, ?, datetime('now'))",
                    (user_id, key),
                )
                conn.execute("COMMIT")

        return spend

    return make


# --- PostgreSQL ----------------------------------------------------------------------------


def postgres_exact(url: str) -> SpendFactory:
    """tokenbank's one spend statement, autocommitted, as ``Database.autocommit()`` runs it.

    It locks the wallet, then its live buckets, draws on them and records the draws; a
    shortfall in the buckets it sees would raise ``DivisionByZero`` (the benchmark's wallets
    hold far more than it spends, so none does).
    """
    sql, _ = POSTGRES_SPEND.compile(psycopg_dialect.dialect())  # type: ignore[no-untyped-call]

    conns: dict[int, psycopg.Connection[Any]] = {}

    def make(n: int) -> Spend:
        conn = (
            conns[n] if n in conns else conns.setdefault(n, psycopg.connect(url, autocommit=True))
        )

        def spend(user_id: str, key: str) -> None:
            row = conn.execute(sql, spend_params("postgresql", user_id, key)).fetchone()
            assert row is not None

        return spend

    return make


def postgres_minimal(url: str) -> SpendFactory:
    with psycopg.connect(url, autocommit=True) as setup:
        setup.execute(MINIMAL_ACCOUNTS)
        setup.execute(MINIMAL_ENTRIES.format(serial="BIGSERIAL", ts="TIMESTAMPTZ"))
        with setup.cursor() as cursor, cursor.copy("COPY bench_accounts FROM STDIN") as copy:
            for user in users_for("spread"):
                copy.write_row((user, SEED_TOKENS))

    conns: dict[int, psycopg.Connection[Any]] = {}

    def make(n: int) -> Spend:
        conn = (
            conns[n] if n in conns else conns.setdefault(n, psycopg.connect(url, autocommit=True))
        )

        def spend(user_id: str, key: str) -> None:
            row = conn.execute(
                "WITH u AS (UPDATE bench_accounts SET balance = balance - 1"
                " WHERE id = %s AND balance >= 1 RETURNING id)"
                " INSERT INTO bench_entries (account_id, amount, idempotency_key, created_at)"
                " SELECT id, -1, %s, now() FROM u RETURNING id",
                (user_id, key),
            ).fetchone()
            assert row is not None

        return spend

    return make


@contextmanager
def postgres_database() -> Iterator[str]:
    server = (
        os.environ.get("TOKENBANK_BENCH_DATABASE_URL")
        or os.environ.get("TOKENBANK_TEST_DATABASE_URL")
        or "postgresql://postgres@127.0.0.1:5432/test"
    )
    admin = sa.make_url(server).set(drivername="postgresql").render_as_string(False)
    name = f"tokenbank_bench_{os.getpid()}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield sa.make_url(admin).set(database=name).render_as_string(False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- the run -------------------------------------------------------------------------------


def run_backend(
    backend: str, url: str, exact: SpendFactory, minimal: SpendFactory, seconds: float
) -> list[Point]:
    db = connect(url, pool_size=Settings().database_pool_size)  # the default a deployment runs
    points = []
    for wallets in ("hot", "spread"):
        users = users_for(wallets)
        for workers in WORKERS:
            # Interleave short slices of the three, so drift (checkpoints, autovacuum, the
            # machine's other work) falls on all of them alike.
            totals = [0.0, 0.0, 0.0]
            for _ in range(ROUNDS):
                for n, make in enumerate((tokenbank_spend(db), exact, minimal)):
                    totals[n] += measure(
                        make, workers=workers, users=users, seconds=seconds / ROUNDS
                    )
            rates = [total / ROUNDS for total in totals]
            point = Point(backend, wallets, workers, *rates)
            points.append(point)
            print_point(point)
    with db.read() as conn:
        report = ledger.verify(conn)
    assert report.ok, [c for c in report.checks if not c.ok]
    db.dispose()
    return points


def prepare(url: str) -> None:
    db = connect(url, pool_size=2)
    migrations.upgrade(db)
    seed(db)
    db.dispose()


def print_point(p: Point) -> None:
    print(
        f"{p.backend:<10} {p.wallets:<6} {p.workers:>3}  {p.tokenbank:>9,.0f}"
        f"  {p.exact_sql:>9,.0f}  {p.minimal:>9,.0f}"
        f"  {p.tokenbank / p.exact_sql:>7.2f}x  {p.tokenbank / p.minimal:>7.2f}x",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="tokenbank ledger spend benchmark")
    parser.add_argument(
        "--seconds", type=float, default=4.5, help="time spent measuring each variant at a point"
    )
    parser.add_argument("--only", choices=["sqlite", "postgresql"], help="one backend only")
    args = parser.parse_args()
    print(
        f"{'backend':<10} {'wallets':<6} {'w':>3}  {'tokenbank':>9}  {'(a) SQL':>9}"
        f"  {'(b) min':>9}  {'vs (a)':>8}  {'vs (b)':>8}"
    )
    points: list[Point] = []
    if args.only in (None, "sqlite"):
        with tempfile.TemporaryDirectory(prefix="tokenbank-bench-") as scratch:
            path = Path(scratch) / "bench.db"
            url = f"sqlite:///{path}"
            prepare(url)
            statements = sqlite_spend_statements(url, "u0")
            points += run_backend(
                "sqlite", url, sqlite_exact(path, statements), sqlite_minimal(path), args.seconds
            )
    if args.only in (None, "postgresql"):
        with postgres_database() as url:
            prepare(url)
            points += run_backend(
                "postgresql", url, postgres_exact(url), postgres_minimal(url), args.seconds
            )
    print()
    worst = min(points, key=lambda p: p.tokenbank / p.exact_sql)
    print(
        f"lowest tokenbank/(a): {worst.tokenbank / worst.exact_sql:.2f}x"
        f" ({worst.backend}, {worst.wallets}, {worst.workers} workers); target >= 0.70x"
    )
    for backend in sorted({p.backend for p in points}):
        hot = {
            p.workers: p.tokenbank for p in points if p.backend == backend and p.wallets == "hot"
        }
        print(
            f"{backend}: hot wallet at 16 workers / 4 workers = {hot[16] / hot[4]:.2f}x;"
            " target >= 0.80x"
        )


if __name__ == "__main__":
    main()
