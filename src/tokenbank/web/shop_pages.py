"""Buying tokens on the pages: pricing, the buy buttons, and where Stripe sends the buyer
back (success, cancel). Card details never touch this site: Stripe Checkout's page, or
Stripe.js's card form inside ours."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from tokenbank import billing
from tokenbank.billing import Billing
from tokenbank.db import Database
from tokenbank.errors import TokenbankError
from tokenbank.faults import NONE as NO_FAULTS
from tokenbank.faults import Faults
from tokenbank.web.i18n import Language
from tokenbank.web.problems import problem, status_of
from tokenbank.web.render import (
    HOME,
    PAGE_HEADERS,
    Csrf,
    Pages,
    RowId,
    content_security_policy,
    error_text,
    form_expired,
    redirect,
)
from tokenbank.web.routing import StrictRoute

#: The success page asks again every 2 seconds, for about a minute.
MAX_POLLS = 30


#: A Stripe id in the success page's query (cs_..., pi_...).
StripeId = Annotated[str | None, Query(max_length=255, pattern=r"^[A-Za-z0-9_]+$")]


def build_router(  # noqa: PLR0915 - one closure per route
    *,
    db: Database,
    pages: Pages,
    shop: Billing | None,
    public_url: str,
    faults: Faults = NO_FAULTS,
) -> APIRouter:
    router = APIRouter(
        include_in_schema=False, default_response_class=HTMLResponse, route_class=StrictRoute
    )
    headers = {
        **PAGE_HEADERS,
        "Content-Security-Policy": content_security_policy(_stripe_sources(shop)),
    }

    async def unavailable(request: Request) -> Response:
        lang = await pages.language(request)
        return await pages.render(
            request,
            "message.html",
            503,
            heading=lang.gettext("Buying tokens is not available"),
            message=lang.gettext("Payments are not configured on this server."),
        )

    @router.get("/pricing")
    async def pricing(request: Request) -> Response:
        if shop is None:
            return await unavailable(request)
        catalog = shop.catalog
        offers = [
            {"package": p, "savings": p.savings_against(catalog.base) if catalog.base else 0}
            for p in catalog.on_sale
        ]
        return await pages.render(
            request,
            "pricing.html",
            headers=headers,
            offers=offers,
            flow=shop.flow,
            stripe_js=shop.stripe.js_url,
        )

    @router.post("/buy/{package_id}")
    async def buy(  # noqa: PLR0911 - a page and a JSON answer for each outcome
        request: Request, package_id: str, csrf_token: Csrf = ""
    ) -> Response:
        """Start a purchase for the signed-in user. A form post goes on to Stripe Checkout
        (or a page with the card form); the pricing page's script asks for JSON instead
        and opens the card form in a modal."""
        wants_json = "application/json" in request.headers.get("accept", "")
        lang = await pages.language(request)
        if shop is None:
            if wants_json:
                return _problem(503, "payments_not_configured", lang, None)
            return await unavailable(request)
        if not pages.browsers.csrf_valid(request, csrf_token):
            if wants_json:
                detail = lang.gettext("This form has expired. Reload the page and try again.")
                return problem(403, "csrf", detail)
            return await form_expired(pages, request)
        user = await pages.browsers.signed_in(request)
        if user is None:
            if wants_json:
                detail = lang.gettext("Sign in to buy tokens.")
                return problem(401, "unauthorized", detail, login="/login?next=/pricing")
            return redirect("/login?next=/pricing")
        try:
            if shop.flow == "embedded":
                started = await run_in_threadpool(
                    partial(
                        billing.start_payment,
                        db,
                        shop.stripe,
                        shop.catalog,
                        user_id=user.user_id,
                        package_id=package_id,
                        faults=faults,
                    )
                )
                return await _card_form(request, lang, started, wants_json)
            checkout_url = await run_in_threadpool(
                partial(
                    _checkout,
                    db,
                    shop,
                    user_id=user.user_id,
                    package_id=package_id,
                    public_url=public_url,
                    faults=faults,
                )
            )
        except TokenbankError as exc:
            if wants_json:
                return _problem(status_of(exc), exc.code, lang, exc)
            return await pages.render(
                request,
                "message.html",
                status_of(exc),
                heading=lang.gettext("The purchase could not start"),
                message=error_text(lang, exc),
                link="/pricing",
                link_text=lang.gettext("Back to pricing"),
            )
        if wants_json:
            return JSONResponse({"redirect": checkout_url}, headers=headers)
        return RedirectResponse(checkout_url, status_code=303, headers=headers)

    async def _card_form(
        request: Request, lang: Language, started: billing.PaymentStart, wants_json: bool
    ) -> Response:
        assert shop is not None
        purchase = started.purchase
        package = shop.catalog.find(purchase.package_id)
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
                    "publishable_key": shop.publishable_key,
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
            publishable_key=shop.publishable_key,
            stripe_js=shop.stripe.js_url,
        )

    @router.get("/purchase/success")
    async def purchase_success(
        request: Request,
        session_id: StripeId = None,
        payment_intent: StripeId = None,
        tries: Annotated[int, Query(ge=0, le=1000)] = 0,
    ) -> Response:
        """Where Stripe sends the buyer back. The webhook may not have landed yet, so this
        settles the payment too, from what Stripe says (never from the URL), for a purchase
        of this installation only; what it shows is for the buyer only. While Stripe has
        not confirmed, the page asks again every 2 seconds (htmx; a meta refresh without
        JavaScript). An htmx request gets the status alone."""
        if shop is None:
            return await unavailable(request)
        if (session_id is None) == (payment_intent is None):
            return redirect(HOME)
        user = await pages.browsers.signed_in(request)
        try:
            purchase = await run_in_threadpool(
                partial(
                    billing.settle_returning_buyer,
                    db,
                    shop.stripe,
                    session_id=session_id,
                    payment_intent_id=payment_intent,
                    policy=shop.policy,
                )
            )
        except TokenbankError:
            purchase = None
        context: dict[str, Any] = {
            "purchase": None,
            "pending": False,
            "failed": False,
            "slow": False,
        }
        if purchase is None or user is None or purchase.user_id != user.user_id:
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
            "fragments/purchase_status.html"
            if request.headers.get("hx-request")
            else "purchase.html"
        )
        return await pages.render(request, template, headers=headers, **context)

    @router.get("/purchase/cancel")
    async def purchase_cancel(request: Request, purchase: RowId = None) -> Response:
        """Back from Stripe without paying: nothing was charged; offer the same package."""
        user = await pages.browsers.signed_in(request)
        package = None
        if shop is not None and user is not None and purchase is not None:
            found = await run_in_threadpool(_own_purchase, db, purchase, user.user_id)
            if found is not None:
                package = shop.catalog.find(found.package_id)
                if package is not None and not package.active:
                    package = None
        # Its retry button goes to Stripe: the buying pages' policy.
        return await pages.render(request, "cancel.html", headers=headers, package=package)

    return router


def _problem(status: int, code: str, lang: Language, exc: TokenbankError | None) -> Response:
    """The pricing page's script shows ``detail`` in a toast: in the page's language."""
    detail = (
        error_text(lang, exc)
        if exc is not None
        else lang.gettext("Payments are not configured on this server.")
    )
    return problem(status, code, detail)


def _next_poll(request: Request, tries: int) -> str:
    """The success page's next poll: counted, so a purchase Stripe never confirms stops
    being asked about (after ``MAX_POLLS``, about a minute)."""
    params = {k: v for k, v in request.query_params.items() if k != "tries"}
    return f"{request.url.path}?{urlencode({**params, 'tries': tries + 1})}"


def _stripe_sources(shop: Billing | None) -> str:
    """The origins Stripe's pages and Stripe.js live on, for the buying pages' CSP."""
    if shop is None:
        return ""
    if shop.stripe.api_base:
        parts = urlsplit(shop.stripe.api_base)
        return f"{parts.scheme}://{parts.netloc}"
    # Stripe's published list: Checkout, Stripe.js and its frames, the API, 3-D Secure.
    return (
        "https://checkout.stripe.com https://js.stripe.com https://*.js.stripe.com"
        " https://api.stripe.com https://hooks.stripe.com"
    )


def _own_purchase(db: Database, purchase_id: int, user_id: str) -> billing.Purchase | None:
    with db.read() as conn:
        try:
            found = billing.get_purchase(conn, purchase_id=purchase_id)
        except billing.UnknownPurchase:
            return None
    return found if found.user_id == user_id else None


def return_urls(public_url: str) -> tuple[str, str]:
    """Where Stripe Checkout sends the buyer back: this site's success and cancel pages."""
    return (
        f"{public_url}/purchase/success?session_id={{CHECKOUT_SESSION_ID}}",
        f"{public_url}/purchase/cancel?purchase={{PURCHASE_ID}}",
    )


def _checkout(
    db: Database,
    shop: Billing,
    *,
    user_id: str,
    package_id: str,
    public_url: str,
    faults: Faults,
) -> str:
    """Start a Checkout purchase (in the thread pool: the price lookup may call Stripe)."""
    success_url, cancel_url = return_urls(public_url)
    started = billing.start_checkout(
        db,
        shop.stripe,
        shop.catalog,
        user_id=user_id,
        package_id=package_id,
        success_url=success_url,
        cancel_url=cancel_url,
        prices=shop.prices,
        faults=faults,
    )
    return started.url
