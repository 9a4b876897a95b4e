"""The webhook endpoint under attack: what a delivery may look like before anything is
stored or credited, and what every answer is (never a 500, the connection kept); and the
inbox as a queue: every way an event is left stored but not settled ends with the worker
settling it, once."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from structlog.testing import capture_logs

from tests.billing.conftest import Store, open_store
from tests.servers import http_request, one_connection
from tests.stripe_emulator import (
    SECRET_KEY,
    WEBHOOK_SECRET,
    EmulatorServer,
    event_bytes,
    make_billing,
    signed,
)
from tests.web.conftest import PASSWORDS, SETTINGS
from tokenbank import billing
from tokenbank.billing.models import webhook_events
from tokenbank.billing.webhooks import (
    FIRST_RETRY,
    LEASE,
    LONGEST_RETRY,
    PENDING_BATCH,
    retry_wait,
)
from tokenbank.columns import utcnow
from tokenbank.db import Database
from tokenbank.payments.stripe import Stripe
from tokenbank.web.app import create_app

NOW = int(time.time())


def _event(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "id": "evt_test_1",
        "object": "event",
        "type": "checkout.session.completed",
        "created": NOW,
        "livemode": False,
        "api_version": "2026-10-28.endive",
        "data": {"object": {"id": "cs_test_nothing", "object": "checkout.session"}},
    }
    event.update(changes)
    return event


def _stored(store: Store) -> int:
    with store.db.read() as conn:
        return len(conn.execute(webhook_events.select()).all())


#: Bodies a valid signature may come with that are not Stripe events (issue: 500 before).
NOT_EVENTS: list[bytes] = [
    b"{not json",
    event_bytes(_event())[:40],  # truncated
    b"[1,2,3]",
    b'{"id":"evt_x"}',  # no type
    b"",
    event_bytes(_event(data=None)),
    event_bytes(_event(data={"object": None})),
    event_bytes(_event(data={"object": [1]})),
    event_bytes(_event(id=7)),
    event_bytes(_event(id="evt_\u0000x")),
    event_bytes(_event(id="x" * 300)),
    event_bytes(_event(type="checkout.session.completed\n")),
    event_bytes(_event(created="yesterday")),
    event_bytes(_event(created=True)),
    event_bytes(_event(created=10**30)),
    event_bytes(_event(livemode="no")),
    event_bytes(_event(api_version=["x"])),
    b'{"id":"evt_1","id":"evt_2","type":"x","created":1,"data":{"object":{}}}',
    b"\xff\xfe not utf-8",
    b'"just a string"',
    b"null",
    b"[" * 5000 + b"]" * 5000,
    b'{"id": "evt_\\ud800", "type": "a", "created": 1, "data": {"object": {}}}',
    event_bytes(_event(data={"object": {"id": "cs_\u0000"}})),
    event_bytes(_event(data={"object": {"id": {"nested": 1}}})),
    event_bytes(_event(type="charge.refunded", data={"object": {"payment_intent": "pi/../../x"}})),
]


@pytest.mark.parametrize("body", NOT_EVENTS, ids=range(len(NOT_EVENTS)))
def test_a_signed_body_that_is_not_an_event_is_a_400(store: Store, body: bytes) -> None:
    answer = store.api.post(
        "/webhooks/stripe", content=body, headers={"Stripe-Signature": signed(body)}
    )
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["code"] in {"invalid_event", "invalid_signature"}
    assert store.balance()["available"] == 0


def test_a_400_keeps_the_connection_for_the_next_request(store: Store) -> None:
    """One keep-alive connection: refused deliveries, then a health check, on one socket."""
    refused = [
        http_request(
            "POST", "/webhooks/stripe", body=body, headers={"Stripe-Signature": signed(body)}
        )
        for body in (b"{not json", b"[1,2,3]", b"")
    ]
    statuses = one_connection(str(store.api.base_url), [*refused, http_request("GET", "/healthz")])
    assert statuses == [400, 400, 400, 200]


def _header_cases() -> list[tuple[str, str | None]]:
    body = event_bytes(_event())
    good = signed(body)
    digest = good.split("v1=")[1]
    return [
        ("missing", None),
        ("empty", ""),
        ("non-ascii v1", f"t={NOW},v1=é"),
        ("non-ascii timestamp", f"t={NOW}é,v1={digest}"),
        ("two timestamps", f"t={NOW},t={NOW + 1},v1={digest}"),
        ("two timestamps, second the signed one", f"t=1,{good}"),
        ("no v1", f"t={NOW}"),
        ("no timestamp", f"v1={digest}"),
        ("short v1", f"t={NOW},v1={digest[:-1]}"),
        ("upper-case hex", f"t={NOW},v1={digest.upper()}"),
        ("not a pair", f"t={NOW},v1"),
        ("empty value", f"t=,v1={digest}"),
        ("negative time", f"t=-{NOW},v1={digest}"),
        ("huge time", f"t={'9' * 40},v1={digest}"),
        ("unicode digits", f"t=١٢٣,v1={digest}"),
        ("control character", f"t={NOW},\tv1={digest}"),
        ("too long", good + ",v0=" + "a" * 2000),
        ("other secret", signed(body, secret="whsec_another_secret_entirely")),
        # From the time the test runs, not the time it was collected: a long run would
        # bring "ahead" within the tolerance.
        ("ten minutes old", signed(body, at=int(time.time()) - 600)),
        ("ten minutes ahead", signed(body, at=int(time.time()) + 600)),
        ("a day ahead", signed(body, at=NOW + 86_400)),
    ]


@pytest.mark.parametrize("case", [case for case, _ in _header_cases()])
def test_signature_headers_are_read_strictly(store: Store, case: str) -> None:
    header = dict(_header_cases())[case]
    body = event_bytes(_event())
    # As raw bytes: non-ASCII goes on the wire as UTF-8, as an attacker would send it.
    headers = {} if header is None else {b"Stripe-Signature": header.encode()}
    answer = store.api.post("/webhooks/stripe", content=body, headers=headers)
    assert answer.status_code == 400, (case, answer.text)
    assert answer.json()["code"] == "invalid_signature"
    assert _stored(store) == 0


def test_skew_is_logged_and_the_tolerance_holds_both_ways() -> None:
    stripe = Stripe(secret_key="sk_test_x", webhook_secret=WEBHOOK_SECRET)
    body = event_bytes(_event())
    for skew in (-299, 0, 299):  # inside five minutes either way: accepted
        assert stripe.verify_event(body, signed(body, at=NOW + skew), now=NOW).id == "evt_test_1"
    with capture_logs() as logs:
        with pytest.raises(Exception, match="future"):
            stripe.verify_event(body, signed(body, at=NOW + 301), now=NOW)
        with pytest.raises(Exception, match="old"):
            stripe.verify_event(body, signed(body, at=NOW - 301), now=NOW)
    assert [entry["skew_seconds"] for entry in logs] == [-301, 301]
    # Key rotation: two v1 values, one of them right.
    wrong = "0" * 64
    header = signed(body, at=NOW).replace("v1=", f"v1={wrong},v1=")
    assert stripe.verify_event(body, header, now=NOW).id == "evt_test_1"


@pytest.mark.parametrize("mode", [True, False])
def test_an_event_of_the_other_mode_is_recorded_ignored_and_never_acted_on(
    store: Store, mode: bool, db: Database, emulator_server: EmulatorServer
) -> None:
    """A re-signed livemode event on a test deployment credited tokens before; now it is
    stored as ignored, answered 200 and logged. (And the other way round with a live key.)"""
    store.emulator.configure(drop=100)
    started = store.checkout("plus")
    store.emulator.pay(started["checkout_session_id"])
    (completed,) = store.emulator.events("checkout.session.completed")
    live_key = "sk_live_" + "k" * 24
    if mode:  # a test deployment receives a live event
        completed["livemode"] = True
        receiver = store
    else:  # a live deployment receives a test event (its key is live; Stripe is the emulator)
        receiver = None
    body = event_bytes(completed)
    with capture_logs() as logs:
        if receiver is not None:
            answer = receiver.api.post(
                "/webhooks/stripe", content=body, headers={"Stripe-Signature": signed(body)}
            )
        else:
            with open_store(db, emulator_server, secret_key=live_key) as live:
                answer = live.api.post(
                    "/webhooks/stripe", content=body, headers={"Stripe-Signature": signed(body)}
                )
    assert answer.status_code == 200, answer.text
    assert answer.json()["outcome"].startswith("ignored: the event's livemode")
    assert store.balance()["available"] == 0
    assert store.purchase(started["purchase_id"])["status"] == "pending"
    with store.db.read() as conn:
        (row,) = conn.execute(webhook_events.select()).all()
    assert row.processed_at is not None and row.outcome.startswith("ignored")
    assert any(e["event"] == "webhook_other_mode" and e["log_level"] == "warning" for e in logs)
    if mode:  # an operator replaying it by hand does not make it count either
        replayed = billing.replay(
            store.db, store.seller.stripe, event_id=completed["id"], policy="debt"
        )
        assert replayed.outcome.startswith("ignored") and store.balance()["available"] == 0


def test_without_a_webhook_secret_start_up_and_readyz_say_so(
    db: Database, emulator_server: EmulatorServer
) -> None:
    seller = make_billing(emulator_server.url, webhook_secret=None)
    with capture_logs() as logs:
        app = create_app(SETTINGS, db=db, passwords=PASSWORDS, seller=seller)
    assert any(
        e["event"] == "configuration" and "STRIPE_WEBHOOK_SECRET" in e["detail"] for e in logs
    )
    with TestClient(app, base_url="https://tokens.example") as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200
        warning, _no_smtp = ready.json()["warnings"]
        assert "STRIPE_WEBHOOK_SECRET" in warning
        body = event_bytes(_event())
        refused = client.post(
            "/webhooks/stripe", content=body, headers={"Stripe-Signature": signed(body)}
        )
        assert refused.status_code == 503
        assert refused.json()["code"] == "webhooks_not_configured"


def test_an_event_naming_no_payment_of_ours_is_acknowledged(store: Store) -> None:
    body = event_bytes(
        _event(type="charge.refunded", data={"object": {"id": "ch_x", "payment_intent": None}})
    )
    answer = store.api.post(
        "/webhooks/stripe", content=body, headers={"Stripe-Signature": signed(body)}
    )
    assert answer.status_code == 200, answer.text
    assert json.loads(answer.text)["duplicate"] is False


PLUS = 2200  # the "plus" package's tokens with its bonus


def _unsettled(db: Database) -> list[Any]:
    with db.read() as conn:
        return list(
            conn.execute(webhook_events.select().where(webhook_events.c.processed_at.is_(None)))
        )


def _settle_pending(store: Store, *, at: timedelta = timedelta(0)) -> billing.Pending:
    seller = store.seller
    return billing.settle_pending(
        store.db, seller.stripe, policy=seller.policy, catalog=seller.catalog, now=utcnow() + at
    )


def test_a_delivery_that_finds_no_settling_slot_is_answered_and_the_worker_settles_it(
    db: Database, emulator_server: EmulatorServer
) -> None:
    """With no slot free (0 here; a burst past them in production) a delivery is stored
    and answered 200 ``queued`` at once; the worker's run then credits the purchase once,
    and a second run, or a copy delivered again, changes nothing."""
    with open_store(db, emulator_server, webhook_settle_slots=0) as store:
        store.user()
        store.paid_checkout("plus")
        assert {d["state"] for d in store.emulator.deliveries()} == {"delivered"}
        assert store.balance()["available"] == 0  # stored, not settled
        waiting = _unsettled(db)
        assert len(waiting) >= 2 and all(row.settle_after == row.received_at for row in waiting)
        with db.read() as conn:
            assert billing.count_unsettled(conn) == {"waiting": len(waiting), "failed": 0}
        event = store.emulator.events("checkout.session.completed")[0]
        body = event_bytes(event)
        again = store.api.post(
            "/webhooks/stripe", content=body, headers={"Stripe-Signature": signed(body)}
        )
        assert again.status_code == 200, again.text
        assert again.json() == {
            "received": True,
            "duplicate": True,
            "queued": True,
            "outcome": "queued",
        }
        done = _settle_pending(store)
        assert (done.settled, done.failed) == (len(waiting), 0)
        assert store.balance()["available"] == PLUS
        assert _unsettled(db) == []
        assert _settle_pending(store) == billing.Pending(settled=0, failed=0)
        assert store.balance()["available"] == PLUS
        metrics = store.api.get("/metrics").text
        assert 'tokenbank_webhook_events_total{result="duplicate"} 1.0' in metrics
        assert 'tokenbank_webhook_events_unsettled{state="waiting"} 0.0' in metrics


def test_a_delivery_with_a_slot_free_is_settled_in_its_request(store: Store) -> None:
    store.paid_checkout("plus")
    assert store.balance()["available"] == PLUS
    assert _unsettled(store.db) == []
    with store.db.read() as conn:
        rows = conn.execute(webhook_events.select()).all()
    assert {row.settle_after - row.received_at for row in rows} == {LEASE}


@pytest.mark.parametrize("fault", [{"status": 503}, {"status": 500}, {"status": 429}])
def test_an_event_whose_settling_fails_waits_longer_each_time_then_settles_once(
    db: Database, emulator_server: EmulatorServer, fault: dict[str, Any]
) -> None:
    """Stripe failing while the worker settles: the event keeps the error, counts as
    failed, is not tried again before its wait is over, and settles once Stripe answers.
    A run stops once Stripe is found down, so an outage costs few calls."""
    with open_store(db, emulator_server, webhook_settle_slots=0) as store:
        store.user()
        store.paid_checkout("plus")
        waiting = len(_unsettled(db))
        answer = store.emulator.http.post(
            "/_emulator/api_faults",
            json={"faults": [{"method": "GET", "path": "/v1/*", "times": 100, **fault}]},
        )
        assert answer.status_code == 200, answer.text
        down = _settle_pending(store)  # settles events that need no Stripe call, if any
        assert down.failed >= 1 and store.balance()["available"] == 0
        failed = [row for row in _unsettled(db) if row.last_error is not None]
        assert len(failed) == down.failed
        assert all(row.attempts == 1 for row in failed)
        assert all(row.settle_after > utcnow() + FIRST_RETRY / 2 for row in failed)
        left = waiting - down.settled - down.failed
        with db.read() as conn:
            assert billing.count_unsettled(conn) == {"waiting": left, "failed": down.failed}
        assert store.emulator.http.post("/_emulator/api_faults", json={"faults": []})
        up = _settle_pending(store)  # the others; the failed ones wait
        assert (up.settled, up.failed) == (left, 0)
        assert {row.event_id for row in _unsettled(db)} == {row.event_id for row in failed}
        later = _settle_pending(store, at=FIRST_RETRY + timedelta(seconds=1))
        assert (later.settled, later.failed) == (len(failed), 0)
        assert _unsettled(db) == [] and store.balance()["available"] == PLUS


def test_an_event_left_by_a_request_that_died_is_taken_over_after_the_lease(
    db: Database, emulator_server: EmulatorServer
) -> None:
    """A process that stored an event to settle it in its request and then died (killed,
    restarted) leaves it unprocessed with a lease: the worker leaves it alone until the
    lease is over, then settles it."""
    with open_store(db, emulator_server, webhook_settle_slots=0) as store:
        store.user()
        store.paid_checkout("plus")
        with db.transaction() as conn:  # as a request that took a slot leaves it
            for row in conn.execute(webhook_events.select()).all():
                conn.execute(
                    sa.update(webhook_events)
                    .where(webhook_events.c.id == row.id)
                    .values(settle_after=row.received_at + LEASE)
                )
        assert _settle_pending(store) == billing.Pending(settled=0, failed=0)
        assert store.balance()["available"] == 0
        done = _settle_pending(store, at=LEASE + timedelta(seconds=1))
        assert done.failed == 0 and done.settled >= 2
        assert store.balance()["available"] == PLUS and _unsettled(db) == []


def test_the_wait_after_a_failure_doubles_up_to_an_hour() -> None:
    waits = [retry_wait(n) for n in range(1, 12)]
    assert waits[:4] == [FIRST_RETRY * 2**n for n in range(4)]
    assert waits == sorted(waits) and max(waits) == LONGEST_RETRY
    assert retry_wait(10**6) == LONGEST_RETRY


def test_the_worker_settles_a_backlog_larger_than_one_look_at_the_inbox(store: Store) -> None:
    """More events than one batch, all due at once: every one is settled exactly once
    (the keyset walk over the inbox), and a run asked to stop leaves the rest due."""
    count = PENDING_BATCH + 7
    seller = store.seller
    for n in range(count):
        body = event_bytes(
            _event(id=f"evt_backlog_{n}", type="customer.created", data={"object": {"id": "cus_x"}})
        )
        queued = billing.receive(
            store.db,
            seller.stripe,
            payload=body,
            signature=signed(body),
            policy=seller.policy,
            settle=False,
        )
        assert queued.queued and not queued.duplicate
    stopped = billing.settle_pending(
        store.db, seller.stripe, policy=seller.policy, now=utcnow(), stopping=lambda: True
    )
    assert stopped == billing.Pending(settled=0, failed=0)
    assert len(_unsettled(store.db)) == count
    done = _settle_pending(store)
    assert done == billing.Pending(settled=count, failed=0)
    assert _unsettled(store.db) == []
    with store.db.read() as conn:
        outcomes = conn.execute(sa.select(webhook_events.c.outcome, webhook_events.c.attempts))
        assert {tuple(row) for row in outcomes} == {
            ("ignored: tokenbank does not act on customer.created", 1)
        }


class SlowReads(Stripe):
    """The real client, counting the PaymentIntents it reads, each taking a moment so that
    runs started together overlap."""

    def __init__(self, url: str) -> None:
        super().__init__(secret_key=SECRET_KEY, api_base=url, max_network_retries=0)
        self.reads = 0
        self._counting = threading.Lock()

    def payment_intent(self, payment_intent_id: str, *, with_charge: bool = False) -> Any:
        with self._counting:
            self.reads += 1
        time.sleep(0.02)
        return super().payment_intent(payment_intent_id, with_charge=with_charge)


def test_workers_running_at_once_settle_different_events(
    db: Database, emulator_server: EmulatorServer
) -> None:
    """Each run takes its events before settling them, so two runs started together (two
    workers, or one whose run outlasted the job's period) read Stripe no more than one:
    the events are shared out, none settled twice, none left."""
    with open_store(db, emulator_server, webhook_settle_slots=0) as store:
        for n in range(6):
            store.paid_checkout("starter", store.user(f"user-{n}"))
        waiting = len(_unsettled(db))
        alone = SlowReads(store.emulator.url)
        one = billing.settle_pending(
            db, alone, policy=store.seller.policy, catalog=store.seller.catalog, now=utcnow()
        )
        assert one == billing.Pending(settled=waiting, failed=0)
        single_reads = alone.reads
        assert single_reads > 0
        with db.transaction() as conn:  # as they were: all unsettled and due
            conn.execute(
                sa.update(webhook_events).values(
                    processed_at=None, outcome=None, attempts=0, settle_after=utcnow()
                )
            )
        together = SlowReads(store.emulator.url)
        with ThreadPoolExecutor(2) as pool:
            runs = list(
                pool.map(
                    lambda _: billing.settle_pending(
                        db,
                        together,
                        policy=store.seller.policy,
                        catalog=store.seller.catalog,
                        now=utcnow(),
                        threads=2,
                    ),
                    range(2),
                )
            )
        assert sum(run.settled for run in runs) == waiting
        assert sum(run.failed for run in runs) == 0
        assert together.reads == single_reads
        assert _unsettled(db) == []
        for n in range(6):
            assert store.balance(f"user-{n}")["available"] == 500


def test_an_event_stored_without_a_due_time_is_due_at_once(store: Store) -> None:
    """A row stored as a process of an earlier version stores it, naming no due time (a
    rolling deploy): the database's default makes it due now, so the worker settles it,
    and a redelivery answered as queued does not leave it behind."""
    body = event_bytes(
        _event(id="evt_old_version", type="customer.created", data={"object": {"id": "cus_x"}})
    )
    with store.db.transaction() as conn:
        conn.execute(
            webhook_events.insert().values(
                event_id="evt_old_version",
                type="customer.created",
                payload=body.decode(),
                livemode=False,
                created_at=utcnow(),
                received_at=utcnow(),
            )
        )
    (row,) = _unsettled(store.db)
    assert row.settle_after is not None and row.settle_after <= utcnow() + timedelta(seconds=5)
    assert _settle_pending(store, at=timedelta(seconds=5)) == billing.Pending(settled=1, failed=0)
    assert _unsettled(store.db) == []
    with store.db.transaction() as conn, pytest.raises(sa.exc.IntegrityError):
        conn.execute(
            sa.update(webhook_events)
            .where(webhook_events.c.event_id == "evt_old_version")
            .values(settle_after=None)
        )


def test_an_event_that_no_longer_parses_fails_once_and_waits(store: Store) -> None:
    """A stored payload the code cannot read any more (stored by another version, say) is
    a failure like any other: its error is kept, it counts as failed, and it waits the
    longest wait instead of being read again on every run."""
    body = event_bytes(
        _event(id="evt_unreadable", type="customer.created", data={"object": {"id": "cus_x"}})
    )
    seller = store.seller
    billing.receive(
        store.db,
        seller.stripe,
        payload=body,
        signature=signed(body),
        policy=seller.policy,
        settle=False,
    )
    with store.db.transaction() as conn:
        conn.execute(sa.update(webhook_events).values(payload='{"id": "evt_unreadable"}'))
    assert _settle_pending(store) == billing.Pending(settled=0, failed=1)
    (row,) = _unsettled(store.db)
    assert row.attempts == 1 and row.last_error.startswith("InvalidEvent")
    assert row.settle_after > utcnow() + LONGEST_RETRY - timedelta(minutes=1)
    assert _settle_pending(store) == billing.Pending(settled=0, failed=0)
    with store.db.read() as conn:
        assert billing.count_unsettled(conn) == {"waiting": 0, "failed": 1}
