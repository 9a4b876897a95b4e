"""A hold that expires is logged once, and only once its release is committed."""

from __future__ import annotations

from collections.abc import MutableMapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.conftest import Unit
from tests.ledger.factories import wallet
from tokenbank import ledger
from tokenbank.db import Database

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
LATER = T0 + timedelta(minutes=5)


def _hold(db: Database, amount: int, key: str, user_id: str = "alice") -> ledger.Hold:
    with db.transaction() as conn:
        return ledger.hold(
            conn, user_id=user_id, amount=amount, idempotency_key=key, ttl_seconds=60, now=T0
        )


def _expiries(lines: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [line for line in lines if line["event"] == "hold_expired"]


def test_the_sweep_logs_each_expired_hold(db: Database, unit: Unit) -> None:
    wallet(db, tokens=100)
    wallet(db, user_id="bob", tokens=100)
    first, second = _hold(db, 30, "h1"), _hold(db, 40, "h2", user_id="bob")
    with capture_logs() as lines, unit() as conn:
        assert ledger.expire_holds(conn, now=LATER) == 2
    assert sorted(
        (line["hold_id"], line["user_id"], line["amount"], line["log_level"])
        for line in _expiries(lines)
    ) == [(first.id, "alice", 30, "info"), (second.id, "bob", 40, "info")]
    with capture_logs() as again, unit() as conn:  # nothing left to expire, nothing logged
        assert ledger.expire_holds(conn, now=LATER) == 0
    assert _expiries(again) == []


def test_the_line_waits_for_the_callers_commit(db: Database) -> None:
    wallet(db, tokens=100)
    held = _hold(db, 30, "h1")
    with capture_logs() as lines:
        with db.transaction() as conn:
            ledger.expire_holds(conn, now=LATER)
            assert _expiries(lines) == []  # not committed yet
        assert [line["hold_id"] for line in _expiries(lines)] == [held.id]


def test_a_rolled_back_expiry_is_not_logged(db: Database) -> None:
    wallet(db, tokens=100)
    held = _hold(db, 30, "h1")
    with capture_logs() as lines, pytest.raises(RuntimeError), db.transaction() as conn:
        ledger.expire_holds(conn, now=LATER)
        raise RuntimeError("the caller's unit fails after the sweep")
    assert _expiries(lines) == []
    with db.read() as conn:
        assert ledger.get_hold(conn, hold_id=held.id).status is ledger.HoldStatus.PENDING


def test_expiries_on_the_way_are_logged_too(db: Database, unit: Unit) -> None:
    """A spend that releases a stale hold, and a void that comes too late."""
    wallet(db, tokens=100)
    stale = _hold(db, 60, "h1")
    with capture_logs() as lines, unit() as conn:
        ledger.spend(conn, user_id="alice", amount=50, idempotency_key="s1", now=LATER)
    assert [(line["hold_id"], line["amount"]) for line in _expiries(lines)] == [(stale.id, 60)]
    late = _hold(db, 30, "h2")
    with capture_logs() as lines, unit() as conn:
        ended = ledger.void_hold(conn, hold_id=late.id, now=LATER)
    assert ended.status is ledger.HoldStatus.EXPIRED
    assert [(line["hold_id"], line["amount"]) for line in _expiries(lines)] == [(late.id, 30)]


def test_a_voided_hold_is_not_an_expiry(db: Database, unit: Unit) -> None:
    wallet(db, tokens=100)
    held = _hold(db, 30, "h1")
    with capture_logs() as lines, unit() as conn:
        ledger.void_hold(conn, hold_id=held.id, now=T0)
    assert _expiries(lines) == []
