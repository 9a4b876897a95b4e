"""Webhook delivery: signatures, retries with backoff, and the misbehaviour switches."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import pytest
import stripe
import uvicorn
from starlette.applications import Starlette
from starlette.testclient import TestClient

from tests.emulator.conftest import SECRET, Harness
from tokenbank.emulator import Emulator, create_app, serve
from tokenbank.emulator.events import signature_header


def _customer_event(emu: Harness) -> str:
    """Make one event happen (a PaymentIntent creation) and return its id."""
    emu.client.v1.payment_intents.create({"amount": 700, "currency": "usd"})
    return emu.client.v1.events.list({"limit": 1}).data[0].id


def test_signature_matches_stripes_scheme() -> None:
    payload = json.dumps({"id": "evt_1", "object": "event"}).encode()
    header = signature_header(payload=payload, secret=SECRET, timestamp=int(time.time()))
    event = stripe.Webhook.construct_event(payload, header, SECRET, tolerance=300)
    assert event.id == "evt_1"
    timestamp, signature = (part.split("=", 1)[1] for part in header.split(","))
    expected = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    assert signature == expected.hexdigest()


def test_failed_deliveries_are_retried_with_backoff(emu: Harness) -> None:
    emu.receiver.fail_next = 2
    started = time.monotonic()
    event_id = _customer_event(emu)
    (record,) = emu.wait_quiet(at_least=1)
    assert record == {
        "event_id": event_id,
        "type": "payment_intent.created",
        "state": "delivered",
        "attempts": 3,
        "last_status": 200,
        "last_error": None,
    }
    assert time.monotonic() - started >= 0.1  # two retry delays of 0.05 s
    assert emu.receiver.requests == 3 and [e["id"] for e in emu.receiver.events] == [event_id]
    assert emu.client.v1.events.retrieve(event_id).pending_webhooks == 0


def test_delivery_fails_after_the_last_retry(emu: Harness) -> None:
    emu.receiver.fail_next = 100
    _customer_event(emu)
    (record,) = emu.wait_quiet(at_least=1)
    assert (record["state"], record["attempts"], record["last_status"]) == ("failed", 4, 500)
    assert record["last_error"] == "HTTP 500"

    emu.emulator.webhook_url = "http://127.0.0.1:9/unreachable"
    emu.receiver.fail_next = 0
    _customer_event(emu)
    records = emu.wait_quiet(at_least=2)
    assert records[1]["state"] == "failed" and records[1]["last_status"] is None
    assert "ConnectError" in records[1]["last_error"]


def test_drop_duplicate_and_config(emu: Harness) -> None:
    config = emu.control("webhooks/config", {"drop": 1, "duplicate": 3})
    assert (config["drop"], config["duplicate"], config["url"]) == (1, 3, emu.webhook_url)
    dropped = _customer_event(emu)
    kept = _customer_event(emu)
    records = emu.wait_quiet(at_least=2)
    assert [(r["event_id"], r["state"]) for r in records] == [
        (dropped, "dropped"),
        (kept, "delivered"),
    ]
    assert records[1]["attempts"] == 3
    assert [e["id"] for e in emu.receiver.events] == [kept, kept, kept]
    assert dropped in [e.id for e in emu.client.v1.events.list().data]
    assert emu.http.get("/_emulator/webhooks/config").json()["drop"] == 0


def test_reorder_holds_until_flush_then_sends_newest_first(emu: Harness) -> None:
    emu.control("webhooks/config", {"reorder": True})
    first, second, third = (_customer_event(emu) for _ in range(3))
    records = emu.wait_quiet(at_least=3)
    assert {r["state"] for r in records} == {"held"} and emu.receiver.events == []
    emu.control("webhooks/config", {"reorder": False})
    assert emu.control("webhooks/flush") == {"flushed": [third, second, first]}
    emu.wait_quiet(at_least=3)
    assert [e["id"] for e in emu.receiver.events] == [third, second, first]


def test_redeliver_signs_again(emu: Harness) -> None:
    event_id = _customer_event(emu)
    emu.wait_quiet(at_least=1)
    record = emu.control(f"events/{event_id}/redeliver")
    assert record["event_id"] == event_id
    (done,) = emu.wait_quiet(at_least=1)
    assert (done["state"], done["attempts"]) == ("delivered", 2)
    assert [e["id"] for e in emu.receiver.events] == [event_id, event_id]
    signatures = [h["stripe-signature"] for h in emu.receiver.headers]
    assert all(s.startswith("t=") and ",v1=" in s for s in signatures)
    assert emu.http.post("/_emulator/events/evt_missing/redeliver").status_code == 404


def test_delay_and_no_webhook_url(emu: Harness) -> None:
    emu.control("webhooks/config", {"delay_ms": 100})
    started = time.monotonic()
    _customer_event(emu)
    emu.wait_quiet(at_least=1)
    assert time.monotonic() - started >= 0.1

    emu.control("reset")
    emu.control("webhooks/config", {"url": None})
    event_id = _customer_event(emu)
    assert emu.http.get("/_emulator/webhooks/deliveries").json() == []
    assert emu.client.v1.events.retrieve(event_id).pending_webhooks == 0
    bad = emu.http.post("/_emulator/webhooks/config", json={"drop": -1})
    assert bad.status_code == 400


def test_shutdown_cancels_pending_deliveries() -> None:
    app = create_app(
        webhook_url="http://127.0.0.1:9/unreachable",
        webhook_secret=SECRET,
        retry_delays=(60,),
    )
    emulator: Emulator = app.state.emulator
    with TestClient(app) as client:
        created = client.post(
            "/v1/payment_intents",
            data={"amount": "500", "currency": "usd"},
            headers={"Authorization": "Bearer sk_test_x"},
        )
        assert created.status_code == 200
        deadline = time.monotonic() + 5
        while emulator.deliveries[next(iter(emulator.deliveries))].attempts < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert emulator.tasks
    assert not emulator.tasks and emulator.http is None
    assert next(iter(emulator.deliveries.values())).state == "pending"


def test_serve_runs_uvicorn(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def run(app: Starlette, **options: Any) -> None:
        seen.update(options, emulator=app.state.emulator)

    monkeypatch.setattr(uvicorn, "run", run)
    serve(host="127.0.0.1", port=12111, webhook_url="http://x/hook", webhook_secret=SECRET)
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 12111)
    assert seen["emulator"].webhook_url == "http://x/hook"
