from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from tokenbank import ledger
from tokenbank.columns import utcnow
from tokenbank.db import atomic
from tokenbank.errors import EmailTaken, InvalidArgument, UnknownUser, UserExists
from tokenbank.ledger.inputs import check_user_id
from tokenbank.users import emails
from tokenbank.users.emails import Address
from tokenbank.users.models import users


@dataclass(frozen=True, slots=True)
class User:
    id: str
    email: str | None
    name: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Upsert:
    """What ``upsert_user`` did: the user as they are now, and the address it gave a user
    who had none (a new user's, or an existing user's first), when it did: the moment a
    new person's trial is given (``grants.grant_trial``)."""

    user: User
    first_address: Address | None


def _check_email(email: str | None) -> Address | None:
    return None if email is None else emails.parse(email)


def holder(conn: Connection, address: Address) -> Any:
    """The user whose address is ``address`` (same canonical form) or looks like it (same
    skeleton, held by confirmed addresses only): their id, the address mail reaches them
    at and their language."""
    return conn.execute(
        sa.select(users.c.id, users.c.email, users.c.language)
        .where(
            sa.or_(
                users.c.email_canonical == address.canonical,
                users.c.email_skeleton == address.skeleton,
            )
        )
        .order_by(sa.case((users.c.email_canonical == address.canonical, 0), else_=1))
        .limit(1)
    ).first()


def email_columns(address: Address | None, *, confirmed: bool = True) -> dict[str, str | None]:
    """The columns of an address. Only a confirmed one holds its skeleton: an address
    nobody confirmed must not keep the owner of a look-alike from signing up."""
    if address is None:
        return {"email": None, "email_canonical": None, "email_skeleton": None}
    return {
        "email": address.typed,
        "email_canonical": address.canonical,
        "email_skeleton": address.skeleton if confirmed else None,
    }


def check_name(name: str | None) -> str | None:
    """A display name: up to 200 characters, emoji sequences (joiners) welcome, but no
    control characters or bidirectional overrides."""
    if name is not None and (
        len(name) > 200
        or any(unicodedata.category(c) in {"Cc", "Cs", "Co", "Cn", "Zl", "Zp"} for c in name)
        or any(c in emails.BIDI_CONTROLS for c in name)
    ):
        raise InvalidArgument("name", "must be at most 200 characters, none of them a control")
    return name


def create_user(
    conn: Connection,
    *,
    user_id: str,
    email: str | None = None,
    name: str | None = None,
    email_verified: bool = True,
    now: datetime | None = None,
) -> User:
    """Create a user and the wallet their tokens live in. ``email_verified``: whether the
    address is known to be theirs (the host app vouches for the users it creates; one who
    signs up on the pages confirms it by a link)."""
    user_id = check_user_id(user_id)
    address = _check_email(email)
    name = check_name(name)
    now = now or utcnow()
    with atomic(conn):
        if conn.execute(sa.select(users.c.id).where(users.c.id == user_id)).first() is not None:
            raise UserExists(user_id)
        if address is not None and holder(conn, address) is not None:
            raise EmailTaken(address.typed)
        ledger.open_wallet(conn, user_id=user_id, now=now)
        conn.execute(
            sa.insert(users).values(
                id=user_id,
                name=name,
                created_at=now,
                updated_at=now,
                email_verified_at=now if address is not None and email_verified else None,
                **email_columns(address, confirmed=email_verified),
            )
        )
    typed = None if address is None else address.typed
    return User(id=user_id, email=typed, name=name, created_at=now)


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
    canonical = emails.canonical(query)
    # Text that is no address has no canonical form, and ``== None`` would be ``IS NULL``:
    # every user without an address listed first as an exact match, the table scanned.
    exact = (
        users.c.id == query
        if canonical is None
        else sa.or_(users.c.id == query, users.c.email_canonical == canonical)
    )
    rows = conn.execute(
        sa.select(users)
        .where(
            sa.or_(
                exact,
                users.c.id.like(prefix, escape="\\"),
                sa.func.lower(users.c.email).like(prefix.lower(), escape="\\"),
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
) -> Upsert:
    """Create the user (and wallet) if new, else update the fields given; safe to repeat."""
    user_id = check_user_id(user_id)
    address = _check_email(email)
    name = check_name(name)
    now = now or utcnow()
    with atomic(conn):
        first_address = None
        if address is not None:
            owner = holder(conn, address)
            if owner is not None and owner.id != user_id:
                raise EmailTaken(address.typed)
            had = conn.execute(
                sa.select(users.c.email_canonical).where(users.c.id == user_id)
            ).first()
            if had is None or had.email_canonical is None:
                first_address = address
        ledger.open_wallet(conn, user_id=user_id, now=now)
        insert = _upsert[conn.dialect.name].values(
            id=user_id,
            name=name,
            created_at=now,
            updated_at=now,
            email_verified_at=None if address is None else now,
            **email_columns(address),
        )
        changes = {"updated_at": insert.excluded.updated_at}
        if address is not None:
            for column in ("email", "email_canonical", "email_skeleton"):
                changes[column] = insert.excluded[column]
            # The host app vouches for the address it sets; one it had already stays as
            # confirmed as it was.
            changes["email_verified_at"] = sa.case(
                (
                    users.c.email_canonical == insert.excluded.email_canonical,
                    sa.func.coalesce(users.c.email_verified_at, insert.excluded.email_verified_at),
                ),
                else_=insert.excluded.email_verified_at,
            )
        if name is not None:
            changes["name"] = insert.excluded.name
        conn.execute(insert.on_conflict_do_update(index_elements=["id"], set_=changes))
        return Upsert(user=get_user(conn, user_id=user_id), first_address=first_address)
