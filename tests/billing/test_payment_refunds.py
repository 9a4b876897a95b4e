"""Refunds and disputes take back the tokens their share of the payment bought."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
import stripe

from tests.billing.conftest import Store, open_store
from tests.stripe_emulator import SECRET_KEY, EmulatorServer
from tokenbank import billing, ledger
from tokenbank.billing.models import disputes
from tokenbank.columns import utcnow
from tokenbank.db import Database
from tokenbank.payments.stripe import Dispute, Refund, Stripe


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


def test_a_dispute_freezes_the_purchase_not_the_promotion_and_a_loss_takes_it(
    store: Store,
) -> None:
    """Promotional tokens that expire stay usable while the disputed purchase is frozen;
    spent meanwhile, they do not turn the lost dispute into debt."""
    started = store.paid_checkout("plus")
    with store.db.transaction() as conn:
        ledger.credit(
            conn,
            user_id="alice",
            amount=300,
            kind=ledger.TransferKind.GRANT,
            idempotency_key="launch-week",
            source=ledger.Source.PROMO,
            expires_at=utcnow() + timedelta(days=7),
        )
    dispute = _dispute(store, _intent(store, started))
    balance = store.balance()
    assert (balance["available"], balance["held"]) == (300, 2200)
    assert store.spend(300, "llm-1").status_code == 201
    _close(store, dispute, "lost")
    balance = store.balance()
    assert (balance["available"], balance["held"], balance["debt"]) == (0, 0, 0)
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
        store.db, store.seller.stripe, since=utcnow() + timedelta(minutes=5), policy="debt"
    )
    assert [o.purchase.id for o in result.fixed if o.purchase] == [started["purchase_id"]]
    balance = store.balance()
    assert (balance["available"], balance["held"]) == (0, 0)


def _history_kinds(store: Store) -> list[str]:
    answer = store.api.get("/api/v1/users/alice/history")
    return [item["kind"] for item in answer.json()["items"]]


def test_a_refund_that_fails_later_gives_the_tokens_back_once(store: Store) -> None:
    """Stripe marks a refund failed after it had succeeded (the bank could not return the
    money): what its clawback took comes back, exactly once, however often it is told."""
    started = store.paid_checkout("plus")  # 2,200 tokens for $20.00
    intent = _intent(store, started)
    sdk = stripe.StripeClient(SECRET_KEY, base_addresses={"api": store.emulator.url})
    refund = sdk.v1.refunds.create({"payment_intent": intent, "amount": 1000})
    store.emulator.settle()
    assert store.balance()["available"] == 1100
    failed = store.emulator.http.post(f"/_emulator/refunds/{refund.id}/fail")
    assert failed.status_code == 200, failed.text
    store.emulator.settle()
    assert store.balance()["available"] == 2200
    purchase = store.purchase(started["purchase_id"])
    assert (purchase["refunded_amount"], purchase["clawed_back_tokens"]) == (0, 0)
    assert _history_kinds(store)[0] == "restore"
    for event in store.emulator.events():  # every event again, then the reconciler
        store.emulator.http.post(f"/_emulator/events/{event['id']}/redeliver")
    store.emulator.settle()
    billing.reconcile(
        store.db, store.seller.stripe, since=utcnow() - timedelta(hours=1), policy="debt"
    )
    assert store.balance()["available"] == 2200
    assert _history_kinds(store).count("restore") == 1
    # A later refund that holds takes its share as usual.
    _refund(store, intent)
    assert store.balance()["available"] == 0


def test_stripes_refund_failure_card_is_emulated(store: Store) -> None:
    """The refund succeeds and a moment later fails; the wallet ends where it began. The
    moment is the emulator's timer, so the test reads what happened rather than racing it:
    on a slow machine the failure may come before tokenbank reads the refund at all, and
    then nothing is clawed back, rather than clawed back and given back."""
    started = store.checkout("starter")
    paid = store.emulator.pay(started["checkout_session_id"], card="4000000000005126")
    assert paid.status_code == 200, paid.text
    store.emulator.settle()
    _refund(store, _intent(store, started))
    deadline = time.monotonic() + 10
    while not store.emulator.events("refund.failed"):  # the refund fails a moment later
        assert time.monotonic() < deadline, "the refund never failed"
        time.sleep(0.1)
    store.emulator.settle()
    (failed,) = store.emulator.events("refund.failed")
    assert failed["data"]["object"]["status"] == "failed"
    (created,) = store.emulator.events("refund.created")
    assert created["data"]["object"]["status"] == "succeeded"
    assert created["created"] <= failed["created"]
    assert store.balance()["available"] == 500
    kinds = _history_kinds(store)
    assert kinds[-1] == "purchase"
    assert kinds[:-1] in ([], ["restore", "clawback"])


def test_a_failed_refund_cancels_the_debt_it_recorded(
    db: Database, emulator_server: EmulatorServer
) -> None:
    """Both policies: the wallet ends as if the refund had never happened, including debt
    that a later purchase had already paid off (given back as tokens)."""
    for policy, expected in (("debt", 200), ("negative", 2400)):
        with open_store(db, emulator_server, policy=policy) as store:
            user = store.user(f"user-{policy}")
            started = store.paid_checkout("plus", user)
            assert store.spend(2000, f"llm-{policy}", user).status_code == 201
            intent = store.purchase(started["purchase_id"])["payment_intent_id"]
            sdk = stripe.StripeClient(SECRET_KEY, base_addresses={"api": store.emulator.url})
            refund = sdk.v1.refunds.create({"payment_intent": intent})
            store.emulator.settle()
            assert (store.balance(user)["available"], store.balance(user)["debt"]) == (0, 2000)
            if policy == "negative":  # the next purchase pays the debt off
                store.paid_checkout("plus", user)
                assert (store.balance(user)["available"], store.balance(user)["debt"]) == (200, 0)
            store.emulator.http.post(f"/_emulator/refunds/{refund.id}/fail")
            store.emulator.settle()
            balance = store.balance(user)
            assert (balance["available"], balance["debt"]) == (expected, 0), policy


class Counting(Stripe):
    """The real client, counting the lists it reads."""

    def __init__(self, url: str) -> None:
        super().__init__(secret_key=SECRET_KEY, api_base=url, max_network_retries=0)
        self.lists: list[str] = []

    def refunds_of(self, payment_intent_id: str) -> list[Refund]:
        self.lists.append("refunds")
        return super().refunds_of(payment_intent_id)

    def disputes_of(self, payment_intent_id: str) -> list[Dispute]:
        self.lists.append("disputes")
        return super().disputes_of(payment_intent_id)


def test_the_news_of_a_payment_reads_the_lists_its_charge_shows(store: Store) -> None:
    """What a payment's event reads (``lists="when_the_charge_shows"``), swept over the
    states a payment can be in, against what a full read finds: the same refunds and
    disputes whenever the charge shows any, and no list read when it shows none. The one
    documented difference: a refund that succeeded and then failed no longer shows on the
    charge, so only its own events and reconcile (full reads) see it."""
    sdk = stripe.StripeClient(SECRET_KEY, base_addresses={"api": store.emulator.url})
    unpaid = store.checkout("plus")  # no charge yet
    paid = _intent(store, store.paid_checkout("plus"))
    refunded = _intent(store, store.paid_checkout("plus"))
    _refund(store, refunded, 500)
    disputed = _intent(store, store.paid_checkout("plus"))
    _close(store, _dispute(store, disputed), "won")
    undone = _intent(store, store.paid_checkout("plus"))
    refund = sdk.v1.refunds.create({"payment_intent": undone, "amount": 1000})
    store.emulator.settle()
    assert store.emulator.http.post(f"/_emulator/refunds/{refund.id}/fail").status_code == 200
    store.emulator.settle()
    cases = {
        "unpaid": ({"session_id": unpaid["checkout_session_id"]}, []),
        "paid": ({"payment_intent_id": paid}, []),
        "refunded": ({"payment_intent_id": refunded}, ["refunds"]),
        "disputed": ({"payment_intent_id": disputed}, ["disputes"]),
        "refund failed after succeeding": ({"payment_intent_id": undone}, []),
    }
    for name, (where, read) in cases.items():
        counting = Counting(store.emulator.url)
        brief = billing.fetch_payment(counting, lists="when_the_charge_shows", **where)
        assert counting.lists == read, name
        full = billing.fetch_payment(counting, **where)
        assert brief.intent is not None or name == "unpaid"
        if name == "refund failed after succeeding":
            assert brief.refunds == () and [r.status for r in full.refunds] == ["failed"]
            continue
        assert (brief.refunds, brief.disputes) == (full.refunds, full.disputes), name
        assert brief.session == full.session, name
