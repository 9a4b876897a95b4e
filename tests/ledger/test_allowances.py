"""A plan's monthly allowance in the ledger: once per month, what the month before left
expiring (reset) or staying up to a cap (rollover), held tokens untouched, and covered uses
that reserve and take nothing. ``ledger verify`` runs after each test."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from tests.ledger.factories import wallet
from tokenbank import ledger
from tokenbank.db import Database
from tokenbank.ledger.models import buckets

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
MONTH = timedelta(days=30)


def _month(
    db: Database, n: int, *, earlier: list[int], keep: int | None, amount: int = 1000
) -> ledger.Allowance:
    with db.transaction() as conn:
        return ledger.grant_allowance(
            conn,
            user_id="alice",
            reference=f"subscription:1:{n}",
            amount=amount,
            expires_at=T0 + (n + 1) * MONTH + timedelta(days=1),
            earlier=earlier,
            keep=keep,
            now=T0 + n * MONTH,
        )


def _available(db: Database, n: int) -> int:
    with db.read() as conn:
        return ledger.balance(conn, user_id="alice", now=T0 + n * MONTH).available


def _spend(db: Database, amount: int, key: str, n: int) -> None:
    with db.transaction() as conn:
        ledger.spend(conn, user_id="alice", amount=amount, idempotency_key=key, now=T0 + n * MONTH)


def test_reset_expires_what_the_month_before_left_in_the_same_step(db: Database) -> None:
    wallet(db, tokens=50)  # tokens of another source are never touched
    first = _month(db, 0, earlier=[], keep=0)
    _spend(db, 1000, "s-1", 0)  # the allowance goes first: it expires, the grant does not
    assert _available(db, 0) == 50
    second = _month(db, 1, earlier=[first.receipt.transfer_id], keep=0)
    assert (second.carried, second.expired) == (0, 0)  # nothing was left
    _spend(db, 300, "s-2", 1)
    third = _month(db, 2, earlier=[first.receipt.transfer_id, second.receipt.transfer_id], keep=0)
    assert (third.carried, third.expired) == (0, 700)
    assert _available(db, 2) == 1000 + 50
    again = _month(db, 2, earlier=[second.receipt.transfer_id], keep=0)
    assert again.receipt.replayed and again.expired == 0
    assert again.receipt.transfer_id == third.receipt.transfer_id


def test_rollover_keeps_up_to_the_cap_and_expires_the_rest(db: Database) -> None:
    wallet(db)
    first = _month(db, 0, earlier=[], keep=1500)
    second = _month(db, 1, earlier=[first.receipt.transfer_id], keep=1500)
    assert (second.carried, second.expired) == (1000, 0)
    third = _month(
        db, 2, earlier=[first.receipt.transfer_id, second.receipt.transfer_id], keep=1500
    )
    assert (third.carried, third.expired) == (1500, 500)
    assert _available(db, 2) == 2500
    with db.read() as conn:
        live = conn.execute(
            sa.select(buckets.c.expires_at).where(buckets.c.remaining > 0)
        ).scalars()
        assert set(live) == {T0 + 3 * MONTH + timedelta(days=1)}  # carried with the new month


def test_tokens_a_hold_reserves_are_not_carried_nor_expired(db: Database) -> None:
    wallet(db)
    first = _month(db, 0, earlier=[], keep=0)
    with db.transaction() as conn:
        held = ledger.hold(
            conn,
            user_id="alice",
            amount=400,
            idempotency_key="h-1",
            ttl_seconds=5 * 86400,
            now=T0 + MONTH - timedelta(days=1),
        )
    second = _month(db, 1, earlier=[first.receipt.transfer_id], keep=0)
    assert second.expired == 600
    with db.transaction() as conn:
        # What it frees expires at once.
        ledger.void_hold(conn, hold_id=held.id, now=T0 + MONTH + timedelta(hours=1))
    assert _available(db, 1) == 1000


def test_a_covered_use_reserves_nothing_and_posts_nothing(db: Database) -> None:
    wallet(db, tokens=100)
    with db.transaction() as conn:
        covered = ledger.cover(
            conn,
            user_id="alice",
            amount=40,
            idempotency_key="c-1",
            feature="image",
            quantity=1,
            now=T0,
        )
        assert covered.kind is ledger.HoldKind.COVERED
        assert ledger.balance(conn, user_id="alice", now=T0).available == 100
        with pytest.raises(ledger.InvalidArgument):
            ledger.post_hold(conn, hold_id=covered.id, amount=40, now=T0)
        posted = ledger.post_covered(conn, hold_id=covered.id, amount=30, now=T0)
        assert (posted.status, posted.posted_amount, posted.transfer_id) == (
            ledger.HoldStatus.POSTED,
            30,
            None,
        )
        spent = ledger.cover(
            conn,
            user_id="alice",
            amount=40,
            idempotency_key="c-2",
            feature="image",
            quantity=1,
            posted=True,
            now=T0,
        )
        assert spent.status is ledger.HoldStatus.POSTED
        replay = ledger.cover(
            conn,
            user_id="alice",
            amount=40,
            idempotency_key="c-2",
            feature="image",
            quantity=1,
            posted=True,
            now=T0,
        )
        assert replay.replayed and replay.id == spent.id
        with pytest.raises(ledger.IdempotencyConflict):
            ledger.cover(
                conn,
                user_id="alice",
                amount=40,
                idempotency_key="c-2",
                feature="image",
                quantity=2,
                posted=True,
                now=T0,
            )
        voided = ledger.cover(
            conn,
            user_id="alice",
            amount=40,
            idempotency_key="c-3",
            feature="image",
            quantity=1,
            now=T0,
        )
        ledger.void_hold(conn, hold_id=voided.id, now=T0)
        assert ledger.balance(conn, user_id="alice", now=T0).held == 0
