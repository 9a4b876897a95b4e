"""Wallets: one per user, created on first need, never below zero."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from tokenbank.columns import utcnow
from tokenbank.errors import UnknownUser
from tokenbank.ledger.inputs import check_user_id
from tokenbank.ledger.models import AccountKind, accounts

_insert_wallet = {
    name: dialect.insert(accounts).on_conflict_do_nothing(index_elements=["user_id"])
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}


def open_wallet(conn: Connection, *, user_id: str, now: datetime | None = None) -> int:
    """Return the wallet account id of ``user_id``, creating the wallet if it is new.

    Safe to call any number of times, also concurrently: the unique ``user_id`` decides.
    """
    user_id = check_user_id(user_id)
    conn.execute(
        _insert_wallet[conn.dialect.name],
        {
            "kind": AccountKind.WALLET.value,
            "user_id": user_id,
            "balance": 0,
            "created_at": now or utcnow(),
        },
    )
    return wallet_id(conn, user_id)


def wallet_exists(conn: Connection, *, user_id: str) -> bool:
    query = sa.select(sa.literal(1)).where(accounts.c.user_id == user_id)
    return conn.execute(query).first() is not None


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
