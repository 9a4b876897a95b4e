"""The process dies at each named fault point (``tokenbank.faults``), as kill -9 would, at
the worst moment: after a commit and before its answer, between a purchase's row and its
Stripe call, between that call and storing its answer. After a restart, the same request
retried with the same key ends with exactly one effect."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.faults.conftest import Service, wait_for
from tests.stripe_emulator import SECRET_KEY

DIED = 137  # os._exit(137), as a process killed by SIGKILL reports itself


def _lost(http: httpx.Client, method: str, path: str, **options: Any) -> None:
    """Send a request whose answer never comes: the process dies before sending it."""
    with pytest.raises(httpx.TransportError):
        http.request(method, path, **options)


def test_a_spend_committed_but_not_answered_is_replayed(service: Service) -> None:
    service.start(faults="spend.committed")
    spend = {"amount": 250, "idempotency_key": "chat-1"}
    with service.http() as http:
        _lost(http, "POST", "/api/v1/users/alice/spend", json=spend)
    assert service.died() == DIED
    assert service.balance() == 9_750  # committed before the process died
    service.restart()
    with service.http() as http:
        again = http.post("/api/v1/users/alice/spend", json=spend)
        assert again.status_code == 201, again.text
        assert again.json()["replayed"] is True and again.json()["balance"] == 9_750
        assert http.post("/api/v1/users/alice/spend", json=spend).json()["replayed"] is True
    assert service.balance() == 9_750
    service.verify()


def test_a_webhook_committed_but_not_answered_credits_once(service: Service) -> None:
    service.start(faults="webhook.committed")
    with service.http() as http:
        started = http.post("/api/v1/users/alice/checkout-sessions", json={"package_id": "plus"})
        assert started.status_code == 201, started.text
    session = started.json()["checkout_session_id"]
    assert service.emulator.pay(session).status_code == 200
    assert service.died() == DIED  # the first event's effects committed, no 200 sent
    assert service.balance() == 12_200
    service.restart()
    for event in service.emulator.events():  # Stripe delivers each again, later
        service.emulator.http.post(f"/_emulator/events/{event['id']}/redeliver")
    deliveries = service.emulator.settle()
    assert deliveries and all(d["state"] == "delivered" for d in deliveries), deliveries
    assert service.balance() == 12_200
    (purchase,) = service.purchases()
    assert purchase.status.value == "paid"
    service.verify()


def _sessions(service: Service) -> list[dict[str, Any]]:
    listed = service.emulator.http.get(
        "/v1/checkout/sessions", headers={"Authorization": f"Bearer {SECRET_KEY}"}
    )
    data: list[dict[str, Any]] = listed.json()["data"]
    return data


def _intents(service: Service) -> list[dict[str, Any]]:
    listed = service.emulator.http.get(
        "/v1/payment_intents", headers={"Authorization": f"Bearer {SECRET_KEY}"}
    )
    data: list[dict[str, Any]] = listed.json()["data"]
    return data


@pytest.mark.parametrize("point", ["purchase.opened", "purchase.created"])
@pytest.mark.parametrize("flow", ["checkout-sessions", "payment-intents"])
def test_a_purchase_interrupted_resumes_with_one_stripe_object(
    service: Service, point: str, flow: str
) -> None:
    """Killed after the purchase's row, or after Stripe made its session (or PaymentIntent)
    but before its id was stored: the retry with the same key reuses the purchase and its
    Stripe idempotency key, so there is one session and one charge."""
    service.start(faults=point)
    body = {"package_id": "plus", "idempotency_key": f"buy-{point}-{flow}"}
    with service.http() as http:
        _lost(http, "POST", f"/api/v1/users/alice/{flow}", json=body)
    assert service.died() == DIED
    made = _sessions(service) if flow == "checkout-sessions" else _intents(service)
    assert len(made) == (1 if point == "purchase.created" else 0)
    service.restart()
    with service.http() as http:
        first = http.post(f"/api/v1/users/alice/{flow}", json=body)
        second = http.post(f"/api/v1/users/alice/{flow}", json=body)
    assert first.status_code == second.status_code == 201, first.text
    assert first.json() == second.json()
    (purchase,) = service.purchases()
    if flow == "checkout-sessions":
        (session,) = _sessions(service)
        assert session["id"] == first.json()["checkout_session_id"]
        assert service.emulator.pay(session["id"]).status_code == 200
    else:
        (intent,) = _intents(service)
        assert intent["id"] == first.json()["payment_intent_id"]
        confirmed = service.emulator.http.post(
            f"/v1/payment_intents/{intent['id']}/confirm",
            data={"payment_method": "pm_card_visa"},
            headers={"Authorization": f"Bearer {SECRET_KEY}"},
        )
        assert confirmed.status_code == 200, confirmed.text
    service.emulator.settle()
    wait_for(lambda: service.balance() == 12_200, what="the purchase to be credited")
    assert [p.status.value for p in service.purchases()] == ["paid"]
    assert purchase.id == service.purchases()[0].id
    service.verify()
