from __future__ import annotations

import pytest

from tests.ledger.factories import wallet
from tokenbank import ledger
from tokenbank.db import Database
from tokenbank.ledger import TransferKind


def test_history_is_newest_first_with_keyset_pages(db: Database) -> None:
    wallet(db, tokens=1000)
    for n in range(7):
        with db.transaction() as conn:
            ledger.spend(conn, user_id="alice", amount=n + 1, idempotency_key=f"s{n}")
    seen: list[int] = []
    before = None
    with db.read() as conn:
        while True:
            page = ledger.history(conn, user_id="alice", limit=3, before=before)
            seen += [item.amount for item in page.items]
            if page.next_cursor is None:
                break
            before = page.next_cursor
    assert seen == [-7, -6, -5, -4, -3, -2, -1, 1000]


def test_pages_stay_stable_while_new_transfers_arrive(db: Database) -> None:
    wallet(db, tokens=1000)
    for n in range(4):
        with db.transaction() as conn:
            ledger.spend(conn, user_id="alice", amount=1, idempotency_key=f"s{n}")
    with db.read() as conn:
        first = ledger.history(conn, user_id="alice", limit=2)
    with db.transaction() as conn:
        ledger.spend(conn, user_id="alice", amount=1, idempotency_key="late")
    with db.read() as conn:
        second = ledger.history(conn, user_id="alice", limit=2, before=first.next_cursor)
    keys = [i.idempotency_key for i in first.items + second.items]
    assert keys == ["s3", "s2", "s1", "s0"]


def test_history_filters_by_kind_and_shows_running_balance(db: Database) -> None:
    wallet(db, tokens=100)
    with db.transaction() as conn:
        spent = ledger.spend(
            conn, user_id="alice", amount=30, idempotency_key="s1", description="chat"
        )
        ledger.refund(conn, transfer_id=spent.transfer_id, amount=10, idempotency_key="r1")
        ledger.credit(
            conn, user_id="alice", amount=5, kind=TransferKind.BONUS, idempotency_key="b1"
        )
    with db.read() as conn:
        everything = ledger.history(conn, user_id="alice").items
        spends_and_refunds = ledger.history(
            conn, user_id="alice", kinds=[TransferKind.SPEND, TransferKind.REFUND]
        ).items
    assert [(i.kind, i.amount, i.balance_after) for i in everything] == [
        (TransferKind.BONUS, 5, 85),
        (TransferKind.REFUND, 10, 80),
        (TransferKind.SPEND, -30, 70),
        (TransferKind.GRANT, 100, 100),
    ]
    assert [i.kind for i in spends_and_refunds] == [TransferKind.REFUND, TransferKind.SPEND]
    assert everything[2].description == "chat"


@pytest.mark.parametrize("limit", [0, 501, True])
def test_history_limit_bounds(db: Database, limit: object) -> None:
    wallet(db)
    with pytest.raises(ledger.InvalidArgument), db.read() as conn:
        ledger.history(conn, user_id="alice", limit=limit)  # type: ignore[arg-type]


def test_history_of_unknown_user(db: Database) -> None:
    with pytest.raises(ledger.UnknownUser), db.read() as conn:
        ledger.history(conn, user_id="ghost")
