"""Paying: the hosted Checkout page, PaymentIntents, Stripe.js calls, refunds, disputes."""

from __future__ import annotations

import time
from typing import Any

import pytest
import stripe

from tests.emulator.conftest import Harness, plain
from tokenbank.emulator.pages import format_amount

CARD = {"expiry": "12 / 40", "cvc": "123", "email": "payer@example.com"}


def _session(emu: Harness, **extra: Any) -> stripe.checkout.Session:
    price = emu.client.v1.prices.create(
        {"product_data": {"name": "Starter"}, "unit_amount": 2000, "currency": "usd"}
    )
    params: Any = {
        "mode": "payment",
        "line_items": [{"price": price.id, "quantity": 1}],
        "success_url": "https://shop.example/ok?session={CHECKOUT_SESSION_ID}",
        "cancel_url": "https://shop.example/cancel",
        **extra,
    }
    return emu.client.v1.checkout.sessions.create(params)


def _pay(emu: Harness, session: stripe.checkout.Session, number: str, **form: str) -> Any:
    assert session.url is not None
    return emu.http.post(session.url, data={**CARD, "card_number": number, **form})


def test_hosted_checkout_pays_and_sends_signed_events_in_order(emu: Harness) -> None:
    session = emu.client.v1.checkout.sessions.create(
        {
            "mode": "payment",
            "line_items": [
                {
                    "price_data": {
                        "currency": "usd",
                        "unit_amount": 1000,
                        "product_data": {"name": "Starter <tokens>"},
                    },
                    "quantity": 2,
                }
            ],
            "success_url": "https://shop.example/ok?session={CHECKOUT_SESSION_ID}",
            "cancel_url": "https://shop.example/cancel",
            "client_reference_id": "user-7",
            "metadata": {"purchase_id": "7"},
            "payment_intent_data": {"metadata": {"purchase_id": "7"}},
        }
    )
    assert (session.status, session.payment_status, session.payment_intent) == (
        "open",
        "unpaid",
        None,
    )
    assert (session.amount_total, session.amount_subtotal, session.currency) == (2000, 2000, "usd")
    assert session.url == f"{emu.url}/checkout/{session.id}"

    page = emu.http.get(session.url)
    assert page.status_code == 200
    for text in ("$20.00", "Starter &lt;tokens&gt;", 'for="card-number">Card number</label>'):
        assert text in page.text
    for label in ('for="card-expiry">Expiry', 'for="card-cvc">CVC', ">Pay</button>"):
        assert label in page.text
    assert 'href="https://shop.example/cancel"' in page.text and "4242 4242 4242 4242" in page.text

    paid = _pay(emu, session, "4242 4242 4242 4242")
    assert paid.status_code == 303
    assert paid.headers["location"] == f"https://shop.example/ok?session={session.id}"

    done = emu.client.v1.checkout.sessions.retrieve(session.id, {"expand": ["payment_intent"]})
    assert (done.status, done.payment_status) == ("complete", "paid")
    intent = done.payment_intent
    assert isinstance(intent, stripe.PaymentIntent)
    assert (intent.status, intent.amount_received) == ("succeeded", 2000)
    assert plain(intent.metadata) == {"purchase_id": "7"}
    assert isinstance(intent.latest_charge, str) and intent.latest_charge.startswith("ch_")
    assert done.customer_details is not None and done.customer_details.email == "payer@example.com"

    expected = [
        "payment_intent.created",
        "charge.succeeded",
        "payment_intent.succeeded",
        "checkout.session.completed",
    ]
    records = emu.wait_quiet(at_least=4)
    assert [r["type"] for r in records] == expected
    assert all(r["state"] == "delivered" and r["attempts"] == 1 for r in records)
    assert emu.receiver.types() == expected and emu.receiver.bad_signatures == 0
    completed = emu.receiver.events[-1]
    assert completed["data"]["object"]["id"] == session.id
    assert completed["data"]["object"]["client_reference_id"] == "user-7"
    assert completed["api_version"] == "2026-10-28.endive"
    headers = emu.receiver.headers[-1]
    assert headers["content-type"] == "application/json; charset=utf-8"
    assert headers["user-agent"] == "Stripe/1.0 (+https://stripe.com/docs/webhooks)"
    listed = emu.client.v1.events.list()
    assert [e.type for e in listed.data] == list(reversed(expected))

    again = emu.http.get(session.url)
    assert "complete" in again.text and 'name="card_number"' not in again.text


@pytest.mark.parametrize(
    ("number", "form", "message", "status"),
    [
        ("4000 0000 0000 0002", {}, "Your card was declined.", 402),
        ("4000000000009995", {}, "Your card has insufficient funds.", 402),
        ("4242 4242 4242 4241", {}, "Your card number is invalid.", 400),
        ("4111 1111 1111 1111", {}, "test card", 400),
        ("4242 4242 4242 4242", {"expiry": "01 / 20"}, "expiration date is in the past", 400),
        ("4242 4242 4242 4242", {"cvc": ""}, "security code is incomplete", 400),
    ],
)
def test_hosted_checkout_shows_card_problems(
    emu: Harness, number: str, form: dict[str, str], message: str, status: int
) -> None:
    session = _session(emu)
    response = _pay(emu, session, number, **form)
    assert response.status_code == status
    assert message in response.text and 'role="alert"' in response.text
    assert 'name="card_number"' in response.text
    assert emu.client.v1.checkout.sessions.retrieve(session.id).status == "open"


def test_declined_then_paid_session_reuses_its_payment_intent(emu: Harness) -> None:
    session = _session(emu)
    assert _pay(emu, session, "4000000000000002").status_code == 402
    assert _pay(emu, session, "4242424242424242").status_code == 303
    emu.wait_quiet()
    assert emu.receiver.types() == [
        "payment_intent.created",
        "charge.failed",
        "payment_intent.payment_failed",
        "charge.succeeded",
        "payment_intent.succeeded",
        "checkout.session.completed",
    ]
    assert len(emu.client.v1.payment_intents.list().data) == 1


def test_expired_session_page_and_expire_endpoint(emu: Harness) -> None:
    session = _session(emu)
    expired = emu.client.v1.checkout.sessions.expire(session.id)
    assert expired.status == "expired"
    with pytest.raises(stripe.InvalidRequestError):
        emu.client.v1.checkout.sessions.expire(session.id)
    assert session.url is not None
    page = emu.http.get(session.url)
    assert "expired" in page.text and 'name="card_number"' not in page.text
    assert _pay(emu, session, "4242424242424242").status_code == 409
    emu.wait_quiet(at_least=1)
    assert emu.receiver.types() == ["checkout.session.expired"]
    assert emu.http.get(f"{emu.url}/checkout/cs_test_nope").status_code == 404


def test_payment_intent_declines_raise_card_errors(emu: Harness) -> None:
    intent = emu.client.v1.payment_intents.create(
        {"amount": 1500, "currency": "usd", "metadata": {"purchase_id": "9"}}
    )
    assert intent.status == "requires_payment_method"
    assert intent.client_secret is not None
    assert intent.client_secret.startswith(f"{intent.id}_secret_")
    for method, decline in (
        ("pm_card_chargeDeclined", "generic_decline"),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"),
    ):
        with pytest.raises(stripe.CardError) as declined:
            emu.client.v1.payment_intents.confirm(intent.id, {"payment_method": method})
        assert (declined.value.code, declined.value.http_status) == ("card_declined", 402)
        assert declined.value.error is not None
        assert declined.value.error.decline_code == decline
    failed = emu.client.v1.payment_intents.retrieve(intent.id)
    assert failed.status == "requires_payment_method"
    assert failed.last_payment_error is not None
    assert failed.last_payment_error.decline_code == "insufficient_funds"

    paid = emu.client.v1.payment_intents.confirm(
        intent.id, {"payment_method": "pm_card_visa", "expand": ["latest_charge"]}
    )
    assert (paid.status, paid.amount_received, paid.last_payment_error) == ("succeeded", 1500, None)
    charge = paid.latest_charge
    assert isinstance(charge, stripe.Charge)
    assert (charge.paid, charge.captured, charge.amount_refunded, charge.refunded) == (
        True,
        True,
        0,
        False,
    )
    assert charge.payment_intent == intent.id and charge.balance_transaction is not None
    with pytest.raises(stripe.InvalidRequestError):
        emu.client.v1.payment_intents.confirm(intent.id, {"payment_method": "pm_card_visa"})
    charges = emu.client.v1.charges.list({"payment_intent": intent.id})
    assert [c.status for c in charges.data] == ["succeeded", "failed", "failed"]

    types = [e.type for e in emu.client.v1.events.list({"limit": 100}).data]
    assert types.count("payment_intent.payment_failed") == 2
    assert types[:3] == [
        "payment_intent.succeeded",
        "charge.succeeded",
        "payment_intent.payment_failed",
    ]
    created = emu.client.v1.events.list({"type": "payment_intent.created"}).data[0]
    snapshot = plain(created.data.object)
    assert snapshot["status"] == "requires_payment_method"  # a snapshot, not the live object
    assert emu.client.v1.events.retrieve(created.id).id == created.id
    assert created.request is not None and str(created.request.id).startswith("req_")

    canceled = emu.client.v1.payment_intents.create(
        {"amount": 100, "currency": "usd", "allowed_payment_method_types": ["card"]}
    )
    assert emu.client.v1.payment_intents.cancel(canceled.id).status == "canceled"


def test_publishable_key_confirms_with_client_secret_only(emu: Harness) -> None:
    intent = emu.client.v1.payment_intents.create(
        {"amount": 900, "currency": "usd", "automatic_payment_methods": {"enabled": True}}
    )
    url = f"/v1/payment_intents/{intent.id}/confirm"
    browser = {"Authorization": "Bearer pk_test_browser", "Origin": "https://shop.example"}
    preflight = emu.http.options(url, headers=browser)
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "Authorization" in preflight.headers["access-control-allow-headers"]

    refused = emu.http.post(url, headers=browser, data={"payment_method": "pm_card_visa"})
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "client_secret"
    wrong = emu.http.post(
        url, headers=browser, data={"payment_method": "pm_card_visa", "client_secret": "x"}
    )
    assert wrong.status_code == 400

    declined = emu.http.post(
        url,
        headers=browser,
        data={"payment_method": "pm_card_chargeDeclined", "client_secret": intent.client_secret},
    )
    assert declined.status_code == 402
    assert declined.json()["error"]["decline_code"] == "generic_decline"
    assert "metadata" not in declined.json()["error"]["payment_intent"]

    confirmed = emu.http.post(
        url,
        headers=browser,
        data={"payment_method": "pm_card_visa", "client_secret": intent.client_secret},
    )
    assert confirmed.status_code == 200 and confirmed.headers["access-control-allow-origin"] == "*"
    assert confirmed.json()["status"] == "succeeded" and "metadata" not in confirmed.json()

    script = emu.http.get("/v3/")
    assert script.headers["content-type"].startswith("application/javascript")
    assert "confirmCardPayment" in script.text and '"4000000000009995"' in script.text
    assert emu.http.get("/v3").status_code == 200


def test_refunds_partial_then_full(emu: Harness) -> None:
    intent = emu.client.v1.payment_intents.create(
        {"amount": 1000, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True}
    )
    assert intent.status == "succeeded" and isinstance(intent.latest_charge, str)
    partial = emu.client.v1.refunds.create(
        {"payment_intent": intent.id, "amount": 300, "reason": "requested_by_customer"}
    )
    assert (partial.status, partial.amount, partial.charge) == (
        "succeeded",
        300,
        intent.latest_charge,
    )
    charge = emu.client.v1.charges.retrieve(intent.latest_charge)
    assert (charge.amount_refunded, charge.refunded) == (300, False)
    with pytest.raises(stripe.InvalidRequestError) as too_much:
        emu.client.v1.refunds.create({"charge": charge.id, "amount": 701})
    assert too_much.value.code == "amount_too_large"
    rest = emu.client.v1.refunds.create({"charge": charge.id, "metadata": {"why": "all"}})
    assert rest.amount == 700 and rest.payment_intent == intent.id
    charge = emu.client.v1.charges.retrieve(charge.id)
    assert (charge.amount_refunded, charge.refunded) == (1000, True)
    with pytest.raises(stripe.InvalidRequestError) as again:
        emu.client.v1.refunds.create({"payment_intent": intent.id})
    assert again.value.code == "charge_already_refunded"
    listed = emu.client.v1.refunds.list({"payment_intent": intent.id})
    assert [r.id for r in listed.data] == [rest.id, partial.id]
    assert emu.client.v1.refunds.retrieve(partial.id).amount == 300

    emu.wait_quiet()
    refunded = [e for e in emu.receiver.events if e["type"] == "charge.refunded"]
    assert [e["data"]["object"]["amount_refunded"] for e in refunded] == [300, 1000]
    assert refunded[1]["data"]["previous_attributes"] == {"amount_refunded": 300, "refunded": False}
    assert emu.receiver.types()[-4:] == [
        "refund.created",
        "charge.refunded",
        "refund.created",
        "charge.refunded",
    ]


@pytest.mark.parametrize("outcome", ["won", "lost"])
def test_disputes_open_and_close(emu: Harness, outcome: str) -> None:
    intent = emu.client.v1.payment_intents.create(
        {"amount": 2500, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True}
    )
    dispute = emu.control("disputes", {"payment_intent": intent.id})
    assert (dispute["status"], dispute["amount"], dispute["reason"]) == (
        "needs_response",
        2500,
        "fraudulent",
    )
    assert isinstance(intent.latest_charge, str)
    assert emu.client.v1.charges.retrieve(intent.latest_charge).disputed is True
    with pytest.raises(stripe.InvalidRequestError) as blocked:
        emu.client.v1.refunds.create({"payment_intent": intent.id})
    assert blocked.value.code == "charge_disputed"
    closed = emu.control(f"disputes/{dispute['id']}/close", {"status": outcome})
    assert closed["status"] == outcome
    assert emu.client.v1.disputes.retrieve(dispute["id"]).status == outcome
    assert [d.id for d in emu.client.v1.disputes.list({"payment_intent": intent.id}).data] == [
        dispute["id"]
    ]
    emu.wait_quiet()
    disputes = [t for t in emu.receiver.types() if t.startswith("charge.dispute.")]
    expected = ["charge.dispute.created", "charge.dispute.funds_withdrawn"]
    if outcome == "won":
        expected.append("charge.dispute.funds_reinstated")
    assert disputes == [*expected, "charge.dispute.closed"]


@pytest.mark.parametrize("outcome", ["succeeded", "failed"])
def test_async_payments(emu: Harness, outcome: str) -> None:
    session = _session(emu, payment_intent_data={"metadata": {"purchase_id": "3"}})
    result = emu.control(
        f"checkout_sessions/{session.id}/pay", {"card": "4242424242424242", "async": outcome}
    )
    assert result["checkout_session"]["status"] == "complete"
    assert result["payment_intent"]["metadata"] == {"purchase_id": "3"}
    emu.wait_quiet()
    types = emu.receiver.types()
    completed = types.index("checkout.session.completed")
    first = emu.receiver.events[completed]["data"]["object"]
    assert first["payment_status"] == "unpaid"
    final = emu.client.v1.checkout.sessions.retrieve(session.id)
    if outcome == "succeeded":
        assert types[-1] == "checkout.session.async_payment_succeeded"
        assert final.payment_status == "paid"
        assert result["payment_intent"]["status"] == "succeeded"
    else:
        assert types[-1] == "checkout.session.async_payment_failed"
        assert final.payment_status == "unpaid"
        assert result["payment_intent"]["status"] == "requires_payment_method"


def test_pay_helper_reports_declines(emu: Harness) -> None:
    session = _session(emu)
    declined = emu.http.post(
        f"/_emulator/checkout_sessions/{session.id}/pay", json={"card": "4000000000009995"}
    )
    assert declined.status_code == 402
    assert declined.json()["error"]["decline_code"] == "insufficient_funds"
    paid = emu.control(f"checkout_sessions/{session.id}/pay", {"card": "4242 4242 4242 4242"})
    assert paid["checkout_session"]["payment_status"] == "paid"


def test_expand_line_items_and_lists(emu: Harness) -> None:
    customer = emu.client.v1.customers.create({"email": "eve@example.com"})
    session = _session(emu, customer=customer.id)
    expanded = emu.client.v1.checkout.sessions.retrieve(
        session.id, {"expand": ["line_items", "customer"]}
    )
    assert isinstance(expanded.customer, stripe.Customer)
    assert expanded.line_items is not None
    assert [(i.description, i.quantity, i.amount_total) for i in expanded.line_items.data] == [
        ("Starter", 1, 2000)
    ]
    items = emu.client.v1.checkout.sessions.line_items.list(session.id)
    assert [i.price.unit_amount for i in items.data if i.price] == [2000]
    emu.control(f"checkout_sessions/{session.id}/pay", {"card": "4242424242424242"})
    done = emu.client.v1.checkout.sessions.retrieve(session.id)
    assert isinstance(done.payment_intent, str)
    listed = emu.client.v1.checkout.sessions.list(
        {"payment_intent": done.payment_intent, "expand": ["data.payment_intent"]}
    )
    assert [s.id for s in listed.data] == [session.id]
    assert isinstance(listed.data[0].payment_intent, stripe.PaymentIntent)
    assert emu.client.v1.checkout.sessions.list({"status": "open"}).data == []
    assert emu.client.v1.events.list({"types": ["checkout.session.completed"]}).data[0].type == (
        "checkout.session.completed"
    )
    with pytest.raises(stripe.InvalidRequestError):
        emu.client.v1.checkout.sessions.retrieve(session.id, {"expand": ["nonsense"]})


def test_billing_portal_session(emu: Harness) -> None:
    customer = emu.client.v1.customers.create({"email": "fay@example.com"})
    portal = emu.client.v1.billing_portal.sessions.create(
        {"customer": customer.id, "return_url": "https://shop.example/account"}
    )
    assert portal.id.startswith("bps_") and portal.url == f"{emu.url}/billing_portal/{portal.id}"
    page = emu.http.get(portal.url)
    assert page.status_code == 200
    assert '<a href="https://shop.example/account">Return</a>' in page.text
    with pytest.raises(stripe.InvalidRequestError):
        emu.client.v1.billing_portal.sessions.create({"customer": "cus_missing"})


def test_amounts_are_formatted_per_currency() -> None:
    assert format_amount(2000, "usd") == "$20.00"
    assert format_amount(4500, "cny") == "¥45.00"
    assert format_amount(500, "jpy") == "¥500"
    assert format_amount(123456, "eur") == "€1,234.56"
    assert format_amount(999, "sek") == "9.99 SEK"


def test_sessions_expire_on_their_own(emu: Harness) -> None:
    session = _session(emu)
    emu.emulator.checkout_sessions[session.id]["expires_at"] = int(time.time()) - 1
    assert emu.client.v1.checkout.sessions.retrieve(session.id).status == "expired"
    (event,) = emu.client.v1.events.list({"type": "checkout.session.expired"}).data
    assert event.request is not None and event.request.id is None


def test_a_session_past_its_lifetime_expires_unasked_and_says_so(emu: Harness) -> None:
    """As Stripe does in the background: nobody reads the session, the event still comes."""
    session = _session(emu)
    emu.emulator.checkout_sessions[session.id]["expires_at"] = int(time.time()) - 1
    deadline = time.monotonic() + 5
    while "checkout.session.expired" not in emu.receiver.types():
        assert time.monotonic() < deadline, emu.receiver.types()
        time.sleep(0.05)
    assert emu.emulator.checkout_sessions[session.id]["status"] == "expired"


def test_the_checkout_page_says_what_is_bought_in_the_buyers_language(emu: Harness) -> None:
    """As Stripe's Checkout: the product's description under its name, the page in the
    session's ``locale``, and room around the form on a phone."""
    session = emu.client.v1.checkout.sessions.create(
        {
            "mode": "payment",
            "line_items": [
                {
                    "price_data": {
                        "currency": "usd",
                        "unit_amount": 2000,
                        "product_data": {"name": "进阶包", "description": "2,000 代币，另赠 200"},
                    },
                    "quantity": 1,
                }
            ],
            "success_url": "https://shop.example/ok",
            "cancel_url": "https://shop.example/cancel",
            "locale": "zh",
        }
    )
    assert session.url is not None
    page = emu.http.get(session.url).text
    assert '<html lang="zh-CN">' in page
    assert "进阶包" in page and "2,000 代币，另赠 200" in page
    assert "支付 $20.00" in page and "卡号" in page and "取消并返回" in page
    english = emu.http.get(str(_session(emu).url)).text
    assert "Card number" in english and "Total due" in english
    assert "@media (max-width: 480px)" in english
