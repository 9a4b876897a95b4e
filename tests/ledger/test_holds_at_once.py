"""Holds made and posted in one statement on PostgreSQL (``holds._RESERVE_AT_ONCE`` and
``_POST_AT_ONCE``), the long way on SQLite: both backends must leave the same buckets,
draws and wallet, across several buckets in the order of use; what the one statement
does not handle (a bucket past its expiry, a replay, a key taken) goes the long way."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from tests.ledger.factories import wallet
from tokenbank import ledger
from tokenbank.db import Database
from tokenbank.errors import IdempotencyConflict
from tokenbank.ledger import Source, TransferKind
from tokenbank.ledger.models import buckets, draws, transfers

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def _credit(db: Database, amount: int, source: Source, key: str, expires: int | None) -> None:
    with db.transaction() as conn:
        ledger.credit(
            conn,
            user_id="alice",
            amount=amount,
            kind=TransferKind.GRANT,
            idempotency_key=key,
            source=source,
            expires_at=None if expires is None else T0 + timedelta(minutes=expires),
            now=T0,
        )


def _buckets(db: Database) -> dict[str, tuple[int, int]]:
    """Each bucket's remaining and held tokens, by its credit's key."""
    with db.read() as conn:
        rows = conn.execute(
            sa.select(transfers.c.idempotency_key, buckets.c.remaining, buckets.c.held).join(
                transfers, transfers.c.id == buckets.c.transfer_id
            )
        )
        return {row[0]: (row[1], row[2]) for row in rows}


def _statements(db: Database) -> list[str]:
    """What goes through SQLAlchemy from now on (a one-statement path sends none)."""
    seen: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda *args: seen.append(str(args[2])[:60]))
    return seen


@pytest.fixture
def three(db: Database) -> Database:
    """Alice's 180 tokens in three buckets, in their order of use: a promotion expiring in
    an hour, an operator's grant, and tokens that never expire granted later."""
    wallet(db)
    _credit(db, 30, Source.PROMO, "promo", 60)
    _credit(db, 50, Source.ADMIN, "admin", None)
    _credit(db, 100, Source.ADMIN, "later", None)
    return db


def test_a_hold_across_buckets_then_its_posting(three: Database) -> None:
    db = three
    seen = _statements(db)
    with db.transaction() as conn:
        held = ledger.hold_call(
            conn, user_id="alice", amount=120, call="c1", ttl_seconds=600, now=T0
        )
    assert _buckets(db) == {"promo": (30, 30), "admin": (50, 50), "later": (100, 40)}
    with db.transaction() as conn:
        receipt = ledger.post_hold(conn, hold_id=held.id, amount=70, now=T0)
    assert (receipt.amount, receipt.balance) == (70, 110)
    # Spent in the order reserved: the promotion, then 40 of the grant; the rest is free.
    assert _buckets(db) == {"promo": (0, 0), "admin": (10, 0), "later": (100, 0)}
    with db.read() as conn:
        taken = conn.execute(
            sa.select(draws.c.amount)
            .where(draws.c.transfer_id == receipt.transfer_id)
            .order_by(draws.c.id)
        ).scalars()
        assert list(taken) == [30, 40]
        assert ledger.get_hold(conn, hold_id=held.id).status is ledger.HoldStatus.POSTED
        assert ledger.balance(conn, user_id="alice", now=T0).held == 0
    if db.dialect == "postgresql":  # both in one statement each: none through SQLAlchemy
        assert [s for s in seen if "holds" in s or "buckets" in s] == []


def test_what_one_statement_does_not_handle_goes_the_long_way(three: Database) -> None:
    db = three
    later = T0 + timedelta(minutes=90)  # the promotion expired, unswept
    with db.transaction() as conn:
        held = ledger.hold_call(
            conn, user_id="alice", amount=60, call="c2", ttl_seconds=600, now=later
        )
        again = ledger.hold_call(
            conn, user_id="alice", amount=60, call="c2", ttl_seconds=600, now=later
        )
    assert again.replayed and again.id == held.id
    # The promotion expired first (a transfer of its own); the hold drew on the grant.
    assert _buckets(db) == {"promo": (0, 0), "admin": (50, 50), "later": (100, 10)}
    with db.transaction() as conn:
        ledger.post_hold(conn, hold_id=held.id, amount=60, now=later)
        replay = ledger.post_hold(conn, hold_id=held.id, amount=60, now=later)
    assert replay.replayed
    assert _buckets(db) == {"promo": (0, 0), "admin": (0, 0), "later": (90, 0)}
    wallet(db, "bob", 10)
    with db.transaction() as conn:
        ledger.hold(conn, user_id="alice", amount=5, idempotency_key="shared", now=later)
    with pytest.raises(IdempotencyConflict), db.transaction() as conn:
        ledger.hold(conn, user_id="bob", amount=5, idempotency_key="shared", now=later)


def test_a_hold_whose_bucket_expired_before_its_posting(three: Database) -> None:
    db = three
    with db.transaction() as conn:
        held = ledger.hold_call(
            conn, user_id="alice", amount=40, call="c3", ttl_seconds=7200, now=T0
        )
    later = T0 + timedelta(minutes=90)
    with db.transaction() as conn:
        receipt = ledger.post_hold(conn, hold_id=held.id, amount=20, now=later)
    # 20 spent from the promotion; its other 10 were freed past its expiry, and expire.
    assert _buckets(db) == {"promo": (0, 0), "admin": (50, 0), "later": (100, 0)}
    assert receipt.balance == 160
    with db.read() as conn:
        assert ledger.balance(conn, user_id="alice", now=later).balance == 150
