"""Links sent by mail, each a one-time token: confirm an address, reset a password, change
the address. The token is 256 random bits; only its SHA-256 is stored, so the table signs
nobody in if it leaks. One conditional UPDATE uses a link up, so two racing uses cannot
both win; a link is also refused once the account moved on (another address, another
password) since it was sent."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tokenbank.columns import utcnow
from tokenbank.errors import InvalidEmailLink
from tokenbank.identity.models import email_links

Purpose = Literal["verify", "reset", "email"]

#: How long each kind of link can be used.
LIFETIMES: dict[str, timedelta] = {
    "verify": timedelta(days=3),
    "reset": timedelta(minutes=30),
    "email": timedelta(days=1),
}


@dataclass(frozen=True, slots=True)
class Link:
    purpose: str
    user_id: str
    email: str
    password_stamp: str | None


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def password_stamp(password_hash: str | None) -> str:
    """What binds a reset link to the password it replaces: any change of the password
    (this reset, another, a new hash at sign-in) changes it."""
    return hashlib.sha256((password_hash or "").encode()).hexdigest()


def move_stamp(password_hash: str | None, email: str | None) -> str:
    """What binds an address-change link to the account as it was when the link was sent:
    a new password (what a user does who sees a move they did not ask for) or any other
    address since (a later change confirmed first, say) voids it. Otherwise the link of
    a mistyped address, asked for and corrected, could still move the account there."""
    bound = f"{password_hash or ''}\n{email or ''}"
    return hashlib.sha256(bound.encode("utf-8", "surrogatepass")).hexdigest()


def issue(
    conn: Connection,
    *,
    purpose: Purpose,
    user_id: str,
    email: str,
    stamp: str | None = None,
    now: datetime | None = None,
) -> str:
    """A new link's token, for the mail (it is stored only as a digest)."""
    now = now or utcnow()
    token = secrets.token_urlsafe(32)  # 256 bits
    conn.execute(
        sa.insert(email_links).values(
            id=digest(token),
            purpose=purpose,
            user_id=user_id,
            email=email,
            password_stamp=stamp,
            created_at=now,
            expires_at=now + LIFETIMES[purpose],
        )
    )
    return token


def peek(conn: Connection, *, purpose: Purpose, token: str, now: datetime | None = None) -> Link:
    """The link, still unused and unexpired, without using it (the page that asks for a
    new password); ``InvalidEmailLink`` otherwise."""
    if not _plausible(token):
        raise InvalidEmailLink
    row = conn.execute(
        sa.select(email_links).where(
            email_links.c.id == digest(token),
            email_links.c.purpose == purpose,
            email_links.c.used_at.is_(None),
            email_links.c.expires_at > (now or utcnow()),
        )
    ).first()
    if row is None:
        raise InvalidEmailLink
    return Link(row.purpose, row.user_id, row.email, row.password_stamp)


def use(conn: Connection, *, purpose: Purpose, token: str, now: datetime | None = None) -> Link:
    """Use the link up, or ``InvalidEmailLink``. The caller checks that the account has not
    moved on, in the same unit of work (and raises, which rolls the use back)."""
    now = now or utcnow()
    if not _plausible(token):
        raise InvalidEmailLink
    row = conn.execute(
        sa.update(email_links)
        .where(
            email_links.c.id == digest(token),
            email_links.c.purpose == purpose,
            email_links.c.used_at.is_(None),
            email_links.c.expires_at > now,
        )
        .values(used_at=now)
        .returning(*email_links.c)
    ).first()
    if row is None:
        raise InvalidEmailLink
    return Link(row.purpose, row.user_id, row.email, row.password_stamp)


def sweep(conn: Connection, *, now: datetime | None = None) -> int:
    return conn.execute(
        sa.delete(email_links).where(email_links.c.expires_at <= (now or utcnow()))
    ).rowcount


def _plausible(token: object) -> bool:
    return isinstance(token, str) and 20 <= len(token) <= 100 and token.isascii()
