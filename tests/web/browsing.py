"""A browser's steps through the pages, for the tests of every package: a form's CSRF
token, signing up and in, and who the session belongs to."""

from __future__ import annotations

import re
from typing import Any

from fastapi.testclient import TestClient

from tokenbank import identity
from tokenbank.db import Database

PASSWORD = "correct horse battery"


def form_token(client: TestClient, path: str = "/login") -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text)
    assert found, page.text
    return found.group(1)


def sign_up(client: TestClient, email: str = "ann@example.com") -> Any:
    token = form_token(client, "/register")
    return client.post(
        "/register",
        data={"email": email, "password": PASSWORD, "csrf_token": token},
        follow_redirects=False,
    )


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
    assert sign_up(client, email).status_code == 303
    return signed_in_user(client)
