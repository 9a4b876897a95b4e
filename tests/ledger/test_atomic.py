"""No ledger operation can be half applied, whatever unit of work it runs in.

Runtime, not AST: whether a function's statements share one transaction depends on the
path it takes (``spend`` is one statement when it applies, a locked transaction when it
must release expired holds first), on the unit it runs in, and on helpers it calls, none
of which reading the source settles; watching the statements reach the database does.

Every public function of ``tokenbank.ledger`` (found from ``ledger.__all__``, so a new one
cannot slip past: without a scenario here the test fails) is called in
``Database.autocommit()``, the unit where each statement commits alone on PostgreSQL, on
paths that write the most. Each statement that changes rows is recorded with the
transaction it ran in: its PostgreSQL transaction id, or "alone" when it committed by
itself; on SQLite, the ``BEGIN`` it followed (every SQLite unit is a transaction, so there
the check confirms that, and that every scenario runs on both databases). A call passes
when everything it changed is in one transaction, or is one statement. ``expire_holds``
and ``expire_grants``
alone commit per wallet, by design (their docstrings), so it may use several transactions,
but never a statement alone among others.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import re
import typing
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import pq
from sqlalchemy.engine import Connection

from tests.ledger.factories import wallet
from tokenbank import ledger
from tokenbank.columns import utcnow
from tokenbank.db import BEGIN, COMMIT, Batch, Database, Statement, atomic
from tokenbank.ledger.models import accounts

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
LATER = T0 + timedelta(minutes=5)
_WRITE = re.compile(r"\bINSERT\s+INTO\b|\bDELETE\s+FROM\b|\bUPDATE\s+\w+\s+SET\b", re.IGNORECASE)
#: Functions documented to commit in steps (one per wallet) rather than whole.
COMMITS_IN_STEPS = {"expire_holds", "expire_grants"}


@dataclass(frozen=True)
class Write:
    sql: str
    transaction: object  # a PostgreSQL xid, a SQLite BEGIN's number, or ("alone", n)


@dataclass
class Tracer:
    """Records the row-changing statements of one watched connection."""

    driver: Any = None
    writes: list[Write] | None = None
    _alone: Iterator[int] = field(default_factory=itertools.count)
    _begins: int = 0

    def record(self, sql: str, *, alone: bool, xid: object) -> None:
        if self.writes is not None and _WRITE.search(sql):
            self.writes.append(Write(sql, ("alone", next(self._alone)) if alone else xid))

    @contextmanager
    def watch(self, driver: Any) -> Iterator[list[Write]]:
        self.driver, self.writes = driver, []
        if not isinstance(driver, psycopg.Connection | psycopg.AsyncConnection):
            self._begins = 1 if driver.in_transaction else 0

            def on_sqlite(sql: str) -> None:
                if sql.lstrip().upper().startswith("BEGIN"):
                    self._begins += 1
                # Every row-changing statement counts as changing rows: SQLite cannot say
                # before it runs, and each unit is one transaction anyway.
                self.record(sql, alone=not driver.in_transaction, xid=("sqlite", self._begins))

            driver.set_trace_callback(on_sqlite)
        try:
            yield self.writes
        finally:
            if not isinstance(driver, psycopg.Connection | psycopg.AsyncConnection):
                driver.set_trace_callback(None)
            self.driver, self.writes = None, None

    def after_postgres(self, cursor: Any, query: Any, *, alone: bool) -> None:
        connection: Any = cursor.connection
        if connection is not self.driver or cursor.rowcount == 0:
            return  # another connection, or a statement that changed nothing
        sql = query if isinstance(query, str) else str(query)
        xid = None
        if not alone and _WRITE.search(sql):
            result = connection.pgconn.exec_(b"SELECT pg_current_xact_id_if_assigned()::text")
            xid = result.get_value(0, 0)
        self.record(sql, alone=alone, xid=xid)


def _commits_alone(cursor: Any) -> bool:
    conn = cursor.connection
    return bool(conn.autocommit) and conn.pgconn.transaction_status == pq.TransactionStatus.IDLE


@pytest.fixture
def tracer(monkeypatch: pytest.MonkeyPatch) -> Tracer:
    tracer = Tracer()
    sync_execute, sync_many = psycopg.Cursor.execute, psycopg.Cursor.executemany
    async_execute = psycopg.AsyncCursor.execute

    def execute(self: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
        alone = _commits_alone(self)
        result = sync_execute(self, query, params, **kwargs)
        tracer.after_postgres(self, query, alone=alone)
        return result

    def executemany(self: Any, query: Any, params_seq: Any, **kwargs: Any) -> None:
        alone = _commits_alone(self)
        sync_many(self, query, params_seq, **kwargs)
        tracer.after_postgres(self, query, alone=alone)

    async def execute_async(self: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
        alone = _commits_alone(self)
        result = await async_execute(self, query, params, **kwargs)
        tracer.after_postgres(self, query, alone=alone)
        return result

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    monkeypatch.setattr(psycopg.Cursor, "executemany", executemany)
    monkeypatch.setattr(psycopg.AsyncCursor, "execute", execute_async)
    return tracer


def half_applicable(name: str, writes: list[Write]) -> str | None:
    """Why the call that made ``writes`` could be half applied, or None."""
    if len(writes) <= 1:
        return None
    alone = [
        w.sql.split()[0:3]
        for w in writes
        if isinstance(w.transaction, tuple) and w.transaction[0] == "alone"
    ]
    if alone:
        return f"{name}: {len(writes)} writes, of which {len(alone)} committed alone: {alone}"
    transactions = {w.transaction for w in writes}
    if len(transactions) > 1 and name not in COMMITS_IN_STEPS:
        return f"{name}: {len(writes)} writes in {len(transactions)} transactions"
    return None


def ledger_functions(*, postgres: bool) -> dict[str, Callable[..., Any]]:
    """Every public ledger function; each takes a connection first (else this fails, so
    that none can escape the sweep by taking something else)."""
    found: dict[str, Callable[..., Any]] = {}
    for name in ledger.__all__:
        obj = getattr(ledger, name)
        if not inspect.isfunction(obj):
            continue
        first = next(iter(inspect.signature(obj).parameters))
        hint = typing.get_type_hints(obj)[first]
        kind = typing.get_origin(hint) or hint
        assert kind in (Connection, psycopg.AsyncConnection, Batch), f"{name} takes no connection"
        if kind in (psycopg.AsyncConnection, Batch) and not postgres:
            continue  # asyncio connections exist on PostgreSQL only
        found[name] = obj
    return found


class Probe:
    """Calls ledger functions by name in ``autocommit()``, recording their writes."""

    def __init__(self, db: Database, tracer: Tracer) -> None:
        self.db, self.tracer = db, tracer
        self.calls: dict[str, list[list[Write]]] = defaultdict(list)

    def call(self, name: str, *, refused: type[Exception] | None = None, **kwargs: Any) -> Any:
        function = getattr(ledger, name)
        if typing.get_type_hints(function).get("batch") is Batch:
            with ThreadPoolExecutor(1) as thread:
                return thread.submit(
                    lambda: asyncio.run(self._call_in_batch(name, function, kwargs))
                ).result()
        if inspect.iscoroutinefunction(function):
            # On a thread of its own: an earlier test may have left an event loop set on
            # this one, and asyncio.run() refuses to start a loop beside it.
            with ThreadPoolExecutor(1) as thread:
                return thread.submit(
                    lambda: asyncio.run(self._call_async(name, function, kwargs))
                ).result()
        with self.db.autocommit(wallet="alice") as conn:
            with self.tracer.watch(conn.connection.driver_connection) as writes:
                if refused is None:
                    result = function(conn, **kwargs)
                else:
                    with pytest.raises(refused):
                        function(conn, **kwargs)
                    result = None
            self.calls[name].append(writes)
        return result

    async def _call_async(self, name: str, function: Any, kwargs: dict[str, Any]) -> Any:
        await self.db.open_async()
        try:
            async with self.db.async_autocommit() as conn:
                with self.tracer.watch(conn) as writes:
                    result = await function(conn, **kwargs)
                self.calls[name].append(writes)
        finally:
            await self.db.close_async()
        return result

    async def _call_in_batch(self, name: str, function: Any, kwargs: dict[str, Any]) -> Any:
        """A function that sends its work in a ``Batch``: its statements run in its caller's
        transaction (``BEGIN`` before them, ``COMMIT`` after, in the same batch), so they
        stand or fall together. Checked here: none of them ends that transaction."""
        await self.db.open_async()
        try:
            async with self.db.async_autocommit() as conn:
                batch = Batch(conn)
                batch.add(BEGIN)
                read = function(batch, **kwargs)
                batch.add(_IN_TRANSACTION)  # fails outside a transaction block
                batch.add(COMMIT)
                await batch.send()
                result = read()
        finally:
            await self.db.close_async()
        self.calls[name].append([Write(name, ("batch", name))])
        return result

    def hold(self, amount: int, key: str, ttl: int = 60) -> ledger.Hold:
        with self.db.transaction() as conn:
            return ledger.hold(
                conn, user_id="alice", amount=amount, idempotency_key=key, ttl_seconds=ttl, now=T0
            )


def _scenarios(probe: Probe, *, postgres: bool) -> None:
    """Each public function on the paths that write the most, refusals included."""
    wallet(probe.db, tokens=1000)
    wallet(probe.db, user_id="bob", tokens=100)
    probe.call("open_wallet", user_id="carol")
    probe.call("wallet_exists", user_id="carol")
    probe.call(
        "credit", user_id="alice", amount=50, kind=ledger.TransferKind.GRANT, idempotency_key="c1"
    )
    probe.call(
        "credit", user_id="alice", amount=50, kind=ledger.TransferKind.GRANT, idempotency_key="c1"
    )
    probe.call(
        "credit_purchase", user_id="alice", reference="purchase:1", tokens=100, bonus_tokens=20
    )
    probe.call(
        "credit_purchase", user_id="alice", reference="purchase:1", tokens=100, bonus_tokens=20
    )
    spent = probe.call("spend", user_id="alice", amount=10, idempotency_key="s1", now=T0)
    probe.call("spend", user_id="alice", amount=10, idempotency_key="s1", now=T0)
    # Expired holds stand in the way: the spend releases them, then applies.
    probe.hold(1150, "h-stale", ttl=1)
    probe.call("spend", user_id="alice", amount=100, idempotency_key="s2", now=LATER)
    probe.hold(1000, "h-stale-2", ttl=1)
    probe.call(
        "spend",
        refused=ledger.InsufficientTokens,
        user_id="alice",
        amount=10**6,
        idempotency_key="s3",
        now=LATER,
    )
    if postgres:
        probe.call("try_spend", user_id="alice", amount=1, idempotency_key="s4")
        probe.call("balance_async", user_id="alice")
        # A model call's hold and its posting, each sent in a batch.
        with probe.db.read() as conn:
            alice = ledger.balance(conn, user_id="alice")
        batched = probe.call(
            "hold_call_in",
            account_id=_account_id(probe.db),
            user_id="alice",
            amount=7,
            call="batch:1",
            ttl_seconds=60,
        )
        assert batched is not None and batched.amount == 7
        receipt = probe.call("post_hold_in", hold_id=batched.id, amount=5, now=utcnow())
        assert receipt is not None and receipt.balance == alice.balance - 5
        assert probe.call("post_hold_in", hold_id=batched.id, amount=5, now=utcnow()) is None
    probe.call("refund", transfer_id=spent.transfer_id, idempotency_key="r1", amount=4)
    probe.call("refund", transfer_id=spent.transfer_id, idempotency_key="r2")
    probe.hold(500, "h-stale-3", ttl=1)
    held = probe.call("hold", user_id="alice", amount=600, idempotency_key="h1", now=LATER)
    probe.call("post_hold", hold_id=held.id, amount=400, now=LATER)
    probe.call("post_hold", hold_id=held.id, amount=400, now=LATER)
    # A model call: its hold under a reserved key, posted, then a cost beyond it.
    call = probe.call("hold_call", user_id="alice", amount=5, call="1:1", ttl_seconds=60, now=LATER)
    probe.call("hold_call", user_id="alice", amount=5, call="1:1", ttl_seconds=60, now=LATER)
    probe.call("post_hold", hold_id=call.id, amount=5, now=LATER)
    probe.call("overrun", user_id="alice", amount=3, reference=f"hold:{call.id}", now=LATER)
    voided = probe.call("hold", user_id="alice", amount=10, idempotency_key="h2", now=LATER)
    probe.call("void_hold", hold_id=voided.id, now=LATER)
    late = probe.hold(10, "h-late", ttl=1)
    probe.call("void_hold", hold_id=late.id, now=LATER)  # ends as expired
    probe.call("get_hold", hold_id=late.id)
    probe.call("get_transfer", transfer_id=spent.transfer_id)
    probe.call("history", user_id="alice")
    probe.call("balance", user_id="alice", now=LATER)
    for user_id in ("alice", "bob"):
        with probe.db.transaction() as conn:
            ledger.hold(
                conn,
                user_id=user_id,
                amount=5,
                idempotency_key=f"x-{user_id}",
                ttl_seconds=1,
                now=T0,
            )
    probe.call("expire_holds", now=LATER)
    for key in ("c-expiring", "c-expiring-2"):
        probe.call(
            "credit",
            user_id="alice",
            amount=40,
            kind=ledger.TransferKind.GRANT,
            idempotency_key=key,
            source=ledger.Source.PROMO,
            expires_at=T0 + timedelta(minutes=1),
            now=T0,
        )
    probe.call("expire_grants", now=LATER)
    # A hold on tokens that then expire: voided late, what it frees expires with it.
    held_expiring = probe.call("hold", user_id="alice", amount=30, idempotency_key="h-e", now=T0)
    probe.call("void_hold", hold_id=held_expiring.id, now=LATER)
    probe.hold(50, "h-stale-4", ttl=1)
    frozen = probe.call("freeze", user_id="alice", amount=100, reference="dispute:1", now=LATER)
    probe.call("void_hold", refused=ledger.HoldFrozen, hold_id=frozen.id, now=LATER)
    probe.call("void_hold", hold_id=frozen.id, now=LATER, unfreeze=True)
    probe.hold(50, "h-stale-5", ttl=1)
    clawed = probe.call("claw_back", user_id="alice", amount=10**4, reference="refund:1", now=LATER)
    probe.call("claw_back", user_id="alice", amount=10**4, reference="refund:1", now=LATER)
    probe.call(
        "credit", user_id="alice", amount=30, kind=ledger.TransferKind.GRANT, idempotency_key="c2"
    )
    probe.call("settle_debt", user_id="alice", reference="purchase:2", now=LATER)
    # A model call's cost beyond its hold, more than the wallet has: the rest is debt.
    probe.call("overrun", user_id="alice", amount=10**5, reference="hold:big", now=LATER)
    probe.call("overrun", user_id="alice", amount=10**5, reference="hold:big", now=LATER)
    probe.call(
        "restore",
        user_id="alice",
        reference="refund:1",
        taken=clawed.taken,
        debt=clawed.debt,
        now=LATER,
    )
    # A plan's allowance: the month before's expires (reset), or up to a cap of it stays.
    first = probe.call(
        "grant_allowance",
        user_id="alice",
        reference="subscription:1:1",
        amount=100,
        expires_at=LATER + timedelta(days=30),
        now=LATER,
    )
    probe.call(
        "grant_allowance",
        user_id="alice",
        reference="subscription:1:2",
        amount=100,
        expires_at=LATER + timedelta(days=60),
        earlier=[first.receipt.transfer_id],
        keep=30,
        now=LATER,
    )
    probe.call("transfer_exists", idempotency_key="s1")
    # A covered use (a plan's unlimited feature): recorded, nothing reserved or taken.
    covered = probe.call(
        "cover",
        user_id="alice",
        amount=40,
        idempotency_key="cov-1",
        feature="image",
        quantity=1,
        now=LATER,
    )
    probe.call("find_hold", idempotency_key="cov-1")
    probe.call("post_covered", hold_id=covered.id, amount=40, now=LATER)
    probe.call("verify")


#: A statement that fails outside a transaction block: sent after a function's statements,
#: it says none of them ended the transaction the batch began.
_IN_TRANSACTION = Statement(sa.text("SAVEPOINT still_in_transaction"))


def _account_id(db: Database) -> int:
    with db.read() as conn:
        return int(
            conn.execute(sa.select(accounts.c.id).where(accounts.c.user_id == "alice")).scalar_one()
        )


def test_no_ledger_operation_can_be_half_applied(db: Database, tracer: Tracer) -> None:
    postgres = db.dialect == "postgresql"
    probe = Probe(db, tracer)
    _scenarios(probe, postgres=postgres)

    missing = set(ledger_functions(postgres=postgres)) - set(probe.calls)
    assert not missing, f"no scenario here calls {sorted(missing)}: add one to _scenarios"
    problems = [
        problem
        for name, calls in probe.calls.items()
        for writes in calls
        if (problem := half_applicable(name, writes))
    ]
    assert not problems, problems
    # The scenarios reached the multi-statement paths they are there for.
    assert max(len(writes) for writes in probe.calls["spend"]) > 1
    assert max(len(writes) for writes in probe.calls["expire_holds"]) > 1


def _two_updates(conn: Connection) -> None:
    for amount in (1, 2):
        conn.execute(
            sa.update(accounts)
            .where(accounts.c.user_id == "alice")
            .values(total_granted=accounts.c.total_granted + amount)
        )


def test_the_check_catches_a_write_outside_atomic(db: Database, tracer: Tracer) -> None:
    wallet(db)
    with db.autocommit(wallet="alice") as conn:
        with tracer.watch(conn.connection.driver_connection) as bare:
            _two_updates(conn)
        with tracer.watch(conn.connection.driver_connection) as wrapped, atomic(conn):
            _two_updates(conn)
    assert len(bare) == len(wrapped) == 2
    # Each update committed alone on PostgreSQL; SQLite's unit is one transaction.
    assert (half_applicable("two updates", bare) is not None) == (db.dialect == "postgresql")
    assert half_applicable("two updates", wrapped) is None
    with db.transaction() as conn:  # undo, so that the wallet's totals match its transfers
        conn.execute(
            sa.update(accounts).where(accounts.c.user_id == "alice").values(total_granted=0)
        )
