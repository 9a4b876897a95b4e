"""Bringing a purchase in line with what Stripe says happened to its payment.

Every way news of a payment arrives (any webhook event, the success page, the reconciler)
ends here, and does the same two steps:

1. ``fetch_payment``: ask Stripe for the current Checkout Session and/or PaymentIntent, and
   the refunds and disputes of that payment. No database row is locked meanwhile.
2. ``settle``: in one transaction, lock the purchase row and apply whatever is not applied
   yet: the credit (once: the purchase row and the ledger's reserved keys both say so), a
   failure or expiry, each refund's share of tokens (once per refund, and given back once
   if the refund fails later), each dispute's freeze, release or clawback (once per step).

What settling cannot decide is flagged for an admin (``review``), never guessed: a payment
of another amount or currency than its purchase (status ``needs_review``, nothing
credited), or a purchase credited here whose payment Stripe does not show as paid.
``resolve_review`` records the admin's decision and its audit line together.

Because step 2 only ever moves a purchase forward, a snapshot that is already stale when it
commits (another delivery got there first) changes nothing. Events can therefore arrive in
any order, any number of times, concurrently, or not at all (``reconcile``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection

from tokenbank import audit, ledger
from tokenbank.billing.errors import NothingToReview, PaymentMismatch, UnknownPurchase
from tokenbank.billing.models import (
    DisputeStatus,
    PurchaseStatus,
    ReviewDecision,
    disputes,
    payment_refunds,
    purchases,
)
from tokenbank.billing.purchases import ClawbackPolicy, Purchase, find_purchase, to_purchase
from tokenbank.columns import utcnow
from tokenbank.db import Database
from tokenbank.payments.stripe import (
    CheckoutSession,
    Dispute,
    PaymentIntent,
    PaymentProviderUnavailable,
    Refund,
    Stripe,
)

#: Dispute statuses at Stripe that mean "still being decided".
OPEN_DISPUTE = frozenset(
    {"warning_needs_response", "warning_under_review", "needs_response", "under_review"}
)
#: Stripe closed an inquiry without a chargeback: the tokens are released.
DISPUTE_RELEASED = frozenset({"won", "warning_closed", "prevented"})
#: A refund in these states gave nothing back (after succeeding, it is undone).
REFUND_UNDONE = frozenset({"failed", "canceled"})
#: What an admin may decide, by whether the flagged purchase is ``needs_review`` (nothing
#: credited yet) or a credited purchase Stripe does not show as paid.
REVIEW_DECISIONS = {
    True: (ReviewDecision.CREDIT, ReviewDecision.REFUSE),  # needs_review: nothing credited
    False: (ReviewDecision.REVERSE, ReviewDecision.DISMISS),  # credited, then questioned
}

log = structlog.get_logger("tokenbank.billing")


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
            if value.isdigit() and reference:
                return int(value), reference
        return None


@dataclass(slots=True)
class Outcome:
    purchase: Purchase | None
    changes: list[str] = field(default_factory=list)
    #: Why the purchase was flagged for an admin by this settle, if it was.
    flagged: str | None = None

    def log_changes(self, source: str) -> None:
        """One log line per change, once its transaction has committed (a line written
        before the commit could tell of a credit that was rolled back)."""
        if self.purchase is None:
            return
        for change in self.changes:
            (log.warning if change.startswith("needs review") else log.info)(
                "purchase_settled",
                purchase_id=self.purchase.id,
                user_id=self.purchase.user_id,
                change=change,
                source=source,
            )

    def __str__(self) -> str:
        if self.purchase is None:
            return "not a tokenbank payment"
        what = "; ".join(self.changes) if self.changes else "nothing new"
        return f"purchase {self.purchase.id}: {what}"


def fetch_payment(
    stripe: Stripe, *, session_id: str | None = None, payment_intent_id: str | None = None
) -> Payment:
    session = stripe.checkout_session(session_id) if session_id else None
    if session is not None and payment_intent_id not in (None, session.payment_intent_id):
        raise PaymentMismatch(f"payment {payment_intent_id} is not session {session.id}'s")
    intent_id = payment_intent_id or (session.payment_intent_id if session else None)
    if intent_id is None:
        return Payment(session=session)
    return Payment(
        session=session,
        intent=stripe.payment_intent(intent_id),
        refunds=tuple(stripe.refunds_of(intent_id)),
        disputes=tuple(stripe.disputes_of(intent_id)),
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
    purchase = _locked(conn, found)
    outcome = Outcome(purchase=purchase)
    _check_identity(purchase, payment)
    _link(conn, purchase, payment, outcome, now)
    paid, mismatch = _paid(purchase, payment)
    accepted = mismatch is None or _decided(purchase, mismatch, ReviewDecision.CREDIT)
    if mismatch is not None and not _decided(purchase, mismatch):
        _flag(conn, purchase, mismatch, outcome, now)
    elif paid and accepted:
        credit_paid(conn, purchase, outcome, policy=policy, now=now)
    elif not paid and purchase.status is PurchaseStatus.PAID:
        anomaly = f"credited here, but Stripe reports the payment {_stripe_state(payment)}"
        if not _decided(purchase, anomaly):
            _flag(conn, purchase, anomaly, outcome, now)
    elif purchase.status not in (PurchaseStatus.PAID, PurchaseStatus.NEEDS_REVIEW):
        _mark_unpaid(conn, purchase, payment, outcome, now)
    if (paid and accepted) or purchase.status is PurchaseStatus.PAID:
        for refund in sorted(payment.refunds, key=lambda r: (r.created, r.id)):
            _apply_refund(conn, purchase.id, refund, outcome, now)
        for dispute in sorted(payment.disputes, key=lambda d: (d.created, d.id)):
            _apply_dispute(conn, purchase.id, dispute, outcome, now)
    outcome.purchase = to_purchase(
        conn.execute(sa.select(purchases).where(purchases.c.id == purchase.id)).one()
    )
    return outcome


def _locked(conn: Connection, purchase_id: int) -> Purchase:
    row = conn.execute(
        sa.select(purchases).where(purchases.c.id == purchase_id).with_for_update()
    ).first()
    if row is None:
        raise UnknownPurchase(str(purchase_id))
    return to_purchase(row)


def _stripe_state(payment: Payment) -> str:
    parts = []
    if payment.session is not None:
        parts.append(f"session {payment.session.status}/{payment.session.payment_status}")
    if payment.intent is not None:
        parts.append(f"payment {payment.intent.status}")
    return ", ".join(parts) or "missing"


def _decided(purchase: Purchase, reason: str, decision: ReviewDecision | None = None) -> bool:
    """Whether an admin already decided about this very anomaly (and decided ``decision``)."""
    if purchase.review != reason or purchase.review_decision is None:
        return False
    return decision is None or purchase.review_decision is decision


def _flag(
    conn: Connection, purchase: Purchase, reason: str, outcome: Outcome, now: datetime
) -> None:
    """Ask an admin to look: once per anomaly (a new one replaces an old decision)."""
    if purchase.review == reason and purchase.review_decision is None:
        return
    status = PurchaseStatus.PAID if purchase.status is PurchaseStatus.PAID else None
    conn.execute(
        sa.update(purchases)
        .where(purchases.c.id == purchase.id)
        .values(
            status=(status or PurchaseStatus.NEEDS_REVIEW).value,
            review=reason,
            review_decision=None,
            reviewed_by=None,
            reviewed_at=None,
            updated_at=now,
        )
    )
    outcome.flagged = reason
    outcome.changes.append(f"needs review: {reason}")


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
        payment = fetch_payment(stripe, session_id=session_id, payment_intent_id=payment_intent_id)
    except PaymentProviderUnavailable:
        return known  # as it stands: the page asks again, and the webhook will come
    with db.transaction() as conn:
        outcome = settle(conn, payment, policy=policy)
    outcome.log_changes("success_page")
    return outcome.purchase


def _check_identity(purchase: Purchase, payment: Payment) -> None:
    """A payment may only settle the purchase it was created for."""
    session, intent = payment.session, payment.intent
    if session is not None and purchase.checkout_session_id not in (None, session.id):
        raise PaymentMismatch(f"session {session.id} is not purchase {purchase.id}'s")
    if intent is not None and purchase.payment_intent_id not in (None, intent.id):
        raise PaymentMismatch(f"payment {intent.id} is not purchase {purchase.id}'s")


def _link(
    conn: Connection, purchase: Purchase, payment: Payment, outcome: Outcome, now: datetime
) -> None:
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


def credit_paid(
    conn: Connection,
    purchase: Purchase,
    outcome: Outcome,
    *,
    policy: ClawbackPolicy,
    now: datetime,
) -> None:
    """Credit a purchase whose payment is settled (once: a paid purchase is left alone)."""
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
    outcome.changes.append("credited")
    if policy == "negative":
        settled = ledger.settle_debt(
            conn, user_id=purchase.user_id, reference=f"purchase:{purchase.id}", now=now
        )
        if settled.taken:
            outcome.changes.append(f"collected {settled.taken} tokens of debt")


def _mark_unpaid(
    conn: Connection, purchase: Purchase, payment: Payment, outcome: Outcome, now: datetime
) -> None:
    session, intent = payment.session, payment.intent
    status, code, message = purchase.status, purchase.failure_code, purchase.failure_message
    if session is not None and session.status == "expired":
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
    outcome.changes.append(f"marked {status.value}" + (f" ({code})" if code else ""))


def _tokens_for(amount_share: int, purchase_row: sa.Row[tuple[int, ...]]) -> int:
    """The tokens that ``amount_share`` of the purchase's price bought, rounded down."""
    total = int(purchase_row.tokens + purchase_row.bonus_tokens)
    return total * min(amount_share, int(purchase_row.amount)) // int(purchase_row.amount)


def _apply_refund(
    conn: Connection, purchase_id: int, refund: Refund, outcome: Outcome, now: datetime
) -> None:
    if refund.status in REFUND_UNDONE:
        _undo_refund(conn, purchase_id, refund, outcome, now)
        return
    if refund.status != "succeeded":
        return  # pending refunds settle later
    if conn.execute(
        sa.select(payment_refunds.c.id).where(payment_refunds.c.refund_id == refund.id)
    ).first():
        return
    row = conn.execute(sa.select(purchases).where(purchases.c.id == purchase_id)).one()
    # A freeze holds the tokens a refund takes back: lift it, then freeze what is left.
    frozen = _unfreeze(conn, purchase_id, now)
    refunded = min(row.amount, row.refunded_amount + refund.amount)
    # Shares by cumulative amount: a full refund, however split, claws back every token.
    owed = _tokens_for(refunded, row) - _tokens_for(row.refunded_amount, row)
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
    _refreeze(conn, purchase_id, frozen, after=refund.id, now=now)
    note = f"refund {refund.id}: clawed back {taken} tokens"
    outcome.changes.append(note + (f", {debt} recorded as debt" if debt else ""))


def _undo_refund(
    conn: Connection, purchase_id: int, refund: Refund, outcome: Outcome, now: datetime
) -> None:
    """A refund that failed (or was canceled) after it had succeeded: what its clawback took
    comes back, once. One that never succeeded here clawed nothing back: nothing to do."""
    applied = conn.execute(
        sa.select(payment_refunds).where(payment_refunds.c.refund_id == refund.id)
    ).first()
    if applied is None or applied.reversed_at is not None:
        return
    row = conn.execute(sa.select(purchases).where(purchases.c.id == purchase_id)).one()
    given = cancelled = 0
    transfer_id = None
    if applied.tokens > 0:
        restored = ledger.restore(
            conn,
            user_id=row.user_id,
            reference=f"refund:{refund.id}",
            taken=applied.taken,
            debt=applied.debt,
            description=f"Refund {refund.id} of purchase {purchase_id} failed",
            metadata={"purchase_id": purchase_id, "refund_id": refund.id, "refund_failed": True},
            now=now,
        )
        given, cancelled, transfer_id = restored.given, restored.cancelled, restored.transfer_id
    conn.execute(
        sa.update(payment_refunds)
        .where(payment_refunds.c.id == applied.id)
        .values(reversed_at=now, reversal_transfer_id=transfer_id)
    )
    conn.execute(
        sa.update(purchases)
        .where(purchases.c.id == purchase_id)
        .values(
            refunded_amount=max(0, row.refunded_amount - applied.amount),
            clawed_back_tokens=max(0, row.clawed_back_tokens - applied.tokens),
            updated_at=now,
        )
    )
    note = f"refund {refund.id} {refund.status}: gave back {given} tokens"
    outcome.changes.append(note + (f", cancelled {cancelled} of debt" if cancelled else ""))


def _release(conn: Connection, hold_id: int, now: datetime) -> None:
    """End a freeze; one that an operator already ended is left as it is."""
    with contextlib.suppress(ledger.HoldNotPending):
        ledger.void_hold(conn, hold_id=hold_id, now=now, unfreeze=True)


def _unfreeze(conn: Connection, purchase_id: int, now: datetime) -> list[Any]:
    """Release the freezes of the purchase's open disputes; returns those disputes."""
    frozen = list(
        conn.execute(
            sa.select(disputes).where(
                disputes.c.purchase_id == purchase_id,
                disputes.c.status == DisputeStatus.OPEN.value,
                disputes.c.hold_id.is_not(None),
            )
        )
    )
    for dispute in frozen:
        _release(conn, dispute.hold_id, now)
    return frozen


def _refreeze(
    conn: Connection, purchase_id: int, frozen: list[Any], *, after: str, now: datetime
) -> None:
    row = conn.execute(sa.select(purchases).where(purchases.c.id == purchase_id)).one()
    remaining = row.tokens + row.bonus_tokens - row.clawed_back_tokens
    for dispute in frozen:
        tokens = min(dispute.tokens, remaining)
        hold = None
        if tokens > 0:
            hold = ledger.freeze(
                conn,
                user_id=row.user_id,
                amount=tokens,
                reference=f"dispute:{dispute.dispute_id}:after:{after}",
                description=f"Frozen while dispute {dispute.dispute_id} is open",
                metadata={"purchase_id": purchase_id, "dispute_id": dispute.dispute_id},
                now=now,
            )
        conn.execute(
            sa.update(disputes)
            .where(disputes.c.id == dispute.id)
            .values(tokens=tokens, hold_id=hold.id if hold else None)
        )


def _apply_dispute(
    conn: Connection, purchase_id: int, dispute: Dispute, outcome: Outcome, now: datetime
) -> None:
    row = conn.execute(sa.select(purchases).where(purchases.c.id == purchase_id)).one()
    known = conn.execute(sa.select(disputes).where(disputes.c.dispute_id == dispute.id)).first()
    if known is None:
        remaining = row.tokens + row.bonus_tokens - row.clawed_back_tokens
        tokens = min(_tokens_for(dispute.amount, row), remaining)
        hold = None
        if tokens > 0:
            hold = ledger.freeze(
                conn,
                user_id=row.user_id,
                amount=tokens,
                reference=f"dispute:{dispute.id}",
                description=f"Frozen while dispute {dispute.id} is open",
                metadata={"purchase_id": purchase_id, "dispute_id": dispute.id},
                now=now,
            )
        dispute_row_id = conn.execute(
            sa.insert(disputes)
            .values(
                dispute_id=dispute.id,
                purchase_id=purchase_id,
                status=DisputeStatus.OPEN.value,
                amount=dispute.amount,
                tokens=tokens,
                hold_id=hold.id if hold else None,
                opened_at=now,
            )
            .returning(disputes.c.id)
        ).scalar_one()
        outcome.changes.append(
            f"dispute {dispute.id} opened: froze {hold.amount if hold else 0} tokens"
        )
        known = conn.execute(sa.select(disputes).where(disputes.c.id == dispute_row_id)).one()
    if known.status != DisputeStatus.OPEN or dispute.status in OPEN_DISPUTE:
        return  # closed once, never reopened; or still open
    if known.hold_id is not None:
        _release(conn, known.hold_id, now)
    if dispute.status in DISPUTE_RELEASED:
        conn.execute(
            sa.update(disputes)
            .where(disputes.c.id == known.id)
            .values(status=DisputeStatus.WON.value, closed_at=now)
        )
        outcome.changes.append(f"dispute {dispute.id} won: released the frozen tokens")
        return
    taken = debt = 0
    owed = min(known.tokens, row.tokens + row.bonus_tokens - row.clawed_back_tokens)
    if owed > 0:
        clawback = ledger.claw_back(
            conn,
            user_id=row.user_id,
            amount=owed,
            reference=f"dispute:{dispute.id}",
            description=f"Dispute {dispute.id} of purchase {purchase_id} lost",
            metadata={"purchase_id": purchase_id, "dispute_id": dispute.id},
            now=now,
        )
        taken, debt = clawback.taken, clawback.debt
    conn.execute(
        sa.update(disputes)
        .where(disputes.c.id == known.id)
        .values(status=DisputeStatus.LOST.value, closed_at=now, clawed_back=taken, debt=debt)
    )
    conn.execute(
        sa.update(purchases)
        .where(purchases.c.id == purchase_id)
        .values(clawed_back_tokens=purchases.c.clawed_back_tokens + max(owed, 0), updated_at=now)
    )
    note = f"dispute {dispute.id} lost: clawed back {taken} tokens"
    outcome.changes.append(note + (f", {debt} recorded as debt" if debt else ""))


def flag_purchase(db: Database, *, purchase_id: int, reason: str) -> Outcome:
    """Flag a purchase for an admin from outside a settle (reconcile: its Stripe object is
    gone); nothing else changes."""
    with db.transaction() as conn:
        purchase = _locked(conn, purchase_id)
        outcome = Outcome(purchase=purchase)
        if not _decided(purchase, reason):
            _flag(conn, purchase, reason, outcome, utcnow())
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
        purchase = _locked(conn, purchase_id)
        if purchase.review is None or purchase.review_decision is not None:
            raise NothingToReview(purchase_id)
        allowed = REVIEW_DECISIONS[purchase.status is PurchaseStatus.NEEDS_REVIEW]
        if decision not in allowed:
            raise ledger.InvalidArgument(
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
            _reverse(conn, purchase, now)
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
    log.info(
        "purchase_review_resolved",
        purchase_id=purchase_id,
        user_id=purchase.user_id,
        decision=decision.value,
        actor=actor,
    )
    return resolved


def _reverse(conn: Connection, purchase: Purchase, now: datetime) -> None:
    owed = purchase.total_tokens - purchase.clawed_back_tokens
    if owed <= 0:
        return
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
