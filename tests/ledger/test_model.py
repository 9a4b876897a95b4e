"""The ledger against a plain model, driven by hypothesis.

Random sequences of credits, spends, refunds, holds, posts, voids, expiries and replays of
earlier keys run on a real database; after every step the balances match the model, none is
negative, and ``verify`` passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
    run_state_machine_as_test,
)

from tests.conftest import DatabaseFactory
from tokenbank import ledger
from tokenbank.db import Database
from tokenbank.ledger import TransferKind

USERS = ("ann", "bo")
T0 = datetime(2026, 11, 21, tzinfo=UTC)


@dataclass
class Model:
    available: dict[str, int] = field(default_factory=lambda: dict.fromkeys(USERS, 0))
    held: dict[str, int] = field(default_factory=lambda: dict.fromkeys(USERS, 0))
    refundable: dict[int, int] = field(default_factory=dict)  # spend transfer id -> left


@dataclass(frozen=True)
class Done:
    """A key that was used, with what it did, so a replay can be checked."""

    key: str
    user_id: str
    amount: int
    kind: str
    transfer_id: int
    balance: int


@dataclass(frozen=True)
class HeldTokens:
    id: int
    user_id: str
    amount: int
    expires_at: datetime


def make_machine(fresh_database: DatabaseFactory, unit: str) -> type[RuleBasedStateMachine]:
    class LedgerMachine(RuleBasedStateMachine):
        done = Bundle("done")
        holds = Bundle("holds")

        def __init__(self) -> None:
            super().__init__()
            self.db: Database = fresh_database()
            self.unit = self.db.transaction if unit == "transaction" else self.db.autocommit
            self.model = Model()
            self.now = T0
            self.serial = 0
            self.pending: dict[int, HeldTokens] = {}
            with self.unit() as conn:
                for user in USERS:
                    ledger.open_wallet(conn, user_id=user)

        def _key(self) -> str:
            self.serial += 1
            return f"k{self.serial}"

        @rule(target=done, user=st.sampled_from(USERS), amount=st.integers(1, 50))
        def credit(self, user: str, amount: int) -> Done:
            key = self._key()
            with self.unit() as conn:
                r = ledger.credit(
                    conn, user_id=user, amount=amount, kind=TransferKind.GRANT, idempotency_key=key
                )
            self.model.available[user] += amount
            return Done(key, user, amount, "grant", r.transfer_id, r.balance)

        @rule(target=done, user=st.sampled_from(USERS), amount=st.integers(1, 60))
        def spend(self, user: str, amount: int) -> Done:
            self._expire_in_model(user)  # expired holds count as released
            key = self._key()
            try:
                with self.unit() as conn:
                    r = ledger.spend(
                        conn, user_id=user, amount=amount, idempotency_key=key, now=self.now
                    )
            except ledger.InsufficientTokens as exc:
                assert amount > self.model.available[user]
                assert exc.available == self.model.available[user]
                return Done(key, user, amount, "refused", 0, 0)
            assert amount <= self.model.available[user]
            self.model.available[user] -= amount
            self.model.refundable[r.transfer_id] = amount
            return Done(key, user, amount, "spend", r.transfer_id, r.balance)

        @rule(earlier=done)
        def replay(self, earlier: Done) -> None:
            if earlier.kind == "refused":
                return
            with self.unit() as conn:
                if earlier.kind == "grant":
                    r = ledger.credit(
                        conn,
                        user_id=earlier.user_id,
                        amount=earlier.amount,
                        kind=TransferKind.GRANT,
                        idempotency_key=earlier.key,
                    )
                else:
                    r = ledger.spend(
                        conn,
                        user_id=earlier.user_id,
                        amount=earlier.amount,
                        idempotency_key=earlier.key,
                        now=self.now,
                    )
            assert r.replayed
            assert (r.transfer_id, r.balance) == (earlier.transfer_id, earlier.balance)

        @rule(earlier=done, other=st.integers(1, 5))
        def conflicting_replay(self, earlier: Done, other: int) -> None:
            if earlier.kind == "refused":
                return
            try:
                with self.unit() as conn:
                    ledger.spend(
                        conn,
                        user_id=earlier.user_id,
                        amount=earlier.amount + other,
                        idempotency_key=earlier.key,
                        now=self.now,
                    )
            except ledger.IdempotencyConflict:
                return
            raise AssertionError("a reused key with another amount was accepted")

        @rule(earlier=done, amount=st.none() | st.integers(1, 30))
        def refund(self, earlier: Done, amount: int | None) -> None:
            if earlier.kind != "spend":
                return
            left = self.model.refundable[earlier.transfer_id]
            try:
                with self.unit() as conn:
                    r = ledger.refund(
                        conn,
                        transfer_id=earlier.transfer_id,
                        amount=amount,
                        idempotency_key=self._key(),
                    )
            except ledger.RefundExceedsSpend:
                assert left == 0 or (amount or left) > left
                return
            assert r.amount == (amount or left) <= left
            self.model.refundable[earlier.transfer_id] -= r.amount
            self.model.available[earlier.user_id] += r.amount

        @rule(
            target=holds,
            user=st.sampled_from(USERS),
            amount=st.integers(1, 40),
            ttl=st.integers(1, 120),
        )
        def hold(self, user: str, amount: int, ttl: int) -> HeldTokens:
            self._expire_in_model(user)
            try:
                with self.unit() as conn:
                    h = ledger.hold(
                        conn,
                        user_id=user,
                        amount=amount,
                        idempotency_key=self._key(),
                        ttl_seconds=ttl,
                        now=self.now,
                    )
            except ledger.InsufficientTokens:
                assert amount > self.model.available[user]
                return HeldTokens(0, user, 0, self.now)
            self.model.available[user] -= amount
            self.model.held[user] += amount
            self.pending[h.id] = HeldTokens(h.id, user, amount, h.expires_at)
            return self.pending[h.id]

        @rule(held=consumes(holds), fraction=st.floats(0.01, 1.0))
        def post(self, held: HeldTokens, fraction: float) -> None:
            if held.id == 0:
                return
            amount = max(1, int(held.amount * fraction))
            try:
                with self.unit() as conn:
                    r = ledger.post_hold(conn, hold_id=held.id, amount=amount, now=self.now)
            except ledger.HoldNotPending:
                assert held.id not in self.pending or held.expires_at <= self.now
                return
            spent = self.pending.pop(held.id)
            self.model.held[spent.user_id] -= spent.amount
            self.model.available[spent.user_id] += spent.amount - amount
            self.model.refundable[r.transfer_id] = amount

        @rule(held=consumes(holds))
        def void(self, held: HeldTokens) -> None:
            if held.id == 0:
                return
            try:
                with self.unit() as conn:
                    ledger.void_hold(conn, hold_id=held.id, now=self.now)
            except ledger.HoldNotPending:
                assert held.id not in self.pending  # it was posted
                return
            if self.pending.pop(held.id, None) is not None:
                self.model.held[held.user_id] -= held.amount
                self.model.available[held.user_id] += held.amount

        @rule(seconds=st.integers(1, 90))
        def time_passes(self, seconds: int) -> None:
            self.now += timedelta(seconds=seconds)

        @rule()
        def sweep(self) -> None:
            with self.unit() as conn:
                ledger.expire_holds(conn, now=self.now)
            for user in USERS:
                self._expire_in_model(user)

        def _expire_in_model(self, user: str) -> None:
            for hold_id, h in list(self.pending.items()):
                if h.user_id == user and h.expires_at <= self.now:
                    del self.pending[hold_id]
                    self.model.held[user] -= h.amount
                    self.model.available[user] += h.amount

        @invariant()
        def balances_match_the_model(self) -> None:
            with self.db.read() as conn:
                for user in USERS:
                    balance = ledger.balance(conn, user_id=user, now=self.now)
                    stale = sum(
                        h.amount
                        for h in self.pending.values()
                        if h.user_id == user and h.expires_at <= self.now
                    )
                    assert balance.available == self.model.available[user] + stale
                    assert balance.held == self.model.held[user] - stale
                    assert balance.available >= 0 and balance.held >= 0

        @invariant()
        def verify_passes(self) -> None:
            with self.db.read() as conn:
                report = ledger.verify(conn)
            assert report.ok, [c for c in report.checks if not c.ok]

        def teardown(self) -> None:
            self.db.dispose()

    return LedgerMachine


@pytest.mark.slow
@pytest.mark.parametrize("unit", ["transaction", "autocommit"])
def test_ledger_matches_the_model(fresh_database: DatabaseFactory, backend: str, unit: str) -> None:
    if backend == "sqlite" and unit == "autocommit":
        pytest.skip("on SQLite Database.autocommit() is Database.transaction()")
    machine = make_machine(fresh_database, unit)
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=40 if backend == "sqlite" else 25,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )
