"""The webhook inbox as a queue: when ``tokenbank worker`` may next try to settle an event
that is not processed yet (a delivery answered before it was settled, or one that failed),
and an index over the unprocessed ones only, so the worker's look stays small however long
the inbox grows.

``settle_after`` is never NULL, which would never be due, and defaults to the database's
clock: a row stored by a process of the previous version, still running beside the new
ones during a rolling deploy, names no due time, and is then due at once. (Were it NULL,
a redelivery that found it stored would be answered as queued, Stripe would stop sending
it, and no worker would ever settle it.) Rows already stored are due from when they
arrived. The index carries the id too, the second half of the order the worker reads in,
so its look needs no sort however many events are due.

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
    op.execute("UPDATE webhook_events SET settle_after = COALESCE(processed_at, received_at)")
    with op.batch_alter_table("webhook_events") as batch:
        batch.alter_column(
            "settle_after",
            existing_type=UtcDateTime(),
            nullable=False,
            server_default=sa.text("CURRENT_TIMESTAMP"),
        )
    op.create_index(
        "ix_webhook_events_pending",
        "webhook_events",
        ["settle_after", "id"],
        postgresql_where=PENDING,
        sqlite_where=PENDING,
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_events_pending", table_name="webhook_events")
    with op.batch_alter_table("webhook_events") as batch:
        batch.drop_column("settle_after")
