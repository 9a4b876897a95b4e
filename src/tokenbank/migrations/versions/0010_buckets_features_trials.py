"""Buckets (what is left of each credit, and when it expires), the buckets each transfer
and hold drew on, a feature and quantity on transfers and holds, the trials given, and a
purchase's terms: how long its tokens stay usable.

Each wallet's balance before this revision is carried over as one bucket that never
expires (source ``purchase``, no credit transfer: tokens credited before buckets existed
are not told apart; empty when the balance was), holding what the wallet's pending holds
reserve; each pending hold draws on that bucket. Its time is the upgrade's, which tells
``ledger verify`` which of the wallet's transfers came before buckets. ``ledger verify`` then holds at once: every wallet's balance and held
amount equal the sums of its buckets'.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from tokenbank.columns import Id, UtcDateTime

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SOURCES = ("purchase", "subscription", "trial", "promo", "admin")
FEATURE_QUANTITY = (
    "(feature IS NULL AND quantity IS NULL) OR (feature IS NOT NULL AND quantity > 0)"
)


def _sqlite_immutable(table: str) -> None:
    """SQLite's append-only triggers (as 0001 made them for transfers): a batch operation
    rebuilds the table without them."""
    for action in ("UPDATE", "DELETE"):
        op.execute(
            f"CREATE TRIGGER {table}_immutable_{action.lower()} BEFORE {action} ON {table}"
            f" BEGIN SELECT RAISE(ABORT, '{table} rows are immutable'); END"
        )


def _feature_columns(table: str) -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    with op.batch_alter_table(table, schema=None) as batch_op:
        batch_op.add_column(sa.Column("feature", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("quantity", sa.BigInteger(), nullable=True))
        batch_op.create_check_constraint(
            batch_op.f(f"ck_{table}_feature_quantity"), FEATURE_QUANTITY
        )
    if sqlite and table == "transfers":
        _sqlite_immutable(table)


def upgrade() -> None:
    for table in ("transfers", "holds"):
        _feature_columns(table)
    with op.batch_alter_table("purchases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tokens_expire_days", sa.Integer(), nullable=True))

    op.create_table(
        "buckets",
        sa.Column("id", Id, nullable=False),
        sa.Column("account_id", Id, nullable=False),
        sa.Column("transfer_id", Id, nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("paid", sa.Boolean(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("remaining", sa.BigInteger(), nullable=False),
        sa.Column("held", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=True),
        sa.Column("expired_at", UtcDateTime(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.CheckConstraint(
            "amount > 0 OR transfer_id IS NULL", name=op.f("ck_buckets_amount_positive")
        ),
        sa.CheckConstraint(
            "expired_at IS NULL OR expires_at IS NOT NULL", name=op.f("ck_buckets_expiry")
        ),
        sa.CheckConstraint(
            f"source IN ({', '.join(repr(s) for s in SOURCES)})", name=op.f("ck_buckets_source")
        ),
        sa.CheckConstraint(
            "held >= 0 AND held <= remaining AND remaining <= amount",
            name=op.f("ck_buckets_within"),
        ),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_buckets_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["transfer_id"], ["transfers.id"], name=op.f("fk_buckets_transfer_id_transfers")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_buckets")),
        sa.UniqueConstraint("transfer_id", name=op.f("uq_buckets_transfer_id")),
    )
    op.create_index(
        "ix_buckets_live",
        "buckets",
        ["account_id"],
        unique=False,
        postgresql_where=sa.text("remaining > 0"),
        sqlite_where=sa.text("remaining > 0"),
    )
    op.create_index(
        "ix_buckets_due",
        "buckets",
        ["expires_at"],
        unique=False,
        postgresql_where=sa.text("expires_at IS NOT NULL AND remaining > held"),
        sqlite_where=sa.text("expires_at IS NOT NULL AND remaining > held"),
    )

    op.create_table(
        "draws",
        sa.Column("id", Id, nullable=False),
        sa.Column("bucket_id", Id, nullable=False),
        sa.Column("transfer_id", Id, nullable=True),
        sa.Column("hold_id", Id, nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("amount <> 0", name=op.f("ck_draws_amount_nonzero")),
        sa.CheckConstraint(
            "(transfer_id IS NULL AND hold_id IS NOT NULL AND amount > 0)"
            " OR (transfer_id IS NOT NULL AND hold_id IS NULL)",
            name=op.f("ck_draws_one_cause"),
        ),
        sa.ForeignKeyConstraint(
            ["bucket_id"], ["buckets.id"], name=op.f("fk_draws_bucket_id_buckets")
        ),
        sa.ForeignKeyConstraint(["hold_id"], ["holds.id"], name=op.f("fk_draws_hold_id_holds")),
        sa.ForeignKeyConstraint(
            ["transfer_id"], ["transfers.id"], name=op.f("fk_draws_transfer_id_transfers")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_draws")),
    )
    op.create_index(op.f("ix_draws_bucket_id"), "draws", ["bucket_id"], unique=False)
    op.create_index(op.f("ix_draws_hold_id"), "draws", ["hold_id"], unique=False)
    op.create_index(op.f("ix_draws_transfer_id"), "draws", ["transfer_id"], unique=False)
    # Draws are history, as transfers and entries are: never changed, never removed.
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE TRIGGER draws_immutable BEFORE UPDATE OR DELETE ON draws"
            " FOR EACH ROW EXECUTE FUNCTION tokenbank_reject_change()"
        )
    else:
        _sqlite_immutable("draws")

    op.create_table(
        "trials",
        sa.Column("person", sa.String(length=320), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("transfer_id", Id, nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["transfer_id"], ["transfers.id"], name=op.f("fk_trials_transfer_id_transfers")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_trials_user_id_users")),
        sa.PrimaryKeyConstraint("person", name=op.f("pk_trials")),
        sa.UniqueConstraint("transfer_id", name=op.f("uq_trials_transfer_id")),
        sa.UniqueConstraint("user_id", name=op.f("uq_trials_user_id")),
    )

    # Each wallet's balance so far, as one bucket; its pending holds draw on it. The
    # bucket's time is the upgrade's: ``ledger verify`` checks the buckets of transfers
    # made after it.
    op.execute(
        sa.text(
            "INSERT INTO buckets (account_id, source, paid, amount, remaining, held, created_at)"
            " SELECT id, 'purchase', :paid, balance, balance, held, :now FROM accounts"
            " WHERE kind = 'wallet'"
        ).bindparams(
            sa.bindparam("paid", True),
            sa.bindparam("now", datetime.now(UTC), type_=UtcDateTime()),
        )
    )
    op.execute(
        sa.text(
            "INSERT INTO draws (bucket_id, hold_id, amount)"
            " SELECT b.id, h.id, h.amount FROM holds h JOIN buckets b ON b.account_id = h.account_id"
            " WHERE h.status = 'pending'"
        )
    )


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    with op.batch_alter_table("purchases", schema=None) as batch_op:
        batch_op.drop_column("tokens_expire_days")
    op.drop_table("trials")
    op.drop_index(op.f("ix_draws_transfer_id"), table_name="draws")
    op.drop_index(op.f("ix_draws_hold_id"), table_name="draws")
    op.drop_index(op.f("ix_draws_bucket_id"), table_name="draws")
    op.drop_table("draws")
    op.drop_index("ix_buckets_due", table_name="buckets")
    op.drop_index("ix_buckets_live", table_name="buckets")
    op.drop_table("buckets")
    for table in ("holds", "transfers"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_constraint(batch_op.f(f"ck_{table}_feature_quantity"), type_="check")
            batch_op.drop_column("quantity")
            batch_op.drop_column("feature")
        if sqlite and table == "transfers":
            _sqlite_immutable(table)
