"""A database that goes away answers 503 with Retry-After and a stable code (API, pages and
the webhook), never a 500; idempotent retries then succeed exactly once. A database behind
this version's migrations is refused at start and answered 503 while serving."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from alembic import command

from tests.postgres import terminate_backends
from tests.servers import serving
from tests.stripe_emulator import EmulatorServer, event_bytes, make_billing, signed
from tests.web.conftest import PASSWORDS, SETTINGS, make_key
from tokenbank import migrations
from tokenbank.apikeys import Scope
from tokenbank.db import Database, connect
from tokenbank.users.models import users as users_table
from tokenbank.web.app import create_app

Send = Callable[[httpx.Client], httpx.Response]
#: A server to lose is PostgreSQL's; a file lock is SQLite's.
ONLY_POSTGRESQL = pytest.mark.parametrize("backend", ["postgresql"])
ONLY_SQLITE = pytest.mark.parametrize("backend", ["sqlite"])


def _kill_backends(db: Database) -> None:
    terminate_backends(db.url)


def _until_served(http: httpx.Client, send: Send, *, page: bool = False) -> list[int]:
    """Send until it works; every failure on the way must be a clean 503."""
    statuses = []
    for _ in range(20):
        answer = send(http)
        statuses.append(answer.status_code)
        if answer.status_code < 500:
            return statuses
        assert answer.status_code == 503, answer.text
        assert int(answer.headers["retry-after"]) >= 1
        if page:
            assert "unavailable for a moment" in answer.text
        else:
            assert answer.json()["code"] == "database_unavailable", answer.text
    raise AssertionError(f"never recovered: {statuses}")


@pytest.fixture
def served(db: Database, emulator_server: EmulatorServer) -> Iterator[tuple[str, dict[str, str]]]:
    emulator_server.reset()
    seller = make_billing(emulator_server.url)
    app = create_app(SETTINGS, db=db, passwords=PASSWORDS, seller=seller)
    with serving(app) as url:
        yield url, make_key(db, Scope.ADMIN)


@ONLY_POSTGRESQL
def test_postgresql_backends_killed_answer_503_then_recover(
    db: Database, backend: str, served: tuple[str, dict[str, str]]
) -> None:
    """A restart or failover kills every pooled connection, but costs one 503, not one per
    dead connection: the first loss drops the pools (``Database.recover``), even right after
    an earlier loss, and even when every pool is full."""
    url, key = served
    with httpx.Client(base_url=url, headers=key, timeout=30) as http:
        assert http.put("/api/v1/users/alice", json={}).status_code == 200
        grant = {"amount": 100, "reason": "r", "idempotency_key": "g-1"}
        spend = {"amount": 1, "idempotency_key": "s-1"}
        requests: list[tuple[Send, bool]] = [
            (lambda h: h.post("/api/v1/users/alice/grants", json=grant), False),  # sync pool
            (lambda h: h.post("/api/v1/users/alice/spend", json=spend), False),  # asyncio pool
            (lambda h: h.get("/api/v1/users/alice/balance"), False),
            (lambda h: h.get("/api/v1/users/alice/history"), False),
        ]
        for number, (send, page) in enumerate(requests):
            _fill_pools(url, key, send)
            for _ in range(2):  # a second loss at once is recovered from like the first
                _kill_backends(db)
                statuses = _until_served(http, send, page=page)
                assert statuses[0] == 503 and len(statuses) == 2, (number, statuses)
        # The writes above were retried under their keys: each took effect once.
        _until_served(http, lambda h: h.get("/api/v1/users/alice/balance"))
        assert http.get("/api/v1/users/alice/balance").json()["available"] == 99
        assert http.post("/api/v1/users/alice/spend", json=spend).json()["replayed"] is True
    db.dispose()  # the test's own connections died with the rest


def _fill_pools(url: str, key: dict[str, str], send: Send) -> None:
    """Send ``send`` from many clients at once, so that its pools hold many connections."""

    def one(_: int) -> int:
        with httpx.Client(base_url=url, headers=key, timeout=30) as http:
            return send(http).status_code

    with ThreadPoolExecutor(max_workers=12) as clients:
        assert all(status < 500 for status in clients.map(one, range(48)))


@ONLY_POSTGRESQL
def test_a_webhook_with_the_database_gone_is_a_503_stripe_retries(
    db: Database, backend: str, served: tuple[str, dict[str, str]]
) -> None:
    url, _ = served
    body = event_bytes(
        {
            "id": "evt_gone",
            "object": "event",
            "type": "customer.created",
            "created": 1,
            "livemode": False,
            "data": {"object": {"id": "cus_1"}},
        }
    )
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/readyz").status_code == 200
        _kill_backends(db)
        statuses = _until_served(
            http,
            lambda h: h.post(
                "/webhooks/stripe", content=body, headers={"Stripe-Signature": signed(body)}
            ),
        )
    assert statuses[0] == 503 and statuses[-1] == 200
    db.dispose()


@ONLY_SQLITE
def test_sqlite_locked_past_its_timeout_answers_503_and_reads_go_on(
    db: Database, backend: str
) -> None:
    path = db.url.database
    assert path
    quick = connect(f"sqlite:///{path}", pool_size=4, sqlite_busy_timeout_ms=200)
    app = create_app(SETTINGS, db=quick, passwords=PASSWORDS)
    key = make_key(quick, Scope.ADMIN)
    with serving(app) as url, httpx.Client(base_url=url, headers=key) as http:
        assert http.put("/api/v1/users/alice", json={}).status_code == 200
        grant = {"amount": 10, "reason": "r", "idempotency_key": "g-locked"}
        other = sqlite3.connect(path, isolation_level=None, timeout=0)
        other.execute("BEGIN EXCLUSIVE")
        try:
            locked = http.post("/api/v1/users/alice/grants", json=grant)
            assert locked.status_code == 503, locked.text
            assert locked.json()["code"] == "database_unavailable"
            assert locked.headers["retry-after"] == "1"
            assert http.get("/api/v1/users/alice/balance").status_code == 200
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert http.post("/api/v1/users/alice/grants", json=grant).status_code == 201
        assert http.post("/api/v1/users/alice/grants", json=grant).json()["replayed"] is True
    quick.dispose()


@pytest.fixture
def behind(db: Database) -> Iterator[Database]:
    """The test's database taken back to before 0006, whose columns the purchase routes
    read (and brought forward again after)."""
    command.downgrade(migrations.alembic_config(db), "0005")
    yield db
    migrations.upgrade(db)


def test_a_database_behind_the_migrations_is_answered_503(behind: Database) -> None:
    app = create_app(SETTINGS, db=behind, passwords=PASSWORDS)
    key = make_key(behind, Scope.ADMIN)
    with serving(app) as url, httpx.Client(base_url=url, headers=key) as http:
        ready = http.get("/readyz")
        assert ready.status_code == 503 and "migrations pending" in ready.json()["detail"]
        answer = http.get("/api/v1/users/alice/purchases")  # reads a column 0006 added
        assert answer.status_code == 503, answer.text
        assert answer.json()["code"] == "schema_out_of_date"
        assert http.get("/healthz").status_code == 200
        page = http.get("/register")
        assert page.status_code == 200


def test_serve_refuses_a_database_behind_the_migrations(behind: Database, tmp_path: Any) -> None:
    env = {
        **os.environ,
        "TOKENBANK_DATABASE_URL": behind.url.render_as_string(hide_password=False),
        "TOKENBANK_VAR_DIR": str(tmp_path),
    }
    tokenbank = os.path.join(os.path.dirname(sys.executable), "tokenbank")
    done = subprocess.run(
        [tokenbank, "serve", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 10, done.stderr
    assert "schema_out_of_date" in done.stderr and "tokenbank db upgrade" in done.stderr


@ONLY_POSTGRESQL
def test_registration_works_again_once_the_database_is_back(db: Database, backend: str) -> None:
    """A form post whose transaction died gets the page's 503, and the same form posted
    again works: nothing was half written. Then a signed-in page, likewise."""
    local = SETTINGS.model_copy(update={"public_url": "http://127.0.0.1"})  # cookies over http
    app = create_app(local, db=db, passwords=PASSWORDS)
    with (
        serving(app) as url,
        httpx.Client(base_url=url, timeout=30, follow_redirects=False) as http,
    ):
        page = http.get("/register")
        token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
        _kill_backends(db)
        form = {
            "email": "back@example.com",
            "password": "correct horse battery",
            "csrf_token": token,
        }
        statuses = _until_served(http, lambda h: h.post("/register", data=form), page=True)
        assert statuses[-1] == 200, statuses  # "check your inbox"
        with db.read() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(users_table)).scalar() == 1
        page = http.get("/login")
        token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
        signed_in = http.post("/login", data=form | {"csrf_token": token})
        assert signed_in.status_code == 303, signed_in.text
        assert http.get("/dashboard").status_code == 200
        _kill_backends(db)
        statuses = _until_served(http, lambda h: h.get("/dashboard"), page=True)
        assert statuses[0] == 503 and statuses[-1] == 200, statuses
    db.dispose()
