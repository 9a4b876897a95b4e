"""Two ``tokenbank serve`` processes on one database, as behind a load balancer: what one
process learns, the other must honour. A revoked API key is refused by every process within
``TOKENBANK_API_KEY_CACHE_SECONDS``; a revoked model key at once; a key's rate limit is one
count across processes, not one per process. On both databases."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.llm.test_gateway import ASK, MODELS
from tests.processes import REPO, Process, clean_env, free_ports, model_emulator, wait_until_up
from tokenbank import apikeys
from tokenbank.apikeys import Scope
from tokenbank.db import Database

CACHE_SECONDS = 1.0
#: Time for a request in flight when the cache lapsed, on a busy machine (the tests may
#: run in several processes at once).
SLACK_SECONDS = 3.0


@dataclass(frozen=True)
class Processes:
    urls: list[str]
    admin: dict[str, str]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with model_emulator(tmp_path_factory.mktemp("llm-emulator")) as url:
        yield url


@contextmanager
def two_processes(
    db: Database, emulator: str, tmp_path: Path, **settings: str
) -> Iterator[Processes]:
    models = tmp_path / "models.toml"
    models.write_text(MODELS.format(emulator=emulator))
    env = clean_env(
        {
            "TOKENBANK_DATABASE_URL": db.url.render_as_string(hide_password=False),
            "TOKENBANK_SECRET_KEY": "test-only-key-0123456789abcdef0123456789",
            "TOKENBANK_MODELS": str(models),
            "TOKENBANK_CATALOG": str(REPO / "catalogs" / "default.toml"),
            "TOKENBANK_VAR_DIR": str(tmp_path / "var"),
            "TOKENBANK_LOG_LEVEL": "warning",
            "TOKENBANK_API_KEY_CACHE_SECONDS": str(CACHE_SECONDS),
            **settings,
        }
    )
    with ExitStack() as stack:
        urls = []
        for name, port in zip(("a", "b"), free_ports(2), strict=True):
            directory = tmp_path / name
            directory.mkdir()
            process = Process.start(
                name, ["serve", "--port", str(port)], env=env, directory=directory
            )
            stack.callback(process.stop)
            url = f"http://127.0.0.1:{port}"
            problem = wait_until_up(f"{url}/healthz", [process], timeout=60)
            assert problem is None, f"{problem}\n{process.output()}"
            urls.append(url)
        with db.transaction() as conn:
            _, secret = apikeys.create_key(conn, name="admin", scopes=[Scope.ADMIN])
        admin = {"Authorization": f"Bearer {secret}"}
        made = httpx.put(f"{urls[0]}/api/v1/users/ada", json={}, headers=admin)
        assert made.status_code in (200, 201), made.text
        granted = httpx.post(
            f"{urls[1]}/api/v1/users/ada/grants",
            json={"amount": 10_000, "reason": "test", "idempotency_key": "g-ada"},
            headers=admin,
        )
        assert granted.status_code == 201, granted.text
        yield Processes(urls, admin)


def test_a_revoked_api_key_is_refused_by_every_process_within_the_cache_time(
    db: Database, emulator: str, tmp_path: Path
) -> None:
    with two_processes(db, emulator, tmp_path) as processes:
        with db.transaction() as conn:
            key, secret = apikeys.create_key(conn, name="app", scopes=[Scope.READ])
        headers = {"Authorization": f"Bearer {secret}"}
        for url in processes.urls:  # each process now holds the key in its cache
            assert httpx.get(f"{url}/api/v1/users/ada/balance", headers=headers).status_code == 200
        with db.transaction() as conn:
            apikeys.revoke_key(conn, key_id=key.id)
        revoked_at = time.monotonic()
        refused_after: dict[str, float] = {}
        while len(refused_after) < len(processes.urls):
            assert time.monotonic() - revoked_at < CACHE_SECONDS + SLACK_SECONDS, refused_after
            for url in processes.urls:
                answer = httpx.get(f"{url}/api/v1/users/ada/balance", headers=headers)
                if answer.status_code == 401:
                    refused_after.setdefault(url, time.monotonic() - revoked_at)
                else:
                    assert url not in refused_after, "accepted again after a refusal"
                    assert answer.status_code == 200
            time.sleep(0.05)
        for url in processes.urls:  # and never again
            for _ in range(5):
                answer = httpx.get(f"{url}/api/v1/users/ada/balance", headers=headers)
                assert answer.status_code == 401, answer.text


def test_a_model_keys_rate_limit_and_revocation_hold_across_processes(
    db: Database, emulator: str, tmp_path: Path
) -> None:
    """Calls alternate between the processes: the fifth is the limit's whichever process
    takes it, and a key revoked through one is refused by the other on its next call."""
    limit = {"TOKENBANK_LLM_LIMIT_PER_KEY": "4/minute"}
    with two_processes(db, emulator, tmp_path, **limit) as processes:
        keys = []
        for name in ("limited", "revoked"):
            made = httpx.post(
                f"{processes.urls[0]}/api/v1/users/ada/llm-keys",
                json={"name": name},
                headers=processes.admin,
            )
            assert made.status_code == 201, made.text
            keys.append(made.json())

        def call(url: str, key: str) -> httpx.Response:
            return httpx.post(
                f"{url}/v1/chat/completions",
                json={"model": "test-model", "messages": ASK, "max_tokens": 12},
                headers={"Authorization": f"Bearer {key}"},
                timeout=30,
            )

        statuses = [call(processes.urls[n % 2], keys[0]["key"]).status_code for n in range(6)]
        assert statuses == [200, 200, 200, 200, 429, 429], statuses
        for url in processes.urls:
            assert call(url, keys[1]["key"]).status_code == 200
        revoked = httpx.post(
            f"{processes.urls[0]}/api/v1/users/ada/llm-keys/{keys[1]['id']}/revoke",
            headers=processes.admin,
        )
        assert revoked.status_code == 200, revoked.text
        for url in reversed(processes.urls):
            assert call(url, keys[1]["key"]).status_code == 401
