"""The ledger: wallets, immutable transfers and their entries, and holds.

Every function takes a ``Connection`` inside a transaction opened by the caller
(``Database.transaction()``) and never commits. This package imports nothing from the web,
CLI, billing or payments packages.
"""

from tokenbank.ledger.accounts import open_wallet, wallet_exists
from tokenbank.ledger.clawbacks import (
    FROZEN_UNTIL,
    Clawback,
    Restore,
    claw_back,
    credit_purchase,
    freeze,
    restore,
    settle_debt,
)
from tokenbank.ledger.errors import (
    HoldFrozen,
    HoldNotPending,
    IdempotencyConflict,
    InsufficientTokens,
    InvalidArgument,
    LedgerError,
    NotFound,
    NotRefundable,
    RefundExceedsSpend,
    UnknownHold,
    UnknownTransfer,
    UnknownUser,
)
from tokenbank.ledger.holds import Hold, expire_holds, get_hold, hold, post_hold, void_hold
from tokenbank.ledger.journal import Receipt
from tokenbank.ledger.models import HoldStatus, SystemAccount, TransferKind
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
    "Balance",
    "Clawback",
    "HistoryItem",
    "HistoryPage",
    "Hold",
    "HoldFrozen",
    "HoldNotPending",
    "HoldStatus",
    "IdempotencyConflict",
    "InsufficientTokens",
    "InvalidArgument",
    "LedgerError",
    "NotFound",
    "NotRefundable",
    "Receipt",
    "RefundExceedsSpend",
    "Restore",
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
    "credit",
    "credit_purchase",
    "expire_holds",
    "freeze",
    "get_hold",
    "get_transfer",
    "history",
    "hold",
    "open_wallet",
    "post_hold",
    "refund",
    "restore",
    "settle_debt",
    "spend",
    "try_spend",
    "verify",
    "void_hold",
    "wallet_exists",
]
