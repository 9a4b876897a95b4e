"""Bringing a purchase in line with what Stripe says happened to its payment.

Every way news of a payment arrives (any webhook event, the success page, the reconciler)
ends here, and does the same two steps:

1. ``fetch_payment``: ask Stripe for the current Checkout Session and/or PaymentIntent, and
   the refunds and disputes of that payment. No database row is locked meanwhile.
2. ``settle``: in one transaction, lock the purchase row and apply whatever is not applied
   yet: the credit (``credits``), a failure or expiry, each Stripe refund's share of tokens
   (``payment_refunds``), each dispute's freeze, release or clawback (``disputes``). What it cannot
   decide is flagged for an admin (``reviews``), never guessed.

Because step 2 only ever moves a purchase forward, a snapshot that is already stale when it
commits (another delivery got there first) changes nothing. Events can therefore arrive in
any order, any number of times, concurrently, or not at all (``reconcile``). The caller
commits and then logs the outcome's money events (``Outcome.log_changes``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tokenbank.billing.credits import credit_paid
from tokenbank.billing.disputes import apply_dispute
from tokenbank.billing.models import PurchaseStatus, ReviewDecision, purchases
from tokenbank.billing.outcomes import Outcome
from tokenbank.billing.payment_refunds import apply_payment_refund
from tokenbank.billing.purchases import (
    ClawbackPolicy,
    Purchase,
    find_purchase,
    lock_purchase,
    to_purchase,
)
from tokenbank.billing.reviews import already_decided, flag_for_review
from tokenbank.columns import utcnow
from tokenbank.db import Database
from tokenbank.errors import PaymentMismatch, PaymentProviderUnavailable
from tokenbank.payments.stripe import CheckoutSession, Dispute, PaymentIntent, Refund, Stripe


@dataclass(frozen=True, slots=True)
class Payment:
    """Stripe's current view of one payment."""

    session: CheckoutSession | None = None
    intent: PaymentIntent | None = None
    refunds: tuple[Refund, ...] = ()
    disputes: tuple[Dispute, ...] = ()

    @property
    def purchase_hint(self) -> tuple[int, str] | None:
        """The purchase id and reference we put in the metadata: where to look, when Stripe
        ids were not stored yet. Only a hint: the reference must match our row."""
        for metadata in (
            self.session and self.session.metadata,
            self.intent and self.intent.metadata,
        ):
            value = (metadata or {}).get("tokenbank_purchase_id", "")
            reference = (metadata or {}).get("tokenbank_reference", "")
            if value.isascii() and value.isdigit() and reference:
                return int(value), reference
        return None


#: Which of a payment's lists ``fetch_payment`` reads.
Lists = Literal["always", "when_the_charge_shows"]


def fetch_payment(
    stripe: Stripe,
    *,
    session_id: str | None = None,
    payment_intent_id: str | None = None,
    lists: Lists = "always",
) -> Payment:
    """Step 1, with nothing locked: Stripe's current objects, however stale the news was.

    ``lists="when_the_charge_shows"`` reads the payment's refunds only when its charge
    shows money refunded, and its disputes only when the charge was ever disputed: two
    reads fewer for the news of a payment that succeeded, the bulk of every burst. What it
    cannot see is a refund that succeeded and then failed (the charge no longer counts
    it): that refund's own events, and reconcile, read the lists in full."""
    session = stripe.checkout_session(session_id) if session_id else None
    if session is not None and payment_intent_id not in (None, session.payment_intent_id):
        raise PaymentMismatch(f"payment {payment_intent_id} is not session {session.id}'s")
    intent_id = payment_intent_id or (session.payment_intent_id if session else None)
    if intent_id is None:
        return Payment(session=session)
    brief = lists == "when_the_charge_shows"
    intent = stripe.payment_intent(intent_id, with_charge=brief)
    refunds = not brief or intent.charge_refunded is None or intent.charge_refunded > 0
    disputes = not brief or intent.charge_disputed is None or intent.charge_disputed
    return Payment(
        session=session,
        intent=intent,
        refunds=tuple(stripe.refunds_of(intent_id)) if refunds else (),
        disputes=tuple(stripe.disputes_of(intent_id)) if disputes else (),
    )


def _locate(conn: Connection, payment: Payment) -> int | None:
    """The one purchase this payment is for, or None when it is not one of ours. Stored
    Stripe ids and the metadata hint must all agree."""
    lookups = []
    if payment.session is not None:
        lookups.append(purchases.c.checkout_session_id == payment.session.id)
    if payment.intent is not None:
        lookups.append(purchases.c.payment_intent_id == payment.intent.id)
    if (hint := payment.purchase_hint) is not None:
        lookups.append(
            sa.and_(purchases.c.id == hint[0], purchases.c.stripe_idempotency_key == hint[1])
        )
    if not lookups:
        return None
    found = conn.execute(sa.select(purchases.c.id).where(sa.or_(*lookups))).scalars().all()
    if len(found) > 1:
        raise PaymentMismatch(f"one payment names purchases {sorted(found)}")
    return found[0] if found else None


def settle(
    conn: Connection, payment: Payment, *, policy: ClawbackPolicy, now: datetime | None = None
) -> Outcome:
    """Apply ``payment`` to its purchase (see the module docstring); the caller commits."""
    now = now or utcnow()
    found = _locate(conn, payment)
    if found is None:
        return Outcome(purchase=None)
    # Lock the purchase: every settle of this payment waits here for the one before it.
    purchase = lock_purchase(conn, purchase_id=found)
    outcome = Outcome(purchase=purchase)
    _check_identity(purchase, payment)
    _link(conn, purchase, payment, now)
    paid, mismatch = _paid(purchase, payment)
    accepted = mismatch is None or already_decided(purchase, mismatch, ReviewDecision.CREDIT)
    if mismatch is not None and not already_decided(purchase, mismatch):
        flag_for_review(conn, purchase, reason=mismatch, outcome=outcome, now=now)
    elif paid and accepted:
        credit_paid(conn, purchase, outcome, policy=policy, now=now)
    elif not paid and purchase.status is PurchaseStatus.PAID:
        anomaly = f"credited here, but Stripe reports the payment {_stripe_state(payment)}"
        if not already_decided(purchase, anomaly):
            flag_for_review(conn, purchase, reason=anomaly, outcome=outcome, now=now)
    elif purchase.status not in (PurchaseStatus.PAID, PurchaseStatus.NEEDS_REVIEW):
        _mark_unpaid(conn, purchase, payment, outcome, now)
    if (paid and accepted) or purchase.status is PurchaseStatus.PAID:
        for refund in sorted(payment.refunds, key=lambda r: (r.created, r.id)):
            apply_payment_refund(
                conn, purchase_id=purchase.id, refund=refund, outcome=outcome, now=now
            )
        for dispute in sorted(payment.disputes, key=lambda d: (d.created, d.id)):
            apply_dispute(conn, purchase_id=purchase.id, dispute=dispute, outcome=outcome, now=now)
    outcome.purchase = to_purchase(
        conn.execute(sa.select(purchases).where(purchases.c.id == purchase.id)).one()
    )
    return outcome


def _stripe_state(payment: Payment) -> str:
    parts = []
    if payment.session is not None:
        parts.append(f"session {payment.session.status}/{payment.session.payment_status}")
    if payment.intent is not None:
        parts.append(f"payment {payment.intent.status}")
    return ", ".join(parts) or "missing"


def settle_from_stripe(
    db: Database,
    stripe: Stripe,
    *,
    session_id: str | None,
    payment_intent_id: str | None,
    policy: ClawbackPolicy,
    source: str,
) -> Outcome:
    """Both steps for one payment: Stripe's current objects (nothing locked), then one
    transaction that settles them; the money events are logged once it committed, with
    ``source`` (who asked: ``success_page``, ``cancel``, ``reconcile``...)."""
    payment = fetch_payment(stripe, session_id=session_id, payment_intent_id=payment_intent_id)
    with db.transaction() as conn:
        outcome = settle(conn, payment, policy=policy)
    outcome.log_changes(source)
    return outcome


def settle_returning_buyer(
    db: Database,
    stripe: Stripe,
    *,
    session_id: str | None,
    payment_intent_id: str | None,
    policy: ClawbackPolicy,
) -> Purchase | None:
    """A buyer back from Stripe (the success page): settle their purchase now, as the webhook
    may not have landed. An id no purchase here was started with costs no call to Stripe,
    and neither does a purchase already paid (the page polls while Stripe confirms)."""
    with db.read() as conn:
        known = find_purchase(
            conn, checkout_session_id=session_id, payment_intent_id=payment_intent_id
        )
    if known is None or known.status is PurchaseStatus.PAID:
        return known
    try:
        outcome = settle_from_stripe(
            db,
            stripe,
            session_id=session_id,
            payment_intent_id=payment_intent_id,
            policy=policy,
            source="success_page",
        )
    except PaymentProviderUnavailable:
        return known  # as it stands: the page asks again, and the webhook will come
    return outcome.purchase


def _check_identity(purchase: Purchase, payment: Payment) -> None:
    """A payment may only settle the purchase it was created for."""
    session, intent = payment.session, payment.intent
    if session is not None and purchase.checkout_session_id not in (None, session.id):
        raise PaymentMismatch(f"session {session.id} is not purchase {purchase.id}'s")
    if intent is not None and purchase.payment_intent_id not in (None, intent.id):
        raise PaymentMismatch(f"payment {intent.id} is not purchase {purchase.id}'s")


def _link(conn: Connection, purchase: Purchase, payment: Payment, now: datetime) -> None:
    """Remember the Stripe ids we learn (a Checkout payment's PaymentIntent, say)."""
    values: dict[str, str] = {}
    if payment.session is not None and purchase.checkout_session_id is None:
        values["checkout_session_id"] = payment.session.id
    if payment.intent is not None and purchase.payment_intent_id is None:
        values["payment_intent_id"] = payment.intent.id
    if values:
        conn.execute(
            sa.update(purchases)
            .where(purchases.c.id == purchase.id)
            .values(updated_at=now, **values)
        )


def _paid(purchase: Purchase, payment: Payment) -> tuple[bool, str | None]:
    """Whether Stripe shows the payment paid, and how it differs from the purchase if it
    does: a paid payment of any other amount or currency is for an admin, never a credit."""
    paid: list[tuple[int | None, str | None]] = []
    if payment.session is not None and payment.session.payment_status == "paid":
        paid.append((payment.session.amount_total, payment.session.currency))
    if payment.intent is not None and payment.intent.status == "succeeded":
        paid.append((payment.intent.amount_received, payment.intent.currency))
    for amount, currency in paid:
        if amount != purchase.amount or (currency or "").lower() != purchase.currency:
            return True, (
                f"Stripe reports {amount} {currency} paid; the purchase costs"
                f" {purchase.amount} {purchase.currency}"
            )
    return bool(paid), None


def _mark_unpaid(
    conn: Connection, purchase: Purchase, payment: Payment, outcome: Outcome, now: datetime
) -> None:
    """A purchase Stripe will not pay (as things stand: a failed one can still succeed with
    another card) ends failed, expired or canceled, with Stripe's reason."""
    session, intent = payment.session, payment.intent
    status, code, message = purchase.status, purchase.failure_code, purchase.failure_message
    if session is not None and session.status == "expired":
        if purchase.status is PurchaseStatus.CANCELED:
            return  # the buyer canceled: this expiry is that cancel, as Stripe reports it
        status, code, message = PurchaseStatus.EXPIRED, "expired", "The checkout page expired."
    elif intent is not None and intent.status == "canceled":
        status, code, message = PurchaseStatus.CANCELED, "canceled", "The payment was canceled."
    elif intent is not None and intent.failure_code is not None and intent.status != "processing":
        status, code, message = PurchaseStatus.FAILED, intent.failure_code, intent.failure_message
    elif (
        session is not None
        and session.status == "complete"
        and intent is not None
        and (intent.status == "requires_payment_method")
    ):
        status, code, message = PurchaseStatus.FAILED, "payment_failed", "The payment failed."
    if (status, code) == (purchase.status, purchase.failure_code):
        return
    conn.execute(
        sa.update(purchases)
        .where(purchases.c.id == purchase.id, purchases.c.status != PurchaseStatus.PAID.value)
        .values(status=status.value, failure_code=code, failure_message=message, updated_at=now)
    )
    outcome.record(
        f"purchase_{status.value}",
        f"marked {status.value}" + (f" ({code})" if code else ""),
        status=status.value,
        failure_code=code,
    )
