"""The development mailbox: what tokenbank "sent" while no SMTP server is configured, kept
in the outbox and shown here so that sign-up and password resets work offline. The routes
answer 404 outside development (``TOKENBANK_ENV=production`` never shows them)."""

from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from tokenbank import mail
from tokenbank.db import Database
from tokenbank.errors import NotFound
from tokenbank.web.deps import RowId, RuntimeDep
from tokenbank.web.routing import PageRoute

router = APIRouter(
    include_in_schema=False, default_response_class=HTMLResponse, route_class=PageRoute
)
#: A link in a letter's text, without the full stop or comma of the sentence it ends.
_LINK = re.compile(r"https?://\S+?(?=[.,;:!?)]*(?:\s|$))")
#: The HTML part is shown alone, with no script, no request out and no form.
SANDBOX = {
    "Content-Security-Policy": (
        "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _parsed(row: Any) -> EmailMessage | None:
    if row.kept is None:
        return None
    parsed = email.message_from_string(row.kept, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def _part(message: EmailMessage, kind: str) -> str:
    body = message.get_body(preferencelist=(kind,))
    return "" if body is None else str(body.get_content())


def _recent(db: Database) -> list[Any]:
    with db.read() as conn:
        return mail.recent(conn, limit=100)


def _one(db: Database, mail_id: int) -> Any:
    with db.read() as conn:
        row = mail.find(conn, mail_id=mail_id)
    if row is None:
        raise NotFound(f"no mail {mail_id}")
    return row


@router.get("/_dev/mail")
async def mailbox(request: Request, parts: RuntimeDep) -> Response:
    if not parts.dev_mail:
        raise NotFound("no such page")
    if parts.mail is not None:  # what was just committed, written before the page shows
        await run_in_threadpool(parts.mail.send_due)
    rows = await run_in_threadpool(_recent, parts.db)
    letters = [{"row": row, "subject": (m := _parsed(row)) and m["Subject"]} for row in rows]
    return await parts.pages.render(request, "devmail.html", letters=letters)


@router.get("/_dev/mail/{mail_id}")
async def letter(request: Request, mail_id: RowId, parts: RuntimeDep) -> Response:
    if not parts.dev_mail:
        raise NotFound("no such page")
    row = await run_in_threadpool(_one, parts.db, mail_id)
    message = _parsed(row)
    text = "" if message is None else _part(message, "plain")
    return await parts.pages.render(
        request,
        "devmail.html",
        row=row,
        message=message,
        text=text,
        links=_LINK.findall(text),
    )


@router.get("/_dev/mail/{mail_id}/html")
async def letter_html(mail_id: RowId, parts: RuntimeDep) -> Response:
    if not parts.dev_mail:
        raise NotFound("no such page")
    row = await run_in_threadpool(_one, parts.db, mail_id)
    message = _parsed(row)
    if message is None:
        raise NotFound(f"mail {mail_id} is not written yet")
    return HTMLResponse(_part(message, "html"), headers=SANDBOX)
