"""The admin pages (web/pages/admin.py) on SQLite and PostgreSQL: who may open them, finding a
user, granting through the one grant service."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from tests.web.browsing import form_token, new_user
from tokenbank import audit, identity, ledger
from tokenbank.columns import utcnow
from tokenbank.db import Database


def test_admin_pages_are_for_admins(client: TestClient, db: Database) -> None:
    user = new_user(client)
    for path in ("/admin", "/admin/purchases", "/admin/webhooks", "/admin/catalog"):
        assert client.get(path).status_code == 403
    token = form_token(client, "/dashboard")
    refused = client.post(
        f"/admin/users/{user}/grants",
        data={"amount": "5", "reason": "x", "key": "k1", "csrf_token": token},
    )
    assert refused.status_code == 403
    with db.read() as conn:
        assert ledger.balance(conn, user_id=user).available == 0


def test_admin_finds_a_user_and_grants_once_per_form(client: TestClient, db: Database) -> None:
    user = new_user(client, "boss@example.com")
    with db.transaction() as conn:
        identity.set_admin(conn, user_id=user, admin=True)
    found = client.get("/admin?q=boss@example.com", follow_redirects=False)
    assert found.headers["location"] == f"/admin/users/{user}"
    assert "No user matches" in client.get("/admin?q=nobody").text
    page = client.get(f"/admin/users/{user}").text
    key = re.search(r'name="key" value="([^"]+)"', page)
    assert key is not None
    token = form_token(client, f"/admin/users/{user}")
    form = {"amount": "250", "reason": "support", "key": key.group(1), "csrf_token": token}
    for _ in range(2):
        sent = client.post(f"/admin/users/{user}/grants", data=form, follow_redirects=False)
        assert sent.headers["location"] == f"/admin/users/{user}?granted=250"
    with db.read() as conn:
        assert ledger.balance(conn, user_id=user).total_granted == 250
        (item,) = ledger.history(conn, user_id=user).items
        (action,) = audit.actions_about(conn, subject=f"user:{user}")
    assert item.description == "support" and item.metadata is None
    assert action.actor.startswith("user:") and action.reason == "support"
    for amount, reason in (("0", "support"), ("ten", "support"), ("5", " ")):
        bad = client.post(
            f"/admin/users/{user}/grants",
            data={"amount": amount, "reason": reason, "key": f"k-{amount}", "csrf_token": token},
        )
        assert bad.status_code == 422
    assert client.get("/admin/users/nobody").status_code == 404


def test_admin_grants_promotional_tokens_that_expire(client: TestClient, db: Database) -> None:
    user = new_user(client, "boss@example.com")
    with db.transaction() as conn:
        identity.set_admin(conn, user_id=user, admin=True)
    page = client.get(f"/admin/users/{user}").text
    assert 'name="expires_in_days"' in page and 'value="promo"' in page
    token = form_token(client, f"/admin/users/{user}")
    form = {
        "amount": "300",
        "reason": "launch week",
        "key": "k-promo",
        "source": "promo",
        "expires_in_days": "7",
        "csrf_token": token,
    }
    sent = client.post(f"/admin/users/{user}/grants", data=form, follow_redirects=False)
    assert sent.headers["location"] == f"/admin/users/{user}?granted=300"
    with db.read() as conn:
        (soon,) = ledger.balance(conn, user_id=user).expiring
        (action,) = audit.actions_about(conn, subject=f"user:{user}")
    assert (soon.amount, soon.source) == (300, "promo")
    assert 6 < (soon.expires_at - utcnow()).total_seconds() / 86400 <= 7
    assert action.details is not None and action.details["source"] == "promo"
    assert "300 tokens expire on" in client.get(f"/admin/users/{user}").text
    for field, value in (
        ("expires_in_days", "0"),
        ("expires_in_days", "soon"),
        ("expires_in_days", "3651"),
        ("source", "trial"),
        ("source", "purchase"),
    ):
        bad = client.post(
            f"/admin/users/{user}/grants",
            data={**form, "key": f"k-{field}-{value}", field: value},
        )
        assert bad.status_code == 422, (field, value)
    with db.read() as conn:
        assert ledger.balance(conn, user_id=user).total_granted == 300
