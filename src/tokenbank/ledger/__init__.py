"""The ledger: wallets, immutable transfers and their entries, holds, and the buckets that
keep what is left of each credit and when it expires.

Every function takes a ``Connection`` from a unit of work the caller opened
(``tokenbank.db``): the caller decides how much stands or falls together. What the ledger
decides is that none of its own operations is ever half applied: one that writes more than
one statement runs in ``atomic``, which adds nothing inside the caller's transaction and,
in an ``autocommit()`` unit on PostgreSQL, commits that operation alone, as the one
statement of a spend or a credit commits alone. So a ledger function may commit, but only
whole operations, and only where the caller chose ``autocommit()`` (``expire_holds``
commits each wallet's releases as one such operation).

This package imports nothing from the web, CLI, billing or payments packages.
"""

from tokenbank.errors import (
    HoldFrozen,
    HoldNotPending,
    IdempotencyConflict,
    InsufficientTokens,
    InvalidArgument,
    NotFound,
    NotRefundable,
    RefundExceedsSpend,
    UnknownHold,
    UnknownTransfer,
    UnknownUser,
)
from tokenbank.ledger.accounts import open_wallet, wallet_exists
from tokenbank.ledger.allowances import Allowance, grant_allowance
from tokenbank.ledger.buckets import ORDER, Expiring, expire_grants
from tokenbank.ledger.clawbacks import (
    FROZEN_UNTIL,
    Clawback,
    Restore,
    claw_back,
    credit_purchase,
    freeze,
    overrun,
    restore,
    settle_debt,
)
from tokenbank.ledger.holds import (
    Guard,
    Hold,
    cover,
    expire_holds,
    find_hold,
    get_hold,
    hold,
    hold_call,
    hold_call_in,
    post_covered,
    post_hold,
    post_hold_in,
    void_hold,
)
from tokenbank.ledger.idempotency import transfer_exists
from tokenbank.ledger.journal import Receipt
from tokenbank.ledger.models import HoldKind, HoldStatus, Source, SystemAccount, TransferKind
from tokenbank.ledger.reads import (
    Balance,
    HistoryItem,
    HistoryPage,
    Transfer,
    balance,
    balance_async,
    get_transfer,
    history,
)
from tokenbank.ledger.transfers import credit, refund, spend, try_spend
from tokenbank.ledger.verify import VerifyReport, verify

__all__ = [
    "FROZEN_UNTIL",
    "ORDER",
    "Allowance",
    "Balance",
    "Clawback",
    "Expiring",
    "Guard",
    "HistoryItem",
    "HistoryPage",
    "Hold",
    "HoldFrozen",
    "HoldKind",
    "HoldNotPending",
    "HoldStatus",
    "IdempotencyConflict",
    "InsufficientTokens",
    "InvalidArgument",
    "NotFound",
    "NotRefundable",
    "Receipt",
    "RefundExceedsSpend",
    "Restore",
    "Source",
    "SystemAccount",
    "Transfer",
    "TransferKind",
    "UnknownHold",
    "UnknownTransfer",
    "UnknownUser",
    "VerifyReport",
    "balance",
    "balance_async",
    "claw_back",
    "cover",
    "credit",
    "credit_purchase",
    "expire_grants",
    "expire_holds",
    "find_hold",
    "freeze",
    "get_hold",
    "get_transfer",
    "grant_allowance",
    "history",
    "hold",
    "hold_call",
    "hold_call_in",
    "open_wallet",
    "overrun",
    "post_covered",
    "post_hold",
    "post_hold_in",
    "refund",
    "restore",
    "settle_debt",
    "spend",
    "transfer_exists",
    "try_spend",
    "verify",
    "void_hold",
    "wallet_exists",
]
