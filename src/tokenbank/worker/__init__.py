"""``tokenbank worker``'s timed jobs: expiring holds and grants, reconciling with Stripe,
sweeping what can no longer be used. Any number of workers may run: the ``jobs`` table
decides which one runs each due run (docs/worker.md)."""

from tokenbank.worker.jobs import Schedule, schedule
from tokenbank.worker.service import (
    Done,
    Job,
    JobState,
    Outcome,
    Run,
    Worker,
    claim,
    next_due,
    register,
    run_due,
    run_job,
    states,
)

__all__ = [
    "Done",
    "Job",
    "JobState",
    "Outcome",
    "Run",
    "Schedule",
    "Worker",
    "claim",
    "next_due",
    "register",
    "run_due",
    "run_job",
    "schedule",
    "states",
]
