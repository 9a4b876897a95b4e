"""Recovery from what happens to a running service: kill -9 in the middle of a burst, the
database restarted or its connections killed under load, SQLite killed while writing, a
full disk, a read-only file system, and Stripe failing while it works."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.faults.conftest import Service, service_for, wait_for
from tests.postgres import (
    LocalPostgres,
    PostgresUnavailable,
    local_postgres,
    scratch_database,
    terminate_backends,
)
from tests.processes import TOKENBANK
from tests.stripe_emulator import SECRET_KEY, EmulatorServer
from tokenbank import migrations
from tokenbank.db import Database, connect

ONLY_SQLITE = pytest.mark.parametrize("backend", ["sqlite"])


@dataclass
class Burst:
    """Spends sent from several threads until told to stop; what was acknowledged."""

    http: httpx.Client
    acknowledged: dict[str, dict[str, Any]] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)
    statuses: list[int | str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def worker(self, name: str) -> None:
        serial = 0
        while not self.stop.is_set():
            serial += 1
            key, amount = f"{name}-{serial}", 1 + serial % 5
            with self.lock:
                self.sent[key] = amount
            try:
                answer = self.http.post(
                    "/api/v1/users/alice/spend", json={"amount": amount, "idempotency_key": key}
                )
            except httpx.TransportError as exc:
                with self.lock:
                    self.statuses.append(type(exc).__name__)
                time.sleep(0.02)
                continue
            with self.lock:
                self.statuses.append(answer.status_code)
                if answer.status_code == 201:
                    self.acknowledged[key] = answer.json()

    @contextmanager
    def running(self, threads: int = 8) -> Iterator[Burst]:
        with ThreadPoolExecutor(threads) as pool:
            for n in range(threads):
                pool.submit(self.worker, f"w{n}")
            try:
                yield self
            finally:
                self.stop.set()

    def settle(self, http: httpx.Client) -> int:
        """Retry every key once the service is back: acknowledged ones replay their stored
        answer, the others apply now or replay. Returns the tokens spent in all."""
        for key, amount in self.sent.items():
            answer = http.post(
                "/api/v1/users/alice/spend", json={"amount": amount, "idempotency_key": key}
            )
            assert answer.status_code == 201, answer.text
            if key in self.acknowledged:
                first = self.acknowledged[key]
                assert answer.json()["replayed"] is True, key
                assert answer.json()["transfer_id"] == first["transfer_id"], key
        return sum(self.sent.values())


def test_kill_9_during_a_burst_of_spends(service: Service) -> None:
    service.start()
    with service.http() as http:
        burst = Burst(http)
        with burst.running():
            wait_for(lambda: len(burst.acknowledged) > 200, what="200 acknowledged spends")
            service.kill()
            time.sleep(0.3)
    assert burst.acknowledged, burst.statuses[-20:]
    service.restart()
    with service.http() as http:
        spent = burst.settle(http)
    assert service.balance() == 10_000 - spent
    service.verify()


@pytest.fixture
def own_postgres() -> Iterator[tuple[LocalPostgres, Database]]:
    """A PostgreSQL server of this test's own (it gets restarted), with a migrated database."""
    try:
        with local_postgres() as server, scratch_database(server.url) as url:
            db = connect(url, pool_size=4)
            migrations.upgrade(db)
            yield server, db
            db.dispose()
    except PostgresUnavailable as exc:
        if os.environ.get("TOKENBANK_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL tests NOT RUN: {exc}", pytrace=False)
        pytest.skip(f"PostgreSQL tests NOT RUN: {exc}")


def _mixed_load(http: httpx.Client, stop: threading.Event, seen: list[Any], name: str) -> None:
    serial = 0
    while not stop.is_set():
        serial += 1
        for method, path, body in (
            (
                "POST",
                "/api/v1/users/alice/spend",
                {"amount": 1, "idempotency_key": f"{name}-{serial}"},
            ),
            ("GET", "/api/v1/users/alice/balance", None),
            ("GET", "/api/v1/users/alice/history?limit=5", None),
        ):
            try:
                answer = http.request(method, path, json=body)
            except httpx.TransportError as exc:
                seen.append(("transport", type(exc).__name__, path))
                continue
            seen.append((answer.status_code, answer.headers.get("retry-after"), path))
            if answer.status_code >= 500 and answer.status_code != 503:
                seen.append(("body", answer.text[:300]))


@pytest.mark.parametrize("fault", ["restart", "terminate"])
def test_postgresql_restarted_or_backends_killed_under_load(
    own_postgres: tuple[LocalPostgres, Database],
    emulator_server: EmulatorServer,
    tmp_path: Path,
    fault: str,
) -> None:
    """Answers during the outage are 503 with Retry-After (never a 500, never a reset
    connection); the service recovers on its own; retried keys apply once."""
    server, db = own_postgres
    service = service_for(db, emulator_server, tmp_path)
    service.start()
    stop = threading.Event()
    seen: list[Any] = []
    try:
        with service.http() as http, ThreadPoolExecutor(6) as pool:
            for n in range(6):
                pool.submit(_mixed_load, http, stop, seen, f"l{n}")
            time.sleep(1)
            if fault == "restart":
                server.restart()
            else:
                terminate_backends(db.url)
            outage_over = len(seen)
            time.sleep(2)
            stop.set()
        statuses = [entry[0] for entry in seen]
        assert "transport" not in statuses, [e for e in seen if e[0] == "transport"][:5]
        assert set(statuses) <= {200, 201, 503}, [e for e in seen if e[0] not in (200, 201, 503)]
        assert all(entry[1] for entry in seen if entry[0] == 503)  # Retry-After on every 503
        after = [entry[0] for entry in seen[outage_over:]]
        assert after[-30:] and set(after[-30:]) <= {200, 201}, after[-30:]  # recovered
        db.dispose()  # the test's own pool lost its connections too
        with service.http() as http:
            for n in range(6):
                serial = 1
                while True:
                    answer = http.post(
                        "/api/v1/users/alice/spend",
                        json={"amount": 1, "idempotency_key": f"l{n}-{serial}"},
                    )
                    if answer.status_code == 201 and answer.json()["replayed"] is False:
                        break  # past every key the load had sent
                    serial += 1
            spent = 10_000 - service.balance()
            applied, params = 0, {"kind": "spend", "limit": "500"}
            while True:  # every page: a fast machine spends more than one page holds
                page = http.get("/api/v1/users/alice/history", params=params).json()
                applied += len(page["items"])
                if page["next_cursor"] is None:
                    break
                params["cursor"] = page["next_cursor"]
        assert spent == applied  # one token per key: each applied once
        service.verify()
    finally:
        stop.set()
        service.stop()
        emulator_server.reset()


@ONLY_SQLITE
def test_sqlite_killed_during_heavy_writes_stays_whole(service: Service) -> None:
    service.start()
    with service.http() as http:
        burst = Burst(http)
        with burst.running(threads=12):
            wait_for(lambda: len(burst.acknowledged) > 300, what="300 acknowledged spends")
            service.kill()
    path = service.db.url.database
    assert path
    checked = sqlite3.connect(path).execute("PRAGMA integrity_check").fetchall()
    assert checked == [("ok",)]
    service.verify()
    service.restart()
    with service.http() as http:
        spent = burst.settle(http)
    assert service.balance() == 10_000 - spent
    service.verify()


def _mount(path: Path, *options: str) -> None:
    done = subprocess.run(["mount", *options, path], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"needs root to mount a small file system: {done.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB file system of the test's own, to fill up and to make read-only."""
    disk = tmp_path / "disk"
    disk.mkdir()
    _mount(disk, "-t", "tmpfs", "-o", "size=16m", "tmpfs")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", disk], check=False)


def _on_disk(disk: Path, template: Path) -> Database:
    shutil.copy(template, disk / "tokenbank.db")
    return connect(f"sqlite:///{disk / 'tokenbank.db'}", pool_size=4)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    # Unbuffered: a buffered file keeps what a write could not put on the full disk, and
    # raises again when it is closed (how often depends on what else is on the disk).
    with filler.open("wb", buffering=0) as file:
        try:
            while True:
                file.write(b"\0" * 65536)
        except OSError:
            pass
    return filler


def test_a_full_disk_refuses_writes_with_503_keeps_reads_and_heals(
    small_disk: Path,
    sqlite_template: Path,
    emulator_server: EmulatorServer,
    tmp_path: Path,
) -> None:
    db = _on_disk(small_disk, sqlite_template)
    service = service_for(db, emulator_server, tmp_path)
    service.start()
    try:
        with service.http() as http:
            assert (
                http.post(
                    "/api/v1/users/alice/spend", json={"amount": 1, "idempotency_key": "before"}
                ).status_code
                == 201
            )
            filler = _fill(small_disk)
            statuses = []
            for n in range(30):  # enough writes to need new pages of the file
                answer = http.post(
                    "/api/v1/users/alice/spend",
                    json={"amount": 1, "idempotency_key": f"full-{n}", "description": "x" * 400},
                )
                statuses.append(answer.status_code)
                if answer.status_code == 503:
                    assert answer.json()["code"] == "database_unavailable"
                    assert int(answer.headers["retry-after"]) > 0
            assert 503 in statuses and set(statuses) <= {201, 503}, statuses
            read = http.get("/api/v1/users/alice/balance")
            assert read.status_code == 200, read.text
            filler.unlink()
            for n in range(30):  # the same keys again: each applied once
                again = http.post(
                    "/api/v1/users/alice/spend",
                    json={"amount": 1, "idempotency_key": f"full-{n}", "description": "x" * 400},
                )
                assert again.status_code == 201, again.text
            assert http.get("/api/v1/users/alice/balance").json()["available"] == 10_000 - 31
        checked = sqlite3.connect(small_disk / "tokenbank.db").execute("PRAGMA integrity_check")
        assert checked.fetchall() == [("ok",)]
        service.verify()
    finally:
        service.stop()
        db.dispose()
        emulator_server.reset()


def test_a_read_only_file_system_serves_reads_and_refuses_writes(
    small_disk: Path,
    sqlite_template: Path,
    emulator_server: EmulatorServer,
    tmp_path: Path,
) -> None:
    db = _on_disk(small_disk, sqlite_template)
    service = service_for(db, emulator_server, tmp_path)
    db.dispose()  # nothing of the test's keeps the file open
    _mount(small_disk, "-o", "remount,ro")
    service.start()  # starts on a database it cannot write
    try:
        with service.http() as http:
            read = http.get("/api/v1/users/alice/balance")
            assert read.status_code == 200 and read.json()["available"] == 10_000, read.text
            assert http.get("/api/v1/users/alice/history").status_code == 200
            write = http.post(
                "/api/v1/users/alice/spend", json={"amount": 1, "idempotency_key": "ro"}
            )
            assert write.status_code == 503, write.text
            assert write.json()["code"] == "database_unavailable"
            _mount(small_disk, "-o", "remount,rw")
            healed = http.post(
                "/api/v1/users/alice/spend", json={"amount": 1, "idempotency_key": "ro"}
            )
            assert healed.status_code == 201, healed.text
            assert http.get("/api/v1/users/alice/balance").json()["available"] == 9_999
    finally:
        service.stop()
        emulator_server.reset()
    db = connect(f"sqlite:///{small_disk / 'tokenbank.db'}", pool_size=2)
    service.db = db
    service.verify()
    db.dispose()


def _api_faults(service: Service, *faults: dict[str, Any]) -> None:
    answer = service.emulator.http.post("/_emulator/api_faults", json={"faults": list(faults)})
    assert answer.status_code == 200, answer.text


def _cli(service: Service, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TOKENBANK), *args],
        env=service.env,
        cwd=service.directory,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_stripe_failing_never_charges_twice_nor_credits_unverified(service: Service) -> None:
    """Stripe times out or answers 500 or 429 while a purchase starts, while a webhook is
    checked against it, and while the reconciler runs: the caller gets a retryable 503,
    nothing is credited on an event's word, and one purchase makes one session."""
    service.start(TOKENBANK_STRIPE_TIMEOUT_SECONDS="1", TOKENBANK_STRIPE_MAX_NETWORK_RETRIES="0")
    key = {"package_id": "plus", "idempotency_key": "buy-faulty"}
    with service.http() as http:
        for fault in ({"status": 500, "after": True}, {"status": 429}, {"status": 0, "delay": 3}):
            _api_faults(service, {"method": "POST", "path": "/v1/checkout/sessions", **fault})
            failed = http.post("/api/v1/users/alice/checkout-sessions", json=key)
            assert failed.status_code == 503, failed.text
            assert failed.json()["code"] == "payment_provider_unavailable"
        _api_faults(service)
        started = http.post("/api/v1/users/alice/checkout-sessions", json=key)
        assert started.status_code == 201, started.text
    sessions = service.emulator.http.get(
        "/v1/checkout/sessions", headers={"Authorization": f"Bearer {SECRET_KEY}"}
    ).json()["data"]
    assert [s["id"] for s in sessions] == [started.json()["checkout_session_id"]]
    # Every webhook's check against Stripe fails: nothing is credited on the events alone.
    _api_faults(service, {"method": "GET", "path": "/v1/*", "status": 500, "times": 1000})
    service.emulator.pay(started.json()["checkout_session_id"])
    service.emulator.settle(timeout=30)
    assert service.balance() == 10_000
    reconciled = _cli(service, "reconcile", "--since", "1h")
    assert reconciled.returncode == 10, reconciled.stderr  # unavailable: run it again later
    assert "payment_provider_unavailable" in reconciled.stderr
    assert service.balance() == 10_000
    _api_faults(service)
    healed = _cli(service, "reconcile", "--since", "1h")
    assert healed.returncode == 0, healed.stdout + healed.stderr
    assert "0 errors" in healed.stdout
    assert service.balance() == 12_200
    (purchase,) = service.purchases()
    assert purchase.status.value == "paid"
    service.verify()
