"""Stripe refunds: money going back to the buyer takes back the tokens it bought.

Inside billing a refund is always Stripe's refund of a payment (recorded one row per
refund in ``payment_refunds``); the ledger's giving back of a spend is a different thing
that billing never calls. Each refund that has succeeded claws back its share of the
purchase's tokens once per refund id. Shares are computed on the cumulative refunded
amount, so however a refund is split, a full refund takes back exactly every token. A
refund that fails (or is canceled) after it had succeeded is reversed, once: what its
clawback took comes back.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tokenbank import ledger
from tokenbank.billing.disputes import refreeze, unfreeze_open
from tokenbank.billing.models import payment_refunds, purchases
from tokenbank.billing.outcomes import Outcome
from tokenbank.billing.purchases import tokens_for
from tokenbank.payments.stripe import Refund

#: A refund in these states gave nothing back (after succeeding, it is reversed).
REFUND_UNDONE = frozenset({"failed", "canceled"})


def apply_payment_refund(
    conn: Connection, *, purchase_id: int, refund: Refund, outcome: Outcome, now: datetime
) -> None:
    """Claw back a succeeded refund's share once, or reverse one that failed since."""
    if refund.status in REFUND_UNDONE:
        _reverse_failed(conn, purchase_id, refund, outcome, now)
        return
    if refund.status != "succeeded":
        return  # pending refunds settle later
    if conn.execute(
        sa.select(payment_refunds.c.id).where(payment_refunds.c.refund_id == refund.id)
    ).first():
        return
    row = conn.execute(sa.select(purchases).where(purchases.c.id == purchase_id)).one()
    # A freeze holds the tokens a refund takes back: lift it, then freeze what is left.
    frozen = unfreeze_open(conn, purchase_id=purchase_id, now=now)
    refunded = min(row.amount, row.refunded_amount + refund.amount)
    # Shares by cumulative amount: a full refund, however split, claws back every token.
    owed = tokens_for(row, amount=refunded) - tokens_for(row, amount=row.refunded_amount)
    owed = min(owed, row.tokens + row.bonus_tokens - row.clawed_back_tokens)
    taken, debt, transfer_id = 0, 0, None
    if owed > 0:
        clawback = ledger.claw_back(
            conn,
            user_id=row.user_id,
            amount=owed,
            reference=f"refund:{refund.id}",
            description=f"Refund {refund.id} of purchase {purchase_id}",
            metadata={"purchase_id": purchase_id, "refund_id": refund.id},
            now=now,
        )
        taken, debt, transfer_id = clawback.taken, clawback.debt, clawback.transfer_id
    conn.execute(
        sa.insert(payment_refunds).values(
            refund_id=refund.id,
            purchase_id=purchase_id,
            amount=refund.amount,
            tokens=owed,
            taken=taken,
            debt=debt,
            transfer_id=transfer_id,
            created_at=now,
        )
    )
    conn.execute(
        sa.update(purchases)
        .where(purchases.c.id == purchase_id)
        .values(
            refunded_amount=refunded,
            clawed_back_tokens=purchases.c.clawed_back_tokens + owed,
            updated_at=now,
        )
    )
    refreeze(conn, purchase_id=purchase_id, frozen=frozen, after=refund.id, now=now)
    note = f"refund {refund.id}: clawed back {taken} tokens"
    outcome.record(
        "refund_clawed_back",
        note + (f", {debt} recorded as debt" if debt else ""),
        refund_id=refund.id,
        refund_amount=refund.amount,
        tokens=int(owed),
        taken=taken,
        debt=debt,
    )


def _reverse_failed(
    conn: Connection, purchase_id: int, refund: Refund, outcome: Outcome, now: datetime
) -> None:
    """A refund that failed (or was canceled) after it had succeeded: what its clawback took
    comes back, once. One that never succeeded here clawed nothing back: nothing to do."""
    recorded = conn.execute(
        sa.select(payment_refunds).where(payment_refunds.c.refund_id == refund.id)
    ).first()
    if recorded is None or recorded.reversed_at is not None:
        return
    row = conn.execute(sa.select(purchases).where(purchases.c.id == purchase_id)).one()
    given = cancelled = 0
    transfer_id = None
    if recorded.tokens > 0:
        restored = ledger.restore(
            conn,
            user_id=row.user_id,
            reference=f"refund:{refund.id}",
            taken=recorded.taken,
            debt=recorded.debt,
            description=f"Refund {refund.id} of purchase {purchase_id} failed",
            metadata={"purchase_id": purchase_id, "refund_id": refund.id, "refund_failed": True},
            now=now,
        )
        given, cancelled, transfer_id = restored.given, restored.cancelled, restored.transfer_id
    conn.execute(
        sa.update(payment_refunds)
        .where(payment_refunds.c.id == recorded.id)
        .values(reversed_at=now, reversal_transfer_id=transfer_id)
    )
    conn.execute(
        sa.update(purchases)
        .where(purchases.c.id == purchase_id)
        .values(
            refunded_amount=max(0, row.refunded_amount - recorded.amount),
            clawed_back_tokens=max(0, row.clawed_back_tokens - recorded.tokens),
            updated_at=now,
        )
    )
    note = f"refund {refund.id} {refund.status}: gave back {given} tokens"
    outcome.record(
        "refund_reversed",
        note + (f", cancelled {cancelled} of debt" if cancelled else ""),
        refund_id=refund.id,
        refund_status=refund.status,
        refund_amount=int(recorded.amount),
        tokens_returned=given,
        debt_cancelled=cancelled,
    )
