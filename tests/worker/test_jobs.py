"""The jobs themselves, on real rows: each does its work once however many workers run it
at the same moment, in batches, and leaves the ledger verified."""

from __future__ import annotations

import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

from tests.billing.conftest import Store, open_store, store
from tests.conftest import EPOCH
from tests.processes import STOP_TIMEOUT, Process, clean_env
from tests.stripe_emulator import EmulatorServer
from tests.worker.conftest import LATER, MADE, holds_past_due
from tokenbank import ledger, worker
from tokenbank.columns import utcnow
from tokenbank.config import Settings
from tokenbank.db import Database
from tokenbank.identity.models import rate_limits
from tokenbank.ledger import HoldStatus, Source, TransferKind
from tokenbank.ledger.models import accounts, holds, transfers
from tokenbank.worker import Run, jobs

__all__ = ["store"]  # a fixture


def hold_statuses(db: Database) -> dict[str, int]:
    with db.read() as conn:
        found = conn.execute(sa.select(holds.c.status, sa.func.count()).group_by(holds.c.status))
        return {status: int(count) for status, count in found}


def held(db: Database) -> int:
    """Tokens held in all wallets, from the wallets' own rows."""
    with db.read() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(accounts.c.held), 0)).where(
                    accounts.c.kind == "wallet"
                )
            ).scalar_one()
        )


def test_expire_holds_works_in_batches_until_none_is_left(db: Database) -> None:
    count = holds_past_due(db, wallets=7, per_wallet=3)
    not_yet = worker.Run(db=db, now=MADE + timedelta(seconds=59))
    assert jobs.expire_holds(not_yet, batch=4) == worker.Done(items=0)

    done = jobs.expire_holds(worker.Run(db=db, now=LATER), batch=4)

    assert done == worker.Done(items=count)
    assert hold_statuses(db) == {HoldStatus.EXPIRED.value: count}
    assert held(db) == 0
    assert jobs.expire_holds(worker.Run(db=db, now=LATER), batch=4) == worker.Done(items=0)


def test_a_stopping_worker_leaves_the_rest_to_the_next_run(db: Database) -> None:
    count = holds_past_due(db, wallets=6, per_wallet=1)
    stopping = threading.Event()
    stopping.set()
    assert jobs.expire_holds(Run(db=db, now=LATER, stopping=stopping), batch=2).items == 0
    assert hold_statuses(db) == {HoldStatus.PENDING.value: count}
    assert jobs.expire_holds(Run(db=db, now=LATER), batch=2).items == count


def test_two_workers_expiring_holds_at_once_expire_each_exactly_once(db: Database) -> None:
    """Both run the job's work itself at the same moment, each on its own connections (the
    claim would otherwise keep the second away): they lock the same wallets in turn, and
    between them count every hold once."""
    count = holds_past_due(db, wallets=40, per_wallet=3)
    start = threading.Barrier(2)

    def one_worker() -> int:
        start.wait()
        return jobs.expire_holds(Run(db=db, now=LATER), batch=16).items

    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(lambda _: one_worker(), range(2)))

    assert sum(done) == count
    assert hold_statuses(db) == {HoldStatus.EXPIRED.value: count}
    assert held(db) == 0
    with db.read() as conn:
        assert ledger.verify(conn).ok


def grants_past_due(db: Database, *, wallets: int, per_wallet: int) -> int:
    for n in range(wallets):
        user_id = f"user-{n}"
        with db.transaction(wallet=user_id) as conn:
            ledger.open_wallet(conn, user_id=user_id, now=MADE)
            for g in range(per_wallet):
                ledger.credit(
                    conn,
                    user_id=user_id,
                    amount=10,
                    kind=TransferKind.GRANT,
                    idempotency_key=f"promo-{n}-{g}",
                    source=Source.PROMO,
                    expires_at=MADE + timedelta(minutes=1),
                    now=MADE,
                )
    return wallets * per_wallet


def expiries(db: Database) -> int:
    with db.read() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(transfers)
                .where(transfers.c.kind == TransferKind.EXPIRY.value)
            ).scalar_one()
        )


def test_two_workers_expiring_grants_at_once_expire_each_bucket_exactly_once(
    db: Database,
) -> None:
    count = grants_past_due(db, wallets=30, per_wallet=2)
    start = threading.Barrier(2)

    def one_worker() -> int:
        start.wait()
        return jobs.expire_grants(Run(db=db, now=LATER), batch=8).items

    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(lambda _: one_worker(), range(2)))

    assert sum(done) == count
    assert expiries(db) == count
    with db.read() as conn:
        for n in range(30):
            assert ledger.balance(conn, user_id=f"user-{n}", now=LATER).balance == 0
        assert ledger.verify(conn).ok


def test_two_worker_processes_at_once_expire_each_hold_and_bucket_once(
    db: Database, tmp_path: Path
) -> None:
    """``tokenbank worker --once`` twice at the same moment, as two cron entries on two
    machines would: both succeed, and the table counts every hold and bucket once."""
    made = utcnow() - timedelta(hours=2)
    count = holds_past_due(db, wallets=20, per_wallet=2, made=made)
    env = clean_env(
        {
            "TOKENBANK_DATABASE_URL": db.url.render_as_string(hide_password=False),
            "TOKENBANK_SECRET_KEY": secrets.token_urlsafe(48),
            "TOKENBANK_VAR_DIR": str(tmp_path / "var"),
            "TOKENBANK_ENV_FILE": "",
            "TOKENBANK_DATABASE_POOL_SIZE": "4",
        }
    )
    with db.transaction(wallet="granted") as conn:
        ledger.open_wallet(conn, user_id="granted", now=made)
        ledger.credit(
            conn,
            user_id="granted",
            amount=25,
            kind=TransferKind.GRANT,
            idempotency_key="promo",
            source=Source.PROMO,
            expires_at=made + timedelta(minutes=1),
            now=made,
        )
    workers = [
        Process.start(name, ("worker", "--once"), env=env, directory=tmp_path)
        for name in ("worker-1", "worker-2")
    ]
    try:
        codes = [w.popen.wait(STOP_TIMEOUT * 3) for w in workers]
    finally:
        for w in workers:
            w.stop()
    assert codes == [0, 0], [w.output() for w in workers]
    assert hold_statuses(db) == {HoldStatus.EXPIRED.value: count}
    assert expiries(db) == 1
    with db.read() as conn:
        done = {job.name: job for job in worker.states(conn)}
        assert ledger.balance(conn, user_id="granted").balance == 0
    assert done["expire_holds"].items == count and done["expire_grants"].items == 1
    assert done["expire_holds"].failures == done["expire_grants"].failures == 0
    assert "reconcile" not in done  # no Stripe key: skipped, and said so
    assert all("reconcile: skipped" in w.output() for w in workers)


def test_sweep_deletes_what_can_no_longer_be_used(db: Database) -> None:
    with db.transaction() as conn:
        conn.execute(
            sa.insert(rate_limits),
            [
                {"key": "old", "hits": 1, "expires_at": EPOCH},
                {"key": "current", "hits": 1, "expires_at": EPOCH + timedelta(days=1)},
            ],
        )
    assert jobs.sweep(Run(db=db, now=EPOCH + timedelta(hours=1))).items == 1
    with db.read() as conn:
        assert conn.execute(sa.select(rate_limits.c.key)).scalars().all() == ["current"]
    assert jobs.sweep(Run(db=db, now=EPOCH + timedelta(hours=1))).items == 0


def test_the_schedule_leaves_reconcile_out_without_payments() -> None:
    settings = Settings(database_url="sqlite:///unused.db", reconcile_minutes=5)
    plan = worker.schedule(settings, seller=None)
    assert [job.name for job in plan.jobs] == [
        "expire_holds",
        "end_abandoned_calls",
        "expire_grants",
        "grant_months",
        "sweep",
    ]
    assert [name for name, _ in plan.skipped] == ["reconcile", "settle_webhooks"]


def test_the_worker_settles_the_stripe_events_answered_before_they_were_settled(
    db: Database, emulator_server: EmulatorServer
) -> None:
    settings = Settings(database_url="sqlite:///unused.db")
    with open_store(db, emulator_server, webhook_settle_slots=0) as store:
        plan = worker.schedule(settings, seller=store.seller)
        (job,) = [job for job in plan.jobs if job.name == "settle_webhooks"]
        assert job.every <= timedelta(seconds=5)
        store.user()
        store.paid_checkout("plus")
        assert store.balance()["available"] == 0
        worker.register(store.db, [job])
        outcome = worker.run_job(store.db, job)
        assert outcome.ran and outcome.error is None and outcome.items >= 2
        assert store.balance()["available"] == 2200


def test_reconcile_credits_a_payment_whose_webhook_never_came(store: Store) -> None:
    settings = Settings(database_url="sqlite:///unused.db", reconcile_minutes=5)
    plan = worker.schedule(settings, seller=store.seller)
    (reconcile,) = [job for job in plan.jobs if job.name == "reconcile"]
    assert reconcile.every == timedelta(minutes=5) and not plan.skipped
    store.emulator.configure(drop=100)  # every webhook lost
    store.paid_checkout("plus")
    assert store.balance()["available"] == 0
    worker.register(store.db, [reconcile])

    outcome = worker.run_job(store.db, reconcile)

    assert (outcome.ran, outcome.items, outcome.error) == (True, 1, None)
    assert store.balance()["available"] == 2200
    # Again: nothing left to fix.
    assert worker.run_job(store.db, reconcile, asked_at=utcnow()).items == 0
