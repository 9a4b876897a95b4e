"""Purchases not paid yet: resumed, canceled by their buyer, or canceled by reconcile once
abandoned; a cancel never loses a payment Stripe took meanwhile."""

from __future__ import annotations

from datetime import timedelta

from tests.billing.conftest import Store
from tests.stripe_emulator import SECRET_KEY
from tokenbank import billing
from tokenbank.billing.unpaid import ABANDONED_AFTER
from tokenbank.columns import utcnow


def _card_payment(store: Store) -> billing.PaymentStart:
    return billing.start_payment(
        store.db, store.seller.stripe, store.seller.catalog, user_id="alice", package_id="plus"
    )


def _intent(store: Store, intent_id: str) -> dict[str, object]:
    found: dict[str, object] = store.emulator.http.get(
        f"/v1/payment_intents/{intent_id}", headers={"Authorization": f"Bearer {SECRET_KEY}"}
    ).json()
    return found


def _reconcile(store: Store, *, later: timedelta) -> billing.Reconciliation:
    return billing.reconcile(
        store.db,
        store.seller.stripe,
        since=utcnow() - timedelta(hours=1),
        policy="debt",
        now=utcnow() + later,
    )


def test_a_card_payment_nobody_pays_is_canceled_after_a_day(store: Store) -> None:
    started = _card_payment(store)
    purchase_id = started.purchase.id
    assert _reconcile(store, later=timedelta(hours=1)).canceled == []
    assert store.purchase(purchase_id)["status"] == "pending"
    found = _reconcile(store, later=ABANDONED_AFTER + timedelta(minutes=1))
    assert found.canceled == [purchase_id] and found.errors == []
    ended = store.purchase(purchase_id)
    assert (ended["status"], ended["failure_code"]) == ("canceled", "canceled")
    intent = _intent(store, started.payment_intent_id)
    assert (intent["status"], intent["cancellation_reason"]) == ("canceled", "abandoned")
    store.emulator.settle()  # Stripe's payment_intent.canceled changes nothing more
    assert store.purchase(purchase_id)["status"] == "canceled"
    again = _reconcile(store, later=ABANDONED_AFTER * 2)
    assert again.canceled == [] and again.errors == []


def test_a_cancel_after_the_card_was_charged_credits_instead(store: Store) -> None:
    started = _card_payment(store)
    confirmed = store.emulator.http.post(
        f"/v1/payment_intents/{started.payment_intent_id}/confirm",
        data={"payment_method": "pm_card_visa"},
        headers={"Authorization": f"Bearer {SECRET_KEY}"},
    )
    assert confirmed.status_code == 200, confirmed.text
    ended = billing.cancel_purchase(
        store.db, store.seller.stripe, purchase_id=started.purchase.id, policy="debt"
    )
    assert ended.status is billing.PurchaseStatus.PAID
    store.emulator.settle()
    assert store.balance()["total_purchased"] == 2200


def test_resume_gives_the_card_form_back_until_the_purchase_ends(store: Store) -> None:
    started = _card_payment(store)
    purchase_id = started.purchase.id
    resumed = billing.resume_purchase(
        store.db, store.seller.stripe, purchase_id=purchase_id, policy="debt"
    )
    assert resumed.payment is not None and resumed.checkout_url is None
    assert resumed.payment.client_secret == started.client_secret
    canceled = billing.cancel_purchase(
        store.db, store.seller.stripe, purchase_id=purchase_id, policy="debt"
    )
    assert canceled.status is billing.PurchaseStatus.CANCELED
    assert (
        billing.cancel_purchase(  # once is enough: again changes nothing
            store.db, store.seller.stripe, purchase_id=purchase_id, policy="debt"
        )
        == canceled
    )
    after = billing.resume_purchase(
        store.db, store.seller.stripe, purchase_id=purchase_id, policy="debt"
    )
    assert (after.payment, after.checkout_url) == (None, None)
    assert after.purchase.status is billing.PurchaseStatus.CANCELED


def test_a_checkout_session_expired_by_stripe_ends_the_purchase_expired(store: Store) -> None:
    started = store.checkout("plus")
    expired = store.emulator.http.post(
        f"/v1/checkout/sessions/{started['checkout_session_id']}/expire",
        headers={"Authorization": f"Bearer {SECRET_KEY}"},
    )
    assert expired.status_code == 200
    store.emulator.settle()  # checkout.session.expired, delivered to the service
    ended = store.purchase(started["purchase_id"])
    assert (ended["status"], ended["failure_code"]) == ("expired", "expired")


def test_a_declined_purchase_canceled_closes_its_page(store: Store) -> None:
    """A declined card leaves the purchase failed, but its page could still take another
    card: leaving it closes it, as for a pending one."""
    started = store.checkout("plus")
    declined = store.emulator.pay(started["checkout_session_id"], card="4000000000000002")
    assert declined.status_code == 402
    store.emulator.settle()
    assert store.purchase(started["purchase_id"])["status"] == "failed"
    ended = billing.cancel_purchase(
        store.db, store.seller.stripe, purchase_id=started["purchase_id"], policy="debt"
    )
    assert ended.status is billing.PurchaseStatus.CANCELED
    assert store.emulator.pay(started["checkout_session_id"]).status_code >= 400
    store.emulator.settle()
    assert store.purchase(started["purchase_id"])["status"] == "canceled"
    assert store.balance()["total_purchased"] == 0
