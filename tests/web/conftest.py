from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.servers import serving
from tokenbank import apikeys
from tokenbank.apikeys import Scope
from tokenbank.config import Settings
from tokenbank.db import Database
from tokenbank.identity import Passwords
from tokenbank.web.app import create_app

SETTINGS = Settings(
    database_url="sqlite:///unused.db",
    public_url="https://tokens.example",
    api_key_cache_seconds=0,
    secret_key="test-only-key-0123456789abcdef0123456789",
    # No access log: its lines are flushed by a timer, and one firing after a test ended
    # (pytest reporting, capture paused) would print into pytest's output. Tests about the
    # access log turn it on.
    log_level="warning",
)
#: Real argon2id at its cheapest, so tests that sign in many times stay fast.
PASSWORDS = Passwords(memory_kib=1024, passes=1)


@pytest.fixture
def client(db: Database) -> Iterator[TestClient]:
    with TestClient(
        create_app(SETTINGS, db=db, passwords=PASSWORDS), base_url="https://tokens.example"
    ) as test_client:
        yield test_client


def make_key(db: Database, *scopes: Scope) -> dict[str, str]:
    with db.transaction() as conn:
        _, secret = apikeys.create_key(conn, name="test", scopes=scopes)
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def admin(db: Database) -> dict[str, str]:
    return make_key(db, Scope.ADMIN)


@pytest.fixture
def spender(db: Database) -> dict[str, str]:
    return make_key(db, Scope.SPEND)


@pytest.fixture
def reader(db: Database) -> dict[str, str]:
    return make_key(db, Scope.READ)


@pytest.fixture
def live_url(db: Database) -> Iterator[str]:
    """The app served by uvicorn on a free port, for clients that speak real HTTP."""
    with serving(create_app(SETTINGS, db=db, passwords=PASSWORDS)) as url:
        yield url
