"""The pages behind a browser session: sign-up, sign-in, sign-out, account, dashboard and
portal links. Each handler parses the form, checks CSRF and limits, calls one service
function and renders or redirects (303, so a reload never resubmits)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from tokenbank import billing, identity, ledger, users
from tokenbank.billing import Billing
from tokenbank.billing.money import format_amount
from tokenbank.db import Database
from tokenbank.errors import TokenbankError
from tokenbank.identity import InvalidCredentials, Passwords, RateLimited, SignedIn, Throttle
from tokenbank.identity.passwords import MIN_LENGTH
from tokenbank.web.browser import Browsers
from tokenbank.web.problems import status_of

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")
HOME = "/dashboard"

#: Sent with every page: no framing, no leaking URLs (portal tokens) to other sites.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

Text = Annotated[str, Form(max_length=320)]
Secret = Annotated[str, Form(max_length=1024)]
Csrf = Annotated[str, Form(max_length=128)]


def _client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _safe_next(path: str | None) -> str:
    try:
        return identity.check_next_path(path) if path else HOME
    except ledger.InvalidArgument:
        return HOME


def build_router(  # noqa: PLR0915 - one closure per route
    *,
    db: Database,
    browsers: Browsers,
    passwords: Passwords,
    throttle: Throttle,
    shop: Billing | None = None,
    public_url: str = "",
) -> APIRouter:
    router = APIRouter(include_in_schema=False, default_response_class=HTMLResponse)

    async def render(
        request: Request,
        template: str,
        status: int = 200,
        headers: dict[str, str] | None = None,
        **context: Any,
    ) -> Response:
        token, fresh = browsers.csrf_token(request)
        response = TEMPLATES.TemplateResponse(
            request,
            template,
            {
                "user": await browsers.signed_in(request),
                "csrf_token": token,
                "min_password": MIN_LENGTH,
                **context,
            },
            status_code=status,
            headers=headers or PAGE_HEADERS,
        )
        if fresh is not None:
            browsers.keep_csrf_anchor(response, fresh)
        return response

    def redirect(path: str) -> RedirectResponse:
        return RedirectResponse(path, status_code=303, headers=PAGE_HEADERS)

    async def refused(
        request: Request, exc: TokenbankError, template: str, **context: Any
    ) -> Response:
        if isinstance(exc, RateLimited):
            response = await render(
                request,
                template,
                429,
                error=f"Too many attempts. Try again in {exc.retry_after} seconds.",
                **context,
            )
            response.headers["Retry-After"] = str(exc.retry_after)
            return response
        status = 401 if isinstance(exc, InvalidCredentials) else 422
        if isinstance(exc, users.EmailTaken):
            status = 409
        return await render(request, template, status, error=_sentence(exc), **context)

    async def forbidden(request: Request) -> Response:
        return await render(
            request,
            "message.html",
            403,
            heading="This form has expired",
            message="Reload the page and try again.",
        )

    async def require_user(request: Request) -> SignedIn | RedirectResponse:
        user = await browsers.signed_in(request)
        if user is None:
            return redirect(f"/login?next={request.url.path}")
        return user

    @router.get("/")
    async def home(request: Request) -> Response:
        return redirect(HOME if await browsers.signed_in(request) else "/login")

    @router.get("/login")
    async def login_form(request: Request, next: str | None = None) -> Response:
        if await browsers.signed_in(request):
            return redirect(_safe_next(next))
        return await render(request, "login.html", next=_safe_next(next))

    @router.post("/login")
    async def login(
        request: Request,
        email: Text,
        password: Secret,
        csrf_token: Csrf = "",
        next: Annotated[str, Form(max_length=500)] = HOME,
    ) -> Response:
        if not browsers.csrf_valid(request, csrf_token):
            return await forbidden(request)
        ip = _client_ip(request)

        def sign_in() -> str:  # one trip to the thread pool: the limits, then the password
            throttle.hit("login_ip", ip)
            throttle.hit("login_account", email.strip().lower())
            return identity.sign_in(
                db,
                email=email,
                password=password,
                passwords=passwords,
                session_ttl=browsers.session_ttl,
            )

        try:
            token = await run_in_threadpool(sign_in)
        except TokenbankError as exc:
            return await refused(request, exc, "login.html", email=email, next=_safe_next(next))
        return await signed_in_as(request, token, _safe_next(next))

    @router.get("/register")
    async def register_form(request: Request) -> Response:
        if await browsers.signed_in(request):
            return redirect(HOME)
        return await render(request, "register.html")

    @router.post("/register")
    async def register(
        request: Request,
        email: Text,
        password: Secret,
        csrf_token: Csrf = "",
        name: Annotated[str, Form(max_length=200)] = "",
    ) -> Response:
        if not browsers.csrf_valid(request, csrf_token):
            return await forbidden(request)
        ip = _client_ip(request)

        def register() -> str:
            throttle.hit("register_ip", ip)
            _, token = identity.register(
                db,
                email=email,
                password=password,
                name=name or None,
                passwords=passwords,
                session_ttl=browsers.session_ttl,
            )
            return token

        try:
            token = await run_in_threadpool(register)
        except TokenbankError as exc:
            return await refused(request, exc, "register.html", email=email, name=name)
        return await signed_in_as(request, token, HOME)

    @router.post("/logout")
    async def logout(request: Request, csrf_token: Csrf = "") -> Response:
        if not browsers.csrf_valid(request, csrf_token):
            return await forbidden(request)
        user = await browsers.signed_in(request)
        if user is not None:
            await run_in_threadpool(_revoke, db, user.session_id)
        response = redirect("/login")
        browsers.end_session(response)
        return response

    @router.get("/account")
    async def account(request: Request, changed: bool = False) -> Response:
        user = await require_user(request)
        if isinstance(user, Response):
            return user
        notice = "Password saved. Other sessions were signed out." if changed else None
        return await render(request, "account.html", notice=notice)

    @router.post("/account/password")
    async def change_password(
        request: Request,
        new_password: Secret,
        csrf_token: Csrf = "",
        current_password: Secret = "",
    ) -> Response:
        if not browsers.csrf_valid(request, csrf_token):
            return await forbidden(request)
        user = await require_user(request)
        if isinstance(user, Response):
            return user
        try:
            await run_in_threadpool(throttle.hit, "login_account", user.email or user.user_id)
            await run_in_threadpool(
                identity.change_password,
                db,
                signed_in=user,
                current=current_password,
                new=new_password,
                passwords=passwords,
            )
        except TokenbankError as exc:
            return await refused(request, exc, "account.html")
        return redirect("/account?changed=1")

    @router.get("/dashboard")
    async def dashboard(request: Request) -> Response:
        user = await require_user(request)
        if isinstance(user, Response):
            return user
        balance, page = await run_in_threadpool(_overview, db, user.user_id)
        return await render(request, "dashboard.html", balance=balance, history=page.items)

    @router.get("/portal/{token}")
    async def portal(request: Request, token: str) -> Response:
        """A host app's one-time link: sign its user in and go where the link says."""
        try:
            session, next_path = await run_in_threadpool(_redeem, db, browsers, token)
        except identity.InvalidPortalLink as exc:
            return await render(
                request,
                "message.html",
                400,
                heading="This link cannot be used",
                message=str(exc).capitalize() + ". Ask the app that sent you for a new one.",
                link="/login",
                link_text="Sign in instead",
            )
        return await signed_in_as(request, session, next_path)

    async def signed_in_as(request: Request, token: str, path: str) -> Response:
        """Replace the browser's session (ending the one it had, if any) and go on."""
        previous = await browsers.signed_in(request)
        if previous is not None:
            await run_in_threadpool(_revoke, db, previous.session_id)
        response = redirect(path)
        browsers.start_session(response, token)
        return response

    # -- buying tokens ------------------------------------------------------------------------

    stripe_sources = _stripe_sources(shop)
    buying_headers = {
        **PAGE_HEADERS,
        "Content-Security-Policy": (
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none';"
            f" form-action 'self' {stripe_sources}; script-src 'self' {stripe_sources};"
            f" connect-src 'self' {stripe_sources}; frame-src {stripe_sources}"
        ),
    }

    async def unavailable(request: Request) -> Response:
        return await render(
            request,
            "message.html",
            503,
            heading="Buying tokens is not available",
            message="Payments are not configured on this server.",
        )

    @router.get("/pricing")
    async def pricing(request: Request) -> Response:
        if shop is None:
            return await unavailable(request)
        catalog = shop.catalog
        offers = [
            {
                "package": p,
                "price": format_amount(p.price, p.currency),
                "per_token": p.price_per_token,
                "savings": round(p.savings_against(catalog.base) * 100) if catalog.base else 0,
            }
            for p in catalog.on_sale
        ]
        return await render(
            request, "pricing.html", headers=buying_headers, offers=offers, flow=shop.flow
        )

    @router.post("/buy/{package_id}")
    async def buy(request: Request, package_id: str, csrf_token: Csrf = "") -> Response:
        """Start a purchase for the signed-in user: off to Stripe Checkout, or the card
        form on our own page, as settings choose."""
        if shop is None:
            return await unavailable(request)
        if not browsers.csrf_valid(request, csrf_token):
            return await forbidden(request)
        user = await require_user(request)
        if isinstance(user, Response):
            return redirect("/login?next=/pricing")
        try:
            if shop.flow == "embedded":
                started = await run_in_threadpool(
                    billing.start_payment,
                    db,
                    shop.stripe,
                    shop.catalog,
                    user_id=user.user_id,
                    package_id=package_id,
                )
                package = shop.catalog.find(package_id)
                return await render(
                    request,
                    "pay.html",
                    headers=buying_headers,
                    purchase=started.purchase,
                    package=package,
                    price=format_amount(started.purchase.amount, started.purchase.currency),
                    client_secret=started.client_secret,
                    publishable_key=shop.publishable_key,
                    stripe_js=shop.stripe.js_url,
                )
            checkout_url = await run_in_threadpool(
                partial(
                    _checkout,
                    db,
                    shop,
                    user_id=user.user_id,
                    package_id=package_id,
                    public_url=public_url,
                )
            )
        except TokenbankError as exc:
            return await render(
                request,
                "message.html",
                status_of(exc),
                heading="The purchase could not start",
                message=_sentence(exc),
                link="/pricing",
                link_text="Back to pricing",
            )
        return RedirectResponse(checkout_url, status_code=303, headers=buying_headers)

    @router.get("/purchase/success")
    async def purchase_success(
        request: Request, session_id: str | None = None, payment_intent: str | None = None
    ) -> Response:
        """Where Stripe sends the buyer back. The webhook may not have landed yet, so this
        settles the payment too, from what Stripe says (never from the URL), for a purchase
        of this installation only; what it shows is for the buyer only."""
        if shop is None:
            return await unavailable(request)
        if (session_id is None) == (payment_intent is None):
            return redirect(HOME)
        user = await browsers.signed_in(request)
        try:
            purchase = await run_in_threadpool(
                _settle_known, db, shop, session_id=session_id, payment_intent_id=payment_intent
            )
        except TokenbankError:
            purchase = None
        if purchase is None or user is None or purchase.user_id != user.user_id:
            return await render(
                request,
                "purchase.html",
                headers=buying_headers,
                purchase=None,
                pending=False,
                failed=False,
                unknown=True,
            )
        return await render(
            request,
            "purchase.html",
            headers=buying_headers,
            purchase=purchase,
            pending=purchase.status is billing.PurchaseStatus.PENDING,
            failed=purchase.status is not billing.PurchaseStatus.PAID
            and purchase.status is not billing.PurchaseStatus.PENDING,
        )

    @router.get("/purchase/cancel")
    async def purchase_cancel(request: Request) -> Response:
        return await render(
            request,
            "message.html",
            heading="Nothing was charged",
            message="You left the payment page before paying. You can pick a package again.",
            link="/pricing",
            link_text="Back to pricing",
        )

    return router


def _stripe_sources(shop: Billing | None) -> str:
    """The origins Stripe's pages and Stripe.js live on, for the buying pages' CSP."""
    if shop is None:
        return ""
    if shop.stripe.api_base:
        parts = urlsplit(shop.stripe.api_base)
        return f"{parts.scheme}://{parts.netloc}"
    return "https://checkout.stripe.com https://js.stripe.com https://api.stripe.com"


def _settle_known(
    db: Database, shop: Billing, *, session_id: str | None, payment_intent_id: str | None
) -> billing.Purchase | None:
    """Settle the purchase with this Stripe id, if there is one: an id nobody here started
    costs no call to Stripe."""
    with db.read() as conn:
        known = billing.find_purchase(
            conn, checkout_session_id=session_id, payment_intent_id=payment_intent_id
        )
    if known is None:
        return None
    payment = billing.fetch_payment(
        shop.stripe, session_id=session_id, payment_intent_id=payment_intent_id
    )
    with db.transaction() as conn:
        return billing.settle(conn, payment, policy=shop.policy).purchase


def return_urls(public_url: str) -> tuple[str, str]:
    """Where Stripe Checkout sends the buyer back: this site's success and cancel pages."""
    return (
        f"{public_url}/purchase/success?session_id={{CHECKOUT_SESSION_ID}}",
        f"{public_url}/purchase/cancel?purchase={{PURCHASE_ID}}",
    )


def _checkout(
    db: Database, shop: Billing, *, user_id: str, package_id: str, public_url: str
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
    )
    return started.url


def _sentence(exc: TokenbankError) -> str:
    if isinstance(exc, ledger.InvalidArgument):
        field, _, message = str(exc).partition(": ")
        return f"{field.replace('_', ' ').capitalize()} {message}."
    text = str(exc)
    return text[:1].upper() + text[1:] + "."


def _revoke(db: Database, session_id: str) -> None:
    with db.transaction() as conn:
        identity.revoke_session(conn, session_id=session_id)


def _overview(db: Database, user_id: str) -> tuple[ledger.Balance, ledger.HistoryPage]:
    with db.read() as conn:
        return ledger.balance(conn, user_id=user_id), ledger.history(conn, user_id=user_id, limit=5)


def _redeem(db: Database, browsers: Browsers, token: str) -> tuple[str, str]:
    with db.transaction() as conn:
        user_id, next_path = identity.redeem_portal_link(conn, token=token)
        session = identity.open_session(
            conn, user_id=user_id, via="portal", ttl=browsers.session_ttl
        )
    return session, next_path
