"""Ledger tables: accounts, transfers, entries, holds, and the buckets tokens are kept in.

A wallet is the only account with a stored, locked balance. System accounts (where tokens
come from and go to) keep no balance row: their balance is the sum of their entries, so no
spend ever waits on a row that another user's spend also touches.
"""

from __future__ import annotations

import enum

import sqlalchemy as sa

from tokenbank.columns import Id, Json, UtcDateTime
from tokenbank.db import metadata


class AccountKind(enum.StrEnum):
    WALLET = "wallet"
    SYSTEM = "system"


class SystemAccount(enum.IntEnum):
    """System accounts have fixed ids, created by the first migration."""

    PURCHASES = 1
    GRANTS = 2
    BONUSES = 3
    CONSUMPTION = 4
    REFUNDS = 5
    EXPIRY = 6

    @property
    def code(self) -> str:
        return f"system:{self.name.lower()}"


class TransferKind(enum.StrEnum):
    PURCHASE = "purchase"
    BONUS = "bonus"
    GRANT = "grant"
    SPEND = "spend"
    REFUND = "refund"
    CLAWBACK = "clawback"
    #: A clawback undone (the refund that caused it failed at the bank): tokens given back.
    RESTORE = "restore"
    EXPIRY = "expiry"


class Source(enum.StrEnum):
    """Where a bucket's tokens came from; it decides their place in the order of use."""

    PURCHASE = "purchase"  # bought (with their bonus), or given back by a restore
    SUBSCRIPTION = "subscription"
    TRIAL = "trial"
    PROMO = "promo"
    ADMIN = "admin"


#: Tokens someone paid for: used after promotional ones that expire at the same time.
PAID_SOURCES = frozenset({Source.PURCHASE, Source.SUBSCRIPTION})


class HoldStatus(enum.StrEnum):
    PENDING = "pending"
    POSTED = "posted"
    VOIDED = "voided"
    EXPIRED = "expired"


class HoldKind(enum.StrEnum):
    """Who may end a hold: anyone with its id (a hold), or only the ledger's caller that
    made it, and never its deadline (a freeze: purchased tokens kept while a payment is
    disputed, see ``clawbacks.freeze``). A ``covered`` hold reserves no tokens: what it is
    for is paid by something outside the wallet (a plan's unlimited feature); it ends as a
    hold does, and posting it records the use with no transfer (``holds.cover``)."""

    HOLD = "hold"
    FREEZE = "freeze"
    COVERED = "covered"


def _in(column: str, values: type[enum.StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


MAX_KEY_LENGTH = 255
#: A posted hold spent its posted amount in one transfer, unless it was covered (no transfer).
HOLD_POSTING = (
    "(status = 'posted' AND posted_amount > 0 AND posted_amount <= amount"
    " AND (transfer_id IS NULL) = (kind = 'covered'))"
    " OR (status <> 'posted' AND transfer_id IS NULL AND posted_amount IS NULL)"
)
MAX_FEATURE_LENGTH = 64

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", Id, sa.Identity(start=1000), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("code", sa.String(64), nullable=True, unique=True),
    sa.Column("user_id", sa.String(MAX_KEY_LENGTH), nullable=True, unique=True),
    # Wallets only: tokens owned (including held ones) and tokens reserved by pending holds.
    sa.Column("balance", sa.BigInteger, nullable=True),
    sa.Column("held", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("total_purchased", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("total_granted", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("total_spent", sa.BigInteger, nullable=False, server_default="0"),
    # Tokens clawed back (a refund, a lost dispute) that the wallet no longer held.
    sa.Column("debt", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.CheckConstraint(_in("kind", AccountKind), name="kind"),
    sa.CheckConstraint(
        "(kind = 'wallet' AND user_id IS NOT NULL AND code IS NULL AND balance IS NOT NULL)"
        " OR (kind = 'system' AND user_id IS NULL AND code IS NOT NULL AND balance IS NULL)",
        name="shape",
    ),
    # The no-overdraft rule, enforced by the database as well as by the code.
    sa.CheckConstraint("held >= 0 AND (balance IS NULL OR balance >= held)", name="not_negative"),
    sa.CheckConstraint(
        "total_purchased >= 0 AND total_granted >= 0 AND total_spent >= 0", name="totals"
    ),
    sa.CheckConstraint("debt >= 0", name="debt_not_negative"),
)

transfers = sa.Table(
    "transfers",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("idempotency_key", sa.String(MAX_KEY_LENGTH), nullable=False, unique=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("debit_account_id", Id, sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("credit_account_id", Id, sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("description", sa.Text, nullable=True),
    sa.Column("metadata", Json, nullable=True),
    sa.Column("refund_of_id", Id, sa.ForeignKey("transfers.id"), nullable=True, index=True),
    sa.Column("event_at", UtcDateTime, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    # A spend of a catalog feature (migration 0010): which, and how many units.
    sa.Column("feature", sa.String(MAX_FEATURE_LENGTH), nullable=True),
    sa.Column("quantity", sa.BigInteger, nullable=True),
    sa.CheckConstraint(_in("kind", TransferKind), name="kind"),
    sa.CheckConstraint(
        "(feature IS NULL AND quantity IS NULL) OR (feature IS NOT NULL AND quantity > 0)",
        name="feature_quantity",
    ),
    sa.CheckConstraint("amount > 0", name="amount_positive"),
    sa.CheckConstraint("debit_account_id <> credit_account_id", name="two_accounts"),
    sa.CheckConstraint(
        "(kind = 'refund' AND refund_of_id IS NOT NULL)"
        " OR (kind <> 'refund' AND refund_of_id IS NULL)",
        name="refund_link",
    ),
)

entries = sa.Table(
    "entries",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("transfer_id", Id, sa.ForeignKey("transfers.id"), nullable=False, index=True),
    sa.Column("account_id", Id, sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    # The wallet's balance right after this entry; NULL for system accounts (no stored balance).
    sa.Column("balance_after", sa.BigInteger, nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.CheckConstraint("amount <> 0", name="amount_nonzero"),
    # A wallet's history, newest first: on PostgreSQL the page's entry columns ride in the
    # index, so a page of a wallet with millions of entries reads no entries row.
    sa.Index(
        "ix_entries_account_page",
        "account_id",
        "id",
        postgresql_include=["transfer_id", "kind", "amount", "balance_after"],
    ),
    sa.Index("ix_entries_account_kind_history", "account_id", "kind", "id"),
)

holds = sa.Table(
    "holds",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("idempotency_key", sa.String(MAX_KEY_LENGTH), nullable=False, unique=True),
    sa.Column("account_id", Id, sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("description", sa.Text, nullable=True),
    sa.Column("metadata", Json, nullable=True),
    sa.Column("expires_at", UtcDateTime, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("resolved_at", UtcDateTime, nullable=True),
    sa.Column("posted_amount", sa.BigInteger, nullable=True),
    sa.Column("transfer_id", Id, sa.ForeignKey("transfers.id"), nullable=True, unique=True),
    # Added by migration 0007; before it, a freeze was known by its key's prefix.
    sa.Column("kind", sa.String(16), nullable=False, server_default=HoldKind.HOLD.value),
    sa.Column("feature", sa.String(MAX_FEATURE_LENGTH), nullable=True),
    sa.Column("quantity", sa.BigInteger, nullable=True),
    sa.CheckConstraint(_in("status", HoldStatus), name="status"),
    sa.CheckConstraint(
        "(feature IS NULL AND quantity IS NULL) OR (feature IS NOT NULL AND quantity > 0)",
        name="feature_quantity",
    ),
    sa.CheckConstraint(_in("kind", HoldKind), name="kind"),
    sa.CheckConstraint("amount > 0", name="amount_positive"),
    sa.CheckConstraint(
        "(status = 'pending' AND resolved_at IS NULL)"
        " OR (status <> 'pending' AND resolved_at IS NOT NULL)",
        name="resolved",
    ),
    sa.CheckConstraint(HOLD_POSTING, name="posting"),
    sa.Index(
        "ix_holds_pending_expiry",
        "expires_at",
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    ),
    sa.Index(
        "ix_holds_pending_account",
        "account_id",
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    ),
)

# What is left of each credit (migration 0010). A wallet's balance is the sum of its
# buckets' ``remaining``, and its ``held`` the sum of theirs: every change to one changes
# the other in the same step, under the wallet's lock, and ``verify`` checks both.
buckets = sa.Table(
    "buckets",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("account_id", Id, sa.ForeignKey("accounts.id"), nullable=False),
    # The credit that filled it; NULL only for the balance (maybe none) a wallet had when
    # migration 0010 made buckets, carried over in one bucket.
    sa.Column("transfer_id", Id, sa.ForeignKey("transfers.id"), nullable=True, unique=True),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("paid", sa.Boolean, nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("remaining", sa.BigInteger, nullable=False),
    # Of ``remaining``, what pending holds reserve.
    sa.Column("held", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("expires_at", UtcDateTime, nullable=True),
    # When what was left of it was moved out (its ``expiry`` transfer).
    sa.Column("expired_at", UtcDateTime, nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.CheckConstraint(_in("source", Source), name="source"),
    # Only the bucket a wallet's earlier balance was carried over in may be empty.
    sa.CheckConstraint("amount > 0 OR transfer_id IS NULL", name="amount_positive"),
    sa.CheckConstraint("held >= 0 AND held <= remaining AND remaining <= amount", name="within"),
    sa.CheckConstraint("expired_at IS NULL OR expires_at IS NOT NULL", name="expiry"),
    sa.Index(
        "ix_buckets_live",
        "account_id",
        postgresql_where=sa.text("remaining > 0"),
        sqlite_where=sa.text("remaining > 0"),
    ),
    sa.Index(
        "ix_buckets_due",
        "expires_at",
        postgresql_where=sa.text("expires_at IS NOT NULL AND remaining > held"),
        sqlite_where=sa.text("expires_at IS NOT NULL AND remaining > held"),
    ),
)

# Which buckets each spend, clawback, expiry or refund took tokens from or gave them back to
# (``transfer_id``), and which ones each hold reserves (``hold_id``).
draws = sa.Table(
    "draws",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("bucket_id", Id, sa.ForeignKey("buckets.id"), nullable=False, index=True),
    sa.Column("transfer_id", Id, sa.ForeignKey("transfers.id"), nullable=True, index=True),
    sa.Column("hold_id", Id, sa.ForeignKey("holds.id"), nullable=True, index=True),
    # Taken from the bucket (positive), or given back to it (negative: a refund).
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.CheckConstraint("amount <> 0", name="amount_nonzero"),
    sa.CheckConstraint(
        "(transfer_id IS NULL AND hold_id IS NOT NULL AND amount > 0)"
        " OR (transfer_id IS NOT NULL AND hold_id IS NULL)",
        name="one_cause",
    ),
)
