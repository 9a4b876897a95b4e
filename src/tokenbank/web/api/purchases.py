"""Buying tokens over the API: the catalog, purchases through Stripe Checkout or a card
form in the app's own page, and Stripe's billing portal."""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import APIRouter

from tokenbank import billing
from tokenbank.ledger import InvalidArgument
from tokenbank.web.api.responses import BILLING_PROBLEMS, PROBLEMS
from tokenbank.web.deps import (
    Cursor,
    DatabaseDep,
    KeyReader,
    MetricsDep,
    Reader,
    RowId,
    RuntimeDep,
    Selling,
    Spender,
    UserId,
)
from tokenbank.web.routing import StrictRoute
from tokenbank.web.schemas import (
    BillingPortalIn,
    BillingPortalOut,
    CheckoutIn,
    CheckoutOut,
    PackagesOut,
    PaymentIntentIn,
    PaymentIntentOut,
    PurchaseOut,
    PurchasesOut,
    package_out,
    purchase_out,
)

router = APIRouter(
    prefix="/api/v1", responses=PROBLEMS, route_class=StrictRoute, tags=["purchases"]
)
PAGE = 50


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
        raise InvalidArgument(
            field, "must point at this service or a host in TOKENBANK_ALLOWED_RETURN_HOSTS"
        )
    return url


@router.get("/packages", responses=BILLING_PROBLEMS)
def packages(selling: Selling) -> PackagesOut:
    """The token packages on sale (public: no key needed)."""
    catalog = selling.catalog
    return PackagesOut(
        currency=catalog.currency,
        packages=[package_out(p, catalog.base) for p in catalog.on_sale],
    )


@router.post("/users/{user_id}/checkout-sessions", status_code=201, responses=BILLING_PROBLEMS)
def checkout_session(
    user_id: UserId,
    body: CheckoutIn,
    _: Spender,
    selling: Selling,
    parts: RuntimeDep,
    metrics: MetricsDep,
) -> CheckoutOut:
    """Start a purchase on Stripe Checkout: send the user's browser to ``url``. The tokens
    are credited when Stripe confirms the payment, exactly once."""
    success_url, cancel_url = parts.return_urls()
    for field in ("success_url", "cancel_url"):
        if (given := getattr(body, field)) is not None:
            check_return_url(given, hosts=parts.return_hosts, field=field)
    started = billing.start_checkout(
        parts.db,
        selling.stripe,
        selling.catalog,
        user_id=user_id,
        package_id=body.package_id,
        success_url=body.success_url or success_url,
        cancel_url=body.cancel_url or cancel_url,
        locale=body.locale,
        prices=selling.prices,
        idempotency_key=body.idempotency_key,
        faults=parts.faults,
    )
    metrics.purchases_started.labels("checkout").inc()
    return CheckoutOut(
        purchase_id=started.purchase.id,
        checkout_session_id=started.checkout_session_id,
        url=started.url,
    )


@router.post("/users/{user_id}/payment-intents", status_code=201, responses=BILLING_PROBLEMS)
def payment_intent(
    user_id: UserId,
    body: PaymentIntentIn,
    _: Spender,
    selling: Selling,
    parts: RuntimeDep,
    metrics: MetricsDep,
) -> PaymentIntentOut:
    """Start a purchase paid in the app's own page: confirm ``client_secret`` with Stripe.js
    (``confirmCardPayment``)."""
    started = billing.start_payment(
        parts.db,
        selling.stripe,
        selling.catalog,
        user_id=user_id,
        package_id=body.package_id,
        idempotency_key=body.idempotency_key,
        faults=parts.faults,
    )
    metrics.purchases_started.labels("payment_intent").inc()
    purchase = started.purchase
    return PaymentIntentOut(
        purchase_id=purchase.id,
        payment_intent_id=started.payment_intent_id,
        client_secret=started.client_secret,
        publishable_key=selling.publishable_key,
        amount=purchase.amount,
        currency=purchase.currency,
        tokens=purchase.tokens,
        bonus_tokens=purchase.bonus_tokens,
    )


@router.get("/users/{user_id}/purchases")
def user_purchases(
    user_id: UserId, _: Reader, db: DatabaseDep, cursor: Cursor = None
) -> PurchasesOut:
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


@router.get("/purchases/{purchase_id}")
def get_purchase(purchase_id: RowId, _: KeyReader, db: DatabaseDep) -> PurchaseOut:
    with db.read() as conn:
        return purchase_out(billing.get_purchase(conn, purchase_id=purchase_id))


@router.post(
    "/users/{user_id}/billing-portal-sessions", status_code=201, responses=BILLING_PROBLEMS
)
def billing_portal(
    user_id: UserId, body: BillingPortalIn, _: Spender, selling: Selling, parts: RuntimeDep
) -> BillingPortalOut:
    """A Stripe billing portal link: the user's receipts and payment methods."""
    check_return_url(body.return_url, hosts=parts.return_hosts, field="return_url")
    customer_id = billing.customer_for(parts.db, selling.stripe, user_id=user_id)
    return BillingPortalOut(
        url=selling.stripe.billing_portal_url(customer_id=customer_id, return_url=body.return_url)
    )
