"""How long mail stays in the outbox, and how much of it waits: sent mail is kept a while
(what was sent to whom, when: the first thing asked of support) and then deleted, with what
development kept of its text."""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tokenbank.columns import utcnow
from tokenbank.mail.models import STATUSES, outbox

KEPT_FOR = timedelta(days=30)


def sweep(conn: Connection, *, now: datetime | None = None) -> dict[str, int]:
    """Delete mail sent, or no longer needed, more than ``KEPT_FOR`` ago. Pending and
    failed mail stays: it is still to be sent, or for an operator to look at."""
    before = (now or utcnow()) - KEPT_FOR
    removed = conn.execute(
        sa.delete(outbox).where(
            outbox.c.status.in_(("sent", "dropped")), outbox.c.created_at < before
        )
    ).rowcount
    return {"mail": removed}


def counts(conn: Connection) -> dict[str, int]:
    """How many mails are in each state (every state named, zero included)."""
    found: dict[str, int] = dict(
        conn.execute(sa.select(outbox.c.status, sa.func.count()).group_by(outbox.c.status)).all()
    )
    return {status: int(found.get(status, 0)) for status in STATUSES}
