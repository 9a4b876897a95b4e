"""Every stored webhook event says when it is due: ``webhook_events.settle_after`` becomes
NOT NULL, with the database's clock as its default.

The worker settles events whose ``settle_after`` has passed, and a NULL never has. A row
could get one from a process of the previous version still running beside the new ones
(a rolling deploy): the event was stored, and a redelivery that found it stored was
answered as queued, so Stripe stopped sending it, while no worker would ever settle it. With
the default, such a row is due at once. Rows already NULL are due from when they arrived.

The pending index also carries the id, the second half of the order the worker reads in,
so its look needs no sort however many events are due.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from tokenbank.columns import UtcDateTime

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = sa.text("processed_at IS NULL")


def upgrade() -> None:
    op.execute(
        "UPDATE webhook_events SET settle_after = COALESCE(processed_at, received_at)"
        " WHERE settle_after IS NULL"
    )
    op.drop_index("ix_webhook_events_pending", table_name="webhook_events")
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
        batch.alter_column(
            "settle_after", existing_type=UtcDateTime(), nullable=True, server_default=None
        )
    op.create_index(
        "ix_webhook_events_pending",
        "webhook_events",
        ["settle_after"],
        postgresql_where=PENDING,
        sqlite_where=PENDING,
    )
