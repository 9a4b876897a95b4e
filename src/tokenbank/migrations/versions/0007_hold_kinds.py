"""A hold's kind: ``hold`` or ``freeze``, in a column rather than in its key's prefix.

Before this revision a freeze was a hold whose idempotency key started with ``@freeze:``;
the kind is backfilled from that prefix. No key changes: a freeze's key keeps its
``@freeze:{reference}`` spelling (the one format of reserved keys), so a freeze repeated
after the upgrade finds the hold made before it. Transfers and entries are not touched.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-09
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KINDS = ("hold", "freeze")
#: How migrations up to 0006 marked a freeze: by its key.
FREEZE_KEY_PREFIX = "@freeze:"


def upgrade() -> None:
    with op.batch_alter_table("holds", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sa.String(length=16), server_default="hold", nullable=False)
        )
    # substr rather than LIKE: exact on both databases, whatever the key holds.
    op.execute(
        sa.text(
            "UPDATE holds SET kind = 'freeze' WHERE substr(idempotency_key, 1, :length) = :prefix"
        ).bindparams(length=len(FREEZE_KEY_PREFIX), prefix=FREEZE_KEY_PREFIX)
    )
    with op.batch_alter_table("holds", schema=None) as batch_op:
        batch_op.create_check_constraint(
            batch_op.f("ck_holds_kind"), f"kind IN ({', '.join(repr(k) for k in KINDS)})"
        )


def downgrade() -> None:
    # A freeze's key still starts with the prefix, which is all 0006 knew of freezes.
    with op.batch_alter_table("holds", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_holds_kind"), type_="check")
        batch_op.drop_column("kind")
