"""What reaches an account by mail: confirming its address, resetting its password,
moving it to another address. Each request puts a letter in the outbox and answers the
same whatever the address turns out to be; the link in the letter is made when the letter
is written (``link_token``), so no usable token sits in the outbox."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tokenbank import grants, users
from tokenbank.columns import utcnow
from tokenbank.db import Database
from tokenbank.errors import EmailTaken, InvalidArgument, InvalidCredentials, InvalidEmailLink
from tokenbank.identity import links
from tokenbank.identity.passwords import Passwords, check_password
from tokenbank.identity.service import SignedIn, revoke_sessions, set_password
from tokenbank.mail import outbox
from tokenbank.users import emails
from tokenbank.users.models import users as users_table


class NotNeeded(Exception):
    """A letter whose link has no use any more (the address was confirmed or changed
    meanwhile, the account is gone): it is not sent."""


def _user(conn: Connection, user_id: str | None) -> Any:
    if user_id is None:
        return None
    return conn.execute(sa.select(users_table).where(users_table.c.id == user_id)).first()


def link_token(conn: Connection, *, kind: str, user_id: str | None, to: str) -> str | None:
    """The token for the link a letter of ``kind`` carries (None for one without a link),
    made now; ``NotNeeded`` when the letter has lost its point."""
    if kind not in {"verify", "reset", "email_change"}:
        return None
    row = _user(conn, user_id)
    if row is None:
        raise NotNeeded
    current = None if row.email is None else emails.mailbox(row.email)
    if kind == "verify":
        if current != to or row.email_verified_at is not None:
            raise NotNeeded
        return links.issue(conn, purpose="verify", user_id=row.id, email=row.email)
    if kind == "reset":
        if current != to:
            raise NotNeeded
        stamp = links.password_stamp(row.password_hash)
        return links.issue(conn, purpose="reset", user_id=row.id, email=row.email, stamp=stamp)
    stamp = links.move_stamp(row.password_hash, row.email)
    return links.issue(conn, purpose="email", user_id=row.id, email=to, stamp=stamp)


def _confirm(conn: Connection, row: Any, now: datetime) -> bool:
    """Count the account's address as confirmed, which lets it hold its skeleton; False
    when another confirmed address that looks the same holds it already (the first to
    confirm keeps it)."""
    address = emails.forms(row.email)
    other = conn.execute(
        sa.select(users_table.c.id).where(
            users_table.c.email_skeleton == address.skeleton, users_table.c.id != row.id
        )
    ).first()
    if other is not None:
        return False
    conn.execute(
        sa.update(users_table)
        .where(users_table.c.id == row.id)
        .values(
            email_verified_at=row.email_verified_at or now,
            email_skeleton=address.skeleton,
            updated_at=now,
        )
    )
    return True


# --- confirming an address -----------------------------------------------------------------


def request_verification(db: Database, *, user_id: str, language: str) -> bool:
    """Send the link that confirms the account's address again; False when there is
    nothing to confirm."""
    with db.transaction() as conn:
        row = _user(conn, user_id)
        if row is None or row.email is None or row.email_verified_at is not None:
            return False
        outbox.enqueue(
            conn,
            kind="verify",
            to=emails.mailbox(row.email),
            language=row.language or language,
            user_id=user_id,
        )
    return True


def verify_email(db: Database, *, token: str, trial: grants.Trial | None = None) -> str:
    """Confirm the address the link was sent to; returns the account's id.
    ``InvalidEmailLink`` for a used, expired or unknown link, or one sent to an address the
    account no longer has; ``EmailTaken`` when a look-alike address was confirmed first.
    ``trial``: the free trial, given with the confirmation (not before: an address nobody
    confirmed could be a variant of someone else's, taking their trial)."""
    try:
        with db.transaction() as conn:
            link = links.use(conn, purpose="verify", token=token)
            row = _user(conn, link.user_id)
            if row is None or row.email != link.email:
                raise InvalidEmailLink
            if row.email_verified_at is None:
                if not _confirm(conn, row, utcnow()):
                    raise EmailTaken("the account's address")
                if trial is not None:
                    address = emails.forms(row.email)
                    grants.grant_trial(conn, user_id=row.id, address=address, trial=trial)
    except sa.exc.IntegrityError:  # a look-alike confirmed in the same instant
        raise EmailTaken(link.email) from None
    return link.user_id


# --- resetting a password ------------------------------------------------------------------


def request_reset(db: Database, *, email: str, language: str) -> None:
    """Mail a reset link to the account with this address, if there is one, and nothing
    said about which it was. An unknown address gets an outbox row as well, with no
    account, which the sender drops unsent: both answers do the same work, in the same
    time, and the outbox shows what was asked."""
    try:
        address = emails.forms(email)
    except InvalidArgument:
        raise InvalidArgument("email", "must be an email address") from None
    with db.transaction() as conn:
        row: Any = conn.execute(
            sa.select(users_table).where(users_table.c.email_canonical == address.canonical)
        ).first()
        if row is None or row.email is None:
            to, user_id = address.mailbox, None
        else:
            to, user_id, language = emails.mailbox(row.email), row.id, row.language or language
        outbox.enqueue(conn, kind="reset", to=to, language=language, user_id=user_id)


def _current(conn: Connection, link: links.Link) -> Any:
    """The account behind a reset link, if the link still stands for its password and
    address; ``InvalidEmailLink`` when either changed since it was sent."""
    row = _user(conn, link.user_id)
    if (
        row is None
        or row.email != link.email
        or links.password_stamp(row.password_hash) != link.password_stamp
    ):
        raise InvalidEmailLink
    return row


def check_reset_link(db: Database, *, token: str) -> None:
    """``InvalidEmailLink`` unless the link can still reset a password (the page that asks
    for the new one checks first; nothing is used up)."""
    with db.read() as conn:
        _current(conn, links.peek(conn, purpose="reset", token=token))


def reset_password(
    db: Database,
    *,
    token: str,
    password: str,
    passwords: Passwords,
    trial: grants.Trial | None = None,
) -> str:
    """Set a new password through a reset link, sign out every session of the account, and
    count the address as confirmed (the link reached it), with the free trial that comes
    with a confirmation (``verify_email``); returns the account's id."""
    with db.read() as conn:
        row = _current(conn, links.peek(conn, purpose="reset", token=token))
    check_password(password, personal=(row.email, row.name))
    hashed = passwords.hash(password)  # outside the transaction: it takes a while
    for _ in range(2):  # a look-alike confirmed in the same instant: the next look sees it
        try:
            with db.transaction() as conn:
                row = _current(conn, links.use(conn, purpose="reset", token=token))
                set_password(conn, user_id=row.id, password_hash=hashed)
                revoke_sessions(conn, user_id=row.id)
                # Unless a look-alike was confirmed first: the password is reset anyway.
                if (
                    row.email_verified_at is None
                    and _confirm(conn, row, utcnow())
                    and trial is not None
                ):
                    address = emails.forms(row.email)
                    grants.grant_trial(conn, user_id=row.id, address=address, trial=trial)
            return str(row.id)
        except sa.exc.IntegrityError:
            continue
    raise EmailTaken("the account's address")


# --- moving to another address -------------------------------------------------------------


def request_email_change(
    db: Database,
    *,
    signed_in: SignedIn,
    email: str,
    password: str,
    passwords: Passwords,
    language: str,
) -> None:
    """Mail a link to the new address that moves the account there once followed. An
    address another account has gets a letter saying so instead, and the answer here is
    the same."""
    address = emails.parse(email)
    with db.read() as conn:
        row = _user(conn, signed_in.user_id)
    if row is None:
        raise InvalidCredentials
    if row.password_hash is not None and not passwords.verify(password, row.password_hash)[0]:
        raise InvalidCredentials
    if row.email_canonical == address.canonical:
        raise InvalidArgument("new_email", "is already the account's address")
    with db.transaction() as conn:
        owner = users.holder(conn, address)
        taken = owner is not None and owner.id != signed_in.user_id
        outbox.enqueue(
            conn,
            kind="email_in_use" if taken else "email_change",
            to=address.mailbox,
            language=row.language or language,
            user_id=signed_in.user_id,
        )
        if row.email is not None:  # the current address hears of it now, not once it is done
            outbox.enqueue(
                conn,
                kind="email_change_asked",
                to=emails.mailbox(row.email),
                language=row.language or language,
                user_id=signed_in.user_id,
                params={"email": address.mailbox},
            )


def confirm_email_change(db: Database, *, token: str) -> str:
    """Move the account to the address the link was sent to, confirmed, and tell the old
    address; returns the account's id. ``InvalidEmailLink`` also when the password or the
    account's address changed since the link was sent (``links.move_stamp``);
    ``EmailTaken`` if another account took the address meanwhile."""
    try:
        return _confirm_email_change(db, token)
    except sa.exc.IntegrityError:  # another account took it in the same instant
        raise EmailTaken("the new address") from None


def _confirm_email_change(db: Database, token: str) -> str:
    with db.transaction() as conn:
        link = links.use(conn, purpose="email", token=token)
        row = _user(conn, link.user_id)
        if row is None or links.move_stamp(row.password_hash, row.email) != link.password_stamp:
            raise InvalidEmailLink
        address = emails.parse(link.email)
        owner = users.holder(conn, address)
        if owner is not None and owner.id != row.id:
            raise EmailTaken(address.typed)
        now = utcnow()
        conn.execute(
            sa.update(users_table)
            .where(users_table.c.id == row.id)
            .values(email_verified_at=now, updated_at=now, **users.email_columns(address))
        )
        if row.email is not None and row.email != address.typed:
            outbox.enqueue(
                conn,
                kind="email_changed",
                to=emails.mailbox(row.email),
                language=row.language or "en",
                user_id=row.id,
                params={"email": address.typed},
            )
    return link.user_id
