"""Which passwords may be chosen: 8 to 128 characters, not easy to guess (10^8 guesses by
zxcvbn's estimate) and not made of the user's own address or name; at registration, on a
change and on a reset alike, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from zxcvbn import zxcvbn

from tests.identity.mailbox import kinds, last_token
from tokenbank import identity
from tokenbank.db import Database
from tokenbank.errors import InvalidArgument, WeakPassword
from tokenbank.identity import Passwords
from tokenbank.identity.passwords import (
    MAX_LENGTH,
    MIN_GUESSES,
    MIN_LENGTH,
    check_password,
)
from tokenbank.users.models import users as users_table

PASSWORDS = Passwords(memory_kib=1024, passes=1)
STRONG = "correct horse battery"
DAY = timedelta(days=1)
EMAIL = "annelise.kowalski@example.com"


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("password123", "common"),
        ("1234567890", "common"),  # in the leaked-password lists before it is a sequence
        ("qwertyuiop", "common"),  # and before it is a row of the keyboard
        ("iloveyou", "common"),
        ("dragonfly", "common"),  # an English word
        ("asdfghjkl;", "keyboard"),
        ("aaaaaaaaaaaa", "repeat"),
        ("abcabcabcabc", "repeat"),
        ("hijklmnop", "sequence"),
        ("98765432", "sequence"),
        ("19841231", "date"),
        ("1990-12-31", "date"),
        ("zebra#9q", "common"),  # a word and three random characters
    ],
)
def test_easy_passwords_are_refused_with_their_reason(password: str, reason: str) -> None:
    with pytest.raises(WeakPassword) as refused:
        check_password(password)
    assert refused.value.reason == reason
    assert reason in WeakPassword.REASONS
    assert refused.value.field == "password"
    assert isinstance(refused.value, InvalidArgument)


@pytest.mark.parametrize(
    "password",
    [
        "kowalski1990",
        "annelise2024!",
        "AnneliseKowalski",
        "annelise.kowalski",  # the name before the @ whole
        "Annelise.Kowalski2024",
        "annelise.kowalski@example.com",
        "annelise_kowalski",  # another separator
        "Kowalski-Annelise",  # another order
        "annelise.kowalski@example.com1",
    ],
)
def test_a_password_made_of_the_users_address_is_personal(password: str) -> None:
    with pytest.raises(WeakPassword) as refused:
        check_password(password, personal=(EMAIL, None))
    assert refused.value.reason == "personal"


def test_the_users_name_counts_too() -> None:
    check_password("wilhelmina zeppelin", personal=(EMAIL,))  # strong for anyone else
    with pytest.raises(WeakPassword) as refused:
        check_password("wilhelmina zeppelin", personal=(EMAIL, "Wilhelmina Zeppelin"))
    assert refused.value.reason == "personal"


@pytest.mark.parametrize(
    "password",
    [
        STRONG,
        "plover trellis quartz",
        "Tr0ub4dor&3",
        "k7#Qz!v9L",
        "\u6cb3\u6d41 \u5c71\u5cf0 \u6d77\u6d0b 42",
    ],
)
def test_strong_passwords_are_accepted(password: str) -> None:
    assert check_password(password, personal=(EMAIL, "Ann")) == password
    assert zxcvbn(password)["guesses"] >= MIN_GUESSES


def test_length_bounds() -> None:
    assert (MIN_LENGTH, MAX_LENGTH) == (8, 128)
    for too_short in ("", "k7#Qz!v", "\u6cb3" * 7):
        with pytest.raises(InvalidArgument) as refused:
            check_password(too_short)
        assert not isinstance(refused.value, WeakPassword)
        assert refused.value.field == "password"
    # The shortest password that may be chosen is 8 random characters: 10^8 guesses.
    assert check_password("k7#Qz!v9") == "k7#Qz!v9"
    assert check_password("k7#Qz!v9L") == "k7#Qz!v9L"
    longest = (STRONG + " ") * 5 + "x" * (MAX_LENGTH - len(STRONG + " ") * 5)
    assert len(longest) == MAX_LENGTH
    assert check_password(longest) == longest
    for too_long in (longest + "y", "k7#Qz!v9L" * 100):
        with pytest.raises(InvalidArgument) as refused:
            check_password(too_long)
        assert not isinstance(refused.value, WeakPassword)
        assert refused.value.field == "password"
    with pytest.raises(InvalidArgument) as refused:
        check_password("k7#Qz", field="new_password")
    assert refused.value.field == "new_password"


@pytest.mark.parametrize("value", [None, 123456789, b"correct horse battery"])
def test_what_is_no_text_is_refused(value: object) -> None:
    with pytest.raises(InvalidArgument):
        check_password(value)


def test_hashing_refuses_what_is_too_long_or_short() -> None:
    for bad in ("short", "x" * 129):
        with pytest.raises(InvalidArgument):
            PASSWORDS.hash(bad)


# --- where passwords are chosen --------------------------------------------------------------


def _register(db: Database, password: str, email: str = EMAIL) -> str | None:
    return identity.register(db, email=email, password=password, passwords=PASSWORDS, language="en")


def _users(db: Database) -> int:
    with db.read() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(users_table)).scalar_one())


@pytest.mark.parametrize(
    ("password", "reason"),
    [("password123", "common"), ("qwertyuiop", "common"), ("kowalski1990", "personal")],
)
def test_registration_refuses_a_weak_password(db: Database, password: str, reason: str) -> None:
    with pytest.raises(WeakPassword) as refused:
        _register(db, password)
    assert (refused.value.reason, refused.value.field) == (reason, "password")
    with pytest.raises(InvalidArgument, match="password"):
        _register(db, "x" * 129)
    assert _users(db) == 0 and kinds(db) == []  # no account, no mail
    assert _register(db, STRONG) is not None


def test_registration_counts_the_name_as_personal(db: Database) -> None:
    with pytest.raises(WeakPassword) as refused:
        identity.register(
            db,
            email="wz@example.com",
            password="wilhelmina zeppelin",
            passwords=PASSWORDS,
            language="en",
            name="Wilhelmina Zeppelin",
        )
    assert refused.value.reason == "personal"


def _signed_in(db: Database, name: str | None = None) -> identity.SignedIn:
    user_id = identity.register(
        db, email=EMAIL, password=STRONG, passwords=PASSWORDS, language="en", name=name
    )
    assert user_id is not None
    with db.transaction() as conn:
        token = identity.open_session(conn, user_id=user_id, via="password", ttl=DAY)
        me = identity.session_user(conn, token=token)
    assert me is not None
    return me


def test_a_change_of_password_refuses_a_weak_one(db: Database) -> None:
    me = _signed_in(db, name="Wilhelmina Zeppelin")
    for weak, reason in (
        ("password123", "common"),
        ("kowalski1990", "personal"),
        ("wilhelmina zeppelin", "personal"),
    ):
        with pytest.raises(WeakPassword) as refused:
            identity.change_password(
                db, signed_in=me, current=STRONG, new=weak, passwords=PASSWORDS
            )
        assert (refused.value.reason, refused.value.field) == (reason, "new_password")
    with pytest.raises(InvalidArgument) as too_short:
        identity.change_password(db, signed_in=me, current=STRONG, new="short", passwords=PASSWORDS)
    assert too_short.value.field == "new_password"
    # Nothing changed: the old password still signs in.
    identity.sign_in(db, email=EMAIL, password=STRONG, passwords=PASSWORDS, session_ttl=DAY)
    identity.change_password(
        db, signed_in=me, current=STRONG, new="plover trellis quartz", passwords=PASSWORDS
    )
    identity.sign_in(
        db, email=EMAIL, password="plover trellis quartz", passwords=PASSWORDS, session_ttl=DAY
    )


def test_a_reset_refuses_a_weak_password_and_the_link_still_works(db: Database) -> None:
    _signed_in(db)
    identity.request_reset(db, email=EMAIL, language="en")
    token = last_token(db, "reset", "/password/reset/")
    for weak, reason in (("password123", "common"), ("kowalski1990", "personal")):
        with pytest.raises(WeakPassword) as refused:
            identity.reset_password(db, token=token, password=weak, passwords=PASSWORDS)
        assert refused.value.reason == reason
    with pytest.raises(InvalidArgument):
        identity.reset_password(db, token=token, password="x" * 129, passwords=PASSWORDS)
    identity.check_reset_link(db, token=token)  # not used up by the refusals
    identity.sign_in(db, email=EMAIL, password=STRONG, passwords=PASSWORDS, session_ttl=DAY)
    identity.reset_password(db, token=token, password="plover trellis quartz", passwords=PASSWORDS)
    identity.sign_in(
        db, email=EMAIL, password="plover trellis quartz", passwords=PASSWORDS, session_ttl=DAY
    )
