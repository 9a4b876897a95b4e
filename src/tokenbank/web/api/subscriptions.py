"""Plans over the API: the plans on sale, subscribing through Stripe Checkout, and the
user's subscription: read it, cancel it at the period's end, or change its plan."""

from __future__ import annotations

from fastapi import APIRouter

from tokenbank import billing
from tokenbank.billing import coverage
from tokenbank.web.api.purchases import check_return_url
from tokenbank.web.api.responses import BILLING_PROBLEMS, PROBLEMS
from tokenbank.web.deps import Reader, RuntimeDep, Selling, Spender, UserId
from tokenbank.web.routing import StrictRoute
from tokenbank.web.runtime import Runtime
from tokenbank.web.schemas import (
    ChangePlanIn,
    PlansOut,
    SubscribeIn,
    SubscribeOut,
    SubscriptionOut,
    plan_out,
    subscription_out,
)

router = APIRouter(
    prefix="/api/v1", responses=PROBLEMS, route_class=StrictRoute, tags=["subscriptions"]
)


@router.get("/plans", responses=BILLING_PROBLEMS)
def plans(selling: Selling) -> PlansOut:
    """The plans on sale (public: no key needed)."""
    return PlansOut(plans=[plan_out(p) for p in selling.catalog.plans_on_sale])


@router.post("/users/{user_id}/subscriptions", status_code=201, responses=BILLING_PROBLEMS)
def subscribe(
    user_id: UserId, body: SubscribeIn, _: Spender, selling: Selling, parts: RuntimeDep
) -> SubscribeOut:
    """Start a subscription on Stripe Checkout: send the user's browser to ``url``. One per
    user: with a current one this is a 409 ``subscription_exists`` (change its plan
    instead). Each month's tokens are granted when Stripe reports its invoice paid."""
    success_url, cancel_url = parts.subscription_urls()
    for field in ("success_url", "cancel_url"):
        if (given := getattr(body, field)) is not None:
            check_return_url(given, hosts=parts.return_hosts, field=field)
    started = billing.start_subscription(
        parts.db,
        selling.stripe,
        selling.catalog,
        user_id=user_id,
        plan_id=body.plan_id,
        interval=body.interval,
        success_url=body.success_url or success_url,
        cancel_url=body.cancel_url or cancel_url,
        locale=body.locale,
        prices=selling.prices,
        idempotency_key=body.idempotency_key,
    )
    return SubscribeOut(
        subscription_id=started.subscription.id,
        checkout_session_id=started.checkout_session_id,
        url=started.url,
    )


def _answer(parts: Runtime, subscription: billing.Subscription) -> SubscriptionOut:
    with parts.db.read() as conn:
        return subscription_out(
            subscription,
            billing.allowance(conn, subscription),
            coverage.usage(
                conn,
                parts.catalog,
                subscription_id=subscription.id,
                user_id=subscription.user_id,
            ),
        )


@router.get("/users/{user_id}/subscription")
def subscription(user_id: UserId, _: Reader, parts: RuntimeDep) -> SubscriptionOut:
    """The user's subscription (the current one, else the last that ended), with this
    month's allowance and the use of its unlimited features; 404 ``no_subscription`` when
    there is none."""
    with parts.db.read() as conn:
        found = billing.get_subscription(conn, user_id=user_id)
    return _answer(parts, found)


@router.post("/users/{user_id}/subscription/cancel", responses=BILLING_PROBLEMS)
def cancel(user_id: UserId, _: Spender, selling: Selling, parts: RuntimeDep) -> SubscriptionOut:
    """Cancel at the end of the period paid for (asking again changes nothing). The tokens
    granted stay until they expire; no month is granted after the end."""
    found = billing.cancel_subscription(parts.db, selling.stripe, user_id=user_id)
    return _answer(parts, found)


@router.post("/users/{user_id}/subscription/resume", responses=BILLING_PROBLEMS)
def resume(user_id: UserId, _: Spender, selling: Selling, parts: RuntimeDep) -> SubscriptionOut:
    """Undo a scheduled cancel: the subscription renews again."""
    found = billing.resume_subscription(parts.db, selling.stripe, user_id=user_id)
    return _answer(parts, found)


@router.post("/users/{user_id}/subscription/change", responses=BILLING_PROBLEMS)
def change(
    user_id: UserId, body: ChangePlanIn, _: Spender, selling: Selling, parts: RuntimeDep
) -> SubscriptionOut:
    """Switch plan or interval with Stripe's proration. An upgrade is invoiced at once and,
    paid, grants the difference in allowance for the rest of the month; a downgrade takes
    effect at the renewal (docs/stripe.md, "Plans")."""
    found = billing.change_subscription(
        parts.db,
        selling.stripe,
        selling.catalog,
        user_id=user_id,
        plan_id=body.plan_id,
        interval=body.interval,
        prices=selling.prices,
    )
    return _answer(parts, found)
