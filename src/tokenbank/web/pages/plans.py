"""Plans on the pages: subscribing from the pricing page, the page Stripe Checkout sends a
new subscriber back to, and the button that opens Stripe's billing portal (change plan,
cancel, update the card)."""

from __future__ import annotations

from functools import partial
from typing import Annotated

import sqlalchemy as sa
import structlog
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from tokenbank import billing, identity
from tokenbank.billing.models import subscriptions
from tokenbank.db import Database
from tokenbank.errors import TokenbankError
from tokenbank.web.deps import BillingDep, Lang, PageUser, RuntimeDep, Visitor
from tokenbank.web.pages.buying import StripeId, not_selling
from tokenbank.web.problems import status_of
from tokenbank.web.render import redirect
from tokenbank.web.routing import PageRoute
from tokenbank.web.texts import error_text

log = structlog.get_logger("tokenbank.web")
router = APIRouter(
    include_in_schema=False, default_response_class=HTMLResponse, route_class=PageRoute
)


@router.post("/subscribe/{plan_id}")
async def subscribe(
    request: Request,
    *,
    plan_id: str,
    interval: Annotated[str, Form(max_length=8)] = "month",
    seller: BillingDep,
    visitor: Visitor,
    parts: RuntimeDep,
    lang: Lang,
) -> Response:
    """Start a subscription for the signed-in user on Stripe Checkout."""
    if seller is None:
        return await not_selling(parts.pages, request, lang)
    if visitor is None:
        return redirect("/login?next=/pricing")
    success_url, cancel_url = parts.subscription_urls()
    try:
        identity.require_verified(visitor, required=parts.verify_email)
        started = await run_in_threadpool(
            partial(
                billing.start_subscription,
                parts.db,
                seller.stripe,
                seller.catalog,
                user_id=visitor.user_id,
                plan_id=plan_id,
                interval=interval,
                success_url=success_url,
                cancel_url=cancel_url,
                locale=lang.tag,
                prices=seller.prices,
            )
        )
    except TokenbankError as exc:
        return await parts.pages.render(
            request,
            "message.html",
            status_of(exc),
            heading=lang.gettext("The subscription could not start"),
            message=error_text(lang, exc),
            link="/dashboard",
            link_text=lang.gettext("Go to your dashboard"),
        )
    return RedirectResponse(started.url, status_code=303, headers=parts.buying_headers)


def _own_session(db: Database, session_id: str, user_id: str) -> bool:
    with db.read() as conn:
        found = conn.execute(
            sa.select(subscriptions.c.id).where(
                subscriptions.c.checkout_session_id == session_id,
                subscriptions.c.user_id == user_id,
            )
        ).first()
    return found is not None


@router.get("/subscription/success")
async def subscription_success(
    request: Request,
    *,
    seller: BillingDep,
    visitor: Visitor,
    parts: RuntimeDep,
    lang: Lang,
    session_id: StripeId = None,
) -> Response:
    """Where Checkout sends a new subscriber back: the subscription is brought in line
    with Stripe now (its webhooks may not have landed), for the visitor's own checkout
    only, then the dashboard shows the plan."""
    if seller is None:
        return await not_selling(parts.pages, request, lang)
    if visitor is None or session_id is None:
        return redirect("/dashboard")
    if await run_in_threadpool(_own_session, parts.db, session_id, visitor.user_id):
        try:
            await run_in_threadpool(
                partial(
                    billing.sync_from_stripe,
                    parts.db,
                    seller.stripe,
                    seller.catalog,
                    session_id=session_id,
                    source="success_page",
                )
            )
        except TokenbankError as exc:  # the webhook will bring it
            log.warning("subscription_success_sync_failed", error_code=exc.code)
    return redirect("/dashboard?subscribed=1")


@router.post("/subscription/manage")
async def manage(
    request: Request, *, seller: BillingDep, user: PageUser, parts: RuntimeDep, lang: Lang
) -> Response:
    """Open Stripe's billing portal for the signed-in user: change plan, cancel, update
    the card. Coming back lands on the dashboard."""
    if seller is None:
        return await not_selling(parts.pages, request, lang)
    try:
        url = await run_in_threadpool(_portal_url, parts.db, seller, user.user_id, parts.public_url)
    except TokenbankError as exc:
        return await parts.pages.render(
            request,
            "message.html",
            status_of(exc),
            heading=lang.gettext("The billing portal could not open"),
            message=error_text(lang, exc),
            link="/dashboard",
            link_text=lang.gettext("Go to your dashboard"),
        )
    return RedirectResponse(url, status_code=303, headers=parts.buying_headers)


def _portal_url(db: Database, seller: billing.Billing, user_id: str, public_url: str) -> str:
    customer_id = billing.customer_for(db, seller.stripe, user_id=user_id)
    return seller.stripe.billing_portal_url(
        customer_id=customer_id, return_url=f"{public_url}/dashboard"
    )
