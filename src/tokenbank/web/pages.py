"""The pages behind a browser session: sign-up, sign-in, sign-out, account, language and
portal links. Each handler parses the form, checks CSRF and limits, calls one service
function and renders or redirects (303, so a reload never resubmits)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from tokenbank import identity, ledger, users
from tokenbank.db import Database
from tokenbank.errors import TokenbankError
from tokenbank.identity import InvalidCredentials, Passwords, RateLimited, Throttle
from tokenbank.users.models import LANGUAGES
from tokenbank.web import i18n
from tokenbank.web.browser import Browsers
from tokenbank.web.render import HOME, Csrf, Pages, error_text, form_expired, redirect
from tokenbank.web.routing import StrictRoute

Text = Annotated[str, Form(max_length=320)]
Secret = Annotated[str, Form(max_length=1024)]
NextPath = Annotated[str, Form(max_length=500)]


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def safe_next(path: str | None) -> str:
    try:
        return identity.check_next_path(path) if path else HOME
    except ledger.InvalidArgument:
        return HOME


def build_router(  # noqa: PLR0915 - one closure per route
    *,
    db: Database,
    pages: Pages,
    browsers: Browsers,
    passwords: Passwords,
    throttle: Throttle,
) -> APIRouter:
    router = APIRouter(
        include_in_schema=False, default_response_class=HTMLResponse, route_class=StrictRoute
    )

    async def refused(
        request: Request, exc: TokenbankError, template: str, **context: Any
    ) -> Response:
        lang = await pages.language(request)
        text = error_text(lang, exc)
        if isinstance(exc, InvalidCredentials) and template == "account.html":
            text = lang.gettext("The current password is wrong.")
        status = 422
        if isinstance(exc, RateLimited):
            status = 429
        elif isinstance(exc, InvalidCredentials):
            status = 401
        elif isinstance(exc, users.EmailTaken):
            status = 409
        response = await pages.render(request, template, status, error=text, **context)
        if isinstance(exc, RateLimited):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @router.get("/")
    async def home(request: Request) -> Response:
        return redirect(HOME if await browsers.signed_in(request) else "/pricing")

    @router.get("/login")
    async def login_form(request: Request, next: str | None = None) -> Response:
        if await browsers.signed_in(request):
            return redirect(safe_next(next))
        return await pages.render(request, "login.html", next=safe_next(next))

    @router.post("/login")
    async def login(
        request: Request,
        email: Text,
        password: Secret,
        csrf_token: Csrf = "",
        next: NextPath = HOME,
    ) -> Response:
        if not browsers.csrf_valid(request, csrf_token):
            return await form_expired(pages, request)
        ip = client_ip(request)

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
            return await refused(request, exc, "login.html", email=email, next=safe_next(next))
        return await signed_in_as(request, token, safe_next(next))

    @router.get("/register")
    async def register_form(request: Request) -> Response:
        if await browsers.signed_in(request):
            return redirect(HOME)
        return await pages.render(request, "register.html")

    @router.post("/register")
    async def register(
        request: Request,
        email: Text,
        password: Secret,
        csrf_token: Csrf = "",
        name: Annotated[str, Form(max_length=200)] = "",
    ) -> Response:
        if not browsers.csrf_valid(request, csrf_token):
            return await form_expired(pages, request)
        ip = client_ip(request)
        # A visitor who picked a language before signing up keeps it.
        chosen = request.cookies.get(i18n.LANGUAGE_COOKIE)

        def register() -> str:
            throttle.hit("register_ip", ip)
            _, token = identity.register(
                db,
                email=email,
                password=password,
                name=name or None,
                language=chosen if chosen in LANGUAGES else None,
                passwords=passwords,
                session_ttl=browsers.session_ttl,
            )
            return token

        try:
            token = await run_in_threadpool(register)
        except TokenbankError as exc:
            return await refused(request, exc, "register.html", email=email, name=name)
        response = await signed_in_as(request, token, HOME)
        response.delete_cookie(i18n.LANGUAGE_COOKIE, httponly=True, secure=browsers.secure)
        return response

    @router.post("/logout")
    async def logout(request: Request, csrf_token: Csrf = "") -> Response:
        if not browsers.csrf_valid(request, csrf_token):
            return await form_expired(pages, request)
        user = await browsers.signed_in(request)
        if user is not None:
            await run_in_threadpool(_revoke, db, user.session_id)
        response = redirect("/login")
        browsers.end_session(response)
        return response

    @router.post("/language")
    async def choose_language(
        request: Request, language: Text, csrf_token: Csrf = "", next: NextPath = "/"
    ) -> Response:
        """The language menu of signed-out visitors: remembered in a cookie."""
        if not browsers.csrf_valid(request, csrf_token):
            return await form_expired(pages, request)
        response = redirect(safe_next(next))
        if language in LANGUAGES:
            response.set_cookie(
                i18n.LANGUAGE_COOKIE,
                language,
                max_age=365 * 24 * 3600,
                httponly=True,
                secure=browsers.secure,
                samesite="lax",
            )
        return response

    @router.get("/account")
    async def account(request: Request, changed: str | None = None) -> Response:
        await pages.require_user(request)
        lang = await pages.language(request)
        notices = {
            "password": lang.gettext("Password saved. Other sessions were signed out."),
            "language": lang.gettext("Language saved."),
        }
        return await pages.render(request, "account.html", notice=notices.get(changed or ""))

    @router.post("/account/language")
    async def account_language(
        request: Request,
        csrf_token: Csrf = "",
        language: Annotated[str, Form(max_length=16)] = "",
    ) -> Response:
        if not browsers.csrf_valid(request, csrf_token):
            return await form_expired(pages, request)
        user = await pages.require_user(request)
        try:
            await run_in_threadpool(_set_language, db, user.user_id, language or None)
        except TokenbankError as exc:
            return await refused(request, exc, "account.html")
        response = redirect("/account?changed=language")
        # The signed-out menu's cookie would otherwise outlive "same as my browser".
        response.delete_cookie(i18n.LANGUAGE_COOKIE, httponly=True, secure=browsers.secure)
        return response

    @router.post("/account/password")
    async def change_password(
        request: Request,
        new_password: Secret,
        csrf_token: Csrf = "",
        current_password: Secret = "",
    ) -> Response:
        if not browsers.csrf_valid(request, csrf_token):
            return await form_expired(pages, request)
        user = await pages.require_user(request)
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
        return redirect("/account?changed=password")

    @router.get("/portal/{token}")
    async def portal(request: Request, token: str) -> Response:
        """A host app's one-time link: sign its user in and go where the link says."""
        try:
            session, next_path = await run_in_threadpool(_redeem, db, browsers, token)
        except identity.InvalidPortalLink:
            lang = await pages.language(request)
            return await pages.render(
                request,
                "message.html",
                400,
                heading=lang.gettext("This link cannot be used"),
                message=lang.gettext(
                    "This sign-in link is invalid, expired or already used."
                    " Ask the app that sent you for a new one."
                ),
                link="/login",
                link_text=lang.gettext("Sign in instead"),
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

    return router


def _revoke(db: Database, session_id: str) -> None:
    with db.transaction() as conn:
        identity.revoke_session(conn, session_id=session_id)


def _set_language(db: Database, user_id: str, language: str | None) -> None:
    with db.transaction() as conn:
        identity.set_language(conn, user_id=user_id, language=language)


def _redeem(db: Database, browsers: Browsers, token: str) -> tuple[str, str]:
    with db.transaction() as conn:
        user_id, next_path = identity.redeem_portal_link(conn, token=token)
        session = identity.open_session(
            conn, user_id=user_id, via="portal", ttl=browsers.session_ttl
        )
    return session, next_path
