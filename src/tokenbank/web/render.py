"""What every page shares: the template environment, the request's language, the signed-in
user, CSRF tokens, security headers and the header's balance widget."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import FastAPI, Form, Query, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from tokenbank import ledger
from tokenbank.billing.catalog import Catalog
from tokenbank.db import Database
from tokenbank.errors import TokenbankError, Unavailable
from tokenbank.identity import SignedIn
from tokenbank.identity.passwords import MAX_LENGTH, MIN_LENGTH
from tokenbank.web import i18n
from tokenbank.web.browser import Browsers
from tokenbank.web.i18n import N_, Language

HOME = "/dashboard"
#: A row id in a query string (a page cursor, a purchase): out of range is a 422, not a 500.
RowId = Annotated[int | None, Query(ge=1, le=2**63 - 1)]
Csrf = Annotated[str, Form(max_length=128)]


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=select_autoescape(),
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True,
        lstrip_blocks=True,
    )
    # {% trans %} calls the request's gettext from the context, with its variables as
    # keywords; whitespace inside a block is collapsed, as in the catalogs.
    env.newstyle_gettext = True  # type: ignore[attr-defined]
    env.policies["ext.i18n.trimmed"] = True
    return env


TEMPLATES = Jinja2Templates(env=_environment())


def content_security_policy(stripe: str = "") -> str:
    """Scripts, styles and frames from this site only; ``stripe``: the origins of Stripe
    Checkout and Stripe.js (or the emulator), which the buying pages also need."""
    if not stripe:
        return "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    return (
        "default-src 'self'; frame-ancestors 'none'; base-uri 'none';"
        f" form-action 'self' {stripe}; script-src 'self' {stripe};"
        f" connect-src 'self' {stripe}; frame-src {stripe}"
    )


#: Sent with every page: no framing, no leaking URLs (portal tokens) to other sites.
PAGE_HEADERS = {
    "Content-Security-Policy": content_security_policy(),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "Vary": "Cookie, Accept-Language",
}

#: How the pages name each kind of transfer and each purchase status.
KIND_NAMES = {
    ledger.TransferKind.PURCHASE: N_("Purchase"),
    ledger.TransferKind.BONUS: N_("Bonus"),
    ledger.TransferKind.GRANT: N_("Grant"),
    ledger.TransferKind.SPEND: N_("Spend"),
    ledger.TransferKind.REFUND: N_("Refund"),
    ledger.TransferKind.CLAWBACK: N_("Clawback"),
    ledger.TransferKind.RESTORE: N_("Returned"),
    ledger.TransferKind.EXPIRY: N_("Expiry"),
}
STATUS_NAMES = {
    "pending": N_("Pending"),
    "paid": N_("Paid"),
    "failed": N_("Failed"),
    "expired": N_("Expired"),
    "canceled": N_("Canceled"),
    "needs_review": N_("Under review"),
}
#: Why a purchase ended without tokens, for its buyer (by failure code).
FAILURE_TEXTS = {
    "not_started": N_("It never reached the payment service; nothing was charged."),
    "unknown_to_stripe": N_("The payment service has no record of it; nothing was charged."),
    "expired": N_("The checkout page expired; nothing was charged."),
    "canceled": N_("The payment was canceled; nothing was charged."),
    "refused": N_("The payment did not match the purchase and was not accepted."),
}


def describe(item: ledger.HistoryItem, *, lang: Language, catalog: Catalog | None) -> str:
    """A history line's description. Entries tokenbank writes itself (purchases, refunds,
    disputes, debt) are described in the page's language from their metadata; what an app
    or an admin wrote is shown as written."""
    meta = item.metadata or {}
    purchase = meta.get("purchase_id")
    if "package_id" in meta and item.kind in {
        ledger.TransferKind.PURCHASE,
        ledger.TransferKind.BONUS,
    }:
        package = catalog.find(str(meta["package_id"])) if catalog else None
        name = package.localized_name(lang.tag) if package else str(meta["package_id"])
        if item.kind is ledger.TransferKind.BONUS:
            return lang.gettext("Bonus with %(package)s", package=name)
        return lang.gettext("Purchase of %(package)s", package=name)
    if "settles_debt" in meta:
        return lang.gettext("Tokens owed, collected from a purchase")
    if purchase is not None:
        # The first marker the metadata carries names what happened to the purchase.
        for marker, text in PURCHASE_EVENTS:
            if meta.get(marker):
                return lang.gettext(text, purchase=purchase)
    return item.description or ""


#: How the history names what happened to a purchase, by the metadata marker it carries.
PURCHASE_EVENTS = (
    ("refund_failed", N_("A refund failed: tokens returned (purchase #%(purchase)s)")),
    ("reversed", N_("Purchase reversed after review (#%(purchase)s)")),
    ("refund_id", N_("Payment refunded (purchase #%(purchase)s)")),
    ("dispute_id", N_("Payment disputed (purchase #%(purchase)s)")),
)


async def form_expired(pages: Pages, request: Request) -> Response:
    lang = await pages.language(request)
    return await pages.render(
        request,
        "message.html",
        403,
        heading=lang.gettext("This form has expired"),
        message=lang.gettext("Reload the page and try again."),
    )


class NotAllowed(Exception):
    """A signed-in user asked for a page that is not theirs (admin pages): 403."""


class Redirect(Exception):
    """Raised by ``require_user`` and friends; the router turns it into a 303."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


@dataclass(frozen=True, slots=True)
class Pages:
    db: Database
    browsers: Browsers
    low_balance: int = 100
    catalog: Catalog | None = None  # to name packages in the history

    async def language(self, request: Request) -> Language:
        known = getattr(request.state, "language", None)
        if known is not None:
            return known  # type: ignore[no-any-return]
        user = await self.browsers.signed_in(request)
        chosen = i18n.choose(
            chosen=user.language if user else None,
            cookie=request.cookies.get(i18n.LANGUAGE_COOKIE),
            accept_language=request.headers.get("accept-language"),
        )
        request.state.language = chosen
        return chosen

    async def render(
        self,
        request: Request,
        template: str,
        status_code: int = 200,
        headers: dict[str, str] | None = None,
        **context: Any,
    ) -> Response:
        token, fresh = self.browsers.csrf_token(request)
        user = await self.browsers.signed_in(request)
        lang = await self.language(request)
        wallet = None
        if user is not None and not template.startswith("fragments/"):
            wallet = context.get("balance") or await run_in_threadpool(self.balance, user.user_id)
        response = TEMPLATES.TemplateResponse(
            request,
            template,
            {
                "user": user,
                "csrf_token": token,
                "min_password": MIN_LENGTH,
                "t": lang,
                "lang": lang.tag,
                "languages": i18n.LANGUAGE_NAMES,
                "wallet": wallet,
                "low_balance": self.low_balance,
                "kind_names": KIND_NAMES,
                "status_names": STATUS_NAMES,
                "failure_texts": FAILURE_TEXTS,
                "path": request.url.path,
                "describe": partial(describe, lang=lang, catalog=self.catalog),
                **lang.jinja_globals(),
                **context,
            },
            status_code=status_code,
            headers=headers or PAGE_HEADERS,
        )
        if fresh is not None:
            self.browsers.keep_csrf_anchor(response, fresh)
        return response

    def balance(self, user_id: str) -> ledger.Balance | None:
        with self.db.read() as conn:
            try:
                return ledger.balance(conn, user_id=user_id)
            except ledger.UnknownUser:
                return None

    async def require_user(self, request: Request) -> SignedIn:
        user = await self.browsers.signed_in(request)
        if user is None:
            target = request.url.path
            if request.url.query:
                target += "?" + request.url.query
            raise Redirect(f"/login?next={quote(target, safe='/')}")
        return user

    async def require_admin(self, request: Request) -> SignedIn:
        user = await self.require_user(request)
        if not user.is_admin:
            raise NotAllowed
        return user


def redirect(path: str, headers: dict[str, str] | None = None) -> RedirectResponse:
    return RedirectResponse(path, status_code=303, headers=headers or PAGE_HEADERS)


#: What the pages say for the domain errors a form can run into, by code (and field).
ERROR_TEXTS = {
    "invalid_credentials": N_("That email and password do not match an account."),
    "email_taken": N_("An account with this email already exists. Sign in instead."),
    "rate_limited": N_("Too many attempts. Try again in %(seconds)s seconds."),
    "unknown_package": N_("This package is not on sale any more."),
    "payment_provider_error": N_("The payment service refused the request."),
    "payment_provider_unavailable": N_(
        "The payment service did not answer. Try again in a moment."
    ),
    "database_unavailable": N_("tokenbank is unavailable for a moment. Try again shortly."),
    "purchase_closed": N_("This purchase has ended. Start a new one."),
    "payments_not_configured": N_("Payments are not configured on this server."),
    "validation_error:password": N_("The password must be %(min)s to %(max)s characters long."),
    "validation_error:new_password": N_("The password must be %(min)s to %(max)s characters long."),
    "validation_error:email": N_("Enter a valid email address."),
    "validation_error:name": N_("The name is too long."),
    "validation_error:amount": N_("Enter a whole number of tokens greater than zero."),
    "validation_error:description": N_("Give a reason of at most 500 characters."),
    "validation_error:reason": N_("Give a reason of at most 500 characters."),
    "validation_error:decision": N_("Choose one of the decisions offered."),
    "nothing_to_review": N_("This purchase was already decided."),
    "idempotency_conflict": N_("This form was already sent with other values. Reload the page."),
    "not_found": N_("There is no such user or record."),
    "payment_mismatch": N_("The payment does not match its purchase; it was not credited."),
    "webhook_failed": N_("The event could not be processed."),
    "validation_error:language": N_("Choose one of the languages offered."),
}


def error_text(lang: Language, exc: TokenbankError) -> str:
    """A domain error as a sentence in the page's language (English text as a fallback)."""
    key = exc.code
    if isinstance(exc, ledger.InvalidArgument):
        key = f"{exc.code}:{exc.field}"
    message = ERROR_TEXTS.get(key)
    if message is not None:
        return lang.gettext(
            message,
            seconds=getattr(exc, "retry_after", ""),
            min=MIN_LENGTH,
            max=MAX_LENGTH,
        )
    if isinstance(exc, ledger.InvalidArgument):
        field, _, detail = str(exc).partition(": ")
        return f"{field.replace('_', ' ').capitalize()} {detail}."
    text = str(exc)
    return text[:1].upper() + text[1:] + "."


async def unavailable_page(pages: Pages, request: Request, exc: Unavailable) -> Response:
    """A page that says "try again shortly" without asking the database anything (it may be
    the part that is down): nobody is looked up as signed in."""
    request.state.signed_in = None
    lang = await pages.language(request)
    response = await pages.render(
        request,
        "message.html",
        503,
        heading=lang.gettext("tokenbank is unavailable for a moment"),
        message=lang.gettext("Nothing was changed. Try again in a few seconds."),
        link=request.url.path if request.method == "GET" else HOME,
        link_text=lang.gettext("Try again"),
    )
    response.headers["Retry-After"] = str(exc.retry_after)
    return response


def install_page_errors(app: FastAPI, pages: Pages) -> None:
    """A page that needs a signed-in user sends others to sign in; an admin page refuses
    other users."""

    async def to_login(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, Redirect)
        return redirect(exc.location)

    async def not_allowed(request: Request, _: Exception) -> Response:
        lang = await pages.language(request)
        return await pages.render(
            request,
            "message.html",
            403,
            heading=lang.gettext("This page is for administrators"),
            message=lang.gettext("Your account cannot open it."),
            link=HOME,
            link_text=lang.gettext("Go to your dashboard"),
        )

    app.add_exception_handler(Redirect, to_login)
    app.add_exception_handler(NotAllowed, not_allowed)
