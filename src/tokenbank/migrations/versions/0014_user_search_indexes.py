"""Prefix indexes for the admin's user search: ids, and addresses in lower case, that start
with what was typed (``users.find_users``), so that it no longer reads the whole table.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite's LIKE ignores case and uses no index for it
    op.create_index(
        "ix_users_id_prefix", "users", ["id"], postgresql_ops={"id": "text_pattern_ops"}
    )
    op.create_index("ix_users_email_prefix", "users", [sa.text("lower(email) text_pattern_ops")])


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_users_email_prefix", table_name="users")
    op.drop_index("ix_users_id_prefix", table_name="users")
