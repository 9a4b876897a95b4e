"""Idempotency keys: the callers' keys, the keys tokenbank derives itself, and replays.

A key names one operation for good: the same key with the same request returns the first
result, and with another request raises ``IdempotencyConflict``. Keys that start with ``@``
are reserved for the ledger's own operations (a hold's posting, a purchase's credit, a
clawback, a freeze...), so no caller can take one of them first. Every reserved key is
built by ``reserved_key``, in one format, ``@{purpose}:{reference}``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tokenbank.errors import IdempotencyConflict, InvalidArgument
from tokenbank.ledger.inputs import (
    RESERVED_KEY_PREFIX,
    check_amount,
    check_description,
    check_event_at,
    check_feature,
    check_key,
    check_metadata,
    check_user_id,
)
from tokenbank.ledger.journal import Receipt
from tokenbank.ledger.models import TransferKind, accounts, entries, transfers

#: Room left in a key for the reference after the prefix and the longest purpose.
MAX_REFERENCE_LENGTH = 200


class KeyPurpose(enum.StrEnum):
    """What a reserved key is for: the ledger operation that derived it."""

    PURCHASE = "purchase"  # credit_purchase: the tokens bought
    BONUS = "bonus"  # credit_purchase: the bonus that came with them
    CLAWBACK = "clawback"
    RESTORE = "restore"
    SETTLE = "settle"  # settle_debt
    FREEZE = "freeze"  # a hold's key, not a transfer's
    POST = "post"  # a hold's posting: reference ``hold:{hold_id}``
    EXPIRY = "expiry"  # what was left of a bucket: reference ``bucket:{id}[:{n}]``
    ALLOWANCE = "allowance"  # a subscription's month: reference ``subscription:{id}:...``
    CALL = "call"  # a model call's hold (a hold's key): reference ``{call_id}:{attempt}``
    OVERRUN = "overrun"  # what a call cost beyond its hold: reference ``hold:{hold_id}``


def reserved_key(purpose: KeyPurpose, reference: str) -> str:
    """The key of the ledger's own operation ``purpose`` on ``reference``.

    The reference names what the operation is about (``refund:7``, ``hold:42``); the same
    purpose and reference always give the same key, which is what makes a repeat a replay.
    """
    if (
        not isinstance(reference, str)
        or not reference
        or len(reference) > MAX_REFERENCE_LENGTH
        or not reference.isprintable()
    ):
        raise InvalidArgument("reference", f"must be 1-{MAX_REFERENCE_LENGTH} printable characters")
    return f"{RESERVED_KEY_PREFIX}{KeyPurpose(purpose).value}:{reference}"


@dataclass(frozen=True, slots=True)
class Request:
    """What a caller asked for under an idempotency key, to compare with a stored transfer."""

    key: str
    kind: TransferKind
    user_id: str
    amount: int | None  # None: "whatever was left" (a full refund); not compared
    description: str | None
    metadata: dict[str, Any] | None
    event_at: datetime | None  # only compared when the caller set it
    refund_of_id: int | None = None
    feature: str | None = None
    quantity: int | None = None

    @classmethod
    def checked(
        cls,
        *,
        key: object,
        kind: TransferKind,
        user_id: object,
        amount: object,
        description: object,
        metadata: object,
        event_at: object,
        feature: object = None,
        quantity: object = None,
    ) -> Request:
        """A request from caller input, every field validated."""
        feature, quantity = check_feature(feature, quantity)
        return cls(
            key=check_key(key),
            kind=kind,
            user_id=check_user_id(user_id),
            amount=check_amount(amount),
            description=check_description(description),
            metadata=check_metadata(metadata),
            event_at=check_event_at(event_at),
            feature=feature,
            quantity=quantity,
        )


_stored = (
    sa.select(
        transfers.c.id,
        transfers.c.kind,
        transfers.c.amount,
        transfers.c.description,
        transfers.c.metadata,
        transfers.c.refund_of_id,
        transfers.c.event_at,
        transfers.c.feature,
        transfers.c.quantity,
        accounts.c.user_id,
        entries.c.balance_after,
    )
    .join(entries, entries.c.transfer_id == transfers.c.id)
    .join(accounts, sa.and_(accounts.c.id == entries.c.account_id, accounts.c.kind == "wallet"))
    .where(transfers.c.idempotency_key == sa.bindparam("key"))
)


def replay(conn: Connection, request: Request) -> Receipt | None:
    """Return the first result for ``request.key``, or None if the key is unused.

    Raises ``IdempotencyConflict`` when the key was used for something else.
    """
    row = conn.execute(_stored, {"key": request.key}).first()
    if row is None:
        return None
    # A feature's amount is the catalog's price when the key was first used: the feature
    # and quantity are what the caller asked for, so a retry after a price change is a replay.
    priced = row.feature is not None and request.feature is not None
    differences = [
        name
        for name, stored, asked in (
            ("kind", row.kind, request.kind.value),
            ("user_id", row.user_id, request.user_id),
            (
                "amount",
                row.amount,
                row.amount if request.amount is None or priced else request.amount,
            ),
            ("description", row.description, request.description),
            ("metadata", row.metadata, request.metadata),
            ("refund_of", row.refund_of_id, request.refund_of_id),
            ("event_at", row.event_at, request.event_at or row.event_at),
            ("feature", row.feature, request.feature),
            ("quantity", row.quantity, request.quantity),
        )
        if stored != asked
    ]
    if differences:
        raise IdempotencyConflict(request.key, "different " + ", ".join(differences))
    return Receipt(
        transfer_id=row.id,
        kind=TransferKind(row.kind),
        user_id=row.user_id,
        amount=row.amount,
        balance=row.balance_after,
        replayed=True,
        feature=row.feature,
        quantity=row.quantity,
    )


def transfer_exists(conn: Connection, *, idempotency_key: str) -> bool:
    """Whether a transfer was made under this key (a replay's question, asked first)."""
    found = conn.execute(
        sa.select(transfers.c.id).where(transfers.c.idempotency_key == idempotency_key)
    )
    return found.first() is not None
