"""``make soak``: minutes of mixed load on a real deployment while it is hurt on purpose.

tokenbank (``tokenbank serve``), the Stripe emulator (``tokenbank stripe-emulator``, every
webhook delivered twice) and a PostgreSQL server of its own run as processes. Client threads
spend, hold and settle, and buy tokens through the emulator, retrying what got no definite
answer under the same idempotency key, as a well-behaved client does. Every minute the
service is killed with SIGKILL and started again; half a minute later PostgreSQL is
restarted (``pg_ctl restart -m immediate``). At the end the webhooks' gaps are reconciled
and the outcome is checked:

- ``tokenbank ledger verify`` passes;
- every spend that was acknowledged is still there, with the answer it got;
- every payment the emulator took is credited exactly once;

and a summary says how many requests there were, how they were answered, and how long the
service took to answer again after each fault.

    python -m tests.faults.soak --minutes 10 [--database sqlite]

Not part of ``make test`` (it takes minutes); its last run is in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

from tests.postgres import LocalPostgres, local_postgres, scratch_database
from tests.processes import REPO, TOKENBANK, Process, clean_env, free_ports, wait_until_up

SECRET_KEY = "sk_test_soak"
WEBHOOK_SECRET = "whsec_soak_0123456789abcdef"


@dataclass
class Log:
    """Every answer, by when it came: a status, or the transport error's name."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    answers: list[tuple[float, str, int | str]] = field(default_factory=list)
    spends: dict[str, dict[str, Any]] = field(default_factory=dict)  # by key: first answer
    purchases: dict[str, str] = field(default_factory=dict)  # paid session -> user path

    def note(self, what: str, answer: int | str) -> None:
        with self.lock:
            self.answers.append((time.monotonic(), what, answer))


@dataclass
class Deployment:
    directory: Path
    env: dict[str, str]
    url: str
    emulator_url: str
    key: str = ""
    service: Process | None = None
    runs: int = 0

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(TOKENBANK), *args],
            env=self.env,
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    def start_service(self) -> None:
        self.runs += 1
        self.service = Process.start(
            f"tokenbank-{self.runs}",
            ("serve", "--host", "127.0.0.1", "--port", self.url.rsplit(":", 1)[1]),
            env=self.env,
            directory=self.directory,
        )
        problem = wait_until_up(f"{self.url}/healthz", [self.service], timeout=60)
        if problem:
            raise SystemExit(f"tokenbank did not start: {problem}")


def _send(
    http: httpx.Client, log: Log, what: str, method: str, path: str, *, body: Any = None
) -> httpx.Response | None:
    """One request, retried (same body, same key) until the answer is definite."""
    for _ in range(600):
        try:
            answer = http.request(method, path, json=body)
        except httpx.TransportError as exc:
            log.note(what, type(exc).__name__)
            time.sleep(0.2)
            continue
        log.note(what, answer.status_code)
        if answer.status_code in (502, 503, 504):
            time.sleep(min(float(answer.headers.get("retry-after", "1")), 2))
            continue
        return answer
    return None


def _client(deployment: Deployment, log: Log, name: str, stop: threading.Event) -> None:
    rng = random.Random(name)
    user = f"/api/v1/users/soak-{name}"
    headers = {"Authorization": f"Bearer {deployment.key}"}
    with httpx.Client(base_url=deployment.url, headers=headers, timeout=30) as http:
        _send(http, log, "user", "PUT", user, body={})
        grant = {"amount": 1_000_000, "reason": "soak", "idempotency_key": f"{name}-grant"}
        _send(http, log, "grant", "POST", f"{user}/grants", body=grant)
        serial = 0
        while not stop.is_set():
            serial += 1
            roll = rng.random()
            if roll < 0.7:
                _spend(http, log, user, key=f"{name}-spend-{serial}", amount=rng.randint(1, 20))
            elif roll < 0.9:
                body = {"amount": 50, "idempotency_key": f"{name}-hold-{serial}"}
                held = _send(http, log, "hold", "POST", f"{user}/holds", body=body)
                if held is not None and held.status_code == 201:
                    hold = f"/api/v1/holds/{held.json()['hold_id']}"
                    if rng.random() < 0.5:
                        _send(http, log, "post", "POST", f"{hold}/post", body={"amount": 7})
                    else:
                        _send(http, log, "void", "POST", f"{hold}/void")
            else:
                key = f"{name}-buy-{serial}"
                body = {"package_id": "starter", "idempotency_key": key}
                started = _send(
                    http, log, "checkout", "POST", f"{user}/checkout-sessions", body=body
                )
                if started is not None and started.status_code == 201:
                    session = started.json()["checkout_session_id"]
                    if _pay(deployment, session):
                        with log.lock:
                            log.purchases[session] = user


def _spend(http: httpx.Client, log: Log, user: str, *, key: str, amount: int) -> None:
    body = {"amount": amount, "idempotency_key": key}
    answer = _send(http, log, "spend", "POST", f"{user}/spend", body=body)
    if answer is not None and answer.status_code == 201:
        with log.lock:
            log.spends.setdefault(key, {**answer.json(), "amount": amount, "user": user})


def _pay(deployment: Deployment, session: str) -> bool:
    """The buyer pays on Stripe's page (the emulator's)."""
    try:
        paid = httpx.post(
            f"{deployment.emulator_url}/_emulator/checkout_sessions/{session}/pay",
            json={"card": "4242424242424242"},
            timeout=60,
        )
    except httpx.TransportError:
        return False
    return paid.status_code == 200


def _pages(http: httpx.Client, log: Log, path: str, **params: Any) -> list[dict[str, Any]]:
    """Every item of a paged list, each page retried until it answers."""
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        answer = _send(http, log, "check", "GET", f"{path}?{urlencode(query)}")
        assert answer is not None and answer.status_code == 200, path
        page = answer.json()
        found += page["items"]
        if not (cursor := page["next_cursor"]):
            return found


def _recoveries(log: Log, faults: list[tuple[float, str]]) -> dict[str, list[float]]:
    """For each fault, seconds until the next successful answer after it."""
    found: dict[str, list[float]] = collections.defaultdict(list)
    for at, kind in faults:
        after = [t for t, _, answer in log.answers if t > at and answer in (200, 201)]
        if after:
            found[kind].append(min(after) - at)
    return found


def _deploy(
    stack: ExitStack, database: str, directory: Path
) -> tuple[Deployment, LocalPostgres | None]:
    port, emulator_port = free_ports(2)
    server = None
    if database == "postgresql":
        server = stack.enter_context(local_postgres())
        url = stack.enter_context(scratch_database(server.url))
    else:
        url = f"sqlite:///{directory / 'tokenbank.db'}"
    env = clean_env(
        {
            "TOKENBANK_DATABASE_URL": url,
            "TOKENBANK_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "TOKENBANK_SECRET_KEY": "soak-" + "k" * 40,
            "TOKENBANK_VAR_DIR": str(directory / "var"),
            "TOKENBANK_CATALOG": str(REPO / "catalogs" / "default.toml"),
            "TOKENBANK_LOG_LEVEL": "warning",
            "STRIPE_SECRET_KEY": SECRET_KEY,
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "STRIPE_API_BASE": f"http://127.0.0.1:{emulator_port}",
        }
    )
    deployment = Deployment(
        directory, env, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{emulator_port}"
    )
    emulator = Process.start(
        "stripe-emulator",
        (
            "stripe-emulator",
            "--port",
            str(emulator_port),
            "--webhook-url",
            f"{deployment.url}/webhooks/stripe",
        ),
        env=env,
        directory=directory,
    )
    stack.callback(emulator.stop)
    if wait_until_up(f"{deployment.emulator_url}/_emulator/health", [emulator], timeout=30):
        raise SystemExit("the emulator did not start")
    httpx.post(f"{deployment.emulator_url}/_emulator/webhooks/config", json={"duplicate": 2})
    for step in (("db", "upgrade"), ("packages", "sync")):
        done = deployment.cli(*step)
        if done.returncode:
            raise SystemExit(done.stderr)
    created = deployment.cli("apikeys", "create", "--name", "soak", "--scope", "admin")
    deployment.key = created.stdout.strip().splitlines()[-1]
    return deployment, server


def _stop(deployment: Deployment) -> None:
    if deployment.service is not None:
        deployment.service.stop()


def soak(minutes: float, database: str, clients: int) -> int:
    directory = Path(tempfile.mkdtemp(prefix="tokenbank-soak-"))
    log = Log()
    faults: list[tuple[float, str]] = []
    with ExitStack() as stack:
        deployment, server = _deploy(stack, database, directory)
        deployment.start_service()
        stack.callback(_stop, deployment)
        stop = threading.Event()
        threads = [
            threading.Thread(target=_client, args=(deployment, log, f"c{n}", stop), daemon=True)
            for n in range(clients)
        ]
        for thread in threads:
            thread.start()
        began = time.monotonic()
        end = began + minutes * 60
        next_kill, next_restart = began + 60, began + 90
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_kill:
                assert deployment.service is not None
                deployment.service.kill()
                faults.append((time.monotonic(), "kill -9"))
                deployment.start_service()
                next_kill += 60
            if server is not None and now >= next_restart:
                faults.append((time.monotonic(), "database restart"))
                server.restart()
                next_restart += 60
            time.sleep(0.2)
        stop.set()
        for thread in threads:
            thread.join(120)
        reconciled = deployment.cli("reconcile", "--since", "2h")
        verified = deployment.cli("ledger", "verify")
        problems = _check(deployment, log)
        _summary(
            log,
            faults=faults,
            minutes=minutes,
            database=database,
            reconciled=reconciled,
            verified=verified,
            problems=problems,
        )
    shutil.rmtree(directory, ignore_errors=True)
    return 1 if problems or verified.returncode or reconciled.returncode else 0


def _check(deployment: Deployment, log: Log) -> list[str]:
    problems = []
    headers = {"Authorization": f"Bearer {deployment.key}"}
    checks = Log()
    with httpx.Client(base_url=deployment.url, headers=headers, timeout=30) as http:
        for key, first in log.spends.items():
            body = {"amount": first["amount"], "idempotency_key": key}
            again = _send(http, checks, "check", "POST", f"{first['user']}/spend", body=body)
            answer = again.json() if again is not None else {}
            if not answer.get("replayed") or answer.get("transfer_id") != first["transfer_id"]:
                problems.append(f"acknowledged spend {key} changed: {first} -> {answer}")
        for user in set(log.purchases.values()):
            status = {
                p["checkout_session_id"]: p["status"]
                for p in _pages(http, checks, f"{user}/purchases")
            }
            for session in (s for s, u in log.purchases.items() if u == user):
                if status.get(session) != "paid":
                    problems.append(f"paid session {session} is {status.get(session)}")
            credited = collections.Counter(
                item["metadata"]["purchase_id"]
                for item in _pages(http, checks, f"{user}/history", kind="purchase", limit=500)
            )
            problems += [f"purchase {p} credited {n} times" for p, n in credited.items() if n != 1]
    return problems


def _summary(
    log: Log,
    *,
    faults: list[tuple[float, str]],
    minutes: float,
    database: str,
    reconciled: subprocess.CompletedProcess[str],
    verified: subprocess.CompletedProcess[str],
    problems: list[str],
) -> None:
    answers = collections.Counter(str(answer) for _, _, answer in log.answers)
    recoveries = _recoveries(log, faults)
    print(f"\nsoak: {minutes:g} minutes on {database}, {len(faults)} faults")
    print(
        f"requests: {len(log.answers)}  "
        + "  ".join(f"{k}: {v}" for k, v in sorted(answers.items()))
    )
    print(f"acknowledged spends: {len(log.spends)}, paid purchases: {len(log.purchases)}")
    for kind, seconds in sorted(recoveries.items()):
        print(
            f"{kind}: {len(seconds)} times; back in median {statistics.median(seconds):.2f} s,"
            f" worst {max(seconds):.2f} s"
        )
    print("reconcile:", reconciled.stdout.strip().splitlines()[-1:] or reconciled.stderr.strip())
    print("ledger verify:", "ok" if verified.returncode == 0 else verified.stdout + verified.stderr)
    print("problems:", "none" if not problems else "\n  " + "\n  ".join(problems[:20]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--database", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--clients", type=int, default=8)
    options = parser.parse_args()
    os.chdir(REPO)
    raise SystemExit(soak(options.minutes, options.database, options.clients))


if __name__ == "__main__":
    main()
