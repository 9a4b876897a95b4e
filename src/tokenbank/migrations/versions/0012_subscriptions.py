"""Subscriptions: a user's plan as Stripe has it, every grant of its tokens (once per paid
invoice, once per month of a subscription), and the refunds of its invoices.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-09
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from tokenbank.columns import Id, UtcDateTime

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


HOLD_KINDS = ("hold", "freeze", "covered")
HOLD_POSTING = (
    "(status = 'posted' AND posted_amount > 0 AND posted_amount <= amount"
    " AND (transfer_id IS NULL) = (kind = 'covered'))"
    " OR (status <> 'posted' AND transfer_id IS NULL AND posted_amount IS NULL)"
)
OLD_HOLD_POSTING = (
    "(status = 'posted' AND transfer_id IS NOT NULL AND posted_amount > 0"
    " AND posted_amount <= amount)"
    " OR (status <> 'posted' AND transfer_id IS NULL AND posted_amount IS NULL)"
)


def _hold_checks(kinds: tuple[str, ...], posting: str) -> None:
    """A covered hold (a plan's unlimited feature): a kind of its own, posted with no
    transfer."""
    with op.batch_alter_table("holds", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_holds_kind"), type_="check")
        batch_op.drop_constraint(batch_op.f("ck_holds_posting"), type_="check")
        batch_op.create_check_constraint(
            batch_op.f("ck_holds_kind"), f"kind IN ({', '.join(repr(k) for k in kinds)})"
        )
        batch_op.create_check_constraint(batch_op.f("ck_holds_posting"), posting)


def upgrade() -> None:
    _hold_checks(HOLD_KINDS, HOLD_POSTING)
    op.create_table(
        "subscriptions",
        sa.Column("id", Id, nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("plan_id", sa.String(length=64), nullable=False),
        sa.Column("interval", sa.String(length=8), nullable=False),
        sa.Column("tokens_per_month", sa.BigInteger(), nullable=False),
        sa.Column("unused", sa.String(length=16), nullable=False),
        sa.Column("rollover_cap", sa.BigInteger(), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("stripe_idempotency_key", sa.String(length=64), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("checkout_session_id", sa.String(length=255), nullable=True),
        sa.Column("stripe_subscription_id", sa.String(length=255), nullable=True),
        sa.Column("customer_id", sa.String(length=255), nullable=True),
        sa.Column("current_period_start", UtcDateTime(), nullable=True),
        sa.Column("current_period_end", UtcDateTime(), nullable=True),
        sa.Column("trial_end", UtcDateTime(), nullable=True),
        sa.Column("cancel_at", UtcDateTime(), nullable=True),
        sa.Column(
            "cancel_at_period_end", sa.Boolean(), server_default=sa.text("false"), nullable=False
        ),
        sa.Column("ended_at", UtcDateTime(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.CheckConstraint("interval IN ('month', 'year')", name=op.f("ck_subscriptions_interval")),
        sa.CheckConstraint(
            "status IN ('pending', 'expired') OR stripe_subscription_id IS NOT NULL",
            name=op.f("ck_subscriptions_started_at_stripe"),
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'expired', 'incomplete', 'incomplete_expired', 'trialing', 'active', 'past_due', 'unpaid', 'paused', 'canceled')",
            name=op.f("ck_subscriptions_status"),
        ),
        sa.CheckConstraint("unused IN ('reset', 'rollover')", name=op.f("ck_subscriptions_unused")),
        sa.CheckConstraint(
            "tokens_per_month >= 0 AND amount >= 0 AND (rollover_cap IS NULL OR rollover_cap > 0)",
            name=op.f("ck_subscriptions_amounts"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_subscriptions_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriptions")),
        sa.UniqueConstraint(
            "checkout_session_id", name=op.f("uq_subscriptions_checkout_session_id")
        ),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_subscriptions_idempotency_key")),
        sa.UniqueConstraint(
            "stripe_idempotency_key", name=op.f("uq_subscriptions_stripe_idempotency_key")
        ),
        sa.UniqueConstraint(
            "stripe_subscription_id", name=op.f("uq_subscriptions_stripe_subscription_id")
        ),
    )
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_subscriptions_one_current",
            ["user_id"],
            unique=True,
            postgresql_where=sa.text(
                "status IN ('pending', 'incomplete', 'trialing', 'active', 'past_due', 'unpaid', 'paused')"
            ),
            sqlite_where=sa.text(
                "status IN ('pending', 'incomplete', 'trialing', 'active', 'past_due', 'unpaid', 'paused')"
            ),
        )
        batch_op.create_index("ix_subscriptions_user", ["user_id", "id"], unique=False)

    op.create_table(
        "invoice_refunds",
        sa.Column("id", Id, nullable=False),
        sa.Column("refund_id", sa.String(length=255), nullable=False),
        sa.Column("subscription_id", Id, nullable=False),
        sa.Column("invoice_id", sa.String(length=255), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("taken", sa.BigInteger(), nullable=False),
        sa.Column("debt", sa.BigInteger(), nullable=False),
        sa.Column("transfer_id", Id, nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.CheckConstraint(
            "amount > 0 AND tokens >= 0 AND taken >= 0 AND debt >= 0 AND taken + debt = tokens",
            name=op.f("ck_invoice_refunds_amounts"),
        ),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["subscriptions.id"],
            name=op.f("fk_invoice_refunds_subscription_id_subscriptions"),
        ),
        sa.ForeignKeyConstraint(
            ["transfer_id"], ["transfers.id"], name=op.f("fk_invoice_refunds_transfer_id_transfers")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invoice_refunds")),
        sa.UniqueConstraint("refund_id", name=op.f("uq_invoice_refunds_refund_id")),
    )
    with op.batch_alter_table("invoice_refunds", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_invoice_refunds_invoice_id"), ["invoice_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_invoice_refunds_subscription_id"), ["subscription_id"], unique=False
        )

    op.create_table(
        "subscription_grants",
        sa.Column("id", Id, nullable=False),
        sa.Column("subscription_id", Id, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("invoice_id", sa.String(length=255), nullable=False),
        sa.Column("plan_id", sa.String(length=64), nullable=False),
        sa.Column("period_start", UtcDateTime(), nullable=False),
        sa.Column("period_end", UtcDateTime(), nullable=False),
        sa.Column("month_start", UtcDateTime(), nullable=False),
        sa.Column("month_end", UtcDateTime(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("monthly", sa.BigInteger(), nullable=False),
        sa.Column("amount_paid", sa.BigInteger(), nullable=False),
        sa.Column("carried", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("expired", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("transfer_id", Id, nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.CheckConstraint(
            "kind IN ('invoice', 'month', 'upgrade')", name=op.f("ck_subscription_grants_kind")
        ),
        sa.CheckConstraint(
            "tokens >= 0 AND monthly >= 0 AND amount_paid >= 0 AND carried >= 0 AND expired >= 0 AND month_start < month_end AND period_start <= month_start AND month_end <= period_end",
            name=op.f("ck_subscription_grants_amounts"),
        ),
        sa.CheckConstraint(
            "transfer_id IS NOT NULL OR tokens = 0", name=op.f("ck_subscription_grants_granted")
        ),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["subscriptions.id"],
            name=op.f("fk_subscription_grants_subscription_id_subscriptions"),
        ),
        sa.ForeignKeyConstraint(
            ["transfer_id"],
            ["transfers.id"],
            name=op.f("fk_subscription_grants_transfer_id_transfers"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscription_grants")),
        sa.UniqueConstraint("transfer_id", name=op.f("uq_subscription_grants_transfer_id")),
    )
    with op.batch_alter_table("subscription_grants", schema=None) as batch_op:
        batch_op.create_index(
            "ix_subscription_grants_invoice",
            ["invoice_id"],
            unique=True,
            postgresql_where=sa.text("kind <> 'month'"),
            sqlite_where=sa.text("kind <> 'month'"),
        )
        batch_op.create_index(
            batch_op.f("ix_subscription_grants_invoice_id"), ["invoice_id"], unique=False
        )
        batch_op.create_index(
            "ix_subscription_grants_month",
            ["subscription_id", "month_start"],
            unique=True,
            postgresql_where=sa.text("kind <> 'upgrade'"),
            sqlite_where=sa.text("kind <> 'upgrade'"),
        )
        batch_op.create_index(
            batch_op.f("ix_subscription_grants_subscription_id"), ["subscription_id"], unique=False
        )


def downgrade() -> None:
    op.execute("DELETE FROM holds WHERE kind = 'covered'")
    _hold_checks(HOLD_KINDS[:2], OLD_HOLD_POSTING)
    with op.batch_alter_table("subscription_grants", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_subscription_grants_subscription_id"))
        batch_op.drop_index(
            "ix_subscription_grants_month",
            postgresql_where=sa.text("kind <> 'upgrade'"),
            sqlite_where=sa.text("kind <> 'upgrade'"),
        )
        batch_op.drop_index(batch_op.f("ix_subscription_grants_invoice_id"))
        batch_op.drop_index(
            "ix_subscription_grants_invoice",
            postgresql_where=sa.text("kind <> 'month'"),
            sqlite_where=sa.text("kind <> 'month'"),
        )

    op.drop_table("subscription_grants")
    with op.batch_alter_table("invoice_refunds", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_invoice_refunds_subscription_id"))
        batch_op.drop_index(batch_op.f("ix_invoice_refunds_invoice_id"))

    op.drop_table("invoice_refunds")
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.drop_index("ix_subscriptions_user")
        batch_op.drop_index(
            "ix_subscriptions_one_current",
            postgresql_where=sa.text(
                "status IN ('pending', 'incomplete', 'trialing', 'active', 'past_due', 'unpaid', 'paused')"
            ),
            sqlite_where=sa.text(
                "status IN ('pending', 'incomplete', 'trialing', 'active', 'past_due', 'unpaid', 'paused')"
            ),
        )

    op.drop_table("subscriptions")
