"""HTTP throughput and latency of tokenbank against a minimal reference app, in one run.

    make bench                      # the ledger benchmark, then this one
    python -m bench.http [--seconds 6] [--rounds 3]

Both services run as real uvicorn processes with one worker on the same scratch PostgreSQL
database (``TOKENBANK_BENCH_DATABASE_URL``, else ``TOKENBANK_TEST_DATABASE_URL``, else
postgresql://postgres@127.0.0.1:5432/test; created and dropped here):

* tokenbank: ``tokenbank serve`` as deployed: API key check, validation, idempotency,
  JSON access log line per request, Prometheus metrics;
* reference: ``bench/reference_app.py``, FastAPI + psycopg with no auth, no logs, no
  metrics, sending the same spend statement and a one-row balance SELECT.

A keep-alive load generator (asyncio, in this process) drives both alike, in interleaved
slices so drift falls on both: spends at 64 concurrent clients over 1,000 wallets, each with
a new idempotency key; balance reads at 16 concurrent clients. It prints throughput, p50 and
p99 latency, and the ratios tokenbank/reference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.ledger import postgres_database
from tokenbank import apikeys, ledger, migrations, users
from tokenbank.apikeys import Scope
from tokenbank.db import connect
from tokenbank.ledger import TransferKind

WALLETS = 1_000
SEED_TOKENS = 10**12
BIN = Path(sys.executable).parent

MakeRequest = Callable[[], bytes]


@dataclass(frozen=True)
class Result:
    requests: int
    seconds: float
    latencies: list[float]
    errors: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _client(
    port: int, make: MakeRequest, until: float, latencies: list[float], errors: list[int]
) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    done = 0
    clock = time.perf_counter
    while clock() < until:
        request = make()
        start = clock()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        lowered = head.lower()
        at = lowered.index(b"content-length:") + 15
        length = int(lowered[at : lowered.index(b"\r\n", at)])
        await reader.readexactly(length)
        latencies.append(clock() - start)
        if head[9:10] != b"2":
            errors[0] += 1
        done += 1
    writer.close()
    return done


async def _load(port: int, make: MakeRequest, clients: int, seconds: float) -> Result:
    until = time.perf_counter() + seconds
    latencies: list[float] = []
    errors = [0]
    start = time.perf_counter()
    counts = await asyncio.gather(
        *(_client(port, make, until, latencies, errors) for _ in range(clients))
    )
    return Result(sum(counts), time.perf_counter() - start, latencies, errors[0])


def load(port: int, make: MakeRequest, clients: int, seconds: float) -> Result:
    return asyncio.run(_load(port, make, clients, seconds))


def spend_request(path: str, headers: str) -> MakeRequest:
    prefix = uuid.uuid4().hex[:10]
    counter = iter(range(10**12))

    def make() -> bytes:
        user = f"u{random.randrange(WALLETS)}"
        body = json.dumps({"amount": 1, "idempotency_key": f"{prefix}-{next(counter)}"})
        return (
            f"POST {path.format(user=user)} HTTP/1.1\r\nHost: bench\r\n{headers}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
        ).encode()

    return make


def balance_request(path: str, headers: str) -> MakeRequest:
    def make() -> bytes:
        user = f"u{random.randrange(WALLETS)}"
        return f"GET {path.format(user=user)} HTTP/1.1\r\nHost: bench\r\n{headers}\r\n".encode()

    return make


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def service(command: list[str], env: dict[str, str], port: int) -> Iterator[int]:
    """The server ``command`` starts, once it answers on ``port``: its process id."""
    process = subprocess.Popen(
        command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/docs"):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    output = process.stderr.read().decode() if process.stderr else ""
                    raise RuntimeError(f"the service did not start: {output}") from None
                time.sleep(0.1)
        yield process.pid
    finally:
        process.terminate()
        process.wait(timeout=10)


def prepare(url: str, *, wallets: int = WALLETS) -> str:
    """Migrate, seed the wallets ``u0`` ... , return a new API key."""
    db = connect(url, pool_size=2)
    migrations.upgrade(db)
    with db.transaction() as conn:
        for n in range(wallets):
            users.create_user(conn, user_id=f"u{n}")
            ledger.credit(
                conn,
                user_id=f"u{n}",
                amount=SEED_TOKENS,
                kind=TransferKind.GRANT,
                idempotency_key=f"seed-{n}",
            )
        _, secret = apikeys.create_key(conn, name="bench", scopes=[Scope.SPEND])
    db.dispose()
    return secret


@dataclass(frozen=True)
class Scenario:
    name: str
    clients: int
    tokenbank: MakeRequest
    reference: MakeRequest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per slice")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", choices=["spend", "balance"], help="one scenario")
    args = parser.parse_args()

    with postgres_database() as url:
        secret = prepare(url)
        env = {"TOKENBANK_DATABASE_URL": url, "TOKENBANK_SECRET_KEY": "bench-" + "k" * 40}
        ours, theirs = free_port(), free_port()
        auth = f"Authorization: Bearer {secret}\r\n"
        scenarios = [
            Scenario(
                "spend, 64 clients",
                64,
                spend_request("/api/v1/users/{user}/spend", auth),
                spend_request("/spend/{user}", ""),
            ),
            Scenario(
                "balance, 16 clients",
                16,
                balance_request("/api/v1/users/{user}/balance", auth),
                balance_request("/balance/{user}", ""),
            ),
        ]
        scenarios = [s for s in scenarios if args.only is None or s.name.startswith(args.only)]
        tokenbank = [str(BIN / "tokenbank"), "serve", "--port", str(ours)]
        reference = [
            str(BIN / "python"),
            "-m",
            "uvicorn",
            "bench.reference_app:app",
            "--port",
            str(theirs),
            "--log-level",
            "warning",
            "--no-access-log",
        ]
        print(f"one uvicorn worker each; {args.rounds} rounds of {args.seconds:g} s per point")
        with service(tokenbank, env, ours), service(reference, env, theirs):
            for scenario in scenarios:  # warm both up
                load(ours, scenario.tokenbank, scenario.clients, 1.0)
                load(theirs, scenario.reference, scenario.clients, 1.0)
            for scenario in scenarios:
                results: dict[str, list[Result]] = {"tokenbank": [], "reference": []}
                for _ in range(args.rounds):
                    results["tokenbank"].append(
                        load(ours, scenario.tokenbank, scenario.clients, args.seconds)
                    )
                    results["reference"].append(
                        load(theirs, scenario.reference, scenario.clients, args.seconds)
                    )
                report(scenario.name, results)


def report(name: str, results: dict[str, list[Result]]) -> None:
    line = {}
    for app, runs in results.items():
        merged = Result(
            sum(r.requests for r in runs),
            sum(r.seconds for r in runs),
            [x for r in runs for x in r.latencies],
            sum(r.errors for r in runs),
        )
        line[app] = merged
        spread = statistics.pstdev([r.rate for r in runs]) / merged.rate * 100
        print(
            f"{name:<20} {app:<10} {merged.rate:8,.0f} req/s (±{spread:3.0f} %)"
            f"  p50 {merged.percentile(0.50):6.2f} ms  p99 {merged.percentile(0.99):6.2f} ms"
            f"  non-2xx {merged.errors}"
        )
    ours, theirs = line["tokenbank"], line["reference"]
    print(
        f"{name:<20} ratio      throughput {ours.rate / theirs.rate:.2f}x"
        f"  p99 {ours.percentile(0.99) / theirs.percentile(0.99):.2f}x"
    )


if __name__ == "__main__":
    main()
