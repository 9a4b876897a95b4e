"""The webhook inbox as a queue: when ``tokenbank worker`` may next try to settle an event
that is not processed yet (a delivery answered before it was settled, or one that failed),
and an index over the unprocessed ones only, so the worker's look stays small however long
the inbox grows.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from tokenbank.columns import UtcDateTime

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = sa.text("processed_at IS NULL")


def upgrade() -> None:
    op.add_column("webhook_events", sa.Column("settle_after", UtcDateTime(), nullable=True))
    # Events that failed before this version: the worker now retries them.
    op.execute("UPDATE webhook_events SET settle_after = received_at WHERE processed_at IS NULL")
    op.create_index(
        "ix_webhook_events_pending",
        "webhook_events",
        ["settle_after"],
        postgresql_where=PENDING,
        sqlite_where=PENDING,
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_events_pending", table_name="webhook_events")
    with op.batch_alter_table("webhook_events") as batch:
        batch.drop_column("settle_after")
