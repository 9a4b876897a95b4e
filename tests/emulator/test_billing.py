"""Stripe Billing in the emulator, through the SDK: subscriptions from Checkout, renewals as
time moves, a card that fails them, cancelling, and the shapes of the current API version."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest
import stripe

from tests.emulator.conftest import Harness

DAY = 86400


def _plan(emu: Harness, *, amount: int = 2900, interval: str = "month") -> str:
    product = emu.client.v1.products.create({"name": "Pro"})
    price = emu.client.v1.prices.create(
        {
            "product": product.id,
            "unit_amount": amount,
            "currency": "usd",
            "recurring": {"interval": interval},
        }
    )
    return price.id


def _subscribe(
    emu: Harness, price: str, *, card: str = "4242424242424242", trial_days: int | None = None
) -> dict[str, Any]:
    data: dict[str, Any] = {"metadata": {"user_id": "alice"}}
    if trial_days:
        data["trial_period_days"] = trial_days
    session = emu.client.v1.checkout.sessions.create(
        {  # type: ignore[arg-type]
            "mode": "subscription",
            "line_items": [{"price": price, "quantity": 1}],
            "success_url": "https://tokens.example/ok",
            "customer_email": "alice@example.com",
            "client_reference_id": "alice",
            "subscription_data": data,
        }
    )
    assert session.mode == "subscription" and session.subscription is None
    paid: dict[str, Any] = emu.control(f"checkout_sessions/{session.id}/pay", {"card": card})
    return paid


def _invoices(emu: Harness, subscription: str) -> list[Any]:
    listed = emu.client.v1.invoices.list({"subscription": subscription, "limit": 100})
    return list(reversed(listed.data))  # oldest first


def test_a_paid_subscription_checkout_makes_the_subscription_and_its_paid_invoice(
    emu: Harness,
) -> None:
    price = _plan(emu)
    paid = _subscribe(emu, price)
    session, sub_id = paid["checkout_session"], paid["subscription"]["id"]
    assert (session["status"], session["payment_status"]) == ("complete", "paid")
    sub = emu.client.v1.subscriptions.retrieve(sub_id)
    assert (sub.status, sub.cancel_at_period_end, sub.cancel_at) == ("active", False, None)
    assert sub.billing_mode.type == "flexible"
    assert sub.metadata.to_dict() == {"user_id": "alice"}
    (item,) = sub["items"].data
    assert item.price.id == price
    assert item.current_period_end - item.current_period_start >= 28 * DAY
    assert "current_period_end" not in sub  # periods live on the items
    (invoice,) = _invoices(emu, sub_id)
    assert (invoice.status, invoice.billing_reason, invoice.amount_paid) == (
        "paid",
        "subscription_create",
        2900,
    )
    assert invoice.parent.subscription_details.subscription == sub_id
    assert invoice.parent.subscription_details.metadata.to_dict() == {"user_id": "alice"}
    (line,) = invoice.lines.data
    assert line.pricing.price_details.price == price
    assert (line.period.start, line.period.end) == (
        item.current_period_start,
        item.current_period_end,
    )
    assert line.parent.subscription_item_details.subscription_item == item.id
    assert session["invoice"] == invoice.id and session["customer"] == sub.customer
    types = [e.type for e in reversed(emu.client.v1.events.list({"limit": 100}).data)]
    assert types.index("customer.subscription.created") < types.index("invoice.paid")
    assert types.index("invoice.paid") < types.index("checkout.session.completed")
    assert "customer.subscription.updated" in types
    payments = emu.client.v1.invoice_payments.list({"invoice": invoice.id})
    (payment,) = payments.data
    assert payment.status == "paid" and payment.payment.type == "payment_intent"


def test_a_year_of_monthly_renewals_by_moving_the_clock(emu: Harness) -> None:
    sub_id = _subscribe(emu, _plan(emu))["subscription"]["id"]
    for _ in range(12):
        emu.control("clock/advance", {"seconds": 31 * DAY})
    invoices = _invoices(emu, sub_id)
    assert len(invoices) == 13
    assert [i.billing_reason for i in invoices[1:]] == ["subscription_cycle"] * 12
    assert {i.status for i in invoices} == {"paid"}
    # Each renewal buys the period that follows the last: no gap, no overlap.
    periods = [(i.lines.data[0].period.start, i.lines.data[0].period.end) for i in invoices]
    assert all(a[1] == b[0] for a, b in itertools.pairwise(periods))
    assert len({i.id for i in invoices}) == 13


def test_a_yearly_plan_renews_once_a_year(emu: Harness) -> None:
    sub_id = _subscribe(emu, _plan(emu, amount=29000, interval="year"))["subscription"]["id"]
    emu.control("clock/advance", {"seconds": 200 * DAY})
    assert len(_invoices(emu, sub_id)) == 1
    emu.control("clock/advance", {"seconds": 200 * DAY})
    invoices = _invoices(emu, sub_id)
    assert [(i.billing_reason, i.amount_paid) for i in invoices] == [
        ("subscription_create", 29000),
        ("subscription_cycle", 29000),
    ]


def test_a_card_that_fails_renewals_makes_it_past_due_and_paying_later_recovers(
    emu: Harness,
) -> None:
    sub_id = _subscribe(emu, _plan(emu))["subscription"]["id"]
    emu.client.v1.subscriptions.update(
        sub_id, {"default_payment_method": "pm_card_chargeCustomerFail"}
    )
    emu.control("clock/advance", {"seconds": 32 * DAY})
    sub = emu.client.v1.subscriptions.retrieve(sub_id)
    assert sub.status == "past_due"
    renewal = _invoices(emu, sub_id)[-1]
    assert (renewal.status, renewal.attempt_count, renewal.amount_paid) == ("open", 1, 0)
    types = [e.type for e in emu.client.v1.events.list({"limit": 100}).data]
    assert "invoice.payment_failed" in types
    with pytest.raises(stripe.CardError):
        emu.client.v1.invoices.pay(renewal.id)
    paid = emu.client.v1.invoices.pay(renewal.id, {"payment_method": "pm_card_visa"})
    assert paid.status == "paid" and paid.id == renewal.id
    assert emu.client.v1.subscriptions.retrieve(sub_id).status == "active"


def test_a_card_that_fails_is_refused_at_checkout(emu: Harness) -> None:
    price = _plan(emu)
    with pytest.raises(Exception, match="declined"):
        _subscribe(emu, price, card="4000000000000341")
    assert emu.client.v1.subscriptions.list().data == []


def test_cancel_at_period_end_ends_it_at_the_boundary_without_a_renewal(emu: Harness) -> None:
    sub_id = _subscribe(emu, _plan(emu))["subscription"]["id"]
    updated = emu.client.v1.subscriptions.update(sub_id, {"cancel_at_period_end": True})
    assert (updated.status, updated.cancel_at_period_end) == ("active", True)
    assert updated.canceled_at is not None
    emu.control("clock/advance", {"seconds": 40 * DAY})
    sub = emu.client.v1.subscriptions.retrieve(sub_id)
    assert sub.status == "canceled" and sub.ended_at is not None
    assert len(_invoices(emu, sub_id)) == 1  # no renewal
    types = [e.type for e in emu.client.v1.events.list({"limit": 100}).data]
    assert "customer.subscription.deleted" in types
    assert emu.client.v1.subscriptions.list().data == []  # canceled ones only on "all"
    assert [s.id for s in emu.client.v1.subscriptions.list({"status": "all"}).data] == [sub_id]


def test_a_subscription_cancelled_now_ends_at_once(emu: Harness) -> None:
    sub_id = _subscribe(emu, _plan(emu))["subscription"]["id"]
    ended = emu.client.v1.subscriptions.cancel(sub_id)
    assert ended.status == "canceled"
    emu.control("clock/advance", {"seconds": 40 * DAY})
    assert len(_invoices(emu, sub_id)) == 1


def test_a_trial_bills_nothing_then_the_first_period_at_its_end(emu: Harness) -> None:
    paid = _subscribe(emu, _plan(emu), trial_days=7)
    sub_id = paid["subscription"]["id"]
    assert paid["checkout_session"]["payment_status"] == "no_payment_required"
    sub = emu.client.v1.subscriptions.retrieve(sub_id)
    assert sub.status == "trialing" and sub.trial_end is not None
    (first,) = _invoices(emu, sub_id)
    assert (first.status, first.amount_paid, first.billing_reason) == (
        "paid",
        0,
        "subscription_create",
    )
    emu.control("clock/advance", {"seconds": 8 * DAY})
    assert emu.client.v1.subscriptions.retrieve(sub_id).status == "active"
    invoices = _invoices(emu, sub_id)
    assert [(i.billing_reason, i.amount_paid) for i in invoices] == [
        ("subscription_create", 0),
        ("subscription_cycle", 2900),
    ]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"mode": "subscription", "line_items": []}, "line_items"),
        ({"mode": "setup"}, "mode"),
        ({"subscription_data": {"trial_period_days": 0}}, "subscription_data[trial_period_days]"),
        ({"subscription_data": {"trial_end": 1}}, "subscription_data[trial_end]"),
        ({"payment_intent_data": {"description": "x"}}, "payment_intent_data"),
    ],
)
def test_a_subscription_session_the_emulator_cannot_sell_is_refused(
    emu: Harness, body: dict[str, Any], param: str
) -> None:
    price = _plan(emu)
    params: dict[str, Any] = {
        "mode": "subscription",
        "line_items": [{"price": price, "quantity": 1}],
        "success_url": "https://tokens.example/ok",
        **body,
    }
    with pytest.raises(stripe.InvalidRequestError) as refused:
        emu.client.v1.checkout.sessions.create(params)  # type: ignore[arg-type]
    assert (refused.value.param or "").startswith(param.split("[", 1)[0])


def test_the_clock_moves_forward_only(emu: Harness) -> None:
    answer = emu.http.post("/_emulator/clock/advance", json={"seconds": 0})
    assert answer.status_code == 400


def test_test_clocks_advance_through_the_sdk_and_play_the_renewals(emu: Harness) -> None:
    clocks = emu.client.v1.test_helpers.test_clocks
    start = int(time.time()) + 60
    clock = clocks.create({"frozen_time": start, "name": "renewals"})
    assert (clock.object, clock.status, clock.frozen_time) == (
        "test_helpers.test_clock",
        "ready",
        start,
    )
    price = _plan(emu)
    sub_id = _subscribe(emu, price)["subscription"]["id"]
    advanced = clocks.advance(clock.id, {"frozen_time": start + 31 * DAY + 7200})
    assert advanced.status == "advancing"
    advancing = advanced.status_details.advancing
    assert advancing is not None and advancing.target_frozen_time == start + 31 * DAY + 7200
    assert clocks.retrieve(clock.id).status == "ready"
    reasons = [(i.billing_reason, i.status) for i in _invoices(emu, sub_id)]
    assert reasons == [("subscription_create", "paid"), ("subscription_cycle", "paid")]
    with pytest.raises(stripe.InvalidRequestError, match="later than"):
        clocks.advance(clock.id, {"frozen_time": start})
    with pytest.raises(stripe.InvalidRequestError, match="two intervals"):
        clocks.advance(clock.id, {"frozen_time": start + 200 * DAY})
    assert [c.id for c in clocks.list().data] == [clock.id]
    assert clocks.delete(clock.id).deleted is True
    emu.wait_quiet(at_least=20)
    types = emu.receiver.types()
    assert "test_helpers.test_clock.advancing" in types and "test_helpers.test_clock.ready" in types
