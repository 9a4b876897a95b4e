"""Unlimited features: a plan that covers a feature's use, so it takes no tokens.

A plan may make features unlimited (``[plans.<id>] unlimited``), each with an optional
fair-use cap of units a month. While the user's subscription is ``active`` or
``trialing`` and its current month has been paid for, a spend or hold of such a feature is
recorded as a *covered* hold (``ledger.cover``: its feature and quantity, what it would
have cost, no tokens), and the purchased balance stays untouched. Past the cap, or once the
plan lapses (past due, canceled, a month not paid), the feature costs tokens again, taken
in the usual order of use (trial tokens, which expire first, then purchased ones).

Counting against the cap and recording the use happen under the subscription's row lock,
so concurrent uses cannot pass the cap together.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tokenbank import ledger
from tokenbank.billing.catalog import Catalog
from tokenbank.billing.models import SubscriptionStatus, subscription_grants, subscriptions
from tokenbank.billing.subscriptions import GRACE
from tokenbank.columns import utcnow
from tokenbank.db import Database
from tokenbank.ledger.accounts import wallet_id
from tokenbank.ledger.holds import DEFAULT_TTL_SECONDS
from tokenbank.ledger.models import HoldKind, HoldStatus, holds

#: The statuses in which a plan's unlimited features are covered.
COVERING = (SubscriptionStatus.ACTIVE.value, SubscriptionStatus.TRIALING.value)


@dataclass(frozen=True, slots=True)
class Coverage:
    """The plan covers ``quantity`` more units of the feature this month; ``left``: how
    many units the cap leaves after them (None: no cap)."""

    subscription_id: int
    plan_id: str
    month_start: datetime
    left: int | None


@dataclass(frozen=True, slots=True)
class Usage:
    """A feature the plan covers this month: units used so far, and the cap (None: none)."""

    feature: str
    used: int
    cap: int | None


def covered_features(catalog: Catalog | None) -> frozenset[str]:
    """The features some plan makes unlimited: only their spends look for a plan."""
    if catalog is None:
        return frozenset()
    return frozenset(f for plan in catalog.plans for f in (plan.unlimited or {}))


def coverage(
    conn: Connection,
    catalog: Catalog | None,
    *,
    user_id: str,
    feature: str,
    quantity: int,
    now: datetime | None = None,
    lock: bool = False,
) -> Coverage | None:
    """Whether the user's plan covers ``quantity`` units of ``feature`` now; None when it
    does not (no such plan, not active, this month not paid, or over the fair-use cap).
    ``lock``: lock the subscription's row, for the caller that records the use next."""
    if catalog is None or feature not in covered_features(catalog):
        return None
    now = now or utcnow()
    query = sa.select(subscriptions.c.id, subscriptions.c.plan_id).where(
        subscriptions.c.user_id == user_id, subscriptions.c.status.in_(COVERING)
    )
    found = conn.execute(query.with_for_update() if lock else query).first()
    if found is None:
        return None
    # The plan that paid for this month (its latest grant: an upgrade's, or the month's),
    # not the plan now: a downgrade takes effect at the renewal.
    month = conn.execute(
        sa.select(
            subscription_grants.c.month_start,
            subscription_grants.c.month_end,
            subscription_grants.c.plan_id,
        )
        .where(
            subscription_grants.c.subscription_id == found.id,
            subscription_grants.c.month_start <= now,
        )
        .order_by(subscription_grants.c.month_start.desc(), subscription_grants.c.id.desc())
        .limit(1)
    ).first()
    plan = catalog.plan(month.plan_id) if month is not None else None
    unlimited = (plan.unlimited if plan is not None else None) or {}
    if month is None or month.month_end + GRACE <= now or feature not in unlimited:
        return None  # no month paid for that runs now, or its plan does not cover it
    cap = unlimited[feature]
    left = None
    if cap is not None:
        used = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(holds.c.quantity), 0)).where(
                holds.c.account_id == wallet_id(conn, user_id),
                holds.c.kind == HoldKind.COVERED.value,
                holds.c.feature == feature,
                holds.c.status.in_([HoldStatus.PENDING.value, HoldStatus.POSTED.value]),
                holds.c.created_at >= month.month_start,
            )
        ).scalar_one()
        left = cap - int(used) - quantity
        if left < 0:
            return None  # over the fair-use cap: this use takes tokens
    return Coverage(found.id, month.plan_id, month.month_start, left)


def use_covered(
    db: Database,
    catalog: Catalog | None,
    *,
    user_id: str,
    feature: str,
    quantity: int,
    amount: int,
    idempotency_key: str,
    spend: bool,
    ttl_seconds: int = DEFAULT_TTL_SECONDS,
    description: str | None = None,
    metadata: dict[str, object] | None = None,
) -> ledger.Hold | None:
    """Record a covered use (``spend``: done now; else a covered hold to post or void),
    or None when the plan does not cover it and the use must take tokens. A key already
    used for a covered use replays it; a key the ledger spent tokens under is left to
    the ledger's replay (None)."""
    with db.transaction(wallet=user_id) as conn:
        earlier = ledger.find_hold(conn, idempotency_key=idempotency_key)
        if earlier is None:
            if ledger.transfer_exists(conn, idempotency_key=idempotency_key):
                return None
            found = coverage(
                conn, catalog, user_id=user_id, feature=feature, quantity=quantity, lock=True
            )
            if found is None:
                return None
        elif earlier.kind is not HoldKind.COVERED:
            return None  # a hold of tokens under this key: the ledger answers it
        return ledger.cover(
            conn,
            user_id=user_id,
            amount=amount,
            idempotency_key=idempotency_key,
            feature=feature,
            quantity=quantity,
            ttl_seconds=ttl_seconds,
            description=description,
            metadata=metadata,
            posted=spend,
        )


def usage(
    conn: Connection,
    catalog: Catalog | None,
    *,
    subscription_id: int,
    user_id: str,
    now: datetime | None = None,
) -> list[Usage]:
    """The unlimited features of the plan that paid for the current month, with the units
    used since it began (covered uses only: pending or posted)."""
    now = now or utcnow()
    month = conn.execute(
        sa.select(subscription_grants.c.month_start, subscription_grants.c.plan_id)
        .where(
            subscription_grants.c.subscription_id == subscription_id,
            subscription_grants.c.month_start <= now,
            subscription_grants.c.month_end > now - GRACE,
        )
        .order_by(subscription_grants.c.month_start.desc(), subscription_grants.c.id.desc())
        .limit(1)
    ).first()
    plan = catalog.plan(month.plan_id) if catalog is not None and month is not None else None
    if month is None or plan is None or not plan.unlimited:
        return []
    used = dict(
        conn.execute(
            sa.select(holds.c.feature, sa.func.sum(holds.c.quantity))
            .where(
                holds.c.account_id == wallet_id(conn, user_id),
                holds.c.kind == HoldKind.COVERED.value,
                holds.c.status.in_([HoldStatus.PENDING.value, HoldStatus.POSTED.value]),
                holds.c.created_at >= month.month_start,
            )
            .group_by(holds.c.feature)
        ).all()
    )
    return [
        Usage(feature=feature, used=int(used.get(feature) or 0), cap=cap)
        for feature, cap in plan.unlimited.items()
    ]
