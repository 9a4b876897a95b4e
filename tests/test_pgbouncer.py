"""tokenbank through PgBouncer in transaction mode, as docs/scaling.md recommends once many
processes share one PostgreSQL: the pooler hands each transaction (each statement, in
autocommit) whichever server connection is free, so nothing may outlive a transaction on
a connection. Session state would leak, and a prepared statement is unknown, or its name
taken, on the next server connection; tokenbank turns them off
(``TOKENBANK_DATABASE_PREPARED_STATEMENTS=false``).

PgBouncer is Debian's package, installed on first use (``tests.debian``) and started here
in front of the tests' PostgreSQL with three server connections: far fewer than the
service's client connections, so they must share."""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import psycopg
import pytest
import sqlalchemy as sa

from tests import debian, pgbouncer
from tests.llm.test_gateway import MODELS, cost
from tests.pgbouncer import Pooler
from tests.postgres import scratch_database
from tests.processes import (
    REPO,
    TOKENBANK,
    Process,
    clean_env,
    free_ports,
    model_emulator,
    wait_until_up,
)
from tokenbank import apikeys, ledger
from tokenbank.apikeys import Scope
from tokenbank.db import BEGIN, COMMIT, Batch, Database, Statement, connect
from tokenbank.ledger import TransferKind

#: The ``db`` fixture on PostgreSQL alone: a pooler has nothing to do with SQLite.
POSTGRES_ONLY = pytest.mark.parametrize("backend", ["postgresql"])

SERVER_CONNECTIONS = 3
THROUGH_POOLER = {"TOKENBANK_DATABASE_PREPARED_STATEMENTS": "false"}


@pytest.fixture(scope="module")
def pooler(postgres_url: str) -> Iterator[Pooler]:
    debian.require(pgbouncer.missing, "PgBouncer")
    with pgbouncer.transaction_pooler(postgres_url, server_connections=SERVER_CONNECTIONS) as p:
        yield p


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The model emulator, for a model call through the pooler."""
    with model_emulator(tmp_path_factory.mktemp("llm-emulator")) as url:
        yield url


def _cli(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = clean_env({"TOKENBANK_DATABASE_URL": url, **THROUGH_POOLER})
    return subprocess.run(
        [str(TOKENBANK), *args], env=env, capture_output=True, text=True, check=False
    )


@POSTGRES_ONLY
def test_the_pooler_shares_server_connections_one_transaction_at_a_time(
    db: Database, pooler: Pooler
) -> None:
    """The control: with psycopg's prepared statements on, two connections taking turns
    through this pooler break, so the tests below would catch a unit of work that kept
    one. (Were it in session mode, or were each client given a server of its own, this
    would pass and prove nothing.)"""
    url = pooler.url(db.url.set(drivername="postgresql").render_as_string(hide_password=False))
    first = psycopg.connect(url, autocommit=True, prepare_threshold=0)
    second = psycopg.connect(url, autocommit=True, prepare_threshold=0)
    try:
        lost = (psycopg.errors.DuplicatePreparedStatement, psycopg.errors.InvalidSqlStatementName)
        with pytest.raises(lost):
            for turn in range(20):
                for conn in (first, second):
                    conn.execute("SELECT %s::int + 1", (turn,)).fetchone()
    finally:
        first.close()
        second.close()


@POSTGRES_ONLY
def test_every_unit_of_work_runs_through_the_pooler(db: Database, pooler: Pooler) -> None:
    """Each of ``tokenbank.db``'s units of work, many times over from eight threads and an
    event loop at once on three server connections: the class of failure is anything kept
    on a connection past its transaction, and every unit is swept."""
    direct = db.url.render_as_string(hide_password=False)
    through = connect(pooler.url(direct), pool_size=4, prepared_statements=False)
    one = Statement(sa.text("SELECT CAST(:n AS integer) + 1"))
    try:
        with through.transaction() as conn:
            ledger.open_wallet(conn, user_id="ada")
            ledger.credit(
                conn,
                user_id="ada",
                amount=10_000,
                kind=TransferKind.GRANT,
                idempotency_key="seed",
            )

        def units(worker: int) -> None:
            for n in range(25):
                with through.transaction(wallet="ada") as conn:
                    assert one.rows(conn, {"n": n}) == [(n + 1,)]
                    ledger.balance(conn, user_id="ada")
                with through.autocommit(wallet="ada") as conn:
                    ledger.spend(conn, user_id="ada", amount=1, idempotency_key=f"{worker}-{n}")
                with through.read() as conn:
                    assert one.rows(conn, {"n": n}) == [(n + 1,)]
                    ledger.history(conn, user_id="ada", limit=5)

        async def async_units() -> None:
            await through.open_async()
            try:
                for n in range(50):
                    async with through.async_autocommit() as conn:
                        assert await one.rows_async(conn, {"n": n}) == [(n + 1,)]
                        receipt = await ledger.try_spend(
                            conn, user_id="ada", amount=1, idempotency_key=f"async-{n}"
                        )
                        assert receipt is not None
                    async with through.async_autocommit() as conn:
                        batch = Batch(conn)
                        batch.add(BEGIN)
                        answer = batch.add(one, {"n": n})
                        batch.add(COMMIT)
                        await batch.send()
                        assert answer() == [(n + 1,)]
            finally:
                await through.close_async()

        with ThreadPoolExecutor(8) as threads:
            done = [threads.submit(units, worker) for worker in range(8)]
            threads.submit(asyncio.run, async_units()).result()
            for each in done:
                each.result()
        with db.read() as conn:
            assert ledger.balance(conn, user_id="ada").balance == 10_000 - 8 * 25 - 50
    finally:
        through.dispose()


def test_migrations_run_through_the_pooler(postgres_url: str, pooler: Pooler) -> None:
    with scratch_database(postgres_url) as fresh:
        url = pooler.url(fresh)
        for command in (["db", "upgrade"], ["db", "check"], ["ledger", "verify"]):
            done = _cli(*command, url=url)
            assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"


@POSTGRES_ONLY
def test_the_service_spends_and_reads_history_through_the_pooler(
    db: Database, pooler: Pooler, emulator: str, tmp_path: Path
) -> None:
    """``tokenbank serve`` and the worker on the pooler: spends from 32 clients at once,
    replays, the history walked page by page, a model call streamed and settled, and every
    answer a 2xx (or the refusal the request earns)."""
    models = tmp_path / "models.toml"
    models.write_text(MODELS.format(emulator=emulator))
    url = pooler.url(db.url.render_as_string(hide_password=False))
    (port,) = free_ports(1)
    env = clean_env(
        {
            "TOKENBANK_DATABASE_URL": url,
            "TOKENBANK_DATABASE_POOL_SIZE": "8",
            "TOKENBANK_SECRET_KEY": "test-only-key-0123456789abcdef0123456789",
            "TOKENBANK_MODELS": str(models),
            "TOKENBANK_CATALOG": str(REPO / "catalogs" / "default.toml"),
            "TOKENBANK_VAR_DIR": str(tmp_path / "var"),
            "TOKENBANK_LOG_LEVEL": "warning",
            **THROUGH_POOLER,
        }
    )
    service = Process.start(
        "tokenbank", ["serve", "--port", str(port)], env=env, directory=tmp_path
    )
    base = f"http://127.0.0.1:{port}"
    try:
        problem = wait_until_up(f"{base}/healthz", [service], timeout=60)
        assert problem is None, f"{problem}\n{service.output()}"
        with db.transaction() as conn:
            _, secret = apikeys.create_key(conn, name="app", scopes=[Scope.ADMIN])
        admin = {"Authorization": f"Bearer {secret}"}
        with httpx.Client(base_url=base, headers=admin, timeout=30) as client:
            assert client.put("/api/v1/users/ada", json={}).status_code in (200, 201)
            granted = client.post(
                "/api/v1/users/ada/grants",
                json={"amount": 5_000, "reason": "test", "idempotency_key": "g-ada"},
            )
            assert granted.status_code == 201, granted.text
            spends = [f"s-{n}" for n in range(300)]
            statuses: list[int] = []
            lock = threading.Lock()

            def spend(key: str) -> None:
                answer = client.post(
                    "/api/v1/users/ada/spend", json={"amount": 2, "idempotency_key": key}
                )
                with lock:
                    statuses.append(answer.status_code)

            with ThreadPoolExecutor(32) as threads:
                list(threads.map(spend, spends + spends[:50]))  # 50 replays
            assert set(statuses) == {201}, sorted(set(statuses))
            walked = _walk_history(
                lambda cursor: client.get(
                    "/api/v1/users/ada/history", params={"limit": 17, **cursor}
                )
            )
            assert len(walked) == 300 + 1  # every spend once, and the grant
            assert len({item["transfer_id"] for item in walked}) == len(walked)
            made = client.post("/api/v1/users/ada/llm-keys", json={"name": "test"})
            assert made.status_code == 201, made.text
        with openai.OpenAI(base_url=f"{base}/v1", api_key=made.json()["key"]) as sdk:
            stream = sdk.chat.completions.create(
                model="test-model",
                messages=[{"role": "user", "content": "[[tokens=12]]"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            usage = [chunk.usage for chunk in stream if chunk.usage is not None][-1]
        worker = _cli("worker", "--once", url=url)
        assert worker.returncode == 0, worker.stdout + worker.stderr
        with db.read() as conn:
            assert ledger.balance(conn, user_id="ada").balance == 5_000 - 2 * 300 - cost(usage)
        pools = [row for row in pooler.show("POOLS") if row["database"] == db.url.database]
        (pool,) = pools
        servers = sum(int(str(pool[k])) for k in ("sv_active", "sv_idle", "sv_used"))
        assert servers <= SERVER_CONNECTIONS < int(str(pool["cl_active"])), pool
        assert '"level": "error"' not in service.output(), service.output()[-3000:]
    finally:
        service.stop()


def _walk_history(page: Callable[[dict[str, str]], httpx.Response]) -> list[dict[str, Any]]:
    walked: list[dict[str, Any]] = []
    cursor: dict[str, str] = {}
    while True:
        answer = page(cursor)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        walked += body["items"]
        if body["next_cursor"] is None:
            return walked
        cursor = {"cursor": body["next_cursor"]}
