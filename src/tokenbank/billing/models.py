"""Billing tables: purchases and what Stripe later did to them, and the webhook inbox."""

from __future__ import annotations

import enum

import sqlalchemy as sa

from tokenbank.columns import Id, UtcDateTime
from tokenbank.db import metadata
from tokenbank.ledger.models import MAX_KEY_LENGTH


class PurchaseStatus(enum.StrEnum):
    PENDING = "pending"
    PAID = "paid"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELED = "canceled"
    #: Stripe reports a payment that does not match the purchase: nothing is credited until
    #: an admin decides (``billing.resolve_review``).
    NEEDS_REVIEW = "needs_review"


class ReviewDecision(enum.StrEnum):
    """What an admin decided about a purchase flagged for review."""

    CREDIT = "credit"  # a mismatched payment: credit the purchase's tokens after all
    REFUSE = "refuse"  # a mismatched payment: never credit it
    REVERSE = "reverse"  # credited, but Stripe shows no payment: take the tokens back
    DISMISS = "dismiss"  # credited, and the admin found it right: keep it


class PurchaseFlow(enum.StrEnum):
    CHECKOUT = "checkout"  # Stripe's hosted Checkout page
    PAYMENT_INTENT = "payment_intent"  # a card form embedded in the app's own page


class DisputeStatus(enum.StrEnum):
    OPEN = "open"
    WON = "won"
    LOST = "lost"


def _in(column: str, values: type[enum.StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


StripeId = sa.String(255)

purchases = sa.Table(
    "purchases",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("user_id", sa.String(MAX_KEY_LENGTH), sa.ForeignKey("users.id"), nullable=False),
    sa.Column("package_id", sa.String(64), nullable=False),
    # Copied from the catalog when the purchase is created: what was offered is what is owed.
    sa.Column("tokens", sa.BigInteger, nullable=False),
    sa.Column("bonus_tokens", sa.BigInteger, nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),  # minor units of currency
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("flow", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    # Sent with every Stripe call that creates something for this purchase.
    sa.Column("stripe_idempotency_key", sa.String(64), nullable=False, unique=True),
    # The caller's key for starting this purchase: a retry finds it instead of a second one.
    sa.Column("idempotency_key", sa.String(MAX_KEY_LENGTH), nullable=True, unique=True),
    sa.Column("checkout_session_id", StripeId, nullable=True, unique=True),
    sa.Column("payment_intent_id", StripeId, nullable=True, unique=True),
    sa.Column("failure_code", sa.String(64), nullable=True),
    sa.Column("failure_message", sa.Text, nullable=True),
    sa.Column("credit_transfer_id", Id, sa.ForeignKey("transfers.id"), nullable=True, unique=True),
    sa.Column("refunded_amount", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("clawed_back_tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("paid_at", UtcDateTime, nullable=True),
    # The package's terms when it was sold: days its tokens stay usable (None: forever).
    sa.Column("tokens_expire_days", sa.Integer, nullable=True),
    # Why an admin must look (a payment that does not match; paid here, not at Stripe), and
    # what they decided; every decision is also in the audit log.
    sa.Column("review", sa.Text, nullable=True),
    sa.Column("review_decision", sa.String(16), nullable=True),
    sa.Column("reviewed_by", sa.String(MAX_KEY_LENGTH), nullable=True),
    sa.Column("reviewed_at", UtcDateTime, nullable=True),
    sa.CheckConstraint(_in("status", PurchaseStatus), name="status"),
    sa.CheckConstraint(
        f"review_decision IS NULL OR ({_in('review_decision', ReviewDecision)})",
        name="review_decision",
    ),
    sa.CheckConstraint("status <> 'needs_review' OR review IS NOT NULL", name="review_reason"),
    sa.CheckConstraint(
        "(review_decision IS NULL AND reviewed_at IS NULL AND reviewed_by IS NULL)"
        " OR (review IS NOT NULL AND review_decision IS NOT NULL AND reviewed_at IS NOT NULL"
        " AND reviewed_by IS NOT NULL)",
        name="reviewed",
    ),
    sa.CheckConstraint(_in("flow", PurchaseFlow), name="flow"),
    sa.CheckConstraint("tokens > 0 AND bonus_tokens >= 0 AND amount > 0", name="amounts"),
    # Paid and credited are the same fact.
    sa.CheckConstraint(
        "(status = 'paid' AND credit_transfer_id IS NOT NULL AND paid_at IS NOT NULL)"
        " OR (status <> 'paid' AND credit_transfer_id IS NULL)",
        name="credited_when_paid",
    ),
    sa.CheckConstraint(
        "refunded_amount >= 0 AND refunded_amount <= amount"
        " AND clawed_back_tokens >= 0 AND clawed_back_tokens <= tokens + bonus_tokens",
        name="refunds_bounded",
    ),
    sa.Index("ix_purchases_user", "user_id", "id"),
)

#: One row per Stripe refund: its share of the purchase's tokens is clawed back once.
payment_refunds = sa.Table(
    "payment_refunds",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("refund_id", StripeId, nullable=False, unique=True),
    sa.Column("purchase_id", Id, sa.ForeignKey("purchases.id"), nullable=False, index=True),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("tokens", sa.BigInteger, nullable=False),  # the share owed back
    sa.Column("taken", sa.BigInteger, nullable=False),  # what the wallet could give
    sa.Column("debt", sa.BigInteger, nullable=False),  # the rest
    sa.Column("transfer_id", Id, sa.ForeignKey("transfers.id"), nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    # The refund failed after it had succeeded: the tokens were given back, once.
    sa.Column("reversed_at", UtcDateTime, nullable=True),
    sa.Column("reversal_transfer_id", Id, sa.ForeignKey("transfers.id"), nullable=True),
    sa.CheckConstraint(
        "amount > 0 AND tokens >= 0 AND taken >= 0 AND debt >= 0 AND taken + debt = tokens",
        name="amounts",
    ),
    sa.CheckConstraint("reversal_transfer_id IS NULL OR reversed_at IS NOT NULL", name="reversal"),
)

disputes = sa.Table(
    "disputes",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("dispute_id", StripeId, nullable=False, unique=True),
    sa.Column("purchase_id", Id, sa.ForeignKey("purchases.id"), nullable=False, index=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("tokens", sa.BigInteger, nullable=False),  # the purchase's tokens in dispute
    sa.Column("hold_id", Id, sa.ForeignKey("holds.id"), nullable=True, unique=True),
    sa.Column("clawed_back", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("debt", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("opened_at", UtcDateTime, nullable=False),
    sa.Column("closed_at", UtcDateTime, nullable=True),
    sa.CheckConstraint(_in("status", DisputeStatus), name="status"),
    sa.CheckConstraint(
        "(status = 'open' AND closed_at IS NULL) OR (status <> 'open' AND closed_at IS NOT NULL)",
        name="closed",
    ),
    sa.CheckConstraint("status = 'lost' OR (clawed_back = 0 AND debt = 0)", name="lost_only"),
    sa.CheckConstraint(
        "amount > 0 AND tokens >= 0 AND clawed_back >= 0 AND debt >= 0", name="amounts"
    ),
)

#: Every Stripe event received, once: its effects commit together with ``processed_at``.
webhook_events = sa.Table(
    "webhook_events",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("event_id", StripeId, nullable=False, unique=True),
    sa.Column("type", sa.String(100), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),  # as received, for replays and audits
    sa.Column("api_version", sa.String(64), nullable=True),
    sa.Column("livemode", sa.Boolean, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),  # when Stripe created the event
    sa.Column("received_at", UtcDateTime, nullable=False),
    sa.Column("processed_at", UtcDateTime, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("outcome", sa.Text, nullable=True),
    sa.CheckConstraint("attempts >= 0", name="attempts"),
    sa.Index("ix_webhook_events_received", "received_at"),
)

#: The Stripe customer made for each user who buys, so receipts and the portal find them.
stripe_customers = sa.Table(
    "stripe_customers",
    metadata,
    sa.Column("user_id", sa.String(MAX_KEY_LENGTH), sa.ForeignKey("users.id"), primary_key=True),
    sa.Column("customer_id", StripeId, nullable=False, unique=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
)
