"""Healing what webhooks missed: walk Stripe's recent payments and settle each one.

Stripe retries deliveries for days, but events can still be lost (an endpoint disabled, a
secret rotated badly, an event Stripe never generated). The reconciler lists the objects
themselves (Checkout Sessions, PaymentIntents, refunds, disputes created since a point in
time), plus our own purchases that can still change after their objects left the window
(open disputes, recent pending purchases), and settles every payment they belong to through
the same ``settle`` as webhooks: what was applied is left alone, what was missing is applied.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa

from tokenbank.billing.fulfilment import Outcome, fetch_payment, settle
from tokenbank.billing.models import DisputeStatus, PurchaseStatus, disputes, purchases
from tokenbank.billing.purchases import ClawbackPolicy
from tokenbank.columns import utcnow
from tokenbank.db import Database
from tokenbank.payments.stripe import Dispute, PaymentProviderError, Refund, Stripe

#: Pending purchases this recent are always looked at, whatever the window.
PENDING_LOOKBACK = timedelta(days=2)


@dataclass(slots=True)
class Reconciliation:
    checked: int = 0
    fixed: list[Outcome] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def reconcile(
    db: Database,
    stripe: Stripe,
    *,
    since: datetime,
    policy: ClawbackPolicy,
    progress: Callable[[int], None] | None = None,
) -> Reconciliation:
    """Settle every payment Stripe shows activity for since ``since``."""
    result = Reconciliation()
    work = _payments_since(stripe, int(since.timestamp()))
    work += [item for item in _unfinished(db, since) if item not in work]
    for kind, stripe_id in work:
        try:
            payment = (
                fetch_payment(stripe, session_id=stripe_id)
                if kind == "session"
                else fetch_payment(stripe, payment_intent_id=stripe_id)
            )
            with db.transaction() as conn:
                outcome = settle(conn, payment, policy=policy)
        except PaymentProviderError as exc:
            result.errors.append(f"{stripe_id}: {exc}")
        except Exception as exc:  # one bad payment must not stop the others
            result.errors.append(f"{stripe_id}: {type(exc).__name__}: {exc}")
        else:
            if outcome.purchase is not None and outcome.changes:
                result.fixed.append(outcome)
        result.checked += 1
        if progress is not None:
            progress(1)
    return result


def _unfinished(db: Database, since: datetime) -> list[tuple[str, str]]:
    """Our purchases that may still change but whose Stripe objects are older than the
    window: open disputes (they close weeks later), and recent purchases still pending."""
    with db.read() as conn:
        disputed = conn.execute(
            sa.select(purchases.c.payment_intent_id)
            .join(disputes, disputes.c.purchase_id == purchases.c.id)
            .where(disputes.c.status == DisputeStatus.OPEN.value)
        ).scalars()
        pending = conn.execute(
            sa.select(purchases.c.checkout_session_id, purchases.c.payment_intent_id).where(
                purchases.c.status == PurchaseStatus.PENDING.value,
                purchases.c.created_at >= min(since, utcnow() - PENDING_LOOKBACK),
            )
        ).all()
    work = [("intent", i) for i in disputed if i]
    for session_id, intent_id in pending:
        if intent_id:
            work.append(("intent", intent_id))
        elif session_id:
            work.append(("session", session_id))
    return work


def _payments_since(stripe: Stripe, created: int) -> list[tuple[str, str]]:
    """The payments (by PaymentIntent, or by session when it has none) with activity."""
    sessions: set[str] = set()
    intents: set[str] = set()
    for session in stripe.sessions_since(created):
        if session.payment_intent_id:
            intents.add(session.payment_intent_id)
        else:
            sessions.add(session.id)  # expired or still open: no payment to look at
    intents.update(intent.id for intent in stripe.payment_intents_since(created))
    linked: list[Refund | Dispute] = [
        *stripe.refunds_since(created),
        *stripe.disputes_since(created),
    ]
    intents.update(found.payment_intent_id for found in linked if found.payment_intent_id)
    return [("session", s) for s in sorted(sessions)] + [("intent", i) for i in sorted(intents)]
