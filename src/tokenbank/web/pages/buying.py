"""Buying tokens on the pages: pricing, the buy buttons, and where Stripe sends the buyer
back (success, cancel). Card details never touch this site: Stripe Checkout's page, or
Stripe.js's card form inside ours."""

from __future__ import annotations

import hmac
from functools import partial
from typing import Annotated, Any
from urllib.parse import urlencode

import structlog
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from tokenbank import billing, identity
from tokenbank.billing import Billing, PurchaseFlow
from tokenbank.db import Database
from tokenbank.errors import TokenbankError, Unavailable, UnknownPurchase
from tokenbank.web.deps import BillingDep, Lang, QueryRowId, RowId, RuntimeDep, Visitor
from tokenbank.web.i18n import Language
from tokenbank.web.problems import problem, status_of
from tokenbank.web.render import HOME, Pages, redirect
from tokenbank.web.routing import PageRoute
from tokenbank.web.texts import error_text

log = structlog.get_logger("tokenbank.web")
router = APIRouter(
    include_in_schema=False, default_response_class=HTMLResponse, route_class=PageRoute
)
#: The success page asks again every 2 seconds, for about a minute.
MAX_POLLS = 30
#: A Stripe id in the success page's query (cs_..., pi_...).
StripeId = Annotated[str | None, Query(max_length=255, pattern=r"^[A-Za-z0-9_]+$")]
#: A purchase's reference in the cancel link Stripe sends a buyer back with (anything else
#: simply matches no purchase: the page still says nothing was charged).
Reference = Annotated[str | None, Query(max_length=200)]


async def not_selling(pages: Pages, request: Request, lang: Language) -> Response:
    return await pages.render(
        request,
        "message.html",
        503,
        heading=lang.gettext("Buying tokens is not available"),
        message=lang.gettext("Payments are not configured on this server."),
    )


@router.get("/pricing")
async def pricing(request: Request, seller: BillingDep, parts: RuntimeDep, lang: Lang) -> Response:
    if seller is None:
        return await not_selling(parts.pages, request, lang)
    catalog = seller.catalog
    offers = [
        {"package": p, "savings": p.savings_against(catalog.base) if catalog.base else 0}
        for p in catalog.on_sale
    ]
    return await parts.pages.render(
        request,
        "pricing.html",
        headers=parts.buying_headers,
        offers=offers,
        plans=catalog.plans_on_sale,
        features=catalog.features,
        flow=seller.flow,
        stripe_js=seller.stripe.js_url,
    )


@router.post("/buy/{package_id}")
async def buy(
    request: Request,
    *,
    package_id: str,
    seller: BillingDep,
    visitor: Visitor,
    parts: RuntimeDep,
    lang: Lang,
) -> Response:
    """Start a purchase for the signed-in user. A form post goes on to Stripe Checkout (or a
    page with the card form); the pricing page's script asks for JSON instead and opens the
    card form in a modal."""
    wants_json = "application/json" in request.headers.get("accept", "")
    if seller is None or visitor is None:
        return await _cannot_buy(
            request, pages=parts.pages, lang=lang, selling=seller is not None, json=wants_json
        )
    headers = parts.buying_headers
    try:
        identity.require_verified(visitor, required=parts.verify_email)
        if seller.flow is PurchaseFlow.PAYMENT_INTENT:
            started = await run_in_threadpool(
                partial(
                    billing.start_payment,
                    parts.db,
                    seller.stripe,
                    seller.catalog,
                    user_id=visitor.user_id,
                    package_id=package_id,
                    faults=parts.faults,
                )
            )
            return await _card_form(
                request,
                pages=parts.pages,
                headers=headers,
                lang=lang,
                seller=seller,
                started=started,
                wants_json=wants_json,
            )
        success_url, cancel_url = parts.return_urls()
        started_checkout = await run_in_threadpool(
            partial(
                billing.start_checkout,
                parts.db,
                seller.stripe,
                seller.catalog,
                user_id=visitor.user_id,
                package_id=package_id,
                success_url=success_url,
                cancel_url=cancel_url,
                prices=seller.prices,
                faults=parts.faults,
            )
        )
    except TokenbankError as exc:
        if wants_json:
            return problem(status_of(exc), exc.code, error_text(lang, exc))
        return await parts.pages.render(
            request,
            "message.html",
            status_of(exc),
            heading=lang.gettext("The purchase could not start"),
            message=error_text(lang, exc),
            link="/pricing",
            link_text=lang.gettext("Back to pricing"),
        )
    if wants_json:
        return JSONResponse({"redirect": started_checkout.url}, headers=headers)
    return RedirectResponse(started_checkout.url, status_code=303, headers=headers)


async def _cannot_buy(
    request: Request, *, pages: Pages, lang: Language, selling: bool, json: bool
) -> Response:
    """Nothing is sold here, or nobody is signed in: as a page, or as JSON for the pricing
    page's script (a toast in the page's language)."""
    if not selling:
        if json:
            detail = lang.gettext("Payments are not configured on this server.")
            return problem(503, "payments_not_configured", detail)
        return await not_selling(pages, request, lang)
    if json:
        detail = lang.gettext("Sign in to buy tokens.")
        return problem(401, "unauthorized", detail, login="/login?next=/pricing")
    return redirect("/login?next=/pricing")


async def _card_form(
    request: Request,
    *,
    pages: Pages,
    headers: dict[str, str],
    lang: Language,
    seller: Billing,
    started: billing.PaymentStart,
    wants_json: bool,
) -> Response:
    purchase = started.purchase
    package = seller.catalog.find(purchase.package_id)
    name = package.localized_name(lang.tag) if package else purchase.package_id
    price = lang.money(purchase.amount, purchase.currency)
    if wants_json:
        return JSONResponse(
            {
                "purchase_id": purchase.id,
                "name": name,
                "summary": lang.ngettext(
                    "%(tokens)s token",
                    "%(tokens)s tokens",
                    purchase.total_tokens,
                    tokens=lang.number(purchase.total_tokens),
                ),
                "price": price,
                "client_secret": started.client_secret,
                "publishable_key": seller.publishable_key,
                "return_url": "/purchase/success?payment_intent=",
            },
            headers=headers,
        )
    return await pages.render(
        request,
        "pay.html",
        headers=headers,
        purchase=purchase,
        package=package,
        price=price,
        client_secret=started.client_secret,
        publishable_key=seller.publishable_key,
        stripe_js=seller.stripe.js_url,
    )


@router.get("/purchase/success")
async def purchase_success(
    request: Request,
    *,
    seller: BillingDep,
    visitor: Visitor,
    parts: RuntimeDep,
    lang: Lang,
    session_id: StripeId = None,
    payment_intent: StripeId = None,
    tries: Annotated[int, Query(ge=0, le=1000)] = 0,
) -> Response:
    """Where Stripe sends the buyer back. The webhook may not have landed yet, so this
    settles the payment too, from what Stripe says (never from the URL), for a purchase of
    this installation only; what it shows is for the buyer only. While Stripe has not
    confirmed, the page asks again every 2 seconds (htmx; a meta refresh without
    JavaScript). An htmx request gets the status alone."""
    if seller is None:
        return await not_selling(parts.pages, request, lang)
    if (session_id is None) == (payment_intent is None):
        return redirect(HOME)
    try:
        purchase = await run_in_threadpool(
            partial(
                billing.settle_returning_buyer,
                parts.db,
                seller.stripe,
                session_id=session_id,
                payment_intent_id=payment_intent,
                policy=seller.policy,
            )
        )
    except TokenbankError:
        purchase = None
    context: dict[str, Any] = {"purchase": None, "pending": False, "failed": False, "slow": False}
    if purchase is None or visitor is None or purchase.user_id != visitor.user_id:
        context["unknown"] = True
    else:
        status = purchase.status
        context.update(
            purchase=purchase,
            review=status is billing.PurchaseStatus.NEEDS_REVIEW,
            failed=status
            not in {
                billing.PurchaseStatus.PAID,
                billing.PurchaseStatus.PENDING,
                billing.PurchaseStatus.NEEDS_REVIEW,
            },
            poll_url=_next_poll(request, tries),
            pending=status is billing.PurchaseStatus.PENDING and tries < MAX_POLLS,
            slow=status is billing.PurchaseStatus.PENDING and tries >= MAX_POLLS,
        )
    template = (
        "fragments/purchase_status.html" if request.headers.get("hx-request") else "purchase.html"
    )
    return await parts.pages.render(request, template, headers=parts.buying_headers, **context)


@router.get("/purchase/cancel")
async def purchase_cancel(
    request: Request,
    *,
    seller: BillingDep,
    visitor: Visitor,
    parts: RuntimeDep,
    purchase: QueryRowId = None,
    reference: Reference = None,
) -> Response:
    """Back from Stripe without paying: the purchase is canceled (its Checkout page closed,
    so nothing can pay it later) and the same package is offered again. Stripe's link holds
    the purchase's unguessable reference, which is what allows this GET to change it: a
    link without it (or a buyer back signed out with a wrong one) changes nothing."""
    found = None
    if seller is not None and purchase is not None and reference is not None:
        found = await run_in_threadpool(_by_reference, parts.db, purchase, reference)
        if found is not None:
            try:
                found = await run_in_threadpool(
                    partial(
                        billing.cancel_purchase,
                        parts.db,
                        seller.stripe,
                        purchase_id=found.id,
                        policy=seller.policy,
                    )
                )
            except TokenbankError as exc:
                # Stripe away or refusing: nothing was charged all the same, and Stripe ends
                # the page itself within a day; reconcile settles the rest.
                log.warning("cancel_deferred", purchase_id=found.id, code=exc.code)
            if found.status is billing.PurchaseStatus.PAID:
                return redirect(f"{HOME}?purchased={found.id}")
    elif seller is not None and purchase is not None and visitor is not None:
        # A link without its reference (an older one) changes nothing; its owner still
        # gets the package offered again.
        found = await run_in_threadpool(_own_purchase, parts.db, purchase, visitor.user_id)
    package = None
    if found is not None and seller is not None:
        package = seller.catalog.find(found.package_id)
        if package is not None and not package.active:
            package = None
    # Its retry button goes to Stripe: the buying pages' policy.
    return await parts.pages.render(
        request,
        "cancel.html",
        headers=parts.buying_headers,
        package=package,
        canceled=found is not None and found.status is billing.PurchaseStatus.CANCELED,
        signed_out=visitor is None,
    )


@router.post("/purchases/{purchase_id}/cancel")
async def cancel_pending(
    request: Request, purchase_id: RowId, seller: BillingDep, visitor: Visitor, parts: RuntimeDep
) -> Response:
    """The dashboard's Cancel on a pending purchase of the signed-in buyer."""
    if visitor is None:
        return redirect("/login?next=/")
    if seller is not None:
        found = await run_in_threadpool(_own_purchase, parts.db, purchase_id, visitor.user_id)
        if found is not None:
            try:
                await run_in_threadpool(
                    partial(
                        billing.cancel_purchase,
                        parts.db,
                        seller.stripe,
                        purchase_id=found.id,
                        policy=seller.policy,
                    )
                )
            except Unavailable:
                raise  # "unavailable for a moment, try again", as a page
            except TokenbankError as exc:
                log.warning("cancel_refused", purchase_id=found.id, code=exc.code)
    return redirect(HOME)


@router.get("/purchases/{purchase_id}/continue")
async def continue_pending(
    request: Request,
    *,
    purchase_id: RowId,
    seller: BillingDep,
    visitor: Visitor,
    parts: RuntimeDep,
    lang: Lang,
) -> Response:
    """The dashboard's "Continue paying": back to Stripe's page, or to the card form, while
    the purchase can still be paid; otherwise back to the dashboard, which shows how it
    ended. Reading Stripe changes nothing it had not already decided."""
    if visitor is None:
        return redirect(f"/login?next=/purchases/{purchase_id}/continue")
    if seller is None:
        return await not_selling(parts.pages, request, lang)
    resumed = await run_in_threadpool(_resume, parts.db, seller, purchase_id, visitor.user_id)
    if resumed is None:
        return redirect(HOME)  # not theirs, or nothing can pay it: the dashboard says how
    if resumed.checkout_url is not None:
        return RedirectResponse(resumed.checkout_url, status_code=303)
    if resumed.payment is not None:
        return await _card_form(
            request,
            pages=parts.pages,
            headers=parts.buying_headers,
            lang=lang,
            seller=seller,
            started=resumed.payment,
            wants_json=False,
        )
    return redirect(HOME)


def _resume(db: Database, seller: Billing, purchase_id: int, user_id: str) -> billing.Resume | None:
    """The buyer's way back to paying, or None. Stripe away is "unavailable for a moment"
    (a page); Stripe refusing means nothing can pay it any more."""
    found = _own_purchase(db, purchase_id, user_id)
    if found is None:
        return None
    try:
        return billing.resume_purchase(
            db, seller.stripe, purchase_id=found.id, policy=seller.policy
        )
    except Unavailable:
        raise
    except TokenbankError:
        return None


def _by_reference(db: Database, purchase_id: int, reference: str) -> billing.Purchase | None:
    with db.read() as conn:
        try:
            found = billing.get_purchase(conn, purchase_id=purchase_id)
        except UnknownPurchase:
            return None
    return found if hmac.compare_digest(found.reference, reference) else None


def _next_poll(request: Request, tries: int) -> str:
    """The success page's next poll: counted, so a purchase Stripe never confirms stops
    being asked about (after ``MAX_POLLS``, about a minute)."""
    params = {k: v for k, v in request.query_params.items() if k != "tries"}
    return f"{request.url.path}?{urlencode({**params, 'tries': tries + 1})}"


def _own_purchase(db: Database, purchase_id: int, user_id: str) -> billing.Purchase | None:
    with db.read() as conn:
        try:
            found = billing.get_purchase(conn, purchase_id=purchase_id)
        except UnknownPurchase:
            return None
    return found if found.user_id == user_id else None
