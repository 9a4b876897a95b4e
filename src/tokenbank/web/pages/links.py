"""The pages mail leads to, and the forms that send mail: confirming an address, a
forgotten password, moving an account to another address.

A link from a mail opens a page with one button; only the button's POST does anything, so
a mail scanner that fetches every link confirms nothing. Answers that follow a request
for mail read the same whether or not the address has an account.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from tokenbank import identity
from tokenbank.errors import EmailTaken, InvalidEmailLink, TokenbankError
from tokenbank.identity.links import LIFETIMES
from tokenbank.web.deps import Lang, PagesDep, PageUser, RuntimeDep, Visitor
from tokenbank.web.i18n import Language
from tokenbank.web.pages.users import Secret, Text, client_ip, email_key, refused
from tokenbank.web.render import HOME, Pages, redirect
from tokenbank.web.routing import PageRoute

router = APIRouter(
    include_in_schema=False, default_response_class=HTMLResponse, route_class=PageRoute
)


async def link_refused(pages: Pages, request: Request, lang: Language) -> Response:
    return await pages.render(
        request,
        "message.html",
        400,
        heading=lang.gettext("This link cannot be used"),
        message=lang.gettext(
            "This link is invalid, has expired or was already used. Ask for a new one."
        ),
        link="/login",
        link_text=lang.gettext("Sign in"),
    )


# --- confirming an address ---------------------------------------------------------------


@router.get("/verify/{token}")
async def verify_form(request: Request, token: str, pages: PagesDep, lang: Lang) -> Response:
    return await pages.render(
        request,
        "confirm.html",
        heading=lang.gettext("Confirm your email address"),
        message=lang.gettext("Confirm that this address is yours, and you can buy tokens."),
        button=lang.gettext("Confirm my address"),
        action=f"/verify/{token}",
    )


@router.post("/verify/{token}")
async def verify(
    request: Request, token: str, visitor: Visitor, parts: RuntimeDep, lang: Lang
) -> Response:
    try:
        user_id = await run_in_threadpool(
            identity.verify_email, parts.db, token=token, trial=parts.trial
        )
    except InvalidEmailLink:
        return await link_refused(parts.pages, request, lang)
    except EmailTaken:
        return await parts.pages.render(
            request,
            "message.html",
            409,
            heading=lang.gettext("This address cannot be confirmed"),
            message=lang.gettext(
                "An account whose address looks the same as this one was confirmed first:"
                " two addresses that look alike would be mistaken for each other. Sign up"
                " with another address."
            ),
            link="/register",
            link_text=lang.gettext("Create account"),
        )
    if visitor is not None and visitor.user_id == user_id:
        return redirect("/account?changed=verified")
    return redirect("/login?done=verified")


@router.post("/account/verify")
async def resend_verification(
    request: Request, user: PageUser, parts: RuntimeDep, lang: Lang
) -> Response:
    def resend() -> None:
        parts.throttle.hit("mail_user", user.user_id)
        identity.request_verification(parts.db, user_id=user.user_id, language=lang.tag)

    try:
        await run_in_threadpool(resend)
    except TokenbankError as exc:
        return await refused(parts.pages, request, exc, "account.html")
    return redirect("/account?changed=verify_sent")


# --- a forgotten password ----------------------------------------------------------------


@router.get("/password/forgot")
async def forgot_form(request: Request, visitor: Visitor, pages: PagesDep) -> Response:
    if visitor:
        return redirect("/account")
    return await pages.render(request, "forgot.html")


@router.post("/password/forgot")
async def forgot(request: Request, email: Text, parts: RuntimeDep, lang: Lang) -> Response:
    """The same answer whether or not an account has the address."""
    ip = client_ip(request)

    def request_reset() -> None:
        parts.throttle.hit("reset_ip", ip)
        parts.throttle.hit("reset_email", email_key(email))
        identity.request_reset(parts.db, email=email, language=lang.tag)

    try:
        await run_in_threadpool(request_reset)
    except TokenbankError as exc:
        return await refused(parts.pages, request, exc, "forgot.html", email=email)
    return await parts.pages.render(
        request,
        "forgot.html",
        sent=True,
        email=email.strip(),
        minutes=int(LIFETIMES["reset"].total_seconds() // 60),
    )


@router.get("/password/reset/{token}")
async def reset_form(request: Request, token: str, parts: RuntimeDep, lang: Lang) -> Response:
    try:
        await run_in_threadpool(identity.check_reset_link, parts.db, token=token)
    except InvalidEmailLink:
        return await link_refused(parts.pages, request, lang)
    return await parts.pages.render(request, "reset.html", action=f"/password/reset/{token}")


@router.post("/password/reset/{token}")
async def reset(
    request: Request, token: str, new_password: Secret, parts: RuntimeDep, lang: Lang
) -> Response:
    try:
        await run_in_threadpool(
            identity.reset_password,
            parts.db,
            token=token,
            password=new_password,
            passwords=parts.passwords,
            trial=parts.trial,
        )
    except InvalidEmailLink:
        return await link_refused(parts.pages, request, lang)
    except TokenbankError as exc:
        return await refused(
            parts.pages, request, exc, "reset.html", action=f"/password/reset/{token}"
        )
    response = redirect("/login?done=reset")
    parts.browsers.end_session(response)  # every session of the account has ended
    return response


# --- moving to another address -----------------------------------------------------------


@router.post("/account/email")
async def change_email(
    request: Request,
    *,
    email: Text,
    user: PageUser,
    parts: RuntimeDep,
    lang: Lang,
    password: Secret = "",
) -> Response:
    def request_change() -> None:
        parts.throttle.hit("mail_user", user.user_id)
        identity.request_email_change(
            parts.db,
            signed_in=user,
            email=email,
            password=password,
            passwords=parts.passwords,
            language=lang.tag,
        )

    try:
        await run_in_threadpool(request_change)
    except TokenbankError as exc:
        return await refused(parts.pages, request, exc, "account.html")
    return redirect("/account?changed=email_sent")


@router.get("/account/email/{token}")
async def change_email_form(request: Request, token: str, pages: PagesDep, lang: Lang) -> Response:
    return await pages.render(
        request,
        "confirm.html",
        heading=lang.gettext("Confirm your new email address"),
        message=lang.gettext("Your account moves to this address once you confirm it."),
        button=lang.gettext("Confirm this address"),
        action=f"/account/email/{token}",
    )


@router.post("/account/email/{token}")
async def confirm_email(
    request: Request, token: str, visitor: Visitor, parts: RuntimeDep, lang: Lang
) -> Response:
    try:
        user_id = await run_in_threadpool(identity.confirm_email_change, parts.db, token=token)
    except InvalidEmailLink:
        return await link_refused(parts.pages, request, lang)
    except EmailTaken:
        return await parts.pages.render(
            request,
            "message.html",
            409,
            heading=lang.gettext("This address cannot be used"),
            message=lang.gettext(
                "Another account uses this address now, so yours was not moved to it."
            ),
            link=HOME,
            link_text=lang.gettext("Go to your dashboard"),
        )
    if visitor is not None and visitor.user_id == user_id:
        return redirect("/account?changed=email")
    return redirect("/login?done=email")
