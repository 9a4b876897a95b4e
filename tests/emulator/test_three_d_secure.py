"""3D Secure with Stripe's card 4000 0025 0000 3155 (``pm_card_authenticationRequired``): the
PaymentIntent waits in ``requires_action`` until its holder answers the bank's challenge, on
the hosted Checkout page, in the Stripe.js frame's page, or through the test helpers."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
import stripe

from tests.emulator.conftest import Harness, plain
from tokenbank.emulator.payments import AUTHENTICATION_FAILED, AUTHENTICATION_FAILED_FOR_CUSTOMER

CARD = {"expiry": "12 / 40", "cvc": "123"}
SUCCESS_URL = "https://shop.example/ok?session={CHECKOUT_SESSION_ID}"
AUTHENTICATION_CARD = "4000 0025 0000 3155"


def _intent(emu: Harness, amount: int = 1500) -> stripe.PaymentIntent:
    return emu.client.v1.payment_intents.create(
        {"amount": amount, "currency": "usd", "metadata": {"purchase_id": "31"}}
    )


def _awaiting(emu: Harness, intent: stripe.PaymentIntent) -> stripe.PaymentIntent:
    """The intent confirmed with the card that asks for authentication."""
    confirmed = emu.client.v1.payment_intents.confirm(
        intent.id, {"payment_method": "pm_card_authenticationRequired"}
    )
    assert confirmed.status == "requires_action"
    return confirmed


def _challenge_url(intent: stripe.PaymentIntent) -> str:
    action = plain(intent.next_action)
    return str(action["use_stripe_sdk"]["stripe_js"])


def _session(emu: Harness) -> stripe.checkout.Session:
    price = emu.client.v1.prices.create(
        {"product_data": {"name": "Starter"}, "unit_amount": 2000, "currency": "usd"}
    )
    return emu.client.v1.checkout.sessions.create(
        {
            "mode": "payment",
            "line_items": [{"price": price.id, "quantity": 1}],
            "success_url": SUCCESS_URL,
            "cancel_url": "https://shop.example/cancel",
            "payment_intent_data": {"metadata": {"purchase_id": "32"}},
        }
    )


def _pay_on_page(emu: Harness, session: stripe.checkout.Session, number: str, **form: str) -> Any:
    assert session.url is not None
    return emu.http.post(session.url, data={**CARD, "card_number": number, **form})


def _answered_notice(html: str) -> Any:
    """What the challenge page in the Stripe.js frame tells the page around it."""
    found = re.search(r"window\.parent\.postMessage\((.*?), \"\*\"\);", html)
    assert found is not None, html
    return json.loads(found.group(1))


def test_confirming_asks_for_authentication_and_charges_nothing_yet(emu: Harness) -> None:
    intent = _intent(emu)
    awaiting = _awaiting(emu, intent)
    action = plain(awaiting.next_action)
    assert action["type"] == "use_stripe_sdk"
    sdk = action["use_stripe_sdk"]
    assert sdk["type"] == "three_d_secure_redirect" and sdk["source"].startswith("src_")
    assert sdk["stripe_js"] == f"{emu.url}/3d_secure/{intent.id}/{sdk['source']}"
    assert (awaiting.amount_received, awaiting.latest_charge, awaiting.last_payment_error) == (
        0,
        None,
        None,
    )
    assert isinstance(awaiting.payment_method, str)
    method = emu.client.v1.payment_methods.retrieve(awaiting.payment_method)
    assert method.card is not None and method.card.last4 == "3155"
    assert emu.client.v1.charges.list({"payment_intent": intent.id}).data == []

    # Stripe.js's view (a publishable key and the client secret) carries the action too.
    seen = emu.http.get(
        f"/v1/payment_intents/{intent.id}",
        params={"client_secret": intent.client_secret},
        headers={"Authorization": "Bearer pk_test_page"},
    ).json()
    assert seen["status"] == "requires_action" and seen["next_action"] == action
    assert "metadata" not in seen

    emu.wait_quiet(at_least=2)
    assert emu.receiver.types() == ["payment_intent.created", "payment_intent.requires_action"]
    waiting = emu.receiver.events[-1]["data"]["object"]
    assert waiting["status"] == "requires_action" and waiting["next_action"] == action


def test_completing_the_challenge_page_charges_the_card(emu: Harness) -> None:
    intent = _intent(emu)
    url = _challenge_url(_awaiting(emu, intent))
    page = emu.http.get(url)
    assert page.status_code == 200
    for text in ("$15.00", "Visa card ending in <strong>3155</strong>"):
        assert text in page.text
    for button in ('value="complete">Complete authentication', 'value="fail"'):
        assert button in page.text
    assert "postMessage" not in page.text  # nothing answered yet

    answered = emu.http.post(url, data={"outcome": "complete"})
    assert answered.status_code == 200
    assert answered.headers["access-control-allow-origin"] == "*"
    assert _answered_notice(answered.text) == {
        "type": "stripe-emulator:three-d-secure-answered",
        "payment_intent": intent.id,
    }
    paid = emu.client.v1.payment_intents.retrieve(intent.id, {"expand": ["latest_charge"]})
    assert (paid.status, paid.amount_received, paid.next_action) == ("succeeded", 1500, None)
    charge = paid.latest_charge
    assert isinstance(charge, stripe.Charge) and charge.paid and charge.status == "succeeded"
    details = plain(charge.payment_method_details)["card"]
    assert details["last4"] == "3155"
    assert details["three_d_secure"]["result"] == "authenticated"
    assert details["three_d_secure"]["authentication_flow"] == "challenge"

    # The page of a challenge already answered has nothing more to ask.
    again = emu.http.get(url)
    assert again.status_code == 200 and 'name="outcome"' not in again.text
    assert _answered_notice(again.text)["payment_intent"] == intent.id
    assert emu.http.post(url, data={"outcome": "fail"}).status_code == 409
    assert emu.client.v1.payment_intents.retrieve(intent.id).status == "succeeded"

    emu.wait_quiet(at_least=4)
    assert emu.receiver.types() == [
        "payment_intent.created",
        "payment_intent.requires_action",
        "charge.succeeded",
        "payment_intent.succeeded",
    ]


def test_a_failed_challenge_wants_another_card_and_a_good_one_pays(emu: Harness) -> None:
    intent = _intent(emu)
    awaiting = _awaiting(emu, intent)
    url = _challenge_url(awaiting)
    answered = emu.http.post(url, data={"outcome": "fail"})
    assert answered.status_code == 200 and "not authenticated" in answered.text
    assert _answered_notice(answered.text)["payment_intent"] == intent.id

    failed = emu.client.v1.payment_intents.retrieve(intent.id)
    assert (failed.status, failed.payment_method, failed.next_action) == (
        "requires_payment_method",
        None,
        None,
    )
    error = plain(failed.last_payment_error)
    assert (error["type"], error["code"], error["message"]) == (
        "invalid_request_error",
        "payment_intent_authentication_failure",
        AUTHENTICATION_FAILED,
    )
    assert error["doc_url"].endswith("/payment-intent-authentication-failure")
    assert error["payment_method"]["id"] == awaiting.payment_method
    assert emu.client.v1.charges.list({"payment_intent": intent.id}).data == []
    # The challenge is over: an old page cannot answer it again.
    assert emu.http.post(url, data={"outcome": "complete"}).status_code == 409

    paid = emu.client.v1.payment_intents.confirm(intent.id, {"payment_method": "pm_card_visa"})
    assert (paid.status, paid.amount_received, paid.last_payment_error) == ("succeeded", 1500, None)
    emu.wait_quiet(at_least=5)
    assert emu.receiver.types() == [
        "payment_intent.created",
        "payment_intent.requires_action",
        "payment_intent.payment_failed",
        "charge.succeeded",
        "payment_intent.succeeded",
    ]
    failure = emu.receiver.events[2]["data"]["object"]["last_payment_error"]
    assert failure["code"] == "payment_intent_authentication_failure"


def test_authentication_through_the_api_helper_and_a_fresh_challenge_each_confirm(
    emu: Harness,
) -> None:
    intent = emu.client.v1.payment_intents.create(
        {
            "amount": 700,
            "currency": "usd",
            "payment_method": "pm_card_authenticationRequired",
            "confirm": True,
        }
    )
    assert intent.status == "requires_action"
    first = _challenge_url(intent)
    again = _awaiting(emu, intent)  # confirmed once more: a new challenge replaces the first
    assert _challenge_url(again) != first
    assert emu.http.post(first, data={"outcome": "complete"}).status_code == 409
    assert emu.client.v1.payment_intents.retrieve(intent.id).status == "requires_action"

    refused = emu.http.post(
        f"/_emulator/payment_intents/{intent.id}/authenticate", json={"outcome": "maybe"}
    )
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "outcome"
    done = emu.control(f"payment_intents/{intent.id}/authenticate", {"outcome": "complete"})
    assert done["payment_intent"]["status"] == "succeeded"
    assert done["checkout_session"] is None
    late = emu.http.post(
        f"/_emulator/payment_intents/{intent.id}/authenticate", json={"outcome": "fail"}
    )
    assert late.status_code == 400
    assert late.json()["error"]["code"] == "payment_intent_unexpected_state"


def test_a_waiting_payment_can_change_card_or_be_canceled(emu: Harness) -> None:
    switched = _intent(emu)
    _awaiting(emu, switched)
    paid = emu.client.v1.payment_intents.confirm(switched.id, {"payment_method": "pm_card_visa"})
    assert (paid.status, paid.next_action) == ("succeeded", None)

    dropped = _intent(emu)
    _awaiting(emu, dropped)
    canceled = emu.client.v1.payment_intents.cancel(dropped.id)
    assert (canceled.status, canceled.next_action) == ("canceled", None)


def test_hosted_checkout_shows_the_challenge_and_completing_it_pays(emu: Harness) -> None:
    session = _session(emu)
    submitted = _pay_on_page(emu, session, AUTHENTICATION_CARD, email="payer@example.com")
    assert submitted.status_code == 303
    challenge = f"{session.url}/authenticate"
    assert submitted.headers["location"] == challenge
    waiting = emu.client.v1.checkout.sessions.retrieve(session.id, {"expand": ["payment_intent"]})
    assert (waiting.status, waiting.payment_status) == ("open", "unpaid")
    assert isinstance(waiting.payment_intent, stripe.PaymentIntent)
    assert waiting.payment_intent.status == "requires_action"

    page = emu.http.get(challenge)
    assert page.status_code == 200
    assert "Complete authentication" in page.text and "Fail authentication" in page.text
    assert "$20.00" in page.text and "postMessage" not in page.text
    assert emu.http.post(challenge, data={"outcome": ""}).status_code == 400

    paid = emu.http.post(challenge, data={"outcome": "complete"})
    assert paid.status_code == 303
    assert paid.headers["location"] == SUCCESS_URL.replace("{CHECKOUT_SESSION_ID}", session.id)
    done = emu.client.v1.checkout.sessions.retrieve(session.id, {"expand": ["payment_intent"]})
    assert (done.status, done.payment_status) == ("complete", "paid")
    assert done.customer_details is not None
    assert done.customer_details.email == "payer@example.com"
    assert isinstance(done.payment_intent, stripe.PaymentIntent)
    assert (done.payment_intent.status, done.payment_intent.amount_received) == ("succeeded", 2000)
    assert plain(done.payment_intent.metadata) == {"purchase_id": "32"}
    # The challenge of a completed session leads nowhere new.
    assert emu.http.get(challenge).status_code == 200
    assert 'name="outcome"' not in emu.http.get(challenge).text

    emu.wait_quiet(at_least=5)
    assert emu.receiver.types() == [
        "payment_intent.created",
        "payment_intent.requires_action",
        "charge.succeeded",
        "payment_intent.succeeded",
        "checkout.session.completed",
    ]
    completed = emu.receiver.events[-1]["data"]["object"]
    assert completed["payment_status"] == "paid"
    assert completed["customer_details"]["email"] == "payer@example.com"


def test_hosted_checkout_failed_challenge_shows_why_then_another_card_pays(emu: Harness) -> None:
    session = _session(emu)
    submitted = _pay_on_page(
        emu, session, AUTHENTICATION_CARD, email="payer@example.com", name="Ada"
    )
    challenge = submitted.headers["location"]
    back = emu.http.post(challenge, data={"outcome": "fail"})
    assert back.status_code == 303 and back.headers["location"] == session.url

    page = emu.http.get(back.headers["location"])
    assert page.status_code == 200
    assert 'role="alert"' in page.text and AUTHENTICATION_FAILED_FOR_CUSTOMER in page.text
    assert 'name="card_number"' in page.text
    assert 'value="payer@example.com"' in page.text and 'value="Ada"' in page.text
    assert emu.client.v1.checkout.sessions.retrieve(session.id).status == "open"
    # Nothing waits to be answered any more: the challenge's address leads back to the form.
    gone = emu.http.get(challenge)
    assert gone.status_code == 303 and gone.headers["location"] == session.url

    paid = _pay_on_page(emu, session, "4242 4242 4242 4242", email="payer@example.com")
    assert paid.status_code == 303 and paid.headers["location"].startswith("https://shop.example")
    done = emu.client.v1.checkout.sessions.retrieve(session.id)
    assert (done.status, done.payment_status) == ("complete", "paid")
    assert len(emu.client.v1.payment_intents.list().data) == 1
    emu.wait_quiet(at_least=6)
    assert emu.receiver.types() == [
        "payment_intent.created",
        "payment_intent.requires_action",
        "payment_intent.payment_failed",
        "charge.succeeded",
        "payment_intent.succeeded",
        "checkout.session.completed",
    ]


def test_a_challenge_left_until_the_session_expires_cannot_pay(emu: Harness) -> None:
    session = _session(emu)
    challenge = _pay_on_page(emu, session, AUTHENTICATION_CARD).headers["location"]
    emu.emulator.checkout_sessions[session.id]["expires_at"] = int(time.time()) - 1
    late = emu.http.post(challenge, data={"outcome": "complete"})
    assert late.status_code == 409 and "expired" in late.text
    expired = emu.client.v1.checkout.sessions.retrieve(session.id, {"expand": ["payment_intent"]})
    assert expired.status == "expired"
    assert isinstance(expired.payment_intent, stripe.PaymentIntent)
    assert (expired.payment_intent.status, expired.payment_intent.next_action) == (
        "canceled",
        None,
    )


@pytest.mark.parametrize("outcome", ["complete", "fail"])
def test_pay_helper_answers_the_challenge(emu: Harness, outcome: str) -> None:
    session = _session(emu)
    answer = emu.http.post(
        f"/_emulator/checkout_sessions/{session.id}/pay",
        json={"card": AUTHENTICATION_CARD, "authenticate": outcome},
    )
    if outcome == "complete":
        assert answer.status_code == 200
        assert answer.json()["checkout_session"]["payment_status"] == "paid"
        assert answer.json()["payment_intent"]["status"] == "succeeded"
    else:
        assert answer.status_code == 402
        error = answer.json()["error"]
        assert error["code"] == "payment_intent_authentication_failure"
        assert error["payment_intent"]["status"] == "requires_payment_method"
        assert emu.client.v1.checkout.sessions.retrieve(session.id).status == "open"
        retried = emu.control(f"checkout_sessions/{session.id}/pay", {"card": "pm_card_visa"})
        assert retried["checkout_session"]["payment_status"] == "paid"
    emu.wait_quiet()
    assert emu.receiver.types()[-1] == "checkout.session.completed"
    assert "payment_intent.requires_action" in emu.receiver.types()


def test_pay_helper_can_leave_the_challenge_for_later(emu: Harness) -> None:
    session = _session(emu)
    pending = emu.control(
        f"checkout_sessions/{session.id}/pay", {"card": "pm_card_authenticationRequired"}
    )
    intent = pending["payment_intent"]
    assert pending["checkout_session"]["status"] == "open"
    assert intent["status"] == "requires_action"
    assert intent["next_action"]["use_stripe_sdk"]["type"] == "three_d_secure_redirect"
    done = emu.control(f"payment_intents/{intent['id']}/authenticate", {"outcome": "complete"})
    assert done["payment_intent"]["status"] == "succeeded"
    assert (done["checkout_session"]["status"], done["checkout_session"]["payment_status"]) == (
        "complete",
        "paid",
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"card": "4242424242424242", "authenticate": "complete"}, "authenticate"),
        ({"card": AUTHENTICATION_CARD, "authenticate": "later"}, "authenticate"),
        ({"card": AUTHENTICATION_CARD, "async": "succeeded"}, "async"),
    ],
)
def test_pay_helper_refuses_answers_that_do_not_apply(
    emu: Harness, body: dict[str, str], param: str
) -> None:
    session = _session(emu)
    refused = emu.http.post(f"/_emulator/checkout_sessions/{session.id}/pay", json=body)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == param
    assert emu.client.v1.checkout.sessions.retrieve(session.id).payment_intent is None


def test_the_checkout_page_lists_the_card(emu: Harness) -> None:
    session = _session(emu)
    assert session.url is not None
    page = emu.http.get(session.url)
    assert "<code>4000 0025 0000 3155</code> asks you to authenticate" in page.text
    script = emu.http.get("/v3/").text
    assert '"4000002500003155": "pm_card_authenticationRequired"' in script
    assert AUTHENTICATION_FAILED_FOR_CUSTOMER in script
