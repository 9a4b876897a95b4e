"""Stripe webhook intake of tokenbank against a minimal signature-and-inbox endpoint, in one run.

    python -m bench.webhooks [--purchases 1000] [--senders 32] [--rounds 3]

A burst of webhooks is what a sale, a Stripe outage healing or a replay from the Dashboard
sends, duplicated and out of order. This measures how fast tokenbank takes such a burst and
that it credits every purchase exactly once while doing so.

Three processes run on a scratch PostgreSQL database (``TOKENBANK_BENCH_DATABASE_URL``, else
``TOKENBANK_TEST_DATABASE_URL``, else postgresql://postgres@127.0.0.1:5432/test; created and
dropped here), each one uvicorn worker:

* the built-in Stripe emulator (``tokenbank stripe-emulator``, no webhook URL: it records
  its events and sends none), which tokenbank asks for the current Checkout Session,
  PaymentIntent, refunds and disputes of each event, as it asks Stripe;
* tokenbank: ``tokenbank serve`` and ``tokenbank worker`` as deployed. Its
  ``POST /webhooks/stripe`` checks the signature and stores the event once; it settles it
  in the request while the process has a settling slot free
  (``TOKENBANK_WEBHOOK_SETTLE_SLOTS``, ``--slots``), and otherwise answers at once and
  leaves it to the worker. "Accepted" and "credited" are thus two moments, and both are
  reported;
* baseline: ``bench/webhook_baseline_app.py``, FastAPI + psycopg that checks the signature
  with the ``stripe`` SDK and inserts the event into an inbox table, acting on nothing.

Each round makes new purchases through tokenbank's own ``start_checkout`` against the
emulator (a user each, packages in turn), pays them on the emulator's test card, and reads
back the events tokenbank credits on: ``payment_intent.succeeded`` and
``checkout.session.completed``, two per purchase, exactly as the emulator sends them. Every
event is delivered twice (half of the deliveries are duplicates), all deliveries shuffled
(so for about half of the purchases the later event comes first, and some duplicates race
each other), signed for the configured secret just before the burst. A keep-alive load
generator (asyncio, in this process) sends the burst with ``--senders`` concurrent
connections to tokenbank and, with the same deliveries freshly signed, to the baseline;
rounds alternate which goes first so drift falls on both.

After each round it checks that every purchase is paid, has exactly one purchase credit (and
one bonus credit when the package has a bonus) and that its user's balance is its tokens plus
bonus; that no answer was a 5xx (every status is counted); that the baseline's inbox holds
each event once; and at the end that ``tokenbank ledger verify`` passes. It prints deliveries
per second, p50 and p99 latency and status counts for each, the CPU milliseconds each
process serving the burst used per delivery (from /proc: the app, the worker, the emulator
and the database's backends, the worker's counted until every purchase is credited; one
uvicorn worker is bound by one core, so on a shared machine this says more than the rate),
how many deliveries were settled in their request and how many queued, tokenbank's time to
every purchase credited, and the ratio tokenbank/baseline (target: at least 0.5x).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bench.http import free_port
from bench.ledger import postgres_database
from bench.webhook_baseline_app import INBOX
from tokenbank import migrations, users
from tokenbank.billing import Purchase, count_unsettled, load_catalog, start_checkout
from tokenbank.billing.models import purchases, webhook_events
from tokenbank.billing.purchases import to_purchase
from tokenbank.db import Database, connect
from tokenbank.emulator.events import USER_AGENT, signature_header
from tokenbank.ledger import TransferKind
from tokenbank.ledger.models import accounts, transfers
from tokenbank.payments.stripe import Stripe

BIN = Path(sys.executable).parent
SECRET_KEY = "sk_test_bench_webhooks"
WEBHOOK_SECRET = "whsec_bench_webhooks_0123456789abcdef"
CATALOG = load_catalog(Path("catalogs/default.toml"))
PACKAGES = [package.id for package in CATALOG.packages if package.active]
#: The events of a paid Checkout Session that tokenbank settles a purchase on.
CREDITING_EVENTS = ("payment_intent.succeeded", "checkout.session.completed")
COPIES = 2  # each event is delivered this many times: half the deliveries are duplicates
SETUP_THREADS = 8


# --- the load generator --------------------------------------------------------------------


@dataclass
class Result:
    """One burst: its wall time, every latency and every status."""

    deliveries: int
    seconds: float
    latencies: list[float]
    statuses: Counter[int]
    #: CPU seconds each process serving the burst used during it.
    cpu: Counter[str] = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return self.deliveries / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)


async def _sender(
    port: int, requests: list[bytes], next_index: Iterator[int], result: Result
) -> None:
    """One keep-alive connection taking the next delivery until none is left."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    clock = time.perf_counter
    for index in next_index:
        start = clock()
        writer.write(requests[index])
        head = await reader.readuntil(b"\r\n\r\n")
        lowered = head.lower()
        at = lowered.index(b"content-length:") + 15
        length = int(lowered[at : lowered.index(b"\r\n", at)])
        await reader.readexactly(length)
        result.latencies.append(clock() - start)
        result.statuses[int(head[9:12])] += 1
    writer.close()


async def _burst(port: int, requests: list[bytes], senders: int) -> Result:
    result = Result(len(requests), 0.0, [], Counter())
    indexes = iter(range(len(requests)))  # shared: asyncio runs one sender at a time
    start = time.perf_counter()
    await asyncio.gather(*(_sender(port, requests, indexes, result) for _ in range(senders)))
    result.seconds = time.perf_counter() - start
    return result


def burst(port: int, payloads: list[bytes], senders: int) -> Result:
    """Send every payload once, signed now (Stripe's tolerance is five minutes)."""
    return asyncio.run(_burst(port, [signed_request(p) for p in payloads], senders))


def signed_request(payload: bytes) -> bytes:
    """The request the emulator (and Stripe) sends: the same headers, a fresh signature."""
    signature = signature_header(payload=payload, secret=WEBHOOK_SECRET, timestamp=int(time.time()))
    head = (
        "POST /webhooks/stripe HTTP/1.1\r\nHost: bench\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"User-Agent: {USER_AGENT}\r\nStripe-Signature: {signature}\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


# --- the processes -------------------------------------------------------------------------


@contextmanager
def service(command: list[str], env: dict[str, str], probe: str | None) -> Iterator[int]:
    """A server process, up once ``probe`` answers (None: at once); yields its pid."""
    process = subprocess.Popen(
        command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while probe is not None:
            try:
                with urllib.request.urlopen(probe):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    output = process.stderr.read().decode() if process.stderr else ""
                    raise RuntimeError(f"{command[0]} did not start: {output}") from None
                time.sleep(0.1)
        yield process.pid
    finally:
        process.terminate()
        process.wait(timeout=10)


def uvicorn(module: str, port: int) -> list[str]:
    return [
        str(BIN / "python"),
        "-m",
        "uvicorn",
        module,
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process and all its threads so far (Linux /proc);
    0 for a process that is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def backends(conn: psycopg.Connection[Any]) -> list[int]:
    """The other PostgreSQL server processes serving ``conn``'s database now."""
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    ).fetchall()
    return [int(row[0]) for row in rows]


@dataclass(frozen=True)
class Meter:
    """CPU used by the processes that serve a burst: the app, the emulator it asks (none for
    the baseline) and PostgreSQL's backends on the scratch database. On a shared two-core
    machine this says where a delivery's cost goes, whatever else runs beside it."""

    app: int
    worker: int | None
    emulator: int | None
    conn: psycopg.Connection[Any]

    def read(self) -> dict[str, float]:
        used = {"app": cpu_seconds(self.app)}
        if self.worker is not None:
            used["worker"] = cpu_seconds(self.worker)
        if self.emulator is not None:
            used["emulator"] = cpu_seconds(self.emulator)
        used["postgres"] = sum(cpu_seconds(pid) for pid in backends(self.conn))
        return used


# --- a round's purchases and events --------------------------------------------------------


@dataclass
class Round:
    """A round's paid purchases and the deliveries of their events, in sending order."""

    purchases: list[Purchase]
    payloads: list[bytes]
    event_ids: set[str]
    #: Purchases whose checkout.session.completed is first sent before their
    #: payment_intent.succeeded, the reverse of the order Stripe makes them in.
    reordered: int
    setup_seconds: float = 0.0
    checks: list[str] = field(default_factory=list)


def buy(db: Database, stripe: Stripe, emulator: httpx.Client, user_id: str, n: int) -> str:
    """A purchase made as the API makes it, then paid on the emulator's hosted page."""
    started = start_checkout(
        db,
        stripe,
        CATALOG,
        user_id=user_id,
        package_id=PACKAGES[n % len(PACKAGES)],
        success_url="http://127.0.0.1/purchase/success?session_id={CHECKOUT_SESSION_ID}",
        cancel_url="http://127.0.0.1/purchase/cancel?purchase={PURCHASE_ID}",
        idempotency_key=f"bench-{user_id}",
    )
    paid = emulator.post(
        f"/_emulator/checkout_sessions/{started.checkout_session_id}/pay",
        json={"card": "4242424242424242"},
    )
    paid.raise_for_status()
    return str(paid.json()["payment_intent"]["id"])


def crediting_events(emulator: httpx.Client, wanted: set[str]) -> dict[str, dict[str, Any]]:
    """The crediting events of the objects named in ``wanted`` (sessions and intents), by
    object id, read newest first from the emulator's event list as Stripe's API gives it."""
    found: dict[str, dict[str, Any]] = {}
    params: dict[str, str | int] = {"limit": 100}
    for n, kind in enumerate(CREDITING_EVENTS):
        params[f"types[{n}]"] = kind
    headers = {"Authorization": f"Bearer {SECRET_KEY}"}
    while len(found) < len(wanted):
        page = emulator.get("/v1/events", params=params, headers=headers)
        page.raise_for_status()
        body = page.json()
        for event in body["data"]:
            object_id = event["data"]["object"]["id"]
            if object_id in wanted:
                found[object_id] = event
        if not body["has_more"]:
            break
        params["starting_after"] = body["data"][-1]["id"]
    missing = len(wanted) - len(found)
    assert missing == 0, f"{missing} events not found at the emulator"
    return found


def prepare_round(
    db: Database, stripe: Stripe, emulator: httpx.Client, *, label: str, count: int, seed: int
) -> Round:
    start = time.perf_counter()
    user_ids = [f"{label}-u{n}" for n in range(count)]
    with db.transaction() as conn:
        for user_id in user_ids:
            users.create_user(conn, user_id=user_id)
    with ThreadPoolExecutor(SETUP_THREADS) as pool:
        paid = pool.map(lambda n: buy(db, stripe, emulator, user_ids[n], n), range(count))
        intent_of = dict(zip(user_ids, paid, strict=True))
    with db.read() as conn:
        rows = conn.execute(sa.select(purchases).where(purchases.c.user_id.in_(user_ids)))
        bought = sorted((to_purchase(row) for row in rows), key=lambda p: p.id)
    sessions = [p.checkout_session_id for p in bought]
    intents = [intent_of[p.user_id] for p in bought]
    events = crediting_events(emulator, {s for s in sessions if s} | set(intents))
    deliveries = [
        json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
        for event in events.values()
        for _ in range(COPIES)
    ]
    order = list(range(len(deliveries)))
    random.Random(seed).shuffle(order)
    first_sent: dict[str, int] = {}
    keys = [object_id for object_id in events for _ in range(COPIES)]
    for position, index in enumerate(order):
        first_sent.setdefault(keys[index], position)
    reordered = sum(
        first_sent[session] < first_sent[intent]
        for session, intent in zip(sessions, intents, strict=True)
        if session is not None
    )
    return Round(
        purchases=bought,
        payloads=[deliveries[i] for i in order],
        event_ids={str(event["id"]) for event in events.values()},
        reordered=reordered,
        setup_seconds=time.perf_counter() - start,
    )


# --- the checks ----------------------------------------------------------------------------


def uncredited(db: Database, bought: list[Purchase]) -> list[str]:
    """What is wrong with the purchases' credits: empty once every purchase is paid, credited
    exactly once (a purchase transfer, and a bonus one when it has a bonus) and its user's
    balance is its tokens plus bonus."""
    by_user = {p.user_id: p for p in bought}
    credits = (
        sa.select(
            accounts.c.user_id,
            accounts.c.balance,
            sa.func.count().filter(transfers.c.kind == TransferKind.PURCHASE.value),
            sa.func.count().filter(transfers.c.kind == TransferKind.BONUS.value),
        )
        .select_from(accounts.outerjoin(transfers, transfers.c.credit_account_id == accounts.c.id))
        .where(accounts.c.user_id.in_(list(by_user)))
        .group_by(accounts.c.user_id, accounts.c.balance)
    )
    with db.read() as conn:
        status = dict(
            conn.execute(
                sa.select(purchases.c.id, purchases.c.status).where(
                    purchases.c.id.in_([p.id for p in bought]),
                    purchases.c.credit_transfer_id.is_not(None),
                )
            ).all()
        )
        rows = conn.execute(credits).all()
    problems = [
        f"purchase {p.id} is {status.get(p.id, 'not credited')}"
        for p in bought
        if status.get(p.id) != "paid"
    ]
    for user_id, balance, purchased, bonus in rows:
        p = by_user[user_id]
        if (purchased, bonus) != (1, int(p.bonus_tokens > 0)) or balance != p.total_tokens:
            problems.append(
                f"purchase {p.id}: {purchased} purchase and {bonus} bonus credits,"
                f" balance {balance} for {p.total_tokens} tokens"
            )
    return problems


def wait_credited(db: Database, bought: list[Purchase], timeout: float = 120) -> list[str]:
    deadline = time.monotonic() + timeout
    while (problems := uncredited(db, bought)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return problems


def queued(conn: Connection, event_ids: set[str]) -> int:
    """How many of the events the worker settled: they waited in the inbox after their
    first delivery, so their first attempt came after it (``settle_after`` is then
    ``received_at``; a request that settles sets it a lease later)."""
    return int(
        conn.execute(
            sa.select(sa.func.count()).where(
                webhook_events.c.event_id.in_(list(event_ids)),
                webhook_events.c.settle_after == webhook_events.c.received_at,
            )
        ).scalar_one()
    )


def wait_settled(db: Database, timeout: float = 120) -> list[str]:
    """Wait until the inbox holds no unsettled event (the other event of each purchase
    may still be settling once it is credited), so a round starts with an idle worker."""
    deadline = time.monotonic() + timeout
    while True:
        with db.read() as conn:
            left = count_unsettled(conn)
        if not any(left.values()):
            return []
        if time.monotonic() > deadline:
            return [f"events left unsettled: {left}"]
        time.sleep(0.2)


def inbox_problems(conn: psycopg.Connection[Any], event_ids: set[str]) -> list[str]:
    stored = {
        row[0]
        for row in conn.execute(
            f"SELECT event_id FROM {INBOX} WHERE event_id = ANY(%s)", (list(event_ids),)
        )
    }
    missing = len(event_ids - stored)
    return [f"{missing} events missing from the baseline inbox"] if missing else []


# --- the run -------------------------------------------------------------------------------


@dataclass
class Totals:
    """Every round of one app, merged."""

    runs: list[Result] = field(default_factory=list)
    drained: list[float] = field(default_factory=list)  # burst start to every purchase credited
    queued: int = 0  # events stored without settling in their request: the worker settled them

    def merged(self) -> Result:
        statuses: Counter[int] = Counter()
        cpu: Counter[str] = Counter()
        for run in self.runs:
            statuses.update(run.statuses)
            cpu.update(run.cpu)
        return Result(
            sum(r.deliveries for r in self.runs),
            sum(r.seconds for r in self.runs),
            [x for r in self.runs for x in r.latencies],
            statuses,
            cpu,
        )


def cpu_line(result: Result) -> str:
    """CPU milliseconds per delivery, by process, and their sum."""
    per = {name: used / result.deliveries * 1000 for name, used in result.cpu.items()}
    parts = "  ".join(f"{name} {ms:.2f}" for name, ms in per.items())
    return f"CPU ms/delivery: {parts}  total {sum(per.values()):.2f}"


def report_line(app: str, totals: Totals) -> Result:
    merged = totals.merged()
    rates = ", ".join(f"{r.rate:,.0f}" for r in totals.runs)
    statuses = " ".join(f"{s}:{n}" for s, n in sorted(merged.statuses.items()))
    print(
        f"{app:<10} {merged.rate:7,.0f} deliveries/s (rounds: {rates})"
        f"  p50 {merged.percentile(0.50):7.2f} ms  p99 {merged.percentile(0.99):7.2f} ms"
        f"  statuses {statuses}"
    )
    print(f"{'':<10} {cpu_line(merged)}")
    return merged


def run_round(
    this: Round,
    *,
    ports: dict[str, int],
    meters: dict[str, Meter],
    senders: int,
    tokenbank_first: bool,
    db: Database,
    totals: dict[str, Totals],
    worker_after: bool,
) -> None:
    order = ["tokenbank", "baseline"] if tokenbank_first else ["baseline", "tokenbank"]
    worker = meters["tokenbank"].worker
    for app in order:
        before = meters[app].read()
        start = time.perf_counter()
        if app == "tokenbank" and worker_after and worker is not None:
            os.kill(worker, signal.SIGSTOP)  # idle: the previous round left nothing unsettled
            try:
                result = burst(ports[app], this.payloads, senders)
            finally:
                os.kill(worker, signal.SIGCONT)
        else:
            result = burst(ports[app], this.payloads, senders)
        if app == "tokenbank":
            problems = wait_credited(db, this.purchases)
            totals[app].drained.append(time.perf_counter() - start)
            problems += wait_settled(db)
        result.cpu.update({k: v - before.get(k, 0.0) for k, v in meters[app].read().items()})
        if app == "tokenbank":
            with db.read() as conn:
                totals[app].queued += queued(conn, this.event_ids)
        else:
            problems = inbox_problems(meters[app].conn, this.event_ids)
        totals[app].runs.append(result)
        this.checks += [f"{app}: {problem}" for problem in problems[:5]]
        if result.server_errors:
            this.checks.append(f"{app}: {result.server_errors} answers were 5xx")
        print(
            f"  {app:<10} {result.rate:7,.0f} deliveries/s  {result.seconds:6.2f} s"
            f"  p50 {result.percentile(0.5):7.2f} ms  p99 {result.percentile(0.99):7.2f} ms"
            f"  statuses {dict(sorted(result.statuses.items()))}"
        )
        print(f"  {'':<10} {cpu_line(result)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--purchases", type=int, default=1000, help="paid purchases per round")
    parser.add_argument("--senders", type=int, default=32, help="concurrent connections")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--worker-after",
        action="store_true",
        help="pause tokenbank worker (SIGSTOP) during each burst: the app process alone,"
        " as with workers on other machines",
    )
    parser.add_argument(
        "--slots",
        type=int,
        default=None,
        help="TOKENBANK_WEBHOOK_SETTLE_SLOTS (default: the service's own default)",
    )
    args = parser.parse_args()

    with postgres_database() as url:
        db = connect(url, pool_size=SETUP_THREADS)
        migrations.upgrade(db)
        ports = {"emulator": free_port(), "tokenbank": free_port(), "baseline": free_port()}
        emulator_url = f"http://127.0.0.1:{ports['emulator']}"
        env = {
            "TOKENBANK_DATABASE_URL": url,
            "TOKENBANK_SECRET_KEY": "bench-" + "k" * 40,
            "STRIPE_SECRET_KEY": SECRET_KEY,
            "STRIPE_PUBLISHABLE_KEY": "pk_test_bench_webhooks",
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "STRIPE_API_BASE": emulator_url,
            "TOKENBANK_CATALOG": "catalogs/default.toml",
            # Reconcile settles purchases too: kept out of the measurement.
            "TOKENBANK_RECONCILE_MINUTES": "1440",
        }
        if args.slots is not None:
            env["TOKENBANK_WEBHOOK_SETTLE_SLOTS"] = str(args.slots)
        emulator_cmd = [str(BIN / "tokenbank"), "stripe-emulator", "--port", str(ports["emulator"])]
        tokenbank_cmd = [str(BIN / "tokenbank"), "serve", "--port", str(ports["tokenbank"])]
        worker_cmd = [str(BIN / "tokenbank"), "worker"]
        baseline_cmd = uvicorn("bench.webhook_baseline_app:app", ports["baseline"])
        stripe = Stripe(
            secret_key=SECRET_KEY,
            webhook_secret=WEBHOOK_SECRET,
            api_base=emulator_url,
            max_network_retries=0,
        )
        totals = {"tokenbank": Totals(), "baseline": Totals()}
        checks: list[str] = []
        print(
            f"{args.purchases:,} paid purchases a round, {len(CREDITING_EVENTS)} events each,"
            f" each sent {COPIES} times, shuffled; {args.senders} senders; one uvicorn worker"
            f" each; {args.rounds} rounds; tokenbank worker "
            + ("paused during each burst" if args.worker_after else "running beside the app")
        )
        with (
            service(emulator_cmd, env, f"{emulator_url}/_emulator/health") as emulator_pid,
            service(tokenbank_cmd, env, f"http://127.0.0.1:{ports['tokenbank']}/docs") as pid,
            service(worker_cmd, env, None) as worker_pid,
            service(baseline_cmd, env, f"http://127.0.0.1:{ports['baseline']}/docs") as base,
            httpx.Client(base_url=emulator_url, timeout=30) as emulator,
            psycopg.connect(url, autocommit=True) as watcher,
        ):
            print(
                f"tokenbank pid {pid}, worker pid {worker_pid}, emulator pid {emulator_pid}"
                " (for a profiler)"
            )
            meters = {
                "tokenbank": Meter(pid, worker_pid, emulator_pid, watcher),
                "baseline": Meter(base, None, None, watcher),
            }
            warm = prepare_round(db, stripe, emulator, label="warm", count=50, seed=0)
            run_round(
                warm,
                ports=ports,
                meters=meters,
                senders=args.senders,
                tokenbank_first=True,
                db=db,
                totals={a: Totals() for a in totals},
                worker_after=args.worker_after,
            )
            checks += warm.checks
            for n in range(args.rounds):
                this = prepare_round(
                    db, stripe, emulator, label=f"r{n}", count=args.purchases, seed=args.seed + n
                )
                print(
                    f"round {n + 1}: {len(this.payloads):,} deliveries of"
                    f" {len(this.event_ids):,} events; {this.reordered:,} purchases'"
                    f" checkout.session.completed sent first (setup {this.setup_seconds:.0f} s)"
                )
                run_round(
                    this,
                    ports=ports,
                    meters=meters,
                    senders=args.senders,
                    tokenbank_first=n % 2 == 0,
                    db=db,
                    totals=totals,
                    worker_after=args.worker_after,
                )
                checks += this.checks
        verified = subprocess.run(
            [str(BIN / "tokenbank"), "ledger", "verify"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=False,
        )
        if verified.returncode != 0:
            checks.append(f"tokenbank ledger verify failed: {verified.stdout}{verified.stderr}")
        db.dispose()

    print()
    ours = report_line("tokenbank", totals["tokenbank"])
    theirs = report_line("baseline", totals["baseline"])
    drained = sum(totals["tokenbank"].drained)
    credited = args.purchases * args.rounds
    events = len(CREDITING_EVENTS) * credited
    print(
        f"tokenbank  every purchase credited {drained:.2f} s after the bursts began"
        f" ({credited / drained:,.0f} purchases/s, {events / drained:,.0f} events/s);"
        f" {totals['tokenbank'].queued:,} of {events:,} events found no settling slot at"
        " their first delivery and were left to the worker"
    )
    print(
        f"ratio      throughput {ours.rate / theirs.rate:.2f}x (target >= 0.50x)"
        f"  p99 {ours.percentile(0.99) / theirs.percentile(0.99):.2f}x"
    )
    print(
        "checks     "
        + ("; ".join(checks) if checks else "all credited exactly once, no 5xx, ledger verified")
    )
    if checks:
        sys.exit(1)


if __name__ == "__main__":
    main()
