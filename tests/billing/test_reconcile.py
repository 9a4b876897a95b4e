"""Reconciliation both ways: what Stripe shows that the ledger missed, what the ledger holds
that Stripe does not show, and purchases that never reached Stripe."""

from __future__ import annotations

import re
from datetime import timedelta

import sqlalchemy as sa
from fastapi.testclient import TestClient

from tests.billing.conftest import Store
from tests.web.browsing import form_token, new_user, signed_in_user
from tests.web.conftest import PASSWORDS, SETTINGS
from tokenbank import audit, billing, identity
from tokenbank.billing.credits import credit_paid
from tokenbank.billing.models import purchases
from tokenbank.billing.outcomes import Outcome
from tokenbank.columns import utcnow
from tokenbank.web.app import create_app


def _reconcile(store: Store) -> billing.Reconciliation:
    return billing.reconcile(
        store.db, store.seller.stripe, since=utcnow() - timedelta(hours=1), policy="debt"
    )


def _credit_anyway(store: Store, purchase_id: int) -> None:
    """As a bug would: credit a purchase Stripe never saw paid."""
    with store.db.transaction() as conn:
        purchase = billing.get_purchase(conn, purchase_id=purchase_id)
        credit_paid(conn, purchase, Outcome(purchase=purchase), policy="debt", now=utcnow())


def test_a_purchase_paid_here_but_not_at_stripe_is_flagged_never_reversed(store: Store) -> None:
    started = store.checkout("plus")  # never paid
    _credit_anyway(store, started["purchase_id"])
    assert store.balance()["available"] == 2200
    found = _reconcile(store)
    ((purchase_id, reason),) = found.flagged
    assert purchase_id == started["purchase_id"] and "Stripe reports the payment" in reason
    assert found.awaiting_review == 1 and not found.errors
    assert store.balance()["available"] == 2200  # reconcile never takes tokens back itself
    assert "tokenbank_purchases_awaiting_review 1.0" in store.api.get("/metrics").text
    again = _reconcile(store)  # flagged once; still waiting
    assert (again.flagged, again.awaiting_review) == ([], 1)

    # An admin reverses it on the pages: the tokens go back, with an audit line.
    app = create_app(SETTINGS, db=store.db, passwords=PASSWORDS, seller=store.seller)
    with TestClient(app, base_url="https://tokens.example") as browser:
        new_user(browser, "boss@example.com")
        with store.db.transaction() as conn:
            identity.set_admin(conn, user_id=signed_in_user(browser), admin=True)
        page = browser.get("/admin/reviews")
        assert f"Purchase #{purchase_id}" in page.text and reason in page.text
        assert 'value="reverse"' in page.text and 'value="credit"' not in page.text
        token = form_token(browser, "/admin/reviews")
        refused = browser.post(
            f"/admin/purchases/{purchase_id}/review",
            data={"decision": "credit", "reason": "wrong choice", "csrf_token": token},
        )
        assert refused.status_code == 422
        no_csrf = browser.post(
            f"/admin/purchases/{purchase_id}/review",
            data={"decision": "reverse", "reason": "x", "csrf_token": "nope"},
        )
        assert no_csrf.status_code == 403
        done = browser.post(
            f"/admin/purchases/{purchase_id}/review",
            data={"decision": "reverse", "reason": "never paid at Stripe", "csrf_token": token},
            follow_redirects=False,
        )
        assert done.status_code == 303, done.text
        assert "Nothing to review" in browser.get(done.headers["location"]).text
        actor = f"user:{signed_in_user(browser)}"
    assert store.balance()["available"] == 0
    with store.db.read() as conn:
        (action,) = audit.actions_about(conn, subject=f"purchase:{purchase_id}")
    assert (action.action, action.actor, action.reason) == (
        "purchase.reverse",
        actor,
        "never paid at Stripe",
    )
    final = _reconcile(store)
    assert (final.flagged, final.awaiting_review, final.errors) == ([], 0, [])
    assert "tokenbank_purchases_awaiting_review 0.0" in store.api.get("/metrics").text


def test_purchases_stripe_no_longer_knows(store: Store) -> None:
    """Stripe forgot everything (another account's key, an emulator that restarted): a
    paid purchase is flagged, a pending one ends as unknown to Stripe; neither is an error."""
    paid = store.paid_checkout("plus")
    pending = store.checkout("starter")
    store.emulator.reset(webhook_url=f"{store.api.base_url}webhooks/stripe")
    found = _reconcile(store)
    assert not found.errors, found.errors
    assert [p for p, _ in found.flagged] == [paid["purchase_id"]]
    assert "unknown to Stripe" in found.flagged[0][1]
    assert [p for p, _ in found.expired] == [pending["purchase_id"]]
    gone = store.purchase(pending["purchase_id"])
    assert (gone["status"], gone["failure_code"]) == ("expired", "unknown_to_stripe")
    assert store.balance()["available"] == 2200


def _orphan(store: Store, *, minutes_ago: int) -> int:
    """A pending purchase whose process died before it called Stripe."""
    created = utcnow() - timedelta(minutes=minutes_ago)
    with store.db.transaction() as conn:
        return int(
            conn.execute(
                sa.insert(purchases)
                .values(
                    user_id="alice",
                    package_id="plus",
                    tokens=2000,
                    bonus_tokens=200,
                    amount=2000,
                    currency="usd",
                    flow="checkout",
                    status="pending",
                    stripe_idempotency_key=f"tokenbank-orphan-{minutes_ago}",
                    created_at=created,
                    updated_at=created,
                )
                .returning(purchases.c.id)
            ).scalar_one()
        )


def test_a_purchase_that_never_reached_stripe_ends_after_an_hour(store: Store) -> None:
    old, recent = _orphan(store, minutes_ago=90), _orphan(store, minutes_ago=10)
    # One more made its Stripe session, but died before storing the session's id.
    linked = _orphan(store, minutes_ago=80)
    with store.db.read() as conn:
        reference = billing.get_purchase(conn, purchase_id=linked).reference
    store.seller.stripe.create_checkout_session(
        line_item={
            "price_data": {
                "currency": "usd",
                "unit_amount": 2000,
                "product_data": {"name": "Plus"},
            },
            "quantity": 1,
        },
        customer_id=None,
        client_reference_id=str(linked),
        metadata={"tokenbank_purchase_id": str(linked), "tokenbank_reference": reference},
        success_url="https://tokens.example/purchase/success",
        cancel_url="https://tokens.example/purchase/cancel",
        locale=None,
        idempotency_key=reference,
    )
    found = _reconcile(store)
    assert [p for p, _ in found.expired] == [old]
    ended = store.purchase(old)
    assert (ended["status"], ended["failure_code"]) == ("expired", "not_started")
    assert store.purchase(recent)["status"] == "pending"
    relinked = store.purchase(linked)
    assert relinked["status"] == "pending" and relinked["checkout_session_id"]
    # The buyer's dashboard says why.
    app = create_app(SETTINGS, db=store.db, passwords=PASSWORDS, seller=store.seller)
    with store.db.transaction() as conn:
        conn.execute(sa.update(purchases).values(user_id="alice"))
    with TestClient(app, base_url="https://tokens.example") as browser:
        new_user(browser, "alice@example.org")
        who = signed_in_user(browser)
        with store.db.transaction() as conn:
            conn.execute(sa.update(purchases).where(purchases.c.id == old).values(user_id=who))
        dashboard = browser.get("/dashboard").text
        assert "It never reached the payment service; nothing was charged." in dashboard
        assert re.search(r'pill expired">Expired', dashboard)


def test_stripe_failing_during_reconcile_is_reported_not_guessed(store: Store) -> None:
    store.emulator.configure(drop=100)
    started = store.checkout("plus")
    store.emulator.pay(started["checkout_session_id"])
    store.emulator.http.post(
        "/_emulator/api_faults",
        json={"faults": [{"method": "GET", "path": "/v1/payment_intents/*", "times": 50}]},
    )
    found = _reconcile(store)
    assert found.errors and store.balance()["available"] == 0
    store.emulator.http.post("/_emulator/api_faults", json={"faults": []})
    healed = _reconcile(store)
    assert not healed.errors and store.balance()["available"] == 2200
