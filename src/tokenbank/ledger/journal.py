"""The journal: each transfer written with its two entries, and the receipt it gives.

Writing a transfer takes more than one statement, and it is only correct next to the
change of the wallet row it accounts for: ``record_transfer`` runs inside the caller's
``atomic`` step, after the caller changed and locked the wallet.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from tokenbank.errors import IdempotencyConflict
from tokenbank.ledger.models import TransferKind, entries, transfers

log = structlog.get_logger("tokenbank.ledger")


@dataclass(frozen=True, slots=True)
class Receipt:
    """The outcome of a transfer. ``replayed`` is True when the idempotency key had been
    used before and this is the first result again, with no new effect."""

    transfer_id: int
    kind: TransferKind
    user_id: str
    amount: int
    balance: int
    replayed: bool = False
    feature: str | None = None  # what a spend bought, and how many
    quantity: int | None = None


_insert_transfer = {
    name: dialect.insert(transfers)
    .on_conflict_do_nothing(index_elements=["idempotency_key"])
    .returning(transfers.c.id)
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}


def record_transfer(
    conn: Connection,
    *,
    key: str,
    kind: TransferKind,
    debit_account_id: int,
    credit_account_id: int,
    amount: int,
    wallet_id: int,
    wallet_balance: int,
    description: str | None,
    metadata: dict[str, Any] | None,
    event_at: datetime,
    now: datetime,
    refund_of_id: int | None = None,
    feature: str | None = None,
    quantity: int | None = None,
) -> int:
    """Insert a transfer and its two entries, after the caller has changed the wallet row.

    The caller holds the wallet lock and has checked the key, so a conflict here means the
    key is being used at this moment for another wallet: the caller's transaction must end.
    """
    transfer_id = conn.execute(
        _insert_transfer[conn.dialect.name],
        {
            "idempotency_key": key,
            "kind": kind.value,
            "debit_account_id": debit_account_id,
            "credit_account_id": credit_account_id,
            "amount": amount,
            "description": description,
            "metadata": metadata,
            "refund_of_id": refund_of_id,
            "feature": feature,
            "quantity": quantity,
            "event_at": event_at,
            "created_at": now,
        },
    ).scalar()
    if transfer_id is None:
        raise IdempotencyConflict(key, "the key belongs to another wallet's operation")
    conn.execute(
        sa.insert(entries),
        [
            {
                "transfer_id": transfer_id,
                "account_id": debit_account_id,
                "kind": kind.value,
                "amount": -amount,
                "balance_after": wallet_balance if debit_account_id == wallet_id else None,
                "created_at": now,
            },
            {
                "transfer_id": transfer_id,
                "account_id": credit_account_id,
                "kind": kind.value,
                "amount": amount,
                "balance_after": wallet_balance if credit_account_id == wallet_id else None,
                "created_at": now,
            },
        ],
    )
    return int(transfer_id)


def log_spent(receipt: Receipt) -> None:
    """The line a large spend (a hold's posting included) gets. Callers write it only once
    the spend has committed (``db.after_commit``), so it never tells of a rolled-back one."""
    log.info(
        "tokens_spent",
        user_id=receipt.user_id,
        tokens=receipt.amount,
        transfer_id=receipt.transfer_id,
        balance=receipt.balance,
    )
