"""``tokenbank worker`` as operators run it: ``--once`` from cron, and the long-running
process that a service manager stops with SIGTERM."""

from __future__ import annotations

import secrets
import signal
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from tests.faults.conftest import wait_for
from tests.processes import STOP_TIMEOUT, Process, clean_env, free_ports
from tests.worker.conftest import holds_past_due
from tokenbank.cli import app
from tokenbank.columns import utcnow
from tokenbank.db import Database
from tokenbank.ledger import HoldStatus
from tokenbank.ledger.models import holds
from tokenbank.worker.models import jobs

runner = CliRunner()
Run = Callable[..., str]


def pending_holds(db: Database) -> int:
    with db.read() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(holds)
                .where(holds.c.status == HoldStatus.PENDING.value)
            ).scalar_one()
        )


def env_for(db: Database, tmp_path: Path) -> dict[str, str]:
    return {
        "TOKENBANK_DATABASE_URL": db.url.render_as_string(hide_password=False),
        "TOKENBANK_SECRET_KEY": secrets.token_urlsafe(48),
        "TOKENBANK_VAR_DIR": str(tmp_path / "var"),
    }


@pytest.fixture
def tokenbank(db: Database, tmp_path: Path) -> Run:
    def run(*args: str, code: int = 0, **extra: str) -> str:
        result = runner.invoke(app, list(args), env={**env_for(db, tmp_path), **extra})
        assert result.exit_code == code, result.output
        return result.output

    return run


def test_once_runs_every_job_and_exits(tokenbank: Run, db: Database) -> None:
    count = holds_past_due(db, wallets=3, per_wallet=2, made=utcnow() - timedelta(hours=1))

    ran = tokenbank("worker", "--once")

    assert f"expire_holds: {count} done" in ran
    assert "expire_grants: 0 done" in ran and "sweep: 0 done" in ran
    assert "reconcile: skipped, payments are not configured" in ran
    assert "mail: sent 0" in ran
    assert pending_holds(db) == 0
    # Asked again later: run again, with nothing left to do.
    assert "expire_holds: 0 done" in tokenbank("worker", "--once")
    with db.read() as conn:
        runs = {row.name: row.runs for row in conn.execute(sa.select(jobs.c.name, jobs.c.runs))}
    assert runs == {
        "expire_holds": 2,
        "end_abandoned_calls": 2,
        "expire_grants": 2,
        "grant_months": 2,
        "sweep": 2,
    }


def test_once_exits_1_when_a_job_failed_and_runs_the_others(tokenbank: Run, db: Database) -> None:
    holds_past_due(db, wallets=2, per_wallet=1, made=utcnow() - timedelta(hours=1))
    (nobody,) = free_ports(1)

    ran = tokenbank(
        "worker",
        "--once",
        code=1,
        STRIPE_SECRET_KEY="sk_test_" + "x" * 24,
        STRIPE_API_BASE=f"http://127.0.0.1:{nobody}",  # Stripe does not answer
        TOKENBANK_STRIPE_MAX_NETWORK_RETRIES="0",
    )

    assert "reconcile failed: PaymentProviderUnavailable" in ran
    assert "expire_holds: 2 done" in ran and "sweep: 0 done" in ran
    assert pending_holds(db) == 0
    with db.read() as conn:
        failed = conn.execute(sa.select(jobs).where(jobs.c.name == "reconcile")).one()
    assert (failed.runs, failed.failures, failed.last_success_at) == (1, 1, None)
    assert failed.last_error == "PaymentProviderUnavailable (payment_provider_unavailable)"


def test_the_worker_runs_its_jobs_until_sigterm(db: Database, tmp_path: Path) -> None:
    count = holds_past_due(db, wallets=2, per_wallet=2, made=utcnow() - timedelta(hours=1))
    env = clean_env({**env_for(db, tmp_path), "TOKENBANK_ENV_FILE": ""})
    process = Process.start("worker", ("worker", "--poll", "0.2"), env=env, directory=tmp_path)
    try:
        wait_for(lambda: pending_holds(db) == 0, timeout=30, what="the holds expired")
        wait_for(lambda: '"job_done"' in process.output(), timeout=10, what="the job's log line")
        process.popen.send_signal(signal.SIGTERM)
        code = process.popen.wait(STOP_TIMEOUT)
    finally:
        process.stop()
    assert code == 0, process.output()
    output = process.output()
    assert "expire_holds every 30 s" in output and "sweep every 1 h" in output
    assert f'"items": {count}' in output and '"job": "expire_holds"' in output
    assert '"job_skipped"' in output and '"job": "reconcile"' in output


def test_a_worker_killed_mid_job_loses_nothing_and_the_next_run_finishes_it(
    tokenbank: Run, db: Database, tmp_path: Path
) -> None:
    count = holds_past_due(db, wallets=400, per_wallet=5, made=utcnow() - timedelta(hours=1))
    env = clean_env({**env_for(db, tmp_path), "TOKENBANK_ENV_FILE": ""})
    process = Process.start("worker", ("worker", "--poll", "0.2"), env=env, directory=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while pending_holds(db) == count:  # until the job has released its first wallets
            assert time.monotonic() < deadline, process.output()
            time.sleep(0.002)
        process.popen.send_signal(signal.SIGKILL)
        process.popen.wait(STOP_TIMEOUT)
    finally:
        process.stop()
    left = pending_holds(db)
    assert 0 < left < count, "the worker was not killed in the middle of its job"

    ran = tokenbank("worker", "--once")

    assert f"expire_holds: {left} done" in ran
    assert pending_holds(db) == 0
