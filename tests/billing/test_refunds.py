"""Refunds and disputes take back the tokens their share of the payment bought."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa
import stripe

from tests.billing.conftest import Store, open_store
from tests.stripe_emulator import SECRET_KEY, EmulatorServer
from tokenbank import billing
from tokenbank.billing.models import disputes
from tokenbank.columns import utcnow
from tokenbank.db import Database


def _intent(store: Store, started: dict[str, Any]) -> str:
    intent = store.purchase(started["purchase_id"])["payment_intent_id"]
    assert isinstance(intent, str)
    return intent


def _refund(store: Store, intent: str, amount: int | None = None) -> None:
    sdk = stripe.StripeClient(SECRET_KEY, base_addresses={"api": store.emulator.url})
    params: dict[str, Any] = {"payment_intent": intent}
    if amount is not None:
        params["amount"] = amount
    sdk.v1.refunds.create(params)  # type: ignore[arg-type]
    store.emulator.settle()


def test_a_full_refund_claws_back_every_token(store: Store) -> None:
    started = store.paid_checkout("plus")
    _refund(store, _intent(store, started))
    balance = store.balance()
    assert (balance["available"], balance["debt"]) == (0, 0)
    purchase = store.purchase(started["purchase_id"])
    assert (purchase["refunded_amount"], purchase["clawed_back_tokens"]) == (2000, 2200)


def test_partial_refunds_claw_back_their_share_once_each(store: Store) -> None:
    started = store.paid_checkout("plus")  # 2,200 tokens for $20.00
    intent = _intent(store, started)
    _refund(store, intent, 500)
    assert store.balance()["available"] == 1650
    _refund(store, intent, 700)
    assert store.balance()["available"] == 880
    _refund(store, intent)  # the rest
    assert store.balance()["available"] == 0
    for event in store.emulator.events():  # every refund event again
        store.emulator.http.post(f"/_emulator/events/{event['id']}/redeliver")
    store.emulator.settle()
    assert store.balance()["available"] == 0


def test_a_refund_after_spending_records_debt(store: Store) -> None:
    started = store.paid_checkout("plus")
    assert store.spend(2000, "llm-1").status_code == 201
    _refund(store, _intent(store, started))
    balance = store.balance()
    assert (balance["available"], balance["debt"]) == (0, 2000)
    store.paid_checkout("starter")  # the debt policy keeps the debt apart
    balance = store.balance()
    assert (balance["available"], balance["debt"]) == (500, 2000)


def test_the_negative_policy_collects_debt_from_the_next_purchase(
    db: Database, emulator_server: EmulatorServer
) -> None:
    with open_store(db, emulator_server, policy="negative") as store:
        store.user()
        started = store.paid_checkout("plus")
        assert store.spend(2000, "llm-1").status_code == 201
        _refund(store, _intent(store, started))
        assert store.balance()["debt"] == 2000
        store.paid_checkout("plus")
        balance = store.balance()
        assert (balance["available"], balance["debt"]) == (200, 0)


def _dispute(store: Store, intent: str, *, inquiry: bool = False) -> str:
    answer = store.emulator.http.post(
        "/_emulator/disputes", json={"payment_intent": intent, "inquiry": inquiry}
    )
    assert answer.status_code == 200, answer.text
    store.emulator.settle()
    dispute_id: str = answer.json()["id"]
    return dispute_id


def _close(store: Store, dispute_id: str, status: str) -> None:
    answer = store.emulator.http.post(
        f"/_emulator/disputes/{dispute_id}/close", json={"status": status}
    )
    assert answer.status_code == 200, answer.text
    store.emulator.settle()


def test_a_dispute_freezes_the_tokens_and_a_win_releases_them(store: Store) -> None:
    started = store.paid_checkout("plus")
    dispute = _dispute(store, _intent(store, started))
    balance = store.balance()
    assert (balance["available"], balance["held"]) == (0, 2200)
    assert store.spend(1, "llm-1").status_code == 402
    _close(store, dispute, "won")
    balance = store.balance()
    assert (balance["available"], balance["held"]) == (2200, 0)
    for event in store.emulator.events():
        store.emulator.http.post(f"/_emulator/events/{event['id']}/redeliver")
    store.emulator.settle()
    assert store.balance()["available"] == 2200  # never frozen again, nor clawed back


def test_a_lost_dispute_claws_back_once(store: Store) -> None:
    started = store.paid_checkout("plus")
    assert store.spend(200, "llm-1").status_code == 201
    dispute = _dispute(store, _intent(store, started))
    assert store.balance()["held"] == 2000  # what was left to freeze
    _close(store, dispute, "lost")
    balance = store.balance()
    assert (balance["available"], balance["held"], balance["debt"]) == (0, 0, 200)
    for event in store.emulator.events():
        store.emulator.http.post(f"/_emulator/events/{event['id']}/redeliver")
    store.emulator.settle()
    balance = store.balance()
    assert (balance["available"], balance["debt"]) == (0, 200)
    assert store.purchase(started["purchase_id"])["clawed_back_tokens"] == 2200


def test_a_refund_during_an_open_dispute_takes_the_frozen_tokens(store: Store) -> None:
    started = store.paid_checkout("plus")
    intent = _intent(store, started)
    dispute = _dispute(store, intent, inquiry=True)  # an inquiry: refunds are still possible
    assert store.balance()["held"] == 2200
    _refund(store, intent, 1000)  # half: 1,100 tokens back, the other half stays frozen
    balance = store.balance()
    assert (balance["available"], balance["held"], balance["debt"]) == (0, 1100, 0)
    _close(store, dispute, "won")
    balance = store.balance()
    assert (balance["available"], balance["held"], balance["debt"]) == (1100, 0, 0)


def test_the_api_cannot_end_a_freeze(store: Store) -> None:
    started = store.paid_checkout("plus")
    _dispute(store, _intent(store, started))
    with store.db.read() as conn:
        hold_id = conn.execute(sa.select(disputes.c.hold_id)).scalar_one()
    for action, body in (("void", None), ("post", {"amount": 10})):
        answer = store.api.post(f"/api/v1/holds/{hold_id}/{action}", json=body)
        assert (answer.status_code, answer.json()["code"]) == (409, "hold_frozen")
    assert store.balance()["held"] == 2200


def test_reconcile_closes_a_dispute_whose_events_were_lost(store: Store) -> None:
    started = store.paid_checkout("plus")
    dispute = _dispute(store, _intent(store, started))
    store.emulator.configure(drop=100)
    _close(store, dispute, "lost")
    assert store.balance()["held"] == 2200  # nobody told us
    # Long after the dispute opened: it is outside any window, but still open here.
    result = billing.reconcile(
        store.db, store.shop.stripe, since=utcnow() + timedelta(minutes=5), policy="debt"
    )
    assert [o.purchase.id for o in result.fixed if o.purchase] == [started["purchase_id"]]
    balance = store.balance()
    assert (balance["available"], balance["held"]) == (0, 0)
