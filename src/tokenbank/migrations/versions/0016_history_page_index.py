"""A wallet's history page from the index alone: ``ix_entries_account_page`` replaces
``ix_entries_account_history`` (the same keys, ``account_id, id``) and, on PostgreSQL,
carries the columns a history page shows of each entry. A deep page of a wallet with a
million entries then reads no entries row (docs/benchmarks.md, "A big ledger").

On a large ledger, build the index by hand first, without blocking writes, and this
migration then only drops the old one::

    CREATE INDEX CONCURRENTLY ix_entries_account_page ON entries (account_id, id)
        INCLUDE (transfer_id, kind, amount, balance_after);

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE INDEX IF NOT EXISTS ix_entries_account_page ON entries (account_id, id)"
            " INCLUDE (transfer_id, kind, amount, balance_after)"
        )
    else:
        op.create_index("ix_entries_account_page", "entries", ["account_id", "id"])
    op.drop_index("ix_entries_account_history", table_name="entries")


def downgrade() -> None:
    op.create_index("ix_entries_account_history", "entries", ["account_id", "id"])
    op.drop_index("ix_entries_account_page", table_name="entries")
