"""CSRF is on by default: every unsafe route of every page refuses a form without this
browser's token, before its handler runs, and changes nothing. Routes that take other
credentials (API keys, Stripe's signature) are exempt by name, and only those."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from tests.web.browsing import form_token, new_user, sign_in, signed_in_user
from tests.web.conftest import PASSWORDS, SETTINGS
from tests.web.routes import PATH_VALUES, api_routes
from tokenbank import identity
from tokenbank.db import Database
from tokenbank.models import metadata
from tokenbank.web.app import create_app
from tokenbank.web.routing import UNSAFE_METHODS, PageRoute

#: Prefixes of the routes whose callers prove who they are otherwise, never by a cookie.
EXEMPT = ("/api/v1/", "/v1/", "/webhooks/stripe")
BASE = "https://tokens.example"
#: Fields that make each form otherwise valid: a refusal is then the token's doing.
FORMS: dict[str, dict[str, str]] = {
    "/login": {"email": "ann@example.com", "password": "correct horse battery"},
    "/register": {"email": "eve@example.com", "password": "correct horse battery"},
    "/language": {"language": "zh-CN"},
    "/account/language": {"language": "zh-CN"},
    "/account/password": {"current_password": "x" * 12, "new_password": "y" * 12},
    "/admin/users/{user_id}/grants": {"amount": "5", "reason": "r", "key": "k"},
    "/admin/purchases/{purchase_id}/review": {"decision": "credit", "reason": "r"},
    "/keys": {"name": "laptop"},
    "/chat": {"model": "emulator-small", "prompt": "hi"},
    "/chat/stream": {"model": "emulator-small", "prompt": "hi"},
}


def _unsafe_routes(app: FastAPI) -> list[tuple[APIRoute, str]]:
    return [
        (route, method)
        for route in api_routes(app.routes)
        for method in sorted((route.methods or set()) & UNSAFE_METHODS)
    ]


def _rows(db: Database) -> dict[str, int]:
    with db.read() as conn:
        return {
            table.name: conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            for table in metadata.sorted_tables
        }


@pytest.fixture
def app(db: Database) -> FastAPI:
    return create_app(SETTINGS, db=db, passwords=PASSWORDS)


def test_only_the_named_routes_go_without_a_csrf_check(app: FastAPI) -> None:
    unsafe = _unsafe_routes(app)
    assert len(unsafe) >= 15
    for route, method in unsafe:
        if route.path.startswith(EXEMPT):
            assert not isinstance(route, PageRoute), route.path
        else:
            assert isinstance(route, PageRoute), f"{method} {route.path} has no CSRF check"


def test_every_unsafe_page_route_refuses_a_missing_or_foreign_token(
    app: FastAPI, db: Database
) -> None:
    with (
        TestClient(app, base_url=BASE) as ann,
        TestClient(app, base_url=BASE) as eve,
    ):
        new_user(ann)
        new_user(eve, "eve@example.com")
        # Ann is an admin: the admin forms must refuse her for the token alone.
        with db.transaction() as conn:
            identity.set_admin(conn, user_id=signed_in_user(ann), admin=True)
        foreign = form_token(eve, "/account")  # valid, but for Eve's session
        own = form_token(ann, "/account")
        pages = [(r, m) for r, m in _unsafe_routes(app) if isinstance(r, PageRoute)]
        assert len(pages) >= 9
        before = _rows(db)
        for route, method in pages:
            url = route.path.format(**PATH_VALUES)
            fields = FORMS.get(route.path, {})
            attempts: list[dict[str, Any]] = [
                {"data": fields},
                {"data": {**fields, "csrf_token": ""}},
                {"data": {**fields, "csrf_token": foreign}},
                {"data": {**fields, "csrf_token": own[:-1] + ("0" if own[-1] != "0" else "1")}},
                {"data": {**fields, "csrf_token": "é" * 64}},
                {"content": b"", "headers": {"content-type": "application/x-www-form-urlencoded"}},
                {"data": fields, "headers": {"accept": "application/json"}},
            ]
            for attempt in attempts:
                answer = ann.request(method, url, follow_redirects=False, **attempt)
                assert answer.status_code == 403, (method, url, attempt, answer.text[:200])
        assert _rows(db) == before  # nothing written, nobody signed in or out
        assert ann.get("/account").status_code == 200  # still signed in: /logout refused
        # With her own token, every one of these forms gets past the check (whatever the
        # route then answers): the refusals above were the token's doing.
        for route, method in pages:
            url = route.path.format(**PATH_VALUES)
            data = {**FORMS.get(route.path, {}), "csrf_token": own}
            answer = ann.request(method, url, data=data, follow_redirects=False)
            assert answer.status_code != 403, (method, url, answer.text[:200])
            if route.path in {"/logout", "/login", "/register"}:  # sessions change: sign in
                ann.cookies.clear()
                assert sign_in(ann, "ann@example.com").status_code == 303
                own = form_token(ann, "/account")
