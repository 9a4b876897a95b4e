"""``tokenbank worker``: the process that sends the mail outbox and runs the timed jobs."""

from __future__ import annotations

import signal
from typing import Annotated

import structlog
import typer

from tokenbank import billing, worker
from tokenbank.cli.common import context, err, out, reported
from tokenbank.columns import utcnow
from tokenbank.config import with_secrets
from tokenbank.logs import configure_logging
from tokenbank.mail import Sender
from tokenbank.web.letters import mail_sender

log = structlog.get_logger("tokenbank.worker")
STOPPING = {signal.SIGTERM, signal.SIGINT}


def worker_command(
    ctx: typer.Context,
    poll: Annotated[float, typer.Option(help="Seconds between looks at the outbox.")] = 5.0,
    once: Annotated[
        bool,
        typer.Option(
            "--once",
            help="Run every job once (unless another worker is running it right now),"
            " send the mail that is due, and exit: 0, or 1 if a job failed. For cron.",
        ),
    ] = False,
) -> None:
    """Send the mail outbox and run the timed jobs (expire holds and grants, reconcile with
    Stripe, sweep) until stopped (SIGTERM or Ctrl-C). Any number may run: the database
    decides which runs each job, and app processes may send mail too
    (``TOKENBANK_MAIL_SENDER=app``) or leave it to workers (``=worker``). docs/worker.md."""
    with reported():
        settings = with_secrets(context(ctx).settings)
        db = context(ctx).db
        sender = mail_sender(settings, db)
        plan = worker.schedule(settings, seller=billing.billing_from_settings(settings))
    if once:
        _once(ctx, plan, sender)
        return
    configure_logging(settings.log_level)
    for name, reason in plan.skipped:
        log.info("job_skipped", job=name, reason=reason)
    # The signals are waited for here, not handled: a handler would run on this thread at
    # any point, even inside the lock of an event another thread waits on.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOPPING)  # the threads started inherit it
    sending = sender.start(poll=poll)
    running = worker.Worker(db, plan.jobs)
    looping = running.start()
    every = ", ".join(f"{job.name} every {_every(job)}" for job in plan.jobs)
    err.print(f"worker: sending the mail outbox, running {every} (stop with Ctrl-C)")
    signal.sigwait(STOPPING)
    sender.stop()
    running.stop()
    # The job in hand finishes (a batch of expiries, a reconcile's payment); a second
    # signal stops at once, and the next run does what this one left.
    for thread in (sending, looping):
        while thread.is_alive():
            if signal.sigtimedwait(STOPPING, 0.1) is not None:
                err.print("worker: stopped at once; the next run finishes the job")
                return
            thread.join(0.1)


def _once(ctx: typer.Context, plan: worker.Schedule, sender: Sender) -> None:
    db = context(ctx).db
    asked_at = utcnow()
    failed = False
    with reported():
        worker.register(db, plan.jobs, now=asked_at)
    for name, reason in plan.skipped:
        out.print(f"{name}: skipped, {reason}", highlight=False)
    for job in plan.jobs:
        with reported():
            outcome = worker.run_job(db, job, asked_at=asked_at)
        if not outcome.ran:
            out.print(f"{job.name}: left to the worker running it now", highlight=False)
        elif outcome.error is not None:
            failed = True
            err.print(f"[bold red]{job.name} failed[/]: {outcome.error}", highlight=False)
        else:
            out.print(
                f"{job.name}: {outcome.items} done in {outcome.seconds:.2f} s", highlight=False
            )
    with reported():
        sent = sender.send_due()
    out.print(
        f"mail: sent {sent.sent}, to retry {sent.retried}, failed {sent.failed},"
        f" not needed {sent.dropped}"
    )
    if failed:
        raise typer.Exit(1)


def _every(job: worker.Job) -> str:
    seconds = int(job.every.total_seconds())
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"
