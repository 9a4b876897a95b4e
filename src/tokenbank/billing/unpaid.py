"""Purchases not paid yet: the buyer goes back to paying, or ends them unpaid.

A pending purchase can be resumed (``resume_purchase``: the Checkout page again, or the
card form of its PaymentIntent) while Stripe can still take its payment. It must not stay
``pending`` forever either: the buyer who leaves the payment page (the
cancel link Stripe sends them back to, or Cancel on their dashboard) cancels it, and a
PaymentIntent left unpaid is canceled by ``reconcile`` after ``ABANDONED_AFTER``. A
Checkout Session needs nothing of ours: Stripe expires it after its lifetime (24 hours) and
says so (``checkout.session.expired``), which settles the purchase as ``expired``.

Stripe is asked first, with nothing locked, to close what could still pay (the session's
page, the PaymentIntent); the purchase is canceled only once Stripe agreed. When Stripe
refuses because the payment went on (paid, or paying), the purchase is settled from what
Stripe says instead: a cancel never loses a payment.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa

from tokenbank.billing.models import PurchaseStatus, purchases
from tokenbank.billing.outcomes import Outcome
from tokenbank.billing.purchases import (
    ClawbackPolicy,
    PaymentStart,
    Purchase,
    get_purchase,
    to_purchase,
)
from tokenbank.billing.settlement import settle_from_stripe
from tokenbank.columns import utcnow
from tokenbank.db import Database
from tokenbank.errors import PaymentProviderError, StripeObjectMissing
from tokenbank.payments.stripe import Stripe

#: A PaymentIntent of tokenbank's own card form still unpaid this long after it was made
#: is abandoned: as long as the longest a Checkout Session stays open.
ABANDONED_AFTER = timedelta(hours=24)


#: A purchase nobody has paid, and that someone still could: a failed one too (a declined
#: card; another card can still pay its page).
UNPAID = frozenset({PurchaseStatus.PENDING, PurchaseStatus.FAILED})
#: The PaymentIntent states in which a buyer can still pay it.
PAYABLE = frozenset({"requires_payment_method", "requires_confirmation", "requires_action"})


@dataclass(frozen=True, slots=True)
class Resume:
    """Where a buyer goes on paying: ``checkout_url``, or the card form of ``payment``; or
    neither, when the purchase can no longer be paid (``purchase`` as it is now)."""

    purchase: Purchase
    checkout_url: str | None = None
    payment: PaymentStart | None = None


def resume_purchase(
    db: Database, stripe: Stripe, *, purchase_id: int, policy: ClawbackPolicy
) -> Resume:
    """Go back to paying an unpaid purchase, pending or declined (the caller checked it is
    the buyer's)."""
    with db.read() as conn:
        purchase = get_purchase(conn, purchase_id=purchase_id)
    if purchase.status not in UNPAID:
        return Resume(purchase=purchase)
    if purchase.checkout_session_id is not None:
        session = stripe.checkout_session(purchase.checkout_session_id)
        if session.status == "open" and session.url:
            return Resume(purchase=purchase, checkout_url=session.url)
    elif purchase.payment_intent_id is not None:
        intent = stripe.payment_intent(purchase.payment_intent_id)
        if intent.status in PAYABLE and intent.client_secret:
            start = PaymentStart(purchase, intent.id, intent.client_secret)
            return Resume(purchase=purchase, payment=start)
    else:
        return Resume(purchase=purchase)  # never reached Stripe: reconcile ends it
    return Resume(purchase=_settle_instead(db, stripe, purchase, policy=policy))


def cancel_purchase(
    db: Database,
    stripe: Stripe,
    *,
    purchase_id: int,
    policy: ClawbackPolicy,
    reason: str = "requested_by_customer",
) -> Purchase:
    """End an unpaid purchase (pending, or failed: a declined card) its buyer gave up on;
    the caller checked it is theirs.

    Idempotent: a purchase paid, or ended already, is returned as it is. ``reason``: Stripe's
    ``cancellation_reason`` for a PaymentIntent (``abandoned`` from ``reconcile``).
    """
    with db.read() as conn:
        purchase = get_purchase(conn, purchase_id=purchase_id)
    if purchase.status not in UNPAID:
        return purchase
    try:
        if purchase.checkout_session_id is not None:
            stripe.expire_checkout_session(purchase.checkout_session_id)
        elif purchase.payment_intent_id is not None:
            stripe.cancel_payment_intent(purchase.payment_intent_id, reason=reason)
    except StripeObjectMissing:
        pass  # nothing at Stripe can pay it
    except PaymentProviderError:
        return _settle_instead(db, stripe, purchase, policy=policy)
    return _mark_canceled(db, purchase, reason=reason)


def _settle_instead(
    db: Database, stripe: Stripe, purchase: Purchase, *, policy: ClawbackPolicy
) -> Purchase:
    """Stripe would not close it: no longer open, so Stripe's word settles it."""
    outcome = settle_from_stripe(
        db,
        stripe,
        session_id=purchase.checkout_session_id,
        payment_intent_id=None if purchase.checkout_session_id else purchase.payment_intent_id,
        policy=policy,
        source="cancel",
    )
    return outcome.purchase or purchase


def _mark_canceled(db: Database, purchase: Purchase, *, reason: str) -> Purchase:
    with db.transaction() as conn:
        ended = conn.execute(
            sa.update(purchases)
            .where(
                purchases.c.id == purchase.id,
                sa.or_(
                    purchases.c.status.in_([status.value for status in UNPAID]),
                    # Our own expiry, already reported by Stripe's webhook: still the cancel.
                    sa.and_(
                        purchases.c.status == PurchaseStatus.EXPIRED.value,
                        purchases.c.failure_code == "expired",
                    ),
                ),
            )
            .values(
                status=PurchaseStatus.CANCELED.value,
                failure_code="canceled",
                failure_message=(
                    "Nobody paid it in time." if reason == "abandoned" else "The buyer canceled it."
                ),
                updated_at=utcnow(),
            )
            .returning(*purchases.c)
        ).first()
        if ended is None:  # settled meanwhile (a webhook): as it is now
            return get_purchase(conn, purchase_id=purchase.id)
    outcome = Outcome(purchase=to_purchase(ended))
    outcome.record(
        "purchase_canceled",
        f"marked canceled ({reason})",
        status=PurchaseStatus.CANCELED.value,
        failure_code="canceled",
        reason=reason,
    )
    outcome.log_changes("cancel")
    return outcome.purchase or purchase
