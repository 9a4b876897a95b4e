"""The API's holds, on SQLite and PostgreSQL."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.web.api.calls import grant_tokens, problem_of, put_user


def test_holds_post_void_and_refund(
    client: TestClient, admin: dict[str, str], spender: dict[str, str]
) -> None:
    put_user(client, spender)
    grant_tokens(client, admin, 100)
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
    problem_of(
        client.post(f"/api/v1/holds/{hold_id}/void", headers=spender), 409, "hold_not_pending"
    )
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
    problem_of(too_much, 409, "refund_exceeds_spend")
    problem_of(client.post("/api/v1/holds/999999/void", headers=spender), 404, "not_found")
