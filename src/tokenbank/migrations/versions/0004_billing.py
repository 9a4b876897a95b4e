"""Purchases, Stripe refunds and disputes, the webhook inbox, Stripe customers; wallet debt.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime(timezone=True)
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "webhook_events",
        sa.Column("id", Id, nullable=False),
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=100), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("api_version", sa.String(length=64), nullable=True),
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("received_at", Timestamp, nullable=False),
        sa.Column("processed_at", Timestamp, nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_webhook_events_attempts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_events")),
        sa.UniqueConstraint("event_id", name=op.f("uq_webhook_events_event_id")),
    )
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.create_index("ix_webhook_events_received", ["received_at"], unique=False)

    op.create_table(
        "purchases",
        sa.Column("id", Id, nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("package_id", sa.String(length=64), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("bonus_tokens", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("flow", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("stripe_idempotency_key", sa.String(length=64), nullable=False),
        sa.Column("checkout_session_id", sa.String(length=255), nullable=True),
        sa.Column("payment_intent_id", sa.String(length=255), nullable=True),
        sa.Column("failure_code", sa.String(length=64), nullable=True),
        sa.Column("failure_message", sa.Text(), nullable=True),
        sa.Column("credit_transfer_id", Id, nullable=True),
        sa.Column("refunded_amount", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("clawed_back_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.Column("paid_at", Timestamp, nullable=True),
        sa.CheckConstraint(
            "(status = 'paid' AND credit_transfer_id IS NOT NULL AND paid_at IS NOT NULL) OR (status <> 'paid' AND credit_transfer_id IS NULL)",
            name=op.f("ck_purchases_credited_when_paid"),
        ),
        sa.CheckConstraint(
            "flow IN ('checkout', 'payment_intent')", name=op.f("ck_purchases_flow")
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'paid', 'failed', 'expired', 'canceled')",
            name=op.f("ck_purchases_status"),
        ),
        sa.CheckConstraint(
            "refunded_amount >= 0 AND refunded_amount <= amount AND clawed_back_tokens >= 0 AND clawed_back_tokens <= tokens + bonus_tokens",
            name=op.f("ck_purchases_refunds_bounded"),
        ),
        sa.CheckConstraint(
            "tokens > 0 AND bonus_tokens >= 0 AND amount > 0", name=op.f("ck_purchases_amounts")
        ),
        sa.ForeignKeyConstraint(
            ["credit_transfer_id"],
            ["transfers.id"],
            name=op.f("fk_purchases_credit_transfer_id_transfers"),
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_purchases_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_purchases")),
        sa.UniqueConstraint("checkout_session_id", name=op.f("uq_purchases_checkout_session_id")),
        sa.UniqueConstraint("credit_transfer_id", name=op.f("uq_purchases_credit_transfer_id")),
        sa.UniqueConstraint("payment_intent_id", name=op.f("uq_purchases_payment_intent_id")),
        sa.UniqueConstraint(
            "stripe_idempotency_key", name=op.f("uq_purchases_stripe_idempotency_key")
        ),
    )
    with op.batch_alter_table("purchases", schema=None) as batch_op:
        batch_op.create_index("ix_purchases_user", ["user_id", "id"], unique=False)

    op.create_table(
        "stripe_customers",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("customer_id", sa.String(length=255), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_stripe_customers_user_id_users")
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_stripe_customers")),
        sa.UniqueConstraint("customer_id", name=op.f("uq_stripe_customers_customer_id")),
    )
    op.create_table(
        "disputes",
        sa.Column("id", Id, nullable=False),
        sa.Column("dispute_id", sa.String(length=255), nullable=False),
        sa.Column("purchase_id", Id, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("hold_id", Id, nullable=True),
        sa.Column("clawed_back", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("debt", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("opened_at", Timestamp, nullable=False),
        sa.Column("closed_at", Timestamp, nullable=True),
        sa.CheckConstraint(
            "(status = 'open' AND closed_at IS NULL) OR (status <> 'open' AND closed_at IS NOT NULL)",
            name=op.f("ck_disputes_closed"),
        ),
        sa.CheckConstraint(
            "status = 'lost' OR (clawed_back = 0 AND debt = 0)", name=op.f("ck_disputes_lost_only")
        ),
        sa.CheckConstraint("status IN ('open', 'won', 'lost')", name=op.f("ck_disputes_status")),
        sa.CheckConstraint(
            "amount > 0 AND tokens >= 0 AND clawed_back >= 0 AND debt >= 0",
            name=op.f("ck_disputes_amounts"),
        ),
        sa.ForeignKeyConstraint(["hold_id"], ["holds.id"], name=op.f("fk_disputes_hold_id_holds")),
        sa.ForeignKeyConstraint(
            ["purchase_id"], ["purchases.id"], name=op.f("fk_disputes_purchase_id_purchases")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_disputes")),
        sa.UniqueConstraint("dispute_id", name=op.f("uq_disputes_dispute_id")),
        sa.UniqueConstraint("hold_id", name=op.f("uq_disputes_hold_id")),
    )
    with op.batch_alter_table("disputes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_disputes_purchase_id"), ["purchase_id"], unique=False)

    op.create_table(
        "payment_refunds",
        sa.Column("id", Id, nullable=False),
        sa.Column("refund_id", sa.String(length=255), nullable=False),
        sa.Column("purchase_id", Id, nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("taken", sa.BigInteger(), nullable=False),
        sa.Column("debt", sa.BigInteger(), nullable=False),
        sa.Column("transfer_id", Id, nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.CheckConstraint(
            "amount > 0 AND tokens >= 0 AND taken >= 0 AND debt >= 0 AND taken + debt = tokens",
            name=op.f("ck_payment_refunds_amounts"),
        ),
        sa.ForeignKeyConstraint(
            ["purchase_id"], ["purchases.id"], name=op.f("fk_payment_refunds_purchase_id_purchases")
        ),
        sa.ForeignKeyConstraint(
            ["transfer_id"], ["transfers.id"], name=op.f("fk_payment_refunds_transfer_id_transfers")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_refunds")),
        sa.UniqueConstraint("refund_id", name=op.f("uq_payment_refunds_refund_id")),
    )
    with op.batch_alter_table("payment_refunds", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_payment_refunds_purchase_id"), ["purchase_id"], unique=False
        )

    # A plain ADD COLUMN on both databases: SQLite takes a column CHECK without rebuilding
    # the table (a rebuild would trip over the ledger's foreign keys).
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        # A downgrade leaves the column (SQLite cannot drop it): keep it if it is there.
        if "debt" not in {c["name"] for c in sa.inspect(bind).get_columns("accounts")}:
            op.execute(
                "ALTER TABLE accounts ADD COLUMN debt BIGINT DEFAULT '0' NOT NULL"
                " CONSTRAINT ck_accounts_debt_not_negative CHECK (debt >= 0)"
            )
    else:
        op.add_column(
            "accounts", sa.Column("debt", sa.BigInteger(), server_default="0", nullable=False)
        )
        op.create_check_constraint(op.f("ck_accounts_debt_not_negative"), "accounts", "debt >= 0")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite cannot drop a column its CHECK uses; the column stays, unused and harmless.
        pass
    else:
        op.drop_constraint(op.f("ck_accounts_debt_not_negative"), "accounts")
        op.drop_column("accounts", "debt")

    with op.batch_alter_table("payment_refunds", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_payment_refunds_purchase_id"))

    op.drop_table("payment_refunds")
    with op.batch_alter_table("disputes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_disputes_purchase_id"))

    op.drop_table("disputes")
    op.drop_table("stripe_customers")
    with op.batch_alter_table("purchases", schema=None) as batch_op:
        batch_op.drop_index("ix_purchases_user")

    op.drop_table("purchases")
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.drop_index("ix_webhook_events_received")

    op.drop_table("webhook_events")
