"""The model gateway against the model emulator called directly and a bare pass-through
proxy, in one run.

    make bench                      # the ledger and HTTP benchmarks, then this one
    python -m bench.gateway [--seconds 8] [--rounds 3] [--streams 32]

Four real processes: the model emulator (``tokenbank llm-emulator``), ``tokenbank serve``
on a scratch PostgreSQL database with its models file pointing at the emulator, and
``bench/proxy_app.py``, a Starlette app that passes the request and the answer through as
bytes (no key, no database, no parsing). A load generator in this process (httpx, asyncio)
streams chat completions through each target in turn, in interleaved slices, each stream
with a user's model key (``tbu_``) of its own:

(a) at a realistic pace (200 ms to the first token, 20 ms per output token, 50 output
    tokens a call, ``--streams`` concurrent streams): calls per second and the first
    token's p50 latency, direct, through the gateway and through the bare proxy, with
    their ratios and differences; twice: the streams in step (every call of a round
    arriving in the same millisecond) and staggered (as independent users' would);
(b) with no delay (every token at once): calls per second and CPU time per call, of the
    gateway (hold, forward, settle) and of the bare proxy, read from ``/proc`` for the app
    process and, for the gateway, for PostgreSQL's processes too.

It prints each figure and the ratios; docs/benchmarks.md records them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.http import free_port
from bench.ledger import postgres_database
from tokenbank import ledger, migrations, users
from tokenbank.db import connect
from tokenbank.ledger import TransferKind
from tokenbank.llm import keys

BIN = Path(sys.executable).parent
#: The first word of an answer (the emulator's are w1, w2...).
FIRST_WORD = re.compile(rb'"content"\s*:\s*"w1')
TICKS = os.sysconf("SC_CLK_TCK")
SEED_TOKENS = 10**12
OUTPUT_TOKENS = 50
FIRST_TOKEN_MS, TOKEN_MS = 200, 20
#: How the 32 streams' calls arrive. All at once: every stream's calls take as long, so
#: they stay in step, 32 arriving in the same millisecond every call's length. Staggered:
#: stream n starts n/32 of a call's length in, as independent users' calls would.
ARRIVALS = (
    ("all streams in step", 0.0),
    ("streams staggered", (FIRST_TOKEN_MS + OUTPUT_TOKENS * TOKEN_MS) / 1000),
)
MODELS = """
[upstreams.emulator]
base_url = "http://127.0.0.1:{port}/v1"

[models.bench]
upstream = "emulator"
input_per_million = 1000000
output_per_million = 1000000
max_output_tokens = 100
"""


@dataclass
class Result:
    calls: int = 0
    errors: int = 0
    seconds: float = 0.0
    first_tokens: list[float] = field(default_factory=list)
    cpu: float = 0.0  # the app process's CPU seconds
    database_cpu: float = 0.0  # PostgreSQL's, for the gateway

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    def first_p50(self) -> float:
        return statistics.median(self.first_tokens) * 1000 if self.first_tokens else 0.0

    def cpu_per_call(self) -> float:
        return self.cpu / self.calls * 1000 if self.calls else 0.0

    def database_per_call(self) -> float:
        return self.database_cpu / self.calls * 1000 if self.calls else 0.0

    def add(self, other: Result) -> None:
        self.calls += other.calls
        self.errors += other.errors
        self.seconds += other.seconds
        self.first_tokens += other.first_tokens
        self.cpu += other.cpu
        self.database_cpu += other.database_cpu


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU of these processes and of their children (``serve --workers``)."""
    total = 0
    for pid in {p for root in pids for p in _tree(root)}:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    return total / TICKS


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants, as they are now."""
    found = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return found
    for child in children:
        found += _tree(int(child))
    return found


def postgres_pids() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() in ("postgres", "postmaster"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


async def _stream(
    client: httpx.AsyncClient, url: str, key: str, until: float, result: Result, *, delay: float
) -> None:
    await asyncio.sleep(delay)
    body = {
        "model": "bench",
        "stream": True,
        "max_tokens": OUTPUT_TOKENS,
        "messages": [{"role": "user", "content": f"[[tokens={OUTPUT_TOKENS}]]"}],
    }
    headers = {"Authorization": f"Bearer {key}"}
    clock = time.perf_counter
    while clock() < until:
        started = clock()
        first = None
        try:
            async with client.stream("POST", url, json=body, headers=headers) as answer:
                if answer.status_code != 200:
                    await answer.aread()
                    result.errors += 1
                    continue
                async for piece in answer.aiter_raw():
                    if first is None and FIRST_WORD.search(piece):
                        first = clock() - started
        except httpx.HTTPError:
            result.errors += 1
            continue
        result.calls += 1
        if first is not None:
            result.first_tokens.append(first)


def load(
    url: str,
    call_keys: list[str],
    seconds: float,
    pids: list[int],
    database: bool,
    *,
    stagger: float = 0.0,
) -> Result:
    """Each key's stream of calls for ``seconds``; stream n starts ``stagger`` x n / streams
    seconds in (0: all at once)."""

    async def run() -> Result:
        result = Result()
        limits = httpx.Limits(max_connections=len(call_keys) * 2)
        async with httpx.AsyncClient(limits=limits, timeout=60, trust_env=False) as client:
            cpu, db_cpu = cpu_seconds(pids), cpu_seconds(postgres_pids()) if database else 0.0
            started = time.perf_counter()
            until = started + seconds
            await asyncio.gather(
                *(
                    _stream(client, url, key, until, result, delay=stagger * n / len(call_keys))
                    for n, key in enumerate(call_keys)
                )
            )
            # Stream n runs stagger x n / streams seconds less: the mean is taken off.
            ramp = stagger * (len(call_keys) - 1) / (2 * len(call_keys))
            result.seconds = time.perf_counter() - started - ramp
            result.cpu = cpu_seconds(pids) - cpu
            if database:
                result.database_cpu = cpu_seconds(postgres_pids()) - db_cpu
        return result

    return asyncio.run(run())


@contextmanager
def process(command: list[str], env: dict[str, str], health: str) -> Iterator[int]:
    started = subprocess.Popen(
        command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(health):
                    break
            except OSError:
                if started.poll() is not None or time.monotonic() > deadline:
                    output = started.stderr.read().decode() if started.stderr else ""
                    raise RuntimeError(f"{command[0]} did not start: {output}") from None
                time.sleep(0.1)
        yield started.pid
    finally:
        started.terminate()
        started.wait(timeout=10)


def prepare(url: str, count: int) -> list[str]:
    """Migrate, and give each stream a user with tokens and a model key of theirs."""
    db = connect(url, pool_size=2)
    migrations.upgrade(db)
    secrets = []
    with db.transaction() as conn:
        for n in range(count):
            users.create_user(conn, user_id=f"u{n}")
            ledger.credit(
                conn,
                user_id=f"u{n}",
                amount=SEED_TOKENS,
                kind=TransferKind.GRANT,
                idempotency_key=f"seed-{n}",
            )
            secrets.append(keys.create_key(conn, user_id=f"u{n}", name="bench")[1])
    db.dispose()
    return secrets


def pace(emulator: str, first_ms: float, token_ms: float) -> None:
    request = urllib.request.Request(
        f"{emulator}/_emulator/config",
        data=f'{{"first_token_ms": {first_ms}, "token_ms": {token_ms}}}'.encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request):
        pass
    with urllib.request.urlopen(urllib.request.Request(f"{emulator}/_emulator/reset", b"")):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="per slice")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument(
        "--workers", type=int, default=1, help="the gateway's worker processes (serve --workers)"
    )
    parser.add_argument(
        "--rate-limit-storage",
        help="TOKENBANK_RATE_LIMIT_STORAGE for the gateway (default: the database)",
    )
    args = parser.parse_args()

    with postgres_database() as url, ExitStack() as stack:
        call_keys = prepare(url, args.streams)
        e_port, g_port, p_port = free_port(), free_port(), free_port()
        emulator = f"http://127.0.0.1:{e_port}"
        models = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "models.toml"
        models.write_text(MODELS.format(port=e_port))
        env = {
            "TOKENBANK_DATABASE_URL": url,
            "TOKENBANK_SECRET_KEY": "bench-" + "k" * 40,
            "TOKENBANK_MODELS": str(models),
            "TOKENBANK_LLM_LIMIT_PER_KEY": "1000000/minute",
            "TOKENBANK_LOG_LEVEL": "warning",
            "BENCH_UPSTREAM": f"{emulator}/v1",
            **(
                {"TOKENBANK_RATE_LIMIT_STORAGE": args.rate_limit_storage}
                if args.rate_limit_storage
                else {}
            ),
        }
        stack.enter_context(
            process(
                [str(BIN / "tokenbank"), "llm-emulator", "--port", str(e_port)],
                env,
                f"{emulator}/_emulator/health",
            )
        )
        gateway_pid = stack.enter_context(
            process(
                [
                    *(str(BIN / "tokenbank"), "serve", "--port", str(g_port)),
                    *("--workers", str(args.workers)),
                ],
                env,
                f"http://127.0.0.1:{g_port}/healthz",
            )
        )
        proxy_pid = stack.enter_context(
            process(
                [
                    *(str(BIN / "python"), "-m", "uvicorn", "bench.proxy_app:app"),
                    *("--port", str(p_port), "--log-level", "warning", "--no-access-log"),
                ],
                env,
                f"http://127.0.0.1:{p_port}/health",
            )
        )
        targets = {
            "direct": (f"{emulator}/v1/chat/completions", [], False),
            "gateway": (f"http://127.0.0.1:{g_port}/v1/chat/completions", [gateway_pid], True),
            "proxy": (f"http://127.0.0.1:{p_port}/v1/chat/completions", [proxy_pid], False),
        }
        print(
            f"{args.streams} concurrent streams of {OUTPUT_TOKENS} output tokens;"
            f" {args.rounds} rounds of {args.seconds:g} s per target, interleaved"
        )

        def phase(names: list[str], stagger: float = 0.0) -> dict[str, Result]:
            results = {name: Result() for name in names}
            for name in names:  # warm up
                target, pids, database = targets[name]
                load(target, call_keys, 1.0, pids, database)
            for _ in range(args.rounds):
                for name in names:
                    target, pids, database = targets[name]
                    results[name].add(
                        load(target, call_keys, args.seconds, pids, database, stagger=stagger)
                    )
            return results

        pace(emulator, FIRST_TOKEN_MS, TOKEN_MS)
        for arrivals, stagger in ARRIVALS:
            paced = phase(["direct", "gateway", "proxy"], stagger)
            print(
                f"(a) {FIRST_TOKEN_MS} ms to the first token, {TOKEN_MS} ms per token; {arrivals}"
            )
            for name, result in paced.items():
                print(
                    f"  {name:<8} {result.rate:7.1f} calls/s  first token p50"
                    f" {result.first_p50():6.1f} ms  errors {result.errors}"
                )
            direct = paced["direct"]
            for name in ("gateway", "proxy"):
                print(
                    f"  {name} against direct: throughput {paced[name].rate / direct.rate:.2f}x"
                    f"  first token p50 +{paced[name].first_p50() - direct.first_p50():.1f} ms"
                )

        pace(emulator, 0, 0)
        fast = phase(["gateway", "proxy"])
        print("(b) no delay")
        for name, result in fast.items():
            database = (
                f"  + PostgreSQL {result.database_per_call():5.2f} ms" if name == "gateway" else ""
            )
            print(
                f"  {name:<8} {result.rate:7.1f} calls/s  CPU per call"
                f" {result.cpu_per_call():5.2f} ms{database}  errors {result.errors}"
            )
        gateway, proxy = fast["gateway"], fast["proxy"]
        print(
            f"  ratio    throughput {gateway.rate / proxy.rate:.2f}x"
            f"  CPU per call {gateway.cpu_per_call() / proxy.cpu_per_call():.2f}x"
        )
        db = connect(url, pool_size=1)
        with db.read() as conn:
            report = ledger.verify(conn)
        db.dispose()
        print(f"ledger verify after the run: {'ok' if report.ok else 'FAILED'}")


if __name__ == "__main__":
    main()
