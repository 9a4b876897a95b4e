"""Running timed jobs: which worker runs a due run is decided by the database.

Each job has a row in ``jobs``. A worker runs a job only after one conditional UPDATE moved
the row's ``next_run_at`` past now: of several workers that find the same run due, the
first UPDATE wins and the others match no row (PostgreSQL re-reads the row once the
winner commits; SQLite has one writer at a time). The claim commits before the work
starts, so no lock is held while a job runs, and a worker killed mid-run leaves the job to
come due again one interval later: every job is idempotent, and finishes what a killed run
left. What a run did is then added to the row, which is what ``/metrics`` reports for all
workers together.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from tokenbank.columns import utcnow
from tokenbank.db import Database, unavailable
from tokenbank.errors import TokenbankError
from tokenbank.worker.models import jobs

log = structlog.get_logger("tokenbank.worker")

#: The longest a worker sleeps between looks at the table: another worker only ever moves
#: a run later, so this bounds nothing but a clock that jumped.
LONGEST_WAIT = 300.0


@dataclass(frozen=True, slots=True)
class Done:
    """What a run did: how many items it handled and, when part of the work could not be
    done (a payment Stripe would not show), why; the run then counts as failed, and the
    next one tries again."""

    items: int = 0
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class Run:
    """One run of a job: the database, the time it was claimed at (what "due" and
    "expired" are measured against), and whether the worker is stopping (work done in
    batches stops between two)."""

    db: Database
    now: datetime
    stopping: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    every: timedelta
    work: Callable[[Run], Done]

    def __post_init__(self) -> None:
        if self.every <= timedelta(0):
            raise ValueError(f"job {self.name}: its interval must be positive")


@dataclass(frozen=True, slots=True)
class JobState:
    """A job's row: what ``/metrics`` and an operator read."""

    name: str
    next_run_at: datetime
    last_started_at: datetime | None
    last_success_at: datetime | None
    last_failure_at: datetime | None
    last_error: str | None
    runs: int
    failures: int
    items: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """One job in one pass: not run (another worker has it, or it is not due), or run, with
    what it did and how long it took."""

    job: str
    ran: bool
    items: int = 0
    seconds: float = 0.0
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None


_register = {
    name: dialect.insert(jobs).on_conflict_do_nothing(index_elements=["name"])
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}


def register(db: Database, job_list: Sequence[Job], *, now: datetime | None = None) -> None:
    """Give each job its row, due at once, unless it has one (any number of workers may
    start together: the primary key decides)."""
    now = now or utcnow()
    with db.transaction() as conn:
        for job in job_list:
            conn.execute(_register[conn.dialect.name], {"name": job.name, "next_run_at": now})


def claim(db: Database, job: Job, *, now: datetime, asked_at: datetime | None = None) -> bool:
    """Take the run of ``job`` due at ``now``; False if it is not due or another worker
    took it first. With ``asked_at`` (``tokenbank worker --once``) the job is taken whenever
    due or not, unless a run of it started at or after ``asked_at``: that one is the run
    asked for. Either way the next run moves to one interval from now."""
    if asked_at is None:
        due = jobs.c.next_run_at <= now
    else:
        due = sa.or_(jobs.c.last_started_at.is_(None), jobs.c.last_started_at < asked_at)
    with db.transaction() as conn:
        taken = conn.execute(
            sa.update(jobs)
            .where(jobs.c.name == job.name, due)
            .values(next_run_at=now + job.every, last_started_at=now, runs=jobs.c.runs + 1)
            .returning(jobs.c.name)
        ).first()
    return taken is not None


def _record(db: Database, job: Job, *, at: datetime, items: int, error: str | None) -> None:
    values: dict[str, object] = {"items": jobs.c["items"] + items}
    if error is None:
        values["last_success_at"] = at
    else:
        values.update(failures=jobs.c.failures + 1, last_failure_at=at, last_error=error[:200])
    with db.transaction() as conn:
        conn.execute(sa.update(jobs).where(jobs.c.name == job.name).values(**values))


def _error_name(exc: BaseException) -> str:
    """What a failure is called in the table and the log: its class (and code), never its
    message, which may quote a statement's parameters."""
    found = exc if isinstance(exc, TokenbankError) else unavailable(exc)
    if found is not None:
        return f"{type(found).__name__} ({found.code})"
    return type(exc).__name__


def run_job(
    db: Database,
    job: Job,
    *,
    now: datetime | None = None,
    asked_at: datetime | None = None,
    stopping: threading.Event | None = None,
) -> Outcome:
    """Claim ``job`` and, if this worker got it, run it and record what it did. A failing
    job is recorded and logged, not raised; the database failing while claiming or
    recording is raised (the caller waits and tries again)."""
    now = now or utcnow()
    if not claim(db, job, now=now, asked_at=asked_at):
        return Outcome(job.name, ran=False)
    started = time.monotonic()
    try:
        done = job.work(Run(db=db, now=now, stopping=stopping or threading.Event()))
    except Exception as exc:
        seconds = time.monotonic() - started
        error = _error_name(exc)
        if unavailable(exc) is not None or isinstance(exc, TokenbankError):
            log.warning("job_failed", job=job.name, error=error, seconds=round(seconds, 3))
        else:  # a bug: its traceback is what finds it
            log.exception("job_failed", job=job.name, error=error, seconds=round(seconds, 3))
        _record(db, job, at=now + timedelta(seconds=seconds), items=0, error=error)
        return Outcome(job.name, ran=True, seconds=seconds, error=error)
    seconds = time.monotonic() - started
    _record(db, job, at=now + timedelta(seconds=seconds), items=done.items, error=done.problem)
    if done.problem is not None:
        log.warning(
            "job_failed",
            job=job.name,
            error=done.problem,
            items=done.items,
            seconds=round(seconds, 3),
        )
    elif done.items:
        log.info("job_done", job=job.name, items=done.items, seconds=round(seconds, 3))
    return Outcome(job.name, ran=True, items=done.items, seconds=seconds, error=done.problem)


def run_due(
    db: Database,
    job_list: Sequence[Job],
    *,
    now: datetime | None = None,
    asked_at: datetime | None = None,
    stopping: threading.Event | None = None,
) -> list[Outcome]:
    """One pass: every job of ``job_list`` that is due (with ``asked_at``: every job not
    run since then), one after the other, each claimed at its own start."""
    outcomes = []
    for job in job_list:
        if stopping is not None and stopping.is_set():
            break
        outcomes.append(run_job(db, job, now=now, asked_at=asked_at, stopping=stopping))
    return outcomes


def to_state(row: sa.Row[tuple[object, ...]]) -> JobState:
    return JobState(**row._asdict())


def states(conn: Connection) -> list[JobState]:
    """Every job's row, by name: each job any worker ever registered."""
    return [to_state(row) for row in conn.execute(sa.select(jobs).order_by(jobs.c.name))]


def next_due(db: Database, job_list: Sequence[Job]) -> datetime | None:
    """When the soonest of these jobs is due (None: none has a row yet)."""
    with db.read() as conn:
        found = conn.execute(
            sa.select(sa.func.min(jobs.c.next_run_at)).where(
                jobs.c.name.in_([job.name for job in job_list])
            )
        ).scalar()
    assert found is None or isinstance(found, datetime)
    return found


@dataclass
class Worker:
    """Runs ``job_list`` until ``stop()``: each job when due, in one thread, sleeping until
    the soonest is due. The database going away costs a log line and a wait of ``retry``
    seconds, never the worker."""

    db: Database
    job_list: Sequence[Job]
    retry: float = 30.0
    _stopping: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        registered = False
        while not self._stopping.is_set():
            try:
                if not registered:
                    register(self.db, self.job_list)
                    registered = True
                run_due(self.db, self.job_list, stopping=self._stopping)
                soonest = next_due(self.db, self.job_list)
                wait = LONGEST_WAIT if soonest is None else (soonest - utcnow()).total_seconds()
            except Exception as exc:
                if unavailable(exc) is None:
                    log.exception("worker_error", error=type(exc).__name__)
                else:
                    log.warning("worker_waiting", error=_error_name(exc), retry=self.retry)
                wait = self.retry
            self._stopping.wait(min(max(wait, 0.0), LONGEST_WAIT))

    def stop(self) -> None:
        self._stopping.set()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="tokenbank-worker", daemon=True)
        thread.start()
        return thread
