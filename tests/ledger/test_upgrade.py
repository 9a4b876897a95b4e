"""Upgrading a ledger written before migration 0007 (hold kinds) and 0010 (buckets).

Before 0007 a freeze was known by its key's prefix (``@freeze:``) and a hold's posting had
a key of its own format (``@hold/{id}/post``). The rows written then must keep working: a
repeat after the upgrade finds the row written before it, and a freeze stays frozen.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic import command

from tokenbank import ledger, migrations
from tokenbank.db import Database
from tokenbank.ledger.models import (
    SystemAccount,
    TransferKind,
    accounts,
    buckets,
    draws,
    entries,
    holds,
    transfers,
)

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def _transfer(
    conn: sa.Connection,
    *,
    key: str,
    kind: TransferKind,
    debit: int,
    credit: int,
    amount: int,
    wallet: int,
) -> int:
    """A transfer and its entries in the columns 0006 had, after the wallet row changed."""
    balance = conn.execute(sa.select(accounts.c.balance).where(accounts.c.id == wallet)).scalar()
    transfer_id = int(
        conn.execute(
            sa.insert(transfers)
            .values(
                idempotency_key=key,
                kind=kind.value,
                debit_account_id=debit,
                credit_account_id=credit,
                amount=amount,
                event_at=T0,
                created_at=T0,
            )
            .returning(transfers.c.id)
        ).scalar_one()
    )
    for account, signed in ((debit, -amount), (credit, amount)):
        conn.execute(
            sa.insert(entries).values(
                transfer_id=transfer_id,
                account_id=account,
                kind=kind.value,
                amount=signed,
                balance_after=balance if account == wallet else None,
                created_at=T0,
            )
        )
    return transfer_id


def _rows_of_0006(db: Database) -> dict[str, int]:
    """A wallet as 0006 left it: a purchase, a clawback, a posted hold, a pending freeze,
    written in 0006's columns (the code of today writes more)."""
    with db.transaction() as conn:
        wallet = ledger.open_wallet(conn, user_id="alice", now=T0)
        conn.execute(
            sa.update(accounts)
            .where(accounts.c.id == wallet)
            .values(balance=100, total_purchased=100)
        )
        purchase = _transfer(
            conn,
            key="@purchase:purchase:9",
            kind=TransferKind.PURCHASE,
            debit=SystemAccount.PURCHASES,
            credit=wallet,
            amount=100,
            wallet=wallet,
        )
        conn.execute(sa.update(accounts).where(accounts.c.id == wallet).values(balance=90))
        clawback = _transfer(
            conn,
            key="@clawback:refund:3",
            kind=TransferKind.CLAWBACK,
            debit=wallet,
            credit=SystemAccount.REFUNDS,
            amount=10,
            wallet=wallet,
        )

        def insert_hold(key: str, amount: int, expires_at: datetime) -> int:
            values = {
                "idempotency_key": key,
                "account_id": wallet,
                "amount": amount,
                "status": "pending",
                "expires_at": expires_at,
                "created_at": T0,
            }
            return int(
                conn.execute(sa.insert(holds).values(values).returning(holds.c.id)).scalar_one()
            )

        freeze = insert_hold("@freeze:dispute:7", 30, ledger.FROZEN_UNTIL)
        posted = insert_hold("req-1", 50, datetime(2026, 11, 21, 13, tzinfo=UTC))
        conn.execute(
            sa.update(accounts)
            .where(accounts.c.id == wallet)
            .values(held=30, balance=accounts.c.balance - 20, total_spent=20)
        )
        spend = _transfer(
            conn,
            key=f"@hold/{posted}/post",
            kind=TransferKind.SPEND,
            debit=wallet,
            credit=SystemAccount.CONSUMPTION,
            amount=20,
            wallet=wallet,
        )
        conn.execute(
            sa.update(holds)
            .where(holds.c.id == posted)
            .values(status="posted", posted_amount=20, transfer_id=spend, resolved_at=T0)
        )
    return {
        "freeze": freeze,
        "posted": posted,
        "spend": spend,
        "purchase": purchase,
        "clawback": clawback,
    }


def test_rows_written_before_0007_replay_after_it(db: Database) -> None:
    config = migrations.alembic_config(db)
    command.downgrade(config, "0006")
    try:
        old = _rows_of_0006(db)
        command.upgrade(config, "0007")
    finally:  # the PostgreSQL database is shared by the session's tests
        migrations.upgrade(db)

    with db.read() as conn:
        kinds = dict(conn.execute(sa.select(holds.c.id, holds.c.kind)).all())
        # 0010 carried the balance over in one bucket that never expires, the freeze in it.
        carried = conn.execute(
            sa.select(buckets.c.amount, buckets.c.remaining, buckets.c.held, buckets.c.expires_at)
        ).all()
        reserved = conn.execute(sa.select(draws.c.hold_id, draws.c.amount)).all()
    assert kinds == {old["freeze"]: "freeze", old["posted"]: "hold"}
    assert carried == [(70, 70, 30, None)]
    assert reserved == [(old["freeze"], 30)]

    with db.transaction() as conn:
        frozen = ledger.freeze(conn, user_id="alice", amount=30, reference="dispute:7")
        posted = ledger.post_hold(conn, hold_id=old["posted"], amount=20)
        purchase, _ = ledger.credit_purchase(
            conn, user_id="alice", reference="purchase:9", tokens=100, bonus_tokens=0, now=T0
        )
        clawback = ledger.claw_back(conn, user_id="alice", amount=10, reference="refund:3")
    assert (frozen is not None and frozen.id, frozen and frozen.kind) == (
        old["freeze"],
        ledger.HoldKind.FREEZE,
    )
    assert (posted.replayed, posted.transfer_id) == (True, old["spend"])
    assert (purchase.replayed, purchase.transfer_id) == (True, old["purchase"])
    assert (clawback.replayed, clawback.transfer_id) == (True, old["clawback"])

    for refused in (
        lambda conn: ledger.void_hold(conn, hold_id=old["freeze"]),
        lambda conn: ledger.post_hold(conn, hold_id=old["freeze"], amount=1),
    ):
        with pytest.raises(ledger.HoldFrozen), db.transaction() as conn:
            refused(conn)
    with db.transaction() as conn:
        ledger.void_hold(conn, hold_id=old["freeze"], unfreeze=True)
        assert ledger.balance(conn, user_id="alice").held == 0
        # A spend from before buckets drew on none: its refund fills a bucket of its own.
        ledger.refund(conn, transfer_id=old["spend"], idempotency_key="r-old", amount=5)
        ledger.spend(conn, user_id="alice", amount=74, idempotency_key="after")
        assert ledger.balance(conn, user_id="alice").available == 1


def test_a_posting_made_after_the_upgrade_has_a_reserved_key_of_the_one_format(
    db: Database,
) -> None:
    with db.transaction() as conn:
        ledger.open_wallet(conn, user_id="alice")
        ledger.credit(
            conn, user_id="alice", amount=10, kind=TransferKind.GRANT, idempotency_key="seed"
        )
        held = ledger.hold(conn, user_id="alice", amount=10, idempotency_key="h1")
        posted = ledger.post_hold(conn, hold_id=held.id, amount=7)
    with db.read() as conn:
        assert ledger.get_transfer(conn, transfer_id=posted.transfer_id).idempotency_key == (
            f"@post:hold:{held.id}"
        )
