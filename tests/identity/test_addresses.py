"""What reaches an account by mail, on SQLite and PostgreSQL: confirming its address,
resetting its password, moving it to another address; each link read from the mail as
the sender writes it, as its owner would follow it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from tests.identity.mailbox import delivered, kinds, last_token, letters, outbox, send
from tests.smtp import SmtpServer
from tokenbank import identity, users
from tokenbank.columns import utcnow
from tokenbank.db import Database
from tokenbank.errors import (
    EmailTaken,
    InvalidArgument,
    InvalidCredentials,
    InvalidEmailLink,
    MixedScriptEmail,
)
from tokenbank.identity import Passwords, links
from tokenbank.identity.models import email_links
from tokenbank.mail import Sender, Smtp, find
from tokenbank.mail.models import outbox as outbox_table
from tokenbank.mail.outbox import letter
from tokenbank.users import emails
from tokenbank.users.models import users as users_table

PASSWORDS = Passwords(memory_kib=1024, passes=1)
PASSWORD = "correct horse battery"
NEW_PASSWORD = "plover trellis quartz"
DAY = timedelta(days=1)
ANN = "ann@example.com"
BOB = "bob@example.com"
VERIFY, RESET, CHANGE = "/verify/", "/password/reset/", "/account/email/"


def _register(db: Database, email: str = ANN, *, verify: bool = True) -> str:
    user_id = identity.register(
        db, email=email, password=PASSWORD, passwords=PASSWORDS, language="en", verify=verify
    )
    assert user_id is not None
    return user_id


def _session(db: Database, email: str = ANN, password: str = PASSWORD) -> str:
    return identity.sign_in(
        db, email=email, password=password, passwords=PASSWORDS, session_ttl=DAY
    )


def _who(db: Database, token: str) -> identity.SignedIn | None:
    with db.read() as conn:
        return identity.session_user(conn, token=token)


def _me(db: Database, email: str = ANN) -> identity.SignedIn:
    me = _who(db, _session(db, email))
    assert me is not None
    return me


def _user(db: Database, user_id: str) -> Any:
    with db.read() as conn:
        return conn.execute(sa.select(users_table).where(users_table.c.id == user_id)).one()


def _links(db: Database) -> list[Any]:
    with db.read() as conn:
        return list(conn.execute(sa.select(email_links).order_by(email_links.c.created_at)))


def _forged(token: str) -> list[str]:
    return [
        token[:-1] + ("A" if token[-1] != "A" else "B"),
        token + "x",
        "",
        "x" * 500,
        token[:10],
        "\u00e9" * 43,
    ]


# --- confirming the address ----------------------------------------------------------------


def test_sign_up_mails_a_link_that_confirms_the_address_once(db: Database) -> None:
    ann = _register(db, " Ann@Example.com ")
    assert kinds(db) == [("verify", "Ann@example.com")]  # the domain as mail servers take it
    assert _user(db, ann).email_verified_at is None
    assert _links(db) == []  # the link is made when the letter is written
    [mail] = delivered(db, "verify")
    assert mail.message["To"] == "Ann@example.com"
    token = mail.token(VERIFY)
    [link] = _links(db)
    assert (link.purpose, link.user_id, link.email) == ("verify", ann, "Ann@Example.com")
    assert link.expires_at - link.created_at == links.LIFETIMES["verify"] == timedelta(days=3)
    me = _me(db, ANN)
    assert not me.email_verified

    for forged in _forged(token):
        with pytest.raises(InvalidEmailLink):
            identity.verify_email(db, token=forged)
    assert identity.verify_email(db, token=token) == ann
    assert _user(db, ann).email_verified_at is not None
    again = _who(db, _session(db, ANN))
    assert again is not None and again.email_verified
    identity.require_verified(again, required=True)
    with pytest.raises(InvalidEmailLink):  # once only
        identity.verify_email(db, token=token)


def test_a_verify_link_is_bound_to_its_purpose(db: Database) -> None:
    _register(db)
    token = last_token(db, "verify", VERIFY)
    with pytest.raises(InvalidEmailLink):
        identity.reset_password(db, token=token, password=NEW_PASSWORD, passwords=PASSWORDS)
    with pytest.raises(InvalidEmailLink):
        identity.confirm_email_change(db, token=token)
    identity.verify_email(db, token=token)  # those refusals did not use it up


def test_a_link_for_an_address_the_account_no_longer_has_is_refused(db: Database) -> None:
    ann = _register(db)
    token = last_token(db, "verify", VERIFY)
    moved = emails.parse("ann@elsewhere.example")
    with db.transaction() as conn:  # the address changes, still unconfirmed
        conn.execute(
            sa.update(users_table)
            .where(users_table.c.id == ann)
            .values(**users.email_columns(moved))
        )
    with pytest.raises(InvalidEmailLink):
        identity.verify_email(db, token=token)
    assert _user(db, ann).email_verified_at is None
    # Nor does a letter asked for the old address get written any more.
    assert identity.request_verification(db, user_id=ann, language="en")
    assert kinds(db)[-1] == ("verify", "ann@elsewhere.example")
    [mail] = delivered(db, "verify")[1:]
    assert identity.verify_email(db, token=mail.token(VERIFY)) == ann
    assert _user(db, ann).email_verified_at is not None


def test_without_verification_the_mail_is_a_welcome_and_the_account_confirmed(
    db: Database,
) -> None:
    ann = _register(db, verify=False)
    assert kinds(db) == [("welcome", ANN)]
    assert _user(db, ann).email_verified_at is not None
    me = _me(db)
    assert me.email_verified
    identity.require_verified(me, required=True)
    [mail] = delivered(db)
    assert "/login" in mail.text and VERIFY not in mail.text
    assert _links(db) == []  # a welcome carries no token
    assert not identity.request_verification(db, user_id=ann, language="en")
    assert kinds(db) == [("welcome", ANN)]


def test_request_verification_only_while_there_is_something_to_confirm(db: Database) -> None:
    ann = _register(db)
    assert identity.request_verification(db, user_id=ann, language="zh-CN")
    assert kinds(db) == [("verify", ANN), ("verify", ANN)]
    assert outbox(db)[-1].language == "zh-CN"
    identity.verify_email(db, token=last_token(db, "verify", VERIFY))
    assert not identity.request_verification(db, user_id=ann, language="en")
    with db.transaction() as conn:
        users.create_user(conn, user_id="host-1")  # no address: nothing to confirm
    assert not identity.request_verification(db, user_id="host-1", language="en")
    assert not identity.request_verification(db, user_id="nobody", language="en")
    assert len(outbox(db)) == 2


def test_a_verify_letter_written_after_confirmation_is_dropped(db: Database) -> None:
    ann = _register(db)
    assert identity.request_verification(db, user_id=ann, language="en")
    first, second = (row.id for row in outbox(db))
    compose = letters(db).compose

    def written(mail_id: int) -> Any:
        with db.read() as conn:
            row = find(conn, mail_id=mail_id)
        return compose(letter(row))

    message = written(first)
    assert message is not None
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    token = str(body.get_content()).split(VERIFY, 1)[1].split()[0]
    identity.verify_email(db, token=token)
    assert written(second) is None
    assert written(first) is None
    outcome = send(db)
    assert (outcome.sent, outcome.dropped) == (0, 2)
    assert {row.status for row in outbox(db)} == {"dropped"}
    assert len(_links(db)) == 1  # only the letter written before


# --- resetting the password ----------------------------------------------------------------


def test_reset_round_trip(db: Database) -> None:
    ann = _register(db)
    sessions = [_session(db), _session(db)]
    # Both return alike; the unknown address gets a row with no account, dropped unsent.
    identity.request_reset(db, email="ANN@example.com", language="en")
    identity.request_reset(db, email="nobody@example.com", language="en")
    with pytest.raises(InvalidArgument):
        identity.request_reset(db, email="not an address", language="en")
    assert [(row.kind, row.to_address, row.user_id) for row in outbox(db)] == [
        ("verify", ANN, ann),
        ("reset", ANN, ann),
        ("reset", "nobody@example.com", None),
    ]

    [mail] = delivered(db, "reset")  # only the known address gets mail
    assert mail.message["To"] == ANN
    assert [row.status for row in outbox(db)] == ["sent", "sent", "dropped"]
    token = mail.token(RESET)
    [link] = [row for row in _links(db) if row.purpose == "reset"]
    assert link.expires_at - link.created_at == links.LIFETIMES["reset"] == timedelta(minutes=30)
    identity.check_reset_link(db, token=token)
    for forged in _forged(token):
        with pytest.raises(InvalidEmailLink):
            identity.check_reset_link(db, token=forged)
    assert _user(db, ann).email_verified_at is None

    assert (
        identity.reset_password(db, token=token, password=NEW_PASSWORD, passwords=PASSWORDS) == ann
    )
    assert all(_who(db, session) is None for session in sessions)  # signed out everywhere
    assert _user(db, ann).email_verified_at is not None  # the link reached the address
    with pytest.raises(InvalidCredentials):
        _session(db, password=PASSWORD)
    assert _who(db, _session(db, password=NEW_PASSWORD)) is not None
    with pytest.raises(InvalidEmailLink):  # once only
        identity.check_reset_link(db, token=token)
    with pytest.raises(InvalidEmailLink):
        identity.reset_password(
            db, token=token, password="another fine passphrase", passwords=PASSWORDS
        )


def test_a_reset_link_expires_after_30_minutes(db: Database) -> None:
    _register(db)
    identity.request_reset(db, email=ANN, language="en")
    token = last_token(db, "reset", RESET)
    [link] = [row for row in _links(db) if row.purpose == "reset"]
    with db.read() as conn:
        links.peek(conn, purpose="reset", token=token, now=link.created_at + timedelta(minutes=29))
        with pytest.raises(InvalidEmailLink):
            links.peek(conn, purpose="reset", token=token, now=link.expires_at)
    with db.transaction() as conn:  # the link was mailed 31 minutes ago
        conn.execute(
            sa.update(email_links)
            .where(email_links.c.id == link.id)
            .values(
                created_at=link.created_at - timedelta(minutes=31),
                expires_at=link.expires_at - timedelta(minutes=31),
            )
        )
    with pytest.raises(InvalidEmailLink):
        identity.check_reset_link(db, token=token)
    with pytest.raises(InvalidEmailLink):
        identity.reset_password(db, token=token, password=NEW_PASSWORD, passwords=PASSWORDS)
    _session(db, password=PASSWORD)  # unchanged


def test_a_reset_link_is_outdated_by_a_change_of_password(db: Database) -> None:
    _register(db)
    identity.request_reset(db, email=ANN, language="en")
    token = last_token(db, "reset", RESET)
    identity.change_password(
        db, signed_in=_me(db), current=PASSWORD, new=NEW_PASSWORD, passwords=PASSWORDS
    )
    with pytest.raises(InvalidEmailLink):
        identity.check_reset_link(db, token=token)
    with pytest.raises(InvalidEmailLink):
        identity.reset_password(
            db, token=token, password="another fine passphrase", passwords=PASSWORDS
        )
    _session(db, password=NEW_PASSWORD)


def test_one_reset_outdates_the_other_links(db: Database) -> None:
    _register(db)
    identity.request_reset(db, email=ANN, language="en")
    identity.request_reset(db, email=ANN, language="en")
    first, second = (mail.token(RESET) for mail in delivered(db, "reset"))
    identity.reset_password(db, token=second, password=NEW_PASSWORD, passwords=PASSWORDS)
    with pytest.raises(InvalidEmailLink):
        identity.reset_password(
            db, token=first, password="another fine passphrase", passwords=PASSWORDS
        )
    _session(db, password=NEW_PASSWORD)


def test_a_reset_link_is_outdated_by_a_change_of_address(db: Database) -> None:
    ann = _register(db)
    identity.request_reset(db, email=ANN, language="en")
    token = last_token(db, "reset", RESET)
    with db.transaction() as conn:
        users.upsert_user(conn, user_id=ann, email="ann@elsewhere.example")
    with pytest.raises(InvalidEmailLink):
        identity.reset_password(db, token=token, password=NEW_PASSWORD, passwords=PASSWORDS)


def test_a_reset_link_resets_only_its_own_account(db: Database) -> None:
    ann, bob = _register(db, ANN), _register(db, BOB)
    ann_session, bob_session = _session(db, ANN), _session(db, BOB)
    identity.request_reset(db, email=ANN, language="en")
    token = last_token(db, "reset", RESET)
    [link] = [row for row in _links(db) if row.purpose == "reset"]
    assert link.user_id == ann
    assert (
        identity.reset_password(db, token=token, password=NEW_PASSWORD, passwords=PASSWORDS) == ann
    )
    assert _who(db, ann_session) is None
    assert _who(db, bob_session) is not None  # Bob is still signed in
    _session(db, ANN, NEW_PASSWORD)
    _session(db, BOB, PASSWORD)  # and keeps his password
    with pytest.raises(InvalidCredentials):
        _session(db, BOB, NEW_PASSWORD)
    assert _user(db, bob).email_verified_at is None
    assert _user(db, ann).email_verified_at is not None


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_tokens_are_stored_only_as_digests(db: Database, smtp_server: SmtpServer) -> None:
    """Delivered through SMTP, as in production: no row keeps a token, only its SHA-256.
    (Without an SMTP server, development keeps each message, link and all, in its row.)"""
    _register(db)
    _register(db, BOB)
    identity.request_reset(db, email=ANN, language="en")
    identity.request_email_change(
        db,
        signed_in=_me(db, BOB),
        email="bob@new.example",
        password=PASSWORD,
        passwords=PASSWORDS,
        language="en",
    )
    sender = Sender(
        db=db,
        compose=letters(db).compose,
        smtp=Smtp.from_url(smtp_server.url, timeout=10),
        domain="tokens.example",
    )
    assert sender.send_due().sent == 5  # and Bob's old address told of the move: no link
    tokens = []
    for received in smtp_server.received:
        for prefix in (VERIFY, RESET, CHANGE):
            if prefix in received.text:
                tokens.append(received.link(prefix).removeprefix(prefix))
    assert len(tokens) == 4
    assert all(len(token) == 43 for token in tokens)  # 256 bits, URL-safe base64
    with db.read() as conn:
        stored = [
            value
            for table in (email_links, outbox_table, users_table)
            for row in conn.execute(sa.select(table))
            for value in row
            if isinstance(value, str)
        ]
        ids = set(conn.execute(sa.select(email_links.c.id)).scalars())
        assert all(row.kept is None for row in conn.execute(sa.select(outbox_table)))
    assert stored
    for token in tokens:
        assert not any(token in value for value in stored)
        assert hashlib.sha256(token.encode()).hexdigest() in ids
    assert len(ids) == 4


# --- moving to another address -------------------------------------------------------------


def test_a_change_of_address_round_trip(db: Database) -> None:
    ann = _register(db)
    identity.verify_email(db, token=last_token(db, "verify", VERIFY))
    before = _user(db, ann)
    identity.request_email_change(
        db,
        signed_in=_me(db),
        email=" Ann@New.example ",
        password=PASSWORD,
        passwords=PASSWORDS,
        language="en",
    )
    assert kinds(db)[-2:] == [
        ("email_change", "Ann@new.example"),  # the link, to the new address
        ("email_change_asked", ANN),  # and word of it to the current one, at once
    ]
    assert outbox(db)[-1].params == {"email": "Ann@new.example"}
    assert _user(db, ann).email == ANN  # nothing moves before the link is followed
    [mail] = delivered(db, "email_change")
    assert mail.message["To"] == "Ann@new.example"
    token = mail.token(CHANGE)
    [link] = [row for row in _links(db) if row.purpose == "email"]
    assert link.expires_at - link.created_at == links.LIFETIMES["email"] == timedelta(days=1)
    for forged in _forged(token):
        with pytest.raises(InvalidEmailLink):
            identity.confirm_email_change(db, token=forged)

    assert identity.confirm_email_change(db, token=token) == ann
    after = _user(db, ann)
    new = emails.parse("Ann@New.example")
    assert (after.email, after.email_canonical, after.email_skeleton) == (
        "Ann@new.example",  # as it was mailed, and confirmed
        "ann@new.example",
        new.skeleton,
    )
    assert after.email_skeleton != before.email_skeleton
    assert (
        after.email_verified_at is not None and after.email_verified_at >= before.email_verified_at
    )
    # The old address is told, with the new one.
    assert kinds(db)[-1] == ("email_changed", ANN)
    assert outbox(db)[-1].params == {"email": "Ann@new.example"}
    [notice] = delivered(db, "email_changed")
    assert notice.message["To"] == ANN and "Ann@new.example" in notice.text
    # The account is found by its new address only.
    _session(db, "ann@new.example")
    with pytest.raises(InvalidCredentials):
        _session(db, ANN)
    with pytest.raises(InvalidEmailLink):  # once only
        identity.confirm_email_change(db, token=token)
    # The old address is free again.
    assert identity.register(
        db, email=ANN, password=PASSWORD, passwords=PASSWORDS, language="en"
    ) not in (None, ann)


def test_an_address_of_another_account_gets_word_of_it_instead(db: Database) -> None:
    ann = _register(db)
    _register(db, "homoglyph@x.com", verify=False)  # confirmed: it holds its look
    for taken in ("HOMOGLYPH@x.com", "hornoglyph@x.com"):  # the same, or a look-alike
        identity.request_email_change(
            db,
            signed_in=_me(db),
            email=taken,
            password=PASSWORD,
            passwords=PASSWORDS,
            language="en",
        )
        assert kinds(db)[-2:] == [("email_in_use", taken), ("email_change_asked", ANN)]
    mails = delivered(db, "email_in_use")
    assert len(mails) == 2 and all(CHANGE not in mail.text for mail in mails)
    assert [row.purpose for row in _links(db)] == ["verify"]  # no link to move
    assert _user(db, ann).email == ANN


def test_a_new_password_voids_a_pending_change_of_address(db: Database) -> None:
    """Someone with the password (or a session) asks to move the account to their own
    address; the owner, told at once, chooses a new password: the move is void."""
    ann = _register(db)
    identity.request_email_change(
        db,
        signed_in=_me(db),
        email="eve@evil.example",
        password=PASSWORD,
        passwords=PASSWORDS,
        language="en",
    )
    [told] = delivered(db, "email_change_asked")
    assert told.to == ANN and "eve@evil.example" in told.text
    [move] = delivered(db, "email_change")
    identity.request_reset(db, email=ANN, language="en")
    [reset] = delivered(db, "reset")
    identity.reset_password(
        db, token=reset.token(RESET), password=NEW_PASSWORD, passwords=PASSWORDS
    )
    with pytest.raises(InvalidEmailLink):
        identity.confirm_email_change(db, token=move.token(CHANGE))
    assert _user(db, ann).email == ANN


def test_a_move_confirmed_voids_the_links_of_every_earlier_request(db: Database) -> None:
    """A mistyped address asked for, then the right one, and the right link followed: the
    mistyped one's link, still unused and unexpired, must not move the account to whoever
    holds that address (nor back and forth between two links)."""
    ann = _register(db)
    for address in ("ann@exmaple.com", "ann@right.example"):
        identity.request_email_change(
            db,
            signed_in=_me(db),
            email=address,
            password=PASSWORD,
            passwords=PASSWORDS,
            language="en",
        )
    typo, right = delivered(db, "email_change")
    assert (typo.to, right.to) == ("ann@exmaple.com", "ann@right.example")
    assert identity.confirm_email_change(db, token=right.token(CHANGE)) == ann
    with pytest.raises(InvalidEmailLink):
        identity.confirm_email_change(db, token=typo.token(CHANGE))
    assert _user(db, ann).email == "ann@right.example"


def test_a_change_of_address_needs_the_password(db: Database) -> None:
    ann = _register(db)
    me = _me(db)
    with pytest.raises(InvalidCredentials):
        identity.request_email_change(
            db,
            signed_in=me,
            email="ann@new.example",
            password="not my password",
            passwords=PASSWORDS,
            language="en",
        )
    with pytest.raises(InvalidArgument):  # the account's own address
        identity.request_email_change(
            db,
            signed_in=me,
            email="ANN@example.com",
            password=PASSWORD,
            passwords=PASSWORDS,
            language="en",
        )
    with pytest.raises(MixedScriptEmail):
        identity.request_email_change(
            db,
            signed_in=me,
            email="\u0430nn@new.example",
            password=PASSWORD,
            passwords=PASSWORDS,
            language="en",
        )
    assert kinds(db) == [("verify", ANN)]
    assert _user(db, ann).email == ANN


def test_confirming_after_another_account_took_the_address_changes_nothing(
    db: Database,
) -> None:
    ann = _register(db)
    identity.request_email_change(
        db,
        signed_in=_me(db),
        email="new@x.com",
        password=PASSWORD,
        passwords=PASSWORDS,
        language="en",
    )
    token = last_token(db, "email_change", CHANGE)
    with db.transaction() as conn:  # meanwhile the host app gives a look-alike to another
        users.create_user(conn, user_id="host-1", email="NEW@x.com")
    before = _user(db, ann)
    mails = len(outbox(db))
    with pytest.raises(EmailTaken):
        identity.confirm_email_change(db, token=token)
    assert _user(db, ann) == before
    assert len(outbox(db)) == mails  # no notice to the old address
    assert _user(db, "host-1").email == "NEW@x.com"
    _session(db, ANN)


def test_email_links_are_swept_once_expired(db: Database) -> None:
    _register(db)
    identity.request_reset(db, email=ANN, language="en")
    send(db)
    now = utcnow()
    with db.transaction() as conn:
        assert identity.sweep(conn, now=now)["email_links"] == 0
        assert identity.sweep(conn, now=now + timedelta(minutes=31))["email_links"] == 1
        assert identity.sweep(conn, now=now + timedelta(days=3, minutes=1))["email_links"] == 1
    assert _links(db) == []
