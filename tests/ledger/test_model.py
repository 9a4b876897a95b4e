"""The ledger against a plain model, driven by hypothesis.

Random sequences of credits (of every source, some expiring), spends, refunds, holds,
posts, voids, time passing, sweeps of holds and of expired buckets, and replays of earlier
keys run on a real database; the model keeps every wallet as buckets drawn on in the
documented order. After every step the balances and what expires next match the model,
none is negative, and ``verify`` passes.
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
from tokenbank.ledger.models import PAID_SOURCES

USERS = ("ann", "bo")
T0 = datetime(2026, 11, 21, tzinfo=UTC)


@dataclass
class Bucket:
    """What the model knows of one credit: the ledger's bucket, simulated."""

    seq: int
    user_id: str
    paid: bool
    expires_at: datetime | None
    remaining: int
    held: int = 0

    def live(self, now: datetime) -> bool:
        return self.expires_at is None or self.expires_at > now

    def order(self) -> tuple[bool, datetime, bool, int]:
        return (self.expires_at is None, self.expires_at or T0, self.paid, self.seq)


@dataclass
class Model:
    """The wallets as buckets, drawn on in the documented order of use."""

    buckets: list[Bucket] = field(default_factory=list)
    reserved: dict[int, list[tuple[Bucket, int]]] = field(default_factory=dict)  # hold id
    drawn: dict[int, list[tuple[Bucket, int]]] = field(default_factory=dict)  # spend id
    refundable: dict[int, int] = field(default_factory=dict)  # spend transfer id -> left

    def of(self, user: str) -> list[Bucket]:
        return sorted((b for b in self.buckets if b.user_id == user), key=Bucket.order)

    def available(self, user: str, now: datetime) -> int:
        return sum(b.remaining - b.held for b in self.of(user) if b.live(now))

    def take(
        self, user: str, amount: int, now: datetime, *, hold: bool
    ) -> list[tuple[Bucket, int]]:
        taken, left = [], amount
        for b in self.of(user):
            free = b.remaining - b.held
            if left == 0 or not b.live(now) or free <= 0:
                continue
            n = min(free, left)
            left -= n
            if hold:
                b.held += n
            else:
                b.remaining -= n
            taken.append((b, n))
        assert left == 0
        return taken

    def end_hold(self, hold_id: int, spent: int) -> None:
        left = spent
        for b, n in self.reserved.pop(hold_id):
            t = min(n, left)
            left -= t
            b.held -= n
            b.remaining -= t

    def expire(self, user: str, now: datetime) -> None:
        for b in self.of(user):
            if not b.live(now) and b.remaining > b.held:
                b.remaining = b.held


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


def _first(drawn: list[tuple[Bucket, int]], amount: int) -> list[tuple[Bucket, int]]:
    """The first ``amount`` tokens of what was drawn, in order."""
    out, left = [], amount
    for b, n in drawn:
        if left:
            out.append((b, min(n, left)))
            left -= min(n, left)
    return out


def _less(drawn: list[tuple[Bucket, int]], amount: int) -> list[tuple[Bucket, int]]:
    """What is still out of a spend's draws after ``amount`` came back, the last first."""
    kept = list(drawn)
    while amount:
        b, n = kept.pop()
        if n > amount:
            kept.append((b, n - amount))
            amount = 0
        else:
            amount -= n
    return kept


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

        @rule(
            target=done,
            user=st.sampled_from(USERS),
            amount=st.integers(1, 50),
            source=st.sampled_from(list(ledger.Source)),
            lasts=st.none() | st.integers(1, 240),
        )
        def credit(self, user: str, amount: int, source: ledger.Source, lasts: int | None) -> Done:
            key = self._key()
            expires_at = None if lasts is None else self.now + timedelta(seconds=lasts)
            with self.unit() as conn:
                r = ledger.credit(
                    conn,
                    user_id=user,
                    amount=amount,
                    kind=TransferKind.GRANT,
                    idempotency_key=key,
                    source=source,
                    expires_at=expires_at,
                    now=self.now,
                )
            self.model.buckets.append(
                Bucket(r.transfer_id, user, source in PAID_SOURCES, expires_at, amount)
            )
            return Done(key, user, amount, "grant", r.transfer_id, r.balance)

        @rule(target=done, user=st.sampled_from(USERS), amount=st.integers(1, 60))
        def spend(self, user: str, amount: int) -> Done:
            key = self._key()
            available = self.model.available(user, self.now) + self._stale(user)
            try:
                with self.unit() as conn:
                    r = ledger.spend(
                        conn, user_id=user, amount=amount, idempotency_key=key, now=self.now
                    )
            except ledger.InsufficientTokens as exc:
                assert amount > available
                assert exc.available == available
                self._expire_in_model(user)  # the refusal released and expired what was due
                return Done(key, user, amount, "refused", 0, 0)
            assert amount <= available
            if (
                r.balance != self._balance(user) - amount
                or self.model.available(user, self.now) < amount
            ):
                # The long way (it expired tokens, or only tokens of holds past their
                # deadline could serve it): it released and expired what was due first.
                self._expire_in_model(user)
            self.model.drawn[r.transfer_id] = self.model.take(user, amount, self.now, hold=False)
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
                        now=self.now,
                    )
            except ledger.RefundExceedsSpend:
                assert left == 0 or (amount or left) > left
                return
            assert r.amount == (amount or left) <= left
            self.model.refundable[earlier.transfer_id] -= r.amount
            back = r.amount
            for b, n in reversed(self.model.drawn[earlier.transfer_id]):
                given = min(n, back)
                back -= given
                b.remaining += given
            self.model.drawn[earlier.transfer_id] = _less(
                self.model.drawn[earlier.transfer_id], r.amount
            )
            self._expire_in_model(earlier.user_id)

        @rule(
            target=holds,
            user=st.sampled_from(USERS),
            amount=st.integers(1, 40),
            ttl=st.integers(1, 120),
        )
        def hold(self, user: str, amount: int, ttl: int) -> HeldTokens:
            self._expire_in_model(user)
            available = self.model.available(user, self.now)
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
                assert amount > available
                return HeldTokens(0, user, 0, self.now)
            self.model.reserved[h.id] = self.model.take(user, amount, self.now, hold=True)
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
            self.pending.pop(held.id)
            drawn = [(b, n) for b, n in self.model.reserved[held.id]]
            self.model.end_hold(held.id, amount)
            self.model.drawn[r.transfer_id] = _first(drawn, amount)
            self.model.refundable[r.transfer_id] = amount
            self.model.expire(held.user_id, self.now)

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
                self.model.end_hold(held.id, 0)
                self.model.expire(held.user_id, self.now)

        @rule(seconds=st.integers(1, 120))
        def time_passes(self, seconds: int) -> None:
            self.now += timedelta(seconds=seconds)

        @rule(grants_first=st.booleans())
        def sweep(self, grants_first: bool) -> None:
            """The worker's two expiry jobs, in either order."""
            with self.unit() as conn:
                if grants_first:
                    ledger.expire_grants(conn, now=self.now)
                ledger.expire_holds(conn, now=self.now)
                ledger.expire_grants(conn, now=self.now)
            for user in USERS:
                self._expire_in_model(user)

        def _stale(self, user: str) -> int:
            """Tokens of holds past their deadline, in buckets still live: free once released."""
            return sum(
                n
                for hold_id, h in self.pending.items()
                if h.user_id == user and h.expires_at <= self.now
                for b, n in self.model.reserved[hold_id]
                if b.live(self.now)
            )

        def _balance(self, user: str) -> int:
            return sum(b.remaining for b in self.model.of(user))

        def _expire_in_model(self, user: str) -> None:
            """What the ledger does under the wallet's lock before it uses its tokens:
            release holds past their deadline, then expire what is left of buckets past
            their expiry."""
            for hold_id, h in list(self.pending.items()):
                if h.user_id == user and h.expires_at <= self.now:
                    del self.pending[hold_id]
                    self.model.end_hold(hold_id, 0)
            self.model.expire(user, self.now)

        @invariant()
        def balances_match_the_model(self) -> None:
            with self.db.read() as conn:
                for user in USERS:
                    balance = ledger.balance(conn, user_id=user, now=self.now)
                    held = sum(
                        h.amount
                        for h in self.pending.values()
                        if h.user_id == user and h.expires_at > self.now
                    )
                    available = self.model.available(user, self.now) + self._stale(user)
                    assert (balance.available, balance.held) == (available, held)
                    assert balance.available >= 0 and balance.held >= 0
                    expiring = [
                        (b.remaining, b.expires_at)
                        for b in self.model.of(user)
                        if b.expires_at is not None and b.live(self.now) and b.remaining
                    ]
                    assert [(e.amount, e.expires_at) for e in balance.expiring] == expiring

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
