"""Putting mail in the outbox: in the caller's unit of work, so the mail exists if and only
if the change it tells of committed, and a crash or an SMTP outage loses none of it."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tokenbank.columns import utcnow
from tokenbank.db import after_commit
from tokenbank.mail.models import outbox

#: Set when this process commits new mail, so its sender wakes at once instead of at its
#: next poll (other processes' senders find it by polling).
NEW_MAIL = threading.Event()


@dataclass(frozen=True, slots=True)
class Letter:
    """One mail to write and send, as the outbox holds it."""

    id: int
    kind: str
    to: str
    language: str
    user_id: str | None
    params: Mapping[str, Any]
    attempts: int
    created_at: datetime
    #: Until when the sender that holds it may send it (what its outcome is recorded under).
    claimed_until: datetime | None = None


def enqueue(
    conn: Connection,
    *,
    kind: str,
    to: str,
    language: str,
    user_id: str | None = None,
    params: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> int:
    """Add a mail to the outbox; it is sent once the caller's unit of work commits.
    ``params`` are what the letter says besides its kind: never a secret."""
    now = now or utcnow()
    mail_id = conn.execute(
        sa.insert(outbox)
        .values(
            kind=kind,
            to_address=to,
            user_id=user_id,
            language=language,
            params=dict(params or {}),
            created_at=now,
            next_attempt_at=now,
        )
        .returning(outbox.c.id)
    ).scalar_one()
    after_commit(conn, NEW_MAIL.set)
    return int(mail_id)


def letter(row: Any) -> Letter:
    return Letter(
        id=row.id,
        kind=row.kind,
        to=row.to_address,
        language=row.language,
        user_id=row.user_id,
        params=row.params or {},
        attempts=row.attempts,
        created_at=row.created_at,
        claimed_until=row.claimed_until,
    )


def recent(
    conn: Connection, *, status: str | None = None, to: str | None = None, limit: int = 50
) -> list[Any]:
    """The newest mail first, for the CLI and the development mailbox."""
    query = sa.select(outbox).order_by(outbox.c.id.desc()).limit(limit)
    if status is not None:
        query = query.where(outbox.c.status == status)
    if to is not None:
        query = query.where(outbox.c.to_address == to)
    return list(conn.execute(query))


def find(conn: Connection, *, mail_id: int) -> Any | None:
    return conn.execute(sa.select(outbox).where(outbox.c.id == mail_id)).first()
