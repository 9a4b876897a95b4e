"""Grants over the API: the one grant path's rules, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from tests.web.api.calls import grant_tokens, problem_of, put_user
from tokenbank import audit
from tokenbank.db import Database


def test_grants_need_a_known_user_and_are_audited(
    client: TestClient, admin: dict[str, str], spender: dict[str, str], db: Database
) -> None:
    """One grant path: the API's grant has the admin page's and the CLI's rules."""
    body = {"amount": 5, "reason": "welcome", "idempotency_key": "g-unknown"}
    problem_of(
        client.post("/api/v1/users/nobody/grants", json=body, headers=admin), 404, "not_found"
    )
    put_user(client, spender)
    blank = {"amount": 5, "reason": "   ", "idempotency_key": "g-blank"}
    problem_of(
        client.post("/api/v1/users/alice/grants", json=blank, headers=admin),
        422,
        "validation_error",
    )
    grant_tokens(client, admin, 7)
    grant_tokens(client, admin, 7)  # a replay: audited once
    with db.read() as conn:
        actions = audit.actions_about(conn, subject="user:alice")
    assert [(a.action, a.reason) for a in actions] == [("grant", "welcome")]
    assert actions[0].details is not None and actions[0].details["amount"] == 7
    assert actions[0].actor.startswith("api_key:")


def test_a_money_event_carries_the_request_id(
    client: TestClient,
    admin: dict[str, str],
    spender: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Through the configured processors (not a capture that replaces them): the line a
    grant writes names the request that made it, and no secret."""
    put_user(client, spender)
    capsys.readouterr()
    body = {"amount": 5, "reason": "welcome", "idempotency_key": "g-rid"}
    headers = {**admin, "x-request-id": "req-grant-1"}
    assert client.post("/api/v1/users/alice/grants", json=body, headers=headers).status_code == 201
    written = capsys.readouterr()
    lines = [json.loads(line) for line in (written.out + written.err).splitlines() if line]
    (credited,) = [line for line in lines if line["event"] == "grant_credited"]
    assert credited["request_id"] == "req-grant-1" and credited["tokens"] == 5
    secret = admin["Authorization"].removeprefix("Bearer ")
    assert all(secret not in json.dumps(line) for line in lines)
