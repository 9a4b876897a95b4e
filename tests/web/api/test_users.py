"""The API's users routes, on SQLite and PostgreSQL."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.web.api.calls import problem_of


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
    }
    for look_alike in ("a@x.io", "A@x.IO", "\uff41@x.io", "a\u200b@x.io"):
        taken = client.put("/api/v1/users/u-2", json={"email": look_alike}, headers=spender)
        problem_of(taken, 409, "email_taken")
    mixed = client.put("/api/v1/users/u-2", json={"email": "\u0430b@x.io"}, headers=spender)
    problem_of(mixed, 422, "email_mixed_scripts")
