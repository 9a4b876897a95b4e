"""Writing transfers and their entries, validating what goes in, and replaying keys.

Shared by transfers and holds; nothing here commits.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from tokenbank.ledger.errors import IdempotencyConflict, InvalidArgument, UnknownUser
from tokenbank.ledger.models import MAX_KEY_LENGTH, TransferKind, accounts, entries, transfers

#: Per-operation ceiling: far above any real purchase, far below BIGINT overflow in sums.
MAX_AMOUNT = 10**12
MAX_METADATA_BYTES = 4096
MAX_DESCRIPTION_LENGTH = 1000

Metadata = Mapping[str, Any]


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


def check_amount(amount: object, field: str = "amount") -> int:
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise InvalidArgument(field, "must be a whole number of tokens")
    if amount <= 0:
        raise InvalidArgument(field, "must be positive")
    if amount > MAX_AMOUNT:
        raise InvalidArgument(field, f"must be at most {MAX_AMOUNT}")
    return amount


def _check_text(value: object, field: str, max_length: int) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidArgument(field, "must be a non-empty string")
    if len(value) > max_length:
        raise InvalidArgument(field, f"must be at most {max_length} characters")
    if not value.isprintable() or value != value.strip():
        raise InvalidArgument(field, "must be printable, without leading or trailing spaces")
    return value


#: Keys tokenbank derives itself (a hold's posting) start with this; callers' keys may not.
RESERVED_KEY_PREFIX = "@"
#: A freeze's key: a hold that only its owner (billing, for a dispute) may end.
FREEZE_KEY_PREFIX = f"{RESERVED_KEY_PREFIX}freeze:"


def check_key(key: object) -> str:
    value = _check_text(key, "idempotency_key", MAX_KEY_LENGTH)
    if value.startswith(RESERVED_KEY_PREFIX):
        raise InvalidArgument("idempotency_key", f"must not start with {RESERVED_KEY_PREFIX!r}")
    return value


def check_user_id(user_id: object) -> str:
    value = _check_text(user_id, "user_id", MAX_KEY_LENGTH)
    if "/" in value or " " in value:  # other white space is not printable
        raise InvalidArgument("user_id", "must not contain '/' or spaces")
    return value


def check_description(description: object) -> str | None:
    if description is None:
        return None
    if not isinstance(description, str):
        raise InvalidArgument("description", "must be a string")
    if len(description) > MAX_DESCRIPTION_LENGTH:
        raise InvalidArgument("description", f"must be at most {MAX_DESCRIPTION_LENGTH} characters")
    if "\x00" in description:  # PostgreSQL text cannot hold NUL
        raise InvalidArgument("description", "must not contain NUL characters")
    return description


def check_metadata(metadata: object) -> dict[str, Any] | None:
    """Metadata is a small JSON object; it is normalised so replays compare equal."""
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
        raise InvalidArgument("metadata", "must be an object with string keys")
    try:
        encoded = json.dumps(metadata, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument("metadata", f"must be plain JSON ({exc})") from None
    if len(encoded.encode()) > MAX_METADATA_BYTES:
        raise InvalidArgument("metadata", f"must encode to at most {MAX_METADATA_BYTES} bytes")
    if _holds_nul(metadata):  # PostgreSQL's JSONB cannot hold NUL
        raise InvalidArgument("metadata", "must not contain NUL characters")
    loaded: dict[str, Any] = json.loads(encoded)
    return loaded


def _holds_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_holds_nul(item) for item in value)
    return False


def check_event_at(event_at: object) -> datetime | None:
    if event_at is None:
        return None
    if not isinstance(event_at, datetime) or event_at.tzinfo is None:
        raise InvalidArgument("event_at", "must be a timezone-aware datetime")
    return event_at


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
    ) -> Request:
        """A request from caller input, every field validated."""
        return cls(
            key=check_key(key),
            kind=kind,
            user_id=check_user_id(user_id),
            amount=check_amount(amount),
            description=check_description(description),
            metadata=check_metadata(metadata),
            event_at=check_event_at(event_at),
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
    differences = [
        name
        for name, stored, asked in (
            ("kind", row.kind, request.kind.value),
            ("user_id", row.user_id, request.user_id),
            ("amount", row.amount, row.amount if request.amount is None else request.amount),
            ("description", row.description, request.description),
            ("metadata", row.metadata, request.metadata),
            ("refund_of", row.refund_of_id, request.refund_of_id),
            ("event_at", row.event_at, request.event_at or row.event_at),
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
    )


def wallet_id(conn: Connection, user_id: str, *, lock: bool = False) -> int:
    """The wallet account of ``user_id``; with ``lock``, the row stays locked (PostgreSQL)
    until the transaction ends, serialising every change to this wallet."""
    query = sa.select(accounts.c.id).where(accounts.c.user_id == user_id)
    if lock:
        query = query.with_for_update()
    found = conn.execute(query).scalar()
    if found is None:
        raise UnknownUser(user_id)
    return int(found)


def available_tokens(conn: Connection, account_id: int) -> int:
    """What the wallet can spend now: its balance less what pending holds reserve."""
    query = sa.select(accounts.c.balance - accounts.c.held).where(accounts.c.id == account_id)
    return int(conn.execute(query).scalar_one())


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
