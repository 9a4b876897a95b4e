"""What every page shares: the template environment, the request's language, the signed-in
user, the form's CSRF token and the header's balance widget; redirects and the answers for a
page that cannot be shown."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from tokenbank import ledger
from tokenbank.billing.catalog import Catalog
from tokenbank.db import Database
from tokenbank.errors import Unavailable, UnknownUser
from tokenbank.identity import SignedIn
from tokenbank.identity.passwords import MIN_LENGTH
from tokenbank.web import i18n
from tokenbank.web.browser import Browsers
from tokenbank.web.i18n import Language
from tokenbank.web.security import PAGE_HEADERS
from tokenbank.web.texts import (
    FAILURE_TEXTS,
    FILTER_KINDS,
    KIND_NAMES,
    SOURCE_NAMES,
    STATUS_NAMES,
    SUBSCRIPTION_STATES,
    describe,
)

HOME = "/dashboard"


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
    verify_email: bool = True  # a new account confirms its address before buying

    async def language(self, request: Request) -> Language:
        known = getattr(request.state, "language", None)
        if known is not None:
            return known  # type: ignore[no-any-return]
        user = await self.browsers.signed_in(request)
        chosen = i18n.choose(
            chosen=user.language if user else None,
            cookie=request.cookies.get(i18n.LANGUAGE_COOKIE),
            accept_language=request.headers.get("accept-language"),
        ).in_zone((user.time_zone if user else None) or request.cookies.get(i18n.ZONE_COOKIE))
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
                "must_verify": bool(user and self.verify_email and not user.email_verified),
                "low_balance": self.low_balance,
                "kind_names": KIND_NAMES,
                "source_names": SOURCE_NAMES,
                "filter_kinds": FILTER_KINDS,
                "status_names": STATUS_NAMES,
                "failure_texts": FAILURE_TEXTS,
                "subscription_states": SUBSCRIPTION_STATES,
                "path": request.url.path,
                "describe": partial(describe, lang=lang, catalog=self.catalog),
                "catalog": self.catalog,
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
            except UnknownUser:
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
