"""The money events in the logs: each one, driven through the emulator, is written exactly
once with the fields docs/stripe.md lists, and no line holds a secret."""

from __future__ import annotations

import re
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import stripe
from structlog.testing import capture_logs

from tests.billing.conftest import Store
from tests.stripe_emulator import PUBLISHABLE_KEY, SECRET_KEY, WEBHOOK_SECRET, make_billing
from tokenbank import billing
from tokenbank.billing.models import purchases
from tokenbank.columns import utcnow

Line = MutableMapping[str, Any]


def _documented() -> dict[str, set[str]]:
    """The money events and their fields, as the table in docs/stripe.md gives them."""
    text = Path("docs/stripe.md").read_text()
    section = text.split("## Money events in the logs", 1)[1].split("\n## ", 1)[0]
    events: dict[str, set[str]] = {}
    for row in section.splitlines():
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        fields = set(re.findall(r"`(\w+)`", cells[3]))
        for name in re.findall(r"`(\w+)`", cells[0]):
            events[name] = fields
    return events


DOCUMENTED = _documented()


class Logs:
    """Every line captured during the test, step by step."""

    def __init__(self) -> None:
        self.lines: list[Line] = []

    @contextmanager
    def step(self, **expected: dict[str, Any]) -> Iterator[None]:
        """Exactly the money events named in ``expected`` are written during the step, once
        each, with their documented fields and the values given."""
        with capture_logs() as captured:
            yield
        self.lines.extend(captured)
        money = [line for line in captured if line["event"] in DOCUMENTED]
        assert sorted(line["event"] for line in money) == sorted(expected), money
        for line in money:
            assert set(DOCUMENTED[line["event"]]) <= set(line), line
            for key, value in expected[line["event"]].items():
                assert line[key] == value, (key, line)
            for key, value in line.items():
                if key in {"tokens", "taken", "debt", "amount"} or key.endswith(
                    ("_amount", "_tokens", "_collected", "_returned", "_cancelled", "_reversed")
                ):
                    assert type(value) is int, (key, line)

    def last(self, event: str) -> Line:
        return next(line for line in reversed(self.lines) if line["event"] == event)


def _intent_of(store: Store, purchase_id: int) -> str:
    intent = store.purchase(purchase_id)["payment_intent_id"]
    assert isinstance(intent, str)
    return intent


def _post(store: Store, path: str, body: dict[str, Any] | None = None) -> Any:
    answer = store.emulator.http.post(path, json=body)
    assert answer.status_code == 200, answer.text
    store.emulator.settle()
    return answer.json()


def test_each_money_event_is_one_line_with_its_fields_and_no_secret(store: Store) -> None:
    logs = Logs()
    sdk = stripe.StripeClient(
        SECRET_KEY, base_addresses={"api": store.emulator.url}, max_network_retries=0
    )
    reconciler = make_billing(store.emulator.url).stripe
    webhook = {"source": "webhook", "user_id": "alice"}

    # The embedded card form: its client secret goes to the buyer's browser, never a log.
    answer = store.api.post("/api/v1/users/alice/payment-intents", json={"package_id": "pro"})
    assert answer.status_code == 201, answer.text
    embedded = answer.json()
    pro = embedded["purchase_id"]
    with logs.step(
        purchase_credited={
            **webhook,
            "purchase_id": pro,
            "tokens": 5000,
            "bonus_tokens": 1000,
            "amount": 5000,
            "currency": "usd",
            "debt_collected": 0,
        }
    ):
        sdk.v1.payment_intents.confirm(
            embedded["payment_intent_id"], {"payment_method": "pm_card_visa"}
        )
        store.emulator.settle()
    assert logs.last("purchase_credited")["event_id"].startswith("evt_")

    with logs.step(purchase_credited={**webhook, "tokens": 2000, "bonus_tokens": 200}):
        plus = store.paid_checkout("plus")["purchase_id"]

    # A Stripe refund of half the price takes half the tokens; failing later, it gives them back.
    with logs.step(
        refund_clawed_back={
            **webhook,
            "purchase_id": plus,
            "refund_amount": 1000,
            "tokens": 1100,
            "taken": 1100,
            "debt": 0,
        }
    ):
        refund = sdk.v1.refunds.create({"payment_intent": _intent_of(store, plus), "amount": 1000})
        store.emulator.settle()
    assert logs.last("refund_clawed_back")["refund_id"] == refund.id
    with logs.step(
        refund_reversed={
            **webhook,
            "purchase_id": plus,
            "refund_id": refund.id,
            "refund_status": "failed",
            "tokens_returned": 1100,
            "debt_cancelled": 0,
        }
    ):
        _post(store, f"/_emulator/refunds/{refund.id}/fail")

    # Disputes: frozen, then released (won) or clawed back (lost).
    with logs.step(dispute_frozen={**webhook, "purchase_id": pro, "tokens": 6000}):
        won = _post(store, "/_emulator/disputes", {"payment_intent": _intent_of(store, pro)})
    with logs.step(
        dispute_released={**webhook, "purchase_id": pro, "dispute_id": won["id"], "tokens": 6000}
    ):
        _post(store, f"/_emulator/disputes/{won['id']}/close", {"status": "won"})
    with logs.step(dispute_frozen={**webhook, "purchase_id": plus, "tokens": 2200}):
        lost = _post(store, "/_emulator/disputes", {"payment_intent": _intent_of(store, plus)})
    with logs.step(
        dispute_clawed_back={
            **webhook,
            "purchase_id": plus,
            "dispute_id": lost["id"],
            "tokens": 2200,
            "taken": 2200,
            "debt": 0,
        }
    ):
        _post(store, f"/_emulator/disputes/{lost['id']}/close", {"status": "lost"})

    # A payment that does not match its purchase is flagged once; an admin decides.
    mismatched = store.checkout("plus")
    with store.db.transaction() as conn:
        conn.execute(
            sa.update(purchases)
            .where(purchases.c.id == mismatched["purchase_id"])
            .values(amount=1999)
        )
    with logs.step(purchase_flagged={**webhook, "purchase_id": mismatched["purchase_id"]}):
        store.emulator.pay(mismatched["checkout_session_id"])
        store.emulator.settle()
    with logs.step(
        review_decided={
            "source": "review",
            "purchase_id": mismatched["purchase_id"],
            "actor": "user:root",
            "decision": "refuse",
            "status": "failed",
            "tokens_reversed": 0,
        }
    ):
        billing.resolve_review(
            store.db,
            purchase_id=mismatched["purchase_id"],
            decision=billing.ReviewDecision.REFUSE,
            actor="user:root",
            reason="not our price",
            policy="debt",
        )

    # A declined card fails a purchase; a canceled payment cancels one; an expired session
    # expires one.
    declined = store.checkout("plus")
    with logs.step(
        purchase_failed={
            **webhook,
            "purchase_id": declined["purchase_id"],
            "failure_code": "generic_decline",
        }
    ):
        store.emulator.pay(declined["checkout_session_id"], card="4000000000000002")
        store.emulator.settle()
    answer = store.api.post("/api/v1/users/alice/payment-intents", json={"package_id": "plus"})
    assert answer.status_code == 201, answer.text
    abandoned = answer.json()
    with logs.step(
        purchase_canceled={
            **webhook,
            "purchase_id": abandoned["purchase_id"],
            "failure_code": "canceled",
        }
    ):
        sdk.v1.payment_intents.cancel(abandoned["payment_intent_id"])
        store.emulator.settle()
    expiring = store.checkout("starter")
    with logs.step(
        purchase_expired={
            **webhook,
            "purchase_id": expiring["purchase_id"],
            "failure_code": "expired",
        }
    ):
        sdk.v1.checkout.sessions.expire(expiring["checkout_session_id"])
        store.emulator.settle()

    # Stripe failing while a delivery looks the payment up: one failed delivery, then the
    # emulator's retry credits the purchase.
    store.emulator.http.post(
        "/_emulator/api_faults",
        json={
            "faults": [
                {"method": "GET", "path": "/v1/checkout/sessions/*", "status": 500, "times": 1}
            ]
        },
    ).raise_for_status()
    with logs.step(
        webhook_failed={
            "type": "checkout.session.completed",
            "error_code": "payment_provider_unavailable",
        },
        purchase_credited={**webhook, "tokens": 500},
    ):
        store.paid_checkout("starter")
    (completed,) = [
        event
        for event in store.emulator.events("checkout.session.completed")
        if event["data"]["object"]["amount_total"] == 500
    ]
    failed = [line for line in logs.lines if line["event"] == "webhook_failed"]
    assert [line["event_id"] for line in failed] == [completed["id"]]

    # Reconcile: a purchase whose events were all lost is credited, and one that never
    # reached Stripe expires.
    store.emulator.configure(drop=100)
    missed = store.paid_checkout("scale")["purchase_id"]
    started = utcnow() - timedelta(minutes=90)
    with store.db.transaction() as conn:
        orphan = conn.execute(
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
                stripe_idempotency_key="tokenbank-orphan-logs",
                created_at=started,
                updated_at=started,
            )
            .returning(purchases.c.id)
        ).scalar_one()
    with logs.step(
        purchase_credited={"source": "reconcile", "purchase_id": missed, "tokens": 10000},
        reconcile_fixed={"purchase_id": missed, "what": ["purchase_credited"]},
        purchase_expired={
            "source": "reconcile",
            "purchase_id": orphan,
            "failure_code": "not_started",
        },
    ):
        result = billing.reconcile(
            store.db, reconciler, since=utcnow() - timedelta(hours=1), policy="debt"
        )
    assert not result.errors, result.errors

    secrets = {
        SECRET_KEY,
        PUBLISHABLE_KEY,
        WEBHOOK_SECRET,
        embedded["client_secret"],
        abandoned["client_secret"],
        store.api.headers["Authorization"].removeprefix("Bearer "),
        "alice@example.com",
    }
    assert all(secrets), secrets
    for line in logs.lines:
        for value in line.values():
            assert not any(secret in str(value) for secret in secrets), line
    # Every documented money event was seen.
    assert {line["event"] for line in logs.lines} >= set(DOCUMENTED)
