"""Calls the API tests share: a user, a grant, and reading a problem answer."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

PROBLEM = "application/problem+json"


def put_user(client: TestClient, headers: dict[str, str], user_id: str = "alice") -> None:
    response = client.put(
        f"/api/v1/users/{user_id}", json={"email": f"{user_id}@x.io"}, headers=headers
    )
    assert response.status_code == 200, response.text


def grant_tokens(
    client: TestClient, admin: dict[str, str], amount: int, user_id: str = "alice"
) -> None:
    body = {"amount": amount, "reason": "welcome", "idempotency_key": f"grant-{user_id}-{amount}"}
    response = client.post(f"/api/v1/users/{user_id}/grants", json=body, headers=admin)
    assert response.status_code == 201, response.text


def problem_of(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert (body["status"], body["code"]) == (status, code)
    return body
