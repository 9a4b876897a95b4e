"""Healing what webhooks missed, and finding what nobody should have let through.

Stripe retries deliveries for days, but events can still be lost (an endpoint disabled, a
secret rotated badly, an event Stripe never generated). The reconciler looks both ways:

- from Stripe: the objects themselves (Checkout Sessions, PaymentIntents, refunds, disputes
  created since a point in time), plus our own purchases that can still change after their
  objects left the window (open disputes, recent pending purchases), are settled through
  the same ``settle`` as webhooks: what was applied is left alone, what was missing is
  applied;
- subscriptions: every subscription Stripe made or invoiced in the window, and every one
  of ours that is current or still waiting for its checkout, goes through
  ``renewals.sync_from_stripe`` as its webhooks would (grants missed are granted, once);
  a refunded payment that is no purchase's is looked up as a subscription invoice's;
- from here: every purchase recorded as paid in the window is looked up at Stripe. One whose
  payment Stripe does not show as paid, or does not know at all, is flagged for an admin
  (``review``): reconcile never takes tokens back by itself.

A purchase whose process died between its row and the call to Stripe has no Stripe object:
once ``NOT_STARTED_AFTER`` has passed and Stripe shows nothing made for it (the listing
finds objects by the purchase's metadata), it ends as ``expired`` (``not_started``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
import structlog

from tokenbank.billing.catalog import Catalog
from tokenbank.billing.models import (
    CURRENT_STATUSES,
    DisputeStatus,
    PurchaseStatus,
    disputes,
    purchases,
    subscriptions,
)
from tokenbank.billing.outcomes import Outcome
from tokenbank.billing.purchases import ClawbackPolicy, count_awaiting_review, to_purchase
from tokenbank.billing.renewals import (
    RenewalOutcome,
    apply_renewal,
    fetch_refunded_invoice,
    sync_from_stripe,
)
from tokenbank.billing.reviews import flag_purchase
from tokenbank.billing.settlement import settle_from_stripe
from tokenbank.billing.unpaid import ABANDONED_AFTER, cancel_purchase
from tokenbank.columns import utcnow
from tokenbank.db import Database
from tokenbank.errors import PaymentProviderError, StripeObjectMissing, Unavailable
from tokenbank.payments.stripe import Dispute, Refund, Stripe

#: Pending purchases this recent are always looked at, whatever the window.
PENDING_LOOKBACK = timedelta(days=2)
#: A pending purchase with no Stripe object this old never reached Stripe: it is expired.
NOT_STARTED_AFTER = timedelta(hours=1)
#: Stripe lists objects by creation time; a purchase's object is made just after its row.
CLOCK_MARGIN = timedelta(minutes=5)

log = structlog.get_logger("tokenbank.reconcile")


@dataclass(frozen=True, slots=True)
class Work:
    """One payment to look at: by Checkout Session or PaymentIntent, and our purchase if we
    start from it (then a missing Stripe object is a finding, not an error)."""

    kind: str  # "session" or "intent"
    stripe_id: str
    purchase_id: int | None = None
    paid: bool = False


@dataclass(slots=True)
class Reconciliation:
    checked: int = 0
    fixed: list[Outcome] = field(default_factory=list)
    #: Purchases this run flagged for an admin, with the reason.
    flagged: list[tuple[int, str]] = field(default_factory=list)
    #: Pending purchases that ended: never started, or unknown to Stripe.
    expired: list[tuple[int, str]] = field(default_factory=list)
    #: Purchases whose PaymentIntent nobody paid within ``ABANDONED_AFTER``.
    canceled: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: Purchases waiting for an admin's decision, this run's and earlier ones.
    awaiting_review: int = 0
    #: Subscriptions this run changed (a grant, a status, a refund's clawback).
    subscriptions: list[RenewalOutcome] = field(default_factory=list)


def reconcile(
    db: Database,
    stripe: Stripe,
    *,
    since: datetime,
    policy: ClawbackPolicy,
    progress: Callable[[int], None] | None = None,
    now: datetime | None = None,
    catalog: Catalog | None = None,
) -> Reconciliation:
    """Settle every payment Stripe shows activity for since ``since``, check every
    purchase recorded as paid since then against Stripe, and bring every subscription
    with activity since then in line (``catalog``: to know a plan switched in Stripe)."""
    now = now or utcnow()
    result = Reconciliation()
    search_from = min([since, *_not_started(db)]) - CLOCK_MARGIN
    work = _payments_since(stripe, int(search_from.timestamp()))
    seen = {(item.kind, item.stripe_id) for item in work}
    for item in [*_unfinished(db, since, now), *_paid_since(db, since)]:
        if (item.kind, item.stripe_id) not in seen:
            seen.add((item.kind, item.stripe_id))
            work.append(item)
    for item in work:
        _check(db, stripe, item, policy=policy, result=result, catalog=catalog)
        result.checked += 1
        if progress is not None:
            progress(1)
    _subscriptions(db, stripe, catalog, int(search_from.timestamp()), result)
    _expire_not_started(db, now, result)
    _cancel_abandoned(db, stripe, now, policy=policy, result=result)
    with db.read() as conn:
        result.awaiting_review = count_awaiting_review(conn)
    log.info(
        "reconciled",
        checked=result.checked,
        fixed=len(result.fixed),
        flagged=len(result.flagged),
        expired=len(result.expired),
        canceled=len(result.canceled),
        errors=len(result.errors),
        awaiting_review=result.awaiting_review,
        subscriptions=len(result.subscriptions),
    )
    return result


def _subscriptions(
    db: Database, stripe: Stripe, catalog: Catalog | None, since: int, result: Reconciliation
) -> None:
    """Sync each subscription with activity since ``since`` at Stripe, and each of ours
    that can still change."""
    work: dict[str, tuple[str | None, str | None]] = {}
    try:
        for seen in stripe.subscriptions_since(since):
            work[seen.id] = (seen.id, None)
        for invoice in stripe.invoices_since(since):
            if invoice.subscription_id is not None:
                work[invoice.subscription_id] = (invoice.subscription_id, None)
    except (PaymentProviderError, Unavailable) as exc:
        result.errors.append(f"listing subscriptions: {exc}")
    current = [s.value for s in CURRENT_STATUSES]
    with db.read() as conn:
        rows = conn.execute(
            sa.select(subscriptions.c.stripe_subscription_id, subscriptions.c.checkout_session_id)
            .where(subscriptions.c.status.in_(current))
            .where(
                sa.or_(
                    subscriptions.c.stripe_subscription_id.is_not(None),
                    subscriptions.c.checkout_session_id.is_not(None),
                )
            )
        ).all()
    for subscription_id, session_id in rows:
        key = subscription_id or session_id
        if subscription_id not in work:
            work[key] = (subscription_id, None if subscription_id else session_id)
    for subscription_id, session_id in work.values():
        try:
            outcome = sync_from_stripe(
                db,
                stripe,
                catalog,
                subscription_id=subscription_id,
                session_id=session_id,
                source="reconcile",
            )
        except (PaymentProviderError, Unavailable) as exc:
            result.errors.append(f"{subscription_id or session_id}: {exc}")
            continue
        except Exception as exc:  # one bad subscription must not stop the others
            result.errors.append(f"{subscription_id or session_id}: {type(exc).__name__}: {exc}")
            continue
        result.checked += 1
        if outcome.subscription is not None and outcome.changes:
            result.subscriptions.append(outcome)
            log.warning(
                "reconcile_fixed",
                subscription_id=outcome.subscription.id,
                user_id=outcome.subscription.user_id,
                what=[name for name, _ in outcome.events],
            )


def _check(
    db: Database,
    stripe: Stripe,
    item: Work,
    *,
    policy: ClawbackPolicy,
    result: Reconciliation,
    catalog: Catalog | None = None,
) -> None:
    try:
        try:
            outcome = settle_from_stripe(
                db,
                stripe,
                session_id=item.stripe_id if item.kind == "session" else None,
                payment_intent_id=item.stripe_id if item.kind == "intent" else None,
                policy=policy,
                source="reconcile",
            )
        except StripeObjectMissing:
            if item.purchase_id is None:
                raise
            _missing(db, item, result)
            return
    except (PaymentProviderError, Unavailable) as exc:
        result.errors.append(f"{item.stripe_id}: {exc}")
    except Exception as exc:  # one bad payment must not stop the others
        result.errors.append(f"{item.stripe_id}: {type(exc).__name__}: {exc}")
    else:
        if outcome.purchase is None and item.kind == "intent":
            _invoice_refunds(db, stripe, catalog, item.stripe_id, result)
        if outcome.purchase is not None and outcome.flagged is not None:
            result.flagged.append((outcome.purchase.id, outcome.flagged))
        elif outcome.purchase is not None and outcome.changes:
            result.fixed.append(outcome)
            # What the webhooks missed: worth an alert of its own if it keeps happening.
            log.warning(
                "reconcile_fixed",
                purchase_id=outcome.purchase.id,
                user_id=outcome.purchase.user_id,
                what=[event.name for event in outcome.events],
            )


def _invoice_refunds(
    db: Database, stripe: Stripe, catalog: Catalog | None, intent_id: str, result: Reconciliation
) -> None:
    """A payment that is no purchase's, refunded: a subscription invoice's, maybe."""
    try:
        if not stripe.refunds_of(intent_id):
            return
        renewal = fetch_refunded_invoice(stripe, catalog, intent_id)
        if renewal is None:
            return
        with db.transaction() as conn:
            outcome = apply_renewal(conn, renewal, catalog=catalog)
    except (PaymentProviderError, Unavailable) as exc:
        result.errors.append(f"{intent_id}: {exc}")
        return
    except Exception as exc:  # one bad payment must not stop the others
        result.errors.append(f"{intent_id}: {type(exc).__name__}: {exc}")
        return
    outcome.log_changes("reconcile")
    if outcome.subscription is not None and outcome.changes:
        result.subscriptions.append(outcome)


def _missing(db: Database, item: Work, result: Reconciliation) -> None:
    """Our purchase names a Stripe object Stripe does not have (another account's key, a
    deleted test object, an emulator that forgot): a paid one is flagged, a pending one
    ends, since nothing can pay it any more."""
    assert item.purchase_id is not None
    reason = f"unknown to Stripe: {item.stripe_id}"
    if item.paid:
        outcome = flag_purchase(db, purchase_id=item.purchase_id, reason=reason)
        if outcome.flagged is not None:
            result.flagged.append((item.purchase_id, reason))
        return
    if _expire(db, item.purchase_id, "unknown_to_stripe", "Stripe has no record of this payment."):
        result.expired.append((item.purchase_id, reason))


def _expire(db: Database, purchase_id: int, code: str, message: str) -> bool:
    """End a purchase still pending that nothing can pay any more; False if it moved on."""
    with db.transaction() as conn:
        ended = conn.execute(
            sa.update(purchases)
            .where(purchases.c.id == purchase_id, purchases.c.status == PurchaseStatus.PENDING)
            .values(
                status=PurchaseStatus.EXPIRED.value,
                failure_code=code,
                failure_message=message,
                updated_at=utcnow(),
            )
            .returning(*purchases.c)
        ).first()
    if ended is None:
        return False
    outcome = Outcome(purchase=to_purchase(ended))
    outcome.record(
        "purchase_expired",
        f"marked expired ({code})",
        warning=True,
        status=PurchaseStatus.EXPIRED.value,
        failure_code=code,
    )
    outcome.log_changes("reconcile")
    return True


def _without_stripe() -> sa.ColumnElement[bool]:
    return sa.and_(
        purchases.c.status == PurchaseStatus.PENDING.value,
        purchases.c.checkout_session_id.is_(None),
        purchases.c.payment_intent_id.is_(None),
    )


def _not_started(db: Database) -> list[datetime]:
    """When the oldest purchase with no Stripe object yet was made (the listing must reach
    back that far to find an object made for it)."""
    with db.read() as conn:
        oldest = conn.execute(
            sa.select(sa.func.min(purchases.c.created_at)).where(_without_stripe())
        ).scalar()
    return [oldest] if oldest is not None else []


def _expire_not_started(db: Database, now: datetime, result: Reconciliation) -> None:
    """After the listing linked every object Stripe has for our purchases: those still
    without one, made before ``NOT_STARTED_AFTER``, never reached Stripe."""
    with db.read() as conn:
        stale = (
            conn.execute(
                sa.select(purchases.c.id).where(
                    _without_stripe(), purchases.c.created_at < now - NOT_STARTED_AFTER
                )
            )
            .scalars()
            .all()
        )
    for purchase_id in stale:
        message = "The purchase never reached Stripe; nothing was charged."
        if _expire(db, purchase_id, "not_started", message):
            result.expired.append((purchase_id, "never reached Stripe"))


def _cancel_abandoned(
    db: Database, stripe: Stripe, now: datetime, *, policy: ClawbackPolicy, result: Reconciliation
) -> None:
    """Cancel at Stripe, then here, the PaymentIntents of tokenbank's card form that nobody
    paid within ``ABANDONED_AFTER``, declined ones included (a Checkout Session expires at
    Stripe by itself)."""
    with db.read() as conn:
        stale = conn.execute(
            sa.select(purchases.c.id, purchases.c.payment_intent_id).where(
                purchases.c.status.in_([PurchaseStatus.PENDING.value, PurchaseStatus.FAILED.value]),
                purchases.c.checkout_session_id.is_(None),
                purchases.c.payment_intent_id.is_not(None),
                purchases.c.created_at < now - ABANDONED_AFTER,
            )
        ).all()
    for purchase_id, intent_id in stale:
        try:
            ended = cancel_purchase(
                db, stripe, purchase_id=purchase_id, policy=policy, reason="abandoned"
            )
        except (PaymentProviderError, Unavailable) as exc:
            result.errors.append(f"{intent_id}: {exc}")
            continue
        except Exception as exc:  # one bad payment must not stop the others
            result.errors.append(f"{intent_id}: {type(exc).__name__}: {exc}")
            continue
        if ended.status is PurchaseStatus.CANCELED:
            result.canceled.append(purchase_id)


def _unfinished(db: Database, since: datetime, now: datetime) -> list[Work]:
    """Our purchases that may still change but whose Stripe objects are older than the
    window: open disputes (they close weeks later), and recent purchases still pending."""
    with db.read() as conn:
        disputed = conn.execute(
            sa.select(purchases.c.id, purchases.c.payment_intent_id)
            .join(disputes, disputes.c.purchase_id == purchases.c.id)
            .where(disputes.c.status == DisputeStatus.OPEN.value)
        ).all()
        pending = conn.execute(
            sa.select(
                purchases.c.id, purchases.c.checkout_session_id, purchases.c.payment_intent_id
            ).where(
                purchases.c.status == PurchaseStatus.PENDING.value,
                purchases.c.created_at >= min(since, now - PENDING_LOOKBACK),
            )
        ).all()
    work = [
        Work("intent", intent, purchase_id, paid=True) for purchase_id, intent in disputed if intent
    ]
    for purchase_id, session_id, intent_id in pending:
        if intent_id:
            work.append(Work("intent", intent_id, purchase_id))
        elif session_id:
            work.append(Work("session", session_id, purchase_id))
    return work


def _paid_since(db: Database, since: datetime) -> list[Work]:
    """Every purchase recorded as paid in the window: Stripe must show it paid too."""
    with db.read() as conn:
        paid = conn.execute(
            sa.select(
                purchases.c.id, purchases.c.checkout_session_id, purchases.c.payment_intent_id
            ).where(
                purchases.c.status == PurchaseStatus.PAID.value,
                sa.or_(purchases.c.created_at >= since, purchases.c.paid_at >= since),
            )
        ).all()
    work = []
    for purchase_id, session_id, intent_id in paid:
        if intent_id:
            work.append(Work("intent", intent_id, purchase_id, paid=True))
        elif session_id:
            work.append(Work("session", session_id, purchase_id, paid=True))
    return work


def _payments_since(stripe: Stripe, created: int) -> list[Work]:
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
    return [Work("session", s) for s in sorted(sessions)] + [
        Work("intent", i) for i in sorted(intents)
    ]
