"""The fault suite's harness: tokenbank served as a real process (``tokenbank serve``) on
SQLite or PostgreSQL, killed and restarted on the same port, with fault points armed on
demand, beside the built-in Stripe emulator."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.processes import REPO, Process, clean_env, free_ports, wait_until_up
from tests.stripe_emulator import SECRET_KEY, WEBHOOK_SECRET, EmulatorServer
from tests.web.conftest import make_key
from tokenbank import billing, ledger, users
from tokenbank.apikeys import Scope
from tokenbank.db import Database

START_TIMEOUT = 30.0


@dataclass
class Service:
    """One tokenbank service process; ``restart`` brings it back on the same port."""

    db: Database
    emulator: EmulatorServer
    directory: Path
    port: int
    env: dict[str, str]
    process: Process | None = None
    runs: int = 0
    key: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, faults: str = "", **extra: str) -> Service:
        env = {
            **self.env,
            "TOKENBANK_FAULT_INJECTION": "1" if faults else "0",
            "TOKENBANK_FAULT_POINTS": faults,
            **extra,
        }
        self.runs += 1
        self.process = Process.start(
            f"tokenbank-{self.runs}",
            ("serve", "--host", "127.0.0.1", "--port", str(self.port)),
            env=env,
            directory=self.directory,
        )
        problem = wait_until_up(f"{self.url}/readyz", [self.process], timeout=START_TIMEOUT)
        if problem is not None:
            pytest.fail(f"tokenbank did not start: {problem}\n{self.logs()}", pytrace=False)
        return self

    def died(self, timeout: float = 10) -> int:
        """The process ended on its own (a fault point): its exit status."""
        assert self.process is not None
        code = self.process.popen.wait(timeout)
        self.process.log.close()
        return code

    def kill(self) -> int:
        assert self.process is not None
        return self.process.kill()

    def restart(self, **options: Any) -> Service:
        if self.process is not None and self.process.popen.poll() is None:
            self.kill()
        return self.start(**options)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name} ---\n{path.read_text(errors='replace')[-6000:]}"
            for path in sorted(self.directory.glob("tokenbank-*.log"))
        )

    def http(self, **options: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.key, timeout=30, **options)

    def balance(self, user_id: str = "alice") -> int:
        with self.db.read() as conn:
            return ledger.balance(conn, user_id=user_id).available

    def purchases(self, user_id: str = "alice") -> list[billing.Purchase]:
        with self.db.read() as conn:
            return billing.list_purchases(conn, user_id=user_id)

    def verify(self) -> None:
        with self.db.read() as conn:
            report = ledger.verify(conn)
        assert report.ok, [c for c in report.checks if not c.ok]


def service_for(
    db: Database,
    emulator: EmulatorServer,
    directory: Path,
    **extra: str,
) -> Service:
    """A service on ``db`` (not started) with alice, 10,000 tokens and an admin key."""
    (port,) = free_ports(1)
    with db.transaction() as conn:
        users.create_user(conn, user_id="alice", email="alice@example.com")
        ledger.credit(
            conn,
            user_id="alice",
            amount=10_000,
            kind=ledger.TransferKind.GRANT,
            idempotency_key="seed",
        )
    env = clean_env(
        {
            "TOKENBANK_DATABASE_URL": db.url.render_as_string(hide_password=False),
            "TOKENBANK_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "TOKENBANK_SECRET_KEY": secrets.token_urlsafe(48),
            "TOKENBANK_VAR_DIR": str(directory / "var"),
            "TOKENBANK_CATALOG": str(REPO / "catalogs" / "default.toml"),
            "TOKENBANK_LOG_LEVEL": "warning",
            "TOKENBANK_DATABASE_POOL_SIZE": "8",
            "STRIPE_SECRET_KEY": SECRET_KEY,
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "STRIPE_API_BASE": emulator.url,
            **extra,
        }
    )
    service = Service(db=db, emulator=emulator, directory=directory, port=port, env=env)
    service.key = make_key(db, Scope.ADMIN)
    emulator.reset(webhook_url=f"{service.url}/webhooks/stripe")
    return service


@pytest.fixture
def service(
    db: Database, emulator_server: EmulatorServer, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Service]:
    made = service_for(db, emulator_server, tmp_path)
    yield made
    made.stop()
    emulator_server.reset()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(made.logs())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


def wait_for(condition: Any, timeout: float = 15, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
