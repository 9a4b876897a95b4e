"""API keys and scopes (web/auth.py), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.web.api.calls import problem_of, put_user
from tokenbank import apikeys
from tokenbank.db import Database


def test_scopes_and_keys(
    client: TestClient, db: Database, spender: dict[str, str], reader: dict[str, str]
) -> None:
    put_user(client, spender)
    spend = {"amount": 1, "idempotency_key": "k"}
    problem_of(
        client.post("/api/v1/users/alice/spend", json=spend, headers=reader), 403, "forbidden"
    )
    grant = {"amount": 1, "reason": "r", "idempotency_key": "g"}
    problem_of(
        client.post("/api/v1/users/alice/grants", json=grant, headers=spender), 403, "forbidden"
    )
    problem_of(client.get("/api/v1/users/alice/balance"), 401, "unauthorized")
    wrong = {"Authorization": "Bearer tb_not-a-real-key"}
    problem_of(client.get("/api/v1/users/alice/balance", headers=wrong), 401, "unauthorized")
    assert client.get("/api/v1/users/alice/balance", headers=spender).status_code == 200
    with db.transaction() as conn:
        key_id = next(k.id for k in apikeys.list_keys(conn) if "spend" in k.scopes)
        apikeys.revoke_key(conn, key_id=key_id)
    problem_of(client.get("/api/v1/users/alice/balance", headers=spender), 401, "unauthorized")


@pytest.mark.parametrize(
    ("header", "detail"),
    [
        (None, "missing API key: send the API key as 'Authorization: Bearer <key>'"),
        ("tb_abc123", "send the API key as 'Authorization: Bearer <key>'"),
        ("Token tb_abc123", "send the API key as 'Authorization: Bearer <key>'"),
        ("Bearer tb_wrong", "missing, unknown or revoked API key"),
    ],
)
def test_a_key_sent_without_bearer_is_told_how_to_send_it(
    client: TestClient, header: str | None, detail: str
) -> None:
    headers = {} if header is None else {"Authorization": header}
    answer = client.get("/api/v1/users/alice/balance", headers=headers)
    assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
    assert answer.json()["code"] == "unauthorized" and answer.json()["detail"] == detail
