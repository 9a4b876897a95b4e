"""verify must catch each kind of damage. The damage is done with raw SQL, around the
append-only triggers where needed, as a broken migration or a hand edit would."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tests.conftest import DatabaseFactory
from tests.ledger.factories import wallet
from tokenbank import ledger
from tokenbank.db import Database


def _populated(fresh_database: DatabaseFactory) -> Database:
    db = fresh_database()
    wallet(db, tokens=100)
    with db.transaction() as conn:
        spent = ledger.spend(conn, user_id="alice", amount=40, idempotency_key="s1")
        ledger.refund(conn, transfer_id=spent.transfer_id, amount=10, idempotency_key="r1")
        held = ledger.hold(conn, user_id="alice", amount=20, idempotency_key="h1")
        ledger.post_hold(conn, hold_id=held.id, amount=15)
        ledger.hold(conn, user_id="alice", amount=5, idempotency_key="h2")
    return db


def _without_triggers(conn: Connection, sql: str) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
        conn.execute(sa.text(sql))
        return
    for name in conn.execute(
        sa.text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")
    ).all():
        conn.execute(sa.text(f"DROP TRIGGER {name[0]}"))
    conn.execute(sa.text(sql))


def test_a_healthy_ledger_passes(fresh_database: DatabaseFactory) -> None:
    db = _populated(fresh_database)
    with db.read() as conn:
        report = ledger.verify(conn)
    assert report.ok
    assert (report.transfers, report.entries) == (4, 8)


DAMAGE: list[tuple[str, Callable[[Connection], object]]] = [
    (
        "wallet_balances",
        lambda c: c.execute(sa.text("UPDATE accounts SET balance = balance + 1, held = held")),
    ),
    (
        "running_balances",
        lambda c: _without_triggers(
            c, "UPDATE entries SET balance_after = balance_after + 1 WHERE id = 3"
        ),
    ),
    (
        "transfers_balance",
        lambda c: _without_triggers(c, "UPDATE entries SET amount = amount * 2 WHERE id = 4"),
    ),
    (
        "holds_consistent",
        lambda c: c.execute(sa.text("UPDATE accounts SET held = 0 WHERE kind = 'wallet'")),
    ),
    (
        "posted_holds",
        lambda c: c.execute(sa.text("UPDATE holds SET posted_amount = 14 WHERE status = 'posted'")),
    ),
    (
        "refunds_within_spends",
        lambda c: _without_triggers(c, "UPDATE transfers SET amount = 41 WHERE kind = 'refund'"),
    ),
    (
        "wallet_totals",
        lambda c: c.execute(sa.text("UPDATE accounts SET total_spent = 0 WHERE kind = 'wallet'")),
    ),
]


@pytest.mark.parametrize(("check", "damage"), DAMAGE, ids=[name for name, _ in DAMAGE])
def test_damage_is_reported(
    fresh_database: DatabaseFactory, check: str, damage: Callable[[Connection], object]
) -> None:
    db = _populated(fresh_database)
    with db.transaction() as conn:
        damage(conn)
    with db.read() as conn:
        report = ledger.verify(conn)
    failed = {c.name: c for c in report.checks if not c.ok}
    assert check in failed, report
    assert failed[check].problems and failed[check].problem_count >= 1
