"""Accounts on the pages, and the security around them: cookies, CSRF, brute force, IDOR,
portal links. On SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from tests.web.browsing import (
    PASSWORD,
    confirm_address,
    form_token,
    new_user,
    sign_in,
    sign_up,
    signed_in_user,
)
from tests.web.conftest import PASSWORDS, SETTINGS
from tokenbank import identity, users
from tokenbank.db import Database
from tokenbank.users.models import users as users_table
from tokenbank.web.app import create_app


def test_sign_in_sets_a_safe_session_cookie(client: TestClient) -> None:
    registered = sign_up(client)
    assert registered.status_code == 200 and "tb_session" not in client.cookies
    confirm_address(client, "ann@example.com")
    response = sign_in(client, "ann@example.com")
    assert response.status_code == 303 and response.headers["location"] == "/dashboard"
    cookie = response.headers["set-cookie"]
    assert "tb_session=" in cookie
    for flag in ("HttpOnly", "Secure", "SameSite=lax", "Path=/"):
        assert flag.lower() in cookie.lower(), cookie
    dashboard = client.get("/dashboard")
    assert dashboard.status_code == 200
    assert "available" in dashboard.text
    assert dashboard.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in dashboard.headers["content-security-policy"]


def test_cookies_are_not_secure_on_a_local_development_server(db: Database) -> None:
    local = SETTINGS.model_copy(update={"public_url": "http://127.0.0.1:8000"})
    with TestClient(create_app(local, db=db, passwords=PASSWORDS)) as client:
        sign_up(client)
        response = sign_in(client, "ann@example.com")
    assert response.status_code == 303
    assert "secure" not in response.headers["set-cookie"].lower()


def test_pages_need_a_session(client: TestClient) -> None:
    for path in ("/dashboard", "/account"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"] == f"/login?next={path}"


def test_login_logout(client: TestClient) -> None:
    sign_up(client)
    client.cookies.clear()
    wrong = sign_in(client, "ann@example.com", "not the password")
    assert wrong.status_code == 401 and "do not match an account" in wrong.text
    assert "tb_session" not in client.cookies
    right = sign_in(client, "ANN@example.com")
    assert right.status_code == 303
    session = client.cookies.get("tb_session")
    assert session
    token = form_token(client, "/dashboard")
    out = client.post("/logout", data={"csrf_token": token}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/login"
    # The session is revoked on the server, not just forgotten by the browser.
    client.cookies.set("tb_session", session)
    assert client.get("/dashboard", follow_redirects=False).status_code == 303


@pytest.mark.parametrize("token", [None, "", "0" * 64, "forged", "é" * 64])
def test_forms_refuse_a_missing_or_wrong_csrf_token(
    client: TestClient, db: Database, token: str | None
) -> None:
    form_token(client, "/register")  # the browser holds the pre-sign-in cookie
    data = {"email": "eve@example.com", "password": PASSWORD}
    if token is not None:
        data["csrf_token"] = token
    response = client.post("/register", data=data, follow_redirects=False)
    assert response.status_code == 403 and "expired" in response.text
    with db.read() as conn:
        assert conn.execute(sa.select(users_table.c.id)).first() is None  # nothing written


def test_csrf_token_from_another_browser_is_refused(client: TestClient, db: Database) -> None:
    new_user(client)
    victim_page_token = form_token(client, "/account")
    with TestClient(client.app, base_url="https://tokens.example") as attacker:
        attacker_token = form_token(attacker, "/login")
    assert attacker_token != victim_page_token
    # A forged cross-site form: the victim's cookies, the attacker's token.
    response = client.post(
        "/account/password",
        data={
            "csrf_token": attacker_token,
            "current_password": PASSWORD,
            "new_password": "attacker chose this",
        },
    )
    assert response.status_code == 403
    client.cookies.clear()
    assert sign_in(client, "ann@example.com").status_code == 303  # unchanged


def test_password_change_signs_out_other_browsers(client: TestClient) -> None:
    new_user(client)
    with TestClient(client.app, base_url="https://tokens.example") as laptop:
        assert sign_in(laptop, "ann@example.com").status_code == 303
        token = form_token(client, "/account")
        wrong = client.post(
            "/account/password",
            data={"csrf_token": token, "current_password": "nope nope", "new_password": "x" * 12},
        )
        assert wrong.status_code == 401
        changed = client.post(
            "/account/password",
            data={
                "csrf_token": token,
                "current_password": PASSWORD,
                "new_password": "a brand new secret",
            },
            follow_redirects=False,
        )
        assert changed.status_code == 303
        assert client.get("/account").status_code == 200  # this browser stays in
        assert laptop.get("/dashboard", follow_redirects=False).status_code == 303
    client.cookies.clear()
    assert sign_in(client, "ann@example.com", "a brand new secret").status_code == 303


def test_brute_force_is_slowed_per_email(client: TestClient) -> None:
    sign_up(client)
    client.cookies.clear()
    statuses = [sign_in(client, "ann@example.com", f"guess {n:04d}").status_code for n in range(10)]
    assert statuses == [401] * 10
    blocked = sign_in(client, "ann@example.com")  # even the right password waits
    assert blocked.status_code == 429
    assert 0 < int(blocked.headers["retry-after"]) <= 600
    assert "Too many attempts" in blocked.text
    assert "tb_session" not in client.cookies
    # Another account is not locked by the attack on this one.
    sign_up(client, "bob@example.com")
    client.cookies.clear()
    assert sign_in(client, "bob@example.com").status_code == 303


def test_brute_force_is_slowed_per_ip(db: Database) -> None:
    tight = SETTINGS.model_copy(update={"login_limit_per_ip": "5/10 minutes"})
    with TestClient(
        create_app(tight, db=db, passwords=PASSWORDS), base_url="https://tokens.example"
    ) as client:
        statuses = [
            sign_in(client, f"user{n}@example.com", "guess guess").status_code for n in range(6)
        ]
    assert statuses == [401] * 5 + [429]


def test_registration_is_limited_per_ip(db: Database) -> None:
    tight = SETTINGS.model_copy(update={"register_limit_per_ip": "2/hour"})
    with TestClient(
        create_app(tight, db=db, passwords=PASSWORDS), base_url="https://tokens.example"
    ) as client:
        statuses = []
        for n in range(3):
            client.cookies.clear()
            statuses.append(sign_up(client, f"u{n}@example.com").status_code)
    assert statuses == [200, 200, 429]


def test_register_errors_are_shown_on_the_form(client: TestClient) -> None:
    token = form_token(client, "/register")
    short = client.post(
        "/register", data={"email": "c@example.com", "password": "short", "csrf_token": token}
    )
    assert short.status_code == 422 and "password must be 8 to 128 characters" in short.text
    common = sign_up(client, "c@example.com", "password123")
    assert common.status_code == 422 and "most common" in common.text
    mixed = sign_up(client, "h\u043emoglyph@example.com")  # a Cyrillic o
    assert mixed.status_code == 422 and "different alphabets" in mixed.text
    bad = sign_up(client, "not an address")
    assert bad.status_code == 422 and "valid email address" in bad.text


# --- another user's data (IDOR) ---------------------------------------------------------


def test_a_user_reads_only_their_own_tokens(
    client: TestClient, db: Database, admin: dict[str, str]
) -> None:
    bob = new_user(client, "bob@example.com")
    client.cookies.clear()
    ann = new_user(client)
    own = client.get(f"/api/v1/users/{ann}/balance")
    assert own.status_code == 200 and own.json()["user_id"] == ann
    for path in (
        f"/api/v1/users/{bob}/balance",
        f"/api/v1/users/{bob}/history",
        f"/api/v1/users/{bob}/history.csv",
        "/api/v1/users/nobody/balance",
    ):
        response = client.get(path)
        assert response.status_code == 403, path
        assert response.json()["code"] == "forbidden"
    # A session never reaches state-changing API routes: those need an API key.
    spend = client.post(f"/api/v1/users/{ann}/spend", json={"amount": 1, "idempotency_key": "k"})
    assert spend.status_code == 401


def test_an_admin_user_may_read_anyone(client: TestClient, db: Database) -> None:
    bob = new_user(client, "bob@example.com")
    client.cookies.clear()
    root = new_user(client, "root@example.com")
    with db.transaction() as conn:
        identity.set_admin(conn, user_id=root, admin=True)
    assert client.get(f"/api/v1/users/{bob}/balance").status_code == 200


# --- portal links ---------------------------------------------------------------------------


def _portal(client: TestClient, key: dict[str, str], user_id: str, **body: Any) -> Any:
    return client.post(f"/api/v1/users/{user_id}/portal-sessions", json=body, headers=key)


def test_portal_link_signs_the_user_in_once(
    client: TestClient, db: Database, spender: dict[str, str]
) -> None:
    with db.transaction() as conn:
        users.create_user(conn, user_id="host-42", email="h@host.io")
    created = _portal(client, spender, "host-42", return_path="/account")
    assert created.status_code == 201, created.text
    url = created.json()["url"]
    assert url.startswith("https://tokens.example/portal/")
    path = url.removeprefix("https://tokens.example")
    landed = client.get(path, follow_redirects=False)
    assert landed.status_code == 303 and landed.headers["location"] == "/account"
    assert "tb_session" in client.cookies
    assert signed_in_user(client) == "host-42"
    client.cookies.clear()
    reused = client.get(path, follow_redirects=False)
    assert reused.status_code == 400 and "cannot be used" in reused.text
    assert "tb_session" not in client.cookies
    tampered = client.get(path[:-2] + "xy", follow_redirects=False)
    assert tampered.status_code == 400


def test_portal_link_defaults_and_checks(
    client: TestClient, db: Database, spender: dict[str, str], reader: dict[str, str]
) -> None:
    with db.transaction() as conn:
        users.create_user(conn, user_id="host-42")
    plain = client.post("/api/v1/users/host-42/portal-sessions", headers=spender)
    assert plain.status_code == 201
    landed = client.get(
        plain.json()["url"].removeprefix("https://tokens.example"), follow_redirects=False
    )
    assert landed.headers["location"] == "/dashboard"
    assert _portal(client, reader, "host-42").status_code == 403
    assert _portal(client, {}, "host-42").status_code == 401
    assert _portal(client, spender, "ghost").json()["code"] == "not_found"
    outside = _portal(client, spender, "host-42", return_path="https://evil.example/")
    assert outside.status_code == 422 and outside.json()["code"] == "validation_error"


def test_signing_in_again_ends_the_previous_session(client: TestClient) -> None:
    new_user(client)
    first = client.cookies.get("tb_session")
    assert first
    assert sign_in(client, "ann@example.com").status_code == 303
    second = client.cookies.get("tb_session")
    assert second and second != first
    db: Database = client.app.state.runtime.db  # type: ignore[attr-defined]
    with db.read() as conn:
        assert identity.session_user(conn, token=first) is None
        assert identity.session_user(conn, token=second) is not None


def test_portal_tokens_stay_out_of_the_access_log(
    db: Database, spender: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    with db.transaction() as conn:
        users.create_user(conn, user_id="host-9")
    with TestClient(
        create_app(SETTINGS.model_copy(update={"log_level": "info"}), db=db, passwords=PASSWORDS),
        base_url="https://tokens.example",
    ) as client:
        url = _portal(client, spender, "host-9").json()["url"]
        token = url.rsplit("/", 1)[1]
        assert client.get(f"/portal/{token}", follow_redirects=False).status_code == 303
    logged = capsys.readouterr().out
    assert '"route": "/portal/{token}"' in logged
    assert token not in logged
