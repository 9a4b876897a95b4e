"""Spends of at least a threshold, a hold's posting among them, and every refund of a spend
get one log line each, written once the unit of work commits them: never for a replay,
never for a change that was rolled back."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.conftest import Unit
from tests.ledger.factories import wallet
from tokenbank import ledger
from tokenbank.db import Database


class Abandon(Exception):
    """Raised inside a unit of work to roll it back."""


def _events(lines: list[MutableMapping[str, Any]], name: str) -> list[tuple[Any, ...]]:
    return [
        (line["user_id"], line["tokens"], line["transfer_id"])
        for line in lines
        if line["event"] == name
    ]


def test_a_spend_from_the_threshold_is_logged_once(db: Database, unit: Unit) -> None:
    wallet(db, tokens=1_000)
    with capture_logs() as lines:
        for amount, key in ((99, "small"), (100, "large"), (100, "large")):
            with unit() as conn:
                receipt = ledger.spend(
                    conn, user_id="alice", amount=amount, idempotency_key=key, log_from=100
                )
    assert _events(lines, "tokens_spent") == [("alice", 100, receipt.transfer_id)]


def test_nothing_is_logged_without_a_threshold(db: Database, unit: Unit) -> None:
    wallet(db, tokens=1_000)
    with capture_logs() as lines, unit() as conn:
        ledger.spend(conn, user_id="alice", amount=900, idempotency_key="k")
    assert _events(lines, "tokens_spent") == []


def test_a_rolled_back_spend_or_refund_is_not_logged(db: Database) -> None:
    wallet(db, tokens=1_000)
    with db.transaction() as conn:
        spent = ledger.spend(conn, user_id="alice", amount=10, idempotency_key="s")
    with capture_logs() as lines, pytest.raises(Abandon), db.transaction() as conn:
        ledger.spend(conn, user_id="alice", amount=500, idempotency_key="big", log_from=1)
        ledger.refund(conn, transfer_id=spent.transfer_id, idempotency_key="r")
        raise Abandon
    assert lines == []


def test_a_hold_posting_is_a_spend_for_the_log(db: Database, unit: Unit) -> None:
    wallet(db, tokens=1_000)
    with unit() as conn:
        hold = ledger.hold(conn, user_id="alice", amount=300, idempotency_key="h")
    with capture_logs() as lines:
        for _ in range(2):
            with unit() as conn:
                posted = ledger.post_hold(conn, hold_id=hold.id, amount=250, log_from=200)
    assert _events(lines, "tokens_spent") == [("alice", 250, posted.transfer_id)]


def test_every_refund_of_a_spend_is_logged_once(db: Database, unit: Unit) -> None:
    wallet(db, tokens=1_000)
    with unit() as conn:
        spent = ledger.spend(conn, user_id="alice", amount=50, idempotency_key="s")
    with capture_logs() as lines:
        for key, amount in (("r1", 20), ("r1", 20), ("r2", None)):
            with unit() as conn:
                ledger.refund(
                    conn, transfer_id=spent.transfer_id, idempotency_key=key, amount=amount
                )
    refunds = [line for line in lines if line["event"] == "spend_refunded"]
    assert [(line["tokens"], line["refund_of"]) for line in refunds] == [
        (20, spent.transfer_id),
        (30, spent.transfer_id),
    ]
