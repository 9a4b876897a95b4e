"""Ledger (accounts, transfers, entries, holds) and users.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)

# Fixed ids, mirrored by tokenbank.ledger.models.SystemAccount.
SYSTEM_ACCOUNTS = {
    1: "system:purchases",
    2: "system:grants",
    3: "system:bonuses",
    4: "system:consumption",
    5: "system:refunds",
    6: "system:expiry",
}

IMMUTABLE = ("transfers", "entries")


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", Id, sa.Identity(always=False, start=1000), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=True),
        sa.Column("user_id", sa.String(length=255), nullable=True),
        sa.Column("balance", sa.BigInteger(), nullable=True),
        sa.Column("held", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("total_purchased", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("total_granted", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("total_spent", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.CheckConstraint(
            "(kind = 'wallet' AND user_id IS NOT NULL AND code IS NULL AND balance IS NOT NULL) OR (kind = 'system' AND user_id IS NULL AND code IS NOT NULL AND balance IS NULL)",
            name=op.f("ck_accounts_shape"),
        ),
        sa.CheckConstraint("kind IN ('wallet', 'system')", name=op.f("ck_accounts_kind")),
        sa.CheckConstraint(
            "held >= 0 AND (balance IS NULL OR balance >= held)",
            name=op.f("ck_accounts_not_negative"),
        ),
        sa.CheckConstraint(
            "total_purchased >= 0 AND total_granted >= 0 AND total_spent >= 0",
            name=op.f("ck_accounts_totals"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
        sa.UniqueConstraint("code", name=op.f("uq_accounts_code")),
        sa.UniqueConstraint("user_id", name=op.f("uq_accounts_user_id")),
    )
    op.create_table(
        "transfers",
        sa.Column("id", Id, nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("debit_account_id", Id, nullable=False),
        sa.Column("credit_account_id", Id, nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("metadata", Json, nullable=True),
        sa.Column("refund_of_id", Id, nullable=True),
        sa.Column("event_at", Timestamp, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.CheckConstraint(
            "(kind = 'refund' AND refund_of_id IS NOT NULL) OR (kind <> 'refund' AND refund_of_id IS NULL)",
            name=op.f("ck_transfers_refund_link"),
        ),
        sa.CheckConstraint(
            "kind IN ('purchase', 'bonus', 'grant', 'spend', 'refund', 'clawback', 'expiry')",
            name=op.f("ck_transfers_kind"),
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_transfers_amount_positive")),
        sa.CheckConstraint(
            "debit_account_id <> credit_account_id", name=op.f("ck_transfers_two_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["credit_account_id"],
            ["accounts.id"],
            name=op.f("fk_transfers_credit_account_id_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["debit_account_id"],
            ["accounts.id"],
            name=op.f("fk_transfers_debit_account_id_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["refund_of_id"], ["transfers.id"], name=op.f("fk_transfers_refund_of_id_transfers")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transfers")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_transfers_idempotency_key")),
    )
    with op.batch_alter_table("transfers", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_transfers_refund_of_id"), ["refund_of_id"], unique=False
        )

    op.create_table(
        "users",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.ForeignKeyConstraint(["id"], ["accounts.user_id"], name=op.f("fk_users_id_accounts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
    )
    op.create_table(
        "entries",
        sa.Column("id", Id, nullable=False),
        sa.Column("transfer_id", Id, nullable=False),
        sa.Column("account_id", Id, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.CheckConstraint("amount <> 0", name=op.f("ck_entries_amount_nonzero")),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_entries_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["transfer_id"], ["transfers.id"], name=op.f("fk_entries_transfer_id_transfers")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_entries")),
    )
    with op.batch_alter_table("entries", schema=None) as batch_op:
        batch_op.create_index("ix_entries_account_history", ["account_id", "id"], unique=False)
        batch_op.create_index(
            "ix_entries_account_kind_history", ["account_id", "kind", "id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_entries_transfer_id"), ["transfer_id"], unique=False)

    op.create_table(
        "holds",
        sa.Column("id", Id, nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("account_id", Id, nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("metadata", Json, nullable=True),
        sa.Column("expires_at", Timestamp, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("resolved_at", Timestamp, nullable=True),
        sa.Column("posted_amount", sa.BigInteger(), nullable=True),
        sa.Column("transfer_id", Id, nullable=True),
        sa.CheckConstraint(
            "(status = 'pending' AND resolved_at IS NULL) OR (status <> 'pending' AND resolved_at IS NOT NULL)",
            name=op.f("ck_holds_resolved"),
        ),
        sa.CheckConstraint(
            "(status = 'posted' AND transfer_id IS NOT NULL AND posted_amount > 0 AND posted_amount <= amount) OR (status <> 'posted' AND transfer_id IS NULL AND posted_amount IS NULL)",
            name=op.f("ck_holds_posting"),
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'posted', 'voided', 'expired')", name=op.f("ck_holds_status")
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_holds_amount_positive")),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_holds_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["transfer_id"], ["transfers.id"], name=op.f("fk_holds_transfer_id_transfers")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_holds")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_holds_idempotency_key")),
        sa.UniqueConstraint("transfer_id", name=op.f("uq_holds_transfer_id")),
    )
    with op.batch_alter_table("holds", schema=None) as batch_op:
        batch_op.create_index(
            "ix_holds_pending_account",
            ["account_id"],
            unique=False,
            postgresql_where=sa.text("status = 'pending'"),
            sqlite_where=sa.text("status = 'pending'"),
        )
        batch_op.create_index(
            "ix_holds_pending_expiry",
            ["expires_at"],
            unique=False,
            postgresql_where=sa.text("status = 'pending'"),
            sqlite_where=sa.text("status = 'pending'"),
        )

    created = datetime(2026, 11, 21, tzinfo=UTC)
    if op.get_bind().dialect.name == "sqlite":
        created = created.replace(tzinfo=None)
    op.bulk_insert(
        sa.table(
            "accounts",
            sa.column("id", Id),
            sa.column("kind", sa.String),
            sa.column("code", sa.String),
            sa.column("created_at", Timestamp),
        ),
        [
            {"id": id_, "kind": "system", "code": code, "created_at": created}
            for id_, code in SYSTEM_ACCOUNTS.items()
        ],
    )
    _make_immutable()


def _make_immutable() -> None:
    """Transfers and entries are append-only: a correction is a new transfer."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION tokenbank_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION '% rows are immutable', TG_TABLE_NAME
                    USING ERRCODE = 'restrict_violation';
            END $$
            """
        )
        for table in IMMUTABLE:
            op.execute(
                f"CREATE TRIGGER {table}_immutable BEFORE UPDATE OR DELETE ON {table}"
                " FOR EACH ROW EXECUTE FUNCTION tokenbank_reject_change()"
            )
        return
    for table in IMMUTABLE:
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_immutable_{action.lower()} BEFORE {action} ON {table}"
                f" BEGIN SELECT RAISE(ABORT, '{table} rows are immutable'); END"
            )


def _drop_immutable() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in IMMUTABLE:
            op.execute(f"DROP TRIGGER {table}_immutable ON {table}")
        op.execute("DROP FUNCTION tokenbank_reject_change()")
        return
    for table in IMMUTABLE:
        for action in ("update", "delete"):
            op.execute(f"DROP TRIGGER {table}_immutable_{action}")


def downgrade() -> None:
    _drop_immutable()
    with op.batch_alter_table("holds", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_holds_pending_expiry",
            postgresql_where=sa.text("status = 'pending'"),
            sqlite_where=sa.text("status = 'pending'"),
        )
        batch_op.drop_index(
            "ix_holds_pending_account",
            postgresql_where=sa.text("status = 'pending'"),
            sqlite_where=sa.text("status = 'pending'"),
        )

    op.drop_table("holds")
    with op.batch_alter_table("entries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_entries_transfer_id"))
        batch_op.drop_index("ix_entries_account_kind_history")
        batch_op.drop_index("ix_entries_account_history")

    op.drop_table("entries")
    op.drop_table("users")
    with op.batch_alter_table("transfers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_transfers_refund_of_id"))

    op.drop_table("transfers")
    op.drop_table("accounts")
