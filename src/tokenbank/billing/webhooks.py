"""The webhook inbox: every Stripe event is stored once, then settled.

An event is recorded (unique event id) before anything else, in its own transaction, so a
delivery that fails later is still on file. Its effects then commit in the same transaction
as its ``processed_at`` mark: processed means applied.

Who settles it: the request that delivered it, when its process has a free settling slot
(``receive(settle=True)``; on failure the error is kept on the event and the caller answers
500 or 503, so Stripe delivers it again), or else ``tokenbank worker`` (``settle_pending``),
which the inbox tells when each unprocessed event is due (``settle_after``): at once for
one stored without settling, after a lease for one being settled (in its request, or by a
worker's run, which takes its events before it settles them: its process may die), after
a doubling wait for one that failed. A burst is thus answered at
the speed of storing it, and settled at the speed of settling. ``replay`` settles by hand.
The event is only a hint: what it changes comes from Stripe's current objects
(``settlement.fetch_payment`` for a purchase's payment, ``renewals.fetch_renewal`` for a
subscription and its invoices), so duplicates, reordering and stale payloads are harmless.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from tokenbank.billing.catalog import Catalog
from tokenbank.billing.models import webhook_events
from tokenbank.billing.outcomes import Outcome
from tokenbank.billing.purchases import ClawbackPolicy
from tokenbank.billing.renewals import (
    Renewal,
    RenewalOutcome,
    apply_renewal,
    fetch_refunded_invoice,
    fetch_renewal,
)
from tokenbank.billing.settlement import Lists, Payment, fetch_payment, settle
from tokenbank.columns import utcnow
from tokenbank.db import Database, unavailable
from tokenbank.errors import (
    InvalidEvent,
    ProcessingFailed,
    TokenbankError,
    Unavailable,
    UnknownEvent,
)
from tokenbank.payments.stripe import OBJECT_ID, Event, Stripe, parse_event

log = structlog.get_logger("tokenbank.webhooks")

#: The events tokenbank acts on; enable these on the Stripe webhook endpoint.
HANDLED_EVENTS = (
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "checkout.session.expired",
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "payment_intent.canceled",
    "charge.refunded",
    "charge.refund.updated",
    "refund.created",
    "refund.updated",
    "refund.failed",
    "charge.dispute.created",
    "charge.dispute.updated",
    "charge.dispute.closed",
    "charge.dispute.funds_withdrawn",
    "charge.dispute.funds_reinstated",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.trial_will_end",
    "invoice.paid",
    "invoice.payment_failed",
)
MAX_ERROR_LENGTH = 2000
#: How long an event is left to whoever took it to settle it (the request that delivered
#: it, or one worker's run) before another may take it over: the first may have died.
LEASE = timedelta(minutes=1)
#: The wait before the worker tries a failed event again: doubling from the first to the
#: longest, so an outage of Stripe costs a few calls an hour per event, not a storm.
FIRST_RETRY = timedelta(seconds=30)
LONGEST_RETRY = timedelta(hours=1)
#: Events the worker reads per look at the inbox.
PENDING_BATCH = 100
#: Events the worker settles side by side.
SETTLING_THREADS = 8


def retry_wait(attempts: int) -> timedelta:
    """The wait after the ``attempts``-th failed attempt at an event."""
    doublings: int = min(max(attempts - 1, 0), 16)
    return min(FIRST_RETRY * (1 << doublings), LONGEST_RETRY)


@dataclass(frozen=True, slots=True)
class InboxEvent:
    id: int
    event_id: str
    type: str
    created_at: datetime
    received_at: datetime
    processed_at: datetime | None
    attempts: int
    last_error: str | None
    outcome: str | None

    @property
    def failed(self) -> bool:
        return self.processed_at is None and self.last_error is not None


@dataclass(frozen=True, slots=True)
class Processed:
    event_id: str
    outcome: str
    duplicate: bool
    #: Whether this delivery changed a purchase (credited it, clawed back, ...).
    changed: bool = False
    #: Stored but not settled yet: ``tokenbank worker`` settles it.
    queued: bool = False


_insert = {
    name: dialect.insert(webhook_events)
    .on_conflict_do_nothing(index_elements=["event_id"])
    .returning(webhook_events.c.id)
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}


def receive(
    db: Database,
    stripe: Stripe,
    *,
    payload: bytes,
    signature: str | None,
    policy: ClawbackPolicy,
    catalog: Catalog | None = None,
    settle: bool = True,
) -> Processed:
    """Verify a delivery, store it once and, with ``settle``, settle it; raises
    ``InvalidSignature``, ``InvalidEvent``, ``WebhooksNotConfigured``, ``ProcessingFailed``
    or ``Unavailable``. Without ``settle`` the event is left to ``settle_pending``. An
    event of the other mode than the deployment's key is stored and ignored."""
    event = stripe.verify_event(payload, signature)
    target_of(event)  # InvalidEvent (400) before anything is stored
    now = utcnow()
    with db.transaction() as conn:
        stored = conn.execute(
            _insert[conn.dialect.name],
            {
                "event_id": event.id,
                "type": event.type,
                "payload": payload.decode("utf-8"),
                "api_version": event.api_version,
                "livemode": event.livemode,
                "created_at": datetime.fromtimestamp(event.created, UTC),
                "received_at": now,
                "settle_after": now + LEASE if settle else now,
            },
        ).first()
    if not settle:
        log.info("webhook_queued", event_id=event.id, type=event.type, duplicate=stored is None)
        return Processed(event_id=event.id, outcome="queued", duplicate=stored is None, queued=True)
    return process(db, stripe, event=event, policy=policy, catalog=catalog)


_OTHER_MODE = "ignored: the event's livemode does not match this deployment's Stripe key"


def _other_mode(db: Database, stripe: Stripe, event: Event) -> Processed:
    """A live event on a test deployment (or the reverse) is recorded as ignored and never
    acted on, even when replayed: acting on it would credit tokens for money that does
    not exist here."""
    with db.transaction() as conn:
        conn.execute(
            sa.update(webhook_events)
            .where(webhook_events.c.event_id == event.id)
            .values(
                processed_at=sa.func.coalesce(webhook_events.c.processed_at, utcnow()),
                attempts=webhook_events.c.attempts + 1,
                outcome=_OTHER_MODE,
            )
        )
    log.warning(
        "webhook_other_mode",
        event_id=event.id,
        type=event.type,
        event_livemode=event.livemode,
        deployment_livemode=stripe.livemode,
    )
    return Processed(event_id=event.id, outcome=_OTHER_MODE, duplicate=False)


def _object_id(value: Any) -> str | None:
    """An id the event names (a string, or an expanded object's ``id``), checked: it goes
    into a request to Stripe."""
    if isinstance(value, dict):
        value = value.get("id")
    if value is None:
        return None
    if not isinstance(value, str) or not OBJECT_ID.fullmatch(value):
        raise InvalidEvent("the event names an object by a malformed id")
    return value


@dataclass(frozen=True, slots=True)
class Target:
    """What a handled event names: a session, a PaymentIntent or a charge to look up, or a
    subscription (and the invoice the event is about)."""

    session_id: str | None = None
    intent_id: str | None = None
    charge_id: str | None = None
    subscription_id: str | None = None
    #: A subscription-mode Checkout Session: it starts a subscription, not a purchase.
    subscription_mode: bool = False


def target_of(event: Event) -> Target | None:
    """What an event is about, read (and checked: the ids go into requests to Stripe)
    before the event is stored; None for events tokenbank does not act on."""
    obj = event.object
    if event.type not in HANDLED_EVENTS:
        return None
    if event.type.startswith("customer.subscription."):
        return Target(subscription_id=_required_id(obj))
    if event.type.startswith("invoice."):
        _required_id(obj)
        details = (obj.get("parent") or {}).get("subscription_details") or {}
        if not isinstance(details, dict):
            raise InvalidEvent("the invoice's parent is malformed")
        # ``subscription`` at the top: an endpoint on an API version before 2025-03-31.
        return Target(
            subscription_id=_object_id(details.get("subscription") or obj.get("subscription"))
        )
    if event.type.startswith(("checkout.session.", "payment_intent.")):
        object_id = _required_id(obj)
        if event.type.startswith("checkout.session."):
            return Target(session_id=object_id, subscription_mode=obj.get("mode") == "subscription")
        return Target(intent_id=object_id)
    return Target(
        intent_id=_object_id(obj.get("payment_intent")), charge_id=_object_id(obj.get("charge"))
    )


def _required_id(obj: dict[str, Any]) -> str:
    object_id = _object_id(obj)
    if object_id is None:
        raise InvalidEvent("the event's object has no id")
    return object_id


def _news_for(stripe: Stripe, event: Event, catalog: Catalog | None) -> Payment | Renewal | None:
    """Stripe's current view of what the event is about (a purchase's payment, or a
    subscription), or None for other events."""
    target = target_of(event)
    if target is None or (event.type.startswith("invoice.") and target.subscription_id is None):
        return None  # an invoice of no subscription is not one of ours
    if target.subscription_mode or target.subscription_id is not None:
        return fetch_renewal(
            stripe,
            catalog,
            subscription_id=target.subscription_id,
            session_id=target.session_id if target.subscription_mode else None,
        )
    # The news of a payment reads its refunds and disputes only when its charge shows
    # some; the news of a refund or a dispute reads them in full.
    payment_news = event.type.startswith(("checkout.session.", "payment_intent."))
    lists: Lists = "when_the_charge_shows" if payment_news else "always"
    if target.session_id is not None:
        return fetch_payment(stripe, session_id=target.session_id, lists=lists)
    intent_id = target.intent_id
    if not intent_id and target.charge_id:
        intent_id = stripe.charge_payment_intent_id(target.charge_id)
    if not intent_id:
        return None  # a charge with no PaymentIntent is not one of ours
    payment = fetch_payment(stripe, payment_intent_id=intent_id, lists=lists)
    if payment.purchase_hint is None and event.type.startswith(("charge.refund", "refund.")):
        return fetch_refunded_invoice(stripe, catalog, intent_id) or payment
    return payment


def _lock(conn: Connection, event_id: str) -> Any:
    row = conn.execute(
        sa.select(webhook_events.c.id, webhook_events.c.processed_at, webhook_events.c.outcome)
        .where(webhook_events.c.event_id == event_id)
        .with_for_update()
    ).first()
    if row is None:
        raise UnknownEvent(event_id)
    return row


def process(
    db: Database,
    stripe: Stripe,
    *,
    event: Event,
    policy: ClawbackPolicy,
    catalog: Catalog | None = None,
    force: bool = False,
) -> Processed:
    """Settle a stored event unless it was processed before (``force``: settle again,
    which applies only what is still missing)."""
    with db.read() as conn:
        done = conn.execute(
            sa.select(
                webhook_events.c.processed_at,
                webhook_events.c.outcome,
                webhook_events.c.attempts,
            ).where(webhook_events.c.event_id == event.id)
        ).first()
    if done is None:
        raise UnknownEvent(event.id)
    if done.processed_at is not None and not force:
        return Processed(event_id=event.id, outcome=done.outcome or "", duplicate=True)
    if event.livemode != stripe.livemode:
        return _other_mode(db, stripe, event)
    try:
        news = _news_for(stripe, event, catalog)  # Stripe calls: nothing is locked yet
        with db.transaction() as conn:
            row = _lock(conn, event.id)
            if row.processed_at is not None and not force:
                return Processed(event_id=event.id, outcome=row.outcome or "", duplicate=True)
            settled: Outcome | RenewalOutcome | None = None
            if isinstance(news, Payment):
                settled = settle(conn, news, policy=policy)
            elif isinstance(news, Renewal):
                settled = apply_renewal(conn, news, catalog=catalog)
            outcome = (
                str(settled)
                if settled is not None
                else f"ignored: tokenbank does not act on {event.type}"
            )
            conn.execute(
                sa.update(webhook_events)
                .where(webhook_events.c.id == row.id)
                .values(
                    processed_at=utcnow(),
                    attempts=webhook_events.c.attempts + 1,
                    last_error=None,
                    outcome=outcome,
                )
            )
    except Exception as exc:
        failure = unavailable(exc) if not isinstance(exc, TokenbankError) else None
        error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_LENGTH]
        try:
            if failure is None:  # with the database down, there is nowhere to write the error
                with db.transaction() as conn:
                    conn.execute(
                        sa.update(webhook_events)
                        .where(
                            webhook_events.c.event_id == event.id,
                            # a racer that settled it meanwhile has the last word
                            webhook_events.c.processed_at.is_(None),
                        )
                        .values(
                            attempts=webhook_events.c.attempts + 1,
                            last_error=error,
                            settle_after=utcnow() + retry_wait(done.attempts + 1),
                        )
                    )
        finally:
            # The code, not the message: the inbox keeps the message, and a message can
            # quote anything (a URL, an address) that has no place in shipped logs.
            log.warning(
                "webhook_failed",
                event_id=event.id,
                type=event.type,
                error_code=_error_code(exc, failure),
                error_type=type(exc).__name__,
            )
        if isinstance(exc, Unavailable):
            raise  # Stripe, or the database, is down for now: 503, and Stripe retries
        if failure is not None:
            raise failure from exc
        raise ProcessingFailed(error) from exc
    if settled is not None:
        settled.log_changes("webhook", event_id=event.id)
    log.info("webhook_processed", event_id=event.id, type=event.type, outcome=outcome)
    changed = settled is not None and bool(settled.changes)
    return Processed(event_id=event.id, outcome=outcome, duplicate=False, changed=changed)


@dataclass(frozen=True, slots=True)
class Pending:
    """What one ``settle_pending`` run did."""

    settled: int
    failed: int


def settle_pending(
    db: Database,
    stripe: Stripe,
    *,
    policy: ClawbackPolicy,
    catalog: Catalog | None = None,
    now: datetime,
    threads: int = SETTLING_THREADS,
    stopping: Callable[[], bool] = lambda: False,
) -> Pending:
    """Settle every stored event due by ``now`` that is not processed yet, oldest due
    first, each as its delivery would have (``process``), ``threads`` at a time: each
    waits on 3 or 4 reads from Stripe, which a burst's deliveries did side by side too.
    One that fails keeps its error and is due again after ``retry_wait``; the run goes on
    with the others, unless Stripe or the database is unavailable: then it stops, and the
    next run tries again. Each batch is taken (``_take``) before it is settled, so runs of
    several workers at once settle different events; ``process`` settling each event once
    under its row lock is what keeps the money right whatever happens."""
    results: Counter[str] = Counter()
    down = threading.Event()

    def attempt(taken: tuple[int, str]) -> str:
        if down.is_set() or stopping():
            return "skipped"
        try:
            event = _parse_stored(db, *taken, now=now)
            if event is None:
                return "failed"
            process(db, stripe, event=event, policy=policy, catalog=catalog)
        except Unavailable:
            down.set()
            return "failed"
        except TokenbankError:
            return "failed"  # kept on the event, logged, and due again later
        return "settled"

    after: tuple[datetime, int] | None = None
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="settle") as pool:
        while not (down.is_set() or stopping()):
            taken, after = _take(db, now=now, after=after)
            done = list(pool.map(attempt, taken))
            results.update(done)
            skipped = [row_id for (row_id, _), d in zip(taken, done, strict=True) if d == "skipped"]
            if skipped:  # left at once, not after the lease
                _give_back(db, skipped, now=now)
            if len(taken) < PENDING_BATCH:
                break
    return Pending(settled=results["settled"], failed=results["failed"])


def _take(
    db: Database, *, now: datetime, after: tuple[datetime, int] | None
) -> tuple[list[tuple[int, str]], tuple[datetime, int] | None]:
    """The next due events of a run, in order, taken for the lease: their ``settle_after``
    moves past it, so another worker's run (which skips rows locked meanwhile on
    PostgreSQL, and waits its turn on SQLite's one writer) passes them by. ``after`` is
    where the run has got to, in the order it reads (``settle_after``, id, as they were
    before the taking): an event that failed in this run is not read again by it."""
    due = (
        sa.select(webhook_events.c.id, webhook_events.c.settle_after, webhook_events.c.payload)
        .where(webhook_events.c.processed_at.is_(None), webhook_events.c.settle_after <= now)
        .order_by(webhook_events.c.settle_after, webhook_events.c.id)
        .limit(PENDING_BATCH)
        .with_for_update(skip_locked=True)
    )
    if after is not None:
        due = due.where(sa.tuple_(webhook_events.c.settle_after, webhook_events.c.id) > after)
    with db.transaction() as conn:
        rows = conn.execute(due).all()
        if rows:
            conn.execute(
                sa.update(webhook_events)
                .where(webhook_events.c.id.in_([row.id for row in rows]))
                .values(settle_after=max(now, utcnow()) + LEASE)
            )
    last = (rows[-1].settle_after, rows[-1].id) if rows else after
    return [(row.id, row.payload) for row in rows], last


def _give_back(db: Database, row_ids: list[int], *, now: datetime) -> None:
    with db.transaction() as conn:
        conn.execute(
            sa.update(webhook_events)
            .where(webhook_events.c.id.in_(row_ids), webhook_events.c.processed_at.is_(None))
            .values(settle_after=now)
        )


def _parse_stored(db: Database, row_id: int, payload: str, *, now: datetime) -> Event | None:
    """The stored event, or None when its payload no longer parses (stored by another
    version, say): that is kept on it as its error, and it waits like any failure rather
    than being read again on every run."""
    try:
        return parse_event(payload)
    except InvalidEvent as exc:
        with db.transaction() as conn:
            conn.execute(
                sa.update(webhook_events)
                .where(webhook_events.c.id == row_id, webhook_events.c.processed_at.is_(None))
                .values(
                    attempts=webhook_events.c.attempts + 1,
                    last_error=f"InvalidEvent: {exc}"[:MAX_ERROR_LENGTH],
                    settle_after=max(now, utcnow()) + LONGEST_RETRY,
                )
            )
        log.warning("webhook_failed", row_id=row_id, error_code=exc.code, error_type="InvalidEvent")
        return None


def count_unsettled(conn: Connection) -> dict[str, int]:
    """Stored events not processed yet: ``waiting`` (never tried, or being settled) and
    ``failed`` (the last attempt failed; the worker tries again)."""
    failed = webhook_events.c.last_error.is_not(None)
    rows = conn.execute(
        sa.select(failed.label("failed"), sa.func.count())
        .where(webhook_events.c.processed_at.is_(None))
        .group_by(failed)
    ).all()
    counts = {"waiting": 0, "failed": 0}
    for is_failed, count in rows:
        counts["failed" if is_failed else "waiting"] += count
    return counts


def _error_code(exc: Exception, failure: TokenbankError | None) -> str:
    """The stable code of what the endpoint answers (Stripe, or the database, unavailable:
    503) or, for a failure it answers 500, of the error itself when tokenbank raised it."""
    if isinstance(exc, TokenbankError):
        return exc.code
    return failure.code if failure is not None else ProcessingFailed.code


def _to_inbox(row: sa.Row[tuple[int, ...]]) -> InboxEvent:
    return InboxEvent(
        id=row.id,
        event_id=row.event_id,
        type=row.type,
        created_at=row.created_at,
        received_at=row.received_at,
        processed_at=row.processed_at,
        attempts=row.attempts,
        last_error=row.last_error,
        outcome=row.outcome,
    )


def list_events(
    conn: Connection, *, failed: bool = False, limit: int = 50, before: int | None = None
) -> list[InboxEvent]:
    """Newest first; ``failed``: only events whose last attempt failed."""
    query = sa.select(webhook_events).order_by(webhook_events.c.id.desc()).limit(limit)
    if failed:
        query = query.where(
            webhook_events.c.processed_at.is_(None), webhook_events.c.last_error.is_not(None)
        )
    if before is not None:
        query = query.where(webhook_events.c.id < before)
    return [_to_inbox(row) for row in conn.execute(query)]


def get_event(conn: Connection, *, event_id: str) -> InboxEvent:
    row = conn.execute(
        sa.select(webhook_events).where(webhook_events.c.event_id == event_id)
    ).first()
    if row is None:
        raise UnknownEvent(event_id)
    return _to_inbox(row)


def replay(
    db: Database,
    stripe: Stripe,
    *,
    event_id: str,
    policy: ClawbackPolicy,
    catalog: Catalog | None = None,
) -> Processed:
    """Settle a stored event again, processed or not."""
    with db.read() as conn:
        payload = conn.execute(
            sa.select(webhook_events.c.payload).where(webhook_events.c.event_id == event_id)
        ).scalar()
    if payload is None:
        raise UnknownEvent(event_id)
    return process(
        db, stripe, event=parse_event(payload), policy=policy, catalog=catalog, force=True
    )
