"""Registration, sign-in, sessions and portal links.

Functions that hash or verify a password take the ``Database`` rather than a connection:
argon2 takes tens of milliseconds, and that work must happen outside any transaction (on
SQLite a write transaction holds the one write lock).
"""

from __future__ import annotations

import secrets
import zoneinfo
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tokenbank import grants, users
from tokenbank.columns import utcnow
from tokenbank.db import Database
from tokenbank.errors import (
    EmailNotVerified,
    EmailTaken,
    InvalidArgument,
    InvalidCredentials,
    InvalidPortalLink,
    UnknownUser,
)
from tokenbank.identity import links
from tokenbank.identity.links import digest
from tokenbank.identity.models import portal_links, rate_limits, sessions
from tokenbank.identity.passwords import Passwords, check_password
from tokenbank.mail import outbox
from tokenbank.users import emails
from tokenbank.users.models import LANGUAGES
from tokenbank.users.models import users as users_table

Via = Literal["password", "registration", "portal"]


@dataclass(frozen=True, slots=True)
class SignedIn:
    """The user behind a live session."""

    session_id: str
    user_id: str
    email: str | None
    name: str | None
    is_admin: bool
    has_password: bool
    expires_at: datetime
    language: str | None = None  # chosen on the account page; None: the browser decides
    time_zone: str | None = None  # IANA; None: the browser's, else UTC
    #: Whether the account's address is confirmed (an account without one has nothing to
    #: confirm: the host app vouches for it).
    email_verified: bool = True


def new_user_id() -> str:
    return "u_" + secrets.token_hex(8)


# --- registration and passwords ---------------------------------------------------------


def register(
    db: Database,
    *,
    email: str,
    password: str,
    passwords: Passwords,
    language: str,
    verify: bool = True,
    name: str | None = None,
    account_language: str | None = None,
    time_zone: str | None = None,
    trial: grants.Trial | None = None,
) -> str | None:
    """Sign up with email and password: the new user's id, or None when the address, or
    one that looks like it, already has an account. Either way a mail goes out (a link to
    confirm the address, or word to the owner that someone tried to sign up with it), and
    the caller must answer both alike: the answer must not tell an attacker which
    addresses have accounts. ``verify``: whether the address must be confirmed before the
    account buys; without, the mail is a welcome. ``language``: the mail's language (the
    pages' at sign-up); ``account_language``: the one the visitor chose, kept for the
    account (None: the browser decides); ``time_zone``: the browser's, kept for the account
    when it is a known IANA zone (an unknown one is dropped, never a reason to refuse).
    ``trial``: the free trial, given here when the address needs no confirming, else
    once it is confirmed (``verify_email``)."""
    # Every refusal comes before the address is looked up: one that came after would
    # tell a new address from a taken one.
    address = emails.parse(email)
    name = users.check_name(name)
    if account_language is not None and account_language not in LANGUAGES:
        raise InvalidArgument("language", f"must be one of {', '.join(LANGUAGES)}")
    check_password(password, personal=(address.typed, name))
    hashed = passwords.hash(password)
    # A registration racing this one for the address: look again. It shows as the unique
    # index refusing the row, or (its commit seen by create_user's own look) EmailTaken.
    for _ in range(2):
        try:
            with db.transaction() as conn:
                return _register(
                    conn,
                    address=address,
                    hashed=hashed,
                    language=language,
                    verify=verify,
                    name=name,
                    account_language=account_language,
                    time_zone=time_zone if known_time_zone(time_zone) else None,
                    trial=None if verify else trial,
                )
        except (sa.exc.IntegrityError, EmailTaken):
            continue
    # Still racing: the address is taken by one of them, which mails it. An error here
    # would tell the address from a new one, so the answer is the same.
    return None


def _register(
    conn: Connection,
    *,
    address: users.Address,
    hashed: str,
    language: str,
    verify: bool,
    name: str | None,
    account_language: str | None,
    time_zone: str | None,
    trial: grants.Trial | None,
) -> str | None:
    owner = users.holder(conn, address)
    if owner is not None:
        # The same address (as its owner keeps it) or a look-alike of it (to whoever typed
        # it: the look-alike's owner, or someone trying the owner's name).
        same = emails.canonical(owner.email or "") == address.canonical
        outbox.enqueue(
            conn,
            kind="registered_again" if same else "look_alike",
            to=emails.mailbox(owner.email) if same and owner.email else address.mailbox,
            language=(owner.language if same else None) or language,
            user_id=owner.id if same else None,
        )
        return None
    user = users.create_user(
        conn, user_id=new_user_id(), email=address.typed, name=name, email_verified=not verify
    )
    set_password(conn, user_id=user.id, password_hash=hashed)
    if account_language is not None:
        set_language(conn, user_id=user.id, language=account_language)
    if time_zone is not None:
        set_time_zone(conn, user_id=user.id, time_zone=time_zone)
    if trial is not None:
        grants.grant_trial(conn, user_id=user.id, address=address, trial=trial)
    outbox.enqueue(
        conn,
        kind="verify" if verify else "welcome",
        to=address.mailbox,
        language=language,
        user_id=user.id,
    )
    return user.id


def sign_in(
    db: Database, *, email: str, password: str, passwords: Passwords, session_ttl: timedelta
) -> str:
    """A new session token, or ``InvalidCredentials`` (the same for an unknown email, and
    in about the same time: an unknown one is checked against a decoy hash)."""
    canonical = emails.canonical(email)
    row = None
    if canonical is not None:
        with db.read() as conn:
            row = conn.execute(
                sa.select(users_table.c.id, users_table.c.password_hash).where(
                    users_table.c.email_canonical == canonical
                )
            ).first()
    matches, rehashed = passwords.verify(password, None if row is None else row.password_hash)
    if row is None or not matches:
        raise InvalidCredentials
    with db.transaction() as conn:
        if rehashed is not None:
            set_password(conn, user_id=row.id, password_hash=rehashed)
        return open_session(conn, user_id=row.id, via="password", ttl=session_ttl)


def change_password(
    db: Database, *, signed_in: SignedIn, current: str, new: str, passwords: Passwords
) -> int:
    """Set a new password and sign out every other session; returns how many were revoked.

    A user who has no password yet (signed in through a portal link) sets one without it.
    """
    if signed_in.has_password:
        with db.read() as conn:
            stored = conn.execute(
                sa.select(users_table.c.password_hash).where(users_table.c.id == signed_in.user_id)
            ).scalar()
        if not passwords.verify(current, stored)[0]:
            raise InvalidCredentials
    check_password(new, personal=(signed_in.email, signed_in.name), field="new_password")
    hashed = passwords.hash(new)
    with db.transaction() as conn:
        set_password(conn, user_id=signed_in.user_id, password_hash=hashed)
        return revoke_sessions(conn, user_id=signed_in.user_id, keep=signed_in.session_id)


def require_verified(signed_in: SignedIn, *, required: bool) -> None:
    """``EmailNotVerified`` for an account that must confirm its address before it buys."""
    if required and not signed_in.email_verified:
        raise EmailNotVerified


def set_password(conn: Connection, *, user_id: str, password_hash: str) -> None:
    _update_user(conn, user_id, password_hash=password_hash, updated_at=utcnow())


def set_admin(conn: Connection, *, user_id: str, admin: bool) -> None:
    _update_user(conn, user_id, is_admin=admin, updated_at=utcnow())


def known_time_zone(name: str | None) -> bool:
    """Whether ``name`` is an IANA time zone this system knows ("Asia/Shanghai")."""
    return name is not None and name in available_time_zones()


#: Names a system's zone database may list that are not zones of a place: "localtime" is
#: the server's own zone, whatever it is; the others are files of the database itself.
NOT_ZONES = frozenset({"localtime", "posixrules", "Factory", "leapseconds", "tzdata.zi"})


@cache
def available_time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones()) - NOT_ZONES


@cache
def time_zone_names() -> tuple[str, ...]:
    """Every IANA zone, sorted, for a menu (the "Etc/GMT+5" kind and legacy aliases left
    out: their signs read backwards, and every place has a proper name)."""
    places = sorted(
        name
        for name in available_time_zones()
        if "/" in name and not name.startswith(("Etc/", "SystemV/", "US/", "posix", "right"))
    )
    return (*places, "UTC")


def set_time_zone(conn: Connection, *, user_id: str, time_zone: str | None) -> None:
    """The time zone of the user's pages; None goes back to the browser's."""
    if time_zone is not None and not known_time_zone(time_zone):
        raise InvalidArgument("time_zone", "must be an IANA time zone, such as Asia/Shanghai")
    _update_user(conn, user_id, time_zone=time_zone, updated_at=utcnow())


def set_language(conn: Connection, *, user_id: str, language: str | None) -> None:
    """The language of the user's pages; None goes back to the browser's preference."""
    if language is not None and language not in LANGUAGES:
        raise InvalidArgument("language", f"must be one of {', '.join(LANGUAGES)}")
    _update_user(conn, user_id, language=language, updated_at=utcnow())


def _update_user(conn: Connection, user_id: str, **values: object) -> None:
    updated = conn.execute(
        sa.update(users_table).where(users_table.c.id == user_id).values(**values)
    )
    if updated.rowcount != 1:
        raise UnknownUser(user_id)


# --- sessions ----------------------------------------------------------------------------


def open_session(
    conn: Connection, *, user_id: str, via: Via, ttl: timedelta, now: datetime | None = None
) -> str:
    """A new session; returns the token for the cookie (only its digest is stored)."""
    now = now or utcnow()
    token = secrets.token_urlsafe(32)
    conn.execute(
        sa.insert(sessions).values(
            id=digest(token), user_id=user_id, via=via, created_at=now, expires_at=now + ttl
        )
    )
    return token


def session_user(conn: Connection, *, token: str, now: datetime | None = None) -> SignedIn | None:
    """The signed-in user for a cookie token, or None when it is unknown, expired or revoked."""
    if not token or len(token) > 100:
        return None
    row = conn.execute(
        sa.select(
            sessions.c.id,
            sessions.c.expires_at,
            users_table.c.id.label("user_id"),
            users_table.c.email,
            users_table.c.name,
            users_table.c.is_admin,
            users_table.c.password_hash.is_not(None).label("has_password"),
            users_table.c.language,
            users_table.c.time_zone,
            users_table.c.email_verified_at,
        )
        .join(users_table, users_table.c.id == sessions.c.user_id)
        .where(
            sessions.c.id == digest(token),
            sessions.c.revoked_at.is_(None),
            sessions.c.expires_at > (now or utcnow()),
        )
    ).first()
    if row is None:
        return None
    return SignedIn(
        session_id=row.id,
        user_id=row.user_id,
        email=row.email,
        name=row.name,
        is_admin=bool(row.is_admin),
        has_password=bool(row.has_password),
        expires_at=row.expires_at,
        language=row.language,
        time_zone=row.time_zone,
        email_verified=row.email is None or row.email_verified_at is not None,
    )


def revoke_session(conn: Connection, *, session_id: str, now: datetime | None = None) -> None:
    conn.execute(
        sa.update(sessions)
        .where(sessions.c.id == session_id, sessions.c.revoked_at.is_(None))
        .values(revoked_at=now or utcnow())
    )


def revoke_sessions(
    conn: Connection, *, user_id: str, keep: str | None = None, now: datetime | None = None
) -> int:
    """Sign the user out everywhere (but the session ``keep``); returns how many ended."""
    query = sa.update(sessions).where(
        sessions.c.user_id == user_id, sessions.c.revoked_at.is_(None)
    )
    if keep is not None:
        query = query.where(sessions.c.id != keep)
    return conn.execute(query.values(revoked_at=now or utcnow())).rowcount


# --- portal links ------------------------------------------------------------------------


def check_next_path(path: object) -> str:
    """Only a path on this site: never another origin (an open redirect)."""
    if (
        not isinstance(path, str)
        or not path.startswith("/")
        or path.startswith("//")
        or "\\" in path
        or len(path) > 500
        or not path.isprintable()
    ):
        raise InvalidArgument("return_path", "must be a path on this site, such as /dashboard")
    return path


def create_portal_link(
    conn: Connection, *, user_id: str, next_path: str, ttl: timedelta, now: datetime | None = None
) -> tuple[str, datetime]:
    """A one-time token that signs ``user_id`` in; returns it and when it expires."""
    next_path = check_next_path(next_path)
    users.get_user(conn, user_id=user_id)  # UnknownUser if there is none
    now = now or utcnow()
    token = secrets.token_urlsafe(32)
    conn.execute(
        sa.insert(portal_links).values(
            id=digest(token),
            user_id=user_id,
            next_path=next_path,
            created_at=now,
            expires_at=now + ttl,
        )
    )
    return token, now + ttl


def redeem_portal_link(
    conn: Connection, *, token: str, now: datetime | None = None
) -> tuple[str, str]:
    """Use the link up: returns its user and path. A second use, a forged or an expired
    token is ``InvalidPortalLink``; one conditional UPDATE decides, so two racing uses
    cannot both win."""
    now = now or utcnow()
    if not token or len(token) > 100:
        raise InvalidPortalLink
    row = conn.execute(
        sa.update(portal_links)
        .where(
            portal_links.c.id == digest(token),
            portal_links.c.used_at.is_(None),
            portal_links.c.expires_at > now,
        )
        .values(used_at=now)
        .returning(portal_links.c.user_id, portal_links.c.next_path)
    ).first()
    if row is None:
        raise InvalidPortalLink
    return row.user_id, row.next_path


def sweep(conn: Connection, *, now: datetime | None = None) -> dict[str, int]:
    """Delete what can no longer be used: expired links, ended sessions, old counters."""
    now = now or utcnow()
    return {
        "portal_links": conn.execute(
            sa.delete(portal_links).where(portal_links.c.expires_at <= now)
        ).rowcount,
        "sessions": conn.execute(
            sa.delete(sessions).where(
                sa.or_(sessions.c.expires_at <= now, sessions.c.revoked_at.is_not(None))
            )
        ).rowcount,
        "email_links": links.sweep(conn, now=now),
        "rate_limits": conn.execute(
            sa.delete(rate_limits).where(rate_limits.c.expires_at <= now)
        ).rowcount,
    }
