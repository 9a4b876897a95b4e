"""HTTP spends under a real load generator, ``wrk``: tokenbank against the reference app, one
hot wallet against many, and one process against two, in one run.

    make bench-scale                # with the other scale benchmarks
    python -m bench.spends [--seconds 8] [--rounds 3] [--only reference|hot|processes]

``wrk`` (Debian's package; ``make bench-tools`` installs it) runs in C with one thread and 64
keep-alive connections (``-t1 -c64``), so the load generator takes little of the 2 cores
from the servers, unlike ``bench.http``'s Python one. Its Lua script posts spends of 1
token, each with a fresh idempotency key, to wallets picked at random. Servers are real
uvicorn processes on one scratch PostgreSQL database (see ``bench.http``):

* reference: tokenbank's spend (one worker, 10,000 wallets) against ``bench/reference_app.py``,
  which sends the same spend statement with no auth, logs or metrics. Target >= 0.9x.
* hot: 64 connections spending from one wallet against the same spread over 10,000 wallets.
  Target: hot >= 0.5x spread, no errors.
* processes: one ``tokenbank serve``, ``serve --workers 2``, and two ``serve`` processes on
  their own ports (two ``wrk`` of 32 connections each). On 2 cores one process already
  leaves little idle, so what shows scale-out is the CPU per request, read from ``/proc`` for
  every app process and every PostgreSQL process, staying flat from one process to two.

Each variant runs ``--rounds`` times, interleaved with the one it is compared with, so drift
falls on both. A run prints requests per second, p50 and p99 latency, non-2xx answers, CPU
per request (app and PostgreSQL), and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.gateway import cpu_seconds, postgres_pids
from bench.http import free_port, prepare, service
from bench.ledger import postgres_database

BIN = Path(sys.executable).parent
WALLETS = 10_000
CONNECTIONS = 64

#: wrk's script: a spend with a fresh key to a random wallet among ``wallets`` (one: ``u0``),
#: and, when done, the figures as one JSON line (wrk's own summary is for people).
SCRIPT = """
local prefix = string.format("%%08x", math.random(0, 0x7fffffff)) .. "%(tag)s"
local counter = 0
local wallets = %(wallets)d
local auth = "%(auth)s"
local threads = {}
statuses = {}
unclean = 0

setup = function(thread)
  table.insert(threads, thread)
end

request = function()
  counter = counter + 1
  local user = "u" .. math.random(0, wallets - 1)
  local body = '{"amount":1,"idempotency_key":"' .. prefix .. "-" .. counter .. '"}'
  local headers = {["Content-Type"] = "application/json"}
  if auth ~= "" then headers["Authorization"] = auth end
  return wrk.format("POST", string.format("%(path)s", user), headers, body)
end

response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 503 and headers["Retry-After"] == nil and headers["retry-after"] == nil then
    unclean = unclean + 1
  elseif status >= 300 and status ~= 503 and string.find(body, "locked", 1, true) then
    unclean = unclean + 1
  end
end

done = function(summary, latency, requests)
  local errors = summary.errors
  local counted = {}
  local unclean_total = 0
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      table.insert(counted, string.format('"%%d":%%d', status, n))
    end
    unclean_total = unclean_total + thread:get("unclean")
  end
  io.write(string.format(
    '\\nRESULT {"requests":%%d,"seconds":%%f,"p50":%%f,"p99":%%f,"non2xx":%%d,"socket":%%d,'
    .. '"unclean":%%d,"statuses":{%%s}}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3,
    latency:percentile(99) / 1e3, errors.status,
    errors.connect + errors.read + errors.write + errors.timeout,
    unclean_total, table.concat(counted, ",")))
end
"""


@dataclass
class Result:
    requests: int = 0
    seconds: float = 0.0
    non2xx: int = 0
    socket_errors: int = 0
    #: Answers by status; and a 503 without ``Retry-After``, or another failure whose body
    #: says "locked" (SQLite's own error let through).
    statuses: dict[int, int] = field(default_factory=dict)
    unclean: int = 0
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    app_cpu: float = 0.0
    database_cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def line(self, name: str) -> str:
        per = 1000 / max(self.requests, 1)
        return (
            f"{name:<28} {self.rate:8,.0f} req/s  p50 {median(self.p50):6.2f} ms"
            f"  p99 {median(self.p99):7.2f} ms  non-2xx {self.non2xx + self.socket_errors}"
            f"  CPU/req app {self.app_cpu * per:5.2f} ms + PostgreSQL"
            f" {self.database_cpu * per:5.2f} ms"
            + (
                f"\n{'':<28} answers by status {dict(sorted(self.statuses.items()))}"
                if self.non2xx
                else ""
            )
        )


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else 0.0


@dataclass(frozen=True)
class Target:
    """Where one ``wrk`` sends its spends."""

    port: int
    path: str  # with %s for the user id
    auth: str
    wallets: int


def wrk_program() -> str:
    found = shutil.which("wrk")
    if found is None:
        sys.exit("wrk is missing: `make bench-tools` (or `apt-get install wrk`) installs it")
    return found


def run_wrk(targets: list[Target], connections: int, seconds: float, pids: list[int]) -> Result:
    """One ``wrk -t1`` per target at once, ``connections`` shared among them; CPU is read
    before and after from ``/proc`` for ``pids`` (and their children) and PostgreSQL."""
    scripts: list[str] = []
    with ExitStack() as stack:
        for n, target in enumerate(targets):
            lua = stack.enter_context(tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False))
            lua.write(
                SCRIPT
                % {
                    "tag": f"{n}{time.monotonic_ns()}",
                    "wallets": target.wallets,
                    "auth": target.auth,
                    "path": target.path,
                }
            )
            lua.close()
            scripts.append(lua.name)
        database = postgres_pids()
        app_before, db_before = cpu_seconds(pids), cpu_seconds(database)
        per = connections // len(targets)
        runs = [
            subprocess.Popen(
                [
                    wrk_program(),
                    "-t1",
                    f"-c{per}",
                    f"-d{seconds:g}s",
                    "--timeout",
                    "10s",
                    "-s",
                    script,
                    f"http://127.0.0.1:{target.port}",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for target, script in zip(targets, scripts, strict=True)
        ]
        outputs = [run.communicate()[0] for run in runs]
        result = Result(
            app_cpu=cpu_seconds(pids) - app_before, database_cpu=cpu_seconds(database) - db_before
        )
        for script in scripts:
            os.unlink(script)
    for output in outputs:
        line = next((x for x in output.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise RuntimeError(f"wrk did not finish:\n{output}")
        figures = json.loads(line.removeprefix("RESULT "))
        result.requests += figures["requests"]
        result.seconds = max(result.seconds, figures["seconds"])
        result.non2xx += figures["non2xx"]
        result.socket_errors += figures["socket"]
        result.unclean += figures["unclean"]
        for status, count in figures["statuses"].items():
            result.statuses[int(status)] = result.statuses.get(int(status), 0) + count
        result.p50.append(figures["p50"])
        result.p99.append(figures["p99"])
    return result


def add(total: Result, one: Result) -> None:
    """Rounds are summed: requests and seconds (so the rate is their mean), CPU; the
    percentiles are kept per round and their median reported."""
    total.requests += one.requests
    total.seconds += one.seconds
    total.non2xx += one.non2xx
    total.socket_errors += one.socket_errors
    total.unclean += one.unclean
    for status, count in one.statuses.items():
        total.statuses[status] = total.statuses.get(status, 0) + count
    total.p50 += [median(one.p50)]
    total.p99 += [max(one.p99)]
    total.app_cpu += one.app_cpu
    total.database_cpu += one.database_cpu


@contextmanager
def tokenbank(env: dict[str, str], *extra: str) -> Iterator[tuple[int, int]]:
    """``tokenbank serve`` on a free port: (port, pid)."""
    port = free_port()
    command = [str(BIN / "tokenbank"), "serve", "--port", str(port), *extra]
    with service(command, env, port) as pid:
        yield port, pid


@contextmanager
def reference(env: dict[str, str]) -> Iterator[tuple[int, int]]:
    port = free_port()
    command = [
        str(BIN / "python"),
        "-m",
        "uvicorn",
        "bench.reference_app:app",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    with service(command, env, port) as pid:
        yield port, pid


def compare(
    title: str,
    variants: dict[str, tuple[list[Target], list[int]]],
    *,
    seconds: float,
    rounds: int,
) -> dict[str, Result]:
    """Each variant ``rounds`` times, interleaved; prints and returns the totals."""
    totals = {name: Result() for name in variants}
    for targets, pids in variants.values():  # warm up: pools, caches, JIT-free but still
        run_wrk(targets, CONNECTIONS, 1.0, pids)
    for _ in range(rounds):
        for name, (targets, pids) in variants.items():
            add(totals[name], run_wrk(targets, CONNECTIONS, seconds, pids))
    print(f"\n{title}")
    for name, total in totals.items():
        print(total.line(name))
    return totals


def ratio(ours: Result, theirs: Result, label: str, target: float) -> None:
    value = ours.rate / theirs.rate if theirs.rate else 0.0
    verdict = "holds" if value >= target else "MISSED"
    print(f"{label}: {value:.2f}x (target >= {target:.2f}x: {verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="per slice")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=["reference", "hot", "processes"])
    args = parser.parse_args()
    wrk_program()
    wanted = {"reference", "hot", "processes"} if args.only is None else {args.only}
    measured: dict[str, Result] = {}

    with postgres_database() as url:
        secret = prepare(url, wallets=WALLETS)
        env = {
            "TOKENBANK_DATABASE_URL": url,
            "TOKENBANK_SECRET_KEY": "bench-" + "k" * 40,
        }  # as deployed: an access log line per request, metrics
        auth = f"Bearer {secret}"
        ours = "/api/v1/users/%s/spend"
        print(
            f"wrk -t1 -c{CONNECTIONS}; {args.rounds} rounds of {args.seconds:g} s per variant,"
            f" interleaved; {WALLETS:,} wallets"
        )
        if "reference" in wanted:
            with tokenbank(env) as (port, pid), reference(env) as (their_port, their_pid):
                totals = compare(
                    "spend, one worker: tokenbank against the reference app",
                    {
                        "tokenbank": ([Target(port, ours, auth, WALLETS)], [pid]),
                        "reference": (
                            [Target(their_port, "/spend/%s", "", WALLETS)],
                            [their_pid],
                        ),
                    },
                    seconds=args.seconds,
                    rounds=args.rounds,
                )
            measured |= {f"reference: {k}": v for k, v in totals.items()}
            ratio(totals["tokenbank"], totals["reference"], "tokenbank/reference", 0.9)
        if "hot" in wanted:
            with tokenbank(env) as (port, pid):
                totals = compare(
                    "spend, one worker: one hot wallet against 10,000",
                    {
                        "spread": ([Target(port, ours, auth, WALLETS)], [pid]),
                        "hot": ([Target(port, ours, auth, 1)], [pid]),
                    },
                    seconds=args.seconds,
                    rounds=args.rounds,
                )
            measured |= {f"hot: {k}": v for k, v in totals.items()}
            ratio(totals["hot"], totals["spread"], "hot/spread", 0.5)
        if "processes" in wanted:
            # Five app processes stay up at once, so that the variants can interleave: each
            # gets a smaller pool, or together they would pass PostgreSQL's 100 connections.
            small = {**env, "TOKENBANK_DATABASE_POOL_SIZE": "8"}
            with (
                tokenbank(small) as (one, one_pid),
                tokenbank(small, "--workers", "2") as (two, two_pid),
                tokenbank(small) as (a, a_pid),
                tokenbank(small) as (b, b_pid),
            ):
                totals = compare(
                    "spend: one process against two",
                    {
                        "one process": ([Target(one, ours, auth, WALLETS)], [one_pid]),
                        "serve --workers 2": ([Target(two, ours, auth, WALLETS)], [two_pid]),
                        "two serve processes": (
                            [Target(a, ours, auth, WALLETS), Target(b, ours, auth, WALLETS)],
                            [a_pid, b_pid],
                        ),
                    },
                    seconds=args.seconds,
                    rounds=args.rounds,
                )
            measured |= {f"processes: {k}": v for k, v in totals.items()}
            base = totals["one process"]
            for name in ("serve --workers 2", "two serve processes"):
                other = totals[name]
                cpu = (other.app_cpu + other.database_cpu) / max(other.requests, 1)
                cpu_base = (base.app_cpu + base.database_cpu) / max(base.requests, 1)
                print(
                    f"{name} / one process: throughput {other.rate / base.rate:.2f}x,"
                    f" CPU per request {cpu / cpu_base:.2f}x"
                )
    failed = [name for name, total in measured.items() if total.non2xx + total.socket_errors]
    if failed:
        sys.exit(f"non-2xx answers or socket errors in: {', '.join(failed)}")


if __name__ == "__main__":
    main()
