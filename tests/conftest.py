"""Databases for the tests: every ledger test runs on SQLite and on PostgreSQL.

PostgreSQL comes from ``TOKENBANK_TEST_DATABASE_URL`` when set (a scratch database is
created in that server and dropped afterwards); otherwise from a throwaway server started
from the local PostgreSQL binaries (as ``nobody`` when running as root); otherwise the
PostgreSQL half is skipped, loudly, unless ``TOKENBANK_REQUIRE_POSTGRES=1``, which turns the
skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import settings
from sqlalchemy.engine import Connection

from tests.postgres import PostgresUnavailable, ephemeral_postgres, scratch_database
from tests.stripe_emulator import emulator_server
from tokenbank import ledger, migrations
from tokenbank.db import Database, connect
from tokenbank.ledger.models import SystemAccount, accounts
from tokenbank.logs import configure_logging
from tokenbank.models import metadata

BACKENDS = ["sqlite", "postgresql"]
# Commands run in this process read no .env file: not the checkout's, nor the var/.env a
# `make run` of the developer's left (tests that are about those files name their own).
os.environ["TOKENBANK_ENV_FILE"] = ""
# As the command line does: log lines go to stderr, which pytest shows when a test fails.
configure_logging("info", stream="stderr", cache=False)
#: Every table, children before parents: a table added to the models is emptied too.
TABLES = tuple(table.name for table in reversed(metadata.sorted_tables))
EPOCH = datetime(2026, 11, 21, tzinfo=UTC)
__all__ = ["emulator_server"]  # a fixture, shared by every test package


@contextmanager
def _postgres_server() -> Iterator[str]:
    if url := os.environ.get("TOKENBANK_TEST_DATABASE_URL"):
        yield url
    else:
        with ephemeral_postgres() as url:
            yield url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A migrated scratch database, shared by the session and emptied before each test."""
    with ExitStack() as stack:
        try:
            server = stack.enter_context(_postgres_server())
            url = stack.enter_context(scratch_database(server))
        except PostgresUnavailable as exc:
            reason = f"PostgreSQL tests NOT RUN: {exc}"
            if os.environ.get("TOKENBANK_REQUIRE_POSTGRES") == "1":
                pytest.fail(f"{reason} (TOKENBANK_REQUIRE_POSTGRES=1)", pytrace=False)
            pytest.skip(reason)
        db = connect(url, pool_size=2)
        migrations.upgrade(db)
        db.dispose()
        yield url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "tokenbank.db"
    db = connect(f"sqlite:///{path}", pool_size=2)
    migrations.upgrade(db)
    db.dispose()
    return path


def reset_postgres(db: Database) -> None:
    with db.transaction() as conn:
        conn.execute(sa.text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        conn.execute(
            sa.insert(accounts),
            [
                {"id": int(a), "kind": "system", "code": a.code, "created_at": EPOCH}
                for a in SystemAccount
            ],
        )


DatabaseFactory = Callable[[], Database]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def fresh_database(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[DatabaseFactory]:
    """A factory of empty, migrated databases (one per call) on the chosen backend."""
    opened: list[Database] = []

    def make() -> Database:
        for db in opened:
            db.dispose()
        if backend == "sqlite":
            template: Path = request.getfixturevalue("sqlite_template")
            path = tmp_path / f"tokenbank-{uuid.uuid4().hex[:8]}.db"
            shutil.copy(template, path)
            db = connect(f"sqlite:///{path}", pool_size=32)
        else:
            url: str = request.getfixturevalue("postgres_url")
            db = connect(url, pool_size=32)
            reset_postgres(db)
        opened.append(db)
        return db

    yield make
    for db in opened:
        db.dispose()


@pytest.fixture
def db(fresh_database: DatabaseFactory) -> Iterator[Database]:
    """An empty ledger; after the test, ``verify`` must still pass."""
    database = fresh_database()
    yield database
    with database.read() as conn:
        report = ledger.verify(conn)
    assert report.ok, [c for c in report.checks if not c.ok]


# Property tests explore new examples on every local run; CI replays a fixed sequence.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def pytest_configure(config: pytest.Config) -> None:
    """A width the test runner put in the environment (pytest-xdist gives its workers
    ``COLUMNS=80``) would be read by the command line's consoles when first imported, and
    fix their width for every test: the tests that print tables set their own."""
    os.environ.pop("COLUMNS", None)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    skipped = terminalreporter.stats.get("skipped", [])
    if any("PostgreSQL tests NOT RUN" in str(report.longrepr) for report in skipped):
        terminalreporter.write_sep(
            "!", "PostgreSQL tests were SKIPPED: only the SQLite half ran", red=True, bold=True
        )


Unit = Callable[[], AbstractContextManager[Connection]]


@pytest.fixture(params=["transaction", "autocommit"])
def unit(request: pytest.FixtureRequest, db: Database) -> Unit:
    """The two kinds of unit of work a ledger call runs in (``Database.autocommit()`` is the
    one-operation unit; on SQLite both are the same transaction)."""
    kind = db.transaction if request.param == "transaction" else db.autocommit
    return partial(kind, wallet="alice")  # the tests' busy wallet goes through the gate
