"""The audit log: what an admin or an operator decided, by whom, about what, and why."""

from __future__ import annotations

import sqlalchemy as sa

from tokenbank.columns import Id, Json, UtcDateTime
from tokenbank.db import metadata
from tokenbank.ledger.models import MAX_KEY_LENGTH

#: Append-only (the migration forbids UPDATE and DELETE, as for transfers).
admin_actions = sa.Table(
    "admin_actions",
    metadata,
    sa.Column("id", Id, primary_key=True),
    # "user:<id>" for an admin on the pages, "cli:<login>" for the operator's command line.
    sa.Column("actor", sa.String(MAX_KEY_LENGTH), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("subject", sa.String(MAX_KEY_LENGTH), nullable=False),  # "purchase:12"
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("details", Json, nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.CheckConstraint("length(reason) > 0", name="reason_given"),
    sa.Index("ix_admin_actions_subject", "subject", "id"),
)
