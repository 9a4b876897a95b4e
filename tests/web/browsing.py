"""A browser's steps through the pages, for the tests of every package: a form's CSRF
token, signing up (and following the link mailed to confirm the address), signing in, and
who the session belongs to. Mail is read where development keeps it: the outbox."""

from __future__ import annotations

import email
import email.policy
import re
import time
from email.message import EmailMessage
from typing import Any

from fastapi.testclient import TestClient

from tests.letters import link_in
from tokenbank import identity, mail
from tokenbank.db import Database
from tokenbank.users import emails

PASSWORD = "correct horse battery"


def form_token(client: TestClient, path: str = "/login") -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text)
    assert found, page.text
    return found.group(1)


def sign_up(client: TestClient, email: str = "ann@example.com", password: str = PASSWORD) -> Any:
    """The sign-up form sent: "check your inbox" (200), or the form again with an error."""
    token = form_token(client, "/register")
    return client.post(
        "/register",
        data={"email": email, "password": password, "csrf_token": token},
        follow_redirects=False,
    )


def mails_to(client: TestClient, address: str) -> list[EmailMessage]:
    """Every mail sent to ``address`` so far, oldest first, as the outbox kept it. What is
    due is written first, here or by the app's own sender thread (waited for)."""
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    assert runtime.mail is not None
    deadline = time.monotonic() + 10
    while True:
        runtime.mail.send_due()
        with runtime.db.read() as conn:
            rows = mail.recent(conn, to=emails.mailbox(address), limit=1000)
        if all(row.status != "pending" for row in rows) or time.monotonic() > deadline:
            break
        time.sleep(0.01)  # the app's sender holds the claim: it is writing the mail
    found = []
    for row in reversed(rows):
        if row.kept is not None:
            message = email.message_from_string(row.kept, policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            found.append(message)
    return found


def last_mail(client: TestClient, address: str) -> EmailMessage:
    found = mails_to(client, address)
    assert found, f"no mail to {address}"
    return found[-1]


def follow(client: TestClient, path: str) -> Any:
    """A link from a mail: its page, then its one button."""
    token = form_token(client, path)
    return client.post(path, data={"csrf_token": token}, follow_redirects=False)


def confirm_address(client: TestClient, address: str) -> None:
    answer = follow(client, link_in(last_mail(client, address), "/verify/"))
    assert answer.status_code == 303, answer.text


def sign_in(client: TestClient, email: str, password: str = PASSWORD) -> Any:
    token = form_token(client)
    return client.post(
        "/login",
        data={"email": email, "password": password, "csrf_token": token},
        follow_redirects=False,
    )


def signed_in_user(client: TestClient) -> str:
    page = client.get("/account")
    assert page.status_code == 200
    session = client.cookies.get("tb_session")
    assert session
    return session_user_id(client, session)


def session_user_id(client: TestClient, token: str) -> str:
    db: Database = client.app.state.runtime.db  # type: ignore[attr-defined]
    with db.read() as conn:
        who = identity.session_user(conn, token=token)
    assert who is not None
    return who.user_id


def new_user(client: TestClient, email: str = "ann@example.com") -> str:
    """Sign up, confirm the address from the mail, sign in: the new user's id."""
    answer = sign_up(client, email)
    assert answer.status_code == 200 and 'class="notice error"' not in answer.text, answer.text
    confirm_address(client, email)
    assert sign_in(client, email).status_code == 303
    return signed_in_user(client)
