from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from fastapi.testclient import TestClient

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
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(SETTINGS, db=db, passwords=PASSWORDS)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
