"""Purchases an admin must decide: what settling cannot decide is flagged, never guessed.

Two anomalies are flagged: a payment of another amount or currency than its purchase
(status ``needs_review``, nothing credited) and a purchase credited here whose payment
Stripe does not show as paid (it stays ``paid``). A purchase is flagged once per anomaly;
``resolve_review`` records the admin's decision and its audit line in one transaction, and
later settles of the same anomaly respect it.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tokenbank import audit, ledger
from tokenbank.billing.credits import credit_paid
from tokenbank.billing.models import PurchaseStatus, ReviewDecision, purchases
from tokenbank.billing.outcomes import Outcome
from tokenbank.billing.purchases import ClawbackPolicy, Purchase, lock_purchase, to_purchase
from tokenbank.columns import utcnow
from tokenbank.db import Database
from tokenbank.errors import InvalidArgument, NothingToReview

#: What an admin may decide, by whether the flagged purchase is ``needs_review`` (nothing
#: credited) or a credited purchase Stripe does not show as paid.
REVIEW_DECISIONS = {
    True: (ReviewDecision.CREDIT, ReviewDecision.REFUSE),  # needs_review: nothing credited
    False: (ReviewDecision.REVERSE, ReviewDecision.DISMISS),  # credited, then questioned
}


def already_decided(
    purchase: Purchase, reason: str, decision: ReviewDecision | None = None
) -> bool:
    """Whether an admin already decided about this very anomaly (and decided ``decision``)."""
    if purchase.review != reason or purchase.review_decision is None:
        return False
    return decision is None or purchase.review_decision is decision


def flag_for_review(
    conn: Connection, purchase: Purchase, *, reason: str, outcome: Outcome, now: datetime
) -> None:
    """Ask an admin to look: once per anomaly (a new one replaces an old decision)."""
    if purchase.review == reason and purchase.review_decision is None:
        return
    status = PurchaseStatus.PAID if purchase.status is PurchaseStatus.PAID else None
    flagged_status = status or PurchaseStatus.NEEDS_REVIEW
    conn.execute(
        sa.update(purchases)
        .where(purchases.c.id == purchase.id)
        .values(
            status=flagged_status.value,
            review=reason,
            review_decision=None,
            reviewed_by=None,
            reviewed_at=None,
            updated_at=now,
        )
    )
    outcome.flagged = reason
    outcome.record(
        "purchase_flagged",
        f"needs review: {reason}",
        warning=True,
        status=flagged_status.value,
        reason=reason,
    )


def flag_purchase(db: Database, *, purchase_id: int, reason: str) -> Outcome:
    """Flag a purchase for an admin from outside a settle (reconcile: its Stripe object is
    gone); nothing else changes."""
    with db.transaction() as conn:
        purchase = lock_purchase(conn, purchase_id=purchase_id)
        outcome = Outcome(purchase=purchase)
        if not already_decided(purchase, reason):
            flag_for_review(conn, purchase, reason=reason, outcome=outcome, now=utcnow())
    outcome.log_changes("reconcile")
    return outcome


def resolve_review(
    db: Database,
    *,
    purchase_id: int,
    decision: ReviewDecision,
    actor: str,
    reason: str,
    policy: ClawbackPolicy,
) -> Purchase:
    """An admin's decision about a flagged purchase, with its audit line, in one
    transaction. A payment that did not match: ``credit`` its tokens after all, or
    ``refuse`` it. A credited purchase Stripe does not show as paid: ``reverse`` (claw
    back what is left of its tokens) or ``dismiss``. Nothing is sent to Stripe: refunding
    the customer, if due, is done in Stripe's dashboard."""
    now = utcnow()
    with db.transaction() as conn:
        purchase = lock_purchase(conn, purchase_id=purchase_id)
        if purchase.review is None or purchase.review_decision is not None:
            raise NothingToReview(purchase_id)
        allowed = REVIEW_DECISIONS[purchase.status is PurchaseStatus.NEEDS_REVIEW]
        if decision not in allowed:
            raise InvalidArgument(
                "decision", f"for this purchase: {' or '.join(d.value for d in allowed)}"
            )
        audit.record(
            conn,
            actor=actor,
            action=f"purchase.{decision.value}",
            subject=f"purchase:{purchase.id}",
            reason=reason,
            details={"review": purchase.review, "status": purchase.status.value},
            now=now,
        )
        outcome = Outcome(purchase=purchase)
        reversed_tokens = 0
        if decision is ReviewDecision.CREDIT:
            credit_paid(conn, purchase, outcome, policy=policy, now=now)
        elif decision is ReviewDecision.REFUSE:
            conn.execute(
                sa.update(purchases)
                .where(purchases.c.id == purchase.id)
                .values(
                    status=PurchaseStatus.FAILED.value,
                    failure_code="refused",
                    failure_message="The payment did not match the purchase and was refused.",
                )
            )
        elif decision is ReviewDecision.REVERSE:
            reversed_tokens = _reverse_credit(conn, purchase, now)
        conn.execute(
            sa.update(purchases)
            .where(purchases.c.id == purchase.id)
            .values(
                review_decision=decision.value, reviewed_by=actor, reviewed_at=now, updated_at=now
            )
        )
        resolved = to_purchase(
            conn.execute(sa.select(purchases).where(purchases.c.id == purchase.id)).one()
        )
        outcome.record(
            "review_decided",
            f"review decided by {actor}: {decision.value}",
            actor=actor,
            decision=decision.value,
            status=resolved.status.value,
            tokens_reversed=reversed_tokens,
        )
    outcome.log_changes("review")
    return resolved


def _reverse_credit(conn: Connection, purchase: Purchase, now: datetime) -> int:
    """Claw back what is left of a purchase's tokens; returns how many that was."""
    owed = purchase.total_tokens - purchase.clawed_back_tokens
    if owed <= 0:
        return 0
    ledger.claw_back(
        conn,
        user_id=purchase.user_id,
        amount=owed,
        reference=f"review:{purchase.id}",
        description=f"Purchase {purchase.id} reversed by an admin",
        metadata={"purchase_id": purchase.id, "reversed": True},
        now=now,
    )
    conn.execute(
        sa.update(purchases)
        .where(purchases.c.id == purchase.id)
        .values(clawed_back_tokens=purchases.c.clawed_back_tokens + owed)
    )
    return owed
