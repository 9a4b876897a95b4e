"""The model gateway: end users' model keys, and every model call with what it used and
cost.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from tokenbank.columns import Id, UtcDateTime

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "llm_keys",
        sa.Column("id", Id, nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("daily_cap", sa.BigInteger(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("revoked_at", UtcDateTime(), nullable=True),
        sa.CheckConstraint(
            "daily_cap IS NULL OR daily_cap > 0", name=op.f("ck_llm_keys_daily_cap")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["accounts.user_id"], name=op.f("fk_llm_keys_user_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_llm_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_llm_keys_key_hash")),
    )
    with op.batch_alter_table("llm_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_llm_keys_user_id"), ["user_id"], unique=False)

    op.create_table(
        "llm_calls",
        sa.Column("id", Id, nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("key_id", Id, nullable=True),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("attempt", sa.Integer(), server_default="1", nullable=False),
        sa.Column("hold_id", Id, nullable=True),
        sa.Column("held", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("input_estimate", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("output_cap", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=True),
        sa.Column("output_tokens", sa.BigInteger(), nullable=True),
        sa.Column("usage_source", sa.String(length=16), nullable=True),
        sa.Column("charged", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("shortfall", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("first_token_ms", sa.Integer(), nullable=True),
        sa.Column("error", sa.String(length=200), nullable=True),
        sa.Column("reply", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("finished_at", UtcDateTime(), nullable=True),
        sa.CheckConstraint(
            "(status = 'pending') = (finished_at IS NULL)", name=op.f("ck_llm_calls_finished")
        ),
        sa.CheckConstraint(
            "status <> 'refused' OR charged = 0", name=op.f("ck_llm_calls_refused_free")
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'ok', 'aborted', 'failed', 'refused')",
            name=op.f("ck_llm_calls_status"),
        ),
        sa.CheckConstraint(
            "usage_source IS NULL OR usage_source IN ('upstream', 'counted')",
            name=op.f("ck_llm_calls_usage_source"),
        ),
        sa.CheckConstraint(
            "held >= 0 AND charged >= 0 AND shortfall >= 0 AND input_estimate >= 0 AND output_cap >= 0 AND attempt >= 1 AND (input_tokens IS NULL OR input_tokens >= 0) AND (output_tokens IS NULL OR output_tokens >= 0)",
            name=op.f("ck_llm_calls_amounts"),
        ),
        sa.ForeignKeyConstraint(["hold_id"], ["holds.id"], name=op.f("fk_llm_calls_hold_id_holds")),
        sa.ForeignKeyConstraint(
            ["key_id"], ["llm_keys.id"], name=op.f("fk_llm_calls_key_id_llm_keys")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["accounts.user_id"], name=op.f("fk_llm_calls_user_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_llm_calls")),
    )
    with op.batch_alter_table("llm_calls", schema=None) as batch_op:
        batch_op.create_index("ix_llm_calls_created", ["created_at"], unique=False)
        batch_op.create_index(
            "ix_llm_calls_idempotency",
            ["user_id", "idempotency_key"],
            unique=True,
            postgresql_where=sa.text("idempotency_key IS NOT NULL"),
            sqlite_where=sa.text("idempotency_key IS NOT NULL"),
        )
        batch_op.create_index("ix_llm_calls_key_created", ["key_id", "created_at"], unique=False)
        batch_op.create_index("ix_llm_calls_user_created", ["user_id", "created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("llm_calls", schema=None) as batch_op:
        batch_op.drop_index("ix_llm_calls_user_created")
        batch_op.drop_index("ix_llm_calls_key_created")
        batch_op.drop_index(
            "ix_llm_calls_idempotency",
            postgresql_where=sa.text("idempotency_key IS NOT NULL"),
            sqlite_where=sa.text("idempotency_key IS NOT NULL"),
        )
        batch_op.drop_index("ix_llm_calls_created")

    op.drop_table("llm_calls")
    with op.batch_alter_table("llm_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_llm_keys_user_id"))

    op.drop_table("llm_keys")
