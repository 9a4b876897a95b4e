"""Races on one wallet, on both databases: threads in one process, and separate processes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from tests.conftest import Unit
from tests.ledger.factories import wallet
from tokenbank import ledger
from tokenbank.db import Database
from tokenbank.ledger import TransferKind

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]


def _all_at_once(n: int, work: Callable[[int], T]) -> list[T | Exception]:
    """Run ``work(i)`` for i in range(n) on n threads released together."""
    barrier = threading.Barrier(n)

    def run(i: int) -> T | Exception:
        barrier.wait()
        try:
            return work(i)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def _outcome(result: object) -> str:
    if isinstance(result, ledger.InsufficientTokens):
        return "insufficient"
    if isinstance(result, Exception):
        return f"error: {type(result).__name__}: {result}"
    return "ok"


def test_100_concurrent_spends_of_1_on_50_tokens(db: Database, unit: Unit) -> None:
    wallet(db, tokens=50)

    def spend(i: int) -> ledger.Receipt:
        with unit() as conn:
            return ledger.spend(conn, user_id="alice", amount=1, idempotency_key=f"s{i}")

    outcomes = Counter(_outcome(r) for r in _all_at_once(100, spend))
    assert outcomes == {"ok": 50, "insufficient": 50}
    with db.read() as conn:
        balance = ledger.balance(conn, user_id="alice")
        assert (balance.available, balance.total_spent) == (0, 50)
        assert len(ledger.history(conn, user_id="alice", limit=500).items) == 51


def test_100_spends_from_4_processes(db: Database) -> None:
    wallet(db, tokens=50)
    url = db.url.render_as_string(hide_password=False)
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.ledger.spend_worker", url, "alice", "25", f"p{p}"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in range(4)
    ]
    start_at = f"{time.time() + 3}\n"  # time for every interpreter to start and connect
    tally: Counter[str] = Counter()
    for worker in workers:
        out, err = worker.communicate(start_at, timeout=120)
        assert worker.returncode == 0, err
        tally.update(json.loads(out))
    assert tally == {"ok": 50, "insufficient": 50}
    with db.read() as conn:
        assert ledger.balance(conn, user_id="alice").available == 0


def test_one_spend_key_sent_20_times_at_once_has_one_effect(db: Database, unit: Unit) -> None:
    wallet(db, tokens=100)

    def spend(_: int) -> ledger.Receipt:
        with unit() as conn:
            return ledger.spend(conn, user_id="alice", amount=7, idempotency_key="same")

    results = _all_at_once(20, spend)
    receipts = [r for r in results if isinstance(r, ledger.Receipt)]
    assert len(receipts) == 20, [r for r in results if isinstance(r, Exception)]
    assert len({r.transfer_id for r in receipts}) == 1
    assert {r.balance for r in receipts} == {93}
    assert sum(not r.replayed for r in receipts) == 1
    with db.read() as conn:
        assert ledger.balance(conn, user_id="alice").available == 93


def test_one_credit_key_sent_20_times_at_once_credits_once(db: Database, unit: Unit) -> None:
    wallet(db)

    def credit(_: int) -> ledger.Receipt:
        with unit() as conn:
            return ledger.credit(
                conn,
                user_id="alice",
                amount=500,
                kind=TransferKind.PURCHASE,
                idempotency_key="cs_test_1",
            )

    results = _all_at_once(20, credit)
    receipts = [r for r in results if isinstance(r, ledger.Receipt)]
    assert len(receipts) == 20, [r for r in results if isinstance(r, Exception)]
    assert len({r.transfer_id for r in receipts}) == 1
    with db.read() as conn:
        assert ledger.balance(conn, user_id="alice").total_purchased == 500


def test_concurrent_refunds_never_exceed_the_spend(db: Database, unit: Unit) -> None:
    wallet(db, tokens=100)
    with unit() as conn:
        spent = ledger.spend(conn, user_id="alice", amount=10, idempotency_key="s")

    def refund(i: int) -> ledger.Receipt:
        with unit() as conn:
            return ledger.refund(
                conn, transfer_id=spent.transfer_id, amount=3, idempotency_key=f"r{i}"
            )

    outcomes = Counter(
        "refused" if isinstance(r, ledger.RefundExceedsSpend) else _outcome(r)
        for r in _all_at_once(10, refund)
    )
    assert outcomes == {"ok": 3, "refused": 7}
    with db.read() as conn:
        assert ledger.balance(conn, user_id="alice").available == 99


def test_concurrent_holds_and_posts_keep_held_consistent(db: Database, unit: Unit) -> None:
    wallet(db, tokens=100)

    def hold_then_settle(i: int) -> str:
        with unit() as conn:
            held = ledger.hold(conn, user_id="alice", amount=10, idempotency_key=f"h{i}")
        with unit() as conn:
            if i % 2:
                ledger.post_hold(conn, hold_id=held.id, amount=5)
            else:
                ledger.void_hold(conn, hold_id=held.id)
        return "ok"

    outcomes = Counter(_outcome(r) for r in _all_at_once(16, hold_then_settle))
    assert outcomes["ok"] + outcomes["insufficient"] == 16, outcomes
    with db.read() as conn:
        balance = ledger.balance(conn, user_id="alice")
    assert balance.held == 0
    assert balance.available == 100 - 5 * balance.total_spent // 5


def test_a_replay_that_waited_on_the_first_spends_lock_returns_its_result(
    db: Database, unit: Unit
) -> None:
    """The replay starts while the first spend is still uncommitted, so it cannot see the key
    yet; it must still end with the first result and no second debit."""
    wallet(db, tokens=100)
    results: list[ledger.Receipt | Exception] = []

    def replay() -> None:
        try:
            with unit() as conn:
                results.append(ledger.spend(conn, user_id="alice", amount=5, idempotency_key="k"))
        except Exception as exc:
            results.append(exc)

    with db.transaction() as conn:
        first = ledger.spend(conn, user_id="alice", amount=5, idempotency_key="k")
        # SQLite: the second writer waits for this transaction's write lock in-process.
        second = threading.Thread(target=replay)
        second.start()
        time.sleep(0.3)
    second.join(10)
    assert len(results) == 1 and isinstance(results[0], ledger.Receipt), results
    assert results[0].replayed and results[0].transfer_id == first.transfer_id
    assert results[0].balance == 95
    with db.read() as conn:
        assert ledger.balance(conn, user_id="alice").available == 95
