"""What model calls used and cost, summed by model, by day or by user: for the usage API,
the admin's usage page and a user's own page. Refused calls count as calls, with nothing
used; calls still running count from when they finish."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tokenbank.llm.tables import CallStatus, llm_calls

GroupBy = Literal["model", "day", "user"]


@dataclass(frozen=True, slots=True)
class UsageRow:
    #: The model id, the day (ISO date, UTC) or the user id.
    group: str
    calls: int
    ok: int
    refused: int
    failed: int
    aborted: int
    input_tokens: int
    output_tokens: int
    charged: int
    shortfall: int


def _day(conn: Connection) -> sa.ColumnElement[str]:
    column = llm_calls.c.created_at
    if conn.dialect.name == "postgresql":
        return sa.func.to_char(sa.func.timezone("UTC", column), "YYYY-MM-DD")
    return sa.func.substr(sa.cast(column, sa.String), 1, 10)


def _count(status: CallStatus) -> sa.ColumnElement[int]:
    return sa.func.coalesce(
        sa.func.sum(sa.case((llm_calls.c.status == status.value, 1), else_=0)), 0
    )


def usage(
    conn: Connection,
    *,
    group_by: GroupBy,
    user_id: str | None = None,
    since: date | None = None,
    until: date | None = None,
    limit: int = 1000,
) -> list[UsageRow]:
    """Finished calls' usage, by ``group_by``, for one user or everyone; ``since`` and
    ``until`` are days (UTC), both included. By user: the biggest spenders first."""
    group: sa.ColumnElement[str]
    if group_by == "model":
        group = llm_calls.c.model
    elif group_by == "user":
        group = llm_calls.c.user_id
    else:
        group = _day(conn)
    charged = sa.func.coalesce(sa.func.sum(llm_calls.c.charged), 0)
    query = (
        sa.select(
            group.label("group"),
            sa.func.count().label("calls"),
            _count(CallStatus.OK).label("ok"),
            _count(CallStatus.REFUSED).label("refused"),
            _count(CallStatus.FAILED).label("failed"),
            _count(CallStatus.ABORTED).label("aborted"),
            sa.func.coalesce(sa.func.sum(llm_calls.c.input_tokens), 0).label("input_tokens"),
            sa.func.coalesce(sa.func.sum(llm_calls.c.output_tokens), 0).label("output_tokens"),
            charged.label("charged"),
            sa.func.coalesce(sa.func.sum(llm_calls.c.shortfall), 0).label("shortfall"),
        )
        .where(llm_calls.c.status != CallStatus.PENDING.value)
        .group_by(group)
        .limit(limit)
    )
    if user_id is not None:
        query = query.where(llm_calls.c.user_id == user_id)
    if since is not None:
        query = query.where(llm_calls.c.created_at >= _utc(since))
    if until is not None and until < date.max:  # the last day there is bounds nothing
        query = query.where(llm_calls.c.created_at < _utc(until + timedelta(days=1)))
    query = query.order_by(charged.desc(), group) if group_by == "user" else query.order_by(group)
    return [
        UsageRow(
            group=str(row.group),
            calls=int(row.calls),
            ok=int(row.ok),
            refused=int(row.refused),
            failed=int(row.failed),
            aborted=int(row.aborted),
            input_tokens=int(row.input_tokens),
            output_tokens=int(row.output_tokens),
            charged=int(row.charged),
            shortfall=int(row.shortfall),
        )
        for row in conn.execute(query)
    ]


def _utc(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)
