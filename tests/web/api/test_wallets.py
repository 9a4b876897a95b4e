"""A wallet over the API: balance, spends, refunds, history and its CSV, on both databases."""

from __future__ import annotations

import csv
import io
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi.testclient import TestClient
from structlog.testing import capture_logs

from tests.web.api.calls import grant_tokens, problem_of, put_user


def test_spend_balance_and_insufficient(
    client: TestClient, admin: dict[str, str], spender: dict[str, str], reader: dict[str, str]
) -> None:
    put_user(client, spender)
    grant_tokens(client, admin, 100)
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
        "covered": False,
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
    problem_of(conflict, 409, "idempotency_conflict")
    short = client.post(
        "/api/v1/users/alice/spend", json={"amount": 71, "idempotency_key": "s2"}, headers=spender
    )
    body = problem_of(short, 402, "insufficient_tokens")
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
        "expiring": [],
    }


def test_history_pages_filter_and_csv(
    client: TestClient, admin: dict[str, str], spender: dict[str, str], reader: dict[str, str]
) -> None:
    put_user(client, spender)
    grant_tokens(client, admin, 1000)
    for n in range(5):
        client.post(
            "/api/v1/users/alice/spend",
            json={"amount": n + 1, "idempotency_key": f"s{n}", "description": f"call, {n}"},
            headers=spender,
        )
    first = client.get("/api/v1/users/alice/history?limit=4", headers=reader).json()
    rest = client.get(
        f"/api/v1/users/alice/history?limit=4&cursor={first['next_cursor']}", headers=reader
    ).json()
    amounts = [t["amount"] for t in first["items"] + rest["items"]]
    assert amounts == [-5, -4, -3, -2, -1, 1000]
    assert rest["next_cursor"] is None
    grants = client.get("/api/v1/users/alice/history?kind=grant", headers=reader).json()
    assert [t["kind"] for t in grants["items"]] == ["grant"]
    csv = client.get("/api/v1/users/alice/history.csv?kind=spend", headers=reader)
    assert csv.status_code == 200
    assert csv.headers["content-type"].startswith("text/csv")
    lines = csv.text.strip().splitlines()
    # The pages' export's columns (one writer behind both), a BOM for spreadsheets.
    assert lines[0] == (
        "\ufeffdate_utc,kind,description,tokens,balance_after,transfer_id,feature,quantity"
    )
    assert len(lines) == 6
    assert ',spend,"call, 4",-5,985,' in lines[1] and lines[1].endswith(",,")
    problem_of(client.get("/api/v1/users/bob/history.csv", headers=reader), 404, "not_found")


@pytest.mark.parametrize(
    "extra",
    [{"description": "a\x00b"}, {"metadata": {"k\x00": 1}}, {"metadata": {"k": ["\x00"]}}],
)
def test_nul_characters_are_refused_not_a_500(
    client: TestClient, admin: dict[str, str], spender: dict[str, str], extra: dict[str, Any]
) -> None:
    put_user(client, spender)
    grant_tokens(client, admin, 10)
    body = {"amount": 1, "idempotency_key": "nul", **extra}
    response = client.post("/api/v1/users/alice/spend", json=body, headers=spender)
    problem_of(response, 422, "validation_error")
    problem_of(client.get("/api/v1/users/a%00b/balance", headers=spender), 400, "invalid_request")


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
    put_user(client, spender)
    grant_tokens(client, admin, 100)
    body = {"amount": 60, "idempotency_key": "h-exp", "ttl_seconds": 1}
    assert client.post("/api/v1/users/alice/holds", json=body, headers=spender).status_code == 201
    held = client.get("/api/v1/users/alice/balance", headers=spender).json()
    assert (held["available"], held["held"]) == (40, 60)
    time.sleep(1.1)
    after = client.get("/api/v1/users/alice/balance", headers=spender).json()
    assert (after["available"], after["held"], after["balance"]) == (100, 0, 100)


def test_csv_export_of_a_user_with_any_id_names_its_file(
    client: TestClient, admin: dict[str, str], spender: dict[str, str], reader: dict[str, str]
) -> None:
    """A user id is any text; a header is Latin-1. The file's name keeps the id exactly
    in ``filename*`` (RFC 6266), with a plain fallback, and never fails the export."""
    for user_id, plain in (("用户", "history-__.csv"), ('a"b', "history-a_b.csv")):
        url = f"/api/v1/users/{quote(user_id, safe='')}"
        assert client.put(url, json={}, headers=spender).status_code == 200
        grant = {"amount": 5, "reason": "welcome", "idempotency_key": f"g-{user_id}"}
        assert client.post(f"{url}/grants", json=grant, headers=admin).status_code == 201
        exported = client.get(f"{url}/history.csv", headers=reader)
        assert exported.status_code == 200, exported.text
        disposition = exported.headers["content-disposition"]
        assert f'filename="{plain}"' in disposition
        assert f"filename*=UTF-8''{quote(f'history-{user_id}.csv', safe='')}" in disposition
        assert "welcome" in exported.text


def test_csv_export_defuses_formulas_as_the_pages_do(
    client: TestClient, admin: dict[str, str], spender: dict[str, str], reader: dict[str, str]
) -> None:
    put_user(client, spender)
    grant_tokens(client, admin, 100)
    for n, text in enumerate(("=HYPERLINK('http://evil')", "+1+1", "-2", "@SUM(A1)", "plain")):
        client.post(
            "/api/v1/users/alice/spend",
            json={"amount": 1, "idempotency_key": f"f{n}", "description": text},
            headers=spender,
        )
    exported = client.get("/api/v1/users/alice/history.csv?kind=spend", headers=reader)
    rows = list(csv.DictReader(io.StringIO(exported.text.removeprefix("\ufeff"))))
    assert [r["description"] for r in rows] == [
        "plain",
        "'@SUM(A1)",
        "'-2",
        "'+1+1",
        "'=HYPERLINK('http://evil')",
    ]
    assert {r["tokens"] for r in rows} == {"-1"}  # numbers are numbers, never quoted


def test_the_history_answers_at_its_earlier_address_too(
    client: TestClient, admin: dict[str, str], spender: dict[str, str], reader: dict[str, str]
) -> None:
    put_user(client, spender)
    grant_tokens(client, admin, 10)
    now = client.get("/api/v1/users/alice/history", headers=reader).json()
    before = client.get("/api/v1/users/alice/transactions", headers=reader).json()
    assert now == before and [item["kind"] for item in now["items"]] == ["grant"]
    assert client.get("/api/v1/users/alice/transactions.csv", headers=reader).text == (
        client.get("/api/v1/users/alice/history.csv", headers=reader).text
    )
    schema = client.get("/openapi.json").json()["paths"]
    assert schema["/api/v1/users/{user_id}/transactions"]["get"]["deprecated"] is True
    assert "deprecated" not in schema["/api/v1/users/{user_id}/history"]["get"]


def test_a_large_spend_gets_a_log_line_of_its_own(
    client: TestClient, admin: dict[str, str], spender: dict[str, str]
) -> None:
    put_user(client, spender)
    grant_tokens(client, admin, 30_000)
    with capture_logs() as lines:
        for amount, key in ((9_999, "small"), (10_000, "large"), (10_000, "large")):
            body = {"amount": amount, "idempotency_key": key}
            client.post("/api/v1/users/alice/spend", json=body, headers=spender)
    spent = [line for line in lines if line["event"] == "tokens_spent"]
    assert [(line["user_id"], line["tokens"], line["balance"]) for line in spent] == [
        ("alice", 10_000, 10_001)
    ]
