"""Reading a wallet: its balance, its history, one transfer."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tokenbank.columns import UtcDateTime, utcnow
from tokenbank.db import Statement
from tokenbank.errors import InvalidArgument, UnknownTransfer, UnknownUser
from tokenbank.ledger.buckets import ORDER, Expiring
from tokenbank.ledger.inputs import check_user_id
from tokenbank.ledger.models import (
    HoldStatus,
    Source,
    TransferKind,
    accounts,
    buckets,
    draws,
    entries,
    holds,
    transfers,
)

MAX_PAGE = 500


@dataclass(frozen=True, slots=True)
class Balance:
    """``available`` can be spent now; ``held`` is reserved by pending holds; ``expiring``
    is what will expire unless used first, soonest first (tokens past their expiry that
    no sweep has moved out yet count for nothing)."""

    user_id: str
    available: int
    held: int
    total_purchased: int
    total_granted: int
    total_spent: int
    debt: int = 0  # clawed back but not covered by the balance (see ``claw_back``)
    expiring: list[Expiring] = field(default_factory=list)

    @property
    def balance(self) -> int:
        return self.available + self.held


def _expiring_query(now: sa.ColumnElement[Any]) -> sa.Select[Any]:
    """What of the wallet will expire unless used first, soonest first."""
    wallet = sa.select(accounts.c.id).where(accounts.c.user_id == sa.bindparam("user_id"))
    return (
        sa.select(buckets.c.remaining, buckets.c.expires_at, buckets.c.source)
        .where(
            buckets.c.account_id == wallet.scalar_subquery(),
            buckets.c.remaining > 0,
            buckets.c.expires_at > now,
        )
        .order_by(*ORDER)
        .limit(MAX_EXPIRING)
    )


#: How many expiring buckets a balance lists.
MAX_EXPIRING = 20


def _balance_query(now: sa.ColumnElement[Any]) -> sa.Select[Any]:
    # Holds past their deadline are released lazily; a read already treats them as released.
    stale_held = (
        sa.select(sa.cast(sa.func.coalesce(sa.func.sum(holds.c.amount), 0), sa.BigInteger))
        .where(
            holds.c.account_id == accounts.c.id,
            holds.c.status == HoldStatus.PENDING.value,
            holds.c.expires_at <= now,
        )
        .scalar_subquery()
    )
    # Tokens past their expiry are expired lazily too: a read leaves out what is free in
    # such buckets, and what holds past their deadline reserve there (the read counts those
    # holds as released, into a bucket that has expired). Rarely any: the sweep runs every
    # minute, and the index on a wallet's buckets with tokens left finds them.
    stale_reserved = (
        sa.select(sa.func.coalesce(sa.func.sum(draws.c.amount), 0))
        .join(holds, holds.c.id == draws.c.hold_id)
        .where(
            draws.c.bucket_id == buckets.c.id,
            holds.c.status == HoldStatus.PENDING.value,
            holds.c.expires_at <= now,
        )
        .scalar_subquery()
    )
    due = (
        sa.select(
            sa.cast(
                sa.func.coalesce(
                    sa.func.sum(
                        buckets.c.remaining
                        - buckets.c.held
                        + sa.case((buckets.c.held > 0, stale_reserved), else_=0)
                    ),
                    0,
                ),
                sa.BigInteger,
            )
        )
        .where(
            buckets.c.account_id == accounts.c.id,
            buckets.c.remaining > 0,
            buckets.c.expires_at <= now,
        )
        .scalar_subquery()
    )
    return sa.select(
        accounts.c.balance,
        accounts.c.held,
        accounts.c.total_purchased,
        accounts.c.total_granted,
        accounts.c.total_spent,
        accounts.c.debt,
        # Most wallets hold nothing: then the holds table is not looked at.
        sa.case((accounts.c.held > 0, stale_held), else_=0).label("stale"),
        due.label("due"),
    ).where(accounts.c.user_id == sa.bindparam("user_id"))


_NOW = sa.bindparam("now", type_=UtcDateTime())
_balance = _balance_query(_NOW)
_expiring = _expiring_query(_NOW)
# The asyncio variant asks the server for the time: one value fewer to send per read.
_balance_now = Statement(_balance_query(sa.func.now()))
_expiring_now = Statement(_expiring_query(sa.func.now()))


def balance(conn: Connection, *, user_id: str, now: datetime | None = None) -> Balance:
    params = {"user_id": user_id, "now": now or utcnow()}
    row = conn.execute(_balance, params).first()
    return _to_balance(user_id, row, conn.execute(_expiring, params).all())


async def balance_async(conn: psycopg.AsyncConnection[Any], *, user_id: str) -> Balance:
    """``balance`` on an asyncio PostgreSQL connection (the HTTP service's hot path)."""
    rows = await _balance_now.rows_async(conn, {"user_id": user_id})
    if not rows:
        raise UnknownUser(user_id)
    return _to_balance(user_id, rows[0], await _expiring_now.rows_async(conn, {"user_id": user_id}))


def _to_balance(user_id: str, row: Any, expiring: Sequence[Any]) -> Balance:
    if row is None:
        raise UnknownUser(user_id)
    balance, held, total_purchased, total_granted, total_spent, debt, stale, due = row
    return Balance(
        user_id=user_id,
        available=balance - held + stale - due,
        held=held - stale,
        total_purchased=total_purchased,
        total_granted=total_granted,
        total_spent=total_spent,
        debt=debt,
        expiring=[
            Expiring(amount=amount, expires_at=at, source=Source(source))
            for amount, at, source in expiring
        ],
    )


@dataclass(frozen=True, slots=True)
class HistoryItem:
    """One line of a wallet's history: a transfer seen from the wallet's side."""

    entry_id: int
    transfer_id: int
    kind: TransferKind
    amount: int  # signed: positive credits the wallet, negative debits it
    balance_after: int
    description: str | None
    metadata: dict[str, Any] | None
    refund_of_id: int | None
    idempotency_key: str
    event_at: datetime
    created_at: datetime
    feature: str | None = None  # what a spend bought, from the catalog, and how many
    quantity: int | None = None


@dataclass(frozen=True, slots=True)
class HistoryPage:
    items: list[HistoryItem]
    next_cursor: int | None  # pass as ``before`` for the next (older) page


_history = (
    sa.select(
        entries.c.id,
        entries.c.transfer_id,
        entries.c.kind,
        entries.c.amount,
        entries.c.balance_after,
        transfers.c.description,
        transfers.c.metadata,
        transfers.c.refund_of_id,
        transfers.c.idempotency_key,
        transfers.c.event_at,
        transfers.c.created_at,
        transfers.c.feature,
        transfers.c.quantity,
    )
    .join(transfers, transfers.c.id == entries.c.transfer_id)
    .order_by(entries.c.id.desc())
)


def history(
    conn: Connection,
    *,
    user_id: str,
    limit: int = 50,
    before: int | None = None,
    kinds: Collection[TransferKind] | None = None,
) -> HistoryPage:
    """Newest first. Keyset pagination on the entry id: a wallet's entries are written while
    its row is locked, so ids grow in commit order and pages stay stable under new writes."""
    check_user_id(user_id)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise InvalidArgument("limit", f"must be between 1 and {MAX_PAGE}")
    account_id = conn.execute(
        sa.select(accounts.c.id).where(accounts.c.user_id == user_id)
    ).scalar()
    if account_id is None:
        raise UnknownUser(user_id)
    query = _history.where(entries.c.account_id == account_id).limit(limit + 1)
    if before is not None:
        query = query.where(entries.c.id < before)
    if kinds:
        query = query.where(entries.c.kind.in_([TransferKind(k).value for k in kinds]))
    rows = conn.execute(query).all()
    items = [
        HistoryItem(
            entry_id=row.id,
            transfer_id=row.transfer_id,
            kind=TransferKind(row.kind),
            amount=row.amount,
            balance_after=row.balance_after,
            description=row.description,
            metadata=row.metadata,
            refund_of_id=row.refund_of_id,
            idempotency_key=row.idempotency_key,
            event_at=row.event_at,
            created_at=row.created_at,
            feature=row.feature,
            quantity=row.quantity,
        )
        for row in rows[:limit]
    ]
    return HistoryPage(items=items, next_cursor=items[-1].entry_id if len(rows) > limit else None)


@dataclass(frozen=True, slots=True)
class Transfer:
    id: int
    idempotency_key: str
    kind: TransferKind
    debit_account_id: int
    credit_account_id: int
    amount: int
    description: str | None
    metadata: dict[str, Any] | None
    refund_of_id: int | None
    event_at: datetime
    created_at: datetime


def get_transfer(
    conn: Connection, *, transfer_id: int | None = None, idempotency_key: str | None = None
) -> Transfer:
    """A transfer by its id, or by the idempotency key it was made with (what the app that
    made it knows: its own request id)."""
    if (transfer_id is None) == (idempotency_key is None):
        raise TypeError("give transfer_id or idempotency_key")
    where = (
        transfers.c.id == transfer_id
        if transfer_id is not None
        else transfers.c.idempotency_key == idempotency_key
    )
    row = conn.execute(sa.select(transfers).where(where)).first()
    if row is None:
        raise UnknownTransfer(transfer_id if transfer_id is not None else str(idempotency_key))
    return Transfer(
        id=row.id,
        idempotency_key=row.idempotency_key,
        kind=TransferKind(row.kind),
        debit_account_id=row.debit_account_id,
        credit_account_id=row.credit_account_id,
        amount=row.amount,
        description=row.description,
        metadata=row.metadata,
        refund_of_id=row.refund_of_id,
        event_at=row.event_at,
        created_at=row.created_at,
    )
