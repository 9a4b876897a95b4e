from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import Unit
from tests.ledger.factories import wallet
from tokenbank import ledger
from tokenbank.db import Database
from tokenbank.ledger import TransferKind
from tokenbank.ledger.inputs import MAX_METADATA_DEPTH
from tokenbank.ledger.models import SystemAccount, entries, transfers

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def test_open_wallet_is_idempotent(db: Database) -> None:
    with db.transaction() as conn:
        first = ledger.open_wallet(conn, user_id="alice")
        assert ledger.open_wallet(conn, user_id="alice") == first
        assert ledger.wallet_exists(conn, user_id="alice")
        assert not ledger.wallet_exists(conn, user_id="bob")
    with db.read() as conn:
        assert ledger.balance(conn, user_id="alice").available == 0


@pytest.mark.parametrize(
    ("kind", "system", "total"),
    [
        (TransferKind.PURCHASE, SystemAccount.PURCHASES, "total_purchased"),
        (TransferKind.BONUS, SystemAccount.BONUSES, "total_purchased"),
        (TransferKind.GRANT, SystemAccount.GRANTS, "total_granted"),
    ],
)
def test_credit_moves_tokens_from_its_system_account(
    db: Database, kind: TransferKind, system: SystemAccount, total: str
) -> None:
    wallet(db)
    with db.transaction() as conn:
        receipt = ledger.credit(
            conn,
            user_id="alice",
            amount=500,
            kind=kind,
            idempotency_key="k1",
            description="pack",
            metadata={"order": 7},
            event_at=T0,
        )
    assert (receipt.kind, receipt.amount, receipt.balance, receipt.replayed) == (
        kind,
        500,
        500,
        False,
    )
    with db.read() as conn:
        balance = ledger.balance(conn, user_id="alice")
        transfer = ledger.get_transfer(conn, transfer_id=receipt.transfer_id)
        sides = conn.execute(
            sa.select(entries.c.account_id, entries.c.amount, entries.c.balance_after)
            .where(entries.c.transfer_id == receipt.transfer_id)
            .order_by(entries.c.amount)
        ).all()
    assert balance.available == 500
    assert getattr(balance, total) == 500
    assert transfer.debit_account_id == system
    assert (transfer.description, transfer.metadata, transfer.event_at) == (
        "pack",
        {"order": 7},
        T0,
    )
    assert [(a, n, b) for a, n, b in sides] == [
        (int(system), -500, None),
        (transfer.credit_account_id, 500, 500),
    ]


def test_spend_takes_tokens_and_refuses_an_overdraft(db: Database, unit: Unit) -> None:
    wallet(db, tokens=100)
    with unit() as conn:
        receipt = ledger.spend(conn, user_id="alice", amount=60, idempotency_key="s1")
    assert (receipt.amount, receipt.balance, receipt.kind) == (60, 40, TransferKind.SPEND)
    with pytest.raises(ledger.InsufficientTokens) as refused, unit() as conn:
        ledger.spend(conn, user_id="alice", amount=41, idempotency_key="s2")
    assert (refused.value.requested, refused.value.available) == (41, 40)
    assert refused.value.code == "insufficient_tokens"
    with db.read() as conn:
        balance = ledger.balance(conn, user_id="alice")
        assert (balance.available, balance.total_spent) == (40, 60)
        assert conn.execute(sa.select(sa.func.count()).select_from(transfers)).scalar() == 2
    with unit() as conn:  # the refused key was not burnt
        assert ledger.spend(conn, user_id="alice", amount=40, idempotency_key="s2").balance == 0


def test_spend_replay_returns_the_first_result_without_a_second_effect(
    db: Database, unit: Unit
) -> None:
    wallet(db, tokens=100)
    with unit() as conn:
        first = ledger.spend(
            conn, user_id="alice", amount=30, idempotency_key="s1", metadata={"model": "m"}
        )
    with unit() as conn:
        ledger.spend(conn, user_id="alice", amount=50, idempotency_key="s2")
    with unit() as conn:
        again = ledger.spend(
            conn, user_id="alice", amount=30, idempotency_key="s1", metadata={"model": "m"}
        )
    assert again.replayed and not first.replayed
    assert (again.transfer_id, again.balance) == (first.transfer_id, 70)
    with db.read() as conn:
        assert ledger.balance(conn, user_id="alice").available == 20


def test_replay_is_answered_even_when_the_tokens_are_gone(db: Database) -> None:
    wallet(db, tokens=10)
    with db.transaction() as conn:
        first = ledger.spend(conn, user_id="alice", amount=10, idempotency_key="s1")
    with db.transaction() as conn:
        again = ledger.spend(conn, user_id="alice", amount=10, idempotency_key="s1")
    assert again.replayed and again.transfer_id == first.transfer_id


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"amount": 31}, "amount"),
        ({"user_id": "bob"}, "user_id"),
        ({"description": "other"}, "description"),
        ({"metadata": {"model": "x"}}, "metadata"),
        ({"event_at": T0 + timedelta(seconds=1)}, "event_at"),
    ],
)
def test_same_key_other_parameters_is_a_conflict(
    db: Database, change: dict[str, object], detail: str
) -> None:
    wallet(db, tokens=100)
    wallet(db, "bob", tokens=100)
    asked: dict[str, object] = {
        "user_id": "alice",
        "amount": 30,
        "idempotency_key": "s1",
        "description": "gen",
        "metadata": {"model": "m"},
        "event_at": T0,
    }
    with db.transaction() as conn:
        ledger.spend(conn, **asked)  # type: ignore[arg-type]
    with pytest.raises(ledger.IdempotencyConflict, match=detail), db.transaction() as conn:
        ledger.spend(conn, **{**asked, **change})  # type: ignore[arg-type]
    with db.read() as conn:
        assert ledger.balance(conn, user_id="alice").available == 70
        assert ledger.balance(conn, user_id="bob").available == 100


@pytest.mark.parametrize("operation", ["spend", "hold"])
def test_a_feature_retried_after_its_price_changed_is_a_replay(
    db: Database, unit: Unit, operation: str
) -> None:
    """The caller named a feature and a quantity, never the amount: the catalog's price when
    the key was first used stands, and only another feature or quantity is a conflict."""
    wallet(db, tokens=500)
    act = getattr(ledger, operation)
    extra = {"ttl_seconds": 60} if operation == "hold" else {}

    def ask(amount: int, quantity: int) -> object:
        with unit() as conn:
            return act(
                conn,
                user_id="alice",
                amount=amount,
                idempotency_key="img-1",
                feature="image",
                quantity=quantity,
                **extra,
            )

    first = ask(120, 3)
    again = ask(150, 3)  # the image now costs 50
    assert again.replayed and not first.replayed  # type: ignore[attr-defined]
    assert again.amount == first.amount == 120  # type: ignore[attr-defined]
    with pytest.raises(ledger.IdempotencyConflict):
        ask(200, 4)
    with db.read() as conn:
        assert ledger.balance(conn, user_id="alice").available == 380


def test_a_key_used_by_a_credit_cannot_spend(db: Database) -> None:
    wallet(db, tokens=100)
    with pytest.raises(ledger.IdempotencyConflict, match="kind"), db.transaction() as conn:
        ledger.spend(conn, user_id="alice", amount=100, idempotency_key="seed-alice")


def test_unknownwallet(db: Database) -> None:
    with pytest.raises(ledger.UnknownUser) as unknown, db.transaction() as conn:
        ledger.spend(conn, user_id="ghost", amount=1, idempotency_key="s1")
    assert unknown.value.code == "not_found"
    with pytest.raises(ledger.UnknownUser), db.transaction() as conn:
        ledger.credit(
            conn, user_id="ghost", amount=1, kind=TransferKind.GRANT, idempotency_key="g1"
        )
    with pytest.raises(ledger.UnknownUser), db.read() as conn:
        ledger.balance(conn, user_id="ghost")


@pytest.mark.parametrize("amount", [0, -5, 1.5, True, "10", 10**12 + 1, None])
def test_bad_amounts_are_refused_before_touching_the_database(db: Database, amount: object) -> None:
    wallet(db, tokens=100)
    with pytest.raises(ledger.InvalidArgument) as bad, db.transaction() as conn:
        ledger.spend(conn, user_id="alice", amount=amount, idempotency_key="s1")  # type: ignore[arg-type]
    assert bad.value.field == "amount" and bad.value.code == "validation_error"


def _nested(depth: int) -> dict[str, Any]:
    """An object ``depth`` levels deep, lists and objects by turns."""
    value: Any = 1
    for level in range(depth - 1):
        value = [value] if level % 2 else {"k": value}
    return {"top": value}


def test_metadata_nests_up_to_its_limit(db: Database) -> None:
    """As deep as the limit is kept as given, and read back (every reader of the history
    writes it out again, so nothing deeper may be kept)."""
    wallet(db, tokens=100)
    deep = _nested(MAX_METADATA_DEPTH)
    with db.transaction() as conn:
        spent = ledger.spend(conn, user_id="alice", amount=1, idempotency_key="deep", metadata=deep)
    with db.read() as conn:
        assert ledger.get_transfer(conn, transfer_id=spent.transfer_id).metadata == deep


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("idempotency_key", ""),
        ("idempotency_key", "x" * 256),
        ("idempotency_key", " padded"),
        ("idempotency_key", "@hold/1/post"),
        ("idempotency_key", "line\nbreak"),
        ("user_id", "a/b"),
        ("user_id", "has space"),
        ("description", "d" * 1001),
        ("metadata", {"n": float("nan")}),
        ("metadata", {"big": "x" * 5000}),
        ("metadata", ["not", "an", "object"]),
        ("metadata", {"x": "a\x00b"}),
        ("metadata", _nested(MAX_METADATA_DEPTH + 1)),
        ("metadata", _nested(5000)),  # deeper than any walk by recursion could go
        ("event_at", datetime(2026, 1, 1)),
    ],
)
def test_bad_arguments_are_refused(db: Database, field: str, value: object) -> None:
    wallet(db, tokens=100)
    asked: dict[str, object] = {"user_id": "alice", "amount": 1, "idempotency_key": "s1"}
    with pytest.raises(ledger.InvalidArgument) as bad, db.transaction() as conn:
        ledger.spend(conn, **{**asked, field: value})  # type: ignore[arg-type]
    assert bad.value.field == field


def test_credit_refuses_debit_kinds(db: Database) -> None:
    wallet(db)
    with pytest.raises(ledger.InvalidArgument, match="kind"), db.transaction() as conn:
        ledger.credit(conn, user_id="alice", amount=1, kind=TransferKind.SPEND, idempotency_key="x")


def test_refund_full_partial_and_never_more_than_spent(db: Database, unit: Unit) -> None:
    wallet(db, tokens=100)
    with unit() as conn:
        spent = ledger.spend(conn, user_id="alice", amount=40, idempotency_key="s1")
    with unit() as conn:
        part = ledger.refund(
            conn, transfer_id=spent.transfer_id, amount=15, idempotency_key="r1", description="x"
        )
    assert (part.kind, part.amount, part.balance) == (TransferKind.REFUND, 15, 75)
    with pytest.raises(ledger.RefundExceedsSpend) as too_much, unit() as conn:
        ledger.refund(conn, transfer_id=spent.transfer_id, amount=26, idempotency_key="r2")
    assert (too_much.value.requested, too_much.value.refundable) == (26, 25)
    with unit() as conn:
        rest = ledger.refund(conn, transfer_id=spent.transfer_id, idempotency_key="r3")
    assert (rest.amount, rest.balance) == (25, 100)
    with pytest.raises(ledger.RefundExceedsSpend), unit() as conn:
        ledger.refund(conn, transfer_id=spent.transfer_id, idempotency_key="r4")
    with unit() as conn:  # replays of both refunds: no new effect
        assert ledger.refund(conn, transfer_id=spent.transfer_id, idempotency_key="r3").replayed
        replay = ledger.refund(
            conn, transfer_id=spent.transfer_id, amount=15, idempotency_key="r1", description="x"
        )
        assert replay.replayed and replay.transfer_id == part.transfer_id
    with pytest.raises(ledger.IdempotencyConflict), unit() as conn:
        ledger.refund(conn, transfer_id=spent.transfer_id, amount=16, idempotency_key="r1")
    with db.read() as conn:
        balance = ledger.balance(conn, user_id="alice")
        assert (balance.available, balance.total_spent) == (100, 0)
        refunds = ledger.history(conn, user_id="alice", kinds=[TransferKind.REFUND]).items
        assert [r.refund_of_id for r in refunds] == [spent.transfer_id] * 2


def test_only_spends_are_refundable(db: Database) -> None:
    wallet(db, tokens=100)
    with db.read() as conn:
        grant_id = ledger.history(conn, user_id="alice").items[0].transfer_id
    with pytest.raises(ledger.NotRefundable), db.transaction() as conn:
        ledger.refund(conn, transfer_id=grant_id, idempotency_key="r1")
    with pytest.raises(ledger.UnknownTransfer), db.transaction() as conn:
        ledger.refund(conn, transfer_id=999_999, idempotency_key="r1")


def test_a_failed_unit_of_work_leaves_nothing_behind(db: Database) -> None:
    wallet(db, tokens=100)
    with pytest.raises(RuntimeError), db.transaction() as conn:
        ledger.spend(conn, user_id="alice", amount=70, idempotency_key="s1")
        raise RuntimeError("the caller failed after the spend")
    with db.read() as conn:
        assert ledger.balance(conn, user_id="alice").available == 100
    with db.transaction() as conn:
        assert not ledger.spend(conn, user_id="alice", amount=70, idempotency_key="s1").replayed


def test_the_database_refuses_an_overdraft_and_edits_of_history(db: Database) -> None:
    """The CHECK constraint and the append-only triggers hold even against raw SQL."""
    wallet(db, tokens=5)
    with pytest.raises(sa.exc.IntegrityError), db.transaction() as conn:
        conn.execute(sa.text("UPDATE accounts SET balance = -1 WHERE user_id = 'alice'"))
    with pytest.raises(sa.exc.DatabaseError, match="immutable"), db.transaction() as conn:
        conn.execute(sa.text("UPDATE transfers SET amount = 1"))
    with pytest.raises(sa.exc.DatabaseError, match="immutable"), db.transaction() as conn:
        conn.execute(sa.text("DELETE FROM entries"))
    with db.transaction() as conn:
        ledger.spend(conn, user_id="alice", amount=1, idempotency_key="drawn")
    for change in ("UPDATE draws SET amount = 2", "DELETE FROM draws"):
        with pytest.raises(sa.exc.DatabaseError, match="immutable"), db.transaction() as conn:
            conn.execute(sa.text(change))
