"""Health, readiness, metrics and the docs (web/operations.py)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.web.api.calls import problem_of, put_user


def test_operations_endpoints(client: TestClient, spender: dict[str, str]) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready"
    assert ready["warnings"] == [
        "payments are not configured (STRIPE_SECRET_KEY): nothing can be bought",
        "no SMTP server (TOKENBANK_SMTP_URL): mail is kept in the outbox, unsent",
    ]
    put_user(client, spender)
    client.post(
        "/api/v1/users/alice/spend", json={"amount": 1, "idempotency_key": "k"}, headers=spender
    )
    metrics = client.get("/metrics").text
    assert (
        'tokenbank_http_requests_total{method="PUT",route="/api/v1/users/{user_id}",'
        'status="200"} 1.0' in metrics
    )
    assert 'tokenbank_refusals_total{code="insufficient_tokens"} 1.0' in metrics
    assert 'tokenbank_mail{status="failed"} 0.0' in metrics
    response = client.get("/healthz", headers={"x-request-id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    assert len(client.get("/healthz").headers["x-request-id"]) == 32
    problem_of(client.get("/nowhere"), 404, "not_found")
    problem_of(client.delete("/healthz"), 405, "method_not_allowed")
    schema = client.get("/openapi.json").json()
    assert "/api/v1/users/{user_id}/spend" in schema["paths"]
