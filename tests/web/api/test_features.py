"""Features priced on the server (spends and holds that name a feature, not an amount) and
the entitlement check, over the API, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from tests.web.api.calls import grant_tokens, problem_of, put_user
from tests.web.browsing import new_user
from tokenbank.db import Database
from tokenbank.entitlements import MAX_QUANTITY
from tokenbank.ledger.models import entries, holds, transfers

SPEND = "/api/v1/users/alice/spend"
CHECK = "/api/v1/users/alice/check"


def _rows(db: Database) -> dict[str, int]:
    with db.read() as conn:
        return {
            table.name: conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            for table in (transfers, entries, holds)
        }


def test_a_feature_spend_is_priced_by_the_catalog_and_replays(
    client: TestClient, admin: dict[str, str], spender: dict[str, str], reader: dict[str, str]
) -> None:
    put_user(client, spender)
    grant_tokens(client, admin, 1000)
    body = {"feature": "image", "quantity": 3, "idempotency_key": "img-1"}
    spent = client.post(SPEND, json=body, headers=spender)
    assert spent.status_code == 201, spent.text
    receipt = spent.json()
    assert (receipt["amount"], receipt["balance"], receipt["replayed"]) == (120, 880, False)
    assert (receipt["feature"], receipt["quantity"]) == ("image", 3)
    again = client.post(SPEND, json=body, headers=spender).json()
    assert (again["transfer_id"], again["balance"], again["replayed"]) == (
        receipt["transfer_id"],
        880,
        True,
    )
    # The same key for another quantity is another request.
    other = {**body, "quantity": 4}
    problem_of(client.post(SPEND, json=other, headers=spender), 409, "idempotency_conflict")
    one = client.post(
        SPEND, json={"feature": "chat_message", "idempotency_key": "chat-1"}, headers=spender
    ).json()
    assert (one["amount"], one["quantity"]) == (5, 1)  # one unit unless told
    # An amount spend answers as it always did.
    plain = client.post(SPEND, json={"amount": 7, "idempotency_key": "p"}, headers=spender)
    assert set(plain.json()) == {
        "transfer_id",
        "kind",
        "user_id",
        "amount",
        "balance",
        "replayed",
        "covered",
    }

    items = client.get("/api/v1/users/alice/history", headers=reader).json()["items"]
    assert [(i["amount"], i["feature"], i["quantity"]) for i in items] == [
        (-7, None, None),
        (-5, "chat_message", 1),
        (-120, "image", 3),
        (1000, None, None),
    ]
    exported = client.get("/api/v1/users/alice/history.csv", headers=reader).text
    rows = list(csv.DictReader(io.StringIO(exported.removeprefix("\ufeff"))))
    assert list(rows[0])[-2:] == ["feature", "quantity"]  # new columns only at the end
    assert [(r["tokens"], r["feature"], r["quantity"]) for r in rows] == [
        ("-7", "", ""),
        ("-5", "chat_message", "1"),
        ("-120", "image", "3"),
        ("1000", "", ""),
    ]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"feature": "image", "amount": 1}, "not both"),  # a caller cannot name the price
        ({"feature": "image", "amount": 40, "quantity": 1}, "not both"),
        ({}, "name an amount, or a feature"),
        ({"amount": 5, "quantity": 2}, "quantity goes with a feature"),
        ({"feature": "image", "quantity": 0}, "greater than 0"),
        ({"feature": "image", "quantity": MAX_QUANTITY + 1}, "less than or equal"),
        ({"feature": "image", "quantity": 2.5}, "valid integer"),
        ({"feature": "image", "quantity": "2"}, "valid integer"),
        ({"feature": "", "quantity": 1}, "at least 1 character"),
        ({"feature": "x" * 65}, "at most 64 characters"),
    ],
)
def test_a_body_names_an_amount_or_a_feature_and_sane_quantity(
    client: TestClient,
    *,
    admin: dict[str, str],
    spender: dict[str, str],
    db: Database,
    body: dict[str, Any],
    words: str,
) -> None:
    put_user(client, spender)
    grant_tokens(client, admin, 1000)
    before = _rows(db)
    for path in (SPEND, "/api/v1/users/alice/holds", CHECK):
        answer = client.post(path, json={**body, "idempotency_key": "k"}, headers=spender)
        if path == CHECK:  # a check carries no key
            answer = client.post(path, json=body, headers=spender)
        problem = problem_of(answer, 422, "validation_error")
        assert words in str(problem["errors"]), problem
    assert _rows(db) == before


def test_an_unknown_feature_is_refused_with_its_own_code(
    client: TestClient, admin: dict[str, str], spender: dict[str, str], db: Database
) -> None:
    put_user(client, spender)
    grant_tokens(client, admin, 1000)
    before = _rows(db)
    for path, extra in (
        (SPEND, {"idempotency_key": "v"}),
        ("/api/v1/users/alice/holds", {"idempotency_key": "v"}),
        (CHECK, {}),
    ):
        answer = client.post(path, json={"feature": "video", **extra}, headers=spender)
        assert "video" in problem_of(answer, 422, "unknown_feature")["detail"]
    assert _rows(db) == before


def test_a_feature_that_costs_too_much_is_refused_and_spends_nothing(
    client: TestClient, admin: dict[str, str], spender: dict[str, str]
) -> None:
    put_user(client, spender)
    grant_tokens(client, admin, 100)
    body = {"feature": "image", "quantity": 3, "idempotency_key": "big"}
    refused = problem_of(client.post(SPEND, json=body, headers=spender), 402, "insufficient_tokens")
    assert (refused["requested"], refused["available"]) == (120, 100)
    assert refused["buy_url"] == "https://tokens.example/pricing"
    assert client.get("/api/v1/users/alice/balance", headers=spender).json()["available"] == 100


def test_a_hold_names_a_feature_and_its_post_records_it(
    client: TestClient, admin: dict[str, str], spender: dict[str, str], reader: dict[str, str]
) -> None:
    put_user(client, spender)
    grant_tokens(client, admin, 500)
    body = {"feature": "document_summary", "quantity": 4, "idempotency_key": "sum-1"}
    held = client.post("/api/v1/users/alice/holds", json=body, headers=spender)
    assert held.status_code == 201, held.text
    hold = held.json()
    assert (hold["amount"], hold["feature"], hold["quantity"], hold["replayed"]) == (
        100,
        "document_summary",
        4,
        False,
    )
    again = client.post("/api/v1/users/alice/holds", json=body, headers=spender).json()
    assert (again["hold_id"], again["replayed"]) == (hold["hold_id"], True)
    other = {**body, "quantity": 5}
    problem_of(
        client.post("/api/v1/users/alice/holds", json=other, headers=spender),
        409,
        "idempotency_conflict",
    )
    posted = client.post(
        f"/api/v1/holds/{hold['hold_id']}/post", json={"amount": 75}, headers=spender
    )
    assert posted.status_code == 200, posted.text
    assert posted.json()["balance"] == 425
    (spent,) = client.get("/api/v1/users/alice/history?kind=spend", headers=reader).json()["items"]
    assert (spent["amount"], spent["feature"], spent["quantity"]) == (-75, "document_summary", 4)


def test_what_the_tokens_buy_is_public(client: TestClient) -> None:
    answer = client.get("/api/v1/features")
    assert answer.status_code == 200
    listed = {f["id"]: f for f in answer.json()["features"]}
    assert listed["chat_message"] == {
        "id": "chat_message",
        "name": {"en": "Chat message", "zh-CN": "聊天消息"},
        "tokens": 5,
    }


def test_the_check_answers_and_changes_nothing(
    client: TestClient,
    admin: dict[str, str],
    spender: dict[str, str],
    reader: dict[str, str],
    db: Database,
) -> None:
    put_user(client, spender)
    grant_tokens(client, admin, 100)
    held = client.post(
        "/api/v1/users/alice/holds", json={"amount": 30, "idempotency_key": "h"}, headers=spender
    )
    assert held.status_code == 201
    before = _rows(db)
    image = client.post(CHECK, json={"feature": "image"}, headers=reader)
    assert image.status_code == 200, image.text
    assert image.json() == {
        "allowed": True,
        "cost": 40,
        "available": 70,
        "short_by": 0,
        "expires_soonest": None,
        "buy_url": "https://tokens.example/pricing",
        "source": "tokens",
        "covered_left": None,
    }
    three = client.post(CHECK, json={"feature": "image", "quantity": 3}, headers=reader).json()
    assert (three["allowed"], three["cost"], three["available"], three["short_by"]) == (
        False,
        120,
        70,
        50,
    )
    exact = client.post(CHECK, json={"amount": 70}, headers=reader).json()
    assert (exact["allowed"], exact["short_by"]) == (True, 0)
    over = client.post(CHECK, json={"amount": 71}, headers=reader).json()
    assert (over["allowed"], over["short_by"]) == (False, 1)
    problem_of(
        client.post("/api/v1/users/bob/check", json={"amount": 1}, headers=reader), 404, "not_found"
    )
    problem_of(client.post(CHECK, json={"amount": 1}), 401, "unauthorized")
    assert _rows(db) == before


def test_a_signed_in_user_checks_their_own_tokens_only(client: TestClient, db: Database) -> None:
    user = new_user(client)
    mine = client.post(f"/api/v1/users/{user}/check", json={"feature": "chat_message"})
    assert mine.status_code == 200, mine.text
    assert (mine.json()["allowed"], mine.json()["short_by"]) == (False, 5)
    problem_of(client.post(CHECK, json={"amount": 1}), 403, "forbidden")
