"""Buckets on both databases: the order tokens are used in, holds and refunds across
buckets, and expiry (once per bucket, never of held or spent tokens, racing spends, holds
and other sweeps)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from tests.conftest import Unit
from tests.ledger.factories import wallet
from tokenbank import ledger
from tokenbank.db import Database
from tokenbank.ledger import Source, TransferKind
from tokenbank.ledger.models import buckets, draws, transfers

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def _credit(
    db: Database,
    key: str,
    amount: int,
    source: Source,
    expires_at: datetime | None = None,
    *,
    user_id: str = "alice",
) -> int:
    with db.transaction() as conn:
        receipt = ledger.credit(
            conn,
            user_id=user_id,
            amount=amount,
            kind=TransferKind.GRANT,
            idempotency_key=key,
            source=source,
            expires_at=expires_at,
            now=T0,
        )
    return receipt.transfer_id


def _left(db: Database) -> dict[int, tuple[int, int]]:
    """Each bucket's (remaining, held), by the credit that filled it."""
    with db.read() as conn:
        rows = conn.execute(
            sa.select(buckets.c.transfer_id, buckets.c.remaining, buckets.c.held)
        ).all()
    return {transfer_id: (remaining, held) for transfer_id, remaining, held in rows}


def _spend(db: Database, key: str, amount: int, now: datetime = T0) -> ledger.Receipt:
    with db.transaction() as conn:
        return ledger.spend(conn, user_id="alice", amount=amount, idempotency_key=key, now=now)


def _expiries(db: Database) -> Counter[int]:
    """How many expiry transfers each bucket had."""
    with db.read() as conn:
        rows = conn.execute(
            sa.select(draws.c.bucket_id)
            .join(transfers, transfers.c.id == draws.c.transfer_id)
            .where(transfers.c.kind == TransferKind.EXPIRY.value)
        ).scalars()
        return Counter(rows)


def test_tokens_are_used_soonest_expiring_first_then_promotional_then_oldest(
    db: Database,
) -> None:
    wallet(db)
    paid = _credit(db, "paid", 10, Source.PURCHASE)
    free = _credit(db, "free", 10, Source.ADMIN)
    trial = _credit(db, "trial", 10, Source.TRIAL, T0 + 10 * DAY)
    bought_5 = _credit(db, "bought-5", 10, Source.PURCHASE, T0 + 5 * DAY)
    promo_5 = _credit(db, "promo-5", 10, Source.PROMO, T0 + 5 * DAY)
    admin_5 = _credit(db, "admin-5", 10, Source.ADMIN, T0 + 5 * DAY)
    expected_order = [promo_5, admin_5, bought_5, trial, free, paid]
    for step, used_up in enumerate(expected_order):
        _spend(db, f"s{step}", 10)
        left = _left(db)
        assert left[used_up] == (0, 0)
        assert all(left[b] == (10, 0) for b in expected_order[step + 1 :])


def test_one_spend_takes_from_as_many_buckets_as_it_needs(db: Database) -> None:
    wallet(db)
    later = _credit(db, "later", 30, Source.PROMO, T0 + 9 * DAY)
    sooner = _credit(db, "sooner", 30, Source.PROMO, T0 + 2 * DAY)
    kept = _credit(db, "kept", 30, Source.PURCHASE)
    _spend(db, "big", 75)
    assert _left(db) == {sooner: (0, 0), later: (0, 0), kept: (15, 0)}


def test_a_hold_reserves_in_order_and_its_post_and_void_use_the_same_buckets(
    db: Database,
) -> None:
    wallet(db)
    trial = _credit(db, "trial", 20, Source.TRIAL, T0 + 3 * DAY)
    kept = _credit(db, "kept", 100, Source.PURCHASE)
    with db.transaction() as conn:
        first = ledger.hold(conn, user_id="alice", amount=50, idempotency_key="h1", now=T0)
        second = ledger.hold(conn, user_id="alice", amount=10, idempotency_key="h2", now=T0)
    assert _left(db) == {trial: (20, 20), kept: (100, 40)}
    with db.transaction() as conn:  # spends 25 of 50: all 20 of the trial, 5 of the rest
        ledger.post_hold(conn, hold_id=first.id, amount=25, now=T0)
    assert _left(db) == {trial: (0, 0), kept: (95, 10)}
    with db.transaction() as conn:
        ledger.void_hold(conn, hold_id=second.id, now=T0)
    assert _left(db) == {trial: (0, 0), kept: (95, 0)}


def test_a_refund_gives_back_to_the_buckets_the_spend_took_from_last_first(
    db: Database,
) -> None:
    wallet(db)
    trial = _credit(db, "trial", 20, Source.TRIAL, T0 + 3 * DAY)
    kept = _credit(db, "kept", 100, Source.PURCHASE)
    spent = _spend(db, "s1", 50)
    assert _left(db) == {trial: (0, 0), kept: (70, 0)}
    with db.transaction() as conn:
        ledger.refund(conn, transfer_id=spent.transfer_id, idempotency_key="r1", amount=40, now=T0)
    assert _left(db) == {trial: (10, 0), kept: (100, 0)}  # the lasting tokens come back first
    with db.transaction() as conn:
        ledger.refund(conn, transfer_id=spent.transfer_id, idempotency_key="r2", now=T0)
    assert _left(db) == {trial: (20, 0), kept: (100, 0)}


def test_expiry_moves_out_what_is_left_once_and_never_held_tokens(db: Database) -> None:
    wallet(db)
    trial = _credit(db, "trial", 100, Source.TRIAL, T0 + DAY)
    kept = _credit(db, "kept", 5, Source.PURCHASE)
    _spend(db, "s1", 30)
    with db.transaction() as conn:
        held = ledger.hold(
            conn, user_id="alice", amount=20, idempotency_key="h1", ttl_seconds=7 * 86400, now=T0
        )
    after = T0 + 2 * DAY
    with db.autocommit() as conn:
        assert ledger.expire_grants(conn, now=after) == 1
        assert ledger.expire_grants(conn, now=after) == 0  # nothing left to expire
    assert _left(db) == {trial: (20, 20), kept: (5, 0)}  # the held 20 stay, reserved
    with db.read() as conn:
        balance = ledger.balance(conn, user_id="alice", now=after)
    assert (balance.available, balance.held, balance.expiring) == (5, 20, [])
    # Voided, the hold's tokens come back to a bucket that has expired: they expire at once.
    with db.transaction() as conn:
        ledger.void_hold(conn, hold_id=held.id, now=after)
    assert _left(db) == {trial: (0, 0), kept: (5, 0)}
    assert list(_expiries(db).values()) == [2]  # once when due, once for what came back
    with db.read() as conn:
        keys = conn.execute(
            sa.select(transfers.c.idempotency_key, transfers.c.amount)
            .where(transfers.c.kind == TransferKind.EXPIRY.value)
            .order_by(transfers.c.id)
        ).all()
    bucket = next(iter(_expiries(db)))
    assert keys == [(f"@expiry:bucket:{bucket}", 50), (f"@expiry:bucket:{bucket}:2", 20)]


def test_a_refund_to_an_expired_bucket_expires_at_once(db: Database) -> None:
    wallet(db)
    trial = _credit(db, "trial", 10, Source.TRIAL, T0 + DAY)
    spent = _spend(db, "s1", 10)
    after = T0 + 2 * DAY
    with db.transaction() as conn:
        refunded = ledger.refund(
            conn, transfer_id=spent.transfer_id, idempotency_key="r1", now=after
        )
    # The receipt is the refund's own (the balance just after it), as a replay returns it;
    # the expiry that follows is a transfer of its own.
    assert refunded.balance == 10 and _left(db) == {trial: (0, 0)}
    with db.transaction() as conn:
        again = ledger.refund(conn, transfer_id=spent.transfer_id, idempotency_key="r1", now=after)
    assert again.replayed and again.balance == refunded.balance
    with db.read() as conn:
        assert ledger.balance(conn, user_id="alice", now=after).available == 0
        kinds = [item.kind for item in ledger.history(conn, user_id="alice").items]
    assert kinds[:2] == ["expiry", "refund"]


def test_a_posting_that_frees_tokens_of_an_expired_bucket_answers_as_its_replay(
    db: Database,
) -> None:
    wallet(db)
    _credit(db, "trial", 100, Source.TRIAL, T0 + DAY)
    _credit(db, "kept", 50, Source.ADMIN)
    with db.transaction() as conn:
        held = ledger.hold(
            conn, user_id="alice", amount=80, idempotency_key="h1", ttl_seconds=7 * 86400, now=T0
        )
    after = T0 + 2 * DAY
    answers = []
    for _ in range(2):
        with db.transaction() as conn:
            answers.append(ledger.post_hold(conn, hold_id=held.id, amount=10, now=after))
    first, again = answers
    assert again.replayed and (again.transfer_id, again.balance) == (
        first.transfer_id,
        first.balance,
    )
    with db.read() as conn:
        assert ledger.balance(conn, user_id="alice", now=after).available == 50


def test_a_spend_does_not_use_tokens_past_their_expiry_nobody_has_swept(
    db: Database, unit: Unit
) -> None:
    wallet(db)
    _credit(db, "trial", 100, Source.TRIAL, T0 + DAY)
    _credit(db, "kept", 10, Source.PURCHASE)
    after = T0 + 2 * DAY
    with db.read() as conn:
        assert ledger.balance(conn, user_id="alice", now=after).available == 10
    with unit() as conn:
        try:
            ledger.spend(conn, user_id="alice", amount=11, idempotency_key="s1", now=after)
        except ledger.InsufficientTokens as refused:
            assert refused.available == 10
        else:
            raise AssertionError("expired tokens were spent")
    with unit() as conn:
        ledger.spend(conn, user_id="alice", amount=10, idempotency_key="s2", now=after)
    assert list(_expiries(db).values()) == [1]  # the refusal expired the trial, once


def test_expiry_racing_50_spends_and_holds_never_overdraws_or_expires_twice(
    db: Database, unit: Unit
) -> None:
    """Fifty spends and holds of one wallet at once, while three sweeps expire its buckets:
    tokens are spent or expired, never both, each bucket expires once, verify passes."""
    wallet(db)
    for n in range(10):
        _credit(db, f"t{n}", 20, Source.TRIAL, T0 + timedelta(minutes=n + 1))
    _credit(db, "kept", 30, Source.PURCHASE)
    after = T0 + timedelta(minutes=5)  # five of the ten trial buckets are due
    barrier = threading.Barrier(53)

    def act(i: int) -> str:
        barrier.wait()
        try:
            with unit() as conn:
                if i >= 50:
                    ledger.expire_grants(conn, now=after)
                    return "swept"
                if i % 2:
                    ledger.spend(
                        conn, user_id="alice", amount=7, idempotency_key=f"s{i}", now=after
                    )
                    return "spent"
                ledger.hold(conn, user_id="alice", amount=7, idempotency_key=f"h{i}", now=after)
                return "held"
        except ledger.InsufficientTokens:
            return "refused"

    with ThreadPoolExecutor(53) as pool:
        outcomes = Counter(pool.map(act, range(53)))
    # 5 live trial buckets of 20 and 30 kept: 130 tokens, in which 18 uses of 7 fit.
    assert (outcomes["swept"], outcomes["spent"] + outcomes["held"]) == (3, 18)
    assert sorted(_expiries(db).values()) == [1] * 5
    with db.read() as conn:
        balance = ledger.balance(conn, user_id="alice", now=after)
        assert (balance.available, balance.held) == (130 - 18 * 7, 7 * outcomes["held"])
        assert ledger.verify(conn).ok


def test_two_sweeps_at_once_expire_each_bucket_once(db: Database) -> None:
    users = [f"u{n}" for n in range(30)]
    for user in users:
        wallet(db, user_id=user)
        _credit(db, f"{user}-a", 5, Source.PROMO, T0 + DAY, user_id=user)
        _credit(db, f"{user}-b", 7, Source.TRIAL, T0 + 2 * DAY, user_id=user)
    after = T0 + 3 * DAY
    barrier = threading.Barrier(2)

    def sweeper(_: int) -> int:
        barrier.wait()
        total = 0
        while True:
            with db.autocommit() as conn:  # small batches: many steps, interleaved
                done = ledger.expire_grants(conn, now=after, limit=7)
            if not done:
                return total
            total += done

    with ThreadPoolExecutor(2) as pool:
        expired = sum(pool.map(sweeper, range(2)))
    assert expired == 60
    assert sorted(_expiries(db).values()) == [1] * 60
    with db.read() as conn:
        assert all(ledger.balance(conn, user_id=u, now=after).available == 0 for u in users)


def test_a_read_leaves_out_every_bucket_past_its_expiry_however_many(db: Database) -> None:
    """What a read subtracts is not limited to the buckets a balance lists."""
    wallet(db)
    for n in range(25):
        _credit(db, f"promo-{n}", 10, Source.PROMO, T0 + DAY)
    _credit(db, "kept", 5, Source.PURCHASE)
    _credit(db, "later", 7, Source.PROMO, T0 + 9 * DAY)
    with db.read() as conn:
        balance = ledger.balance(conn, user_id="alice", now=T0 + 2 * DAY)
    assert balance.available == 12
    assert [(e.amount, e.expires_at) for e in balance.expiring] == [(7, T0 + 9 * DAY)]


def test_a_spend_waiting_on_a_refund_uses_what_it_gave_back_in_order(db: Database) -> None:
    """PostgreSQL: a spend whose one statement waited for the wallet while a refund gave
    tokens back to a bucket reads that bucket stale; it must neither fail nor skip the
    bucket the order says comes first (it spends the long way instead)."""
    if db.dialect != "postgresql":
        return  # SQLite serialises writers: no statement waits with a stale snapshot
    for gave_back, spent_before in ((1, 2), (2, 3)):
        user = f"alice-{gave_back}"
        wallet(db, user_id=user)
        first = _credit(db, f"{user}-first", 3, Source.ADMIN, user_id=user)
        then = _credit(db, f"{user}-then", 10, Source.ADMIN, user_id=user)
        with db.autocommit() as conn:
            spend = ledger.spend(conn, user_id=user, amount=spent_before, idempotency_key=user)
        results: list[object] = []

        def spend_two(user: str = user, results: list[object] = results) -> None:
            try:
                with db.autocommit() as conn:
                    results.append(
                        ledger.spend(conn, user_id=user, amount=2, idempotency_key=f"{user}-2")
                    )
            except Exception as exc:
                results.append(exc)

        with db.transaction() as conn:
            ledger.refund(
                conn, transfer_id=spend.transfer_id, idempotency_key=f"{user}-r", amount=gave_back
            )
            waiting = threading.Thread(target=spend_two)
            waiting.start()
            time.sleep(0.3)  # the spend's statement is now waiting for the wallet's lock
        waiting.join()
        assert isinstance(results[0], ledger.Receipt), results
        left = _left(db)
        assert left[first][0] == 3 - spent_before + gave_back - 2  # the first bucket first
        assert left[then][0] == 10
