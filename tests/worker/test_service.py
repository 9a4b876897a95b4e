"""Running jobs through the ``jobs`` table: one worker runs each due run, whatever the
number of workers; a failure is recorded and stops nothing else; the database going away
costs a wait, never the worker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import sqlalchemy as sa

from tests.conftest import EPOCH
from tests.worker.conftest import Counting
from tokenbank import errors, worker
from tokenbank.db import Database
from tokenbank.models import metadata
from tokenbank.worker import Job, JobState
from tokenbank.worker.models import jobs

MINUTE = timedelta(minutes=1)


def state(db: Database, name: str) -> JobState:
    with db.read() as conn:
        (found,) = [job for job in worker.states(conn) if job.name == name]
    return found


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.01)


def test_of_workers_claiming_the_same_due_run_at_once_exactly_one_runs_it(db: Database) -> None:
    work = Counting()
    job = Job("count", MINUTE, work)
    worker.register(db, [job], now=EPOCH)
    start = threading.Barrier(8)

    def one_worker() -> worker.Outcome:
        start.wait()
        return worker.run_job(db, job, now=EPOCH)

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda _: one_worker(), range(8)))

    assert sorted(o.ran for o in outcomes) == [False] * 7 + [True]
    assert work.runs == 1
    found = state(db, "count")
    assert (found.runs, found.items, found.failures) == (1, 1, 0)
    assert found.next_run_at == EPOCH + MINUTE and found.last_started_at == EPOCH


def test_a_job_runs_again_only_once_its_interval_passed(db: Database) -> None:
    work = Counting(items=3)
    job = Job("count", MINUTE, work)
    worker.register(db, [job], now=EPOCH)
    worker.register(db, [job], now=EPOCH + MINUTE * 5)  # a second worker starting: no change

    ran = [
        worker.run_job(db, job, now=EPOCH + offset).ran
        for offset in (timedelta(0), timedelta(seconds=59), MINUTE, MINUTE * 2 - timedelta(1))
    ]

    assert ran == [True, False, True, False]
    found = state(db, "count")
    assert (found.runs, found.items) == (2, 6)
    assert found.next_run_at == EPOCH + MINUTE * 2
    assert found.last_success_at is not None and found.last_success_at >= EPOCH + MINUTE
    assert worker.next_due(db, [job]) == EPOCH + MINUTE * 2


def test_once_runs_a_job_not_due_unless_a_run_started_since_it_was_asked(db: Database) -> None:
    work = Counting()
    job = Job("count", timedelta(hours=1), work)
    worker.register(db, [job], now=EPOCH)
    assert worker.run_job(db, job, now=EPOCH).ran  # a looping worker ran it: not due now

    asked = EPOCH + MINUTE
    first = worker.run_job(db, job, now=asked, asked_at=asked)
    # A second --once asked at the same moment: the run that just started is the one asked
    # for. One asked later gets a run of its own.
    second = worker.run_job(db, job, now=asked + timedelta(seconds=1), asked_at=asked)
    later = worker.run_job(db, job, now=asked + MINUTE, asked_at=asked + timedelta(seconds=30))

    assert (first.ran, second.ran, later.ran) == (True, False, True)
    assert work.runs == 3
    assert state(db, "count").next_run_at == asked + MINUTE + timedelta(hours=1)


def test_a_failing_job_is_recorded_and_the_others_still_run(db: Database) -> None:
    broken = Counting(failing=RuntimeError("secret=hunter2 in a message"))
    partial = Counting(items=4, problem="2 of 6 payments not settled")
    refused = Counting(failing=errors.DatabaseUnavailable("the database is down"))
    fine = Counting(items=2)
    job_list = [
        Job("broken", MINUTE, broken),
        Job("partial", MINUTE, partial),
        Job("refused", MINUTE, refused),
        Job("fine", MINUTE, fine),
    ]
    worker.register(db, job_list, now=EPOCH)

    outcomes = worker.run_due(db, job_list, now=EPOCH)

    assert [(o.job, o.ran, o.items, o.error) for o in outcomes] == [
        ("broken", True, 0, "RuntimeError"),
        ("partial", True, 4, "2 of 6 payments not settled"),
        ("refused", True, 0, "DatabaseUnavailable (database_unavailable)"),
        ("fine", True, 2, None),
    ]
    assert [o.failed for o in outcomes] == [True, True, True, False]
    broken_state = state(db, "broken")
    # The class only: a message may quote what must not be stored.
    assert broken_state.last_error == "RuntimeError"
    assert (broken_state.runs, broken_state.failures) == (1, 1)
    assert broken_state.last_failure_at is not None and broken_state.last_success_at is None
    assert (state(db, "partial").failures, state(db, "partial").items) == (1, 4)
    fine_state = state(db, "fine")
    assert (fine_state.failures, fine_state.items, fine_state.last_error) == (0, 2, None)
    # A failed run is tried again at the next interval, like any other.
    assert state(db, "broken").next_run_at == EPOCH + MINUTE
    again = worker.run_due(db, job_list, now=EPOCH + MINUTE)
    assert [o.ran for o in again] == [True] * 4
    assert (state(db, "broken").runs, state(db, "broken").failures) == (2, 2)


def test_the_worker_loop_runs_each_job_at_its_own_interval_and_stops(db: Database) -> None:
    quick, slow = Counting(), Counting()
    loop = worker.Worker(
        db,
        [Job("quick", timedelta(milliseconds=20), quick), Job("slow", timedelta(hours=1), slow)],
    )
    thread = loop.start()
    try:
        wait_for(lambda: quick.runs >= 5, "five runs of the quick job")
    finally:
        loop.stop()
        thread.join(5)
    assert not thread.is_alive()
    assert slow.runs == 1
    assert state(db, "quick").runs == quick.runs


def test_the_worker_waits_out_a_database_it_cannot_use_and_goes_on(db: Database) -> None:
    work = Counting()
    with db.transaction() as conn:
        jobs.drop(conn)  # as good as a database that does not answer: every claim fails
    loop = worker.Worker(db, [Job("count", MINUTE, work)], retry=0.02)
    thread = loop.start()
    try:
        time.sleep(0.1)  # a few tries, each failing
        assert thread.is_alive() and work.runs == 0
        with db.transaction() as conn:
            metadata.tables["jobs"].create(conn)
        wait_for(lambda: work.runs == 1, "the job to run once the database is back")
    finally:
        loop.stop()
        thread.join(5)
        with db.transaction() as conn:
            metadata.tables["jobs"].create(conn, checkfirst=True)
    assert state(db, "count").runs == 1
    with db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(jobs)).scalar() == 1
