"""Upgrading users written before migration 0008 (email identity), on SQLite and PostgreSQL.

Before 0008 an address was unique as stored (lower-cased), so two accounts could hold two
spellings of one address, or two addresses that look alike. The oldest keeps the forms
that find it; the others are reported on standard error and found by none; every address
already there counts as confirmed.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from tests.postgres import scratch_database
from tokenbank import migrations, users
from tokenbank.columns import UtcDateTime
from tokenbank.db import Database, connect
from tokenbank.users import emails
from tokenbank.users.models import users as users_table

T0 = datetime(2026, 1, 1, tzinfo=UTC)

#: (user id, address as stored before 0008, hours after T0 it was created); inserted out
#: of age order, so the order by age is the migration's own.
BEFORE = [
    ("fullwidth", "\uff41nn@x.com", 2),
    ("ann", "ann@x.com", 0),
    ("zero-width", "an\u200bn@x.com", 3),
    ("paypal", "paypal@x.com", 5),
    ("paypa1", "paypa1@x.com", 4),  # older than its look-alike
    ("cyrillic", "h\u043emoglyph@x.com", 6),  # mixes scripts: kept, and still found
    ("homoglyph", "homoglyph@x.com", 7),  # looks like the older Cyrillic one
    ("broken", "not-an-address", 8),
    ("bob", "bob@x.com", 1),
    ("nobody", None, 9),
]
KEEP = {"ann", "bob", "paypa1", "cyrillic"}
LOSE = {"fullwidth", "zero-width", "paypal", "homoglyph", "broken"}


@pytest.fixture
def blank(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """An empty database with no tables, on the chosen backend."""
    if backend == "sqlite":
        db = connect(f"sqlite:///{tmp_path / 'blank.db'}", pool_size=2)
        yield db
        db.dispose()
        return
    server: str = request.getfixturevalue("postgres_url")
    with scratch_database(server) as url:
        db = connect(url, pool_size=2)
        try:
            yield db
        finally:
            db.dispose()


def _write_users_of_0007(db: Database) -> None:
    accounts = sa.table(
        "accounts",
        sa.column("kind"),
        sa.column("user_id"),
        sa.column("balance"),
        sa.column("created_at", UtcDateTime),
    )
    old_users = sa.table(
        "users",
        sa.column("id"),
        sa.column("email"),
        sa.column("created_at", UtcDateTime),
        sa.column("updated_at", UtcDateTime),
    )
    with db.transaction() as conn:
        for user_id, email, hours in BEFORE:
            at = T0 + timedelta(hours=hours)
            conn.execute(
                sa.insert(accounts).values(kind="wallet", user_id=user_id, balance=0, created_at=at)
            )
            conn.execute(
                sa.insert(old_users).values(id=user_id, email=email, created_at=at, updated_at=at)
            )


def _rows(db: Database) -> dict[str, Any]:
    with db.read() as conn:
        return {row.id: row for row in conn.execute(sa.select(users_table))}


def test_the_oldest_of_colliding_addresses_keeps_the_forms(
    blank: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    migrations.upgrade(blank, "0007")
    assert migrations.current_revision(blank) == "0007"
    _write_users_of_0007(blank)
    capsys.readouterr()
    migrations.upgrade(blank)
    assert migrations.is_current(blank)
    migrations.check(blank)  # the tables are what the models say

    rows = _rows(blank)
    created = {user_id: T0 + timedelta(hours=hours) for user_id, _, hours in BEFORE}
    for user_id, email, _ in BEFORE:
        row = rows[user_id]
        assert row.email == email  # every address kept as it was
        if user_id in KEEP:
            forms = emails.forms(email)
            assert (row.email_canonical, row.email_skeleton) == (forms.canonical, forms.skeleton)
        else:
            assert (row.email_canonical, row.email_skeleton) == (None, None)
        # Addresses already there count as confirmed, colliding ones too.
        assert row.email_verified_at == (None if email is None else created[user_id])

    # Each account that lost its forms is reported, and no other.
    err = capsys.readouterr().err
    reported = [line for line in err.splitlines() if line.startswith("0008: ")]
    assert len(reported) == len(LOSE)
    assert {line.split("'")[1] for line in reported} == LOSE
    assert "older user 'ann'" in err and "older user 'paypa1'" in err
    assert "older user 'cyrillic'" in err and "is not an email address" in err

    # The oldest is found by every spelling and look-alike of its address.
    with blank.read() as conn:
        for spelling, owner in (
            ("ANN@x.com", "ann"),
            ("\uff41nn@x.com", "ann"),
            ("an\u200bn@x.com", "ann"),
            ("paypal@x.com", "paypa1"),
            ("homoglyph@x.com", "cyrillic"),
        ):
            found = users.holder(conn, emails.forms(spelling))
            assert found is not None and found.id == owner, spelling


def test_the_backfill_reports_the_same_on_a_second_run(
    blank: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    migrations.upgrade(blank, "0007")
    _write_users_of_0007(blank)
    migrations.upgrade(blank)
    first = [line for line in capsys.readouterr().err.splitlines() if line.startswith("0008: ")]
    before = _rows(blank)
    script = ScriptDirectory.from_config(migrations.alembic_config(blank)).get_revision("0008")
    assert script is not None
    with blank.transaction() as conn:
        problems = script.module.backfill(conn)
    assert len(problems) == len(LOSE)
    again = [line for line in capsys.readouterr().err.splitlines() if line.startswith("0008: ")]
    assert again == first
    assert _rows(blank) == before


def test_an_empty_database_upgrades_quietly(
    blank: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    migrations.upgrade(blank, "0007")
    migrations.upgrade(blank)
    assert "0008" not in capsys.readouterr().err
    assert _rows(blank) == {}
