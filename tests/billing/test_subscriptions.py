"""Plans end to end: tokenbank served on a real port, the Stripe emulator beside it billing
subscriptions and delivering their signed webhooks, time moved with the emulator's clock.
Every test runs on SQLite and PostgreSQL, and ``ledger verify`` runs after each."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa

from tests.billing.conftest import Store
from tests.stripe_emulator import SECRET_KEY, event_bytes, signed
from tokenbank import billing
from tokenbank.billing.models import subscription_grants
from tokenbank.ledger.models import Source, buckets

DAY = 86400
#: Past a period's end and the hour its renewal invoice stays a draft.
MONTH = 31 * DAY + 2 * 3600


def _subscribe(
    store: Store, plan_id: str = "basic", interval: str = "month", user_id: str = "alice"
) -> dict[str, Any]:
    answer = store.api.post(
        f"/api/v1/users/{user_id}/subscriptions", json={"plan_id": plan_id, "interval": interval}
    )
    assert answer.status_code == 201, answer.text
    started: dict[str, Any] = answer.json()
    return started


def _subscribed(
    store: Store,
    plan_id: str = "basic",
    interval: str = "month",
    card: str = "4242424242424242",
    user_id: str = "alice",
) -> dict[str, Any]:
    started = _subscribe(store, plan_id, interval, user_id)
    paid = store.emulator.pay(started["checkout_session_id"], card)
    assert paid.status_code == 200, paid.text
    store.emulator.settle()
    return _subscription(store, user_id)


def _subscription(store: Store, user_id: str = "alice") -> dict[str, Any]:
    answer = store.api.get(f"/api/v1/users/{user_id}/subscription")
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


def _advance(store: Store, seconds: int) -> int:
    answer = store.emulator.http.post("/_emulator/clock/advance", json={"seconds": seconds})
    assert answer.status_code == 200, answer.text
    store.emulator.settle()
    now: int = answer.json()["now"]
    return now


def _stripe(store: Store, method: str, path: str, **params: Any) -> dict[str, Any]:
    answer = store.emulator.http.request(
        method,
        path,
        params=params if method == "GET" else None,
        data=None if method == "GET" else params,
        headers={"Authorization": f"Bearer {SECRET_KEY}"},
    )
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


def _grants(store: Store) -> list[Any]:
    with store.db.read() as conn:
        return list(
            conn.execute(sa.select(subscription_grants).order_by(subscription_grants.c.id)).all()
        )


def _available(store: Store, user_id: str = "alice") -> int:
    available: int = store.balance(user_id)["available"]
    return available


def _stripe_id(store: Store) -> str:
    with store.db.read() as conn:
        found = billing.get_subscription(conn, user_id="alice")
    assert found.stripe_subscription_id is not None
    return found.stripe_subscription_id


def test_subscribing_monthly_on_the_hosted_page_grants_the_first_month(store: Store) -> None:
    found = _subscribed(store, "basic")
    assert (found["plan_id"], found["interval"], found["status"]) == ("basic", "month", "active")
    assert found["cancel_at_period_end"] is False and found["ends_at"] is None
    assert found["allowance"] == {
        "tokens_per_month": 1000,
        "granted": 1000,
        "left": 1000,
        "month_ends_at": found["current_period_end"],
    }
    assert found["next_allowance_at"] == found["current_period_end"]
    assert _available(store) == 1000
    (grant,) = _grants(store)
    assert (grant.kind, grant.tokens) == ("invoice", 1000)
    with store.db.read() as conn:
        bucket = conn.execute(
            sa.select(buckets).where(buckets.c.transfer_id == grant.transfer_id)
        ).one()
    assert bucket.source == Source.SUBSCRIPTION
    period_end = datetime.fromisoformat(found["current_period_end"])
    assert bucket.expires_at == period_end + billing.GRACE


def test_a_second_subscription_is_refused_with_a_stable_code(store: Store) -> None:
    _subscribed(store, "basic")
    answer = store.api.post(
        "/api/v1/users/alice/subscriptions", json={"plan_id": "pro", "interval": "month"}
    )
    assert answer.status_code == 409
    assert answer.json()["code"] == "subscription_exists"
    assert "change" in answer.json()["detail"]


def test_an_abandoned_checkout_does_not_block_a_new_one(store: Store) -> None:
    first = _subscribe(store, "basic")
    second = _subscribe(store, "pro")
    assert second["checkout_session_id"] != first["checkout_session_id"]
    session = _stripe(store, "GET", f"/v1/checkout/sessions/{first['checkout_session_id']}")
    assert session["status"] == "expired"  # closed: it can never be paid as well
    assert store.emulator.pay(second["checkout_session_id"]).status_code == 200
    store.emulator.settle()
    assert _subscription(store)["plan_id"] == "pro"


def test_bad_plan_and_interval_are_4xx_with_codes(store: Store) -> None:
    cases = [
        ({"plan_id": "nope", "interval": "month"}, 422, "unknown_plan"),
        ({"plan_id": "basic", "interval": "week"}, 422, None),
        ({"plan_id": "basic", "interval": "month", "extra": 1}, 422, None),
        ({"plan_id": "../x", "interval": "month"}, 422, None),
    ]
    for body, status, code in cases:
        answer = store.api.post("/api/v1/users/alice/subscriptions", json=body)
        assert answer.status_code == status, (body, answer.text)
        if code:
            assert answer.json()["code"] == code
    answer = store.api.get("/api/v1/users/alice/subscription")
    assert (answer.status_code, answer.json()["code"]) == (404, "no_subscription")
    answer = store.api.post("/api/v1/users/alice/subscription/cancel")
    assert (answer.status_code, answer.json()["code"]) == (404, "no_subscription")


def test_a_year_of_monthly_renewals_grants_once_per_invoice_and_resets(store: Store) -> None:
    _subscribed(store, "basic")
    assert store.spend(300, "s-1").status_code == 201
    for _ in range(12):
        _advance(store, MONTH)
    grants = _grants(store)
    assert len(grants) == 13
    assert len({g.invoice_id for g in grants}) == 13
    assert all(g.tokens == 1000 and g.kind == "invoice" for g in grants)
    # reset: each renewal expired what was left of the month before, in the same step.
    assert grants[1].expired == 700 and all(g.expired == 1000 for g in grants[2:])
    assert _available(store) == 1000
    invoices = _stripe(store, "GET", "/v1/invoices", subscription=_stripe_id(store), limit=100)
    assert sum(1 for i in invoices["data"] if i["status"] == "paid") == 13


def test_rollover_carries_unused_tokens_up_to_the_cap_after_a_stripe_trial(
    store: Store,
) -> None:
    found = _subscribed(store, "pro")  # 5000 a month, rollover capped at 5000, 7-day trial
    assert found["status"] == "trialing" and found["trial_end"] is not None
    assert _available(store) == 5000  # the $0 trial invoice is paid: the trial's allowance
    assert store.spend(1000, "s-1").status_code == 201
    _advance(store, 7 * DAY + 2 * 3600)
    assert _subscription(store)["status"] == "active"
    assert _available(store) == 5000 + 4000  # 4000 carried
    _advance(store, MONTH)
    grants = _grants(store)
    assert [(g.tokens, g.carried, g.expired) for g in grants] == [
        (5000, 0, 0),
        (5000, 4000, 0),
        (5000, 5000, 4000),  # 9000 unused: the cap keeps 5000
    ]
    assert _available(store) == 10000


def test_invoice_paid_ten_times_at_once_and_reordered_grants_once(store: Store) -> None:
    _subscribed(store, "basic")
    _advance(store, MONTH)
    assert len(_grants(store)) == 2
    subscription = _stripe(store, "GET", f"/v1/subscriptions/{_stripe_id(store)}")
    invoice = _stripe(store, "GET", f"/v1/invoices/{subscription['latest_invoice']}")
    events = [
        {
            "id": f"evt_copy_{n}",
            "object": "event",
            "type": "invoice.paid" if n % 2 else "customer.subscription.updated",
            "created": int(datetime.now(UTC).timestamp()) - n,
            "livemode": False,
            "api_version": "2026-10-28.endive",
            "data": {"object": invoice if n % 2 else subscription},
        }
        for n in range(20)
    ]
    # Forget the grant rows' effects: delete nothing, just deliver all at once.
    answers: list[int] = []

    def deliver(event: dict[str, Any]) -> None:
        payload = event_bytes(event)
        with httpx.Client(base_url=str(store.api.base_url), timeout=20) as client:
            answer = client.post(
                "/webhooks/stripe",
                content=payload,
                headers={"Stripe-Signature": signed(payload), "Content-Type": "application/json"},
            )
        answers.append(answer.status_code)

    threads = [threading.Thread(target=deliver, args=(e,)) for e in reversed(events)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [200] * 20
    assert len(_grants(store)) == 2
    assert _available(store) == 1000


def test_a_failed_renewal_grants_nothing_until_it_is_paid_then_once(store: Store) -> None:
    _subscribed(store, "basic")
    sub_id = _stripe_id(store)
    _stripe(
        store,
        "POST",
        f"/v1/subscriptions/{sub_id}",
        default_payment_method="pm_card_chargeCustomerFail",
    )
    _advance(store, MONTH)
    found = _subscription(store)
    assert found["status"] == "past_due"
    assert len(_grants(store)) == 1
    invoice = _stripe(store, "GET", f"/v1/subscriptions/{sub_id}")["latest_invoice"]
    _advance(store, 5 * DAY)  # paid late, days into the month: still granted, once
    _stripe(store, "POST", f"/v1/invoices/{invoice}/pay", payment_method="pm_card_visa")
    store.emulator.settle()
    assert _subscription(store)["status"] == "active"
    grants = _grants(store)
    assert len(grants) == 2 and grants[1].invoice_id == invoice


def test_cancel_at_period_end_stops_renewals_and_keeps_what_was_granted(store: Store) -> None:
    _subscribed(store, "basic")
    answer = store.api.post("/api/v1/users/alice/subscription/cancel")
    assert answer.status_code == 200, answer.text
    cancelled = answer.json()
    assert cancelled["cancel_at_period_end"] is True
    assert cancelled["ends_at"] == cancelled["current_period_end"]
    assert cancelled["next_allowance_at"] is None
    again = store.api.post("/api/v1/users/alice/subscription/cancel")
    assert again.status_code == 200 and again.json()["ends_at"] == cancelled["ends_at"]
    _advance(store, MONTH)
    found = _subscription(store)
    assert found["status"] == "canceled"
    assert len(_grants(store)) == 1
    # Granted tokens stay until they expire (the month's end plus the grace).
    assert _available(store) == 1000
    _advance(store, MONTH)
    assert len(_grants(store)) == 1
    # A canceled subscription leaves room for a new one.
    _subscribe(store, "pro")


def test_a_refund_of_a_subscription_invoice_claws_back_its_allowance(store: Store) -> None:
    _subscribed(store, "basic")
    assert store.spend(400, "s-1").status_code == 201
    sub_id = _stripe_id(store)
    (payment,) = _stripe(
        store,
        "GET",
        "/v1/invoice_payments",
        invoice=_stripe(store, "GET", f"/v1/subscriptions/{sub_id}")["latest_invoice"],
    )["data"]
    _stripe(store, "POST", "/v1/refunds", payment_intent=payment["payment"]["payment_intent"])
    store.emulator.settle()
    # 1000 granted, 400 spent: the 600 left are taken, the 400 recorded as debt.
    assert _available(store) == 0
    assert store.balance()["debt"] == 400


def test_reconcile_grants_what_dropped_deliveries_missed(store: Store) -> None:
    store.emulator.configure(url=None)  # nothing is delivered from now on
    started = _subscribe(store, "basic")
    assert store.emulator.pay(started["checkout_session_id"]).status_code == 200
    assert _available(store) == 0
    result = billing.reconcile(
        store.db,
        store.seller.stripe,
        since=datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1),
        policy="debt",
        catalog=store.seller.catalog,
    )
    assert not result.errors, result.errors
    assert len(result.subscriptions) == 1
    assert _available(store) == 1000
    assert _subscription(store)["status"] == "active"
    again = billing.reconcile(
        store.db,
        store.seller.stripe,
        since=datetime.now(UTC) - timedelta(hours=1),
        policy="debt",
        catalog=store.seller.catalog,
    )
    assert again.subscriptions == []
    assert _available(store) == 1000


def test_a_yearly_plan_grants_one_month_at_a_time(store: Store) -> None:
    found = _subscribed(store, "basic", "year")
    assert found["interval"] == "year"
    assert _available(store) == 1000
    (first,) = _grants(store)
    assert first.period_end > first.month_end  # a year paid, one month granted
    # The worker grants each month once it has begun, never ahead, never twice.
    start = first.month_start
    granted = billing.grant_due_months(store.db, now=start.replace(day=min(start.day, 28)))
    assert granted == []
    in_three_months = first.month_end.replace(month=(first.month_end.month + 1) % 12 + 1)
    billing.grant_due_months(store.db, now=in_three_months)
    billing.grant_due_months(store.db, now=in_three_months)
    grants = _grants(store)
    assert [g.kind for g in grants] == ["invoice", "month", "month", "month"]
    assert len({g.month_start for g in grants}) == 4
    assert _available(store) == 1000  # basic resets: one month's allowance at a time


def _change(store: Store, plan_id: str, interval: str = "month") -> dict[str, Any]:
    answer = store.api.post(
        "/api/v1/users/alice/subscription/change", json={"plan_id": plan_id, "interval": interval}
    )
    assert answer.status_code == 200, answer.text
    store.emulator.settle()
    return _subscription(store)


def test_an_upgrade_grants_the_difference_once_and_a_downgrade_waits_for_the_renewal(
    store: Store,
) -> None:
    billing.sync_catalog(store.seller.stripe, store.seller.catalog)  # prices by lookup key
    _subscribed(store, "basic")  # 1000 a month
    assert store.spend(200, "s-1").status_code == 201
    found = _change(store, "studio")  # 2000 a month: invoiced now, prorated
    assert (found["plan_id"], found["status"]) == ("studio", "active")
    grants = _grants(store)
    assert [(g.kind, g.tokens) for g in grants] == [("invoice", 1000), ("upgrade", 1000)]
    assert _available(store) == 800 + 1000
    assert found["allowance"]["granted"] == 2000
    invoices = _stripe(store, "GET", "/v1/invoices", subscription=_stripe_id(store))["data"]
    update = next(i for i in invoices if i["billing_reason"] == "subscription_update")
    assert update["status"] == "paid" and 0 < update["amount_paid"] < 4900
    # The same change again is no change; the invoice's events again grant nothing more.
    assert _change(store, "studio")["plan_id"] == "studio"
    assert len(_grants(store)) == 2
    found = _change(store, "basic")  # a downgrade: nothing invoiced, nothing taken now
    assert found["plan_id"] == "basic"
    assert len(_grants(store)) == 2 and _available(store) == 1800
    _advance(store, MONTH)
    grants = _grants(store)
    assert [(g.kind, g.tokens) for g in grants][-1] == ("invoice", 1000)
    assert _available(store) == 1000  # basic resets: the month before expired


def test_a_change_of_interval_starts_a_new_period_at_once(store: Store) -> None:
    _subscribed(store, "basic")
    before = _subscription(store)
    _advance(store, 10 * DAY)
    found = _change(store, "basic", "year")
    assert found["interval"] == "year"
    assert found["current_period_end"] > before["current_period_end"]
    grants = _grants(store)
    assert [g.kind for g in grants] == ["invoice", "invoice"]
    assert grants[1].period_end > grants[1].month_end  # a year paid, a month granted
    assert _available(store) == 1000


def _portal(store: Store) -> str:
    answer = store.api.post(
        "/api/v1/users/alice/billing-portal-sessions",
        json={"return_url": "https://tokens.example/dashboard"},
    )
    assert answer.status_code == 201, answer.text
    url: str = answer.json()["url"]
    return url.replace(store.emulator.url, "")


def _in_portal(store: Store, path: str, **form: str) -> str:
    answer = store.emulator.http.post(path, data={"subscription": _stripe_id(store), **form})
    assert answer.status_code == 200, answer.text
    store.emulator.settle()
    return answer.text


def test_the_portal_cancels_switches_plan_and_updates_the_card(store: Store) -> None:
    billing.sync_catalog(store.seller.stripe, store.seller.catalog)
    _subscribed(store, "basic")
    portal = _portal(store)
    page = store.emulator.http.get(portal).text
    assert "Basic" in page and "Switch plan" in page and "Cancel plan" in page
    # The portal schedules a cancel as flexible billing mode does: cancel_at, not
    # cancel_at_period_end. tokenbank reads either.
    _in_portal(store, portal, action="cancel")
    found = _subscription(store)
    assert found["cancel_at_period_end"] is True
    assert found["ends_at"] == found["current_period_end"]
    _in_portal(store, portal, action="renew")
    assert _subscription(store)["ends_at"] is None
    prices = _stripe(store, "GET", "/v1/prices", lookup_keys=["tokenbank_plan_pro_month"])
    (pro,) = prices["data"]
    assert "switched" in _in_portal(store, portal, action="switch", price=pro["id"])
    found = _subscription(store)
    assert found["plan_id"] == "pro"
    assert [(g.kind, g.tokens) for g in _grants(store)] == [("invoice", 1000), ("upgrade", 4000)]
    # A card that fails renewals, then the portal's new card pays the open invoice.
    _in_portal(store, portal, action="card", card_number="4000000000000341")
    _advance(store, MONTH)
    assert _subscription(store)["status"] == "past_due"
    assert len(_grants(store)) == 2
    text = _in_portal(store, portal, action="card", card_number="4242424242424242")
    assert "open invoice paid" in text
    assert _subscription(store)["status"] == "active"
    assert [(g.kind, g.tokens) for g in _grants(store)][-1] == ("invoice", 5000)


def _use(store: Store, path: str, **body: Any) -> dict[str, Any]:
    answer = store.api.post(path, json=body)
    assert answer.status_code in (200, 201), answer.text
    found: dict[str, Any] = answer.json()
    return found


def test_an_unlimited_feature_takes_no_tokens_while_the_plan_covers_it(store: Store) -> None:
    _subscribed(store, "studio")  # unlimited images (fair use: 1,000 a month), 2,000 tokens
    spend = "/api/v1/users/alice/spend"
    covered = _use(store, spend, feature="image", quantity=3, idempotency_key="img-1")
    assert (covered["covered"], covered["amount"], covered["transfer_id"]) == (True, 0, None)
    assert covered["balance"] == 2000 and not covered["replayed"]
    again = _use(store, spend, feature="image", quantity=3, idempotency_key="img-1")
    assert again["replayed"] and again["covered"]
    check = _use(store, "/api/v1/users/alice/check", feature="image", quantity=1)
    assert (check["source"], check["cost"], check["covered_left"]) == ("subscription", 0, 996)
    # A hold of a covered feature reserves nothing; posting it takes nothing.
    hold = _use(
        store, "/api/v1/users/alice/holds", feature="image", quantity=2, idempotency_key="h-1"
    )
    assert hold["covered"] and store.balance()["held"] == 0
    posted = _use(store, f"/api/v1/holds/{hold['hold_id']}/post", amount=80)
    assert (posted["covered"], posted["amount"], posted["transfer_id"]) == (True, 0, None)
    assert _use(store, f"/api/v1/holds/{hold['hold_id']}/post", amount=80)["replayed"]
    other = _use(
        store, "/api/v1/users/alice/holds", feature="image", quantity=5, idempotency_key="h-2"
    )
    assert _use(store, f"/api/v1/holds/{other['hold_id']}/void")["status"] == "voided"
    # Other features take tokens as always.
    chat = _use(store, spend, feature="chat_message", quantity=2, idempotency_key="chat-1")
    assert (chat["covered"], chat["amount"]) == (False, 10)
    # Up to the fair-use cap (3 + 2 used; a voided hold counts for nothing), then tokens.
    _use(store, spend, feature="image", quantity=995, idempotency_key="img-2")
    check = _use(store, "/api/v1/users/alice/check", feature="image", quantity=1)
    assert (check["source"], check["cost"]) == ("tokens", 40)
    paid = _use(store, spend, feature="image", quantity=1, idempotency_key="img-3")
    assert (paid["covered"], paid["amount"]) == (False, 40)
    assert _available(store) == 2000 - 10 - 40
    assert _subscription(store)["unlimited"] == [{"feature": "image", "used": 1000, "cap": 1000}]


def test_a_lapsed_plan_covers_nothing(store: Store) -> None:
    _subscribed(store, "studio")
    _stripe(
        store,
        "POST",
        f"/v1/subscriptions/{_stripe_id(store)}",
        default_payment_method="pm_card_chargeCustomerFail",
    )
    _advance(store, MONTH)
    assert _subscription(store)["status"] == "past_due"
    paid = _use(
        store, "/api/v1/users/alice/spend", feature="image", quantity=1, idempotency_key="i"
    )
    assert (paid["covered"], paid["amount"]) == (False, 40)


def test_concurrent_covered_uses_never_pass_the_fair_use_cap(store: Store) -> None:
    _subscribed(store, "studio")  # fair use: 1,000 images a month; 2,000 tokens
    answers: list[httpx.Response] = []

    def use(n: int) -> None:
        with httpx.Client(base_url=str(store.api.base_url), timeout=30) as client:
            answers.append(
                client.post(
                    "/api/v1/users/alice/spend",
                    json={"feature": "image", "quantity": 100, "idempotency_key": f"c-{n}"},
                    headers=dict(store.api.headers),
                )
            )

    threads = [threading.Thread(target=use, args=(n,)) for n in range(15)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    covered = [a for a in answers if a.status_code == 201 and a.json()["covered"]]
    assert len(covered) == 10  # exactly the cap, however the requests interleave
    # The rest cost tokens: 100 images are 4,000 tokens, more than the 2,000 there are.
    assert sorted(a.status_code for a in answers if a not in covered) == [402] * 5
    assert _available(store) == 2000


def test_a_yearly_plan_switched_to_monthly_stops_granting_the_year(store: Store) -> None:
    _subscribed(store, "basic", "year")
    now = _advance(store, 10 * DAY)
    found = _change(store, "basic", "month")  # a new, shorter period, invoiced now
    assert found["interval"] == "month"
    assert [g.kind for g in _grants(store)] == ["invoice", "invoice"]
    # The year's later months are not granted beside the monthly invoices.
    assert (
        billing.grant_due_months(
            store.db, now=datetime.fromtimestamp(now, UTC) + 40 * timedelta(days=1)
        )
        == []
    )
    answer = store.emulator.http.delete(
        f"/v1/subscriptions/{_stripe_id(store)}", headers={"Authorization": f"Bearer {SECRET_KEY}"}
    )
    assert answer.status_code == 200
    store.emulator.settle()
    assert _subscription(store)["status"] == "canceled"


def test_a_plan_trial_is_given_once_per_user(store: Store) -> None:
    assert _subscribed(store, "pro")["status"] == "trialing"
    answer = store.emulator.http.delete(
        f"/v1/subscriptions/{_stripe_id(store)}", headers={"Authorization": f"Bearer {SECRET_KEY}"}
    )
    assert answer.status_code == 200
    store.emulator.settle()
    again = _subscribed(store, "pro")
    assert again["status"] == "active" and again["trial_end"] is None
    invoices = _stripe(store, "GET", "/v1/invoices", subscription=_stripe_id(store))["data"]
    assert [i["amount_paid"] for i in invoices] == [2900]


def test_an_upgrade_late_in_the_month_grants_the_difference_for_what_is_left(
    store: Store,
) -> None:
    billing.sync_catalog(store.seller.stripe, store.seller.catalog)
    _subscribed(store, "basic")
    period = _subscription(store)
    start = datetime.fromisoformat(period["current_period_start"])
    end = datetime.fromisoformat(period["current_period_end"])
    _advance(store, int((end - start).total_seconds() * 3 / 4))
    _change(store, "studio")
    upgrade = _grants(store)[-1]
    assert upgrade.kind == "upgrade" and 240 <= upgrade.tokens <= 260  # a quarter of 1,000
