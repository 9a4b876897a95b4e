"""The emulated account kept in a file: a restarted emulator goes on where it stopped, as a
Stripe account outlives a restart of anything."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import stripe

from tests.emulator.conftest import SECRET, Receiver, serving
from tokenbank.emulator import create_app
from tokenbank.emulator.disk import restore, snapshot
from tokenbank.emulator.state import Emulator

CARD = {"card_number": "4242424242424242", "expiry": "12 / 40", "cvc": "123"}


def test_a_restarted_emulator_keeps_its_account(tmp_path: Path) -> None:
    state = tmp_path / "stripe.json"
    with serving(create_app(state=state)) as url:
        client = stripe.StripeClient("sk_test_disk", base_addresses={"api": url})
        paid = client.v1.checkout.sessions.create(
            {
                "mode": "payment",
                "line_items": [
                    {
                        "price_data": {
                            "currency": "usd",
                            "unit_amount": 500,
                            "product_data": {"name": "Starter"},
                        },
                        "quantity": 1,
                    }
                ],
                "success_url": "https://shop.example/ok",
                "cancel_url": "https://shop.example/cancel",
            },
            {"idempotency_key": "first"},
        )
        assert paid.url is not None
        assert httpx.post(paid.url, data=CARD).status_code in (200, 303)
        open_one = client.v1.checkout.sessions.create(
            {
                "mode": "payment",
                "line_items": [{"price_data": paid_price(), "quantity": 1}],
                "success_url": "https://shop.example/ok",
                "cancel_url": "https://shop.example/cancel",
            }
        )
    assert json.loads(state.read_text())["format"] == 1
    with serving(create_app(state=state)) as url:
        client = stripe.StripeClient("sk_test_disk", base_addresses={"api": url})
        again = client.v1.checkout.sessions.retrieve(paid.id)
        assert (again.status, again.payment_status) == ("complete", "paid")
        intent = client.v1.payment_intents.retrieve(str(again.payment_intent))
        assert intent.status == "succeeded"
        # Its checkout link still works, and an idempotent retry gets the same answer.
        assert open_one.url is not None
        page = httpx.get(open_one.url.replace(open_one.url.split("/checkout/")[0], url))
        assert page.status_code == 200 and 'name="card_number"' in page.text
        retried = client.v1.checkout.sessions.create(
            {
                "mode": "payment",
                "line_items": [
                    {
                        "price_data": {
                            "currency": "usd",
                            "unit_amount": 500,
                            "product_data": {"name": "Starter"},
                        },
                        "quantity": 1,
                    }
                ],
                "success_url": "https://shop.example/ok",
                "cancel_url": "https://shop.example/cancel",
            },
            {"idempotency_key": "first"},
        )
        assert retried.id == paid.id
        # A refund of the kept charge works too.
        refund = client.v1.refunds.create({"payment_intent": intent.id})
        assert refund.status == "succeeded"


def paid_price() -> Any:
    return {"currency": "usd", "unit_amount": 700, "product_data": {"name": "Plus"}}


def test_a_snapshot_restores_every_store() -> None:
    """Whatever the account holds comes back equal (and a delivery cut short is failed, so
    reconcile, not a retry that will never come, is what finds it)."""
    em = Emulator()
    em.products["prod_1"] = {"id": "prod_1", "object": "product", "metadata": {"a": "b"}}
    em.hidden.add("prod_1")
    em.payers["cs_test_1"] = {"email": "payer@example.com", "name": None}
    restored = Emulator()
    restore(restored, snapshot(em))
    assert restored.products == em.products and restored.hidden == {"prod_1"}
    assert restored.payers == {"cs_test_1": {"email": "payer@example.com", "name": None}}
    assert snapshot(restored) == snapshot(em)


def test_events_on_their_way_when_it_stopped_are_sent_after_a_restart(
    tmp_path: Path, receiver: Receiver, receiver_url: str
) -> None:
    """As Stripe goes on retrying: an event not yet delivered when the emulator stopped is
    delivered once it is back (the endpoint was down meanwhile)."""
    state = tmp_path / "stripe.json"
    receiver.reset()
    app = create_app(
        state=state, webhook_url=receiver_url, webhook_secret=SECRET, retry_delays=(30,)
    )
    with serving(app) as url:
        receiver.fail_next = 1  # the first attempt fails; the retry is 30 s away
        client = stripe.StripeClient("sk_test_disk", base_addresses={"api": url})
        client.v1.payment_intents.create({"amount": 500, "currency": "usd"})
        deadline = time.monotonic() + 5
        while receiver.requests < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    assert receiver.events == []
    with serving(create_app(state=state, webhook_url=receiver_url, webhook_secret=SECRET)):
        deadline = time.monotonic() + 5
        while not receiver.events:
            assert time.monotonic() < deadline, "the pending event was never sent again"
            time.sleep(0.02)
    assert receiver.types() == ["payment_intent.created"]


def test_an_unreadable_account_file_is_moved_aside_not_fatal(tmp_path: Path) -> None:
    state = tmp_path / "stripe.json"
    state.write_text('{"format": 1, "products": {"prod_1": ')  # cut off mid-write
    with serving(create_app(state=state)) as url:
        assert httpx.get(f"{url}/_emulator/health").status_code == 200
    assert (tmp_path / "stripe.json.unreadable").read_text().startswith('{"format": 1')
    assert json.loads(state.read_text())["products"] == {}
