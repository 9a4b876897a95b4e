"""The JSON API end to end, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tokenbank import apikeys, audit
from tokenbank.db import Database

PROBLEM = "application/problem+json"


def _user(client: TestClient, headers: dict[str, str], user_id: str = "alice") -> None:
    response = client.put(
        f"/api/v1/users/{user_id}", json={"email": f"{user_id}@x.io"}, headers=headers
    )
    assert response.status_code == 200, response.text


def _grant(client: TestClient, admin: dict[str, str], amount: int, user_id: str = "alice") -> None:
    body = {"amount": amount, "reason": "welcome", "idempotency_key": f"grant-{user_id}-{amount}"}
    response = client.post(f"/api/v1/users/{user_id}/grants", json=body, headers=admin)
    assert response.status_code == 201, response.text


def _problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert (body["status"], body["code"]) == (status, code)
    return body


def test_put_user_is_idempotent_and_updates(client: TestClient, spender: dict[str, str]) -> None:
    first = client.put(
        "/api/v1/users/u-1", json={"email": "A@X.io", "name": "Ann"}, headers=spender
    )
    again = client.put(
        "/api/v1/users/u-1", json={"email": "a@x.io", "name": "Ann"}, headers=spender
    )
    renamed = client.put("/api/v1/users/u-1", json={"name": "Anne"}, headers=spender)
    assert first.status_code == again.status_code == renamed.status_code == 200
    assert first.json()["email"] == "a@x.io"
    assert renamed.json() | {"created_at": None} == {
        "user_id": "u-1",
        "email": "a@x.io",
        "name": "Anne",
        "created_at": None,
    }
    taken = client.put("/api/v1/users/u-2", json={"email": "a@x.io"}, headers=spender)
    _problem(taken, 409, "email_taken")


def test_spend_balance_and_insufficient(
    client: TestClient, admin: dict[str, str], spender: dict[str, str], reader: dict[str, str]
) -> None:
    _user(client, spender)
    _grant(client, admin, 100)
    spent = client.post(
        "/api/v1/users/alice/spend",
        json={"amount": 30, "idempotency_key": "s1", "description": "chat", "metadata": {"m": 1}},
        headers=spender,
    )
    assert spent.status_code == 201, spent.text
    assert spent.json() | {"transfer_id": 0} == {
        "transfer_id": 0,
        "kind": "spend",
        "user_id": "alice",
        "amount": 30,
        "balance": 70,
        "replayed": False,
    }
    replay = client.post(
        "/api/v1/users/alice/spend",
        json={"amount": 30, "idempotency_key": "s1", "description": "chat", "metadata": {"m": 1}},
        headers=spender,
    )
    assert replay.status_code == 201
    assert replay.json()["transfer_id"] == spent.json()["transfer_id"]
    assert replay.json()["replayed"] is True
    conflict = client.post(
        "/api/v1/users/alice/spend", json={"amount": 31, "idempotency_key": "s1"}, headers=spender
    )
    _problem(conflict, 409, "idempotency_conflict")
    short = client.post(
        "/api/v1/users/alice/spend", json={"amount": 71, "idempotency_key": "s2"}, headers=spender
    )
    body = _problem(short, 402, "insufficient_tokens")
    assert (body["available"], body["requested"]) == (70, 71)
    assert body["buy_url"] == "https://tokens.example/pricing"
    balance = client.get("/api/v1/users/alice/balance", headers=reader)
    assert balance.json() == {
        "user_id": "alice",
        "available": 70,
        "held": 0,
        "balance": 70,
        "total_purchased": 0,
        "total_granted": 100,
        "total_spent": 30,
        "debt": 0,
    }


def test_holds_post_void_and_refund(
    client: TestClient, admin: dict[str, str], spender: dict[str, str]
) -> None:
    _user(client, spender)
    _grant(client, admin, 100)
    hold = client.post(
        "/api/v1/users/alice/holds",
        json={"amount": 60, "idempotency_key": "h1", "ttl_seconds": 60},
        headers=spender,
    )
    assert hold.status_code == 201, hold.text
    hold_id = hold.json()["hold_id"]
    assert hold.json()["status"] == "pending"
    posted = client.post(f"/api/v1/holds/{hold_id}/post", json={"amount": 45}, headers=spender)
    assert posted.status_code == 200, posted.text
    assert (posted.json()["amount"], posted.json()["balance"]) == (45, 55)
    again = client.post(f"/api/v1/holds/{hold_id}/post", json={"amount": 45}, headers=spender)
    assert again.json()["replayed"] is True
    _problem(client.post(f"/api/v1/holds/{hold_id}/void", headers=spender), 409, "hold_not_pending")
    second = client.post(
        "/api/v1/users/alice/holds", json={"amount": 10, "idempotency_key": "h2"}, headers=spender
    ).json()
    voided = client.post(f"/api/v1/holds/{second['hold_id']}/void", headers=spender)
    assert voided.json()["status"] == "voided"
    refund = client.post(
        f"/api/v1/transfers/{posted.json()['transfer_id']}/refund",
        json={"idempotency_key": "r1", "amount": 5, "reason": "model error"},
        headers=spender,
    )
    assert refund.status_code == 201, refund.text
    assert (refund.json()["kind"], refund.json()["balance"]) == ("refund", 60)
    too_much = client.post(
        f"/api/v1/transfers/{posted.json()['transfer_id']}/refund",
        json={"idempotency_key": "r2", "amount": 41},
        headers=spender,
    )
    _problem(too_much, 409, "refund_exceeds_spend")
    _problem(client.post("/api/v1/holds/999999/void", headers=spender), 404, "not_found")


def test_transactions_pages_filter_and_csv(
    client: TestClient, admin: dict[str, str], spender: dict[str, str], reader: dict[str, str]
) -> None:
    _user(client, spender)
    _grant(client, admin, 1000)
    for n in range(5):
        client.post(
            "/api/v1/users/alice/spend",
            json={"amount": n + 1, "idempotency_key": f"s{n}", "description": f"call, {n}"},
            headers=spender,
        )
    first = client.get("/api/v1/users/alice/transactions?limit=4", headers=reader).json()
    rest = client.get(
        f"/api/v1/users/alice/transactions?limit=4&cursor={first['next_cursor']}", headers=reader
    ).json()
    amounts = [t["amount"] for t in first["items"] + rest["items"]]
    assert amounts == [-5, -4, -3, -2, -1, 1000]
    assert rest["next_cursor"] is None
    grants = client.get("/api/v1/users/alice/transactions?kind=grant", headers=reader).json()
    assert [t["kind"] for t in grants["items"]] == ["grant"]
    csv = client.get("/api/v1/users/alice/transactions.csv?kind=spend", headers=reader)
    assert csv.status_code == 200
    assert csv.headers["content-type"].startswith("text/csv")
    lines = csv.text.strip().splitlines()
    # The pages' export's columns (one writer behind both), a BOM for spreadsheets.
    assert lines[0] == "\ufeffdate_utc,kind,description,tokens,balance_after,transfer_id"
    assert len(lines) == 6
    assert ',spend,"call, 4",-5,985,' in lines[1]
    _problem(client.get("/api/v1/users/bob/transactions.csv", headers=reader), 404, "not_found")


def test_scopes_and_keys(
    client: TestClient, db: Database, spender: dict[str, str], reader: dict[str, str]
) -> None:
    _user(client, spender)
    spend = {"amount": 1, "idempotency_key": "k"}
    _problem(client.post("/api/v1/users/alice/spend", json=spend, headers=reader), 403, "forbidden")
    grant = {"amount": 1, "reason": "r", "idempotency_key": "g"}
    _problem(
        client.post("/api/v1/users/alice/grants", json=grant, headers=spender), 403, "forbidden"
    )
    _problem(client.get("/api/v1/users/alice/balance"), 401, "unauthorized")
    wrong = {"Authorization": "Bearer tb_not-a-real-key"}
    _problem(client.get("/api/v1/users/alice/balance", headers=wrong), 401, "unauthorized")
    assert client.get("/api/v1/users/alice/balance", headers=spender).status_code == 200
    with db.transaction() as conn:
        key_id = next(k.id for k in apikeys.list_keys(conn) if "spend" in k.scopes)
        apikeys.revoke_key(conn, key_id=key_id)
    _problem(client.get("/api/v1/users/alice/balance", headers=spender), 401, "unauthorized")


@pytest.mark.parametrize(
    "body",
    [
        {"amount": 0, "idempotency_key": "k"},
        {"amount": -5, "idempotency_key": "k"},
        {"amount": 1.5, "idempotency_key": "k"},
        {"amount": "10", "idempotency_key": "k"},
        {"amount": True, "idempotency_key": "k"},
        {"amount": 10**13, "idempotency_key": "k"},
        {"amount": 10**40, "idempotency_key": "k"},
        {"amount": 1},
        {"amount": 1, "idempotency_key": ""},
        {"amount": 1, "idempotency_key": "k", "surprise": 1},
        {"amount": 1, "idempotency_key": "k", "metadata": {"x": "y" * 5000}},
        [1, 2, 3],
    ],
)
def test_bad_bodies_get_422_and_change_nothing(
    client: TestClient, admin: dict[str, str], spender: dict[str, str], body: object
) -> None:
    _user(client, spender)
    _grant(client, admin, 100)
    response = client.post("/api/v1/users/alice/spend", json=body, headers=spender)
    _problem(response, 422, "validation_error")
    balance = client.get("/api/v1/users/alice/balance", headers=spender).json()
    assert balance["available"] == 100


def test_malformed_and_oversized_bodies(client: TestClient, spender: dict[str, str]) -> None:
    _user(client, spender)
    headers = {**spender, "content-type": "application/json"}
    malformed = client.post("/api/v1/users/alice/spend", content=b'{"amount": 1,', headers=headers)
    _problem(malformed, 422, "validation_error")
    huge = b'{"amount": 1, "idempotency_key": "' + b"k" * 70_000 + b'"}'
    _problem(
        client.post("/api/v1/users/alice/spend", content=huge, headers=headers),
        413,
        "payload_too_large",
    )


def test_operations_endpoints(client: TestClient, spender: dict[str, str]) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready"
    assert ready["warnings"] == [
        "payments are not configured (STRIPE_SECRET_KEY): nothing can be bought"
    ]
    _user(client, spender)
    client.post(
        "/api/v1/users/alice/spend", json={"amount": 1, "idempotency_key": "k"}, headers=spender
    )
    metrics = client.get("/metrics").text
    assert (
        'tokenbank_http_requests_total{method="PUT",route="/api/v1/users/{user_id}",'
        'status="200"} 1.0' in metrics
    )
    assert 'tokenbank_refusals_total{code="insufficient_tokens"} 1.0' in metrics
    response = client.get("/healthz", headers={"x-request-id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    assert len(client.get("/healthz").headers["x-request-id"]) == 32
    _problem(client.get("/nowhere"), 404, "not_found")
    _problem(client.delete("/healthz"), 405, "method_not_allowed")
    schema = client.get("/openapi.json").json()
    assert "/api/v1/users/{user_id}/spend" in schema["paths"]


@pytest.mark.parametrize(
    "extra",
    [{"description": "a\x00b"}, {"metadata": {"k\x00": 1}}, {"metadata": {"k": ["\x00"]}}],
)
def test_nul_characters_are_refused_not_a_500(
    client: TestClient, admin: dict[str, str], spender: dict[str, str], extra: dict[str, Any]
) -> None:
    _user(client, spender)
    _grant(client, admin, 10)
    body = {"amount": 1, "idempotency_key": "nul", **extra}
    response = client.post("/api/v1/users/alice/spend", json=body, headers=spender)
    _problem(response, 422, "validation_error")
    _problem(client.get("/api/v1/users/a%00b/balance", headers=spender), 400, "invalid_request")


def test_concurrent_spends_over_http(
    live_url: str, admin: dict[str, str], spender: dict[str, str]
) -> None:
    """Through the whole service (on PostgreSQL, the asyncio fast path): no overdraft, and
    one key sent many times at once has one effect."""
    with httpx.Client(base_url=live_url, headers=admin) as http:
        assert http.put("/api/v1/users/carol", json={}).status_code == 200
        grant = {"amount": 50, "reason": "r", "idempotency_key": "g"}
        assert http.post("/api/v1/users/carol/grants", json=grant).status_code == 201

    def spend(key: str) -> tuple[int, Any]:
        with httpx.Client(base_url=live_url, headers=spender) as http:
            response = http.post(
                "/api/v1/users/carol/spend", json={"amount": 1, "idempotency_key": key}
            )
            return response.status_code, response.json()

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(spend, [f"k{n}" for n in range(70)]))
        same = list(pool.map(spend, ["dup"] * 20))
    statuses = sorted(status for status, _ in results)
    assert statuses == [201] * 50 + [402] * 20
    with httpx.Client(base_url=live_url, headers=spender) as http:
        balance = http.get("/api/v1/users/carol/balance").json()
    assert (balance["available"], balance["total_spent"]) == (0, 50)
    # "dup" came after the money ran out: every copy gets the same refusal.
    assert {status for status, _ in same} == {402}
    with httpx.Client(base_url=live_url, headers=admin) as http:
        more = {"amount": 5, "reason": "r", "idempotency_key": "g2"}
        assert http.post("/api/v1/users/carol/grants", json=more).status_code == 201
    with ThreadPoolExecutor(max_workers=16) as pool:
        again = list(pool.map(spend, ["dup2"] * 20))
    assert {status for status, _ in again} == {201}
    assert len({body["transfer_id"] for _, body in again}) == 1
    assert sum(not body["replayed"] for _, body in again) == 1


def test_balance_counts_an_expired_hold_as_released(
    client: TestClient, admin: dict[str, str], spender: dict[str, str]
) -> None:
    _user(client, spender)
    _grant(client, admin, 100)
    body = {"amount": 60, "idempotency_key": "h-exp", "ttl_seconds": 1}
    assert client.post("/api/v1/users/alice/holds", json=body, headers=spender).status_code == 201
    held = client.get("/api/v1/users/alice/balance", headers=spender).json()
    assert (held["available"], held["held"]) == (40, 60)
    time.sleep(1.1)
    after = client.get("/api/v1/users/alice/balance", headers=spender).json()
    assert (after["available"], after["held"], after["balance"]) == (100, 0, 100)


def test_csv_export_defuses_formulas_as_the_pages_do(
    client: TestClient, admin: dict[str, str], spender: dict[str, str], reader: dict[str, str]
) -> None:
    _user(client, spender)
    _grant(client, admin, 100)
    for n, text in enumerate(("=HYPERLINK('http://evil')", "+1+1", "-2", "@SUM(A1)", "plain")):
        client.post(
            "/api/v1/users/alice/spend",
            json={"amount": 1, "idempotency_key": f"f{n}", "description": text},
            headers=spender,
        )
    exported = client.get("/api/v1/users/alice/transactions.csv?kind=spend", headers=reader)
    rows = list(csv.DictReader(io.StringIO(exported.text.removeprefix("\ufeff"))))
    assert [r["description"] for r in rows] == [
        "plain",
        "'@SUM(A1)",
        "'-2",
        "'+1+1",
        "'=HYPERLINK('http://evil')",
    ]
    assert {r["tokens"] for r in rows} == {"-1"}  # numbers are numbers, never quoted


def test_grants_need_a_known_user_and_are_audited(
    client: TestClient, admin: dict[str, str], spender: dict[str, str], db: Database
) -> None:
    """One grant path: the API's grant has the admin page's and the CLI's rules."""
    body = {"amount": 5, "reason": "welcome", "idempotency_key": "g-unknown"}
    _problem(client.post("/api/v1/users/nobody/grants", json=body, headers=admin), 404, "not_found")
    _user(client, spender)
    blank = {"amount": 5, "reason": "   ", "idempotency_key": "g-blank"}
    _problem(
        client.post("/api/v1/users/alice/grants", json=blank, headers=admin),
        422,
        "validation_error",
    )
    _grant(client, admin, 7)
    _grant(client, admin, 7)  # a replay: audited once
    with db.read() as conn:
        actions = audit.actions_about(conn, subject="user:alice")
    assert [(a.action, a.reason, a.details) for a in actions] == [
        ("grant", "welcome", {"amount": 7, "transfer_id": actions[0].details["transfer_id"]})
    ]
    assert actions[0].actor.startswith("api_key:")
