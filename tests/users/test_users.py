"""The users service on SQLite and PostgreSQL: a user and their wallet come and go together,
ids and emails are checked, an email belongs to one user."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from tokenbank import ledger, users
from tokenbank.db import Database
from tokenbank.users.models import users as users_table


def _row(db: Database, user_id: str) -> Any:
    with db.read() as conn:
        return conn.execute(sa.select(users_table).where(users_table.c.id == user_id)).one()


def test_creating_a_user_opens_their_wallet(db: Database) -> None:
    with db.transaction(wallet="ann") as conn:
        user = users.create_user(conn, user_id="ann", email=" Ann@Example.com ", name="Ann")
        balance = ledger.balance(conn, user_id="ann")
    # The address is kept as typed (trimmed); it is looked up by its canonical form.
    assert (user.id, user.email, user.name) == ("ann", "Ann@Example.com", "Ann")
    assert balance.balance == 0
    row = _row(db, "ann")
    assert (row.email, row.email_canonical) == ("Ann@Example.com", "ann@example.com")
    assert row.email_skeleton is not None
    assert row.email_verified_at is not None  # the host app vouches for it


def test_a_user_without_an_email_has_no_forms(db: Database) -> None:
    with db.transaction() as conn:
        users.create_user(conn, user_id="ann")
    row = _row(db, "ann")
    assert (row.email, row.email_canonical, row.email_skeleton, row.email_verified_at) == (
        None,
        None,
        None,
        None,
    )


def test_a_created_user_may_still_have_to_confirm(db: Database) -> None:
    with db.transaction() as conn:
        users.create_user(conn, user_id="ann", email="ann@example.com", email_verified=False)
    assert _row(db, "ann").email_verified_at is None


def test_a_user_id_and_an_email_are_taken_once(db: Database) -> None:
    with db.transaction() as conn:
        users.create_user(conn, user_id="ann", email="ann@example.com")
    with pytest.raises(users.UserExists), db.transaction() as conn:
        users.create_user(conn, user_id="ann")
    with pytest.raises(users.EmailTaken), db.transaction() as conn:
        users.create_user(conn, user_id="bob", email="ANN@example.com")
    with pytest.raises(users.EmailTaken), db.transaction() as conn:
        users.upsert_user(conn, user_id="bob", email="ann@example.com")
    with pytest.raises(users.EmailTaken), db.transaction() as conn:
        users.upsert_user(conn, user_id="bob", email="ANN@EXAMPLE.COM")
    with db.read() as conn:
        assert [u.id for u in users.find_users(conn, query="bob")] == []


def test_upsert_creates_then_updates(db: Database) -> None:
    with db.transaction() as conn:
        created = users.upsert_user(conn, user_id="ann", email=None, name=None)
    assert created.first_address is None  # no address yet
    with db.transaction() as conn:
        done = users.upsert_user(conn, user_id="ann", email="ann@example.com", name="A")
    updated = done.user
    with db.read() as conn:
        assert users.get_user(conn, user_id="ann") == updated
    assert (updated.email, updated.name) == ("ann@example.com", "A")
    # The user's first address: the moment a trial is given.
    assert done.first_address is not None
    assert done.first_address.canonical == "ann@example.com"
    first = _row(db, "ann")
    assert first.email_verified_at is not None
    with db.transaction() as conn:  # the same address in other letters: still confirmed
        again = users.upsert_user(conn, user_id="ann", email="Ann@Example.com")
    assert (again.user.email, again.user.name) == ("Ann@Example.com", "A")
    assert again.first_address is None
    row = _row(db, "ann")
    assert (row.email_canonical, row.email_verified_at) == (
        "ann@example.com",
        first.email_verified_at,
    )
    with db.transaction() as conn:  # another address, vouched for anew
        moved = users.upsert_user(conn, user_id="ann", email="ann@elsewhere.example")
    assert moved.first_address is None  # not the first
    row = _row(db, "ann")
    assert row.email_canonical == "ann@elsewhere.example"
    assert row.email_verified_at is not None and row.email_verified_at >= first.email_verified_at


@pytest.mark.parametrize(
    ("field", "values"),
    [
        ("user_id", {"user_id": "", "email": None}),
        ("user_id", {"user_id": "a b", "email": None}),
        ("user_id", {"user_id": "x" * 256, "email": None}),
        ("email", {"user_id": "ann", "email": "not an email"}),
        ("name", {"user_id": "ann", "email": None, "name": "n" * 201}),
    ],
)
def test_bad_values_are_refused_by_field(
    db: Database, field: str, values: dict[str, str | None]
) -> None:
    with pytest.raises(ledger.InvalidArgument) as refused, db.transaction() as conn:
        users.create_user(conn, **values)  # type: ignore[arg-type]
    assert refused.value.field == field


def test_an_unknown_user_is_not_found(db: Database) -> None:
    with pytest.raises(ledger.UnknownUser), db.read() as conn:
        users.get_user(conn, user_id="nobody")


def test_users_are_found_by_id_or_email(db: Database) -> None:
    with db.transaction() as conn:
        users.create_user(conn, user_id="ann", email="ann@example.com")
        users.create_user(conn, user_id="bob", email="bob@example.com")
    with db.read() as conn:
        assert [u.id for u in users.find_users(conn, query="ann@example.com")] == ["ann"]
        assert [u.id for u in users.find_users(conn, query="bob")] == ["bob"]
        assert [u.id for u in users.find_users(conn, query=" ANN@example.com ")] == ["ann"]
        assert [u.id for u in users.find_users(conn, query="an\u200bn@example.com")] == ["ann"]
        assert [u.id for u in users.find_users(conn, query="")] == []


@pytest.mark.parametrize("query", ["ca", "carl", "nobody", "x y", "%", "_", "an", "bob"])
def test_a_search_finds_only_users_it_names(db: Database, query: str) -> None:
    """Text that is no address has no canonical form (None); compared with ``==`` that
    would be ``IS NULL``, listing every user without an address as an exact match."""
    with db.transaction() as conn:
        for user_id in ("carl", "dee", "eve"):
            users.create_user(conn, user_id=user_id)
        users.create_user(conn, user_id="ann", email="ann@example.com")
    with db.read() as conn:
        found = users.find_users(conn, query=query)
    expected = sorted(
        u
        for u, email in [("ann", "ann@example.com"), ("carl", ""), ("dee", ""), ("eve", "")]
        if u.startswith(query) or email.startswith(query)
    )
    assert sorted(u.id for u in found) == expected
