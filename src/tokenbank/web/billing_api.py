"""Buying tokens over the JSON API, and Stripe's webhook endpoint."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.concurrency import run_in_threadpool

from tokenbank import billing, ledger
from tokenbank.apikeys.service import ApiKey, Scope
from tokenbank.billing import Billing, Package, PaymentsNotConfigured, Purchase
from tokenbank.db import Database
from tokenbank.faults import NONE as NO_FAULTS
from tokenbank.faults import Faults
from tokenbank.identity import SignedIn
from tokenbank.web.api import PROBLEMS
from tokenbank.web.auth import requires
from tokenbank.web.observe import Metrics
from tokenbank.web.routing import StrictRoute
from tokenbank.web.schemas import (
    BillingPortalIn,
    BillingPortalOut,
    CheckoutIn,
    CheckoutOut,
    PackageOut,
    PackagesOut,
    PaymentIntentIn,
    PaymentIntentOut,
    PurchaseOut,
    PurchasesOut,
)
from tokenbank.web.shop_pages import return_urls

UserId = Annotated[str, Path(min_length=1, max_length=255, pattern=r"^[^\x00-\x20\x7f/]+$")]
RowId = Annotated[int, Path(ge=1, le=2**63 - 1)]
Reader = Annotated[ApiKey | SignedIn, Depends(requires(Scope.READ, signed_in_users=True))]
Spender = Annotated[ApiKey | SignedIn, Depends(requires(Scope.SPEND))]
Cursor = Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$", description="next_cursor")]
PAGE = 50
BILLING_PROBLEMS: dict[int | str, dict[str, Any]] = {
    status: {"description": text, "content": {"application/problem+json": {}}}
    for status, text in (
        (502, "Stripe refused the request"),
        (503, "Payments are not configured, or Stripe or the database is unavailable: retry"),
    )
}


def package_out(package: Package, base: Package | None) -> PackageOut:
    savings = package.savings_against(base) if base else Decimal(0)
    return PackageOut(
        id=package.id,
        name=package.name,
        features=package.features,
        tokens=package.tokens,
        bonus_tokens=package.bonus_tokens,
        total_tokens=package.total_tokens,
        price=package.price,
        currency=package.currency,
        price_per_token=f"{package.price_per_token.normalize():f}",
        savings_percent=int((savings * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP)),
        badge=package.badge,
    )


def purchase_out(purchase: Purchase) -> PurchaseOut:
    return PurchaseOut(
        purchase_id=purchase.id,
        user_id=purchase.user_id,
        package_id=purchase.package_id,
        status=purchase.status.value,
        flow=purchase.flow.value,
        tokens=purchase.tokens,
        bonus_tokens=purchase.bonus_tokens,
        amount=purchase.amount,
        currency=purchase.currency,
        checkout_session_id=purchase.checkout_session_id,
        payment_intent_id=purchase.payment_intent_id,
        failure_code=purchase.failure_code,
        failure_message=purchase.failure_message,
        refunded_amount=purchase.refunded_amount,
        clawed_back_tokens=purchase.clawed_back_tokens,
        created_at=purchase.created_at,
        paid_at=purchase.paid_at,
    )


def check_return_url(url: str, *, hosts: frozenset[str], field: str) -> str:
    """A URL Stripe may send a buyer to: http(s) on this service's host or one the operator
    allows (``TOKENBANK_ALLOWED_RETURN_HOSTS``), with nothing that reads differently in a
    browser than here (a user part, a backslash)."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 - reading it checks it is a number in range
    except ValueError:  # an unbalanced "[", a port that is not a number...
        parts, host = urlsplit(""), ""
    if (
        parts.scheme not in ("http", "https")
        or "\\" in url
        or "@" in parts.netloc
        or host not in hosts
    ):
        raise ledger.InvalidArgument(
            field,
            "must point at this service or a host in TOKENBANK_ALLOWED_RETURN_HOSTS",
        )
    return url


def build_router(
    *,
    db: Database,
    shop: Billing | None,
    metrics: Metrics,
    public_url: str,
    return_hosts: frozenset[str] = frozenset(),
    faults: Faults = NO_FAULTS,
) -> APIRouter:
    router = APIRouter(responses=PROBLEMS, route_class=StrictRoute)

    def selling() -> Billing:
        if shop is None:
            raise PaymentsNotConfigured("no Stripe key is configured (STRIPE_SECRET_KEY)")
        return shop

    @router.get("/api/v1/packages", tags=["purchases"], responses=BILLING_PROBLEMS)
    def packages() -> PackagesOut:
        """The token packages on sale (public: no key needed)."""
        catalog = selling().catalog
        return PackagesOut(
            currency=catalog.currency,
            packages=[package_out(p, catalog.base) for p in catalog.on_sale],
        )

    @router.post(
        "/api/v1/users/{user_id}/checkout-sessions",
        status_code=201,
        tags=["purchases"],
        responses=BILLING_PROBLEMS,
    )
    def checkout_session(user_id: UserId, body: CheckoutIn, _: Spender) -> CheckoutOut:
        """Start a purchase on Stripe Checkout: send the user's browser to ``url``. The
        tokens are credited when Stripe confirms the payment, exactly once."""
        shop = selling()
        success_url, cancel_url = return_urls(public_url)
        for field in ("success_url", "cancel_url"):
            if (given := getattr(body, field)) is not None:
                check_return_url(given, hosts=return_hosts, field=field)
        started = billing.start_checkout(
            db,
            shop.stripe,
            shop.catalog,
            user_id=user_id,
            package_id=body.package_id,
            success_url=body.success_url or success_url,
            cancel_url=body.cancel_url or cancel_url,
            locale=body.locale,
            prices=shop.prices,
            idempotency_key=body.idempotency_key,
            faults=faults,
        )
        metrics.purchases_started.labels("checkout").inc()
        return CheckoutOut(
            purchase_id=started.purchase.id,
            checkout_session_id=started.checkout_session_id,
            url=started.url,
        )

    @router.post(
        "/api/v1/users/{user_id}/payment-intents",
        status_code=201,
        tags=["purchases"],
        responses=BILLING_PROBLEMS,
    )
    def payment_intent(user_id: UserId, body: PaymentIntentIn, _: Spender) -> PaymentIntentOut:
        """Start a purchase paid in the app's own page: confirm ``client_secret`` with
        Stripe.js (``confirmCardPayment``)."""
        shop = selling()
        started = billing.start_payment(
            db,
            shop.stripe,
            shop.catalog,
            user_id=user_id,
            package_id=body.package_id,
            idempotency_key=body.idempotency_key,
            faults=faults,
        )
        metrics.purchases_started.labels("payment_intent").inc()
        purchase = started.purchase
        return PaymentIntentOut(
            purchase_id=purchase.id,
            payment_intent_id=started.payment_intent_id,
            client_secret=started.client_secret,
            publishable_key=shop.publishable_key,
            amount=purchase.amount,
            currency=purchase.currency,
            tokens=purchase.tokens,
            bonus_tokens=purchase.bonus_tokens,
        )

    @router.get("/api/v1/users/{user_id}/purchases", tags=["purchases"])
    def user_purchases(user_id: UserId, _: Reader, cursor: Cursor = None) -> PurchasesOut:
        """The user's purchases, newest first, 50 a page."""
        with db.read() as conn:
            found = billing.list_purchases(
                conn, user_id=user_id, limit=PAGE + 1, before=int(cursor) if cursor else None
            )
        more = len(found) > PAGE
        return PurchasesOut(
            items=[purchase_out(p) for p in found[:PAGE]],
            next_cursor=str(found[PAGE - 1].id) if more else None,
        )

    @router.get("/api/v1/purchases/{purchase_id}", tags=["purchases"])
    def get_purchase(
        purchase_id: RowId, _: Annotated[ApiKey, Depends(requires(Scope.READ))]
    ) -> PurchaseOut:
        with db.read() as conn:
            return purchase_out(billing.get_purchase(conn, purchase_id=purchase_id))

    @router.post(
        "/api/v1/users/{user_id}/billing-portal-sessions",
        status_code=201,
        tags=["purchases"],
        responses=BILLING_PROBLEMS,
    )
    def billing_portal(user_id: UserId, body: BillingPortalIn, _: Spender) -> BillingPortalOut:
        """A Stripe billing portal link: the user's receipts and payment methods."""
        shop = selling()
        check_return_url(body.return_url, hosts=return_hosts, field="return_url")
        customer_id = billing.customer_for(db, shop.stripe, user_id=user_id)
        return BillingPortalOut(
            url=shop.stripe.billing_portal_url(customer_id=customer_id, return_url=body.return_url)
        )

    @router.post(
        "/webhooks/stripe",
        tags=["purchases"],
        responses={
            status: {"description": text, "content": {"application/problem+json": {}}}
            for status, text in (
                (400, "Missing, forged or stale signature, or a body that is not an event"),
                (500, "Stored, but applying it failed: Stripe will retry"),
                (503, "No webhook secret, or the database or Stripe is unavailable: retry"),
            )
        },
    )
    async def stripe_webhook(request: Request) -> dict[str, Any]:
        """Stripe's events. The signature is checked on the raw body; every event is stored
        once, and applied in the same transaction that marks it processed."""
        shop = selling()
        payload = await request.body()
        processed = await run_in_threadpool(
            billing.receive,
            db,
            shop.stripe,
            payload=payload,
            signature=request.headers.get("stripe-signature"),
            policy=shop.policy,
        )
        if processed.changed:
            faults.point("webhook.committed")
        metrics.webhooks.labels("duplicate" if processed.duplicate else "processed").inc()
        return {"received": True, "duplicate": processed.duplicate, "outcome": processed.outcome}

    return router
