"""Grants over the API: the one grant path's rules, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient

from tests.web.api.calls import grant_tokens, problem_of, put_user
from tokenbank import audit, ledger
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


def test_a_grant_may_expire_and_be_a_promotion(
    client: TestClient, admin: dict[str, str], spender: dict[str, str], db: Database
) -> None:
    put_user(client, spender)
    body = {
        "amount": 40,
        "reason": "launch week",
        "idempotency_key": "promo-1",
        "expires_in_days": 30,
        "source": "promo",
    }
    before = datetime.now(UTC)
    first = client.post("/api/v1/users/alice/grants", json=body, headers=admin)
    assert first.status_code == 201, first.text
    given = first.json()
    expires_at = datetime.fromisoformat(given["expires_at"])
    assert before + timedelta(days=30) <= expires_at <= datetime.now(UTC) + timedelta(days=30)
    assert (given["source"], given["amount"], given["replayed"]) == ("promo", 40, False)
    # A retry a moment later is the first grant, with the first one's expiry.
    again = client.post("/api/v1/users/alice/grants", json=body, headers=admin).json()
    assert again["replayed"] and again["expires_at"] == given["expires_at"]
    at = (datetime.now(UTC) + timedelta(days=7)).replace(microsecond=0)
    dated = {
        "amount": 5,
        "reason": "sorry",
        "idempotency_key": "g-at",
        "expires_at": at.astimezone(timezone(timedelta(hours=8))).isoformat(),
    }
    answer = client.post("/api/v1/users/alice/grants", json=dated, headers=admin).json()
    assert (answer["source"], datetime.fromisoformat(answer["expires_at"])) == ("admin", at)
    replay = client.post("/api/v1/users/alice/grants", json=dated, headers=admin).json()
    assert replay["replayed"] and replay["expires_at"] == answer["expires_at"]  # UTC, both
    plain = {"amount": 1, "reason": "forever", "idempotency_key": "g-plain"}
    answer = client.post("/api/v1/users/alice/grants", json=plain, headers=admin).json()
    assert (answer["source"], answer["expires_at"]) == ("admin", None)
    with db.read() as conn:
        balance = ledger.balance(conn, user_id="alice")
        actions = audit.actions_about(conn, subject="user:alice")
    assert [(e.amount, e.source) for e in balance.expiring] == [
        (5, ledger.Source.ADMIN),
        (40, ledger.Source.PROMO),
    ]
    assert [a.details["source"] for a in actions if a.details] == ["admin", "admin", "promo"]


@pytest.mark.parametrize(
    ("terms", "message"),
    [
        ({"expires_in_days": 30, "expires_at": "2099-01-01T00:00:00Z"}, "not both"),
        ({"expires_in_days": 0}, "greater than or equal to 1"),
        ({"expires_in_days": 3651}, "less than or equal to 3650"),
        ({"expires_in_days": "30"}, "valid integer"),
        ({"expires_at": "2099-01-01T00:00:00"}, "timezone"),
        ({"expires_at": "2020-01-01T00:00:00Z"}, "expires_at: must be in the future"),
        ({"expires_at": "2199-01-01T00:00:00Z"}, "expires_at: must be within 3650 days"),
        ({"expires_at": 1900000000}, "as text (RFC 3339)"),  # never read as a Unix time
        ({"expires_at": 1900000000.5}, "as text (RFC 3339)"),
        ({"expires_at": "1900000000"}, "as text (RFC 3339)"),
        ({"expires_at": "2099-01-01"}, "as text (RFC 3339)"),  # a day is not a time
        ({"source": "trial"}, "'admin' or 'promo'"),
        ({"source": "purchase"}, "'admin' or 'promo'"),
    ],
)
def test_bad_terms_are_refused_with_the_reason(
    client: TestClient,
    admin: dict[str, str],
    *,
    spender: dict[str, str],
    db: Database,
    terms: dict[str, object],
    message: str,
) -> None:
    put_user(client, spender)
    body = {"amount": 5, "reason": "r", "idempotency_key": "g-bad", **terms}
    refused = problem_of(
        client.post("/api/v1/users/alice/grants", json=body, headers=admin),
        422,
        "validation_error",
    )
    assert message in json.dumps(refused)
    with db.read() as conn:
        assert ledger.balance(conn, user_id="alice").total_granted == 0
