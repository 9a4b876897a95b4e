"""The audit log of decisions people make about money (resolving a flagged purchase, ...).

A decision and its audit line are written in the same transaction: there is never one
without the other.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tokenbank.audit.models import admin_actions
from tokenbank.columns import utcnow
from tokenbank.ledger import InvalidArgument

MAX_REASON_LENGTH = 500


@dataclass(frozen=True, slots=True)
class Action:
    id: int
    actor: str
    action: str
    subject: str
    reason: str
    details: dict[str, Any] | None
    created_at: datetime


def record(
    conn: Connection,
    *,
    actor: str,
    action: str,
    subject: str,
    reason: str,
    details: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> int:
    """Write one audit line in the caller's transaction; a decision needs a reason."""
    reason = check_reason(reason)
    return int(
        conn.execute(
            sa.insert(admin_actions)
            .values(
                actor=actor,
                action=action,
                subject=subject,
                reason=reason,
                details=details,
                created_at=now or utcnow(),
            )
            .returning(admin_actions.c.id)
        ).scalar_one()
    )


def check_reason(reason: str) -> str:
    """The reason an audited decision must give, trimmed; checked before anything is
    written, so a decision without one changes nothing."""
    reason = reason.strip()
    # Something a reader can see: not only spaces, controls or invisible characters.
    visible = any(unicodedata.category(c)[0] not in "CZ" for c in reason)
    if not visible or len(reason) > MAX_REASON_LENGTH or "\x00" in reason:
        raise InvalidArgument("reason", f"say why, in at most {MAX_REASON_LENGTH} characters")
    return reason


def actions_about(conn: Connection, *, subject: str) -> list[Action]:
    """Newest first."""
    rows = conn.execute(
        sa.select(admin_actions)
        .where(admin_actions.c.subject == subject)
        .order_by(admin_actions.c.id.desc())
    )
    return [
        Action(
            id=row.id,
            actor=row.actor,
            action=row.action,
            subject=row.subject,
            reason=row.reason,
            details=row.details,
            created_at=row.created_at,
        )
        for row in rows
    ]
