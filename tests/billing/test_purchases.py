"""Both purchase flows end to end, through the Stripe emulator and its signed webhooks."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
import stripe
from fastapi.testclient import TestClient

from tests.billing.conftest import Store, open_store
from tests.stripe_emulator import SECRET_KEY, EmulatorServer, event_bytes, make_billing, signed
from tests.web.conftest import PASSWORDS, SETTINGS, make_key
from tokenbank import audit, billing, ledger
from tokenbank.apikeys import Scope
from tokenbank.billing.models import purchases, webhook_events
from tokenbank.client import ApiError, TokenBank
from tokenbank.columns import utcnow
from tokenbank.db import Database
from tokenbank.payments.stripe import Stripe
from tokenbank.web.app import create_app


def _sdk(store: Store) -> stripe.StripeClient:
    return stripe.StripeClient(
        SECRET_KEY, base_addresses={"api": store.emulator.url}, max_network_retries=0
    )


def _inbox(store: Store) -> list[sa.Row[tuple[str, ...]]]:
    with store.db.read() as conn:
        return list(
            conn.execute(
                sa.select(
                    webhook_events.c.event_id,
                    webhook_events.c.type,
                    webhook_events.c.processed_at,
                    webhook_events.c.last_error,
                    webhook_events.c.outcome,
                ).order_by(webhook_events.c.id)
            )
        )


def test_packages_are_public(store: Store) -> None:
    answer = store.api.get("/api/v1/packages", headers={"Authorization": ""})
    assert answer.status_code == 200
    body = answer.json()
    assert body["currency"] == "usd"
    plus = next(p for p in body["packages"] if p["id"] == "plus")
    assert (plus["tokens"], plus["bonus_tokens"], plus["price"], plus["badge"]) == (
        2000,
        200,
        2000,
        "popular",
    )
    assert plus["savings_percent"] == 9
    assert plus["expires_after_days"] is None  # the default catalog's tokens never expire
    # A fraction of a cent, to ten places: never the thirty digits of the division.
    assert [p["price_per_token"] for p in body["packages"]][:2] == ["0.0100000000", "0.0090909091"]


def test_checkout_on_the_hosted_page_credits_once(store: Store) -> None:
    started = store.checkout("plus")
    purchase = store.purchase(started["purchase_id"])
    assert (purchase["status"], purchase["amount"], purchase["tokens"]) == ("pending", 2000, 2000)

    page = store.emulator.http.get(started["url"].removeprefix(store.emulator.url))
    assert page.status_code == 200
    assert "$20.00" in page.text and "Card number" in page.text
    paid = store.emulator.http.post(
        started["url"].removeprefix(store.emulator.url),
        data={"card_number": "4242 4242 4242 4242", "expiry": "12 / 34", "cvc": "123"},
    )
    assert paid.status_code == 303, paid.text
    assert paid.headers["location"].endswith(f"session_id={started['checkout_session_id']}")
    deliveries = store.emulator.settle()
    assert deliveries and all(d["state"] == "delivered" for d in deliveries)

    assert store.balance()["available"] == 2200
    purchase = store.purchase(started["purchase_id"])
    assert purchase["status"] == "paid" and purchase["payment_intent_id"]
    # The success page fulfils too; it finds the purchase credited already.
    success = store.api.get(
        "/purchase/success", params={"session_id": started["checkout_session_id"]}
    )
    assert success.status_code == 200
    # Every event again, in any order: nothing more is credited.
    for event in reversed(store.emulator.events()):
        store.emulator.http.post(f"/_emulator/events/{event['id']}/redeliver")
    store.emulator.settle()
    assert store.balance()["available"] == 2200
    assert all(row.processed_at is not None for row in _inbox(store))


def test_success_page_first_credits_before_any_webhook(store: Store) -> None:
    store.emulator.configure(drop=100)
    started = store.checkout("starter")
    assert store.emulator.pay(started["checkout_session_id"]).status_code == 200
    assert store.balance()["available"] == 0  # no webhook arrived
    page = store.api.get("/purchase/success", params={"session_id": started["checkout_session_id"]})
    assert page.status_code == 200
    assert store.balance()["available"] == 500
    assert store.purchase(started["purchase_id"])["status"] == "paid"


def test_embedded_payment_credits_once(store: Store) -> None:
    answer = store.api.post("/api/v1/users/alice/payment-intents", json={"package_id": "pro"})
    assert answer.status_code == 201, answer.text
    started = answer.json()
    assert (started["amount"], started["currency"], started["tokens"]) == (5000, "usd", 5000)
    assert started["client_secret"].startswith(started["payment_intent_id"])
    _sdk(store).v1.payment_intents.confirm(
        started["payment_intent_id"], {"payment_method": "pm_card_visa"}
    )
    store.emulator.settle()
    assert store.balance()["available"] == 6000
    assert store.purchase(started["purchase_id"])["status"] == "paid"


def test_declined_cards_credit_nothing(store: Store) -> None:
    started = store.checkout("plus")
    declined = store.emulator.pay(started["checkout_session_id"], card="4000000000000002")
    assert declined.status_code == 402
    page = store.emulator.http.post(
        started["url"].removeprefix(store.emulator.url),
        data={"card_number": "4000 0000 0000 9995", "expiry": "12 / 34", "cvc": "123"},
    )
    assert "insufficient funds" in page.text
    store.emulator.settle()
    assert store.balance()["available"] == 0
    purchase = store.purchase(started["purchase_id"])
    assert (purchase["status"], purchase["failure_code"]) == ("failed", "insufficient_funds")
    # The session is still open: a good card on the same page still buys the tokens.
    assert store.emulator.pay(started["checkout_session_id"]).status_code == 200
    store.emulator.settle()
    assert store.purchase(started["purchase_id"])["status"] == "paid"
    assert store.balance()["available"] == 2200

    answer = store.api.post("/api/v1/users/alice/payment-intents", json={"package_id": "plus"})
    intent = answer.json()
    try:
        _sdk(store).v1.payment_intents.confirm(
            intent["payment_intent_id"],
            {"payment_method": "pm_card_chargeDeclinedInsufficientFunds"},
        )
    except stripe.CardError as exc:
        assert exc.error is not None and exc.error.decline_code == "insufficient_funds"
    else:
        raise AssertionError("the card was not declined")
    store.emulator.settle()
    purchase = store.purchase(intent["purchase_id"])
    assert (purchase["status"], purchase["failure_code"]) == ("failed", "insufficient_funds")
    # The buyer tries another card on the same payment: now it is credited.
    _sdk(store).v1.payment_intents.confirm(
        intent["payment_intent_id"], {"payment_method": "pm_card_visa"}
    )
    store.emulator.settle()
    assert store.purchase(intent["purchase_id"])["status"] == "paid"
    assert store.balance()["available"] == 4400


def test_one_event_delivered_ten_times_at_once_credits_once(store: Store) -> None:
    store.emulator.configure(drop=100)
    started = store.checkout("plus")
    store.emulator.pay(started["checkout_session_id"])
    (completed,) = store.emulator.events("checkout.session.completed")
    body = event_bytes(completed)

    def deliver(_: int) -> int:
        answer = store.api.post(
            "/webhooks/stripe",
            content=body,
            headers={"Stripe-Signature": signed(body), "Content-Type": "application/json"},
        )
        return answer.status_code

    with ThreadPoolExecutor(10) as pool:
        statuses = list(pool.map(deliver, range(10)))
    assert statuses == [200] * 10
    assert store.balance()["available"] == 2200
    assert len(_inbox(store)) == 1


def test_events_in_reverse_order_settle_the_same(store: Store) -> None:
    store.emulator.configure(reorder=True)
    started = store.checkout("plus")
    store.emulator.pay(started["checkout_session_id"])
    sdk = _sdk(store)
    purchase = store.purchase(started["purchase_id"])
    intent_id = sdk.v1.checkout.sessions.retrieve(started["checkout_session_id"]).payment_intent
    assert isinstance(intent_id, str) and purchase["status"] == "pending"
    sdk.v1.refunds.create({"payment_intent": intent_id, "amount": 1000})
    store.emulator.http.post("/_emulator/webhooks/flush").raise_for_status()
    store.emulator.settle()
    balance = store.balance()
    assert balance["available"] == 1100  # credited 2200, then half clawed back
    purchase = store.purchase(started["purchase_id"])
    assert (purchase["status"], purchase["refunded_amount"], purchase["clawed_back_tokens"]) == (
        "paid",
        1000,
        1100,
    )


def test_forged_unsigned_and_stale_deliveries_change_nothing(store: Store) -> None:
    store.emulator.configure(drop=100)
    started = store.checkout("plus")
    store.emulator.pay(started["checkout_session_id"])
    (completed,) = store.emulator.events("checkout.session.completed")
    body = event_bytes(completed)
    for headers in (
        {},
        {"Stripe-Signature": signed(body, secret="whsec_someone_else_entirely")},
        {"Stripe-Signature": signed(body, at=int(time.time()) - 301)},
        {"Stripe-Signature": signed(body + b" ")},
        {"Stripe-Signature": "t=1,v1=00"},
    ):
        answer = store.api.post("/webhooks/stripe", content=body, headers=headers)
        assert answer.status_code == 400, answer.text
        assert answer.json()["code"] == "invalid_signature"
    assert store.balance()["available"] == 0
    assert _inbox(store) == []


def test_a_dropped_delivery_is_healed_by_reconcile(store: Store) -> None:
    store.emulator.configure(drop=100)
    started = store.paid_checkout("scale")
    assert store.balance()["available"] == 0
    result = billing.reconcile(
        store.db, store.seller.stripe, since=utcnow() - timedelta(hours=1), policy="debt"
    )
    assert [o.purchase.id for o in result.fixed if o.purchase] == [started["purchase_id"]]
    assert store.balance()["available"] == 13000
    again = billing.reconcile(
        store.db, store.seller.stripe, since=utcnow() - timedelta(hours=1), policy="debt"
    )
    assert (again.fixed, again.errors) == ([], [])
    assert store.balance()["available"] == 13000


def test_a_payment_that_does_not_match_its_purchase_is_never_credited(store: Store) -> None:
    """Stripe reports a payment of another amount than the purchase: the purchase waits
    for an admin (needs_review, a metric, the admin pages); nothing is credited, Stripe
    gets its 200, and the admin's decision is audited."""
    store.emulator.configure(drop=100)
    started = store.checkout("plus")
    purchase_id = started["purchase_id"]
    with store.db.transaction() as conn:  # as if the row said another price
        conn.execute(sa.update(purchases).where(purchases.c.id == purchase_id).values(amount=1999))
    store.emulator.pay(started["checkout_session_id"])
    (completed,) = store.emulator.events("checkout.session.completed")
    body = event_bytes(completed)
    for _ in range(2):
        answer = store.api.post(
            "/webhooks/stripe", content=body, headers={"Stripe-Signature": signed(body)}
        )
        assert answer.status_code == 200, answer.text
    (row,) = _inbox(store)
    assert row.processed_at is not None and "needs review" in row.outcome
    bought = store.purchase(purchase_id)
    assert bought["status"] == "needs_review" and store.balance()["available"] == 0
    assert "tokenbank_purchases_awaiting_review 1.0" in store.api.get("/metrics").text
    # Replays and the reconciler see the same anomaly: still nothing credited.
    billing.replay(store.db, store.seller.stripe, event_id=completed["id"], policy="debt")
    assert store.balance()["available"] == 0
    with pytest.raises(ledger.InvalidArgument):  # a mismatch is credited or refused
        billing.resolve_review(
            store.db,
            purchase_id=purchase_id,
            decision=billing.ReviewDecision.DISMISS,
            actor="user:root",
            reason="looks fine",
            policy="debt",
        )
    refused = billing.resolve_review(
        store.db,
        purchase_id=purchase_id,
        decision=billing.ReviewDecision.REFUSE,
        actor="user:root",
        reason="not our price",
        policy="debt",
    )
    assert (refused.status, refused.failure_code) == (billing.PurchaseStatus.FAILED, "refused")
    assert refused.reviewed_by == "user:root"
    billing.replay(store.db, store.seller.stripe, event_id=completed["id"], policy="debt")
    assert store.purchase(purchase_id)["status"] == "failed"
    assert store.balance()["available"] == 0
    assert "tokenbank_purchases_awaiting_review 0.0" in store.api.get("/metrics").text
    with store.db.read() as conn:
        (action,) = audit.actions_about(conn, subject=f"purchase:{purchase_id}")
    assert (action.actor, action.action, action.reason) == (
        "user:root",
        "purchase.refuse",
        "not our price",
    )
    with pytest.raises(billing.NothingToReview):
        billing.resolve_review(
            store.db,
            purchase_id=purchase_id,
            decision=billing.ReviewDecision.CREDIT,
            actor="user:root",
            reason="changed my mind",
            policy="debt",
        )


def test_async_payments_succeed_or_fail(store: Store) -> None:
    good = store.checkout("starter")
    store.emulator.pay(good["checkout_session_id"], **{"async": "succeeded"})
    bad = store.checkout("starter")
    store.emulator.pay(bad["checkout_session_id"], **{"async": "failed"})
    store.emulator.settle()
    assert store.purchase(good["purchase_id"])["status"] == "paid"
    assert store.purchase(bad["purchase_id"])["status"] == "failed"
    assert store.balance()["available"] == 500


def test_an_expired_session_expires_the_purchase(store: Store) -> None:
    started = store.checkout("starter")
    _sdk(store).v1.checkout.sessions.expire(started["checkout_session_id"])
    store.emulator.settle()
    assert store.purchase(started["purchase_id"])["status"] == "expired"


def test_unknown_events_are_recorded_and_acknowledged(store: Store) -> None:
    event = {
        "id": "evt_unknown_1",
        "object": "event",
        "type": "customer.created",
        "created": 1_700_000_000,
        "api_version": "2026-10-28.endive",
        "livemode": False,
        "data": {"object": {"id": "cus_1", "object": "customer"}},
    }
    body = event_bytes(event)
    answer = store.api.post(
        "/webhooks/stripe", content=body, headers={"Stripe-Signature": signed(body)}
    )
    assert answer.status_code == 200
    assert "ignored" in answer.json()["outcome"]
    (row,) = _inbox(store)
    assert (row.type, row.processed_at is not None) == ("customer.created", True)


def test_purchases_are_listed_for_their_user(store: Store) -> None:
    first = store.paid_checkout("starter")
    second = store.checkout("plus")
    answer = store.api.get("/api/v1/users/alice/purchases")
    assert answer.status_code == 200
    items = answer.json()["items"]
    assert [(i["purchase_id"], i["status"]) for i in items] == [
        (second["purchase_id"], "pending"),
        (first["purchase_id"], "paid"),
    ]


def test_buying_an_unknown_package_or_for_an_unknown_user_is_refused(store: Store) -> None:
    answer = store.api.post("/api/v1/users/alice/checkout-sessions", json={"package_id": "nope"})
    assert (answer.status_code, answer.json()["code"]) == (422, "unknown_package")
    answer = store.api.post("/api/v1/users/bob/checkout-sessions", json={"package_id": "plus"})
    assert (answer.status_code, answer.json()["code"]) == (404, "not_found")
    with store.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(purchases)).scalar() == 0


def test_without_a_webhook_secret_every_delivery_is_refused(
    db: Database, emulator_server: EmulatorServer
) -> None:
    seller = make_billing(emulator_server.url)
    seller = replace(seller, stripe=Stripe(secret_key=SECRET_KEY, api_base=emulator_server.url))
    app = create_app(SETTINGS, db=db, passwords=PASSWORDS, seller=seller)
    body = event_bytes({"id": "evt_1", "type": "checkout.session.completed", "created": 1})
    with TestClient(app) as client:
        answer = client.post(
            "/webhooks/stripe", content=body, headers={"Stripe-Signature": signed(body)}
        )
    assert (answer.status_code, answer.json()["code"]) == (503, "webhooks_not_configured")
    with db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(webhook_events)).scalar() == 0


def test_the_python_client_buys_tokens(store: Store) -> None:
    key = store.api.headers["Authorization"].removeprefix("Bearer ")
    with TokenBank(str(store.api.base_url), api_key=key) as bank:
        assert [p.id for p in bank.packages()] == ["starter", "plus", "pro", "scale"]
        checkout = bank.checkout("alice", "starter")
        assert checkout.url.startswith(store.emulator.url)
        store.emulator.pay(checkout.checkout_session_id)
        store.emulator.settle()
        assert bank.purchase(checkout.purchase_id).status == "paid"
        assert bank.balance("alice").available == 500
        with pytest.raises(ApiError) as refused:
            bank.checkout("alice", "nope")
        assert refused.value.code == "unknown_package"


def test_a_session_and_a_payment_that_do_not_belong_together_settle_nothing(
    store: Store,
) -> None:
    store.emulator.configure(drop=100)
    mine = store.checkout("plus")  # unpaid
    other = store.api.post("/api/v1/users/alice/payment-intents", json={"package_id": "scale"})
    intent = other.json()["payment_intent_id"]
    _sdk(store).v1.payment_intents.confirm(intent, {"payment_method": "pm_card_visa"})
    with pytest.raises(billing.PaymentMismatch):
        billing.fetch_payment(
            store.seller.stripe, session_id=mine["checkout_session_id"], payment_intent_id=intent
        )
    both = store.api.get(
        "/purchase/success",
        params={"session_id": mine["checkout_session_id"], "payment_intent": intent},
        follow_redirects=False,
    )
    assert both.status_code == 303
    assert store.balance()["available"] == 0


def test_a_payment_made_by_another_installation_is_not_ours(store: Store) -> None:
    started = store.checkout("plus")
    # Same Stripe account, another tokenbank: its purchase has our purchase's id.
    foreign = _sdk(store).v1.payment_intents.create(
        {
            "amount": 2000,
            "currency": "usd",
            "metadata": {
                "tokenbank_purchase_id": str(started["purchase_id"]),
                "tokenbank_reference": "tokenbank-elsewhere",
            },
        }
    )
    _sdk(store).v1.payment_intents.confirm(foreign.id, {"payment_method": "pm_card_visa"})
    store.emulator.settle()
    assert store.purchase(started["purchase_id"])["status"] == "pending"
    assert store.balance()["available"] == 0
    assert all(row.processed_at is not None for row in _inbox(store))


def _faults(store: Store, *faults: dict[str, object]) -> None:
    answer = store.emulator.http.post("/_emulator/api_faults", json={"faults": list(faults)})
    assert answer.status_code == 200, answer.text


def test_a_purchase_retried_with_its_key_is_one_purchase(store: Store) -> None:
    body = {"package_id": "plus", "idempotency_key": "buy-1"}
    first = store.api.post("/api/v1/users/alice/checkout-sessions", json=body)
    again = store.api.post("/api/v1/users/alice/checkout-sessions", json=body)
    assert first.status_code == again.status_code == 201, again.text
    assert first.json() == again.json()
    other = store.api.post(
        "/api/v1/users/alice/checkout-sessions", json={**body, "package_id": "pro"}
    )
    assert (other.status_code, other.json()["code"]) == (409, "idempotency_conflict")
    intent_body = {"package_id": "plus", "idempotency_key": "buy-2"}
    intents = [
        store.api.post("/api/v1/users/alice/payment-intents", json=intent_body).json()
        for _ in range(2)
    ]
    assert intents[0]["payment_intent_id"] == intents[1]["payment_intent_id"]
    assert len(store.emulator.events("checkout.session.completed")) == 0
    with store.db.read() as conn:
        assert len(billing.list_purchases(conn, user_id="alice")) == 2


def test_a_purchase_whose_stripe_answer_was_lost_resumes_with_the_same_session(
    store: Store,
) -> None:
    """Stripe creates the session but its answer is lost (a 500 after the work, then a
    timeout): the caller gets a retryable 503; the retry with the same key gets the same
    session, and paying it credits once."""
    _faults(
        store, {"method": "POST", "path": "/v1/checkout/sessions", "status": 500, "after": True}
    )
    body = {"package_id": "plus", "idempotency_key": "buy-lost"}
    lost = store.api.post("/api/v1/users/alice/checkout-sessions", json=body)
    assert lost.status_code == 503, lost.text
    assert lost.json()["code"] == "payment_provider_unavailable" and lost.headers["retry-after"]
    (pending,) = store.api.get("/api/v1/users/alice/purchases").json()["items"]
    assert (pending["status"], pending["checkout_session_id"]) == ("pending", None)
    retried = store.api.post("/api/v1/users/alice/checkout-sessions", json=body)
    assert retried.status_code == 201, retried.text
    sessions = store.emulator.http.get(
        "/v1/checkout/sessions", headers={"Authorization": f"Bearer {SECRET_KEY}"}
    ).json()["data"]
    assert [s["id"] for s in sessions] == [retried.json()["checkout_session_id"]]
    store.emulator.pay(retried.json()["checkout_session_id"])
    store.emulator.settle()
    assert store.balance()["available"] == 2200


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 500},
        {"status": 429},
        {"status": 503},
        {"status": 0, "delay": 3},  # no answer within the client's timeout
    ],
    ids=["500", "429", "503", "timeout"],
)
def test_stripe_failing_during_checkout_is_a_retryable_503(
    db: Database, emulator_server: EmulatorServer, fault: dict[str, object]
) -> None:
    with open_store(db, emulator_server, timeout_seconds=1) as store:
        store.user()
        _faults(store, {"method": "POST", "path": "/v1/checkout/sessions", **fault})
        body = {"package_id": "starter", "idempotency_key": "buy-x"}
        failed = store.api.post("/api/v1/users/alice/checkout-sessions", json=body)
        assert failed.status_code == 503, failed.text
        assert failed.json()["code"] == "payment_provider_unavailable"
        assert int(failed.headers["retry-after"]) > 0
        assert store.balance()["available"] == 0
        retried = store.api.post("/api/v1/users/alice/checkout-sessions", json=body)
        assert retried.status_code == 201, retried.text
        store.emulator.pay(retried.json()["checkout_session_id"])
        store.emulator.settle()
        assert store.balance()["available"] == 500
        with store.db.read() as conn:
            assert len(billing.list_purchases(conn, user_id="alice")) == 1


def test_stripe_failing_while_a_webhook_refetches_is_retried_not_credited(store: Store) -> None:
    """The event is a hint; with Stripe down, nothing is credited on the event's word: the
    delivery gets a 503 (Stripe retries) and a later delivery settles it, once."""
    started = store.checkout("plus")
    _faults(store, {"method": "GET", "path": "/v1/checkout/sessions/*", "status": 500, "times": 2})
    store.emulator.pay(started["checkout_session_id"])
    store.emulator.settle()
    assert store.balance()["available"] == 2200  # after the emulator's retries
    deliveries = store.emulator.deliveries()
    assert any(d["attempts"] > 1 for d in deliveries)
    with store.db.read() as conn:
        assert not billing.list_events(conn, failed=True)


def test_return_urls_only_to_this_service_or_allowed_hosts(
    db: Database, emulator_server: EmulatorServer
) -> None:
    with open_store(db, emulator_server) as store:
        store.user()
        for field in ("success_url", "cancel_url"):
            for url in (
                "https://evil.example/steal",
                "https://tokens.example@evil.example/",
                "https://evil.example\\@tokens.example/",
                "javascript://tokens.example/%0aalert(1)",
                "https://tokens.example.evil.example/",
                "https://[tokens.example/",  # urlsplit itself refuses these
                "https://tokens.example:port/",
                "https://\bå\U00100051[Í/",
            ):
                answer = store.api.post(
                    "/api/v1/users/alice/checkout-sessions",
                    json={"package_id": "plus", field: url},
                )
                assert answer.status_code == 422, (field, url, answer.text)
                assert answer.json()["code"] == "validation_error"
        ours = store.api.post(
            "/api/v1/users/alice/checkout-sessions",
            json={"package_id": "plus", "success_url": "https://tokens.example/thanks"},
        )
        assert ours.status_code == 201, ours.text
        portal = store.api.post(
            "/api/v1/users/alice/billing-portal-sessions",
            json={"return_url": "https://evil.example/"},
        )
        assert portal.status_code == 422
    settings = SETTINGS.model_copy(update={"allowed_return_hosts": "app.example, Shop.Example"})
    app = create_app(settings, db=db, passwords=PASSWORDS, seller=make_billing(emulator_server.url))
    with TestClient(app, base_url="https://tokens.example") as client:
        headers = make_key(db, Scope.SPEND)
        assert client.put("/api/v1/users/bob", json={}, headers=headers).status_code == 200
        for host, status in (("app.example", 201), ("shop.example", 201), ("b.example", 422)):
            started = client.post(
                "/api/v1/users/bob/checkout-sessions",
                json={"package_id": "plus", "cancel_url": f"https://{host}/back"},
                headers=headers,
            )
            assert started.status_code == status, (host, started.text)


def test_a_pack_whose_tokens_expire_credits_them_with_the_terms_it_was_sold_on(
    db: Database, emulator_server: EmulatorServer
) -> None:
    """A package's ``expires_after_days`` is copied to the purchase when it is sold; its
    tokens (bonus included) expire that many days after the payment is credited, even if
    the catalog changes in between."""
    lasting = billing.load_catalog(Path("catalogs/default.toml"))
    packages = tuple(
        replace(p, expires_after_days=30) if p.id == "plus" else p for p in lasting.packages
    )
    with open_store(db, emulator_server, catalog=replace(lasting, packages=packages)) as store:
        store.user()
        started = store.checkout("plus")
        assert store.emulator.pay(started["checkout_session_id"]).status_code == 200
        store.emulator.settle()
        with db.read() as conn:
            (row,) = conn.execute(
                sa.select(purchases.c.tokens_expire_days, purchases.c.paid_at)
            ).all()
            balance = ledger.balance(conn, user_id="alice")
    assert row.tokens_expire_days == 30
    assert [(e.amount, e.expires_at, e.source) for e in balance.expiring] == [
        (2000, row.paid_at + timedelta(days=30), ledger.Source.PURCHASE),
        (200, row.paid_at + timedelta(days=30), ledger.Source.PURCHASE),
    ]
