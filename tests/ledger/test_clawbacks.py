"""Purchase credits, clawbacks with debt, debt settlement and freezes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from tests.ledger.factories import wallet
from tokenbank import ledger
from tokenbank.db import Database
from tokenbank.ledger import HoldStatus, TransferKind
from tokenbank.ledger.models import buckets


def _balance(db: Database) -> ledger.Balance:
    with db.read() as conn:
        return ledger.balance(conn, user_id="alice")


def test_a_purchase_is_credited_once_with_its_bonus(db: Database) -> None:
    wallet(db)
    for _ in range(3):
        with db.transaction() as conn:
            receipt, bonus = ledger.credit_purchase(
                conn, user_id="alice", reference="purchase:1", tokens=100, bonus_tokens=20
            )
    assert (receipt.kind, receipt.amount, bonus is not None and bonus.amount) == (
        TransferKind.PURCHASE,
        100,
        20,
    )
    balance = _balance(db)
    assert (balance.available, balance.total_purchased) == (120, 120)


def test_an_api_caller_cannot_take_a_purchase_key_first(db: Database) -> None:
    wallet(db)
    with pytest.raises(ledger.InvalidArgument), db.transaction() as conn:
        ledger.credit(
            conn,
            user_id="alice",
            amount=5,
            kind=TransferKind.GRANT,
            idempotency_key="@purchase:purchase:1",
        )


def test_a_clawback_takes_what_is_there_and_records_the_rest_as_debt(db: Database) -> None:
    wallet(db, tokens=100)
    with db.transaction() as conn:
        ledger.spend(conn, user_id="alice", amount=70, idempotency_key="s1")
    with db.transaction() as conn:
        first = ledger.claw_back(conn, user_id="alice", amount=100, reference="refund:re_1")
    with db.transaction() as conn:
        again = ledger.claw_back(conn, user_id="alice", amount=100, reference="refund:re_1")
    assert (first.taken, first.debt, first.balance) == (30, 70, 0)
    assert (again.taken, again.replayed) == (30, True)
    balance = _balance(db)
    assert (balance.available, balance.debt) == (0, 70)


def test_a_clawback_leaves_held_tokens_alone(db: Database) -> None:
    wallet(db, tokens=100)
    with db.transaction() as conn:
        ledger.hold(conn, user_id="alice", amount=60, idempotency_key="h1")
        clawback = ledger.claw_back(conn, user_id="alice", amount=50, reference="r")
    assert (clawback.taken, clawback.debt) == (40, 10)
    balance = _balance(db)
    assert (balance.available, balance.held, balance.debt) == (0, 60, 10)


def test_nothing_to_take_records_only_debt(db: Database) -> None:
    wallet(db)
    with db.transaction() as conn:
        clawback = ledger.claw_back(conn, user_id="alice", amount=50, reference="r")
    assert (clawback.taken, clawback.debt, clawback.transfer_id) == (0, 50, None)


def test_debt_is_settled_from_later_tokens(db: Database) -> None:
    wallet(db)
    with db.transaction() as conn:
        ledger.claw_back(conn, user_id="alice", amount=50, reference="r")
        ledger.credit_purchase(
            conn, user_id="alice", reference="purchase:2", tokens=30, bonus_tokens=0
        )
        partly = ledger.settle_debt(conn, user_id="alice", reference="purchase:2")
        ledger.credit_purchase(
            conn, user_id="alice", reference="purchase:3", tokens=100, bonus_tokens=0
        )
        rest = ledger.settle_debt(conn, user_id="alice", reference="purchase:3")
        repeated = ledger.settle_debt(conn, user_id="alice", reference="purchase:3")
    assert (partly.taken, partly.debt, rest.taken, rest.debt, repeated.taken) == (30, 20, 20, 0, 0)
    balance = _balance(db)
    assert (balance.available, balance.debt) == (80, 0)


def test_a_freeze_blocks_spending_until_voided(db: Database) -> None:
    wallet(db, tokens=100)
    with db.transaction() as conn:
        frozen = ledger.freeze(conn, user_id="alice", amount=150, reference="dispute:dp_1")
        same = ledger.freeze(conn, user_id="alice", amount=150, reference="dispute:dp_1")
    assert frozen is not None and same is not None
    assert (frozen.amount, frozen.expires_at, same.id) == (100, ledger.FROZEN_UNTIL, frozen.id)
    with pytest.raises(ledger.InsufficientTokens), db.transaction() as conn:
        ledger.spend(conn, user_id="alice", amount=1, idempotency_key="s1")
    with db.transaction() as conn:
        assert ledger.expire_holds(conn) == 0  # a freeze never expires
    for end in (
        lambda conn: ledger.void_hold(conn, hold_id=frozen.id),
        lambda conn: ledger.post_hold(conn, hold_id=frozen.id, amount=10),
    ):
        with pytest.raises(ledger.HoldFrozen), db.transaction() as conn:
            end(conn)  # only the dispute's outcome ends a freeze
    with db.transaction() as conn:
        voided = ledger.void_hold(conn, hold_id=frozen.id, unfreeze=True)
    assert voided.status is HoldStatus.VOIDED
    assert _balance(db).available == 100


def test_an_empty_wallet_has_nothing_to_freeze(db: Database) -> None:
    wallet(db)
    with db.transaction() as conn:
        assert ledger.freeze(conn, user_id="alice", amount=10, reference="d") is None


T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def _trial_and_purchase(db: Database) -> None:
    """A trial of 100 that lapses after a day, and a purchase of 100 that never does."""
    with db.transaction() as conn:
        ledger.open_wallet(conn, user_id="alice", now=T0)
        ledger.credit(
            conn,
            user_id="alice",
            amount=100,
            kind=TransferKind.GRANT,
            idempotency_key="trial",
            source=ledger.Source.TRIAL,
            expires_at=T0 + DAY,
            now=T0,
        )
        ledger.credit_purchase(
            conn, user_id="alice", reference="purchase:1", tokens=100, bonus_tokens=0, now=T0
        )


def _held_by_source(db: Database) -> dict[str, int]:
    with db.read() as conn:
        rows = conn.execute(sa.select(buckets.c.source, buckets.c.held)).all()
    return {row.source: row.held for row in rows}


def test_a_freeze_holds_paid_tokens_and_a_lost_dispute_takes_them(db: Database) -> None:
    """The trial stays usable during the dispute; the disputed tokens cannot be spent."""
    _trial_and_purchase(db)
    with db.transaction() as conn:
        frozen = ledger.freeze(conn, user_id="alice", amount=100, reference="dispute:1", now=T0)
    assert frozen is not None
    assert _held_by_source(db) == {"trial": 0, "purchase": 100}
    with db.transaction() as conn:
        ledger.spend(conn, user_id="alice", amount=100, idempotency_key="s", now=T0)
        with pytest.raises(ledger.InsufficientTokens):
            ledger.spend(conn, user_id="alice", amount=1, idempotency_key="s2", now=T0)
    with db.transaction() as conn:
        lost = ledger.claw_back(
            conn,
            user_id="alice",
            amount=100,
            reference="dispute:1",
            frozen=frozen.id,
            now=T0 + 3 * DAY,
        )
        hold = ledger.get_hold(conn, hold_id=frozen.id)
    assert (lost.taken, lost.debt, lost.balance) == (100, 0, 0)
    assert hold.status is HoldStatus.VOIDED
    balance = _balance(db)
    assert (balance.available, balance.held, balance.debt) == (0, 0, 0)


def test_frozen_tokens_that_lapse_during_a_dispute_are_still_clawed_back(db: Database) -> None:
    """A freeze that had to hold trial tokens (the purchase was spent) keeps them past their
    expiry, and a lost dispute takes them: released first, they would expire and leave
    only debt. What it held beyond the clawback expires then."""
    with db.transaction() as conn:
        ledger.open_wallet(conn, user_id="alice", now=T0)
        ledger.credit_purchase(
            conn, user_id="alice", reference="purchase:1", tokens=100, bonus_tokens=0, now=T0
        )
        ledger.spend(conn, user_id="alice", amount=100, idempotency_key="s", now=T0)
        ledger.credit(
            conn,
            user_id="alice",
            amount=80,
            kind=TransferKind.GRANT,
            idempotency_key="trial",
            source=ledger.Source.TRIAL,
            expires_at=T0 + DAY,
            now=T0,
        )
        frozen = ledger.freeze(conn, user_id="alice", amount=80, reference="dispute:1", now=T0)
    assert frozen is not None and _held_by_source(db) == {"trial": 80, "purchase": 0}
    with db.transaction() as conn:
        lost = ledger.claw_back(
            conn,
            user_id="alice",
            amount=50,
            reference="dispute:1",
            frozen=frozen.id,
            now=T0 + 3 * DAY,
        )
    assert (lost.taken, lost.debt, lost.balance) == (50, 0, 0)
    balance = _balance(db)
    assert (balance.available, balance.held, balance.debt) == (0, 0, 0)
    with db.read() as conn:
        kinds = [item.kind for item in ledger.history(conn, user_id="alice").items]
    assert kinds[:2] == ["expiry", "clawback"]  # the 30 freed in the lapsed trial expired


def test_a_clawback_naming_a_freeze_an_operator_released_takes_the_usual_way(
    db: Database,
) -> None:
    _trial_and_purchase(db)
    with db.transaction() as conn:
        frozen = ledger.freeze(conn, user_id="alice", amount=100, reference="dispute:1", now=T0)
        assert frozen is not None
        ledger.void_hold(conn, hold_id=frozen.id, unfreeze=True, now=T0)
        lost = ledger.claw_back(
            conn, user_id="alice", amount=150, reference="dispute:1", frozen=frozen.id, now=T0
        )
    assert (lost.taken, lost.debt, lost.balance) == (150, 0, 50)
    assert _held_by_source(db) == {"trial": 0, "purchase": 0}
