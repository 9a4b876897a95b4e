"""The API's users routes, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient

from tests.web.api.calls import problem_of
from tests.web.conftest import PASSWORDS, SETTINGS, make_key
from tokenbank import ledger
from tokenbank.apikeys import Scope
from tokenbank.db import Database
from tokenbank.web.app import create_app


def test_put_user_is_idempotent_and_updates(client: TestClient, spender: dict[str, str]) -> None:
    first = client.put(
        "/api/v1/users/u-1", json={"email": "A@X.io", "name": "Ann"}, headers=spender
    )
    again = client.put(
        "/api/v1/users/u-1", json={"email": "a@x.io", "name": "Ann"}, headers=spender
    )
    renamed = client.put("/api/v1/users/u-1", json={"name": "Anne"}, headers=spender)
    assert first.status_code == again.status_code == renamed.status_code == 200
    assert first.json()["email"] == "A@X.io"  # kept as written; compared case-folded
    assert renamed.json() | {"created_at": None} == {
        "user_id": "u-1",
        "email": "a@x.io",
        "name": "Anne",
        "created_at": None,
        "trial_granted": False,
    }
    for look_alike in ("a@x.io", "A@x.IO", "\uff41@x.io", "a\u200b@x.io"):
        taken = client.put("/api/v1/users/u-2", json={"email": look_alike}, headers=spender)
        problem_of(taken, 409, "email_taken")
    mixed = client.put("/api/v1/users/u-2", json={"email": "\u0430b@x.io"}, headers=spender)
    problem_of(mixed, 422, "email_mixed_scripts")


def test_a_new_user_with_an_address_gets_the_trial_once_per_person(db: Database) -> None:
    trial = SETTINGS.model_copy(update={"trial_tokens": 120, "trial_days": 14})
    app = create_app(trial, db=db, passwords=PASSWORDS)
    with TestClient(app, base_url="https://tokens.example") as client:
        spender = make_key(db, Scope.SPEND)

        def put(user_id: str, body: dict[str, str]) -> bool:
            response = client.put(f"/api/v1/users/{user_id}", json=body, headers=spender)
            assert response.status_code == 200, response.text
            granted: bool = response.json()["trial_granted"]
            return granted

        assert not put("u-0", {"name": "No address yet"})
        assert put("u-0", {"email": "Ann.Smith@gmail.com"})  # the user's first address
        assert not put("u-0", {"email": "Ann.Smith@gmail.com"})  # a repeat
        assert not put("u-1", {"email": "annsmith+2@googlemail.com"})  # the same person
        assert put("u-2", {"email": "bob@example.com", "name": "Bob"})
        balance = client.get("/api/v1/users/u-0/balance", headers=spender).json()
    assert balance["total_granted"] == 120
    with db.read() as conn:
        (item,) = ledger.history(conn, user_id="u-0", limit=5).items
        (expiring,) = ledger.balance(conn, user_id="u-0").expiring
    assert expiring.expires_at - item.created_at == timedelta(days=14)
    assert expiring.source == ledger.Source.TRIAL
