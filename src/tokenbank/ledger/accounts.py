"""Wallets: one per user, created on first need, never below zero."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from tokenbank.columns import utcnow
from tokenbank.ledger.journal import check_user_id, wallet_id
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
