"""Purchases an admin must review, purchase idempotency keys, refunds that failed after
succeeding (the ``restore`` transfer kind), and the audit log.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime(timezone=True)
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")

KINDS = ("purchase", "bonus", "grant", "spend", "refund", "clawback", "expiry")
STATUSES = ("pending", "paid", "failed", "expired", "canceled")
DECISIONS = ("credit", "refuse", "reverse", "dismiss")


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def _immutable(table: str) -> None:
    """As migration 0001 does for transfers and entries: no UPDATE, no DELETE."""
    if not _sqlite():
        op.execute(
            f"CREATE TRIGGER {table}_immutable BEFORE UPDATE OR DELETE ON {table}"
            " FOR EACH ROW EXECUTE FUNCTION tokenbank_reject_change()"
        )
        return
    for action in ("UPDATE", "DELETE"):
        op.execute(
            f"CREATE TRIGGER {table}_immutable_{action.lower()} BEFORE {action} ON {table}"
            f" BEGIN SELECT RAISE(ABORT, '{table} rows are immutable'); END"
        )


def _set_kinds(kinds: Sequence[str]) -> None:
    # SQLite rebuilds the table, which drops its triggers: they are made again.
    with op.batch_alter_table("transfers", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_transfers_kind"), type_="check")
        batch_op.create_check_constraint(batch_op.f("ck_transfers_kind"), _in("kind", kinds))
    if _sqlite():
        _immutable("transfers")


def upgrade() -> None:
    _set_kinds((*KINDS, "restore"))

    with op.batch_alter_table("purchases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("review", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("review_decision", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("reviewed_by", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("reviewed_at", Timestamp, nullable=True))
        batch_op.create_unique_constraint(
            batch_op.f("uq_purchases_idempotency_key"), ["idempotency_key"]
        )
        batch_op.drop_constraint(batch_op.f("ck_purchases_status"), type_="check")
        batch_op.create_check_constraint(
            batch_op.f("ck_purchases_status"), _in("status", (*STATUSES, "needs_review"))
        )
        batch_op.create_check_constraint(
            batch_op.f("ck_purchases_review_decision"),
            f"review_decision IS NULL OR ({_in('review_decision', DECISIONS)})",
        )
        batch_op.create_check_constraint(
            batch_op.f("ck_purchases_review_reason"),
            "status <> 'needs_review' OR review IS NOT NULL",
        )
        batch_op.create_check_constraint(
            batch_op.f("ck_purchases_reviewed"),
            "(review_decision IS NULL AND reviewed_at IS NULL AND reviewed_by IS NULL)"
            " OR (review IS NOT NULL AND review_decision IS NOT NULL AND reviewed_at IS NOT NULL"
            " AND reviewed_by IS NOT NULL)",
        )

    with op.batch_alter_table("payment_refunds", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reversed_at", Timestamp, nullable=True))
        batch_op.add_column(sa.Column("reversal_transfer_id", Id, nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_payment_refunds_reversal_transfer_id_transfers"),
            "transfers",
            ["reversal_transfer_id"],
            ["id"],
        )
        batch_op.create_check_constraint(
            batch_op.f("ck_payment_refunds_reversal"),
            "reversal_transfer_id IS NULL OR reversed_at IS NOT NULL",
        )

    op.create_table(
        "admin_actions",
        sa.Column("id", Id, nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("details", Json, nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.CheckConstraint("length(reason) > 0", name=op.f("ck_admin_actions_reason_given")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_actions")),
    )
    with op.batch_alter_table("admin_actions", schema=None) as batch_op:
        batch_op.create_index("ix_admin_actions_subject", ["subject", "id"], unique=False)
    _immutable("admin_actions")


def downgrade() -> None:
    op.drop_table("admin_actions")  # its triggers go with it
    with op.batch_alter_table("payment_refunds", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_payment_refunds_reversal"), type_="check")
        batch_op.drop_constraint(
            batch_op.f("fk_payment_refunds_reversal_transfer_id_transfers"), type_="foreignkey"
        )
        batch_op.drop_column("reversal_transfer_id")
        batch_op.drop_column("reversed_at")
    with op.batch_alter_table("purchases", schema=None) as batch_op:
        for name in ("reviewed", "review_reason", "review_decision", "status"):
            batch_op.drop_constraint(batch_op.f(f"ck_purchases_{name}"), type_="check")
        batch_op.create_check_constraint(batch_op.f("ck_purchases_status"), _in("status", STATUSES))
        batch_op.drop_constraint(batch_op.f("uq_purchases_idempotency_key"), type_="unique")
        for column in (
            "reviewed_at",
            "reviewed_by",
            "review_decision",
            "review",
            "idempotency_key",
        ):
            batch_op.drop_column(column)
    _set_kinds(KINDS)
