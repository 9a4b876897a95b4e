from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from tokenbank import ledger
from tokenbank.columns import utcnow
from tokenbank.db import atomic
from tokenbank.errors import EmailTaken, InvalidArgument, UnknownUser, UserExists
from tokenbank.ledger.inputs import check_user_id
from tokenbank.users.models import users

_EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f]{1,64}@[^@\s\x00-\x1f\x7f]+\.[^@\s\x00-\x1f\x7f]+$")


@dataclass(frozen=True, slots=True)
class User:
    id: str
    email: str | None
    name: str | None
    created_at: datetime


def _check_email(email: str | None) -> str | None:
    if email is None:
        return None
    email = email.strip().lower()
    if len(email) > 320 or not _EMAIL.match(email):
        raise InvalidArgument("email", "must be an email address")
    return email


def _check_name(name: str | None) -> str | None:
    if name is not None and (len(name) > 200 or not name.isprintable()):
        raise InvalidArgument("name", "must be at most 200 printable characters")
    return name


def create_user(
    conn: Connection,
    *,
    user_id: str,
    email: str | None = None,
    name: str | None = None,
    now: datetime | None = None,
) -> User:
    """Create a user and the wallet their tokens live in."""
    user_id = check_user_id(user_id)
    email = _check_email(email)
    name = _check_name(name)
    now = now or utcnow()
    with atomic(conn):
        if conn.execute(sa.select(users.c.id).where(users.c.id == user_id)).first() is not None:
            raise UserExists(user_id)
        if email is not None and (
            conn.execute(sa.select(users.c.id).where(users.c.email == email)).first() is not None
        ):
            raise EmailTaken(email)
        ledger.open_wallet(conn, user_id=user_id, now=now)
        conn.execute(
            sa.insert(users).values(
                id=user_id, email=email, name=name, created_at=now, updated_at=now
            )
        )
    return User(id=user_id, email=email, name=name, created_at=now)


def get_user(conn: Connection, *, user_id: str) -> User:
    row = conn.execute(sa.select(users).where(users.c.id == user_id)).first()
    if row is None:
        raise UnknownUser(user_id)
    return User(id=row.id, email=row.email, name=row.name, created_at=row.created_at)


def find_users(conn: Connection, *, query: str, limit: int = 20) -> list[User]:
    """Users whose id or email is ``query`` or starts with it (exact matches first)."""
    query = query.strip()
    if not query:
        return []
    prefix = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    lowered = query.lower()
    exact = sa.or_(users.c.id == query, users.c.email == lowered)
    rows = conn.execute(
        sa.select(users)
        .where(
            sa.or_(
                exact,
                users.c.id.like(prefix, escape="\\"),
                users.c.email.like(prefix.lower(), escape="\\"),
            )
        )
        .order_by(sa.case((exact, 0), else_=1), users.c.id)
        .limit(limit)
    )
    return [User(id=r.id, email=r.email, name=r.name, created_at=r.created_at) for r in rows]


_upsert = {
    name: dialect.insert(users)
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}


def upsert_user(
    conn: Connection,
    *,
    user_id: str,
    email: str | None = None,
    name: str | None = None,
    now: datetime | None = None,
) -> User:
    """Create the user (and wallet) if new, else update the fields given; safe to repeat."""
    user_id = check_user_id(user_id)
    email = _check_email(email)
    name = _check_name(name)
    now = now or utcnow()
    with atomic(conn):
        if email is not None:
            owner = conn.execute(sa.select(users.c.id).where(users.c.email == email)).scalar()
            if owner is not None and owner != user_id:
                raise EmailTaken(email)
        ledger.open_wallet(conn, user_id=user_id, now=now)
        insert = _upsert[conn.dialect.name].values(
            id=user_id, email=email, name=name, created_at=now, updated_at=now
        )
        changes = {"updated_at": insert.excluded.updated_at}
        if email is not None:
            changes["email"] = insert.excluded.email
        if name is not None:
            changes["name"] = insert.excluded.name
        conn.execute(insert.on_conflict_do_update(index_elements=["id"], set_=changes))
        return get_user(conn, user_id=user_id)
