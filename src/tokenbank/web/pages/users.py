"""A user's own pages: sign-up, sign-in, sign-out, their settings (the "Account" page),
the language menu and portal links. Each handler parses the form, checks limits, calls one
service function and renders or redirects (303, so a reload never resubmits); CSRF is
checked before it runs (``PageRoute``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from tokenbank import identity
from tokenbank.db import Database
from tokenbank.errors import InvalidArgument, InvalidPortalLink, TokenbankError, Unavailable
from tokenbank.identity import InvalidCredentials, RateLimited
from tokenbank.users import emails
from tokenbank.users.models import LANGUAGES
from tokenbank.web import i18n
from tokenbank.web.browser import Browsers
from tokenbank.web.deps import Lang, PagesDep, PageUser, RuntimeDep, Visitor
from tokenbank.web.i18n import N_
from tokenbank.web.problems import status_of
from tokenbank.web.render import HOME, Pages, redirect
from tokenbank.web.routing import PageRoute
from tokenbank.web.texts import error_text

router = APIRouter(
    include_in_schema=False, default_response_class=HTMLResponse, route_class=PageRoute
)
Text = Annotated[str, Form(max_length=320)]
Secret = Annotated[str, Form(max_length=1024)]
NextPath = Annotated[str, Form(max_length=500)]


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def email_key(email: str) -> str:
    """What a per-address rate limit counts: every spelling of an address counts as one."""
    return emails.canonical(email) or email.strip().lower()


def safe_next(path: str | None) -> str:
    try:
        return identity.check_next_path(path) if path else HOME
    except InvalidArgument:
        return HOME


async def refused(
    pages: Pages, request: Request, exc: TokenbankError, template: str, **context: Any
) -> Response:
    """The form again, with what went wrong in the page's language."""
    lang = await pages.language(request)
    text = error_text(lang, exc)
    if isinstance(exc, InvalidCredentials) and template == "account.html":
        text = lang.gettext("The current password is wrong.")
    response = await pages.render(request, template, status_of(exc), error=text, **context)
    if isinstance(exc, RateLimited | Unavailable):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


async def signed_in_as(
    db: Database, browsers: Browsers, request: Request, token: str, path: str
) -> Response:
    """Replace the browser's session (ending the one it had, if any) and go on."""
    previous = await browsers.signed_in(request)
    if previous is not None:
        await run_in_threadpool(_revoke, db, previous.session_id)
    response = redirect(path)
    browsers.start_session(response, token)
    return response


@router.get("/")
async def home(visitor: Visitor) -> Response:
    return redirect(HOME if visitor else "/pricing")


#: What the sign-in page says when a link sent the browser there (``?done=...``).
SIGN_IN_NOTICES = {
    "verified": N_("Your email address is confirmed. Sign in to go on."),
    "reset": N_("Your new password is saved, and every session was signed out. Sign in."),
    "email": N_("Your new email address is confirmed. Sign in with it."),
}


@router.get("/login")
async def login_form(
    request: Request,
    *,
    visitor: Visitor,
    pages: PagesDep,
    lang: Lang,
    next: str | None = None,
    done: str | None = None,
) -> Response:
    if visitor:
        return redirect(safe_next(next))
    notice = SIGN_IN_NOTICES.get(done or "")
    return await pages.render(
        request,
        "login.html",
        next=safe_next(next),
        notice=lang.gettext(notice) if notice else None,
    )


@router.post("/login")
async def login(
    request: Request, email: Text, password: Secret, parts: RuntimeDep, next: NextPath = HOME
) -> Response:
    ip = client_ip(request)

    def sign_in() -> str:  # one trip to the thread pool: the limits, then the password
        parts.throttle.hit("login_ip", ip)
        parts.throttle.hit("login_email", email_key(email))
        return identity.sign_in(
            parts.db,
            email=email,
            password=password,
            passwords=parts.passwords,
            session_ttl=parts.browsers.session_ttl,
        )

    try:
        token = await run_in_threadpool(sign_in)
    except TokenbankError as exc:
        return await refused(
            parts.pages, request, exc, "login.html", email=email, next=safe_next(next)
        )
    return await signed_in_as(parts.db, parts.browsers, request, token, safe_next(next))


@router.get("/register")
async def register_form(request: Request, visitor: Visitor, pages: PagesDep) -> Response:
    if visitor:
        return redirect(HOME)
    return await pages.render(request, "register.html")


@router.post("/register")
async def register(
    request: Request,
    *,
    email: Text,
    password: Secret,
    parts: RuntimeDep,
    lang: Lang,
    name: Annotated[str, Form(max_length=200)] = "",
    time_zone: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    """The same answer for an address that has an account and one that has not (a mail
    tells its owner which): "check your inbox", signed out. ``time_zone``: the browser's,
    filled in by the page's script."""
    ip = client_ip(request)
    # A visitor who picked a language before signing up keeps it.
    chosen = request.cookies.get(i18n.LANGUAGE_COOKIE)

    def register() -> None:
        parts.throttle.hit("register_ip", ip)
        parts.throttle.hit("register_email", email_key(email))
        identity.register(
            parts.db,
            email=email,
            password=password,
            name=name or None,
            language=lang.tag,
            account_language=chosen if chosen in LANGUAGES else None,
            time_zone=time_zone or request.cookies.get(i18n.ZONE_COOKIE),
            verify=parts.verify_email,
            passwords=parts.passwords,
            trial=parts.trial,
        )

    try:
        await run_in_threadpool(register)
    except TokenbankError as exc:
        return await refused(parts.pages, request, exc, "register.html", email=email, name=name)
    return await parts.pages.render(request, "registered.html", email=email.strip())


@router.post("/logout")
async def logout(visitor: Visitor, parts: RuntimeDep) -> Response:
    if visitor is not None:
        await run_in_threadpool(_revoke, parts.db, visitor.session_id)
    response = redirect("/login")
    parts.browsers.end_session(response)
    return response


@router.post("/language")
async def choose_language(language: Text, parts: RuntimeDep, next: NextPath = "/") -> Response:
    """The language menu of signed-out visitors: remembered in a cookie."""
    response = redirect(safe_next(next))
    if language in LANGUAGES:
        response.set_cookie(
            i18n.LANGUAGE_COOKIE,
            language,
            max_age=365 * 24 * 3600,
            httponly=True,
            secure=parts.browsers.secure,
            samesite="lax",
        )
    return response


#: What the account page says after a change (``?changed=...``).
ACCOUNT_NOTICES = {
    "password": N_("Password saved. Other sessions were signed out."),
    "language": N_("Language saved."),
    "time_zone": N_("Time zone saved."),
    "verify_sent": N_("We sent the link again. It works for 3 days."),
    "email_sent": N_("We sent a link to the new address. Your address changes once you follow it."),
    "email": N_("Your new email address is confirmed."),
    "verified": N_("Your email address is confirmed: you can buy tokens."),
}


@router.get("/account")
async def account(
    request: Request, _: PageUser, lang: Lang, pages: PagesDep, changed: str | None = None
) -> Response:
    notice = ACCOUNT_NOTICES.get(changed or "")
    return await pages.render(
        request,
        "account.html",
        notice=lang.gettext(notice) if notice else None,
        time_zones=identity.time_zone_names(),
    )


@router.post("/account/language")
async def account_language(
    request: Request,
    user: PageUser,
    parts: RuntimeDep,
    language: Annotated[str, Form(max_length=16)] = "",
) -> Response:
    try:
        await run_in_threadpool(_set_language, parts.db, user.user_id, language or None)
    except TokenbankError as exc:
        return await refused(parts.pages, request, exc, "account.html")
    response = redirect("/account?changed=language")
    # The signed-out menu's cookie would otherwise outlive "same as my browser".
    response.delete_cookie(i18n.LANGUAGE_COOKIE, httponly=True, secure=parts.browsers.secure)
    return response


@router.post("/account/time-zone")
async def account_time_zone(
    request: Request,
    user: PageUser,
    parts: RuntimeDep,
    time_zone: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    """The zone the pages show times in; empty goes back to the browser's."""
    try:
        await run_in_threadpool(_set_time_zone, parts.db, user.user_id, time_zone or None)
    except TokenbankError as exc:
        return await refused(parts.pages, request, exc, "account.html")
    return redirect("/account?changed=time_zone")


def _set_time_zone(db: Database, user_id: str, time_zone: str | None) -> None:
    with db.transaction() as conn:
        identity.set_time_zone(conn, user_id=user_id, time_zone=time_zone)


@router.post("/account/password")
async def change_password(
    request: Request,
    new_password: Secret,
    user: PageUser,
    parts: RuntimeDep,
    current_password: Secret = "",
) -> Response:
    try:
        # Counted with the sign-in form's guesses at this address.
        key = email_key(user.email) if user.email else user.user_id
        await run_in_threadpool(parts.throttle.hit, "login_email", key)
        await run_in_threadpool(
            identity.change_password,
            parts.db,
            signed_in=user,
            current=current_password,
            new=new_password,
            passwords=parts.passwords,
        )
    except TokenbankError as exc:
        return await refused(parts.pages, request, exc, "account.html")
    return redirect("/account?changed=password")


@router.get("/portal/{token}")
async def portal(request: Request, token: str, parts: RuntimeDep) -> Response:
    """A host app's one-time link: sign its user in and go where the link says."""
    try:
        session, next_path = await run_in_threadpool(_redeem, parts.db, parts.browsers, token)
    except InvalidPortalLink:
        lang = await parts.pages.language(request)
        return await parts.pages.render(
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
    return await signed_in_as(parts.db, parts.browsers, request, session, next_path)


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
