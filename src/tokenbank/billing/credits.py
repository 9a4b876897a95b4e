"""Crediting a paid purchase's tokens, once.

Two ways lead here: a settle that finds the payment paid and matching, and an admin's
``credit`` decision about a payment that did not match. Both must credit the same way and
at most once, so this is its own module that settling and reviews both use.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tokenbank import ledger
from tokenbank.billing.models import PurchaseStatus, purchases
from tokenbank.billing.outcomes import Outcome
from tokenbank.billing.purchases import ClawbackPolicy, Purchase


def credit_paid(
    conn: Connection,
    purchase: Purchase,
    outcome: Outcome,
    *,
    policy: ClawbackPolicy,
    now: datetime,
) -> None:
    """Credit a purchase whose payment is settled (once: a paid purchase is left alone; the
    ledger's reserved key for the purchase says so too). Under the ``negative`` policy the
    new tokens first pay the user's debt."""
    if purchase.status is PurchaseStatus.PAID:
        return
    receipt, _ = ledger.credit_purchase(
        conn,
        user_id=purchase.user_id,
        reference=f"purchase:{purchase.id}",
        tokens=purchase.tokens,
        bonus_tokens=purchase.bonus_tokens,
        description=f"Purchase of {purchase.package_id}",
        metadata={"purchase_id": purchase.id, "package_id": purchase.package_id},
        now=now,
        expires_at=None
        if purchase.tokens_expire_days is None
        else now + timedelta(days=purchase.tokens_expire_days),
    )
    conn.execute(
        sa.update(purchases)
        .where(purchases.c.id == purchase.id)
        .values(
            status=PurchaseStatus.PAID.value,
            credit_transfer_id=receipt.transfer_id,
            paid_at=now,
            failure_code=None,
            failure_message=None,
            updated_at=now,
        )
    )
    collected = 0
    if policy == "negative":
        settled = ledger.settle_debt(
            conn, user_id=purchase.user_id, reference=f"purchase:{purchase.id}", now=now
        )
        collected = settled.taken
    outcome.record(
        "purchase_credited",
        "credited" + (f"; collected {collected} tokens of debt" if collected else ""),
        tokens=purchase.tokens,
        bonus_tokens=purchase.bonus_tokens,
        amount=purchase.amount,
        currency=purchase.currency,
        debt_collected=collected,
    )
