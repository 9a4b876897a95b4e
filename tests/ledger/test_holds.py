from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import Unit
from tests.ledger.factories import wallet
from tokenbank import ledger
from tokenbank.db import Database
from tokenbank.ledger import HoldStatus, TransferKind

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def _hold(db: Database, amount: int, key: str = "h1", ttl: int = 60) -> ledger.Hold:
    with db.transaction() as conn:
        return ledger.hold(
            conn, user_id="alice", amount=amount, idempotency_key=key, ttl_seconds=ttl, now=T0
        )


def _balance(db: Database, at: datetime = T0) -> ledger.Balance:
    with db.read() as conn:
        return ledger.balance(conn, user_id="alice", now=at)


def test_a_hold_reserves_tokens_without_moving_them(db: Database) -> None:
    wallet(db, tokens=100)
    held = _hold(db, 70)
    assert (held.status, held.amount, held.user_id) == (HoldStatus.PENDING, 70, "alice")
    assert held.expires_at == T0 + timedelta(seconds=60)
    balance = _balance(db)
    assert (balance.available, balance.held, balance.balance) == (30, 70, 100)
    with pytest.raises(ledger.InsufficientTokens), db.transaction() as conn:
        ledger.spend(conn, user_id="alice", amount=31, idempotency_key="s1", now=T0)
    with pytest.raises(ledger.InsufficientTokens), db.transaction() as conn:
        ledger.hold(conn, user_id="alice", amount=31, idempotency_key="h2", now=T0)


def test_post_spends_at_most_the_hold_and_releases_the_rest(db: Database, unit: Unit) -> None:
    wallet(db, tokens=100)
    held = _hold(db, 70)
    with pytest.raises(ledger.InvalidArgument), unit() as conn:
        ledger.post_hold(conn, hold_id=held.id, amount=71, now=T0)
    with unit() as conn:
        receipt = ledger.post_hold(conn, hold_id=held.id, amount=45, now=T0)
    assert (receipt.kind, receipt.amount, receipt.balance) == (TransferKind.SPEND, 45, 55)
    balance = _balance(db)
    assert (balance.available, balance.held, balance.total_spent) == (55, 0, 45)
    with db.read() as conn:
        posted = ledger.get_hold(conn, hold_id=held.id)
    assert (posted.status, posted.posted_amount, posted.transfer_id) == (
        HoldStatus.POSTED,
        45,
        receipt.transfer_id,
    )
    with unit() as conn:  # the same post again: the first result
        again = ledger.post_hold(conn, hold_id=held.id, amount=45, now=T0)
    assert again.replayed and (again.transfer_id, again.balance) == (receipt.transfer_id, 55)
    with pytest.raises(ledger.IdempotencyConflict), unit() as conn:
        ledger.post_hold(conn, hold_id=held.id, amount=44, now=T0)
    with pytest.raises(ledger.HoldNotPending), unit() as conn:
        ledger.void_hold(conn, hold_id=held.id, now=T0)
    with unit() as conn:  # a posted hold's spend can be refunded like any spend
        assert (
            ledger.refund(conn, transfer_id=receipt.transfer_id, idempotency_key="r").amount == 45
        )


def test_void_releases_everything_once(db: Database, unit: Unit) -> None:
    wallet(db, tokens=100)
    held = _hold(db, 70)
    with unit() as conn:
        voided = ledger.void_hold(conn, hold_id=held.id, now=T0)
    assert voided.status is HoldStatus.VOIDED and not voided.replayed
    with unit() as conn:
        assert ledger.void_hold(conn, hold_id=held.id, now=T0).replayed
    with pytest.raises(ledger.HoldNotPending) as not_pending, unit() as conn:
        ledger.post_hold(conn, hold_id=held.id, amount=1, now=T0)
    assert not_pending.value.status == "voided"
    assert _balance(db).available == 100


def test_hold_replay_and_conflict(db: Database) -> None:
    wallet(db, tokens=100)
    first = _hold(db, 70)
    again = _hold(db, 70)
    assert again.replayed and again.id == first.id
    assert _balance(db).held == 70
    with pytest.raises(ledger.IdempotencyConflict):
        _hold(db, 71)
    with pytest.raises(ledger.IdempotencyConflict):  # as long a hold, asked again later
        _hold(db, 70, ttl=61)
    with db.transaction() as conn:  # a retry a while later asks for the same lifetime
        later = ledger.hold(
            conn,
            user_id="alice",
            amount=70,
            idempotency_key="h1",
            ttl_seconds=60,
            now=T0 + timedelta(seconds=5),
        )
    assert later.replayed and later.id == first.id


def test_expiry_releases_holds_past_their_deadline(db: Database, unit: Unit) -> None:
    wallet(db, tokens=100)
    short = _hold(db, 30, key="short", ttl=10)
    long = _hold(db, 30, key="long", ttl=100)
    later = T0 + timedelta(seconds=10)
    # Reads already treat an expired hold as released, before any sweep.
    assert (_balance(db, later).available, _balance(db, later).held) == (70, 30)
    with unit() as conn:
        assert ledger.expire_holds(conn, now=later) == 1
        assert ledger.expire_holds(conn, now=later) == 0
    with db.read() as conn:
        assert ledger.get_hold(conn, hold_id=short.id).status is HoldStatus.EXPIRED
        assert ledger.get_hold(conn, hold_id=long.id).status is HoldStatus.PENDING
    with pytest.raises(ledger.HoldNotPending), unit() as conn:
        ledger.post_hold(conn, hold_id=short.id, amount=1, now=later)


def test_an_expired_hold_cannot_be_posted_even_before_the_sweep(db: Database) -> None:
    wallet(db, tokens=100)
    held = _hold(db, 30, ttl=10)
    with pytest.raises(ledger.HoldNotPending) as late, db.transaction() as conn:
        ledger.post_hold(conn, hold_id=held.id, amount=1, now=T0 + timedelta(seconds=11))
    assert late.value.status == "expired"


def test_voiding_after_the_deadline_ends_the_hold_as_expired(db: Database) -> None:
    wallet(db, tokens=100)
    held = _hold(db, 30, ttl=10)
    with db.transaction() as conn:
        ended = ledger.void_hold(conn, hold_id=held.id, now=T0 + timedelta(seconds=10))
    assert ended.status is HoldStatus.EXPIRED
    assert not ended.replayed
    with db.transaction() as conn:
        assert ledger.void_hold(conn, hold_id=held.id, now=T0 + timedelta(seconds=20)).replayed
    assert _balance(db).available == 100


def test_a_spend_releases_expired_holds_it_needs(db: Database, unit: Unit) -> None:
    wallet(db, tokens=100)
    _hold(db, 90, ttl=10)
    with unit() as conn:
        receipt = ledger.spend(
            conn, user_id="alice", amount=50, idempotency_key="s1", now=T0 + timedelta(seconds=10)
        )
    assert receipt.balance == 50
    assert _balance(db).held == 0


def test_a_hold_releases_expired_holds_it_needs(db: Database, unit: Unit) -> None:
    wallet(db, tokens=100)
    _hold(db, 90, ttl=10)
    with unit() as conn:
        fresh = ledger.hold(
            conn,
            user_id="alice",
            amount=80,
            idempotency_key="h2",
            now=T0 + timedelta(seconds=10),
        )
    assert fresh.status is HoldStatus.PENDING
    assert _balance(db, T0).held == 80


@pytest.mark.parametrize("ttl", [0, -1, 7 * 24 * 3600 + 1, 1.5])
def test_bad_ttl(db: Database, ttl: object) -> None:
    wallet(db, tokens=100)
    with pytest.raises(ledger.InvalidArgument, match="ttl"), db.transaction() as conn:
        ledger.hold(conn, user_id="alice", amount=1, idempotency_key="h", ttl_seconds=ttl)  # type: ignore[arg-type]


def test_unknown_hold(db: Database) -> None:
    with pytest.raises(ledger.UnknownHold), db.transaction() as conn:
        ledger.post_hold(conn, hold_id=12345, amount=1)
    with pytest.raises(ledger.UnknownHold), db.transaction() as conn:
        ledger.void_hold(conn, hold_id=12345)
    with pytest.raises(ledger.UnknownHold), db.read() as conn:
        ledger.get_hold(conn, hold_id=12345)
