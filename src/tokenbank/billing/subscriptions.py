"""Plans sold as Stripe subscriptions: starting one, reading it, cancelling and changing it.

As for a purchase, the subscription row is stored (its terms copied from the catalog) and
committed before Stripe is called, and every Stripe call carries a key stored on the row,
so a retry never makes a second Checkout Session. What Stripe later does to the
subscription (paid, renewed, past due, canceled, switched in the portal) reaches the row
only through ``renewals``, which also grants its tokens.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection

from tokenbank.billing.catalog import Catalog
from tokenbank.billing.models import (
    CURRENT_STATUSES,
    FINAL_STATUSES,
    SubscriptionStatus,
    subscription_grants,
    subscriptions,
)
from tokenbank.billing.plans import Interval, Plan
from tokenbank.billing.prices import PriceBook
from tokenbank.billing.purchases import customer_for
from tokenbank.columns import utcnow
from tokenbank.db import Database
from tokenbank.errors import (
    IdempotencyConflict,
    InvalidArgument,
    NoSubscription,
    PaymentProviderError,
    PaymentProviderUnavailable,
    SubscriptionEnded,
    SubscriptionExists,
    UnknownPlan,
)
from tokenbank.ledger.inputs import check_key
from tokenbank.ledger.models import buckets
from tokenbank.payments.stripe import CheckoutSession, Stripe
from tokenbank.payments.stripe import Subscription as StripeSubscription
from tokenbank.users import get_user

log = structlog.get_logger("tokenbank.subscriptions")

#: How long a month's allowance outlives the month: the renewal invoice is charged about
#: an hour after the period ends, and the month's tokens stay usable until it is.
GRACE = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Subscription:
    id: int
    user_id: str
    plan_id: str
    interval: Interval
    tokens_per_month: int
    unused: str
    rollover_cap: int | None
    amount: int
    currency: str
    status: SubscriptionStatus
    reference: str
    checkout_session_id: str | None
    stripe_subscription_id: str | None
    customer_id: str | None
    current_period_start: datetime | None
    current_period_end: datetime | None
    trial_end: datetime | None
    cancel_at: datetime | None
    cancel_at_period_end: bool
    ended_at: datetime | None
    created_at: datetime
    idempotency_key: str | None = None

    @property
    def ends_at(self) -> datetime | None:
        """When a scheduled cancel takes effect: ``cancel_at`` (flexible billing mode, the
        portal) or the period's end (``cancel_at_period_end``)."""
        if self.cancel_at is not None:
            return self.cancel_at
        return self.current_period_end if self.cancel_at_period_end else None

    @property
    def renews(self) -> bool:
        return self.status in CURRENT_STATUSES and self.ends_at is None


def to_subscription(row: Any) -> Subscription:
    return Subscription(
        id=row.id,
        user_id=row.user_id,
        plan_id=row.plan_id,
        interval=Interval(row.interval),
        tokens_per_month=row.tokens_per_month,
        unused=row.unused,
        rollover_cap=row.rollover_cap,
        amount=row.amount,
        currency=row.currency,
        status=SubscriptionStatus(row.status),
        reference=row.stripe_idempotency_key,
        checkout_session_id=row.checkout_session_id,
        stripe_subscription_id=row.stripe_subscription_id,
        customer_id=row.customer_id,
        current_period_start=row.current_period_start,
        current_period_end=row.current_period_end,
        trial_end=row.trial_end,
        cancel_at=row.cancel_at,
        cancel_at_period_end=row.cancel_at_period_end,
        ended_at=row.ended_at,
        created_at=row.created_at,
        idempotency_key=row.idempotency_key,
    )


@dataclass(frozen=True, slots=True)
class SubscriptionStart:
    subscription: Subscription
    checkout_session_id: str
    url: str


@dataclass(frozen=True, slots=True)
class Allowance:
    """This month's allowance of a subscription: granted (with any upgrade), and left."""

    granted: int
    left: int
    month_end: datetime | None


def check_interval(value: object) -> Interval:
    for interval in Interval:
        if value == interval.value:
            return interval
    raise InvalidArgument("interval", "must be month or year")


def _plan_on_sale(catalog: Catalog, plan_id: str) -> Plan:
    plan = catalog.plan(plan_id)
    if plan is None or not plan.active:
        raise UnknownPlan(plan_id)
    return plan


def get_subscription(conn: Connection, *, user_id: str) -> Subscription:
    """The user's subscription: the current one, else the last that ended; a checkout
    not paid yet is none."""
    get_user(conn, user_id=user_id)
    row = conn.execute(
        sa.select(subscriptions)
        .where(
            subscriptions.c.user_id == user_id,
            subscriptions.c.status.not_in(
                [SubscriptionStatus.PENDING.value, SubscriptionStatus.EXPIRED.value]
            ),
        )
        .order_by(
            subscriptions.c.status.in_([s.value for s in CURRENT_STATUSES]).desc(),
            subscriptions.c.id.desc(),
        )
        .limit(1)
    ).first()
    if row is None:
        raise NoSubscription(user_id)
    return to_subscription(row)


def find_subscription(conn: Connection, *, subscription_id: int) -> Subscription | None:
    row = conn.execute(
        sa.select(subscriptions).where(subscriptions.c.id == subscription_id)
    ).first()
    return None if row is None else to_subscription(row)


def list_subscriptions(
    conn: Connection, *, user_id: str | None = None, limit: int = 50
) -> list[Subscription]:
    """Newest first."""
    query = sa.select(subscriptions).order_by(subscriptions.c.id.desc()).limit(limit)
    if user_id is not None:
        query = query.where(subscriptions.c.user_id == user_id)
    return [to_subscription(row) for row in conn.execute(query)]


def allowance(
    conn: Connection, subscription: Subscription, *, now: datetime | None = None
) -> Allowance:
    """What this month granted (its allowance, an upgrade's difference, what rolled over)
    and what of it is left to use now."""
    now = now or utcnow()
    rows = conn.execute(
        sa.select(
            subscription_grants.c.tokens,
            subscription_grants.c.carried,
            subscription_grants.c.month_end,
            subscription_grants.c.transfer_id,
        )
        .where(
            subscription_grants.c.subscription_id == subscription.id,
            subscription_grants.c.month_start <= now,
            subscription_grants.c.month_end > now - GRACE,
        )
        .order_by(subscription_grants.c.month_start)
    ).all()
    if not rows:
        return Allowance(granted=0, left=0, month_end=None)
    month_end = max(row.month_end for row in rows)
    granted = sum(row.tokens + row.carried for row in rows if row.month_end == month_end)
    transfer_ids = [row.transfer_id for row in rows if row.transfer_id is not None]
    left = conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(buckets.c.remaining - buckets.c.held), 0)).where(
            buckets.c.transfer_id.in_(transfer_ids),
            buckets.c.remaining > 0,
            sa.or_(buckets.c.expires_at.is_(None), buckets.c.expires_at > now),
        )
    ).scalar_one()
    return Allowance(granted=int(granted), left=int(left), month_end=month_end)


def _when(timestamp: int | None) -> datetime | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC)


def plan_of(catalog: Catalog | None, seen: StripeSubscription) -> tuple[Plan, Interval] | None:
    """The plan a Stripe subscription is on now: its price's lookup key (a plan switched in
    the portal names only a price), else the metadata tokenbank gave it."""
    if catalog is None:
        return None
    found = catalog.plan_for_lookup_key(seen.price.lookup_key if seen.price else None)
    if found is not None:
        return found
    plan = catalog.plan(seen.metadata.get("tokenbank_plan_id", ""))
    interval = seen.price.interval if seen.price is not None else None
    if plan is None or interval not in (Interval.MONTH.value, Interval.YEAR.value):
        return None
    return plan, Interval(str(interval))


def lock_subscription(conn: Connection, *, subscription_id: int) -> Subscription:
    row = conn.execute(
        sa.select(subscriptions).where(subscriptions.c.id == subscription_id).with_for_update()
    ).one()
    return to_subscription(row)


def apply_view(
    conn: Connection,
    row: Subscription,
    seen: StripeSubscription,
    *,
    plan: tuple[Plan, Interval] | None,
    now: datetime,
) -> list[str]:
    """Copy Stripe's view of the subscription onto its locked row, forward only: an ended
    subscription stays ended, a period never moves back, and ``incomplete`` (the first
    word of every new subscription) never overwrites what came after it. So a stale or
    reordered view changes nothing. Returns what changed, for the outcome."""
    if row.status in FINAL_STATUSES and row.status is not SubscriptionStatus.EXPIRED:
        return []
    period_end = _when(seen.current_period_end)
    try:
        status = SubscriptionStatus(seen.status)
    except ValueError:
        status = row.status
    same_terms = plan is None or (plan[0].id, plan[1]) == (row.plan_id, row.interval)
    if (
        status not in FINAL_STATUSES
        and same_terms
        and row.current_period_end is not None
        and period_end is not None
        and period_end < row.current_period_end
    ):
        # An earlier view of the same terms (a period moves back only when the terms
        # change: a yearly plan switched to monthly starts a shorter period).
        return []
    if (
        row.status is SubscriptionStatus.EXPIRED
        and status in CURRENT_STATUSES
        and _another_current(conn, row)
    ):
        # A checkout left behind was paid after a new one started (Stripe would not close
        # it): the user has two subscriptions at Stripe. The row stays out of the one-per-
        # user rule; what its invoices paid is still granted; an operator must cancel one.
        log.warning(
            "subscription_duplicate",
            subscription_id=row.id,
            user_id=row.user_id,
            stripe_subscription_id=seen.id,
        )
        status = row.status
    if status is SubscriptionStatus.INCOMPLETE and row.status not in (
        SubscriptionStatus.PENDING,
        SubscriptionStatus.EXPIRED,
        SubscriptionStatus.INCOMPLETE,
    ):
        status = row.status
    values: dict[str, Any] = {
        "status": status.value,
        "stripe_subscription_id": seen.id,
        "customer_id": seen.customer_id or row.customer_id,
        "current_period_start": _when(seen.current_period_start) or row.current_period_start,
        "current_period_end": period_end or row.current_period_end,
        "trial_end": _when(seen.trial_end),
        "cancel_at": _when(seen.cancel_at),
        "cancel_at_period_end": seen.cancel_at_period_end,
        "ended_at": _when(seen.ended_at),
    }
    if plan is not None and (plan[0].id, plan[1]) != (row.plan_id, row.interval):
        terms, interval = plan
        values.update(
            plan_id=terms.id,
            interval=interval.value,
            tokens_per_month=terms.tokens_per_month,
            unused=terms.unused.value,
            rollover_cap=terms.rollover_cap,
            amount=terms.price(interval),
            currency=terms.currency,
        )
    before = {
        "status": row.status.value,
        "stripe_subscription_id": row.stripe_subscription_id,
        "customer_id": row.customer_id,
        "current_period_start": row.current_period_start,
        "current_period_end": row.current_period_end,
        "trial_end": row.trial_end,
        "cancel_at": row.cancel_at,
        "cancel_at_period_end": row.cancel_at_period_end,
        "ended_at": row.ended_at,
        "plan_id": row.plan_id,
        "interval": row.interval.value,
    }
    changed = [name for name, value in values.items() if name in before and before[name] != value]
    if not changed:
        return []
    conn.execute(
        sa.update(subscriptions)
        .where(subscriptions.c.id == row.id)
        .values(updated_at=now, **values)
    )
    notes = []
    if "status" in changed:
        notes.append(f"{row.status.value} -> {status.value}")
    if "plan_id" in changed or "interval" in changed:
        notes.append(f"plan {values['plan_id']} ({values['interval']})")
    if "current_period_end" in changed and values["current_period_end"] is not None:
        notes.append(f"period until {values['current_period_end']:%Y-%m-%d}")
    if "cancel_at" in changed or "cancel_at_period_end" in changed:
        ends = values["cancel_at"] or (
            values["current_period_end"] if values["cancel_at_period_end"] else None
        )
        notes.append(f"ends {ends.isoformat()}" if ends else "renews")
    return notes or ["updated"]


def _another_current(conn: Connection, row: Subscription) -> bool:
    found = conn.execute(
        sa.select(subscriptions.c.id).where(
            subscriptions.c.user_id == row.user_id,
            subscriptions.c.id != row.id,
            subscriptions.c.status.in_([s.value for s in CURRENT_STATUSES]),
        )
    ).first()
    return found is not None


def record(
    db: Database,
    seen: StripeSubscription,
    *,
    subscription_id: int,
    plan: tuple[Plan, Interval] | None = None,
) -> Subscription:
    """Apply a view Stripe just answered (a cancel, a change) to the row at once, rather
    than wait for its webhook; the webhook then finds nothing left to do."""
    now = utcnow()
    with db.transaction() as conn:
        row = lock_subscription(conn, subscription_id=subscription_id)
        notes = apply_view(conn, row, seen, plan=plan, now=now)
        stored = lock_subscription(conn, subscription_id=subscription_id)
    if notes:
        log.info(
            "subscription_updated",
            subscription_id=subscription_id,
            user_id=stored.user_id,
            changes="; ".join(notes),
            source="api",
        )
    return stored


def _current(conn: Connection, user_id: str) -> Subscription | None:
    row = conn.execute(
        sa.select(subscriptions).where(
            subscriptions.c.user_id == user_id,
            subscriptions.c.status.in_([s.value for s in CURRENT_STATUSES]),
        )
    ).first()
    return None if row is None else to_subscription(row)


def _metadata(subscription: Subscription) -> dict[str, str]:
    """Where to find the row again; the terms come from the row and the catalog, never
    from metadata."""
    return {
        "tokenbank_subscription_id": str(subscription.id),
        "tokenbank_reference": subscription.reference,
        "tokenbank_user_id": subscription.user_id,
        "tokenbank_plan_id": subscription.plan_id,
        "tokenbank_interval": subscription.interval.value,
    }


def _open(
    db: Database,
    stripe: Stripe,
    *,
    user_id: str,
    plan: Plan,
    interval: Interval,
    idempotency_key: str | None,
) -> tuple[Subscription, bool]:
    """The pending row, committed; True when ``idempotency_key`` found an earlier one."""
    if idempotency_key is not None:
        check_key(idempotency_key)
        with db.read() as conn:
            row = conn.execute(
                sa.select(subscriptions).where(subscriptions.c.idempotency_key == idempotency_key)
            ).first()
        if row is not None:
            earlier = to_subscription(row)
            if (earlier.user_id, earlier.plan_id, earlier.interval) != (user_id, plan.id, interval):
                raise IdempotencyConflict(
                    idempotency_key, f"it started subscription {earlier.id} of another plan"
                )
            return earlier, True
    with db.read() as conn:
        get_user(conn, user_id=user_id)
        current = _current(conn, user_id)
    if current is not None and current.status is SubscriptionStatus.PENDING:
        _abandon(db, stripe, current)
    elif current is not None:
        raise SubscriptionExists(user_id, current.status.value)
    now = utcnow()
    try:
        with db.transaction() as conn:
            subscription_id = conn.execute(
                sa.insert(subscriptions)
                .values(
                    user_id=user_id,
                    plan_id=plan.id,
                    interval=interval.value,
                    tokens_per_month=plan.tokens_per_month,
                    unused=plan.unused.value,
                    rollover_cap=plan.rollover_cap,
                    amount=plan.price(interval),
                    currency=plan.currency,
                    status=SubscriptionStatus.PENDING.value,
                    stripe_idempotency_key=f"tokenbank-{secrets.token_hex(12)}",
                    idempotency_key=idempotency_key,
                    created_at=now,
                    updated_at=now,
                )
                .returning(subscriptions.c.id)
            ).scalar_one()
            found = find_subscription(conn, subscription_id=subscription_id)
    except sa.exc.IntegrityError:
        # Another request got in first: the same key's (a retry racing the first), or
        # another subscription of this user's.
        with db.read() as conn:
            if idempotency_key is not None:
                row = conn.execute(
                    sa.select(subscriptions).where(
                        subscriptions.c.idempotency_key == idempotency_key
                    )
                ).first()
                if row is not None and row.user_id == user_id:
                    return to_subscription(row), True
            current = _current(conn, user_id)
        raise SubscriptionExists(user_id, current.status.value if current else "starting") from None
    assert found is not None
    return found, False


def _abandon(db: Database, stripe: Stripe, pending: Subscription) -> None:
    """A new checkout replaces one the user left unpaid: its page is closed at Stripe first
    (nothing locked meanwhile), so it can never be paid as well. One that was paid after
    all is settled as the subscription it is."""
    if pending.checkout_session_id is not None:
        try:
            session = stripe.expire_checkout_session(pending.checkout_session_id)
        except PaymentProviderError:  # refused: it is no longer open
            session = stripe.checkout_session(pending.checkout_session_id)
        if session.status == "complete":
            raise SubscriptionExists(pending.user_id, "paid a moment ago")
        if session.status != "expired":
            raise PaymentProviderUnavailable("the earlier checkout could not be closed yet")
    with db.transaction() as conn:
        conn.execute(
            sa.update(subscriptions)
            .where(
                subscriptions.c.id == pending.id,
                subscriptions.c.status == SubscriptionStatus.PENDING.value,
            )
            .values(status=SubscriptionStatus.EXPIRED.value, updated_at=utcnow())
        )


def start_subscription(
    db: Database,
    stripe: Stripe,
    catalog: Catalog,
    *,
    user_id: str,
    plan_id: str,
    interval: str,
    success_url: str,
    cancel_url: str,
    locale: str | None = None,
    prices: PriceBook | None = None,
    idempotency_key: str | None = None,
) -> SubscriptionStart:
    """A pending subscription and the subscription-mode Checkout Session that starts it.

    One subscription per user: with a current one this raises ``SubscriptionExists`` (a
    plan change is ``change_subscription``); a checkout the user left unpaid is closed and
    replaced. The plan's synced Stripe price is used when it matches the catalog, else the
    price is sent inline. Its tokens are granted when Stripe reports the first invoice paid.
    """
    plan = _plan_on_sale(catalog, plan_id)
    wanted = check_interval(interval)
    subscription, again = _open(
        db, stripe, user_id=user_id, plan=plan, interval=wanted, idempotency_key=idempotency_key
    )
    if again:
        if subscription.status is SubscriptionStatus.EXPIRED:
            raise IdempotencyConflict(
                cast(str, idempotency_key), "its checkout ended: start again with a new key"
            )
        if subscription.status is not SubscriptionStatus.PENDING:
            raise SubscriptionExists(user_id, subscription.status.value)
        if subscription.checkout_session_id is not None:
            session = stripe.checkout_session(subscription.checkout_session_id)
            return _start(subscription, session, success_url)
    price_id = prices.plan_price_id(plan, wanted) if prices is not None else None
    line_item: dict[str, Any] = (
        {"price": price_id, "quantity": 1}
        if price_id
        else {
            "price_data": {
                "currency": plan.currency,
                "unit_amount": plan.price(wanted),
                "recurring": {"interval": wanted.value},
                "product_data": {
                    "name": plan.localized_name(locale or "en"),
                    "description": plan.summary(),
                },
            },
            "quantity": 1,
        }
    )
    try:
        customer_id = customer_for(
            db, stripe, user_id=user_id, idempotency_key=f"{subscription.reference}-customer"
        )
        session = stripe.create_subscription_checkout(
            line_item=line_item,
            customer_id=customer_id,
            client_reference_id=user_id,
            metadata=_metadata(subscription),
            description=f"{plan.localized_name('en')}: {plan.summary()}",
            trial_days=plan.trial_days if _first(db, subscription) else None,
            success_url=success_url.replace("{SUBSCRIPTION_ID}", str(subscription.id)),
            cancel_url=cancel_url.replace("{SUBSCRIPTION_ID}", str(subscription.id)),
            locale=locale,
            idempotency_key=subscription.reference,
        )
    except PaymentProviderError:
        with db.transaction() as conn:
            conn.execute(
                sa.update(subscriptions)
                .where(
                    subscriptions.c.id == subscription.id,
                    subscriptions.c.status == SubscriptionStatus.PENDING.value,
                )
                .values(status=SubscriptionStatus.EXPIRED.value, updated_at=utcnow())
            )
        raise
    with db.transaction() as conn:
        conn.execute(
            sa.update(subscriptions)
            .where(subscriptions.c.id == subscription.id)
            .values(checkout_session_id=session.id, customer_id=customer_id, updated_at=utcnow())
        )
        stored = find_subscription(conn, subscription_id=subscription.id)
    assert stored is not None
    log.info(
        "subscription_started",
        subscription_id=stored.id,
        user_id=user_id,
        plan_id=plan.id,
        interval=wanted.value,
    )
    return _start(stored, session, success_url)


def _first(db: Database, subscription: Subscription) -> bool:
    """Whether this is the user's first subscription to reach Stripe: a plan's trial is
    given once per user, or cancelling and subscribing again would grant it again."""
    with db.read() as conn:
        found = conn.execute(
            sa.select(subscriptions.c.id).where(
                subscriptions.c.user_id == subscription.user_id,
                subscriptions.c.id != subscription.id,
                subscriptions.c.stripe_subscription_id.is_not(None),
            )
        ).first()
    return found is None


def _start(
    subscription: Subscription, session: CheckoutSession, success_url: str
) -> SubscriptionStart:
    url = session.url or success_url.replace("{CHECKOUT_SESSION_ID}", session.id)
    return SubscriptionStart(subscription=subscription, checkout_session_id=session.id, url=url)


def _live(db: Database, user_id: str) -> Subscription:
    """The user's subscription that Stripe bills now, for a change to it."""
    with db.read() as conn:
        get_user(conn, user_id=user_id)
        current = _current(conn, user_id)
    if current is None:
        raise NoSubscription(user_id)
    if current.stripe_subscription_id is None or current.status in (
        SubscriptionStatus.PENDING,
        SubscriptionStatus.INCOMPLETE,
    ):
        raise SubscriptionEnded(current.status.value)
    return current


def cancel_subscription(db: Database, stripe: Stripe, *, user_id: str) -> Subscription:
    """Cancel at the end of the period paid for: no more renewals or grants after it; the
    tokens granted stay until they expire. Asking twice changes nothing."""
    current = _live(db, user_id)
    seen = stripe.update_subscription(
        cast(str, current.stripe_subscription_id), {"cancel_at_period_end": True}
    )
    return record(db, seen, subscription_id=current.id)


def resume_subscription(db: Database, stripe: Stripe, *, user_id: str) -> Subscription:
    """Undo a scheduled cancel (either way Stripe records one)."""
    current = _live(db, user_id)
    seen = stripe.update_subscription(
        cast(str, current.stripe_subscription_id),
        {"cancel_at_period_end": False, "cancel_at": ""},
    )
    return record(db, seen, subscription_id=current.id)


def change_subscription(
    db: Database,
    stripe: Stripe,
    catalog: Catalog,
    *,
    user_id: str,
    plan_id: str,
    interval: str,
    prices: PriceBook | None = None,
) -> Subscription:
    """Switch the plan, with Stripe's proration. An upgrade (a higher price in the same
    interval) is invoiced at once (``always_invoice``), and once that invoice is paid the
    difference in allowance is granted for the rest of the month; a downgrade changes the
    price with no proration and takes effect at the renewal, whose invoice grants the new
    plan's allowance. A change of interval starts a new period at once, invoiced now."""
    plan = _plan_on_sale(catalog, plan_id)
    wanted = check_interval(interval)
    current = _live(db, user_id)
    if current.status in FINAL_STATUSES:
        raise SubscriptionEnded(current.status.value)
    if (current.plan_id, current.interval) == (plan.id, wanted):
        return current
    seen = stripe.subscription(cast(str, current.stripe_subscription_id))
    price_id = prices.plan_price_id(plan, wanted) if prices is not None else None
    upgrade = wanted is not current.interval or plan.price(wanted) > current.amount
    item: dict[str, Any] = {"id": seen.item_id}
    if price_id:
        item["price"] = price_id
    else:
        product = seen.price.product_id if seen.price is not None else None
        item["price_data"] = {
            "currency": plan.currency,
            "unit_amount": plan.price(wanted),
            "recurring": {"interval": wanted.value},
            "product": product,
        }
    metadata = {"tokenbank_plan_id": plan.id, "tokenbank_interval": wanted.value}
    seen = stripe.update_subscription(
        seen.id,
        {
            "items": [item],
            "proration_behavior": "always_invoice" if upgrade else "none",
            "metadata": metadata,
        },
    )
    return record(db, seen, subscription_id=current.id, plan=(plan, wanted))
