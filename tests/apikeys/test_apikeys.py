"""API keys on SQLite and PostgreSQL: shown once, stored as a digest, scoped, revocable."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tokenbank import apikeys, ledger
from tokenbank.apikeys import Scope
from tokenbank.apikeys.models import api_keys
from tokenbank.db import Database
from tokenbank.errors import UnknownApiKey


def test_a_key_is_stored_as_a_digest_and_authenticates(db: Database) -> None:
    with db.transaction() as conn:
        key, secret = apikeys.create_key(conn, name="app", scopes=[Scope.SPEND])
    with db.read() as conn:
        stored = conn.execute(sa.select(api_keys)).one()._mapping
        found = apikeys.authenticate(conn, secret=secret)
    assert secret not in {str(value) for value in stored.values()}
    assert secret.startswith(key.prefix)
    assert found.id == key.id and found.scopes == frozenset({Scope.SPEND})


@pytest.mark.parametrize(
    ("granted", "allowed", "refused"),
    [
        ([Scope.READ], {Scope.READ}, {Scope.SPEND, Scope.ADMIN}),
        ([Scope.SPEND], {Scope.READ, Scope.SPEND}, {Scope.ADMIN}),
        ([Scope.ADMIN], {Scope.READ, Scope.SPEND, Scope.ADMIN}, set()),
    ],
)
def test_scopes_imply_the_lesser_ones(
    db: Database, granted: list[Scope], allowed: set[Scope], refused: set[Scope]
) -> None:
    with db.transaction() as conn:
        key, _ = apikeys.create_key(conn, name="app", scopes=granted)
    assert {scope for scope in Scope if key.allows(scope)} == allowed
    assert not any(key.allows(scope) for scope in refused)


def test_wrong_and_revoked_keys_are_refused(db: Database) -> None:
    with db.transaction() as conn:
        key, secret = apikeys.create_key(conn, name="app", scopes=[Scope.READ])
    for wrong in ("", "tb_nope", secret + "x", secret[:-1]):
        with pytest.raises(apikeys.InvalidApiKey), db.read() as conn:
            apikeys.authenticate(conn, secret=wrong)
    with db.transaction() as conn:
        revoked = apikeys.revoke_key(conn, key_id=key.id)
    assert revoked.revoked_at is not None
    with pytest.raises(apikeys.InvalidApiKey), db.read() as conn:
        apikeys.authenticate(conn, secret=secret)
    with pytest.raises(UnknownApiKey), db.transaction() as conn:
        apikeys.revoke_key(conn, key_id=key.id + 100)


@pytest.mark.parametrize("name", ["", "x" * 101, "tab\there"])
def test_a_key_needs_a_printable_name(db: Database, name: str) -> None:
    with pytest.raises(ledger.InvalidArgument), db.transaction() as conn:
        apikeys.create_key(conn, name=name, scopes=[Scope.READ])


def test_a_key_needs_a_scope(db: Database) -> None:
    with pytest.raises(ledger.InvalidArgument), db.transaction() as conn:
        apikeys.create_key(conn, name="app", scopes=[])
