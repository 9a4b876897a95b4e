"""The jobs ``tokenbank worker`` runs, and how often (docs/worker.md).

Each is safe to run by several workers at once and to be killed midway: expiring locks
each wallet while it changes it and skips what another run already did, reconcile settles
through the same idempotent ``settle`` as the webhooks, and the sweep only deletes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import structlog
from sqlalchemy.engine import Connection

from tokenbank import identity, ledger
from tokenbank.billing import Billing, grant_due_months, reconcile, settle_pending
from tokenbank.config import Settings
from tokenbank.llm import calls
from tokenbank.mail import retention
from tokenbank.worker.service import Done, Job, Run

log = structlog.get_logger("tokenbank.worker")

HOLDS_EVERY = timedelta(seconds=30)
GRANTS_EVERY = timedelta(seconds=60)
SWEEP_EVERY = timedelta(hours=1)
MONTHS_EVERY = timedelta(minutes=5)
#: Stripe events stored but not settled wait at most about this long for the worker.
WEBHOOKS_EVERY = timedelta(seconds=2)
#: Rows handled per unit of work: a wallet's lock, or a transaction, is held for one batch.
BATCH = 500
#: Reconcile's errors logged one by one, at most (the count is always logged).
ERRORS_LOGGED = 20


def until_done(run: Run, batch: Callable[[Connection], int]) -> Done:
    """Run ``batch`` (one ledger operation per wallet, committed as it goes) until it finds
    nothing left, or the worker stops: what is left then is the next run's."""
    total = 0
    while not run.stopping.is_set():
        with run.db.autocommit() as conn:
            count = batch(conn)
        if count == 0:
            break
        total += count
    return Done(items=total)


def expire_holds(run: Run, *, batch: int = BATCH) -> Done:
    """Release the holds whose deadline passed: their tokens are usable again."""
    return until_done(run, lambda conn: ledger.expire_holds(conn, now=run.now, limit=batch))


def end_abandoned_calls(run: Run, *, batch: int = BATCH) -> Done:
    """Record as failed the model calls whose process stopped before settling them, once
    their hold has expired (docs/gateway.md): their tokens are already back."""
    return until_done(run, lambda conn: calls.end_abandoned(conn, now=run.now, limit=batch))


def expire_grants(run: Run, *, batch: int = BATCH) -> Done:
    """Move out of each wallet what is left of its buckets past their expiry."""
    return until_done(run, lambda conn: ledger.expire_grants(conn, now=run.now, limit=batch))


def reconciling(seller: Billing, *, hours: int) -> Callable[[Run], Done]:
    """Settle what the webhooks missed over the last ``hours`` (as ``tokenbank reconcile``
    does); a payment that could not be settled makes the run a failure, for the metrics,
    and the next run tries it again."""

    def work(run: Run) -> Done:
        result = reconcile(
            run.db,
            seller.stripe,
            since=run.now - timedelta(hours=hours),
            policy=seller.policy,
            now=run.now,
            catalog=seller.catalog,
        )
        for error in result.errors[:ERRORS_LOGGED]:
            log.warning("reconcile_error", error=error)
        done = len(result.fixed) + len(result.expired) + len(result.canceled) + len(result.flagged)
        done += len(result.subscriptions)
        problem = None
        if result.errors:
            problem = f"{len(result.errors)} of {result.checked} payments not settled"
        return Done(items=done, problem=problem)

    return work


def settling_webhooks(seller: Billing) -> Callable[[Run], Done]:
    """Settle the Stripe events stored but not settled: deliveries answered while their
    process had no settling slot free, those whose process died settling them, and those
    whose settling failed, once their wait is over (docs/stripe.md)."""

    def work(run: Run) -> Done:
        result = settle_pending(
            run.db,
            seller.stripe,
            policy=seller.policy,
            catalog=seller.catalog,
            now=run.now,
            stopping=run.stopping.is_set,
        )
        problem = f"{result.failed} events not settled" if result.failed else None
        return Done(items=result.settled, problem=problem)

    return work


def grant_months(run: Run) -> Done:
    """Grant each yearly subscription's next month once it has begun (a yearly invoice
    grants one month at a time, never twelve at once)."""
    return Done(items=len(grant_due_months(run.db, now=run.now)))


def sweep(run: Run) -> Done:
    """Delete expired links, ended sessions, old rate-limit counters and old sent mail."""
    with run.db.transaction() as conn:
        removed = identity.sweep(conn, now=run.now)
    with run.db.transaction() as conn:
        removed |= retention.sweep(conn, now=run.now)
    return Done(items=sum(removed.values()))


@dataclass(frozen=True, slots=True)
class Schedule:
    jobs: tuple[Job, ...]
    #: Jobs left out, and why: the worker says so once, when it starts.
    skipped: tuple[tuple[str, str], ...] = ()


def schedule(settings: Settings, *, seller: Billing | None) -> Schedule:
    """The jobs these settings call for: reconcile only when payments are configured."""
    jobs = [
        Job("expire_holds", HOLDS_EVERY, expire_holds),
        Job("end_abandoned_calls", HOLDS_EVERY, end_abandoned_calls),
        Job("expire_grants", GRANTS_EVERY, expire_grants),
        Job("grant_months", MONTHS_EVERY, grant_months),
    ]
    skipped = []
    if seller is None:
        skipped.append(("reconcile", "payments are not configured (no STRIPE_SECRET_KEY)"))
        skipped.append(("settle_webhooks", "payments are not configured (no STRIPE_SECRET_KEY)"))
    else:
        jobs.append(Job("settle_webhooks", WEBHOOKS_EVERY, settling_webhooks(seller)))
        jobs.append(
            Job(
                "reconcile",
                timedelta(minutes=settings.reconcile_minutes),
                reconciling(seller, hours=settings.reconcile_hours),
            )
        )
    jobs.append(Job("sweep", SWEEP_EVERY, sweep))
    return Schedule(jobs=tuple(jobs), skipped=tuple(skipped))
