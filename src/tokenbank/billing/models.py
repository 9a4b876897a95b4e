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
    # When ``tokenbank worker`` may (next) try to settle the event while it is unprocessed:
    # at once for a delivery answered before it was settled, after a lease for one being
    # settled (in its request or by a worker), after a growing wait for one that failed.
    # Never NULL, which would never be due (migration 0015).
    sa.Column(
        "settle_after",
        UtcDateTime,
        nullable=False,
        server_default=sa.text("CURRENT_TIMESTAMP"),
    ),
    sa.CheckConstraint("attempts >= 0", name="attempts"),
    sa.Index("ix_webhook_events_received", "received_at"),
    sa.Index(
        "ix_webhook_events_pending",
        "settle_after",
        "id",
        postgresql_where=sa.text("processed_at IS NULL"),
        sqlite_where=sa.text("processed_at IS NULL"),
    ),
)

#: The Stripe customer made for each user who buys, so receipts and the portal find them.
stripe_customers = sa.Table(
    "stripe_customers",
    metadata,
    sa.Column("user_id", sa.String(MAX_KEY_LENGTH), sa.ForeignKey("users.id"), primary_key=True),
    sa.Column("customer_id", StripeId, nullable=False, unique=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
)


class SubscriptionStatus(enum.StrEnum):
    """Stripe's statuses of a subscription, and two of tokenbank's own before Stripe has
    one: ``pending`` (its Checkout Session is open) and ``expired`` (that session expired
    unpaid: there never was a subscription)."""

    PENDING = "pending"
    EXPIRED = "expired"
    INCOMPLETE = "incomplete"
    INCOMPLETE_EXPIRED = "incomplete_expired"
    TRIALING = "trialing"
    ACTIVE = "active"
    PAST_DUE = "past_due"
    UNPAID = "unpaid"
    PAUSED = "paused"
    CANCELED = "canceled"


#: The statuses that count as the user's one subscription: a second one is refused.
CURRENT_STATUSES = (
    SubscriptionStatus.PENDING,
    SubscriptionStatus.INCOMPLETE,
    SubscriptionStatus.TRIALING,
    SubscriptionStatus.ACTIVE,
    SubscriptionStatus.PAST_DUE,
    SubscriptionStatus.UNPAID,
    SubscriptionStatus.PAUSED,
)
#: Statuses nothing moves a subscription out of.
FINAL_STATUSES = (
    SubscriptionStatus.EXPIRED,
    SubscriptionStatus.INCOMPLETE_EXPIRED,
    SubscriptionStatus.CANCELED,
)


class GrantKind(enum.StrEnum):
    """Why a subscription's tokens were granted: a paid invoice's first month, a later
    month of a yearly invoice (the worker's), or the difference an upgrade adds."""

    INVOICE = "invoice"
    MONTH = "month"
    UPGRADE = "upgrade"


def _current(column: str) -> str:
    return f"{column} IN ({', '.join(repr(s.value) for s in CURRENT_STATUSES)})"


#: A user's plan at Stripe, mirrored: Stripe decides, webhooks and ``reconcile`` copy
#: forward only, and the plan's terms are the catalog's when it was sold or changed.
subscriptions = sa.Table(
    "subscriptions",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("user_id", sa.String(MAX_KEY_LENGTH), sa.ForeignKey("users.id"), nullable=False),
    sa.Column("plan_id", sa.String(64), nullable=False),
    sa.Column("interval", sa.String(8), nullable=False),
    sa.Column("tokens_per_month", sa.BigInteger, nullable=False),
    sa.Column("unused", sa.String(16), nullable=False),
    sa.Column("rollover_cap", sa.BigInteger, nullable=True),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("status", sa.String(24), nullable=False),
    sa.Column("stripe_idempotency_key", sa.String(64), nullable=False, unique=True),
    sa.Column("idempotency_key", sa.String(MAX_KEY_LENGTH), nullable=True, unique=True),
    sa.Column("checkout_session_id", StripeId, nullable=True, unique=True),
    sa.Column("stripe_subscription_id", StripeId, nullable=True, unique=True),
    sa.Column("customer_id", StripeId, nullable=True),
    sa.Column("current_period_start", UtcDateTime, nullable=True),
    sa.Column("current_period_end", UtcDateTime, nullable=True),
    sa.Column("trial_end", UtcDateTime, nullable=True),
    # Either field means "ends then" (flexible billing mode sets only ``cancel_at``).
    sa.Column("cancel_at", UtcDateTime, nullable=True),
    sa.Column("cancel_at_period_end", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("ended_at", UtcDateTime, nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.CheckConstraint(_in("status", SubscriptionStatus), name="status"),
    sa.CheckConstraint("interval IN ('month', 'year')", name="interval"),
    sa.CheckConstraint("unused IN ('reset', 'rollover')", name="unused"),
    sa.CheckConstraint(
        "tokens_per_month >= 0 AND amount >= 0 AND (rollover_cap IS NULL OR rollover_cap > 0)",
        name="amounts",
    ),
    sa.CheckConstraint(
        "status IN ('pending', 'expired') OR stripe_subscription_id IS NOT NULL",
        name="started_at_stripe",
    ),
    # One subscription per user: a second is a plan change, not a purchase.
    sa.Index(
        "ix_subscriptions_one_current",
        "user_id",
        unique=True,
        postgresql_where=sa.text(_current("status")),
        sqlite_where=sa.text(_current("status")),
    ),
    sa.Index("ix_subscriptions_user", "user_id", "id"),
)

#: Every grant of a subscription's tokens, once: per paid invoice, per month of a yearly
#: invoice, per upgrade invoice.
subscription_grants = sa.Table(
    "subscription_grants",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("subscription_id", Id, sa.ForeignKey("subscriptions.id"), nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False),
    # The invoice that paid for these tokens.
    sa.Column("invoice_id", StripeId, nullable=False, index=True),
    sa.Column("plan_id", sa.String(64), nullable=False),
    # The service period the invoice paid for (its subscription line's), and the month of
    # it this grant is for.
    sa.Column("period_start", UtcDateTime, nullable=False),
    sa.Column("period_end", UtcDateTime, nullable=False),
    sa.Column("month_start", UtcDateTime, nullable=False),
    sa.Column("month_end", UtcDateTime, nullable=False),
    sa.Column("tokens", sa.BigInteger, nullable=False),
    # The paying plan's allowance a month (what each later month of the invoice grants),
    # and what the invoice charged (what a refund in full returns).
    sa.Column("monthly", sa.BigInteger, nullable=False),
    sa.Column("amount_paid", sa.BigInteger, nullable=False),
    # Of the months before: what stayed (rollover) and what expired here.
    sa.Column("carried", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("expired", sa.BigInteger, nullable=False, server_default="0"),
    # NULL when nothing was granted (a month that had already lapsed when the news came).
    sa.Column("transfer_id", Id, sa.ForeignKey("transfers.id"), nullable=True, unique=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.CheckConstraint(_in("kind", GrantKind), name="kind"),
    sa.CheckConstraint(
        "tokens >= 0 AND monthly >= 0 AND amount_paid >= 0 AND carried >= 0 AND expired >= 0"
        " AND month_start < month_end"
        " AND period_start <= month_start AND month_end <= period_end",
        name="amounts",
    ),
    sa.CheckConstraint("transfer_id IS NOT NULL OR tokens = 0", name="granted"),
    # The guards of "exactly once": one grant per paid invoice (its first month or its
    # upgrade), one per month of a subscription.
    sa.Index(
        "ix_subscription_grants_invoice",
        "invoice_id",
        unique=True,
        postgresql_where=sa.text("kind <> 'month'"),
        sqlite_where=sa.text("kind <> 'month'"),
    ),
    sa.Index(
        "ix_subscription_grants_month",
        "subscription_id",
        "month_start",
        unique=True,
        postgresql_where=sa.text("kind <> 'upgrade'"),
        sqlite_where=sa.text("kind <> 'upgrade'"),
    ),
)

#: One row per Stripe refund of a subscription invoice: its share of the invoice's tokens
#: is clawed back once.
invoice_refunds = sa.Table(
    "invoice_refunds",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("refund_id", StripeId, nullable=False, unique=True),
    sa.Column("subscription_id", Id, sa.ForeignKey("subscriptions.id"), nullable=False, index=True),
    sa.Column("invoice_id", StripeId, nullable=False, index=True),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("tokens", sa.BigInteger, nullable=False),
    sa.Column("taken", sa.BigInteger, nullable=False),
    sa.Column("debt", sa.BigInteger, nullable=False),
    sa.Column("transfer_id", Id, sa.ForeignKey("transfers.id"), nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.CheckConstraint(
        "amount > 0 AND tokens >= 0 AND taken >= 0 AND debt >= 0 AND taken + debt = tokens",
        name="amounts",
    ),
)
