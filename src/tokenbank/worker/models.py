from __future__ import annotations

import sqlalchemy as sa

from tokenbank.columns import UtcDateTime
from tokenbank.db import metadata

#: One row per timed job of ``tokenbank worker``: when it is next due, and what its runs
#: did. A worker runs a job only after moving ``next_run_at`` forward in one conditional
#: UPDATE, so however many workers share the database, one runs each due run; the counts
#: are what ``/metrics`` reports for every worker at once.
jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("next_run_at", UtcDateTime, nullable=False),
    sa.Column("last_started_at", UtcDateTime, nullable=True),
    sa.Column("last_success_at", UtcDateTime, nullable=True),
    sa.Column("last_failure_at", UtcDateTime, nullable=True),
    # The class of the error, or what went wrong in a few words: never a message that may
    # quote a statement's parameters or a secret.
    sa.Column("last_error", sa.String(200), nullable=True),
    sa.Column("runs", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("failures", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("items", sa.BigInteger, nullable=False, server_default="0"),
    sa.CheckConstraint("runs >= 0 AND failures >= 0 AND items >= 0", name="counts_not_negative"),
    sa.CheckConstraint("failures <= runs", name="failures_within_runs"),
)
