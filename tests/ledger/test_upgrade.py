"""Upgrading a ledger written before migration 0007 (hold kinds).

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
from tokenbank.ledger.journal import record_transfer
from tokenbank.ledger.models import SystemAccount, TransferKind, accounts, holds, transfers

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def _rows_of_0006(db: Database) -> dict[str, int]:
    """A wallet as 0006 left it: a purchase, a clawback, a posted hold, a pending freeze."""
    with db.transaction() as conn:
        wallet = ledger.open_wallet(conn, user_id="alice", now=T0)
        purchase, _ = ledger.credit_purchase(
            conn, user_id="alice", reference="purchase:9", tokens=100, bonus_tokens=0, now=T0
        )
        clawback = ledger.claw_back(conn, user_id="alice", amount=10, reference="refund:3", now=T0)

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
        balance = conn.execute(
            sa.update(accounts)
            .where(accounts.c.id == wallet)
            .values(held=30, balance=accounts.c.balance - 20, total_spent=20)
            .returning(accounts.c.balance)
        ).scalar_one()
        spend = record_transfer(
            conn,
            key=f"@hold/{posted}/post",
            kind=TransferKind.SPEND,
            debit_account_id=wallet,
            credit_account_id=SystemAccount.CONSUMPTION,
            amount=20,
            wallet_id=wallet,
            wallet_balance=balance,
            description=None,
            metadata=None,
            event_at=T0,
            now=T0,
        )
        conn.execute(
            sa.update(holds)
            .where(holds.c.id == posted)
            .values(status="posted", posted_amount=20, transfer_id=spend, resolved_at=T0)
        )
        keys = set(conn.execute(sa.select(transfers.c.idempotency_key)).scalars())
    assert keys >= {"@purchase:purchase:9", "@clawback:refund:3", f"@hold/{posted}/post"}
    assert clawback.transfer_id is not None
    return {
        "freeze": freeze,
        "posted": posted,
        "spend": spend,
        "purchase": purchase.transfer_id,
        "clawback": clawback.transfer_id,
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
    assert kinds == {old["freeze"]: "freeze", old["posted"]: "hold"}

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
